"""Does batching partial decodes pay on this CPU (issue 17)? Whisper one stretch at a time against a batch.

Partial-like segments: the first 2-8 s of each clip of ``speech/asr_dev`` (LJ Speech; 16 kHz), the
lengths spread evenly over that range, as the partials of several calls' open segments are. They are
decoded as the service decodes partials (greedy, no word timestamps, tiny.en int8 on one thread): one
``WhisperRecognizer.recognize`` per segment, then in groups of K with ``recognize_batch`` (one ``encode``
and one ``generate`` per group, each segment padded with silence to the group's longest).

Rows, per K (1, 2, 4, 8): process CPU seconds per decode one by one and batched, their ratio (below 1:
batching pays), wall seconds per decode, and how many batched texts differ from the one-by-one text (the
padding changes what the shorter ones hear). Process CPU time covers CTranslate2's own threads; the box
is shared, so each measure is the least of ``--rounds`` runs.

Run: ``.venv/bin/python bench/asr_batching.py [--sizes 1 2 4 8] [--rounds 3] [--limit 24]``. Last line:
``asr_batching K=<k> ratio=<r> ...`` per K.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from asr_service.recognizer import WhisperRecognizer  # noqa: E402
from asr_service.transcribe_file import load_audio  # noqa: E402
from asr_service.vad import SAMPLE_RATE  # noqa: E402

FloatArray = npt.NDArray[np.float32]
DATA = REPO.parent / "shared" / "data" / "speech" / "asr_dev"
MIN_S, MAX_S = 2.0, 8.0


@dataclass(frozen=True)
class Row:
    size: int
    cpu_single: float
    """CPU seconds per decode, one by one."""
    cpu_batched: float
    wall_single: float
    wall_batched: float
    differ: int
    decodes: int

    @property
    def ratio(self) -> float:
        return self.cpu_batched / self.cpu_single


def segments(limit: int) -> list[FloatArray]:
    """The first ``MIN_S``-``MAX_S`` seconds of each clip (lengths spread evenly); espeak-ng speech
    when the data set is not there."""
    clips: list[FloatArray] = []
    for path in sorted(DATA.glob("*.flac"))[:limit]:
        clips.append((load_audio(path, sample_rate_hz=SAMPLE_RATE).mono() / 32768.0).astype(np.float32))
    if not clips:
        sys.path.insert(0, str(REPO / "tests"))
        from support.audio import speak

        sentence = "thanks for calling, I wanted to ask about the renewal price and the new contract terms"
        clips = [speak(sentence, words_per_minute=130 + 5 * i) for i in range(limit)]
    out = []
    for i, clip in enumerate(clips):
        seconds = MIN_S + (MAX_S - MIN_S) * ((i * 7) % len(clips)) / max(1, len(clips) - 1)
        out.append(clip[: int(seconds * SAMPLE_RATE)])
    return out


def measure(fn: Callable[[], list[str]], rounds: int) -> tuple[float, float, list[str]]:
    """Least CPU and wall seconds of ``rounds`` runs of ``fn``, and its texts."""
    cpu = wall = float("inf")
    texts: list[str] = []
    for _ in range(rounds):
        c0, w0 = time.process_time(), time.perf_counter()
        texts = fn()
        cpu, wall = min(cpu, time.process_time() - c0), min(wall, time.perf_counter() - w0)
    return cpu, wall, texts


def run(recognizer: WhisperRecognizer, clips: list[FloatArray], size: int, rounds: int) -> Row:
    n = len(clips) - len(clips) % size
    clips = clips[:n]

    def single() -> list[str]:
        return [recognizer.recognize(x, word_timestamps=False).text for x in clips]

    def batched() -> list[str]:
        texts = []
        for i in range(0, n, size):
            texts += [r.text for r in recognizer.recognize_batch(clips[i : i + size])]
        return texts

    cpu_s, wall_s, texts_s = measure(single, rounds)
    cpu_b, wall_b, texts_b = measure(batched, rounds)
    for a, b in zip(texts_s, texts_b, strict=True):
        if a != b:
            print(f"  K={size} differs: {a!r}\n  {'':>{len(str(size)) + 10}}{b!r}")
    differ = sum(a != b for a, b in zip(texts_s, texts_b, strict=True))
    return Row(size, cpu_s / n, cpu_b / n, wall_s / n, wall_b / n, differ, n)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--limit", type=int, default=24, help="segments (clips) decoded per measure")
    args = parser.parse_args(argv)
    recognizer = WhisperRecognizer()
    recognizer.warm_up()
    clips = segments(args.limit)
    seconds = [len(x) / SAMPLE_RATE for x in clips]
    print(f"{len(clips)} segments, {min(seconds):.1f}-{max(seconds):.1f} s, model {recognizer.name}")
    rows = [run(recognizer, clips, size, args.rounds) for size in args.sizes]
    print(
        f"{'K':>2} {'cpu 1by1':>9} {'cpu batch':>9} {'ratio':>6} {'wall 1by1':>9} {'wall batch':>10} differ"
    )
    for r in rows:
        print(
            f"{r.size:>2} {r.cpu_single:>9.3f} {r.cpu_batched:>9.3f} {r.ratio:>6.2f} "
            f"{r.wall_single:>9.3f} {r.wall_batched:>10.3f} {r.differ}/{r.decodes}"
        )
    print(
        "asr_batching "
        + " ".join(f"K={r.size} ratio={r.ratio:.2f} differ={r.differ}/{r.decodes}" for r in rows)
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
