"""How long the recording path takes per hour of stereo call audio, per Whisper model, in the same run.

The call: a stereo recording made of the ``speech/asr_dev`` clips (real read speech, LJSpeech) taking
turns, agent on the left channel and customer on the right, 0.7 s between turns, each channel silent
while the other speaks, as a two-party call recorder writes it; ``--repeats`` rounds of the 24 clips;
``--rate 8k-mulaw``: each clip as a phone line carries it (G.711 mu-law at 8 kHz), as most call
recorders store calls.
Each configuration transcribes it through ``asr_service.recording.transcribe_recording`` (what the ASR's
TranscribeRecording and ``callsense analyze`` run: the VAD filter, Whisper, the hallucination guard,
prosody), on this thread, with the settings given as ``MODEL:BEAM`` (beam 1: greedy, no fallback; beam
> 1: ``OfflineOptions``' beam search with temperature fallback).

Rows: wall and CPU seconds, the hour of audio that pace gives (``hour_min``: minutes per hour of stereo
call), WER against the clips' transcripts (Whisper's English normaliser, tools/asr_eval.py), and the wall
time's ratio to the first configuration (the baseline, tiny.en greedy unless told otherwise).

Goal (issue 14): recordings use the most accurate model that transcribes an hour of stereo call audio in
under 15 minutes on this machine. Last line: ``fastest=<config> most_accurate_within_15min=<config>``.

Run: ``.venv/bin/python bench/recordings.py [--repeats 2] [--rate 16k|8k-mulaw] [MODEL:BEAM ...]``.
"""

from __future__ import annotations

import argparse
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from asr_service.models import resolve_model_dir  # noqa: E402
from asr_service.recording import OfflineOptions, Recording, transcribe_recording  # noqa: E402
from asr_service.transcribe_file import load_offline_model  # noqa: E402
from callsense.config import load_config  # noqa: E402
from tools.asr_eval import RATES, corpus_wer, load_set, telephone  # noqa: E402

HOUR_GOAL_MIN = 15.0
GAP_S = 0.7


@dataclass(frozen=True)
class StereoCall:
    recording: Recording
    references: tuple[str, str]
    """The words said on the agent's and on the customer's channel, in order."""

    @property
    def duration_s(self) -> float:
        return self.recording.duration_s


def stereo_call(shared_data: Path, repeats: int, rate: str = "16k", seed: int = 0) -> StereoCall:
    clips = load_set("asr_dev", shared_data)
    rng = np.random.default_rng(seed)
    channels: tuple[list[np.ndarray], list[np.ndarray]] = ([], [])
    words: tuple[list[str], list[str]] = ([], [])
    gap = np.zeros(int(GAP_S * 16_000), dtype=np.float32)
    turn = 0
    for _ in range(repeats):
        for index in rng.permutation(len(clips)):
            audio = clips[index].audio
            speech = telephone(audio)[1] if rate == "8k-mulaw" else audio.mono_16k()
            speaker = turn % 2
            channels[speaker].append(speech)
            channels[1 - speaker].append(np.zeros_like(speech))
            for channel in channels:
                channel.append(gap)
            words[speaker].append(clips[index].reference)
            turn += 1
    stacked = np.stack([np.concatenate(channels[0]), np.concatenate(channels[1])], axis=1)
    pcm = np.round(np.clip(stacked, -1.0, 32767 / 32768) * 32768).astype(np.int16)
    return StereoCall(Recording(("agent", "customer"), pcm), (" ".join(words[0]), " ".join(words[1])))


@dataclass(frozen=True)
class Row:
    config: str
    wall_s: float
    cpu_s: float
    hour_min: float
    wer: float


def measure(config: str, call: StereoCall, cache: Path) -> Row:
    model_name, _, beam = config.partition(":")
    beam_size = int(beam or "5")
    model = load_offline_model(resolve_model_dir(model_name, cache))
    options = OfflineOptions(beam_size=beam_size, temperatures=(0.0,)) if beam_size == 1 else OfflineOptions()
    transcribe_recording(
        model, Recording(call.recording.roles, call.recording.samples[: 16_000 * 5]), options
    )
    started_wall, started_cpu = time.perf_counter(), time.process_time()
    transcripts = transcribe_recording(model, call.recording, options)
    wall, cpu = time.perf_counter() - started_wall, time.process_time() - started_cpu
    heard = tuple(" ".join(t.text for t in transcripts if t.channel == ch) for ch in (0, 1))
    wer = corpus_wer(list(call.references), list(heard))
    return Row(config, wall, cpu, wall * 3600 / call.duration_s / 60, wer)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("configs", nargs="*", default=["tiny.en:1", "tiny.en:5", "base:5"])
    parser.add_argument("--repeats", type=int, default=2, help="rounds of the 24 asr_dev clips (2: ~6 min)")
    parser.add_argument(
        "--rate", choices=RATES, default="16k", help="8k-mulaw: each clip as a phone line carries it"
    )
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    args = parser.parse_args(argv)
    if not (args.shared_data / "speech" / "asr_dev").is_dir():
        print(f"SKIPPED: {args.shared_data}/speech/asr_dev is absent (the bench reads real speech)")
        return 0
    call = stereo_call(args.shared_data, args.repeats, args.rate)
    cache = load_config().data_dir / "asr-models"
    print(
        f"stereo call: {call.duration_s / 60:.1f} min, {args.repeats} rounds of asr_dev, {args.rate}",
        flush=True,
    )
    print(f"{'config':<12} {'wall_s':>7} {'cpu_s':>7} {'hour_min':>9} {'WER_%':>6} {'x_base':>7}")
    rows: list[Row] = []
    for config in args.configs:
        row = measure(config, call, cache)
        rows.append(row)
        ratio = row.wall_s / rows[0].wall_s
        numbers = f"{row.wall_s:7.1f} {row.cpu_s:7.1f} {row.hour_min:9.1f} {row.wer:6.2f} {ratio:7.2f}"
        print(f"{row.config:<12} {numbers}", flush=True)
    within = [r for r in rows if r.hour_min < HOUR_GOAL_MIN]
    best = min(within, key=lambda r: r.wer).config if within else "none"
    print(f"fastest={min(rows, key=lambda r: r.wall_s).config} most_accurate_within_15min={best}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
