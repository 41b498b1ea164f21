"""The timeline chart as PNG (gateway/web/timeline.py): size, colours where the data puts them, spikes,
the empty chart, and the parsing of a stored summary's spikes. Pure functions, no server."""

from __future__ import annotations

import io

import pytest
from PIL import Image

from gateway.web.timeline import (
    CHANNEL_COLOURS,
    MAX_WIDTH,
    MIN_HEIGHT,
    RED_LINE,
    RED_LINE_COLOUR,
    SPIKE_COLOUR,
    TEXT_COLOUR,
    TimelinePoint,
    TimelineSpike,
    chart_layout,
    render_timeline,
    spikes_from_summary,
    tick_label,
    tick_step_ms,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
CUSTOMER, AGENT = CHANNEL_COLOURS["customer"], CHANNEL_COLOURS["agent"]

# A call that sours at the price: the customer is pleased for 12 s, then low from 12 s on.
POINTS = [
    TimelinePoint(0, "agent", 0, 3_000, 0.70),
    TimelinePoint(1, "customer", 3_000, 6_000, 0.90),
    TimelinePoint(2, "agent", 6_000, 9_000, 0.55),
    TimelinePoint(3, "customer", 9_000, 12_000, 0.80),
    TimelinePoint(4, "customer", 12_000, 15_000, 0.10),
    TimelinePoint(5, "customer", 15_000, 18_000, 0.08),
    TimelinePoint(6, "customer", 18_000, 21_000, 0.15),
]
# A spike of the summary, timed at its utterance's start: it is marked under that utterance's dot.
SPIKE = TimelineSpike(at_ms=POINTS[5].start_ms, utterance_id=5, score=0.08, topic="pricing")


def decode(png: bytes) -> Image.Image:
    assert png.startswith(PNG_SIGNATURE)
    image = Image.open(io.BytesIO(png))
    image.load()
    return image.convert("RGB")


def count_colour(image: Image.Image, colour: tuple[int, int, int]) -> int:
    counts = {c: n for n, c in image.getcolors(maxcolors=image.width * image.height) or []}
    return counts.get(colour, 0)


def test_chart_is_a_png_of_the_requested_size_with_each_point_where_its_time_and_score_put_it() -> None:
    image = decode(render_timeline(POINTS, [SPIKE], 800, 300))
    assert image.size == (800, 300)
    layout = chart_layout(POINTS, [SPIKE], 800, 300)
    for point in POINTS:
        x, y = round(layout.x_of(point.at_ms)), round(layout.y_of(point.score))
        assert image.getpixel((x, y)) == CHANNEL_COLOURS[point.channel], point
    # The sour customer points lie below the red line, the pleased ones above it.
    red_y = layout.y_of(RED_LINE)
    assert all(layout.y_of(p.score) > red_y for p in POINTS[4:])
    assert all(layout.y_of(p.score) < red_y for p in POINTS[:4])
    assert count_colour(image, CUSTOMER) > 100 and count_colour(image, AGENT) > 50
    assert count_colour(image, RED_LINE_COLOUR) > 100  # the dashed red line


def test_a_spike_is_marked_at_its_time_and_only_where_there_are_spikes() -> None:
    with_spike = decode(render_timeline(POINTS, [SPIKE], 800, 300))
    without = decode(render_timeline(POINTS, [], 800, 300))
    assert count_colour(without, SPIKE_COLOUR) == 0
    layout = chart_layout(POINTS, [SPIKE], 800, 300)
    x = round(layout.x_of(POINTS[5].at_ms))
    column = [
        with_spike.getpixel((xx, y)) for xx in (x - 1, x, x + 1) for y in range(layout.top, layout.bottom)
    ]
    assert column.count(SPIKE_COLOUR) > 40  # the dashed line and the triangle under the dot


def test_an_agent_only_call_has_no_customer_series() -> None:
    agent_only = [p for p in POINTS if p.channel == "agent"]
    image = decode(render_timeline(agent_only, [], 640, 240))
    assert count_colour(image, CUSTOMER) == 0 and count_colour(image, AGENT) > 20


def test_a_call_with_no_events_still_renders_an_empty_chart_with_a_note() -> None:
    image = decode(render_timeline([], [], 400, 200))
    assert image.size == (400, 200)
    assert count_colour(image, CUSTOMER) == 0 and count_colour(image, AGENT) == 0
    layout = chart_layout([], [], 400, 200)
    # The note sits in the middle of the plot area: dark text pixels there.
    middle = image.crop((layout.left + 60, int(layout.y_of(0.6)), layout.right - 60, int(layout.y_of(0.4))))
    assert count_colour(middle, TEXT_COLOUR) > 10


@pytest.mark.parametrize(("width", "height"), [(MAX_WIDTH + 1, 300), (800, MIN_HEIGHT - 1), (0, 0)])
def test_a_size_out_of_bounds_is_refused(width: int, height: int) -> None:
    with pytest.raises(ValueError, match="out of bounds"):
        render_timeline(POINTS, [], width, height)


def test_long_calls_get_round_ticks_and_hour_times() -> None:
    assert tick_label(0) == "0:00"
    assert tick_label(65_999) == "1:05"
    assert tick_label(3_723_000) == "1:02:03"
    assert tick_step_ms(42_000, 10) == 5_000
    assert tick_step_ms(40 * 60_000, 12) == 300_000
    layout = chart_layout(POINTS, [], 960, 360)
    assert layout.end_ms % layout.tick_ms == 0 and layout.end_ms >= POINTS[-1].end_ms


def test_spikes_are_read_from_a_stored_summary_and_junk_is_left_out() -> None:
    summary = {
        "lines": ["..."],
        "spikes": [
            {"at_ms": 16_500, "utterance_id": 5, "channel": "customer", "score": 0.08, "topic": "pricing"},
            {"at_ms": "soon", "utterance_id": 6},
            {"utterance_id": 7},
            "not a spike",
            {"at_ms": 20_000, "utterance_id": True, "score": None},
        ],
    }
    assert spikes_from_summary(summary) == [
        TimelineSpike(at_ms=16_500, utterance_id=5, score=0.08, topic="pricing"),
        TimelineSpike(at_ms=20_000, utterance_id=None, score=None, topic=""),
    ]
    assert spikes_from_summary(None) == []
    assert spikes_from_summary({"lines": ["written before spikes existed"]}) == []
    assert spikes_from_summary({"spikes": "nope"}) == []
