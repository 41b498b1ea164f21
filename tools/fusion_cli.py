"""``callsense train-fusion`` and ``callsense evaluate-fusion``: the tone fusion head (issue 15).

    callsense train-fusion [--shared-data DIR] [--output scorer_service/fusion/fusion.json]
                           [--cache runs/fusion/heard.json] [--asr-model NAME|DIR] [--version V]
    callsense evaluate-fusion [--fusion PATH] [--seeds 0 1 2] [--json FILE] [...]

``train-fusion`` chooses the head on RAVDESS actors 01-12, reports it on 13-18 once, and writes
``fusion.json``, ``FUSION_CARD.md`` and the MODEL_CARD.md section (training/fusion_train.py).
``evaluate-fusion`` prints the macro-F1 and negative recall of text only, prosody only and fused on 13-18
through the real path (training/fusion_eval.py); exit 0, or 2 when the corpus or a model is absent.
Both hear each clip once through the ASR's recording path and cache it (minutes the first time).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

DEFAULT_CACHE = Path("runs/fusion/heard.json")
SALES_CACHE_NAME = "sales-heard.json"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    train = sub.add_parser(
        "train-fusion",
        help="choose and fit the tone fusion head on RAVDESS 01-12, report on 13-18, write it with its card",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(train)
    train.add_argument("--output", type=Path, help="fusion.json to write (default: the shipped one)")
    train.add_argument("--version", help="the head's version (default: tone-<UTC date-time>)")
    train.add_argument(
        "--no-model-card", action="store_true", help="leave scorer_service/model/MODEL_CARD.md alone"
    )
    evaluate = sub.add_parser(
        "evaluate-fusion",
        help="macro-F1 of text only, prosody only and fused on RAVDESS 13-18 through the real path",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    _common(evaluate)
    evaluate.add_argument("--fusion", type=Path, help="fusion.json to evaluate (default: the shipped one)")
    evaluate.add_argument("--seeds", type=int, nargs="+", default=[0], help="orders of each actor's clips")
    evaluate.add_argument("--json", type=Path, metavar="FILE", help="write the full report here")
    evaluate.add_argument(
        "--sales",
        action="store_true",
        help="also the sales test split spoken by espeak-ng (flat voices): text only against fused",
    )


def _common(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--shared-data", type=Path, help="the corpora (default: CALLSENSE_SHARED_DATA or ../shared/data)"
    )
    p.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help=f"heard clips (default {DEFAULT_CACHE})")
    p.add_argument("--asr-model", metavar="NAME|DIR", help="Whisper model (default: the ASR's, tiny.en)")


def run(args: argparse.Namespace) -> int:
    from asr_service.models import ModelUnavailable, resolve_model_dir
    from callsense.config import load_config
    from scorer_service.fusion.head import SHIPPED_HEAD, FusionHead, InvalidHead
    from training.data import shared_data_dir
    from training.fusion_data import DataAbsent

    command = f"callsense {args.command}"
    shared = args.shared_data or shared_data_dir()
    try:
        whisper_dir = resolve_model_dir(args.asr_model, load_config().data_dir / "asr-models")
    except ModelUnavailable as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    try:
        if args.command == "train-fusion":
            from training.fusion_train import FusionTrainConfig, train_fusion

            config = FusionTrainConfig(shared, whisper_dir, args.cache, output=args.output or SHIPPED_HEAD)
            if args.version:
                config = dataclasses.replace(config, version=args.version)
            if args.no_model_card:
                config = dataclasses.replace(config, model_card=None)
            result = train_fusion(config, log=lambda line: print(line, file=sys.stderr))
            print(json.dumps({"version": result.head.version, **result.evaluation.summary()}, indent=1))
            return 0
        from training.fusion_eval import evaluate

        head = FusionHead.load(args.fusion or SHIPPED_HEAD)
        evaluation = evaluate(
            shared,
            head,
            cache=args.cache,
            whisper_dir=whisper_dir,
            seeds=args.seeds,
            log=lambda line: print(line, file=sys.stderr),
        )
    except (DataAbsent, InvalidHead) as exc:
        print(f"{command}: {exc}", file=sys.stderr)
        return 2
    report: dict[str, object] = {"version": head.version, **evaluation.summary()}
    full: dict[str, object] = {"ravdess_13_18": evaluation.to_json()}
    if args.sales:
        from scorer_service.fusion.tone import ToneFuser
        from scorer_service.inference import SentimentModel
        from training.fusion_sales import evaluate_sales, hear_sales, sales_calls

        calls = sales_calls("test")
        heard = hear_sales(calls, whisper_dir, args.cache.parent / SALES_CACHE_NAME)
        sales = evaluate_sales(calls, heard, SentimentModel.load(), ToneFuser(head))
        report.update(
            sales_lines=sales.lines,
            sales_fused_lines=sales.fused_lines,
            sales_text_macro_f1=sales.text["macro_f1"],
            sales_fused_macro_f1=sales.fused["macro_f1"],
        )
        full["sales_test_espeak"] = sales.to_json()
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(full, indent=1))
    print(json.dumps(report, indent=1))
    return 0
