"""A call's sentiment timeline as a PNG (Pillow), for reports and e-mails. Plain Python, no HTTP.

x is call time (mm:ss ticks), y the utterance score in [0, 1] with the badge's 0.30 red line; one series
per channel (customer, agent, mixed), each utterance a dot at the middle of its time span, and the
summary's spikes marked with a triangle and a dashed vertical line. The review page draws the same chart
as SVG (static/review.js) with the same colours.

The image is drawn at twice its size and reduced with a box filter: Pillow draws without anti-aliasing,
and the reduction smooths the edges while the inside of lines and dots keeps its exact colour.
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from PIL import Image, ImageDraw, ImageFont

from callsense.domain import UtteranceScore
from callsense.tenants import BadgeSettings

RGB = tuple[int, int, int]

MIN_WIDTH, MAX_WIDTH, DEFAULT_WIDTH = 320, 2400, 960
MIN_HEIGHT, MAX_HEIGHT, DEFAULT_HEIGHT = 200, 1600, 360
RED_LINE = BadgeSettings().red_enter  # the badge turns red below it; also the summary's spike line

CHANNEL_COLOURS: Mapping[str, RGB] = {
    "customer": (28, 126, 214),  # blue
    "agent": (12, 166, 120),  # teal
    "mixed": (134, 142, 150),  # grey
}
RED_LINE_COLOUR: RGB = (224, 49, 49)
SPIKE_COLOUR: RGB = (232, 89, 12)  # orange: apart from the red line and both series
BACKGROUND: RGB = (255, 255, 255)
PLOT_BACKGROUND: RGB = (248, 249, 250)
GRID_COLOUR: RGB = (222, 226, 230)
TEXT_COLOUR: RGB = (52, 58, 64)
EMPTY_NOTE = "No scored utterances yet"

_SCALE = 2  # drawn at twice the size, then reduced
_TICK_STEPS_S = (1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200)
_SCORE_TICKS = (0.0, 0.25, 0.5, 0.75, 1.0)


@dataclass(frozen=True)
class TimelinePoint:
    """One scored utterance on the chart."""

    utterance_id: int
    channel: str
    start_ms: int
    end_ms: int
    score: float

    @property
    def at_ms(self) -> int:
        return (self.start_ms + self.end_ms) // 2


@dataclass(frozen=True)
class TimelineSpike:
    """A negative spike of the call summary: where it is and what it was about."""

    at_ms: int
    utterance_id: int | None = None
    score: float | None = None
    topic: str = ""


def points_from_events(events: Iterable[UtteranceScore]) -> list[TimelinePoint]:
    return [TimelinePoint(e.utterance_id, e.channel, e.start_ms, e.end_ms, e.score) for e in events]


def spikes_from_summary(summary: Mapping[str, Any] | None) -> list[TimelineSpike]:
    """The ``spikes`` of a stored summary; entries without a usable ``at_ms`` are left out (a summary
    written before spikes existed has none)."""
    raw = summary.get("spikes") if summary else None
    if not isinstance(raw, list):
        return []
    spikes = []
    for item in raw:
        at_ms = _number(item.get("at_ms")) if isinstance(item, Mapping) else None
        if at_ms is None:
            continue
        utterance_id = item.get("utterance_id")
        spikes.append(
            TimelineSpike(
                at_ms=int(at_ms),
                utterance_id=utterance_id if _is_int(utterance_id) else None,
                score=_number(item.get("score")),
                topic=str(item.get("topic") or ""),
            )
        )
    return spikes


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _number(value: object) -> float | None:
    """A finite JSON number as a float; None for anything else (true is not 1 here)."""
    if isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value):
        return float(value)
    return None


def tick_label(ms: int) -> str:
    """An axis tick: call time as m:ss (h:mm:ss from an hour on), shorter than a report's mm:ss."""
    seconds = max(ms, 0) // 1000
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


def tick_step_ms(span_ms: int, max_ticks: int) -> int:
    """The smallest round step (1 s, 2 s, 5 s, ... 2 h) that puts at most ``max_ticks`` ticks on the span."""
    for step_s in _TICK_STEPS_S:
        if span_ms / (step_s * 1000) <= max(max_ticks, 1):
            return step_s * 1000
    return _TICK_STEPS_S[-1] * 1000


@dataclass(frozen=True)
class ChartLayout:
    """Where the plot area lies in the final image, and how call time and score map onto it."""

    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    end_ms: int
    tick_ms: int

    def x_of(self, ms: float) -> float:
        return self.left + (self.right - self.left) * min(max(ms, 0.0), self.end_ms) / self.end_ms

    def y_of(self, score: float) -> float:
        return self.bottom - (self.bottom - self.top) * min(max(score, 0.0), 1.0)


def chart_layout(
    points: Sequence[TimelinePoint], spikes: Sequence[TimelineSpike], width: int, height: int
) -> ChartLayout:
    left, top, right, bottom = 44, 34, width - 16, height - 28
    last_ms = max([p.end_ms for p in points] + [s.at_ms for s in spikes] + [1_000])
    tick_ms = tick_step_ms(last_ms, max_ticks=max((right - left) // 70, 1))
    end_ms = math.ceil(last_ms / tick_ms) * tick_ms
    return ChartLayout(width, height, left, top, right, bottom, end_ms, tick_ms)


def render_timeline(
    points: Sequence[TimelinePoint],
    spikes: Sequence[TimelineSpike] = (),
    width: int = DEFAULT_WIDTH,
    height: int = DEFAULT_HEIGHT,
) -> bytes:
    """The chart as PNG bytes of exactly ``width`` x ``height`` pixels; CPU-bound (run it in a thread)."""
    if not (MIN_WIDTH <= width <= MAX_WIDTH and MIN_HEIGHT <= height <= MAX_HEIGHT):
        raise ValueError(
            f"chart size {width}x{height} is out of bounds: width {MIN_WIDTH}-{MAX_WIDTH}, "
            f"height {MIN_HEIGHT}-{MAX_HEIGHT}"
        )
    layout = chart_layout(points, spikes, width, height)
    image = Image.new("RGB", (width * _SCALE, height * _SCALE), BACKGROUND)
    canvas = _Canvas(ImageDraw.Draw(image), layout)
    canvas.axes()
    if points:
        canvas.spikes(spikes, points)  # under the series: a spike's line must not hide its dot
        for channel, colour in CHANNEL_COLOURS.items():
            canvas.series([p for p in points if p.channel == channel], colour)
    else:
        canvas.note(EMPTY_NOTE)
    canvas.legend(sorted({p.channel for p in points}, key=list(CHANNEL_COLOURS).index), bool(spikes))
    out = io.BytesIO()
    image.reduce(_SCALE).save(out, format="PNG", optimize=True)
    return out.getvalue()


class _Canvas:
    """Draws in the supersampled image with final-image coordinates."""

    def __init__(self, draw: ImageDraw.ImageDraw, layout: ChartLayout) -> None:
        self._draw = draw
        self._layout = layout
        self._font = ImageFont.load_default(size=11 * _SCALE)

    def _xy(self, x: float, y: float) -> tuple[float, float]:
        return x * _SCALE, y * _SCALE

    def _line(self, a: tuple[float, float], b: tuple[float, float], colour: RGB, width: float = 1) -> None:
        self._draw.line([self._xy(*a), self._xy(*b)], fill=colour, width=round(width * _SCALE))

    def _dashed(
        self, a: tuple[float, float], b: tuple[float, float], colour: RGB, width: float, dash: float = 6
    ) -> None:
        length = math.dist(a, b)
        steps = max(int(length // dash), 1)
        for i in range(0, steps, 2):
            t0, t1 = i / steps, min((i + 1) / steps, 1.0)
            start = (a[0] + (b[0] - a[0]) * t0, a[1] + (b[1] - a[1]) * t0)
            end = (a[0] + (b[0] - a[0]) * t1, a[1] + (b[1] - a[1]) * t1)
            self._line(start, end, colour, width)

    def _text(self, x: float, y: float, text: str, colour: RGB = TEXT_COLOUR, anchor: str = "la") -> None:
        self._draw.text(self._xy(x, y), text, fill=colour, font=self._font, anchor=anchor)

    def axes(self) -> None:
        lay = self._layout
        self._draw.rectangle(
            [self._xy(lay.left, lay.top), self._xy(lay.right, lay.bottom)], fill=PLOT_BACKGROUND
        )
        for score in _SCORE_TICKS:
            y = lay.y_of(score)
            self._line((lay.left, y), (lay.right, y), GRID_COLOUR)
            self._text(lay.left - 6, y, f"{score:.2f}", anchor="rm")
        for ms in range(0, lay.end_ms + 1, lay.tick_ms):
            x = lay.x_of(ms)
            self._line((x, lay.top), (x, lay.bottom), GRID_COLOUR)
            self._text(x, lay.bottom + 6, tick_label(ms), anchor="ma")
        red_y = lay.y_of(RED_LINE)
        self._dashed((lay.left, red_y), (lay.right, red_y), RED_LINE_COLOUR, 1.5)

    def series(self, points: Sequence[TimelinePoint], colour: RGB) -> None:
        lay = self._layout
        xy = [(lay.x_of(p.at_ms), lay.y_of(p.score)) for p in sorted(points, key=lambda p: p.at_ms)]
        for a, b in zip(xy, xy[1:], strict=False):
            self._line(a, b, colour, 2)
        for x, y in xy:
            r = 3.5 * _SCALE
            cx, cy = self._xy(x, y)
            self._draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=colour)

    def spikes(self, spikes: Sequence[TimelineSpike], points: Sequence[TimelinePoint]) -> None:
        lay = self._layout
        by_id = {p.utterance_id: p for p in points}
        for spike in spikes:
            # Under its utterance's dot when the utterance is known (a dot sits mid-utterance, at_ms may not).
            point = by_id.get(spike.utterance_id) if spike.utterance_id is not None else None
            x = lay.x_of(point.at_ms if point is not None else spike.at_ms)
            self._dashed((x, lay.top), (x, lay.bottom), SPIKE_COLOUR, 1, dash=4)
            score = spike.score if spike.score is not None else point.score if point is not None else RED_LINE
            tip = lay.y_of(score) + 6  # the triangle points up at the dot from just below it
            cx, cy = self._xy(x, tip)
            s = 6 * _SCALE
            self._draw.polygon([(cx, cy), (cx - s, cy + 1.6 * s), (cx + s, cy + 1.6 * s)], fill=SPIKE_COLOUR)
            if spike.topic:
                self._text(x + 4, lay.top + 3, spike.topic, SPIKE_COLOUR)

    def note(self, text: str) -> None:
        lay = self._layout
        self._text((lay.left + lay.right) / 2, (lay.top + lay.bottom) / 2, text, anchor="mm")

    def legend(self, channels: Sequence[str], with_spikes: bool) -> None:
        x, y = float(self._layout.left), 14.0
        for channel in channels:
            colour = CHANNEL_COLOURS[channel]
            self._line((x, y), (x + 18, y), colour, 2)
            self._text(x + 24, y, channel, anchor="lm")
            x += 24 + self._text_width(channel) + 18
        self._dashed((x, y), (x + 18, y), RED_LINE_COLOUR, 1.5)
        label = f"{RED_LINE:.2f} red line"
        self._text(x + 24, y, label, anchor="lm")
        x += 24 + self._text_width(label) + 18
        if with_spikes:
            cx, cy = self._xy(x + 9, y - 5)
            s = 5 * _SCALE
            self._draw.polygon([(cx, cy), (cx - s, cy + 1.8 * s), (cx + s, cy + 1.8 * s)], fill=SPIKE_COLOUR)
            self._text(x + 24, y, "spike", anchor="lm")

    def _text_width(self, text: str) -> float:
        return self._draw.textlength(text, font=self._font) / _SCALE
