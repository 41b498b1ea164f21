"""The inference scheduler's order: finals before partials, and several workers that never run two jobs
of one stream at once (asr_service/scheduler.py). Its round-robin and partial replacement are tested in
test_asr_streaming.py."""

from __future__ import annotations

import functools
import threading

from asr_service.scheduler import InferenceScheduler

TIMEOUT_S = 5.0


def test_a_final_goes_before_the_partials_of_other_streams() -> None:
    scheduler = InferenceScheduler(max_streams=3)
    gate = threading.Event()
    order: list[str] = []
    try:
        a, b, c = scheduler.open_stream(), scheduler.open_stream(), scheduler.open_stream()
        blocker = c.submit(gate.wait)  # holds the one thread while the queues fill
        jobs = [
            a.submit(lambda: order.append("a partial"), partial_key="a0"),
            b.submit(lambda: order.append("b partial"), partial_key="b0"),
            b.submit(lambda: order.append("b final"), final_key="b1"),  # behind b's own partial
            c.submit(lambda: order.append("c final"), final_key="c0"),
        ]
        gate.set()
        for job in [blocker, *jobs]:
            job.result(timeout=TIMEOUT_S)
    finally:
        scheduler.shutdown()
    # c's final first; a stream's own jobs keep their order (b's partial, then its final), and a's partial,
    # which waited longest, goes before b's partial only because the ring came to it first.
    assert order == ["c final", "a partial", "b partial", "b final"]


def test_two_workers_decode_two_streams_at_once_but_one_stream_in_order() -> None:
    scheduler = InferenceScheduler(max_streams=2, workers=2)
    both_running = threading.Barrier(2, timeout=TIMEOUT_S)
    running_in_a = 0
    most_in_a = 0
    lock = threading.Lock()
    order_in_a: list[int] = []

    def a_job(index: int) -> None:
        nonlocal running_in_a, most_in_a
        with lock:
            running_in_a += 1
            most_in_a = max(most_in_a, running_in_a)
        if index == 0:
            both_running.wait()  # only returns once b's job runs at the same time
        order_in_a.append(index)
        with lock:
            running_in_a -= 1

    try:
        a, b = scheduler.open_stream(), scheduler.open_stream()
        a_jobs = [a.submit(functools.partial(a_job, i)) for i in range(4)]
        b_job = b.submit(both_running.wait)
        for job in [*a_jobs, b_job]:
            job.result(timeout=TIMEOUT_S)  # a BrokenBarrierError here: the two never ran at once
    finally:
        scheduler.shutdown()
    assert order_in_a == [0, 1, 2, 3]
    assert most_in_a == 1  # the second worker never took a's next job while its first was running
