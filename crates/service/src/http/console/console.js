// The Tally console: reads GET /console/status once a second and draws what it says; reads a
// counter or a tenant's distinct count on demand. Plain JavaScript, nothing loaded from
// elsewhere. Everything a node sends is written with textContent, never parsed as HTML.
"use strict";

const POLL_MS = 1000;
const SAMPLES = 60;

const state = {
  apiKey: null,        // an API key given in the page; kept in memory only
  previous: null,      // the last reading: {requests, at}
  history: { rps: [], lag: [], pending: [], journal: [] },
  settingsShown: "",
};

const $ = (id) => document.getElementById(id);
const integer = new Intl.NumberFormat("en");

function headers() {
  return state.apiKey ? { Authorization: "Bearer " + state.apiKey } : {};
}

function bytes(n) {
  const units = ["B", "KiB", "MiB", "GiB", "TiB"];
  let i = 0;
  while (n >= 1024 && i < units.length - 1) { n /= 1024; i++; }
  return (i === 0 ? String(n) : n.toFixed(1)) + " " + units[i];
}

function push(series, value) {
  series.push(value);
  if (series.length > SAMPLES) series.shift();
}

// A small line chart in the figure's SVG: the last SAMPLES values, scaled to the largest
// (or to `ceiling` when given and larger).
function draw(id, series, ceiling) {
  const svg = document.querySelector("#" + id + " svg");
  const ns = "http://www.w3.org/2000/svg";
  while (svg.firstChild) svg.removeChild(svg.firstChild);
  if (series.length === 0) return;
  const max = Math.max(ceiling || 0, ...series, 1e-9);
  const step = 300 / (SAMPLES - 1);
  const x0 = 300 - step * (series.length - 1);
  const points = series.map((v, i) =>
    (x0 + i * step).toFixed(1) + "," + (78 - (v / max) * 74).toFixed(1));
  const area = document.createElementNS(ns, "polygon");
  area.setAttribute("points", x0.toFixed(1) + ",80 " + points.join(" ") + " 300,80");
  area.setAttribute("class", "area");
  const line = document.createElementNS(ns, "polyline");
  line.setAttribute("points", points.join(" "));
  line.setAttribute("class", "line");
  svg.append(area, line);
}

function show(status) {
  const now = performance.now();
  $("node").textContent = "node " + status.node_id + " · " + status.version + " · " +
    status.mode + " · durability " + status.durability;
  const ready = $("ready");
  ready.textContent = status.ready ? "ready" : "not ready";
  ready.title = status.not_ready || "";
  ready.className = "badge " + (status.ready ? "ok" : "bad");

  if (state.previous) {
    const seconds = (now - state.previous.at) / 1000;
    const rps = Math.max(0, status.requests - state.previous.requests) / seconds;
    push(state.history.rps, rps);
    $("rps").textContent = rps < 10 ? rps.toFixed(1) : integer.format(Math.round(rps));
  }
  state.previous = { requests: status.requests, at: now };

  if (status.flush_lag_seconds === null) {
    $("lag").textContent = "none (sync mode)";
  } else {
    push(state.history.lag, status.flush_lag_seconds);
    $("lag").textContent = status.flush_lag_seconds.toFixed(2) + " s";
  }
  if (status.pending_keys === null) {
    $("pending").textContent = "none (sync mode)";
  } else {
    push(state.history.pending, status.pending_keys);
    $("pending").textContent = integer.format(status.pending_keys) + " of " +
      integer.format(status.max_pending_keys);
  }
  if (status.journal_bytes === null) {
    $("journal").textContent = "no journal";
  } else {
    push(state.history.journal, status.journal_bytes);
    $("journal").textContent = bytes(status.journal_bytes) + " of " +
      bytes(status.max_journal_bytes);
  }
  draw("chart-rps", state.history.rps);
  draw("chart-lag", state.history.lag, 1);
  draw("chart-pending", state.history.pending, 1);
  draw("chart-journal", state.history.journal, 1);

  $("requests").textContent = integer.format(status.requests);
  $("increments").textContent = integer.format(status.increments);
  $("items").textContent = integer.format(status.items);

  const settings = JSON.stringify(status.settings);
  if (settings !== state.settingsShown) {
    state.settingsShown = settings;
    const body = $("settings");
    body.replaceChildren(...status.settings.map((s) => {
      const row = document.createElement("tr");
      const name = document.createElement("th");
      const value = document.createElement("td");
      name.textContent = s.name;
      value.textContent = s.value;
      row.append(name, value);
      return row;
    }));
  }
}

// The message of one of Tally's JSON errors, or the status line.
async function failure(response) {
  try {
    const body = await response.json();
    if (body && body.error && body.error.message) return body.error.message;
  } catch (_) { /* not JSON */ }
  return response.status + " " + response.statusText;
}

async function poll() {
  try {
    const response = await fetch("/console/status", { headers: headers(), cache: "no-store" });
    if (response.status === 401) {
      $("credentials").hidden = false;
      $("error").hidden = true;
      return;
    }
    if (!response.ok) throw new Error(await failure(response));
    $("credentials").hidden = true;
    $("error").hidden = true;
    show(await response.json());
  } catch (e) {
    $("error").textContent = "cannot read the node's status: " + e.message;
    $("error").hidden = false;
  } finally {
    setTimeout(poll, POLL_MS);
  }
}

async function search(event) {
  event.preventDefault();
  const kind = $("search-kind").value;
  const name = $("search-input").value;
  const result = $("search-result");
  const path = kind === "counter"
    ? "/counters/" + encodeURIComponent(name)
    : "/items/" + encodeURIComponent(name) + "/count";
  result.className = "";
  result.textContent = "reading…";
  try {
    const response = await fetch(path, { headers: headers(), cache: "no-store" });
    if (!response.ok) {
      result.className = "error";
      result.textContent = await failure(response);
      return;
    }
    const body = await response.json();
    result.textContent = kind === "counter"
      ? body.key + " = " + integer.format(body.value)
      : body.tenant + ": " + integer.format(body.count) + " distinct items";
  } catch (e) {
    result.className = "error";
    result.textContent = "cannot read: " + e.message;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("search-form").addEventListener("submit", search);
  $("key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.apiKey = $("key-input").value.trim() || null;
    $("key-input").value = "";
  });
  poll();
});
