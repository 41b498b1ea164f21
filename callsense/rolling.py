"""A time-weighted rolling average of scores over the last seconds of call time. Plain Python.

The live badge follows the customer's (gateway/live.py); the post-call report finds turning points in the
same smoothed trend (postcall/summary.py).
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class _Span:
    start_ms: int
    end_ms: int
    score: float

    def weight_in(self, window_start_ms: int, now_ms: int) -> int:
        """Milliseconds of this utterance inside the window; a zero-length utterance inside weighs 1 ms."""
        if self.start_ms == self.end_ms:
            return 1 if window_start_ms <= self.start_ms <= now_ms else 0
        return max(0, min(self.end_ms, now_ms) - max(self.start_ms, window_start_ms))


class RollingAverage:
    """Time-weighted average of scores over the last ``window_ms`` of call time.

    "Now" is the latest ``end_ms`` added (it never goes back, so a late utterance cannot rewind the clock);
    each utterance weighs by how many of its milliseconds fall inside ``[now - window_ms, now]``.
    """

    def __init__(self, window_ms: int) -> None:
        if window_ms <= 0:
            raise ValueError(f"window_ms must be > 0, got {window_ms}")
        self._window_ms = window_ms
        self._spans: list[_Span] = []
        self._now_ms: int | None = None

    def add(self, start_ms: int, end_ms: int, score: float) -> None:
        self._now_ms = end_ms if self._now_ms is None else max(self._now_ms, end_ms)
        self._spans.append(_Span(start_ms, end_ms, score))
        start = self._window_start()
        self._spans = [s for s in self._spans if s.weight_in(start, self._now_ms) > 0]

    @property
    def now_ms(self) -> int | None:
        return self._now_ms

    @property
    def weight_ms(self) -> int:
        """Milliseconds of speech inside the window (overlaps count twice)."""
        return sum(w for w, _ in self._weighted())

    @property
    def value(self) -> float | None:
        """The average, or None before any utterance."""
        weighted = self._weighted()
        total = sum(w for w, _ in weighted)
        return sum(w * s for w, s in weighted) / total if total else None

    def count_below(self, threshold: float) -> int:
        """How many utterances in the window scored below ``threshold``."""
        return sum(1 for _, score in self._weighted() if score < threshold)

    def _window_start(self) -> int:
        return (self._now_ms or 0) - self._window_ms

    def _weighted(self) -> list[tuple[int, float]]:
        if self._now_ms is None:
            return []
        start = self._window_start()
        return [(s.weight_in(start, self._now_ms), s.score) for s in self._spans]
