"""A credential to a Principal: API keys (``Authorization: Bearer csk_...``, gRPC metadata
``authorization``), browser sessions (the ``callsense_session`` cookie), and the claims of a JWT that
Envoy validated (``x-callsense-jwt-payload``, believed only next to the edge secret: gateway/auth/edge.py).

Lookups are cached per key id and session for ``fresh_s`` (30 s), so a busy client costs the database one
query per half minute, and a revocation takes effect within that time on every replica. When the database
is unreachable, what was looked up within ``stale_s`` (an hour) still answers: a database outage must not
sign out every live client nor stop new calls (the live path never waits for storage). Unknown keys are
cached too (as unknown), so guessing costs the database nothing.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import psycopg
import psycopg_pool

from gateway.auth.access import unauthenticated
from gateway.auth.credentials import KeyRecord, Principal, is_session_token, parse_key, secret_matches
from gateway.auth.edge import EdgeTrust
from gateway.auth.key_store import KeyStore
from gateway.calls.errors import ErrorCode, InputError

log = logging.getLogger(__name__)

SESSION_COOKIE = "callsense_session"
_DATABASE_DOWN = (psycopg.OperationalError, psycopg_pool.PoolTimeout)


@dataclass(frozen=True, slots=True)
class _Cached:
    value: object
    fetched_at: float


class Authenticator:
    def __init__(
        self,
        keys: KeyStore,
        *,
        fresh_s: float = 30.0,
        stale_s: float = 3600.0,
        clock: Callable[[], float] = time.monotonic,
        max_entries: int = 100_000,
        edge: EdgeTrust | None = None,
    ) -> None:
        self.keys = keys
        self.edge = EdgeTrust.from_env() if edge is None else edge
        """Whether and how forwarded JWT claims are believed (default: from the environment)."""
        self._untrusted_payload_logged = False
        self._fresh_s = fresh_s
        self._stale_s = stale_s
        self._clock = clock
        self._max_entries = max_entries
        self._cache: dict[str, _Cached] = {}

    async def authenticate(
        self,
        authorization: str | None,
        session_cookie: str | None,
        *,
        edge: str | None = None,
        jwt_payload: str | None = None,
    ) -> Principal:
        """The Principal of a request: the JWT claims Envoy forwarded (``jwt_payload``) when ``edge`` holds
        the edge secret, else its ``Authorization`` header if it has one, else its cookie."""
        if jwt_payload is not None:
            if self.edge.trusts(edge):
                return self.edge.principal(jwt_payload)
            self._log_untrusted_payload()
        if authorization:
            scheme, _, token = authorization.strip().partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise unauthenticated("the Authorization header must read 'Bearer <key>'")
            return await self.key(token.strip())
        if session_cookie:
            return await self.session(session_cookie)
        raise unauthenticated(
            "a credential is required: 'Authorization: Bearer <key>' (keys: callsense keys create), "
            "or sign in at /signin"
        )

    async def key(self, token: str) -> Principal:
        parsed = parse_key(token)
        if parsed is None:
            raise unauthenticated("that is not a callsense key (they read csk_...)")
        key_id, secret = parsed
        record = await self._lookup(f"key:{key_id}", lambda: self.keys.find_key(key_id))
        if not isinstance(record, KeyRecord) or not secret_matches(secret, record.secret_sha256):
            raise unauthenticated("unknown key")
        if record.revoked:
            raise unauthenticated("this key was revoked")
        return record.principal

    async def session(self, token: str) -> Principal:
        if not is_session_token(token):
            raise unauthenticated("the session cookie is not valid; sign in again at /signin")
        found = await self._lookup(f"session:{token}", lambda: self.keys.find_session(token))
        if not isinstance(found, tuple):
            raise unauthenticated("the session has ended; sign in again at /signin")
        record, expires_at = found
        if record.revoked or expires_at <= datetime.now(UTC):
            self.forget(f"session:{token}")
            raise unauthenticated("the session has ended; sign in again at /signin")
        principal: Principal = record.principal
        return principal

    def _log_untrusted_payload(self) -> None:
        if not self._untrusted_payload_logged:  # once: a client may send it with every request
            self._untrusted_payload_logged = True
            log.warning(
                "ignored a JWT payload header without the edge secret (logged once): it did not come through "
                "Envoy's public listener, or Envoy and the gateway have different CALLSENSE_EDGE_SECRET"
                "%s",
                "" if self.edge.secret else " (the gateway has none)",
            )

    def forget(self, entry: str) -> None:
        self._cache.pop(entry, None)

    def forget_session(self, token: str) -> None:
        self.forget(f"session:{token}")

    async def _lookup(self, entry: str, fetch: Callable[[], Awaitable[object]]) -> object:
        now = self._clock()
        cached = self._cache.get(entry)
        if cached is not None and now - cached.fetched_at < self._fresh_s:
            return cached.value
        try:
            value = await fetch()
        except _DATABASE_DOWN as exc:
            if cached is not None and now - cached.fetched_at < self._stale_s:
                log.warning("credential check from cache (database unavailable: %s)", type(exc).__name__)
                return cached.value
            raise InputError(
                ErrorCode.DATABASE_UNAVAILABLE,
                "credentials cannot be checked while the database is unavailable; retry shortly",
            ) from None
        if len(self._cache) >= self._max_entries:
            self._cache.clear()  # bounded: a flood of made-up keys cannot grow the cache without end
        self._cache[entry] = _Cached(value, now)
        return value
