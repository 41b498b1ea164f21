"""A request message that does not decode ends its RPC with INVALID_ARGUMENT, naming the message type.

Without this, grpc.aio answers a corrupt or foreign message with UNKNOWN ("Unexpected [DecodeError]
raised by servicer method") and logs a traceback as if the server had failed. The interceptor wraps each
method's request deserializer: a message that fails to parse becomes an ``Undecodable`` marker, and the
wrapped behaviour aborts the RPC on meeting one, in a unary request or anywhere in a request stream (the
messages before it are handled as usual). Installed on every server by ``grpc_runtime.start_server``.
"""

from __future__ import annotations

import inspect
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import grpc
import grpc.aio
from google.protobuf.message import DecodeError


@dataclass(frozen=True)
class Undecodable:
    """What a request's bytes became when they were not a message of the method's request type."""

    detail: str


def _safe(deserialize: Callable[[bytes], Any] | None, method: str) -> Callable[[bytes], Any] | None:
    if deserialize is None:
        return None

    def parse(data: bytes) -> Any:
        try:
            return deserialize(data)
        except (DecodeError, ValueError, UnicodeDecodeError) as exc:
            return Undecodable(f"{method}: the request is not a valid message of its type ({exc})")

    return parse


async def _abort(context: grpc.aio.ServicerContext[Any, Any], bad: Undecodable) -> None:
    await context.abort(grpc.StatusCode.INVALID_ARGUMENT, bad.detail)


async def _checked_stream(
    requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
) -> AsyncIterator[Any]:
    async for request in requests:
        if isinstance(request, Undecodable):
            await _abort(context, request)
        yield request


def _unary_in(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream_out(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> AsyncIterator[Any]:
            if isinstance(request, Undecodable):
                await _abort(context, request)
            async for response in behavior(request, context):
                yield response

        return stream_out

    async def unary_out(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        if isinstance(request, Undecodable):
            await _abort(context, request)
        result = behavior(request, context)
        return await result if inspect.isawaitable(result) else result

    return unary_out


def _stream_in(behavior: Callable[..., Any]) -> Callable[..., Any]:
    if inspect.isasyncgenfunction(behavior):

        async def stream_out(
            requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]
        ) -> Any:
            async for response in behavior(_checked_stream(requests, context), context):
                yield response

        return stream_out

    async def unary_out(requests: AsyncIterator[Any], context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        result = behavior(_checked_stream(requests, context), context)
        return await result if inspect.isawaitable(result) else result

    return unary_out


class UndecodableRequests(grpc.aio.ServerInterceptor):  # type: ignore[misc]  # grpc.aio is untyped here
    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or not hasattr(handler, "_replace"):
            return handler
        method = handler_call_details.method
        changes: dict[str, Any] = {"request_deserializer": _safe(handler.request_deserializer, method)}
        for kind, wrap in (
            ("unary_unary", _unary_in),
            ("unary_stream", _unary_in),
            ("stream_unary", _stream_in),
            ("stream_stream", _stream_in),
        ):
            behavior = getattr(handler, kind)
            if behavior is not None:
                changes[kind] = wrap(behavior)
        replaced: grpc.RpcMethodHandler = handler._replace(**changes)
        return replaced
