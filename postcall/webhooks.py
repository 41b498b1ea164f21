"""Webhooks after the call: the CRM push of each ended call and the Slack alerts, from a durable outbox.

Nothing is posted from the request path. A message is first written to ``webhook_outbox`` in the same
transaction as what caused it (callsense/outbox.py: the gateway's ``end_call(..., outbox=crm_outbox(...))``
for a CRM push, the daily roll-up for a Slack alert), then the post-call worker's ``OutboxDispatcher`` task
delivers it. So a receiver that is down, or a process that restarts, loses nothing: the message waits in
PostgreSQL until the receiver takes it. The dispatcher LISTENs to each database's ``callsense_outbox``
channel, which every enqueuing transaction notifies at its commit: a gateway's CRM push goes out at once,
not at the next poll (``poll_interval_s``, the fallback while a listening connection is down).

The request: ``POST <url>`` with the JSON payload as body and the headers
  Content-Type          application/json
  X-Callsense-Event     crm.call_ended | slack.daily_alert
  Idempotency-Key       the message's dedupe key (``crm:<call_id>``, ``slack:<day>:<tenant>:<team>``); the
                        same on every retry: delivery is at least once, so a receiver drops what it has seen
  X-Callsense-Delivery  the outbox id; X-Callsense-Attempt: 1, 2, ...
  X-Callsense-Signature (CRM pushes) ``t=<unix seconds>,v1=<hex HMAC-SHA256(secret, "<t>." + body)>``,
                        signed at send time with the tenant's current secret (none is stored with the
                        message); receivers check it with ``verify_signature``.
Slack incoming webhooks get the same request unsigned: their URL is the credential.

Responses and retries:
- 2xx: delivered (``delivered_at``).
- Any other 4xx than 408, 425 and 429: the receiver refuses this very message (malformed, unauthorised,
  gone), so sending it again would be refused again. It is marked dead (``dead_at``, with the status and
  the start of the body in ``last_error``) and kept; ``OutboxStore.requeue_dead`` sends it again once the
  cause is fixed.
- Everything else (5xx, 408, 425, 429, 3xx, timeouts, refused connections, a CRM push whose tenant has no
  secret now): retried after an exponential back-off, ``base_delay_s * 2**(attempt - 1)`` capped at
  ``max_delay_s``, times a random factor in [0.5, 1] so that many messages do not retry in lock-step; a
  ``Retry-After`` in seconds is honoured (up to the cap). Without end: a receiver down for a week gets its
  backlog when it is back, at worst ``max_delay_s`` later.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import json
import logging
import random
import time
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum
from urllib.parse import urlsplit

import httpx

from callsense.config import Config
from callsense.outbox import EVENTS, OutboxKind
from callsense.storage import command_databases
from callsense.tenants import TenantsConfig
from postcall.outbox_store import OutboxRow, OutboxStore

log = logging.getLogger(__name__)

SIGNATURE_HEADER = "X-Callsense-Signature"
EVENT_HEADER = "X-Callsense-Event"
IDEMPOTENCY_HEADER = "Idempotency-Key"
DELIVERY_HEADER = "X-Callsense-Delivery"
ATTEMPT_HEADER = "X-Callsense-Attempt"
# A signature older (or newer) than this is refused by verify_signature: a replayed request goes stale.
SIGNATURE_TOLERANCE_S = 300.0
# Statuses that say "not now" rather than "not this message": retried like a 5xx.
_RETRYABLE_4XX = frozenset({408, 425, 429})
_ERROR_BODY_CHARS = 300


# --- signing ------------------------------------------------------------------------------------------------


def sign(secret: str, body: bytes, timestamp: int | None = None) -> str:
    """The ``X-Callsense-Signature`` value for ``body``: ``t=<unix seconds>,v1=<hex HMAC-SHA256>``."""
    t = int(time.time()) if timestamp is None else timestamp
    return f"t={t},v1={_digest(secret, t, body)}"


def verify_signature(
    secret: str,
    body: bytes,
    header: str | None,
    *,
    tolerance_s: float = SIGNATURE_TOLERANCE_S,
    now: float | None = None,
) -> bool:
    """True when ``header`` (``X-Callsense-Signature``) signs exactly ``body`` (the raw request bytes, not
    a re-serialised JSON) with ``secret``, at a time within ``tolerance_s`` of ``now``.

    Receivers: compute this before parsing the body, answer 401 when False (the message is then kept, marked
    dead, and can be requeued once the secrets agree), and use ``Idempotency-Key`` to drop duplicates.
    """
    if not header:
        return False
    parts: dict[str, list[str]] = {}
    for item in header.split(","):
        key, sep, value = item.strip().partition("=")
        if sep:
            parts.setdefault(key, []).append(value)
    try:
        t = int(parts["t"][0])
    except (KeyError, ValueError):
        return False
    current = time.time() if now is None else now
    if abs(current - t) > tolerance_s:
        return False
    expected = _digest(secret, t, body)
    return any(hmac.compare_digest(expected, candidate) for candidate in parts.get("v1", []))


def _digest(secret: str, timestamp: int, body: bytes) -> str:
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


# --- delivery -----------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DeliveryPolicy:
    """Timeouts and back-off of webhook delivery (tests shrink them)."""

    timeout_s: float = 10.0
    """Per request (connect, write, read)."""
    base_delay_s: float = 2.0
    max_delay_s: float = 600.0
    poll_interval_s: float = 5.0
    """How often an idle dispatcher looks for due messages when no notification woke it (a listening
    connection that is down, a retry that came due)."""
    batch_size: int = 32
    """Messages claimed, and sent concurrently, per pass and database."""
    lease_s: float = 60.0
    """How long a claimed message is ours; longer than a request, so no one else sends it meanwhile."""

    def __post_init__(self) -> None:
        if min(self.timeout_s, self.base_delay_s, self.poll_interval_s) <= 0 or self.batch_size < 1:
            raise ValueError("timeouts, delays, the poll interval and the batch size must be > 0")
        if self.max_delay_s < self.base_delay_s:
            raise ValueError(f"max_delay_s ({self.max_delay_s}) < base_delay_s ({self.base_delay_s})")
        if self.lease_s <= self.timeout_s:
            raise ValueError(f"lease_s ({self.lease_s}) must exceed timeout_s ({self.timeout_s})")

    def retry_delay(self, attempts: int, retry_after_s: float | None = None) -> float:
        """Seconds before the next try, after ``attempts`` failed ones (>= 1)."""
        backoff = min(self.max_delay_s, self.base_delay_s * 2 ** min(max(attempts - 1, 0), 30))
        delay = backoff * random.uniform(0.5, 1.0)
        if retry_after_s is not None:
            delay = max(delay, min(retry_after_s, self.max_delay_s))
        return float(delay)


class Outcome(StrEnum):
    DELIVERED = "delivered"
    RETRY = "retry"
    DEAD = "dead"


@dataclass(frozen=True)
class DeliveryReport:
    """What one pass did. ``full``: some database had a whole batch due, so more may be waiting."""

    delivered: int = 0
    retried: int = 0
    dead: int = 0
    failed: int = 0
    """Attempts whose outcome could not be recorded (the database went away): retried after the lease."""
    full: bool = False

    @property
    def attempted(self) -> int:
        return self.delivered + self.retried + self.dead + self.failed


class OutboxDispatcher:
    """Delivers the due messages of every store's outbox; one asyncio task, ``start()`` / ``stop()``.

    Several dispatchers (worker replicas, ``callsense rollup``) may share a database: a message is
    claimed by one of them at a time. An idle dispatcher looks at once, instead of at its next poll, when
    a database notifies that something was enqueued there (``listen``, on while started) or when
    ``notify()`` is called in-process.
    """

    def __init__(
        self,
        stores: Sequence[OutboxStore],
        tenants: TenantsConfig,
        policy: DeliveryPolicy | None = None,
        *,
        kinds: Sequence[OutboxKind] | None = None,
        client: httpx.AsyncClient | None = None,
        listen: bool = True,
    ) -> None:
        self._stores = list(stores)
        self._listen = listen
        self._tenants = tenants
        self.policy = policy or DeliveryPolicy()
        self._kinds = None if kinds is None else list(kinds)
        self._own_client = client is None
        self._client = client or httpx.AsyncClient(
            timeout=self.policy.timeout_s,
            follow_redirects=False,  # a redirected POST is not delivered: retried, and visible in last_error
            headers={"User-Agent": "callsense-webhooks/1"},
        )
        self._wake = asyncio.Event()
        self._stopping = False
        self._task: asyncio.Task[None] | None = None
        self._listeners: list[asyncio.Task[None]] = []

    def notify(self) -> None:
        """New messages were enqueued: deliver them now rather than at the next poll."""
        self._wake.set()

    async def start(self) -> None:
        if self._task is None:
            self._stopping = False
            self._task = asyncio.create_task(self._run(), name="webhook-outbox-dispatcher")
            if self._listen:
                self._listeners = [
                    asyncio.create_task(self._listen_to(store), name="webhook-outbox-listener")
                    for store in self._stores
                ]

    async def stop(self) -> None:
        """Let the pass in progress finish (its requests are bounded by the timeout), stop, close HTTP.

        A pass still running after that is cancelled: its messages are sent again once their lease ends.
        """
        listeners, self._listeners = self._listeners, []
        for listener in listeners:
            listener.cancel()
        await asyncio.gather(*listeners, return_exceptions=True)
        task, self._task = self._task, None
        if task is not None:
            self._stopping = True
            self._wake.set()
            done, _ = await asyncio.wait({task}, timeout=self.policy.timeout_s + 1.0)
            if not done:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._own_client:
            await self._client.aclose()

    async def deliver_due(self) -> DeliveryReport:
        """One pass: claim each store's due messages (up to a batch) and send them concurrently."""
        outcomes: list[Outcome | BaseException] = []
        full = False
        for store in self._stores:
            rows = await store.claim_due(self.policy.batch_size, self.policy.lease_s, self._kinds)
            full = full or len(rows) == self.policy.batch_size
            outcomes += await asyncio.gather(
                *(self._deliver(store, row) for row in rows), return_exceptions=True
            )
        for outcome in outcomes:
            if isinstance(outcome, BaseException):
                log.error("recording a webhook delivery failed: %r", outcome)
        return DeliveryReport(
            delivered=outcomes.count(Outcome.DELIVERED),
            retried=outcomes.count(Outcome.RETRY),
            dead=outcomes.count(Outcome.DEAD),
            failed=sum(isinstance(o, BaseException) for o in outcomes),
            full=full,
        )

    async def _run(self) -> None:
        while not self._stopping:
            self._wake.clear()  # before the pass: a notify() during it makes the wait below return at once
            try:
                report = await self.deliver_due()
                wait = 0.0 if report.full else await self._idle_wait()
            except Exception:
                log.exception(
                    "webhook delivery pass failed; trying again in %.0f s", self.policy.poll_interval_s
                )
                wait = self.policy.poll_interval_s
            if wait > 0 and not self._stopping:
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait):
                        await self._wake.wait()

    async def _listen_to(self, store: OutboxStore) -> None:
        """Wake the dispatcher on each notification of ``store``'s database; listen again after a broken
        connection (meanwhile the poll interval bounds the delay)."""
        while True:
            try:
                async for _ in store.notifications():
                    self._wake.set()
            except Exception as exc:  # the database went away: poll until it is back
                log.warning(
                    "listening for enqueued webhooks failed (%s); again in %.0f s",
                    type(exc).__name__,
                    self.policy.poll_interval_s,
                )
            await asyncio.sleep(self.policy.poll_interval_s)

    async def _idle_wait(self) -> float:
        """Until the earliest pending message is due, at most the poll interval."""
        wait = self.policy.poll_interval_s
        for store in self._stores:
            due_in = await store.seconds_until_next_attempt(self._kinds)
            if due_in is not None:
                wait = min(wait, max(due_in, 0.0))
        return wait

    async def _deliver(self, store: OutboxStore, row: OutboxRow) -> Outcome:
        body = json.dumps(row.payload, separators=(",", ":"), ensure_ascii=False).encode()
        headers = {
            "Content-Type": "application/json",
            EVENT_HEADER: EVENTS[row.kind],
            IDEMPOTENCY_HEADER: row.dedupe_key,
            DELIVERY_HEADER: str(row.id),
            ATTEMPT_HEADER: str(row.attempts),
        }
        if row.kind == "crm":
            secret = self._tenants.crm_secret(row.tenant)
            if not secret:
                error = f"no CRM signing secret configured for tenant {row.tenant!r}"
                return await self._retry(store, row, None, error)
            headers[SIGNATURE_HEADER] = sign(secret, body)
        try:
            response = await self._client.post(row.url, content=body, headers=headers)
        except httpx.HTTPError as exc:
            return await self._retry(store, row, None, f"{type(exc).__name__}: {exc}"[:_ERROR_BODY_CHARS])
        status = response.status_code
        if 200 <= status < 300:
            await store.mark_delivered(row.id, status)
            log.info("webhook %s delivered to %s (attempt %d)", row.dedupe_key, _host(row.url), row.attempts)
            return Outcome.DELIVERED
        error = f"HTTP {status}: {response.text[:_ERROR_BODY_CHARS]}"
        if 400 <= status < 500 and status not in _RETRYABLE_4XX:
            await store.mark_failed(row.id, status=status, error=error, retry_in_s=None)
            log.warning("webhook %s refused by %s (%s): given up", row.dedupe_key, _host(row.url), error)
            return Outcome.DEAD
        return await self._retry(store, row, status, error, _retry_after_s(response))

    async def _retry(
        self,
        store: OutboxStore,
        row: OutboxRow,
        status: int | None,
        error: str,
        retry_after_s: float | None = None,
    ) -> Outcome:
        delay = self.policy.retry_delay(row.attempts, retry_after_s)
        await store.mark_failed(row.id, status=status, error=error, retry_in_s=delay)
        log.warning(
            "webhook %s to %s failed (attempt %d: %s); next try in %.1f s",
            row.dedupe_key,
            _host(row.url),
            row.attempts,
            error,
            delay,
        )
        return Outcome.RETRY


def _retry_after_s(response: httpx.Response) -> float | None:
    """Retry-After in seconds (the HTTP-date form is rare for webhooks and ignored)."""
    try:
        return max(0.0, float(response.headers.get("Retry-After", "")))
    except ValueError:
        return None


def _host(url: str) -> str:
    """Where a webhook goes, for logs: never the path, which for Slack is the credential."""
    parts = urlsplit(url)
    port = f":{parts.port}" if parts.port else ""
    return f"{parts.scheme}://{parts.hostname}{port}"


# --- `callsense webhooks requeue` ---------------------------------------------------------------------------


async def requeue_command(
    config: Config,
    *,
    database_url: str | None = None,
    tenant: str | None = None,
    kind: OutboxKind | None = None,
) -> int:
    """``callsense webhooks requeue``: make the parked messages (a receiver answered a 4xx) due again in
    every database, after the receiver or the secret was fixed; the worker's dispatcher sends them at once
    (the requeue notifies it). Returns how many."""
    async with command_databases(config, database_url) as databases:
        outboxes = [OutboxStore(db.pool) for db in databases.stores]
        return sum([await outbox.requeue_dead(tenant=tenant, kind=kind) for outbox in outboxes])
