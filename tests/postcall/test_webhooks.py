"""CRM pushes through the durable outbox to a real local HTTP receiver (postcall/webhooks.py).

Real PostgreSQL (a fresh database per test), a real http.server receiver, real httpx. The receiver checks
each signature with verify_signature, and the tests check it again with hmac, independently.
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import json
import sys
import time
import uuid
from datetime import UTC, datetime

import pytest

from callsense.domain import CallRow
from callsense.outbox import OutboxMessage, crm_dedupe_key, crm_outbox, crm_outbox_message
from callsense.tenants import TenantsConfig, TenantSettings
from gateway.store import Store
from postcall.outbox_store import OutboxRow, OutboxStore
from postcall.webhooks import DeliveryPolicy, OutboxDispatcher, sign, verify_signature
from tests.support.delivery import WebhookReceiver, add_call, event, wait_until

pytestmark = pytest.mark.slow

SECRET = "s3cret-for-tests"  # the receiver fixture's
# Retries in milliseconds, not seconds; lease_s only has to exceed the request timeout.
FAST = DeliveryPolicy(timeout_s=2.0, base_delay_s=0.02, max_delay_s=0.1, poll_interval_s=0.05, lease_s=5.0)
STARTED = datetime(2024, 5, 6, 9, 30, tzinfo=UTC)


def _tenants(url: str, secret: str | None = SECRET) -> TenantsConfig:
    return TenantsConfig(default=TenantSettings(crm_webhook_url=url, crm_webhook_secret=secret))


def _call_id() -> str:
    return f"call-{uuid.uuid4().hex[:10]}"


def _independent_hmac_check(secret: str, body: bytes, header: str) -> bool:
    fields = dict(item.split("=", 1) for item in header.split(","))
    expected = hmac.new(secret.encode(), fields["t"].encode() + b"." + body, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields["v1"])


async def _end_with_push(store: Store, call_id: str, tenants: TenantsConfig) -> None:
    assert await store.end_call(
        call_id,
        objection_tags=["pricing pushback", "timeline concern"],
        summary={"lines": ["negative spike at 00:02 after pricing"], "reason": "stop"},
        outbox=crm_outbox(tenants),
    )


async def test_crm_push_reaches_the_receiver_signed_with_the_crm_fields(
    store: Store, receiver: WebhookReceiver, outbox: OutboxStore
) -> None:
    tenants = _tenants(receiver.url("/crm/calls"))
    call_id = _call_id()
    meta = {"tenant": "acme", "agent": "sam", "team": "west", "labels": {"opportunity": "opp-7"}}
    await store.upsert_call_start(call_id, meta, started_at=STARTED)
    events = [
        event(call_id, 0, "positive", channel="agent"),
        event(call_id, 1, "negative"),
        event(call_id, 2, "neutral"),
    ]
    await store.record_scores(events)
    await _end_with_push(store, call_id, tenants)

    dispatcher = OutboxDispatcher([outbox], tenants, FAST)
    await dispatcher.start()
    try:
        dispatcher.notify()
        await wait_until(lambda: receiver.received(), "the CRM push")
        await wait_until(
            lambda: _delivered(outbox, crm_dedupe_key(call_id)), "the outbox row marked delivered"
        )
    finally:
        await dispatcher.stop()

    [request] = receiver.received()
    assert request.path == "/crm/calls"
    assert request.headers["content-type"] == "application/json"
    assert request.headers["x-callsense-event"] == "crm.call_ended"
    assert request.headers["idempotency-key"] == f"crm:{call_id}"
    assert request.signature_valid  # verify_signature, in the receiver
    assert _independent_hmac_check(SECRET, request.body, request.headers["x-callsense-signature"])
    assert not _independent_hmac_check(
        "another secret", request.body, request.headers["x-callsense-signature"]
    )

    payload = request.json()
    scores = [e.score for e in events]
    assert payload["call_id"] == call_id
    assert (payload["tenant"], payload["agent"], payload["team"]) == ("acme", "sam", "west")
    assert payload["status"] == "ended"
    assert payload["avg_sentiment"] == pytest.approx(sum(scores) / len(scores))
    assert payload["min_sentiment"] == pytest.approx(min(scores))
    assert payload["customer_avg_sentiment"] == pytest.approx((scores[1] + scores[2]) / 2)
    assert payload["objection_tags"] == ["pricing pushback", "timeline concern"]
    assert payload["summary"] == ["negative spike at 00:02 after pricing"]
    assert payload["utterance_count"] == 3
    assert payload["metadata"] == {"labels": {"opportunity": "opp-7"}}
    assert datetime.fromisoformat(payload["started_at"]) == STARTED
    ended_at = datetime.fromisoformat(payload["ended_at"])
    assert payload["duration_s"] == pytest.approx((ended_at - STARTED).total_seconds())

    # The CRM fields are stored on the call too, and the outbox row says how delivery went.
    call = await store.get_call(call_id)
    assert call is not None and call.objection_tags == ("pricing pushback", "timeline concern")
    row = await outbox.outbox_message(crm_dedupe_key(call_id))
    assert row is not None
    assert (row.attempts, row.last_status, row.dead_at, row.last_error) == (1, 200, None, None)


async def test_a_push_enqueued_by_another_process_wakes_a_listening_dispatcher_at_once(
    store: Store, receiver: WebhookReceiver, delivery_db_url: str
) -> None:
    """The gateway ends calls in its own process; the worker's dispatcher, idle with a minute to its next
    poll, delivers each push within moments: the ending transaction's NOTIFY wakes it."""
    tenants = _tenants(receiver.url("/crm"))
    slow_poll = DeliveryPolicy(timeout_s=2.0, poll_interval_s=60.0, lease_s=5.0)
    worker_outbox = await OutboxStore.open(delivery_db_url, min_size=1, max_size=2)  # the worker's own pool
    dispatcher = OutboxDispatcher([worker_outbox], tenants, slow_poll)
    await dispatcher.start()
    try:
        await asyncio.sleep(0.5)  # idle: its first passes found nothing
        for _ in range(2):
            call_id = _call_id()
            await add_call(store, call_id, [("customer", "negative")], started_at=STARTED, tenant="acme")
            ended = time.monotonic()
            await _end_with_push(store, call_id, tenants)
            await wait_until(
                lambda call_id=call_id: any(r.json()["call_id"] == call_id for r in receiver.received()),
                "the push, woken by the notification",
                timeout_s=10.0,
            )
            assert time.monotonic() - ended < 2.0
    finally:
        await dispatcher.stop()
        await worker_outbox.close()


async def test_push_survives_a_receiver_outage_and_a_dispatcher_restart(
    store: Store, receiver: WebhookReceiver, outbox: OutboxStore
) -> None:
    tenants = _tenants(receiver.url("/crm"))
    key = crm_dedupe_key(call_id := _call_id())
    receiver.stop()  # down: connections to its port are refused

    await add_call(store, call_id, [("customer", "negative")], started_at=STARTED, tenant="acme")
    await _end_with_push(store, call_id, tenants)
    first = OutboxDispatcher([outbox], tenants, FAST)
    await first.start()

    await wait_until(lambda: _attempts_at_least(outbox, key, 2), "two refused attempts")
    await first.stop()  # the worker goes away during the outage
    row = await outbox.outbox_message(key)
    assert row is not None and row.delivered_at is None and row.dead_at is None
    assert row.last_status is None and "ConnectError" in (row.last_error or "")
    refused = row.attempts

    receiver.start()  # back on the same port, but failing
    receiver.status = 503
    second = OutboxDispatcher([outbox], tenants, FAST)  # a new worker process
    await second.start()
    try:
        await wait_until(lambda: len(receiver.received()) >= 2, "two attempts answered 503")
        row = await outbox.outbox_message(key)
        assert row is not None and row.delivered_at is None and row.last_status == 503
        receiver.status = 200
        await wait_until(lambda: _delivered(outbox, key), "delivery once the receiver is healthy")
    finally:
        await second.stop()

    received = receiver.received()
    assert [r.answered for r in received][-1] == 200
    assert all(r.answered == 503 for r in received[:-1])
    # Every attempt carried the same message under the same idempotency key, each one signed.
    assert {r.body for r in received} == {received[0].body}
    assert {r.headers["idempotency-key"] for r in received} == {key}
    assert all(r.signature_valid for r in received)
    assert received[-1].json()["call_id"] == call_id
    row = await outbox.outbox_message(key)
    assert row is not None and row.attempts == refused + len(received)


async def test_a_refused_message_is_kept_dead_and_can_be_requeued(
    store: Store, receiver: WebhookReceiver, delivery_db_url: str, outbox: OutboxStore
) -> None:
    tenants = _tenants(receiver.url("/crm"))
    key = crm_dedupe_key(call_id := _call_id())
    await add_call(store, call_id, [("customer", "neutral")], started_at=STARTED, tenant="acme")
    await _end_with_push(store, call_id, tenants)
    dispatcher = OutboxDispatcher([outbox], tenants, FAST)
    try:
        receiver.status = 400
        report = await dispatcher.deliver_due()
        assert (report.dead, report.delivered, report.retried) == (1, 0, 0)
        assert (await dispatcher.deliver_due()).attempted == 0  # not retried: the receiver refused it
        row = await outbox.outbox_message(key)
        assert row is not None and row.dead_at is not None and row.delivered_at is None
        assert row.last_status == 400 and "receiver says no" in (row.last_error or "")

        receiver.status = 200  # the receiver is fixed; the operator requeues, as a user would
        assert await requeue_with_the_cli("--tenant", "other", "--database-url", delivery_db_url) == 0
        assert await requeue_with_the_cli("--tenant", "acme", "--database-url", delivery_db_url) == 1
        assert (await dispatcher.deliver_due()).delivered == 1
    finally:
        await dispatcher.stop()
    assert [r.answered for r in receiver.received()] == [400, 200]
    row = await outbox.outbox_message(key)
    assert row is not None and row.delivered_at is not None and row.dead_at is None and row.attempts == 2


async def requeue_with_the_cli(*args: str) -> int:
    """``callsense webhooks requeue ARGS`` in a subprocess; how many messages it made due again."""
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "tools.cli",
        "webhooks",
        "requeue",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await process.communicate()
    assert process.returncode == 0, err.decode()
    count: int = json.loads(out)["requeued"]
    return count


@pytest.mark.parametrize("status", [429, 408, 500])
async def test_busy_and_failing_receivers_are_retried(
    store: Store, receiver: WebhookReceiver, status: int, outbox: OutboxStore
) -> None:
    tenants = _tenants(receiver.url("/crm"))
    key = crm_dedupe_key(call_id := _call_id())
    await add_call(store, call_id, [("customer", "neutral")], started_at=STARTED, tenant="acme")
    await _end_with_push(store, call_id, tenants)
    dispatcher = OutboxDispatcher([outbox], tenants, FAST)
    try:
        receiver.status = status
        assert (await dispatcher.deliver_due()).retried == 1
        row = await outbox.outbox_message(key)
        assert row is not None and row.dead_at is None and row.last_status == status
    finally:
        await dispatcher.stop()


async def test_without_a_secret_at_send_time_nothing_is_sent_unsigned(
    store: Store, receiver: WebhookReceiver, outbox: OutboxStore
) -> None:
    call_id = _call_id()
    await add_call(store, call_id, [("customer", "neutral")], started_at=STARTED, tenant="acme")
    await _end_with_push(store, call_id, _tenants(receiver.url("/crm")))
    # The worker restarted with the CRM secret removed from its configuration.
    dispatcher = OutboxDispatcher([outbox], TenantsConfig(), FAST)
    try:
        assert (await dispatcher.deliver_due()).retried == 1
    finally:
        await dispatcher.stop()
    assert receiver.received() == []
    row = await outbox.outbox_message(crm_dedupe_key(call_id))
    assert row is not None and row.dead_at is None and "no CRM signing secret" in (row.last_error or "")


async def test_end_call_and_its_push_commit_together_once(store: Store, outbox: OutboxStore) -> None:
    tenants = _tenants("http://crm.invalid/hook")
    call_id = _call_id()
    await store.upsert_call_start(call_id, {"tenant": "acme"}, started_at=STARTED)
    await store.record_scores([event(call_id, 0, "negative")])

    def broken_factory(call: CallRow) -> list[OutboxMessage]:
        raise RuntimeError("building the push failed")

    with pytest.raises(RuntimeError):
        await store.end_call(call_id, outbox=broken_factory)
    call = await store.get_call(call_id)
    assert call is not None and call.status == "live"  # the end was rolled back with the push
    assert await outbox.outbox_message(crm_dedupe_key(call_id)) is None

    await _end_with_push(store, call_id, tenants)
    await _end_with_push(store, call_id, tenants)  # a repeated end: still one push
    first = await outbox.outbox_message(crm_dedupe_key(call_id))
    assert first is not None and first.payload["objection_tags"] == ["pricing pushback", "timeline concern"]
    ended = await store.get_call(call_id)
    assert ended is not None
    message = crm_outbox_message(ended, tenants)
    assert message is not None and await outbox.enqueue([message]) == 0

    # An unknown call enqueues nothing; a tenant without a CRM webhook gets no push.
    assert await store.end_call(_call_id(), outbox=crm_outbox(tenants)) is False
    assert crm_outbox_message(ended, TenantsConfig()) is None


async def test_two_dispatchers_never_claim_the_same_message(
    store: Store, delivery_db_url: str, outbox: OutboxStore
) -> None:
    messages = [
        OutboxMessage("crm", "acme", "http://crm.invalid/hook", {"n": i}, f"crm:claim-{i}", None)
        for i in range(40)
    ]
    assert await outbox.enqueue(messages) == 40
    other = await OutboxStore.open(delivery_db_url, min_size=1, max_size=2)  # another replica
    try:
        first, second = await asyncio.gather(outbox.claim_due(25, 30.0), other.claim_due(25, 30.0))
    finally:
        await other.close()
    ids_first, ids_second = {r.id for r in first}, {r.id for r in second}
    assert not ids_first & ids_second
    assert len(ids_first | ids_second) == 40
    assert await outbox.claim_due(10, 30.0) == []  # all leased
    assert all(r.attempts == 1 for r in [*first, *second])

    # A dispatcher that dies holding a message: once its short lease ends, another one gets it.
    await outbox.enqueue(
        [OutboxMessage("slack", "acme", "http://slack.invalid/x", {"text": "t"}, "slack:lease")]
    )
    [held] = await outbox.claim_due(10, 0.05, ["slack"])
    reclaimed: list[OutboxRow] = []

    async def reclaim() -> bool:
        reclaimed.extend(await outbox.claim_due(10, 30.0, ["slack"]))
        return bool(reclaimed)

    await wait_until(reclaim, "the message claimed again after its lease")
    assert [(r.id, r.attempts) for r in reclaimed] == [(held.id, 2)]


def test_verify_signature_refuses_tampering_staleness_and_other_secrets() -> None:
    body = b'{"call_id":"c1","avg_sentiment":0.42}'
    header = sign("k1", body, timestamp=1_700_000_000)
    assert verify_signature("k1", body, header, now=1_700_000_010)
    assert _independent_hmac_check("k1", body, header)
    assert not verify_signature("k1", body.replace(b"0.42", b"0.99"), header, now=1_700_000_010)
    assert not verify_signature("k2", body, header, now=1_700_000_010)
    assert not verify_signature("k1", body, header, now=1_700_000_000 + 3600)  # replayed an hour later
    assert not verify_signature("k1", body, None)
    assert not verify_signature("k1", body, "t=abc,v1=00")
    assert not verify_signature("k1", body, header.replace("t=1700000000", "t=1700000001"), now=1_700_000_010)


def test_back_off_grows_to_its_cap_and_honours_retry_after() -> None:
    policy = DeliveryPolicy(base_delay_s=2.0, max_delay_s=600.0)
    for attempts, full in [(1, 2.0), (2, 4.0), (5, 32.0), (12, 600.0), (200, 600.0)]:
        delay = policy.retry_delay(attempts)
        assert full / 2 <= delay <= full
    assert policy.retry_delay(1, retry_after_s=120.0) >= 120.0
    assert policy.retry_delay(1, retry_after_s=10_000.0) == 600.0
    with pytest.raises(ValueError, match="lease_s"):
        DeliveryPolicy(timeout_s=30.0, lease_s=10.0)


async def _delivered(outbox: OutboxStore, key: str) -> bool:
    row = await outbox.outbox_message(key)
    return row is not None and row.delivered_at is not None


async def _attempts_at_least(outbox: OutboxStore, key: str, n: int) -> bool:
    row = await outbox.outbox_message(key)
    return (
        row is not None
        and row.attempts >= n
        and row.next_attempt_at is not None
        and row.last_error is not None
    )
