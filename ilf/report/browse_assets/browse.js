// The ILF image browser: static, offline. data/index.js sets ILF_BROWSE_INDEX; each group's data/g<k>.js calls
// ILF_BROWSE_GROUP(...) when it is loaded (script tags work from file://, fetch does not).
"use strict";
(function () {
  const INDEX = window.ILF_BROWSE_INDEX;
  const $ = (id) => document.getElementById(id);
  const groups = {};        // id -> loaded group data
  const pending = {};       // id -> callbacks waiting for the group's script
  const state = { group: null, metric: "", a: null, b: null, order: "asc", page: 1, size: 20, find: "", thumb: 128 };
  let view = [];            // the current group's item positions, filtered and sorted
  let zoomAt = null;        // [item position, row index] of the zoomed image

  function fail(message) {
    $("status").textContent = message;
    $("status").className = "error";
    console.error(message);
  }

  function fmt(v) {
    if (v === null || v === undefined) return "--";
    if (typeof v !== "number" || Number.isInteger(v)) return String(v);  // e.g. "dynamic" block forwards
    return String(parseFloat(v.toPrecision(4)));
  }

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (k === "class") node.className = v; else if (k === "text") node.textContent = v; else node.setAttribute(k, v);
    }
    for (const c of children) if (c !== null && c !== undefined) node.append(c);
    return node;
  }

  function metricLabel(m) {
    if (m === "seconds") return "seconds";
    if (m === "block_forwards") return "block forwards";
    return (INDEX.metrics[m] && INDEX.metrics[m].label) || m;
  }

  function rowLabel(name) {
    const r = INDEX.rows[name];
    return r ? `${r.label} (${r.method}, ${r.steps} steps)` : name;
  }

  // ------------------------------------------------------------------------------------------ state <-> URL
  function readHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    for (const k of ["group", "metric", "a", "b", "order", "find"]) if (p.has(k)) state[k] = p.get(k);
    for (const k of ["page", "size", "thumb"]) if (p.has(k) && Number(p.get(k)) > 0) state[k] = Number(p.get(k));
  }

  function writeHash() {
    const p = new URLSearchParams();
    for (const k of ["group", "metric", "a", "b", "order", "page", "size", "find", "thumb"]) {
      if (state[k] !== null && !(k === "find" && state[k] === "")) p.set(k, state[k]);  // b= : compare with nothing
    }
    history.replaceState(null, "", "#" + p.toString());
  }

  // ------------------------------------------------------------------------------------------ loading
  window.ILF_BROWSE_GROUP = function (data) {
    groups[data.id] = data;
    (pending[data.id] || []).forEach((f) => f(data));
    delete pending[data.id];
  };

  function loadGroup(info, done) {
    if (groups[info.id]) return done(groups[info.id]);
    if (pending[info.id]) return pending[info.id].push(done);
    pending[info.id] = [done];
    const s = el("script", { src: info.file });
    s.onerror = () => fail(`cannot load ${info.file} (this folder is incomplete: run ilf browse again)`);
    document.body.append(s);
  }

  // ------------------------------------------------------------------------------------------ sorting
  function series(data, row, metric) {
    const c = data.cells[row];
    if (!c) return null;
    if (metric === "seconds") return c.sec;
    if (metric === "block_forwards") return c.bf;
    return c.m[metric] || null;
  }

  function sortValue(data, pos) {
    if (!state.metric) return null;
    const a = series(data, state.a, state.metric);
    if (!a || a[pos] === null) return null;
    if (!state.b) return a[pos];
    const b = series(data, state.b, state.metric);
    return b && b[pos] !== null ? a[pos] - b[pos] : null;
  }

  function computeView(data) {
    const find = state.find.trim().toLowerCase();
    let positions = data.items.map((_, i) => i);
    if (find) positions = positions.filter((i) => data.items[i][1].toLowerCase().includes(find));
    if (state.metric) {
      const sign = state.order === "desc" ? -1 : 1;
      const keyed = positions.map((i) => [i, sortValue(data, i)]);
      keyed.sort((x, y) => (x[1] === null) - (y[1] === null) || (x[1] === null ? 0 : sign * (x[1] - y[1])) || x[0] - y[0]);
      positions = keyed.map((x) => x[0]);
    }
    return positions;
  }

  // ------------------------------------------------------------------------------------------ rendering
  function fillSelect(select, options, value) {
    select.replaceChildren(...options.map(([v, text]) => el("option", { value: v, text })));
    select.value = options.some(([v]) => v === value) ? value : (options[0] || [""])[0];
    return select.value;
  }

  function setupControls(info, data) {
    const metrics = [["", "prompt order"], ...data.metrics.map((m) => [m, metricLabel(m)]),
                     ["seconds", "seconds"], ["block_forwards", "block forwards"]];
    state.metric = fillSelect($("metric"), metrics, state.metric);
    const rows = data.rows.map((r) => [r, rowLabel(r)]);
    state.a = fillSelect($("row-a"), rows, state.a || info.compare[0] || "");
    state.b = fillSelect($("row-b"), [["", "(nothing: the value itself)"], ...rows],
                         state.b === null ? info.compare[1] || "" : state.b);
    $("order").value = state.order;
    $("page-size").value = String(state.size);
    $("size").value = String(state.thumb);
    $("find").value = state.find;
    const off = !state.metric;
    for (const id of ["row-a", "row-b", "order"]) $(id).disabled = off;
  }

  function heading(name) {
    const r = INDEX.rows[name] || {};
    const th = el("th", { "data-row": name, class: name === state.a && state.metric ? "a" : name === state.b && state.metric ? "b" : "" },
                  el("b", { text: r.label || name }), el("code", { text: name }),
                  el("span", { class: "row-info", text: `${r.method}, ${r.steps} steps, ${fmt(r.block_forwards)} ` +
                               `block forwards, ${fmt(r.seconds)} s/img (median), ${r.images} images` }));
    const metrics = Object.entries(r.metrics || {}).filter(([, v]) => v && v.value !== null && v.value !== undefined);
    if (metrics.length) {
      th.append(el("div", { class: "row-metrics", text: metrics.map(([m, v]) =>
        `${metricLabel(m)} ${fmt(v.value)}` + (v.ci_low !== null && v.ci_low !== undefined ? ` [${fmt(v.ci_low)}, ${fmt(v.ci_high)}]` : "")).join("; ") }));
    }
    th.title = name;
    return th;
  }

  function cell(data, row, pos, rowIndex) {
    const c = data.cells[row];
    const src = c.img[pos];
    if (!src) return el("td", { class: "missing", text: "no image" });
    const img = el("img", { src, alt: `${row}: ${data.items[pos][1]}`, "data-pos": pos, "data-col": rowIndex });
    const td = el("td", { class: "cell" }, img);
    td.append(el("span", { class: "v", text: `${fmt(c.sec[pos])} s, ${fmt(c.bf[pos])} blocks` }));
    for (const m of data.metrics) {
      const v = c.m[m][pos];
      if (v === null || v === undefined) continue;
      td.append(el("span", { class: "v" + (m === state.metric ? " sorted" : ""), text: `${metricLabel(m)} ${fmt(v)}` }));
    }
    return td;
  }

  function render() {
    const info = INDEX.groups.find((g) => g.id === state.group);
    const data = groups[state.group];
    view = computeView(data);
    const pages = Math.max(1, Math.ceil(view.length / state.size));
    state.page = Math.min(Math.max(1, state.page), pages);
    const start = (state.page - 1) * state.size;
    const shown = view.slice(start, start + state.size);
    document.documentElement.style.setProperty("--thumb", state.thumb + "px");

    const thead = $("grid").tHead;
    thead.replaceChildren(el("tr", {}, el("th", { text: "prompt" }), ...data.rows.map(heading)));
    const tbody = $("grid").tBodies[0];
    tbody.replaceChildren(...shown.map((pos) => {
      const [key, prompt, sample] = data.items[pos];
      const [promptId, seed] = key.split("|");
      const item = el("td", { class: "item", title: `prompt ${promptId}, seed ${seed}` }, el("span", { text: prompt }),
                      el("div", { class: "sample", text: `${promptId}, sample ${sample === null ? "--" : sample}` }));
      const v = sortValue(data, pos);
      if (state.metric) {
        item.append(el("span", { class: "sort", text: `${state.b ? "\u0394 " : ""}${metricLabel(state.metric)}: ${fmt(v)}` }));
      }
      const tr = el("tr", { "data-key": key, "data-pos": pos, "data-sort": v === null ? "" : String(v) }, item);
      data.rows.forEach((row, j) => tr.append(cell(data, row, pos, j)));
      return tr;
    }));

    $("page-info").textContent = `page ${state.page} of ${pages}`;
    $("first").disabled = $("prev").disabled = state.page <= 1;
    $("last").disabled = $("next").disabled = state.page >= pages;
    const order = state.metric ? `sorted by ${sortText()}, ${state.order === "asc" ? "lowest" : "highest"} first ` +
      `(underlined: blue the row sorted${state.b ? ", orange the row subtracted" : ""})` : "in prompt order";
    $("status").className = "";
    $("status").textContent = `${info.title}: ${data.rows.length} rows, ${data.items.length} prompts and seeds` +
      (state.find ? ` (${view.length} match "${state.find}")` : "") + `, ${order}. ` +
      "Images with the same prompt and seed start from the same noise in every row. Click an image to zoom.";
    document.documentElement.style.setProperty("--bar-height", $("bar").offsetHeight + "px");
    writeHash();
    document.body.dataset.ready = `${state.group}|${state.page}`;
  }

  function sortText() {
    const name = metricLabel(state.metric);
    const a = INDEX.rows[state.a] ? INDEX.rows[state.a].label : state.a;
    if (!state.b) return `${name} of ${a}`;
    const b = INDEX.rows[state.b] ? INDEX.rows[state.b].label : state.b;
    return `${name}: ${a} minus ${b}`;
  }

  function showGroup(id) {
    const info = INDEX.groups.find((g) => g.id === id) || INDEX.groups[0];
    state.group = info.id;
    delete document.body.dataset.ready;
    $("status").textContent = `loading ${info.title} ...`;
    loadGroup(info, (data) => {
      if (state.group !== info.id) return;
      setupControls(info, data);
      render();
    });
  }

  // ------------------------------------------------------------------------------------------ zoom
  function zoom(pos, col) {
    const data = groups[state.group];
    const rows = data.rows;
    col = (col + rows.length) % rows.length;
    zoomAt = [pos, col];
    const row = rows[col];
    const src = data.cells[row].img[pos];
    if (src) $("zoom-img").src = src;
    $("zoom-img").hidden = !src;
    const values = data.metrics.map((m) => [m, data.cells[row].m[m][pos]]).filter(([, v]) => v !== null && v !== undefined);
    $("zoom-caption").textContent = `${rowLabel(row)}: ${data.items[pos][1]} | ${fmt(data.cells[row].sec[pos])} s, ` +
      `${fmt(data.cells[row].bf[pos])} block forwards` + values.map(([m, v]) => ` | ${metricLabel(m)} ${fmt(v)}`).join("") +
      (src ? "" : " (no image)");
    $("zoom").hidden = false;
  }

  function closeZoom() { $("zoom").hidden = true; zoomAt = null; }

  // ------------------------------------------------------------------------------------------ wiring
  function start() {
    if (!INDEX) return fail("data/index.js is missing or did not load: run ilf browse again");
    document.title = `ILF image browser: ${INDEX.title}`;
    $("title").textContent = `ILF image browser: ${INDEX.title} (${INDEX.world} world)`;
    readHash();
    $("group").replaceChildren(...INDEX.groups.map((g) => el("option", { value: g.id, text: `${g.title} (${g.rows.length} rows)` })));
    $("group").value = INDEX.groups.some((g) => g.id === state.group) ? state.group : INDEX.groups[0].id;
    $("group").addEventListener("change", () => { state.group = $("group").value; state.metric = ""; state.a = state.b = null;
                                                  state.page = 1; showGroup(state.group); });
    const rerender = (key, read) => $(key).addEventListener(key === "find" ? "input" : "change", () => {
      read(); state.page = 1; setupControls(INDEX.groups.find((g) => g.id === state.group), groups[state.group]); render();
    });
    rerender("metric", () => {  // worst first for the sorted row; compare with nothing where the other row has no value
      state.metric = $("metric").value;
      const m = state.metric;
      if (!m) return;
      const lower = m === "seconds" || m === "block_forwards" || (INDEX.metrics[m] || {}).better === "lower";
      state.order = lower ? "desc" : "asc";
      const other = state.b ? series(groups[state.group], state.b, m) : null;
      if (other && other.every((v) => v === null)) state.b = "";  // e.g. psnr_ref of the reference row itself
    });
    rerender("row-a", () => { state.a = $("row-a").value; });
    rerender("row-b", () => { state.b = $("row-b").value; });
    rerender("order", () => { state.order = $("order").value; });
    rerender("find", () => { state.find = $("find").value; });
    rerender("page-size", () => { state.size = Number($("page-size").value); });
    $("size").addEventListener("change", () => { state.thumb = Number($("size").value); render(); });
    const go = (page) => () => { state.page = page(); render(); window.scrollTo(0, 0); };
    $("first").addEventListener("click", go(() => 1));
    $("prev").addEventListener("click", go(() => state.page - 1));
    $("next").addEventListener("click", go(() => state.page + 1));
    $("last").addEventListener("click", go(() => Infinity));
    $("grid").addEventListener("click", (e) => {
      if (e.target.tagName === "IMG") zoom(Number(e.target.dataset.pos), Number(e.target.dataset.col));
    });
    $("zoom").addEventListener("click", closeZoom);
    document.addEventListener("keydown", (e) => {
      if (zoomAt === null) return;
      if (e.key === "Escape") closeZoom();
      else if (e.key === "ArrowRight") zoom(zoomAt[0], zoomAt[1] + 1);
      else if (e.key === "ArrowLeft") zoom(zoomAt[0], zoomAt[1] - 1);
    });
    showGroup($("group").value);
  }

  start();
})();
