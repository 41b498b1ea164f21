// The sentiment timeline as inline SVG: the same chart as GET /v1/calls/{id}/timeline.png
// (gateway/web/timeline.py): x call time, y score 0..1, the 0.30 red line, one series per channel,
// spikes marked. Points and spike markers call `onPick(utteranceId)` when clicked.

import { CHANNEL_COLOURS, formatCallTime, formatScore, RED_LINE, RED_LINE_COLOUR, SPIKE_COLOUR, svg } from "./common.js";

const WIDTH = 960;
const HEIGHT = 320;
const BOX = { left: 44, top: 34, right: WIDTH - 16, bottom: HEIGHT - 28 };
const TICK_STEPS_S = [1, 2, 5, 10, 15, 30, 60, 120, 300, 600, 900, 1800, 3600, 7200];

function tickStepMs(spanMs, maxTicks) {
  for (const stepS of TICK_STEPS_S) if (spanMs / (stepS * 1000) <= Math.max(maxTicks, 1)) return stepS * 1000;
  return TICK_STEPS_S[TICK_STEPS_S.length - 1] * 1000;
}

const midpoint = (event) => Math.floor((event.start_ms + event.end_ms) / 2);

/** Draws `events` (scored utterances) and `spikes` (the summary's) into the <svg> element `root`. */
export function drawTimeline(root, events, spikes, onPick) {
  const lastMs = Math.max(1000, ...events.map((e) => e.end_ms), ...spikes.map((s) => s.at_ms));
  const tickMs = tickStepMs(lastMs, Math.floor((BOX.right - BOX.left) / 70));
  const endMs = Math.ceil(lastMs / tickMs) * tickMs;
  const x = (ms) => BOX.left + ((BOX.right - BOX.left) * Math.min(Math.max(ms, 0), endMs)) / endMs;
  const y = (score) => BOX.bottom - (BOX.bottom - BOX.top) * Math.min(Math.max(score, 0), 1);

  root.replaceChildren();
  root.setAttribute("viewBox", `0 0 ${WIDTH} ${HEIGHT}`);
  root.setAttribute("role", "img");
  root.setAttribute(
    "aria-label",
    `Sentiment timeline: ${events.length} scored utterances over ${formatCallTime(lastMs)}, ${spikes.length} spikes`,
  );
  root.append(svg("rect", { x: BOX.left, y: BOX.top, width: BOX.right - BOX.left, height: BOX.bottom - BOX.top, class: "plot" }));

  for (const score of [0, 0.25, 0.5, 0.75, 1]) {
    root.append(svg("line", { x1: BOX.left, x2: BOX.right, y1: y(score), y2: y(score), class: "grid" }));
    root.append(svg("text", { x: BOX.left - 6, y: y(score) + 4, "text-anchor": "end", class: "tick" }, score.toFixed(2)));
  }
  for (let ms = 0; ms <= endMs; ms += tickMs) {
    root.append(svg("line", { x1: x(ms), x2: x(ms), y1: BOX.top, y2: BOX.bottom, class: "grid" }));
    root.append(svg("text", { x: x(ms), y: BOX.bottom + 18, "text-anchor": "middle", class: "tick" }, formatCallTime(ms)));
  }
  root.append(
    svg("line", {
      x1: BOX.left, x2: BOX.right, y1: y(RED_LINE), y2: y(RED_LINE),
      stroke: RED_LINE_COLOUR, "stroke-width": 1.5, "stroke-dasharray": "6 6", "data-testid": "timeline-red-line",
    }),
  );

  if (events.length === 0) {
    root.append(svg("text", { x: (BOX.left + BOX.right) / 2, y: (BOX.top + BOX.bottom) / 2, "text-anchor": "middle", class: "note" }, "No scored utterances yet"));
  }
  // Spikes under the series: a spike's line must not hide its dot.
  const byId = new Map(events.map((e) => [e.utterance_id, e]));
  for (const spike of spikes) drawSpike(root, spike, byId.get(spike.utterance_id), x, y, onPick);
  const channels = Object.keys(CHANNEL_COLOURS).filter((c) => events.some((e) => e.channel === c));
  for (const channel of channels) drawSeries(root, events.filter((e) => e.channel === channel), channel, x, y, onPick);
  drawLegend(root, channels, spikes.length > 0);
}

function drawSeries(root, events, channel, x, y, onPick) {
  const colour = CHANNEL_COLOURS[channel];
  const sorted = [...events].sort((a, b) => midpoint(a) - midpoint(b));
  const group = svg("g", { class: `series series-${channel}`, "data-testid": `timeline-series-${channel}` });
  group.append(
    svg("polyline", {
      points: sorted.map((e) => `${x(midpoint(e)).toFixed(1)},${y(e.score).toFixed(1)}`).join(" "),
      fill: "none", stroke: colour, "stroke-width": 2,
    }),
  );
  for (const event of sorted) {
    const point = svg("circle", {
      cx: x(midpoint(event)).toFixed(1), cy: y(event.score).toFixed(1), r: 5, fill: colour,
      class: "point", "data-testid": "timeline-point", "data-utterance-id": event.utterance_id, "data-channel": channel,
    });
    point.append(svg("title", {}, `${formatCallTime(event.start_ms)} ${channel} ${formatScore(event.score)}: ${event.text}`));
    point.addEventListener("click", () => onPick(event.utterance_id));
    group.append(point);
  }
  root.append(group);
}

function drawSpike(root, spike, event, x, y, onPick) {
  // Under its utterance's dot when the utterance is known (a dot sits mid-utterance, at_ms may not).
  const cx = x(event ? midpoint(event) : spike.at_ms);
  const score = typeof spike.score === "number" ? spike.score : event?.score ?? RED_LINE;
  const tip = y(score) + 7;
  const group = svg("g", { class: "spike", "data-testid": "timeline-spike", "data-utterance-id": spike.utterance_id ?? "" });
  group.append(svg("line", { x1: cx, x2: cx, y1: BOX.top, y2: BOX.bottom, stroke: SPIKE_COLOUR, "stroke-dasharray": "4 4" }));
  group.append(svg("polygon", { points: `${cx},${tip} ${cx - 6},${tip + 10} ${cx + 6},${tip + 10}`, fill: SPIKE_COLOUR }));
  if (spike.topic) group.append(svg("text", { x: cx + 4, y: BOX.top + 12, fill: SPIKE_COLOUR, class: "spike-topic" }, spike.topic));
  group.append(svg("title", {}, `spike at ${formatCallTime(spike.at_ms)}${spike.topic ? ` (${spike.topic})` : ""}`));
  if (typeof spike.utterance_id === "number") group.addEventListener("click", () => onPick(spike.utterance_id));
  root.append(group);
}

function drawLegend(root, channels, withSpikes) {
  let left = BOX.left;
  const item = (mark, label) => {
    root.append(mark(left));
    root.append(svg("text", { x: left + 24, y: 18, class: "legend" }, label));
    left += 24 + label.length * 7 + 18;
  };
  for (const channel of channels) {
    item((at) => svg("line", { x1: at, x2: at + 18, y1: 14, y2: 14, stroke: CHANNEL_COLOURS[channel], "stroke-width": 2 }), channel);
  }
  item((at) => svg("line", { x1: at, x2: at + 18, y1: 14, y2: 14, stroke: RED_LINE_COLOUR, "stroke-width": 1.5, "stroke-dasharray": "5 3" }), `${RED_LINE.toFixed(2)} red line`);
  if (withSpikes) item((at) => svg("polygon", { points: `${at + 9},8 ${at + 3},19 ${at + 15},19`, fill: SPIKE_COLOUR }), "spike");
}
