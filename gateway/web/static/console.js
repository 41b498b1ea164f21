// The agent console: drive a call from the microphone, or watch a live call, over the gateway's
// WebSocket (protocol: gateway/app.py). Shows the transcript coloured by score, the badge and the cues.

import {
  CALL_ID_PATTERN,
  el,
  formatCallTime,
  formatScore,
  getJson,
  scoreAccent,
  scoreBand,
  scoreColour,
  streamUrl,
} from "./common.js";
import { SAMPLE_RATE_HZ, startMicrophone } from "./microphone.js";

const MAX_PENDING_FRAMES = 40; // 2 s of audio kept while the call opens
const MAX_BUFFERED_BYTES = 1 << 20; // beyond 1 MB unsent, frames are dropped (and counted)
const MAX_CUES = 20;

const $ = (id) => document.getElementById(id);
const ui = {
  startForm: $("start-form"),
  callId: $("call-id"),
  agent: $("agent"),
  tenant: $("tenant"),
  role: $("role"),
  start: $("start-mic"),
  stop: $("stop"),
  joinForm: $("join-form"),
  joinId: $("join-id"),
  join: $("join"),
  liveCalls: $("live-calls"),
  refreshLive: $("refresh-live"),
  status: $("status"),
  error: $("error"),
  badge: $("badge"),
  badgeState: document.querySelector("[data-testid=badge-state]"),
  badgeScore: document.querySelector("[data-testid=badge-score]"),
  cues: $("cues"),
  transcript: $("transcript"),
  hearing: $("hearing"),
  scroll: $("transcript-scroll"),
  summary: $("summary"),
  summaryLines: $("summary-lines"),
  reviewLink: $("review-link"),
};

/** The one connection of the page: {socket, callId, mode: "drive"|"watch", mic, started, ...}. */
let connection = null;
const segments = new Map(); // "channel:segment_id" -> row of a segment being recognised

// ------------------------------------------------------------------------------------------ view

function setStatus(text) {
  ui.status.textContent = text;
}

function showError(text) {
  ui.error.textContent = text;
  ui.error.hidden = false;
}

function clearError() {
  ui.error.textContent = "";
  ui.error.hidden = true;
}

function setControls(active) {
  ui.start.disabled = active;
  ui.join.disabled = active;
  ui.stop.disabled = !(active && connection?.mode === "drive");
}

function resetView() {
  ui.transcript.replaceChildren();
  ui.hearing.replaceChildren();
  ui.cues.replaceChildren();
  ui.summaryLines.replaceChildren();
  ui.summary.hidden = true;
  segments.clear();
  setBadge("amber", null, null);
}

function setBadge(state, rollingScore, atMs) {
  ui.badge.dataset.state = state;
  ui.badgeState.textContent = state.charAt(0).toUpperCase() + state.slice(1);
  ui.badgeScore.textContent =
    rollingScore === null || rollingScore === undefined
      ? "every call starts amber"
      : `rolling ${formatScore(rollingScore)} at ${formatCallTime(atMs ?? 0)}`;
}

function keepScrolledToEnd(action) {
  const box = ui.scroll;
  const atEnd = box.scrollHeight - box.scrollTop - box.clientHeight < 40;
  action();
  if (atEnd) box.scrollTop = box.scrollHeight;
}

function meta(startMs, channel) {
  return [
    el("span", { class: "time", text: formatCallTime(startMs) }),
    el("span", { class: `channel channel-${channel}`, text: channel }),
  ];
}

// ------------------------------------------------------------------------------------------ events

function onTranscript(event) {
  const key = `${event.channel}:${event.segment_id}`;
  let row = segments.get(key);
  if (!row) {
    row = el("li", { class: "row pending", "data-testid": "transcript-partial", "data-channel": event.channel });
    segments.set(key, row);
    keepScrolledToEnd(() => ui.hearing.append(row));
  }
  row.dataset.final = String(event.is_final);
  row.dataset.startMs = String(event.start_ms);
  if (event.is_final && !event.text) {
    segments.delete(key);
    if (!event.unheard_reason) {
      row.remove(); // what the partials showed was not speech after all
      return;
    }
    // A turn with speech that nothing could transcribe: say so where the transcript is, unscored.
    row.className = "row unheard";
    row.dataset.testid = "transcript-unheard";
    row.replaceChildren(
      ...meta(event.start_ms, event.channel),
      el("span", { class: "text", text: `(not transcribed: ${event.unheard_reason})` }),
    );
    keepScrolledToEnd(() => ui.transcript.append(row));
    return;
  }
  row.replaceChildren(
    ...meta(event.start_ms, event.channel),
    el("span", { class: "text", text: event.text }),
    ...provisionalMood(row),
  );
}

// The mood of a turn still being spoken (a "provisional" event), greyed beside its partial: the badge and
// the cues wait for the final, and so does the row's colour.
function provisionalMood(row) {
  if (row.dataset.mood === undefined) return [];
  const score = Number(row.dataset.mood);
  return [
    el("span", {
      class: "mood",
      "data-testid": "provisional-mood",
      "data-band": scoreBand(score),
      title: `${row.dataset.moodLabel} so far (provisional: the words heard until now)`,
      text: `~${formatScore(score)}`,
    }),
  ];
}

function onProvisional(event) {
  const row = segments.get(`${event.channel}:${event.segment_id}`);
  if (!row || row.dataset.final === "true") return; // its final came first: the score follows
  row.dataset.mood = String(event.score);
  row.dataset.moodLabel = event.label;
  row.querySelector(".mood")?.remove();
  row.append(...provisionalMood(row));
}

function onScore(event) {
  // The scored utterance stands for the recognised segments it came from: they leave "being recognised".
  for (const [key, row] of segments) {
    if (row.dataset.final === "true" && row.dataset.channel === event.channel && Number(row.dataset.startMs) <= event.end_ms) {
      row.remove();
      segments.delete(key);
    }
  }
  const row = el("li", {
    class: "row scored",
    id: `u-${event.utterance_id}`,
    "data-testid": "transcript-row",
    "data-utterance-id": event.utterance_id,
    "data-channel": event.channel,
    "data-score": event.score.toFixed(3),
    "data-band": scoreBand(event.score),
    title: `${event.label}: score ${formatScore(event.score)}`,
  });
  row.style.background = scoreColour(event.score);
  row.style.borderLeftColor = scoreAccent(event.score);
  row.append(
    ...meta(event.start_ms, event.channel),
    el("span", { class: "text", text: event.text }),
    el("span", { class: "score", text: formatScore(event.score) }),
  );
  keepScrolledToEnd(() => ui.transcript.append(row));
}

function onCue(event) {
  const item = el(
    "li",
    { class: "cue", "data-testid": "cue", "data-topic": event.topic },
    el("span", { class: "cue-topic", text: event.topic }),
    el("span", { class: "cue-text", text: event.text }),
    el("span", { class: "time", text: formatCallTime(event.at_ms) }),
  );
  ui.cues.prepend(item);
  while (ui.cues.children.length > MAX_CUES) ui.cues.lastElementChild.remove();
}

function onSummary(conn, event) {
  conn.finished = true;
  ui.summaryLines.replaceChildren(...(event.lines ?? []).map((line) => el("li", { text: line })));
  ui.reviewLink.href = `/review/${encodeURIComponent(event.call_id)}`;
  ui.summary.hidden = false;
  if (event.badge) ui.badge.dataset.state = event.badge;
  setStatus(`Call ${event.call_id} ${event.status} (${event.reason}).`);
  endConnection();
}

function onError(conn, event) {
  showError(event.message);
  if (event.fatal || (conn.mode === "drive" && !conn.started)) {
    // The call could not start (or cannot go on): nothing more will come on this connection.
    if (!conn.started) setStatus("Not connected.");
    stopMicrophone(conn);
    if (!conn.started && conn.mode === "drive") endConnection();
  }
}

function handleEvent(conn, event) {
  switch (event.type) {
    case "started":
      conn.started = true;
      setStatus(`Call ${event.call_id} is live${conn.mic ? ": speak now" : ""}.`);
      for (const frame of conn.pending.splice(0)) sendFrame(conn, frame);
      break;
    case "watching":
      conn.started = true;
      setStatus(`Watching call ${event.call_id}.`);
      break;
    case "transcript":
      onTranscript(event);
      break;
    case "provisional":
      onProvisional(event);
      break;
    case "score":
      onScore(event);
      break;
    case "badge":
      setBadge(event.state, event.rolling_score, event.at_ms);
      break;
    case "cue":
      onCue(event);
      break;
    case "summary":
      onSummary(conn, event);
      break;
    case "error":
      onError(conn, event);
      break;
    default:
      break; // newer servers may send more event types
  }
}

// ------------------------------------------------------------------------------------------ connection

function connect(callId, mode, firstMessage) {
  endConnection();
  const socket = new WebSocket(streamUrl(callId));
  socket.binaryType = "arraybuffer";
  const conn = { socket, callId, mode, mic: null, started: false, finished: false, pending: [], dropped: 0 };
  connection = conn;
  setControls(true);
  socket.addEventListener("open", () => socket.send(JSON.stringify(firstMessage)));
  socket.addEventListener("message", (message) => {
    if (typeof message.data === "string") handleEvent(conn, JSON.parse(message.data));
  });
  socket.addEventListener("close", () => {
    stopMicrophone(conn);
    if (connection !== conn) return;
    connection = null;
    setControls(false);
    if (!conn.finished) setStatus(conn.started ? `Disconnected from call ${callId}.` : "Not connected.");
  });
  socket.addEventListener("error", () => {
    if (connection === conn && !conn.finished) showError("The connection to the gateway failed.");
  });
  return conn;
}

function endConnection() {
  const conn = connection;
  if (!conn) return;
  connection = null;
  stopMicrophone(conn);
  if (conn.socket.readyState <= WebSocket.OPEN) conn.socket.close(1000);
  setControls(false);
}

function stopMicrophone(conn) {
  if (conn.mic) {
    conn.mic.stop();
    conn.mic = null;
  }
}

function sendFrame(conn, frame) {
  if (conn.finished || (conn.started && conn.socket.readyState !== WebSocket.OPEN)) return;
  if (!conn.started) {
    conn.pending.push(frame);
    if (conn.pending.length > MAX_PENDING_FRAMES) conn.pending.shift();
  } else if (conn.socket.bufferedAmount > MAX_BUFFERED_BYTES) {
    conn.dropped += 1; // the network is slower than speech: better a gap than a growing delay
  } else {
    conn.socket.send(frame);
  }
}

// ------------------------------------------------------------------------------------------ actions

function readCallId(input) {
  const callId = input.value.trim();
  if (!CALL_ID_PATTERN.test(callId)) {
    showError("The call id must be 1-128 characters of letters, digits and . _ : -");
    input.focus();
    return null;
  }
  return callId;
}

async function startWithMicrophone(submit) {
  submit.preventDefault();
  clearError();
  const callId = readCallId(ui.callId);
  if (!callId) return;
  endConnection();
  resetView();
  setControls(true);
  setStatus("Asking for the microphone…");
  let conn = null;
  let mic;
  try {
    mic = await startMicrophone((frame) => conn && sendFrame(conn, frame));
  } catch (err) {
    setControls(false);
    setStatus("Not connected.");
    showError(`The microphone could not be started: ${err.message}`);
    return;
  }
  conn = connect(callId, "drive", {
    type: "start",
    call_id: callId,
    metadata: { agent: ui.agent.value.trim(), tenant: ui.tenant.value.trim() },
    audio: {
      encoding: "pcm16",
      sample_rate_hz: SAMPLE_RATE_HZ,
      channels: 1,
      channel_roles: [ui.role.value],
    },
  });
  conn.mic = mic;
  setControls(true);
  setStatus(`Opening call ${callId}…`);
}

function stopCall() {
  const conn = connection;
  if (!conn || conn.mode !== "drive") return;
  stopMicrophone(conn);
  if (conn.socket.readyState === WebSocket.OPEN) conn.socket.send(JSON.stringify({ type: "stop" }));
  ui.stop.disabled = true;
  setStatus(`Stopping call ${conn.callId}: waiting for its summary…`);
}

function join(callId) {
  clearError();
  endConnection();
  resetView();
  connect(callId, "watch", { type: "watch", call_id: callId });
  setStatus(`Joining call ${callId}…`);
}

async function refreshLiveCalls() {
  try {
    const body = await getJson("/v1/calls?status=live");
    const items = body.calls.map((call) =>
      el(
        "li",
        { "data-testid": "live-call", "data-call-id": call.call_id },
        el("span", { class: "live-id", text: call.call_id }),
        el("span", { class: "muted", text: [call.agent, call.tenant].filter(Boolean).join(" · ") }),
        joinButton(call.call_id),
      ),
    );
    ui.liveCalls.replaceChildren(...(items.length ? items : [el("li", { class: "muted", text: "No live calls right now." })]));
  } catch (err) {
    ui.liveCalls.replaceChildren(el("li", { class: "muted", text: `Live calls unavailable: ${err.message}` }));
  }
}

function joinButton(callId) {
  const button = el("button", { type: "button", class: "small", "data-testid": "join-live-call", text: "Join" });
  button.setAttribute("aria-label", `Join call ${callId}`);
  button.addEventListener("click", () => {
    ui.joinId.value = callId;
    join(callId);
  });
  return button;
}

function init() {
  ui.callId.value = `web-${new Date().toISOString().slice(0, 19).replace(/[-T:]/g, "")}-${Math.random().toString(36).slice(2, 6)}`;
  ui.startForm.addEventListener("submit", startWithMicrophone);
  ui.stop.addEventListener("click", stopCall);
  ui.joinForm.addEventListener("submit", (submit) => {
    submit.preventDefault();
    const callId = readCallId(ui.joinId);
    if (callId) join(callId);
  });
  ui.refreshLive.addEventListener("click", refreshLiveCalls);
  refreshLiveCalls();
  const wanted = new URLSearchParams(location.search).get("join");
  if (wanted && CALL_ID_PATTERN.test(wanted)) {
    ui.joinId.value = wanted;
    join(wanted);
  }
  document.body.dataset.ready = "true";
}

init();
