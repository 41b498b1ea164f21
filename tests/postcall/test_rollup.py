"""Daily roll-ups and the Slack alert (postcall/rollup.py, `callsense rollup`); the gateway's report pages.

Real PostgreSQL (a fresh database per test) and a real local HTTP receiver standing in for Slack. The
expected figures are computed here, in Python, from the calls the test stores, by the definition in the
module docstring; the roll-up computes them in SQL.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
from collections import defaultdict
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import httpx
import pytest

from callsense.config import Config, ConfigError
from callsense.domain import Channel, Label, RollupRow, UtteranceScore
from callsense.tenants import TenantsConfig, TenantSettings
from gateway.app import create_app
from gateway.calls.service import Gateway
from gateway.store import Store, StoreRouter
from postcall.outbox_store import OutboxStore
from postcall.rollup import (
    RollupScheduler,
    day_window,
    day_windows,
    rollup_time_from_env,
    run_rollup,
    slack_alerts,
    slack_dedupe_key,
)
from postcall.rollup_store import DayWindow
from postcall.webhooks import DeliveryPolicy, OutboxDispatcher
from tests.support.auth import bearer, make_key
from tests.support.delivery import WebhookReceiver, add_call, wait_until

pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parents[2]
DAY = date(2024, 3, 14)
FAST = DeliveryPolicy(timeout_s=2.0, base_delay_s=0.02, max_delay_s=0.1, poll_interval_s=0.05, lease_s=5.0)


@dataclass(frozen=True)
class CallSpec:
    call_id: str
    tenant: str
    team: str
    agent: str
    started_at: datetime
    script: str
    """One token per utterance: channel (c customer, a agent, m mixed) then label (- negative, 0 neutral,
    + positive): "c- a+" is a negative customer utterance, then a positive agent one."""

    @property
    def utterances(self) -> list[tuple[Channel, Label]]:
        channels: dict[str, Channel] = {"c": "customer", "a": "agent", "m": "mixed"}
        labels: dict[str, Label] = {"-": "negative", "0": "neutral", "+": "positive"}
        return [(channels[token[0]], labels[token[1]]) for token in self.script.split()]


def _at(day: date, hh: int, mm: int = 0, ss: int = 0) -> datetime:
    return datetime.combine(day, time(hh, mm, ss), UTC)


NEXT, PREVIOUS = DAY + timedelta(days=1), DAY - timedelta(days=1)
CALLS = [
    # acme / west: customer side 5 of 10 negative (50 %), above acme's 30 %.
    CallSpec("w1", "acme", "west", "sam", _at(DAY, 9), "c- c- a+ c0"),
    CallSpec("w2", "acme", "west", "sam", _at(DAY, 23, 59, 59), "c- c+"),
    CallSpec("w3", "acme", "west", "kim", _at(DAY, 0), "c0 c+ c- a-"),
    CallSpec("w4", "acme", "west", "", _at(DAY, 12), "m- m0"),  # no agent: in the team's row only
    CallSpec("w5", "acme", "west", "kim", _at(DAY, 13), "a0"),  # agent only: adds nothing to the rate
    # acme / east: 1 of 5 negative (20 %): below the threshold, no alert.
    CallSpec("e1", "acme", "east", "lee", _at(DAY, 10), "c+ c0 c- c+ c+"),
    # globex: all negative, but globex has no Slack webhook.
    CallSpec("g1", "globex", "west", "ann", _at(DAY, 11), "c- c-"),
    # initech: all negative, but fewer customer utterances than its alert_min_utterances (3).
    CallSpec("i1", "initech", "north", "bo", _at(DAY, 11), "c- c-"),
    # Other days: not part of DAY's roll-up.
    CallSpec("x1", "acme", "west", "sam", _at(NEXT, 0), "c-"),
    CallSpec("x2", "acme", "west", "sam", _at(PREVIOUS, 23, 59, 59), "c-"),
    # pacific keeps Los Angeles days (UTC-7 on DAY): 23:30 there is the next day in UTC, and 02:00 UTC on
    # DAY is still the day before there.
    CallSpec("p1", "pacific", "west", "ray", _at(NEXT, 6, 30), "c- c-"),
    CallSpec("p2", "pacific", "west", "ray", _at(DAY, 2), "c+"),
    CallSpec("p3", "pacific", "west", "ray", _at(DAY, 7), "c0"),  # 00:00 in Los Angeles: DAY
    CallSpec("p4", "pacific", "west", "ray", _at(NEXT, 7), "c+"),  # 00:00 the next day there
]
PACIFIC = ZoneInfo("America/Los_Angeles")


def _tenants(slack_url: str) -> TenantsConfig:
    return TenantsConfig(
        default=TenantSettings(alert_min_utterances=1),
        tenants={
            "acme": TenantSettings(slack_webhook_url=slack_url, alert_min_utterances=1),
            "initech": TenantSettings(slack_webhook_url=slack_url, alert_min_utterances=3),
            "pacific": TenantSettings(alert_min_utterances=1, timezone="America/Los_Angeles"),
        },
    )


async def _store_calls(store: Store, calls: list[CallSpec], prefix: str) -> dict[str, list[UtteranceScore]]:
    stored = {}
    for c in calls:
        stored[c.call_id] = await add_call(
            store,
            f"{prefix}-{c.call_id}",
            c.utterances,
            started_at=c.started_at,
            tenant=c.tenant,
            team=c.team,
            agent=c.agent,
        )
    return stored


def _expected_rows(
    calls: list[CallSpec], events: dict[str, list[UtteranceScore]], day: date
) -> list[RollupRow]:
    groups: dict[tuple[str, str, str], list[CallSpec]] = defaultdict(list)
    for c in calls:
        if c.started_at.astimezone(PACIFIC if c.tenant == "pacific" else UTC).date() != day:
            continue
        groups[(c.tenant, c.team, "")].append(c)
        if c.agent:
            groups[(c.tenant, c.team, c.agent)].append(c)
    rows = []
    for (tenant, team, agent), members in sorted(groups.items()):
        scored = [e for c in members for e in events[c.call_id]]
        customer = [e for e in scored if e.channel in ("customer", "mixed")]
        negative = [e for e in customer if e.label == "negative"]
        rows.append(
            RollupRow(
                day=day,
                tenant=tenant,
                team=team,
                agent=agent,
                calls=len(members),
                utterances=len(scored),
                customer_utterances=len(customer),
                avg_sentiment=sum(e.score for e in scored) / len(scored) if scored else None,
                negative_rate=len(negative) / len(customer) if customer else None,
            )
        )
    return rows


def _assert_rows(actual: list[RollupRow] | tuple[RollupRow, ...], expected: list[RollupRow]) -> None:
    assert [(r.tenant, r.team, r.agent) for r in actual] == [(r.tenant, r.team, r.agent) for r in expected]
    for got, want in zip(actual, expected, strict=True):
        assert (got.day, got.calls, got.utterances, got.customer_utterances) == (
            want.day,
            want.calls,
            want.utterances,
            want.customer_utterances,
        ), want
        assert got.avg_sentiment == pytest.approx(want.avg_sentiment), want
        assert got.negative_rate == pytest.approx(want.negative_rate), want


async def test_rollup_figures_and_exactly_one_slack_post(
    store: Store, outbox: OutboxStore, receiver: WebhookReceiver
) -> None:
    events = await _store_calls(store, CALLS, "t1")
    tenants = _tenants(receiver.url("/slack/acme"))
    expected = _expected_rows(CALLS, events, DAY)
    # The data set means what the test says: west above 30 %, east below, initech above on 2 utterances.
    west = next(r for r in expected if (r.tenant, r.team, r.agent) == ("acme", "west", ""))
    assert west.negative_rate == 0.5 and west.customer_utterances == 10 and west.calls == 5
    assert next(r for r in expected if r.team == "east" and not r.agent).negative_rate == 0.2
    pacific = next(r for r in expected if r.tenant == "pacific" and not r.agent)
    assert (pacific.calls, pacific.customer_utterances, pacific.negative_rate) == (2, 3, 2 / 3)  # p1, p3

    first = await run_rollup(store, DAY, tenants)
    _assert_rows(first.rows, expected)
    _assert_rows(await store.daily_rollups(DAY), expected)
    assert [a.dedupe_key for a in first.alerts] == [slack_dedupe_key(DAY, "acme", "west")]
    assert first.alerts_enqueued == 1

    again = await run_rollup(store, DAY, tenants)  # a re-run: same rows, the alert is not enqueued again
    _assert_rows(again.rows, expected)
    assert len(again.alerts) == 1 and again.alerts_enqueued == 0

    dispatcher = OutboxDispatcher([outbox], tenants, FAST, kinds=["slack"])
    try:
        await _deliver_all(dispatcher, outbox)
        third = await run_rollup(store, DAY, tenants)  # after delivery, a third run posts nothing either
        assert third.alerts_enqueued == 0
        assert (await dispatcher.deliver_due()).attempted == 0
    finally:
        await dispatcher.stop()

    [post] = receiver.received()
    assert post.path == "/slack/acme" and post.answered == 200
    text = post.json()["text"]
    assert set(post.json()) == {"text"}
    assert "*west* (acme)" in text and DAY.isoformat() in text and "50.0%" in text and "5 calls" in text
    # The agents with the most negative customers, worst first: sam 3 of 5, kim 1 of 3.
    assert "Most negative: sam 60% (2 calls), kim 33% (2 calls)." in text
    assert "east" not in text
    row = await outbox.outbox_message(slack_dedupe_key(DAY, "acme", "west"))
    assert row is not None and row.delivered_at is not None and row.attempts == 1


async def test_daily_report_over_http(store: Store) -> None:
    events = await _store_calls(store, CALLS, "report")
    tenants = _tenants("https://hooks.slack.example/T/B/x")
    # Channels to the stages are lazy: nothing answers at these addresses, and the report needs none.
    config = Config(chopper_addr="127.0.0.1:9", scorer_addr="127.0.0.1:9")
    gateway = await Gateway.open(config, stores=StoreRouter(store))
    app = create_app(config, gateway=gateway)
    try:
        async with (
            app.router.lifespan_context(app),
            httpx.AsyncClient(
                transport=httpx.ASGITransport(app=app),
                base_url="http://gateway",
                headers=bearer(await make_key(gateway.authenticator.keys, "acme")),
            ) as http,
        ):
            before = await http.get("/v1/reports/daily", params={"date": DAY.isoformat()})
            assert before.status_code == 404, before.text
            assert f"callsense rollup --date {DAY.isoformat()}" in before.json()["error"]["message"]

            await run_rollup(store, DAY, tenants)
            acme = await http.get("/v1/reports/daily", params={"date": DAY.isoformat(), "tenant": "acme"})
            assert acme.status_code == 200, acme.text
            body = acme.json()
            assert body["date"] == DAY.isoformat() and body["rolled_up_at"]
            want = [r for r in _expected_rows(CALLS, events, DAY) if r.tenant == "acme"]
            assert [(r["tenant"], r["team"], r["agent"], r["region"]) for r in body["rows"]] == [
                (r.tenant, r.team, r.agent, "") for r in want
            ]
            for got, row in zip(body["rows"], want, strict=True):
                assert (got["calls"], got["customer_utterances"]) == (row.calls, row.customer_utterances)
                assert got["negative_rate"] == pytest.approx(row.negative_rate)
                assert got["avg_sentiment"] == pytest.approx(row.avg_sentiment)

            sam = await http.get(
                "/v1/reports/daily", params={"date": DAY.isoformat(), "team": "west", "agent": "sam"}
            )
            assert [(r["tenant"], r["agent"]) for r in sam.json()["rows"]] == [("acme", "sam")]

            quiet = DAY + timedelta(days=30)  # rolled up, but no call started that day
            await run_rollup(store, quiet, tenants)
            empty = await http.get("/v1/reports/daily", params={"date": quiet.isoformat()})
            assert empty.status_code == 200 and empty.json()["rows"] == []

            for bad in ({"date": "2024-13-01"}, {}):
                refused = await http.get("/v1/reports/daily", params=bad)
                assert refused.status_code == 422, refused.text
                assert "date" in refused.text

            # A trend line: acme/west over three days, of which DAY and NEXT are rolled up.
            await run_rollup(store, NEXT, tenants)
            span = {"from": PREVIOUS.isoformat(), "to": NEXT.isoformat(), "tenant": "acme", "team": "west"}
            trend = (await http.get("/v1/reports/trend", params=span)).json()
            next_rows = _expected_rows(CALLS, events, NEXT)
            want = [
                r
                for r in (*_expected_rows(CALLS, events, DAY), *next_rows)
                if r.team == "west" and not r.agent
            ]
            want = [r for r in want if r.tenant == "acme"]
            assert [(d["day"], d["calls"], d["negative_rate"]) for d in trend["days"]] == [
                (r.day.isoformat(), r.calls, pytest.approx(r.negative_rate)) for r in want
            ]
            assert trend["days_with_rows"] == [DAY.isoformat(), NEXT.isoformat()]
            assert trend["missing_days"] == [PREVIOUS.isoformat()]
            sam = (await http.get("/v1/reports/trend", params={**span, "agent": "sam"})).json()
            assert [(d["day"], d["agent"], d["calls"]) for d in sam["days"]] == [
                (DAY.isoformat(), "sam", 2),
                (NEXT.isoformat(), "sam", 1),
            ]
            for bad_span in ({**span, "to": "2024-03-01"}, {**span, "to": "2025-06-01"}):
                refused = await http.get("/v1/reports/trend", params=bad_span)
                assert refused.status_code == 422, refused.text
                assert "from 2024-03-13" in refused.json()["error"]["message"]
    finally:
        await gateway.close()


async def test_callsense_rollup_command_prints_rows_and_posts_once(
    store: Store, receiver: WebhookReceiver, delivery_db_url: str, tmp_path: Path
) -> None:
    calls = [c for c in CALLS if c.tenant == "acme"]
    events = await _store_calls(store, calls, "cli")
    tenants_file = tmp_path / "tenants.toml"
    tenants_file.write_text(
        f'[tenants.acme]\nslack_webhook_url = "{receiver.url("/slack/cli")}"\nalert_min_utterances = 5\n'
    )
    env = {**os.environ, "CALLSENSE_TENANTS_FILE": str(tenants_file)}

    async def rollup_command() -> dict[str, Any]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tools.cli",
            "rollup",
            "--date",
            DAY.isoformat(),
            "--database-url",
            delivery_db_url,
            "--deliver-timeout",
            "5",
            cwd=ROOT,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await process.communicate()
        assert process.returncode == 0, err.decode()
        report: dict[str, Any] = json.loads(out)
        return report

    first = await rollup_command()
    expected = _expected_rows(calls, events, DAY)
    rows = [RollupRow(**{**row, "day": date.fromisoformat(row["day"])}) for row in first["rows"]]
    _assert_rows(rows, expected)
    assert first["alerts"] == [
        {"dedupe_key": slack_dedupe_key(DAY, "acme", "west"), "tenant": "acme", "delivered": True}
    ]
    assert first["alerts_enqueued"] == 1
    assert len(receiver.received()) == 1  # posted by the command itself, before it exited

    second = await rollup_command()
    assert second["alerts_enqueued"] == 0 and second["rows"] == first["rows"]
    assert len(receiver.received()) == 1
    assert "*west* (acme)" in receiver.received()[0].json()["text"]


async def test_callsense_rollup_refuses_a_bad_date_and_a_bad_tenants_file(tmp_path: Path) -> None:
    bad_file = tmp_path / "tenants.toml"
    bad_file.write_text("[default]\nnegative_rate_alrt = 0.2\n")
    for args, env, message in [
        (["--date", "14/03/2024"], {}, "is not a day as YYYY-MM-DD"),
        (
            ["--date", "2024-03-14"],
            {"CALLSENSE_TENANTS_FILE": str(bad_file)},
            "negative_rate_alrt: unknown key",
        ),
    ]:
        process = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "tools.cli",
            "rollup",
            *args,
            cwd=ROOT,
            env={**os.environ, **env},
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        _, err = await process.communicate()
        assert process.returncode == 2 and message in err.decode()


async def test_scheduler_catches_up_the_due_day_once(store: Store, outbox: OutboxStore) -> None:
    calls = [c for c in CALLS if c.tenant == "acme" and c.team == "west"]
    await _store_calls(store, calls, "sched")
    now = _at(NEXT, 12)  # the worker starts at noon the next day: DAY's 00:15 run was missed
    alerts: list[str] = []
    tenants = _tenants("http://slack.invalid/hook")

    scheduler = RollupScheduler(
        [store], tenants, clock=lambda: now, on_alerts=lambda: alerts.append("notified")
    )
    await scheduler.start()
    try:
        await wait_until(lambda: scheduler.runs == 1, "the catch-up roll-up")
    finally:
        await scheduler.stop()
    assert {(r.team, r.agent) for r in await store.daily_rollups(DAY)} == {
        ("west", ""),
        ("west", "sam"),
        ("west", "kim"),
    }
    assert alerts == ["notified"]  # the dispatcher is woken for the new Slack alert
    assert await outbox.outbox_message(slack_dedupe_key(DAY, "acme", "west")) is not None

    restarted = RollupScheduler([store], tenants, clock=lambda: now)  # a restart the same day
    assert await restarted.run_due() is True
    assert restarted.runs == 0


def test_due_day_and_next_run() -> None:
    scheduler = RollupScheduler([], TenantsConfig(), at=time(0, 15))
    assert scheduler.due_day(_at(NEXT, 0, 10)) == PREVIOUS  # before 00:15 the day before is still due
    assert scheduler.due_day(_at(NEXT, 0, 15)) == DAY
    assert scheduler.due_day(_at(NEXT, 23, 59)) == DAY
    assert scheduler.due_at(DAY) == _at(NEXT, 0, 15)
    # A tenant in Los Angeles (UTC-7 in March) and one in Tokyo: the day ends last in Los Angeles.
    zones = TenantsConfig(
        tenants={
            "la": TenantSettings(timezone="America/Los_Angeles"),
            "tokyo": TenantSettings(timezone="Asia/Tokyo"),
        }
    )
    western = RollupScheduler([], zones, at=time(0, 15))
    assert western.due_at(DAY) == _at(NEXT, 7, 15)
    assert western.due_day(_at(NEXT, 7, 14)) == PREVIOUS and western.due_day(_at(NEXT, 7, 15)) == DAY
    assert rollup_time_from_env({}) == time(0, 15)
    assert rollup_time_from_env({"CALLSENSE_ROLLUP_AT": "02:30"}) == time(2, 30)
    for bad in ("25:00", "00:15+02:00", "midnight"):
        with pytest.raises(ConfigError, match="CALLSENSE_ROLLUP_AT"):
            rollup_time_from_env({"CALLSENSE_ROLLUP_AT": bad})


def test_a_day_runs_from_midnight_to_midnight_in_its_zone() -> None:
    assert day_window(DAY, UTC) == DayWindow(_at(DAY, 0), _at(NEXT, 0))
    assert day_window(DAY, PACIFIC) == DayWindow(_at(DAY, 7), _at(NEXT, 7))
    # Clocks went forward in Los Angeles on 2024-03-10 and back on 2024-11-03: days of 23 and 25 hours.
    spring, autumn = day_window(date(2024, 3, 10), PACIFIC), day_window(date(2024, 11, 3), PACIFIC)
    assert spring.end - spring.start == timedelta(hours=23)
    assert autumn.end - autumn.start == timedelta(hours=25)
    default, named = day_windows(DAY, _tenants("https://hooks.slack.example/T/B/x"))
    assert default == day_window(DAY, UTC) and named == {"pacific": day_window(DAY, PACIFIC)}


def test_alert_rules_on_rows() -> None:
    def team(tenant: str, rate: float | None, customer: int, name: str = "west") -> RollupRow:
        return RollupRow(DAY, tenant, name, "", 4, 20, customer, 0.4, rate)

    tenants = TenantsConfig(
        default=TenantSettings(
            slack_webhook_url="https://hooks.slack.example/T/B/x", alert_min_utterances=10
        ),
        tenants={
            "strict": TenantSettings(
                slack_webhook_url="https://hooks.slack.example/T/B/y",
                negative_rate_alert=0.1,
                alert_min_utterances=10,
            )
        },
    )
    rows = [
        team("a", 0.30, 50),  # at the threshold: not above it
        team("b", 0.31, 50),
        team("c", 0.90, 9),  # too few customer utterances
        team("d", None, 0),
        team("strict", 0.15, 10),  # this tenant alerts above 10 %
        team("e", 0.5, 40, name="<here> & co"),
        RollupRow(DAY, "f", "west", "sam", 2, 10, 10, 0.2, 0.9),  # an agent's row never alerts by itself
    ]
    alerts = slack_alerts(DAY, rows, tenants)
    assert [(a.tenant, a.url) for a in alerts] == [
        ("b", "https://hooks.slack.example/T/B/x"),
        ("strict", "https://hooks.slack.example/T/B/y"),
        ("e", "https://hooks.slack.example/T/B/x"),
    ]
    assert "&lt;here&gt; &amp; co" in alerts[2].payload["text"]  # no @here ping from a team's name
    assert slack_dedupe_key(DAY, "a:b", "c") != slack_dedupe_key(DAY, "a", "b:c")


async def _deliver_all(dispatcher: OutboxDispatcher, outbox: OutboxStore) -> None:
    async def done() -> bool:
        await dispatcher.deliver_due()
        return await outbox.seconds_until_next_attempt() is None  # nothing pending any more

    await wait_until(done, "the Slack alert delivered")
