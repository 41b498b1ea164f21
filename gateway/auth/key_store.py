"""Keys and browser sessions in PostgreSQL (tables api_keys and web_sessions, migration 0005).

Always the default database: a key is the tenant's, whichever region its calls are stored in.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from callsense.storage import Database
from gateway.auth.credentials import (
    KeyRecord,
    MintedKey,
    Principal,
    Role,
    mint_key,
    mint_session_token,
    parse_key,
    sha256,
)

_KEY_COLUMNS = "key_id, tenant, role, agent, team, secret_sha256, revoked_at IS NOT NULL AS revoked"


@dataclass(frozen=True, slots=True)
class KeyInfo:
    """A key as ``callsense keys list`` shows it (never its secret)."""

    key_id: str
    tenant: str
    role: str
    agent: str
    team: str
    name: str
    created_at: datetime
    revoked_at: datetime | None


class KeyStore(Database):
    async def create_key(
        self, tenant: str, role: Role, *, agent: str = "", team: str = "", name: str = "", token: str = ""
    ) -> MintedKey:
        """A new key; ``token``: register this one (a bootstrap key given to the deployment) instead of
        minting one."""
        minted = _from_token(token) if token else mint_key()
        async with self.pool.connection() as conn:
            await conn.execute(
                "INSERT INTO api_keys (key_id, secret_sha256, tenant, role, agent, team, name)"
                " VALUES (%s, %s, %s, %s, %s, %s, %s)",
                (minted.key_id, minted.secret_sha256, tenant, role.value, agent, team, name),
            )
        return minted

    async def has_keys(self) -> bool:
        async with self.pool.connection() as conn:
            cur = await conn.execute("SELECT EXISTS (SELECT 1 FROM api_keys)")
            row = await cur.fetchone()
        return bool(row and row[0])

    async def find_key(self, key_id: str) -> KeyRecord | None:
        async with self.pool.connection() as conn:
            cur = await conn.execute(f"SELECT {_KEY_COLUMNS} FROM api_keys WHERE key_id = %s", (key_id,))
            row = await cur.fetchone()
        return None if row is None else _record(row)

    async def list_keys(self, tenant: str | None = None) -> list[KeyInfo]:
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "SELECT key_id, tenant, role, agent, team, name, created_at, revoked_at FROM api_keys"
                " WHERE %(tenant)s::text IS NULL OR tenant = %(tenant)s ORDER BY tenant, created_at",
                {"tenant": tenant},
            )
            return [KeyInfo(*row) for row in await cur.fetchall()]

    async def revoke_key(self, key_id: str) -> bool:
        """Revoke the key and end its browser sessions; False when there is no such live key."""
        async with self.pool.connection() as conn, conn.transaction():
            cur = await conn.execute(
                "UPDATE api_keys SET revoked_at = now() WHERE key_id = %s AND revoked_at IS NULL",
                (key_id,),
            )
            await conn.execute("DELETE FROM web_sessions WHERE key_id = %s", (key_id,))
            return cur.rowcount == 1

    # -- browser sessions

    async def create_session(self, key_id: str, lifetime: timedelta) -> tuple[str, datetime]:
        token, token_sha256 = mint_session_token()
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                "INSERT INTO web_sessions (token_sha256, key_id, expires_at) VALUES (%s, %s, now() + %s)"
                " RETURNING expires_at",
                (token_sha256, key_id, lifetime),
            )
            row = await cur.fetchone()
        assert row is not None
        expires_at: datetime = row[0]
        return token, expires_at

    async def find_session(self, token: str) -> tuple[KeyRecord, datetime] | None:
        """The session's key and when the session ends, if it has not ended."""
        async with self.pool.connection() as conn:
            cur = await conn.execute(
                f"SELECT {_KEY_COLUMNS}, s.expires_at FROM web_sessions s JOIN api_keys USING (key_id)"
                " WHERE s.token_sha256 = %s AND s.expires_at > now()",
                (sha256(token),),
            )
            row = await cur.fetchone()
        return None if row is None else (_record(row[:7]), row[7])

    async def end_session(self, token: str) -> None:
        async with self.pool.connection() as conn:
            await conn.execute("DELETE FROM web_sessions WHERE token_sha256 = %s", (sha256(token),))

    async def purge_expired_sessions(self) -> int:
        async with self.pool.connection() as conn:
            cur = await conn.execute("DELETE FROM web_sessions WHERE expires_at <= now()")
            return cur.rowcount


def _record(row: tuple[Any, ...]) -> KeyRecord:
    key_id, tenant, role, agent, team, secret_sha256, revoked = row
    return KeyRecord(Principal(key_id, tenant, Role(role), agent, team), bytes(secret_sha256), bool(revoked))


def _from_token(token: str) -> MintedKey:
    parsed = parse_key(token)
    if parsed is None:
        raise ValueError("a key reads csk_<12 hex digits>_<43 URL-safe base64 characters>")
    key_id, secret = parsed
    return MintedKey(key_id, token, sha256(secret))
