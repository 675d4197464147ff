// The fleetledger dashboard: plain JavaScript over the same API and tokens as every other
// client (POST /v1/sql, GET /v1/clusters/{id}/audit and /state). No framework, no CDN.
"use strict";

const $ = (id) => document.getElementById(id);
const token = () => localStorage.getItem("fleetledger-token") || "";

function say(text) {
  $("message").textContent = text || "";
}

async function api(path, body) {
  const init = { headers: { Authorization: "Bearer " + token() } };
  if (body !== undefined) {
    init.method = "POST";
    init.headers["Content-Type"] = "application/json";
    init.body = JSON.stringify(body);
  }
  const r = await fetch(path, init);
  const answer = await r.json().catch(() => ({}));
  if (!r.ok) {
    throw new Error((answer.error || r.status) + ": " + (answer.message || r.statusText));
  }
  return answer;
}

const sql = async (q) => (await api("/v1/sql", { sql: q })).rows;

// A table from rows; `numeric` names the columns shown right-aligned.
function fill(table, columns, rows, numeric = []) {
  table.replaceChildren();
  const head = table.insertRow();
  for (const c of columns) {
    const th = document.createElement("th");
    th.textContent = c;
    head.appendChild(th);
  }
  for (const row of rows) {
    const tr = table.insertRow();
    for (const c of columns) {
      const td = tr.insertCell();
      const v = row[c];
      td.textContent = v === null || v === undefined ? "" : typeof v === "object" ? JSON.stringify(v) : String(v);
      if (numeric.includes(c)) td.className = "num";
      td.dataset.column = c;
    }
  }
}

async function showFleet() {
  const [totals] = await sql(
    "SELECT count(*) AS total, sum(CASE WHEN deleted THEN 1 ELSE 0 END) AS deleted, sum(CASE WHEN drift THEN 1 ELSE 0 END) AS drifting FROM clusters");
  $("fleet-total").textContent = totals.total;
  $("fleet-deleted").textContent = totals.deleted ?? 0;
  $("fleet-drift").textContent = totals.drifting ?? 0;
  fill($("fleet-phase"), ["phase", "clusters"],
    await sql("SELECT coalesce(phase, '(none)') AS phase, count(*) AS clusters FROM clusters WHERE NOT coalesce(deleted, false) GROUP BY 1 ORDER BY 1"), ["clusters"]);
  fill($("fleet-region"), ["region", "clusters"],
    await sql("SELECT coalesce(region, '(none)') AS region, count(*) AS clusters FROM clusters WHERE NOT coalesce(deleted, false) GROUP BY 1 ORDER BY 1"), ["clusters"]);
}

const COLOURS = ["#3b6fd9", "#d9623b", "#2e9e5b", "#9b4fd1", "#c9a227"];

async function showBilling() {
  const orgs = await sql(
    "SELECT org_id, round(sum(cku_hours), 3) AS cku_hours FROM billing_daily GROUP BY org_id ORDER BY cku_hours DESC, org_id LIMIT 20");
  fill($("billing-orgs"), ["org_id", "cku_hours"], orgs, ["cku_hours"]);
  const top = orgs.slice(0, 5).map((o) => o.org_id);
  const chart = $("billing-chart");
  chart.replaceChildren();
  $("billing-legend").replaceChildren();
  if (top.length === 0) return;
  const list = top.map((o) => "'" + o.replace(/'/g, "''") + "'").join(", ");
  const days = await sql(
    "SELECT org_id, CAST(day AS VARCHAR) AS day, sum(cku_hours) AS cku_hours FROM billing_daily WHERE org_id IN (" + list + ") GROUP BY org_id, day ORDER BY day");
  const dayList = [...new Set(days.map((d) => d.day))].sort();
  const max = Math.max(1e-9, ...days.map((d) => d.cku_hours));
  const [w, h, pad] = [800, 300, 30];
  const x = (i) => pad + (dayList.length < 2 ? 0 : (i * (w - 2 * pad)) / (dayList.length - 1));
  const y = (v) => h - pad - (v * (h - 2 * pad)) / max;
  const ns = "http://www.w3.org/2000/svg";
  top.forEach((org, k) => {
    const byDay = new Map(days.filter((d) => d.org_id === org).map((d) => [d.day, d.cku_hours]));
    const points = dayList.map((d, i) => x(i) + "," + y(byDay.get(d) || 0)).join(" ");
    const line = document.createElementNS(ns, "polyline");
    line.setAttribute("points", points);
    line.setAttribute("fill", "none");
    line.setAttribute("stroke", COLOURS[k]);
    line.setAttribute("stroke-width", "2");
    line.dataset.org = org;
    chart.appendChild(line);
    const key = document.createElement("span");
    key.innerHTML = '<i style="background:' + COLOURS[k] + '"></i>';
    key.append(org);
    $("billing-legend").appendChild(key);
  });
  const label = document.createElementNS(ns, "text");
  label.setAttribute("x", pad);
  label.setAttribute("y", 16);
  label.textContent = "max " + max.toFixed(1) + " CKU-hours/day, " + dayList[0] + " … " + dayList[dayList.length - 1];
  chart.appendChild(label);
}

async function showCluster(id, at) {
  $("cluster-id").value = id || "";
  $("cluster-at").value = at || "";
  if (!id) return;
  const point = at ? "?as_of=" + encodeURIComponent(at) : "";
  const state = await api("/v1/clusters/" + encodeURIComponent(id) + "/state" + point);
  $("cluster-point").textContent = "(" + state.point + (state.deleted ? ", deleted" : "") + ")";
  fill($("cluster-state"), ["facet", "version", "ts", "writer", "state"],
    Object.entries(state.facets).map(([facet, r]) => ({ facet, version: r.version, ts: r.ts, writer: r.writer, state: r.state })),
    ["version"]);
  const audit = await api("/v1/clusters/" + encodeURIComponent(id) + "/audit");
  fill($("cluster-timeline"), ["ts", "facet", "version", "writer", "reason", "diff"],
    audit.entries.map((e) => ({ ...e, diff: e.diff })), ["version"]);
  for (const td of $("cluster-timeline").querySelectorAll('td[data-column="diff"]')) td.className = "diff";
}

// Routes: #fleet, #billing, #cluster/ID or #cluster/ID@TIME. Once a route is shown,
// `data-loaded` on the body names it (decoded), for whoever waits for the page.
async function route() {
  const shown = decodeURIComponent(location.hash.slice(1) || "fleet");
  const [view, rest] = shown.split("/");
  for (const s of ["fleet", "billing", "cluster"]) {
    $(s).hidden = s !== view;
    $("nav-" + s).classList.toggle("active", s === view);
  }
  say(token() ? "" : "Give a token to see the fleet.");
  if (!token()) return;
  document.body.dataset.loaded = "";
  try {
    if (view === "fleet") await showFleet();
    if (view === "billing") await showBilling();
    if (view === "cluster") {
      const [id, at] = (rest || "").split("@");
      await showCluster(id, at);
    }
    say("");
  } catch (e) {
    say(e.message);
  }
  document.body.dataset.loaded = shown;
}

$("token-form").addEventListener("submit", (e) => {
  e.preventDefault();
  localStorage.setItem("fleetledger-token", $("token").value);
  $("token").value = "";
  route();
});
$("cluster-form").addEventListener("submit", (e) => {
  e.preventDefault();
  const at = $("cluster-at").value.trim();
  location.hash = "cluster/" + encodeURIComponent($("cluster-id").value.trim()) + (at ? "@" + at : "");
});
window.addEventListener("hashchange", route);
route();
