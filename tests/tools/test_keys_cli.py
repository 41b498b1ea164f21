"""`callsense keys` against a real database: a key made by the command signs in, list never shows a secret,
revoke ends it; bad input exits 2 with what to fix."""

from __future__ import annotations

import asyncio
import json

import pytest

from gateway.auth.authenticator import Authenticator
from gateway.auth.credentials import Role
from gateway.auth.key_store import KeyStore
from gateway.calls.errors import InputError
from tools.cli import main

pytestmark = pytest.mark.slow


async def _authenticate(url: str, token: str) -> tuple[str, Role, str]:
    keys = await KeyStore.open(url, max_size=1)
    try:
        principal = await Authenticator(keys).key(token)
    finally:
        await keys.close()
    return principal.tenant, principal.role, principal.agent


def test_create_list_revoke(fresh_db_url: str, capsys: pytest.CaptureFixture[str]) -> None:
    database_url = fresh_db_url
    db = ["keys", "--database-url", database_url]
    assert main([*db, "create", "--tenant", "acme", "--role", "agent", "--agent", "sam", "--json"]) == 0
    made = json.loads(capsys.readouterr().out)
    assert made["key"].startswith(f"csk_{made['key_id']}_")
    assert asyncio.run(_authenticate(database_url, made["key"])) == ("acme", Role.AGENT, "sam")

    assert main([*db, "list", "--json"]) == 0
    listed = json.loads(capsys.readouterr().out)
    assert [(k["key_id"], k["role"], k["agent"], k["revoked_at"]) for k in listed] == [
        (made["key_id"], "agent", "sam", None)
    ]
    assert made["key"].split("_")[-1] not in json.dumps(listed)  # never the secret

    assert main([*db, "revoke", made["key_id"]]) == 0
    with pytest.raises(InputError, match="revoked"):
        asyncio.run(_authenticate(database_url, made["key"]))
    assert main([*db, "revoke", made["key_id"]]) == 2  # nothing left to revoke
    assert "no active key" in capsys.readouterr().err


def test_an_agent_key_needs_its_agent_and_a_manager_key_its_team(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["keys", "create", "--tenant", "acme", "--role", "agent"]) == 2
    assert "--agent" in capsys.readouterr().err
    assert main(["keys", "create", "--tenant", "acme", "--role", "manager"]) == 2
    assert "--team" in capsys.readouterr().err
