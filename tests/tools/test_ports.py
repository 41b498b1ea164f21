"""tools.ports: the ports tests and benches hand to servers never collide with outbound connections."""

from __future__ import annotations

import socket

import pytest

from tools.ports import PortWalk, bindable, ephemeral_range, free_port, free_port_run, free_ports, window


def test_the_window_is_the_larger_gap_beside_the_ephemeral_range() -> None:
    assert window(32768, 60999) == range(20000, 32768)  # Linux's default range
    assert window(49152, 65535) == range(20000, 49152)  # the IANA range (macOS, Windows)
    assert window(10000, 50000) == range(50001, 65536)  # nothing below: the ports above it
    assert window(1024, 65535) is None  # no room anywhere: the OS's pick


def test_ports_lie_outside_the_range_outbound_connections_take_their_ports_from() -> None:
    low, high = ephemeral_range()
    if window(low, high) is None:
        pytest.skip(f"EPHEMERAL RANGE {low}-{high} leaves no window: ports come from the OS")
    ports = [free_port() for _ in range(50)] + free_ports(5) + [free_port_run(3, 1000)]
    assert not [port for port in ports if low <= port <= high]
    assert len(set(ports)) == len(ports)


def _free_block(size: int) -> int:
    """The first port of ``size`` consecutive ports in the window that nothing listens on now."""
    ports = window(*ephemeral_range()) or range(20000, 30000)
    for first in range(ports.start, ports.stop - size, size):
        if all(bindable(p) for p in range(first, first + size)):
            return first
    raise AssertionError("no free block of ports to test with")


def test_a_walk_hands_each_port_out_once_wraps_around_and_says_when_it_runs_out() -> None:
    first = _free_block(10)
    walk = PortWalk(range(first, first + 10), start=7)
    taken = [walk.take() for _ in range(10)]
    assert taken == [first + i for i in (7, 8, 9, 0, 1, 2, 3, 4, 5, 6)]
    with pytest.raises(RuntimeError, match="no free run"):
        walk.take()


def test_a_walk_steps_over_a_port_someone_listens_on() -> None:
    first = _free_block(5)
    walk = PortWalk(range(first, first + 5), start=0)
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", first + 1))
        listener.listen()
        assert [walk.take(), walk.take()] == [first, first + 2]


def test_a_run_needs_every_member_free_and_keeps_them_all() -> None:
    first = _free_block(30)
    walk = PortWalk(range(first, first + 30), start=0)
    run = walk.take(count=3, step=10)
    assert run == first
    # The run's members are handed out: single ports skip them, and no second run of that shape fits
    # whole in the window any more.
    singles = [walk.take() for _ in range(27)]
    assert not {first, first + 10, first + 20} & set(singles)
    with pytest.raises(RuntimeError):
        walk.take()
    with pytest.raises(RuntimeError, match="does not fit"):
        PortWalk(range(first, first + 30), start=0).take(count=4, step=10)
    with pytest.raises(ValueError, match="at least 1"):
        walk.take(count=0)
