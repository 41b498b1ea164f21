"""`callsense retrain`: fine-tune the served model on a tenant's adjudicated labels, gate it, promote it.

    callsense retrain --labels gold.jsonl [--lines lines.jsonl] [--registry DIR] [--work DIR]
                      [--base-sets SET...] [--gate-sets SET...] [--held-out-share 0.2] [--labels-repeat 3]
                      [--init CHECKPOINT] [--epochs N] [--budget-steps N] [--learning-rate LR]
                      [--keep-fp32-blocks N] [--max-drop 0.5] [--max-int8-loss 0.5]
                      [--promote | --no-promote] [--report FILE] [--threads 2] [--shuffle-labels]

``--labels``: ``callsense labels adjudicate``'s gold file, ``callsense labels import``'s annotations
(adjudicated here by majority), or the project's label format; the first two need the ``lines.jsonl`` of
``callsense labels export`` (``--lines``, default beside the labels). The run's folder (``--work``, default
CALLSENSE_DATA_DIR/retrain/<UTC time>) keeps the split, the checkpoint, the ONNX files, the candidate and
``retrain_report.json`` + ``.md``; ``--report FILE`` writes the report there too (FILE.json and FILE.md).

Exit codes: 0 the gate passed (the candidate promoted, or only added with --no-promote), 3 the gate refused
the candidate (the registry untouched; the report says which set and check), 2 bad input (labels, sets,
checkpoint, registry), 1 the run failed (training or the disk). Each outcome is counted on
``callsense.retrain.outcomes`` (attribute ``outcome``: promoted, passed, refused, bad_input, failed) and
exported where OTEL_EXPORTER_OTLP_ENDPOINT names a collector.
"""

from __future__ import annotations

import argparse
import sys
import time
import traceback
from pathlib import Path

EXIT_CODES = {"promoted": 0, "passed": 0, "refused": 3, "bad_input": 2, "failed": 1}
OUTCOME_METRIC = "callsense.retrain.outcomes"


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "retrain", help="fine-tune the served model on a tenant's labels; promote it only past the gate"
    )
    p.add_argument(
        "--labels", required=True, type=Path, help="adjudicated labels (or annotations, or text+label)"
    )
    p.add_argument(
        "--lines", type=Path, default=None, help="lines.jsonl of `labels export` (default: beside the labels)"
    )
    p.add_argument(
        "--registry",
        type=Path,
        default=None,
        help="the model registry (default: CALLSENSE_MODEL_REGISTRY, else CALLSENSE_DATA_DIR/models)",
    )
    p.add_argument(
        "--work", type=Path, default=None, help="the run's folder (default: CALLSENSE_DATA_DIR/retrain/TIME)"
    )
    p.add_argument("--base-sets", nargs="+", default=None, help="training sets (default: the current card's)")
    p.add_argument(
        "--gate-sets", nargs="+", default=["sales:test", "meld:dev"], help="held-out sets besides the labels'"
    )
    p.add_argument("--held-out-share", type=float, default=0.2, help="share of the calls held out (0.2)")
    p.add_argument("--labels-repeat", type=int, default=3, help="times the tenant's lines are trained on (3)")
    p.add_argument(
        "--init", type=Path, default=None, help="a checkpoint to fine-tune (default: the current version's)"
    )
    p.add_argument("--epochs", type=int, default=0, help="0: 1 from a checkpoint, else the recipe's")
    p.add_argument("--budget-steps", type=int, default=0, help="stop after N training steps (0: no budget)")
    p.add_argument("--learning-rate", type=float, default=0.0, help="0: the recipe's")
    p.add_argument(
        "--keep-fp32-blocks",
        type=int,
        default=-1,
        help="-1: the blocks the current model kept (N: sweep for N)",
    )
    p.add_argument("--max-drop", type=float, default=0.5, help="macro-F1 points a set may drop (0.5)")
    p.add_argument("--max-int8-loss", type=float, default=0.5, help="points INT8 may lose vs fp32 (0.5)")
    p.add_argument(
        "--promote",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="promote a candidate that passes (default) or only add it to the registry",
    )
    p.add_argument("--report", type=Path, default=None, help="also write the report to FILE.json and FILE.md")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument(
        "--shuffle-labels",
        action="store_true",
        help="debugging the gate: permute every training label (a candidate made worse on purpose)",
    )


def run(args: argparse.Namespace) -> int:
    from callsense import telemetry

    telemetry.setup_telemetry("retrain", configure_logging=False)
    outcome = _retrain(args)
    telemetry.counter(OUTCOME_METRIC, description="callsense retrain runs, by outcome").add(
        1, {"outcome": outcome}
    )
    instance = telemetry.get_telemetry()
    if instance is not None:
        instance.force_flush()  # a CronJob's process ends right after: export now
    return EXIT_CODES[outcome]


def _retrain(args: argparse.Namespace) -> str:
    from callsense.config import ConfigError, load_config
    from callsense.model_registry import RegistryError
    from training.gate import GateRule
    from training.retrain import RetrainConfig, RetrainInputError, retrain, write_report

    try:
        problem = _check(args)
        if problem:
            raise RetrainInputError(problem)
        config = load_config()
        work = args.work or config.data_dir / "retrain" / time.strftime("%Y%m%dT%H%M%SZ", time.gmtime())
        result = retrain(
            RetrainConfig(
                labels=args.labels,
                lines=args.lines,
                registry=args.registry or config.model_registry,
                work=work,
                base_sets=args.base_sets or [],
                gate_sets=args.gate_sets,
                held_out_share=args.held_out_share,
                labels_repeat=args.labels_repeat,
                init=args.init,
                epochs=args.epochs,
                budget_steps=args.budget_steps,
                learning_rate=args.learning_rate,
                keep_fp32_blocks=args.keep_fp32_blocks,
                promote=args.promote,
                rule=GateRule(args.max_drop, args.max_int8_loss),
                shuffle_labels=args.shuffle_labels,
                threads=args.threads,
            )
        )
    except (RetrainInputError, RegistryError, ConfigError) as exc:
        print(f"callsense retrain: {exc}", file=sys.stderr)
        return "bad_input"
    except Exception:  # counted as failed, and the traceback kept for whoever reads the job's log
        traceback.print_exc()
        print("callsense retrain: failed (traceback above)", file=sys.stderr)
        return "failed"
    if args.report is not None:
        args.report.parent.mkdir(parents=True, exist_ok=True)
        write_report(args.report, result.report)
    print(f"{result.outcome}: {result.candidate_version or 'no candidate'}; report {result.report_path}")
    return result.outcome


def _check(args: argparse.Namespace) -> str:
    """What is wrong with the options, before anything is loaded; empty when nothing."""
    if not 0 < args.held_out_share < 1:
        return f"--held-out-share must be between 0 and 1, got {args.held_out_share}"
    if args.labels_repeat < 0 or args.epochs < 0 or args.budget_steps < 0 or args.threads < 1:
        return "--labels-repeat, --epochs and --budget-steps must be 0 or more, --threads 1 or more"
    if args.max_drop < 0 or args.max_int8_loss < 0:
        return "--max-drop and --max-int8-loss are points a model may lose: 0 or more"
    return ""
