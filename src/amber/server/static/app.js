// Amber memory inspector. Plain ES module, no dependencies, no build step, no outside requests.
// Views are addressed by the URL hash (#/sessions, #/session/<user>/<thread>...); the API key is kept in
// sessionStorage and sent as "Authorization: Bearer", never put in a URL.

const KEY = "amber.inspector.key";
const POLL_MS = 1000;
const ADMIN_TENANT = "amber-admin";

const $ = (id) => document.getElementById(id);
let stopView = () => {}; // cancels the current view's timers when the route changes

// -- DOM helpers (text only: stored content is never parsed as HTML) ------------------------------------

function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k === "text") el.textContent = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const enc = encodeURIComponent;
const announce = (text) => { $("status").textContent = ""; setTimeout(() => { $("status").textContent = text; }, 30); };

function fmtTime(iso) {
  if (!iso) return "";
  const d = new Date(iso);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())} ${p(d.getHours())}:${p(d.getMinutes())}:${p(d.getSeconds())}`;
}

function ago(iso) {
  const s = Math.max(0, (Date.now() - new Date(iso).getTime()) / 1000);
  if (s < 60) return `${Math.round(s)} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return `${Math.round(s / 86400)} d ago`;
}

const timeEl = (iso, rel = false) => h("time", { datetime: iso, title: iso }, rel ? `${fmtTime(iso)} (${ago(iso)})` : fmtTime(iso));
const short = (id) => (id && id.length > 14 ? `${id.slice(0, 13)}…` : id || "");

function table(caption, headers, rows, cls = "") {
  return h("div", { class: "wrap" }, h("table", { class: cls },
    h("caption", {}, caption),
    h("thead", {}, h("tr", {}, headers.map((x) => (typeof x === "string" ? h("th", { scope: "col" }, x) : x)))),
    rows instanceof HTMLTableSectionElement ? rows : h("tbody", {}, rows)));
}

// -- the API -------------------------------------------------------------------------------------------

class ApiError extends Error {
  constructor(status, code, message) { super(message); this.status = status; this.code = code; }
}

async function api(path, { method = "GET", body } = {}) {
  const headers = { Authorization: `Bearer ${sessionStorage.getItem(KEY) || ""}`, Accept: "application/json" };
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body),
    cache: "no-store", credentials: "omit" });
  const text = await r.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch { data = null; }
  if (!r.ok) {
    const e = data && data.error ? data.error : { code: "http_error", message: text || r.statusText };
    if (r.status === 401) { signOut(`Signed out: ${e.message}`); }
    throw new ApiError(r.status, e.code, e.message);
  }
  return data;
}

const isAdmin = () => !(sessionStorage.getItem(KEY) || "").startsWith("amb_");

// -- sign in / out -------------------------------------------------------------------------------------

function showLogin(message = "") {
  stopView();
  $("view").hidden = true; $("nav").hidden = true; $("who").hidden = true;
  $("login").hidden = false;
  $("login-error").textContent = message;
  $("api-key").value = "";
  $("api-key").focus();
  document.title = "Sign in · Amber memory inspector";
}

function signOut(message = "") {
  sessionStorage.removeItem(KEY);
  showLogin(message);
}

async function signIn(event) {
  event.preventDefault();
  const key = $("api-key").value.trim();
  if (!key) { $("login-error").textContent = "Enter an API key."; return; }
  sessionStorage.setItem(KEY, key);
  $("who-text").textContent = "";
  try {
    await (isAdmin() ? api("/v1/admin/tenants") : api("/v1/inspect/learning"));
  } catch (e) {
    sessionStorage.removeItem(KEY);
    showLogin(e.status === 401 ? "That key is not valid here (unknown, revoked or mistyped)." : `Sign-in failed: ${e.message}`);
    return;
  }
  const want = isAdmin() ? "#/tenants" : "#/sessions";
  if (location.hash === want) route(); else location.hash = want;
}

const TENANT_NAV = [["sessions", "Sessions"], ["facts", "Facts"], ["recall", "Recall"], ["audit", "Audit trail"]];
const ADMIN_NAV = [["tenants", "Tenants"], ["audit", "Audit trail"], ["learning", "Learning queue"], ["doctor", "Doctor"]];

async function shell(current) {
  $("login").hidden = true; $("view").hidden = false; $("nav").hidden = false; $("who").hidden = false;
  const nav = isAdmin() ? ADMIN_NAV : TENANT_NAV;
  $("nav-list").replaceChildren(...nav.map(([id, label]) => h("li", {},
    h("a", { href: `#/${id}`, "aria-current": id === current ? "page" : null }, label))));
  if (!$("who-text").textContent) {
    if (isAdmin()) $("who-text").textContent = "Admin";
    else {
      try { const q = await api("/v1/inspect/learning"); $("who-text").textContent = `Tenant ${q.tenant}`; } catch { /* shown by the view */ }
    }
  }
}

// -- routing -------------------------------------------------------------------------------------------

function parseHash() {
  const raw = location.hash.startsWith("#/") ? location.hash.slice(2) : "";
  const [path, query = ""] = raw.split("?");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  return { view: parts[0] || "", args: parts.slice(1), params: new URLSearchParams(query) };
}

function viewRoot(title, lead) {
  const heading = h("h1", { tabindex: "-1", id: "view-h" }, title);
  const root = h("section", { "aria-labelledby": "view-h" }, heading, lead ? h("p", { class: "lead" }, lead) : null);
  $("view").replaceChildren(root);
  document.title = `${title} · Amber memory inspector`;
  return root;
}

function focusHeading() { const el = $("view-h"); if (el) el.focus({ preventScroll: false }); }

function failure(root, e) {
  const msg = e.status === 404 ? `Not found in this tenant: ${e.message}` : `Error: ${e.message}`;
  root.append(h("p", { class: "error", role: "alert" }, msg));
}

async function route() {
  stopView(); stopView = () => {};
  if (!sessionStorage.getItem(KEY)) { showLogin(); return; }
  const { view, args, params } = parseHash();
  const admin = isAdmin();
  const table_ = admin
    ? { tenants: viewTenants, audit: viewAudit, learning: viewLearningAdmin, doctor: viewDoctor }
    : { sessions: viewSessions, session: viewSession, facts: viewFacts, recall: viewRecall, audit: viewAudit, source: viewSource };
  const fn = table_[view];
  if (!fn) { location.replace(admin ? "#/tenants" : "#/sessions"); return; }
  await shell(view === "session" || view === "source" ? "sessions" : view);
  try {
    await fn(args, params);
  } catch (e) {
    if (!(e instanceof ApiError) || e.status === 401) { if (!(e instanceof ApiError)) console.error(e); return; }
    failure($("view").firstChild || $("view"), e);
  }
}

// -- tenant views --------------------------------------------------------------------------------------

async function userOptions(selected, allLabel) {
  const users = (await api("/v1/users?limit=1000")).items;
  const opts = [];
  if (allLabel) opts.push(h("option", { value: "" }, allLabel));
  for (const u of users) opts.push(h("option", { value: u, selected: u === selected }, u));
  return { users, opts };
}

async function viewSessions(_args, params) {
  const user = params.get("user") || "";
  const root = viewRoot("Sessions", "Every conversation key of this tenant, most recently active first. A user whose sessions "
    + "look keyed per request (many one-turn sessions, uuid-like thread ids) is flagged: such an agent starts every request with an empty memory.");
  const { opts } = await userOptions(user, "All users");
  const select = h("select", { id: "f-user", name: "user" }, opts);
  const form = h("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); location.hash = select.value ? `#/sessions?user=${enc(select.value)}` : "#/sessions"; } },
    h("div", { class: "field" }, h("label", { for: "f-user" }, "User"), select),
    h("div", {}, h("button", { type: "submit" }, "Show")));
  root.append(form);
  focusHeading();

  const body = h("tbody");
  const holder = h("div");
  root.append(holder);
  let offset = 0;
  let flaggedShown = false;
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Load more sessions");
  const load = async () => {
    const page = await api(`/v1/inspect/sessions?limit=100&offset=${offset}${user ? `&user=${enc(user)}` : ""}`);
    if (!flaggedShown) {
      flaggedShown = true;
      const flagged = Object.entries(page.flagged_users);
      if (flagged.length) {
        holder.append(h("div", { class: "callout", role: "note" },
          h("strong", {}, "Session keys that look random per request"),
          h("ul", {}, flagged.map(([u, why]) => h("li", {}, h("a", { href: `#/sessions?user=${enc(u)}` }, u), `: ${why}`))),
          h("p", { class: "note" }, "Derive the thread from your domain (ticket, claim or conversation id) and reuse it on every request.")));
      }
      if (!page.items.length) { holder.append(h("p", { class: "empty" }, "No sessions yet.")); return; }
      holder.append(table(`Sessions${user ? ` of ${user}` : ""}`,
        ["User", "Session", h("th", { scope: "col", class: "num" }, "Messages"), "Last activity", "Started", "Key check"], body));
      holder.append(h("p", {}, more));
    }
    for (const s of page.items) {
      body.append(h("tr", { class: s.looks_random ? "flagged" : "" },
        h("td", {}, h("a", { href: `#/facts/${enc(s.user)}` , title: `Facts of ${s.user}` }, s.user)),
        h("td", {}, h("a", { href: `#/session/${enc(s.user)}/${enc(s.thread)}`, class: "mono" }, s.thread)),
        h("td", { class: "num" }, s.message_count),
        h("td", {}, timeEl(s.updated_at, true)),
        h("td", {}, timeEl(s.created_at)),
        h("td", {}, s.looks_random ? h("span", { class: "badge flag", title: s.random_reason }, "per-request key?") : "")));
    }
    offset = page.next_offset ?? offset;
    more.hidden = page.next_offset === null;
  };
  more.addEventListener("click", () => load());
  await load();
}

function messageItem(msg, isNew = false) {
  return h("li", { id: `m-${msg.id}`, class: `role-${msg.role}${isNew ? " new" : ""}`, tabindex: "-1", dataset: { seq: msg.seq } },
    h("div", { class: "msg-head" },
      h("span", { class: "seq" }, `#${msg.seq}`),
      h("span", { class: `badge role-${msg.role}` }, msg.role),
      msg.author ? h("span", {}, msg.author) : null,
      timeEl(msg.created_at),
      h("span", {}, `${msg.tokens} tokens`),
      h("span", { class: "mono", title: msg.id }, msg.id)),
    h("p", { class: "msg-body" }, msg.content));
}

async function viewSession(args, params) {
  const [user, thread] = args;
  const root = viewRoot(`Session ${user} / ${thread}`);
  const base = `/v1/users/${enc(user)}/sessions/${enc(thread)}`;
  const info = await api(base);
  const meta = h("dl", { class: "meta" },
    h("div", {}, h("dt", {}, "Messages"), h("dd", { id: "msg-count" }, info.message_count)),
    h("div", {}, h("dt", {}, "Last activity"), h("dd", { id: "last-activity" }, timeEl(info.updated_at, true))),
    h("div", {}, h("dt", {}, "Started"), h("dd", {}, timeEl(info.created_at))));
  const follow = h("input", { type: "checkbox", id: "follow", checked: true });
  const dot = h("span", { class: "live-dot", "aria-hidden": "true" });
  root.append(meta, h("div", { class: "actions" },
    h("label", { class: "live", for: "follow" }, follow, dot, "Follow live (new messages appear as any worker writes them)"),
    h("a", { href: `#/facts/${enc(user)}` }, `Facts of ${user}`),
    h("a", { href: `#/recall?user=${enc(user)}` }, `Recall as ${user}`)));
  const list = h("ol", { class: "transcript", "aria-label": "Transcript", id: "transcript" });
  root.append(list);

  let last = 0;
  let count = info.message_count;
  const load = async (isNew) => {
    let added = 0;
    for (;;) {
      const page = await api(`${base}/messages?after_seq=${last}&limit=1000`);
      for (const m of page.items) { list.append(messageItem(m, isNew)); last = m.seq; added += 1; }
      if (page.next_after_seq === null) break;
    }
    return added;
  };
  await load(false);
  if (!list.children.length) root.append(h("p", { class: "empty", id: "no-msgs" }, "No messages yet."));

  const focusId = params.get("focus");
  if (focusId) {
    const el = document.getElementById(`m-${focusId}`);
    if (el) { el.classList.add("focus"); el.scrollIntoView({ block: "center" }); el.focus(); }
    else root.append(h("p", { class: "error", role: "alert" }, `Message ${focusId} is not in this session.`));
  } else focusHeading();

  let timer = null;
  let busy = false;
  const tick = async () => {
    if (busy) return;
    busy = true;
    try {
      const n = await load(true);
      if (n) {
        count += n;
        $("msg-count").textContent = count;
        $("last-activity").replaceChildren(timeEl(new Date().toISOString(), true));
        const empty = $("no-msgs"); if (empty) empty.remove();
        announce(`${n} new message${n > 1 ? "s" : ""} in ${thread}`);
      }
    } catch (e) { /* a missed poll is retried on the next tick */ } finally { busy = false; }
  };
  const start = () => { if (!timer) timer = setInterval(tick, POLL_MS); dot.classList.remove("off"); };
  const stop = () => { clearInterval(timer); timer = null; dot.classList.add("off"); };
  follow.addEventListener("change", () => (follow.checked ? start() : stop()));
  start();
  stopView = stop;
}

async function viewSource(args, params) {
  // A fact's source message: find its session, then open the transcript there.
  const [user, id] = args;
  const root = viewRoot(`Finding message ${short(id)}`);
  const thread = params.get("thread");
  const found = await api(`/v1/users/${enc(user)}/messages/${enc(id)}${thread ? `?thread=${enc(thread)}` : ""}`);
  location.replace(`#/session/${enc(found.user)}/${enc(found.thread)}?focus=${enc(id)}`);
  root.append(h("p", {}, "Opening…"));
}

function timeline(facts) {
  // One group per attribute, one lane per version: a bar from valid_from to valid_to (or now), so a
  // superseded value stays visible even when a newer one covers the same period.
  const now = Date.now();
  const t0 = Math.min(...facts.map((f) => new Date(f.valid_from).getTime()));
  const span = Math.max(1, now - t0);
  const byAttr = new Map();
  for (const f of [...facts].sort((a, b) => a.valid_from.localeCompare(b.valid_from) || a.created_at.localeCompare(b.created_at))) {
    if (!byAttr.has(f.attribute)) byAttr.set(f.attribute, []);
    byAttr.get(f.attribute).push(f);
  }
  const groups = [];
  for (const [attr, versions] of byAttr) {
    const lanes = versions.map((f) => {
      const a = new Date(f.valid_from).getTime();
      const b = f.valid_to ? new Date(f.valid_to).getTime() : now;
      const when = `valid ${fmtTime(f.valid_from)} to ${f.valid_to ? fmtTime(f.valid_to) : "now"}`;
      const bar = h("span", { class: `tl-seg${f.valid_to ? " old" : ""}`, title: `${f.value}: ${when}` });
      bar.style.left = `${((a - t0) / span) * 100}%`;
      bar.style.width = `${Math.max(0.8, ((b - a) / span) * 100)}%`;
      return h("li", { class: `tl-row${f.valid_to ? " old" : ""}` },
        h("span", { class: "tl-value" }, f.value, h("span", { class: "sr-only" }, `, ${f.valid_to ? "superseded" : "current"}, ${when}`)),
        h("span", { class: "tl-track", "aria-hidden": "true" }, bar));
    });
    groups.push(h("li", { class: "tl-group" }, h("span", { class: "tl-attr" }, attr), h("ol", { "aria-label": `Versions of ${attr}` }, lanes)));
  }
  return h("figure", { class: "timeline", "aria-labelledby": "tl-cap" },
    h("figcaption", { id: "tl-cap" }, h("strong", {}, "Validity over time"), " (hatched: superseded; solid: current)"),
    h("ol", { class: "tl-groups" }, groups),
    h("div", { class: "tl-axis", "aria-hidden": "true" }, h("span", {}, fmtTime(new Date(t0).toISOString())), h("span", {}, "now")));
}

async function learningPanel() {
  const q = await api("/v1/inspect/learning");
  const c = q.counts;
  return h("section", { "aria-labelledby": "lq-h" }, h("h2", { id: "lq-h" }, "Learning queue"),
    h("dl", { class: "counts", id: "learn-counts" },
      ...["pending", "leased", "dead"].map((k) => h("div", { class: k === "dead" && c[k] ? "bad" : "" },
        h("dt", {}, k === "dead" ? "dead (failed)" : k), h("dd", {}, c[k] ?? 0)))),
    h("p", { class: "note" }, "Every stored message waits here until a learner (",
      h("code", {}, "amber worker"), ") extracts its facts. Dead jobs failed on every retry; the worker's log has their errors."));
}

async function viewFacts(args) {
  const user = args[0] || "";
  const root = viewRoot(user ? `Facts of ${user}` : "Facts",
    "What the learner distilled from conversations. Each fact links to the messages it was learned from; a newer value supersedes an older one and both are kept.");
  const { opts, users } = await userOptions(user, user ? null : "Choose a user");
  const select = h("select", { id: "f-user", name: "user" }, opts);
  root.append(h("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); if (select.value) location.hash = `#/facts/${enc(select.value)}`; } },
    h("div", { class: "field" }, h("label", { for: "f-user" }, "User"), select),
    h("div", {}, h("button", { type: "submit" }, "Show facts"))));
  focusHeading();
  root.append(await learningPanel());
  if (!user) {
    if (!users.length) root.append(h("p", { class: "empty" }, "No users yet."));
    return;
  }
  const facts = (await api(`/v1/users/${enc(user)}/facts?include_superseded=true&limit=1000`)).items;
  const sec = h("section", { "aria-labelledby": "facts-h" }, h("h2", { id: "facts-h" }, `${facts.length} fact version${facts.length === 1 ? "" : "s"}`));
  root.append(sec);
  if (!facts.length) { sec.append(h("p", { class: "empty" }, "No facts learned yet.")); return; }
  sec.append(timeline(facts));
  const byId = new Map(facts.map((f) => [f.id, f]));
  const rows = facts.map((f) => h("tr", { class: f.valid_to ? "superseded" : "", id: `f-${f.id}` },
    h("td", {}, h("strong", {}, f.attribute), h("div", { class: "note mono", title: f.id }, short(f.id))),
    h("td", { class: "value" }, f.value),
    h("td", {}, f.text),
    h("td", {}, timeEl(f.valid_from), " → ", f.valid_to ? timeEl(f.valid_to) : "now"),
    h("td", {}, f.valid_to
      ? [h("span", { class: "badge old" }, "superseded"), f.superseded_by ? h("div", { class: "note" }, "by ",
          h("a", { href: `#f-${f.superseded_by}`, onclick: (ev) => { ev.preventDefault(); const t = document.getElementById(`f-${f.superseded_by}`); if (t) { t.tabIndex = -1; t.focus(); } } },
            byId.get(f.superseded_by)?.value ?? short(f.superseded_by))) : null]
      : h("span", { class: "badge current" }, "current")),
    h("td", { class: "num" }, f.confidence.toFixed(2)),
    h("td", {}, h("div", { class: "ids" }, f.source_message_ids.length
      ? f.source_message_ids.map((id) => h("a", { href: `#/source/${enc(user)}/${enc(id)}${f.thread ? `?thread=${enc(f.thread)}` : ""}`,
          class: "mono source-link", title: `Open source message ${id}` }, `${f.thread ? `${f.thread}: ` : ""}${short(id)}`))
      : h("span", { class: "note" }, "none")))));
  sec.append(table("Facts, newest first (superseded ones struck through)",
    ["Attribute", "Value", "Statement", "Valid", "Status", h("th", { scope: "col", class: "num" }, "Confidence"), "Learned from"], rows));
}

function scoreCell(v) {
  if (v === undefined || v === null) return h("td", { class: "num note" }, "–");
  const bar = h("span", { class: "scorebar", "aria-hidden": "true" }, h("i"));
  bar.firstChild.style.width = `${Math.round(Math.max(0, Math.min(1, v)) * 100)}%`;
  return h("td", { class: "num" }, v.toFixed(3), bar);
}

async function viewRecall(_args, params) {
  const root = viewRoot("Recall playground",
    "Ask as a given user and see what each retrieval path scored, how the scores fused, and the exact memory block an agent would get in its context.");
  const { users } = await userOptions("", null);
  const userIn = h("input", { type: "text", id: "r-user", name: "user", list: "r-users", required: true, value: params.get("user") || users[0] || "", autocomplete: "off" });
  const queryIn = h("input", { type: "search", id: "r-query", name: "query", required: true, value: params.get("q") || "" });
  const limitIn = h("input", { type: "number", id: "r-limit", name: "limit", min: 1, max: 200, value: 8 });
  const budgetIn = h("input", { type: "number", id: "r-budget", name: "max_tokens", min: 50, max: 100000, value: 600 });
  const check = (name, value, label) => h("label", {}, h("input", { type: "checkbox", name, value, checked: true }), ` ${label}`);
  const out = h("div", { id: "recall-out", "aria-live": "polite" });
  const err = h("p", { class: "error", role: "alert" });
  const form = h("form", { class: "filters", id: "recall-form" },
    h("div", { class: "field" }, h("label", { for: "r-user" }, "As user"), userIn, h("datalist", { id: "r-users" }, users.map((u) => h("option", { value: u })))),
    h("div", { class: "field grow" }, h("label", { for: "r-query" }, "Query (what the user just said)"), queryIn),
    h("div", { class: "field" }, h("label", { for: "r-limit" }, "Hits"), limitIn),
    h("div", { class: "field" }, h("label", { for: "r-budget" }, "Token budget"), budgetIn),
    h("fieldset", {}, h("legend", {}, "Search"), check("kinds", "message", "turns"), check("kinds", "fact", "facts")),
    h("fieldset", {}, h("legend", {}, "Paths"), check("modes", "lexical", "lexical"), check("modes", "vector", "vector")),
    h("div", {}, h("button", { type: "submit" }, "Recall")));
  root.append(form, err, out);
  focusHeading();

  form.addEventListener("submit", async (ev) => {
    ev.preventDefault();
    err.textContent = "";
    const fd = new FormData(form);
    const user = String(fd.get("user") || "").trim();
    const query = String(fd.get("query") || "").trim();
    if (!user || !query) { err.textContent = "Enter a user and a query."; return; }
    const body = { query, limit: Number(limitIn.value) || 8, max_tokens: Number(budgetIn.value) || 600,
      kinds: fd.getAll("kinds"), modes: fd.getAll("modes") };
    let res;
    try { res = await api(`/v1/users/${enc(user)}/recall/preview`, { method: "POST", body }); }
    catch (e) { err.textContent = e.status === 404 ? `No user ${user} in this tenant.` : e.message; out.replaceChildren(); return; }
    const inBlock = new Set(res.block.hit_ids);
    const rows = res.items.map((hit, i) => h("tr", { class: inBlock.has(hit.id) ? "in-block" : "" },
      h("td", { class: "num" }, i + 1),
      h("td", {}, h("span", { class: `badge ${hit.kind === "fact" ? "current" : "role-user"}` }, hit.kind === "fact" ? "fact" : "turn")),
      h("td", {}, hit.kind === "message" && hit.thread
        ? h("a", { href: `#/session/${enc(hit.user)}/${enc(hit.thread)}?focus=${enc(hit.id)}`, class: "mono" }, `${hit.thread}#${hit.seq}`)
        : h("a", { href: `#/facts/${enc(hit.user)}`, class: "mono", title: hit.id }, short(hit.id))),
      h("td", {}, hit.text),
      scoreCell(hit.paths.lexical), scoreCell(hit.paths.vector), scoreCell(hit.paths.fused ?? hit.score),
      h("td", {}, [hit.paths.time ? "in time range" : null, hit.paths.superseded ? "outdated" : null, hit.paths.neighbour ? "context" : null,
        hit.valid_to ? "superseded" : null].filter(Boolean).join(", ")),
      h("td", {}, inBlock.has(hit.id) ? "yes" : "no")));
    out.replaceChildren(
      h("p", {}, `${res.items.length} hit${res.items.length === 1 ? "" : "s"}; paths: ${res.modes.join(" + ")}`,
        res.embedder ? ` (embedder ${res.embedder})` : " (no embedder on this server: lexical only; set AMBER_EMBEDDER)"),
      res.items.length ? table("Hits, best first: each path's own score and the fused score",
        ["#", "Kind", "Where", "Text", h("th", { scope: "col", class: "num" }, "Lexical"), h("th", { scope: "col", class: "num" }, "Vector"),
          h("th", { scope: "col", class: "num" }, "Fused"), "Notes", "In block"], rows, "hits") : h("p", { class: "empty" }, "No hits."),
      h("h2", { id: "block-h" }, `Memory block injected: ${res.block.tokens} tokens (budget ${res.block.max_tokens})`),
      res.block.text ? h("pre", { class: "block", id: "memory-block", tabindex: "0", "aria-labelledby": "block-h" }, res.block.text)
        : h("p", { class: "empty", id: "memory-block" }, "Empty: nothing would be injected."));
    announce(`${res.items.length} hits; memory block of ${res.block.tokens} tokens`);
  });
  if (queryIn.value && userIn.value) form.requestSubmit();
}

// -- shared: audit -------------------------------------------------------------------------------------

const AUDIT_COLS = ["id", "at", "actor", "operation", "user", "thread", "count", "record_ids", "digests"];

function auditCell(k, v) {
  if (k === "at") return h("td", {}, timeEl(v));
  if (Array.isArray(v)) return h("td", { class: "mono" }, h("div", { class: "ids" }, v.slice(0, 4).map((x) => h("span", { title: String(x) }, short(String(x)))),
    v.length > 4 ? h("span", { class: "note" }, `+${v.length - 4} more`) : null));
  if (v !== null && typeof v === "object") return h("td", { class: "mono" }, JSON.stringify(v));
  if (typeof v === "string" && v.length > 24 && /^[0-9a-f]+$/i.test(v)) return h("td", { class: "mono", title: v }, short(v));
  if (v === null || v === undefined) return h("td", { class: "note" }, "–");
  return h("td", { class: k === "id" || k === "count" ? "num" : "" }, v);
}

async function viewAudit(_args, params) {
  const admin = isAdmin();
  const root = viewRoot("Audit trail", "Who did what to which records: ids and content hashes, never content. Every write is audited in the same transaction.");
  const fields = [];
  let tenantSel = null;
  if (admin) {
    const tenants = (await api("/v1/admin/tenants")).items;
    const cur = params.get("tenant") || tenants[0] || ADMIN_TENANT;
    tenantSel = h("select", { id: "a-tenant", name: "tenant" }, [...tenants, ADMIN_TENANT].map((t) =>
      h("option", { value: t, selected: t === cur }, t === ADMIN_TENANT ? `${t} (tenants and keys)` : t)));
    fields.push(h("div", { class: "field" }, h("label", { for: "a-tenant" }, "Tenant"), tenantSel));
  }
  const userIn = h("input", { type: "text", id: "a-user", name: "user", value: params.get("user") || "" });
  const opIn = h("input", { type: "text", id: "a-op", name: "operation", value: params.get("operation") || "", placeholder: "e.g. message.append" });
  fields.push(h("div", { class: "field" }, h("label", { for: "a-user" }, "User"), userIn),
    h("div", { class: "field" }, h("label", { for: "a-op" }, "Operation"), opIn));
  root.append(h("form", { class: "filters", onsubmit: (ev) => {
    ev.preventDefault();
    const q = new URLSearchParams();
    if (tenantSel) q.set("tenant", tenantSel.value);
    if (userIn.value.trim()) q.set("user", userIn.value.trim());
    if (opIn.value.trim()) q.set("operation", opIn.value.trim());
    const want = `#/audit?${q}`;
    if (location.hash === want) route(); else location.hash = want;
  } }, fields, h("div", {}, h("button", { type: "submit" }, "Filter"))));
  focusHeading();

  const q = new URLSearchParams({ limit: "200" });
  if (params.get("user")) q.set("user", params.get("user"));
  if (params.get("operation")) q.set("operation", params.get("operation"));
  const base = admin ? `/v1/admin/tenants/${enc(tenantSel.value)}/audit` : "/v1/audit";
  if (admin) root.append(chainPanel(tenantSel.value));
  const body = h("tbody");
  const more = h("button", { type: "button", class: "quiet", hidden: true }, "Load more events");
  let cols = null;
  let after = 0;
  const holder = h("div");
  root.append(holder);
  const load = async () => {
    q.set("after_id", String(after));
    const page = await api(`${base}?${q}`);
    if (!cols) {
      if (!page.items.length) { holder.append(h("p", { class: "empty" }, "No audit events match.")); return; }
      // Show whatever the API gives: known columns first, then any others (e.g. a hash chain).
      const extra = Object.keys(page.items[0]).filter((k) => !AUDIT_COLS.includes(k));
      cols = [...AUDIT_COLS.filter((k) => k in page.items[0]), ...extra];
      holder.append(table("Audit events, oldest first", cols.map((c) => h("th", { scope: "col" }, c.replace(/_/g, " "))), body, "audit"), h("p", {}, more));
    }
    for (const e of page.items) body.append(h("tr", {}, cols.map((c) => auditCell(c, e[c]))));
    if (page.items.length) after = page.items[page.items.length - 1].id;
    more.hidden = page.next_after_id === null;
  };
  more.addEventListener("click", () => load());
  await load();
}

function chainPanel(tenant) {
  // The audit trail's hash chain: verifying also chains entries still pending, so it is an explicit action.
  const out = h("div", { id: "chain-result", "aria-live": "polite" });
  const button = h("button", { type: "button", class: "quiet", id: "verify-chain" }, `Verify the hash chain of ${tenant}`);
  button.addEventListener("click", async () => {
    out.replaceChildren(h("p", { class: "note", id: "chain-busy" }, "Verifying…"));
    try {
      const r = await api(`/v1/admin/tenants/${enc(tenant)}/audit/verify`, { method: "POST" });
      out.replaceChildren(h("div", { class: `callout${r.ok ? " ok" : ""}` },
        h("strong", {}, r.ok ? "Chain intact" : "Chain broken"),
        ` — ${r.entries} entries, ${r.chained} chained, ${r.unchained} not yet chained; head #${r.head.position} `,
        h("code", { title: r.head.hash }, short(r.head.hash)),
        r.problems.length ? h("ul", {}, r.problems.map((p) => h("li", {}, `${p.kind}${p.id !== null ? ` (entry ${p.id})` : ""}: ${p.detail}`))) : null));
    } catch (e) {
      out.replaceChildren(e.status === 501
        ? h("p", { class: "callout" }, `Not available for this store: ${e.message}`)
        : h("p", { class: "error", role: "alert" }, e.message));
    }
  });
  return h("div", { class: "actions" }, button, out);
}

// -- admin views ---------------------------------------------------------------------------------------

async function viewTenants() {
  const root = viewRoot("Tenants", "Tenants registered on this server and their API keys (never the secrets). Tenant data is read with a tenant key.");
  focusHeading();
  const tenants = (await api("/v1/admin/tenants")).items;
  if (!tenants.length) { root.append(h("p", { class: "empty" }, "No tenants yet.")); return; }
  const rows = [];
  for (const t of tenants) {
    const keys = (await api(`/v1/admin/tenants/${enc(t)}/keys`)).items;
    const live = keys.filter((k) => !k.revoked_at).length;
    rows.push(h("tr", {},
      h("th", { scope: "row" }, t),
      h("td", { class: "num" }, `${live} live / ${keys.length}`),
      h("td", {}, h("ul", { class: "ids" }, keys.map((k) => h("li", {}, h("span", { class: "mono" }, k.key_id), ` ${k.label || "(no label)"} · created ${fmtTime(k.created_at)}`,
        k.revoked_at ? h("span", { class: "badge old" }, ` revoked ${fmtTime(k.revoked_at)}`) : null)))),
      h("td", {}, h("a", { href: `#/audit?tenant=${enc(t)}` }, "Audit trail"), " · ", h("a", { href: `#/doctor?tenant=${enc(t)}` }, "Doctor"))));
  }
  root.append(table(`${tenants.length} tenant${tenants.length === 1 ? "" : "s"}`, ["Tenant", h("th", { scope: "col", class: "num" }, "Keys"), "Key ids", "Inspect"], rows));
}

async function viewLearningAdmin() {
  const root = viewRoot("Learning queue", "Messages waiting for a learner (amber worker), per tenant. Dead jobs failed on every retry.");
  focusHeading();
  const tenants = (await api("/v1/admin/tenants")).items;
  const all = await api("/v1/admin/learning");
  const rows = [];
  for (const t of tenants) {
    const c = (await api(`/v1/admin/learning?tenant=${enc(t)}`)).counts;
    rows.push(h("tr", {}, h("th", { scope: "row" }, t), ...["pending", "leased", "dead"].map((k) => h("td", { class: "num" }, c[k] ?? 0))));
  }
  rows.push(h("tr", {}, h("th", { scope: "row" }, "All tenants"), ...["pending", "leased", "dead"].map((k) => h("td", { class: "num" }, h("strong", {}, all.counts[k] ?? 0)))));
  root.append(table("Jobs by state", ["Tenant", ...["Pending", "Leased", "Dead (failed)"].map((x) => h("th", { scope: "col", class: "num" }, x))], rows));
}

async function viewDoctor(_args, params) {
  const root = viewRoot("Doctor", "`amber doctor` on the store behind this server: the deployment mistakes that lose memory, each with its fix.");
  const tenants = (await api("/v1/admin/tenants")).items;
  const cur = params.get("tenant") || tenants[0] || "default";
  const sel = h("select", { id: "d-tenant", name: "tenant" }, (tenants.length ? tenants : ["default"]).map((t) => h("option", { value: t, selected: t === cur }, t)));
  root.append(h("form", { class: "filters", onsubmit: (ev) => { ev.preventDefault(); const want = `#/doctor?tenant=${enc(sel.value)}`; if (location.hash === want) route(); else location.hash = want; } },
    h("div", { class: "field" }, h("label", { for: "d-tenant" }, "Check session keys of tenant"), sel),
    h("div", {}, h("button", { type: "submit" }, "Run doctor"))));
  focusHeading();
  const out = h("div", { "aria-live": "polite" }, h("p", { class: "note" }, "Running…"));
  root.append(out);
  const rep = await api(`/v1/admin/doctor?tenant=${enc(cur)}`);
  const order = { problem: 0, warning: 1, info: 2 };
  const findings = [...rep.findings].sort((a, b) => order[a.severity] - order[b.severity]);
  out.replaceChildren(
    h("p", { class: `callout${rep.ok ? " ok" : ""}`, id: "doctor-verdict" }, rep.ok ? "No problems found" : "Problems found", ` for `, h("code", {}, rep.store)),
    h("ul", { class: "findings" }, findings.map((f) => h("li", {},
      h("h3", {}, h("span", { class: `badge ${f.severity}` }, f.severity), f.title, h("code", { class: "note" }, f.code)),
      h("p", {}, f.detail), f.fix ? h("p", { class: "fix" }, h("strong", {}, "Fix: "), f.fix) : null))));
}

// -- start ---------------------------------------------------------------------------------------------

$("login-form").addEventListener("submit", signIn);
$("logout").addEventListener("click", () => { $("who-text").textContent = ""; signOut("Signed out."); });
$("skip").addEventListener("click", (ev) => { ev.preventDefault(); const t = $("view-h") || $("main"); t.focus(); });
window.addEventListener("hashchange", route);
route();
