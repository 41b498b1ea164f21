// The review page of one call (/review/{call_id}): GET /v1/calls/{id}, then the timeline, the summary's
// spikes, turning points, objection tags, lines and quarters, and the transcript. A moment clicked
// anywhere scrolls to and highlights its transcript row, and the URL hash (#u-<utterance_id>) keeps it.

import { drawTimeline } from "./chart.js";
import {
  el,
  formatCallTime,
  formatScore,
  getJson,
  scoreAccent,
  scoreBand,
  scoreColour,
} from "./common.js";

const $ = (id) => document.getElementById(id);
const HASH = /^#u-(\d+)$/;

function callIdFromPath() {
  const parts = location.pathname.split("/");
  return decodeURIComponent(parts[parts.length - 1] || "");
}

function isNumber(value) {
  return typeof value === "number" && Number.isFinite(value);
}

/** The summary's list under `key`, or null when the summary has none (written before it existed). */
function summaryList(summary, key) {
  return summary && Array.isArray(summary[key]) ? summary[key] : null;
}

// ------------------------------------------------------------------------------------------ jumping

function jumpTo(utteranceId, { updateHash = true } = {}) {
  const row = $(`u-${utteranceId}`);
  if (!row) {
    setStatus(`Utterance ${utteranceId} is not in this call's transcript.`);
    return;
  }
  for (const old of document.querySelectorAll(".row.highlighted")) {
    old.classList.remove("highlighted");
    old.removeAttribute("aria-current");
  }
  for (const old of document.querySelectorAll("#timeline .point.selected")) old.classList.remove("selected");
  row.classList.add("highlighted");
  row.setAttribute("aria-current", "true");
  row.scrollIntoView({ block: "center" });
  row.focus({ preventScroll: true });
  document.querySelector(`#timeline .point[data-utterance-id="${utteranceId}"]`)?.classList.add("selected");
  if (updateHash) history.replaceState(null, "", `#u-${utteranceId}`);
}

function jumpToHash() {
  const match = HASH.exec(location.hash);
  if (match) jumpTo(Number(match[1]), { updateHash: false });
}

/** A button for one moment of the call: its time, what it is, a line of detail; jumps when clicked. */
function momentItem(testId, moment, label, detail) {
  const canJump = isNumber(moment.utterance_id);
  const button = el(
    "button",
    { type: "button", class: "moment", disabled: !canJump, "data-utterance-id": canJump ? moment.utterance_id : null },
    el("span", { class: "time", text: isNumber(moment.at_ms) ? formatCallTime(moment.at_ms) : "" }),
    el("span", { class: "label", text: label }),
  );
  if (canJump) button.addEventListener("click", () => jumpTo(moment.utterance_id));
  return el(
    "li",
    { "data-testid": testId, "data-utterance-id": canJump ? moment.utterance_id : null },
    button,
    detail ? el("p", { class: "detail", text: detail }) : null,
  );
}

function fillList(list, items, emptyText) {
  list.replaceChildren(...(items.length ? items : [el("li", { class: "muted", text: emptyText })]));
}

// ------------------------------------------------------------------------------------------ sections

function renderOverview(call) {
  const summary = call.summary ?? {};
  $("call-title").textContent = `Call ${call.call_id}`;
  const facts = [
    ["Status", summary.reason ? `${call.status} (${summary.reason})` : call.status],
    ["Agent", call.metadata.agent || "–"],
    ["Tenant", call.metadata.tenant || "–"],
    ["Started", new Date(call.started_at).toLocaleString()],
    ["Duration", isNumber(call.duration_s) ? formatCallTime(call.duration_s * 1000) : "–"],
    ["Utterances", String(call.stats.utterance_count)],
    ["Customer average", formatScore(call.stats.customer_avg_sentiment)],
    ["Agent average", formatScore(call.stats.agent_avg_sentiment)],
  ];
  const list = $("overview");
  list.replaceChildren();
  for (const [name, value] of facts) list.append(el("dt", { text: name }), el("dd", { text: value }));
  if (summary.badge) {
    list.append(
      el("dt", { text: "Final badge" }),
      el("dd", {}, el("span", { class: "chip", "data-state": summary.badge, "data-testid": "final-badge", text: summary.badge })),
    );
  }
  const id = encodeURIComponent(call.call_id);
  $("png-link").href = `/v1/calls/${id}/timeline.png`;
  const watch = $("watch-link");
  watch.hidden = call.status !== "live";
  watch.href = `/console?join=${id}`;
}

function renderSpikes(summary) {
  const spikes = summaryList(summary, "spikes");
  if (spikes === null) {
    fillList($("spikes"), [], summary ? "This call's summary lists no spikes." : "Spikes come with the summary, when the call ends.");
    return [];
  }
  const items = spikes.map((spike) => {
    const drop = isNumber(spike.drop) ? `, down ${formatScore(spike.drop)}` : "";
    const label = `${spike.topic || "general"} · ${spike.channel ?? "customer"} ${formatScore(spike.score)}${drop}`;
    return momentItem("spike", spike, label, spike.line || spike.text);
  });
  fillList($("spikes"), items, "No negative spikes: the mood never dropped below the red line.");
  return spikes.filter((s) => isNumber(s.at_ms));
}

function renderTurningPoints(summary) {
  const turns = summaryList(summary, "turning_points");
  if (turns === null) {
    fillList($("turning-points"), [], "No turning points in this call's summary.");
    return;
  }
  const items = turns.map((turn) => {
    const arrow = turn.direction === "up" ? "↑" : "↓";
    const label = `${arrow} ${formatScore(turn.from_score)} → ${formatScore(turn.to_score)} · ${turn.topic || "general"}`;
    return momentItem("turning-point", turn, label, turn.line);
  });
  fillList($("turning-points"), items, "No turning points: the mood held steady.");
}

function renderTags(call) {
  // The summary's tags carry times and utterances; the call's own list may hold just their names.
  const tags = summaryList(call.summary, "objection_tags") ?? call.objection_tags ?? [];
  const items = tags.map((tag) => {
    if (typeof tag === "string") return el("li", { "data-testid": "tag" }, el("span", { class: "chip", text: tag }));
    const moment = { ...tag, at_ms: tag.start_ms };
    const confidence = isNumber(tag.confidence) ? ` (${Math.round(tag.confidence * 100)}%)` : "";
    return momentItem("tag", moment, `${tag.tag}${confidence}`, tag.text);
  });
  fillList($("tags"), items, "No objections tagged.");
}

function renderSummaryLines(summary) {
  const lines = summaryList(summary, "lines") ?? [];
  fillList(
    $("summary-lines"),
    lines.map((line) => el("li", { text: line })),
    summary ? "No summary lines." : "The summary comes when the call ends.",
  );
}

function scoreCell(score) {
  const cell = el("td", { class: "score-cell", text: formatScore(score) });
  if (isNumber(score)) {
    cell.style.background = scoreColour(score);
    cell.style.borderLeft = `4px solid ${scoreAccent(score)}`;
  }
  return cell;
}

function renderQuarters(summary) {
  const table = $("quarters");
  const quarters = summaryList(summary, "quarters");
  table.replaceChildren();
  if (!quarters || quarters.length === 0) {
    table.append(el("caption", { class: "muted", text: "No quarter trend in this call's summary." }));
    return;
  }
  table.append(
    el("thead", {}, el("tr", {}, ...["Quarter", "Time", "Customer", "Agent", "Utterances"].map((h) => el("th", { scope: "col", text: h })))),
  );
  const body = el("tbody");
  for (const q of quarters) {
    body.append(
      el(
        "tr",
        { "data-testid": "quarter" },
        el("th", { scope: "row", text: `Q${q.quarter}` }),
        el("td", { text: `${formatCallTime(q.start_ms)}–${formatCallTime(q.end_ms)}` }),
        scoreCell(q.customer_avg),
        scoreCell(q.agent_avg),
        el("td", { text: String(q.utterances ?? "–") }),
      ),
    );
  }
  table.append(body);
}

/** The mark of an utterance whose score the voice's tone moved (the words alone said otherwise). */
function toneMark(event) {
  if (event.tone_moved !== true) return null;
  const arrow = event.score < event.text_score ? "▼" : "▲";
  return el("span", {
    class: "tone-mark",
    "data-testid": "tone-moved",
    title: `The voice moved this score: the words alone ${event.text_label} ${formatScore(event.text_score)}, with the tone ${event.label} ${formatScore(event.score)}`,
    text: `tone ${arrow} ${formatScore(event.text_score)}→${formatScore(event.score)}`,
  });
}

function renderTranscript(events) {
  const rows = events.map((event) => {
    const row = el(
      "li",
      {
        id: `u-${event.utterance_id}`,
        class: "row scored",
        tabindex: "-1",
        "data-testid": "transcript-row",
        "data-utterance-id": event.utterance_id,
        "data-channel": event.channel,
        "data-score": event.score.toFixed(3),
        "data-band": scoreBand(event.score),
        "data-tone-moved": event.tone_moved === true ? "true" : undefined,
        title: `${event.label}: score ${formatScore(event.score)}`,
      },
      el("span", { class: "time", text: formatCallTime(event.start_ms) }),
      el("span", { class: `channel channel-${event.channel}`, text: event.channel }),
      el("span", { class: "text", text: event.text }, toneMark(event)),
      el("span", { class: "score", text: formatScore(event.score) }),
    );
    row.style.background = scoreColour(event.score);
    row.style.borderLeftColor = scoreAccent(event.score);
    return row;
  });
  fillList($("transcript"), rows, "No scored utterances yet.");
}

// ------------------------------------------------------------------------------------------ page

function setStatus(text) {
  $("status").textContent = text;
}

async function main() {
  const callId = callIdFromPath();
  document.title = `Call ${callId} · callsense`;
  let call;
  try {
    call = await getJson(`/v1/calls/${encodeURIComponent(callId)}`);
  } catch (err) {
    setStatus("");
    const error = $("error");
    error.textContent = err.status === 404 ? `There is no call with id “${callId}”.` : `The call could not be loaded: ${err.message}`;
    error.hidden = false;
    document.body.dataset.ready = "error";
    return;
  }
  renderOverview(call);
  renderTranscript(call.events);
  const spikes = renderSpikes(call.summary);
  renderTurningPoints(call.summary);
  renderTags(call);
  renderSummaryLines(call.summary);
  renderQuarters(call.summary);
  drawTimeline($("timeline"), call.events, spikes, (utteranceId) => jumpTo(utteranceId));
  $("content").hidden = false;
  setStatus(call.status === "live" ? "This call is live: reload for what has been scored since." : "");
  jumpToHash();
  window.addEventListener("hashchange", jumpToHash);
  document.body.dataset.ready = "true";
}

main();
