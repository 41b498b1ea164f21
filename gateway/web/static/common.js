// Helpers shared by the console and the review page: colours, call time, the API's error bodies.

// The badge's red line (gateway/live.py BadgeSettings.red_enter): also the summary's spike line.
export const RED_LINE = 0.3;

// Series colours, the same as the PNG chart (gateway/web/timeline.py CHANNEL_COLOURS).
export const CHANNEL_COLOURS = { customer: "#1c7ed6", agent: "#0ca678", mixed: "#868e96" };
export const SPIKE_COLOUR = "#e8590c";
export const RED_LINE_COLOUR = "#e03131";

/** "low" below the red line, "high" from 0.6 on, else "mid": the row's colour band. */
export function scoreBand(score) {
  if (score < RED_LINE) return "low";
  return score >= 0.6 ? "high" : "mid";
}

/** A background on a red (0) - amber (0.5) - green (1) scale. */
export function scoreColour(score) {
  const hue = Math.round(Math.min(Math.max(score, 0), 1) * 120);
  return `hsl(${hue} 80% 90%)`;
}

/** A stronger shade of the same scale, for borders. */
export function scoreAccent(score) {
  const hue = Math.round(Math.min(Math.max(score, 0), 1) * 120);
  return `hsl(${hue} 70% 42%)`;
}

/** Call time as m:ss (h:mm:ss from an hour on). */
export function formatCallTime(ms) {
  const seconds = Math.floor(Math.max(ms, 0) / 1000);
  const hours = Math.floor(seconds / 3600);
  const minutes = Math.floor((seconds % 3600) / 60);
  const secs = String(seconds % 60).padStart(2, "0");
  return hours ? `${hours}:${String(minutes).padStart(2, "0")}:${secs}` : `${minutes}:${secs}`;
}

export function formatScore(score) {
  return typeof score === "number" && Number.isFinite(score) ? score.toFixed(2) : "–";
}

// The gateway's call ids: 1-128 characters of A-Z a-z 0-9 . _ : -
export const CALL_ID_PATTERN = /^[A-Za-z0-9._:-]{1,128}$/;

/** GET a JSON resource of the API; throws an Error whose message is the API's own explanation. */
export async function getJson(path) {
  let response;
  try {
    response = await fetch(path, { headers: { accept: "application/json" } });
  } catch (err) {
    throw new Error(`the gateway cannot be reached (${err.message})`);
  }
  if (response.status === 401) {
    // The session ended (or never began): sign in, then come back here.
    location.assign(`/signin?next=${encodeURIComponent(location.pathname + location.search)}`);
  }
  const body = await response.json().catch(() => null);
  if (!response.ok) {
    const message = body?.error?.message ?? `${response.status} ${response.statusText}`;
    const error = new Error(message);
    error.status = response.status;
    throw error;
  }
  return body;
}

const SVG = "http://www.w3.org/2000/svg"; // the SVG namespace name, not a download

/** An SVG element with attributes and, optionally, text. */
export function svg(tag, attributes = {}, text = null) {
  const node = document.createElementNS(SVG, tag);
  for (const [name, value] of Object.entries(attributes)) node.setAttribute(name, String(value));
  if (text !== null) node.textContent = text;
  return node;
}

/** An element with attributes and children (strings become text: nothing is parsed as HTML). */
export function el(tag, attributes = {}, ...children) {
  const node = document.createElement(tag);
  for (const [name, value] of Object.entries(attributes)) {
    if (value === undefined || value === null || value === false) continue;
    if (name === "class") node.className = value;
    else if (name === "text") node.textContent = value;
    else node.setAttribute(name, value === true ? "" : String(value));
  }
  for (const child of children) {
    if (child !== null && child !== undefined) node.append(child);
  }
  return node;
}

/** The live WebSocket of a call. `call_id` in the query lets Envoy send the driver and every watcher of
 * one call to the same gateway replica (its hash policy, envoy/envoy.yaml); the gateway ignores it. */
export function streamUrl(callId) {
  const scheme = location.protocol === "https:" ? "wss" : "ws";
  return `${scheme}://${location.host}/v1/sentiment/stream?call_id=${encodeURIComponent(callId)}`;
}
