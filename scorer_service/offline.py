"""The scorer's answer, as a message, and ``ScoreBatch`` computed in this process.

``score_message`` is the one place a SentimentScore is filled (the service and the offline path alike), so
the text-only and fused probabilities always travel the same way. ``score_offline`` answers a list of
utterances as ``Scorer.ScoreBatch`` does (each call of the list read on its own, from its first utterance
there, for tone), for ``callsense analyze`` and the tone evaluation: no server, no batcher, same numbers.
"""

from __future__ import annotations

import time
from collections.abc import Sequence

from callsense.v1 import audio_pb2, chopper_pb2, scorer_pb2
from scorer_service.fusion.tone import Fused, ToneFuser
from scorer_service.inference import Prediction, SentimentInput, SentimentModel

MAX_PREVIOUS_CHARS = 2048
"""As the service: only the end of previous_text can fit in the 128-token context anyway."""

# The speaker role a model's role prior is chosen by (inference.ROLES); a mixed or unknown channel has none.
_ROLE_OF_CHANNEL: dict[int, str] = {audio_pb2.AGENT: "agent", audio_pb2.CUSTOMER: "customer"}


def role_of(channel: int) -> str:
    """The role name of an utterance's channel for the model's role prior ("" for MIXED or unknown)."""
    return _ROLE_OF_CHANNEL.get(channel, "")


LABELS = {
    "negative": scorer_pb2.NEGATIVE,
    "neutral": scorer_pb2.NEUTRAL,
    "positive": scorer_pb2.POSITIVE,
}


def score_message(
    call_id: str,
    utterance_id: int,
    text: Prediction,
    fused: Fused | None,
    *,
    model_version: str,
    inference_ms: float,
    batch_size: int,
) -> scorer_pb2.SentimentScore:
    """The score of one utterance: the fused probabilities when ``fused``, the text's otherwise; the
    text's alone beside them in both cases."""
    p = fused.fused if fused is not None else text
    return scorer_pb2.SentimentScore(
        call_id=call_id,
        utterance_id=utterance_id,
        p_negative=p.p_negative,
        p_neutral=p.p_neutral,
        p_positive=p.p_positive,
        score=p.score,
        label=LABELS[p.label],
        model_version=model_version,
        inference_ms=inference_ms,
        batch_size=batch_size,
        text_p_negative=text.p_negative,
        text_p_neutral=text.p_neutral,
        text_p_positive=text.p_positive,
        tone_fused=fused is not None,
        fusion_version=fused.version if fused is not None else "",
    )


def score_offline(
    model: SentimentModel, tone: ToneFuser | None, utterances: Sequence[chopper_pb2.Utterance]
) -> list[scorer_pb2.SentimentScore]:
    """What ``ScoreBatch`` answers for ``utterances`` (which the chopper made: non-empty, under 128
    tokens); RuntimeError for one the model refuses."""
    started = time.perf_counter()
    predictions = model.predict(
        [
            SentimentInput(u.text, u.previous_text[-MAX_PREVIOUS_CHARS:], role_of(u.channel))
            for u in utterances
        ]
    )
    elapsed_ms = (time.perf_counter() - started) * 1000.0
    batch_tone = tone.fresh() if tone is not None else None
    scores = []
    for u, prediction in zip(utterances, predictions, strict=True):
        if not isinstance(prediction, Prediction):  # cannot happen after the chopper; never guess a score
            raise RuntimeError(f"utterance {u.utterance_id} could not be scored: {prediction}")
        z = batch_tone.observe(u.call_id, u, 0.0) if batch_tone is not None else None
        fused = batch_tone.fuse(prediction, z) if batch_tone is not None and z is not None else None
        scores.append(
            score_message(
                u.call_id,
                u.utterance_id,
                prediction,
                fused,
                model_version=model.info.version,
                inference_ms=elapsed_ms,
                batch_size=len(utterances),
            )
        )
    return scores
