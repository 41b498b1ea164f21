"""`callsense objections ...`: measure and train the post-call objection tagger.

    callsense objections evaluate [--split dev|test] [--asr] [--json] [--show N] [--model FILE|DIR]
        the shipped local tagger over the split's customer lines of the sales corpus (data/sales), fed
        as the post-call worker feeds it (a call's scored utterances, one line = one segment): per-tag
        precision / recall / F1, micro-F1, the false-tag rate, and the false-tag rate on positive and
        neutral lines that mention money, time, an approver or a vendor (training/objection_eval.py)
    callsense objections train [--splits train dev] (--choose-on dev | --threshold T) [--out FILE]
                               [--epochs N] [--seed S]
        fine-tunes the tagger's encoder (adapters on MiniLM, training/objection_finetune.py) on the sales
        splits named (never test) and the hand-written examples, and writes the adapters of one fit
        (runs/objections/seed<S>.safetensors unless --out; shipping it is copying it into
        postcall/objection_adapters/, whose every file the tagger averages). The threshold: chosen on a
        split it was not fitted on (``--splits train --choose-on dev``), or given (``--splits train dev
        --threshold T``, the shipped fits, the same T in each). Needs the ``train`` extra; 12-13 minutes
        for train alone, 21-22 for train + dev, on two cores

Exit codes: 0 done, 2 bad input. The test split is for the model card: read it once per shipped model.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("objections", help="measure (and train) the post-call objection tagger")
    verbs = p.add_subparsers(dest="verb", required=True)
    evaluate = verbs.add_parser("evaluate", help="the shipped tagger's figures on the sales corpus")
    evaluate.add_argument("--split", choices=("train", "dev", "test"), default="dev", help="default dev")
    evaluate.add_argument("--asr", action="store_true", help="tag the lines as the ASR writes them")
    evaluate.add_argument("--json", action="store_true", help="print the figures as JSON")
    evaluate.add_argument("--show", type=int, default=0, help="list N false tags and N misses (text output)")
    evaluate.add_argument(
        "--model",
        default="",
        help="an adapter file, or a folder of fits to average (default: the shipped folder)",
    )
    evaluate.add_argument(
        "--data", default="", help="the corpus folder (default: the repository's data/sales)"
    )
    train = verbs.add_parser("train", help="fine-tune the tagger's classifier and write its adapters")
    train.add_argument("--out", default="", help="default: runs/objections/seed<S>.safetensors")
    train.add_argument(
        "--splits", nargs="+", default=["train", "dev"], help="the splits to fit on (default train dev)"
    )
    threshold = train.add_mutually_exclusive_group(required=True)
    threshold.add_argument("--choose-on", choices=("train", "dev"), help="choose the threshold on this split")
    threshold.add_argument("--threshold", type=float, help="the tag threshold, in (0, 1]")
    train.add_argument("--epochs", type=int, default=3, help="default 3")
    train.add_argument("--seed", type=int, default=13, help="default 13")
    train.add_argument("--data", default="", help="the corpus folder (default: the repository's data/sales)")


def run(args: argparse.Namespace) -> int:
    try:
        if args.verb == "evaluate":
            return _evaluate(args)
        return _train(args)
    except (OSError, ValueError) as exc:
        print(f"callsense objections {args.verb}: {exc}", file=sys.stderr)
        return 2


def _evaluate(args: argparse.Namespace) -> int:
    from postcall.objections import LocalObjectionTagger
    from scorer_service.inference import SentimentModel
    from training.objection_eval import SALES_DIR, evaluate_tagger, load_gold_lines, render_text

    directory = Path(args.data) if args.data else SALES_DIR

    def progress(done: int, total: int) -> None:
        print(f"\r{done}/{total} calls", end="" if done < total else "\n", file=sys.stderr, flush=True)

    tagger = LocalObjectionTagger(model_path=Path(args.model)) if args.model else LocalObjectionTagger()
    result = evaluate_tagger(tagger, args.split, SentimentModel.load(), args.asr, directory, progress)
    if args.json:
        print(json.dumps(result.to_json(), indent=1))
        return 0
    print(render_text(result))
    if args.show:
        text = {line.line_id: line.asr_text if args.asr else line.text for line in load_gold_lines(directory)}
        print("false tags:")
        for row in result.false_tags[: args.show]:
            print(f"  {row['line_id']} ({row['label']}) {', '.join(row['tags'])}: {text[row['line_id']]}")
        print("missed:")
        for row in result.missed[: args.show]:
            got = ", ".join(row["tags"]) or "nothing"
            print(f"  {row['line_id']} {row['gold']} (got {got}): {text[row['line_id']]}")
    return 0


def _train(args: argparse.Namespace) -> int:
    from training.objection_eval import SALES_DIR

    try:
        from training.objection_finetune import default_out, train_and_write
    except ImportError as exc:  # torch and transformers are the train extra's, never the image's
        raise ValueError(f"training needs the train extra (pip install -e '.[train]'): {exc}") from exc

    if args.epochs < 1:
        raise ValueError(f"--epochs must be at least 1, got {args.epochs}")
    out = Path(args.out) if args.out else default_out(args.seed)
    summary = train_and_write(
        out,
        Path(args.data) if args.data else SALES_DIR,
        args.splits,
        choose_on=args.choose_on,
        threshold=args.threshold,
        epochs=args.epochs,
        seed=args.seed,
        progress=lambda message: print(message, file=sys.stderr, flush=True),
    )
    print(json.dumps(summary, indent=1))
    return 0
