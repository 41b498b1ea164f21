"""gateway.store, callsense.storage and callsense.database against a real PostgreSQL (the embedded pgserver
build).

One server per test session in a persistent data dir outside the repository (warm starts after the first
run); each session works in fresh databases that it drops at the end. Tests use unique call ids.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import grpc
import grpc.aio
import httpx
import psutil
import psycopg
import pytest

from callsense import grpc_runtime
from callsense.config import Config
from callsense.database import (
    EmbeddedPostgres,
    database_url,
    start_embedded_postgres,
)
from callsense.domain import Channel, UtteranceScore
from callsense.storage import (
    Migration,
    MigrationError,
    apply_migrations,
    load_migrations,
    regional_urls_from_env,
)
from callsense.v1 import sentiment_pb2, sentiment_pb2_grpc
from gateway.app import create_app
from gateway.calls.service import Gateway
from gateway.grpc_api import add_to_server
from gateway.store import Store, StoreRouter, UnknownCallError
from tests.support.auth import bearer, keyed_channel, make_key
from tests.support.mesh import fresh_database

pytestmark = pytest.mark.slow


# --- fixtures (db_url and store: tests/gateway/conftest.py) ---------------------------------------------


# The server is tests/support/mesh.py's gateway_pg (the test data dir, never `callsense up`'s), and
# fresh_db_url (a database per test) comes from there too.
@pytest.fixture(scope="session")
def eu_db_url(gateway_pg: EmbeddedPostgres) -> Iterator[str]:
    yield from fresh_database(gateway_pg)


def _call_id() -> str:
    return f"call-{uuid.uuid4().hex[:12]}"


def _event(
    call_id: str, utterance_id: int, *, channel: Channel = "customer", score: float = 0.5
) -> UtteranceScore:
    p_pos = max(0.0, score - 0.25) * 2 if score > 0.5 else 0.0
    p_neg = (0.5 - score) * 2 if score < 0.5 else 0.0
    return UtteranceScore(
        call_id=call_id,
        utterance_id=utterance_id,
        channel=channel,
        start_ms=utterance_id * 1000,
        end_ms=utterance_id * 1000 + 900,
        text=f"utterance {utterance_id} [PHONE]",
        label="neutral",
        p_negative=p_neg,
        p_neutral=1.0 - p_neg - p_pos,
        p_positive=p_pos,
        score=score,
        model_version="test-1",
        inference_ms=1.5,
    )


# --- migrations -------------------------------------------------------------------------------------------


async def test_migrations_apply_once_even_when_processes_race(fresh_db_url: str) -> None:
    migrations = load_migrations()
    assert [m.version for m in migrations] == ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]
    # Three "replicas" starting at once: the advisory lock lets exactly one of them apply the migrations.
    conns = [await psycopg.AsyncConnection.connect(fresh_db_url, autocommit=True) for _ in range(3)]
    try:
        results = await asyncio.gather(*(apply_migrations(c, migrations) for c in conns))
        assert sorted(results) == [[], [], ["0001", "0002", "0003", "0004", "0005", "0006", "0007", "0008"]]
        assert await apply_migrations(conns[0], migrations) == []  # and again: nothing to do
        cur = await conns[0].execute("SELECT version FROM schema_migrations ORDER BY version")
        assert await cur.fetchall() == [
            ("0001",),
            ("0002",),
            ("0003",),
            ("0004",),
            ("0005",),
            ("0006",),
            ("0007",),
            ("0008",),
        ]
        cur = await conns[0].execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public' ORDER BY 1"
        )
        tables = [row[0] for row in await cur.fetchall()]
        assert tables == [
            "api_keys",
            "audit_log",
            "calls",
            "daily_rollups",
            "drift_daily",
            "nlp_events",
            "rollup_runs",
            "schema_migrations",
            "web_sessions",
            "webhook_outbox",
        ]
        cur = await conns[0].execute("SELECT indexname FROM pg_indexes WHERE tablename = 'calls'")
        assert "calls_report_pending_idx" in {row[0] for row in await cur.fetchall()}  # the owed-report sweep
    finally:
        for conn in conns:
            await conn.close()


async def test_store_open_twice_and_edited_migration_is_refused(fresh_db_url: str) -> None:
    first = await Store.open(fresh_db_url)
    second = await Store.open(fresh_db_url)  # migrations already applied: a no-op
    try:
        assert await second.migrate() == []
        edited = [replace(m, checksum="0" * 64) for m in load_migrations()]
        async with await psycopg.AsyncConnection.connect(fresh_db_url, autocommit=True) as conn:
            with pytest.raises(MigrationError):
                await apply_migrations(conn, edited)
            new = Migration("9999", "later", "CREATE TABLE later (x int)", "abc")
            assert await apply_migrations(conn, [*load_migrations(), new]) == ["9999"]
    finally:
        await first.close()
        await second.close()


# --- writes and reads -----------------------------------------------------------------------------------


async def test_record_and_read_back(store: Store) -> None:
    call_id = _call_id()
    meta = {"tenant": "acme", "region": "US", "agent": "a1", "team": "t1", "language": "en", "queue": "q7"}
    assert await store.upsert_call_start(call_id, meta) is True
    events = [_event(call_id, i, score=0.1 * (i + 1)) for i in (2, 0, 1)]
    for event in events:
        assert await store.record_score(event) is True

    call = await store.get_call(call_id)
    assert call is not None
    assert (call.tenant, call.region, call.agent, call.team, call.language) == (
        "acme",
        "us",
        "a1",
        "t1",
        "en",
    )
    assert call.status == "live" and call.ended_at is None and call.metadata == {"queue": "q7"}
    assert call.objection_tags == () and call.summary is None
    assert [e.utterance_id for e in call.events] == [0, 1, 2]
    for stored in call.events:
        assert stored.created_at is not None
        assert replace(stored, created_at=None) == next(
            e for e in events if e.utterance_id == stored.utterance_id
        )
    assert await store.list_events(call_id) == list(call.events)
    assert await store.get_call(_call_id()) is None

    # A second start (a reconnect) fills gaps but resets nothing.
    assert await store.upsert_call_start(call_id, {"region": "", "agent": "a2", "crm": "x"}) is False
    again = await store.get_call(call_id)
    assert again is not None
    assert (again.region, again.agent, again.started_at) == ("us", "a2", call.started_at)
    assert again.metadata == {"queue": "q7", "crm": "x"}


async def test_same_utterance_twice_keeps_the_first_write(store: Store) -> None:
    call_id = _call_id()
    await store.upsert_call_start(call_id, {})
    first = _event(call_id, 0, score=0.2)
    assert await store.record_score(first) is True
    assert await store.record_score(replace(first, text="replayed", score=0.9)) is False
    # A batch with an old key, a new one, and the new one repeated inside the batch.
    batch = [replace(first, score=0.7), _event(call_id, 1), _event(call_id, 1, score=0.99)]
    assert await store.record_scores(batch) == 1
    assert await store.record_scores([]) == 0

    stored = await store.list_events(call_id)
    assert [(e.utterance_id, e.text, e.score) for e in stored] == [
        (0, first.text, 0.2),
        (1, "utterance 1 [PHONE]", 0.5),
    ]


async def test_batch_is_one_transaction(store: Store) -> None:
    call_id = _call_id()
    await store.upsert_call_start(call_id, {})
    bad = replace(_event(call_id, 1), score=1.5)  # violates the CHECK on score
    with pytest.raises(psycopg.errors.CheckViolation):
        await store.record_scores([_event(call_id, 0), bad])
    assert await store.list_events(call_id) == []


async def test_score_for_unknown_call_is_refused(store: Store) -> None:
    with pytest.raises(UnknownCallError):
        await store.record_score(_event(_call_id(), 0))
    with pytest.raises(UnknownCallError):
        await store.record_scores([_event(_call_id(), 0)])


async def test_concurrent_writers(store: Store) -> None:
    call_id = _call_id()
    await store.upsert_call_start(call_id, {})
    events = [_event(call_id, i, score=(i % 10) / 10) for i in range(60)]
    # Every event written twice, interleaved, through a pool of 4 connections.
    results = await asyncio.gather(*(store.record_score(e) for e in events + events[::-1]))
    assert sum(results) == len(events)
    stored = await store.list_events(call_id)
    assert [e.utterance_id for e in stored] == list(range(60))


async def test_stats_and_end_call(store: Store) -> None:
    call_id = _call_id()
    started = await store.upsert_call_start(call_id, {"tenant": "acme"})
    assert started
    empty = await store.call_stats(call_id)
    assert (empty.utterance_count, empty.avg_sentiment, empty.min_sentiment) == (0, None, None)
    assert (empty.customer_avg_sentiment, empty.agent_avg_sentiment) == (None, None)

    scores: list[tuple[Channel, float]] = [
        ("customer", 0.2),
        ("customer", 0.4),
        ("agent", 0.9),
        ("mixed", 0.6),
    ]
    await store.record_scores([_event(call_id, i, channel=ch, score=s) for i, (ch, s) in enumerate(scores)])
    stats = await store.call_stats(call_id)
    assert stats.utterance_count == 4
    assert stats.avg_sentiment == pytest.approx(0.525)
    assert stats.min_sentiment == pytest.approx(0.2)
    assert stats.customer_avg_sentiment == pytest.approx(0.3)
    assert stats.agent_avg_sentiment == pytest.approx(0.9)

    assert await store.end_call(call_id) is True  # stats computed from the events
    ended = await store.get_call(call_id)
    assert ended is not None and ended.ended_at is not None and ended.duration_s is not None
    assert ended.status == "ended" and ended.duration_s >= 0
    assert ended.utterance_count == 4 and ended.avg_sentiment == pytest.approx(0.525)
    assert ended.customer_avg_sentiment == pytest.approx(0.3)

    # Enrichment arrives later: tags and summary are added, ended_at stays the first one.
    assert await store.end_call(call_id, stats, objection_tags=["pricing pushback"], summary={"text": "s"})
    enriched = await store.get_call(call_id)
    assert enriched is not None
    assert enriched.ended_at == ended.ended_at and enriched.duration_s == ended.duration_s
    assert enriched.objection_tags == ("pricing pushback",) and enriched.summary == {"text": "s"}
    assert await store.end_call(_call_id()) is False


# --- region routing -------------------------------------------------------------------------------------


def test_regional_urls_from_env() -> None:
    env = {"DATABASE_URL": "main", "DATABASE_URL_EU": "eu-db", "DATABASE_URL_": "x", "DATABASE_URL_US": ""}
    assert regional_urls_from_env(env) == {"eu": "eu-db"}


def test_database_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://db/callsense")
    assert database_url() == "postgresql://db/callsense"
    monkeypatch.setenv("DATABASE_URL", "")
    assert database_url() is None
    monkeypatch.delenv("DATABASE_URL")
    assert database_url() is None


async def test_eu_call_is_stored_only_in_the_eu_database(db_url: str, eu_db_url: str) -> None:
    router = await StoreRouter.open(db_url, {"EU": eu_db_url}, min_size=1, max_size=2)
    try:
        assert router.for_region("eu") is router.for_region(" EU ") is router.regional["eu"]
        assert router.for_region("us") is router.for_region(None) is router.default

        eu_call, us_call = _call_id(), _call_id()
        for call_id, region in ((eu_call, "EU"), (us_call, "us")):
            target = router.for_region(region)
            await target.upsert_call_start(call_id, {"region": region})
            await target.record_score(_event(call_id, 0))

        assert await router.default.get_call(eu_call) is None
        eu_row = await router.regional["eu"].get_call(eu_call)
        assert eu_row is not None and eu_row.region == "eu" and len(eu_row.events) == 1
        assert await router.regional["eu"].get_call(us_call) is None
        found = await router.get_call(eu_call)
        assert found is not None and found.call_id == eu_call
        assert (await router.get_call(us_call)) is not None
    finally:
        await router.close()


# --- the embedded server's life cycle ---------------------------------------------------------------------


def _server_pids(pg: EmbeddedPostgres) -> set[int]:
    postmaster = psutil.Process(pg.pid)
    return {pg.pid, *(child.pid for child in postmaster.children(recursive=True))}


def _postgres_alive(pids: set[int], data_dir: Path) -> list[int]:
    """Processes from `pids`, or naming the data dir, still running (a zombie awaiting its reaper is not)."""
    procs = []
    for pid in pids:
        with contextlib.suppress(psutil.NoSuchProcess):
            procs.append(psutil.Process(pid))
    for proc in psutil.process_iter(["cmdline"]):
        if str(data_dir) in " ".join(proc.info["cmdline"] or ()):
            procs.append(proc)
    alive = []
    for proc in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            if proc.status() != psutil.STATUS_ZOMBIE:
                alive.append(proc.pid)
    return alive


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stop_leaves_no_postgres_process() -> None:
    root = Path(tempfile.mkdtemp(prefix="callsense-pg-test-", dir="/var/tmp"))
    data_dir = root / "data"
    try:
        began = time.perf_counter()
        pg = start_embedded_postgres(data_dir)
        cold_s = time.perf_counter() - began
        with psycopg.connect(pg.uri) as conn:  # a connection gives the server a backend to clean up too
            assert conn.execute("SELECT current_database()").fetchone() == ("callsense",)
            pids = _server_pids(pg)
        assert len(pids) > 1
        # A process that died holding the server must not keep it alive (pgserver alone would).
        (data_dir / ".handle_pids.json").write_text(json.dumps([_dead_pid(), os.getpid()]))
        pg.stop()
        assert not pg.running
        assert _postgres_alive(pids, data_dir) == []
        pg.stop()  # a second stop is harmless

        began = time.perf_counter()
        with start_embedded_postgres(data_dir, delete_on_stop=True) as pg:
            warm_s = time.perf_counter() - began
            pids = _server_pids(pg)
        assert _postgres_alive(pids, data_dir) == []
        assert not data_dir.exists()
        print(f"embedded PostgreSQL: cold start {cold_s:.2f} s, warm start {warm_s:.2f} s")
    finally:
        shutil.rmtree(root, ignore_errors=True)


async def test_a_database_outage_answers_503_and_the_api_recovers_with_it() -> None:
    """The HTTP API while its database is down: 503 database_unavailable (not a 500, not a hang), and
    answers again once the database is back."""
    root = Path(tempfile.mkdtemp(prefix="callsense-pg-outage-", dir="/var/tmp"))
    pg = start_embedded_postgres(root / "data")
    try:
        store = await Store.open(pg.uri, checkout_timeout_s=1.0)
        config = Config(chopper_addr="127.0.0.1:9", scorer_addr="127.0.0.1:9")  # lazy channels, unused
        gateway = await Gateway.open(config, stores=StoreRouter(store))
        app = create_app(config, gateway=gateway)
        grpc_server = await grpc_runtime.start_server(add_to_server(gateway), "127.0.0.1:0")
        key = await make_key(gateway.authenticator.keys)
        channel = keyed_channel(grpc_runtime.server_info(grpc_server).address, key)
        get_call = sentiment_pb2_grpc.SentimentStub(channel).GetCall
        paths = ["/v1/calls/any-call", "/v1/calls?status=live", "/v1/reports/daily?date=2024-01-02"]
        try:
            async with (
                app.router.lifespan_context(app),
                httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://gw") as http,
            ):
                # The key is checked (and cached) before the outage: a known key keeps working.
                http.headers.update(bearer(key))
                assert [(await http.get(p)).status_code for p in paths] == [404, 200, 404]
                pg.stop()
                for path in paths:
                    down = await http.get(path)
                    assert down.status_code == 503, (path, down.text)
                    assert down.json()["error"]["code"] == "database_unavailable"
                with pytest.raises(grpc.aio.AioRpcError) as refused:
                    await get_call(sentiment_pb2.GetCallRequest(call_id="any-call"))
                assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
                pg = start_embedded_postgres(root / "data")
                # The pool reconnects with back-off: answers come back within seconds, by themselves.
                async with asyncio.timeout(60):
                    while [(await http.get(p)).status_code for p in paths] != [404, 200, 404]:
                        await asyncio.sleep(0.5)
        finally:
            await channel.close()
            await grpc_runtime.stop_server(grpc_server, 0.5)
            await gateway.close()
            await store.close()
    finally:
        pg.stop()
        shutil.rmtree(root, ignore_errors=True)


async def test_a_fused_score_keeps_the_words_alone_beside_it(store: Store) -> None:
    """nlp_events (0008): the text model's probabilities and the fusion head's version, NULL when no tone
    was fused."""
    call_id = _call_id()
    await store.upsert_call_start(call_id, {})
    plain = _event(call_id, 0, score=0.6)
    fused = replace(
        _event(call_id, 1, score=0.2),
        text_p_negative=0.1,
        text_p_neutral=0.7,
        text_p_positive=0.2,
        fusion_version="tone-x",
    )
    await store.record_scores([plain, fused])
    stored = await store.list_events(call_id)
    assert stored[0].fusion_version is None and stored[0].text_p_negative is None and not stored[0].tone_fused
    assert (stored[1].text_p_negative, stored[1].fusion_version) == (0.1, "tone-x") and stored[1].tone_fused
    assert stored[1].text_score == pytest.approx(0.55) and stored[1].tone_moved
