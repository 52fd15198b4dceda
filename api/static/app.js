// segment-stream live page: follows GET /segments/stream (server-sent events, read with fetch so
// that it can send an API key and read error statuses) and shows the top segments, how each
// count moved over the last minutes, and how fresh the answer is. The view lives in the URL.
"use strict";

const HISTORY_MS = 10 * 60 * 1000; // how far back the sparklines go
const RETRY_MS = [500, 1000, 2000, 5000];

const $ = (id) => document.getElementById(id);
const view = { program_id: "", segment_type: "growth", segment_basis: "labels", min_weight: "0.5", size: "50" };
const state = { rows: [], total: 0, asOf: 0, lag: 0, stale: false, connected: false, history: new Map(), changed: new Set() };
let apiKey = sessionStorage.getItem("segments-api-key") || "";
let controller = null;
let lastEventId = "";
let retries = 0;

function readUrl() {
  const params = new URLSearchParams(location.search);
  for (const name of Object.keys(view)) {
    if (params.has(name)) view[name] = params.get(name);
  }
  $("program").value = view.program_id;
  $("segment_type").value = view.segment_type;
  $("segment_basis").value = view.segment_basis.startsWith("asset") ? "assets" : "labels";
  $("min_weight").value = view.min_weight;
  $("min_weight_value").textContent = Number(view.min_weight).toFixed(2);
  const size = $("size");
  if (![...size.options].some((option) => option.value === view.size)) {
    size.add(new Option(view.size, view.size));
  }
  size.value = view.size;
}

function writeUrl() {
  const params = new URLSearchParams();
  for (const [name, value] of Object.entries(view)) if (value !== "") params.set(name, value);
  history.replaceState(null, "", `${location.pathname}?${params}`);
}

function key(row) {
  return `${row.segment_basis_id}\u0000${row.action_type}`;
}

function contractOrder(a, b) {
  if (a.user_count !== b.user_count) return b.user_count - a.user_count;
  for (const field of ["segment_basis_id", "action_type", "name"]) {
    if (a[field] !== b[field]) return a[field] < b[field] ? -1 : 1;
  }
  return 0;
}

function remember(rows, asOf) {
  const cutoff = asOf - HISTORY_MS;
  for (const row of rows) {
    const k = key(row);
    const points = state.history.get(k) || [];
    const last = points[points.length - 1];
    if (!last || last[1] !== row.user_count || asOf - last[0] > 5000) points.push([asOf, row.user_count]);
    while (points.length && points[0][0] < cutoff) points.shift();
    state.history.set(k, points);
  }
}

function applySnapshot(data) {
  state.rows = data.items;
  state.total = data.total;
  state.asOf = data.as_of;
  state.lag = data.lag;
  state.stale = data.stale === true;
  state.changed = new Set();
  remember(state.rows, state.asOf);
}

function applyUpdate(data) {
  const byKey = new Map(state.rows.map((row) => [key(row), row]));
  for (const [basisId, action] of data.removed) byKey.delete(`${basisId}\u0000${action}`);
  state.changed = new Set();
  for (const row of data.upserts) {
    byKey.set(key(row), row);
    state.changed.add(key(row));
  }
  state.rows = [...byKey.values()].sort(contractOrder).slice(0, Number(view.size));
  state.total = data.total;
  state.asOf = data.as_of;
  state.lag = data.lag;
  state.stale = data.stale === true;
  remember(state.rows, state.asOf);
}

function sparkline(points, t0, now) {
  const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
  svg.setAttribute("class", "spark");
  svg.setAttribute("viewBox", "0 0 120 26");
  if (!points || points.length === 0) return svg;
  const series = [...points, [now, points[points.length - 1][1]]];
  const span = Math.max(1, now - t0);
  const counts = series.map((p) => p[1]);
  const lo = Math.min(...counts);
  const hi = Math.max(...counts);
  const x = (t) => Math.max(0, ((t - t0) / span) * 118) + 1;
  const y = (c) => (hi === lo ? 13 : 23 - ((c - lo) / (hi - lo)) * 20);
  const line = document.createElementNS(svg.namespaceURI, "polyline");
  line.setAttribute("points", series.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "));
  svg.appendChild(line);
  const end = document.createElementNS(svg.namespaceURI, "circle");
  end.setAttribute("cx", x(now).toFixed(1));
  end.setAttribute("cy", y(series[series.length - 1][1]).toFixed(1));
  end.setAttribute("r", "2");
  svg.appendChild(end);
  return svg;
}

function cell(tag, className, text) {
  const el = document.createElement(tag);
  if (className) el.className = className;
  if (text !== undefined) el.textContent = text;
  return el;
}

function render() {
  const body = $("rows");
  const max = Math.max(1, ...state.rows.map((row) => row.user_count));
  const now = state.asOf || Date.now();
  // The sparklines share one time axis: the last HISTORY_MS, or since the page began.
  let t0 = now;
  for (const points of state.history.values()) if (points.length) t0 = Math.min(t0, points[0][0]);
  t0 = Math.max(t0, now - HISTORY_MS);
  const fragment = document.createDocumentFragment();
  state.rows.forEach((row, i) => {
    const tr = cell("tr");
    tr.dataset.key = key(row);
    if (state.changed.has(key(row))) tr.className = "changed";
    tr.appendChild(cell("td", "rank", String(i + 1)));
    const segment = cell("td");
    segment.appendChild(cell("span", "name", row.name));
    if (row.name !== row.segment_basis_id) segment.appendChild(cell("span", "id", row.segment_basis_id));
    tr.appendChild(segment);
    tr.appendChild(cell("td", "action", row.action_type));
    tr.appendChild(cell("td", "num users", row.user_count.toLocaleString("en-US")));
    tr.appendChild(cell("td", "num strength", row.strength.toFixed(3)));
    const share = cell("td", "share");
    const track = cell("div", "bar-track");
    const fill = cell("div", "bar-fill");
    fill.style.width = `${((row.user_count / max) * 100).toFixed(1)}%`;
    track.appendChild(fill);
    share.appendChild(track);
    tr.appendChild(share);
    const trend = cell("td", "trend");
    trend.appendChild(sparkline(state.history.get(key(row)), t0, now));
    tr.appendChild(trend);
    fragment.appendChild(tr);
  });
  body.replaceChildren(fragment);
  const shown = state.rows.length;
  $("summary").textContent = view.program_id
    ? `${shown} of ${state.total.toLocaleString("en-US")} segments of ${view.program_id}` +
      ` (${view.segment_type}, ${view.segment_basis}, min weight ${Number(view.min_weight).toFixed(2)})`
    : "";
  state.changed = new Set();
}

function showFreshness() {
  const el = $("freshness");
  if (!view.program_id) {
    el.dataset.state = "connecting";
    $("freshness-text").textContent = "pick a program";
    return;
  }
  if (!state.connected) {
    el.dataset.state = "down";
    $("freshness-text").textContent = state.asOf ? `reconnecting · last answer ${age()} ago` : "connecting…";
    return;
  }
  el.dataset.state = state.lag > 0 || state.stale ? "behind" : "live";
  const behind = state.lag > 0 ? `${state.lag.toLocaleString("en-US")} records behind` : "caught up";
  // Stale: part of the answer is from standby copies while an owner is down or moving.
  const source = state.stale ? " · from standby copies" : "";
  $("freshness-text").textContent = `live · as of ${age()} ago · ${behind}${source}`;
}

function age() {
  const s = Math.max(0, (Date.now() - state.asOf) / 1000);
  return s < 60 ? `${s.toFixed(1)} s` : `${Math.floor(s / 60)} min`;
}

function message(text) {
  const el = $("message");
  el.textContent = text || "";
  el.hidden = !text;
}

async function follow() {
  if (controller) controller.abort();
  state.connected = false;
  if (!view.program_id) {
    message("Enter a program to follow its segments.");
    state.rows = [];
    render();
    return;
  }
  const current = new AbortController();
  controller = current;
  const params = new URLSearchParams(view);
  const headers = { Accept: "text/event-stream" };
  if (apiKey) headers.Authorization = `Bearer ${apiKey}`;
  if (lastEventId) headers["Last-Event-ID"] = lastEventId;
  try {
    const response = await fetch(`/segments/stream?${params}`, { headers, signal: current.signal });
    if (response.status === 401 || response.status === 403) {
      message(response.status === 401 ? "This worker needs an API key." : "This key does not cover this program.");
      askForKey();
      return;
    }
    if (!response.ok) {
      const body = await response.json().catch(() => ({}));
      const detail = Array.isArray(body.detail) ? body.detail.map((d) => `${d.loc.slice(-1)}: ${d.msg}`).join("; ") : body.detail;
      message(`${response.status}: ${detail || response.statusText}`);
      if (response.status >= 500) retryLater(current);
      return;
    }
    message("");
    state.connected = true;
    retries = 0;
    await readEvents(response.body.getReader(), current);
  } catch (error) {
    if (current.signal.aborted) return;
  }
  state.connected = false;
  retryLater(current);
}

function retryLater(current) {
  if (controller !== current || current.signal.aborted) return;
  const delay = RETRY_MS[Math.min(retries, RETRY_MS.length - 1)];
  retries += 1;
  setTimeout(() => { if (controller === current) follow(); }, delay);
}

async function readEvents(reader, current) {
  const decoder = new TextDecoder();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done || current.signal.aborted) return;
    buffer += decoder.decode(value, { stream: true });
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      handleEvent(block);
    }
  }
}

function handleEvent(block) {
  let name = "message";
  let data = "";
  for (const line of block.split("\n")) {
    if (line.startsWith(":")) continue;
    const colon = line.indexOf(":");
    const field = colon < 0 ? line : line.slice(0, colon);
    const value = colon < 0 ? "" : line.slice(colon + 1).replace(/^ /, "");
    if (field === "event") name = value;
    else if (field === "data") data += data ? `\n${value}` : value;
    else if (field === "id") lastEventId = value;
  }
  if (!data) return;
  const payload = JSON.parse(data);
  if (name === "snapshot") applySnapshot(payload);
  else if (name === "update") applyUpdate(payload);
  else return;
  render();
  showFreshness();
}

function askForKey() {
  const dialog = $("key-dialog");
  $("key-input").value = "";
  dialog.showModal();
}

function onControls() {
  view.program_id = $("program").value.trim();
  view.segment_type = $("segment_type").value;
  view.segment_basis = $("segment_basis").value;
  view.min_weight = String(Number($("min_weight").value));
  view.size = $("size").value;
  $("min_weight_value").textContent = Number(view.min_weight).toFixed(2);
  writeUrl();
  state.history = new Map();
  lastEventId = "";
  follow();
}

let debounce = null;
function onControlsSoon() {
  clearTimeout(debounce);
  debounce = setTimeout(onControls, 250);
}

document.addEventListener("DOMContentLoaded", () => {
  readUrl();
  $("controls").addEventListener("change", onControls);
  $("program").addEventListener("input", onControlsSoon);
  $("min_weight").addEventListener("input", () => {
    $("min_weight_value").textContent = Number($("min_weight").value).toFixed(2);
    onControlsSoon();
  });
  $("controls").addEventListener("submit", (event) => { event.preventDefault(); onControls(); });
  $("key-form").addEventListener("submit", () => {
    apiKey = $("key-input").value.trim();
    sessionStorage.setItem("segments-api-key", apiKey);
    follow();
  });
  setInterval(showFreshness, 250);
  follow();
});
