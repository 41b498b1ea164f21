"""Provisional scores: the mood of a turn while it is still being spoken.

The ASR sends a partial of an open segment about once a second, each a fresh decode of everything heard so
far. Words that two successive partials agree on seldom change again (the "local agreement" policy of
streaming Whisper), so they are scored at once and sent as a ``provisional`` event, often before the
speaker finishes the sentence. A segment's first partial has no predecessor: its words but the last (the
one most often cut mid-word) are taken. The stable words never shrink: a later pair of partials that
agrees on fewer words (Whisper re-reads the start of a long turn, "it. Ah," becomes "it, uh,") keeps the
longest agreement so far, so the mood does not jump back to the turn's opening words. Only the tail is
scored, from the start of the last sentence that holds ``min_words`` (the chopper cuts finals into
sentences too, so a provisional score reads what the final's last utterance will read), at most
``max_words``.

The scorer's ``ScoreBatch`` scores it, text only (no prosody: a part of a turn is no turn to read a voice
against), with the call's last scored utterance as context, as the chopper would give it. Per channel at
most one request is in flight; partials that arrive meanwhile replace each other, so a slow scorer costs
stale provisional scores, never a queue. A failure is counted and logged, never the call's: the finals are
the record. A result that comes back after its segment's final is dropped.

Provisional scores are never stored and never reach the badge or the cues (gateway/live.py): those act on
finals only, so that a sentence that turns ("it's expensive, but worth it") cannot flash the badge red.
"""

from __future__ import annotations

import asyncio
import logging
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import grpc
import grpc.aio

from callsense.domain import Channel, Label
from callsense.v1 import asr_pb2, chopper_pb2, scorer_pb2, scorer_pb2_grpc
from gateway.calls.inputs import channel_from_role
from gateway.calls.settings import ProvisionalSettings
from gateway.calls.stages import score_label
from gateway.metrics import GatewayMetrics

log = logging.getLogger(__name__)

_SENTENCE_END = (".", "?", "!")


@dataclass(frozen=True)
class ProvisionalMood:
    """A segment's stable words so far, and their score."""

    role: int
    """The speaker's ChannelRole (audio.proto)."""
    segment_id: int
    text: str
    end_ms: int
    score: scorer_pb2.SentimentScore

    @property
    def channel(self) -> Channel:
        return channel_from_role(self.role)

    @property
    def label(self) -> Label:
        return score_label(self.score)


@dataclass
class _Request:
    role: int
    segment_id: int
    text: str
    start_ms: int
    end_ms: int
    received_at: float


@dataclass
class _OpenSegment:
    """The segment a channel's partials are about."""

    segment_id: int = -1
    last_partial: str | None = None
    stable: list[str] = field(default_factory=list)
    """The longest agreement of two successive partials of the segment so far."""
    last_scored: str = ""


@dataclass
class _ChannelState:
    segment: _OpenSegment = field(default_factory=_OpenSegment)
    finished: set[int] = field(default_factory=set)
    """Segments whose final came: a late provisional result for one of them is dropped."""
    pending: _Request | None = None
    worker: asyncio.Task[None] | None = None


def _key(word: str) -> str:
    return word.strip(string.punctuation + "“”‘’").lower()


def stable_words(previous: str | None, current: str) -> list[str]:
    """The words of ``current`` that ``previous`` (the segment's partial before) agrees on: their longest
    common prefix, without case and punctuation; every word but the last when there is no previous one."""
    words = current.split()
    if previous is None:
        return words[:-1]
    agreed = 0
    for before, now in zip(previous.split(), words, strict=False):
        if _key(before) != _key(now):
            break
        agreed += 1
    return words[:agreed]


def scored_tail(words: list[str], min_words: int, max_words: int) -> list[str]:
    """The tail of ``words`` to score: from the start of the last sentence that holds ``min_words`` (all
    of them when none does), at most ``max_words``."""
    start = 0
    for i in range(len(words) - 1, 0, -1):
        if words[i - 1].endswith(_SENTENCE_END) and len(words) - i >= min_words:
            start = i
            break
    return words[max(start, len(words) - max_words) :]


class ProvisionalScorer:
    """A live call's provisional scores: partials in (``on_transcript``), moods out (``publish``)."""

    def __init__(
        self,
        call_id: str,
        scorer: scorer_pb2_grpc.ScorerStub,
        publish: Callable[[ProvisionalMood], None],
        metrics: GatewayMetrics,
        *,
        context: Callable[[], str] = str,
        settings: ProvisionalSettings | None = None,
    ) -> None:
        self._call_id = call_id
        self._scorer = scorer
        self._publish = publish
        self._metrics = metrics
        self._context = context
        """The call's last scored utterance (masked), the context a final's utterance would get."""
        self._settings = settings or ProvisionalSettings()
        self._channels: dict[int, _ChannelState] = {}

    def on_transcript(self, event: asr_pb2.TranscriptEvent) -> None:
        """Take a transcript event (partial or final) of the call; never blocks."""
        if not self._settings.enabled:
            return
        state = self._channels.setdefault(event.channel, _ChannelState())
        if event.is_final:
            state.finished.add(event.segment_id)
            if state.pending is not None and state.pending.segment_id == event.segment_id:
                state.pending = None
            return
        if event.segment_id in state.finished:
            return
        segment = state.segment
        if event.segment_id != segment.segment_id:
            segment = state.segment = _OpenSegment(event.segment_id)
        agreed = stable_words(segment.last_partial, event.text)
        segment.last_partial = event.text
        if len(agreed) > len(segment.stable):
            segment.stable = agreed
        tail = scored_tail(segment.stable, self._settings.min_words, self._settings.max_words)
        text = " ".join(tail)
        if len(tail) < self._settings.min_words or text == segment.last_scored:
            return
        segment.last_scored = text
        state.pending = _Request(
            event.channel, event.segment_id, text, event.start_ms, event.end_ms, time.perf_counter()
        )
        if state.worker is None or state.worker.done():
            state.worker = asyncio.create_task(self._work(state))

    async def close(self) -> None:
        """Stop: requests in flight are cancelled, nothing more is published."""
        workers = [s.worker for s in self._channels.values() if s.worker is not None]
        for state in self._channels.values():
            state.pending = None
        for worker in workers:
            worker.cancel()
        await asyncio.gather(*workers, return_exceptions=True)

    async def _work(self, state: _ChannelState) -> None:
        while state.pending is not None:
            request, state.pending = state.pending, None
            score = await self._score(request)
            if score is None or request.segment_id in state.finished:
                continue
            self._metrics.observe_latency("provisional", (time.perf_counter() - request.received_at) * 1000)
            self._metrics.count("callsense_gateway_provisional_scores_total")
            self._publish(
                ProvisionalMood(request.role, request.segment_id, request.text, request.end_ms, score)
            )

    async def _score(self, request: _Request) -> scorer_pb2.SentimentScore | None:
        utterance = chopper_pb2.Utterance(
            call_id=self._call_id,
            channel=request.role,  # type: ignore[arg-type]  # an int of the ChannelRole enum
            start_ms=request.start_ms,
            end_ms=request.end_ms,
            text=request.text,
            previous_text=self._context(),
            source_segment_id=request.segment_id,
        )
        try:
            reply = await self._scorer.ScoreBatch(
                scorer_pb2.ScoreBatchRequest(utterances=[utterance]), timeout=self._settings.timeout_s
            )
        except grpc.aio.AioRpcError as exc:
            # The final will be scored on the call's own stream, which re-opens on its own: a lost
            # provisional score is only a moment without a mood.
            self._metrics.count("callsense_gateway_provisional_failures_total", code=exc.code().name)
            if exc.code() is not grpc.StatusCode.DEADLINE_EXCEEDED:
                log.warning("call %s: a provisional score failed: %s", self._call_id, exc.code().name)
            return None
        return reply.scores[0] if len(reply.scores) == 1 else None
