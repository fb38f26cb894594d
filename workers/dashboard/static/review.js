// moodwatch review queue: the posts behind an alert (or a channel), decisions by keyboard, precision.
// Loaded before app.js, which provides el(), api(), post(), postImage(), evidenceList(), state.
"use strict";

const POLARITIES = ["positive", "neutral", "negative"];
const NEGATIVE = new Set(["anger", "disgust", "fear", "sadness"]);
const review = { params: null, posts: [], index: 0, mode: "browse", editor: null, thresholds: {} };

function fits(emotion, polarity) {
  return polarity === "neutral" || NEGATIVE.has(emotion) === (polarity === "negative");
}

function emotionsFor(polarity) {
  return (state.config ? state.config.emotions : []).filter((e) => fits(e, polarity));
}

function announce(name, detail) {
  document.dispatchEvent(new CustomEvent(`moodwatch:${name}`, { detail }));
}

function toast(text, kind = "info") {
  const node = document.getElementById("queue-message");
  node.textContent = text;
  node.className = `toast ${kind}`;
  node.hidden = false;
}

function describeReview(r) {
  const label = r.action === "escalate" ? "escalated" : `${r.action === "confirm" ? "confirmed" : "overturned"} → ${r.human_polarity} · ${r.human_dominant_emotion}`;
  return `${r.reviewer} ${label}${r.note ? ` — “${r.note}”` : ""} (${fmtTime(r.reviewed_at)})`;
}

// -- the queue ------------------------------------------------------------------------------------
async function openQueue(params) {
  review.params = params;
  const data = await api("/api/queue", { ...params, range: params.alert_id ? "" : state.range, size: 50 });
  review.posts = data.posts;
  review.index = Math.max(0, data.posts.findIndex((p) => p.status === "open"));
  review.mode = "browse";
  const title = document.getElementById("queue-title");
  if (data.alert) {
    const a = data.alert;
    title.textContent = `alert ${a.kind.replace("_", " ")} in ${a.channel}, ${fmtTime(a.window_start)}–${fmtTime(a.window_end).slice(11)} · ${data.posts.length} posts, ${data.open} open`;
  } else {
    title.textContent = `${data.channel ? `channel ${data.channel}` : "all channels"} · ${state.range} · ${data.posts.length} posts, ${data.open} open`;
  }
  renderQueue();
  const card = document.getElementById("queue-card");
  card.dataset.alertId = params.alert_id || "";
  document.getElementById("queue").focus({ preventScroll: true });
  card.scrollIntoView({ block: "start" });
  announce("queue", { count: data.posts.length });
  return data;
}

function renderQueue() {
  const list = document.getElementById("queue");
  list.replaceChildren(...review.posts.map(queueItem));
  document.getElementById("queue-empty").hidden = review.posts.length > 0;
  select(review.index);
}

function queueItem(p, i) {
  const item = el("article", { class: `queue-item status-${p.status}`, "data-post-id": p.post_id, "data-status": p.status });
  item.addEventListener("click", () => select(i));
  const side = el("div", { class: "detail" });
  const meta = el("div", { class: "meta" });
  meta.append(el("b", {}, p.channel), document.createTextNode(
    ` · ${fmtTime(p.created_at)} · model: ${p.polarity} ${fmtPct(p.negative_score)} negative · ${p.dominant_emotion}`));
  meta.append(el("span", { class: `badge ${p.status}` }, p.status));
  side.append(meta);
  side.append(el("div", { class: "why" }, `priority ${p.priority.toFixed(2)}: ${p.reasons.join(", ")}`));
  if (p.text) side.append(el("p", { class: "text post-text" }, p.text));
  side.append(evidenceList(p));
  if (p.reviews.length) {
    const history = el("ul", { class: "history" });
    for (const r of p.reviews) history.append(el("li", { class: "review-entry" }, describeReview(r)));
    side.append(history);
  }
  side.append(actions(p));
  item.append(postImage(p), side);
  return item;
}

function actions(p) {
  const box = el("div", { class: "actions" });
  const canWrite = state.user && state.user.role !== "viewer";
  for (const [action, label] of [["confirm", "confirm (c)"], ["overturn", "overturn (o)"], ["escalate", "escalate (e)"]]) {
    const b = el("button", { type: "button", class: `act act-${action}`, "data-action": action }, label);
    if (!canWrite) { b.disabled = true; b.title = "viewers cannot review (reviewer role needed)"; }
    b.addEventListener("click", (ev) => { ev.stopPropagation(); command(action); });
    box.append(b);
  }
  const editor = el("div", { class: "overturn", hidden: "" });
  const pol = el("select", { class: "overturn-polarity", "aria-label": "right polarity" });
  pol.append(...POLARITIES.map((v) => el("option", { value: v }, v)));
  const emo = el("select", { class: "overturn-emotion", "aria-label": "right dominant emotion" });
  pol.addEventListener("change", () => setPolarity(pol.value));
  editor.append(document.createTextNode("right label: "), pol, emo,
    el("span", { class: "hint" }, " p/u/n polarity · ←/→ emotion · Enter save · Esc cancel"));
  const note = el("input", { class: "note", maxlength: 2000, placeholder: "note (optional; / to type, Enter to save)" });
  note.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter") { ev.preventDefault(); note.blur(); if (review.mode !== "browse") submit(review.mode); }
    if (ev.key === "Escape") { note.blur(); }
    ev.stopPropagation();
  });
  box.append(editor, note);
  return box;
}

function current() { return review.posts[review.index]; }
function currentNode() { return document.querySelectorAll("#queue .queue-item")[review.index]; }

function select(i) {
  if (!review.posts.length) return;
  review.index = Math.min(review.posts.length - 1, Math.max(0, i));
  for (const node of document.querySelectorAll("#queue .queue-item.selected")) node.classList.remove("selected");
  const node = currentNode();
  node.classList.add("selected");
  node.scrollIntoView({ block: "nearest" });
  cancel();
}

function cancel() {
  review.mode = "browse";
  for (const node of document.querySelectorAll("#queue .overturn")) node.hidden = true;
}

function setPolarity(polarity) {
  const node = currentNode(), p = current();
  node.querySelector(".overturn-polarity").value = polarity;
  const emo = node.querySelector(".overturn-emotion");
  const options = emotionsFor(polarity);
  const ranked = options.slice().sort((a, b) => ((p.emotions || {})[b] || 0) - ((p.emotions || {})[a] || 0));
  const keep = options.includes(emo.value) ? emo.value : ranked.find((e) => e !== p.dominant_emotion) || options[0];
  emo.replaceChildren(...options.map((e) => el("option", { value: e }, e)));
  emo.value = keep;
}

function stepEmotion(delta) {
  const emo = currentNode().querySelector(".overturn-emotion");
  const n = emo.options.length;
  emo.selectedIndex = (emo.selectedIndex + delta + n) % n;
}

function command(action) {
  const p = current();
  if (!p) return;
  if (action === "confirm") return submit("confirm");
  if (action === "escalate") {
    review.mode = "escalate";
    currentNode().querySelector(".note").focus();
    toast("escalate: type a note (optional), Enter to send");
    return;
  }
  review.mode = "overturn";
  currentNode().querySelector(".overturn").hidden = false;
  setPolarity(p.polarity === "negative" ? "positive" : "negative");
}

async function submit(action) {
  const p = current(), node = currentNode();
  const body = { post_id: p.post_id, action };
  const note = node.querySelector(".note").value.trim();
  if (note) body.note = note;
  if (action === "overturn") {
    body.polarity = node.querySelector(".overturn-polarity").value;
    body.dominant_emotion = node.querySelector(".overturn-emotion").value;
  }
  cancel();
  try {
    const saved = await post("/api/reviews", body);
    p.reviews.unshift(saved);
    p.status = { confirm: "confirmed", overturn: "overturned", escalate: "escalated" }[saved.action];
    const index = review.index;
    renderQueue();
    const next = review.posts.findIndex((q, i) => i > index && q.status === "open");
    select(next >= 0 ? next : index);
    toast(`saved: ${describeReview(saved)}`, "ok");
    await refreshPrecision();
    announce("reviewed", { ok: true, review: saved });
  } catch (err) {
    toast(`refused: ${err.reason || err.message}`, "error");
    announce("reviewed", { ok: false, status: err.status, message: err.reason || err.message });
  }
}

function typing(target) {
  return target && ["INPUT", "SELECT", "TEXTAREA"].includes(target.tagName);
}

function onKey(ev) {
  if (!review.posts.length || ev.ctrlKey || ev.metaKey || ev.altKey || typing(ev.target)) return;
  const keys = review.mode === "overturn" ? {
    p: () => setPolarity("positive"), u: () => setPolarity("neutral"), n: () => setPolarity("negative"),
    ArrowLeft: () => stepEmotion(-1), ArrowRight: () => stepEmotion(1), Enter: () => submit("overturn"),
    Escape: cancel, "/": () => currentNode().querySelector(".note").focus(),
  } : {
    j: () => select(review.index + 1), ArrowDown: () => select(review.index + 1),
    k: () => select(review.index - 1), ArrowUp: () => select(review.index - 1),
    c: () => command("confirm"), o: () => command("overturn"), e: () => command("escalate"),
    "/": () => currentNode().querySelector(".note").focus(), Escape: cancel,
  };
  const fn = keys[ev.key];
  if (!fn) return;
  ev.preventDefault();
  fn();
}

// -- precision and thresholds ---------------------------------------------------------------------
const fmtRatio = (share, part, whole) => (share == null ? "–" : `${fmtPct(share)} (${part}/${whole})`);

async function refreshPrecision() {
  const [data, thresholds] = await Promise.all([api("/api/precision", { range: state.range }), api("/api/thresholds")]);
  review.thresholds = Object.fromEntries(thresholds.channels.map((t) => [t.channel, t]));
  const channels = new Set([...data.channels.map((c) => c.channel), ...Object.keys(review.thresholds)]);
  const rows = [...channels].sort().map((name) => data.channels.find((c) => c.channel === name) || { channel: name });
  const body = document.querySelector("#precision tbody");
  body.replaceChildren(...rows.map(precisionRow));
  document.getElementById("precision-empty").hidden = data.channels.length > 0;
  announce("precision", data);
}

function precisionRow(c) {
  const tr = el("tr", { class: "precision-row", "data-channel": c.channel });
  const t = review.thresholds[c.channel] || {};
  const th = [t.spike_min_count, t.spike_alpha_arm, t.spike_min_effect].map((v) => (v == null ? "global" : String(v))).join(" · ");
  tr.append(
    el("td", {}, c.channel),
    el("td", {}, c.reviews == null ? "0" : String(c.reviews)),
    el("td", { class: "model-precision" }, fmtRatio(c.model_precision, c.flagged_confirmed, c.flagged_reviewed)),
    el("td", { class: "alert-precision" }, fmtRatio(c.alert_precision, c.alerts_confirmed, c.alerts_judged)),
    el("td", {}, c.escalated_posts == null ? "0" : String(c.escalated_posts)),
    el("td", { class: "thresholds-cell" }, th),
  );
  const cell = el("td");
  if (state.user && state.user.role === "admin") {
    const edit = el("button", { type: "button", class: "small link" }, "edit");
    edit.addEventListener("click", () => editThresholds(c.channel));
    cell.append(edit);
  }
  tr.append(cell);
  return tr;
}

function editThresholds(channel) {
  const form = document.getElementById("thresholds-form");
  const t = review.thresholds[channel] || {};
  form.dataset.channel = channel;
  document.getElementById("thresholds-channel").textContent = channel;
  document.getElementById("th-min-count").value = t.spike_min_count ?? "";
  document.getElementById("th-alpha").value = t.spike_alpha_arm ?? "";
  document.getElementById("th-effect").value = t.spike_min_effect ?? "";
  document.getElementById("th-note").value = "";
  form.hidden = false;
}

async function saveThresholds(ev) {
  ev.preventDefault();
  const form = document.getElementById("thresholds-form");
  const num = (id) => { const v = document.getElementById(id).value; return v === "" ? null : Number(v); };
  try {
    await post(`/api/thresholds/${encodeURIComponent(form.dataset.channel)}`, {
      spike_min_count: num("th-min-count"), spike_alpha_arm: num("th-alpha"), spike_min_effect: num("th-effect"),
      note: document.getElementById("th-note").value || null,
    });
    form.hidden = true;
    await refreshPrecision();
  } catch (err) {
    toast(`thresholds refused: ${err.reason || err.message}`, "error");
  }
}

let reviewReady = false;
function initReview() {
  if (reviewReady) return;
  reviewReady = true;
  document.addEventListener("keydown", onKey);
  document.getElementById("queue-channel").addEventListener("click", () => openQueue({ channel: state.channel }));
  document.getElementById("thresholds-form").addEventListener("submit", saveThresholds);
  document.getElementById("th-cancel").addEventListener("click", () => { document.getElementById("thresholds-form").hidden = true; });
}
