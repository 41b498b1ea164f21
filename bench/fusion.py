"""What tone fusion costs the scorer per utterance, against scoring the text alone, in the same run.

Rows (one thread, CPU time of the calling thread, p50 / p95 over many utterances):
  text_only        tokenise + INT8 forward pass of one utterance (``SentimentModel``, as the scorer serves)
  fusion_stage     what fusion adds in the scorer: the prosody message to features, the deviation from the
                   speaker's baseline and its update (``CallBaselines.observe``), the head (``fuse``)
  text_plus_fusion the two together, and their ratio to text_only
  asr_prosody      for reference: ``asr_service.prosody.analyze`` of a 3 s segment, which the ASR already
                   computes for every final whether or not anything fuses it (not a cost of fusion)

The utterances: the sales lines of bench/scorer.py, each with a prosody message varied around a speaker's
voice, in one call (so baselines grow as they do live).

Goal (issue 15): fusion_stage <= 5 ms per utterance. Last line:
``fusion_stage_p50_ms=<x> text_only_p50_ms=<y> ratio_total_to_text=<z>``.

Run: ``.venv/bin/python bench/fusion.py [--repeats N] [--fusion PATH]``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

import numpy as np  # noqa: E402  (after the thread setting, which ONNX Runtime reads at import)

from callsense.v1 import audio_pb2, chopper_pb2, prosody_pb2  # noqa: E402

MIXED = [
    "Sounds good.",
    "Can you send me the contract by Friday?",
    "Honestly the price you quoted is a lot higher than what we budgeted for this year.",
    "I really like what you showed us in the demo, the team was impressed.",
    "That is way too expensive for a company of our size, I'm not sure this works.",
    "We are also talking to one of your competitors at the moment.",
    "Who else would need to sign off on this on your side?",
]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(round(q / 100 * (len(ordered) - 1))), len(ordered) - 1)]


def cpu_ms(call: Callable[[], object]) -> float:
    started = time.thread_time()
    call()
    return (time.thread_time() - started) * 1000.0


def voice(rng: np.random.Generator) -> prosody_pb2.Prosody:
    return prosody_pb2.Prosody(
        rms_dbfs=float(rng.normal(-25, 3)),
        pitch_mean_hz=float(rng.normal(130, 12)),
        pitch_std_hz=float(abs(rng.normal(18, 4))),
        speaking_rate_wps=float(abs(rng.normal(2.6, 0.4))),
        mfcc_mean=rng.normal(0, 5, 13).tolist(),
        mfcc_std=np.abs(rng.normal(8, 2, 13)).tolist(),
        voiced_fraction=float(rng.uniform(0.4, 0.8)),
    )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=400, help="utterances timed per row")
    parser.add_argument("--fusion", type=Path, help="fusion.json (default: the shipped head)")
    args = parser.parse_args()

    from asr_service.prosody import analyze
    from scorer_service.fusion.head import FusionHead
    from scorer_service.fusion.tone import ToneFuser
    from scorer_service.inference import SentimentInput, SentimentModel

    model = SentimentModel.load(threads=1)
    model.warm_up()
    head = FusionHead.load(args.fusion) if args.fusion else FusionHead.load()
    tone = ToneFuser(head)
    rng = np.random.default_rng(0)
    utterances = []
    for i in range(args.repeats):
        u = chopper_pb2.Utterance(
            call_id="bench", utterance_id=i, text=MIXED[i % len(MIXED)], channel=audio_pb2.CUSTOMER
        )
        u.prosody.CopyFrom(voice(rng))
        utterances.append(u)

    text_ms, fusion_ms = [], []
    fused_count = 0
    for u in utterances:
        holder: dict[str, object] = {}

        def text(u: chopper_pb2.Utterance = u, holder: dict[str, object] = holder) -> None:
            holder["p"] = model.predict_encoded([model.encode(SentimentInput(u.text))])[0]

        def fuse(u: chopper_pb2.Utterance = u, holder: dict[str, object] = holder) -> None:
            z = tone.observe("bench", u, 0.0)
            if z is not None:
                holder["fused"] = tone.fuse(holder["p"], z)  # type: ignore[arg-type]

        text_ms.append(cpu_ms(text))
        fusion_ms.append(cpu_ms(fuse))
        fused_count += "fused" in holder
    total = [a + b for a, b in zip(text_ms, fusion_ms, strict=True)]
    segment = np.random.default_rng(1).normal(0, 0.1, 48_000)
    prosody_ms = [cpu_ms(lambda: analyze(segment, n_words=8)) for _ in range(30)]

    def row(name: str, samples: list[float]) -> None:
        print(f"{name:<18} p50 {statistics.median(samples):8.4f} ms   p95 {percentile(samples, 95):8.4f} ms")

    print(
        f"head {head.version}: {len(head.features)} features, {len(head.layers)} layer(s); {fused_count} of "
        f"{len(utterances)} utterances fused (the first has no baseline)"
    )
    row("text_only", text_ms)
    row("fusion_stage", fusion_ms)
    row("text_plus_fusion", total)
    row("asr_prosody", prosody_ms)
    ratio = statistics.median(total) / statistics.median(text_ms)
    print(
        f"fusion_stage_p50_ms={statistics.median(fusion_ms):.4f} "
        f"text_only_p50_ms={statistics.median(text_ms):.3f} ratio_total_to_text={ratio:.4f}"
    )


if __name__ == "__main__":
    main()
