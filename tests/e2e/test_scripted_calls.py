"""End to end, the scripted calls (tools/scripted_calls.py) spoken into the real mesh through Envoy.

Every script is spoken by espeak-ng as `callsense demo` speaks it (tools/demo.py: agent left, customer
right, the demo's gaps) and played through Envoy, faster than real time (``SPEED``; the call's own clock
is the audio's, so the times must not change with the pace):
- over the live WebSocket as stereo PCM16 16 kHz in 50 ms frames (the demo's ``play``);
- over the Twilio Media Streams endpoint as 8 kHz mu-law, the customer on the inbound track and the agent
  on the outbound one, while a second screen watches the call.
Each time, the badge changes (colour and call time), the cues (topic and call time) and the summary lines
that come back must be what the script expects (``ScriptedCall.expect``, checked by ``check_events``):
the assertions are the script's data, the same for every call.

A failure says which script and transport, the colours that came back with their times, the cues, and the
score of every customer sentence. Each call's record (events, scores, the problems found) is also written
to test-artifacts/scripted-calls/<script>-<transport>.json, and a table of all of them to
test-artifacts/scripted-calls/timelines.md, to fill README.md's table of badge timelines from.

The mesh is started once for the module as tests/e2e/test_mesh_e2e.py starts it.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import pytest_asyncio
from websockets.asyncio.client import connect as ws_connect

from asr_service.audio import mulaw_encode
from gateway.twilio import stream_path
from tests.e2e.test_audio_e2e import media, watch
from tests.e2e.test_mesh_e2e import (
    E2E_TWILIO_TOKEN,
    ROOT,
    RunningMesh,
    mesh_data_dir,
    speaking_mesh,
)
from tests.support.twilio import twilio_signed
from tools.demo import CallAudio, DemoError, play, synthesize_call
from tools.scripted_calls import SCRIPTS, ScriptedCall, Span, check_events

pytestmark = [pytest.mark.slow, pytest.mark.asyncio(loop_scope="module")]

SPEED = float(os.environ.get("CALLSENSE_E2E_SPEED", "4"))
"""How many times faster than real time the calls are played (the demo's --speed)."""
TIME_TOLERANCE_MS = 1_000
"""A sentence's end as the ASR places it (Whisper's word times) may lie a little off where it was spoken."""
SUMMARY_TIMEOUT_S = 90.0
"""After the last frame: the ASR catching up on a call sent faster than it was spoken, then the report."""
TWILIO_SCRIPTS = tuple(SCRIPTS)
# Calls the shipped model cannot yet hear right (issue 12). The model of 2026-12-07 04:55 turns
# sours-at-price, sours-at-timeline and polite-but-lost red over both transports (73.2 / 67.0 / 57.3 s over
# PCM, each with its cue) and replays all six offline; recovers-after-concession is still never red end to
# end: its first objection now reads 0.24 and a pricing cue fires at 36 s, but the ASR's words between
# ("Mainly the cost per seed" 0.48, "even 20 seats would be a stretch at net rate" 0.36) keep the rolling
# average over the red line. Strict: the day a model that hears a call ships, it passes, the mark fails the
# run, and it must be removed.
MODEL_GAP = frozenset({"recovers-after-concession"})
PCM_MODEL_GAP = MODEL_GAP


def cpu_field(name: str, cpuinfo: Path = Path("/proc/cpuinfo")) -> str:
    """The first CPU's ``name`` line of /proc/cpuinfo ("vendor_id", "cpu family"); "" where it cannot be
    read (not Linux)."""
    try:
        text = cpuinfo.read_text()
    except OSError:
        return ""
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == name:
            return value.strip()
    return ""


# On the newer 2-core EPYC (AMD, CPU family 26: Zen 5), Whisper's kernels round
# polite-but-lost's 8 kHz lines otherwise, and its first no, heard there and on the Zen 4 box of the same
# day as "We talked below and we decided to stay with what we have for now", reads 0.42 there against 0.25.
# The scorer reads it after the agent's pitch, which the kernels garble differently: after the pitch as
# written it reads 0.46, after the Zen 4 box's garbled one 0.25, alone 0.31. The rolling
# average after the second no is then 0.305, just over the red line, and red comes at 67.6 s, 8 s after it
# is due (three CI runs of 2026-12-07); the Zen 4 box turns it red at 57.2 s (0.18), as the boxes of 12-05
# did. The root is issue 12's: a polite no that a warm pitch before it lifts to neutral.
# Strict on that CPU family (every Zen 5, measured on the CI's 2-core EPYC only): passing there fails the
# run, and the mark must go or narrow.
NEWER_EPYC = cpu_field("vendor_id") == "AuthenticAMD" and cpu_field("cpu family") == "26"
NEWER_EPYC_MULAW_GAP = frozenset({"polite-but-lost"} if NEWER_EPYC else ())
# Over 8 kHz mu-law: espeak's voice over the phone line comes back garbled ("Sound, talk, I'll find it a
# little bit right" for "Sounds good, I'll sign it as soon as it arrives"); the happy call stays amber.
MULAW_MODEL_GAP = MODEL_GAP | {"happy-close"}


def scripts(
    names: tuple[str, ...], known_gap: frozenset[str] = MODEL_GAP, cpu_gap: frozenset[str] = frozenset()
) -> list[Any]:
    """The scripts as test parameters, those of ``known_gap`` (or ``cpu_gap``, a gap of this CPU's
    kernels) marked as the known gap they are."""
    gap = pytest.mark.xfail(
        strict=True, reason="issue 12: the shipped model does not yet hear this call as scripted (MODEL_GAP)"
    )
    on_this_cpu = pytest.mark.xfail(
        strict=True,
        reason="issue 12, on AMD CPU family 26 only: its Whisper kernels garble the agent's pitch otherwise, "
        "and the polite first no after it reads neutral (NEWER_EPYC_MULAW_GAP)",
    )
    marks = {**{name: on_this_cpu for name in cpu_gap}, **{name: gap for name in known_gap}}
    return [pytest.param(name, marks=marks[name]) if name in marks else name for name in names]


ARTIFACTS = ROOT / "test-artifacts" / "scripted-calls"


# --------------------------------------------------------------------------------------------- records


@dataclass
class Played:
    """One scripted call as it came back."""

    call: ScriptedCall
    transport: str
    call_id: str
    spans: list[Span]
    events: list[dict[str, Any]]
    wall_s: float
    problems: list[str] = field(default_factory=list)

    def of_type(self, kind: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == kind]

    def timeline(self) -> str:
        changes = [
            f"{b['state']} {b['at_ms'] / 1000:.1f} s ({b['rolling_score']:.2f})"
            for b in self.of_type("badge")
        ]
        return " -> ".join(["amber", *changes])

    def cues(self) -> str:
        return ", ".join(f"{c['topic']} {c['at_ms'] / 1000:.1f} s" for c in self.of_type("cue")) or "none"

    def customer_scores(self) -> list[str]:
        return [
            f"{_s(s['start_ms'])}-{_s(s['end_ms'])} s  {s['score']:.2f} {s['label']:<8} {s['text']}"
            for s in self.of_type("score")
            if s["channel"] == "customer"
        ]

    def model(self) -> str:
        """The scorer's model version, as the scores name it."""
        return next((str(s["model_version"]) for s in self.of_type("score")), "-")

    def marked(self) -> dict[str, Span]:
        """Where each marked line of the script was spoken."""
        return {m: self.spans[self.call.index(m)] for m in self.call.marks()}

    def report(self) -> str:
        summary = self.events[-1]
        return "\n".join(
            [
                f"{self.call.name} over {self.transport} "
                f"(call {self.call_id}, {self.wall_s:.0f} s at {SPEED:g}x):",
                *(f"  PROBLEM: {p}" for p in self.problems),
                f"  expected badge: {self.call.badge_timeline()}; "
                f"cues: {', '.join(c.topic for c in self.call.expect.cues) or 'none'}",
                f"  badge came back: {self.timeline()}",
                f"  cues came back: {self.cues()}",
                "  the customer's sentences (call time, score, label, as heard):",
                *(f"    {line}" for line in self.customer_scores()),
                "  the marked lines (call time): "
                + ", ".join(f"{m} {_s(a)}-{_s(b)} s" for m, (a, b) in self.marked().items()),
                "  summary: " + " | ".join(summary.get("lines", [])),
            ]
        )

    def write(self) -> None:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        record = {
            "script": self.call.name,
            "transport": self.transport,
            "call_id": self.call_id,
            "speed": SPEED,
            "model": self.model(),
            "wall_s": round(self.wall_s, 1),
            "expected_badge": self.call.badge_timeline(),
            "badges": [
                {"state": b["state"], "at_ms": b["at_ms"], "rolling_score": b["rolling_score"]}
                for b in self.of_type("badge")
            ],
            "cues": [
                {"topic": c["topic"], "at_ms": c["at_ms"], "text": c["text"]} for c in self.of_type("cue")
            ],
            "marks": self.marked(),
            "scores": [
                {k: s[k] for k in ("utterance_id", "channel", "start_ms", "end_ms", "score", "label", "text")}
                for s in self.of_type("score")
            ],
            "finals": [
                {k: t[k] for k in ("segment_id", "channel", "start_ms", "end_ms", "text")}
                for t in self.of_type("transcript")
                if t["is_final"]
            ],
            "summary": self.events[-1].get("lines", []),
            "problems": self.problems,
        }
        path = ARTIFACTS / f"{self.call.name}-{self.transport}.json"
        path.write_text(json.dumps(record, indent=1) + "\n")


PLAYED: list[Played] = []


def _s(ms: int) -> str:
    return f"{ms / 1000:.1f}"


def check(played: Played) -> None:
    """The script's expectation, against what came back; the record written either way."""
    errors = [e for e in played.events if e["type"] == "error"]
    played.problems = [f"error event: {e.get('code')}: {e.get('message')}" for e in errors]
    summary = played.events[-1]
    if summary.get("status") != "ended":
        played.problems.append(f"the call ended {summary.get('status')!r} ({summary.get('reason')})")
    played.problems += check_events(played.call, played.spans, played.events, tolerance_ms=TIME_TOLERANCE_MS)
    played.write()
    PLAYED.append(played)
    assert not played.problems, played.report()


def write_table() -> None:
    """Every call of the run in one Markdown table (test-artifacts/scripted-calls/timelines.md)."""
    if not PLAYED:
        return
    rows = [
        "| script | transport | model | expected | badge came back (call time, rolling score) | cues "
        "| as scripted |",
        "|---|---|---|---|---|---|---|",
    ]
    for played in PLAYED:
        ok = "yes" if not played.problems else "no"
        rows.append(
            f"| {played.call.name} | {played.transport} | {played.model()} | "
            f"{played.call.badge_timeline()} | {played.timeline()} | {played.cues()} | {ok} |"
        )
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    (ARTIFACTS / "timelines.md").write_text("\n".join(rows) + "\n")


# --------------------------------------------------------------------------------------------- the mesh


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    yield from mesh_data_dir(tmp_path_factory, "callsense-scripted-data")


@pytest_asyncio.fixture(scope="module", loop_scope="module")
async def mesh(data_dir: Path) -> AsyncIterator[RunningMesh]:
    PLAYED.clear()
    try:
        async with speaking_mesh(data_dir, "up-scripted.log") as running:
            yield running
    finally:
        write_table()


SPOKEN: dict[tuple[str, int], CallAudio] = {}


async def spoken(call: ScriptedCall, rate_hz: int) -> CallAudio:
    """The script spoken by espeak-ng as the demo speaks it, at ``rate_hz`` (made once per module)."""
    key = (call.name, rate_hz)
    if key not in SPOKEN:
        SPOKEN[key] = await asyncio.to_thread(synthesize_call, call.turns, rate_hz=rate_hz)
    return SPOKEN[key]


def spans_of(audio: CallAudio) -> list[Span]:
    return [(p.start_ms, p.end_ms) for p in audio.turns]


# --------------------------------------------------------------------------------------------- WebSocket


@pytest.mark.parametrize("name", scripts(tuple(SCRIPTS), PCM_MODEL_GAP))
async def test_scripted_call_over_the_websocket_at_16_khz(mesh: RunningMesh, name: str) -> None:
    call = SCRIPTS[name]
    audio = await spoken(call, 16_000)
    call_id = f"e2e-scripted-{name}-ws-{uuid.uuid4().hex[:6]}"
    begin = time.monotonic()
    try:
        events = await play(mesh.ws_url, call_id, audio, key=mesh.key, speed=SPEED, on_event=lambda _: None)
    except DemoError as exc:
        pytest.fail(mesh.diagnose(f"{name} over the WebSocket: {exc}"))
    check(Played(call, "websocket-pcm16", call_id, spans_of(audio), events, time.monotonic() - begin))


# --------------------------------------------------------------------------------------------- Twilio


async def twilio_call(mesh: RunningMesh, call_id: str, audio: CallAudio) -> list[dict[str, Any]]:
    """``audio`` (8 kHz) as Twilio streams a call: mu-law, 20 ms media per track, paced at ``SPEED``;
    the call's events as a second screen watching it sees them, up to the summary."""
    customer, agent = (mulaw_encode(audio.samples[:, column]).tobytes() for column in (1, 0))
    frame = audio.rate_hz * 20 // 1000
    call_sid = "CA" + uuid.uuid4().hex
    stream_sid = "MZ" + call_sid[2:]
    start = {
        "event": "start",
        "sequenceNumber": "1",
        "streamSid": stream_sid,
        "start": {
            "accountSid": "AC" + "0" * 32,
            "streamSid": stream_sid,
            "callSid": call_sid,
            "tracks": ["inbound", "outbound"],
            "mediaFormat": {"encoding": "audio/x-mulaw", "sampleRate": 8000, "channels": 1},
            "customParameters": {"call_id": call_id, "tenant": "e2e", "agent": "sam"},
        },
    }
    events: list[dict[str, Any]] = []

    async def receive() -> None:
        async for raw in watcher:
            events.append(json.loads(raw))
            if events[-1]["type"] == "summary":
                return

    url = f"ws://127.0.0.1:{mesh.envoy_port}{stream_path('e2e')}"  # signed as Twilio signs it
    async with ws_connect(
        url, additional_headers=twilio_signed(E2E_TWILIO_TOKEN, url), open_timeout=10
    ) as twilio:
        await twilio.send(json.dumps({"event": "connected", "protocol": "Call", "version": "1.0.0"}))
        await twilio.send(json.dumps(start))
        async with await watch(mesh, call_id) as watcher:
            reader = asyncio.create_task(receive())
            begin = time.perf_counter()
            for chunk in range(-(-len(customer) // frame)):
                delay = begin + chunk * 0.02 / SPEED - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                piece = slice(chunk * frame, (chunk + 1) * frame)
                await twilio.send(media("inbound", chunk, customer[piece]))
                await twilio.send(media("outbound", chunk, agent[piece]))
            await twilio.send(json.dumps({"event": "stop", "streamSid": stream_sid}))
            try:
                await asyncio.wait_for(reader, SUMMARY_TIMEOUT_S)
            except TimeoutError:
                pytest.fail(
                    mesh.diagnose(f"Twilio call {call_id}: no summary {SUMMARY_TIMEOUT_S:g} s after stop")
                )
    return events


@pytest.mark.parametrize("name", scripts(TWILIO_SCRIPTS, MULAW_MODEL_GAP, NEWER_EPYC_MULAW_GAP))
async def test_scripted_call_through_twilio_at_8_khz_mulaw(mesh: RunningMesh, name: str) -> None:
    call = SCRIPTS[name]
    audio = await spoken(call, 8_000)
    call_id = f"e2e-scripted-{name}-twilio-{uuid.uuid4().hex[:6]}"
    begin = time.monotonic()
    events = await twilio_call(mesh, call_id, audio)
    check(Played(call, "twilio-mulaw", call_id, spans_of(audio), events, time.monotonic() - begin))


# --------------------------------------------------------------------------------------------- every turn


def turns_without_final(played: Played) -> list[str]:
    """The script's turns that no final with text covers on the speaker's channel (issue 14: a turn of
    clear speech must never vanish, whatever the model makes of its mood)."""
    finals = [t for t in played.of_type("transcript") if t["is_final"] and t["text"].strip()]
    missing = []
    for line, (start, end) in zip(played.call.lines, played.spans, strict=True):
        heard = [
            t for t in finals if t["channel"] == line.speaker and t["start_ms"] < end and t["end_ms"] > start
        ]
        if not heard:
            unheard = [t.get("unheard_reason", "") for t in played.of_type("transcript") if t["is_final"]]
            missing.append(
                f"{played.call.name} over {played.transport}: {line.speaker} {_s(start)}-{_s(end)} s "
                f"{line.text!r} has no final (unheard finals of the call: {[r for r in unheard if r]})"
            )
    return missing


async def test_every_turn_of_every_scripted_call_got_a_final() -> None:  # async: the module mark
    # Runs after the calls above (pytest keeps the file's order); they record what came back in PLAYED,
    # including the calls the model gap marks as expected failures.
    if not PLAYED:
        pytest.skip("no scripted call was played in this run")
    missing = [m for played in PLAYED for m in turns_without_final(played)]
    assert not missing, "\n".join(missing)
