"""HTTP routes of the web UI: the two pages, their static assets, the timeline PNG, the live-call list.

Included in the gateway app by ``create_app`` (``app.include_router(router)``). Thin: the chart is
drawn by ``gateway.web.timeline`` (in a worker thread), the data comes from the app's ``Gateway``. Errors
have the body of every other route: ``{"error": {"code", "message", "details"}}`` (a malformed call id is
the app's 400, a width out of bounds its 422).
"""

from __future__ import annotations

import asyncio
from datetime import datetime
from pathlib import Path
from typing import Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import FileResponse, RedirectResponse, Response
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel, Field

from gateway.auth.access import check_may_see, forbidden
from gateway.auth.credentials import Role
from gateway.auth.web import Caller, sign_in_redirect, signed_in
from gateway.calls.errors import ErrorCode
from gateway.calls.inputs import validate_call_id
from gateway.calls.service import Gateway
from gateway.heartbeat import FRESH_S
from gateway.schemas import ErrorResponse, error_response
from gateway.web.timeline import (
    DEFAULT_HEIGHT,
    DEFAULT_WIDTH,
    MAX_HEIGHT,
    MAX_WIDTH,
    MIN_HEIGHT,
    MIN_WIDTH,
    points_from_events,
    render_timeline,
    spikes_from_summary,
)

STATIC_DIR = Path(__file__).parent / "static"
# Pages load only their own scripts, styles and images, and talk only to this gateway (REST and WebSocket).
_PAGE_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; connect-src 'self' ws: wss:; img-src 'self' data:; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'"
    ),
    "Cache-Control": "no-cache",
}

router = APIRouter()
router.mount("/static", StaticFiles(directory=STATIC_DIR), name="static")


class LiveCallOut(BaseModel):
    """A live call, on any gateway replica, for the console's "join" list."""

    call_id: str
    tenant: str
    agent: str
    started_at: datetime
    audio: bool | None = Field(
        description="True when the call streams audio (its transcript comes from the ASR); null when "
        "another replica holds the call."
    )
    driven: bool | None = Field(
        description="False while its client is away (the call ends after a grace period); null when "
        "another replica holds the call."
    )


class CallListOut(BaseModel):
    calls: list[LiveCallOut] = Field(description="Newest first.")


def _gateway(request: Request) -> Gateway:
    gateway: Gateway = request.app.state.gateway
    return gateway


def _page(name: str) -> FileResponse:
    return FileResponse(STATIC_DIR / name, media_type="text/html", headers=_PAGE_HEADERS)


@router.get("/", include_in_schema=False)
async def home() -> RedirectResponse:
    return RedirectResponse("/console", status_code=307)


@router.get("/signin", include_in_schema=False)
async def signin_page() -> FileResponse:
    """Sign in with a key; the page posts it to /v1/session and goes on to ?next=."""
    return _page("signin.html")


@router.get("/console", include_in_schema=False)
async def console_page(request: Request) -> Response:
    """The agent console: start a call from the microphone or join a live one."""
    return _page("console.html") if await signed_in(request) else sign_in_redirect(request)


@router.get("/reports", include_in_schema=False)
async def reports_page(request: Request) -> Response:
    """The daily report (GET /v1/reports/daily as a table)."""
    return _page("reports.html") if await signed_in(request) else sign_in_redirect(request)


@router.get("/review/{call_id}", include_in_schema=False)
async def review_page(call_id: str, request: Request) -> Response:
    """The review page of a call; the page itself fetches the call and says when there is none."""
    return _page("review.html") if await signed_in(request) else sign_in_redirect(request)


@router.get(
    "/v1/calls",
    response_model=CallListOut,
    responses={401: {"model": ErrorResponse}, 403: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def list_calls(
    request: Request,
    caller: Caller,
    status: Literal["live"] = Query(
        "live", description='Only "live" is listed here: the calls some gateway replica holds now.'
    ),
    tenant: str | None = Query(
        None, max_length=128, description="The key's tenant (the default); another tenant is refused."
    ),
    limit: int = Query(50, ge=1, le=500, description="At most this many calls."),
) -> CallListOut:
    """The live calls of every gateway replica, newest first (what the console can join): those whose
    replica's heartbeat is fresh in the database (gateway/heartbeat.py). Only the calls the key reaches:
    its tenant's, a manager's team's, an agent's own."""
    if tenant is not None and tenant != caller.tenant:
        raise forbidden(f"tenant {tenant!r} is not this key's")
    team = caller.team if caller.role is Role.MANAGER else None
    agent = caller.agent if caller.role is Role.AGENT else None
    gateway = _gateway(request)
    here = {s.call_id: s for s in gateway.registry.live_calls()}
    rows = []
    for _, store in gateway.stores.named_stores:
        rows += await store.live_calls(FRESH_S, caller.tenant, limit, team=team, agent=agent)
    rows.sort(key=lambda r: (r.started_at, r.call_id), reverse=True)
    calls = []
    for row in rows[:limit]:
        session = here.get(row.call_id)
        calls.append(
            LiveCallOut(
                call_id=row.call_id,
                tenant=row.tenant,
                agent=row.agent,
                started_at=row.started_at,
                audio=None if session is None else session.audio is not None,
                driven=None if session is None else session.driver_attached,
            )
        )
    return CallListOut(calls=calls)


@router.get(
    "/v1/calls/{call_id}/timeline.png",
    response_class=Response,
    responses={
        200: {"content": {"image/png": {}}, "description": "The chart."},
        400: {"model": ErrorResponse},
        401: {"model": ErrorResponse},
        403: {"model": ErrorResponse},
        404: {"model": ErrorResponse},
        422: {"model": ErrorResponse},
    },
)
async def timeline_png(
    call_id: str,
    request: Request,
    caller: Caller,
    width: int = Query(DEFAULT_WIDTH, ge=MIN_WIDTH, le=MAX_WIDTH, description="Image width in pixels."),
    height: int = Query(DEFAULT_HEIGHT, ge=MIN_HEIGHT, le=MAX_HEIGHT, description="Image height in pixels."),
) -> Response:
    """The call's sentiment timeline as a PNG: score per utterance over call time, one colour per
    channel, the 0.30 red line and the summary's spikes (for reports and e-mails)."""
    row = await _gateway(request).get_call(validate_call_id(call_id))
    if row is None:
        return error_response(404, ErrorCode.NOT_FOUND, f"no call with id {call_id!r}")
    check_may_see(caller, row.tenant, row.team, row.agent, call_id)
    png = await asyncio.to_thread(
        render_timeline, points_from_events(row.events), spikes_from_summary(row.summary), width, height
    )
    # A live call's chart grows: caches must ask again.
    return Response(png, media_type="image/png", headers={"Cache-Control": "no-cache"})
