"""The gateway's plain logic, no processes: input rules, statistics, fan-out, metrics, JSON shapes."""

from __future__ import annotations

import asyncio

import pytest

from callsense.domain import UtteranceScore, compute_call_stats, format_call_time
from gateway.calls.errors import ErrorCode, InputError
from gateway.calls.events import CallOutcome, LiveScore, LiveSummary
from gateway.calls.fanout import Subscription
from gateway.calls.inputs import MAX_TEXT_CHARS, validate_call_id, validate_utterance
from gateway.metrics import GatewayMetrics
from gateway.schemas import StartMessage, UtteranceMessage, event_json, parse_message
from postcall.summary import build_report


def scored(utterance_id: int, score: float, channel: str = "customer", start_ms: int = 0) -> UtteranceScore:
    label = "negative" if score < 0.35 else "positive" if score > 0.65 else "neutral"
    return UtteranceScore(
        call_id="c",
        utterance_id=utterance_id,
        channel=channel,  # type: ignore[arg-type]
        start_ms=start_ms,
        end_ms=start_ms + 500,
        text=f"text {utterance_id}",
        label=label,  # type: ignore[arg-type]
        p_negative=1 - score,
        p_neutral=0.0,
        p_positive=score,
        score=score,
        model_version="m1",
    )


@pytest.mark.parametrize("call_id", ["a", "CA1234567890abcdef", "x" * 128, "tenant:call.1_2-3"])
def test_good_call_ids(call_id: str) -> None:
    assert validate_call_id(call_id) == call_id


@pytest.mark.parametrize("call_id", ["", "x" * 129, "has space", "slash/y", "ümlaut", None, 42])
def test_bad_call_ids(call_id: object) -> None:
    with pytest.raises(InputError) as err:
        validate_call_id(call_id)
    assert err.value.code == ErrorCode.INVALID_CALL_ID


@pytest.mark.parametrize(
    ("args", "code"),
    [
        (("", "customer", 0, 1), ErrorCode.EMPTY_TEXT),
        ((" \n\t", "agent", 0, 1), ErrorCode.EMPTY_TEXT),
        (("x" * (MAX_TEXT_CHARS + 1), "agent", 0, 1), ErrorCode.TEXT_TOO_LONG),
        (("hi there", "robot", 0, 1), ErrorCode.INVALID_CHANNEL),
        (("hi there", "agent", 5, 1), ErrorCode.INVALID_TIMES),
        (("hi there", "agent", -1, 1), ErrorCode.INVALID_TIMES),
        (("hi there", "agent", True, 1), ErrorCode.INVALID_TIMES),
        (("hi there", "agent", 0, 2**31), ErrorCode.INVALID_TIMES),
    ],
)
def test_utterance_rules(args: tuple[object, ...], code: str) -> None:
    with pytest.raises(InputError) as err:
        validate_utterance(*args)
    assert err.value.code == code


def test_limit_is_named_in_the_message() -> None:
    with pytest.raises(InputError) as err:
        validate_utterance("y" * 1_000_000, "customer", 0, 1)
    assert "1,000,000" in err.value.message and f"{MAX_TEXT_CHARS:,}" in err.value.message


def test_messages_map_to_codes() -> None:
    with pytest.raises(InputError) as err:
        parse_message(
            UtteranceMessage, {"type": "utterance", "text": "{x}", "channel": "c", "start_ms": 0, "end_ms": 1}
        )
    assert err.value.code == ErrorCode.INVALID_CHANNEL
    with pytest.raises(InputError) as err:
        parse_message(UtteranceMessage, {"type": "utterance", "channel": "agent", "start_ms": 0, "end_ms": 1})
    assert err.value.code == ErrorCode.INVALID_MESSAGE and "text" in err.value.message
    with pytest.raises(InputError) as err:
        parse_message(StartMessage, {"type": "start", "call_id": "ok", "metadata": {"tenant": "t" * 200}})
    assert err.value.code == ErrorCode.INVALID_METADATA
    message = parse_message(StartMessage, {"type": "start", "call_id": "ok", "metadata": {"region": "EU"}})
    assert message.metadata.to_domain().region == "EU"


def test_call_stats() -> None:
    events = [scored(0, 0.9), scored(1, 0.5, "agent"), scored(2, 0.1, start_ms=192_000), scored(2, 0.1)]
    stats = compute_call_stats(events)
    assert stats.utterance_count == 3  # a repeated utterance_id counts once
    assert stats.avg_sentiment == pytest.approx(0.5)
    assert stats.min_sentiment == pytest.approx(0.1)
    assert stats.customer_avg_sentiment == pytest.approx(0.5)
    assert stats.customer_min_sentiment == pytest.approx(0.1)
    assert stats.agent_avg_sentiment == pytest.approx(0.5)
    assert stats.label_counts == {"negative": 1, "neutral": 1, "positive": 1}
    lines = build_report(events[:3], stats).lines
    assert "negative spike at 03:12 (customer score 0.10)" in lines
    empty = compute_call_stats([])
    assert empty.utterance_count == 0 and empty.avg_sentiment is None
    assert build_report([], empty).lines == ("no utterances were scored",)
    assert format_call_time(3_723_000) == "1:02:03"


async def test_slow_subscriber_is_trimmed_not_blocking() -> None:
    sub = Subscription("c", maxsize=4)
    for seq in range(10):
        sub.offer(LiveScore("c", seq, scored(seq, 0.5)))  # never blocks
    sub.close()
    received = [event async for event in sub]
    kinds = [type(e).__name__ for e in received]
    assert "LiveError" in kinds
    error = next(e for e in received if type(e).__name__ == "LiveError")
    assert error.code == ErrorCode.SLOW_CONSUMER and error.seq is None  # type: ignore[union-attr]
    assert isinstance(received[-1], LiveScore) and received[-1].seq == 9  # the newest survive
    assert sub.dropped > 0


async def test_subscription_wakes_a_waiting_reader() -> None:
    sub = Subscription("c", maxsize=8)

    async def first() -> object:
        return await anext(aiter(sub))

    reader = asyncio.create_task(first())
    await asyncio.sleep(0)
    sub.offer(LiveScore("c", 0, scored(0, 0.7)))
    assert isinstance(await asyncio.wait_for(reader, 1), LiveScore)


def test_event_json_shapes() -> None:
    score = event_json(LiveScore("c", 3, scored(1, 0.8)))
    assert score["type"] == "score" and score["seq"] == 3 and score["utterance_id"] == 1
    assert set(score) >= {
        "call_id",
        "text",
        "channel",
        "start_ms",
        "end_ms",
        "label",
        "p_negative",
        "p_neutral",
        "p_positive",
        "score",
        "model_version",
    }
    stats = compute_call_stats([scored(0, 0.8)])
    summary = event_json(LiveSummary("c", 4, CallOutcome("c", "ended", "hangup", stats, ("a line",))))
    assert summary["type"] == "summary" and summary["utterance_count"] == 1 and summary["lines"] == ["a line"]


def test_metrics_render_prometheus_text() -> None:
    metrics = GatewayMetrics()
    metrics.call_started()
    metrics.observe_latency("scorer", 12.0)
    metrics.observe_latency("scorer", 700.0)
    metrics.count("callsense_gateway_input_errors_total", code='we"ird')
    text = metrics.render()
    assert "callsense_gateway_active_calls 1" in text
    assert 'callsense_gateway_stage_latency_ms_bucket{le="20",stage="scorer"} 1' in text
    assert 'callsense_gateway_stage_latency_ms_bucket{le="+Inf",stage="scorer"} 2' in text
    assert 'callsense_gateway_stage_latency_ms_count{stage="scorer"} 2' in text
    assert 'callsense_gateway_input_errors_total{code="we\\"ird"} 1' in text
    metrics.call_ended("ended", "hangup")
    assert "callsense_gateway_active_calls 0" in metrics.render()
