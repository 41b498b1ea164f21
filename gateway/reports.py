"""``GET /v1/reports/daily``: the stored daily roll-ups (written by the post-call worker, postcall/rollup.py);
``GET /v1/reports/trend``: one team's or agent's days; ``GET /v1/reports/drift``: a tenant's drift indicators
of a day (postcall/drift_job.py) against its trailing days and the training baseline.

Included in the gateway app by ``create_app``. Thin: it reads ``daily_rollups`` from every database (the
default one and each region's; rows are never merged across regions, whose data stays apart) and filters
them. A day is the tenant's own (midnight to midnight in its ``timezone``). A day that was never rolled up
answers 404 and says how to roll it up; one rolled up with no calls answers an empty list.
"""

from __future__ import annotations

from datetime import date, datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import APIRouter, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, Field

from gateway.auth.access import forbidden, may_see
from gateway.auth.credentials import Principal
from gateway.auth.web import Caller
from gateway.calls.errors import ErrorCode
from gateway.calls.service import Gateway
from gateway.schemas import ErrorResponse, error_response
from gateway.store import DriftRow, RollupRow

router = APIRouter()
_AUTH_ERRORS: dict[int | str, dict[str, Any]] = {
    401: {"model": ErrorResponse},
    403: {"model": ErrorResponse},
}


class DailyRowOut(BaseModel):
    """One team's day (``agent`` empty) or one agent's day within it."""

    region: str = Field(description='The database the row comes from: "" for the default one.')
    day: date = Field(description="The tenant's day the row covers.")
    tenant: str
    team: str
    agent: str = Field(description="Empty for the whole team's row.")
    calls: int = Field(description="Calls that started that day, whatever their status.")
    utterances: int = Field(description="Scored utterances of those calls, every speaker.")
    customer_utterances: int = Field(description="The customer's scored utterances: the rate's denominator.")
    avg_sentiment: float | None = Field(description="Mean score of every scored utterance, in [0, 1].")
    negative_rate: float | None = Field(
        description="Share of the customer's utterances labelled negative; null without any."
    )

    @classmethod
    def of(cls, region: str, row: RollupRow) -> DailyRowOut:
        """The stored row as the API shows it."""
        return cls(
            region=region, **{name: getattr(row, name) for name in cls.model_fields if name != "region"}
        )


class DailyReportOut(BaseModel):
    date: date
    rolled_up_at: datetime = Field(description="When the day was last rolled up (the latest database).")
    rows: list[DailyRowOut] = Field(description="By region, tenant, team, then agent; a team's row first.")


@router.get(
    "/v1/reports/daily",
    response_model=DailyReportOut,
    responses={**_AUTH_ERRORS, 404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def daily_report(
    request: Request,
    caller: Caller,
    day: Annotated[date, Query(alias="date", description="The day, YYYY-MM-DD, in each tenant's time zone.")],
    tenant: str | None = Query(
        None, max_length=128, description="The key's tenant (the default); another tenant is refused."
    ),
    team: str | None = Query(None, max_length=128, description="Only this team's rows."),
    agent: str | None = Query(None, max_length=128, description="Only this agent's rows."),
) -> DailyReportOut | JSONResponse:
    """Per team and per agent: calls, utterances, average sentiment and the customer's negative rate.
    Only the rows the key reaches: its tenant's, a manager's team's, an agent's own."""
    _check_tenant(caller, tenant)
    gateway: Gateway = request.app.state.gateway
    rows: list[DailyRowOut] = []
    ran: list[datetime] = []
    for region, store in gateway.stores.named_stores:
        ran_at = await store.rollup_ran_at(day)
        if ran_at is None:
            continue
        ran.append(ran_at)
        rows += [
            DailyRowOut.of(region, r)
            for r in await store.daily_rollups(day)
            if may_see(caller, r.tenant, r.team, r.agent)
            and (team is None or r.team == team)
            and (agent is None or r.agent == agent)
        ]
    if not ran:
        return _not_rolled_up(day)
    return DailyReportOut(date=day, rolled_up_at=max(ran), rows=rows)


MAX_TREND_DAYS = 366


class TrendOut(BaseModel):
    tenant: str
    team: str
    agent: str = Field(description="Empty: the whole team.")
    days: list[DailyRowOut] = Field(description="The days with calls, oldest first (one row per region).")
    days_with_rows: list[date] = Field(description="The days that have a row, oldest first.")
    missing_days: list[date] = Field(
        description="Days in the range no database has rolled up yet (a day rolled up without calls is "
        "neither here nor in days)."
    )


@router.get(
    "/v1/reports/trend",
    response_model=TrendOut,
    responses={**_AUTH_ERRORS, 422: {"model": ErrorResponse}},
)
async def trend_report(
    request: Request,
    caller: Caller,
    first: Annotated[date, Query(alias="from", description="The first day, YYYY-MM-DD.")],
    last: Annotated[date, Query(alias="to", description="The last day, YYYY-MM-DD (at most 366 days on).")],
    tenant: str | None = Query(
        None, max_length=128, description="The key's tenant (the default); another tenant is refused."
    ),
    team: str = Query("", max_length=128, description="The team (empty: calls without one)."),
    agent: str = Query("", max_length=128, description="One agent of the team; empty for the whole team."),
) -> TrendOut | JSONResponse:
    """One team's or one agent's days: calls, average sentiment and negative rate, for a trend line."""
    _check_tenant(caller, tenant)
    tenant = caller.tenant
    if not may_see(caller, tenant, team, agent):
        raise forbidden("this key does not reach that team's or agent's figures")
    span = (last - first).days + 1
    if not 1 <= span <= MAX_TREND_DAYS:
        problem = "to is before from" if span < 1 else f"{span} days; ask for at most {MAX_TREND_DAYS}"
        return error_response(422, ErrorCode.INVALID_MESSAGE, f"from {first} to {last}: {problem}")
    gateway: Gateway = request.app.state.gateway
    days: list[DailyRowOut] = []
    rolled_up: set[date] = set()
    for region, store in gateway.stores.named_stores:
        days += [
            DailyRowOut.of(region, r) for r in await store.rollup_trend(tenant, team, agent, first, last)
        ]
        rolled_up |= await store.rolled_up_days(first, last)
    with_rows = sorted({d.day for d in days})
    missing = [first + timedelta(days=i) for i in range(span) if first + timedelta(days=i) not in rolled_up]
    days.sort(key=lambda d: (d.day, d.region))
    return TrendOut(
        tenant=tenant, team=team, agent=agent, days=days, days_with_rows=with_rows, missing_days=missing
    )


def _check_tenant(caller: Principal, tenant: str | None) -> None:
    if tenant is not None and tenant != caller.tenant:
        raise forbidden(f"tenant {tenant!r} is not this key's")


def _not_rolled_up(day: date) -> JSONResponse:
    message = (
        f"{day.isoformat()} is not rolled up yet: the post-call worker rolls each day up the night after it "
        f"(CALLSENSE_ROLLUP_AT), or run `callsense rollup --date {day.isoformat()}`"
    )
    return error_response(404, ErrorCode.NOT_FOUND, message)


# --- drift --------------------------------------------------------------------------------------------------


class DriftIndicatorOut(BaseModel):
    """One indicator of the day, against the tenant's trailing days and the training text."""

    name: Literal[
        "token_length",
        "stop_word_ratio",
        "oov_rate",
        "negative_share",
        "neutral_share",
        "positive_share",
        "mean_confidence",
    ] = Field(
        description="token_length: mean tokens (of the served model's tokenizer) per utterance; "
        "stop_word_ratio: share of English function words; oov_rate: share of words not in the training "
        "text's vocabulary; the label mix; mean_confidence: mean top-class probability."
    )
    value: float | None = Field(description="The day's value; null when there was nothing to measure.")
    baseline: float | None = Field(description="The value on the model's training text.")
    trailing_mean: float | None = Field(description="Mean over the tenant's trailing days with enough data.")
    trailing_sd: float | None = Field(description="Their sample standard deviation.")
    trailing_days: int = Field(description="How many trailing days had enough utterances.")
    z: float | None = Field(description="(value - trailing mean) in widened spreads; null while learning.")
    baseline_change: float | None = Field(
        description="(value - trailing mean) / baseline: the move in units of the training value."
    )
    status: Literal["drift", "unusual", "usual", "learning", "little_data"] = Field(
        description="drift: beyond both bars on a day that drifted (postcall/drift_rule.py); unusual: "
        "beyond both bars but not corroborated, so the day did not drift; learning: too few trailing "
        "days; little_data: too few utterances that day."
    )


class DriftDayOut(BaseModel):
    region: str = Field(description='The database the row comes from: "" for the default one.')
    day: date
    tenant: str
    utterances: int = Field(description="Scored utterances of the tenant's calls that started that day.")
    text_utterances: int = Field(description="Of those, the ones whose words were read.")
    drifting: bool = Field(description="Whether any indicator drifted.")
    alerted: bool = Field(description="Whether a Slack message was enqueued for it (once per day).")
    baseline_model: str = Field(description="The model version the training baseline was made for.")
    computed_at: datetime
    indicators: list[DriftIndicatorOut]

    @classmethod
    def of(cls, region: str, row: DriftRow) -> DriftDayOut:
        return cls(
            region=region,
            day=row.day,
            tenant=row.tenant,
            utterances=row.utterances,
            text_utterances=row.text_utterances,
            drifting=row.drifting,
            alerted=row.alert_key is not None,
            baseline_model=row.baseline_model,
            computed_at=row.computed_at,
            indicators=[DriftIndicatorOut.model_validate(check) for check in row.checks],
        )


class DriftReportOut(BaseModel):
    date: date
    tenant: str
    rolled_up_at: datetime = Field(description="When the day was last rolled up (the latest database).")
    days: list[DriftDayOut] = Field(
        description="One per database holding the tenant's calls of that day; empty without calls."
    )


@router.get(
    "/v1/reports/drift",
    response_model=DriftReportOut,
    responses={**_AUTH_ERRORS, 404: {"model": ErrorResponse}, 422: {"model": ErrorResponse}},
)
async def drift_report(
    request: Request,
    caller: Caller,
    day: Annotated[date, Query(alias="date", description="The day, YYYY-MM-DD, in the tenant's time zone.")],
    tenant: str | None = Query(
        None, max_length=128, description="The key's tenant (the default); another tenant is refused."
    ),
) -> DriftReportOut | JSONResponse:
    """What the model was asked to score that day, as drift indicators per tenant: each against the tenant's
    trailing 28 days and the training text, and whether the day drifted (and was posted to Slack). The
    figures cover the whole tenant, so only the keys that reach the whole tenant (admin, service) read
    them."""
    _check_tenant(caller, tenant)
    if not may_see(caller, caller.tenant, "", ""):
        raise forbidden("the drift indicators cover the whole tenant: read them with an admin or service key")
    gateway: Gateway = request.app.state.gateway
    days: list[DriftDayOut] = []
    ran: list[datetime] = []
    for region, store in gateway.stores.named_stores:
        ran_at = await store.rollup_ran_at(day)
        if ran_at is None:
            continue
        ran.append(ran_at)
        row = await store.drift_day(caller.tenant, day)
        if row is not None:
            days.append(DriftDayOut.of(region, row))
    if not ran:
        return _not_rolled_up(day)
    return DriftReportOut(date=day, tenant=caller.tenant, rolled_up_at=max(ran), days=days)
