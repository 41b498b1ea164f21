"""Early end of segments (issue 17), speculative finals and the speculative end, and the VAD's pad:
streaming WER, mid-sentence cuts and end of speech -> final, with each on and off, in the same run.

Each clip of the WER sets (``speech/asr_dev``, ``speech/asr``, RAVDESS's held-out clips; see
tools/asr_eval.py) is played as one turn of a call: 0.5 s of silence, the clip, 1.5 s of silence, at 16 kHz
PCM or as a phone line carries it (8 kHz G.711 mu-law), decoded by the service's ``AudioDecoder`` and fed
to a ``ChannelDecoder`` in 20 ms frames, partials on (the service's defaults) but for ``early_end_ms``,
``speculative_final_ms``, ``speculative_end_ms`` and the VAD's ``pad_ms``.

Time is the audio's clock, and the inference thread is simulated on it: one decode at a time, in order,
each taking the wall time it really took here (Whisper runs for real, tiny.en, one thread); a partial
still queued when a newer one or the final comes is dropped, as ``scheduler`` does; a partial's text
reaches the channel (``note_partial``) when its decode is done on that clock. So a probe's answer comes
as late as it would live, with one call on the machine. A speculative final is queued like a partial (a
newer request drops it while it waits) and skipped when it comes up after the channel threw it away; the
final takes its result, at no cost, when it ran and was decoded alike, as ``streaming`` does; its text
goes back to the channel when its decode is done (``note_speculation``: the speculative end).

Rows, per set, rate, the VAD's pad, ``early_end_ms``, ``speculative_final_ms`` (0: off),
``speculative_end_ms`` (0: off) and the finals' beam width (the first configuration is the baseline of
the ratios; combinations the channel refuses, such as a speculation before the pad, are left out):

- WER of the finals against the references (Whisper's English normaliser, tools/asr_eval.py); with the
  early end off it is the streaming WER of test_asr_wer.py;
- ``beam``: the finals' beam width (``DecodingConfig.final_beam_size``; partials are greedy either way):
  a narrower beam decodes sooner, at what cost in words;
- ``early``: segments ended early (early end or speculative end); ``cuts``: those whose speaker went
  on, i.e. the channel's next speech starts less than ``--cut-ms`` (700) after the early-ended speech;
  ``turn_early``: clips whose last segment (the real end of the turn) ended early;
- end of speech -> final, p50 / p95 over the clips: from the clip's last speech (the final's end less
  the VAD's pad) to the time its last final's decode is done;
- ``spec``: speculative finals decoded, ``used``: those that became the final (the others cost a
  decode for nothing: a pause, not the end); ``same``: clips whose finals read exactly as the baseline's;
- decodes per minute of audio (the CPU the probes and speculations cost), and the ratio to the baseline
  of p50 and p95.

Run: ``.venv/bin/python bench/endpointing.py [--sets asr_dev asr] [--rates 16k 8k-mulaw] [--pad-ms 200]
[--early-end-ms 0] [--speculative-ms 0 200] [--speculative-end-ms 0] [--beams 5] [--limit N]``: every
combination of the lists. Last line: ``endpointing <set>/<rate>/pad<pad>/<early>/<speculative>ms/end<end>/
b<beam> ...`` per configuration.
"""

from __future__ import annotations

import argparse
import collections
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from asr_service.audio import AudioDecoder, AudioSpec, Encoding  # noqa: E402
from asr_service.channel import ChannelDecoder, StreamingConfig  # noqa: E402
from asr_service.decoding import DecodeRequest, DecodeResult, run_decode, same_decode  # noqa: E402
from asr_service.recognizer import WhisperRecognizer  # noqa: E402
from asr_service.vad import SAMPLE_RATE, StreamingVad, VadConfig, shared_model  # noqa: E402
from tools.asr_eval import RATES, SETS, Clip, load_set, telephone, word_errors  # noqa: E402

FloatArray = npt.NDArray[np.float32]
FRAME = SAMPLE_RATE // 50  # 20 ms, as Twilio and browsers send
LEAD_S, TAIL_S = 0.5, 1.5


def stream_of(clip: Clip, rate: str) -> FloatArray:
    """The clip as the channel gets it: through the service's audio decoder, silence around it."""
    if rate == "16k":
        spec = AudioSpec(Encoding.PCM16, clip.audio.sample_rate_hz, 1)
        data = clip.audio.mono().astype("<i2").tobytes()
    else:
        data, _ = telephone(clip.audio)
        spec = AudioSpec(Encoding.MULAW, 8000, 1)
    decoder = AudioDecoder(spec)
    speech = np.concatenate([decoder.decode(data)[0], decoder.flush()[0]])
    lead = np.zeros(int(LEAD_S * SAMPLE_RATE), np.float32)
    tail = np.zeros(int(TAIL_S * SAMPLE_RATE), np.float32)
    return np.concatenate([lead, speech, tail]).astype(np.float32)


@dataclass
class Final:
    request: DecodeRequest
    result: DecodeResult
    done_s: float
    early: bool


@dataclass
class ClipRun:
    finals: list[Final] = field(default_factory=list)
    decodes: int = 0
    speculations: int = 0
    """Speculative finals decoded."""
    used: int = 0
    """Finals answered by their speculation."""
    busy_s: float = 0.0
    """Seconds the inference thread spent decoding (every decode's real wall time)."""
    commits: int = 0
    """Speculations made their segment's committed prefix (``StreamingConfig.commit_at_pauses``)."""


@dataclass
class _Job:
    request: DecodeRequest
    submitted_s: float
    early: bool = False
    result: DecodeResult | None = None
    """A speculative final's, once decoded."""
    speculation: _Job | None = None
    """A final's: the speculative final's job decoded alike, whose result it takes if that ran."""


class Simulation:
    """One channel played in real time against one simulated inference thread (see the docstring)."""

    def __init__(self, recognizer: WhisperRecognizer, config: StreamingConfig) -> None:
        self.recognizer = recognizer
        self.config = config
        self.channel = ChannelDecoder(0, StreamingVad(shared_model(), config.vad), config)
        self.queue: collections.deque[_Job] = collections.deque()
        self.running: tuple[float, _Job, DecodeResult] | None = None
        self.free_s = 0.0
        self.held: _Job | None = None  # the latest speculative final
        self.ended_early = 0  # the channel's early and speculative ends so far
        self.run = ClipRun()

    def play(self, x: FloatArray) -> ClipRun:
        for i in range(0, len(x), FRAME):
            now = (i + FRAME) / SAMPLE_RATE
            self.advance(now)
            self.submit(self.channel.push(x[i : i + FRAME]), now)
        end = len(x) / SAMPLE_RATE
        self.advance(end)
        self.submit(self.channel.flush(), end)
        self.advance(float("inf"))
        self.run.commits = self.channel.commits
        return self.run

    def submit(self, requests: Sequence[DecodeRequest], now: float) -> None:
        # A final is early when the channel ended its segment itself (early or speculative end), in
        # push() or when told a decode's text: its counters say which finals those were.
        ended_early = self.channel.early_ends + self.channel.speculative_ends
        early_finals, self.ended_early = ended_early - self.ended_early, ended_early
        for request in requests:
            early = request.is_final and not request.speculative and early_finals > 0
            early_finals -= early
            kept: collections.deque[_Job] = collections.deque()
            for job in self.queue:  # a newer request drops the queued partials and speculations
                if job.request.is_final and not job.request.speculative:
                    kept.append(job)
                elif not job.request.is_final:
                    self.channel.note_partial(job.request, None)
            self.queue = kept
            job = _Job(request, now, early)
            if request.speculative:
                self.held = job
            elif request.is_final:
                held, self.held = self.held, None
                if held is not None and same_decode(held.request, request):
                    job.speculation = held
            self.queue.append(job)

    def advance(self, now: float) -> None:
        """Run the simulated inference thread up to ``now``."""
        while True:
            if self.running is not None:
                done_s, job, result = self.running
                if done_s > now:
                    return
                self.running, self.free_s = None, done_s
                self._deliver(job, result, done_s)
            if not self.queue or max(self.free_s, self.queue[0].submitted_s) > now:
                return
            job = self.queue.popleft()
            start_s = max(self.free_s, job.submitted_s)
            if job.request.speculative and self.channel.speculation is not job.request:
                continue  # thrown away while it waited: skipped
            if job.speculation is not None and job.speculation.result is not None:
                # It ran before this final (queued first, one thread): taken at no cost.
                self.running = (start_s, job, replace(job.speculation.result, request=job.request))
                self.run.used += 1
                continue
            started = time.perf_counter()
            c = self.config
            result = run_decode(self.recognizer, job.request, c.filter, c.decoding)
            took = time.perf_counter() - started
            self.running = (start_s + took, job, result)
            self.run.busy_s += took
            self.run.decodes += 1
            self.run.speculations += job.request.speculative

    def _deliver(self, job: _Job, result: DecodeResult, done_s: float) -> None:
        if job.request.speculative:
            job.result = result
            self.submit(self.channel.note_speculation(job.request, result), done_s)
            return
        if job.request.is_final:
            self.run.finals.append(Final(job.request, result, done_s, job.early))
            return
        self.submit(self.channel.note_partial(job.request, result.accepted_text), done_s)


@dataclass(frozen=True)
class Row:
    set_name: str
    rate: str
    pad_ms: int
    early_end_ms: int
    speculative_ms: int
    speculative_end_ms: int
    beam: int
    clips: int
    wer: float
    early: int
    cuts: int
    turn_early: int
    p50_ms: float
    p95_ms: float
    decodes_per_min: float
    speculations: int
    used: int
    commit: bool
    commits: int
    busy_pct: float
    """The inference thread's decoding time per second of audio, in per cent."""
    texts: tuple[str, ...]
    """Each clip's finals, joined (compared across configurations)."""
    latencies_ms: tuple[float, ...]
    """Each clip's end of speech -> final."""


def percentile(values: Sequence[float], q: float) -> float:
    return float(np.percentile(np.asarray(values), q)) if values else float("nan")


def measure(
    clips: Sequence[Clip],
    streams: Sequence[FloatArray],
    set_name: str,
    rate: str,
    config: StreamingConfig,
    recognizer: WhisperRecognizer,
    cut_ms: int,
) -> Row:
    pad_s = config.vad.pad_ms / 1000
    errors = words = early = cuts = turn_early = decodes = speculations = used = commits = 0
    busy_s = 0.0
    latencies: list[float] = []
    texts: list[str] = []
    for clip, x in zip(clips, streams, strict=True):
        run = Simulation(recognizer, config).play(x)
        decodes, speculations, used = decodes + run.decodes, speculations + run.speculations, used + run.used
        commits, busy_s = commits + run.commits, busy_s + run.busy_s
        text = " ".join(f.result.recognition.text.strip() for f in run.finals if f.result.rejected is None)
        texts.append(text)
        e, n = word_errors(clip.reference, text)
        errors, words = errors + e, words + n
        pad = config.vad.pad_ms * SAMPLE_RATE // 1000
        for a, b in zip(run.finals, run.finals[1:], strict=False):
            # From the last speech of one to the first speech of the next (the pads taken off).
            speech_end = a.request.start_sample + len(a.request.audio) - pad
            if a.early and b.request.start_sample + pad - speech_end < cut_ms * SAMPLE_RATE // 1000:
                cuts += 1
        early += sum(f.early for f in run.finals)
        if run.finals:
            last = run.finals[-1]
            turn_early += last.early
            speech_end_s = (last.request.start_sample + len(last.request.audio)) / SAMPLE_RATE - pad_s
            latencies.append(1000 * (last.done_s - speech_end_s))
    minutes = sum(len(x) for x in streams) / SAMPLE_RATE / 60
    return Row(
        set_name,
        rate,
        config.vad.pad_ms,
        config.early_end_ms,
        config.speculate_after_ms,
        config.speculative_end_ms,
        config.decoding.final_beam_size,
        len(clips),
        100 * errors / max(words, 1),
        early,
        cuts,
        turn_early,
        percentile(latencies, 50),
        percentile(latencies, 95),
        decodes / minutes,
        speculations,
        used,
        config.commit_at_pauses,
        commits,
        100 * busy_s / (minutes * 60),
        tuple(texts),
        tuple(latencies),
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", nargs="+", choices=SETS, default=["asr_dev", "asr"])
    parser.add_argument("--rates", nargs="+", choices=RATES, default=list(RATES))
    parser.add_argument("--early-end-ms", nargs="+", type=int, default=[0], help="0: off")
    parser.add_argument(
        "--speculative-end-ms", nargs="+", type=int, default=[0], help="0: off (channel: speculative end)"
    )
    parser.add_argument("--speculative-ms", nargs="+", type=int, default=[0, 200], help="0: off")
    parser.add_argument("--beams", nargs="+", type=int, default=[5], help="finals' beam widths")
    parser.add_argument(
        "--commits", nargs="+", choices=["on", "off"], default=["on"], help="commits at pauses (channel)"
    )
    parser.add_argument(
        "--pad-ms",
        nargs="+",
        type=int,
        default=[VadConfig().pad_ms],
        help="the VAD's pad (pre-roll and tail)",
    )
    parser.add_argument("--limit", type=int, default=0, help="the first N clips of each set (0: all)")
    parser.add_argument("--per-clip", action="store_true", help="each clip's end of speech -> final too")
    parser.add_argument("--cut-ms", type=int, default=700, help="a next segment this soon: a cut")
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args(argv)
    if min(args.beams) < 1:
        parser.error("--beams must be at least 1 (1: greedy)")
    if not (args.shared_data / "speech").is_dir():
        print(f"SKIPPED: {args.shared_data}/speech is absent (the bench reads real speech)")
        return 0
    recognizer = WhisperRecognizer()
    base = StreamingConfig()
    candidates = [
        replace(
            base,
            vad=replace(base.vad, pad_ms=pad),
            early_end_ms=early,
            speculative_end_ms=spec_end,
            speculative_final_ms=speculative,
            decoding=replace(base.decoding, final_beam_size=beam),
            commit_at_pauses=commit == "on",
        )
        for pad in args.pad_ms
        for early in args.early_end_ms
        for speculative in args.speculative_ms
        for spec_end in args.speculative_end_ms
        for beam in args.beams
        for commit in args.commits
    ]
    # The channel's own rules decide which combinations exist (a speculation or an end before the pad,
    # a speculative end without speculation, ...): the others are left out, and said so.
    configs: list[StreamingConfig] = []
    for config in candidates:
        try:
            config.validate()
        except ValueError as exc:
            print(
                f"left out: pad {config.vad.pad_ms}, early {config.early_end_ms}, speculative "
                f"{config.speculative_final_ms}, end {config.speculative_end_ms}: {exc}",
                file=sys.stderr,
            )
        else:
            configs.append(config)
    if not configs:
        parser.error("no combination of the lists is valid (see above)")
    header = (
        f"{'set':<8} {'rate':<9} {'pad_ms':>6} {'early_ms':>8} {'spec_ms':>7} {'s_end':>5} {'beam':>4} "
        f"{'clips':>5} "
        f"{'WER_%':>6} {'same':>4} {'early':>5} {'cuts':>4} {'turn_early':>10} {'spec':>4} {'used':>4} "
        f"{'commit':>6} {'commits':>7} {'p50_ms':>7} {'p95_ms':>7} {'dec/min':>7} {'busy_%':>6} {'p50_x':>6} "
        f"{'p95_x':>6}"
    )
    print(header, flush=True)
    started = time.perf_counter()
    summary: list[str] = []
    for set_name in args.sets:
        clips = load_set(set_name, args.shared_data)
        clips = clips[: args.limit] if args.limit else clips
        for rate in args.rates:
            streams = [stream_of(c, rate) for c in clips]
            rows: list[Row] = []
            for config in configs:
                row = measure(clips, streams, set_name, rate, config, recognizer, args.cut_ms)
                rows.append(row)
                p50_x, p95_x = row.p50_ms / rows[0].p50_ms, row.p95_ms / rows[0].p95_ms
                same = sum(a == b for a, b in zip(row.texts, rows[0].texts, strict=True))
                print(
                    f"{set_name:<8} {rate:<9} {row.pad_ms:>6} {row.early_end_ms:>8} {row.speculative_ms:>7} "
                    f"{row.speculative_end_ms:>5} {row.beam:>4} "
                    f"{row.clips:>5} {row.wer:6.2f} {same:>4} {row.early:>5} {row.cuts:>4} "
                    f"{row.turn_early:>10} {row.speculations:>4} {row.used:>4} "
                    f"{'on' if row.commit else 'off':>6} {row.commits:>7} {row.p50_ms:7.0f} "
                    f"{row.p95_ms:7.0f} {row.decodes_per_min:7.1f} {row.busy_pct:6.1f} "
                    f"{p50_x:6.2f} {p95_x:6.2f}",
                    flush=True,
                )
                if args.per_clip:
                    print("  per clip (ms): " + " ".join(f"{ms:.0f}" for ms in row.latencies_ms), flush=True)
                summary.append(
                    f"{set_name}/{rate}/pad{row.pad_ms}/{row.early_end_ms}/{row.speculative_ms}ms/"
                    f"end{row.speculative_end_ms}/b{row.beam}/commit-{'on' if row.commit else 'off'} "
                    f"wer={row.wer:.2f} same={same}/{row.clips} cuts={row.cuts} commits={row.commits} "
                    f"p50={row.p50_ms:.0f} p95={row.p95_ms:.0f} dec/min={row.decodes_per_min:.1f} "
                    f"busy={row.busy_pct:.1f}%"
                )
    print(f"wall {time.perf_counter() - started:.0f} s")
    print("endpointing " + "; ".join(summary))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
