"""API keys, browser session tokens and the Principal they stand for.

A key reads ``csk_<key_id>_<secret>``: the key id (12 hex digits) finds the row, the secret (32 random
bytes, URL-safe base64) proves it. Only the SHA-256 of the secret is stored: with 256 random bits there is
nothing to brute-force, so a slow password hash would only cost every request time. A browser session token
(``css_<secret>``) is the same idea for the HttpOnly cookie the pages sign in with.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from enum import StrEnum

KEY_PREFIX = "csk_"
SESSION_PREFIX = "css_"
_KEY_RE = re.compile(r"csk_([0-9a-f]{12})_([A-Za-z0-9_-]{43})")
_SESSION_RE = re.compile(r"css_([A-Za-z0-9_-]{43})")


class Role(StrEnum):
    """What a key may reach within its tenant."""

    AGENT = "agent"
    """The calls of one agent (the key's ``agent``): drive them, watch them, read them."""
    MANAGER = "manager"
    """The calls and reports of one team (the key's ``team``)."""
    ADMIN = "admin"
    """Everything of the tenant, and its keys."""
    SERVICE = "service"
    """Everything of the tenant over the APIs, for backend teams; no key management."""


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: a key's tenant, role and, for an agent or a manager, whose calls."""

    key_id: str
    tenant: str
    role: Role
    agent: str = ""
    team: str = ""


@dataclass(frozen=True, slots=True)
class KeyRecord:
    """A row of api_keys, as the authenticator keeps it."""

    principal: Principal
    secret_sha256: bytes
    revoked: bool


@dataclass(frozen=True, slots=True)
class MintedKey:
    """A new key: ``token`` is shown once to whoever made it; only ``secret_sha256`` is stored."""

    key_id: str
    token: str
    secret_sha256: bytes


def sha256(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def mint_key() -> MintedKey:
    key_id = secrets.token_hex(6)
    secret = secrets.token_urlsafe(32)
    return MintedKey(key_id, f"{KEY_PREFIX}{key_id}_{secret}", sha256(secret))


def parse_key(token: str) -> tuple[str, str] | None:
    """(key_id, secret) of a well-formed key, else None."""
    match = _KEY_RE.fullmatch(token)
    return (match[1], match[2]) if match else None


def secret_matches(secret: str, stored_sha256: bytes) -> bool:
    return hmac.compare_digest(sha256(secret), stored_sha256)


def mint_session_token() -> tuple[str, bytes]:
    """A new session token and the hash that is stored."""
    token = SESSION_PREFIX + secrets.token_urlsafe(32)
    return token, sha256(token)


def is_session_token(token: str) -> bool:
    return _SESSION_RE.fullmatch(token) is not None
