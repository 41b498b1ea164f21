"""gateway.group_commit against a real PostgreSQL: many live calls' scores share transactions, each caller
still hears about its own row only, a caller that stops waiting does not stop its batch, and when the
database is away, a batch hangs or the writer stops, every waiting caller hears it at once (and spools)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Sequence

import pytest

from callsense.domain import UtteranceScore
from gateway.group_commit import GroupCommit, GroupCommitStopped
from gateway.store import UNREACHABLE, Store, UnknownCallError

pytestmark = pytest.mark.slow

LINES = (
    "Honestly that's well over what we budgeted for this year.",
    "I'd have to take it to our CFO before we go any further.",
    "We're already locked in with another vendor until spring.",
    "That sounds useful, send me the deck and I'll share it with the team.",
)


class CountedStore:
    """The real store's two writes, counted: how many transactions the scores took."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.batches: list[int] = []

    async def record_scores(self, batch: Sequence[UtteranceScore]) -> int:
        self.batches.append(len(batch))
        return await self.store.record_scores(batch)

    async def record_score(self, score: UtteranceScore) -> bool:
        self.batches.append(1)
        return await self.store.record_score(score)


def score(call_id: str, utterance_id: int) -> UtteranceScore:
    return UtteranceScore(
        call_id=call_id,
        utterance_id=utterance_id,
        channel="customer",
        start_ms=utterance_id * 3000,
        end_ms=utterance_id * 3000 + 2500,
        text=LINES[utterance_id % len(LINES)],
        label="negative",
        p_negative=0.62,
        p_neutral=0.30,
        p_positive=0.08,
        score=0.23,
        model_version="test",
    )


async def started_calls(store: Store, n: int) -> list[str]:
    calls = [f"gc-{uuid.uuid4().hex[:10]}" for _ in range(n)]
    for call_id in calls:
        await store.upsert_call_start(call_id, {"tenant": "acme"})
    return calls


async def test_scores_of_many_calls_share_transactions_and_all_land(store: Store) -> None:
    calls = await started_calls(store, 40)
    counted = CountedStore(store)
    committed: list[int] = []
    group = GroupCommit(
        counted.record_scores, counted.record_score, max_batch=16, on_written=committed.append
    )

    await asyncio.gather(*(group.write(score(c, 0)) for c in calls))
    await asyncio.gather(*(group.write(score(c, 1)) for c in calls))

    for call_id in calls:
        assert [e.utterance_id for e in await store.list_events(call_id)] == [0, 1]
    assert sum(counted.batches) == 80
    assert max(counted.batches) == 16  # the cap holds
    assert len(counted.batches) <= 80 // 16 + 2  # full batches and a remainder per round
    assert committed == counted.batches  # what the gateway's metrics are told


async def test_a_lone_score_is_written_at_once(store: Store) -> None:
    (call_id,) = await started_calls(store, 1)
    counted = CountedStore(store)
    group = GroupCommit(counted.record_scores, counted.record_score)

    await group.write(score(call_id, 0))

    assert counted.batches == [1]
    assert group.waiting == 0
    assert len(await store.list_events(call_id)) == 1


async def test_a_row_the_database_refuses_fails_only_its_own_caller(store: Store) -> None:
    calls = await started_calls(store, 5)
    group = GroupCommit(store.record_scores, store.record_score)
    unknown = score(f"gc-never-started-{uuid.uuid4().hex[:6]}", 0)

    results = await asyncio.gather(
        *(group.write(score(c, 0)) for c in calls[:3]),
        group.write(unknown),
        *(group.write(score(c, 0)) for c in calls[3:]),
        return_exceptions=True,
    )

    assert [type(r).__name__ for r in results] == ["NoneType"] * 3 + ["UnknownCallError"] + ["NoneType"] * 2
    assert isinstance(results[3], UnknownCallError)
    for call_id in calls:
        assert len(await store.list_events(call_id)) == 1


class HeldBatches:
    """The real store's batch write, held at a gate once it has started (a batch under way)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self.started = asyncio.Event()
        self.gate = asyncio.Event()

    async def record_scores(self, batch: Sequence[UtteranceScore]) -> int:
        self.started.set()
        await self.gate.wait()
        return await self.store.record_scores(batch)


async def test_a_caller_that_stops_waiting_does_not_stop_its_batch(store: Store) -> None:
    calls = await started_calls(store, 6)
    held = HeldBatches(store)
    group = GroupCommit(held.record_scores, store.record_score)
    await group.write(score(calls[0], 0))  # alone: one insert, not held
    writes = [asyncio.create_task(group.write(score(c, 0))) for c in calls[1:]]
    await held.started.wait()  # all five in one batch, under way
    writes[0].cancel()
    held.gate.set()
    results = await asyncio.gather(*writes, return_exceptions=True)

    assert isinstance(results[0], asyncio.CancelledError)
    assert results[1:] == [None] * 4
    for call_id in calls:  # the cancelled caller's score landed too (its batch went on)
        assert len(await store.list_events(call_id)) == 1


async def test_closing_waits_for_the_batch_under_way(store: Store) -> None:
    calls = await started_calls(store, 3)
    group = GroupCommit(store.record_scores, store.record_score)
    writes = [asyncio.create_task(group.write(score(c, 0))) for c in calls]
    await asyncio.sleep(0)

    await group.close()

    assert all(w.done() and w.exception() is None for w in writes)


async def test_a_writer_stopped_at_shutdown_tells_its_callers_to_spool(store: Store) -> None:
    calls = await started_calls(store, 4)
    held = HeldBatches(store)
    group = GroupCommit(held.record_scores, store.record_score)
    under_way = [asyncio.create_task(group.write(score(c, 0))) for c in calls[:2]]
    await held.started.wait()
    gathered = [asyncio.create_task(group.write(score(c, 0))) for c in calls[2:]]
    await asyncio.sleep(0)

    await group.close(timeout_s=0.05)  # the batch never gets past its gate

    results = await asyncio.gather(*under_way, *gathered, return_exceptions=True)
    assert all(isinstance(r, GroupCommitStopped) for r in results), results
    assert all(isinstance(r, UNREACHABLE) for r in results)  # what gateway/spool.py spools


async def test_a_batch_past_its_time_fails_everything_gathered(store: Store) -> None:
    calls = await started_calls(store, 4)
    held = HeldBatches(store)
    group = GroupCommit(held.record_scores, store.record_score, timeout_s=0.05)
    under_way = [asyncio.create_task(group.write(score(c, 0))) for c in calls[:2]]
    await held.started.wait()
    gathered = [asyncio.create_task(group.write(score(c, 0))) for c in calls[2:]]

    results = await asyncio.gather(*under_way, *gathered, return_exceptions=True)

    assert all(isinstance(r, TimeoutError) for r in results), results
    assert group.waiting == 0  # none left to work through against a database that does not answer


async def test_a_database_that_cannot_be_reached_fails_each_caller_once(db_url: str) -> None:
    store = await Store.open(db_url, min_size=1, max_size=2)
    calls = await started_calls(store, 3)
    await store.close()  # the pool refuses every checkout from now on, as during an outage
    attempts: list[int] = []

    async def write_batch(batch: Sequence[UtteranceScore]) -> int:
        attempts.append(len(batch))
        return await store.record_scores(batch)

    group = GroupCommit(write_batch, store.record_score, max_batch=2)
    results = await asyncio.gather(
        *(group.write(score(c, u)) for c in calls for u in range(2)), return_exceptions=True
    )

    assert all(isinstance(r, UNREACHABLE) for r in results), results
    assert attempts == [2]  # the first failure answered everyone: no batch after it was tried


def test_a_batch_cap_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="max_batch"):
        GroupCommit(lambda batch: asyncio.sleep(0), lambda one: asyncio.sleep(0), max_batch=0)
