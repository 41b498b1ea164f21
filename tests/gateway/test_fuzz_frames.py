"""Random frames at the live APIs of the real gateway (chopper and scorer subprocesses, PostgreSQL), bounded
in count and seeded (a failure names its seed and frame): every hostile WebSocket frame gets an `error`
event and the connection goes on; every malformed gRPC message ends only its own RPC, with a status, never
INTERNAL or UNKNOWN; afterwards the gateway still takes a normal call and is ready. The REST surface is
covered by its own validation tests (a schema-driven fuzz of it is still to come)."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import ConnectionClosed

from tests.support.auth import keyed_channel
from tests.support.mesh import RunningGateway
from tests.support.ws_client import receive, receive_until_summary, send

pytestmark = pytest.mark.slow

SEED = 20261203
FRAMES = 200
GRPC_MESSAGES = 120

_VALUES: list[Any] = [
    None, True, False, 0, -1, 2**63, -(2**63) - 1, 1e308, float("-inf"), "", " ", "\x00", "\ud800",
    "a" * 9000, "é" * 300, "<script>", "' OR 1=1 --", [], [[]], {}, {"": {}}, [1, "x", None],
]  # fmt: skip
_KEYS = ["type", "call_id", "metadata", "text", "channel", "start_ms", "end_ms", "audio", "reason"]
_TYPES = ["start", "utterance", "stop", "watch", "bogus", "", None, 7]
SENTINEL = {"type": "fuzz-sentinel"}
EVENT_TYPES = {"error", "started", "score", "watching", "summary", "badge", "cue"}


def _valid(call_id: str) -> list[dict[str, Any]]:
    return [
        {"type": "start", "call_id": call_id, "metadata": {"agent": "sam"}},
        {
            "type": "utterance",
            "text": "That is over budget.",
            "channel": "customer",
            "start_ms": 0,
            "end_ms": 900,
        },
        {"type": "watch", "call_id": call_id},
        {"type": "start", "call_id": call_id, "audio": {"encoding": "pcm16", "sample_rate_hz": 16000}},
    ]


def _mutate(rng: random.Random, message: dict[str, Any]) -> dict[str, Any]:
    out = dict(message)
    for _ in range(rng.randint(1, 3)):
        key = rng.choice([*_KEYS, *out.keys(), "x" * rng.randint(1, 40)])
        out[key] = rng.choice([*_VALUES, rng.choice(_TYPES), {"encoding": rng.choice(_VALUES)}])
    return out


def _frame(rng: random.Random, call_id: str) -> str | bytes:
    kind = rng.random()
    if kind < 0.55:
        return _json(_mutate(rng, rng.choice(_valid(call_id))), ascii_only=rng.random() < 0.5)
    if kind < 0.7:
        depth = rng.randint(50, 5000)
        return "[" * depth + "]" * depth  # deep nesting
    if kind < 0.8:
        return rng.choice(['{"type": "start"', "nul\x00l", '"\\ud800"', "{}", "[]", "null", '"x"', "1e999"])
    if kind < 0.9:
        return bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 2048)))  # audio without audio
    return _json({"type": "utterance", "text": rng.choice(_VALUES), "channel": rng.choice(_VALUES)})


def _json(message: dict[str, Any], *, ascii_only: bool = True) -> str:
    """JSON text a WebSocket can carry: a lone surrogate goes as its \\u escape (raw, it is not UTF-8)."""
    text = json.dumps(message, ensure_ascii=ascii_only)
    try:
        text.encode()
    except UnicodeEncodeError:
        text = json.dumps(message)
    return text


async def test_random_websocket_frames_get_error_events_and_the_connection_goes_on(
    running_gateway: RunningGateway,
) -> None:
    gw, rng = running_gateway, random.Random(SEED)
    call_id = f"fuzz-{uuid.uuid4().hex[:8]}"
    errors, closes, silent = 0, 0, []
    ws = await connect(gw.ws_url, additional_headers=gw.headers, max_size=None)
    try:
        for index in range(FRAMES):
            frame = _frame(rng, call_id)
            last: dict[str, Any] = {}
            try:
                await send(ws, frame)
                await send(ws, SENTINEL)  # its error event marks the end of this frame's answers
                answers = []
                while True:
                    last = await receive(ws, timeout_s=30)
                    assert last.get("type") in EVENT_TYPES, f"seed {SEED} frame {index}: {last}"
                    if last.get("type") == "error" and SENTINEL["type"] in last.get("message", ""):
                        break
                    answers.append(last)
                errors += any(a["type"] == "error" for a in answers)
                if not answers and not _accepted_utterance(frame):  # an accepted one's score comes later
                    silent.append(frame if isinstance(frame, str) else f"<{len(frame)} bytes>")
            except ConnectionClosed as closed:
                # The one way the server ends a connection on purpose: a watch of a call that is not
                # live, after a fatal not_found error event; a clean 1000, never a dropped connection.
                assert closed.rcvd is not None and closed.rcvd.code == 1000, (
                    f"seed {SEED} frame {index}: {closed}"
                )
                assert last.get("code") == "not_found" and last.get("fatal"), (
                    f"seed {SEED} frame {index}: {last}"
                )
                closes += 1
                ws = await connect(gw.ws_url, additional_headers=gw.headers, max_size=None)
        await send(ws, {"type": "stop"})
        # Still answering: a call a valid frame started ends with its summary, else the stop gets an error.
        final = await receive(ws, timeout_s=30)
        while final["type"] not in {"summary", "error"}:
            final = await receive(ws, timeout_s=30)
    finally:
        await ws.close()
    print(f"\n{FRAMES} frames: {errors} answered with an error, {closes} closed after a watch of no call")
    assert not silent, f"frames without any answer (seed {SEED}): {[f[:200] for f in silent]}"
    await _still_serving(gw)


CLIENT_CORE_RACE = "Internal error from Core"


async def _rpc_status(
    channel: grpc.aio.Channel, unary: bool, path: str, payload: bytes
) -> tuple[grpc.StatusCode, str]:
    """The status of one call of ``path`` with ``payload`` (a stream sends it twice)."""
    try:
        if unary:
            await channel.unary_unary(path)(payload, timeout=20)
        else:
            async for _ in channel.stream_stream(path)(iter([payload, payload]), timeout=20):
                pass
    except grpc.aio.AioRpcError as exc:
        return exc.code(), exc.details() or ""
    return grpc.StatusCode.OK, ""


async def test_malformed_grpc_messages_end_only_their_rpc_with_a_clear_status(
    running_gateway: RunningGateway,
) -> None:
    gw, rng = running_gateway, random.Random(SEED + 1)
    methods = ["StreamCall", "AnalyzeRecording"]
    unary = ["GetCall", "AnalyzeBatch"]
    statuses: dict[str, int] = {}
    async with keyed_channel(gw.grpc_target, gw.key) as channel:
        for index in range(GRPC_MESSAGES):
            payload = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 512)))
            name = rng.choice([*methods, *unary])
            path = f"/callsense.v1.Sentiment/{name}"
            for _attempt in range(3):
                code, details = await _rpc_status(channel, name in unary, path, payload)
                # grpc/grpc#36066: a client write racing the server's early status fails in the client's
                # own core with this message; the server never sent it. Sent again, the race is unlikely
                # twice, and a status the server did send comes back the same every time.
                if not (code == grpc.StatusCode.INTERNAL and details == CLIENT_CORE_RACE):
                    break
            statuses[code.name] = statuses.get(code.name, 0) + 1
            assert code not in (grpc.StatusCode.INTERNAL, grpc.StatusCode.UNKNOWN), (
                f"seed {SEED + 1} message {index} to {name}: {code.name} {details}"
            )
    print(f"\n{GRPC_MESSAGES} malformed gRPC messages: statuses {sorted(statuses.items())}")
    assert statuses.get("INVALID_ARGUMENT", 0) + statuses.get("NOT_FOUND", 0) > GRPC_MESSAGES // 2, statuses
    await _still_serving(gw)


def _accepted_utterance(frame: str | bytes) -> bool:
    """A well-formed utterance (extra keys are ignored): taken while a call is live, scored later."""
    try:
        message = json.loads(frame)
    except ValueError:
        return False
    return (
        isinstance(message, dict)
        and message.get("type") == "utterance"
        and isinstance(message.get("text"), str)
        and message.get("channel") in ("customer", "agent", "mixed")
    )


async def _still_serving(gw: RunningGateway) -> None:
    async with httpx.AsyncClient(base_url=gw.http_url, timeout=30) as http:
        assert (await http.get("/readyz")).status_code == 200
    call_id = f"after-fuzz-{uuid.uuid4().hex[:8]}"
    async with connect(gw.ws_url, additional_headers=gw.headers) as ws:
        await send(ws, {"type": "start", "call_id": call_id})
        assert (await receive(ws))["type"] == "started"
        await send(
            ws,
            {
                "type": "utterance",
                "text": "Sounds good to me.",
                "channel": "customer",
                "start_ms": 0,
                "end_ms": 900,
            },
        )
        await send(ws, {"type": "stop"})
        events = await receive_until_summary(ws)
    assert [e["type"] for e in events].count("score") == 1
