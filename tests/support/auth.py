"""Credentials from a test's side: real keys in the gateway's database, sent as a client would."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import grpc
import grpc.aio

from gateway.auth.credentials import Role
from gateway.auth.key_store import KeyStore

TEST_TENANT = "acme"
"""The tenant of a test gateway's default key (and of most test calls)."""


async def make_key(
    keys: KeyStore, tenant: str = TEST_TENANT, role: Role = Role.SERVICE, *, agent: str = "", team: str = ""
) -> str:
    return (await keys.create_key(tenant, role, agent=agent, team=team, name="test")).token


def bearer(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


class _WithKey:
    """Adds ``authorization: Bearer <key>`` to every call, as a backend client's channel would."""

    def __init__(self, key: str) -> None:
        self._metadata = (("authorization", f"Bearer {key}"),)

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*(details.metadata or ()), *self._metadata)
        return grpc.aio.ClientCallDetails(
            details.method, details.timeout, metadata, details.credentials, details.wait_for_ready
        )


# grpc.aio files an interceptor under the first kind it is an instance of: one class per kind.
class _UnaryUnary(_WithKey, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _UnaryStream(_WithKey, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _StreamUnary(_WithKey, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _StreamStream(_WithKey, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def keyed_channel(target: str, key: str, options: Sequence[tuple[str, Any]] = ()) -> grpc.aio.Channel:
    """An insecure channel whose every call carries ``key``."""
    return grpc.aio.insecure_channel(
        target,
        options=list(options),
        interceptors=[kind(key) for kind in (_UnaryUnary, _UnaryStream, _StreamUnary, _StreamStream)],
    )
