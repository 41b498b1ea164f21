// The daily report page: GET /v1/reports/daily for a day (and a tenant), as a table of teams and agents.

import { RED_LINE, el, formatScore, getJson, scoreColour } from "/static/common.js";

const ui = {
  form: document.getElementById("pick"),
  date: document.getElementById("date"),
  tenant: document.getElementById("tenant"),
  status: document.getElementById("status"),
  error: document.getElementById("error"),
  result: document.getElementById("result"),
  title: document.getElementById("report-title"),
  rows: document.getElementById("rows"),
};

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
  return el(
    "tr",
    {
      class: [isTeam ? "team" : "agent", alarming ? "alarming" : ""].filter(Boolean).join(" "),
      "data-testid": isTeam ? "team-row" : "agent-row",
      "data-team": row.team,
      "data-agent": row.agent,
    },
    el("th", { scope: "row", text: name }),
    el("td", { class: "num", text: String(row.calls) }),
    el("td", { class: "num", text: String(row.customer_utterances) }),
    sentiment,
    el("td", { class: "num", "data-testid": "negative-rate", text: percent(row.negative_rate) }),
  );
}

async function show(day, tenant) {
  ui.error.hidden = true;
  ui.result.hidden = true;
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
