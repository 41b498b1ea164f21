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
_LINUX_DEFAULT_EPHEMERAL = (32768, 60999)  # when the range cannot be read
_MIN_WINDOW = 4000  # room for the scorer replicas' runs (ports 1000 apart) and a test session's servers


def ephemeral_range() -> tuple[int, int]:
    """The kernel's ephemeral port range (low, high), inclusive; Linux's default where it cannot be read."""
    try:
        low, high = (int(part) for part in _EPHEMERAL_RANGE.read_text().split())
    except (OSError, ValueError):
        return _LINUX_DEFAULT_EPHEMERAL
    return low, high


def window(low: int, high: int) -> range | None:
    """The ports to hand out beside an ephemeral range [low, high]: the larger gap below it (from
    ``_WINDOW_FLOOR``) or above it; None when neither is ``_MIN_WINDOW`` ports wide (say a range of
    1024-65535: then nothing is safe from outbound connections, and the OS's pick is as good as any)."""
    below, above = range(_WINDOW_FLOOR, max(low, _WINDOW_FLOOR)), range(high + 1, 65536)
    best = max(below, above, key=len)
    return best if len(best) >= _MIN_WINDOW else None


class PortWalk:
    """Walks a window from a given start, so two processes (random starts) rarely meet and one never
    repeats itself: a port, or each port of a run, is handed out once, and only while it can be bound."""

    def __init__(self, ports: range, start: int) -> None:
        self._window = ports
        self._offset = start
        self._handed_out: set[int] = set()
        self._lock = threading.Lock()

    def take(self, count: int = 1, step: int = 1) -> int:
        """A port ``p`` with ``p + i * step`` bindable and not handed out before, for every ``i < count``."""
        if count < 1 or step < 1:
            raise ValueError(f"count and step must be at least 1, got {count} and {step}")
        if (count - 1) * step >= len(self._window):
            raise RuntimeError(f"a run of {count} ports {step} apart does not fit in {self._window}")
        with self._lock:
            for _ in range(len(self._window)):
                port = self._window[self._offset % len(self._window)]
                self._offset += 1
                run = [port + i * step for i in range(count)]
                if run[-1] >= self._window.stop or any(p in self._handed_out for p in run):
                    continue
                if all(bindable(p) for p in run):
                    self._handed_out.update(run)
                    return port
        raise RuntimeError(f"no free run of {count} ports {step} apart left in {self._window}")


def _os_pick(count: int, step: int) -> int:
    """The OS's pick (bind port 0), for hosts whose ephemeral range leaves no window beside it."""
    for _ in range(50):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = int(sock.getsockname()[1])
        run = [port + i * step for i in range(count)]
        if run[-1] <= 65535 and all(bindable(p) for p in run[1:]):
            return port
    raise RuntimeError(f"no free run of {count} ports {step} apart")


class _OsPicks:
    def take(self, count: int = 1, step: int = 1) -> int:
        return _os_pick(count, step)


def _process_walk() -> PortWalk | _OsPicks:
    ports = window(*ephemeral_range())
    if ports is None:
        return _OsPicks()
    return PortWalk(ports, random.SystemRandom().randrange(len(ports)))


_walk = _process_walk()


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


def bindable(port: int) -> bool:
    """Whether a TCP socket can bind ``port`` on 127.0.0.1 now (nothing listens on it)."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
