"""Schemathesis against the gateway's own OpenAPI schema (/openapi.json): every operation with generated
and mutated inputs, with a real key, against the real gateway (chopper and scorer subprocesses,
PostgreSQL) served by uvicorn in a thread of its own. No answer may be a 5xx; afterwards the gateway is
still ready. Bounded: ``MAX_EXAMPLES`` per operation, no deadline per example (the box is shared)."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
import uvicorn
from hypothesis import HealthCheck, given, settings
from schemathesis.checks import not_a_server_error

from gateway.app import create_app
from gateway.auth.key_store import KeyStore
from tests.support.auth import bearer, make_key
from tests.support.mesh import MeshServices

pytestmark = pytest.mark.slow

MAX_EXAMPLES = 60


@pytest.fixture(scope="module")
def served_gateway(
    mesh_services: MeshServices, asr_addr: str, gateway_db_url: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[str]:
    """The gateway app under uvicorn in a thread with its own event loop (its lifespan opens the Gateway),
    with the real ASR behind it (recordings are uploaded too)."""
    config = mesh_services.config(
        asr_addr=asr_addr, database_url=gateway_db_url, data_dir=tmp_path_factory.mktemp("fuzz")
    )
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(create_app(config), log_config=None, lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 60
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the gateway did not start"
        time.sleep(0.05)
    url = f"http://127.0.0.1:{sock.getsockname()[1]}"
    try:
        yield url
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


def _key(database_url: str) -> str:
    async def make() -> str:
        keys = await KeyStore.open(database_url, max_size=1)
        try:
            return await make_key(keys)
        finally:
            await keys.close()

    return asyncio.run(make())


def test_no_input_gets_a_server_error(served_gateway: str, gateway_db_url: str) -> None:
    api = schemathesis.openapi.from_url(f"{served_gateway}/openapi.json")
    headers = bearer(_key(gateway_db_url))
    counts: dict[str, int] = {}
    operations = [result.ok() for result in api.get_all_operations()]
    assert len(operations) >= 10, [op.label for op in operations]
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=MAX_EXAMPLES, deadline=None, suppress_health_check=list(HealthCheck), database=None
        )
        def fuzz(case: schemathesis.Case) -> None:
            response = case.call(base_url=served_gateway, headers=headers, timeout=60)
            counts[response.status_code // 100 * 100] = counts.get(response.status_code // 100 * 100, 0) + 1
            case.validate_response(response, checks=[not_a_server_error])

        fuzz()
    total = sum(counts.values())
    print(f"\n{len(operations)} operations, {total} requests, answers by class: {sorted(counts.items())}")


def test_the_gateway_is_still_ready_after_the_fuzz(served_gateway: str) -> None:
    assert httpx.get(f"{served_gateway}/readyz", timeout=30).status_code == 200
