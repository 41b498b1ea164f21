"""Scripted call lines scored by the real shipped model, as the gateway would store them."""

from __future__ import annotations

from collections.abc import Sequence

from callsense.domain import UtteranceScore
from scorer_service.inference import SentimentInput, SentimentModel


def score_lines(
    model: SentimentModel, lines: Sequence[tuple[str, int, str]], *, call_id: str, utterance_ms: int
) -> list[UtteranceScore]:
    """(channel, start second, text) lines, each lasting ``utterance_ms``, with the model's scores (its
    role prior by channel, as the scorer reads it)."""
    predictions = model.predict([SentimentInput(text, role=channel) for channel, _, text in lines])
    events = []
    for utterance_id, ((channel, start_s, text), p) in enumerate(zip(lines, predictions, strict=True)):
        assert not isinstance(p, Exception), p
        events.append(
            UtteranceScore(
                call_id=call_id,
                utterance_id=utterance_id,
                channel=channel,  # type: ignore[arg-type]
                start_ms=start_s * 1000,
                end_ms=start_s * 1000 + utterance_ms,
                text=text,
                label=p.label,  # type: ignore[arg-type]
                p_negative=p.p_negative,
                p_neutral=p.p_neutral,
                p_positive=p.p_positive,
                score=p.score,
                model_version=model.info.version,
            )
        )
    return events
