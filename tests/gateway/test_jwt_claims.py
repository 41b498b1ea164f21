"""The claims of an identity provider's JWT, as Envoy forwards them, to a Principal; and the edge secret
without which the gateway believes none. No database: a JWT principal never touches the key store, and the
fallbacks here end before a key lookup would (the key store answers "no such key")."""

from __future__ import annotations

import base64
import json
import logging
from typing import Any, cast

import pytest

from callsense.config import ConfigError, load_config
from gateway.auth.authenticator import Authenticator
from gateway.auth.credentials import KeyRecord, Principal, Role
from gateway.auth.edge import EdgeTrust, claims_of
from gateway.auth.key_store import KeyStore
from gateway.calls.errors import ErrorCode, InputError

SECRET = "edge-secret-" + "s" * 32
ISSUER = "https://login.example.com/"


def payload(**claims: Any) -> str:
    """What Envoy forwards: base64url (unpadded) of the claims' JSON."""
    return base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()


def claims(**more: Any) -> dict[str, Any]:
    return {"iss": ISSUER, "sub": "00u1abc", "aud": "callsense", "exp": 4102444800, **more}


def refused(err: pytest.ExceptionInfo[InputError], code: str) -> str:
    assert err.value.code == code, err.value
    return err.value.message


# --------------------------------------------------------------------------------------------- claims


@pytest.mark.parametrize(
    ("given", "expected"),
    [
        (
            claims(tenant="acme", role="service"),
            Principal(f"jwt:{ISSUER}:00u1abc", "acme", Role.SERVICE),
        ),
        (  # an agent without an agent claim is the token's subject
            claims(tenant="acme", role="agent", team="east"),
            Principal(f"jwt:{ISSUER}:00u1abc", "acme", Role.AGENT, agent="00u1abc", team="east"),
        ),
        (
            claims(tenant="acme", role="agent", agent="a1"),
            Principal(f"jwt:{ISSUER}:00u1abc", "acme", Role.AGENT, agent="a1"),
        ),
        (
            claims(tenant="acme", role="manager", team="east"),
            Principal(f"jwt:{ISSUER}:00u1abc", "acme", Role.MANAGER, team="east"),
        ),
        (
            claims(tenant="globex", role="admin"),
            Principal(f"jwt:{ISSUER}:00u1abc", "globex", Role.ADMIN),
        ),
    ],
    ids=["service", "agent-by-sub", "agent", "manager", "admin"],
)
def test_claims_map_to_a_principal(given: dict[str, Any], expected: Principal) -> None:
    assert EdgeTrust(SECRET).principal(payload(**given)) == expected


def test_claim_names_are_configurable() -> None:
    trust = EdgeTrust.from_env(
        {
            "CALLSENSE_EDGE_SECRET": SECRET,
            "CALLSENSE_JWT_TENANT_CLAIM": "https://callsense.example/org",
            "CALLSENSE_JWT_ROLE_CLAIM": "cs_role",
            "CALLSENSE_JWT_AGENT_CLAIM": "employee_id",
            "CALLSENSE_JWT_TEAM_CLAIM": "department",
        }
    )
    token = claims(
        **{"https://callsense.example/org": "acme", "cs_role": "agent", "employee_id": "a7"},
        department="west",
        tenant="globex",  # the default names mean nothing now
        role="admin",
    )
    assert trust.principal(payload(**token)) == Principal(
        f"jwt:{ISSUER}:00u1abc", "acme", Role.AGENT, agent="a7", team="west"
    )
    assert EdgeTrust.from_env({}) == EdgeTrust()  # defaults: tenant, role, agent, team; no secret


@pytest.mark.parametrize(
    ("given", "names"),
    [
        (claims(role="service"), ["'tenant'", "CALLSENSE_JWT_TENANT_CLAIM"]),
        (claims(tenant="", role="service"), ["'tenant'"]),
        (claims(tenant="acme"), ["'role'", "missing", "agent, manager, admin, service"]),
        (claims(tenant="acme", role="owner"), ["'role'", "'owner'", "CALLSENSE_JWT_ROLE_CLAIM"]),
        (claims(tenant="acme", role="Admin"), ["'Admin'"]),  # role names are exact
        (claims(tenant="acme", role=["admin"]), ["'role'", "string"]),
        (claims(tenant=["acme", "globex"], role="admin"), ["'tenant'", "string"]),
        (claims(tenant="acme", role="manager"), ["manager", "'team'"]),
        ({"iss": ISSUER, "tenant": "acme", "role": "agent"}, ["agent", "'sub'"]),
    ],
    ids=[
        "no-tenant",
        "empty-tenant",
        "no-role",
        "unknown-role",
        "role-case",
        "role-list",
        "tenant-list",
        "manager-without-team",
        "agent-without-sub",
    ],
)
def test_a_token_without_a_tenant_or_a_valid_role_is_forbidden(
    given: dict[str, Any], names: list[str]
) -> None:
    with pytest.raises(InputError) as err:
        EdgeTrust(SECRET).principal(payload(**given))
    message = refused(err, ErrorCode.FORBIDDEN)
    for name in names:
        assert name in message, message


def test_payload_encodings() -> None:
    body = claims(tenant="acme", role="service", name="Zoë")
    raw = json.dumps(body).encode()
    padded = base64.urlsafe_b64encode(raw).decode()
    assert claims_of(padded) == claims_of(padded.rstrip("=")) == body  # Envoy pads on request only
    for garbage in ("", "!!!", base64.urlsafe_b64encode(b"[1, 2]").decode(), "e30" * 10_000, "bm90IGpzb24"):
        with pytest.raises(InputError) as err:
            claims_of(garbage)
        refused(err, ErrorCode.UNAUTHENTICATED)


# --------------------------------------------------------------------------------------------- the edge


def test_the_edge_secret_is_believed_only_when_it_matches() -> None:
    trust = EdgeTrust(SECRET)
    assert trust.trusts(SECRET)
    for other in (None, "", "-", SECRET[:-1], SECRET + "x", SECRET.upper(), f" {SECRET}"):
        assert not trust.trusts(other), other
    # Without a secret the gateway believes no payload header, whatever comes with it.
    for edge in (None, "", "-", SECRET):
        assert not EdgeTrust().trusts(edge)
    assert "s" * 32 not in repr(trust)


def test_the_edge_secret_setting() -> None:
    assert EdgeTrust.from_env({"CALLSENSE_EDGE_SECRET": f"  {SECRET} "}).secret == SECRET
    assert EdgeTrust.from_env({"CALLSENSE_EDGE_SECRET": ""}).secret is None
    assert load_config({"CALLSENSE_EDGE_SECRET": SECRET}).edge_secret == SECRET
    assert SECRET not in repr(load_config({"CALLSENSE_EDGE_SECRET": SECRET}))
    # Envoy sends "-" where its own variable is unset: a secret that short is refused at start-up.
    for short in ("-", "too-short"):
        with pytest.raises(ConfigError, match="CALLSENSE_EDGE_SECRET"):
            EdgeTrust.from_env({"CALLSENSE_EDGE_SECRET": short})
        with pytest.raises(ConfigError, match="CALLSENSE_EDGE_SECRET"):
            load_config({"CALLSENSE_EDGE_SECRET": short})


class _NoKeys:
    """A key store that knows no key (what a made-up key finds) and counts the look-ups."""

    def __init__(self) -> None:
        self.lookups = 0

    async def find_key(self, key_id: str) -> KeyRecord | None:
        self.lookups += 1
        return None


def _authenticator(edge: EdgeTrust) -> tuple[Authenticator, _NoKeys]:
    keys = _NoKeys()
    return Authenticator(cast(KeyStore, keys), edge=edge), keys


async def test_a_trusted_payload_is_the_caller() -> None:
    authenticator, keys = _authenticator(EdgeTrust(SECRET))
    token = payload(**claims(tenant="acme", role="manager", team="east"))
    principal = await authenticator.authenticate(None, None, edge=SECRET, jwt_payload=token)
    assert (principal.tenant, principal.role, principal.team) == ("acme", Role.MANAGER, "east")
    # It wins over whatever else the request carries; the key store is never asked.
    again = await authenticator.authenticate("Bearer csk_x", "css_x", edge=SECRET, jwt_payload=token)
    assert again == principal and keys.lookups == 0


async def test_an_untrusted_payload_is_ignored(caplog: pytest.LogCaptureFixture) -> None:
    token = payload(**claims(tenant="acme", role="admin"))
    for edge, sent in [
        (EdgeTrust(), SECRET),  # no secret configured: never believed
        (EdgeTrust(SECRET), None),  # not through Envoy
        (EdgeTrust(SECRET), "-"),  # Envoy without the variable
        (EdgeTrust(SECRET), "edge-secret-" + "t" * 32),  # another deployment's Envoy
    ]:
        authenticator, keys = _authenticator(edge)
        with caplog.at_level(logging.WARNING, logger="gateway.auth.authenticator"):
            with pytest.raises(InputError) as err:  # no other credential: as if the header were not there
                await authenticator.authenticate(None, None, edge=sent, jwt_payload=token)
            refused(err, ErrorCode.UNAUTHENTICATED)
            # With a key beside it, the key decides (this one is unknown).
            made_up = "csk_0123456789ab_" + "A" * 43
            with pytest.raises(InputError) as err:
                await authenticator.authenticate(f"Bearer {made_up}", None, edge=sent, jwt_payload=token)
            assert refused(err, ErrorCode.UNAUTHENTICATED) == "unknown key" and keys.lookups == 1
    warnings = [r for r in caplog.records if "without the edge secret" in r.getMessage()]
    assert len(warnings) == 4  # once per authenticator, not once per request


async def test_a_jwt_that_envoy_did_not_accept_is_no_key() -> None:
    """A bad token passes Envoy untouched, still in the Authorization header: it is not a key (401)."""
    authenticator, keys = _authenticator(EdgeTrust(SECRET))
    with pytest.raises(InputError) as err:
        await authenticator.authenticate("Bearer eyJhbGciOiJSUzI1NiJ9.e30.c2ln", None, edge=SECRET)
    assert "not a callsense key" in refused(err, ErrorCode.UNAUTHENTICATED)
    assert keys.lookups == 0


def test_the_authenticator_reads_the_edge_settings_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("CALLSENSE_EDGE_SECRET", SECRET)
    monkeypatch.setenv("CALLSENSE_JWT_TENANT_CLAIM", "org")
    authenticator = Authenticator(cast(KeyStore, _NoKeys()))
    assert authenticator.edge == EdgeTrust(SECRET, tenant_claim="org")
    monkeypatch.delenv("CALLSENSE_EDGE_SECRET")
    assert Authenticator(cast(KeyStore, _NoKeys())).edge.secret is None
