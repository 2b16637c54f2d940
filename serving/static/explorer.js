// collabfeat explorer: browse, query, brush along the ranking, compare queries' curves.
"use strict";
const STRIP = 12, PAGE = 48;
const state = { info: null, set: null, page: 0, pages: 1, queries: [], nextId: 1, lastUpload: null };
window.explorerState = state;   // read by the browser tests
const $ = (id) => document.getElementById(id);
const status = (text) => { $("status").textContent = text; };

async function api(path, options) {
  const res = await fetch(path, options);
  const body = await res.json();
  if (!res.ok) throw new Error(body.error || res.statusText);
  return body;
}

function thumb(id, label, size) {
  const img = document.createElement("img");
  img.className = "thumb";
  img.src = `/img/${encodeURIComponent(id)}?size=${size || 72}`;
  img.dataset.id = id;
  img.alt = img.title = label == null ? id : `${id} (label ${label})`;
  img.addEventListener("click", () => query({ set: state.set, source: "item", key: id }));
  img.addEventListener("mouseenter", () => mark(id));
  return img;
}

// --- browsing ---------------------------------------------------------------------------------
async function showPage(page) {
  const data = await api(`/api/items?page=${page}&size=${PAGE}&order=map`);
  state.page = data.page; state.pages = data.pages;
  $("grid").replaceChildren(...data.items.map((it) => thumb(it.id, it.label)));
  $("pageinfo").textContent = `page ${data.page + 1} of ${data.pages}`;
}

function facetColours(m, facet) {
  return (m.facets[facet] || m.labels).map((l) => (l == null ? 0 : Number(l)));
}

async function showMap() {
  const m = await api("/api/map");
  state.map = m;
  state.colourBy = Object.keys(m.facets || {})[0] || null;
  const facets = Object.keys(m.facets || {});
  $("facet").replaceChildren(...facets.map((f) => Object.assign(document.createElement("option"), { value: f, textContent: f })));
  $("colour-by").hidden = facets.length === 0;
  const labels = facets.length ? facetColours(m, facets[0]) : m.labels.map((l) => (l == null ? 0 : Number(l)));
  // Every item as a density layer; a sample of them as points to hover and click.
  // (square-root scale: a few dense cells would otherwise wash out the rest)
  const density = { type: "heatmap", x: m.density.x, y: m.density.y, z: m.density.z.map((r) => r.map(Math.sqrt)),
    hoverinfo: "skip", showscale: false, zsmooth: "best",
    colorscale: [[0, "rgba(255,255,255,0)"], [0.05, "rgba(60,60,110,0.25)"], [1, "rgba(30,30,80,0.8)"]] };
  Plotly.newPlot("map", [density, { type: "scattergl", mode: "markers", x: m.x, y: m.y, text: m.ids,
    marker: { size: 5, color: labels, colorscale: "Portland", opacity: 0.8 },
    hovertemplate: "%{text}<extra></extra>" }],
    { margin: { t: 28, l: 30, r: 10, b: 30 }, dragmode: "pan",
      title: { text: m.ids.length < m.total ? `${m.ids.length} of ${m.total} items as points; shading: all of them`
                                             : `${m.total} items`, font: { size: 12 } } }, { responsive: true });
  $("map").on("plotly_click", (ev) => query({ set: state.set, source: "item", key: ev.points[0].text }));
  $("map").on("plotly_hover", (ev) => mark(ev.points[0].text));
}

function tab(which) {
  $("tab-grid").classList.toggle("active", which === "grid");
  $("tab-map").classList.toggle("active", which === "map");
  $("grid").hidden = $("pager").hidden = which !== "grid";
  $("map").hidden = which !== "map";
  $("colour-by").hidden = which !== "map" || !state.map || !Object.keys(state.map.facets || {}).length;
  if (which === "map" && !$("map").dataset.drawn) { $("map").dataset.drawn = "1"; showMap(); }
}

// --- queries ----------------------------------------------------------------------------------
async function query(spec) {
  status(`querying ${spec.key} with ${spec.set} features ...`);
  try {
    addRow(await api(`/api/query?set=${encodeURIComponent(spec.set)}&source=${spec.source}&key=${encodeURIComponent(spec.key)}`));
    status("");
  } catch (e) { status(`query failed: ${e.message}`); }
}

async function upload(file) {
  status(`embedding ${file.name} ...`);
  try {
    const data = await api(`/api/upload?set=${encodeURIComponent(state.set)}`, { method: "POST", body: file });
    state.lastUpload = file;
    addRow(data, URL.createObjectURL(file), file.name);
    status("");
  } catch (e) { status(`upload failed: ${e.message}`); }
}

function addRow(data, imageUrl, name) {
  const q = { id: state.nextId++, spec: data.query, data, start: 0 };
  const label = data.query.source === "item" ? data.query.key : `upload ${name || data.query.key}`;
  q.name = `#${q.id} ${label} [${data.query.set}]`;
  const row = document.createElement("div");
  row.className = "row"; row.dataset.query = q.id; row.dataset.testid = "query-row";
  const img = document.createElement("img");
  img.className = "qimg";
  img.src = imageUrl || `/img/${encodeURIComponent(data.query.key)}?size=100`;
  const right = document.createElement("div");
  const title = document.createElement("div");
  title.className = "title";
  title.innerHTML = `<span></span><button class="close" title="remove">&times;</button>`;
  title.firstChild.textContent = q.name;
  title.lastChild.addEventListener("click", () => removeRow(q));
  const curve = document.createElement("div");
  curve.className = "curve";
  right.append(title, curve);
  const strip = document.createElement("div");
  strip.className = "strip"; strip.dataset.testid = "strip";
  row.append(img, right, strip);
  $("rows").prepend(row);
  Object.assign(q, { row, curve, strip });
  state.queries.push(q);
  const n = data.curve.rank[data.curve.rank.length - 1];
  Plotly.newPlot(curve, [{ x: data.curve.rank, y: data.curve.sim, mode: "lines", name: "similarity" }], {
    margin: { t: 5, l: 45, r: 10, b: 30 }, showlegend: false,
    xaxis: { title: "rank", range: [1, Math.min(n, 60)], rangeslider: { thickness: 0.18 } },
    yaxis: { title: "similarity" } }, { displayModeBar: false, responsive: true });
  // The brush: the range slider's window picks which ranks the strip shows.
  curve.on("plotly_relayout", (ev) => {
    const lo = ev["xaxis.range[0]"] ?? (ev["xaxis.range"] || [])[0];
    if (lo !== undefined) showStrip(q, Math.max(0, Math.round(lo) - 1));
  });
  showStrip(q, 0);
  drawSummary();
}

function showStrip(q, start) {
  const nb = q.data.neighbours;
  q.start = Math.min(start, Math.max(0, nb.length - STRIP));
  q.strip.replaceChildren(...nb.slice(q.start, q.start + STRIP).map((n, i) => {
    const fig = document.createElement("figure");
    const cap = document.createElement("figcaption");
    cap.textContent = `${q.start + i + 1}: ${n.score.toFixed(3)}`;
    fig.append(thumb(n.id, n.label, 64), cap);
    return fig;
  }));
}

function removeRow(q) {
  state.queries = state.queries.filter((x) => x !== q);
  Plotly.purge(q.curve); q.row.remove(); drawSummary();
}

function drawSummary(marks) {
  const traces = state.queries.map((q) => ({ x: q.data.curve.rank, y: q.data.curve.sim, mode: "lines", name: q.name }));
  if (marks) traces.push(marks);
  Plotly.react("summary", traces, { margin: { t: 10, l: 45, r: 10, b: 35 }, xaxis: { title: "rank", type: "log" },
    yaxis: { title: "similarity" }, legend: { font: { size: 10 } } }, { displayModeBar: false, responsive: true });
}

// Hovering an image marks where it falls on every query's curve.
let markToken = 0;
async function mark(id) {
  if (!state.queries.length) return;
  const token = ++markToken;
  const pos = await Promise.all(state.queries.map((q) => api(
    `/api/position?item=${encodeURIComponent(id)}&set=${encodeURIComponent(q.spec.set)}&source=${q.spec.source}&key=${encodeURIComponent(q.spec.key)}`)));
  if (token !== markToken) return;
  state.marked = { id, positions: pos };
  drawSummary({ x: pos.map((p) => p.rank), y: pos.map((p) => p.sim), mode: "markers+text", name: `${id}`,
    text: state.queries.map((q) => `#${q.id}`), textposition: "top center",
    marker: { size: 11, symbol: "diamond", color: "#e6550d" } });
}

// --- start ------------------------------------------------------------------------------------
async function main() {
  state.info = await api("/api/info");
  state.set = state.info.served;
  $("model").textContent = `${state.info.model} v${state.info.version}, ${state.info.items} items`;
  for (const s of state.info.feature_sets) {
    const o = document.createElement("option");
    o.value = s; o.textContent = s === state.info.served ? `${s} (served)` : s;
    $("set").append(o);
  }
  $("set").addEventListener("change", () => {
    // Switching features re-runs the newest query with them, as a new row to compare.
    state.set = $("set").value;
    const last = state.queries[state.queries.length - 1];
    if (!last) return;
    if (last.spec.source === "upload" && state.lastUpload) upload(state.lastUpload);
    else if (last.spec.source === "item") query({ ...last.spec, set: state.set });
  });
  $("upload").addEventListener("change", (ev) => { if (ev.target.files[0]) upload(ev.target.files[0]); });
  $("prev").addEventListener("click", () => state.page > 0 && showPage(state.page - 1));
  $("next").addEventListener("click", () => state.page + 1 < state.pages && showPage(state.page + 1));
  $("tab-grid").addEventListener("click", () => tab("grid"));
  $("tab-map").addEventListener("click", () => tab("map"));
  $("facet").addEventListener("change", (ev) => {
    // the points are the map's second trace; recolour them by the chosen facet
    Plotly.restyle("map", { "marker.color": [facetColours(state.map, ev.target.value)] }, [1]);
    state.colourBy = ev.target.value;
  });
  $("report").hidden = !state.info.has_report;
  $("map").hidden = !state.info.has_map;
  $("tab-map").disabled = !state.info.has_map;
  tab("grid");
  await showPage(0);
  drawSummary();
  document.body.dataset.ready = "1";
}
main().catch((e) => status(`failed to start: ${e.message}`));
