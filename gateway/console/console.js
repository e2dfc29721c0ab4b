// BIOTA Edge console: plain JavaScript, no framework, no request leaves the
// gateway. Pages: #/overview, #/devices, #/device/<id>, #/point/<id>/<point>,
// #/anchoring. The token lives in sessionStorage only (this tab).
"use strict";

const TOKEN_KEY = "biota.token";
const $ = (sel) => document.querySelector(sel);
const page = $("#page");
let token = sessionStorage.getItem(TOKEN_KEY);
let cleanup = [];          // what the current page must stop when left
const recent = new Map();  // "device/point" -> recent numeric values (sparklines)
const latest = new Map();  // "device/point" -> latest reading
const SPARK_POINTS = 60;

function esc(text) {
  return String(text ?? "").replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
}
const fmtInt = (n) => Number(n ?? 0).toLocaleString("en-US");
function fmtValue(r) {
  if (r == null) return "–";
  if (typeof r.value === "number" && r.kind === "f64") {
    const v = r.value, a = Math.abs(v);
    return a !== 0 && (a < 0.01 || a >= 1e6) ? v.toExponential(3) : v.toFixed(a < 10 ? 3 : a < 1000 ? 2 : 1);
  }
  return String(r.value);
}
function fmtBytes(n) {
  const units = ["B", "KB", "MB", "GB", "TB"];
  let i = 0; n = Number(n || 0);
  while (n >= 1000 && i < units.length - 1) { n /= 1000; i++; }
  return `${n.toFixed(i ? 1 : 0)} ${units[i]}`;
}
function fmtAge(ns) {
  const s = (Date.now() * 1e6 - ns) / 1e9;
  if (s < 1) return "now";
  if (s < 90) return `${s.toFixed(0)} s ago`;
  if (s < 5400) return `${(s / 60).toFixed(0)} min ago`;
  return `${(s / 3600).toFixed(1)} h ago`;
}

// ---------------------------------------------------------------- API access

class Unauthorized extends Error {}

async function api(path, options = {}) {
  const res = await fetch(path, { ...options, headers: { ...(options.headers || {}), Authorization: `Bearer ${token}` } });
  if (res.status === 401) { signOut("The token was refused; sign in again."); throw new Unauthorized(); }
  return res;
}
async function apiJson(path) {
  const res = await api(path);
  const body = await res.json().catch(() => ({}));
  if (!res.ok) { const e = new Error(body.message || res.statusText); e.status = res.status; e.body = body; throw e; }
  return body;
}

// Server-Sent Events over fetch (EventSource cannot send the token header).
function stream(path, onReadings) {
  const controller = new AbortController();
  let stopped = false;
  const indicator = $("#live");
  (async function run() {
    while (!stopped) {
      try {
        const res = await fetch(path, { headers: { Authorization: `Bearer ${token}` }, signal: controller.signal });
        if (res.status === 401) { signOut("The token was refused; sign in again."); return; }
        if (!res.ok) throw new Error(`stream: ${res.status}`);
        indicator.hidden = false; indicator.classList.remove("off"); indicator.textContent = "live";
        const reader = res.body.getReader();
        const decoder = new TextDecoder();
        let buffer = "";
        for (;;) {
          const { value, done } = await reader.read();
          if (done) break;
          buffer += decoder.decode(value, { stream: true });
          let end;
          while ((end = buffer.indexOf("\n\n")) >= 0) {
            const block = buffer.slice(0, end); buffer = buffer.slice(end + 2);
            let event = "message", data = "";
            for (const line of block.split("\n")) {
              if (line.startsWith("event: ")) event = line.slice(7);
              else if (line.startsWith("data: ")) data += line.slice(6);
            }
            if (event === "readings") onReadings(JSON.parse(data));
            // "lagged": the server dropped us; the loop reconnects.
          }
        }
      } catch (e) {
        if (stopped) return;
      }
      indicator.classList.add("off"); indicator.textContent = "reconnecting";
      await new Promise((r) => setTimeout(r, 1000));
    }
  })();
  return () => { stopped = true; controller.abort(); indicator.hidden = true; };
}

function remember(readings) {
  for (const r of readings) {
    const key = `${r.device}/${r.point}`;
    latest.set(key, r);
    if (typeof r.value === "number") {
      let h = recent.get(key);
      if (!h) { h = []; recent.set(key, h); }
      h.push(r.value);
      if (h.length > SPARK_POINTS) h.splice(0, h.length - SPARK_POINTS);
    }
  }
}

function sparkline(values) {
  if (!values || values.length < 2) return `<svg class="spark" viewBox="0 0 120 26" aria-hidden="true"></svg>`;
  const min = Math.min(...values), max = Math.max(...values), span = max - min || 1;
  const pts = values.map((v, i) => `${(i / (values.length - 1) * 118 + 1).toFixed(1)},${(24 - (v - min) / span * 22).toFixed(1)}`).join(" ");
  return `<svg class="spark" viewBox="0 0 120 26" aria-hidden="true"><polyline points="${pts}"/></svg>`;
}

// ---------------------------------------------------------------- pages

async function overview() {
  page.innerHTML = `<h1>Overview</h1><div class="cards" id="cards"></div><h2>Sources</h2><div id="sources"></div>`;
  let earlier = null;
  async function refresh() {
    const s = await apiJson("/v1/status");
    const p = s.pipeline;
    const rate = earlier ? (p.committed - earlier.committed) / Math.max((p.uptime_ms - earlier.uptime_ms) / 1000, 0.001) : null;
    earlier = p;
    const devices = s.devices || [];
    const online = devices.filter((d) => d.state === "online").length;
    const cards = [
      ["Readings/s", rate == null ? "…" : fmtInt(Math.round(rate)), `${fmtInt(p.committed)} committed`],
      ["Last seq", fmtInt(p.last_seq), `${fmtInt(p.commits)} group commits`],
      ["Rejected", fmtInt(p.rejected), `${fmtInt(p.filtered)} deadband-filtered`],
      ["Polled devices", `${online}/${devices.length}`, "online / with counters"],
      ["Queues", fmtInt(p.ingest_queue + p.writer_queue + p.writer_pending), `ingest ${fmtInt(p.ingest_queue)}, writer ${fmtInt(p.writer_queue + p.writer_pending)}`],
      ["Store errors", fmtInt(p.write_errors), "failed commit attempts"],
      ["Disk use", fmtBytes(s.store.size_bytes), "database and WAL"],
      ["Uplink backlog", s.uplink ? fmtInt(s.uplink.backlog) : "–", s.uplink ? (s.uplink.connected ? "connected" : "disconnected") : "no uplink configured"],
      ["Anchor lag", s.anchoring ? fmtInt(s.anchoring.lag_seq) : "–", s.anchoring ? `${s.anchoring.lag_seconds ?? "–"} s` : "anchoring not enabled"],
      ["Uptime", `${Math.floor(p.uptime_ms / 3600000)} h ${Math.floor(p.uptime_ms / 60000) % 60} min`, `${s.stream_subscribers} live stream(s)`],
    ];
    $("#cards").innerHTML = cards.map(([label, value, sub]) =>
      `<div class="card"><div class="label">${esc(label)}</div><div class="value">${esc(value)}</div><div class="sub">${esc(sub)}</div></div>`).join("");
    const rows = [];
    if (s.mqtt) rows.push(["MQTT", `${fmtInt(s.mqtt.messages)} messages, ${fmtInt(s.mqtt.samples)} samples`, `${fmtInt(s.mqtt.unmatched)} unmatched, ${s.mqtt.rejected.length} rejection kinds`]);
    if (s.coap) rows.push(["CoAP", `${fmtInt(s.coap.datagrams)} datagrams, ${fmtInt(s.coap.readings)} readings`, `${fmtInt(s.coap.duplicates)} duplicates`]);
    for (const d of devices) rows.push([`${d.device}`, `${d.state}, ${fmtInt(d.answers)}/${fmtInt(d.requests)} answered, ${d.latency_us} µs`, `${fmtInt(d.timeouts)} timeouts, ${fmtInt(d.crc_errors)} CRC, ${fmtInt(d.exceptions)} exceptions, ${fmtInt(d.link_errors)} link errors`]);
    $("#sources").innerHTML = rows.length
      ? `<table><thead><tr><th>Source</th><th>Traffic</th><th>Errors</th></tr></thead><tbody>${rows.map((r) => `<tr><td>${esc(r[0])}</td><td>${esc(r[1])}</td><td>${esc(r[2])}</td></tr>`).join("")}</tbody></table>`
      : `<div class="empty">No MQTT, CoAP or polled devices.</div>`;
  }
  await refresh();
  const timer = setInterval(() => refresh().catch(() => {}), 2000);
  cleanup.push(() => clearInterval(timer));
}

function pointRows(readings) {
  return readings.map((r) => {
    const key = `${r.device}/${r.point}`;
    return `<tr data-key="${esc(key)}"><td><a href="#/point/${encodeURIComponent(r.device)}/${encodeURIComponent(r.point)}">${esc(r.point)}</a></td>
      <td class="num value">${esc(fmtValue(r))}</td><td>${esc(r.unit || "")}</td><td class="q q-${esc(r.quality)}">${esc(r.quality)}</td>
      <td class="spark-cell">${sparkline(recent.get(key))}</td><td class="age muted">${esc(fmtAge(r.ts))}</td></tr>`;
  }).join("");
}

function liveTable(filterDevice) {
  // Values arrive with every commit; the DOM is redrawn twice a second.
  let dirty = new Set();
  const stop = stream(filterDevice ? `/v1/stream?device=${encodeURIComponent(filterDevice)}` : "/v1/stream", (readings) => {
    remember(readings);
    for (const r of readings) dirty.add(`${r.device}/${r.point}`);
  });
  const timer = setInterval(() => {
    for (const key of dirty) {
      const row = page.querySelector(`tr[data-key="${CSS.escape(key)}"]`);
      const r = latest.get(key);
      if (!row || !r) continue;
      row.querySelector(".value").textContent = fmtValue(r);
      const q = row.querySelector(".q"); q.textContent = r.quality; q.className = `q q-${r.quality}`;
      row.querySelector(".spark-cell").innerHTML = sparkline(recent.get(key));
      row.querySelector(".age").textContent = fmtAge(r.ts);
    }
    dirty = new Set();
  }, 500);
  cleanup.push(stop, () => clearInterval(timer));
}

async function devices() {
  page.innerHTML = `<h1>Devices</h1><div id="list">Loading…</div>`;
  const [{ devices: list }, { readings }] = await Promise.all([apiJson("/v1/devices"), apiJson("/v1/latest")]);
  remember(readings);
  const byDevice = new Map();
  for (const r of readings) { if (!byDevice.has(r.device)) byDevice.set(r.device, []); byDevice.get(r.device).push(r); }
  const body = list.map((d) => {
    const state = d.status ? d.status.state : "";
    return `<tr class="device-row"><td colspan="6"><a href="#/device/${encodeURIComponent(d.device)}">${esc(d.device)}</a>
      <span class="muted">${esc(d.driver || "dynamic")}${d.profile ? ` · profile ${esc(d.profile)}` : ""} · ${d.points} point(s)${d.writable ? " · writable" : ""}</span>
      ${state ? `<span class="state ${esc(state)}">${esc(state)}</span>` : ""}</td></tr>${pointRows(byDevice.get(d.device) || [])}`;
  }).join("");
  $("#list").innerHTML = list.length
    ? `<table id="devices"><thead><tr><th>Point</th><th>Value</th><th>Unit</th><th>Quality</th><th>Last minute</th><th>Updated</th></tr></thead><tbody>${body}</tbody></table>`
    : `<div class="empty">No devices are configured and none has sent a reading yet.</div>`;
  liveTable(null);
}

async function device(id) {
  page.innerHTML = `<h1>${esc(id)}</h1><div id="detail">Loading…</div>`;
  const d = await apiJson(`/v1/devices/${encodeURIComponent(id)}`);
  remember(d.point_list.map((p) => p.latest));
  const counters = d.status ? `<div class="cards">${[
    ["State", d.status.state], ["Requests", fmtInt(d.status.requests)], ["Answers", fmtInt(d.status.answers)],
    ["Timeouts", fmtInt(d.status.timeouts)], ["CRC errors", fmtInt(d.status.crc_errors)], ["Exceptions", fmtInt(d.status.exceptions)],
    ["Latency", `${d.status.latency_us} µs`], ["Writes", `${fmtInt(d.status.writes)} (${fmtInt(d.status.write_errors)} failed)`],
  ].map(([l, v]) => `<div class="card"><div class="label">${esc(l)}</div><div class="value">${esc(v)}</div></div>`).join("")}</div>` : "";
  $("#detail").innerHTML = `<p class="muted">${esc(d.driver || "dynamic")}${d.profile ? ` · profile ${esc(d.profile)}` : ""}${d.writable ? " · takes writes" : ""}</p>${counters}
    <h2>Points</h2><table><thead><tr><th>Point</th><th>Value</th><th>Unit</th><th>Quality</th><th>Last minute</th><th>Updated</th></tr></thead>
    <tbody>${pointRows(d.point_list.map((p) => p.latest))}</tbody></table>`;
  liveTable(id);
}

const RANGES = { "15m": 900, "1h": 3600, "6h": 21600, "24h": 86400, "7d": 604800 };

async function point(id, name) {
  page.innerHTML = `<h1>${esc(id)} · ${esc(name)}</h1>
    <div class="controls">
      <label>Range <select id="range">${Object.keys(RANGES).map((r) => `<option${r === "1h" ? " selected" : ""}>${r}</option>`).join("")}</select></label>
      <label>Bucket <select id="bucket"><option value="auto" selected>auto</option><option>1s</option><option>10s</option><option>1m</option><option>5m</option><option>1h</option></select></label>
      <label>Show <select id="mode"><option value="aggregate" selected>min / avg / max</option><option value="raw">raw readings</option></select></label>
      <button type="button" id="refresh">Refresh</button>
      <button type="button" id="csv" class="secondary">Download CSV</button>
    </div>
    <div class="chart" id="chart">Loading…</div><p class="muted" id="summary"></p>`;
  const base = `/v1/devices/${encodeURIComponent(id)}/points/${encodeURIComponent(name)}`;
  function query() {
    const seconds = RANGES[$("#range").value];
    let bucket = $("#bucket").value;
    if (bucket === "auto") bucket = `${Math.max(1, Math.round(seconds / 240))}s`;
    return { from: `-${$("#range").value}`, bucket, mode: $("#mode").value };
  }
  async function draw() {
    const q = query();
    let series;
    if (q.mode === "raw") {
      const body = await apiJson(`${base}/range?from=${q.from}&limit=5000`);
      series = body.readings.filter((r) => typeof r.value === "number").map((r) => ({ t: r.ts, min: r.value, max: r.value, avg: r.value }));
      $("#summary").textContent = `${body.readings.length} readings${body.next ? " (first 5000; narrow the range for all)" : ""}`;
    } else {
      let body = await apiJson(`${base}/aggregate?from=${q.from}&bucket=${q.bucket}`);
      // Auto buckets over a range mostly without data (a gateway that just
      // started): size them to the data there is instead.
      if ($("#bucket").value === "auto" && body.buckets.length > 0 && body.buckets.length < 60) {
        const spanMs = Date.now() - body.buckets[0].start / 1e6;
        const ms = Math.max(10, Math.round(spanMs / 240));
        if (ms < body.bucket_ns / 1e6) {
          // Only where the data is: the whole range in such buckets may be too many.
          q.from = String(body.buckets[0].start);
          q.bucket = `${ms}ms`;
          body = await apiJson(`${base}/aggregate?from=${q.from}&bucket=${q.bucket}`);
        }
      }
      series = body.buckets.map((b) => ({ t: b.start, min: b.min, max: b.max, avg: b.avg }));
      const n = body.buckets.reduce((a, b) => a + b.count, 0);
      $("#summary").textContent = `${body.buckets.length} buckets of ${q.bucket}, ${fmtInt(n)} readings`;
    }
    $("#chart").innerHTML = chart(series);
  }
  $("#refresh").addEventListener("click", () => draw().catch(showError));
  for (const id of ["range", "bucket", "mode"]) $(`#${id}`).addEventListener("change", () => draw().catch(showError));
  $("#csv").addEventListener("click", async () => {
    const q = query();
    const path = q.mode === "raw" ? `${base}/range?from=${q.from}&limit=10000&format=csv` : `${base}/aggregate?from=${q.from}&bucket=${q.bucket}&format=csv`;
    download(await (await api(path)).blob(), `${id}-${name}.csv`);
  });
  await draw();
}

function chart(series) {
  if (!series.length) return `<div class="empty">No numeric readings in this range.</div>`;
  const W = 1000, H = 320, L = 60, R = 10, T = 10, B = 28;
  const t0 = series[0].t, t1 = series[series.length - 1].t || t0 + 1;
  let lo = Math.min(...series.map((s) => s.min)), hi = Math.max(...series.map((s) => s.max));
  if (lo === hi) { lo -= 1; hi += 1; }
  const x = (t) => L + (t - t0) / Math.max(t1 - t0, 1) * (W - L - R);
  const y = (v) => T + (hi - v) / (hi - lo) * (H - T - B);
  const band = series.map((s) => `${x(s.t).toFixed(1)},${y(s.max).toFixed(1)}`).concat(
    series.slice().reverse().map((s) => `${x(s.t).toFixed(1)},${y(s.min).toFixed(1)}`)).join(" ");
  const line = series.map((s) => `${x(s.t).toFixed(1)},${y(s.avg).toFixed(1)}`).join(" ");
  const ticks = [0, 0.25, 0.5, 0.75, 1].map((f) => lo + (hi - lo) * f);
  const time = (t) => new Date(t / 1e6).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit", second: "2-digit" });
  return `<svg viewBox="0 0 ${W} ${H}" preserveAspectRatio="none" role="img" aria-label="history chart">
    ${ticks.map((v) => `<line class="axis" x1="${L}" x2="${W - R}" y1="${y(v)}" y2="${y(v)}"/><text x="${L - 6}" y="${y(v) + 4}" text-anchor="end">${esc(Number(v.toPrecision(4)))}</text>`).join("")}
    <polygon class="band" points="${band}"/><polyline class="line" points="${line}"/>
    <text x="${L}" y="${H - 8}">${esc(time(t0))}</text><text x="${W - R}" y="${H - 8}" text-anchor="end">${esc(time(t1))}</text></svg>`;
}

function download(blob, filename) {
  const url = URL.createObjectURL(blob);
  const a = document.createElement("a");
  a.href = url; a.download = filename; document.body.append(a); a.click(); a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

async function anchoring() {
  page.innerHTML = `<h1>Anchoring</h1><div id="batches">Loading…</div>
    <h2>Proof of a reading</h2>
    <form id="proof-form" class="controls"><label>Reading seq <input id="proof-seq" type="number" min="1" required></label>
    <button type="submit">Download proof</button></form><p id="proof-result" class="muted"></p>`;
  $("#proof-form").addEventListener("submit", async (e) => {
    e.preventDefault();
    const seq = $("#proof-seq").value;
    const res = await api(`/v1/proofs/${encodeURIComponent(seq)}`);
    if (res.ok) { download(await res.blob(), `proof-${seq}.json`); $("#proof-result").textContent = `proof-${seq}.json downloaded; check it with biota-gateway verify proof-${seq}.json`; }
    else { const body = await res.json().catch(() => ({})); $("#proof-result").textContent = body.message || res.statusText; }
  });
  const res = await api("/v1/batches");
  const body = await res.json().catch(() => ({}));
  if (!res.ok) {
    $("#batches").innerHTML = `<div class="empty">No batches: ${esc(body.message || res.statusText)}.</div>`;
    return;
  }
  const chain = (b) => b.anchor
    ? `anchored: block ${b.anchor.block_number}, tx ${b.anchor.tx_hash.slice(0, 10)}…`
    : "sealed; not anchored on-chain yet";
  $("#batches").innerHTML = body.batches.length
    ? `<table><thead><tr><th>Batch</th><th>Seq range</th><th>Merkle root</th><th>Chain status</th><th></th></tr></thead><tbody>${body.batches.map((b) =>
        `<tr class="${b.anchor ? "anchored" : "sealed"}"><td>${esc(b.index)}</td><td>${esc(b.first_seq)}–${esc(b.last_seq)}</td><td><code>${esc(b.root.slice(0, 18))}…</code></td><td>${esc(chain(b))}</td>` +
        `<td><button type="button" class="proof" data-seq="${esc(b.first_seq)}">Proof of seq ${esc(b.first_seq)}</button></td></tr>`).join("")}</tbody></table>`
    : `<div class="empty">No batches yet: readings are sealed by count or after [anchor] batch_max_age.</div>`;
  for (const button of document.querySelectorAll("#batches button.proof")) {
    button.addEventListener("click", () => { $("#proof-seq").value = button.dataset.seq; $("#proof-form").requestSubmit(); });
  }
}

// ---------------------------------------------------------------- shell

function showError(e) {
  if (e instanceof Unauthorized) return;
  page.insertAdjacentHTML("afterbegin", `<p class="error" role="alert">${esc(e.message || e)}</p>`);
}

function signOut(message) {
  token = null;
  sessionStorage.removeItem(TOKEN_KEY);
  route();
  $("#login-error").textContent = message || "";
}

async function route() {
  for (const stop of cleanup) stop();
  cleanup = [];
  const signedIn = Boolean(token);
  $("#login").hidden = signedIn;
  $("#nav").hidden = !signedIn;
  $("#logout").hidden = !signedIn;
  page.hidden = !signedIn;
  if (!signedIn) { page.innerHTML = ""; $("#token").focus(); return; }
  const [name, ...args] = (location.hash.replace(/^#\/?/, "") || "overview").split("/").map(decodeURIComponent);
  for (const a of document.querySelectorAll("#nav a")) a.classList.toggle("active", a.dataset.page === name || (name === "device" || name === "point") && a.dataset.page === "devices");
  const pages = { overview, devices, device, point, anchoring };
  try {
    await (pages[name] || overview)(...args);
  } catch (e) { showError(e); }
}

$("#login-form").addEventListener("submit", async (e) => {
  e.preventDefault();
  const candidate = $("#token").value.trim();
  const res = await fetch("/v1/status", { headers: { Authorization: `Bearer ${candidate}` } });
  if (!res.ok) { $("#login-error").textContent = res.status === 401 ? "This token is not valid." : `The gateway answered ${res.status}.`; return; }
  token = candidate;
  sessionStorage.setItem(TOKEN_KEY, token);
  $("#token").value = "";
  $("#login-error").textContent = "";
  route();
});
$("#logout").addEventListener("click", () => signOut());
window.addEventListener("hashchange", route);
route();
