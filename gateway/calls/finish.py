"""The end of a call, live or batch: its statistics, its report, its outcome, and the one store write.

A live call (``CallSession._finish``) and a batch (``Gateway.analyze_batch``) end the same way, here:
compute the statistics of the scored utterances, build the report (objection tags, spikes, lines) with
the AfterCall, store the end of the call together with the after-call outbox (the CRM push, enqueued in
the same transaction; the enqueuing wakes the post-call worker's dispatcher). What differs is what a
failed store write means (a batch fails with it, a live call still publishes its summary:
``on_store_failure``) and who hears of a report the worker owes (a live call's clients: ``on_report_owed``).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Literal

from callsense.domain import UtteranceScore, compute_call_stats
from callsense.report import CallReport
from gateway.calls.events import CallOutcome
from gateway.live import BadgeState
from gateway.postcall_client import AfterCall
from gateway.spool import SpooledStore
from gateway.store import Store


async def finish_call(
    call_id: str,
    scored: Sequence[UtteranceScore],
    *,
    status: Literal["ended", "failed"],
    reason: str,
    store: Store | SpooledStore,
    after_call: AfterCall,
    badge: BadgeState | None = None,
    on_store_failure: Callable[[], None] | None = None,
    on_report_owed: Callable[[CallReport], None] | None = None,
    store_text: bool = True,
) -> CallOutcome:
    """End a call whose scored utterances are ``scored``; returns its outcome.

    ``badge``: the live badge's colour at the end (None for a batch). A failed store write raises, unless
    ``on_store_failure`` is given: it is then called from the ``except`` block (so it may log the
    exception) and the outcome is returned all the same. ``on_report_owed`` is called when the post-call
    worker did not answer (the report is an empty stand-in the worker completes later). ``store_text``
    False (the tenant's ``store_transcripts``): the stored summary keeps no utterance text.
    """
    stats = compute_call_stats(scored)
    report = await after_call.report(scored, stats)
    if report.pending and on_report_owed is not None:
        on_report_owed(report)
    outcome = CallOutcome.of(call_id, status, reason, stats, report, badge)
    try:
        await store.end_call(
            call_id,
            stats,
            status=status,
            summary=outcome.for_store() if store_text else without_text(outcome.for_store()),
            objection_tags=outcome.objection_tags,
            outbox=after_call.outbox(),
        )
    except Exception:
        if on_store_failure is None:
            raise
        on_store_failure()
    return outcome


def without_text(value: Any) -> Any:
    """``value`` (a stored summary: JSON) with every ``text`` field emptied: the spikes', the tags', the
    turning points' quotes of what was said."""
    if isinstance(value, dict):
        return {k: ("" if k == "text" and isinstance(v, str) else without_text(v)) for k, v in value.items()}
    if isinstance(value, list):
        return [without_text(v) for v in value]
    return value
