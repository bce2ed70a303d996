// The dashboard: tabs over the gateway's own API, called with the admin key the user typed
// (kept in sessionStorage: gone when the tab closes). Failures are shown on the page, never
// thrown to the console.
"use strict";

const KEY_STORE = "trio_orchestrator.admin_key";
const POLL_MS = 2000;
const HISTORY = 60; // points kept for the overview's charts (two minutes at 2 s)
const PREFIX = "trio_orchestrator";
// The service's address: this page's path without its /ui/... tail (a root_path stays).
const BASE = location.pathname.replace(/\/ui(\/[^/]*)?$/, "");

const $ = (selector) => document.querySelector(selector);
const state = { features: null, page: null, timer: null, previous: null, history: [], cursor: null,
  keysAfter: null };

class ApiFailure extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

function adminKey() { return sessionStorage.getItem(KEY_STORE) || ""; }

function say(text, error) {
  const status = $("#status");
  status.textContent = text;
  status.classList.toggle("error", Boolean(error));
}

async function api(path, options = {}) {
  const headers = {};
  if (adminKey()) headers.authorization = `Bearer ${adminKey()}`;
  let body;
  if (options.body !== undefined) {
    headers["content-type"] = "application/json";
    body = JSON.stringify(options.body);
  }
  const response = await fetch(BASE + path, { method: options.method || "GET", headers, body,
    cache: "no-store" });
  const text = await response.text();
  let data = text;
  if ((response.headers.get("content-type") || "").includes("json")) {
    try { data = JSON.parse(text); } catch (_) { data = text; }
  }
  if (!response.ok) {
    const message = (data && data.error && data.error.message) || response.statusText;
    throw new ApiFailure(response.status, message);
  }
  return data;
}

function failed(error) {
  if (error instanceof ApiFailure && error.status === 401) {
    say("That key was refused (401): type an admin key.", true);
  } else if (error instanceof ApiFailure && error.status === 403) {
    say("That key is not an admin key (403).", true);
  } else {
    say(`Error: ${error.message}`, true);
  }
}

// ------------------------------------------------------------------ formatting

function cell(text, className) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "–" : String(text);
  if (className) td.className = className;
  return td;
}

function fill(tbody, rows, columns, empty) {
  tbody.replaceChildren();
  if (!rows.length) {
    const tr = document.createElement("tr");
    const td = cell(empty, "empty");
    td.colSpan = columns;
    tr.append(td);
    tbody.append(tr);
    return;
  }
  for (const row of rows) {
    const tr = document.createElement("tr");
    for (const value of row) tr.append(value instanceof Node ? value : cell(value));
    tbody.append(tr);
  }
}

function button(text, label, onClick) {
  const node = document.createElement("button");
  node.type = "button";
  node.textContent = text;
  node.setAttribute("aria-label", label);
  node.addEventListener("click", onClick);
  return node;
}

const seconds = (value) => (value === null ? "–" : value < 1 ? `${(value * 1000).toFixed(1)} ms`
  : `${value.toFixed(2)} s`);
const dollars = (value) => `$${Number(value || 0).toFixed(6)}`;
const ms = (value) => (value === null || value === undefined ? "–" : Number(value).toFixed(1));
const rate = (value) => (value === null ? "–" : value.toFixed(2));
const when = (iso) => (iso ? iso.replace("T", " ").replace(/\.\d+/, "").replace("+00:00", "Z") : "–");

// ------------------------------------------------------------------ /metrics

// Prometheus' text format: [{name, labels, value}] of every sample.
function parseMetrics(text) {
  const samples = [];
  for (const line of text.split("\n")) {
    if (!line || line.startsWith("#")) continue;
    const match = /^([a-zA-Z_:][\w:]*)(?:\{(.*)\})?\s+(\S+)/.exec(line);
    if (!match) continue;
    const labels = {};
    for (const l of (match[2] || "").matchAll(/(\w+)="((?:[^"\\]|\\.)*)"/g)) labels[l[1]] = l[2];
    const raw = match[3];
    const value = raw === "+Inf" ? Infinity : raw === "-Inf" ? -Infinity : Number(raw);
    samples.push({ name: match[1], labels, value });
  }
  return samples;
}

function sumBy(samples, name, label) {
  const sums = {};
  for (const s of samples) {
    if (s.name !== name) continue;
    const key = label ? s.labels[label] || "" : "";
    sums[key] = (sums[key] || 0) + s.value;
  }
  return sums;
}

function buckets(samples, name) {
  const counts = new Map();
  for (const s of samples) {
    if (s.name !== `${name}_bucket`) continue;
    const le = s.labels.le === "+Inf" ? Infinity : Number(s.labels.le);
    counts.set(le, (counts.get(le) || 0) + s.value);
  }
  return counts;
}

// The q-quantile of cumulative buckets, interpolated as Prometheus' histogram_quantile
// (and trio-orchestrator top) does; null without observations.
function quantile(q, counts) {
  const bounds = [...counts.keys()].sort((a, b) => a - b);
  if (bounds.length < 2 || bounds[bounds.length - 1] !== Infinity) return null;
  let highest = 0;
  const cumulative = bounds.map((b) => (highest = Math.max(highest, counts.get(b))));
  const total = cumulative[cumulative.length - 1];
  if (total <= 0) return null;
  const rank = q * total;
  const index = cumulative.findIndex((c) => c >= rank);
  if (index === bounds.length - 1) return bounds[bounds.length - 2];
  const upper = bounds[index];
  if (index === 0 && upper <= 0) return upper;
  const lower = index === 0 ? 0 : bounds[index - 1];
  const below = index === 0 ? 0 : cumulative[index - 1];
  const inside = cumulative[index] - below;
  return inside ? lower + (upper - lower) * ((rank - below) / inside) : upper;
}

// What happened between two readings (a counter lower than before was reset: all of it is new).
function delta(now, before) {
  const out = now instanceof Map ? new Map() : {};
  const entries = now instanceof Map ? [...now] : Object.entries(now);
  for (const [key, value] of entries) {
    const old = (before instanceof Map ? before.get(key) : before && before[key]) || 0;
    const d = value >= old ? value - old : value;
    if (out instanceof Map) out.set(key, d); else out[key] = d;
  }
  return out;
}

// ------------------------------------------------------------------ overview and providers

const OUTCOMES = ["submitted", "completed", "failed", "shed", "expired", "cancelled", "in_flight"];
const ENDED = ["completed", "failed", "shed", "expired", "cancelled"];

async function poll() {
  const stats = await api("/v1/stats");
  const metrics = state.features.metrics ? parseMetrics(await api("/metrics")) : [];
  return { at: performance.now() / 1000, stats, metrics };
}

function window_(current, previous) {
  const seconds_ = previous ? current.at - previous.at : null;
  const per = (d) => (seconds_ && seconds_ > 0 ? d / seconds_ : null);
  const pipeline = current.stats.pipeline || {};
  const ended = ENDED.reduce((sum, n) => sum + (pipeline[n] || 0), 0);
  const before = previous ? ENDED.reduce((s, n) => s + ((previous.stats.pipeline || {})[n] || 0), 0)
    : null;
  const name = `${PREFIX}_request_duration_seconds`;
  const now = buckets(current.metrics, name);
  const latency = previous ? delta(now, buckets(previous.metrics, name)) : now;
  return { per, rps: before === null ? null : per(Math.max(0, ended - before)),
    p50: quantile(0.5, latency), p99: quantile(0.99, latency) };
}

function renderOverview(current, previous) {
  const pipeline = current.stats.pipeline || {};
  for (const node of document.querySelectorAll("[data-stat]")) {
    node.textContent = String(pipeline[node.dataset.stat] ?? "–");
  }
  const w = window_(current, previous);
  $("#rps").textContent = rate(w.rps);
  $("#p50").textContent = seconds(w.p50);
  $("#p99").textContent = seconds(w.p99);
  state.history.push({ rps: w.rps, p50: w.p50, p99: w.p99 });
  state.history = state.history.slice(-HISTORY);
  const labels = state.history.map((_, i) => (i === state.history.length - 1 ? "now" : ""));
  Charts.line($("#chart-rps"), [{ name: "req/s", values: state.history.map((h) => h.rps) }], labels);
  Charts.line($("#chart-latency"), [
    { name: "p50", values: state.history.map((h) => h.p50) },
    { name: "p99", values: state.history.map((h) => h.p99) }], labels);
  renderErrors(current, previous, w.per);
  fill($("#stages tbody"), (pipeline.stages || []).map((s) =>
    [s.name, s.queue_depth, s.capacity, s.processed, s.shed]), 5, "no pipeline yet");
}

function renderErrors(current, previous, per) {
  const name = `${PREFIX}_upstream_errors_total`;
  const classes = sumBy(current.metrics, name, "error");
  const rates = previous ? delta(classes, sumBy(previous.metrics, name, "error")) : {};
  const rows = Object.keys(classes).sort((a, b) => classes[b] - classes[a])
    .map((c) => [c, classes[c], rate(c in rates ? per(rates[c]) : null)]);
  const pipeline = current.stats.pipeline || {};
  const old = previous ? previous.stats.pipeline || {} : null;
  for (const outcome of ["failed", "shed", "expired", "cancelled"]) {
    if (!pipeline[outcome]) continue;
    const d = old ? per(pipeline[outcome] - (old[outcome] || 0)) : null;
    rows.push([`${outcome} (requests)`, pipeline[outcome], rate(d)]);
  }
  fill($("#errors tbody"), rows, 3, "no errors");
}

function breakerSummary(states) {
  if (!states.length) return "–";
  const order = ["open", "half_open", "closed"];
  const worst = states.reduce((a, b) => (order.indexOf(b) < order.indexOf(a) ? b : a));
  const bad = states.filter((s) => s === worst).length;
  return bad === states.length ? worst : `${worst} ${bad}/${states.length}`;
}

function resting(keys) {
  const out = [];
  for (const [name, key] of Object.entries(keys || {})) {
    const rests = Object.entries(key.model_rests || {});
    if (key.state === "ready" && !rests.length) continue;
    let text = `${name} ${key.state}`;
    if (key.rest_seconds !== null && key.rest_seconds !== undefined) text += ` ${Math.round(key.rest_seconds)}s`;
    if (rests.length) text += ` (${rests.map(([m, s]) => `${m} ${Math.round(s)}s`).join(", ")})`;
    out.push(text);
  }
  return out.join("; ") || "none";
}

function renderProviders(current, previous) {
  const name = `${PREFIX}_requests_total`;
  const totals = sumBy(current.metrics, name, "provider");
  const moved = previous ? delta(totals, sumBy(previous.metrics, name, "provider")) : {};
  const seconds_ = previous ? current.at - previous.at : null;
  const breakers = {};
  for (const s of current.metrics) {
    if (s.name !== `${PREFIX}_breaker_state` || s.value !== 1 || !s.labels.target) continue;
    const provider = s.labels.target.split("/")[0];
    (breakers[provider] = breakers[provider] || []).push(s.labels.state || "?");
  }
  const limits = {};
  for (const s of current.metrics) {
    if (s.name !== `${PREFIX}_adaptive_limit`) continue;
    const provider = (s.labels.provider || s.labels.target || "").split("/")[0];
    limits[provider] = (limits[provider] || 0) + s.value;
  }
  const pools = current.stats.keys || {};
  const names = [...new Set([...Object.keys(totals), ...Object.keys(breakers),
    ...Object.keys(pools), ...Object.keys(limits)])].sort();
  fill($("#providers tbody"), names.map((p) => {
    const pool = pools[p];
    const keys = pool ? Object.keys(pool.keys || {}).length : null;
    const breaker = cell(breakerSummary(breakers[p] || []),
      (breakers[p] || []).some((s) => s !== "closed") ? "bad" : "");
    return [p, rate(p in moved && seconds_ ? moved[p] / seconds_ : null), breaker,
      pool ? `${pool.ready}/${keys}` : "–", pool ? resting(pool.keys) : "–",
      p in limits ? limits[p] : "–"];
  }), 6, "no provider has answered yet");
  $("#providers-note").textContent = state.features.metrics ? ""
    : "Metrics are off ([observability.metrics] enabled = false): only key pools are shown.";
}

async function tick() {
  try {
    const current = await poll();
    const previous = state.previous;
    state.previous = current;
    if (state.page === "overview") renderOverview(current, previous);
    if (state.page === "providers") renderProviders(current, previous);
    $(`#page-${state.page}`).dataset.loaded = "true";
    say(`Updated ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    // A refused key stays refused: stop asking until a new one is typed.
    if (error instanceof ApiFailure && [401, 403].includes(error.status)) stopPolling();
    failed(error);
  }
}

function startPolling() {
  stopPolling();
  state.previous = null;
  tick();
  state.timer = setInterval(() => { if (!document.hidden) tick(); }, POLL_MS);
}

function stopPolling() {
  if (state.timer !== null) clearInterval(state.timer);
  state.timer = null;
}

// ------------------------------------------------------------------ spend

function days(count) {
  const out = [];
  const today = new Date();
  for (let i = count - 1; i >= 0; i--) {
    out.push(new Date(Date.UTC(today.getUTCFullYear(), today.getUTCMonth(), today.getUTCDate() - i))
      .toISOString().slice(0, 10));
  }
  return out;
}

function spendQuery(group, from, to) {
  const params = new URLSearchParams({ group_by: group, from, to });
  const key = $("#spend-key").value.trim();
  if (key) params.set("key_id", key);
  return `/v1/admin/spend?${params}`;
}

// One chart's series: per day, the spend of each group (one call per day and grouping).
async function perDay(group, labels) {
  const answers = await Promise.all(labels.map((d) => api(spendQuery(group, d, d))));
  const series = {};
  answers.forEach((answer, i) => {
    for (const row of answer.data) {
      const name = String(row[group] || "(none)");
      (series[name] = series[name] || labels.map(() => 0))[i] += row.cost_usd;
    }
  });
  return series;
}

function spendRows(answer, group) {
  return answer.data.map((row) => [row[group] || "(none)", row.requests,
    `${row.prompt_tokens}/${row.completion_tokens}`, dollars(row.cost_usd)]);
}

async function loadSpend() {
  if (!state.features.storage) {
    $("#spend-total").textContent = "Spend needs storage: set [storage] in the configuration.";
    return;
  }
  const labels = days(Number($("#spend-days").value));
  const [from, to] = [labels[0], labels[labels.length - 1]];
  const [byKey, byModel, keyDays, modelDays] = await Promise.all([
    api(spendQuery("key", from, to)), api(spendQuery("model", from, to)),
    perDay("key", labels), perDay("model", labels)]);
  const short = labels.map((d) => d.slice(5));
  Charts.stacked($("#chart-spend-key"), short, keyDays);
  Charts.stacked($("#chart-spend-model"), short, modelDays);
  fill($("#spend-by-key tbody"), spendRows(byKey, "key"), 4, "no spend in these days");
  fill($("#spend-by-model tbody"), spendRows(byModel, "model"), 4, "no spend in these days");
  $("#spend-total").textContent = `Total ${from} to ${to} (UTC): ${dollars(byKey.total_cost_usd)}`;
}

// ------------------------------------------------------------------ request log

function logQuery(cursor) {
  const params = new URLSearchParams();
  for (const input of $("#log-form").elements) {
    if (!input.name || !input.value) continue;
    const value = input.type === "datetime-local"
      ? String(new Date(input.value).getTime() / 1000) : input.value.trim();
    params.set(input.name, value);
  }
  if (cursor) params.set("cursor", cursor);
  return `/v1/admin/requests?${params}`;
}

async function loadLog(cursor) {
  const note = $("#log-note");
  if (!state.features.request_log) {
    note.textContent = "The request log is not available on this service.";
    fill($("#log tbody"), [], 13, "request log not available");
    return;
  }
  const answer = await api(logQuery(cursor));
  fill($("#log tbody"), answer.data.map((r) => [r.id,
    new Date(r.created * 1000).toISOString().replace("T", " ").slice(0, 19), r.key_id, r.model,
    r.provider, r.outcome, r.status, `${r.prompt_tokens ?? "–"}/${r.completion_tokens ?? "–"}`,
    r.cost === null || r.cost === undefined ? "–" : dollars(r.cost), ms(r.latency_ms), ms(r.ttft_ms),
    r.attempts, r.cache_hit ? "hit" : r.coalesced ? "coalesced" : "–"]), 13, "no request matches");
  state.cursor = answer.next_cursor;
  $("#log-next").hidden = !answer.next_cursor;
  note.textContent = `${answer.data.length} requests${cursor ? " (next page)" : ""}.`;
}

// ------------------------------------------------------------------ keys

function keyBody(form) {
  const body = {};
  for (const input of form.elements) {
    const value = input.name ? input.value.trim() : "";
    if (!value) continue;
    if (input.name === "models") body.models = value.split(",").map((m) => m.trim()).filter(Boolean);
    else if (["rpm", "tpm"].includes(input.name)) body[input.name] = Number.parseInt(value, 10);
    else if (input.name === "budget") body.budget = Number(value);
    else body[input.name] = value;
  }
  if (body.budget === undefined) delete body.budget_period;
  return body;
}

function showSecret(key) {
  $("#secret-for").textContent = `${key.label || key.id} (${key.id})`;
  $("#new-secret").textContent = key.key;
  $("#key-secret").hidden = false;
}

async function keyAction(text, work) {
  try {
    await work();
    say(text);
    await loadKeys();
  } catch (error) {
    failed(error);
  }
}

function actions(...buttons) {
  const td = document.createElement("td");
  td.append(...buttons);
  return td;
}

function keyRow(key) {
  const buttons = actions();
  if (!key.revoked_at) {
    buttons.append(button("Rotate", `Rotate key ${key.id}`, () => keyAction(`Rotated ${key.id}`,
      async () => showSecret(await api(`/v1/admin/keys/${encodeURIComponent(key.id)}/rotate`, { method: "POST" })))));
    buttons.append(button("Revoke", `Revoke key ${key.id}`, () => {
      if (!confirm(`Revoke key ${key.id}? Its next request gets 401.`)) return;
      keyAction(`Revoked ${key.id}`, () => api(`/v1/admin/keys/${encodeURIComponent(key.id)}`, { method: "DELETE" }));
    }));
  }
  const budget = key.budget === null ? "–" : `${dollars(key.budget)}/${key.budget_period || "total"}`;
  return [key.id, key.label, key.owner, `…${key.hint}`, key.models.join(", ") || "any", budget,
    key.spend === null ? "–" : dollars(key.spend), when(key.created_at),
    key.revoked_at ? `revoked ${when(key.revoked_at)}` : "active", buttons];
}

async function loadKeys(more) {
  if (!state.features.storage) {
    fill($("#keys tbody"), [], 10, "virtual keys need storage: set [storage] in the configuration");
    return;
  }
  const params = new URLSearchParams({ limit: "100", include_revoked: String($("#keys-revoked").checked) });
  if (more && state.keysAfter) params.set("after", state.keysAfter);
  const answer = await api(`/v1/admin/keys?${params}`);
  const tbody = $("#keys tbody");
  const rows = answer.data.map(keyRow);
  if (more) {
    const extra = document.createElement("tbody");
    fill(extra, rows, 10, "");
    tbody.append(...extra.children);
  } else {
    fill(tbody, rows, 10, "no virtual keys yet");
  }
  state.keysAfter = answer.last_id;
  $("#keys-more").hidden = !answer.has_more;
}

// ------------------------------------------------------------------ dead letters

async function loadLetters() {
  const answer = await api("/v1/dead-letters?limit=200");
  fill($("#letters tbody"), answer.data.map((letter) => [letter.id, letter.stage, letter.reason,
    `${letter.age_seconds.toFixed(0)} s`, letter.request.model,
    (letter.request.input || letter.request.messages.map((m) => m.content).join(" / ")).slice(0, 80),
    actions(button("Replay", `Replay dead letter ${letter.id}`, () => replay(letter.id))),
  ]), 7, "no dead letters");
}

async function replay(id) {
  const note = $("#letters-note");
  try {
    const answer = await api(`/v1/dead-letters/${encodeURIComponent(id)}/replay`, { method: "POST" });
    note.textContent = `Replayed ${id}: ${answer.outcome}.`;
  } catch (error) {
    note.textContent = `Replay of ${id} failed: ${error.message}`;
  }
  await loadLetters().catch(failed);
}

// ------------------------------------------------------------------ pages

const LOADERS = { spend: loadSpend, log: () => loadLog(null), keys: () => loadKeys(false),
  letters: loadLetters };

async function show(page) {
  if (!document.getElementById(`page-${page}`)) page = "overview";
  state.page = page;
  for (const tab of document.querySelectorAll("[role=tab]")) {
    const selected = tab.dataset.page === page;
    tab.setAttribute("aria-selected", String(selected));
    tab.tabIndex = selected ? 0 : -1;
    document.getElementById(tab.getAttribute("aria-controls")).hidden = !selected;
  }
  if (!state.features) return;
  if (page === "overview" || page === "providers") {
    startPolling();
    return;
  }
  stopPolling();
  const section = $(`#page-${page}`);
  try {
    await LOADERS[page]();
    section.dataset.loaded = "true";
    say(`Loaded ${new Date().toLocaleTimeString()}`);
  } catch (error) {
    failed(error);
  }
}

async function start() {
  try {
    state.features = await api("/ui/features.json");
  } catch (error) {
    failed(error);
    return;
  }
  if (state.features.auth && !adminKey()) {
    state.features = null;
    say("Type an admin key to begin.");
    $("#admin-key").focus();
    return;
  }
  $("#admin-key").placeholder = adminKey() ? "a key is set for this tab" : "sk-…";
  show(location.hash.slice(1) || "overview");
}

function wire() {
  const tabs = [...document.querySelectorAll("[role=tab]")];
  for (const tab of tabs) {
    tab.addEventListener("click", () => { location.hash = tab.dataset.page; });
    // The ARIA tabs pattern: arrow keys, Home and End move between tabs.
    tab.addEventListener("keydown", (event) => {
      const at = tabs.indexOf(tab);
      const next = { ArrowRight: at + 1, ArrowLeft: at - 1, Home: 0, End: tabs.length - 1 }[event.key];
      if (next === undefined) return;
      event.preventDefault();
      const target = tabs[(next + tabs.length) % tabs.length];
      target.focus();
      location.hash = target.dataset.page;
    });
  }
  window.addEventListener("hashchange", () => show(location.hash.slice(1)));
  $("#login").addEventListener("submit", (event) => {
    event.preventDefault();
    sessionStorage.setItem(KEY_STORE, $("#admin-key").value.trim());
    $("#admin-key").value = "";
    start();
  });
  $("#forget").addEventListener("click", () => {
    sessionStorage.removeItem(KEY_STORE);
    stopPolling();
    location.reload();
  });
  $("#spend-form").addEventListener("submit", (event) => { event.preventDefault(); show("spend"); });
  $("#log-form").addEventListener("submit", (event) => { event.preventDefault(); show("log"); });
  $("#log-next").addEventListener("click", () => loadLog(state.cursor).catch(failed));
  $("#keys-revoked").addEventListener("change", () => loadKeys(false).catch(failed));
  $("#keys-more").addEventListener("click", () => loadKeys(true).catch(failed));
  $("#secret-done").addEventListener("click", () => {
    $("#new-secret").textContent = "";
    $("#key-secret").hidden = true;
  });
  $("#key-form").addEventListener("submit", (event) => {
    event.preventDefault();
    const form = event.target;
    keyAction("Key created", async () => {
      showSecret(await api("/v1/admin/keys", { method: "POST", body: keyBody(form) }));
      form.reset();
    });
  });
}

wire();
show(location.hash.slice(1) || "overview");
start();
