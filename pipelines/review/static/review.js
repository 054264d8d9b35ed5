// pearl review: the grid, filters, detail view, decisions, quarantine and stats tabs.
// Everything comes from this server's /api/...; nothing is fetched from elsewhere.
"use strict";

const $ = (id) => document.getElementById(id);
const THUMB = 192;
const DETAIL = 384;
const PAGE = 48;

const S = {
  info: null,
  fields: {},
  query: { f: [], source: "", split: [], decision: "", sort: "key", order: "asc" },
  overlay: { mesh: true, kp: true, parts: ["body", "hands", "face"] },
  offset: 0,
  rows: [],
  total: 0,
  sel: 0,
  detail: false,
  q: { stage: "", reason: "", source: "", offset: 0, total: 0 },
  tab: "persons",
  statsTimer: null,
  viewer: null,
  seq: 0,
};

// ---------------------------------------------------------------------------------------------
// helpers

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.classList.toggle("hidden", !message);
}

async function api(path, params, options) {
  const url = params ? `${path}?${params}` : path;
  const response = await fetch(url, options);
  const body = await response.json().catch(() => ({ error: `${response.status} ${response.statusText}` }));
  if (!response.ok) {
    showError(body.error || `${response.status} ${response.statusText}`);
    throw new Error(body.error);
  }
  showError("");
  return body;
}

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (k === "class") node.className = v;
    else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(node.dataset, v);
    else node.setAttribute(k, v);
  }
  for (const c of children) node.append(c instanceof Node ? c : document.createTextNode(String(c)));
  return node;
}

function fmt(v) {
  if (v === null || v === undefined) return "–";
  if (typeof v === "number") return Number.isInteger(v) ? String(v) : v.toPrecision(4);
  if (typeof v === "boolean") return v ? "yes" : "no";
  return String(v);
}

function queryParams(extra) {
  const p = new URLSearchParams();
  for (const f of S.query.f) p.append("f", f);
  for (const s of S.query.split) p.append("split", s);
  if (S.query.source) p.set("source", S.query.source);
  if (S.query.decision) p.set("decision", S.query.decision);
  p.set("sort", S.query.sort);
  p.set("order", S.query.order);
  for (const [k, v] of Object.entries(extra || {})) p.set(k, v);
  return p;
}

function overlayUrl(key, size) {
  const p = new URLSearchParams({ key, size, mesh: S.overlay.mesh ? 1 : 0, kp: S.overlay.kp ? 1 : 0,
    parts: S.overlay.parts.join(",") });
  return `/api/overlay.jpg?${p}`;
}

function saveHash() {
  const state = { query: S.query, overlay: S.overlay, offset: S.offset, sel: S.sel, tab: S.tab };
  history.replaceState(null, "", "#" + encodeURIComponent(JSON.stringify(state)));
}

function loadHash() {
  if (location.hash.length < 2) return;
  try {
    const state = JSON.parse(decodeURIComponent(location.hash.slice(1)));
    Object.assign(S.query, state.query || {});
    Object.assign(S.overlay, state.overlay || {});
    S.offset = state.offset || 0;
    S.sel = state.sel || 0;
    S.tab = state.tab || "persons";
  } catch (e) { /* a hand-edited hash: start afresh */ }
}

// ---------------------------------------------------------------------------------------------
// filters

function opsFor(kind) {
  return kind === "bool"
    ? [["true", "is true"], ["false", "is false"]]
    : [["lt", "<"], ["le", "≤"], ["gt", ">"], ["ge", "≥"], ["eq", "="], ["ne", "≠"], ["nan", "not measured"],
       ["notnan", "measured"]];
}

function fillFieldSelects() {
  const condField = $("cond-field");
  const sort = $("sort");
  condField.innerHTML = "";
  sort.innerHTML = "";
  for (const [value, label] of [["key", "key"], ["source", "source"], ["split", "split"], ["decision_time", "decision time"]]) {
    sort.append(el("option", { value }, label));
  }
  for (const group of S.info.groups) {
    const g1 = el("optgroup", { label: group });
    const g2 = el("optgroup", { label: group });
    for (const f of S.info.fields.filter((x) => x.group === group)) {
      g1.append(el("option", { value: f.name, title: f.doc }, f.name));
      g2.append(el("option", { value: f.name, title: f.doc }, f.name));
    }
    condField.append(g1);
    sort.append(g2);
  }
  condField.addEventListener("change", fillOps);
  fillOps();
}

function fillOps() {
  const f = S.fields[$("cond-field").value];
  const op = $("cond-op");
  op.innerHTML = "";
  for (const [value, label] of opsFor(f ? f.kind : "float")) op.append(el("option", { value }, label));
  updateValueBox();
}

function updateValueBox() {
  const op = $("cond-op").value;
  $("cond-value").classList.toggle("hidden", ["true", "false", "nan", "notnan"].includes(op));
}

function renderFilters() {
  const splits = $("splits");
  splits.innerHTML = "";
  for (const s of S.info.splits) {
    const box = el("input", { type: "checkbox", value: s, class: "split-box" });
    box.checked = S.query.split.includes(s);
    box.addEventListener("change", () => {
      S.query.split = [...document.querySelectorAll(".split-box:checked")].map((b) => b.value);
      refilter();
    });
    splits.append(el("label", {}, box, " " + s + " "));
  }
  $("source").value = S.query.source;
  $("decision").value = S.query.decision;
  $("sort").value = S.query.sort;
  $("order").value = S.query.order;
  $("ov-mesh").checked = S.overlay.mesh;
  $("ov-kp").checked = S.overlay.kp;
  for (const box of document.querySelectorAll(".ov-part")) box.checked = S.overlay.parts.includes(box.value);
  const list = $("conditions");
  list.innerHTML = "";
  S.query.f.forEach((text, i) => {
    const [field, op, value] = text.split(":");
    const label = opsFor((S.fields[field] || {}).kind).find((o) => o[0] === op);
    list.append(el("span", { class: "chip", dataset: { condition: text } },
      `${field} ${label ? label[1] : op}${value !== undefined && value !== "" ? " " + value : ""}`,
      el("button", { title: "remove", onclick: () => { S.query.f.splice(i, 1); renderFilters(); refilter(); } }, "✕")));
  });
}

function refilter() {
  S.offset = 0;
  S.sel = 0;
  loadPage(0);
}

function wireFilters() {
  let timer = null;
  $("source").addEventListener("input", () => {
    clearTimeout(timer);
    timer = setTimeout(() => { S.query.source = $("source").value.trim(); refilter(); }, 250);
  });
  $("decision").addEventListener("change", () => { S.query.decision = $("decision").value; refilter(); });
  $("sort").addEventListener("change", () => { S.query.sort = $("sort").value; refilter(); });
  $("order").addEventListener("change", () => { S.query.order = $("order").value; refilter(); });
  $("cond-op").addEventListener("change", updateValueBox);
  $("cond-add").addEventListener("click", () => {
    const field = $("cond-field").value;
    const op = $("cond-op").value;
    const needsValue = !["true", "false", "nan", "notnan"].includes(op);
    const value = $("cond-value").value;
    if (needsValue && value === "") { showError("give a number for the condition"); return; }
    S.query.f.push(needsValue ? `${field}:${op}:${value}` : `${field}:${op}`);
    renderFilters();
    refilter();
  });
  const overlayChanged = () => {
    S.overlay.mesh = $("ov-mesh").checked;
    S.overlay.kp = $("ov-kp").checked;
    S.overlay.parts = [...document.querySelectorAll(".ov-part:checked")].map((b) => b.value);
    saveHash();
    for (const card of document.querySelectorAll(".card")) card.querySelector("img").src = overlayUrl(card.dataset.key, THUMB);
    if (S.detail) $("d-image").src = overlayUrl(S.rows[S.sel].key, DETAIL);
  };
  for (const id of ["ov-mesh", "ov-kp"]) $(id).addEventListener("change", overlayChanged);
  for (const box of document.querySelectorAll(".ov-part")) box.addEventListener("change", overlayChanged);
  S.overlayChanged = overlayChanged;
}

// ---------------------------------------------------------------------------------------------
// grid

function renderCounts(page) {
  S.total = page.total;
  $("total").textContent = page.total.toLocaleString();
  $("decision-counts").textContent = Object.entries(page.decisions).map(([k, v]) => `${k} ${v.toLocaleString()}`).join(" · ");
  const pages = Math.max(1, Math.ceil(page.total / PAGE));
  $("page-info").textContent = `page ${Math.floor(S.offset / PAGE) + 1} of ${pages} (${page.total.toLocaleString()} persons)`;
}

function card(row, i) {
  const sortValue = S.query.sort in row && !["key", "source", "split"].includes(S.query.sort)
    ? ` · ${S.query.sort.split(".").pop()} ${fmt(row[S.query.sort])}` : "";
  const node = el("div", { class: "card", dataset: { key: row.key, i: String(i) }, title: row.key },
    el("img", { src: overlayUrl(row.key, THUMB), alt: row.key, width: THUMB, height: THUMB, loading: "lazy" }),
    el("div", { class: "cap" }, row.key),
    el("div", { class: "cap muted" }, `${row.split} · ${row.source}${sortValue}`));
  if (row.decision) node.append(el("span", { class: `dec ${row.decision}` }, row.decision));
  if (!row.has_body) node.append(el("span", { class: "nobody" }, "no body"));
  node.addEventListener("click", () => select(i));
  node.addEventListener("dblclick", () => { select(i); openDetail(); });
  return node;
}

async function loadPage(selectIndex) {
  const seq = ++S.seq;
  saveHash();
  const page = await api("/api/persons", queryParams({ offset: S.offset, limit: PAGE }));
  if (seq !== S.seq) return;  // a newer request is on its way
  S.rows = page.rows;
  renderCounts(page);
  const grid = $("grid");
  grid.innerHTML = "";
  page.rows.forEach((row, i) => grid.append(card(row, i)));
  grid.dataset.loaded = String(page.rows.length);
  if (page.rows.length) select(Math.max(0, Math.min(selectIndex ?? S.sel, page.rows.length - 1)));
  else if (S.detail) closeDetail();
}

async function refreshCounts() {
  const page = await api("/api/persons", queryParams({ offset: S.offset, limit: 1 }));
  renderCounts(page);
}

function select(i) {
  const cards = document.querySelectorAll(".card");
  if (!cards.length) return;
  S.sel = i;
  cards.forEach((c) => c.classList.toggle("selected", Number(c.dataset.i) === i));
  cards[i].scrollIntoView({ block: "nearest" });
  saveHash();
  if (S.detail) showDetail();
}

async function move(delta) {
  const next = S.sel + delta;
  if (next >= 0 && next < S.rows.length) { select(next); return; }
  if (delta > 0 && S.offset + PAGE < S.total) { S.offset += PAGE; await loadPage(0); }
  else if (delta < 0 && S.offset > 0) { S.offset = Math.max(0, S.offset - PAGE); await loadPage(PAGE - 1); }
}

async function turnPage(delta) {
  const offset = S.offset + delta * PAGE;
  if (offset < 0 || offset >= S.total) return;
  S.offset = offset;
  await loadPage(0);
}

// ---------------------------------------------------------------------------------------------
// detail view and decisions

function openDetail() {
  if (!S.rows.length) return;
  S.detail = true;
  $("detail").classList.remove("hidden");
  showDetail();
}

function closeDetail() {
  S.detail = false;
  $("detail").classList.add("hidden");
  $("d-note").blur();
}

function arrayText(v) {
  const flat = Array.isArray(v) ? v.flat(Infinity) : [v];
  const shown = flat.slice(0, 12).map(fmt).join(", ");
  return flat.length > 12 ? `[${shown}, … ${flat.length} values]` : Array.isArray(v) ? `[${shown}]` : fmt(v);
}

async function showDetail() {
  const row = S.rows[S.sel];
  if (!row) return;
  const key = row.key;
  $("d-key").textContent = key;
  $("d-pos").textContent = `${(S.offset + S.sel + 1).toLocaleString()} of ${S.total.toLocaleString()}`;
  $("d-image").src = overlayUrl(key, DETAIL);
  const data = await api("/api/person", new URLSearchParams({ key }));
  if (S.rows[S.sel] !== row) return;  // moved on meanwhile
  $("detail").dataset.key = key;
  renderDecision(data.decision);
  const figures = $("d-figures");
  figures.innerHTML = "";
  for (const f of S.info.fields) {
    figures.append(el("tr", { title: f.doc }, el("td", {}, f.name), el("td", {}, fmt(data.figures[f.name]))));
  }
  const record = $("d-record");
  record.innerHTML = "";
  for (const [name, value] of Object.entries(data.record)) {
    record.append(el("tr", {}, el("td", {}, name), el("td", {}, arrayText(value))));
  }
  if (S.viewer) S.viewer.load(row.has_body && S.info.mesh ? `/api/mesh.bin?${new URLSearchParams({ key })}` : null);
}

function renderDecision(decision) {
  $("d-decision").textContent = decision
    ? `${decision.decision} by ${decision.reviewer} at ${decision.time}${decision.note ? ": " + decision.note : ""}`
    : "no decision yet";
  $("d-note").value = decision ? decision.note : "";
}

async function decide(decision) {
  const row = S.rows[S.sel];
  if (!row) return;
  const note = S.detail ? $("d-note").value : (row.note || "");
  const result = await api("/api/decision", null, {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ key: row.key, decision, note }),
  });
  row.decision = result.decision ? result.decision.decision : null;
  row.note = result.decision ? result.decision.note : null;
  const node = document.querySelector(`.card[data-i="${S.sel}"]`);
  if (node) {
    node.querySelector(".dec")?.remove();
    if (row.decision) node.append(el("span", { class: `dec ${row.decision}` }, row.decision));
    node.dataset.decision = row.decision || "";
  }
  if (S.detail) renderDecision(result.decision);
  refreshCounts();
}

// ---------------------------------------------------------------------------------------------
// quarantine and stats

async function loadQuarantine() {
  const p = new URLSearchParams({ offset: S.q.offset, limit: 100 });
  for (const k of ["stage", "reason", "source"]) if (S.q[k]) p.set(k, S.q[k]);
  const page = await api("/api/quarantine", p);
  S.q.total = page.total;
  $("q-total").textContent = page.total.toLocaleString();
  const stage = $("q-stage");
  const current = S.q.stage;
  stage.innerHTML = "";
  stage.append(el("option", { value: "" }, "any"));
  for (const [s, n] of Object.entries(page.stages)) stage.append(el("option", { value: s }, `${s} (${n})`));
  if (current && !(current in page.stages)) stage.append(el("option", { value: current }, current));
  stage.value = current;
  const reasons = $("q-reasons");
  reasons.innerHTML = "";
  for (const [r, n] of Object.entries(page.reasons)) {
    reasons.append(el("span", { title: "filter by this reason", onclick: () => {
      S.q.reason = r.split(": ").slice(1).join(": ");
      $("q-reason").value = S.q.reason;
      S.q.offset = 0;
      loadQuarantine();
    } }, `${r}: ${n}`));
  }
  const body = $("q-table").querySelector("tbody");
  body.innerHTML = "";
  for (const row of page.rows) {
    body.append(el("tr", {}, el("td", {}, row.key), el("td", {}, row.split), el("td", {}, row.source),
      el("td", {}, row.stage), el("td", {}, row.reason)));
  }
  $("q-page").textContent = `rows ${page.total ? S.q.offset + 1 : 0}–${S.q.offset + page.rows.length} of ${page.total}`;
}

function wireQuarantine() {
  let timer = null;
  const changed = () => {
    S.q.stage = $("q-stage").value;
    S.q.reason = $("q-reason").value.trim();
    S.q.source = $("q-source").value.trim();
    S.q.offset = 0;
    clearTimeout(timer);
    timer = setTimeout(loadQuarantine, 200);
  };
  $("q-stage").addEventListener("change", changed);
  $("q-reason").addEventListener("input", changed);
  $("q-source").addEventListener("input", changed);
  $("q-prev").addEventListener("click", () => { if (S.q.offset > 0) { S.q.offset = Math.max(0, S.q.offset - 100); loadQuarantine(); } });
  $("q-next").addEventListener("click", () => { if (S.q.offset + 100 < S.q.total) { S.q.offset += 100; loadQuarantine(); } });
}

async function loadStats() {
  clearTimeout(S.statsTimer);
  const stats = await api("/api/stats");
  const box = $("stats");
  if (stats.status === "running") {
    box.textContent = "computing the stats…";
    S.statsTimer = setTimeout(loadStats, 1000);
    return;
  }
  if (stats.status === "error") { box.textContent = `stats failed: ${stats.error}`; return; }
  box.innerHTML = "";
  box.append(el("p", {}, `${stats.persons.toLocaleString()} persons in the shards, ${stats.quarantined.toLocaleString()} quarantined. `
    + "The same tables and plots as `pearl stats`."));
  for (const name of stats.plots) box.append(el("img", { src: `/api/stats/${name}`, alt: name }));
  for (const table of stats.tables) {
    box.append(el("h3", {}, table.title));
    const t = el("table", {});
    t.append(el("tr", {}, ...table.header.map((h) => el("th", {}, h))));
    for (const row of table.rows) t.append(el("tr", {}, ...row.map((v) => el("td", {}, fmt(v)))));
    box.append(t);
  }
  box.dataset.ready = "1";
}

function showTab(tab) {
  S.tab = tab;
  for (const b of document.querySelectorAll(".tab")) b.classList.toggle("active", b.dataset.tab === tab);
  for (const name of ["persons", "quarantine", "stats"]) $(`tab-${name}`).classList.toggle("hidden", name !== tab);
  if (tab !== "persons" && S.detail) closeDetail();
  if (tab === "quarantine") loadQuarantine();
  if (tab === "stats") loadStats();
  saveHash();
}

// ---------------------------------------------------------------------------------------------
// keyboard

function onKey(event) {
  const target = event.target;
  const typing = ["TEXTAREA", "SELECT"].includes(target.tagName)
    || (target.tagName === "INPUT" && !["checkbox", "radio", "button"].includes(target.type));
  if (typing) {
    if (event.key === "Escape") target.blur();
    return;
  }
  if (event.ctrlKey || event.metaKey || event.altKey) return;
  if (event.key === "?") { $("help").classList.toggle("hidden"); return; }
  if (event.key === "Escape") {
    if (!$("help").classList.contains("hidden")) $("help").classList.add("hidden");
    else closeDetail();
    return;
  }
  if (S.tab !== "persons") return;
  const actions = {
    ArrowRight: () => move(1), j: () => move(1), ArrowLeft: () => move(-1), k: () => move(-1),
    PageDown: () => turnPage(1), PageUp: () => turnPage(-1), Enter: openDetail, o: openDetail,
    a: () => decide("accept"), r: () => decide("reject"), f: () => decide("flag"), c: () => decide("clear"),
    n: () => { if (S.detail) $("d-note").focus(); },
    m: () => { $("ov-mesh").checked = !$("ov-mesh").checked; S.overlayChanged(); },
    p: () => { $("ov-kp").checked = !$("ov-kp").checked; S.overlayChanged(); },
  };
  const action = actions[event.key];
  if (action) {
    event.preventDefault();
    action();
  }
}

// ---------------------------------------------------------------------------------------------
// start

async function start() {
  loadHash();
  S.info = await api("/api/info");
  for (const f of S.info.fields) S.fields[f.name] = f;
  $("run-out").textContent = S.info.out;
  $("count-persons").textContent = S.info.persons.toLocaleString();
  $("count-quarantine").textContent = S.info.quarantined.toLocaleString();
  $("decisions-file").textContent = `decisions: ${S.info.decisions_file} (reviewer ${S.info.reviewer})`;
  const warnings = $("warnings");
  for (const w of S.info.warnings) warnings.append(el("div", {}, "⚠ " + w));
  const sources = $("source-list");
  for (const s of S.info.sources) sources.append(el("option", { value: s.source }, `${s.persons}`));
  fillFieldSelects();
  renderFilters();
  wireFilters();
  wireQuarantine();
  for (const b of document.querySelectorAll(".tab")) b.addEventListener("click", () => showTab(b.dataset.tab));
  $("prev-page").addEventListener("click", () => turnPage(-1));
  $("next-page").addEventListener("click", () => turnPage(1));
  $("d-prev").addEventListener("click", () => move(-1));
  $("d-next").addEventListener("click", () => move(1));
  $("d-close").addEventListener("click", closeDetail);
  $("help-button").addEventListener("click", () => $("help").classList.toggle("hidden"));
  for (const b of document.querySelectorAll(".decide button")) b.addEventListener("click", () => decide(b.dataset.decision));
  document.addEventListener("keydown", onKey);
  S.viewer = new MeshViewer($("viewer"));
  await loadPage(S.sel);
  if (S.tab !== "persons") showTab(S.tab);
  document.body.dataset.ready = "1";
  // the warnings of the background checks (body-model hashes) arrive a little later
  setTimeout(async () => {
    const info = await api("/api/info");
    for (const w of info.warnings.slice(S.info.warnings.length)) warnings.append(el("div", {}, "⚠ " + w));
    S.info.mesh = info.mesh;
  }, 3000);
}

start();
