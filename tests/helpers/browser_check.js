// Loaded into a copy of the image browser's index.html before its own scripts (tests/test_report_browse.py): records
// every error (uncaught exceptions, console.error, resources that fail to load), then drives the page like a person
// (every group, a sort by a metric difference both ways, every page, the zoom) and writes what it saw as JSON into
// <pre id="ilf-check">, which `chromium --dump-dom` prints.
"use strict";
(function () {
  const errors = [];
  window.addEventListener("error", (e) => {
    const t = e.target;
    errors.push(t && t !== window ? `failed to load ${t.src || t.href}` : `${e.message} (${e.filename}:${e.lineno})`);
  }, true);
  window.addEventListener("unhandledrejection", (e) => errors.push(`unhandled rejection: ${e.reason}`));
  const consoleError = console.error;
  console.error = (...args) => { errors.push(args.join(" ")); consoleError.apply(console, args); };

  const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms));
  async function until(condition, what) {
    for (let waited = 0; waited < 20000; waited += 25) {
      if (condition()) return;
      await sleep(25);
    }
    throw new Error(`timed out waiting for ${what}`);
  }
  const $ = (id) => document.getElementById(id);
  function set(id, value) {
    const node = $(id);
    node.value = value;
    node.dispatchEvent(new Event(node.tagName === "INPUT" ? "input" : "change"));
  }
  const ready = () => document.body.dataset.ready;
  const shownRows = () => [...document.querySelectorAll("#grid tbody tr")].map((tr) => ({
    key: tr.dataset.key, sort: tr.dataset.sort === "" ? null : Number(tr.dataset.sort)}));

  async function images() {
    const imgs = () => [...document.querySelectorAll("#grid img")];
    await until(() => imgs().every((i) => i.complete), "the page's images");
    return { count: imgs().length, broken: imgs().filter((i) => i.naturalWidth === 0).map((i) => i.getAttribute("src")) };
  }

  async function pickGroup(id) {
    set("group", id);
    await until(() => ready() === `${id}|1`, `group ${id}`);
  }

  async function checkGroups(index, out) {
    for (const g of index.groups) {
      await pickGroup(g.id);
      out.groups[g.id] = { ...(await images()), items: g.items, rows: g.rows.length, shown: shownRows().length,
                           columns: document.querySelectorAll("#grid thead th").length - 1 };
    }
  }

  async function checkSorts(index, wants, out) {
    out.sorts = [];
    for (const want of wants) {  // {group, metric, a, b}: what to pick; left out: the page's own choice
      const group = index.groups.find((g) => g.id === want.group) || index.groups.find((g) => g.rows.length > 1) ||
        index.groups[0];
      if (ready() !== `${group.id}|1`) await pickGroup(group.id);
      set("page-size", "100");
      set("metric", want.metric || [...$("metric").options].map((o) => o.value).find((v) => v));
      if (want.a !== undefined) set("row-a", want.a);
      if (want.b !== undefined) set("row-b", want.b);
      const sorted = { defaultOrder: $("order").value };
      for (const order of ["asc", "desc"]) {
        set("order", order);
        sorted[order] = shownRows();
      }
      out.sorts.push({ group: group.id, metric: $("metric").value, a: $("row-a").value, b: $("row-b").value, ...sorted,
                       status: $("status").textContent, hash: location.hash });
    }
  }

  async function checkPaging(index, out) {
    const group = index.groups.reduce((x, y) => (y.items > x.items ? y : x));
    await pickGroup(group.id);
    set("metric", "");
    set("page-size", "10");
    const pages = [];
    for (;;) {
      const loaded = await images();
      pages.push({ info: $("page-info").textContent, keys: shownRows().map((r) => r.key), broken: loaded.broken,
                   images: loaded.count });
      if ($("next").disabled || pages.length > 1000) break;
      const before = ready();
      $("next").click();
      await until(() => ready() !== before, "the next page");
    }
    $("first").click();
    await until(() => ready() === `${group.id}|1`, "the first page");
    out.paging = { group: group.id, items: group.items, pages, backToFirst: $("page-info").textContent };
  }

  async function checkZoom(out) {
    const img = document.querySelector("#grid img");
    img.click();
    const zoomed = $("zoom-img");
    await until(() => !$("zoom").hidden && zoomed.complete, "the zoomed image");
    const first = { src: zoomed.getAttribute("src"), width: zoomed.naturalWidth, shownWidth: zoomed.width,
                    caption: $("zoom-caption").textContent };
    document.dispatchEvent(new KeyboardEvent("keydown", { key: "ArrowRight" }));
    const next = zoomed.getAttribute("src");
    document.dispatchEvent(new KeyboardEvent("keydown", { key: "Escape" }));
    out.zoom = { clicked: img.getAttribute("src"), first, next, closed: $("zoom").hidden };
  }

  async function run() {
    const out = { errors, groups: {} };
    try {
      await until(() => ready(), "the first render");
      const index = window.ILF_BROWSE_INDEX;
      out.title = document.title;
      await checkGroups(index, out);
      await checkSorts(index, (window.ILF_CHECK || {}).sorts || [{}], out);
      await checkPaging(index, out);
      await checkZoom(out);
    } catch (err) {
      out.fatal = String(err && err.stack ? err.stack : err);
    }
    const pre = document.createElement("pre");
    pre.id = "ilf-check";
    pre.textContent = JSON.stringify(out);
    document.body.append(pre);
  }

  window.addEventListener("load", run);
})();
