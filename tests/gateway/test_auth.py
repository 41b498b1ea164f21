"""Identity and tenancy, tried as a hostile client would, against the real gateway (chopper and scorer
subprocesses, PostgreSQL with real keys): one test per access finding of the security review, each
checking the refusal (401 / 403 / UNAUTHENTICATED / PERMISSION_DENIED) and that the right key gets the
right data.

Two tenants: "acme" (the fixture's service key, and agent / manager keys made here) and "globex".
"""

from __future__ import annotations

import base64
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
import httpx
import pytest
import pytest_asyncio
from websockets.asyncio.client import ClientConnection, connect
from websockets.exceptions import InvalidStatus
from websockets.typing import Origin

from callsense.config import EDGE_HEADER, JWT_PAYLOAD_HEADER
from callsense.v1 import audio_pb2, sentiment_pb2, sentiment_pb2_grpc
from gateway.auth.authenticator import SESSION_COOKIE
from gateway.auth.credentials import Role
from gateway.auth.edge import EdgeTrust
from tests.support.auth import bearer, keyed_channel
from tests.support.mesh import RunningGateway
from tests.support.ws_client import receive, receive_until_summary, send

pytestmark = pytest.mark.slow

LINE = "That is well over what we budgeted for this quarter, to be honest."


@dataclass(frozen=True)
class Tenants:
    gw: RunningGateway
    acme: str  # service key of acme
    globex: str  # service key of globex
    acme_agent_a1: str  # agent key: agent a1 of team east
    acme_agent_a2: str
    acme_manager_east: str
    acme_manager_west: str


@pytest_asyncio.fixture
async def tenants(running_gateway: RunningGateway) -> Tenants:
    gw = running_gateway
    return Tenants(
        gw,
        acme=gw.key,
        globex=await gw.make_key("globex"),
        acme_agent_a1=await gw.make_key("acme", Role.AGENT, agent="a1", team="east"),
        acme_agent_a2=await gw.make_key("acme", Role.AGENT, agent="a2", team="east"),
        acme_manager_east=await gw.make_key("acme", Role.MANAGER, team="east"),
        acme_manager_west=await gw.make_key("acme", Role.MANAGER, team="west"),
    )


def new_call_id() -> str:
    return f"auth-{uuid.uuid4().hex[:12]}"


def start(call_id: str, **metadata: str) -> dict[str, Any]:
    return {"type": "start", "call_id": call_id, "metadata": metadata}


def utterance(text: str = LINE) -> dict[str, Any]:
    return {"type": "utterance", "text": text, "channel": "customer", "start_ms": 0, "end_ms": 2500}


async def started_with_a_score(ws: ClientConnection, call_id: str) -> None:
    """Start ``call_id`` as acme's agent a1 of team east, and have one utterance scored."""
    await send(ws, start(call_id, team="east"))
    assert (await receive(ws))["type"] == "started"
    await send(ws, utterance())
    assert (await receive(ws))["type"] == "score"


@pytest_asyncio.fixture
async def live_acme_call(tenants: Tenants) -> AsyncIterator[tuple[str, ClientConnection]]:
    """A live call of acme's agent a1 (team east), driven over the WebSocket with a1's key."""
    call_id = new_call_id()
    async with connect(tenants.gw.ws_url, additional_headers=bearer(tenants.acme_agent_a1)) as ws:
        await started_with_a_score(ws, call_id)
        yield call_id, ws
        await send(ws, {"type": "stop"})
        await receive_until_summary(ws)


async def ended_acme_call(tenants: Tenants) -> str:
    """An ended (batch) call of acme, agent a1, team east."""
    call_id = new_call_id()
    body = {
        "call_id": call_id,
        "metadata": {"agent": "a1", "team": "east"},
        "utterances": [{"text": LINE, "channel": "customer", "start_ms": 0, "end_ms": 2500}],
    }
    async with httpx.AsyncClient(base_url=tenants.gw.http_url, headers=bearer(tenants.acme)) as http:
        reply = await http.post("/v1/sentiment/batch", json=body)
    assert reply.status_code == 200, reply.text
    return call_id


def http(tenants: Tenants, key: str | None = None) -> httpx.AsyncClient:
    headers = bearer(key) if key else {}
    return httpx.AsyncClient(base_url=tenants.gw.http_url, headers=headers, timeout=30.0)


def assert_error(reply: httpx.Response, status: int, code: str) -> None:
    assert reply.status_code == status, reply.text
    assert reply.json()["error"]["code"] == code


# --------------------------------------------------------------------------------------------- REST


async def test_no_credential_reads_nothing_and_a_bad_one_neither(tenants: Tenants) -> None:
    call_id = await ended_acme_call(tenants)
    paths = [
        "/v1/calls",
        f"/v1/calls/{call_id}",
        f"/v1/calls/{call_id}/timeline.png",
        "/v1/reports/daily?date=2026-12-01",
        "/v1/reports/trend?from=2026-11-01&to=2026-11-30&team=east",
        "/v1/reports/drift?date=2026-12-01",
    ]
    async with http(tenants) as anonymous:
        for path in paths:
            reply = await anonymous.get(path)
            assert_error(reply, 401, "unauthenticated")
            assert reply.headers["www-authenticate"].startswith("Bearer")
        batch = {
            "call_id": new_call_id(),
            "utterances": [{"text": LINE, "channel": "customer", "start_ms": 0, "end_ms": 2500}],
        }
        assert_error(await anonymous.post("/v1/sentiment/batch", json=batch), 401, "unauthenticated")
        made_up = "csk_0123456789ab_" + "A" * 43
        for header in (
            f"Bearer {made_up}",
            "Bearer nonsense",
            "Basic dXNlcjpwdw==",
            f"Bearer {tenants.acme}x",
        ):
            reply = await anonymous.get(f"/v1/calls/{call_id}", headers={"authorization": header})
            assert_error(reply, 401, "unauthenticated")
    async with http(tenants, tenants.acme) as acme:
        assert (await acme.get(f"/v1/calls/{call_id}")).status_code == 200


async def test_another_tenants_call_its_transcript_and_timeline_are_refused(tenants: Tenants) -> None:
    call_id = await ended_acme_call(tenants)
    async with http(tenants, tenants.globex) as globex:
        assert_error(await globex.get(f"/v1/calls/{call_id}"), 403, "forbidden")
        assert_error(await globex.get(f"/v1/calls/{call_id}/timeline.png"), 403, "forbidden")
    async with http(tenants, tenants.acme) as acme:
        call = (await acme.get(f"/v1/calls/{call_id}")).json()
        timeline = await acme.get(f"/v1/calls/{call_id}/timeline.png")
    assert call["metadata"]["tenant"] == "acme" and call["events"][0]["text"] == LINE
    assert timeline.status_code == 200 and timeline.content.startswith(b"\x89PNG")


async def test_agents_reach_their_own_calls_and_managers_their_teams(tenants: Tenants) -> None:
    call_id = await ended_acme_call(tenants)  # agent a1, team east
    expected = {
        tenants.acme_agent_a1: 200,
        tenants.acme_agent_a2: 403,
        tenants.acme_manager_east: 200,
        tenants.acme_manager_west: 403,
        tenants.acme: 200,
    }
    for key, status in expected.items():
        async with http(tenants, key) as client:
            assert (await client.get(f"/v1/calls/{call_id}")).status_code == status


async def test_the_tenant_comes_from_the_key_never_from_the_body(tenants: Tenants) -> None:
    body = {
        "call_id": new_call_id(),
        "utterances": [{"text": LINE, "channel": "customer", "start_ms": 0, "end_ms": 2500}],
    }
    async with http(tenants, tenants.acme) as acme:
        claimed = await acme.post("/v1/sentiment/batch", json=body | {"metadata": {"tenant": "globex"}})
        assert_error(claimed, 403, "forbidden")
        assert (await acme.post("/v1/sentiment/batch", json=body)).status_code == 200
        stored = (await acme.get(f"/v1/calls/{body['call_id']}")).json()
    assert stored["metadata"]["tenant"] == "acme"
    async with http(tenants, tenants.acme_agent_a1) as agent:
        other = body | {"call_id": new_call_id(), "metadata": {"agent": "a2"}}
        assert_error(await agent.post("/v1/sentiment/batch", json=other), 403, "forbidden")
    # Another tenant replaying the same call id and utterances gets no result of acme's.
    async with http(tenants, tenants.globex) as globex:
        assert_error(await globex.post("/v1/sentiment/batch", json=body), 403, "forbidden")


async def test_live_call_list_shows_only_what_the_key_reaches(
    tenants: Tenants, live_acme_call: tuple[str, ClientConnection]
) -> None:
    call_id, _ = live_acme_call

    async def listed(key: str, query: str = "") -> httpx.Response:
        async with http(tenants, key) as client:
            return await client.get(f"/v1/calls{query}")

    for key, visible in [
        (tenants.acme, True),
        (tenants.acme_manager_east, True),
        (tenants.acme_agent_a1, True),
        (tenants.acme_agent_a2, False),
        (tenants.acme_manager_west, False),
        (tenants.globex, False),
    ]:
        reply = await listed(key)
        assert reply.status_code == 200
        assert (call_id in {c["call_id"] for c in reply.json()["calls"]}) is visible
    assert_error(await listed(tenants.globex, "?tenant=acme"), 403, "forbidden")


async def test_reports_are_the_keys_tenant_only(tenants: Tenants) -> None:
    async with http(tenants, tenants.globex) as globex:
        daily = await globex.get("/v1/reports/daily", params={"date": "2026-12-01", "tenant": "acme"})
        assert_error(daily, 403, "forbidden")
        trend = await globex.get(
            "/v1/reports/trend", params={"from": "2026-11-01", "to": "2026-11-30", "tenant": "acme"}
        )
        assert_error(trend, 403, "forbidden")
        drift = await globex.get("/v1/reports/drift", params={"date": "2026-12-01", "tenant": "acme"})
        assert_error(drift, 403, "forbidden")
    async with http(tenants, tenants.acme_manager_west) as west:
        trend = await west.get(
            "/v1/reports/trend", params={"from": "2026-11-01", "to": "2026-11-30", "team": "east"}
        )
        assert_error(trend, 403, "forbidden")
    async with http(tenants, tenants.acme_manager_east) as east:
        trend = await east.get(
            "/v1/reports/trend", params={"from": "2026-11-01", "to": "2026-11-30", "team": "east"}
        )
        assert trend.status_code == 200 and trend.json()["tenant"] == "acme"


async def test_a_revoked_key_is_refused(tenants: Tenants) -> None:
    key = await tenants.gw.make_key("acme")
    key_id = key.split("_")[1]
    assert await tenants.gw.gateway.authenticator.keys.revoke_key(key_id)
    async with http(tenants, key) as client:
        assert_error(await client.get("/v1/calls"), 401, "unauthenticated")


# --------------------------------------------------------------------------------------------- WebSocket


async def test_websocket_upgrade_without_a_credential_is_refused(tenants: Tenants) -> None:
    with pytest.raises(InvalidStatus) as refused:
        async with connect(tenants.gw.ws_url):
            pass
    assert refused.value.response.status_code == 401


async def test_watching_another_tenants_call_is_refused(
    tenants: Tenants, live_acme_call: tuple[str, ClientConnection]
) -> None:
    call_id, _ = live_acme_call
    for key in (tenants.globex, tenants.acme_agent_a2, tenants.acme_manager_west):
        async with connect(f"{tenants.gw.ws_url}?watch={call_id}", additional_headers=bearer(key)) as ws:
            event = await receive(ws)
            assert event["type"] == "error" and event["code"] == "forbidden"
    async with connect(
        f"{tenants.gw.ws_url}?watch={call_id}", additional_headers=bearer(tenants.acme_manager_east)
    ) as ws:
        assert await receive(ws) == {"type": "watching", "call_id": call_id}


async def test_a_dropped_call_cannot_be_taken_over_by_another_tenant_or_agent(tenants: Tenants) -> None:
    call_id = new_call_id()
    async with connect(tenants.gw.ws_url, additional_headers=bearer(tenants.acme_agent_a1)) as ws:
        await started_with_a_score(ws, call_id)
    # The driver is gone; within the grace period only someone who may see the call resumes it.
    for key in (tenants.globex, tenants.acme_agent_a2):
        async with connect(tenants.gw.ws_url, additional_headers=bearer(key)) as thief:
            await send(thief, start(call_id))
            event = await receive(thief)
            assert event["type"] == "error" and event["code"] == "forbidden", event
    async with connect(tenants.gw.ws_url, additional_headers=bearer(tenants.acme_agent_a1)) as again:
        await send(again, start(call_id))
        started = await receive(again)
        assert started["type"] == "started" and started["resumed"] is True
        await send(again, {"type": "stop"})
        await receive_until_summary(again)


async def test_browser_session_cookie_and_origin_check(tenants: Tenants) -> None:
    async with http(tenants) as browser:
        assert (await browser.get("/console")).status_code == 303
        signin = await browser.post("/v1/session", json={"key": tenants.acme})
        assert signin.status_code == 201 and signin.json()["tenant"] == "acme"
        cookie = signin.headers["set-cookie"]
        assert "HttpOnly" in cookie and "SameSite=strict" in cookie and tenants.acme not in cookie
        assert (await browser.get("/console")).status_code == 200
        assert (await browser.get("/v1/session")).json()["role"] == "service"
        token = browser.cookies[SESSION_COOKIE]
        host = tenants.gw.http_url.removeprefix("http://")
        with pytest.raises(InvalidStatus) as cross_site:
            async with connect(
                tenants.gw.ws_url,
                additional_headers={"cookie": f"{SESSION_COOKIE}={token}"},
                origin=Origin("https://evil.example"),
            ):
                pass
        assert cross_site.value.response.status_code == 403
        async with connect(
            tenants.gw.ws_url,
            additional_headers={"cookie": f"{SESSION_COOKIE}={token}"},
            origin=Origin(f"http://{host}"),
        ) as same_site:
            await send(same_site, start(new_call_id()))
            assert (await receive(same_site))["type"] == "started"
            await send(same_site, {"type": "stop"})
            await receive_until_summary(same_site)
        assert (await browser.delete("/v1/session")).status_code == 204
        browser.cookies.set(SESSION_COOKIE, token)  # a copy kept from before signing out
        assert_error(await browser.get("/v1/session"), 401, "unauthenticated")


# --------------------------------------------------------------------------------------------- gRPC


async def test_grpc_needs_a_key_and_keeps_tenants_apart(
    tenants: Tenants, live_acme_call: tuple[str, ClientConnection]
) -> None:
    live_id, _ = live_acme_call
    ended_id = await ended_acme_call(tenants)
    async with grpc.aio.insecure_channel(tenants.gw.grpc_target) as anonymous:
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await sentiment_pb2_grpc.SentimentStub(anonymous).GetCall(
                sentiment_pb2.GetCallRequest(call_id=ended_id), timeout=30
            )
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED
    async with keyed_channel(tenants.gw.grpc_target, tenants.globex) as globex:
        stub = sentiment_pb2_grpc.SentimentStub(globex)
        with pytest.raises(grpc.aio.AioRpcError) as other_tenant:
            await stub.GetCall(sentiment_pb2.GetCallRequest(call_id=ended_id), timeout=30)
        assert other_tenant.value.code() == grpc.StatusCode.PERMISSION_DENIED
        watch = stub.WatchCall(sentiment_pb2.WatchCallRequest(call_id=live_id), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as watched:
            await watch.read()
        assert watched.value.code() == grpc.StatusCode.PERMISSION_DENIED
    async with keyed_channel(tenants.gw.grpc_target, tenants.acme) as acme:
        record = await sentiment_pb2_grpc.SentimentStub(acme).GetCall(
            sentiment_pb2.GetCallRequest(call_id=ended_id), timeout=30
        )
        assert record.metadata.tenant == "acme"


async def test_grpc_stream_call_takes_the_tenant_from_the_key(tenants: Tenants) -> None:
    call_id = new_call_id()

    async def requests(tenant: str) -> AsyncIterator[sentiment_pb2.StreamCallRequest]:
        metadata = audio_pb2.CallMetadata(tenant=tenant)
        yield sentiment_pb2.StreamCallRequest(
            call_id=call_id, start=audio_pb2.CallStart(call_id=call_id, metadata=metadata)
        )

    async with keyed_channel(tenants.gw.grpc_target, tenants.acme) as acme:
        stream = sentiment_pb2_grpc.SentimentStub(acme).StreamCall(requests("globex"), timeout=30)
        with pytest.raises(grpc.aio.AioRpcError) as claimed:
            await stream.read()
        assert claimed.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert await tenants.gw.gateway.get_call(call_id) is None


# ----------------------------------------------------------------------------------- identity provider

EDGE_SECRET = "edge-secret-for-this-test-" + "e" * 24


def through_envoy(tenant: str, role: Role = Role.SERVICE, **claims: str) -> dict[str, str]:
    """What Envoy sends the gateway for a valid JWT of the company's identity provider: its claims
    (base64url JSON, the token itself taken off) and the edge secret."""
    body = {"iss": "https://login.example.com/", "sub": "u-42", "aud": "callsense", "exp": 4102444800}
    body |= {"tenant": tenant, "role": role.value, **claims}
    encoded = base64.urlsafe_b64encode(json.dumps(body).encode()).rstrip(b"=").decode()
    return {EDGE_HEADER: EDGE_SECRET, JWT_PAYLOAD_HEADER: encoded}


async def test_identity_provider_claims_from_envoy_reach_their_tenant_only(
    tenants: Tenants, live_acme_call: tuple[str, ClientConnection]
) -> None:
    """A request with the claims Envoy forwards for a valid JWT (and the edge secret) is the claims' tenant
    and role, over REST, the WebSocket upgrade and gRPC metadata; without the secret it is nobody."""
    tenants.gw.gateway.authenticator.edge = EdgeTrust(EDGE_SECRET)
    live_id, _ = live_acme_call
    call_id = await ended_acme_call(tenants)  # agent a1, team east
    async with http(tenants) as client:
        for headers, status in [
            (through_envoy("acme"), 200),
            (through_envoy("acme", Role.AGENT, agent="a1"), 200),
            (through_envoy("acme", Role.AGENT, agent="a2"), 403),
            (through_envoy("acme", Role.MANAGER, team="west"), 403),
            (through_envoy("globex"), 403),
        ]:
            assert (await client.get(f"/v1/calls/{call_id}", headers=headers)).status_code == status, headers
        call = (await client.get(f"/v1/calls/{call_id}", headers=through_envoy("acme"))).json()
        assert call["metadata"]["tenant"] == "acme" and call["events"][0]["text"] == LINE
        me = await client.get("/v1/session", headers=through_envoy("acme", Role.MANAGER, team="east"))
        assert me.json() == {"tenant": "acme", "role": "manager", "agent": "", "team": "east"}
        # A call started with the claims is the claims' tenant's, never the body's.
        batch = {
            "call_id": new_call_id(),
            "utterances": [{"text": LINE, "channel": "customer", "start_ms": 0, "end_ms": 2500}],
        }
        globex = through_envoy("globex")
        claimed = batch | {"metadata": {"tenant": "acme"}}
        assert_error(await client.post("/v1/sentiment/batch", json=claimed, headers=globex), 403, "forbidden")
        assert (await client.post("/v1/sentiment/batch", json=batch, headers=globex)).status_code == 200
        stored = (await client.get(f"/v1/calls/{batch['call_id']}", headers=globex)).json()
        assert stored["metadata"]["tenant"] == "globex"
        # Claims without the edge secret, or with another, are no credential at all.
        forged = through_envoy("acme") | {EDGE_HEADER: "edge-secret-of-someone-else-000000"}
        unproven = {k: v for k, v in through_envoy("acme").items() if k != EDGE_HEADER}
        for headers in (forged, unproven):
            assert_error(await client.get(f"/v1/calls/{call_id}", headers=headers), 401, "unauthenticated")
        # No tenant: the provider vouched for the person, not for their access to callsense.
        no_tenant = through_envoy("")
        assert_error(await client.get(f"/v1/calls/{call_id}", headers=no_tenant), 403, "forbidden")

    # The WebSocket upgrade: another tenant's claims cannot watch acme's live call; acme's can.
    async with connect(
        f"{tenants.gw.ws_url}?watch={live_id}", additional_headers=through_envoy("globex")
    ) as ws:
        event = await receive(ws)
        assert event["type"] == "error" and event["code"] == "forbidden"
    async with connect(
        f"{tenants.gw.ws_url}?watch={live_id}", additional_headers=through_envoy("acme")
    ) as ws:
        assert await receive(ws) == {"type": "watching", "call_id": live_id}
    with pytest.raises(InvalidStatus) as refused:
        async with connect(tenants.gw.ws_url, additional_headers=unproven):
            pass
    assert refused.value.response.status_code == 401

    # gRPC: Envoy forwards the same headers as metadata.
    async with grpc.aio.insecure_channel(tenants.gw.grpc_target) as channel:
        stub = sentiment_pb2_grpc.SentimentStub(channel)
        request = sentiment_pb2.GetCallRequest(call_id=call_id)
        reply = await stub.GetCall(request, metadata=tuple(through_envoy("acme").items()), timeout=30)
        assert reply.metadata.tenant == "acme"
        with pytest.raises(grpc.aio.AioRpcError) as other_tenant:
            await stub.GetCall(request, metadata=tuple(through_envoy("globex").items()), timeout=30)
        assert other_tenant.value.code() == grpc.StatusCode.PERMISSION_DENIED
        with pytest.raises(grpc.aio.AioRpcError) as unproven_call:
            await stub.GetCall(request, metadata=tuple(unproven.items()), timeout=30)
        assert unproven_call.value.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_identity_provider_admin_is_named_in_the_audit(tenants: Tenants) -> None:
    """An erasure by an admin of the identity provider is audited as jwt:<iss>:<sub>."""
    tenants.gw.gateway.authenticator.edge = EdgeTrust(EDGE_SECRET)
    call_id = await ended_acme_call(tenants)
    async with http(tenants) as client:
        erased = await client.delete(f"/v1/calls/{call_id}", headers=through_envoy("acme", Role.ADMIN))
    assert erased.status_code == 204, erased.text
    async with tenants.gw.gateway.stores.default.pool.connection() as conn:
        cur = await conn.execute("SELECT tenant, actor FROM audit_log WHERE target = %s", (call_id,))
        assert await cur.fetchall() == [("acme", "jwt:https://login.example.com/:u-42")]
