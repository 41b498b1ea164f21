"""Latency of the live audio path, end to end: end of speech -> final transcript -> score, on the WebSocket.

N concurrent calls (default 1, 2 and 4, one run each) are played in real time through Envoy into the
whole mesh (ASR, chopper, scorer, gateway). Each call is a stereo PCM16 16 kHz stream like the demo's
(`callsense demo`): turns of the demo's sales call, spoken by espeak-ng in two voices (agent left,
customer right), separated by silences, each call starting at another turn and a little later than the
one before, so the calls do not speak in step. The synthesised speech is trimmed, so the sample where
each turn's speech ends is known exactly; the wall time at which the frame holding it was sent is the
turn's end of speech.

Measured per turn: end of speech -> the final transcript covering it, and -> the last score cut from
that final (p50 / p95 over all turns of a run); start of speech -> the first provisional score of the
turn (the mood of its stable words while it is still spoken, gateway/calls/provisional.py), and the share
of turns that had one before their final (a turn of a few words has none). Also the interval between
successive partial results of a segment, the CPU time of the ASR, scorer, chopper and gateway processes
over the run per second of call (psutil; 1.0 = one core busy for every call in progress), and the ASR's
real-time factor (its CPU seconds per second of call audio, a stereo call's second counted once).

By default the bench starts its own mesh (`callsense up` on free ports, as bench/text_path.py does) and
plays one short warm-up call first. With --url it measures a running mesh instead (no CPU figures).

The last line: `live_audio end_to_score_p95_ms_2calls=.. end_to_final_p95_ms_2calls=.. goal_met=..`.
Goal on the 2-core dev box: end of speech -> score under 1,200 ms at p95 with 2 concurrent calls.

Run: `.venv/bin/python bench/live_audio.py [--calls 1 2 4] [--turns 8]`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import psutil
from text_path import BENCH_KEY, percentile, start_mesh, stop_mesh, wait_ready

from tools.demo import (
    DEMO_SCRIPT,
    FRAME_MS,
    VOICES,
    CallAudio,
    Event,
    Pcm16,
    Turn,
    lay_out,
    natural_gaps,
    open_call,
    read_events,
    send_audio,
    start_message,
    synthesize,
)

GOAL_MS = 1_200.0
GOAL_CALLS = 2
SUMMARY_TIMEOUT_S = 90.0
MATCH_SLACK_MS = 600
"""A final "covers" a turn's end when it ends within this of it (Whisper's word times, the VAD's padding)."""
SERVICES = {
    "asr": "asr_service",
    "scorer": "scorer_service",
    "chopper": "chopper_service",
    "gateway": "gateway",
}
"""Measured processes: name -> the module `callsense up` runs (`python -m MODULE`)."""


# --------------------------------------------------------------------------------------------- the calls


def make_calls(count: int, turns: int, gap_s: float) -> list[CallAudio]:
    """``count`` calls of ``turns`` turns each, call i starting at turn 3 * i of the demo script."""
    clips: dict[Turn, Pcm16] = {t: synthesize(t.text, VOICES[t.speaker]) for t in DEMO_SCRIPT}
    calls = []
    for index in range(count):
        script = [DEMO_SCRIPT[(3 * index + k) % len(DEMO_SCRIPT)] for k in range(turns)]
        gaps = [g + gap_s for g in natural_gaps(turns, seed=index)]
        calls.append(lay_out([(t, clips[t]) for t in script], gaps))
    return calls


@dataclass
class CallRecord:
    audio: CallAudio
    sent_at: list[float] = field(default_factory=list)
    """Wall time (perf_counter) each frame was sent."""
    events: list[tuple[float, Event]] = field(default_factory=list)
    """Each event with its arrival time."""


async def play_call(url: str, audio: CallAudio, delay_s: float) -> CallRecord:
    await asyncio.sleep(delay_s)
    call_id = f"bench-audio-{uuid.uuid4().hex[:10]}"
    record = CallRecord(audio)

    def take(event: Event) -> None:
        record.events.append((time.perf_counter(), event))

    async with open_call(url, call_id, start_message(call_id, audio.rate_hz), BENCH_KEY) as ws:
        receiver = asyncio.create_task(read_events(ws, take))
        record.sent_at = await send_audio(ws, audio.frames(), FRAME_MS / 1000, until=receiver)
        if not receiver.done():  # else the call ended early (refused, failed): its turns count as missed
            await ws.send(json.dumps({"type": "stop"}))
        await asyncio.wait_for(receiver, SUMMARY_TIMEOUT_S)
    return record


# --------------------------------------------------------------------------------------------- measuring


@dataclass
class Samples:
    to_final_ms: list[float] = field(default_factory=list)
    to_score_ms: list[float] = field(default_factory=list)
    partial_interval_ms: list[float] = field(default_factory=list)
    to_provisional_ms: list[float] = field(default_factory=list)
    """Start of speech -> the turn's first provisional score, for turns that had one before the final."""
    provisional_lead_ms: list[float] = field(default_factory=list)
    """How long before the turn's final its first provisional score came."""
    missed: list[str] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)


def measure(record: CallRecord, samples: Samples) -> None:
    """Each turn's end of speech against the final covering it and the scores cut from that final."""
    frame_samples = record.audio.frame_samples()
    events = record.events
    for placed in record.audio.turns:
        channel = placed.turn.speaker
        end_frame = (placed.end_sample - 1) // frame_samples
        if end_frame >= len(record.sent_at):  # the call ended before this turn was sent
            samples.missed.append(f"{channel}: {placed.turn.text!r}")
            continue
        speech_end = record.sent_at[end_frame]
        finals = [
            (at, e)
            for at, e in events
            if e["type"] == "transcript"
            and e["is_final"]
            and e["text"].strip()
            and e["channel"] == channel
            and placed.start_ms < e["end_ms"]
            and abs(e["end_ms"] - placed.end_ms) <= MATCH_SLACK_MS
        ]
        if not finals:
            samples.missed.append(f"{channel}: {placed.turn.text!r}")
            continue
        final_at, final = finals[-1]
        samples.to_final_ms.append((final_at - speech_end) * 1000)
        provisional = [
            at
            for at, e in events
            if e["type"] == "provisional"
            and e["channel"] == channel
            and final["start_ms"] <= e["end_ms"] <= final["end_ms"] + MATCH_SLACK_MS
            and at < final_at
        ]
        if provisional:
            speech_start = record.sent_at[placed.start_sample // frame_samples]
            samples.to_provisional_ms.append((min(provisional) - speech_start) * 1000)
            samples.provisional_lead_ms.append((final_at - min(provisional)) * 1000)
        scores = [
            at
            for at, e in events
            if e["type"] == "score"
            and e["channel"] == channel
            and final["start_ms"] <= e["start_ms"] <= e["end_ms"] <= final["end_ms"]
        ]
        if scores:
            samples.to_score_ms.append((max(scores) - speech_end) * 1000)
        else:
            samples.missed.append(f"no score for {channel}'s final {final['text']!r}")
    partials: dict[tuple[str, int], list[float]] = {}
    for at, e in events:
        if e["type"] == "transcript" and not e["is_final"]:
            partials.setdefault((e["channel"], e["segment_id"]), []).append(at)
    for times in partials.values():
        samples.partial_interval_ms += [(b - a) * 1000 for a, b in zip(times, times[1:], strict=False)]
    samples.errors += [f"{e.get('code')}: {e.get('message')}" for _, e in events if e["type"] == "error"]


def service_processes(root_pid: int) -> dict[str, list[psutil.Process]]:
    """The mesh's measured processes by name, found among the children of `callsense up`."""
    found: dict[str, list[psutil.Process]] = {name: [] for name in SERVICES}
    for proc in psutil.Process(root_pid).children(recursive=True):
        try:
            cmdline = proc.cmdline()
        except psutil.Error:
            continue
        for name, module in SERVICES.items():
            if "-m" in cmdline and module in cmdline:
                found[name].append(proc)
    return found


def resident_mb(processes: dict[str, list[psutil.Process]]) -> float:
    """Resident memory of the measured processes together, in MB."""
    return float(sum(p.memory_info().rss for procs in processes.values() for p in procs)) / 1e6


def cpu_seconds(processes: dict[str, list[psutil.Process]]) -> dict[str, float]:
    totals = {}
    for name, procs in processes.items():
        times = [p.cpu_times() for p in procs]
        totals[name] = sum(t.user + t.system for t in times)
    return totals


@dataclass(frozen=True)
class RunResult:
    calls: int
    turns: int
    missed: int
    to_final_p50_ms: float
    to_final_p95_ms: float
    to_score_p50_ms: float
    to_score_p95_ms: float
    partial_interval_p50_ms: float
    partial_interval_p95_ms: float
    to_provisional_p50_ms: float
    to_provisional_p95_ms: float
    provisional_lead_p50_ms: float
    provisional_turns: int
    """Turns with a provisional score before their final."""
    call_seconds: float
    cpu_s: dict[str, float]
    """CPU seconds of each measured service over the run (empty without our own mesh)."""
    memory_mb: tuple[float, float]
    """Resident memory of the measured services before and after the run (Python keeps what it took, so
    after is about the peak); nan without our own mesh."""
    errors: list[str]

    def cpu_per_stream(self, name: str | None = None) -> float:
        """CPU seconds per second of call (one core = 1.0), of one service or of all of them."""
        used = self.cpu_s.get(name, float("nan")) if name else sum(self.cpu_s.values())
        return used / self.call_seconds if self.cpu_s else float("nan")

    @property
    def asr_rtf(self) -> float:
        """The ASR's real-time factor: its CPU seconds per second of call audio."""
        return self.cpu_per_stream("asr")


async def run_load(url: str, calls: Sequence[CallAudio], root_pid: int | None) -> RunResult:
    processes = service_processes(root_pid) if root_pid is not None else {}
    before = cpu_seconds(processes)
    memory_before = resident_mb(processes) if processes else float("nan")
    tasks = [play_call(url, audio, delay_s=0.7 * index) for index, audio in enumerate(calls)]
    records = await asyncio.gather(*tasks, return_exceptions=True)
    after = cpu_seconds(processes)
    memory_after = resident_mb(processes) if processes else float("nan")
    samples = Samples()
    for audio, record in zip(calls, records, strict=True):
        if isinstance(record, BaseException):
            samples.errors.append(f"call failed: {record!r}")
            samples.missed += [f"{placed.turn.speaker}: {placed.turn.text!r}" for placed in audio.turns]
        else:
            measure(record, samples)
    return RunResult(
        calls=len(calls),
        turns=sum(len(c.turns) for c in calls),
        missed=len(samples.missed),
        to_final_p50_ms=_median(samples.to_final_ms),
        to_final_p95_ms=percentile(samples.to_final_ms, 95),
        to_score_p50_ms=_median(samples.to_score_ms),
        to_score_p95_ms=percentile(samples.to_score_ms, 95),
        partial_interval_p50_ms=_median(samples.partial_interval_ms),
        partial_interval_p95_ms=percentile(samples.partial_interval_ms, 95),
        to_provisional_p50_ms=_median(samples.to_provisional_ms),
        to_provisional_p95_ms=percentile(samples.to_provisional_ms, 95),
        provisional_lead_p50_ms=_median(samples.provisional_lead_ms),
        provisional_turns=len(samples.to_provisional_ms),
        call_seconds=sum(c.duration_s for c in calls),
        cpu_s={name: after[name] - before[name] for name in before},
        memory_mb=(memory_before, memory_after),
        errors=samples.errors + [f"missed {m}" for m in samples.missed],
    )


def _median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# --------------------------------------------------------------------------------------------- report


def print_table(results: Sequence[RunResult]) -> None:
    head = (
        f"{'calls':>5} {'turns':>5} {'missed':>6} | {'eos->final p50':>14} {'p95':>6} | "
        f"{'eos->score p50':>14} {'p95':>6} | {'partial every p50':>17} {'p95':>6} | "
        f"{'sos->provisional p50':>20} {'p95':>6} {'lead p50':>8} {'turns':>5} | "
        f"{'CPU/stream':>10} {'asr=RTF':>7} {'scorer':>6} {'chopper':>7} {'gateway':>7} | "
        f"{'RSS before':>10} {'after MB':>8}"
    )
    print(head)
    print("-" * len(head))
    for r in results:
        print(
            f"{r.calls:>5} {r.turns:>5} {r.missed:>6} | "
            f"{r.to_final_p50_ms:>11.0f} ms {r.to_final_p95_ms:>6.0f} | "
            f"{r.to_score_p50_ms:>11.0f} ms {r.to_score_p95_ms:>6.0f} | "
            f"{r.partial_interval_p50_ms:>14.0f} ms {r.partial_interval_p95_ms:>6.0f} | "
            f"{r.to_provisional_p50_ms:>17.0f} ms {r.to_provisional_p95_ms:>6.0f} "
            f"{r.provisional_lead_p50_ms:>5.0f} ms {r.provisional_turns:>5} | "
            f"{r.cpu_per_stream():>10.3f} {r.asr_rtf:>7.3f} {r.cpu_per_stream('scorer'):>6.3f} "
            f"{r.cpu_per_stream('chopper'):>7.3f} {r.cpu_per_stream('gateway'):>7.3f} | "
            f"{r.memory_mb[0]:>10.0f} {r.memory_mb[1]:>8.0f}",
            flush=True,
        )
        for error in r.errors[:5]:
            print(f"      {error}", flush=True)


async def measure_all(args: argparse.Namespace, url: str, root_pid: int | None) -> list[RunResult]:
    if root_pid is not None:  # the first decodes of a fresh ASR are slower: one short call first
        await run_load(url, make_calls(1, 2, args.gap), root_pid)
    results = []
    for count in args.calls:
        calls = await asyncio.to_thread(make_calls, count, args.turns, args.gap)
        results.append(await run_load(url, calls, root_pid))
        print(f"  {count} call(s) done", file=sys.stderr, flush=True)
    return results


async def main_async(args: argparse.Namespace) -> int:
    if args.url:
        url = args.url.rstrip("/")
        await wait_ready(url)
        results = await measure_all(args, url.replace("http", "ws", 1) + "/v1/sentiment/stream", None)
    else:
        # Under /var/tmp, not the repository: the embedded PostgreSQL (pgserver) chowns its data dir.
        data_dir = Path(tempfile.mkdtemp(prefix="callsense-bench-audio-", dir="/var/tmp"))
        try:
            mesh = await start_mesh(
                data_dir,
                max_batch=16,
                max_wait_ms=5.0,
                replicas=1,
                asr_model=args.asr_model,
                asr_workers=args.asr_workers,
                asr_partial_interval_s=args.partial_interval,
                asr_partial_batch=args.partial_batch,
                asr_final_beam=args.final_beam,
                asr_max_streams=args.max_streams,
                asr_speculative_end_ms=args.speculative_end_ms,
                asr_commit_at_pauses=args.commits == "on",
            )
            try:
                ws_url = mesh.url.replace("http", "ws", 1) + "/v1/sentiment/stream"
                results = await measure_all(args, ws_url, mesh.process.pid)
            except BaseException:
                print(f"--- last output of `callsense up` ({mesh.log}):\n{mesh.tail()}", file=sys.stderr)
                raise
            finally:
                await asyncio.to_thread(stop_mesh, mesh)
        finally:
            shutil.rmtree(data_dir, ignore_errors=True)
    print_table(results)
    at_goal = next((r for r in results if r.calls == GOAL_CALLS), None)
    p95 = at_goal.to_score_p95_ms if at_goal else float("nan")
    final_p95 = at_goal.to_final_p95_ms if at_goal else float("nan")
    rtf = at_goal.asr_rtf if at_goal else float("nan")
    provisional_p50 = at_goal.to_provisional_p50_ms if at_goal else float("nan")
    met = "n/a" if at_goal is None else str(p95 < GOAL_MS).lower()
    print(
        f"live_audio asr_model={args.asr_model or 'default'} asr_workers={args.asr_workers} "
        f"partial_interval={args.partial_interval or 'default'} partial_batch={args.partial_batch} "
        f"final_beam={args.final_beam or 'default'} max_streams={args.max_streams or 'default'} "
        f"speculative_end_ms={'default' if args.speculative_end_ms is None else args.speculative_end_ms} "
        f"commits={args.commits} "
        f"end_to_score_p95_ms_{GOAL_CALLS}calls={p95:.0f} end_to_final_p95_ms_{GOAL_CALLS}calls="
        f"{final_p95:.0f} asr_rtf_{GOAL_CALLS}calls={rtf:.3f} "
        f"start_to_provisional_p50_ms_{GOAL_CALLS}calls={provisional_p50:.0f} "
        f"goal_p95_ms={GOAL_MS:.0f} goal_met={met}",
        flush=True,
    )
    return 0 if all(not r.errors for r in results) else 1


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, nargs="+", default=[1, 2, 4], help="concurrent calls per run")
    parser.add_argument("--turns", type=int, default=8, help="turns per call (default 8, about 50 s)")
    parser.add_argument("--gap", type=float, default=0.5, help="seconds of silence added between turns")
    parser.add_argument("--url", default="", help="a running mesh (Envoy's base URL); default: start one")
    parser.add_argument(
        "--asr-model", help="the ASR's Whisper model for the mesh it starts (default tiny.en)"
    )
    parser.add_argument("--asr-workers", type=int, default=1, help="Whisper decodes at once (default 1)")
    parser.add_argument(
        "--partial-interval", type=float, help="seconds between the ASR's partials (default: its own, 1 s)"
    )
    parser.add_argument(
        "--partial-batch", type=int, default=1, help="most partials the ASR decodes as one batch (default 1)"
    )
    parser.add_argument(
        "--final-beam", type=int, help="beam width of the ASR's finals (default: its own; 1: greedy)"
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        help="calls the ASR serves at once before it refuses more (default: its own, 8)",
    )
    parser.add_argument(
        "--speculative-end-ms",
        type=int,
        help="silence after which a finished sentence ends its turn (default: the ASR's own; 0: off)",
    )
    parser.add_argument(
        "--commits",
        choices=["on", "off"],
        default="on",
        help="the ASR's commits at pauses (default on, as it ships; off: --asr-no-commit-at-pauses)",
    )
    args = parser.parse_args(argv)
    if min(args.calls) < 1 or args.turns < 1 or args.gap < 0:
        parser.error("need --calls >= 1, --turns >= 1 and --gap >= 0")
    if args.commits == "off" and args.url:
        parser.error("--commits sets the mesh the bench starts (not one at --url)")
    if args.final_beam is not None and (args.final_beam < 1 or args.url):
        parser.error("--final-beam is at least 1, and sets the mesh the bench starts (not one at --url)")
    if args.max_streams is not None and (args.max_streams < 1 or args.url):
        parser.error("--max-streams is at least 1, and sets the mesh the bench starts (not one at --url)")
    if args.speculative_end_ms is not None:
        if args.url:
            parser.error("--speculative-end-ms sets the mesh the bench starts (not one at --url)")
        # Imported here: asr_service sets ONEDNN_MAX_CPU_ISA, which the mesh's processes would inherit.
        from asr_service.channel import StreamingConfig

        try:  # the ASR's own rule, before the mesh starts
            StreamingConfig(speculative_end_ms=args.speculative_end_ms).validate()
        except ValueError as exc:
            parser.error(f"--speculative-end-ms: {exc}")
    return asyncio.run(main_async(args))


if __name__ == "__main__":
    sys.exit(main())
