"""The one shape of the gateway's background loops (nightly roll-ups, live-call heartbeats)."""

from __future__ import annotations

import asyncio
import contextlib


class BackgroundLoop:
    """Runs ``self._run()`` as one asyncio task from ``start()`` until ``stop()`` cancels it."""

    task_name = "background-loop"
    _task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        if self._task is None:
            self._task = asyncio.create_task(self._run(), name=self.task_name)

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        raise NotImplementedError
