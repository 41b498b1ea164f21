"""The speaker baselines a scorer keeps for the calls it scores: bounded, and let go when a call is done.

A scorer may serve thousands of calls over a day, each leaving two baselines (agent, customer: a few KB).
``CallBaselines`` keeps them in least-recently-used order and lets a call go

- when the stream that carried it ends (``release``: a call's Score stream ends with the call),
- when it has been idle for ``idle_s`` (a client that vanished without ending its stream),
- when more than ``max_calls`` are held (the least recently used first).

A call that is let go and comes back (a gateway that re-opened its stream after a network break) starts a
new baseline: its next utterances are scored on text alone until the speaker has spoken again, never with
a made-up baseline.

Re-sent utterances: a re-opened stream sends again what was not answered. An utterance already observed
(same call, channel, utterance id) gets the deviation it got the first time and does not count twice in
the baseline, so its fused score is the same whichever stream answers it.

Not thread-safe: the scorer uses it from its event loop only (each call costs microseconds).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field

from scorer_service.fusion.features import BaselinePrior, FloatArray, SpeakerBaseline

DEFAULT_MAX_CALLS = 10_000
DEFAULT_IDLE_S = 30 * 60.0
REMEMBERED_DEVIATIONS = 256
"""Per call, the last deviations kept for re-sent utterances (a gateway re-sends at most what is in
flight: far fewer)."""


@dataclass
class _CallState:
    speakers: dict[int, SpeakerBaseline] = field(default_factory=dict)
    seen: OrderedDict[tuple[int, int], FloatArray] = field(default_factory=OrderedDict)
    last_used: float = 0.0


class CallBaselines:
    """Per call and channel: the speaker's baseline, and the deviations already handed out."""

    def __init__(
        self, prior: BaselinePrior, *, max_calls: int = DEFAULT_MAX_CALLS, idle_s: float = DEFAULT_IDLE_S
    ) -> None:
        if max_calls < 1 or idle_s <= 0:
            raise ValueError("max_calls must be >= 1 and idle_s > 0")
        self.prior = prior
        self.max_calls = max_calls
        self.idle_s = idle_s
        self._calls: OrderedDict[str, _CallState] = OrderedDict()

    def __len__(self) -> int:
        return len(self._calls)

    def __contains__(self, call_id: object) -> bool:
        return call_id in self._calls

    def observe(self, call_id: str, channel: int, utterance_id: int, x: FloatArray, now: float) -> FloatArray:
        """The deviation of ``x`` (raw features of all FEATURE_NAMES) from the speaker's earlier utterances
        in the call; then ``x`` joins the baseline. ``now`` is a monotonic time in seconds."""
        self.evict_idle(now)
        state = self._calls.get(call_id)
        if state is None:
            state = self._calls[call_id] = _CallState()
            while len(self._calls) > self.max_calls:
                self._calls.popitem(last=False)
        self._calls.move_to_end(call_id)
        state.last_used = now
        key = (channel, utterance_id)
        known = state.seen.get(key)
        if known is not None:
            return known
        baseline = state.speakers.setdefault(channel, SpeakerBaseline())
        z = baseline.deviation(x, self.prior)
        baseline.add(x)
        state.seen[key] = z
        if len(state.seen) > REMEMBERED_DEVIATIONS:
            state.seen.popitem(last=False)
        return z

    def release(self, call_ids: set[str]) -> None:
        """Let these calls go (their stream ended)."""
        for call_id in call_ids:
            self._calls.pop(call_id, None)

    def evict_idle(self, now: float) -> None:
        while self._calls:
            oldest = next(iter(self._calls.values()))
            if now - oldest.last_used < self.idle_s:
                break
            self._calls.popitem(last=False)
