// lorakit ui: picking runs on the runs list, and the compare page (curves overlaid, the
// config keys that differ, sample grids). Run text goes in with textContent only.
"use strict";
(() => {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const el = (tag, text, cls) => {
    const e = document.createElement(tag);
    if (text != null) e.textContent = String(text);
    if (cls) e.className = cls;
    return e;
  };
  const COLOURS = 6;

  // -- the runs list: a tick box on every row, kept across its refreshes ---------------------
  function picker() {
    const picked = new Set();
    const button = $("#compare-selected");
    const body = $("#runs tbody");
    const update = () => { button.disabled = picked.size < 2; };
    function decorate() {
      for (const row of body.rows) {
        const run = row.dataset.run;
        if (run == null || row.querySelector("input.pick-run")) continue;
        const box = el("input", null, "pick-run");
        box.type = "checkbox";
        box.title = "compare";
        box.checked = picked.has(run);
        box.onchange = () => { if (box.checked) picked.add(run); else picked.delete(run); update(); };
        const cell = el("td");
        cell.append(box);
        row.prepend(cell);
      }
    }
    new MutationObserver(decorate).observe(body, { childList: true });
    decorate();
    button.onclick = () => {
      const query = new URLSearchParams();
      picked.forEach((run) => query.append("run", run));
      location.href = "/compare?" + query.toString();
    };
  }

  // -- the compare page ----------------------------------------------------------------------
  function draw(data, axis) {
    const series = [];
    data.runs.forEach((run, i) => {
      const cls = "run" + (i % COLOURS);
      const x = axis === "time" ? 1 : 0;
      series.push({ points: run.curves.loss.map((p) => [p[x], p[2]]), cls, label: "" });
      series.push({ points: run.curves.eval_loss.map((p) => [p[x], p[2]]), cls, label: "", dots: true });
    });
    const svg = $("#compare-chart");
    lk.chart(svg, series, axis === "time" ? "seconds" : "step");
    svg.dataset.lines = String(svg.querySelectorAll("polyline").length);
  }

  function legend(data) {
    const list = $("#compare-runs");
    list.textContent = "";
    data.runs.forEach((run, i) => {
      const item = el("li", null, "run" + (i % COLOURS));
      const link = el("a", run.name);
      link.href = "/runs/" + lk.runPath(run.name);
      item.append(el("span", "━ ", "swatch"), link, el("span", ` ${run.status}, ${run.steps} steps`, "muted"));
      list.append(item);
    });
  }

  function differences(data) {
    const head = $("#config-diff thead"), body = $("#config-diff tbody");
    head.textContent = ""; body.textContent = "";
    const top = el("tr");
    top.append(el("th", "key"), ...data.runs.map((r) => el("th", r.name)));
    head.append(top);
    for (const row of data.config) {
      const tr = el("tr");
      tr.dataset.key = row.key;
      tr.append(el("td", row.key, "key"), ...row.values.map((v) => el("td", v == null ? "(not set)" : v, v == null ? "muted" : "")));
      body.append(tr);
    }
    if (!data.config.length) {
      const tr = el("tr");
      const td = el("td", data.runs.length < 2 ? "one run: pick another on the runs list to see differences"
        : "the configs are the same (output_dir aside)", "muted");
      td.colSpan = data.runs.length + 1;
      tr.append(td);
      body.append(tr);
    }
  }

  function grids(data) {
    const root = $("#sample-grids");
    root.textContent = "";
    for (const run of data.runs) {
      const s = run.samples;
      if (!s.steps.length) continue;
      root.append(el("h3", run.name));
      const table = el("table", null, "sample-grid");
      table.dataset.run = run.name;
      const top = el("tr");
      top.append(el("th", "step"), ...s.prompts.map((p) => el("th", p || "(prompt)")));
      table.append(top);
      s.steps.forEach((step, r) => {
        const tr = el("tr");
        tr.append(el("th", step));
        for (const rel of s.cells[r]) {
          const td = el("td");
          if (rel) {
            const img = el("img");
            img.src = "/runs/" + lk.runPath(run.name) + "/files/" + lk.runPath(rel);
            img.alt = `step ${step}`;
            td.append(img);
          }
          tr.append(td);
        }
        table.append(tr);
      });
      root.append(table);
    }
    if (!root.childNodes.length) root.append(el("p", "no sample images in these runs", "muted"));
  }

  async function comparePage() {
    const names = new URLSearchParams(location.search).getAll("run");
    if (!names.length) return;
    $("#compare-help").hidden = true;
    const query = new URLSearchParams();
    names.forEach((n) => query.append("run", n));
    const data = await (await fetch("/api/compare?" + query.toString())).json();
    if (data.ok === false) { $("#compare-error").textContent = data.error; return; }
    const axis = () => $("input[name='x-axis']:checked").value;
    document.querySelectorAll("input[name='x-axis']").forEach((r) => { r.onchange = () => draw(data, axis()); });
    legend(data);
    draw(data, axis());
    differences(data);
    grids(data);
    document.body.dataset.compared = String(data.runs.length);
  }

  if (document.body.dataset.page === "runs") picker();
  if (document.body.dataset.page === "compare") comparePage();
})();
