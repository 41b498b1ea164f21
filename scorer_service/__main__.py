"""``python -m scorer_service``: run the Scorer gRPC service until SIGINT or SIGTERM.

    python -m scorer_service [--bind ADDR] [--model PATH] [--max-batch N] [--max-wait-ms MS]
                             [--max-queue N] [--threads N] [--backend auto|onnx|tensorrt]

The model is loaded (and, on a GPU, its TensorRT engine built or read from the cache) and warmed up
before the server binds, so health reports SERVING only once a request can be answered at full speed.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import grpc.aio

from callsense import grpc_runtime
from callsense.config import ConfigError, load_config
from callsense.telemetry import setup_telemetry
from scorer_service.batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS
from scorer_service.inference import DEFAULT_MODEL, SentimentInput, SentimentModel
from scorer_service.server import ScorerServicer, add_scorer

log = logging.getLogger("scorer_service")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scorer_service", description="Run the Scorer gRPC service until SIGINT or SIGTERM."
    )
    parser.add_argument(
        "--bind", help="host:port to listen on (default: CALLSENSE_SCORER_ADDR, 127.0.0.1:50053)"
    )
    parser.add_argument("--model", type=Path, help="model.int8.onnx to serve (default: the shipped model)")
    parser.add_argument(
        "--max-batch",
        type=int,
        default=DEFAULT_MAX_BATCH,
        help=f"most utterances per forward pass; 1 turns micro-batching off (default {DEFAULT_MAX_BATCH})",
    )
    parser.add_argument(
        "--max-wait-ms",
        type=float,
        default=DEFAULT_MAX_WAIT_MS,
        help="longest an utterance waits for batch-mates; 0 turns micro-batching off "
        f"(default {DEFAULT_MAX_WAIT_MS:g})",
    )
    parser.add_argument(
        "--max-queue",
        type=int,
        default=DEFAULT_MAX_QUEUE,
        help=f"queued utterances before clients are pushed back (default {DEFAULT_MAX_QUEUE})",
    )
    parser.add_argument(
        "--threads", type=int, default=1, help="intra-op threads of the CPU backend (default 1)"
    )
    parser.add_argument("--backend", choices=("auto", "onnx", "tensorrt"), default="auto")
    args = parser.parse_args(argv)
    for name in ("max_batch", "max_queue", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_wait_ms < 0:
        parser.error("--max-wait-ms must not be negative")
    return args


async def serve(args: argparse.Namespace, model: SentimentModel, bind: str) -> None:
    # The servicer (and its batcher) are made on the serving loop: asyncio objects belong to one loop.
    servicer = ScorerServicer.create(
        model, max_batch=args.max_batch, max_wait_ms=args.max_wait_ms, max_queue=args.max_queue
    )

    def add(server: grpc.aio.Server) -> list[str]:
        return add_scorer(server, servicer)

    # The server stops first (health NOT_SERVING, calls finish within the grace), then the batcher drains.
    await grpc_runtime.serve_forever(add, bind, on_shutdown=servicer.close)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_telemetry("scorer")  # before any server or channel exists: it instruments grpc.aio
    try:
        bind = args.bind or load_config().scorer_addr
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    model_path: Path = args.model or DEFAULT_MODEL
    if not model_path.is_file():
        log.error(
            "model file %s not found: ship a model into scorer_service/model or pass --model", model_path
        )
        return 1
    try:
        model = SentimentModel.load(model_path, threads=args.threads, backend=args.backend)
    except Exception as exc:  # ONNX Runtime, tokenizers and TensorRT raise their own exception types
        log.error("cannot load the sentiment model %s: %s", model_path, exc)
        return 1
    # One forward pass before serving: the first real request should not pay for lazy initialisation.
    model.predict_encoded([model.encode(SentimentInput("thanks, that sounds good"))])
    log.info(
        "scorer model %s on %s; max batch %d, max wait %g ms",
        model.info.version,
        model.backend.name,
        args.max_batch,
        args.max_wait_ms,
    )
    try:
        asyncio.run(serve(args, model, bind))
    except RuntimeError as exc:  # e.g. the address is taken
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
