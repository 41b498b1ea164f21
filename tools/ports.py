"""Free local TCP ports, for the benches and the tests that start servers (callsense up, Envoy, services)."""

from __future__ import annotations

import socket
from contextlib import ExitStack


def free_port() -> int:
    """A port nothing listens on now (the OS picks it; another process may take it before you bind)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def free_ports(count: int) -> list[int]:
    """``count`` distinct free ports (all held at once while picked, so no two are the same): Envoy's
    public, internal and admin ports, say."""
    with ExitStack() as stack:
        ports = []
        for _ in range(count):
            sock = stack.enter_context(socket.socket())
            sock.bind(("127.0.0.1", 0))
            ports.append(int(sock.getsockname()[1]))
        return ports


def free_port_run(count: int, step: int) -> int:
    """A free port ``p`` such that ``p + i * step`` is free too for every ``i < count`` (the scorer replicas
    of ``callsense up --scorer-replicas`` listen that way)."""
    for _ in range(50):
        port = free_port()
        last = port + (count - 1) * step
        if last <= 65535 and all(_bindable(port + i * step) for i in range(1, count)):
            return port
    raise RuntimeError(f"no free port with {count - 1} free neighbours {step} apart")


def _bindable(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True
