"""The inference scheduler's order: finals before partials, several workers that never run two jobs of
one stream at once, and batches of partials that keep both (asr_service/scheduler.py). Its round-robin
and partial replacement are tested in test_asr_streaming.py."""

from __future__ import annotations

import concurrent.futures
import functools
import threading
from typing import Any

import pytest

from asr_service.scheduler import Batch, InferenceScheduler, StreamHandle

TIMEOUT_S = 5.0


class Blocker:
    """A job that holds the one thread until ``release``: the queues fill behind it, in a known ring."""

    def __init__(self) -> None:
        self.started = threading.Event()
        self.gate = threading.Event()

    def submit(self, stream: StreamHandle) -> concurrent.futures.Future[Any]:
        job = stream.submit(self._hold)
        assert self.started.wait(TIMEOUT_S)
        return job

    def _hold(self) -> None:
        self.started.set()
        self.gate.wait(TIMEOUT_S)

    def release(self) -> None:
        self.gate.set()


def logged_batch(order: list[str], item: str) -> Batch:
    """A partial's Batch whose run writes the batch's items to ``order`` (once per item)."""
    return Batch("partials", item, lambda items: [order.append(f"batch {items}") for _ in items])


def test_a_final_goes_before_the_partials_of_other_streams() -> None:
    scheduler = InferenceScheduler(max_streams=3)
    hold = Blocker()
    order: list[str] = []

    try:
        a, b, c = scheduler.open_stream(), scheduler.open_stream(), scheduler.open_stream()
        blocker = hold.submit(c)  # holds the one thread while the queues fill
        jobs = [
            a.submit(lambda: order.append("a partial"), partial_key="a0"),
            b.submit(lambda: order.append("b partial"), partial_key="b0"),
            b.submit(lambda: order.append("b final"), final_key="b1"),  # behind b's own partial
            c.submit(lambda: order.append("c final"), final_key="c0"),
        ]
        hold.release()
        for job in [blocker, *jobs]:
            job.result(timeout=TIMEOUT_S)
    finally:
        scheduler.shutdown()
    # The streams with a final go first, round robin from where the ring stood (a, b, c): b's partial
    # (it stands before b's final), c's final, b's final; a's partial, which waited longest, last.
    assert order == ["b partial", "c final", "b final", "a partial"]


def test_an_urgent_replaceable_job_goes_before_partials_yet_is_still_replaced_and_never_batched() -> None:
    """A speculative final (urgent) is served in the finals' turn, never batched with partials though it
    says how it could be, and a newer job of its key still drops it while it waits."""
    scheduler = InferenceScheduler(max_streams=3, max_batch=4)
    hold = Blocker()
    order: list[str] = []

    try:
        a, b, c = scheduler.open_stream(), scheduler.open_stream(), scheduler.open_stream()
        blocker = hold.submit(c)  # the ring is now a, b, c with c's job on the thread
        a_partial = a.submit(
            lambda: order.append("a partial"), partial_key="a0", batch=logged_batch(order, "a partial")
        )
        stale = b.submit(
            lambda: order.append("b stale"), partial_key="b0", urgent=True, batch=logged_batch(order, "b")
        )
        b_urgent = b.submit(
            lambda: order.append("b urgent"), partial_key="b0", urgent=True, batch=logged_batch(order, "b")
        )
        c_partial = c.submit(
            lambda: order.append("c partial"), partial_key="c0", batch=logged_batch(order, "c partial")
        )
        hold.release()
        for job in [blocker, a_partial, b_urgent, c_partial]:
            job.result(timeout=TIMEOUT_S)
        assert stale.result(timeout=TIMEOUT_S) is None
    finally:
        scheduler.shutdown()
    # b's urgent job first, alone, though a's partial waited longer; then the two partials as one batch,
    # c's first (the ring went on from b).
    assert order == ["b urgent", "batch ['c partial', 'a partial']", "batch ['c partial', 'a partial']"]
    assert scheduler.partials_dropped == 1  # the stale urgent job, replaced unrun


@pytest.mark.parametrize("behind", ["final", "speculation"])
def test_a_partial_ahead_of_its_own_streams_final_runs_in_the_finals_turn_alone(behind: str) -> None:
    """A call's other channel's partial stands between its final (or its speculation, urgent) and the
    thread: it goes before other calls' partials, and without batch mates."""
    scheduler = InferenceScheduler(max_streams=3, max_batch=4)
    hold = Blocker()
    order: list[str] = []

    try:
        other, call, holder = scheduler.open_stream(), scheduler.open_stream(), scheduler.open_stream()
        blocker = hold.submit(holder)
        jobs = [
            other.submit(
                lambda: order.append("other partial"), partial_key="o0", batch=logged_batch(order, "other")
            ),
            call.submit(
                lambda: order.append("agent partial"), partial_key="ch1", batch=logged_batch(order, "agent")
            ),
            call.submit(lambda: order.append(f"customer {behind}"), final_key="ch0")
            if behind == "final"
            else call.submit(lambda: order.append(f"customer {behind}"), partial_key="ch0", urgent=True),
        ]
        hold.release()
        for job in [blocker, *jobs]:
            job.result(timeout=TIMEOUT_S)
    finally:
        scheduler.shutdown()
    assert order == ["agent partial", f"customer {behind}", "other partial"]


def test_urgent_is_only_for_replaceable_jobs() -> None:
    scheduler = InferenceScheduler(max_streams=1)
    try:
        with pytest.raises(ValueError, match="replaceable"):
            scheduler.open_stream().submit(lambda: None, urgent=True)
    finally:
        scheduler.shutdown()


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


# ------------------------------------------------------------------------------------ batches of partials


class FakeBatches:
    """A batch function that records each batch's items and answers ``batched <item>`` for each."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []

    def run(self, items: list[Any]) -> list[Any]:
        self.batches.append(list(items))
        return [f"batched {item}" for item in items]

    def batch(self, item: str, key: str = "whisper") -> Batch:
        return Batch(key, item, self.run)


def alone(item: str) -> str:
    return f"alone {item}"


def test_partials_at_the_heads_of_streams_run_as_one_batch_each_with_its_own_result() -> None:
    scheduler = InferenceScheduler(max_streams=4, max_batch=4)
    fake = FakeBatches()
    hold = Blocker()
    try:
        a, b, c, d = (scheduler.open_stream() for _ in range(4))
        blocker = hold.submit(d)
        jobs = {
            name: stream.submit(functools.partial(alone, name), partial_key=name, batch=fake.batch(name))
            for name, stream in [("a", a), ("b", b), ("c", c)]
        }
        hold.release()
        blocker.result(timeout=TIMEOUT_S)
        results = {name: job.result(timeout=TIMEOUT_S) for name, job in jobs.items()}
    finally:
        scheduler.shutdown()
    assert fake.batches == [["a", "b", "c"]]
    assert results == {"a": "batched a", "b": "batched b", "c": "batched c"}
    assert (scheduler.batches_run, scheduler.batched_jobs, scheduler.jobs_run) == (1, 3, 4)


def test_a_batch_takes_only_heads_of_the_same_kind_and_a_final_still_goes_first() -> None:
    scheduler = InferenceScheduler(max_streams=5, max_batch=8)
    fake = FakeBatches()
    hold = Blocker()
    order: list[str] = []

    def final(name: str) -> str:
        order.append(name)
        return name

    def run(items: list[Any]) -> list[Any]:
        order.append("batch " + " ".join(items))
        return fake.run(items)

    try:
        a, b, c, d, e = (scheduler.open_stream() for _ in range(5))
        blocker = hold.submit(e)
        jobs = [
            # a: two partials of two channels: only its head may join a batch, the other waits its turn.
            a.submit(functools.partial(alone, "a0"), partial_key="a0", batch=Batch("w", "a0", run)),
            a.submit(functools.partial(alone, "a1"), partial_key="a1", batch=Batch("w", "a1", run)),
            # b: a partial batched under another key (another model): not with a's.
            b.submit(functools.partial(alone, "b"), partial_key="b", batch=fake.batch("b", key="other")),
            # c: a replaceable job without a Batch (a probe-like partial): it runs alone.
            c.submit(functools.partial(alone, "c"), partial_key="c"),
            # d: a final behind nothing: it runs before any partial.
            d.submit(functools.partial(final, "d final"), final_key="d"),
            # e: a partial behind the blocker, batched like a's.
            e.submit(functools.partial(alone, "e"), partial_key="e", batch=Batch("w", "e", run)),
        ]
        hold.release()
        results = [job.result(timeout=TIMEOUT_S) for job in [blocker, *jobs]][1:]
    finally:
        scheduler.shutdown()
    # d's final, then e's partial, the next in the ring, with a's head.
    assert order[:2] == ["d final", "batch e a0"]
    assert results == ["batched a0", "alone a1", "alone b", "alone c", "d final", "batched e"]
    # a's second partial came up on its own later: a stream's jobs never share a batch.
    assert fake.batches == [["e", "a0"]]


def test_batches_keep_the_round_robin_and_respect_the_limit() -> None:
    scheduler = InferenceScheduler(max_streams=4, max_batch=2)
    fake = FakeBatches()
    hold = Blocker()
    try:
        a, b, c, d = (scheduler.open_stream() for _ in range(4))
        blocker = hold.submit(d)
        jobs = []
        for round_ in range(2):  # each stream two partials (of two channels: none replaces another)
            for name, stream in [("a", a), ("b", b), ("c", c)]:
                item = f"{name}{round_}"
                jobs.append(
                    stream.submit(functools.partial(alone, item), partial_key=item, batch=fake.batch(item))
                )
        hold.release()
        for job in [blocker, *jobs]:
            job.result(timeout=TIMEOUT_S)
    finally:
        scheduler.shutdown()
    # a and b first; then c, which waited longest, before a and b come again; no stream twice in a row.
    assert fake.batches == [["a0", "b0"], ["c0", "a1"], ["b1", "c1"]]


def test_a_partial_alone_runs_its_own_function_and_no_batches_with_a_limit_of_one() -> None:
    for max_batch, expected in [(1, ["alone a", "alone b"]), (2, ["batched a", "batched b"])]:
        scheduler = InferenceScheduler(max_streams=3, max_batch=max_batch)
        fake = FakeBatches()
        hold = Blocker()
        try:
            a, b, c = (scheduler.open_stream() for _ in range(3))
            blocker = hold.submit(c)
            jobs = [
                s.submit(functools.partial(alone, n), partial_key=n, batch=fake.batch(n))
                for n, s in [("a", a), ("b", b)]
            ]
            hold.release()
            results = [job.result(timeout=TIMEOUT_S) for job in [blocker, *jobs]][1:]
            # Alone (nothing else waiting) a partial runs its own fn, not a batch of one.
            lone = a.submit(functools.partial(alone, "x"), partial_key="x", batch=fake.batch("x"))
            assert lone.result(timeout=TIMEOUT_S) == "alone x"
        finally:
            scheduler.shutdown()
        assert results == expected


def test_a_failed_batch_fails_each_of_its_jobs_and_the_streams_go_on() -> None:
    scheduler = InferenceScheduler(max_streams=3, max_batch=4)
    hold = Blocker()

    def broken(items: list[Any]) -> list[Any]:
        raise RuntimeError("the model fell over")

    try:
        a, b, c = (scheduler.open_stream() for _ in range(3))
        blocker = hold.submit(c)
        jobs = [
            s.submit(functools.partial(alone, n), partial_key=n, batch=Batch("w", n, broken))
            for n, s in [("a", a), ("b", b)]
        ]
        hold.release()
        blocker.result(timeout=TIMEOUT_S)
        for job in jobs:
            with pytest.raises(RuntimeError, match="fell over"):
                job.result(timeout=TIMEOUT_S)
        after = a.submit(functools.partial(alone, "later"), final_key="a final")
        assert after.result(timeout=TIMEOUT_S) == "alone later"
    finally:
        scheduler.shutdown()
