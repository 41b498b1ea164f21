"""`callsense keys ...`: API keys per tenant, with roles (stored hashed; the secret is shown once).

    callsense keys create --tenant T --role agent|manager|admin|service [--agent A] [--team T] [--name N]
        prints the new key once (JSON with --json); an agent key needs --agent, a manager key --team
    callsense keys list [--tenant T] [--json]
        the keys (never their secrets): id, tenant, role, agent, team, name, created, revoked
    callsense keys revoke KEY_ID
        the key stops working within 30 s on every gateway (their caches), its browser sessions at once

The database is the gateway's: ``--database-url``, else DATABASE_URL, else the embedded PostgreSQL under
CALLSENSE_DATA_DIR. Exit codes: 0 done, 1 the database failed, 2 bad input (or no such key to revoke).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

from gateway.auth.credentials import Role  # light: the parser's choices

if TYPE_CHECKING:
    from gateway.auth.key_store import KeyStore


def add_parser(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    p = sub.add_parser("keys", help="make, list and revoke API keys (per tenant, with roles)")
    p.add_argument(
        "--database-url", default="", help="PostgreSQL URL (default: DATABASE_URL, else the embedded one)"
    )
    verbs = p.add_subparsers(dest="verb", required=True)
    create = verbs.add_parser("create", help="a new key, printed once")
    create.add_argument("--tenant", required=True, help="the tenant the key belongs to")
    create.add_argument("--role", required=True, choices=[r.value for r in Role])
    create.add_argument("--agent", default="", help="an agent key's agent (as in the calls' metadata)")
    create.add_argument("--team", default="", help="a manager key's team (an agent key's, optionally)")
    create.add_argument("--name", default="", help="what the key is for (shown by list)")
    create.add_argument("--json", action="store_true", help="print the key and its fields as JSON")
    listing = verbs.add_parser("list", help="the keys, never their secrets")
    listing.add_argument("--tenant", default=None, help="only this tenant's keys")
    listing.add_argument("--json", action="store_true")
    revoke = verbs.add_parser("revoke", help="revoke a key (and end its browser sessions)")
    revoke.add_argument("key_id", help="the 12 hex digits after csk_ (as list shows them)")


def run(args: argparse.Namespace) -> int:
    # The database client loads only when the command runs (`callsense --help` stays fast).
    import psycopg
    import psycopg_pool

    from callsense.config import ConfigError

    role_problem = _check_create(args) if args.verb == "create" else None
    if role_problem:
        print(f"callsense keys create: {role_problem}", file=sys.stderr)
        return 2
    try:
        return asyncio.run(_run(args))
    except ConfigError as exc:
        print(f"callsense keys: {exc}", file=sys.stderr)
        return 2
    except (psycopg.Error, psycopg_pool.PoolTimeout) as exc:
        print(f"callsense keys: the database failed: {exc}", file=sys.stderr)
        return 1


def _check_create(args: argparse.Namespace) -> str | None:
    if not args.tenant.strip():
        return "--tenant must not be empty"
    if args.role == Role.AGENT and not args.agent:
        return "an agent key needs --agent (whose calls it reaches)"
    if args.role == Role.MANAGER and not args.team:
        return "a manager key needs --team (whose calls it reaches)"
    return None


@asynccontextmanager
async def _key_store(database_url: str) -> AsyncIterator[KeyStore]:
    from callsense.config import load_config
    from callsense.storage import default_database_url
    from gateway.auth.key_store import KeyStore

    async with default_database_url(load_config(), database_url or None) as url:
        store = await KeyStore.open(url, max_size=2)
        try:
            yield store
        finally:
            await store.close()


async def _run(args: argparse.Namespace) -> int:
    async with _key_store(args.database_url) as store:
        if args.verb == "create":
            minted = await store.create_key(
                args.tenant.strip(), Role(args.role), agent=args.agent, team=args.team, name=args.name
            )
            fields = {"key": minted.token, "key_id": minted.key_id, "tenant": args.tenant.strip()}
            fields |= {"role": args.role, "agent": args.agent, "team": args.team}
            if args.json:
                print(json.dumps(fields))
            else:
                print(minted.token)
                print(
                    f"key {minted.key_id}: {args.role} of tenant {args.tenant!r}. Shown once: keep it now.",
                    file=sys.stderr,
                )
            return 0
        if args.verb == "list":
            keys = await store.list_keys(args.tenant)
            rows: list[dict[str, Any]] = [
                {
                    "key_id": k.key_id,
                    "tenant": k.tenant,
                    "role": k.role,
                    "agent": k.agent,
                    "team": k.team,
                    "name": k.name,
                    "created_at": k.created_at.isoformat(),
                    "revoked_at": k.revoked_at.isoformat() if k.revoked_at else None,
                }
                for k in keys
            ]
            if args.json:
                print(json.dumps(rows))
            else:
                for row in rows:
                    state = f"revoked {row['revoked_at']}" if row["revoked_at"] else "active"
                    who = row["agent"] or row["team"]
                    print(f"{row['key_id']}  {row['tenant']}  {row['role']}  {who}  {row['name']}  {state}")
            return 0
        if await store.revoke_key(args.key_id):
            print(f"revoked {args.key_id}", file=sys.stderr)
            return 0
        print(f"callsense keys revoke: no active key {args.key_id!r}", file=sys.stderr)
        return 2
