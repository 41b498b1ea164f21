"""`callsense drift baseline`: the training baseline of the drift check, computed from the training text.

    callsense drift baseline [--sources meld:train ...] [--model scorer_service/model/model.int8.onnx]
                             [--min-count 2] [--top 20000] [--no-scores] [--out postcall/drift_baseline.json]

Reads the training text the model's card names (``training.config.train``: ``meld:train`` for the shipped
model; ``--sources`` to name others) through ``training.data.load_source`` (``../shared/data``, or
``CALLSENSE_SHARED_DATA``), and writes:
- the vocabulary: the words (postcall/drift.py ``words``) seen at least ``--min-count`` times, most frequent
  first, at most ``--top`` (MELD train: about 2,700 words, some 30 KB of JSON);
- the drift indicators of that text: tokens per utterance with the model's tokenizer, stop-word ratio, its
  own out-of-vocabulary rate (the words seen fewer times), and, unless ``--no-scores``, the label mix and
  mean confidence of the model's own scores of it (the served INT8 model, one pass per line: about a
  minute for MELD train on two cores).

Deterministic: the same text and model write the same file. The shipped file is written by this command
with its defaults, never by hand; the command line that wrote it is in its ``command`` field.

Exit codes: 0 written, 2 bad input (a corpus or the model missing).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("drift", help="the drift check's training baseline (postcall/drift_baseline.json)")
    verbs = p.add_subparsers(dest="verb", required=True)
    baseline = verbs.add_parser("baseline", help="compute the baseline from the model's training text")
    baseline.add_argument(
        "--sources", nargs="+", default=None, help="the training text (default: what the model's card names)"
    )
    baseline.add_argument("--model", default="", help="the ONNX model (default: the shipped one)")
    baseline.add_argument("--min-count", type=int, default=2, help="a vocabulary word's least count (2)")
    baseline.add_argument("--top", type=int, default=20_000, help="at most this many words (20000)")
    baseline.add_argument(
        "--no-scores", action="store_true", help="leave out the label mix and confidence (no model run)"
    )
    baseline.add_argument("--out", default="", help="default: the shipped postcall/drift_baseline.json")
    baseline.add_argument("--data", default="", help="the corpora folder (default: ../shared/data)")


def run(args: argparse.Namespace) -> int:
    try:
        return _baseline(args)
    except (OSError, ValueError, KeyError) as exc:
        print(f"callsense drift {args.verb}: {exc}", file=sys.stderr)
        return 2


def card_training_sources(model_dir: Path) -> list[str]:
    """The training sets the model's card names (``training.config.train``)."""
    card = json.loads((model_dir / "model_card.json").read_text(encoding="utf-8"))
    sources = card.get("training", {}).get("config", {}).get("train", [])
    if not sources:
        raise ValueError(f"{model_dir / 'model_card.json'} names no training data: pass --sources")
    return [str(s) for s in sources]


def _baseline(args: argparse.Namespace) -> int:
    from callsense.tokenization import SentimentTokenizer
    from postcall.drift import DEFAULT_BASELINE_PATH
    from scorer_service.inference import DEFAULT_MODEL, read_model_info
    from tools.drift_baseline import compute_baseline
    from training.data import load_sources

    if args.min_count < 1 or args.top < 1:
        raise ValueError("--min-count and --top must be at least 1")
    model = Path(args.model) if args.model else DEFAULT_MODEL
    model_dir = model.parent
    sources = list(args.sources) if args.sources else card_training_sources(model_dir)
    loaded = load_sources(sources, Path(args.data) if args.data else None)
    texts = [example.text for example in loaded.examples]
    if not texts:
        raise ValueError(f"{' '.join(sources)}: no text to make a baseline of")
    command = ["callsense drift baseline", "--sources", *sources]
    command += ["--min-count", str(args.min_count), "--top", str(args.top)]
    if args.no_scores:
        command.append("--no-scores")
    if args.model:
        command += ["--model", args.model]
    scorer = None
    if not args.no_scores:
        from scorer_service.inference import SentimentModel

        scorer = SentimentModel.load(model, threads=2)
    baseline, vocabulary = compute_baseline(
        texts,
        sources=sources,
        model_version=read_model_info(model_dir).version,
        tokenizer=SentimentTokenizer(model_dir / "tokenizer.json"),
        scorer=scorer,
        min_count=args.min_count,
        top_n=args.top,
        command=" ".join(command),
    )
    out = Path(args.out) if args.out else DEFAULT_BASELINE_PATH
    out.write_text(json.dumps(baseline.to_json(vocabulary), indent=1, ensure_ascii=False) + "\n", "utf-8")
    written = {"out": str(out), "lines": baseline.lines, "vocabulary": len(vocabulary)}
    written["skipped_rows"] = len(loaded.errors)
    print(json.dumps({**written, **baseline.indicators.as_dict()}, indent=2))
    return 0
