"""Free local TCP ports, for the benches and the tests that start servers (callsense up, Envoy, services).

Why not just bind port 0 and hand on what the OS picked: the OS picks from the ephemeral range, the same
range every outbound connection takes its local port from. Between picking a port here and the server
binding it, the mesh makes dozens of connections (to PostgreSQL, between services, Envoy's health checks),
and one of them can land on the picked port: the server then fails with "Address already in use" (CI saw
exactly that). So ports are walked from a random start in a window *below* the ephemeral range, where no
outbound connection ever lands, and never handed out twice by one process.
"""

from __future__ import annotations

import random
import socket
import threading
from pathlib import Path

_EPHEMERAL_RANGE = Path("/proc/sys/net/ipv4/ip_local_port_range")
_WINDOW_FLOOR = 20000  # above the well-known and most registered service ports
_DEFAULT_EPHEMERAL_LOW = 32768  # Linux's default when the range cannot be read


def _window() -> range:
    """The ports this module hands out: from ``_WINDOW_FLOOR`` up to the ephemeral range's start."""
    try:
        low = int(_EPHEMERAL_RANGE.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        low = _DEFAULT_EPHEMERAL_LOW
    if low - _WINDOW_FLOOR < 4000:  # an unusual range leaves too little below it: use the upper ports
        return range(61000, 65536)
    return range(_WINDOW_FLOOR, low)


class _PortWalk:
    """Walks the window from a random start, so two processes rarely meet and one never repeats itself."""

    def __init__(self, window: range) -> None:
        self._window = window
        self._offset = random.SystemRandom().randrange(len(window))
        self._handed_out: set[int] = set()
        self._lock = threading.Lock()

    def take(self, count: int = 1, step: int = 1) -> int:
        """A port ``p`` with ``p + i * step`` bindable and not handed out before, for every ``i < count``."""
        span = (count - 1) * step
        if span >= len(self._window):
            raise RuntimeError(f"no run of {count} ports {step} apart fits in {self._window}")
        with self._lock:
            for _ in range(len(self._window)):
                port = self._window[self._offset % len(self._window)]
                self._offset += 1
                run = [port + i * step for i in range(count)]
                if run[-1] >= self._window.stop or any(p in self._handed_out for p in run):
                    continue
                if all(_bindable(p) for p in run):
                    self._handed_out.update(run)
                    return port
        raise RuntimeError(f"no free run of {count} ports {step} apart in {self._window}")


_walk = _PortWalk(_window())


def free_port() -> int:
    """A port nothing listens on now, outside the ephemeral range and not handed out before by this
    process (another process may still bind it first, but no outbound connection will)."""
    return _walk.take()


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports: Envoy's public, internal and admin ports, say."""
    return [_walk.take() for _ in range(count)]


def free_port_run(count: int, step: int) -> int:
    """A free port ``p`` such that ``p + i * step`` is free too for every ``i < count`` (the scorer replicas
    of ``callsense up --scorer-replicas`` listen that way)."""
    return _walk.take(count, step)


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
