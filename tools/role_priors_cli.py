"""``callsense fit-role-priors``: fit a served model's per-role priors and re-measure its card.

    callsense fit-role-priors [MODEL_DIR] [--on sales:dev]

MODEL_DIR holds model.int8.onnx and model_card.json (default: the shipped scorer_service/model). The
priors (training/role_priors.py) are fitted on the model's own scores of a labelled set whose lines say who
speaks (the sales corpus), written into the card's ``role_priors``, and every set the card reports is
measured again with them. The scorer applies them by the utterance's channel. Exit 0 done, 2 the set has
no roles or the model cannot be read.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "fit-role-priors",
        help="fit a served model's per speaker role priors on the sales dev split and re-measure its card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("model_dir", nargs="?", type=Path, help="a served model folder (default: the shipped one)")
    p.add_argument("--on", default="sales:dev", help="the labelled set to fit on (default sales:dev)")


def run(args: argparse.Namespace) -> int:
    from scorer_service.inference import DEFAULT_MODEL
    from training.role_priors import refit_card

    try:
        card = refit_card(args.model_dir or DEFAULT_MODEL.parent, args.on)
    except (ValueError, OSError) as exc:
        print(f"callsense fit-role-priors: {exc}", file=sys.stderr)
        return 2
    for role, shift in card["role_priors"]["shift"].items():
        print(f"{role}: " + " ".join(f"{v:+.3f}" for v in shift))
    for spec, report in card["metrics"].items():
        print(f"{spec}: macro-F1 {report['macro_f1']:.4f}")
    return 0
