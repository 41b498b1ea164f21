"""Rolling reload: a scorer follows the model registry's current version without restarting.

``ModelReloader`` polls the registry's pointer (``current.json``) every ``poll_s`` seconds: a stat on the
event loop, nothing more while it is unchanged. When it changes and names another version, the new model is
verified (its files hashed against the registry's manifest), loaded and warmed up on a loader thread of its
own, never on the event loop nor on the inference thread, so scoring goes on at full speed meanwhile; only
then does the servicer swap it in (``ScorerServicer.swap_model``): utterances already queued or in a forward
pass finish on the old model, and no request waits for the load or fails because of it.

A version that cannot be loaded (a file altered after it was added, a model ONNX Runtime refuses) is
logged and counted (``callsense.scorer.model_reloads`` with ``outcome="failed"``), and the scorer keeps
serving what it served; it tries again only when the pointer changes again (a promote or a rollback), not
every poll.

A scorer started with ``--model PATH`` serves that file and has no reloader: an explicit file is pinned.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

from callsense import telemetry
from callsense.model_registry import ModelRegistry, ModelVersion
from scorer_service.inference import SentimentModel
from scorer_service.server import ScorerServicer

log = logging.getLogger(__name__)

DEFAULT_POLL_S = 2.0

ModelLoader = Callable[[ModelVersion], SentimentModel]
"""Loads (and warms up) a version's model; runs on the loader thread, so it may block."""


def load_version(registry: ModelRegistry, *, threads: int = 1, backend: str = "auto") -> ModelLoader:
    """The loader a scorer uses: verify the version's files, load them, make one warm-up pass."""

    def load(version: ModelVersion) -> SentimentModel:
        registry.verify(version)
        model = SentimentModel.load(version.model_path, threads=threads, backend=backend)
        model.warm_up()
        return model

    return load


class ModelReloader:
    """Watches ``registry`` and swaps the version it names into ``servicer``. Start, use and close it on
    the server's event loop."""

    def __init__(
        self,
        registry: ModelRegistry,
        servicer: ScorerServicer,
        load: ModelLoader,
        *,
        poll_s: float = DEFAULT_POLL_S,
    ) -> None:
        if poll_s <= 0:
            raise ValueError(f"poll_s must be > 0, got {poll_s}")
        self.registry = registry
        self.servicer = servicer
        self.poll_s = poll_s
        self._load = load
        # Unlike any real signature, so the first check reads the pointer: it may have moved between the
        # scorer's start-up read and this watcher's start.
        self._seen: object = object()
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="scorer-model-loader")
        self._task: asyncio.Task[None] | None = None
        self._swapped = asyncio.Condition()
        self._reloads = telemetry.counter(
            "callsense.scorer.model_reloads", description="Model versions loaded on a registry change"
        )

    def start(self) -> None:
        """Start polling; needs a running loop. Idempotent."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(self._watch(), name="model-reloader")

    async def close(self) -> None:
        """Stop polling (a load under way is abandoned: its model is never served)."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def check(self) -> bool:
        """One poll: when the pointer changed and names another version, load it and swap it in. Returns
        whether the served model changed. Raises what reading the registry or loading the model raised."""
        signature = self.registry.pointer_signature()
        if signature == self._seen:
            return False
        self._seen = signature  # failed or not, this pointer is dealt with: no retry every poll
        loop = asyncio.get_running_loop()
        target = await loop.run_in_executor(self._executor, self.registry.current)
        served = self.servicer.model.info.version
        if target.version == served:
            return False
        log.info("model registry names %s (serving %s): loading it", target.version, served)
        try:
            model = await loop.run_in_executor(self._executor, self._load, target)
        except Exception:
            self._reloads.add(1, {"outcome": "failed", "model.version": target.version})
            raise
        if model.info.version != target.version:  # the card in the folder says otherwise: do not mislabel
            self._reloads.add(1, {"outcome": "failed", "model.version": target.version})
            raise RuntimeError(
                f"registry version {target.version} holds a model whose card says {model.info.version}"
            )
        self.servicer.swap_model(model)
        self._reloads.add(1, {"outcome": "ok", "model.version": target.version})
        async with self._swapped:
            self._swapped.notify_all()
        return True

    async def wait_until_serving(self, version: str) -> None:
        """Return once the servicer serves ``version`` (for tests and start-up ordering; no polling)."""
        async with self._swapped:
            await self._swapped.wait_for(lambda: self.servicer.model.info.version == version)

    async def _watch(self) -> None:
        while True:
            try:
                await self.check()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("model reload failed; still serving %s", self.servicer.model.info.version)
            await asyncio.sleep(self.poll_s)
