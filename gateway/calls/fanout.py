"""Fan-out: one Subscription per subscriber of a call, a bounded queue that never blocks the call.

A CallSession (gateway/calls/session.py) offers each event of the call to every Subscription; the
transports iterate them. A subscriber that reads too slowly loses its backlog, not the call its pace.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import AsyncIterator, Callable

from gateway.calls.errors import ErrorCode
from gateway.calls.events import CallUpdate, LiveError


class Subscription:
    """One subscriber's bounded queue of events; ``offer`` never blocks the call.

    When the queue is full the backlog is dropped and replaced by one ``slow_consumer`` error: a live
    screen wants the newest events, and the seq numbers show what was missed. Iterate with ``async for``;
    iteration ends once the call has ended (after its summary) or ``close()`` was called.
    """

    def __init__(self, call_id: str, maxsize: int) -> None:
        self.call_id = call_id
        self._maxsize = max(2, maxsize)
        self._events: deque[CallUpdate] = deque()
        self._wakeup = asyncio.Event()
        self._closed = False
        self.dropped = 0
        self.on_drop: Callable[[int], None] | None = None

    def offer(self, event: CallUpdate) -> None:
        if self._closed:
            return
        if len(self._events) >= self._maxsize - 1:
            dropped = len(self._events)
            self.dropped += dropped
            self._events.clear()
            self._events.append(
                LiveError(
                    self.call_id,
                    None,
                    ErrorCode.SLOW_CONSUMER,
                    f"{dropped} events were dropped because this client reads too slowly",
                    fatal=False,
                    status="RESOURCE_EXHAUSTED",
                )
            )
            if self.on_drop is not None:
                self.on_drop(dropped)
        self._events.append(event)
        self._wakeup.set()

    def close(self) -> None:
        """No more events after those queued."""
        self._closed = True
        self._wakeup.set()

    def __aiter__(self) -> AsyncIterator[CallUpdate]:
        return self

    async def __anext__(self) -> CallUpdate:
        while not self._events:
            if self._closed:
                raise StopAsyncIteration
            self._wakeup.clear()
            await self._wakeup.wait()
        return self._events.popleft()
