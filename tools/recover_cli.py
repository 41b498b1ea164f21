"""``callsense recover``: the fp32 weights of a served INT8 model, as a checkpoint to fine-tune from.

    callsense recover [MODEL_DIR] --template CHECKPOINT --output DIR

MODEL_DIR holds model.int8.onnx and model_card.json (default: the shipped scorer_service/model). The
template is any checkpoint of the same architecture and tokenizer (e.g. a `callsense train` output from
the same base model); DIR gets a checkpoint that `callsense train --base-model DIR` fine-tunes further
(training/recover.py says how, and how close it comes). Exit 0 done, 2 the graph does not hold the
template's parameters.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "recover",
        help="the fp32 weights of a served INT8 model, as a checkpoint to fine-tune from",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", nargs="?", type=Path, help="a served model folder (default: the shipped one)")
    p.add_argument("--template", type=Path, required=True, help="a checkpoint of the same architecture")
    p.add_argument("--output", type=Path, required=True, help="the checkpoint folder to write")


def run(args: argparse.Namespace) -> int:
    from scorer_service.inference import DEFAULT_MODEL
    from training.recover import RecoveryError, recover_checkpoint

    try:
        recovered = recover_checkpoint(args.model_dir or DEFAULT_MODEL.parent, args.template, args.output)
    except (RecoveryError, OSError) as exc:  # OSError: a missing model, card or template
        print(f"callsense recover: {exc}", file=sys.stderr)
        return 2
    print(
        f"recovered {recovered.parameters} parameter tensors (temperature {recovered.temperature:g} "
        f"unfolded) into {recovered.output}"
    )
    return 0
