"""Scorer latency and throughput on this machine, against the baseline every user tries first.

Rows, same run, same inputs:
  hf_pipeline_fp32      transformers `pipeline("text-classification")` on torch fp32, the 6-layer
                        MiniLM architecture the model is trained from (the baseline)
  onnx_fp32_unfused     that model exported to ONNX as traced, ONNX Runtime fp32
  onnx_fp32_fused       the same after ONNX Runtime's transformer fusions (attention, GELU, layer norm)
  onnx_int8_fused       the same, dynamic INT8 (per-channel weights)
  onnx_int8_shipped     the model the package ships (`scorer_service/model/model.int8.onnx`),
                        through `SentimentModel` exactly as the scorer serves it
  shipped_with_context  where the shipped model reads the line before (its card's uses_context): the
                        same inputs each after PREVIOUS, as served; the last line then reports this row
  served_u8_as_stored   on a CPU with VNNI only: the served row again with the INT8 weights as stored
                        (unsigned) instead of signed (`callsense.int8_weights`): what signing them buys
  served_fused_layer_norm  the served row again with the file's fused SkipLayerNormalization nodes
                        instead of plain ones (`scorer_service/backends/layer_norm.py`): what unfusing buys
Latency: batch 1, one thread, tokenise + forward, at about 20 and about 128 tokens (p50/p95 ms).
Throughput: utterances/s over a mixed set, batch 32, length-bucketed, one thread.

The last line: `speedup_int8_vs_hf_pipeline=<x> p95_ms_int8_20tok=<y>` where x is the ratio of the
baseline's p50 to the shipped model's p50 at 20 tokens, and y the shipped model's p95; for a model that
reads context both come from `shipped_with_context`, whose short input is the 20 tokens after PREVIOUS
(about 34 tokens in all, printed), so the key's "20tok" names the utterance, not the whole input.

Run: `.venv/bin/python bench/scorer.py` (needs torch and transformers for the baseline rows).
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

os.environ.setdefault("OMP_NUM_THREADS", "1")

SHORT = "Honestly the price you quoted is a lot higher than what we budgeted for this year."
LONG = (
    "Look, I have been going back and forth with my finance team for three weeks now about this renewal, "
    "and every time we get close to an agreement the number changes, the implementation timeline slips, "
    "and nobody on your side can tell me who will actually support us after go-live, so before we talk "
    "about another discount I need a straight answer on the onboarding plan, the named contacts, and "
    "whether the reporting module is included or is yet another add-on that we will be billed for later "
    "because that is exactly what happened last year."
)
PREVIOUS = "It comes to forty dollars per seat per month, billed annually."
"""The line before SHORT, as the chopper sends it to a model that reads context (the agent's price)."""
MIXED = [
    "Sounds good.",
    "Can you send me the contract by Friday?",
    SHORT,
    "I really like what you showed us in the demo, the team was impressed.",
    "That is way too expensive for a company of our size, I'm not sure this works.",
    LONG,
    "We are also talking to one of your competitors at the moment.",
    "Who else would need to sign off on this on your side?",
]


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(int(round(q / 100 * (len(ordered) - 1))), len(ordered) - 1)]


def time_calls(call: Callable[[], object], repeats: int, warmup: int = 10) -> tuple[float, float]:
    for _ in range(warmup):
        call()
    samples = []
    for _ in range(repeats):
        started = time.perf_counter()
        call()
        samples.append((time.perf_counter() - started) * 1000)
    return statistics.median(samples), percentile(samples, 95)


def throughput(score_many: Callable[[list[str]], object], texts: list[str], rounds: int) -> float:
    score_many(texts)
    started = time.perf_counter()
    for _ in range(rounds):
        score_many(texts)
    return rounds * len(texts) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--repeats", type=int, default=300)
    parser.add_argument(
        "--hf-model", default="", help="HF checkpoint for the baseline (default: MiniLM-L6 + 3-class head)"
    )
    args = parser.parse_args()

    import torch

    torch.set_num_threads(1)
    from transformers import AutoModelForSequenceClassification, AutoTokenizer, pipeline

    from callsense.int8_weights import cpu_has_vnni
    from callsense.tokenization import SentimentTokenizer
    from scorer_service.backends.onnx import OnnxBackend
    from scorer_service.inference import DEFAULT_MODEL, ModelInfo, SentimentInput, SentimentModel
    from training.export import export_all
    from training.train import default_base_model

    hf_path = args.hf_model or default_base_model()
    tokenizer_file = DEFAULT_MODEL.parent / "tokenizer.json"
    counter = SentimentTokenizer(tokenizer_file)
    print(f"inputs: short {counter.count(SHORT)} tokens, long {counter.count(LONG)} tokens; one thread")

    rows: dict[str, dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as tmp:
        checkpoint = Path(tmp) / "hf"
        model = AutoModelForSequenceClassification.from_pretrained(
            hf_path, num_labels=3, attn_implementation="eager"
        )
        model.save_pretrained(checkpoint)
        AutoTokenizer.from_pretrained(hf_path).save_pretrained(checkpoint)
        files, _ = export_all(checkpoint, Path(tmp) / "onnx")

        classifier = pipeline("text-classification", model=str(checkpoint), device="cpu", top_k=None)
        rows["hf_pipeline_fp32"] = measure(
            lambda text: classifier(text), lambda texts: classifier(texts, batch_size=32), args.repeats
        )
        steps = (
            ("onnx_fp32_unfused", files.fp32),
            ("onnx_fp32_fused", files.fused),
            ("onnx_int8_fused", files.int8),
        )
        for name, path in steps:
            candidate = SentimentModel(
                OnnxBackend(path, threads=1), SentimentTokenizer(tokenizer_file), ModelInfo(name, False)
            )
            rows[name] = measure_model(candidate, args.repeats)
    shipped = SentimentModel.load(DEFAULT_MODEL, threads=1, backend="onnx")
    rows["onnx_int8_shipped"] = measure_model(shipped, args.repeats)
    served = "onnx_int8_shipped"
    if shipped.info.uses_context:  # as served: each utterance after the line before it
        served = "shipped_with_context"
        rows[served] = measure_model(shipped, args.repeats, previous=PREVIOUS)
    if cpu_has_vnni():  # what signing the stored u8 weights buys here (callsense.int8_weights)
        stored = SentimentModel(
            OnnxBackend(DEFAULT_MODEL, threads=1, vnni=False), shipped.tokenizer, shipped.info
        )
        rows["served_u8_as_stored"] = measure_model(
            stored, args.repeats, previous=PREVIOUS if shipped.info.uses_context else ""
        )

    fused_norms = SentimentModel(
        OnnxBackend(DEFAULT_MODEL, threads=1, unfuse_layer_norm=False), shipped.tokenizer, shipped.info
    )
    rows["served_fused_layer_norm"] = measure_model(
        fused_norms, args.repeats, previous=PREVIOUS if shipped.info.uses_context else ""
    )

    import platform

    print(f"\ncpu: {platform.processor() or platform.machine()}, vnni: {cpu_has_vnni()}")
    print(f"{'backend':<24} {'p50_20':>8} {'p95_20':>8} {'p50_128':>8} {'p95_128':>8} {'utt/s':>8}")
    for name, row in rows.items():
        print(
            f"{name:<24} {row['p50_short']:8.2f} {row['p95_short']:8.2f} {row['p50_long']:8.2f} "
            f"{row['p95_long']:8.2f} {row['throughput']:8.1f}"
        )
    base, ours = rows["hf_pipeline_fp32"], rows[served]
    print(f"shipped model: {shipped.info.version} ({DEFAULT_MODEL.stat().st_size / 1e6:.1f} MB)")
    if shipped.info.uses_context:
        served_tokens = len(shipped.encode(SentimentInput(SHORT, PREVIOUS)))
        print(f"served with context: the short input after its line before is {served_tokens} tokens")
    print(
        f"speedup_int8_vs_hf_pipeline={base['p50_short'] / ours['p50_short']:.2f} "
        f"p95_ms_int8_20tok={ours['p95_short']:.2f}"
    )


def measure(
    one: Callable[[str], object], many: Callable[[list[str]], object], repeats: int
) -> dict[str, float]:
    p50_short, p95_short = time_calls(lambda: one(SHORT), repeats)
    p50_long, p95_long = time_calls(lambda: one(LONG), max(repeats // 3, 30))
    rate = throughput(many, MIXED * 8, rounds=3)
    return {
        "p50_short": p50_short,
        "p95_short": p95_short,
        "p50_long": p50_long,
        "p95_long": p95_long,
        "throughput": rate,
    }


def measure_model(model: object, repeats: int, previous: str = "") -> dict[str, float]:
    """``previous``: every input scored after that line (a model without context ignores it)."""
    from scorer_service.inference import SentimentInput, SentimentModel

    assert isinstance(model, SentimentModel)
    return measure(
        lambda text: model.predict_encoded([model.encode(SentimentInput(text, previous))]),
        lambda texts: model.predict([SentimentInput(t, previous) for t in texts], max_batch=32),
        repeats,
    )


if __name__ == "__main__":
    main()
