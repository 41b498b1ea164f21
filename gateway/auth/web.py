"""The HTTP side of identity: the dependency every protected route takes, the browser session routes
(``/v1/session``), the sign-in page's guard, and the WebSocket handshake check.

Backend clients send ``Authorization: Bearer <key>``, or a JWT of the company's identity provider that Envoy
validated (its claims arrive as ``x-callsense-jwt-payload``: gateway/auth/edge.py). Browsers sign in once
with a key at ``/signin``:
``POST /v1/session`` sets an HttpOnly, SameSite=Strict cookie holding a session token (never the key), so
page scripts never see a credential and other sites cannot ride on it. A WebSocket upgrade carries the
cookie too; its ``Origin`` must be the gateway's own or one of the tenant's ``allowed_origins``, so a page
elsewhere cannot open a call in a signed-in user's name.

Where the edge signs browsers in with the identity provider too (``OIDC_BROWSER_ENV``), the sign-in page
offers that as well (``GET /v1/session/options``): the edge keeps that session in its own HttpOnly cookies
and hands the gateway the provider's claims like a JWT's, so the gateway holds no state for it.
"""

from __future__ import annotations

import os
from datetime import timedelta
from typing import Annotated, Any
from urllib.parse import quote, urlsplit

from fastapi import APIRouter, Depends, Request, Response, WebSocket
from fastapi.responses import JSONResponse, RedirectResponse
from pydantic import BaseModel, Field

from callsense.config import EDGE_HEADER, JWT_PAYLOAD_HEADER
from callsense.tenants import TenantsConfig
from gateway.auth.access import forbidden
from gateway.auth.authenticator import SESSION_COOKIE, Authenticator
from gateway.auth.credentials import Principal
from gateway.calls.errors import ErrorCode, InputError
from gateway.schemas import ErrorResponse, error_response

SESSION_LIFETIME = timedelta(hours=12)
"""A browser stays signed in for a working day; then it signs in again."""
OIDC_BROWSER_ENV = "CALLSENSE_OIDC_BROWSER"
"""Set ("1") where the edge in front of the gateway signs browsers in with the identity provider (``callsense
up`` sets it when Envoy does): the sign-in page then offers that beside the key."""
OIDC_SIGNOUT_PATH = "/oauth2/signout"
"""Where a browser ends its identity provider session at the edge (tools/envoy_config.py)."""


def _authenticator(request: Request | WebSocket) -> Authenticator:
    authenticator: Authenticator = request.app.state.gateway.authenticator
    return authenticator


async def principal_of(request: Request) -> Principal:
    """The caller of a protected route (401 ``unauthenticated`` without a valid credential)."""
    return await _authenticate(request)


async def _authenticate(connection: Request | WebSocket) -> Principal:
    headers = connection.headers
    return await _authenticator(connection).authenticate(
        headers.get("authorization"),
        connection.cookies.get(SESSION_COOKIE),
        edge=headers.get(EDGE_HEADER),
        jwt_payload=headers.get(JWT_PAYLOAD_HEADER),
    )


Caller = Annotated[Principal, Depends(principal_of)]
"""A route parameter of this type makes the route require a credential."""


async def signed_in(request: Request) -> Principal | None:
    """The signed-in user of a page request, or None (the page then redirects to /signin)."""
    try:
        return await principal_of(request)
    except InputError:
        return None


def sign_in_redirect(request: Request) -> RedirectResponse:
    target = request.url.path + (f"?{request.url.query}" if request.url.query else "")
    return RedirectResponse(f"/signin?next={quote(target, safe='')}", status_code=303)


# --------------------------------------------------------------------------------------------- WebSocket


async def websocket_principal(websocket: WebSocket, tenants: TenantsConfig) -> Principal | None:
    """The caller of a WebSocket upgrade, or None after refusing it (HTTP 401 or 403 with the API's error
    body where the server supports denial responses, else a 1008 close before accepting)."""
    try:
        principal = await _authenticate(websocket)
        check_origin(websocket, tenants, principal)
    except InputError as err:
        await deny_upgrade(websocket, err)
        return None
    return principal


async def deny_upgrade(websocket: WebSocket, err: InputError) -> None:
    """Refuse a WebSocket upgrade before accepting it: HTTP 401 (``unauthenticated``), 503 (database away)
    or 403 with the API's error body where the server supports denial responses, else a 1008 close."""
    status = 401 if err.code == ErrorCode.UNAUTHENTICATED else 403
    status = 503 if err.code == ErrorCode.DATABASE_UNAVAILABLE else status
    if "websocket.http.response" in websocket.scope.get("extensions", {}):
        await websocket.send_denial_response(error_response(status, err.code, err.message))
    else:
        await websocket.close(code=1008, reason=err.code)


def check_origin(websocket: WebSocket, tenants: TenantsConfig, principal: Principal) -> None:
    """A browser's upgrade must come from this gateway's own pages or an origin the tenant allows.
    Clients that send no Origin (backend services, phones) are not browsers and pass."""
    origin = websocket.headers.get("origin")
    if origin is None:
        return
    own = websocket.headers.get("host", "")
    if urlsplit(origin).netloc == own or origin in tenants.for_tenant(principal.tenant).allowed_origins:
        return
    raise forbidden(f"WebSocket connections from {origin!r} are not allowed for this tenant")


# --------------------------------------------------------------------------------------------- sessions


class SignIn(BaseModel):
    key: str = Field(min_length=1, max_length=200, description="An API key (csk_...).")


class SignInOptions(BaseModel):
    key: bool = Field(default=True, description="An API key can be signed in with (POST /v1/session).")
    identity_provider: bool = Field(
        description="The edge signs browsers in with the company's identity provider: a page opened "
        "without a session goes by the provider's sign-in."
    )
    signout_path: str | None = Field(
        default=None, description="Where a browser ends its identity provider session."
    )


class SessionOut(BaseModel):
    tenant: str
    role: str
    agent: str = ""
    team: str = ""


router = APIRouter()
_SESSION_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    422: {"model": ErrorResponse},
}


@router.post("/v1/session", response_model=SessionOut, status_code=201, responses=_SESSION_ERRORS)
async def sign_in(body: SignIn, request: Request) -> JSONResponse:
    """Sign a browser in with a key: sets the HttpOnly ``callsense_session`` cookie (12 hours)."""
    authenticator = _authenticator(request)
    principal = await authenticator.key(body.key.strip())
    token, _ = await authenticator.keys.create_session(principal.key_id, SESSION_LIFETIME)
    response = JSONResponse(_session_out(principal).model_dump(), status_code=201)
    response.set_cookie(
        SESSION_COOKIE,
        token,
        max_age=int(SESSION_LIFETIME.total_seconds()),
        path="/",
        httponly=True,
        samesite="strict",
        secure=_is_https(request),
    )
    return response


@router.get("/v1/session/options", response_model=SignInOptions)
async def sign_in_options() -> SignInOptions:
    """How a browser may sign in here (no credential needed: the sign-in page asks before anyone has one)."""
    # Read per request, not once at import: a dictionary lookup, and a test can set it for one test.
    oidc = os.environ.get(OIDC_BROWSER_ENV, "").strip().lower() in ("1", "true", "yes")
    return SignInOptions(identity_provider=oidc, signout_path=OIDC_SIGNOUT_PATH if oidc else None)


@router.get("/v1/session", response_model=SessionOut, responses=_SESSION_ERRORS)
async def who_am_i(caller: Caller) -> SessionOut:
    """The tenant and role of the credential this request carries."""
    return _session_out(caller)


@router.delete("/v1/session", status_code=204)
async def sign_out(request: Request) -> Response:
    """End the browser's session (the cookie is cleared whether or not it was still valid)."""
    token = request.cookies.get(SESSION_COOKIE)
    if token:
        authenticator = _authenticator(request)
        await authenticator.keys.end_session(token)
        authenticator.forget_session(token)
    response = Response(status_code=204)
    response.delete_cookie(SESSION_COOKIE, path="/", httponly=True, samesite="strict")
    return response


def _session_out(principal: Principal) -> SessionOut:
    return SessionOut(
        tenant=principal.tenant, role=principal.role.value, agent=principal.agent, team=principal.team
    )


def _is_https(request: Request) -> bool:
    # Behind Envoy the gateway sees plain HTTP; Envoy says what the browser used.
    return request.url.scheme == "https" or request.headers.get("x-forwarded-proto") == "https"
