"""`callsense evaluate-diarization`: mono calls split by speaker, measured (tools/diarization_eval.py).

    callsense evaluate-diarization [--groups stereo scripted real] [--no-words] [--model NAME|DIR]
                                   [--step S] [--json FILE]

Prints a Markdown table (DER, its parts, the role error, word attribution, CPU per minute of audio) per
call and per group; exit 0, or 2 when a group's data is absent, an option unknown or a model missing.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate-diarization",
        help="speaker diarisation of mono calls: DER and words given to the right role",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--groups", nargs="+", metavar="GROUP", help="stereo, scripted, real (default: all)")
    p.add_argument(
        "--no-words", action="store_true", help="diarisation only: no Whisper, no word attribution"
    )
    p.add_argument("--model", metavar="NAME|DIR", help="Whisper: tiny.en (default), base, or a directory")
    p.add_argument("--step", type=float, help="seconds between two windows' starts (default 2.5)")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every call's numbers here")
    p.add_argument(
        "--shared-data", type=Path, help="the corpora (default: CALLSENSE_SHARED_DATA or ../shared/data)"
    )


def run(args: argparse.Namespace) -> int:
    from asr_service.diarization import DiarizationConfig, DiarizationUnavailable, SegmentationModel
    from asr_service.models import ModelUnavailable, resolve_model_dir
    from asr_service.transcribe_file import load_offline_model
    from callsense.config import load_config
    from tools import diarization_eval
    from training.data import shared_data_dir

    groups = args.groups or list(diarization_eval.GROUPS)
    unknown = sorted(set(groups) - set(diarization_eval.GROUPS))
    if unknown:
        known = ", ".join(diarization_eval.GROUPS)
        print(
            f"callsense evaluate-diarization: unknown --groups {', '.join(unknown)}; one of {known}",
            file=sys.stderr,
        )
        return 2
    try:
        segmentation = SegmentationModel()
        whisper = None
        if not args.no_words:
            whisper = load_offline_model(resolve_model_dir(args.model, load_config().data_dir / "asr-models"))
    except (DiarizationUnavailable, ModelUnavailable, OSError) as exc:
        print(f"callsense evaluate-diarization: {exc}", file=sys.stderr)
        return 2
    try:
        calls = diarization_eval.load_calls(groups, args.shared_data or shared_data_dir())
    except diarization_eval.CallsAbsent as exc:
        print(f"callsense evaluate-diarization: {exc}", file=sys.stderr)
        return 2
    config = DiarizationConfig(step_s=args.step) if args.step else None
    results = []
    for call in calls:
        result = diarization_eval.evaluate(call, segmentation=segmentation, whisper=whisper, config=config)
        print(
            f"  {call.name}: DER {100 * result.der.rate:.1f} %, role error {100 * result.role.rate:.1f} %, "
            f"words right {100 * result.word_accuracy:.1f} % of {result.words}",
            file=sys.stderr,
            flush=True,
        )
        results.append(result)
    print(diarization_eval.table(results))
    if args.json:
        report = [
            {
                "call": r.call.name,
                "group": r.call.group,
                "audio_s": round(r.call.duration_s, 2),
                "der": r.der.__dict__,
                "role": r.role.__dict__,
                "roles_found": r.roles_found,
                "components": r.components,
                "words": r.words,
                "words_right": r.words_right,
                "diarization_cpu_s": round(r.diarization_cpu_s, 3),
                "whisper_cpu_s": round(r.whisper_cpu_s, 3),
            }
            for r in results
        ]
        args.json.write_text(json.dumps(report, indent=1))
    return 0
