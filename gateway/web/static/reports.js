// The daily report page: GET /v1/reports/daily for a day (and a tenant), as a table of teams and agents.

import { RED_LINE, RED_LINE_COLOUR, el, formatScore, getJson, scoreColour, svg } from "./common.js";

const TREND_DAYS = 30;
const BOX = { left: 44, top: 16, right: 944, bottom: 190 };

const ui = {
  form: document.getElementById("pick"),
  date: document.getElementById("date"),
  tenant: document.getElementById("tenant"),
  status: document.getElementById("status"),
  error: document.getElementById("error"),
  result: document.getElementById("result"),
  title: document.getElementById("report-title"),
  rows: document.getElementById("rows"),
  trendPanel: document.getElementById("trend-panel"),
  trendTitle: document.getElementById("trend-title"),
  trend: document.getElementById("trend"),
  trendNote: document.getElementById("trend-note"),
  driftPanel: document.getElementById("drift-panel"),
  driftTitle: document.getElementById("drift-title"),
  driftVerdict: document.getElementById("drift-verdict"),
  driftRows: document.getElementById("drift-rows"),
};

// The drift indicators (GET /v1/reports/drift) and their statuses, as people read them.
const DRIFT_NAMES = {
  token_length: "Tokens per utterance",
  stop_word_ratio: "Stop-word ratio",
  oov_rate: "Words outside the training vocabulary",
  negative_share: "Negative share",
  neutral_share: "Neutral share",
  positive_share: "Positive share",
  mean_confidence: "Mean confidence",
};
const DRIFT_STATUS = {
  drift: "drift",
  unusual: "unusual (alone: not a drift)",
  usual: "usual",
  learning: "learning (too few days yet)",
  little_data: "too few utterances",
};

function shiftDay(day, days) {
  const date = new Date(`${day}T00:00:00Z`);
  date.setUTCDate(date.getUTCDate() + days);
  return date.toISOString().slice(0, 10);
}

/** The negative rate of one team or agent, day by day, with the 30 % line. */
function drawTrend(first, last, days) {
  const span = (Date.parse(`${last}T00:00:00Z`) - Date.parse(`${first}T00:00:00Z`)) / 86400000 || 1;
  const x = (day) => BOX.left + ((Date.parse(`${day}T00:00:00Z`) - Date.parse(`${first}T00:00:00Z`)) / 86400000 / span) * (BOX.right - BOX.left);
  const y = (rate) => BOX.bottom - rate * (BOX.bottom - BOX.top);
  const nodes = [svg("rect", { x: BOX.left, y: BOX.top, width: BOX.right - BOX.left, height: BOX.bottom - BOX.top, class: "plot" })];
  for (const rate of [0, 0.5, 1]) {
    nodes.push(svg("line", { x1: BOX.left, x2: BOX.right, y1: y(rate), y2: y(rate), class: "grid" }));
    nodes.push(svg("text", { x: BOX.left - 6, y: y(rate) + 4, "text-anchor": "end", class: "tick" }, `${rate * 100} %`));
  }
  nodes.push(svg("line", { x1: BOX.left, x2: BOX.right, y1: y(RED_LINE), y2: y(RED_LINE), stroke: RED_LINE_COLOUR, "stroke-dasharray": "6 4" }));
  for (const day of [first, last]) {
    nodes.push(svg("text", { x: x(day), y: BOX.bottom + 20, "text-anchor": day === first ? "start" : "end", class: "tick" }, day));
  }
  const points = days.filter((d) => typeof d.negative_rate === "number");
  if (points.length > 1) {
    nodes.push(svg("polyline", { points: points.map((d) => `${x(d.day)},${y(d.negative_rate)}`).join(" "), fill: "none", stroke: "#1c7ed6", "stroke-width": 2 }));
  }
  for (const d of points) {
    const dot = svg("circle", { cx: x(d.day), cy: y(d.negative_rate), r: 5, fill: d.negative_rate > RED_LINE ? RED_LINE_COLOUR : "#1c7ed6", "data-testid": "trend-point", "data-day": d.day });
    dot.append(svg("title", {}, `${d.day}: ${percent(d.negative_rate)} negative, ${d.calls} calls`));
    nodes.push(dot);
  }
  ui.trend.replaceChildren(...nodes);
  return points.length;
}

async function showTrend(row, last) {
  const first = shiftDay(last, 1 - TREND_DAYS);
  const query = new URLSearchParams({ from: first, to: last, tenant: row.tenant, team: row.team, agent: row.agent });
  const who = row.agent ? `${row.agent} (${row.team || "no team"})` : row.team || "(no team)";
  ui.trendTitle.textContent = `${who}: negative rate, ${first} to ${last}`;
  ui.trendPanel.hidden = false;
  try {
    const trend = await getJson(`/v1/reports/trend?${query}`);
    const shown = drawTrend(first, last, trend.days.filter((d) => d.region === row.region));
    const missing = trend.missing_days.length;
    ui.trendNote.textContent = `${shown} day${shown === 1 ? "" : "s"} with customer utterances` +
      (missing ? `; ${missing} day${missing === 1 ? "" : "s"} not rolled up yet.` : ".");
  } catch (err) {
    ui.trend.replaceChildren();
    ui.trendNote.textContent = `Trend unavailable: ${err.message}`;
  }
}

function yesterday() {
  const day = new Date(Date.now() - 24 * 3600 * 1000);
  return day.toISOString().slice(0, 10);
}

function percent(rate) {
  return typeof rate === "number" ? `${(rate * 100).toFixed(1)} %` : "–";
}

function rowOf(row) {
  const isTeam = row.agent === "";
  const name = isTeam
    ? [row.team || "(no team)", row.tenant && `· ${row.tenant}`, row.region && `· ${row.region}`].filter(Boolean).join(" ")
    : row.agent;
  const alarming = isTeam && typeof row.negative_rate === "number" && row.negative_rate > RED_LINE;
  const sentiment = el("td", { class: "num", text: formatScore(row.avg_sentiment) });
  if (typeof row.avg_sentiment === "number") sentiment.style.background = scoreColour(row.avg_sentiment);
  const tr = el(
    "tr",
    {
      class: [isTeam ? "team" : "agent", alarming ? "alarming" : ""].filter(Boolean).join(" "),
      "data-testid": isTeam ? "team-row" : "agent-row",
      "data-team": row.team,
      "data-agent": row.agent,
      tabindex: "0",
    },
    el("th", { scope: "row", text: name }),
    el("td", { class: "num", text: String(row.calls) }),
    el("td", { class: "num", text: String(row.customer_utterances) }),
    sentiment,
    el("td", { class: "num", "data-testid": "negative-rate", text: percent(row.negative_rate) }),
  );
  const open = () => showTrend(row, row.day);
  tr.addEventListener("click", open);
  tr.addEventListener("keydown", (event) => {
    if (event.key === "Enter") open();
  });
  return tr;
}

function driftValue(name, value) {
  if (typeof value !== "number") return "–";
  return name === "token_length" ? value.toFixed(1) : percent(value);
}

function driftRowOf(check, region) {
  const usual = typeof check.trailing_mean === "number"
    ? `${driftValue(check.name, check.trailing_mean)} ± ${driftValue(check.name, check.trailing_sd)} (${check.trailing_days} days)`
    : "–";
  return el(
    "tr",
    { class: check.status === "drift" ? "alarming" : "", "data-testid": "drift-row", "data-indicator": check.name },
    el("th", { scope: "row", text: `${DRIFT_NAMES[check.name] ?? check.name}${region ? ` · ${region}` : ""}` }),
    el("td", { class: "num", "data-testid": "drift-value", text: driftValue(check.name, check.value) }),
    el("td", { class: "num", text: usual }),
    el("td", { class: "num", text: driftValue(check.name, check.baseline) }),
    el("td", { "data-testid": "drift-status", text: DRIFT_STATUS[check.status] ?? check.status }),
  );
}

/** The tenant's drift of the day; hidden when there is none to show (or the key does not reach it). */
async function showDrift(day, tenant) {
  const query = new URLSearchParams({ date: day });
  if (tenant) query.set("tenant", tenant);
  let report;
  try {
    report = await getJson(`/v1/reports/drift?${query}`);
  } catch {
    // 403: an agent's or a manager's key (drift covers the whole tenant); 404: the daily report says why.
    ui.driftPanel.hidden = true;
    return;
  }
  if (!report.days.length) {
    ui.driftPanel.hidden = true;
    return;
  }
  ui.driftTitle.textContent = `Drift on ${report.date}: what the model was asked to score`;
  const drifting = report.days.filter((d) => d.drifting);
  const verdicts = report.days.map((d) => {
    const where = d.region ? ` (${d.region})` : "";
    if (!d.drifting) return `No drift${where}: ${d.utterances} utterances within the usual.`;
    const names = d.indicators.filter((i) => i.status === "drift").map((i) => (DRIFT_NAMES[i.name] ?? i.name).toLowerCase());
    return `Drift${where}: ${names.join(", ")} moved away from the usual.` + (d.alerted ? " Posted to Slack." : "");
  });
  ui.driftVerdict.textContent = verdicts.join(" ");
  ui.driftVerdict.className = `drift-verdict${drifting.length ? " alarming" : ""}`;
  ui.driftRows.replaceChildren(...report.days.flatMap((d) => d.indicators.map((check) => driftRowOf(check, d.region))));
  ui.driftPanel.hidden = false;
}

async function show(day, tenant) {
  ui.error.hidden = true;
  ui.result.hidden = true;
  ui.trendPanel.hidden = true;
  ui.driftPanel.hidden = true;
  ui.status.textContent = `Loading ${day}…`;
  const query = new URLSearchParams({ date: day });
  if (tenant) query.set("tenant", tenant);
  history.replaceState(null, "", `/reports?${query}`);
  try {
    const report = await getJson(`/v1/reports/daily?${query}`);
    ui.title.textContent = `${report.date}${tenant ? ` · ${tenant}` : ""}`;
    ui.rows.replaceChildren(
      ...(report.rows.length
        ? report.rows.map(rowOf)
        : [el("tr", {}, el("td", { colspan: "5", class: "muted", text: "No calls that day." }))]),
    );
    ui.result.hidden = false;
    ui.status.textContent = `Rolled up ${new Date(report.rolled_up_at).toLocaleString()}.`;
    await showDrift(day, tenant);
  } catch (err) {
    ui.status.textContent = "";
    ui.error.textContent = err.message;
    ui.error.hidden = false;
  }
}

ui.form.addEventListener("submit", (event) => {
  event.preventDefault();
  show(ui.date.value, ui.tenant.value.trim());
});

const params = new URLSearchParams(location.search);
ui.date.value = params.get("date") || yesterday();
ui.tenant.value = params.get("tenant") || "";
show(ui.date.value, ui.tenant.value.trim());
