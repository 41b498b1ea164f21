"""tools.ports: the ports tests and benches hand to servers never collide with outbound connections."""

from __future__ import annotations

import socket
from pathlib import Path

from tools.ports import _window, free_port, free_port_run, free_ports


def _ephemeral_range() -> range:
    text = Path("/proc/sys/net/ipv4/ip_local_port_range").read_text()
    low, high = (int(part) for part in text.split())
    return range(low, high + 1)


def test_ports_lie_outside_the_range_outbound_connections_take_their_ports_from() -> None:
    ephemeral = _ephemeral_range()
    ports = [free_port() for _ in range(50)] + free_ports(5) + [free_port_run(3, 1000)]
    assert not [port for port in ports if port in ephemeral]
    assert all(port in _window() for port in ports)


def test_no_port_is_handed_out_twice_and_each_can_be_bound() -> None:
    ports = [free_port() for _ in range(200)] + free_ports(20)
    assert len(set(ports)) == len(ports)
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", ports[-1]))


def test_a_port_someone_listens_on_is_skipped() -> None:
    # The walk goes up one port at a time: listen on the port after the last one handed out, and the
    # next ones handed out must step over it.
    port = free_port()
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", port + 1))
        listener.listen()
        picked = [free_port() for _ in range(5)]
    assert port + 1 not in picked


def test_a_run_leaves_every_member_free_and_unshared() -> None:
    first = free_port_run(4, 1000)
    members = [first + i * 1000 for i in range(4)]
    later = [free_port() for _ in range(100)]
    assert not set(members) & set(later)
