"""A live call survives its scorer and its chopper being SIGKILLed mid-call and started again (what the
supervisor or Kubernetes does): the gateway opens the stage's stream again and sends what was not answered.
Counted at the end: utterances sent, scored, stored: all equal, none doubled, in order. Real processes
throughout (chopper, scorer, gateway, PostgreSQL)."""

from __future__ import annotations

import asyncio
import signal
import subprocess
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from websockets.asyncio.client import ClientConnection, connect

from gateway.calls.settings import SessionSettings
from tests.support.mesh import (
    MeshServices,
    _serve_gateway,
    _stop,
    _wait_serving,
    spawn_chopper,
    spawn_scorer,
)
from tests.support.ws_client import receive, receive_until_summary, send
from tools.ports import free_port

pytestmark = pytest.mark.slow

LINES = [
    "We looked at the proposal with the team last week.",
    "The integration with our billing system matters most to us.",
    "That is more than we hoped to spend this year.",
    "Could you walk me through the onboarding plan?",
    "I would need to bring finance into the next call.",
]


def utterance(index: int) -> dict[str, Any]:
    at = index * 4000
    text = f"{LINES[index % len(LINES)][:-1]}, as item {index} of our list."  # one sentence each
    return {"type": "utterance", "text": text, "channel": "customer", "start_ms": at, "end_ms": at + 3500}


async def scores_of(ws: ClientConnection, count: int) -> list[dict[str, Any]]:
    scores: list[dict[str, Any]] = []
    while len(scores) < count:
        event = await receive(ws, timeout_s=120)
        assert event["type"] != "error", event
        if event["type"] == "score":
            scores.append(event)
    return scores


async def test_a_call_survives_its_scorer_and_chopper_being_killed(
    mesh_services: MeshServices, gateway_db_url: str, tmp_path: Path
) -> None:
    chopper_addr, scorer_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    started: dict[str, subprocess.Popen[bytes]] = {}
    spawners: dict[str, tuple[str, Callable[[str, Path], subprocess.Popen[bytes]]]] = {
        "chopper": (chopper_addr, spawn_chopper),
        "scorer": (scorer_addr, spawn_scorer),
    }

    async def start(name: str) -> None:
        addr, spawn = spawners[name]
        log = tmp_path / f"{name}-{len(started)}.log"
        started[name] = spawn(addr, log)
        await asyncio.to_thread(_wait_serving, name, addr, started[name], log)

    def kill(name: str) -> None:
        started[name].send_signal(signal.SIGKILL)
        started[name].wait(timeout=10)

    config = mesh_services.config(
        database_url=gateway_db_url, chopper_addr=chopper_addr, scorer_addr=scorer_addr
    )
    settings = SessionSettings(grace_s=5.0, stage_reopen_s=90.0)
    call_id = f"restart-{uuid.uuid4().hex[:8]}"
    try:
        await start("chopper")
        await start("scorer")
        async with _serve_gateway(config, settings) as gw:
            async with connect(gw.ws_url, additional_headers=gw.headers) as ws:
                await send(ws, {"type": "start", "call_id": call_id})
                assert (await receive(ws))["type"] == "started"
                sent = 0
                for _ in range(3):
                    await send(ws, utterance(sent))
                    sent += 1
                scores = await scores_of(ws, 3)

                for stage in ("scorer", "chopper"):
                    kill(stage)
                    for _ in range(4):  # sent while the stage is dead: held, then sent again
                        await send(ws, utterance(sent))
                        sent += 1
                    await start(stage)
                    scores += await scores_of(ws, 4)

                await send(ws, {"type": "stop"})
                summary = (await receive_until_summary(ws))[-1]
            row = await gw.gateway.get_call(call_id)
            reopens = gw.gateway.metrics.render()
    finally:
        for process in started.values():
            _stop(process)

    sent_texts = [utterance(i)["text"] for i in range(sent)]
    assert [s["text"] for s in scores] == sent_texts  # every one scored once, in order
    assert len({s["utterance_id"] for s in scores}) == sent
    assert summary["status"] == "ended" and summary["utterance_count"] == sent
    assert row is not None and row.status == "ended"
    assert [e.text for e in row.events] == sent_texts  # stored once each
    assert 'callsense_gateway_stage_reopens_total{stage="scorer"}' in reopens
    assert 'callsense_gateway_stage_reopens_total{stage="chopper"}' in reopens
