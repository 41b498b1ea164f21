"""``python -m scorer_service``: run the Scorer gRPC service until SIGINT or SIGTERM.

    python -m scorer_service [--bind ADDR] [--model PATH | --registry DIR [--registry-poll-s S]]
                             [--max-batch N] [--max-wait-ms MS] [--max-queue N] [--threads N]
                             [--backend auto|onnx|tensorrt] [--fusion [PATH]]

Which model: ``--model PATH`` serves that file and nothing else. Without it the scorer serves the model
registry's current version (``--registry``, default ``CALLSENSE_MODEL_REGISTRY``, else
``CALLSENSE_DATA_DIR/models``; the shipped model while the registry is empty) and follows it: a
``callsense models promote`` or ``rollback`` is served within ``--registry-poll-s`` seconds, without a
restart and without failing a request (scorer_service/reload.py).

Tone (opt-in): with ``--fusion``, utterances that carry prosody are fused with how they were said by the
shipped fusion head (scorer_service/fusion/fusion.json) or the one at ``--fusion PATH``; without it the
words alone are scored. Off by default because the shipped head misses its RAVDESS goal (macro-F1 0.56
against 0.60) and moves single lines of flat synthetic voices (FUSION_CARD.md). The head is independent
of the text model (fusion/head.py), so it stays when the registry's version changes.

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
from callsense.model_registry import ModelRegistry, RegistryError
from callsense.telemetry import setup_telemetry
from scorer_service.batcher import DEFAULT_MAX_BATCH, DEFAULT_MAX_QUEUE, DEFAULT_MAX_WAIT_MS
from scorer_service.fusion.head import SHIPPED_HEAD, FusionHead, InvalidHead
from scorer_service.fusion.tone import ToneFuser
from scorer_service.inference import SentimentModel
from scorer_service.reload import DEFAULT_POLL_S, ModelReloader, load_version
from scorer_service.server import ModelVersionTrailer, ScorerServicer, add_scorer

log = logging.getLogger("scorer_service")


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m scorer_service", description="Run the Scorer gRPC service until SIGINT or SIGTERM."
    )
    parser.add_argument(
        "--bind", help="host:port to listen on (default: CALLSENSE_SCORER_ADDR, 127.0.0.1:50053)"
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--model",
        type=Path,
        help="model.int8.onnx to serve, pinned (default: the registry's current version)",
    )
    source.add_argument(
        "--registry",
        type=Path,
        help="model registry to serve and follow "
        "(default: CALLSENSE_MODEL_REGISTRY, else CALLSENSE_DATA_DIR/models)",
    )
    parser.add_argument(
        "--registry-poll-s",
        type=float,
        default=DEFAULT_POLL_S,
        help=f"how often to look for a promotion in the registry (default {DEFAULT_POLL_S:g} s)",
    )
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
    parser.add_argument(
        "--fusion",
        type=Path,
        nargs="?",
        const=SHIPPED_HEAD,
        help=f"fuse the voice's tone with the words: the shipped {SHIPPED_HEAD.name}, or the head at PATH "
        "(default: the words alone)",
    )
    args = parser.parse_args(argv)
    for name in ("max_batch", "max_queue", "threads"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    if args.max_wait_ms < 0:
        parser.error("--max-wait-ms must not be negative")
    if args.registry_poll_s <= 0:
        parser.error("--registry-poll-s must be positive")
    return args


async def serve(
    args: argparse.Namespace,
    model: SentimentModel,
    bind: str,
    registry: ModelRegistry | None = None,
    head: FusionHead | None = None,
) -> None:
    """Serve ``model`` (fused with tone by ``head`` when given); with ``registry``, follow its current
    version from then on."""
    # The servicer (and its batcher) are made on the serving loop: asyncio objects belong to one loop.
    servicer = ScorerServicer.create(
        model,
        max_batch=args.max_batch,
        max_wait_ms=args.max_wait_ms,
        max_queue=args.max_queue,
        tone=ToneFuser(head) if head is not None else None,
    )
    reloader = None
    if registry is not None:
        load = load_version(registry, threads=args.threads, backend=args.backend)
        reloader = ModelReloader(registry, servicer, load, poll_s=args.registry_poll_s)

    def add(server: grpc.aio.Server) -> list[str]:
        return add_scorer(server, servicer)

    async def shutdown() -> None:
        if reloader is not None:
            await reloader.close()  # no swap while the batcher drains
        await servicer.close()

    if reloader is not None:
        reloader.start()  # its first check reads the pointer again: a promotion since start-up is not missed
    try:
        # The server stops first (health NOT_SERVING, calls finish within the grace), then the batcher
        # drains.
        await grpc_runtime.serve_forever(
            add, bind, on_shutdown=shutdown, interceptors=[ModelVersionTrailer(servicer)]
        )
    finally:
        if reloader is not None:
            await reloader.close()  # also when the server never started (the address was taken)


class _StartError(Exception):
    """The scorer cannot start; the message says why and what to fix."""


def _load_first_model(args: argparse.Namespace) -> tuple[SentimentModel, ModelRegistry | None]:
    """The model to serve at start-up, warmed up, and the registry to follow (None with ``--model``).
    Raises _StartError with what to fix."""
    registry = None
    if args.model is not None:
        model_path: Path = args.model
        if not model_path.is_file():
            raise _StartError(f"model file {model_path} not found: pass the path of a model.int8.onnx")
    else:
        try:
            registry = ModelRegistry(args.registry or load_config().model_registry)
            version = registry.current()
            registry.verify(version)
        except (RegistryError, ConfigError, OSError) as exc:
            raise _StartError(f"cannot serve from the model registry: {exc}") from None
        model_path = version.model_path
    try:
        model = SentimentModel.load(model_path, threads=args.threads, backend=args.backend)
    except Exception as exc:  # ONNX Runtime, tokenizers and TensorRT raise their own exception types
        raise _StartError(f"cannot load the sentiment model {model_path}: {exc}") from None
    model.warm_up()
    return model, registry


def _load_head(args: argparse.Namespace) -> FusionHead | None:
    """The fusion head to serve, or None (text alone). Raises _StartError for a head named and unusable."""
    if args.fusion is None:
        return None
    try:
        return FusionHead.load(args.fusion)
    except InvalidHead as exc:
        raise _StartError(f"cannot load the tone fusion head: {exc}") from None


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    setup_telemetry("scorer")  # before any server or channel exists: it instruments grpc.aio
    try:
        bind = args.bind or load_config().scorer_addr
    except ConfigError as exc:
        log.error("%s", exc)
        return 2
    try:
        head = _load_head(args)
        model, registry = _load_first_model(args)
    except _StartError as exc:
        log.error("%s", exc)
        return 1
    log.info(
        "scorer model %s on %s (%s); max batch %d, max wait %g ms",
        model.info.version,
        model.backend.name,
        f"following the registry {registry.root}" if registry is not None else f"pinned: {args.model}",
        args.max_batch,
        args.max_wait_ms,
    )
    log.info("tone fusion: %s", head.version if head is not None else "off (text alone)")
    try:
        asyncio.run(serve(args, model, bind, registry, head))
    except RuntimeError as exc:  # e.g. the address is taken
        log.error("%s", exc)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
