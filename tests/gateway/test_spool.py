"""The live path's writes while PostgreSQL is away (gateway/spool.py), against a real server of the test's
own that is stopped and started again: writes return at once, land in the fsynced spool, and are written
back in order and once when the server is back; a spool left by a crash (a torn last line included) is
written back at the next start."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import asdict
from pathlib import Path

import pytest
import pytest_asyncio

from callsense.domain import UtteranceScore, compute_call_stats
from gateway.spool import SpooledStore, spool_path
from gateway.store import Store
from tests.support.outage import StoppablePostgres, stoppable_postgres

pytestmark = pytest.mark.slow


@pytest.fixture
def pg() -> Iterator[StoppablePostgres]:
    with stoppable_postgres() as server:
        yield server


@pytest_asyncio.fixture
async def store(pg: StoppablePostgres) -> AsyncIterator[Store]:
    store = await Store.open(pg.uri, max_size=2, checkout_timeout_s=1.0)
    try:
        yield store
    finally:
        await store.close()


def score(call_id: str, utterance_id: int) -> UtteranceScore:
    return UtteranceScore(
        call_id=call_id,
        utterance_id=utterance_id,
        channel="customer",
        start_ms=utterance_id * 3000,
        end_ms=utterance_id * 3000 + 2500,
        text=f"line {utterance_id}: that is well over what we budgeted",
        label="negative",
        p_negative=0.7,
        p_neutral=0.2,
        p_positive=0.1,
        score=0.2,
        model_version="test",
    )


async def test_writes_go_straight_to_the_database_while_it_answers(store: Store, tmp_path: Path) -> None:
    spooled = SpooledStore(store, tmp_path / "spool.jsonl", lambda: ())
    await spooled.upsert_call_start("direct-1", {"tenant": "acme"})
    await spooled.record_score(score("direct-1", 0))
    assert not spooled.spooling and not (tmp_path / "spool.jsonl").exists()
    assert [e.utterance_id for e in await store.list_events("direct-1")] == [0]


async def test_an_outage_spools_without_waiting_and_everything_is_written_back_once(
    pg: StoppablePostgres, store: Store, tmp_path: Path
) -> None:
    path = spool_path(tmp_path, "127.0.0.1:8000", "")
    spooled = SpooledStore(store, path, lambda: (), retry_s=0.2, max_retry_s=0.5)
    await spooled.upsert_call_start("before", {"tenant": "acme"})
    await spooled.record_score(score("before", 0))

    pg.stop()
    waits = []
    for call_id in ("before", "during"):
        if call_id == "during":
            started = time.perf_counter()
            await spooled.upsert_call_start("during", {"tenant": "acme"})
            waits.append(time.perf_counter() - started)
        for utterance_id in range(1, 11):
            started = time.perf_counter()
            await spooled.record_score(score(call_id, utterance_id))
            waits.append(time.perf_counter() - started)
    events = [score("during", i) for i in range(1, 11)]
    await spooled.end_call(
        "during", compute_call_stats(events), status="ended", summary={"reason": "hangup"}, objection_tags=[]
    )
    assert spooled.spooling
    assert max(waits) < 1.0, waits  # the first write waits out the half-second timeout, no more
    assert sorted(waits)[len(waits) // 2] < 0.05, waits  # the rest append to the spool at once
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert [entry["op"] for entry in lines].count("score") >= 19  # the first may have landed or timed out
    assert lines[-1]["op"] == "end"

    pg.start()
    await asyncio.wait_for(spooled.wait_drained(), 60)
    assert not spooled.spooling and path.read_bytes() == b""
    assert [e.utterance_id for e in await store.list_events("before")] == list(range(11))
    assert [e.utterance_id for e in await store.list_events("during")] == list(range(1, 11))
    row = await store.get_call("during")
    assert row is not None and row.status == "ended" and row.summary == {"reason": "hangup"}
    # Back to direct writes, and a replay of what was already written back changes nothing.
    await spooled.record_score(score("during", 1))
    assert len(await store.list_events("during")) == 10
    await spooled.close()


async def test_a_spool_left_by_a_crash_is_written_back_at_the_next_start(
    store: Store, tmp_path: Path
) -> None:
    path = tmp_path / "default-gw.jsonl"
    entries = [
        {"op": "start", "call_id": "crashed", "metadata": {"tenant": "acme"}},
        *(
            {
                "op": "score",
                "event": {k: v for k, v in asdict(score("crashed", i)).items() if k != "created_at"},
            }
            for i in range(3)
        ),
    ]
    torn = b'{"op":"score","event":{"call_id":"crash'  # the append a crash cut short
    path.write_bytes(b"".join(json.dumps(e).encode() + b"\n" for e in entries) + torn)
    spooled = SpooledStore(store, path, lambda: (), retry_s=0.1)
    assert spooled.spooling
    spooled.start()
    await asyncio.wait_for(spooled.wait_drained(), 30)
    assert [e.utterance_id for e in await store.list_events("crashed")] == [0, 1, 2]
    assert path.read_bytes() == b""
    await spooled.close()


def test_spool_file_names_are_safe() -> None:
    assert spool_path(Path("/s"), "127.0.0.1:8000", "") == Path("/s/default-127.0.0.1_8000.jsonl")
    assert spool_path(Path("/s"), "gw/../x", "eu").name == "eu-gw_.._x.jsonl"
