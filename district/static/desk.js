// The district desk's page: it shows what /api returns and refetches what a change notice names.
// No framework and no build step; every element is built with textContent, never innerHTML.
"use strict";

const COLOURS = { red: "#e5484d", orange: "#f08c2e", yellow: "#e9c53a", blue: "#3e8ed0" };
const STEP_NAMES = { opened: "opened", ack: "acknowledged", dispatch: "dispatched", report: "reported",
  close: "closed", "send-back": "sent back", reopened: "reopened" };
const desk = { me: null, alarms: [], orders: [], devices: new Map(), selected: null, subject: null, sent: new Map(),
  events: null, skew: 0, ping: 15, quiet: null, kept: new Map(), feed: true, synced: false, restored: false };

function $(id) { return document.getElementById(id); }

function h(tag, attrs, ...children) {
  const svg = ["svg", "line", "polyline", "circle", "rect", "text", "g", "path", "title"].includes(tag);
  const el = svg ? document.createElementNS("http://www.w3.org/2000/svg", tag) : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "on") for (const [ev, fn] of Object.entries(v)) el.addEventListener(ev, fn);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) el.append(c instanceof Node ? c : String(c));
  return el;
}

async function api(path, body) {
  const me = desk.me;  // the session this request goes under
  const opts = { credentials: "same-origin", headers: {} };
  if (body !== undefined) {
    opts.method = "POST";
    opts.headers["Content-Type"] = "application/json";
    opts.headers["X-CSRF-Token"] = me ? me.csrf : "";
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  const data = await r.json().catch(() => ({}));
  if (!r.ok) {
    // Sent under a session that ended and answered once the officer had logged in again (over a slow link): not
    // this session's end. A read is sent again under this session; an action is not done again unasked.
    if (r.status === 401 && desk.me && desk.me !== me) {
      if (body === undefined) return api(path);
      throw new Error("not done: it was sent before you logged in again; do it again");
    }
    // Refused for its CSRF token: this browser logged in again in another tab (the cookie is shared) before this
    // page heard of it. The page takes the browser's session; the action is not done again unasked.
    if (r.status === 403 && body !== undefined && me) {
      const now = await api("/api/me");
      if (now.csrf !== me.csrf) {
        adopt(now);
        throw new Error(`not done: this browser was logged in again in another tab, as ${now.user}; do it again`);
      }
    }
    const err = new Error(said(data) || r.statusText);
    err.status = r.status;
    // The session ended (its 12 h, a logout elsewhere) under an action or a fetch: the login, not an error under
    // the buttons with no way to log in but a reload, which lost what the officer had typed.
    if (r.status === 401 && desk.me) showLogin("Your session has ended: log in again.");
    throw err;
  }
  return data;
}

// --- formatting -----------------------------------------------------------------------------------

// A refusal writes its times in UTC, for any client, and gives each as epoch seconds too: shown here as every other
// time on the page (the PC's zone), or "it went red at 13:50 UTC" stood beside steps at 21:50.
function said(data) {
  let text = data.error || "";
  for (const t of Array.isArray(data.times) ? data.times : []) text = text.replace(t.text, () => clock(t.t));
  return text;
}

// The desk's clock, not the PC's: one behind read every alarm raised "0 s" ago and cut the newest readings off
// the chart. Taken from /api/me at each login and reconnection.
function now() { return Date.now() / 1000 + desk.skew; }

function age(t) {
  if (t === null || t === undefined) return "—";
  let s = Math.max(0, Math.floor(now() - t));
  if (s < 60) return s + " s";
  if (s < 3600) return Math.floor(s / 60) + " min " + (s % 60) + " s";
  if (s < 86400) return Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  return Math.floor(s / 86400) + " d " + Math.floor((s % 86400) / 3600) + " h";
}
function clock(t) {
  return t ? new Date(t * 1000).toLocaleString([], { hour12: false }) : "—";
}
function dur(s) {
  if (s === null || s === undefined) return "—";
  if (s < 1) return (s * 1000).toFixed(0) + " ms";
  if (s < 120) return s.toFixed(1) + " s";
  if (s < 7200) return (s / 60).toFixed(1) + " min";
  return (s / 3600).toFixed(1) + " h";
}
function num(v) { return v === null || v === undefined ? "—" : +v.toPrecision(4); }
function ageCell(t) { return h("span", { class: "age", dataset: { t: t || "" } }, age(t)); }
function may(action) { return desk.me && desk.me.may.includes(action); }

// --- loading --------------------------------------------------------------------------------------

// A redraw replaces what the keyboard's focus was on: it goes back to the element of the same id (or data-id), or
// Enter on the alarm or button the officer had tabbed to fell on the page's body.
function keepFocus(box) {
  const el = document.activeElement;
  const sel = !el || el === box || !box.contains(el) ? null : el.id ? "#" + CSS.escape(el.id)
    : el.dataset.id ? `[data-id="${CSS.escape(el.dataset.id)}"]` : null;
  return () => { const again = sel && box.querySelector(sel); if (again) again.focus(); };
}

async function loadAlarms() {
  desk.alarms = await api("/api/alarms");
  const list = $("alarms");
  const refocus = keepFocus(list);
  list.replaceChildren(...desk.alarms.map(alarmItem));
  refocus();
  $("alarms-empty").hidden = desk.alarms.length > 0;
  const live = desk.alarms.filter((a) => a.state === "open").length;
  $("alarm-count").textContent = live + " live" + (desk.alarms.length > live ? ", " + (desk.alarms.length - live)
    + " not live" : "");
}

function alarmItem(a) {
  const level = a.level || a.peak || "none";
  const tags = [];
  if (a.state !== "open") tags.push(h("span", { class: "tag " + a.state }, a.state === "historical"
    ? "historical" : a.state === "inhibited" ? "inhibited" : a.state));
  if (a.acked) tags.push(h("span", { class: "tag acked" }, "acknowledged"));
  if (a.site_online === false) tags.push(h("span", { class: "tag offline", title: "its site's gateway is offline:"
    + " this is the alarm as last heard" }, "site offline"));
  if (a.work_order) tags.push(h("span", { class: "tag wo" }, "order " + a.work_order.state));
  const sel = desk.selected && desk.selected.alarm === a.id;
  return h("li", { class: `alarm lv-${level} st-${a.state}${sel ? " selected" : ""}`, dataset: { id: a.id },
    tabindex: 0, on: { click: () => select({ alarm: a.id }), keydown: (e) => e.key === "Enter" && select({ alarm: a.id }) } },
    h("div", { class: "alarm-top" }, h("span", { class: "level" }, level.toUpperCase()),
      h("span", { class: "what" }, `${a.metric || a.kind} ${num(a.value)} ${a.unit || ""}`),
      ageCell(a.received)),  // since the district heard of it, as the board orders: `raised` is the site's clock
    h("div", { class: "alarm-where" }, `${a.site} · ${a.dev}${a.point ? " · " + a.point : ""} · ${a.kind}`),
    h("div", { class: "tags" }, tags));
}

async function loadOrders() {
  desk.orders = await api("/api/work-orders");
  $("orders").tBodies[0].replaceChildren(...desk.orders.map((o) => h("tr", {
    class: "clickable st-" + o.state, dataset: { id: o.id },
    on: { click: () => select({ alarm: o.alarm, order: o.id }) } },
  h("td", {}, o.id), h("td", {}, o.site), h("td", {}, `${o.dev} ${o.metric || ""}`),
  h("td", {}, h("span", { class: "dot lv-" + o.peak }), o.peak), h("td", { class: "wo-state" }, o.state),
  h("td", {}, o.team || "—"), h("td", {}, o.round), h("td", {}, clock(o.opened)), h("td", {}, ageCell(o.updated)))));
}

async function loadState() {
  const [sites, devices] = await Promise.all([api("/api/sites"), api("/api/devices")]);
  desk.devices = new Map();
  $("sites").tBodies[0].replaceChildren(...sites.map((s) => {
    const said = Object.entries(s.devices).map(([k, n]) => `${n} ${k}`).join(", ");
    const total = Object.values(s.devices).reduce((a, n) => a + n, 0);
    return h("tr", {},
      h("td", {}, s.site), h("td", {}, h("span", { class: "pill " + (s.online ? "online" : "offline") },
        s.online ? "online" : "offline")),
      // A session's number is at least the site box's clock in ms (a 13-digit count): when it began, by that
      // clock, which shows a box's clock far off beside born, the district's; a gateway's older counter as it is.
      h("td", {}, s.began ? clock(s.began) : s.session === null ? "—" : "session " + s.session),
      h("td", {}, clock(s.born)), h("td", {}, clock(s.died)),
      h("td", {}, !said ? "—" : s.online ? said : `${total} unknown (last said ${said})`));
  }));
  $("devices").tBodies[0].replaceChildren(...devices.map((d) => {
    const seen = ageCell(d.last_seen);
    desk.devices.set(d.site + "\n" + d.dev, seen);
    return h("tr", {},
      h("td", {}, d.site), h("td", {}, d.dev), h("td", {}, devicePill(d)),
      h("td", {}, d.batt === null ? "—" : d.batt + " V"), h("td", {}, seen),
      h("td", { class: "muted" }, d.pos ? d.pos.map((x) => x.toFixed(5)).join(", ") : "—"));
  }));
}

// A device of a site whose gateway is offline is as last heard: nothing of it can reach the district, so it is
// shown unknown, with what it last said beside (an "online" there was read as a healthy device).
function devicePill(d) {
  if (d.site_online) return h("span", { class: "pill " + d.state }, d.state);
  return [h("span", { class: "pill unknown", title: "its site's gateway is offline: nothing from this device"
    + " reaches the district" }, "unknown (site offline)"), h("span", { class: "muted" }, " last said " + d.state)];
}

// A reading changes nothing of a device the page shows but when it was last seen, which its notice carries: moved
// here, since fetching every device of the district at each one was several fetches a second under ingest.
function readingSeen(n) {
  const seen = desk.devices.get(n.site + "\n" + n.dev);
  if (!seen || typeof n.received !== "number") return false;
  if (n.received > (+seen.dataset.t || 0)) { seen.dataset.t = n.received; seen.textContent = age(n.received); }
  return true;
}

async function loadTimes() {
  const t = await api("/api/response-times");
  const measures = ["sample_desk", "alarm_ack", "ack_dispatch", "dispatch_closed"];
  const rows = [];
  for (const [group, label] of [["colour", "colour"], ["site", "site"]]) {
    for (const [key, m] of Object.entries(t[group] || {})) {
      rows.push(h("tr", {}, h("th", {}, group === "colour" ? h("span", { class: "dot lv-" + key }) : null,
        `${label} ${key}`),
      ...measures.map((name) => {
        const s = m[name];
        return h("td", {}, s && s.count ? `${dur(s.p50)} / ${dur(s.p90)} / ${dur(s.max)} (${s.count})` : "—");
      })));
    }
  }
  $("times").tBodies[0].replaceChildren(...rows);
}

// --- the map --------------------------------------------------------------------------------------

async function loadMap() {
  const m = await api("/api/map");
  const svg = $("map");
  const all = [...m.points.map((p) => [p.lat, p.lon]), ...m.devices.map((d) => d.pos), ...m.alarms.map((a) => a.pos)];
  if (!all.length) { svg.replaceChildren(h("text", { x: 210, y: 150, class: "empty" }, "no coordinates yet")); return; }
  const lat0 = all.reduce((s, p) => s + p[0], 0) / all.length;
  const k = Math.cos(lat0 * Math.PI / 180);
  const xs = all.map((p) => p[1] * k), ys = all.map((p) => p[0]);
  const [x0, x1, y0, y1] = [Math.min(...xs), Math.max(...xs), Math.min(...ys), Math.max(...ys)];
  const span = Math.max(x1 - x0, y1 - y0, 0.0005);
  const scale = Math.min(360 / span, 240 / span);
  const at = (p) => [210 + (p[1] * k - (x0 + x1) / 2) * scale, 150 - (p[0] - (y0 + y1) / 2) * scale];
  const metres = scale / 111320;  // pixels per metre
  const grid = [];
  for (let i = 1; i < 7; i++) grid.push(h("line", { x1: i * 60, y1: 0, x2: i * 60, y2: 300, class: "gridline" }));
  for (let i = 1; i < 5; i++) grid.push(h("line", { x1: 0, y1: i * 60, x2: 420, y2: i * 60, class: "gridline" }));
  const points = m.points.map((p) => {
    const [x, y] = at([p.lat, p.lon]);
    return h("g", {}, h("circle", { cx: x, cy: y, r: Math.max(6, (p.radius_m || 10) * metres), class: "rp" }),
      h("text", { x: x + 8, y: y - 8, class: "label" }, p.id), h("title", {}, `${p.site} ${p.id} (${p.cls})`));
  });
  const devs = m.devices.map((d) => {
    const [x, y] = at(d.pos);
    const state = d.site_online ? d.state : "unknown (site offline, last said " + d.state + ")";
    return h("g", {}, h("rect", { x: x - 4, y: y - 4, width: 8, height: 8,
      class: "dev " + (d.site_online ? d.state : "unknown") }),
      h("text", { x: x + 7, y: y + 12, class: "label small" }, d.dev), h("title", {}, `${d.site} ${d.dev}: ${state}`));
  });
  const alarms = m.alarms.map((a) => {
    const [x, y] = at(a.pos);
    return h("g", { class: "clickable", on: { click: () => select({ alarm: a.id }) } },
      h("circle", { cx: x, cy: y, r: 11, class: `al st-${a.state}`, stroke: COLOURS[a.level] || "#888" }),
      h("title", {}, `${a.level || ""} ${a.site} ${a.dev} (${a.state})`));
  });
  const bar = 100 * metres;  // a 100 m scale bar
  svg.replaceChildren(...grid, ...points, ...devs, ...alarms,
    h("line", { x1: 12, y1: 288, x2: 12 + bar, y2: 288, class: "scalebar" }),
    h("text", { x: 12, y: 282, class: "label small" }, "100 m"));
}

// --- the detail panel -----------------------------------------------------------------------------

function select(sel) {
  const was = desk.selected;
  if (!was || was.alarm !== sel.alarm) {  // both were about the alarm left
    $("action-error").textContent = "";
    $("messages").replaceChildren();
    renderKept(sel.alarm);
  }
  desk.selected = sel;
  for (const li of document.querySelectorAll(".alarm")) li.classList.toggle("selected", li.dataset.id === sel.alarm);
  loadDetail().catch(showError("action-error"));
}

async function loadDetail() {
  const sel = desk.selected;
  if (!sel) return;
  const a = desk.alarms.find((x) => x.id === sel.alarm);
  const orderId = sel.order || (a && a.work_order && a.work_order.id);
  const order = orderId ? await api("/api/work-orders/" + orderId) : null;
  const subject = a || (order && { id: order.alarm, site: order.site, dev: order.dev, metric: order.metric,
    level: order.level, peak: order.peak, state: "cleared", point: order.point });
  if (!subject) return;
  $("detail-title").replaceChildren(h("span", { class: "dot lv-" + (subject.level || subject.peak) }),
    `${(subject.level || subject.peak || "").toUpperCase()} ${subject.metric || subject.kind || ""} at ${subject.site} · ${subject.dev}`);
  $("detail-facts").replaceChildren(...[
    ["state", subject.state], ["value", a ? `${num(a.value)} ${a.unit || ""}` : "—"], ["point", subject.point || "—"],
    ["position", a && a.pos ? a.pos.map((x) => x.toFixed(5)).join(", ") : "—"],
    ["raised", a ? clock(a.raised) : "—", "raised (site clock)"],
    ["acknowledged", a && a.acked ? clock(a.acked) : "no"],
  ].map(([k, v, label]) => h("div", {}, h("span", { class: "k" }, label || k),
    h("span", { class: "v", id: "fact-" + k }, v))));
  desk.subject = subject;
  $("alarm-messages").hidden = false;
  $("window-messages").hidden = !subject.metric;
  renderOrder(order);
  renderActions(a, order);
  if (subject.metric) await loadChart(subject);
  else { $("chart").replaceChildren(); $("chart-title").textContent = "no readings for a " + (subject.kind || "") + " alarm"; }
}

function renderOrder(order) {
  if (!order) { $("order").replaceChildren(h("p", { class: "muted" }, "No work order (opened at orange or red).")); return; }
  $("order").replaceChildren(
    h("div", { class: "order-head" }, `Work order #${order.id} · `, h("b", { id: "wo-state", class: "st-" + order.state },
      order.state), order.team ? ` · team ${order.team}` : "", order.round > 1 ? ` · round ${order.round}` : ""),
    h("ol", { class: "steps" }, order.steps.map((s) => h("li", { class: "step-" + s.step },
      h("span", { class: "when" }, clock(s.at)), h("b", {}, STEP_NAMES[s.step] || s.step), ` by ${s.actor}`,
      s.team ? ` → ${s.team}` : "", s.note ? h("div", { class: "note" }, s.note) : null,
      s.action ? h("div", { class: "note" }, "action: " + s.action) : null))));
}

function renderActions(a, order) {
  const box = [];
  const post = async (path, body, fields = []) => {
    $("action-error").textContent = "";
    // a step names the round its text was written in (the one shown: none written, or the officer told of another
    // since): one from a page behind a send-back is refused, not taken for the next
    const rounds = fields.map($).filter((el) => el && el.value && !el.dataset.told).map((el) => +el.dataset.round);
    if (order && path.startsWith("/api/work-orders/")) body = { ...body, round: Math.min(order.round, ...rounds) };
    const sent = fields.map((id) => [id, $(id) ? $(id).value : ""]);
    try {
      const r = await api(path, body);
      // An ack done here that did not reach its site (the district broker away): its gateway goes on re-sending.
      if (r.down && r.down !== "sent") $("action-error").textContent = r.down;
      // sent: its field goes with the step, and nothing of it is kept as unsent (its own notice may have come first)
      for (const [id, value] of sent) {
        if ($(id) && $(id).value === value) $(id).value = "";
        unkeep(mine, id, value);
      }
    } catch (e) {
      // told why (another round since): the text stays, for the round shown from now on
      if (e.status === 409) for (const id of fields) if ($(id)) $(id).dataset.told = "1";
      showError("action-error")(e);
    }
    if (desk.me) await refresh(["alarms", "orders", "times"]);
  };
  // A notice redraws this box at any moment (anyone's action, any alarm): what the officer has typed, and where,
  // goes into the new fields, or a correction being written would vanish under the cursor. Only into this
  // alarm's: a team typed for one order stood ready in the next one's Dispatch field. And with the round it was
  // typed in: the first team's findings, kept across a send-back and a new dispatch, were reported as the second's.
  const typed = {};
  const mine = a ? a.id : order ? order.alarm : "";
  const left = $("actions").dataset.alarm;
  const same = left === mine;
  if (same) for (const el of $("actions").querySelectorAll("input")) typed[el.id] = el;
  // the alarm left: its text is kept with it, for when the officer opens it again
  else if (left) for (const el of $("actions").querySelectorAll("input")) {
    if (el.value.trim()) keep(left, "You opened another alarm before sending it", el);
  }
  $("actions").dataset.alarm = mine;
  const refocus = same ? keepFocus($("actions")) : () => {};
  const field = (id, placeholder) => {
    const was = typed[id] && typed[id].value ? typed[id] : null;
    const el = h("input", { id, placeholder, dataset: { round: was && !was.dataset.told ? was.dataset.round
      : order.round } });
    el.value = was ? was.value : "";
    return el;
  };
  const st = order && order.state;
  // An open order is acknowledged through its alarm, whether or not the alarm is still on the board (it may have
  // cleared) or was acknowledged before it went orange or red and opened the order.
  const toAck = a && !a.acked ? a.id : st === "open" ? order.alarm : null;
  if (toAck && may("ack")) {
    // the ack names the level and step shown here: an alarm that rose since is refused (409) and redrawn below
    const shown = a && !a.acked ? a.level : order.level;
    const seen = shown ? { level: shown } : {};
    if (a && !a.acked && Number.isInteger(a.step)) seen.step = a.step;
    box.push(h("button", { id: "act-ack", class: "primary", dataset: { step: seen.step ?? "" },
      on: { click: () => post(`/api/alarms/${toAck}/ack`, seen) } }, "Acknowledge"));
  }
  if ((st === "acknowledged" || st === "returned") && may("dispatch")) {
    box.push(h("div", { class: "form-row" }, field("team", "team"), h("button", { id: "act-dispatch", class: "primary",
      on: { click: () => post(`/api/work-orders/${order.id}/dispatch`, { team: $("team").value }, ["team"]) } },
      "Dispatch")));
  }
  if (st === "dispatched" && may("report")) {
    box.push(h("div", { class: "form-row" }, field("findings", "findings"), field("action-taken", "action taken"),
      h("button", { id: "act-report", class: "primary", on: { click: () => post(`/api/work-orders/${order.id}/report`,
        { findings: $("findings").value, action: $("action-taken").value || null }, ["findings", "action-taken"]) } },
      "Report back")));
  }
  if (st === "reported" && may("close")) {
    box.push(h("div", { class: "form-row" }, h("button", { id: "act-close", class: "primary",
      on: { click: () => post(`/api/work-orders/${order.id}/close`, {}) } }, "Close")));
  }
  if ((st === "dispatched" || st === "reported") && may("send-back")) {  // dispatched: to the wrong team, say
    box.push(h("div", { class: "form-row" }, field("correction", "correction"), h("button", { id: "act-send-back",
      on: { click: () => post(`/api/work-orders/${order.id}/send-back`, { correction: $("correction").value },
        ["correction"]) } },
    "Send back")));
  }
  $("actions").replaceChildren(...box);
  refocus();
  for (const el of Object.values(typed)) if (el.value.trim() && !$(el.id)) keep(mine, movedOn(order), el);
  renderKept(mine);
  saveUnsent();
}

// Text typed into a field the redrawn box no longer has (another officer took the step meanwhile, or the order moved
// on), or left behind by opening another alarm, went with its field, unsent and unsaid. It is kept under the buttons
// of its alarm, saying why, until dismissed.
function movedOn(order) {
  const last = order && order.steps.length ? order.steps[order.steps.length - 1] : null;
  return (order ? `Work order #${order.id} is ${order.state}` : "This order moved on")
    + (last ? `: ${STEP_NAMES[last.step] || last.step} by ${last.actor} at ${clock(last.at)}` : "");
}

function keep(alarm, because, el) {
  const why = because + ". What you typed was not sent; it is kept here.";
  const kept = desk.kept.get(alarm) || [];
  let group = kept.find((g) => g.why === why);
  if (!group) kept.push(group = { why, texts: [] });
  group.texts.push({ id: el.id, label: el.placeholder, value: el.value });
  desk.kept.set(alarm, kept);
}

function unkeep(alarm, id, value) {
  const kept = (desk.kept.get(alarm) || []).map((g) => ({ ...g,
    texts: g.texts.filter((t) => t.id !== id || t.value !== value) })).filter((g) => g.texts.length);
  if (kept.length) desk.kept.set(alarm, kept); else desk.kept.delete(alarm);
  if ($("actions").dataset.alarm === alarm) renderKept(alarm);
  saveUnsent();
}

function renderKept(alarm) {
  const kept = desk.kept.get(alarm) || [];
  $("kept").hidden = !kept.length;
  $("kept").replaceChildren(...kept.map((g) => h("div", { class: "kept-group" }, h("p", { class: "kept-why" }, g.why),
    g.texts.map((t) => h("label", {}, h("span", { class: "k" }, t.label),
      h("textarea", { readonly: true, class: "kept-text", dataset: { field: t.id } }, t.value))))),
  kept.length ? h("button", { id: "kept-dismiss", on: { click: () => {
    desk.kept.delete(alarm);
    renderKept(alarm);
    saveUnsent();
  } } }, "Dismiss the kept text") : null);
}

// What was typed and not sent (the fields of the alarm open, every alarm's kept text) is written to the tab's
// sessionStorage as it changes, under the officer's name: a reload (F5, a tab the browser restarted or that crashed)
// lost a field report typed on a tablet. It goes once sent, and at logout: the next officer at this PC is shown none of
// it. A field is cut at the longest text the desk takes (workorders.MAX_TEXT), the whole at UNSENT_CAP characters,
// the earliest alarms' kept text dropped first. A browser that refuses the storage (full, disabled) still has the page.
const UNSENT = "lifeline.desk.unsent.";
const FIELD_CAP = 2000, UNSENT_CAP = 100_000;

function saveUnsent() {
  if (!desk.me) return;
  const cut = (t) => ({ ...t, value: t.value.slice(0, FIELD_CAP) });
  const fields = [...$("actions").querySelectorAll("input")].filter((el) => el.value.trim()).map((el) => cut({
    id: el.id, label: el.placeholder, value: el.value, round: el.dataset.round, told: el.dataset.told || "" }));
  const kept = [...desk.kept].map(([alarm, groups]) => [alarm, groups.map((g) => ({ ...g, texts: g.texts.map(cut) }))]);
  let text;
  do {
    text = JSON.stringify({ alarm: $("actions").dataset.alarm, selected: desk.selected, fields, kept });
  } while (text.length > UNSENT_CAP && kept.shift());
  try {
    if (fields.length || kept.length) sessionStorage.setItem(UNSENT + desk.me.user, text);
    else sessionStorage.removeItem(UNSENT + desk.me.user);
  } catch (e) { /* the page goes on without */ }
}

// The fields go back into the actions box, hidden, as the alarm's typed text: the first drawing of that alarm's
// panel (the one reopened) puts them in its fields with their rounds, as a redraw does; opening another alarm first,
// or an order that moved on meanwhile, keeps them as it keeps what is left in a field.
function restoreUnsent(user) {
  try {
    const was = JSON.parse(sessionStorage.getItem(UNSENT + user));
    if (!was) return;
    desk.kept = new Map(was.kept);
    desk.selected = was.selected;
    if (was.alarm) $("actions").dataset.alarm = was.alarm;
    $("actions").replaceChildren(...was.fields.map((f) => {
      const el = h("input", { id: f.id, placeholder: f.label, hidden: true,
        dataset: f.told ? { round: f.round, told: f.told } : { round: f.round } });
      el.value = f.value;
      return el;
    }));
  } catch (e) { /* none kept, or the storage refused */ }
}

function forgetUnsent() {
  for (const el of $("actions").querySelectorAll("input")) el.value = "";
  desk.kept.clear();
  renderKept($("actions").dataset.alarm);
  try {
    for (const key of Object.keys(sessionStorage)) if (key.startsWith(UNSENT)) sessionStorage.removeItem(key);
  } catch (e) { /* the storage refused: nothing of it was kept either */ }
}

async function loadChart(s) {
  const win = +$("window").value;
  const to = now();
  const q = new URLSearchParams({ site: s.site, dev: s.dev, metric: s.metric, from: to - win, to });
  const d = await api("/api/history?" + q);
  $("chart-title").textContent = `${s.dev} ${s.metric} (${d.unit || ""}), last ${$("window").selectedOptions[0].text}`;
  const W = 640, H = 220, L = 44, R = 70, T = 10, B = 24;
  // Rollups and readings in time order: a reading that arrived late sits among the rollups until the next fold.
  // The bucket the window starts in is drawn from the window's edge; a bucket of no numbers has no mean to draw.
  const pts = [...d.rollups.filter((r) => r.mean !== null).map((r) => [Math.max(r.t, d.from), r.mean]), ...d.readings]
    .sort((p, q) => p[0] - q[0]);
  const vals = [...pts.map((p) => p[1]), ...d.thresholds.map((t) => t.value)];
  const lo = Math.min(0, ...vals), hi = Math.max(1, ...vals) * 1.08;
  const x = (t) => L + (t - d.from) / (d.to - d.from) * (W - L - R);
  const y = (v) => H - B - (v - lo) / (hi - lo) * (H - T - B);
  const out = [h("rect", { x: L, y: T, width: W - L - R, height: H - T - B, class: "plot" })];
  for (let i = 0; i <= 4; i++) {
    const v = lo + (hi - lo) * i / 4;
    out.push(h("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "gridline" }),
      h("text", { x: L - 4, y: y(v) + 4, class: "axis", "text-anchor": "end" }, num(v)));
  }
  // Past a day, hours alone repeat (the first and last ticks of 24 h read the same): each tick names its date.
  const tick = { hour12: false, hour: "2-digit", minute: "2-digit",
    ...(d.to - d.from >= 86400 ? { month: "short", day: "numeric" } : {}) };
  for (let i = 0; i <= 4; i++) {
    const t = d.from + (d.to - d.from) * i / 4;
    out.push(h("text", { x: x(t), y: H - 6, class: "axis", "text-anchor": "middle" },
      new Date(t * 1000).toLocaleString([], tick)));
  }
  for (const t of d.thresholds) {
    out.push(h("line", { x1: L, x2: W - R, y1: y(t.value), y2: y(t.value), class: "threshold", stroke: COLOURS[t.level] }),
      h("text", { x: W - R + 4, y: y(t.value) + 4, class: "axis", fill: COLOURS[t.level] }, `${t.level} ${num(t.value)}`));
  }
  for (const e of d.transitions) {
    out.push(h("line", { x1: x(e.t), x2: x(e.t), y1: T, y2: H - B, class: "transition", stroke: COLOURS[e.level] || "#9aa4b2" }),
      h("text", { x: x(e.t) + 3, y: T + 12, class: "axis", fill: COLOURS[e.level] || "#9aa4b2" }, e.ev),
      h("title", {}, `${e.ev} ${e.level || ""} ${clock(e.t)}`));
  }
  if (pts.length) {
    // A boolean series (a float switch, a door contact) holds each value until the next reading: drawn in steps.
    const line = d.boolean ? pts.flatMap((p, i) => (i ? [[p[0], pts[i - 1][1]], p] : [p])) : pts;
    out.push(h("polyline", { points: line.map((p) => `${x(p[0]).toFixed(1)},${y(p[1]).toFixed(1)}`).join(" "), class: "series" }));
    const last = pts[pts.length - 1];
    out.push(h("circle", { cx: x(last[0]), cy: y(last[1]), r: 3, class: "last" }));
  } else {
    out.push(h("text", { x: (W - R + L) / 2, y: H / 2, class: "empty", "text-anchor": "middle" }, "no readings in this window"));
  }
  $("chart").replaceChildren(...out);
}

// --- the device messages behind an alarm ----------------------------------------------------------

function reading(r) {
  const value = r.v ?? r.s ?? r.vb ?? r.vs ?? (r.vd !== undefined ? "0x" + r.vd : "—");
  return `${r.n} ${typeof value === "number" ? num(value) : value}${r.u ? " " + r.u : ""}`;
}

// Fetched when the officer asks (a notice redraws the detail, not this list): the alarm's messages, or those of
// the chart's window; a request answered after the officer moved to another alarm is dropped.
async function loadMessages(path) {
  const sel = desk.selected;
  const d = await api(path);
  if (desk.selected !== sel) return;
  const head = d.why ? `No device messages: ${d.why}.` : `${d.messages.length} device message`
    + `${d.messages.length === 1 ? "" : "s"} of ${d.dev} with ${d.metric} from ${clock(d.from)} to ${clock(d.to)}`
    + (d.more ? `: the first ${d.messages.length}, there are more` : "");
  $("messages").replaceChildren(h("p", { id: "messages-head", class: "muted" }, head),
    d.messages.length ? h("table", { class: "grid" }, h("thead", {}, h("tr", {}, ...["seq", "boot", "read",
      "received", "readings", "device MAC at ingest", ""].map((x) => h("th", {}, x)))),
    h("tbody", {}, d.messages.map(messageRow))) : "");
}

function messageRow(m) {
  const out = h("td", { class: "check" });
  const check = async () => {
    out.replaceChildren("checking…");
    try { out.replaceChildren(...verdict(await api(`/api/messages/${m.id}/check`))); }
    catch (e) { out.replaceChildren(e.status === 401 ? "" : e.message); }
  };
  return h("tr", { dataset: { id: m.id, seq: m.seq } }, h("td", {}, m.seq), h("td", {}, m.boot),
    h("td", {}, clock(m.span[0])), h("td", {}, clock(m.received)),
    h("td", {}, m.folded ? "folded into rollups" + (m.sealed ? ": Check again shows what it sealed" : "")
      : m.readings.map(reading).join(", ")),
    h("td", {}, h("span", { class: "pill " + (m.verified ? "done" : "stale") }, m.verified ? "verified" : "not verified"),
      m.sealed ? "" : h("span", { class: "muted" }, " no sealed bytes")),
    h("td", {}, h("button", { class: "check-again", on: { click: check } }, "Check again"), out));
}

const VERDICT_PILL = { match: "done", "mac-fails": "failed", differs: "failed" };

function verdict(c) {
  const out = [h("span", { class: "pill verdict " + (VERDICT_PILL[c.verdict] || "stale") }, c.verdict),
    h("span", { class: "says" }, c.says)];
  if (c.verdict === "differs" && c.sent) out.push(h("span", { class: "says muted" },
    `sent: ${c.sent.map(reading).join(", ")}; stored: ${c.stored.map(reading).join(", ") || "none"}`));
  else if (c.verdict === "folded") out.push(h("span", { class: "says muted" }, "sent: " + c.sent.map(reading).join(", ")));
  return out;
}

// --- commands -------------------------------------------------------------------------------------

async function sendCommand(path, body) {
  $("command-error").textContent = "";
  try {
    const r = await api(path, body);
    desk.sent.set(r.id, { id: r.id, site: body.site, dev: body.dev || "—", op: body.op || "rules", state: "sent" });
    await loadSent();
  } catch (e) { showError("command-error")(e); }
}

async function loadSent() {
  for (const [id, c] of desk.sent) if (c.state === "sent") desk.sent.set(id, await api("/api/commands/" + id));
  $("sent").tBodies[0].replaceChildren(...[...desk.sent.values()].reverse().map((c) => h("tr", {},
    h("td", { class: "muted" }, c.id.slice(0, 8) + "…"), h("td", {}, c.site), h("td", {}, c.dev || "—"),
    h("td", {}, c.op), h("td", {}, h("span", { class: "pill " + c.state }, c.state)),
    h("td", {}, c.result === undefined || c.result === null ? "—" : JSON.stringify(c.result)))));
}

// --- firmware updates -----------------------------------------------------------------------------

function bar(done, total) {
  const percent = (total ? Math.min(1, done / total) * 100 : 0).toFixed(0) + "%";
  const fill = h("span", { class: "fill" });
  fill.style.width = percent;  // through the CSSOM: the page's CSP allows no inline style attribute
  return h("span", { class: "bar", title: `${done} of ${total} bytes` }, h("span", { class: "track" }, fill), percent);
}

async function loadOta() {
  const sites = (await api("/api/sites")).map((x) => x.site);
  const pick = $("ota-site");
  const chosen = pick.value || sites[0];
  pick.replaceChildren(...sites.map((x) => h("option", { value: x, selected: x === chosen }, x)));
  if (!chosen) return;
  const o = await api("/api/ota?site=" + encodeURIComponent(chosen));
  $("ota-releases").textContent = o.releases.length ? "Serves: " + o.releases.map((r) =>
    `${r.v} (${r.profiles.join(", ")}, ${(r.size / 1024).toFixed(0)} KB)`).join("; ") : "This site serves no release.";
  $("ota-nodes").tBodies[0].replaceChildren(...o.nodes.map((n) => h("tr", { dataset: { dev: n.dev } },
    h("td", {}, n.dev), h("td", {}, n.prof || "—"), h("td", {}, n.running || "?"),
    h("td", {}, n.target ? [n.target + " ", bar(n.done, n.total)] : "—"),
    h("td", {}, n.outcome ? h("span", { class: "pill " + (n.outcome.ok ? "done" : "failed") },
      `${n.outcome.v} ${n.outcome.res}`) : "—"))));
  const versions = o.releases.map((r) => r.v);
  $("rollout-version").replaceChildren(...versions.map((v) => h("option", { value: v }, v)));
  $("rollout-form").hidden = !may("rollout") || !versions.length;
  $("rollouts").tBodies[0].replaceChildren(...o.rollouts.map((r) => {
    const count = (s) => r.nodes.filter((n) => n.state === s).length;
    return h("tr", { dataset: { rollout: r.id } }, h("td", {}, r.id), h("td", {}, r.v), h("td", {}, r.actor),
      h("td", {}, h("span", { class: "pill " + (r.state === "running" ? "sent" : r.state === "done" ? "done" : "failed") },
        r.state), r.reason ? " " + r.reason : ""),
      h("td", {}, `${count("landed")} landed, ${count("failed")} failed, ${r.nodes.length} in all (stage ${r.stage + 1})`),
      h("td", {}, r.state === "running" && may("rollout") ? h("button", { on: { click: () =>
        api(`/api/ota/rollouts/${r.id}/halt`, {}).then(() => refresh(["ota"]), showError("ota-error")) } }, "Halt") : ""));
  }));
}

// --- live -----------------------------------------------------------------------------------------

let pending = new Set(), timer = null;
const stale = new Map();  // part -> why its last fetch failed; shown until a fetch of it succeeds

function showStale() {
  const why = [...stale.values()];
  $("stale").textContent = why.length ? "Not up to date: " + why[why.length - 1] : "";
  $("stale").hidden = !why.length;
}

// What a page that may have missed notices (a reload, a reconnection) fetches again: all it shows.
const EVERY_PART = ["alarms", "orders", "state", "map", "times", "sent", "ota"];

function refresh(parts) {
  for (const p of parts) pending.add(p);
  if (!timer) timer = new Promise((resolve) => setTimeout(resolve, 150)).then(async () => {
    const todo = pending;
    pending = new Set();
    timer = null;
    const jobs = { alarms: loadAlarms, orders: loadOrders, state: loadState, map: loadMap, times: loadTimes,
      sent: loadSent, ota: loadOta };
    // A fetch the desk could not answer (its database busy, say) leaves that part as it was: the officer is told.
    const run = (p, job) => job().then(() => stale.delete(p), (e) => stale.set(p, e.message));
    await Promise.all([...todo].filter((p) => jobs[p]).map((p) => run(p, jobs[p])));
    if (todo.has("detail") || todo.has("alarms") || todo.has("orders")) await run("detail", loadDetail);
    showStale();
  });
  return timer;
}

function onNotice(n) {
  const sel = desk.selected;
  switch (n.kind) {
    case "alarm": refresh(["alarms", "map", "times"]); break;
    case "work-order": refresh(["orders", "alarms", "times"]); break;
    case "device": refresh(["state", "map", "ota"]); break;
    case "site": refresh(["state", "map", "ota", "alarms"]); break;  // its alarms say whether it is offline
    case "command": refresh(["sent"]); break;
    case "ota": refresh(["ota"]); break;
    case "reading":
      if (!readingSeen(n)) refresh(["state"]);
      if (sel) { const a = desk.alarms.find((x) => x.id === sel.alarm); if (a && a.site === n.site && a.dev === n.dev) refresh(["detail"]); }
      break;
    case "feed": desk.feed = n.up; if (desk.synced) showLive(n.up); break;
    default:  // "reload": this page fell behind, or the desk follows the district broker again
      desk.feed = true;
      refresh(EVERY_PART).then(() => { if (desk.synced) showLive(desk.feed); });
  }
}

// "not live" while the desk has lost the district broker: what the workers store does not reach this page.
function showLive(up) {
  $("live").textContent = up ? "live" : "not live";
  $("live").className = "live " + (up ? "on" : "off");
  $("live").title = up ? "live updates" : "the desk has lost the district broker: new alarms and changes are"
    + " not shown until it is back";
}

function showReconnecting(why) {
  $("live").textContent = "reconnecting";
  $("live").className = "live off";
  $("live").title = why;
}

// A feed says "ping" when it has had nothing to send for hello's `ping` seconds. A page that hears nothing for three
// of them has lost the desk without being told (its host died, a link dropped without a reset), which the browser
// notices only once TCP gives up, minutes later: it read "live" meanwhile. It connects again; a hello says "live".
function watch(es) {
  clearTimeout(desk.quiet);
  if (!desk.ping) return;  // a desk that sends no ping
  const wait = 3 * desk.ping + 1;
  desk.quiet = setTimeout(() => {
    if (desk.events !== es) return;
    es.close();
    showReconnecting(`nothing heard from the desk for ${wait} s: connecting again; new alarms are not shown until it`
      + " answers");
    connect();
  }, wait * 1000);
}

function connect() {
  const es = new EventSource("/api/events");
  desk.events = es;
  desk.synced = false;
  watch(es);  // a connection the desk never answers is given up too
  // At each connection, the browser's own after a stream ended included: the session its cookie holds now (a login
  // in another tab replaces it), then all, as notices may have been missed.
  es.addEventListener("hello", (e) => {
    const hello = JSON.parse(e.data);
    desk.ping = hello.ping;
    desk.feed = hello.feed !== false;
    watch(es);
    // "live" once the page shows what is stored now: told at the hello, it let an officer act on the panels of
    // before, redrawn under the officer's hands by the fetch coming after
    api("/api/me").then(adopt, () => {}).then(() => desk.events === es && refresh(EVERY_PART)).then(() => {
      if (desk.events !== es) return;
      desk.synced = true;
      showLive(desk.feed);
    });
  });
  es.addEventListener("change", (e) => { watch(es); onNotice(JSON.parse(e.data)); });
  es.addEventListener("ping", () => watch(es));
  // The session the feed was opened under expired (the shift's 12 h): the login, now rather than at the next alarm, or
  // the session the browser holds if it has a newer one.
  es.addEventListener("ended", () => {
    es.close();
    clearTimeout(desk.quiet);
    reopen(es);
  });
  es.onerror = () => {
    showReconnecting("live updates");
    // The browser connects again by itself after a stream that ended, never after an answer other than 200
    // (503: the database busy; 401: the session ended): the page asks who it is, then connects or shows the login.
    if (es.readyState === EventSource.CLOSED) {
      clearTimeout(desk.quiet);
      setTimeout(() => reopen(es), 3000);
    }
  };
}

function reopen(es) {
  if (desk.events !== es || !desk.me) return;
  api("/api/me").then(() => { if (desk.events === es) connect(); },
    (e) => { if (e.status !== 401) setTimeout(() => reopen(es), 3000); });  // 401: api() showed the login
}

// --- start ----------------------------------------------------------------------------------------

// A 401 is told by the login api() shows: written here as well, "log in first" stayed under the panel after the
// officer had logged in again.
function showError(id) { return (e) => { if (e.status !== 401) $(id).textContent = e.message; }; }

// A form sends one request at a time: a double click sent a command to the device twice.
async function once(form, work) {
  const button = form.querySelector("button[type=submit]");
  if (button.disabled) return;
  button.disabled = true;
  try { await work(); } finally { button.disabled = false; }
}

// The session the page acts under, and the desk's clock; a new session (a login in another tab) shows who it is.
function adopt(me) {
  desk.skew = me.now - Date.now() / 1000;
  if (desk.me && desk.me.csrf === me.csrf) return;
  desk.me = me;
  $("who").replaceChildren(h("b", {}, me.user), " · ", h("span", { id: "role", class: "role " + me.role }, me.role));
  $("commands-card").hidden = !may("command");
}

async function start(me) {
  // at the page's first login alone: after a session's end the page kept its fields, newer than what was stored
  if (!desk.restored) { desk.restored = true; restoreUnsent(me.user); }
  adopt(me);
  $("login-view").hidden = true;
  $("desk").hidden = false;
  $("logout").hidden = false;
  connect();
}

// The desk's panels stay in the page behind the login, so what was typed is there when the officer is back.
function showLogin(why) {
  desk.me = null;
  if (desk.events) { desk.events.close(); desk.events = null; }
  $("login-error").textContent = why || "";
  $("desk").hidden = true;
  $("logout").hidden = true;
  $("who").textContent = "";
  $("login-view").hidden = false;
  $("login-user").focus();
}

document.addEventListener("DOMContentLoaded", () => {
  $("login-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    $("login-error").textContent = "";
    try {
      await api("/api/login", { user: $("login-user").value.trim(), password: $("login-pass").value });
      $("login-pass").value = "";
      await start(await api("/api/me"));
    } catch (err) { $("login-error").textContent = err.message; }
  });
  $("logout").addEventListener("click", async () => {
    await api("/api/logout", {}).catch(() => {});
    if (desk.events) desk.events.close();
    forgetUnsent();
    showLogin();
  });
  $("window").addEventListener("change", () => loadDetail().catch(showError("action-error")));
  $("actions").addEventListener("input", saveUnsent);
  $("alarm-messages").addEventListener("click", () =>
    loadMessages(`/api/alarms/${desk.subject.id}/messages`).catch(showError("action-error")));
  $("window-messages").addEventListener("click", () => {
    const s = desk.subject, to = now();
    loadMessages("/api/messages?" + new URLSearchParams({ site: s.site, dev: s.dev, metric: s.metric,
      from: to - +$("window").value, to })).catch(showError("action-error"));
  });
  $("command-form").addEventListener("submit", (e) => {
    e.preventDefault();
    let args = {};
    try { args = $("cmd-args").value.trim() ? JSON.parse($("cmd-args").value) : {}; } catch (err) {
      $("command-error").textContent = "args: not JSON"; return; }
    once(e.target, () => sendCommand("/api/commands", { site: $("cmd-site").value.trim(),
      dev: $("cmd-dev").value.trim(), op: $("cmd-op").value.trim(), args }));
  });
  $("rules-form").addEventListener("submit", (e) => {
    e.preventDefault();
    let ruleset;
    try { ruleset = JSON.parse($("rules-json").value); } catch (err) {
      $("command-error").textContent = "rule set: not JSON"; return; }
    once(e.target, () => sendCommand("/api/rules", { site: $("rules-site").value.trim(), ruleset }));
  });
  $("ota-site").addEventListener("change", () => loadOta().catch(showError("ota-error")));
  $("rollout-form").addEventListener("submit", (e) => {
    e.preventDefault();
    $("ota-error").textContent = "";
    const canary = $("rollout-canary").value.trim();
    once(e.target, () => api("/api/ota/rollouts", { site: $("ota-site").value, version: $("rollout-version").value,
      canary: /^\d+$/.test(canary) ? +canary : canary, halt_share: +$("rollout-halt").value,
      stage_timeout: +$("rollout-timeout").value, retry_rolled_back: $("rollout-retry").checked })
      .then(() => refresh(["ota"]), showError("ota-error")));
  });
  // Ages tick on the page itself; nothing is fetched for them.
  setInterval(() => { for (const el of document.querySelectorAll(".age")) el.textContent = age(+el.dataset.t || null); }, 1000);
  api("/api/me").then(start, () => showLogin());
});
