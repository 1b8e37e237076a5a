// The code generation page: a conversation streamed over sluicegate's WebSocket API
// (generate / stop / resume), kept in local storage, with live figures per answer.
import { MarkdownStream } from "./markdown.js";

const STORE = "sluicegate.chat.v1";
const $ = (id) => document.getElementById(id);
const ui = {
  link: $("link"), model: $("model"), log: $("log"), turns: $("turns"), empty: $("empty"),
  notice: $("notice"), composer: $("composer"), prompt: $("prompt"), send: $("send"),
  stop: $("stop"), newChat: $("new-chat"), settings: $("settings"),
  settingsOpen: $("settings-open"), system: $("system"), maxTokens: $("max-tokens"),
  temperature: $("temperature"),
};

const TITLES = {
  ValidationException: "The server did not accept the request",
  ResourceNotFoundException: "That model is not available",
  ThrottlingException: "The server is busy, try again in a moment",
  ServiceUnavailableException: "The server is busy, try again in a moment",
  ModelTimeoutException: "The model took too long",
  ModelStreamErrorException: "The model failed while answering",
  AccessDeniedException: "Access denied",
};
const REASONS = {
  end_turn: "finished", max_tokens: "max tokens reached", stop_sequence: "stop sequence",
  cancelled: "stopped", disconnected: "disconnected", timeout: "timed out",
};

// ---- state, kept in local storage -----------------------------------------------------------

const state = load();
const views = new Map();   // turn -> {li, md, figures, badge}
let saveTimer = null;

function load() {
  let saved = {};
  try { saved = JSON.parse(localStorage.getItem(STORE)) || {}; } catch { saved = {}; }
  return {
    owner: saved.owner || randomId(16),
    turns: Array.isArray(saved.turns) ? saved.turns : [],
    settings: { model: "", system: "", maxTokens: 1024, temperature: null, ...saved.settings },
  };
}

/** Write the state now, or at most every 500 ms while it keeps changing (a streaming answer). */
function save(now = false) {
  if (!now) {
    saveTimer ??= setTimeout(() => save(true), 500);
    return;
  }
  clearTimeout(saveTimer);
  saveTimer = null;
  try {
    localStorage.setItem(STORE, JSON.stringify(state));
  } catch (e) {
    notify(`Could not save the conversation: ${e.message}`);
  }
}

function randomId(bytes) {
  const a = crypto.getRandomValues(new Uint8Array(bytes));
  return Array.from(a, (b) => b.toString(16).padStart(2, "0")).join("");
}

const running = () => state.turns.find((t) => t.role === "assistant" && t.status === "streaming");

// ---- the connection ---------------------------------------------------------------------------

/** A server with an api_key is opened as /#token=KEY: the key stays in this tab (and out of
 * the address bar), and goes with the WebSocket URL, since browsers cannot set its headers. */
function apiToken() {
  const given = new URLSearchParams(location.hash.slice(1)).get("token");
  if (given) {
    sessionStorage.setItem(STORE + ".token", given);
    window.history.replaceState(null, "", location.pathname + location.search);
  }
  return sessionStorage.getItem(STORE + ".token");
}

class Link {
  constructor(path) {
    const scheme = location.protocol === "https:" ? "wss:" : "ws:";
    const token = apiToken();
    const auth = token ? `&token=${encodeURIComponent(token)}` : "";
    this.url = `${scheme}//${location.host}${path}?owner=${encodeURIComponent(state.owner)}${auth}`;
    this.ws = null;
    this.failures = 0;
    this.timer = null;
  }

  connect() {
    clearTimeout(this.timer);
    const ws = new WebSocket(this.url);
    this.ws = ws;
    showLink("connecting…", "wait");
    ws.onopen = () => {
      this.failures = 0;
      showLink("connected", "ok");
      hideNotice("link");
      onOpen();
    };
    ws.onmessage = (e) => {
      let msg;
      try { msg = JSON.parse(e.data); } catch { return; }
      onMessage(msg);
    };
    ws.onclose = () => {
      if (this.ws !== ws) return;
      this.ws = null;
      const wait = Math.min(250 * 2 ** this.failures, 5000);
      this.failures += 1;
      showLink("reconnecting…", "down");
      if (this.failures > 2) notify(`Cannot reach the sluicegate server at ${location.host}. Retrying every few seconds…`, "link");
      this.timer = setTimeout(() => this.connect(), wait);
    };
  }

  send(message) {
    if (this.ws?.readyState !== WebSocket.OPEN) return false;
    this.ws.send(JSON.stringify(message));
    return true;
  }

  /** Drop the socket as a network failure would (used by tests and the page's own checks). */
  drop() { this.ws?.close(4000, "dropped"); }
}

let link = null;

function onOpen() {
  const turn = running();
  if (turn) {
    // Resume where we are: the server replays what we missed, then the live tail.
    turn.resumed = true;
    link.send({ action: "resume", id: turn.id, after: turn.seq, resumeToken: turn.token });
    if (turn.stopping) link.send({ action: "stop", id: turn.id, resumeToken: turn.token });
  }
  if (!ui.model.options.length) loadModels();
}

function onMessage(msg) {
  const turn = msg.id ? state.turns.find((t) => t.id === msg.id) : null;
  if (msg.type === "error") {
    if (turn && turn.status === "streaming") fail(turn, msg);
    else notify(`${TITLES[msg.code] || "Something went wrong"}: ${msg.message}`);
    return;
  }
  if (!turn) return;
  if (msg.type === "start") {
    turn.model = msg.model;
    turn.token = msg.resumeToken;  // kept with the conversation: a reload resumes with it
  } else if (msg.type === "delta") {
    if (msg.seq <= turn.seq) return;  // already shown (a replay after resume)
    if (msg.seq !== turn.seq + 1) {   // a gap: ask again from what we have
      link.send({ action: "resume", id: turn.id, after: turn.seq, resumeToken: turn.token });
      return;
    }
    turn.seq = msg.seq;
    turn.text += msg.text;
    turn.firstAt ??= Date.now();
    queueText(turn, msg.text);
  } else if (msg.type === "end") {
    flush();
    if (turn.status !== "streaming") return;  // already ended by an error sent before it
    turn.status = msg.stop_reason === "cancelled" ? "stopped" : "done";
    turn.stopReason = msg.stop_reason;
    turn.usage = msg.usage;
    turn.metrics = msg.metrics;
    delete turn.stopping;
    finish(turn);
  }
}

function fail(turn, msg) {
  flush();
  const gone = msg.code === "ResourceNotFoundException" && turn.resumed;
  // The server shutting down (or a replica lost) ends an answer it could not finish.
  const cut = msg.code === "ServiceUnavailableException";
  turn.status = gone || cut ? "interrupted" : "error";
  turn.error = gone
    ? "The connection dropped and the server no longer has the rest of this answer."
    : cut
      ? `The server could not finish this answer: ${msg.message}`
      : `${TITLES[msg.code] || "Something went wrong"}: ${msg.message}`;
  finish(turn);
}

function finish(turn) {
  views.get(turn)?.md.end();  // the answer is whole: show what was held back as it is
  renderFigures(turn);
  renderBadge(turn);
  save(true);
  setBusy(false);
}

// ---- sending and stopping ---------------------------------------------------------------------

function send() {
  const prompt = ui.prompt.value.trim();
  if (!prompt || running()) return;
  if (!ui.model.value) { notify("No model to send to yet: the model list has not loaded."); return; }
  const messages = history();
  messages.push({ role: "user", content: prompt });
  const id = "pg-" + randomId(8);
  const s = readSettings();
  const request = { action: "generate", id, model: s.model, messages, max_tokens: s.maxTokens };
  if (s.temperature !== null) request.temperature = s.temperature;   // unset: the model's default
  if (s.system.trim()) request.system = s.system;
  if (!link.send(request)) { notify("Not connected to the server. Your prompt is kept; send again once connected."); return; }
  const user = { role: "user", text: prompt };
  const answer = { role: "assistant", id, text: "", seq: 0, status: "streaming", model: s.model, sentAt: Date.now() };
  state.turns.push(user, answer);
  ui.prompt.value = "";
  follow = true;
  hideNotice();
  addTurn(user);
  addTurn(answer);
  setBusy(true);
  save();
}

/** The conversation so far as messages: answered pairs only, alternating user / assistant. */
function history() {
  const out = [];
  for (let i = 0; i + 1 < state.turns.length; i += 2) {
    const [u, a] = [state.turns[i], state.turns[i + 1]];
    if (u.role === "user" && a.role === "assistant" && a.text.trim() && a.status !== "error") {
      out.push({ role: "user", content: u.text }, { role: "assistant", content: a.text });
    }
  }
  return out;
}

function stop() {
  const turn = running();
  if (!turn) return;
  turn.stopping = true;
  link.send({ action: "stop", id: turn.id, resumeToken: turn.token });  // if offline: after the reconnect
  renderBadge(turn);
}

function newChat() {
  stop();
  state.turns = [];
  views.clear();
  ui.turns.replaceChildren();
  ui.empty.hidden = false;
  setBusy(false);
  save(true);
  ui.prompt.focus();
}

// ---- rendering ----------------------------------------------------------------------------

function addTurn(turn) {
  ui.empty.hidden = true;
  const li = document.createElement("li");
  li.className = `turn ${turn.role}`;
  if (turn.role === "user") {
    const p = document.createElement("div");
    p.className = "said";
    p.textContent = turn.text;
    li.append(p);
    ui.turns.append(li);
    return;
  }
  const answer = document.createElement("div");
  answer.className = "answer";
  const foot = document.createElement("div");
  foot.className = "foot";
  const badge = document.createElement("span");
  badge.className = "badge";
  const figures = document.createElement("span");
  figures.className = "figures";
  // What streaming buys, drawn: the wait for the first token against the whole answer.
  const timeline = document.createElement("div");
  timeline.className = "timeline";
  timeline.setAttribute("role", "img");
  const wait = document.createElement("span");
  wait.className = "wait";
  timeline.append(wait, document.createElement("span"));
  const line = document.createElement("div");
  line.className = "line";
  line.append(badge, figures);
  foot.append(line, timeline);
  li.append(answer, foot);
  const md = new MarkdownStream(answer, { onCopy: copy });
  views.set(turn, { li, md, figures, badge, timeline, wait });
  stickToBottom(() => {
    ui.turns.append(li);
    if (turn.text) md.push(turn.text);
    if (turn.status !== "streaming") md.end();
  });
  renderFigures(turn);
  renderBadge(turn);
}

// Tokens arrive faster than frames: gather them and paint once per frame.
const pending = new Map();
let frame = 0;

function queueText(turn, text) {
  pending.set(turn, (pending.get(turn) || "") + text);
  frame ||= requestAnimationFrame(flush);
}

function flush() {
  cancelAnimationFrame(frame);
  frame = 0;
  if (!pending.size) return;
  stickToBottom(() => {
    for (const [turn, text] of pending) {
      views.get(turn)?.md.push(text);
      renderFigures(turn);
    }
  });
  pending.clear();
  save();
}

// Follow the newest text until the reader scrolls up; follow again once they are back at the end.
let follow = true;
let lastTop = 0;

function onScroll() {
  const el = document.scrollingElement;
  if (el.scrollTop < lastTop - 2) follow = false;
  if (el.scrollHeight - el.scrollTop - el.clientHeight < 8) follow = true;
  lastTop = el.scrollTop;
}

function stickToBottom(change) {
  change();
  const el = document.scrollingElement;
  if (follow) el.scrollTop = el.scrollHeight;
  lastTop = el.scrollTop;
}

function renderBadge(turn) {
  const v = views.get(turn);
  if (!v) return;
  const labels = {
    streaming: turn.stopping ? "Stopping…" : "Generating…", done: "", stopped: "Stopped",
    error: "Error", interrupted: "Interrupted",
  };
  v.badge.textContent = labels[turn.status] ?? "";
  v.li.dataset.status = turn.status;
  v.li.querySelector(".error")?.remove();
  if (turn.error) {
    const e = document.createElement("p");
    e.className = "error";
    e.setAttribute("role", "alert");
    e.textContent = turn.error;
    v.li.insertBefore(e, v.li.lastChild);
  }
}

function renderFigures(turn) {
  const v = views.get(turn);
  if (!v) return;
  const parts = [];
  if (turn.status === "streaming") {
    const now = Date.now();
    if (turn.firstAt && turn.sentAt) parts.push(`first token ${ms(turn.firstAt - turn.sentAt)}`);
    else if (!turn.firstAt) parts.push("waiting for the first token");
    parts.push(`${turn.seq} tokens`);
    if (turn.firstAt && now - turn.firstAt > 250) parts.push(`${rate(turn.seq - 1, now - turn.firstAt)} tok/s`);
  } else if (turn.usage) {
    const m = turn.metrics || {};
    if (m.ttft_ms != null) parts.push(`first token ${ms(m.ttft_ms)}`);
    if (m.ttft_ms != null && m.duration_ms > m.ttft_ms && turn.usage.output_tokens > 1) {
      parts.push(`${rate(turn.usage.output_tokens - 1, m.duration_ms - m.ttft_ms)} tok/s`);
    }
    parts.push(`${turn.usage.input_tokens} in / ${turn.usage.output_tokens} out`);
    if (m.duration_ms != null) parts.push(`total ${ms(m.duration_ms)}`);
    parts.push(`stop: ${turn.stopReason}${REASONS[turn.stopReason] && turn.stopReason !== "cancelled" ? ` (${REASONS[turn.stopReason]})` : ""}`);
  }
  v.figures.textContent = parts.join(" · ");
  drawTimeline(turn, v);
}

function drawTimeline(turn, v) {
  let first = null;
  let total = null;
  if (turn.status === "streaming" && turn.sentAt) {
    total = Date.now() - turn.sentAt;
    first = turn.firstAt ? turn.firstAt - turn.sentAt : total;
  } else if (turn.metrics?.duration_ms && turn.metrics.ttft_ms != null) {
    [first, total] = [turn.metrics.ttft_ms, turn.metrics.duration_ms];
  }
  v.timeline.hidden = !total;
  if (!total) return;
  v.wait.style.width = `${Math.max(1, Math.min(100, (100 * first) / total))}%`;
  v.timeline.setAttribute("aria-label", `first token after ${ms(first)} of ${ms(total)}`);
  v.timeline.title = `text on screen after ${ms(first)}; the whole answer took ${ms(total)}`;
}

const ms = (t) => (t < 1000 ? `${Math.round(t)} ms` : `${(t / 1000).toFixed(1)} s`);
const rate = (n, t) => (t > 0 ? ((n * 1000) / t).toFixed(1) : "–");

function setBusy(busy) {
  ui.stop.hidden = !busy;
  ui.send.hidden = busy;
}

function showLink(text, kind) {
  ui.link.textContent = text;
  ui.link.dataset.state = kind;
}

function notify(text, tag = "") {
  ui.notice.textContent = text;
  ui.notice.dataset.tag = tag;
  ui.notice.hidden = false;
}

function hideNotice(tag) {
  if (tag === undefined || ui.notice.dataset.tag === tag) ui.notice.hidden = true;
}

async function copy(text, button) {
  try {
    await navigator.clipboard.writeText(text);
  } catch {
    const area = document.createElement("textarea");  // http pages on other hosts have no clipboard API
    area.value = text;
    document.body.append(area);
    area.select();
    document.execCommand("copy");
    area.remove();
  }
  button.textContent = "Copied";
  setTimeout(() => { button.textContent = "Copy"; }, 1500);
}

// ---- settings and models ----------------------------------------------------------------------

function readSettings() {
  const s = state.settings;
  s.model = ui.model.value;
  s.system = ui.system.value;
  const max = parseInt(ui.maxTokens.value, 10);
  s.maxTokens = Number.isFinite(max) ? max : 1024;
  const t = parseFloat(ui.temperature.value);
  s.temperature = Number.isFinite(t) ? t : null;
  save();
  return s;
}

async function loadModels() {
  let body;
  try {
    const response = await fetch("/sluicegate/models", { cache: "no-store" });
    if (!response.ok) throw new Error(`HTTP ${response.status}`);
    body = await response.json();
  } catch (e) {
    notify(`Could not load the model list (${e.message}). Is the server running?`);
    return null;
  }
  ui.model.replaceChildren(...body.models.map((m) => new Option(`${m.id} · ${m.provider}`, m.id)));
  if (!body.models.length) notify("The server has no models configured.");
  if (body.models.some((m) => m.id === state.settings.model)) ui.model.value = state.settings.model;
  return body;
}

// ---- start ------------------------------------------------------------------------------------

async function main() {
  ui.system.value = state.settings.system;
  ui.maxTokens.value = state.settings.maxTokens;
  ui.temperature.value = state.settings.temperature ?? "";
  for (const turn of state.turns) addTurn(turn);
  setBusy(Boolean(running()));

  ui.composer.addEventListener("submit", (e) => { e.preventDefault(); send(); });
  ui.prompt.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); send(); }
  });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Escape" && running() && !ui.settings.open) { e.preventDefault(); stop(); }
  });
  ui.stop.addEventListener("click", stop);
  ui.newChat.addEventListener("click", newChat);
  ui.settingsOpen.addEventListener("click", () => ui.settings.showModal());
  ui.settings.addEventListener("close", readSettings);
  ui.model.addEventListener("change", readSettings);
  addEventListener("pagehide", () => save(true));
  addEventListener("scroll", onScroll, { passive: true });
  setInterval(() => {                       // API Gateway closes idle connections after 10 min
    link?.send({ action: "ping" });
  }, 5 * 60 * 1000);
  setInterval(() => { const t = running(); if (t) renderFigures(t); }, 500);

  const models = await loadModels();
  link = new Link(models?.websocket || "/ws");
  window.sluicegate = { link, state };   // for tests and the curious
  link.connect();
  ui.prompt.focus();
}

main();
