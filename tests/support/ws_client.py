"""The gateway's WebSocket from a test's side: messages out, JSON events in, every wait bounded."""

from __future__ import annotations

import asyncio
import json
from typing import Any

from websockets.asyncio.client import ClientConnection

EVENT_TIMEOUT_S = 60.0
"""Longest wait for one event (the test machine is often busy; a real wait is a fraction of this)."""


async def send(ws: ClientConnection, message: dict[str, Any] | str | bytes) -> None:
    """A dict goes as JSON; text and bytes (audio frames, deliberately bad input) as they are."""
    await ws.send(message if isinstance(message, str | bytes) else json.dumps(message))


async def receive(ws: ClientConnection, timeout_s: float = EVENT_TIMEOUT_S) -> dict[str, Any]:
    event: dict[str, Any] = json.loads(await asyncio.wait_for(ws.recv(), timeout_s))
    return event


async def receive_until(ws: ClientConnection, kind: str) -> list[dict[str, Any]]:
    """The events up to and including the first one of type ``kind``."""
    events = [await receive(ws)]
    while events[-1]["type"] != kind:
        events.append(await receive(ws))
    return events


async def receive_until_summary(ws: ClientConnection) -> list[dict[str, Any]]:
    return await receive_until(ws, "summary")
