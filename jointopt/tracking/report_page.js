// Study report: draws the charts and tables from the JSON in #report-data with Plotly.
// Plotly itself is embedded gzip-compressed (base64) in #plotly-gz and unpacked with the
// browser's DecompressionStream, so the page needs no network and stays small.
"use strict";

const D = JSON.parse(document.getElementById("report-data").textContent);
const byNumber = new Map(D.trials.map((t) => [t.n, t]));
const fmt = (v, d = 3) => (v === null || v === undefined ? "" : Number(v).toFixed(d));
const esc = (s) => String(s).replace(/[&<>"]/g, (c) => ({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;"}[c]));
const el = (id) => document.getElementById(id);

function showError(message) {
  const box = el("errors");
  box.hidden = false;
  box.textContent += message + "\n";
}
window.addEventListener("error", (e) => showError("error: " + e.message));
window.addEventListener("unhandledrejection", (e) => showError("error: " + e.reason));

async function loadPlotly() {
  const b64 = el("plotly-gz").textContent.trim();
  const raw = atob(b64);
  const bytes = new Uint8Array(raw.length);
  for (let i = 0; i < raw.length; i++) bytes[i] = raw.charCodeAt(i);
  const stream = new Blob([bytes]).stream().pipeThrough(new DecompressionStream("gzip"));
  const code = await new Response(stream).text();
  const script = document.createElement("script");
  script.textContent = code;
  document.head.appendChild(script);
}

function policyOf(n) {
  const p = D.policies[String(n)];
  if (!p) return null;
  return Object.assign({}, p, {prompt: D.prompts[p.prompt] || {}});
}

function allocText(a) {
  const params = Object.entries(a.params || {}).map(([k, v]) => k + "=" + v).join(", ");
  const extra = Object.entries(a).filter(([k]) => !["strategy", "params", "temperature", "max_tokens"].includes(k))
    .map(([k, v]) => " " + k + "=" + (typeof v === "object" ? JSON.stringify(v) : v)).join("");
  return a.strategy + "(" + params + ") T=" + a.temperature + " max_tokens=" + a.max_tokens + extra;
}

function hoverText(t) {
  const p = policyOf(t.n);
  const ci = t.dev_acc ? " [" + fmt(t.dev_acc.low, 2) + ", " + fmt(t.dev_acc.high, 2) + "]" : "";
  let s = "<b>trial " + t.n + "</b>  accuracy " + fmt(t.acc) + ci + "  tokens " + fmt(t.tok, 1);
  if (t.test_acc) s += "<br>held-out: accuracy " + fmt(t.test_acc.value) + "  tokens " + fmt(t.test_tok.value, 1);
  if (t.derived_from !== null && t.derived_from !== undefined) s += "<br>derived from trial " + t.derived_from + " (a free variant: scored from its pools, nothing generated)";
  if (p) {
    s += "<br>model " + esc(p.model) + "  prompt <b>" + esc(p.prompt.id || "") + "</b>";
    for (const [bin, a] of Object.entries(p.bins || {})) s += "<br>bin " + esc(bin) + ": " + esc(allocText(a));
  }
  return s;
}

function showPolicy(n) {
  const t = byNumber.get(n);
  const p = policyOf(n);
  const box = el("policy-detail");
  if (!t || !p) return;
  const pr = p.prompt;
  let h = "<h3>trial " + n + (t.front ? " (on the Pareto front)" : "") + "</h3>";
  h += "<p>accuracy " + fmt(t.acc) + (t.dev_acc ? " [" + fmt(t.dev_acc.low) + ", " + fmt(t.dev_acc.high) + "]" : "") +
       ", mean tokens " + fmt(t.tok, 1) + (t.test_acc ? "; held-out accuracy " + fmt(t.test_acc.value) : "") + "</p>";
  h += "<p>model <code>" + esc(p.model) + "</code>, strategy family <code>" + esc(t.family) + "</code></p>";
  h += "<h4>prompt <code>" + esc(pr.id || "") + "</code></h4>";
  if (pr.description) h += "<p class=muted>" + esc(pr.description) + "</p>";
  if (pr.system) h += "<div class=label>system</div><pre class=prompt>" + esc(pr.system) + "</pre>";
  h += "<div class=label>user</div><pre class=prompt>" + esc(pr.user || "") + "</pre>";
  const other = Object.entries(pr).filter(([k]) => !["id", "system", "user", "description"].includes(k));
  if (other.length) h += "<p>" + other.map(([k, v]) => esc(k) + ": <code>" + esc(JSON.stringify(v)) + "</code>").join(", ") + "</p>";
  h += "<h4>difficulty: " + esc((p.difficulty || {}).source || "none") + "</h4><table><tr><th>bin</th><th>allocation</th></tr>";
  for (const [bin, a] of Object.entries(p.bins || {})) h += "<tr><td>" + esc(bin) + "</td><td><code>" + esc(allocText(a)) + "</code></td></tr>";
  h += "</table>";
  const rest = Object.entries(p).filter(([k]) => !["prompt", "bins", "model", "schema_version"].includes(k));
  if (rest.length) h += "<details><summary>more</summary><pre>" + esc(JSON.stringify(Object.fromEntries(rest), null, 2)) + "</pre></details>";
  box.innerHTML = h;
  box.dataset.trial = String(n);
}

const err = (iv, v) => (iv ? {array: [iv.high - v], arrayminus: [v - iv.low]} : {array: [0], arrayminus: [0]});
function errorBars(rows, accKey, valueOf) {
  const up = [], down = [];
  for (const r of rows) {
    const e = err(r[accKey], valueOf(r));
    up.push(e.array[0]);
    down.push(e.arrayminus[0]);
  }
  return {type: "data", symmetric: false, array: up, arrayminus: down, thickness: 1.2, width: 4};
}

function frontFigure() {
  const front = D.front.map((n) => byNumber.get(n));
  const base = {mode: "markers", type: "scatter", hoverinfo: "text", hoverlabel: {align: "left"}};
  const traces = [Object.assign({}, base, {
    name: "all trials (dev)", x: D.trials.map((t) => t.tok), y: D.trials.map((t) => t.acc),
    text: D.trials.map(hoverText), customdata: D.trials.map((t) => t.n),
    marker: {color: "rgba(120,120,140,0.45)", size: 7}})];
  traces.push(Object.assign({}, base, {
    name: "Pareto front (dev, " + levelOf(front, "dev_acc") + " CI)", mode: "lines+markers",
    line: {shape: "hv", color: "#222"}, marker: {size: 10, color: "#222"},
    x: front.map((t) => t.tok), y: front.map((t) => t.acc), text: front.map(hoverText),
    customdata: front.map((t) => t.n), error_y: errorBars(front, "dev_acc", (r) => r.acc)}));
  const tested = front.filter((t) => t.test_acc);
  if (tested.length) {
    traces.push(Object.assign({}, base, {
      name: "same policies, held-out (" + levelOf(tested, "test_acc") + " CI)", mode: "lines+markers",
      line: {shape: "hv", color: "crimson", dash: "dash"}, marker: {symbol: "square", size: 9, color: "crimson"},
      x: tested.map((t) => t.test_tok.value), y: tested.map((t) => t.test_acc.value),
      text: tested.map(hoverText), customdata: tested.map((t) => t.n),
      error_y: errorBars(tested, "test_acc", (r) => r.test_acc.value)}));
  }
  return {data: traces, layout: axes()};
}

function levelOf(rows, key) {
  const r = rows.find((x) => x[key]);
  return r ? Math.round(r[key].level * 100) + "%" : "no";
}

function axes() {
  return {hovermode: "closest", height: 440, margin: {l: 60, r: 20, t: 30, b: 50}, legend: {orientation: "h", y: -0.18},
          xaxis: {title: {text: "mean tokens per example (prompt + completion)"}, zeroline: false},
          yaxis: {title: {text: "accuracy"}, rangemode: "tozero"}};
}

function familyFigure() {
  const families = [...new Set(D.trials.map((t) => t.family))].sort();
  const data = [];
  families.forEach((fam, i) => {
    const rows = D.trials.filter((t) => t.family === fam).sort((a, b) => a.tok - b.tok || b.acc - a.acc);
    const color = PALETTE[i % PALETTE.length];
    data.push({type: "scatter", mode: "markers", name: fam, legendgroup: fam, x: rows.map((t) => t.tok),
               y: rows.map((t) => t.acc), text: rows.map(hoverText), hoverinfo: "text", customdata: rows.map((t) => t.n),
               marker: {color: color, size: 7, opacity: 0.6}, hoverlabel: {align: "left"}});
    const best = [];
    for (const t of rows) if (!best.length || t.acc > best[best.length - 1].acc) best.push(t);
    data.push({type: "scatter", mode: "lines", name: fam + " best so far", legendgroup: fam, showlegend: false,
               x: best.map((t) => t.tok), y: best.map((t) => t.acc), line: {shape: "hv", color: color}, hoverinfo: "skip"});
  });
  return {data: data, layout: axes()};
}
const PALETTE = ["#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf", "#bcbd22"];

function tokenFigure() {
  const rows = D.trials.filter((t) => t.derived_from === null || t.derived_from === undefined);
  const gen = D.tokens.replayed_source ? "replayed from the bank" : "generated by the engine";
  return {data: [
    {type: "bar", name: "completions " + gen, x: rows.map((t) => t.n), y: rows.map((t) => t.generated), marker: {color: "#d62728"}},
    {type: "bar", name: "completions served from the sample store", x: rows.map((t) => t.n), y: rows.map((t) => t.cached), marker: {color: "#2ca02c"}},
  ], layout: {barmode: "stack", height: 320, margin: {l: 60, r: 20, t: 30, b: 50}, xaxis: {title: {text: "trial"}}, yaxis: {title: {text: "completions"}},
              legend: {orientation: "h", y: -0.3}}};
}

function table(head, rows) {
  return "<table><tr>" + head.map((h) => "<th>" + esc(h) + "</th>").join("") + "</tr>" +
    rows.map((r) => "<tr>" + r.map((c) => "<td>" + c + "</td>").join("") + "</tr>").join("") + "</table>";
}

function allocationTable() {
  const rows = [];
  for (const n of D.front) {
    const t = byNumber.get(n), p = policyOf(n);
    if (!p) continue;
    const dev = t.dev_acc ? fmt(t.acc) + " [" + fmt(t.dev_acc.low, 2) + ", " + fmt(t.dev_acc.high, 2) + "]" : fmt(t.acc);
    const test = t.test_acc ? fmt(t.test_acc.value) + " [" + fmt(t.test_acc.low, 2) + ", " + fmt(t.test_acc.high, 2) + "]" : "";
    for (const [bin, a] of Object.entries(p.bins || {})) {
      const params = Object.entries(a.params || {}).map(([k, v]) => esc(k) + "=" + esc(v)).join(", ");
      const extra = Object.entries(a).filter(([k]) => !["strategy", "params", "temperature", "max_tokens"].includes(k))
        .map(([k, v]) => esc(k) + "=" + esc(typeof v === "object" ? JSON.stringify(v) : v)).join(", ");
      const from = t.derived_from !== null && t.derived_from !== undefined ? " <span class=muted>(derived from " + t.derived_from + ")</span>" : "";
      rows.push(["<a href='#' data-trial='" + n + "'>" + n + "</a>" + from, dev, test, fmt(t.tok, 1), esc(p.prompt.id || ""),
                 esc(bin), esc(a.model || p.model), esc(a.strategy), params, fmt(a.temperature, 2), esc(a.max_tokens), extra]);
    }
  }
  return table(["trial", "dev accuracy [CI]", "held-out accuracy [CI]", "mean tokens", "prompt", "bin", "model",
                "strategy", "parameters", "temperature", "max_tokens", "other"], rows);
}

function tokenTable() {
  const T = D.tokens;
  const rows = Object.entries(T.per_model).map(([m, v]) => [esc(m), v.trials, v.generated, v.replayed, v.cached, v.engine_tokens]);
  const t = T.totals;
  rows.push(["<b>all</b>", t.trials, t.generated, t.replayed, t.cached, t.engine_tokens]);
  const S = D.search || {};
  const how = S.derived || S.screened || S.raced_out
    ? "<p>" + S.proposed + " proposed trials, " + S.derived + " derived trials (free variants scored from the proposed trials' pools, nothing generated), " +
      S.screened + " settings screened, " + S.raced_out + " raced out (" + S.samples_saved + " samples not drawn).</p>" : "";
  return how + table(["model", "trials", "completions generated", "completions replayed (bank)", "completions from the sample store",
                "engine tokens (prompt + completion)"], rows);
}

function difficultySection() {
  const rep = D.difficulty;
  if (!rep) return "<p class=muted>This study has no probe or predictor bins, so there is nothing to compare with oracle bins.</p>";
  const rows = [];
  (function walk(obj, path) {
    if (obj && typeof obj === "object" && "exact" in obj && "spearman" in obj) {
      rows.push([esc(path.join(" / ")), fmt(obj.exact, 2), fmt(obj.within_one, 2), fmt(obj.spearman, 2), esc(obj.n ?? "")]);
      return;
    }
    if (obj && typeof obj === "object") for (const [k, v] of Object.entries(obj)) walk(v, path.concat([k]));
  })(rep, []);
  return (rows.length ? table(["bins of", "exact agreement with oracle bins", "within one bin", "Spearman", "examples"], rows) : "") +
    "<details><summary>difficulty_report.json</summary><pre>" + esc(JSON.stringify(rep, null, 2)) + "</pre></details>";
}

function settingsTable() {
  const rows = [];
  (function walk(obj, path) {
    if (obj && typeof obj === "object" && !Array.isArray(obj) && Object.keys(obj).length) {
      for (const [k, v] of Object.entries(obj)) walk(v, path.concat([k]));
    } else if (path.length) {
      rows.push([esc(path.join(".")), "<code>" + esc(typeof obj === "object" ? JSON.stringify(obj) : obj) + "</code>"]);
    }
  })(D.settings, []);
  return table(["setting", "value"], rows);
}

async function main() {
  el("allocations").innerHTML = allocationTable();
  el("token-table").innerHTML = tokenTable();
  el("difficulty").innerHTML = difficultySection();
  el("settings").innerHTML = settingsTable();
  document.querySelectorAll("a[data-trial]").forEach((a) => a.addEventListener("click", (e) => {
    e.preventDefault();
    showPolicy(Number(a.dataset.trial));
  }));
  const timings = {start: performance.now()};
  await loadPlotly();
  timings.plotly = performance.now();
  const config = {responsive: true, displaylogo: false};
  const plots = [["front-plot", frontFigure()], ["family-plot", familyFigure()], ["token-plot", tokenFigure()]];
  await Promise.all(plots.map(([id, fig]) => Plotly.newPlot(id, fig.data, fig.layout, config)));
  for (const id of ["front-plot", "family-plot"]) {
    el(id).on("plotly_hover", (ev) => showPolicy(ev.points[0].customdata));
    el(id).on("plotly_click", (ev) => showPolicy(ev.points[0].customdata));
  }
  if (D.front.length) showPolicy(D.front[D.front.length - 1]);
  timings.plots = performance.now();
  window.reportTimings = timings;
  window.reportReadyMs = performance.now();
  document.body.dataset.ready = "1";
}
main().catch((e) => showError("error: " + (e && e.stack ? e.stack : e)));
