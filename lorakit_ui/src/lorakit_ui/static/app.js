// lorakit ui: a little vanilla JS over the server's JSON routes (no build step, no CDN).
"use strict";
const lk = (() => {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  const esc = (s) => String(s == null ? "" : s).replace(/[&<>"']/g,
    (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" }[c]));
  const fmt = (x, digits) => (x == null || Number.isNaN(x) ? "-" :
    Math.abs(x) >= 1e-3 && Math.abs(x) < 1e4 ? Number(x).toFixed(digits || 4) : Number(x).toExponential(2));

  async function post(url, body) {
    const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify(body || {}) });
    let data = {};
    try { data = await r.json(); } catch (e) { data = { ok: false, error: r.status + " " + r.statusText }; }
    return data;
  }

  // A run's name is a path (group/run): each segment encoded, so # ? % stay part of it.
  const runPath = (name) => String(name).split("/").map(encodeURIComponent).join("/");

  function busy(on) {
    const el = $("#busy");
    if (el) el.hidden = !on;
    $$("#validate, #save, #start").forEach((b) => { b.disabled = on; });
  }

  function seconds(s) {
    if (s == null) return "-";
    s = Math.round(s);
    return s < 60 ? s + " s" : s < 3600 ? Math.floor(s / 60) + " min " + (s % 60) + " s"
      : Math.floor(s / 3600) + " h " + Math.floor((s % 3600) / 60) + " min";
  }

  // The time left of a live run, from its steps so far.
  function eta(r) {
    const live = ["running", "starting", "stopping"].includes(r.status);
    if (!live || !r.total_steps || !r.steps || !r.elapsed_s || r.steps >= r.total_steps) return "";
    return ` <span class="eta">· ETA ${seconds(r.elapsed_s / r.steps * (r.total_steps - r.steps))}</span>`;
  }

  // -- the runs list -----------------------------------------------------------------------
  function runsPage() {
    async function refresh() {
      try {
        const data = await (await fetch("/api/runs")).json();
        $("#runs tbody").innerHTML = data.runs.map((r) => `<tr data-run="${esc(r.name)}">
          <td><a href="/runs/${runPath(r.name)}">${esc(r.name)}</a></td>
          <td><span class="status ${esc(r.status)}">${esc(r.status)}</span></td>
          <td>${r.total_steps ? `<progress max="${+r.total_steps}" value="${Math.min(+r.steps || 0, +r.total_steps)}"></progress> ` : ""}${esc(r.steps)}${r.total_steps ? " / " + esc(r.total_steps) : ""}</td>
          <td>${fmt(r.loss)}</td><td>${seconds(r.elapsed_s)}${eta(r)}</td>
          <td>${esc((r.started_at || "").replace("T", " ").slice(0, 19))}</td>
          <td>${r.error ? `<span class="error">${esc(r.error)}</span>` : ""}</td></tr>`).join("")
          || `<tr><td colspan="7" class="muted">no runs yet: <a href="/new">start one</a></td></tr>`;
        $("#runs-error").textContent = "";
        $("#runs-notes").innerHTML = (data.notes || []).map((n) => `<li>${esc(n)}</li>`).join("");
      } catch (e) { $("#runs-error").textContent = "the server does not answer"; }
    }
    refresh();
    setInterval(refresh, 2000);
  }

  // -- charts: inline SVG ------------------------------------------------------------------
  function chart(svg, series, xlabel) {
    const W = +svg.getAttribute("width"), H = +svg.getAttribute("height");
    const pad = { l: 56, r: 12, t: 10, b: 22 };
    const all = series.flatMap((s) => s.points);
    svg.setAttribute("data-points", String(series[0].points.length));
    if (!all.length) { svg.innerHTML = `<text x="${W / 2}" y="${H / 2}" class="muted" text-anchor="middle">waiting for the first step…</text>`; return; }
    const xs = all.map((p) => p[0]), ys = all.map((p) => p[1]);
    let x0 = Math.min(...xs), x1 = Math.max(...xs), y0 = Math.min(...ys), y1 = Math.max(...ys);
    if (x1 === x0) x1 = x0 + 1;
    if (y1 === y0) { y1 += Math.abs(y1) * 0.05 || 1; y0 -= Math.abs(y0) * 0.05 || 1; }
    const X = (x) => pad.l + (x - x0) / (x1 - x0) * (W - pad.l - pad.r);
    const Y = (y) => H - pad.b - (y - y0) / (y1 - y0) * (H - pad.t - pad.b);
    let out = `<line x1="${pad.l}" y1="${H - pad.b}" x2="${W - pad.r}" y2="${H - pad.b}" class="axis"/>
      <line x1="${pad.l}" y1="${pad.t}" x2="${pad.l}" y2="${H - pad.b}" class="axis"/>
      <text x="${pad.l - 4}" y="${pad.t + 8}" text-anchor="end" class="tick">${fmt(y1)}</text>
      <text x="${pad.l - 4}" y="${H - pad.b}" text-anchor="end" class="tick">${fmt(y0)}</text>
      <text x="${pad.l}" y="${H - 6}" class="tick">${Math.round(x0)}</text>
      <text x="${W - pad.r}" y="${H - 6}" text-anchor="end" class="tick">${esc(xlabel || "step")} ${Math.round(x1)}</text>`;
    series.forEach((s, i) => {
      if (!s.points.length) return;
      const d = s.points.map((p) => `${X(p[0]).toFixed(1)},${Y(p[1]).toFixed(1)}`).join(" ");
      out += s.dots
        ? s.points.map((p) => `<circle cx="${X(p[0]).toFixed(1)}" cy="${Y(p[1]).toFixed(1)}" r="3" class="${s.cls}"/>`).join("")
        : `<polyline points="${d}" class="${s.cls}" fill="none"/>`;
      out += `<text x="${W - pad.r - 4}" y="${pad.t + 12 + 14 * i}" text-anchor="end" class="${s.cls} legend">${esc(s.label)}</text>`;
    });
    svg.innerHTML = out;
  }

  // -- one run -----------------------------------------------------------------------------
  function runPage() {
    const name = document.body.dataset.run;
    const rows = [];
    let timer = null;
    const api = "/api/runs/" + runPath(name);
    async function refresh() {
      let data;
      try { data = await (await fetch(api + "?since=" + rows.length)).json(); } catch (e) { return; }
      if (data.ok === false) { $("#run-error").textContent = data.error; return; }
      if (data.since === rows.length) rows.push(...data.metrics);
      else if (data.since === 0) rows.splice(0, rows.length, ...data.metrics);
      const last = rows[rows.length - 1] || {};
      $("#status").textContent = data.status;
      $("#status").className = "status " + data.status;
      $("#steps").textContent = data.steps;
      $("#total").textContent = data.total_steps || "?";
      $("#loss").textContent = fmt(data.loss);
      $("#lr").textContent = fmt(last.lr);
      const unit = Object.keys(last).find((k) => k.endsWith("_per_s"));
      $("#throughput").textContent = unit ? fmt(last[unit], 1) + " " + unit.replace("_per_s", "/s") : "-";
      $("#elapsed").textContent = seconds(data.elapsed_s);
      const total = data.total_steps, done = data.steps || 0;
      $("#progress").max = total || 1;
      $("#progress").value = total ? Math.min(done, total) : 0;
      const live0 = ["running", "starting", "stopping"].includes(data.status);
      $("#eta").textContent = live0 && total && done > 0 && data.elapsed_s
        ? "ETA " + seconds(data.elapsed_s / done * (total - done)) : "-";
      $("#config").textContent = data.config || "";
      $("#run-error").textContent = data.error || "";
      $("#stop").disabled = !data.can_stop;
      $("#resume").disabled = !data.can_resume;
      const loss = rows.filter((r) => r.loss != null).map((r) => [r.step, r.loss]);
      const evals = rows.filter((r) => r.eval_loss != null).map((r) => [r.step, r.eval_loss]);
      chart($("#loss-chart"), [{ points: loss, cls: "loss", label: "loss" },
        { points: evals, cls: "eval", label: evals.length ? "eval loss" : "", dots: true }]);
      chart($("#lr-chart"), [{ points: rows.filter((r) => r.lr != null).map((r) => [r.step, r.lr]), cls: "lr", label: "lr" }]);
      const file = (rel) => "/runs/" + runPath(name) + "/files/" + runPath(rel);
      const link = (f) => f.endsWith("/")
        ? `<li><a href="/runs/${runPath(name)}/zip/${runPath(f.slice(0, -1))}" download>${esc(f.slice(0, -1))}.zip</a></li>`
        : `<li><a href="${file(f)}" download>${esc(f)}</a>${f.endsWith(".jsonl") || f.endsWith(".json") || f.endsWith(".yaml")
          ? ` <a href="${file(f)}" target="_blank" rel="noopener" class="view">view</a>` : ""}</li>`;
      $("#downloads").innerHTML = data.downloads.map(link).join("")
        || `<li class="muted">nothing exported yet</li>`;
      const caption = (s) => `<figcaption>${esc(s.prompt)} <span class="muted">${esc(s.path.split("/").pop())}</span></figcaption>`;
      $("#samples").innerHTML = data.samples.map((s) => s.kind === "image"
        ? `<figure><img src="${file(s.path)}" alt="${esc(s.prompt)}">${caption(s)}</figure>`
        : s.kind === "video"
        ? `<figure><video src="${file(s.path)}" controls loop muted playsinline></video>${caption(s)}</figure>`
        : `<figure class="text"><pre>${esc(s.text)}</pre><figcaption>${esc(s.path)}</figcaption></figure>`).join("")
        || `<p class="muted">no samples yet</p>`;
      const log = $("#log");
      const atEnd = log.scrollTop + log.clientHeight >= log.scrollHeight - 4;
      log.textContent = data.log;
      if (atEnd) log.scrollTop = log.scrollHeight;
      const live = ["running", "starting", "stopping"].includes(data.status);
      clearTimeout(timer);
      timer = setTimeout(refresh, live ? 500 : 3000);
    }
    $("#stop").onclick = async () => {
      $("#stop").disabled = true;
      const r = await post(api + "/stop");
      if (!r.ok) $("#run-error").textContent = r.error;
      refresh();
    };
    $("#resume").onclick = async () => {
      $("#resume").disabled = true;
      const r = await post(api + "/resume");
      if (!r.ok) $("#run-error").textContent = r.error;
      refresh();
    };
    refresh();
  }

  // -- a new run ---------------------------------------------------------------------------
  function newPage() {
    const form = $("#config-form");
    $$("#backend, #template").forEach((el) => { el.onchange = () => el.form.submit(); });
    if (!form) return;
    form.addEventListener("submit", (e) => e.preventDefault());
    function values() {
      const out = {};
      $$("[data-key]", form).forEach((el) => { out[el.dataset.key] = el.value; });
      return out;
    }
    function show(r) {
      $$(".err", form).forEach((el) => { el.textContent = ""; });
      $$(".invalid", form).forEach((el) => el.classList.remove("invalid"));
      $("#form-error").textContent = "";
      $("#form-ok").textContent = "";
      if (r.yaml != null) $("#yaml").textContent = r.yaml;
      if (r.ok) return true;
      const slot = r.key && $(`.err[data-for="${CSS.escape(r.key)}"]`, form);
      if (slot) {
        slot.textContent = r.error;
        const input = $(`[data-key="${CSS.escape(r.key)}"]`, form);
        const fold = slot.closest("details");
        if (fold) fold.open = true;
        if (input) { input.classList.add("invalid"); input.focus(); }
      } else {
        $("#form-error").textContent = r.error;
      }
      return false;
    }
    const body = () => ({ backend: form.dataset.backend, template: form.dataset.template, values: values() });
    $("#validate").onclick = async () => {
      busy(true);
      const r = await post("/api/validate", body()).finally(() => busy(false));
      if (show(r)) {
        $("#form-ok").textContent = "valid: backend " + form.dataset.backend + ", output " + r.output_dir;
        $("#form-plan").textContent = r.plan || "";
      }
    };
    $("#save").onclick = async () => {
      busy(true);
      const r = await post("/api/save", body()).finally(() => busy(false));
      if (show(r)) $("#form-ok").textContent = "saved " + r.path;
    };
    $("#start").onclick = async () => {
      busy(true);
      const r = await post("/api/start", body()).finally(() => busy(false));
      if (show(r)) location.href = "/runs/" + runPath(r.name);
    };
  }

  // -- labeling ----------------------------------------------------------------------------
  // Text from the folder, the table and the labelers goes in with textContent, never markup.
  function el(tag, props, ...children) {
    const node = Object.assign(document.createElement(tag), props || {});
    node.append(...children);
    return node;
  }

  function labelPage() {
    let columns = [];
    const labelers = {};
    $("#label-form").addEventListener("submit", (e) => e.preventDefault());
    const folder = () => $("#data_dir").value.trim();

    // The chosen labeler's options, as /api/labelers lists them: the same declaration
    // `lorakit label --option KEY=VALUE` is checked against. Empty means the default.
    function optionField(opt) {
      let input;
      if (opt.kind === "choice") {
        input = el("select", {}, ...opt.choices.map((c) =>
          el("option", { value: c, textContent: c, selected: c === opt.default })));
      } else if (opt.kind === "text") {
        input = el("input", { size: 50, maxLength: 4096, placeholder: opt.default });
      } else {
        input = el("input", { type: "number", step: opt.kind === "integer" ? "1" : "any",
          placeholder: opt.default });
        if (opt.minimum != null) input.min = opt.minimum;
        if (opt.maximum != null) input.max = opt.maximum;
      }
      input.dataset.option = opt.name;
      input.dataset.default = opt.default;
      return el("p", {}, el("label", {}, opt.name + " ", input,
        el("span", { className: "help", textContent: " " + opt.description })));
    }
    function showOptions() {
      const spec = labelers[$("#labeler").value];
      const box = $("#labeler-options");
      $$("p", box).forEach((p) => p.remove());
      $("#labeler-about").textContent = spec ? spec.description : "";
      box.hidden = !spec || !spec.options.length;
      if (spec) box.append(...spec.options.map(optionField));
    }
    function options() {
      const chosen = {};
      $$("#labeler-options [data-option]").forEach((input) => {
        if (input.value !== "" && input.value !== input.dataset.default) chosen[input.dataset.option] = input.value;
      });
      return chosen;
    }
    $("#labeler").onchange = showOptions;
    fetch("/api/labelers").then((r) => r.json()).then((data) => {
      (data.labelers || []).forEach((l) => { labelers[l.name] = l; });
      showOptions();
    });

    async function load() {
      $("#label-error").textContent = "";
      const r = await fetch("/api/metadata?data_dir=" + encodeURIComponent(folder()));
      const data = await r.json();
      if (data.ok === false) { $("#label-error").textContent = data.error; return; }
      columns = data.columns;
      $("#metadata thead").replaceChildren(el("tr", {}, el("th", { textContent: "image" }),
        ...columns.map((c) => el("th", { textContent: c }))));
      $("#metadata tbody").replaceChildren(...data.rows.map((row) => el("tr", {},
        el("td", {}, el("img", { className: "thumb", alt: "", src: "/api/image?data_dir=" +
          encodeURIComponent(folder()) + "&name=" + encodeURIComponent(row.file_name) })),
        ...columns.map((c) => {
          if (c === "file_name") {
            const td = el("td", { textContent: row[c] });
            td.dataset.col = c;
            return td;
          }
          const area = el("textarea", { rows: 2, cols: 50, value: row[c] });
          area.dataset.col = c;
          return el("td", {}, area);
        }))));
      $("#save-metadata").disabled = false;
    }
    $("#load").onclick = load;
    $("#label").onclick = async () => {
      $("#label-log").textContent = "labeling…";
      $("#label-error").textContent = "";
      $("#label").disabled = true;
      const r = await post("/api/label", { data_dir: folder(), labeler: $("#labeler").value,
        prefix: $("#prefix").value, mode: $("#mode").value, batch_size: $("#batch_size").value,
        options: options() });
      $("#label").disabled = false;
      $("#label-log").textContent = r.output || "";
      if (!r.ok) { $("#label-error").textContent = r.error; return; }
      load();
    };
    $("#save-metadata").onclick = async () => {
      const rows = $$("#metadata tbody tr").map((tr) => {
        const row = {};
        $$("[data-col]", tr).forEach((cell) => { row[cell.dataset.col] = cell.tagName === "TEXTAREA" ? cell.value : cell.textContent; });
        return row;
      });
      const r = await post("/api/metadata", { data_dir: folder(), columns, rows });
      $("#metadata-ok").textContent = r.ok ? "saved " + r.path : "";
      $("#label-error").textContent = r.ok ? "" : r.error;
    };
    if (folder()) load();
  }

  const pages = { runs: runsPage, run: runPage, new: newPage, label: labelPage };
  return { ...pages, chart, post, runPath, start: () => { const f = pages[document.body.dataset.page]; if (f) f(); } };
})();
// The page says which it is (<body data-page>): no inline script, the CSP forbids it.
lk.start();
