"""The objection tagger's cost in the post-call worker: one fit against a folder of fits averaged.

The tagger reads each customer segment of an ended call with the rep's lines around it; a folder of fits
(the shipped `postcall/objection_adapters/`, or `--fits DIR`) averages them, each a pass of MiniLM. Rows,
same run, same inputs (the customer lines of the sales corpus's first dev calls, with their contexts, in
calls as the worker tags them), BLAS on one thread as the worker runs it:
  one_fit         the folder's first file alone (what `CALLSENSE_OBJECTIONS_MODEL=<file>` serves)
  folder          the whole folder, probabilities averaged

Per row: milliseconds per customer segment (p50 and p95 over the calls, each call's time divided by its
segments) and the memory the classifier took when loaded (RSS growth).
The last line: `tagger_ms_per_segment_one_fit=<a> tagger_ms_per_segment_folder=<b> folder_vs_one_fit=<b/a>
fits=<n>`.

Run: `.venv/bin/python bench/tagger.py [--fits DIR] [--calls 40] [--repeats 3]`.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import psutil
from threadpoolctl import threadpool_limits

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from postcall.objection_encoder import (  # noqa: E402
    ADAPTER_PATH,
    ObjectionClassifier,
    adapter_files,
    segment_contexts,
)
from training.objection_eval import by_call, load_gold_lines  # noqa: E402

Pairs = list[tuple[str, str]]


def customer_pairs(calls: int) -> list[Pairs]:
    """Per call, the (context, segment) pairs of its customer lines, as the worker builds them."""
    out: list[Pairs] = []
    for lines in list(by_call(load_gold_lines(split="dev")).values())[:calls]:
        texts = [line.text for line in lines]
        contexts = segment_contexts(texts, [line.speaker for line in lines])
        out.append([(contexts[i], texts[i]) for i, line in enumerate(lines) if line.speaker == "customer"])
    return [pairs for pairs in out if pairs]


def measure(classifier: ObjectionClassifier, calls: list[Pairs], repeats: int) -> list[float]:
    """Milliseconds per segment, one sample per call and repeat."""
    classifier.probabilities(calls[0])  # warm-up: first-call allocations
    samples = []
    for _ in range(repeats):
        for pairs in calls:
            started = time.perf_counter()
            classifier.probabilities(pairs)
            samples.append((time.perf_counter() - started) * 1000 / len(pairs))
    return samples


def quantile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--calls", type=int, default=40, help="sales dev calls tagged (default 40)")
    parser.add_argument("--repeats", type=int, default=3, help="passes over them per row (default 3)")
    parser.add_argument("--fits", type=Path, default=ADAPTER_PATH, help="a folder of fits (default: shipped)")
    args = parser.parse_args()
    calls = customer_pairs(args.calls)
    segments = sum(len(pairs) for pairs in calls)
    files = adapter_files(args.fits)
    print(
        f"{len(calls)} calls, {segments} customer segments; {len(files)} fits in {args.fits}; "
        "BLAS on 1 thread"
    )
    process = psutil.Process()
    p50: dict[str, float] = {}
    with threadpool_limits(limits=1, user_api="blas"):
        for row, path in (("one_fit", files[0]), ("folder", args.fits)):
            before = process.memory_info().rss
            classifier = ObjectionClassifier(path)
            grown_mb = (process.memory_info().rss - before) / 2**20
            samples = measure(classifier, calls, args.repeats)
            p50[row] = statistics.median(samples)
            print(
                f"{row:15s} fits {classifier.fits}  ms/segment p50 {p50[row]:6.2f}  p95 "
                f"{quantile(samples, 0.95):6.2f}  memory +{grown_mb:.0f} MB"
            )
            del classifier
    print(
        f"tagger_ms_per_segment_one_fit={p50['one_fit']:.2f} tagger_ms_per_segment_folder="
        f"{p50['folder']:.2f} folder_vs_one_fit={p50['folder'] / p50['one_fit']:.2f} "
        f"fits={len(files)}"
    )


if __name__ == "__main__":
    main()
