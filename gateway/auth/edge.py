"""Identity from the company's identity provider, checked at the edge: a JWT that Envoy validated.

Envoy's public listener validates ``Authorization: Bearer <JWT>`` (``jwt_authn``: signature by the
provider's keys, issuer, audience, expiry; tools/envoy_config.py) and forwards its claims to the gateway as
``x-callsense-jwt-payload`` (base64url of their JSON) in place of the token, next to
``x-callsense-edge: <CALLSENSE_EDGE_SECRET>``. Envoy removes a client's own copies of both before it looks
at a request, and the gateway believes the claims only when the edge header holds the secret it shares with
Envoy (compared in constant time): a request that reached the gateway some other way (its own port, a
misrouted proxy) carries no identity that way. Without a secret configured the gateway never believes a
payload header.

The claims map to a Principal like a key's row: the tenant from ``CALLSENSE_JWT_TENANT_CLAIM`` ("tenant"),
the role from ``CALLSENSE_JWT_ROLE_CLAIM`` ("role": agent, manager, admin or service), the agent from
``CALLSENSE_JWT_AGENT_CLAIM`` ("agent"; an agent's ``sub`` when it has none) and the team from
``CALLSENSE_JWT_TEAM_CLAIM`` ("team"). Its key id, what audit rows name, is ``jwt:<iss>:<sub>``. A token
without a tenant or with no valid role is refused (403 ``forbidden``): the provider vouched for the person,
not for their access to callsense.
"""

from __future__ import annotations

import binascii
import hmac
import json
import os
from base64 import urlsafe_b64decode
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from callsense.config import edge_secret
from gateway.auth.access import forbidden, unauthenticated
from gateway.auth.credentials import Principal, Role
from gateway.calls.errors import InputError

TENANT_CLAIM_ENV = "CALLSENSE_JWT_TENANT_CLAIM"
ROLE_CLAIM_ENV = "CALLSENSE_JWT_ROLE_CLAIM"
AGENT_CLAIM_ENV = "CALLSENSE_JWT_AGENT_CLAIM"
TEAM_CLAIM_ENV = "CALLSENSE_JWT_TEAM_CLAIM"
JWT_KEY_PREFIX = "jwt:"
"""A Principal from a JWT has the key id ``jwt:<iss>:<sub>``; a key's is 12 hex digits."""
MAX_PAYLOAD_CHARS = 16_384
"""Envoy forwards what the provider signed; a payload past this is no identity token's."""

_ROLES = ", ".join(role.value for role in Role)


@dataclass(frozen=True, slots=True)
class EdgeTrust:
    """What the gateway believes of the edge: the secret Envoy proves itself with; which claims say what."""

    secret: str | None = field(default=None, repr=False)
    """``CALLSENSE_EDGE_SECRET``; None: no payload header is ever believed (API keys and sessions only)."""
    tenant_claim: str = "tenant"
    role_claim: str = "role"
    agent_claim: str = "agent"
    team_claim: str = "team"

    @classmethod
    def from_env(cls, env: Mapping[str, str] | None = None) -> EdgeTrust:
        """The gateway's settings (``CALLSENSE_EDGE_SECRET``, ``CALLSENSE_JWT_*_CLAIM``); ConfigError on a
        secret too short to be one."""
        env = os.environ if env is None else env
        d = cls()
        return cls(
            secret=edge_secret(env),
            tenant_claim=env.get(TENANT_CLAIM_ENV, "").strip() or d.tenant_claim,
            role_claim=env.get(ROLE_CLAIM_ENV, "").strip() or d.role_claim,
            agent_claim=env.get(AGENT_CLAIM_ENV, "").strip() or d.agent_claim,
            team_claim=env.get(TEAM_CLAIM_ENV, "").strip() or d.team_claim,
        )

    def trusts(self, edge: str | None) -> bool:
        """Whether a request's ``x-callsense-edge`` proves it came through Envoy's public listener."""
        if not self.secret or edge is None:
            return False
        return hmac.compare_digest(edge.encode(), self.secret.encode())

    def principal(self, payload: str) -> Principal:
        """The Principal of a JWT payload Envoy validated (``x-callsense-jwt-payload``)."""
        return self.principal_of_claims(claims_of(payload))

    def principal_of_claims(self, claims: Mapping[str, Any]) -> Principal:
        tenant = _text_claim(claims, self.tenant_claim, TENANT_CLAIM_ENV)
        if not tenant:
            raise forbidden(
                f"the identity token has no {self.tenant_claim!r} claim: the identity provider must say "
                f"which tenant the user belongs to (the claim's name: {TENANT_CLAIM_ENV})"
            )
        role_name = _text_claim(claims, self.role_claim, ROLE_CLAIM_ENV)
        try:
            role = Role(role_name)
        except ValueError:
            found = f"is {role_name!r}" if role_name else "is missing"
            raise forbidden(
                f"the identity token's {self.role_claim!r} claim {found}; it must be one of {_ROLES} "
                f"(the claim's name: {ROLE_CLAIM_ENV})"
            ) from None
        subject = _text_claim(claims, "sub")
        agent = _text_claim(claims, self.agent_claim, AGENT_CLAIM_ENV)
        if role is Role.AGENT:
            agent = agent or subject
            if not agent:
                raise forbidden(f"an agent's identity token needs a {self.agent_claim!r} or a 'sub' claim")
        team = _text_claim(claims, self.team_claim, TEAM_CLAIM_ENV)
        if role is Role.MANAGER and not team:
            raise forbidden(f"a manager's identity token needs a {self.team_claim!r} claim (whose calls)")
        issuer = _text_claim(claims, "iss")
        return Principal(f"{JWT_KEY_PREFIX}{issuer}:{subject}", tenant, role, agent=agent, team=team)


def claims_of(payload: str) -> dict[str, Any]:
    """The claims of a forwarded payload: base64url (padded or not) of a JSON object."""
    text = payload.strip()
    if not text or len(text) > MAX_PAYLOAD_CHARS:
        raise _unreadable()
    try:
        decoded = urlsafe_b64decode(text + "=" * (-len(text) % 4))
        claims = json.loads(decoded)
    except (binascii.Error, ValueError):  # UnicodeDecodeError and JSONDecodeError are ValueErrors
        raise _unreadable() from None
    if not isinstance(claims, dict):
        raise _unreadable()
    return claims


def _unreadable() -> InputError:
    return unauthenticated("the identity token's claims cannot be read; sign in again")


def _text_claim(claims: Mapping[str, Any], name: str, setting: str = "") -> str:
    value = claims.get(name, "")
    if not isinstance(value, str):
        named = f" (the claim's name: {setting})" if setting else ""
        raise forbidden(f"the identity token's {name!r} claim must be a string{named}")
    return value.strip()
