"""Keys, the authenticator's cache and the bootstrap key, on a real PostgreSQL database of their own
(each test makes one, so "no key yet" and "the database is gone" can be tried for real); time is a fake
clock, never a sleep."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import psycopg
import pytest
import pytest_asyncio
from psycopg import sql

from callsense.database import EmbeddedPostgres
from gateway.auth.access import may_see, owned_call
from gateway.auth.authenticator import Authenticator
from gateway.auth.bootstrap import register_bootstrap_key
from gateway.auth.credentials import Principal, Role, mint_key, parse_key
from gateway.auth.key_store import KeyStore
from gateway.calls.errors import ErrorCode, InputError
from gateway.calls.inputs import CallInfo


@dataclass
class FakeClock:
    now: float = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class KeyDatabase:
    keys: KeyStore
    drop: Callable[[], None]


@pytest_asyncio.fixture
async def key_db(gateway_pg: EmbeddedPostgres) -> AsyncIterator[KeyDatabase]:
    name = f"keys_test_{uuid.uuid4().hex[:12]}"
    url = gateway_pg.create_database(name)

    def drop() -> None:
        with psycopg.connect(gateway_pg.database_uri("postgres"), autocommit=True) as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)))

    keys = await KeyStore.open(url, max_size=2, checkout_timeout_s=1.0)
    try:
        yield KeyDatabase(keys, drop)
    finally:
        await keys.close()
        drop()


def test_keys_are_long_random_and_parse_back() -> None:
    minted = mint_key()
    assert parse_key(minted.token) is not None and parse_key(minted.token)[0] == minted.key_id  # type: ignore[index]
    assert minted.token != mint_key().token
    for bad in ("", "csk_", minted.token + "x", minted.token.replace("csk_", "sk_"), minted.token[:-1]):
        assert parse_key(bad) is None


async def test_only_the_hash_is_stored_and_the_key_authenticates(key_db: KeyDatabase) -> None:
    minted = await key_db.keys.create_key("acme", Role.MANAGER, team="east", name="east lead")
    async with key_db.keys.pool.connection() as conn:
        cur = await conn.execute("SELECT secret_sha256::text || tenant || role || team FROM api_keys")
        stored = " ".join(str(row[0]) for row in await cur.fetchall())
    assert minted.token.split("_")[-1] not in stored
    principal = await Authenticator(key_db.keys).key(minted.token)
    assert principal == Principal(minted.key_id, "acme", Role.MANAGER, "", "east")


async def test_a_revocation_takes_effect_when_the_cache_entry_is_no_longer_fresh(key_db: KeyDatabase) -> None:
    clock = FakeClock()
    authenticator = Authenticator(key_db.keys, fresh_s=30.0, clock=clock)
    minted = await key_db.keys.create_key("acme", Role.SERVICE)
    assert (await authenticator.key(minted.token)).tenant == "acme"
    assert await key_db.keys.revoke_key(minted.key_id)
    clock.now += 29.0
    assert (await authenticator.key(minted.token)).tenant == "acme"  # still cached
    clock.now += 2.0
    with pytest.raises(InputError) as refused:
        await authenticator.key(minted.token)
    assert refused.value.code == ErrorCode.UNAUTHENTICATED
    assert not await key_db.keys.revoke_key(minted.key_id)  # nothing left to revoke


async def test_a_database_outage_keeps_known_keys_working_for_a_while(key_db: KeyDatabase) -> None:
    clock = FakeClock()
    authenticator = Authenticator(key_db.keys, fresh_s=30.0, stale_s=3600.0, clock=clock)
    known = await key_db.keys.create_key("acme", Role.SERVICE)
    unknown_yet = await key_db.keys.create_key("acme", Role.SERVICE)
    await authenticator.key(known.token)
    key_db.drop()  # the database is gone: every lookup now fails
    clock.now += 120.0  # past fresh: a lookup is tried, fails, and the cached answer stands
    assert (await authenticator.key(known.token)).key_id == known.key_id
    with pytest.raises(InputError) as unavailable:
        await authenticator.key(unknown_yet.token)
    assert unavailable.value.code == ErrorCode.DATABASE_UNAVAILABLE
    clock.now += 3600.0  # past stale: not even a known key is taken on trust any more
    with pytest.raises(InputError) as expired:
        await authenticator.key(known.token)
    assert expired.value.code == ErrorCode.DATABASE_UNAVAILABLE


async def test_sessions_end_with_their_key(key_db: KeyDatabase) -> None:
    from datetime import timedelta

    authenticator = Authenticator(key_db.keys, fresh_s=0.0)
    minted = await key_db.keys.create_key("acme", Role.ADMIN)
    token, _ = await key_db.keys.create_session(minted.key_id, timedelta(hours=1))
    assert (await authenticator.authenticate(None, token)).role is Role.ADMIN
    await key_db.keys.revoke_key(minted.key_id)
    with pytest.raises(InputError):
        await authenticator.authenticate(None, token)
    expired, _ = await key_db.keys.create_session(
        (await key_db.keys.create_key("acme", Role.ADMIN)).key_id, timedelta(seconds=-1)
    )
    with pytest.raises(InputError):
        await authenticator.authenticate(None, expired)


async def test_bootstrap_key_is_registered_once_and_only_into_an_empty_database(key_db: KeyDatabase) -> None:
    token = mint_key().token
    env = {"CALLSENSE_BOOTSTRAP_KEY": token, "CALLSENSE_BOOTSTRAP_TENANT": "acme"}
    assert await register_bootstrap_key(key_db.keys, env)
    assert not await register_bootstrap_key(key_db.keys, env)  # a second replica, a restart
    assert not await register_bootstrap_key(key_db.keys, {"CALLSENSE_BOOTSTRAP_KEY": mint_key().token})
    principal = await Authenticator(key_db.keys).key(token)
    assert (principal.tenant, principal.role) == ("acme", Role.ADMIN)
    with pytest.raises(ValueError, match="not a callsense key"):
        await register_bootstrap_key(key_db.keys, {"CALLSENSE_BOOTSTRAP_KEY": "hunter2"})


@pytest.mark.parametrize(
    ("role", "agent", "team", "sees"),
    [
        (Role.ADMIN, "", "", {"a1-east", "a2-east", "a3-west"}),
        (Role.SERVICE, "", "", {"a1-east", "a2-east", "a3-west"}),
        (Role.MANAGER, "", "east", {"a1-east", "a2-east"}),
        (Role.AGENT, "a1", "east", {"a1-east"}),
    ],
)
def test_who_sees_which_call(role: Role, agent: str, team: str, sees: set[str]) -> None:
    principal = Principal("k", "acme", role, agent, team)
    calls = {"a1-east": ("a1", "east"), "a2-east": ("a2", "east"), "a3-west": ("a3", "west")}
    assert {name for name, (a, t) in calls.items() if may_see(principal, "acme", t, a)} == sees
    assert not any(may_see(principal, "globex", t, a) for a, t in calls.values())


def test_a_started_call_belongs_to_the_key() -> None:
    agent = Principal("k", "acme", Role.AGENT, "a1", "east")
    assert owned_call(agent, CallInfo()) == CallInfo(tenant="acme", agent="a1", team="east")
    for claim in (CallInfo(tenant="globex"), CallInfo(agent="a2")):
        with pytest.raises(InputError) as refused:
            owned_call(agent, claim)
        assert refused.value.code == ErrorCode.FORBIDDEN
    manager = Principal("k", "acme", Role.MANAGER, "", "east")
    assert owned_call(manager, CallInfo(agent="a7")) == CallInfo(tenant="acme", agent="a7", team="east")
    with pytest.raises(InputError):
        owned_call(manager, CallInfo(team="west"))
