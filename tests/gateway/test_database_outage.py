"""PostgreSQL stopped (every process SIGSTOPped: it answers nothing, as a dead host would) for two minutes
in the middle of a live call, through the real gateway, chopper and scorer: scores keep reaching the
client without waiting on storage (p95 under 100 ms), a new call starts and ends during the outage, and
once the database is back every utterance sent is stored exactly once, with both calls' ends."""

from __future__ import annotations

import asyncio
import os
import statistics
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from websockets.asyncio.client import ClientConnection, connect

from tests.support.auth import bearer, make_key
from tests.support.mesh import MeshServices, _serve_gateway
from tests.support.outage import StoppablePostgres, stoppable_postgres
from tests.support.ws_client import receive, receive_until_summary, send

pytestmark = pytest.mark.slow

OUTAGE_S = float(os.environ.get("CALLSENSE_TEST_OUTAGE_S", "120"))
"""How long the database is away (the issue's two minutes; shorter when trying things out)."""
SEND_EVERY_S = 2.0
LINES = [
    "Thanks for walking us through the numbers again.",
    "Honestly that is well over what we budgeted for this quarter.",
    "I am not sure I can justify it to finance as it stands.",
    "The onboarding plan looks reasonable to me.",
]


@pytest.fixture
def pg() -> Iterator[StoppablePostgres]:
    with stoppable_postgres() as server:
        yield server


def utterance(index: int) -> dict[str, Any]:
    at = index * 3000
    text = LINES[index % len(LINES)]
    return {"type": "utterance", "text": text, "channel": "customer", "start_ms": at, "end_ms": at + 2500}


async def scored(ws: ClientConnection, index: int) -> float:
    """Send utterance ``index`` and wait for its score; the wait in seconds."""
    sent = time.perf_counter()
    await send(ws, utterance(index))
    while True:
        event = await receive(ws)
        assert event["type"] != "error", event
        if event["type"] == "score":
            return time.perf_counter() - sent


async def test_a_database_outage_never_stalls_the_live_path_and_loses_nothing(
    mesh_services: MeshServices, pg: StoppablePostgres, tmp_path: Path
) -> None:
    config = mesh_services.config(database_url=pg.uri, data_dir=tmp_path)
    async with _serve_gateway(config) as gw:
        headers = bearer(await make_key(gw.gateway.authenticator.keys))  # seen before the outage: cached
        spooled = gw.gateway.registry.spooled[""]
        long_call, new_call = f"outage-{uuid.uuid4().hex[:8]}", f"outage-new-{uuid.uuid4().hex[:8]}"
        async with connect(gw.ws_url, additional_headers=headers) as ws:
            await send(ws, {"type": "start", "call_id": long_call})
            assert (await receive(ws))["type"] == "started"
            before = [await scored(ws, i) for i in range(5)]

            pg.freeze()
            outage_started, during, sent = time.monotonic(), [], 5
            async with connect(gw.ws_url, additional_headers=headers) as other:  # a call starts meanwhile
                await send(other, {"type": "start", "call_id": new_call})
                assert (await receive(other))["type"] == "started"
                for i in range(3):
                    during.append(await scored(other, i))
                await send(other, {"type": "stop"})
                new_summary = (await receive_until_summary(other))[-1]
            while time.monotonic() - outage_started < OUTAGE_S:
                during.append(await scored(ws, sent))
                sent += 1
                await asyncio.sleep(SEND_EVERY_S)
            assert spooled.spooling
            async with httpx.AsyncClient(base_url=gw.http_url, timeout=30) as http:
                ready = (await http.get("/readyz")).json()
            assert ready["ready"] and ready["checks"]["database"].startswith("unreachable"), ready
            pg.thaw()

            after = [await scored(ws, sent + i) for i in range(3)]
            sent += 3
            await send(ws, {"type": "stop"})
            summary = (await receive_until_summary(ws))[-1]
        await asyncio.wait_for(spooled.wait_drained(), 120)

        store = gw.gateway.stores.default
        long_row, new_row = await store.get_call(long_call), await store.get_call(new_call)

    p95 = statistics.quantiles(during, n=20)[-1]
    print(
        f"\nlive wait, s: before {statistics.median(before):.3f} median; during the {OUTAGE_S:g} s outage "
        f"{statistics.median(during):.3f} median, {p95:.3f} p95 (n={len(during)}); after "
        f"{statistics.median(after):.3f} median"
    )
    assert p95 < 0.100, f"the live path waited on storage: p95 {p95 * 1000:.0f} ms"
    assert summary["utterance_count"] == sent and new_summary["utterance_count"] == 3
    assert long_row is not None and new_row is not None
    assert [e.utterance_id for e in long_row.events] == list(range(sent))  # each once, none lost
    assert [e.utterance_id for e in new_row.events] == [0, 1, 2]
    assert (long_row.status, new_row.status) == ("ended", "ended")
    assert long_row.tenant == new_row.tenant == "acme"
