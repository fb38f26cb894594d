// moodwatch dashboard: vanilla JS + SVG, data from the dashboard's JSON API (Elasticsearch aggregations).
"use strict";

const SVG_NS = "http://www.w3.org/2000/svg";
const CHANNEL_COLORS = ["#1f77b4", "#e8590c", "#2f9e44", "#c2255c", "#7048e8", "#0c8599", "#a61e4d", "#5c940d"];
const EMOTION_COLORS = {
  anger: "#c92a2a", disgust: "#8d6e63", sadness: "#1c7ed6", fear: "#6741d9",
  excitement: "#f08c00", awe: "#0ca678", contentment: "#66a80f", amusement: "#fcc419",
  joy: "#fcc419", surprise: "#0ca678", neutral: "#adb5bd",  // Emotion6 labels of the emotion mix
};
const state = { config: null, range: null, channel: "", timer: null, colors: {}, user: null, csrf: "" };

function el(tag, attrs = {}, text = null) {
  const ns = ["svg", "path", "line", "rect", "text", "g", "circle", "image", "polygon", "title"].includes(tag);
  const node = ns ? document.createElementNS(SVG_NS, tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (v !== null && v !== undefined) node.setAttribute(k, String(v));
  }
  if (text !== null) node.textContent = text;
  return node;
}

class ApiError extends Error {
  constructor(path, status, message) { super(`${path}: ${message || `HTTP ${status}`}`); this.status = status; this.reason = message; }
}

async function answer(path, resp) {
  let body = null;
  try { body = await resp.json(); } catch (e) { body = null; }
  if (resp.status === 401 && path !== "/api/login") showLogin();
  if (!resp.ok) throw new ApiError(path, resp.status, body && body.error);
  return body;
}

async function api(path, params = {}) {
  const qs = new URLSearchParams(Object.entries(params).filter(([, v]) => v !== "" && v != null));
  return answer(path, await fetch(`${path}?${qs}`, { credentials: "same-origin" }));
}

// Every write carries the session's CSRF token; the server refuses a write without it.
async function post(path, body) {
  const resp = await fetch(path, {
    method: "POST", credentials: "same-origin", body: JSON.stringify(body),
    headers: { "Content-Type": "application/json", "X-CSRF-Token": state.csrf },
  });
  return answer(path, resp);
}

const fmtPct = (v) => (v == null ? "–" : `${(100 * v).toFixed(0)}%`);
const fmtTime = (iso) => new Date(iso).toISOString().replace("T", " ").slice(0, 16);

function colorFor(channel) {
  if (!(channel in state.colors)) {
    state.colors[channel] = CHANNEL_COLORS[Object.keys(state.colors).length % CHANNEL_COLORS.length];
  }
  return state.colors[channel];
}

function frame(svg, start, end, yMax, yTicks, yFmt) {
  svg.replaceChildren();
  const vb = svg.viewBox.baseVal;
  const m = { l: 44, r: 12, t: 14, b: 24 };
  const w = vb.width - m.l - m.r, h = vb.height - m.t - m.b;
  const t0 = Date.parse(start), t1 = Date.parse(end);
  const x = (t) => m.l + ((Date.parse(t) - t0) / Math.max(1, t1 - t0)) * w;
  const y = (v) => m.t + h - (v / yMax) * h;
  const grid = el("g", { class: "grid" }), axis = el("g", { class: "axis" });
  for (const v of yTicks) {
    grid.append(el("line", { x1: m.l, x2: m.l + w, y1: y(v), y2: y(v) }));
    axis.append(el("text", { x: m.l - 6, y: y(v) + 4, "text-anchor": "end" }, yFmt(v)));
  }
  const nTicks = 6;
  for (let i = 0; i <= nTicks; i++) {
    const t = new Date(t0 + ((t1 - t0) * i) / nTicks);
    const label = (t1 - t0) > 2 * 86400e3 ? t.toISOString().slice(5, 16).replace("T", " ") : t.toISOString().slice(11, 16);
    axis.append(el("text", { x: m.l + (w * i) / nTicks, y: m.t + h + 16, "text-anchor": "middle" }, label));
  }
  svg.append(grid, axis);
  return { x, y, m, w, h };
}

function legend(node, items) {
  node.replaceChildren(...items.map(([label, color]) => {
    const span = el("span", { class: "legend-item" });
    const sw = el("span", { class: "swatch" });
    sw.style.background = color;
    span.append(sw, document.createTextNode(label));
    return span;
  }));
}

function renderNegative(timeline, alerts) {
  const svg = document.getElementById("negative-chart");
  if (!timeline.buckets.length) { svg.replaceChildren(); legend(document.getElementById("negative-legend"), []); return; }
  const half = timeline.interval_s * 500;
  const f = frame(svg, timeline.start, timeline.end, 1, [0, 0.25, 0.5, 0.75, 1], fmtPct);
  const mid = (t) => new Date(Date.parse(t) + half).toISOString();
  for (const ch of timeline.channels) {
    const pts = timeline.buckets
      .filter((b) => b.channels[ch] && b.channels[ch].count > 0)
      .map((b) => [f.x(mid(b.t)), f.y(b.channels[ch].negative_share)]);
    if (!pts.length) continue;
    const d = pts.map(([px, py], i) => `${i ? "L" : "M"}${px.toFixed(1)},${py.toFixed(1)}`).join("");
    const path = el("path", { class: "series", d, stroke: colorFor(ch), "data-channel": ch });
    path.append(el("title", {}, ch));
    svg.append(path);
  }
  const t0 = Date.parse(timeline.start), t1 = Date.parse(timeline.end);
  for (const a of alerts) {
    const t = Date.parse(a.window_start);
    if (t < t0 || t > t1) continue;
    const g = el("g", { class: `marker alert-marker kind-${a.kind}`, "data-alert-id": a.alert_id });
    const xx = f.x(a.window_start), color = colorFor(a.channel);
    g.append(el("line", { x1: xx, x2: xx, y1: f.m.t, y2: f.m.t + f.h, stroke: color }));
    g.append(el("polygon", { points: `${xx - 6},${f.m.t - 10} ${xx + 6},${f.m.t - 10} ${xx},${f.m.t}`, fill: color }));
    g.append(el("title", {}, `${a.kind} · ${a.channel} · ${fmtTime(a.window_start)}\n${a.message}`));
    svg.append(g);
  }
  legend(document.getElementById("negative-legend"), timeline.channels.map((c) => [c, colorFor(c)]));
}

function renderEmotions(data) {
  const svg = document.getElementById("emotion-chart");
  const rows = data.buckets.filter((b) => b.count > 0);
  if (!rows.length) { svg.replaceChildren(); return; }
  const f = frame(svg, data.start, data.end, 1, [0, 0.5, 1], fmtPct);
  const half = data.interval_s * 500;
  const xs = rows.map((b) => f.x(new Date(Date.parse(b.t) + half).toISOString()));
  const base = rows.map(() => 0);
  for (const e of data.emotions) {
    const top = rows.map((b, i) => base[i] + (b.mean[e] || 0));
    const upper = xs.map((px, i) => `${i ? "L" : "M"}${px.toFixed(1)},${f.y(Math.min(1, top[i])).toFixed(1)}`).join("");
    const lower = xs.map((px, i) => [px, base[i]]).reverse()
      .map(([px, v]) => `L${px.toFixed(1)},${f.y(Math.min(1, v)).toFixed(1)}`).join("");
    const path = el("path", { class: "layer", d: `${upper}${lower}Z`, fill: EMOTION_COLORS[e], "fill-opacity": 0.85, "data-emotion": e });
    path.append(el("title", {}, e));
    svg.append(path);
    top.forEach((v, i) => { base[i] = v; });
  }
  legend(document.getElementById("emotion-legend"), data.emotions.map((e) => [e, EMOTION_COLORS[e]]));
}

function renderAlerts(alerts) {
  const body = document.querySelector("#alerts tbody");
  body.replaceChildren(...alerts.slice(0, 20).map((a) => {
    const tr = el("tr", { class: "alert-row", "data-alert-id": a.alert_id });
    tr.append(
      el("td", {}, fmtTime(a.window_start)),
      el("td", {}, a.channel),
      el("td", { class: `kind-${a.kind}` }, a.kind.replace("_", " ")),
      el("td", {}, fmtPct(a.observed_negative_share)),
      el("td", {}, fmtPct(a.baseline_negative_share)),
      el("td", {}, a.p_value.toExponential(1)),
      el("td", {}, a.previous_dominant_emotion ? `${a.previous_dominant_emotion} → ${a.dominant_emotion}` : a.dominant_emotion),
    );
    const open = el("button", { type: "button", class: "small review-alert", "data-alert-id": a.alert_id }, "review");
    open.addEventListener("click", () => openQueue({ alert_id: a.alert_id }));
    const cell = el("td");
    cell.append(open);
    tr.append(cell);
    tr.title = a.message;
    return tr;
  }));
  document.getElementById("alerts-empty").hidden = alerts.length > 0;
}

function renderChannels(data) {
  const body = document.querySelector("#channels tbody");
  body.replaceChildren(...data.channels.map((c) => {
    const tr = el("tr", { class: "channel-row" });
    const name = el("td");
    const sw = el("span", { class: "swatch" });
    sw.style.background = colorFor(c.channel);
    name.append(sw, document.createTextNode(c.channel));
    tr.append(name, el("td", {}, c.count), el("td", {}, c.negative), el("td", {}, fmtPct(c.negative_share)),
      el("td", {}, c.dominant_emotion || "–"));
    return tr;
  }));
  const select = document.getElementById("channel");
  const current = state.channel;
  select.replaceChildren(el("option", { value: "" }, "all channels"),
    ...data.channels.map((c) => el("option", { value: c.channel }, c.channel)));
  select.value = data.channels.some((c) => c.channel === current) ? current : "";
}

// The post's image as SVG: the stored thumbnail (or the served file) stretched over the source
// pixel space, so the region boxes (source pixels) land where they belong; a placeholder otherwise.
function postImage(p) {
  const W = Math.max(1, p.image_width), H = Math.max(1, p.image_height);
  const svg = el("svg", { viewBox: `0 0 ${W} ${H}`, preserveAspectRatio: "xMidYMid meet", class: "post-image" });
  const href = p.thumbnail_url || p.image_url;
  if (href) {
    svg.append(el("image", { href, x: 0, y: 0, width: W, height: H, preserveAspectRatio: "none", class: p.thumbnail_url ? "thumbnail" : "original" }));
  } else {
    svg.append(el("rect", { class: "placeholder", x: 0, y: 0, width: W, height: H, fill: "#dfe3e8" }));
    const why = p.image_ref === "inline" ? "inline image" : "image not served";
    svg.append(el("text", { class: "placeholder-text", x: W / 2, y: H / 2, "text-anchor": "middle", "font-size": Math.max(8, W / 16) }, `${why} · ${W}×${H}`));
  }
  for (const r of p.regions || []) {
    const box = el("rect", {
      class: `region-box ${r.polarity}`, x: r.x0, y: r.y0, width: r.x1 - r.x0, height: r.y1 - r.y0,
    });
    box.append(el("title", {}, `${r.dominant_emotion} · AR ${r.score.toFixed(2)} (objectness ${r.objectness.toFixed(2)}, senti ${r.senti.toFixed(2)})`));
    svg.append(box);
  }
  return svg;
}

function evidenceList(p) {
  const ol = el("ol", { class: "evidence" });
  for (const ev of p.evidence || []) {
    const li = el("li", {}, ev.text + " ");
    li.append(el("span", { class: "em" }, `(${ev.emotion}, ${ev.similarity.toFixed(2)})`));
    ol.append(li);
  }
  return ol;
}

function galleryCard(p) {
  const card = el("div", { class: "gallery-card", "data-post-id": p.post_id });
  const svg = postImage(p);
  const side = el("div");
  const meta = el("div", { class: "meta" });
  meta.append(el("b", {}, p.channel), document.createTextNode(` · ${fmtTime(p.created_at)} · negative ${fmtPct(p.negative_score)} · ${p.dominant_emotion}`));
  side.append(meta);
  if (p.text) side.append(el("div", { class: "text" }, p.text.length > 200 ? `${p.text.slice(0, 200)}…` : p.text));
  side.append(evidenceList(p));
  card.append(svg, side);
  return card;
}

function renderGallery(data) {
  document.getElementById("gallery").replaceChildren(...data.posts.map(galleryCard));
  document.getElementById("gallery-empty").hidden = data.posts.length > 0;
}

async function refresh() {
  const status = document.getElementById("status");
  const range = state.range, channel = state.channel;
  try {
    const [timeline, emotions, channels, alerts, gallery] = await Promise.all([
      api("/api/timeline", { range, channels: channel }),
      api("/api/emotions", { range, channel }),
      api("/api/channels", { range }),
      api("/api/alerts", { range }),
      api("/api/gallery", { range, channel, size: 12 }),
    ]);
    renderChannels(channels);
    renderNegative(timeline, alerts.alerts);
    renderEmotions(emotions);
    renderAlerts(alerts.alerts);
    renderGallery(gallery);
    await refreshPrecision();
    status.className = "status";
    status.textContent = `updated ${new Date().toLocaleTimeString()} · ${timeline.interval_s ? `${timeline.interval_s}s buckets` : "no data"}`;
    document.body.dataset.loaded = "true";
  } catch (err) {
    status.className = "status error";
    status.textContent = `error: ${err.message}`;
    document.body.dataset.loaded = "error";
  }
}

function showLogin() {
  clearInterval(state.timer);
  state.user = null;
  document.getElementById("main").hidden = true;
  document.getElementById("login").hidden = false;
  document.getElementById("whoami").hidden = true;
  document.getElementById("logout").hidden = true;
  for (const node of document.querySelectorAll(".signed-in")) node.hidden = true;
  document.getElementById("status").textContent = "log in to see the dashboard";
  document.body.dataset.loaded = "login";
  document.getElementById("login-user").focus();
}

async function login(event) {
  event.preventDefault();
  const error = document.getElementById("login-error");
  try {
    const body = await post("/api/login", {
      username: document.getElementById("login-user").value, password: document.getElementById("login-password").value,
    });
    state.csrf = body.csrf_token;
    document.getElementById("login-password").value = "";
    error.hidden = true;
    await start(body.user);
  } catch (err) {
    error.textContent = err.status === 401 ? "wrong user name or password" : (err.reason || err.message);
    error.hidden = false;
  }
}

async function logout() {
  try { await post("/api/logout", {}); } finally { location.reload(); }
}

async function start(user) {
  state.user = user;
  document.body.dataset.role = user.role;
  const who = document.getElementById("whoami");
  who.textContent = `${user.name} · ${user.role}`;
  who.hidden = false;
  document.getElementById("logout").hidden = user.auth_method === "proxy";
  document.getElementById("login").hidden = true;
  document.getElementById("main").hidden = false;
  for (const node of document.querySelectorAll(".signed-in")) node.hidden = false;
  state.config = await api("/api/config");
  const params = new URLSearchParams(location.search);
  state.range = params.get("range") || state.config.default_range;
  state.channel = params.get("channel") || "";
  const select = document.getElementById("range");
  select.replaceChildren(...state.config.ranges.map((r) => el("option", { value: r }, r)));
  select.value = state.range;
  initReview();
  await refresh();
  const alertId = params.get("alert");
  if (alertId) await openQueue({ alert_id: alertId });
  clearInterval(state.timer);
  if (state.config.refresh_s > 0) state.timer = setInterval(refresh, state.config.refresh_s * 1000);
}

async function main() {
  document.getElementById("login-form").addEventListener("submit", login);
  document.getElementById("logout").addEventListener("click", logout);
  const select = document.getElementById("range");
  select.addEventListener("change", () => { state.range = select.value; refresh(); });
  const ch = document.getElementById("channel");
  ch.addEventListener("change", () => { state.channel = ch.value; refresh(); });
  const session = await api("/api/session");
  state.csrf = session.csrf_token;
  if (session.user) await start(session.user);
  else showLogin();
}

main();
