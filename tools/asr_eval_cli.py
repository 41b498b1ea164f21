"""`callsense evaluate-asr`: the ASR's word error rate table (tools/asr_eval.py) for one Whisper model.

    callsense evaluate-asr [--model tiny.en|base|DIR] [--sets asr asr_dev ravdess]
                           [--rates 16k 8k-mulaw] [--decoders streaming offline] [--misheard] [--json FILE]

Prints a Markdown table (streaming and offline WER per set and rate, and the gap); exit 0, or 2 when a
set is absent, an option unknown or the model cannot be found.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser(
        "evaluate-asr",
        help="word error rate of the streaming ASR and of offline Whisper on the shared speech sets",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    # Choices are checked in run(): tools.asr_eval imports Whisper, which `callsense --help` should not.
    p.add_argument("--model", metavar="NAME|DIR", help="tiny.en (default), base, or a Whisper directory")
    p.add_argument("--sets", nargs="+", metavar="SET", help="asr, asr_dev, ravdess (default: all)")
    p.add_argument("--rates", nargs="+", metavar="RATE", help="16k, 8k-mulaw (default: both)")
    p.add_argument("--decoders", nargs="+", metavar="DECODER", help="streaming, offline (default: both)")
    p.add_argument("--misheard", action="store_true", help="also print every clip with errors")
    p.add_argument("--json", type=Path, metavar="FILE", help="write every clip's texts and errors here")
    p.add_argument(
        "--shared-data", type=Path, help="the corpora (default: CALLSENSE_SHARED_DATA or ../shared/data)"
    )


def run(args: argparse.Namespace) -> int:
    from asr_service.models import ModelUnavailable, resolve_model_dir
    from asr_service.recognizer import RecognizerConfig, WhisperRecognizer
    from asr_service.transcribe_file import load_offline_model
    from callsense.config import load_config
    from tools import asr_eval
    from training.data import shared_data_dir

    chosen = {
        "sets": args.sets or list(asr_eval.SETS),
        "rates": args.rates or list(asr_eval.RATES),
        "decoders": args.decoders or list(asr_eval.DECODERS),
    }
    allowed = {"sets": asr_eval.SETS, "rates": asr_eval.RATES, "decoders": asr_eval.DECODERS}
    for option, values in chosen.items():
        unknown = sorted(set(values) - set(allowed[option]))
        if unknown:
            known = ", ".join(allowed[option])
            print(
                f"callsense evaluate-asr: unknown --{option} {', '.join(unknown)}; one of {known}",
                file=sys.stderr,
            )
            return 2
    try:
        model_dir = resolve_model_dir(args.model, load_config().data_dir / "asr-models")
    except (ModelUnavailable, OSError) as exc:
        print(f"callsense evaluate-asr: {exc}", file=sys.stderr)
        return 2
    shared = args.shared_data or shared_data_dir()
    recognizer = WhisperRecognizer(RecognizerConfig(model_dir=str(model_dir)))
    offline = load_offline_model(model_dir) if "offline" in chosen["decoders"] else None
    rows: list[asr_eval.WerRow] = []
    for name in chosen["sets"]:
        try:
            clips = asr_eval.load_set(name, shared)
        except asr_eval.SetAbsent as exc:
            print(f"callsense evaluate-asr: set {name}: {exc}", file=sys.stderr)
            return 2
        for rate in chosen["rates"]:
            for decoder in chosen["decoders"]:
                started = time.process_time()

                def transcribe(audio: Any, rate: str = rate, decoder: str = decoder) -> str:
                    if decoder == "streaming":
                        return asr_eval.streaming_text(audio, rate, recognizer)
                    return asr_eval.offline_text(audio, rate, offline)

                row = asr_eval.measure(clips, name, rate, decoder, transcribe)
                print(
                    f"  {name} {rate} {decoder}: {row.wer_percent:.2f} % "
                    f"({row.errors}/{row.reference_words}, {time.process_time() - started:.0f} s CPU)",
                    file=sys.stderr,
                    flush=True,
                )
                rows.append(row)
    print(asr_eval.table(rows, args.model or recognizer.name))
    if args.misheard:
        print(asr_eval.misheard(rows))
    if args.json:
        report = [
            {
                "set": r.set_name,
                "rate": r.rate,
                "decoder": r.decoder,
                "wer_percent": round(r.wer_percent, 2),
                "clips": [h.__dict__ for h in r.heard],
            }
            for r in rows
        ]
        args.json.write_text(json.dumps(report, indent=1))
    return 0
