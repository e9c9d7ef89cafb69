// The heta-fast page: submit a request to the service, follow its progress, draw the heatmap.
// No external code: this file, index.html and style.css are the whole page.
// Access: a service with a token sent this page only to a browser holding its session cookie
// (given by /login); the browser sends the cookie with every request here, and this script adds
// the X-Heta-Fast header the service asks of a cookie-authenticated POST or DELETE.
"use strict";

const $ = (id) => document.getElementById(id);
const COMPONENTS = ["flow", "curvature", "information"];
let special = new Set();
let current = null;   // {id, result}
let polling = null;

function headers(json) {
  const h = {"X-Heta-Fast": "page"};
  if (json) h["Content-Type"] = "application/json";
  return h;
}

async function api(method, path, body) {
  const response = await fetch(path, {method, headers: headers(body !== undefined), credentials: "same-origin",
                                      body: body === undefined ? undefined : JSON.stringify(body)});
  const data = await response.json().catch(() => ({}));
  if (response.status === 401) {  // the session ended (e.g. the service restarted with another token)
    window.location.assign("/login?next=" + encodeURIComponent(window.location.pathname));
  }
  if (!response.ok) throw new Error(data.detail || (response.status + " " + response.statusText));
  return data;
}

function setStatus(text, error) {
  $("status").textContent = text;
  $("status").className = error ? "error" : "";
}

async function loadModel() {
  try {
    const info = (await api("GET", "/v1/models")).models[0];
    special = new Set(info.special_tokens || []);
    $("model").textContent = `${info.name} · ${info.architecture || info.model_type} · ${info.dtype} · ${info.device}` +
      (info.max_context ? ` · max ${info.max_context} tokens` : "");
  } catch (err) {
    $("model").textContent = "model information: " + err.message;
  }
}

function requestBody() {
  // "Chat": the text is the user's message, rendered by the model's chat template on the service.
  const body = $("chat").checked ? {messages: [{role: "user", content: $("prompt").value}]} : {prompt: $("prompt").value};
  if (document.querySelector("input[name=mode]:checked").value === "generate") {
    body.generate = parseInt($("generate").value, 10);
  } else {
    body.target = $("target").value;
  }
  const options = {estimator: $("estimator").value,
                   components: [...document.querySelectorAll(".component:checked")].map((c) => c.value)};
  for (const name of ["beta", "gamma", "seed", "window_size"]) {
    const value = $(name).value.trim();
    if (value !== "") options[name] = Number(value);
  }
  body.options = options;
  return body;
}

async function run(event) {
  event.preventDefault();
  stopPolling();
  $("result").hidden = true;
  $("run").disabled = true;
  setStatus("submitting…");
  try {
    const job = await api("POST", "/v1/attributions", requestBody());
    follow(job);
  } catch (err) {
    setStatus(err.message, true);
    $("run").disabled = false;
  }
}

function follow(job) {
  current = {id: job.id, result: null};
  $("cancel").hidden = false;
  $("progress").hidden = false;
  const step = async () => {
    try {
      const view = await api("GET", "/v1/attributions/" + job.id);
      showProgress(view);
      if (["done", "failed", "cancelled"].includes(view.status)) return finish(view);
    } catch (err) {
      return finish({status: "failed", error: {type: "Error", message: err.message}});
    }
    polling = setTimeout(step, 150);
  };
  step();
}

function showProgress(view) {
  const p = view.progress;
  if (view.status === "queued") setStatus("queued");
  if (view.status === "running" && p) {
    setStatus(`${p.phase}: ${p.done}/${p.total} ${p.unit}`);
    $("progress").value = p.total ? p.done / p.total : 0;
  }
}

function stopPolling() {
  if (polling) clearTimeout(polling);
  polling = null;
}

function finish(view) {
  stopPolling();
  $("run").disabled = false;
  $("cancel").hidden = true;
  $("progress").hidden = true;
  if (view.status !== "done") {
    setStatus(`${view.status}: ${view.error ? view.error.type + ": " + view.error.message : ""}`, true);
    return;
  }
  const t = view.result.timings || {};
  const done = "done in " + Object.entries(t).map(([k, v]) => `${k} ${v.toFixed(2)}s`).join(", ");
  // The result is here; only the service's copy in its results folder is missing: say so.
  if (view.results_file_error) setStatus(`${done}; ${view.results_file_error}`, true);
  else setStatus(done);
  current.result = view.result;
  const select = $("target-select");
  select.innerHTML = "";
  select.append(new Option("all target tokens (sum)", "all"));
  view.result.target_tokens.forEach((tok, i) => select.append(new Option(`${i}: ${JSON.stringify(tok)}`, String(i))));
  const blob = new Blob([JSON.stringify(view.result, null, 1)], {type: "application/json"});
  $("download").href = URL.createObjectURL(blob);
  $("download").download = `attribution-${view.id}.json`;
  $("result").hidden = false;
  draw();
}

// One row per attributed context unit (a chat's template tokens are conditioning, not shown):
// {text, score, flow, curvature, information} for the chosen target.
function units(result, target, words, hideSpecial) {
  const pick = (matrix, i) => {
    if (!matrix) return null;
    return target === "all" ? matrix.reduce((s, row) => s + row[i], 0) : matrix[Number(target)][i];
  };
  let rows = result.context_tokens.map((text, i) => {
    const row = {text, score: pick(result.scores, i), index: i,
                 special: result.special ? result.special[i] : false,
                 segment: result.segments ? result.segments[i] : null};
    for (const c of COMPONENTS) row[c] = pick(result[c], i);
    return row;
  });
  if (result.attributed) rows = rows.filter((r) => result.attributed[r.index]);
  // The result's own special-token mask where it has one; older results: by the token's text.
  if (hideSpecial) rows = rows.filter((r) => !(result.special ? result.special[r.index] : special.has(r.text)));
  if (!words || result.unit === "words") return rows;
  // A word starts at a token beginning with white space, and never spans a special token or two
  // chat segments (Attribution.aggregate's rule).
  const out = [];
  let previous = null;
  for (const r of rows) {
    const boundary = previous !== null && (r.special || previous.special || r.segment !== previous.segment);
    previous = r;
    if (!out.length || /^\s/.test(r.text) || !r.text.trim() || boundary) {
      out.push({...r});
    } else {
      const w = out[out.length - 1];
      w.text += r.text;
      for (const k of ["score", ...COMPONENTS]) if (w[k] !== null) w[k] += r[k];
    }
  }
  return out;
}

function draw() {
  if (!current || !current.result) return;
  const rows = units(current.result, $("target-select").value, $("words").checked, $("hide-special").checked);
  const max = Math.max(1e-30, ...rows.map((r) => Math.abs(r.score)));
  const map = $("heatmap");
  map.innerHTML = "";
  let top = null;
  rows.forEach((r) => {
    const span = document.createElement("span");
    span.className = "tok";
    span.textContent = r.text;
    const w = Math.min(1, Math.abs(r.score) / max);
    span.style.background = r.score >= 0 ? `rgba(220,30,30,${w.toFixed(3)})` : `rgba(30,80,220,${w.toFixed(3)})`;
    span.dataset.score = String(r.score);
    span.dataset.tip = [`${JSON.stringify(r.text)}`, `score       ${fmt(r.score)}`,
                        ...COMPONENTS.map((c) => `${c.padEnd(11)} ${fmt(r[c])}`)].join("\n");
    span.title = span.dataset.tip;
    map.append(span);
    if (top === null || r.score > top.score) top = r;
  });
  $("top-token").textContent = top ? top.text : "";
  $("top-score").textContent = top ? fmt(top.score) : "";
}

function fmt(x) {
  return x === null || x === undefined ? "—" : Number(x).toExponential(4);
}

function hover(event) {
  const tip = $("tooltip");
  const span = event.target.closest(".tok");
  if (!span) { tip.hidden = true; return; }
  tip.textContent = span.dataset.tip;
  tip.style.left = (event.clientX + 12) + "px";
  tip.style.top = (event.clientY + 12) + "px";
  tip.hidden = false;
}

$("form").addEventListener("submit", run);
$("cancel").addEventListener("click", () => { if (current) api("DELETE", "/v1/attributions/" + current.id).catch(() => {}); });
for (const id of ["target-select", "words", "hide-special"]) $(id).addEventListener("change", draw);
$("heatmap").addEventListener("mousemove", hover);
$("heatmap").addEventListener("mouseleave", () => { $("tooltip").hidden = true; });
loadModel();
