"use strict";
// schedulerd's dashboard: one script for every page, no build step, no library.
// Each page polls its JSON (/ui/api/...) every REFRESH_MS and redraws; data is only
// ever put in the page as text (textContent), never as HTML.

const REFRESH_MS = 3000;
const SVG = "http://www.w3.org/2000/svg";

// -- helpers ----------------------------------------------------------------

function el(tag, attrs, ...children) {
  const node = document.createElement(tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (value === undefined || value === null || value === false) continue;
    if (key === "class") node.className = value;
    else if (key === "text") node.textContent = value;
    else if (key.startsWith("on")) node.addEventListener(key.slice(2), value);
    else node.setAttribute(key, value === true ? "" : String(value));
  }
  for (const child of children.flat()) {
    if (child === undefined || child === null || child === false) continue;
    node.append(child instanceof Node ? child : document.createTextNode(String(child)));
  }
  return node;
}

function svg(tag, attrs, ...children) {
  const node = document.createElementNS(SVG, tag);
  for (const [key, value] of Object.entries(attrs || {})) {
    if (key === "text") node.textContent = value;
    else node.setAttribute(key, String(value));
  }
  for (const child of children.flat()) if (child) node.append(child);
  return node;
}

function table(id, headers, rows, empty) {
  if (!rows.length) return el("p", { id, class: "muted empty", text: empty });
  return el(
    "table",
    { id },
    el("thead", {}, el("tr", {}, headers.map((h) => el("th", { text: h })))),
    el("tbody", {}, rows),
  );
}

function num(x, digits) {
  if (x === undefined || x === null || x === "") return "";
  const n = Number(x);
  if (!Number.isFinite(n)) return String(x);
  return digits === undefined ? String(n) : n.toFixed(digits).replace(/\.?0+$/, "");
}

function when(ts) {
  if (!ts) return "";
  const d = new Date(ts);
  return Number.isNaN(d.getTime()) ? "" : d.toLocaleString();
}

function since(ts) {
  if (!ts) return "";
  const s = Math.max(0, (Date.now() - new Date(ts).getTime()) / 1000);
  if (s < 90) return `${Math.round(s)} s`;
  if (s < 5400) return `${Math.round(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

// One color per consumer (or user), the same on every page.
function colorOf(name) {
  let h = 0;
  for (const c of String(name)) h = (h * 31 + c.codePointAt(0)) >>> 0;
  return `hsl(${h % 360}, 62%, 52%)`;
}

function jobLink(id) {
  return el("a", { href: `/ui/jobs/${id}`, text: String(id) });
}

function gpusOf(job) {
  const spec = job.spec.gpus || {};
  const min = spec.min || 0;
  const max = spec.max || min;
  const asked = max > min ? `${min}:${max}` : String(min);
  return job.holds && job.state === "RUNNING" && String(job.holds) !== asked
    ? `${job.holds} (${asked})`
    : asked;
}

function whereOf(job) {
  return (job.where || []).map((p) => `${p.node}: ${p.gpus.join(",")}`).join("; ");
}

// A page's new content, in place of the old (arrays flattened, nothing for null).
function show(main, ...children) {
  main.replaceChildren(...children.flat(2).filter((c) => c !== null && c !== undefined && c !== false));
}

class Unauthorized extends Error {}

async function getJSON(path) {
  const response = await fetch(path, { credentials: "same-origin", cache: "no-store" });
  if (response.status === 401) throw new Unauthorized();
  const body = await response.json().catch(() => ({}));
  if (!response.ok) {
    const error = new Error(body.error || `${response.status}`);
    error.status = response.status;
    throw error;
  }
  return body;
}

function showMe(me) {
  if (!me) return;
  document.getElementById("me").textContent = me.admin ? `${me.user} (cluster admin)` : me.user;
}

function setStatus(text, bad) {
  const status = document.getElementById("status");
  status.textContent = text;
  status.className = bad ? "error" : "muted";
}

// -- overview -----------------------------------------------------------------

const chartState = { selected: null };

function consumersTable(data) {
  const rows = data.consumers.map((c) => {
    const ent = Number(c.entitlement || 0);
    const alloc = Number(c.allocation || 0);
    const under = alloc + 1 <= ent && Number(c.pending_jobs) > 0;
    const name = c.path === "/" ? "/ (cluster)" : c.path.split("/").pop();
    const row = el(
      "tr",
      {
        "data-path": c.path,
        class: chartState.selected === c.path ? "selected" : under ? "under" : "",
        title: "click: chart this consumer",
        onclick: () => {
          chartState.selected = chartState.selected === c.path ? null : c.path;
          refresh();
        },
      },
      el(
        "td",
        { class: "path" },
        el("span", { class: "indent", text: "\u00a0\u00a0".repeat(c.depth) }),
        el("span", { class: "swatch", "data-color": c.path }),
        name,
      ),
      el("td", { class: "n", text: num(c.owned) }),
      el("td", { class: "n", text: num(c.share, 2) }),
      el("td", { class: "n", text: c.limit === undefined ? "" : num(c.limit) }),
      el("td", { class: "n", text: num(c.demand) }),
      el("td", { class: "n entitlement", text: num(ent, 2) }),
      el("td", { class: "n allocation", text: num(alloc) }),
      el("td", { class: "bar" }, bar(alloc, ent, data.total_gpus)),
      el("td", { class: "n", text: num(c.pending_jobs) }),
      el("td", { class: "n", text: num(c.running_jobs) }),
    );
    return row;
  });
  const t = table(
    "consumers",
    ["Consumer", "Owned", "Share", "Limit", "Demand", "Entitlement", "Allocation", "", "Waiting", "Running"],
    rows,
    "No consumer to show.",
  );
  for (const sw of t.querySelectorAll(".swatch")) sw.style.background = colorOf(sw.dataset.color);
  return t;
}

function bar(alloc, ent, total) {
  const width = 160;
  const scale = total > 0 ? width / total : 0;
  return svg(
    "svg",
    { width, height: 12, class: "alloc-bar" },
    svg("rect", { x: 0, y: 2, width, height: 8, class: "bar-bg" }),
    svg("rect", { x: 0, y: 2, width: Math.min(width, alloc * scale), height: 8, class: "bar-alloc" }),
    svg("line", {
      x1: Math.min(width, ent * scale),
      x2: Math.min(width, ent * scale),
      y1: 0,
      y2: 12,
      class: "bar-ent",
    }),
  );
}

function chart(history, data) {
  // Which consumers: the one clicked, else the top of the tree (children of the root).
  const byPath = Object.fromEntries(data.consumers.map((c) => [c.path, c]));
  let paths;
  if (chartState.selected && byPath[chartState.selected]) paths = [chartState.selected];
  else {
    const depths = data.consumers.map((c) => c.depth).filter((d) => d > 0);
    const top = depths.length ? Math.min(...depths) : 0;
    paths = data.consumers.filter((c) => c.depth === top).map((c) => c.path).slice(0, 12);
  }
  const nowS = Number(data.now);
  const series = paths.map((p) => {
    const points = (history.series[p] || []).map(([t, e, a]) => [t, e, a]);
    const c = byPath[p];
    points.push([nowS, Number(c.entitlement || 0), Number(c.allocation || 0)]);
    return { path: p, points };
  });
  const W = 760;
  const H = 220;
  const L = 40;
  const B = 24;
  const R = 36;
  const all = series.flatMap((s) => s.points);
  const t0 = Math.min(...all.map((p) => p[0]), nowS - 600);
  const t1 = nowS;
  const ymax = Math.max(1, ...all.map((p) => Math.max(p[1], p[2])));
  const x = (t) => L + ((t - t0) / Math.max(1, t1 - t0)) * (W - L - R);
  const y = (v) => H - B - (v / ymax) * (H - B - 10);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = (ymax * i) / 4;
    parts.push(svg("line", { x1: L, x2: W - R, y1: y(v), y2: y(v), class: "grid" }));
    parts.push(svg("text", { x: L - 6, y: y(v) + 4, class: "tick", "text-anchor": "end", text: num(v, 1) }));
  }
  for (let i = 0; i <= 4; i++) {
    const t = t0 + ((t1 - t0) * i) / 4;
    const label = new Date(t * 1000).toLocaleTimeString([], { hour: "2-digit", minute: "2-digit" });
    parts.push(svg("text", { x: x(t), y: H - 6, class: "tick", "text-anchor": "middle", text: label }));
  }
  for (const s of series) {
    const color = colorOf(s.path);
    const line = (k) => s.points.map((p, i) => `${i ? "L" : "M"}${x(p[0]).toFixed(1)},${y(p[k]).toFixed(1)}`).join(" ");
    parts.push(svg("path", { d: line(1), stroke: color, class: "entitlement-line" }));
    parts.push(svg("path", { d: line(2), stroke: color, class: "allocation-line" }));
    // Now, as dots: a series of one sample (a daemon just started) draws no line.
    const last = s.points[s.points.length - 1];
    parts.push(svg("circle", { cx: x(last[0]), cy: y(last[2]), r: 3.5, fill: color, class: "now-allocation" }));
    parts.push(svg("circle", { cx: x(last[0]), cy: y(last[1]), r: 3.5, stroke: color, class: "now-entitlement" }));
  }
  const legend = el(
    "div",
    { class: "legend" },
    series.map((s) => {
      const sw = el("span", { class: "swatch" });
      sw.style.background = colorOf(s.path);
      return el("span", {}, sw, s.path);
    }),
    el("span", { class: "muted", text: "solid: allocation, dashed: entitlement (GPUs)" }),
  );
  return el(
    "div",
    { class: "chart" },
    svg("svg", { id: "chart", viewBox: `0 0 ${W} ${H}`, width: W, height: H }, parts),
    legend,
    el("p", {
      class: "muted",
      text: `Sampled every ${num(history.every_s)} s, the last 6 hours at most, since the daemon started.`,
    }),
  );
}

// The chart's samples: the whole history once, then only the samples after the newest
// one held (the daemon takes one every 30 s), kept here for the last keep_s seconds.
const historyState = { every_s: 30, keep_s: 21600, last: null, series: {} };

async function loadHistory() {
  const since = historyState.last === null ? "" : `?since=${historyState.last}`;
  const got = await getJSON(`/ui/api/history${since}`);
  historyState.every_s = got.every_s;
  historyState.keep_s = got.keep_s;
  const times = got.times || [];
  for (const [path, [es, as]] of Object.entries(got.series || {})) {
    const points = historyState.series[path] || (historyState.series[path] = []);
    for (let i = 0; i < es.length; i++) {
      if (es[i] !== null && es[i] !== undefined) points.push([times[i], es[i], as[i]]);
    }
  }
  if (times.length) {
    historyState.last = times[times.length - 1];
    const oldest = historyState.last - historyState.keep_s;
    for (const points of Object.values(historyState.series)) {
      const drop = points.findIndex((p) => p[0] > oldest);
      points.splice(0, drop < 0 ? points.length : drop);
    }
  }
}

async function overviewPage(main) {
  const [data] = await Promise.all([getJSON("/ui/api/overview"), loadHistory()]);
  const history = historyState;
  showMe(data.me);
  const waiting = data.waiting.map((j) =>
    el(
      "tr",
      { "data-job-id": j.id, class: "job" },
      el("td", {}, jobLink(j.id)),
      el("td", { text: j.spec.consumer }),
      el("td", { text: j.spec.user }),
      el("td", { text: j.spec.name }),
      el("td", { class: "n", text: gpusOf(j) }),
      el("td", { class: "state", text: j.state }),
      el("td", { text: since(j.submit_time) }),
      el("td", { class: "reason", text: j.reason }),
    ),
  );
  const running = data.running.map((j) =>
    el(
      "tr",
      { "data-job-id": j.id, class: "job" },
      el("td", {}, jobLink(j.id)),
      el("td", { text: j.spec.consumer }),
      el("td", { text: j.spec.user }),
      el("td", { text: j.spec.name }),
      el("td", { class: "n", text: gpusOf(j) }),
      el("td", { class: "where", text: whereOf(j) }),
      el("td", { text: since(j.start_time) }),
    ),
  );
  const more = (shown, all) => (all > shown ? el("p", { class: "muted", text: `${shown} of ${all} shown` }) : null);
  show(main, 
    el("h2", { text: `Consumers (${data.total_gpus} GPUs schedulable)` }),
    consumersTable(data),
    el("h2", { text: "Entitlement and allocation over time" }),
    chart(history, data),
    el("h2", { text: `Waiting jobs (${data.waiting_count})` }),
    table("waiting", ["Job", "Consumer", "User", "Name", "GPUs", "State", "Waiting", "Why"], waiting, "No job waits."),
    more(data.waiting.length, data.waiting_count),
    el("h2", { text: `Running jobs (${data.running_count})` }),
    table("running", ["Job", "Consumer", "User", "Name", "GPUs", "Where", "For"], running, "No job runs."),
    more(data.running.length, data.running_count),
  );
}

// -- nodes --------------------------------------------------------------------

async function nodesPage(main) {
  const data = await getJSON("/ui/api/nodes");
  showMe(data.me);
  const consumers = new Set();
  const cards = data.nodes.map((n) => {
    const cells = n.gpus.map((g) => {
      let title = `${n.name} GPU ${g.index} (${g.model})`;
      let cls = "gpu free";
      if (g.fenced) {
        cls = "gpu fenced";
        title += ": fenced (its last holder may still run)";
      }
      if (g.busy && g.job_id !== undefined) {
        cls = "gpu busy";
        title += `: job ${g.job_id}, ${g.user}, ${g.consumer}`;
        consumers.add(g.consumer);
      } else if (g.busy) {
        cls = "gpu busy other";
        title += ": busy (a job you may not see)";
      } else if (!g.fenced) title += ": free";
      const cell = el(
        g.job_id !== undefined ? "a" : "div",
        {
          class: cls,
          title,
          href: g.job_id !== undefined ? `/ui/jobs/${g.job_id}` : null,
          "data-node": n.name,
          "data-index": g.index,
          "data-job-id": g.job_id,
          "data-consumer": g.consumer,
        },
        el("span", { class: "idx", text: String(g.index) }),
        el("span", { class: "holder", text: g.job_id !== undefined ? `#${g.job_id}` : g.busy ? "busy" : "" }),
      );
      if (g.consumer) cell.style.background = colorOf(g.consumer);
      return cell;
    });
    const tags = [n.state, n.pool, n.gpu_type, n.drained ? `drained: ${n.drain_reason}` : null, n.fake_gpus ? "fake GPUs" : null]
      .filter(Boolean)
      .join(" · ");
    return el(
      "section",
      { class: `node ${n.state}`, "data-node": n.name },
      el("h3", {}, n.name, " ", el("span", { class: "muted", text: tags })),
      el("div", { class: "gpus" }, cells),
    );
  });
  const legend = el(
    "div",
    { class: "legend" },
    [...consumers].sort().map((c) => {
      const sw = el("span", { class: "swatch" });
      sw.style.background = colorOf(c);
      return el("span", {}, sw, c);
    }),
  );
  show(main, 
    el("h2", { text: `Nodes (${data.nodes.length})` }),
    legend,
    cards.length ? el("div", { id: "nodes", class: "nodes" }, cards) : el("p", { class: "muted", text: "No node." }),
  );
}

// -- a job --------------------------------------------------------------------

const logState = { jobId: null, parts: {} }; // node -> {text, next}
const LOG_KEEP = 64 * 1024;

async function loadLog(job) {
  if (logState.jobId !== job.id) {
    logState.jobId = job.id;
    logState.parts = {};
  }
  const known = Object.keys(logState.parts).length;
  if (!known) {
    const got = await getJSON(`/ui/api/jobs/${job.id}/log`);
    for (const p of got.parts) logState.parts[p.node] = { rank: p.rank, text: p.text || "", next: p.next, error: p.error };
    return;
  }
  if (job.state !== "RUNNING") return;
  for (const [node, part] of Object.entries(logState.parts)) {
    if (part.next === undefined) continue;
    const got = await getJSON(`/ui/api/jobs/${job.id}/log?node=${encodeURIComponent(node)}&offset=${part.next}`);
    const p = got.parts[0];
    if (!p) continue;
    if (p.error) part.error = p.error;
    else {
      part.error = undefined;
      part.text = (part.text + (p.text || "")).slice(-LOG_KEEP);
      part.next = p.next;
    }
  }
}

async function jobPage(main, id) {
  const data = await getJSON(`/ui/api/jobs/${id}`);
  showMe(data.me);
  const j = data.job;
  let logBox = null;
  if (j.may_read_logs && (j.where || []).length) {
    try {
      await loadLog(j);
    } catch (e) {
      if (e instanceof Unauthorized) throw e;
    }
    logBox = Object.entries(logState.parts).map(([node, p]) =>
      el(
        "div",
        { class: "log" },
        el("h3", { text: `${node} (rank ${p.rank})` }),
        p.error ? el("p", { class: "error", text: p.error }) : null,
        el("pre", { class: "log-text", "data-node": node, text: p.text || "(empty)" }),
      ),
    );
  }
  const field = (label, value, attrs) => [el("dt", { text: label }), el("dd", attrs || {}, value === undefined ? "" : value)];
  const spec = j.spec;
  const history = (j.history || []).map((e) =>
    el("tr", {}, el("td", { text: when(e.time) }), el("td", { text: e.kind }), el("td", { text: e.message })),
  );
  show(main, 
    el("h2", {}, `Job ${j.id}`, spec.name ? ` · ${spec.name}` : ""),
    j.redacted ? el("p", { class: "muted", text: "Another user's job: its command, environment, history and logs are theirs." }) : null,
    el(
      "dl",
      { class: "job-fields" },
      field("State", j.state, { id: "job-state" }),
      field("Why", j.reason, { id: "job-reason" }),
      field("Consumer", spec.consumer),
      field("User", spec.user),
      field("GPUs", gpusOf(j)),
      field("Where", whereOf(j), { id: "job-where" }),
      field("Priority", num(spec.priority)),
      field("Submitted", when(j.submit_time)),
      field("Started", when(j.start_time)),
      field("Ended", when(j.end_time)),
      field("Exit code", j.exit_code === undefined ? "" : String(j.exit_code)),
      field("Attempt", num(j.attempt)),
      j.redacted ? null : field("Command", (spec.command || []).join(" "), { class: "mono" }),
      j.redacted ? null : field("Working dir", spec.working_dir, { class: "mono" }),
    ),
    j.redacted ? null : el("h2", { text: "History" }),
    j.redacted ? null : table("history", ["Time", "Event", ""], history, "No event yet."),
    logBox ? el("h2", { text: "Log (tail)" }) : null,
    logBox,
  );
}

// -- experiments --------------------------------------------------------------

function objectivePlot(exp) {
  const trials = (exp.trials || []).filter((t) => t.value !== undefined);
  const W = 620;
  const H = 220;
  const L = 50;
  const B = 26;
  if (!trials.length) return el("p", { class: "muted", text: "No objective reported yet." });
  const minimize = (exp.spec.direction || "").toLowerCase().includes("min");
  const values = trials.map((t) => Number(t.value));
  let lo = Math.min(...values);
  let hi = Math.max(...values);
  if (hi === lo) {
    hi += 1;
    lo -= 1;
  }
  const nmax = Math.max(1, ...trials.map((t) => t.number));
  const x = (n) => L + (n / nmax) * (W - L - 12);
  const y = (v) => H - B - ((v - lo) / (hi - lo)) * (H - B - 12);
  const parts = [];
  for (let i = 0; i <= 4; i++) {
    const v = lo + ((hi - lo) * i) / 4;
    parts.push(svg("line", { x1: L, x2: W - 12, y1: y(v), y2: y(v), class: "grid" }));
    parts.push(svg("text", { x: L - 6, y: y(v) + 4, class: "tick", "text-anchor": "end", text: num(v, 3) }));
  }
  const step = Math.max(1, Math.ceil(nmax / 10));
  for (let n = 0; n <= nmax; n += step) {
    parts.push(svg("text", { x: x(n), y: H - 8, class: "tick", "text-anchor": "middle", text: String(n) }));
  }
  // Best so far among completed trials, as a step line.
  let best = null;
  const path = [];
  for (const t of [...trials].sort((a, b) => a.number - b.number)) {
    if (!String(t.state).includes("COMPLETE")) continue;
    const v = Number(t.value);
    if (best === null || (minimize ? v < best : v > best)) best = v;
    path.push(`${path.length ? "L" : "M"}${x(t.number).toFixed(1)},${y(best).toFixed(1)}`);
  }
  if (path.length) parts.push(svg("path", { d: path.join(" "), class: "best-line" }));
  for (const t of trials) {
    const complete = String(t.state).includes("COMPLETE");
    parts.push(
      svg("circle", {
        cx: x(t.number),
        cy: y(Number(t.value)),
        r: 4,
        class: complete ? "pt complete" : "pt pruned",
      }, svg("title", { text: `trial ${t.number}: ${num(t.value, 4)} (${t.state})` })),
    );
  }
  return el(
    "div",
    { class: "chart" },
    svg("svg", { id: "objective", viewBox: `0 0 ${W} ${H}`, width: W, height: H }, parts),
    el("p", { class: "muted", text: `x: trial, y: objective (${minimize ? "lower" : "higher"} is better); filled: complete, hollow: pruned or other; line: best so far` }),
  );
}

function params(p) {
  return Object.entries(p || {})
    .map(([k, v]) => `${k}=${Object.values(v)[0]}`)
    .join(", ");
}

async function experimentsPage(main) {
  const data = await getJSON("/ui/api/experiments");
  showMe(data.me);
  const rows = data.experiments.map((x) =>
    el(
      "tr",
      { "data-experiment-id": x.id },
      el("td", {}, el("a", { href: `/ui/experiments/${x.id}`, text: String(x.id) })),
      el("td", { text: x.spec.name }),
      el("td", { text: x.spec.consumer }),
      el("td", { text: x.spec.user }),
      el("td", { text: x.state }),
      el("td", { class: "n", text: `${x.trials_finished}/${x.trials_total}` }),
      el("td", { class: "n", text: `${x.trials_running} running, ${x.trials_waiting} waiting` }),
      el("td", { class: "n", text: x.best ? `${num(x.best.value, 4)} (trial ${x.best.number})` : "" }),
    ),
  );
  show(main, 
    el("h2", { text: "Experiments" }),
    table("experiments", ["Id", "Name", "Consumer", "User", "State", "Trials", "Now", "Best so far"], rows, "No experiment to show."),
  );
}

async function experimentPage(main, id) {
  const data = await getJSON(`/ui/api/experiments/${id}`);
  showMe(data.me);
  const x = data.experiment;
  const rows = (x.trials || []).map((t) =>
    el(
      "tr",
      {},
      el("td", { class: "n", text: String(t.number) }),
      el("td", {}, t.job_id ? jobLink(t.job_id) : ""),
      el("td", { text: t.state }),
      el("td", { class: "n", text: num(t.value, 5) }),
      el("td", { class: "n", text: t.last_step === undefined ? "" : `${t.last_step}: ${num(t.last_value, 5)}` }),
      el("td", { class: "mono", text: params(t.params) }),
      el("td", { text: t.reason }),
    ),
  );
  show(main, 
    el("h2", { text: `Experiment ${x.id} · ${x.spec.name}` }),
    el("p", {}, `${x.state} · ${x.trials_finished}/${x.trials_total} trials finished · `,
      x.best ? `best so far ${num(x.best.value, 5)} (trial ${x.best.number}: ${params(x.best.params)})` : "no result yet"),
    x.reason ? el("p", { class: "muted", text: x.reason }) : null,
    objectivePlot(x),
    el("h2", { text: "Trials" }),
    table("trials", ["Trial", "Job", "State", "Objective", "Last report", "Parameters", "Why"], rows, "No trial yet."),
  );
}

// -- services -----------------------------------------------------------------

async function servicesPage(main) {
  const data = await getJSON("/ui/api/services");
  showMe(data.me);
  const rows = data.services.map((s) => {
    const load = s.load || {};
    const replicas = (s.replicas || []).map((r) => `#${r.number} ${r.state} ${r.node || ""} (${r.in_flight} in flight)`).join("; ");
    return el(
      "tr",
      { "data-service": s.spec.name },
      el("td", { text: s.spec.name }),
      el("td", { text: s.spec.consumer }),
      el("td", { text: s.spec.user }),
      el("td", { text: s.state }),
      el("td", { class: "n", text: `${s.ready_replicas}/${s.desired_replicas}` }),
      el("td", { class: "n", text: num(load.requests_per_s, 2) }),
      el("td", { class: "n", text: num(load.in_flight, 2) }),
      el("td", { class: "n", text: `${num(load.p50_ms, 1)} / ${num(load.p99_ms, 1)}` }),
      el("td", { text: replicas }),
      el("td", { text: s.reason }),
    );
  });
  show(main, 
    el("h2", { text: "Inference services" }),
    table("services", ["Name", "Consumer", "User", "State", "Ready/desired", "Req/s", "In flight", "p50/p99 ms", "Replicas", "Why"], rows, "No service to show."),
  );
}

// -- the loop -------------------------------------------------------------------

function route() {
  const path = window.location.pathname.replace(/\/+$/, "") || "/ui";
  let m;
  if (path === "/ui") return ["overview", (main) => overviewPage(main)];
  if (path === "/ui/nodes") return ["nodes", (main) => nodesPage(main)];
  if ((m = path.match(/^\/ui\/jobs\/(\d+)$/))) return ["overview", (main) => jobPage(main, m[1])];
  if (path === "/ui/experiments") return ["experiments", (main) => experimentsPage(main)];
  if ((m = path.match(/^\/ui\/experiments\/(\d+)$/))) return ["experiments", (main) => experimentPage(main, m[1])];
  if (path === "/ui/services") return ["services", (main) => servicesPage(main)];
  return [null, (main) => show(main, el("p", { text: "No such page." }))];
}

let busy = false;

async function refresh() {
  if (busy) return;
  busy = true;
  const [page, render] = route();
  for (const a of document.querySelectorAll("nav a")) a.classList.toggle("active", a.dataset.page === page);
  const main = document.getElementById("main");
  try {
    // Keep the reader's place: a redraw must not scroll the page back up.
    const x = window.scrollX;
    const y = window.scrollY;
    await render(main);
    window.scrollTo(x, y);
    setStatus(`updated ${new Date().toLocaleTimeString()}`, false);
    document.body.dataset.loaded = "true";
  } catch (e) {
    if (e instanceof Unauthorized) {
      window.location.assign(`/ui/login?next=${encodeURIComponent(window.location.pathname)}`);
      return;
    }
    if (e.status === 404) show(main, el("p", { id: "not-found", text: "Not found (or not yours to see)." }));
    setStatus(`update failed: ${e.message}`, true);
  } finally {
    busy = false;
  }
}

document.addEventListener("DOMContentLoaded", () => {
  refresh();
  setInterval(refresh, REFRESH_MS);
});
