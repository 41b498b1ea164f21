"""A real local webhook receiver and a fresh PostgreSQL database per test, for the delivery tests.

Registered once in tests/conftest.py (``pytest_plugins``); test modules import only the helpers.
``WebhookReceiver`` is a ``http.server`` in a thread on 127.0.0.1: it records every request, checks the
CRM signature with ``verify_signature``, answers with a status the test sets (503 for an outage), and can
be stopped and started again on the same port (a receiver that is down, then back).
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import psycopg
import pytest
from psycopg import sql

from callsense.database import EmbeddedPostgres
from callsense.domain import Channel, Label, UtteranceScore
from gateway.store import Store
from postcall.outbox_store import OutboxStore
from postcall.webhooks import SIGNATURE_HEADER, verify_signature
from tests.support.mesh import gateway_pg

__all__ = [
    "ReceivedRequest",
    "WebhookReceiver",
    "add_call",
    "delivery_db_url",
    "event",
    "gateway_pg",
    "outbox",
    "receiver",
    "store",
    "wait_until",
]


@dataclass(frozen=True)
class ReceivedRequest:
    path: str
    headers: dict[str, str]  # names in lower case
    body: bytes
    signature_valid: bool  # by verify_signature with the receiver's secret
    answered: int

    def json(self) -> Any:
        return json.loads(self.body)


class WebhookReceiver:
    def __init__(self, secret: str = "", port: int = 0) -> None:
        self.secret = secret
        self.status = 200
        self.requests: list[ReceivedRequest] = []
        self._lock = threading.Lock()
        self._port = port
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._port

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self._port}{path}"

    def received(self) -> list[ReceivedRequest]:
        with self._lock:
            return list(self.requests)

    def start(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                headers = {k.lower(): v for k, v in self.headers.items()}
                valid = bool(receiver.secret) and verify_signature(
                    receiver.secret, body, headers.get(SIGNATURE_HEADER.lower())
                )
                status = receiver.status
                with receiver._lock:
                    receiver.requests.append(ReceivedRequest(self.path, headers, body, valid, status))
                self.send_response(status)
                self.send_header("Content-Type", "text/plain")
                reply = b"ok" if status < 300 else b"receiver says no"
                self.send_header("Content-Length", str(len(reply)))
                self.end_headers()
                self.wfile.write(reply)

            def log_message(self, format: str, *args: Any) -> None:
                pass  # keep the test output clean

        self._server = ThreadingHTTPServer(("127.0.0.1", self._port), Handler)
        self._port = self._server.server_address[1]
        self._thread = threading.Thread(target=self._server.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Down: the port refuses connections until ``start()`` binds it again."""
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None
        if self._thread is not None:
            self._thread.join()
            self._thread = None


@pytest.fixture
def receiver() -> Iterator[WebhookReceiver]:
    server = WebhookReceiver(secret="s3cret-for-tests")
    server.start()
    yield server
    server.stop()


@pytest.fixture
async def delivery_db_url(gateway_pg: EmbeddedPostgres) -> AsyncIterator[str]:
    """A fresh database per test: every dispatcher sees only its own test's outbox."""
    name = f"delivery_test_{uuid.uuid4().hex[:12]}"
    url = await asyncio.to_thread(gateway_pg.create_database, name)
    yield url

    def drop() -> None:
        with psycopg.connect(gateway_pg.database_uri("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    await asyncio.to_thread(drop)


@pytest.fixture
async def store(delivery_db_url: str) -> AsyncIterator[Store]:
    """The gateway's repository of calls (it ends a call with its CRM push in the outbox)."""
    opened = await Store.open(delivery_db_url, min_size=1, max_size=4)
    yield opened
    await opened.close()


@pytest.fixture
def outbox(store: Store) -> OutboxStore:
    """The post-call worker's outbox repository, on the same database (and pool) as ``store``."""
    return OutboxStore(store.pool)


def event(
    call_id: str,
    utterance_id: int,
    label: Label,
    *,
    channel: Channel = "customer",
    score: float | None = None,
) -> UtteranceScore:
    """A scored utterance whose probabilities agree with its label."""
    probabilities = {"negative": (0.8, 0.15, 0.05), "neutral": (0.1, 0.8, 0.1), "positive": (0.05, 0.15, 0.8)}
    p_neg, p_neu, p_pos = probabilities[label]
    return UtteranceScore(
        call_id=call_id,
        utterance_id=utterance_id,
        channel=channel,
        start_ms=utterance_id * 2000,
        end_ms=utterance_id * 2000 + 1500,
        text=f"utterance {utterance_id}",
        label=label,
        p_negative=p_neg,
        p_neutral=p_neu,
        p_positive=p_pos,
        score=p_pos + 0.5 * p_neu if score is None else score,
        model_version="test-1",
    )


async def add_call(
    store: Store,
    call_id: str,
    utterances: list[tuple[Channel, Label]],
    *,
    started_at: datetime,
    **metadata: str,
) -> list[UtteranceScore]:
    """A call started at ``started_at`` with these scored utterances, ended (stats from its events)."""
    await store.upsert_call_start(call_id, metadata, started_at=started_at)
    events = [event(call_id, i, label, channel=channel) for i, (channel, label) in enumerate(utterances)]
    await store.record_scores(events)
    await store.end_call(call_id)
    return events


async def wait_until(condition: Callable[[], Any], what: str, timeout_s: float = 20.0) -> None:
    """Poll ``condition`` (sync or async) until true; fail saying ``what`` did not happen."""
    deadline = time.monotonic() + timeout_s
    while True:
        result = condition()
        if asyncio.iscoroutine(result):
            result = await result
        if result:
            return
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for: {what}")
        await asyncio.sleep(0.02)
