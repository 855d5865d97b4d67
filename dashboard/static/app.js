"use strict";
// The dashboard: one shell, a view per path, data from /api/... polled every few seconds (no reload).
// Every value from the API is put into the page with textContent (never innerHTML), so a team or agent name
// cannot inject markup. Money arrives as exact decimal strings; it is rounded here with BigInt, never with floats
// (floats are used only to place points on a chart).

const SVG_NS = "http://www.w3.org/2000/svg";
let ME = null;
let refreshes = 0;

// ---- small DOM helpers ----------------------------------------------------------------------------------------
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === null || v === undefined || v === false) continue;
    if (k === "class") el.className = v;
    else if (k.startsWith("on")) el.addEventListener(k.slice(2), v);
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  for (const child of children.flat()) {
    if (child === null || child === undefined || child === false) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}
function s(tag, attrs, ...children) {
  const el = document.createElementNS(SVG_NS, tag);
  for (const [k, v] of Object.entries(attrs || {})) el.setAttribute(k, String(v));
  for (const child of children.flat()) {
    if (child === null || child === undefined) continue;
    el.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return el;
}

// ---- exact number formatting --------------------------------------------------------------------------------------
// Rounds a decimal string half-up to `places` and groups thousands: "1234.5678" -> "1,234.57".
function roundDec(text, places) {
  let str = String(text ?? "0").trim();
  let neg = str.startsWith("-");
  if (neg || str.startsWith("+")) str = str.slice(1);
  let [ip, fp = ""] = str.split(".");
  ip = ip || "0";
  fp = fp.padEnd(places + 1, "0");
  let digits = BigInt(ip + fp.slice(0, places));
  if (Number(fp[places]) >= 5) digits += 1n;
  let out = digits.toString().padStart(places + 1, "0");
  let intPart = out.slice(0, out.length - places).replace(/\B(?=(\d{3})+(?!\d))/g, ",");
  let frac = places ? "." + out.slice(out.length - places) : "";
  return (neg && digits !== 0n ? "-" : "") + intPart + frac;
}
function usd(text, places = 2) {
  if (text === null || text === undefined) return "–";
  const r = roundDec(text, places);
  return r.startsWith("-") ? "-$" + r.slice(1) : "$" + r;
}
function pct(text) { return text === null || text === undefined ? "–" : roundDec(text, 1) + "%"; }
function money(text, testid, places = 2) {
  return h("span", {class: "money", "data-testid": testid, "data-value": text ?? ""}, usd(text, places));
}
function when(iso) { return iso ? iso.replace("T", " ").replace(/\.\d+Z$|Z$/, " UTC") : "–"; }

// ---- charts (plain SVG) ---------------------------------------------------------------------------------------
function lineChart(points, testid, label) {
  // points: [{x: "2024-05-01", y: "12.5"}]
  const W = 720, H = 220, L = 64, R = 12, T = 14, B = 34;
  const ys = points.map(p => parseFloat(p.y) || 0);
  const max = Math.max(...ys, 0) || 1;
  const x = i => L + (points.length <= 1 ? 0 : (i * (W - L - R)) / (points.length - 1));
  const y = v => T + (H - T - B) * (1 - v / max);
  const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart", role: "img", "aria-label": label,
                        "data-testid": testid, "data-points": points.length});
  for (const f of [0, 0.5, 1]) {
    svg.append(s("line", {x1: L, x2: W - R, y1: y(max * f), y2: y(max * f), class: "grid"}));
    svg.append(s("text", {x: L - 6, y: y(max * f) + 4, class: "axis", "text-anchor": "end"},
                 usd((max * f).toFixed(2))));
  }
  const path = ys.map((v, i) => `${i ? "L" : "M"}${x(i).toFixed(1)},${y(v).toFixed(1)}`).join(" ");
  svg.append(s("path", {d: `${path} L${x(ys.length - 1)},${y(0)} L${x(0)},${y(0)} Z`, class: "area"}));
  svg.append(s("path", {d: path, class: "line"}));
  points.forEach((p, i) => svg.append(
    s("circle", {cx: x(i), cy: y(ys[i]), r: 3, class: "dot"}, s("title", {}, `${p.x}: ${usd(p.y)}`))));
  if (points.length) {
    svg.append(s("text", {x: L, y: H - 10, class: "axis"}, points[0].x));
    svg.append(s("text", {x: W - R, y: H - 10, class: "axis", "text-anchor": "end"}, points[points.length - 1].x));
  }
  return svg;
}

function barChart(rows, testid, label, places = 2) {
  // rows: [{label, value}] drawn as horizontal bars, longest first as given.
  const W = 720, rowH = 26, L = 180, R = 110;
  const H = Math.max(rowH * rows.length + 8, 40);
  const max = Math.max(...rows.map(r => parseFloat(r.value) || 0), 0) || 1;
  const svg = s("svg", {viewBox: `0 0 ${W} ${H}`, class: "chart bars", role: "img", "aria-label": label,
                        "data-testid": testid});
  rows.forEach((r, i) => {
    const w = ((parseFloat(r.value) || 0) / max) * (W - L - R);
    const top = 4 + i * rowH;
    svg.append(s("text", {x: L - 8, y: top + 16, class: "axis", "text-anchor": "end"}, r.label));
    svg.append(s("rect", {x: L, y: top + 3, width: Math.max(w, 1), height: rowH - 8, class: "bar"},
                 s("title", {}, `${r.label}: ${usd(r.value, places)}`)));
    svg.append(s("text", {x: L + w + 6, y: top + 16, class: "axis"}, usd(r.value, places)));
  });
  if (!rows.length) svg.append(s("text", {x: 10, y: 24, class: "axis"}, "no data"));
  return svg;
}

function meter(pctText) {
  const v = Math.max(0, Math.min(parseFloat(pctText) || 0, 100));
  const level = (parseFloat(pctText) || 0) >= 100 ? "over" : (parseFloat(pctText) || 0) >= 80 ? "warn" : "ok";
  const fill = h("div", {class: "fill"});
  fill.style.width = v + "%";  // CSSOM, not a style attribute: the page's CSP allows no inline styles
  return h("div", {class: "meter " + level}, fill, h("span", {}, pct(pctText)));
}

// ---- building blocks ----------------------------------------------------------------------------------------------
function kpi(label, valueNode, note) {
  return h("div", {class: "kpi"}, h("div", {class: "label"}, label), h("div", {class: "value"}, valueNode),
           note ? h("div", {class: "note"}, note) : null);
}
function section(title, ...children) { return h("section", {class: "card"}, h("h2", {}, title), ...children); }
function table(testid, headers, rows) {
  return h("table", {"data-testid": testid},
    h("thead", {}, h("tr", {}, headers.map(x => h("th", {}, x)))),
    h("tbody", {}, rows.length ? rows : [h("tr", {}, h("td", {colspan: headers.length, class: "empty"}, "none"))]));
}
function link(href, text) { return h("a", {href}, text); }
function agentLink(id) { return link("/agents/" + encodeURIComponent(id), id); }
function teamLink(team) { return link("/teams/" + encodeURIComponent(team), team); }
function sev(severity) { return h("span", {class: "badge " + severity}, severity); }
function alertLink(a) { return link("/alerts/" + encodeURIComponent(a.alert_id), a.title); }

// Unpriced calls have an unknown cost: shown beside the dollars, never folded into them as $0.
function unpricedNote(n) { return n ? `, ${n} unpriced` : ""; }
function budgetsTable(budgets, testid = "budgets") {
  return table(testid, ["Policy", "Scope", "Period", "Limit", "Spent", "Utilisation", "Unpriced calls", "Mode"],
    budgets.map(b => h("tr", {"data-policy": b.policy_id},
      h("td", {}, b.policy_id), h("td", {}, `${b.scope_type}: ${b.scope_value}`),
      h("td", {}, `${b.period} (${b.timezone})`), h("td", {}, money(b.limit_usd, "budget-limit")),
      h("td", {}, money(b.spent_usd, "budget-spent")), h("td", {"data-testid": "budget-pct",
        "data-value": b.utilisation_pct ?? ""}, meter(b.utilisation_pct)),
      h("td", {"data-testid": "budget-unpriced", "data-value": b.unpriced_calls ?? 0,
        title: `${b.unpriced_input_tokens ?? 0} input / ${b.unpriced_output_tokens ?? 0} output tokens unpriced`},
        String(b.unpriced_calls ?? 0)),
      h("td", {}, b.mode))));
}
function alertsTable(alerts, testid = "alerts") {
  return table(testid, ["When", "Severity", "Kind", "State", "Team", "Agent", "Title", "Amount"],
    alerts.map(a => h("tr", {"data-alert": a.alert_id},
      h("td", {}, when(a.occurred_at)), h("td", {}, sev(a.severity)), h("td", {}, a.kind), h("td", {}, a.state),
      h("td", {}, a.team ? teamLink(a.team) : "–"), h("td", {}, a.agent_id ? agentLink(a.agent_id) : "–"),
      h("td", {title: a.summary}, alertLink(a)), h("td", {}, money(a.amount_usd, "alert-amount")))));
}
function trendPoints(rows) { return rows.map(r => ({x: r.day, y: r.cost_usd})); }

// ---- views ------------------------------------------------------------------------------------------------------
const VIEWS = [
  {re: /^\/$/, title: () => "Organisation overview", api: () => "/api/overview", render: renderOverview},
  {re: /^\/teams$/, title: () => "Teams", api: () => "/api/teams", render: renderTeams},
  {re: /^\/teams\/([^/]+)$/, title: m => "Team " + m[1], api: m => "/api/teams/" + encodeURIComponent(m[1]),
   render: renderTeam},
  {re: /^\/agents$/, title: () => "Agents", api: () => "/api/agents", render: renderAgents},
  {re: /^\/agents\/([^/]+)$/, title: m => "Agent " + m[1], api: m => "/api/agents/" + encodeURIComponent(m[1]),
   render: renderAgent},
  {re: /^\/models$/, title: () => "Model comparison", api: () => "/api/models", render: renderModels},
  {re: /^\/budgets$/, title: () => "Budgets", api: () => "/api/budgets", render: d => [section("Budgets",
    budgetsTable(d.budgets))]},
  {re: /^\/alerts$/, title: () => "Alerts", api: () => "/api/alerts?limit=200", render: d => [section("Alerts feed",
    alertsTable(d.alerts))]},
  {re: /^\/alerts\/([^/]+)$/, title: m => "Alert " + m[1], api: m => "/api/alerts/" + encodeURIComponent(m[1]),
   render: renderAlert},
  {re: /^\/recommendations$/, title: () => "Recommendations", api: () => "/api/recommendations",
   render: renderRecommendations},
  {re: /^\/admin$/, title: () => "Administration", api: () => "/api/audit?limit=100", render: renderAdmin},
  {re: /^\/tasks$/, title: () => "Task trees", api: () => "/api/tasks" + taskQuery(), render: renderTasks},
  {re: /^\/bills$/, title: () => "Bill vs ledger", api: () => "/api/bills" + billQuery(), render: renderBills},
];

function renderOverview(d) {
  return [
    h("div", {class: "kpis"},
      kpi("Spend today (UTC)", money(d.today_usd, "kpi-today"), `${d.calls_today} calls` + unpricedNote(d.unpriced_calls_today)),
      kpi("Spend this month", money(d.month_usd, "kpi-month"), `${d.calls_month} calls` + unpricedNote(d.unpriced_calls_month)),
      kpi("Budgets ≥ 80%", h("span", {"data-testid": "kpi-budgets-hot", "data-value": d.budgets_over_80},
        `${d.budgets_over_80} of ${d.budgets.length}`)),
      kpi("Anomalies this month", h("span", {"data-testid": "kpi-anomalies", "data-value": d.anomalies.count},
        String(d.anomalies.count))),
      kpi("Waste (avoidable)", h("span", {"data-testid": "kpi-waste-pct", "data-value": d.waste.waste_pct ?? ""},
        pct(d.waste.waste_pct)), usd(d.waste.avoidable_usd) + " avoidable")),
    section("Spend per day, last 30 days", lineChart(trendPoints(d.trend), "trend-chart", "spend per day")),
    section("Spend this month by team",
      barChart(d.teams.map(t => ({label: t.team, value: t.month_usd})), "teams-chart", "spend by team"),
      table("teams", ["Team", "Today", "This month", "Agents (30 d)"], d.teams.map(t => h("tr", {"data-team": t.team},
        h("td", {}, teamLink(t.team)), h("td", {}, money(t.today_usd, "team-today")),
        h("td", {}, money(t.month_usd, "team-month")), h("td", {}, String(t.agents)))))),
    section("Budget utilisation", budgetsTable(d.budgets)),
    section("Recent anomalies", alertsTable(d.anomalies.recent, "anomalies")),
  ];
}

function renderTeams(d) {
  return [section("Teams",
    barChart(d.teams.map(t => ({label: t.team, value: t.month_usd})), "teams-chart", "spend by team"),
    table("teams", ["Team", "Today", "This month", "Agents (30 d)"], d.teams.map(t => h("tr", {"data-team": t.team},
      h("td", {}, teamLink(t.team)), h("td", {}, money(t.today_usd, "team-today")),
      h("td", {}, money(t.month_usd, "team-month")), h("td", {}, String(t.agents))))))];
}

function agentRows(agents) {
  return agents.map(a => h("tr", {"data-agent": a.agent_id},
    h("td", {}, agentLink(a.agent_id)), h("td", {}, teamLink(a.team)), h("td", {}, a.project),
    h("td", {}, money(a.today_usd, "agent-today")), h("td", {}, money(a.month_usd, "agent-month")),
    h("td", {}, String(a.calls_30d)), h("td", {}, a.last_active_day)));
}
const AGENT_HEADERS = ["Agent", "Team", "Project", "Today", "This month", "Calls (30 d)", "Last active"];

function renderTeam(d) {
  return [
    h("div", {class: "kpis"}, kpi("Spend today", money(d.today_usd, "kpi-today")),
      kpi("Spend this month", money(d.month_usd, "kpi-month")),
      kpi("Agents", h("span", {"data-testid": "kpi-agents"}, String(d.agents.length)))),
    section("Spend per day, last 30 days", lineChart(trendPoints(d.trend), "trend-chart", "team spend per day")),
    section("Agents", barChart(d.agents.slice(0, 12).map(a => ({label: a.agent_id, value: a.month_usd})),
      "agents-chart", "spend by agent"), table("agents", AGENT_HEADERS, agentRows(d.agents))),
    section("Projects", table("projects", ["Project", "This month", "Last 30 days"], d.projects.map(p =>
      h("tr", {}, h("td", {}, p.project), h("td", {}, money(p.month_usd, "project-month")),
        h("td", {}, money(p.last_30d_usd, "project-30d")))))),
    section("Budgets", budgetsTable(d.budgets)),
    section("Recent alerts", alertsTable(d.alerts)),
  ];
}

function renderAgents(d) { return [section("Agents", table("agents", AGENT_HEADERS, agentRows(d.agents)))]; }

function controlForm(d) {
  if (!ME.may.includes("control.issue")) return null;
  const action = h("select", {id: "control-action"}, ["throttle", "downgrade", "suspend", "resume"].map(
    a => h("option", {value: a}, a)));
  const rate = h("input", {id: "control-rate", type: "number", min: 1, value: 10, title: "calls per minute"});
  const model = h("input", {id: "control-model", placeholder: "target model (downgrade)"});
  const reason = h("input", {id: "control-reason", placeholder: "reason", required: true});
  const out = h("span", {id: "control-result", class: "note"});
  const form = h("form", {class: "inline", id: "control-form", onsubmit: async (e) => {
    e.preventDefault();
    const body = {scope_type: "agent", scope_value: d.agent_id, action: action.value, reason: reason.value};
    if (action.value === "throttle") body.rate_per_minute = Number(rate.value);
    if (action.value === "downgrade") body.target_model = model.value;
    const r = await api("/api/control", {method: "POST", body: JSON.stringify(body)});
    out.textContent = r.ok ? `sent ${r.body.command_id}` : r.body.error;
  }}, action, rate, model, reason, h("button", {type: "submit"}, "Send"), out);
  return form;
}

function renderAgent(d) {
  const ts = d.task_summary;
  const control = d.control;
  return [
    h("p", {class: "sub"}, "Team ", teamLink(d.team), " · project ", d.project),
    h("div", {class: "kpis"},
      kpi("Spend today", money(d.today_usd, "kpi-today")),
      kpi("Spend this month", money(d.month_usd, "kpi-month")),
      kpi("Cost per task (30 d)", money(ts.cost_per_task_usd, "kpi-cost-per-task", 4), `${ts.tasks} tasks`),
      kpi("Cost per successful task", money(ts.cost_per_successful_task_usd, "kpi-cost-per-success", 4),
        `${ts.successful_tasks} succeeded`),
      kpi("Control state", h("span", {class: "badge " + control.state, "data-testid": "control-state"},
        control.state), control.command ? `${control.command.reason} (by ${control.command.issued_by})` : "")),
    section("Spend per day, last 30 days", lineChart(d.per_day.map(r => ({x: r.day, y: r.cost_usd})),
      "trend-chart", "agent spend per day")),
    section("Models used (30 d)", table("models", ["Provider", "Model", "Calls", "Cost", "Cost per call"],
      d.models.map(m => h("tr", {"data-model": m.model}, h("td", {}, m.provider), h("td", {}, m.model),
        h("td", {}, String(m.calls)), h("td", {}, money(m.cost_usd, "model-cost")),
        h("td", {}, money(m.cost_per_call, "model-cost-per-call", 6)))))),
    section("Recent tasks", table("tasks", ["Task", "Calls", "Cost", "Outcome", "Last call"],
      d.tasks.map(t => h("tr", {"data-task": t.task_id}, h("td", {}, t.task_id), h("td", {}, String(t.calls)),
        h("td", {}, money(t.cost_usd, "task-cost", 4)), h("td", {}, t.succeeded ? "ok" : "failed"),
        h("td", {}, when(t.last_call_at)))))),
    section("Recent alerts", alertsTable(d.alerts)),
    section("Control", controlForm(d), table("control-history", ["Issued", "Scope", "Action", "Reason", "By"],
      control.history.map(c => h("tr", {}, h("td", {}, when(c.issued_at)), h("td", {}, `${c.scope_type}: ${c.scope_value}`),
        h("td", {}, c.action), h("td", {}, c.reason), h("td", {}, c.issued_by))))),
  ];
}

function renderAlert(d) {
  // The page an alert's Slack / PagerDuty / webhook link opens: what, who, how much, the state changes of the same
  // condition and where it was delivered.
  const a = d.alert;
  const facts = [["Kind", a.kind], ["Severity", sev(a.severity)], ["State", a.state], ["When", when(a.occurred_at)],
    ["Team", a.team ? teamLink(a.team) : "–"], ["Project", a.project || "–"],
    ["Agent", a.agent_id ? agentLink(a.agent_id) : "–"], ["Policy", a.policy_id || "–"], ["Model", a.model || "–"],
    ["Amount", money(a.amount_usd, "alert-amount")], ["Limit / expected", money(a.limit_usd, "alert-limit")],
    ["Actions", (a.actions || []).join(", ") || "–"], ["Dedup key", a.dedup_key]];
  return [
    h("p", {class: "sub", "data-testid": "alert-title", "data-alert": a.alert_id}, a.title),
    section("Alert", h("p", {"data-testid": "alert-summary"}, a.summary),
      table("alert-facts", ["Fact", "Value"], facts.map(([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, v))))),
    section("Details", table("alert-details", ["Key", "Value"], Object.entries(a.details || {}).sort().map(
      ([k, v]) => h("tr", {}, h("td", {}, k), h("td", {}, v))))),
    section("State changes", table("alert-history", ["When", "State", "Severity", "Title", "Amount"],
      d.history.map(x => h("tr", {"data-alert": x.alert_id, class: x.alert_id === a.alert_id ? "active" : null},
        h("td", {}, when(x.occurred_at)), h("td", {}, x.state), h("td", {}, sev(x.severity)),
        h("td", {}, link("/alerts/" + encodeURIComponent(x.alert_id), x.title)),
        h("td", {}, money(x.amount_usd, "alert-amount")))))),
    section("Deliveries", table("alert-deliveries", ["When", "Channel", "Destination", "Attempt", "Status", "HTTP"],
      d.deliveries.map(x => h("tr", {}, h("td", {}, when(x.delivered_at)), h("td", {}, x.channel),
        h("td", {}, x.destination_name), h("td", {}, String(x.attempt)), h("td", {}, x.status),
        h("td", {}, x.http_status === null ? "–" : String(x.http_status)))))),
  ];
}

function renderModels(d) {
  return [
    section("Cost per call by model (30 d)", barChart(d.models.map(m => ({label: m.model, value: m.cost_per_call ?? "0"})),
      "cost-per-call-chart", "cost per call by model", 6)),
    section("Models", table("models", ["Provider", "Model", "Calls", "Cost", "Cost per call", "Tasks", "Cost per task"],
      d.models.map(m => h("tr", {"data-model": m.model}, h("td", {}, m.provider), h("td", {}, m.model),
        h("td", {"data-testid": "model-calls"}, String(m.calls)), h("td", {}, money(m.cost_usd, "model-cost")),
        h("td", {}, money(m.cost_per_call, "model-cost-per-call", 6)), h("td", {}, String(m.tasks)),
        h("td", {}, money(m.cost_per_task, "model-cost-per-task", 4)))))),
    section("Cheaper alternatives found", table("alternatives", ["Model", "Suggested", "Signals", "Avoidable"],
      d.alternatives.map(a => h("tr", {"data-model": a.model}, h("td", {}, a.model), h("td", {}, a.suggested_model || "–"),
        h("td", {}, String(a.signals)), h("td", {}, money(a.avoidable_usd, "alternative-saving")))))),
  ];
}

function renderRecommendations(d) {
  return [
    h("div", {class: "kpis"}, kpi("Avoidable spend (30 d)", money(d.avoidable_usd, "kpi-avoidable")),
      kpi("Waste (30 d)", h("span", {"data-testid": "kpi-waste-pct", "data-value": d.waste.waste_pct ?? ""},
        pct(d.waste.waste_pct)), usd(d.waste.avoidable_usd) + " of " + usd(d.waste.cost_usd))),
    section("By kind", barChart(d.totals.map(t => ({label: t.kind, value: t.avoidable_usd})), "waste-chart",
      "avoidable spend by kind")),
    section("Recommendations", table("recommendations", ["Kind", "Team", "Agent", "Model", "Suggested", "Signals", "Avoidable"],
      d.recommendations.map(r => h("tr", {}, h("td", {}, r.kind), h("td", {}, teamLink(r.team)),
        h("td", {}, agentLink(r.agent_id)), h("td", {}, r.model), h("td", {}, r.suggested_model || "–"),
        h("td", {}, String(r.signals)), h("td", {}, money(r.avoidable_usd, "recommendation-saving")))))),
  ];
}

// Task trees: the page passes its own days / team / task / limit on to the API (the API validates them).
function taskQuery() {
  const given = new URLSearchParams(location.search);
  const out = new URLSearchParams();
  for (const k of ["days", "team", "task", "limit"]) if (given.has(k)) out.set(k, given.get(k));
  const q = out.toString();
  return q ? "?" + q : "";
}
// A cost made only of unpriced calls is "unpriced", never $0; a partly unpriced one says how many calls are not in it.
function taskMoney(value, unpriced, calls, testid) {
  if (calls && unpriced === calls && /^[0.]*$/.test(String(value).replace("-", ""))) {
    return h("span", {class: "money unpriced", "data-testid": testid, "data-value": value, "data-unpriced": unpriced},
             "unpriced");
  }
  const el = money(value, testid, 4);
  if (unpriced) { el.dataset.unpriced = unpriced; el.append(h("span", {class: "note"}, ` +${unpriced} unpriced`)); }
  return el;
}
function taskFlags(t) {
  const flags = [];
  if (t.diamond) flags.push("diamond: also claimed by " + t.claimed_parents.slice(1).join(", "));
  if (t.cycle_broken) flags.push("cycle broken here"); else if (t.cycle) flags.push("in a cycle");
  if (t.missing_parent) flags.push(`parent ${t.missing_parent} not seen`);
  return flags.join("; ");
}
function renderTasks(d) {
  const sm = d.summary;
  const rows = [];
  for (const tree of d.trees) {
    for (const t of tree.tasks) {
      const name = h("td", {class: "task-name"}, (t.depth ? "└ " : "") + t.task_id);
      name.style.paddingLeft = (0.5 + 1.25 * t.depth) + "em";  // CSSOM: the CSP allows no inline style attribute
      rows.push(h("tr", {"data-task": t.task_id, "data-root": tree.root_task_id, "data-depth": t.depth,
                         class: t.depth ? "sub" : "root"},
        name, h("td", {}, agentLink(t.agent_id)), h("td", {}, teamLink(t.team)),
        h("td", {}, taskMoney(t.own_cost_usd, t.own_unpriced_calls, t.own_calls, "task-own")),
        h("td", {}, t.sub_agents ? taskMoney(t.descendants_cost_usd, t.total_unpriced_calls - t.own_unpriced_calls,
                                             t.total_calls - t.own_calls, "task-descendants") : "–"),
        h("td", {}, taskMoney(t.total_cost_usd, t.total_unpriced_calls, t.total_calls, "task-total")),
        h("td", {"data-testid": "task-calls"}, String(t.total_calls)),
        h("td", {"data-testid": "task-depth"}, String(t.depth)),
        h("td", {"data-testid": "task-subs"}, String(t.sub_agents)),
        h("td", {"data-testid": "task-outcome"}, t.depth ? t.status : `${t.status} (tree)`),
        h("td", {class: "note", "data-testid": "task-flags"}, taskFlags(t))));
    }
  }
  return [
    h("div", {class: "kpis"},
      kpi(`Task trees (${d.days} d)`, h("span", {"data-testid": "kpi-trees", "data-value": sm.trees}, String(sm.trees)),
        `${sm.tasks} tasks, ${sm.sub_agent_tasks} of them sub-agents`),
      kpi("Cost of all trees", money(sm.cost_usd, "kpi-tree-cost"), "sub-agents " + usd(sm.sub_agent_cost_usd)),
      kpi("Cost per successful task", money(sm.cost_per_successful_tree_usd, "kpi-cost-per-successful-tree", 4),
        `${sm.successful_trees} of ${sm.trees} succeeded (root task's outcome)`),
      kpi("Unpriced calls", h("span", {"data-testid": "kpi-unpriced", "data-value": sm.unpriced_calls},
        String(sm.unpriced_calls)), `${sm.unpriced_tokens} tokens, not in the cost`)),
    section(d.trees.length < sm.trees ? `Costliest ${d.trees.length} of ${sm.trees} trees` : "Task trees",
      h("p", {class: "note"}, "Own = the task's calls; sub-agents = every task below it, each call counted once. " +
        "A child claimed by two parents stays with the one seen first; a cycle is broken at the task that started first."),
      table("task-trees", ["Task", "Agent", "Team", "Own", "Sub-agents", "Total", "Calls", "Depth", "Sub-agent tasks",
                           "Outcome", "Notes"], rows)),
  ];
}

// Bill vs ledger: the page passes its month on to the API (which validates it).
function billQuery() {
  const month = new URLSearchParams(location.search).get("month");
  return month ? "?month=" + encodeURIComponent(month) : "";
}
function renderBills(d) {
  return [
    h("div", {class: "kpis"},
      kpi(`Billed (${d.period})`, money(d.totals.bill_usd, "kpi-bill"), `${d.providers.length} providers`),
      kpi("In the ledger", money(d.totals.ledger_usd, "kpi-ledger"), "what the usage events explain"),
      kpi("Unattributed", money(d.totals.unattributed_usd, "kpi-unattributed"), "billed, no usage event reported it"),
      kpi("Over-reported", money(d.totals.over_reported_usd, "kpi-over-reported"), "in the ledger, not on the bill")),
    section("Per provider", table("bill-providers", ["Provider", "Bill", "Ledger", "Matched", "Unattributed",
                                                     "Over-reported", "Attributed share", "Gaps"],
      d.providers.map(p => h("tr", {"data-provider": p.provider}, h("td", {}, p.provider),
        h("td", {}, money(p.bill_usd, "bill-usd")), h("td", {}, money(p.ledger_usd, "ledger-usd")),
        h("td", {}, money(p.matched_usd, "matched-usd")), h("td", {}, money(p.unattributed_usd, "unattributed-usd")),
        h("td", {}, money(p.over_reported_usd, "over-reported-usd")),
        h("td", {"data-testid": "attributed-share", "data-value": p.attributed_pct ?? ""}, pct(p.attributed_pct)),
        h("td", {}, String(p.gaps)))))),
    section("Attributed to teams", table("bill-teams", ["Team", "Attributed", "Share of the bill"],
      d.teams.map(t => h("tr", {"data-team": t.team}, h("td", {}, t.team || "(unattributed)"),
        h("td", {}, money(t.attributed_usd, "team-attributed")),
        h("td", {"data-testid": "team-share", "data-value": t.share_pct ?? ""}, pct(t.share_pct)))))),
    section("Cells, biggest gaps first", table("bill-cells", ["Day", "Provider", "Model", "Account", "Keys",
                                                               "Project", "Status", "Bill", "Ledger", "Gap"],
      d.cells.map(c => h("tr", {"data-status": c.status, "data-account": c.account_id},
        h("td", {}, c.day), h("td", {}, c.provider), h("td", {}, c.model), h("td", {}, c.account_id || "–"),
        h("td", {"data-testid": "cell-keys"}, c.api_keys.join(", ") || "–"), h("td", {}, c.project || "–"),
        h("td", {"data-testid": "cell-status"}, c.status), h("td", {}, money(c.bill_usd, "cell-bill", 4)),
        h("td", {}, money(c.ledger_usd, "cell-ledger", 4)), h("td", {}, money(c.gap_usd, "cell-gap", 4)))))),
  ];
}

function renderAdmin(d) {
  return [
    section("Reports", h("p", {}, link("/api/reports/chargeback", "Chargeback for this month (CSV)"))),
    section("Audit log", table("audit", ["When", "Actor", "Role", "Action", "Target", "Outcome"],
      d.audit.map(a => h("tr", {}, h("td", {}, when(a.at)), h("td", {}, a.actor), h("td", {}, a.role),
        h("td", {}, a.action), h("td", {}, a.target), h("td", {}, a.outcome))))),
  ];
}

// ---- plumbing -----------------------------------------------------------------------------------------------------
async function api(path, options = {}) {
  const response = await fetch(path, {credentials: "same-origin", ...options,
    headers: {"Content-Type": "application/json", "X-Finops-Request": "1", ...(options.headers || {})}});
  if (response.status === 401) { location.assign("/login?next=" + encodeURIComponent(location.pathname)); }
  const body = await response.json().catch(() => ({error: "bad response"}));
  return {ok: response.ok, status: response.status, body};
}

function renderNav() {
  const links = [["/", "Overview"], ["/teams", "Teams"], ["/agents", "Agents"], ["/tasks", "Tasks"], ["/models", "Models"],
                 ["/budgets", "Budgets"], ["/alerts", "Alerts"], ["/recommendations", "Recommendations"]];
  if (ME.may.includes("bills.read")) links.push(["/bills", "Bill vs ledger"]);
  if (ME.may.includes("admin")) links.push(["/admin", "Admin"]);
  document.getElementById("nav").replaceChildren(...links.map(([href, text]) =>
    h("a", {href, class: location.pathname === href ? "active" : null}, text)));
  document.getElementById("who").textContent =
    `${ME.subject} · ${ME.role.replace("_", " ")} · ${ME.all_teams ? "all teams" : ME.teams.join(", ")}`;
}

async function refresh(view, match) {
  // Do not redraw under someone typing into a form (the control form lives in the content).
  if (document.activeElement && document.activeElement.closest && document.activeElement.closest("#content form")) return;
  const r = await api(view.api(match));
  const error = document.getElementById("error");
  const content = document.getElementById("content");
  if (!r.ok) {
    error.textContent = r.body.error || `error ${r.status}`;
    error.dataset.status = r.status;
    error.hidden = false;
    content.replaceChildren();
    return;
  }
  error.hidden = true;
  content.replaceChildren(...view.render(r.body).filter(Boolean));
  refreshes += 1;
  const live = document.getElementById("live");
  live.dataset.refreshes = String(refreshes);
  live.textContent = "live · updated " + new Date().toLocaleTimeString();
}

async function main() {
  const me = await api("/api/me");
  if (!me.ok) return;
  ME = me.body;
  renderNav();
  document.getElementById("signout").addEventListener("click", async () => {
    await api("/api/session", {method: "DELETE"});
    location.assign("/login");
  });
  const path = location.pathname.replace(/\/+$/, "") || "/";
  for (const view of VIEWS) {
    const match = path.match(view.re);
    if (!match) continue;
    const decoded = match.map(x => x && decodeURIComponent(x));
    document.getElementById("title").textContent = view.title(decoded);
    document.title = view.title(decoded) + " · agent-finops";
    await refresh(view, decoded);
    const every = Math.max(1, Number(new URLSearchParams(location.search).get("refresh")) || ME.refresh_seconds);
    setInterval(() => refresh(view, decoded), every * 1000);
    return;
  }
  document.getElementById("title").textContent = "Not found";
}

main();
