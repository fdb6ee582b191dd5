// lorakit ui, the new-run page: the plan beside the form, the file browser, the dataset view.
// Every text from the server or a file is set as text (textContent / DOM nodes), never markup.
"use strict";
const lkNew = (() => {
  const $ = (sel, root) => (root || document).querySelector(sel);
  const $$ = (sel, root) => Array.from((root || document).querySelectorAll(sel));
  // A DOM node; children are nodes or text (text is never parsed as markup).
  function el(tag, attrs, ...kids) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v == null) continue;
      if (k === "class") node.className = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, String(v));
    }
    for (const kid of kids.flat()) if (kid != null) node.append(kid instanceof Node ? kid : String(kid));
    return node;
  }
  async function post(url, body) {
    const r = await fetch(url, { method: "POST", headers: { "content-type": "application/json" },
      body: JSON.stringify(body || {}) });
    try { return await r.json(); } catch (e) { return { ok: false, error: r.status + " " + r.statusText }; }
  }
  async function get(url) {
    const r = await fetch(url);
    try { return await r.json(); } catch (e) { return { ok: false, error: r.status + " " + r.statusText }; }
  }
  const gib = (n) => n == null ? "-" : n >= 2 ** 30 || n === 0 ? (n / 2 ** 30).toFixed(1) + " GiB"
    : (n / 2 ** 20).toFixed(1) + " MiB";
  const form = $("#config-form");
  if (!form) return null;
  const values = () => Object.fromEntries($$("[data-key]", form).map((e) => [e.dataset.key, e.value]));
  const body = () => ({ backend: form.dataset.backend, template: form.dataset.template, values: values() });

  // An error beside its field (the advanced part opens when the field is there).
  function fieldError(key, text) {
    const slot = key && $(`.err[data-for="${CSS.escape(key)}"]`, form);
    if (!slot) return false;
    slot.textContent = text;
    const input = $(`[data-key="${CSS.escape(key)}"]`, form);
    const fold = slot.closest("details");
    if (fold) fold.open = true;
    if (input) input.classList.add("invalid");
    return true;
  }
  function clearErrors() {
    $$(".err", form).forEach((e) => { e.textContent = ""; });
    $$(".invalid", form).forEach((e) => e.classList.remove("invalid"));
  }

  // -- the plan: debounced, the newest answer wins ----------------------------------------
  const panel = $("#plan-panel");
  let seq = 0, timer = null;
  function gpu() {
    const chosen = $("#plan-gpu").value;
    return chosen === "other" ? $("#plan-gpu-other").value.trim() : chosen;
  }
  // Every change makes the plans in flight stale; the plan is asked 600 ms after the last.
  function schedule() {
    clearTimeout(timer);
    const mine = ++seq;
    panel.dataset.pending = "1";
    $("#plan-state").textContent = "planning…";
    timer = setTimeout(() => plan(mine), 600);
  }
  async function plan(mine) {
    const r = await post("/api/plan", { ...body(), gpu: gpu() });
    if (mine !== seq) return; // the form changed since: a newer plan is on its way
    show(r);
    delete panel.dataset.pending;
  }
  const PARTS = [["frozen_weights", "frozen weights"], ["lora", "LoRA parameters"],
    ["gradients", "LoRA gradients"], ["optimizer", "optimizer state"],
    ["activations", "activations"], ["caches", "caches"]];
  function show(r) {
    clearErrors();
    const parts = $("#plan-parts tbody");
    parts.replaceChildren();
    $("#plan-ladder").replaceChildren();
    $("#plan-error").textContent = "";
    $("#plan-steps").textContent = "";
    const verdict = $("#plan-verdict");
    verdict.replaceChildren();
    verdict.className = "";
    if (!r.ok) {
      $("#plan-state").textContent = "no plan";
      delete panel.dataset.total;
      if (!fieldError(r.key === "gpu" ? null : r.key, r.error)) $("#plan-error").textContent = r.error;
      else $("#plan-error").textContent = "fix " + r.key + " first";
      return;
    }
    const p = r.plan, total = p.bytes.total;
    panel.dataset.total = String(total);
    panel.dataset.fits = String(p.fits);
    $("#plan-state").textContent = p.model + " · " + p.per_micro_batch;
    for (const [key, label] of PARTS) {
      const n = p.bytes[key] || 0;
      parts.append(el("tr", { "data-part": key }, el("td", {}, label),
        el("td", { class: "num" }, gib(n)), el("td", {}, el("meter", { min: 0, max: total || 1, value: n }))));
    }
    parts.append(el("tr", { class: "total" }, el("td", {}, "total (peak of one step)"),
      el("td", { class: "num" }, gib(total)), el("td", {})));
    const card = p.card ? p.card.name : null;
    if (p.fits === null) {
      verdict.append(r.local_gpu ? "no GPU on this machine: " : "no card chosen: ", "peak ≈ " + gib(total));
    } else {
      verdict.className = p.fits ? "ok" : "error";
      verdict.append(el("b", {}, p.fits ? "fits" : "does not fit"), " " + card + " (peak ≈ " + gib(total) + ")");
    }
    const steps = p.steps ? p.steps + " optimizer steps" : "steps unknown (data not found)";
    $("#plan-steps").textContent = steps + (p.caveat ? " · " + p.caveat : "");
    if (p.fits === false) ladder(p.ladder);
  }
  function ladder(rows) {
    const box = $("#plan-ladder");
    if (!rows.length) { box.append(el("p", {}, "nothing on the ladder fits this card; a larger card is needed")); return; }
    box.append(el("p", {}, "Configs that fit, cheapest loss of quality first:"));
    const list = el("ol", {});
    rows.forEach((row, i) => {
      const changes = Object.entries(row.set).map(([k, v]) => k + " = " + String(v)).join(", ");
      list.append(el("li", {}, el("button", { type: "button", class: i ? "" : "next-step", onclick: () => apply(row.set) },
        i ? "use" : "use the next step"), " " + changes, el("span", { class: "muted" },
        " (" + gib(row.total) + (row.cost ? "; " + row.cost : "") + ")")));
    });
    box.append(list);
  }
  function apply(changes) {
    for (const [key, value] of Object.entries(changes)) {
      const input = $(`[data-key="${CSS.escape(key)}"]`, form);
      if (input) input.value = String(value); // true / false, numbers and names as typed
    }
    schedule();
  }

  // -- the file browser: only the person's folders, links never followed -------------------
  const dialog = $("#browser");
  let target = null, here = null;
  async function browse(path) {
    const r = await get("/api/browse?path=" + encodeURIComponent(path || ""));
    if (!r.ok) return r;
    here = r.path;
    $("#browser-error").textContent = "";
    $("#browser-path").textContent = r.path || "your folders";
    $("#browser-up").disabled = !r.parent;
    $("#browser-up").dataset.path = r.parent || "";
    $("#browser-pick-dir").disabled = !r.path;
    const list = $("#browser-list");
    list.replaceChildren();
    if (!r.path) {
      r.roots.forEach((root) => list.append(el("li", { class: "dir" },
        el("button", { type: "button", onclick: () => browse(root) }, root))));
      return r;
    }
    for (const entry of r.entries) {
      const full = r.path.replace(/\/$/, "") + "/" + entry.name;
      const item = entry.kind === "dir"
        ? el("button", { type: "button", onclick: () => browse(full) }, entry.name + "/")
        : entry.kind === "link" ? el("span", { class: "muted" }, entry.name + " (a link: not followed)")
        : el("button", { type: "button", onclick: () => choose(full) }, entry.name);
      list.append(el("li", { class: entry.kind, "data-name": entry.name }, item));
    }
    if (r.truncated) list.append(el("li", { class: "muted" }, "… (more not shown)"));
    return r;
  }
  function choose(path) {
    const input = $(`[data-key="${CSS.escape(target)}"]`, form);
    if (input) { input.value = path; input.dispatchEvent(new Event("change", { bubbles: true })); }
    dialog.close();
  }
  async function openBrowser(key) {
    target = key;
    $("#browser-key").textContent = key;
    const start = $(`[data-key="${CSS.escape(key)}"]`, form).value.trim();
    dialog.showModal();
    let r = start ? await browse(start) : { ok: false };
    if (!r.ok && start.includes("/")) r = await browse(start.replace(/\/[^/]*\/?$/, "") || "/");
    if (!r.ok) r = await browse("");
  }
  $$("button[data-browse]", form).forEach((b) => { b.onclick = () => openBrowser(b.dataset.browse); });
  $("#browser-up").onclick = () => browse($("#browser-up").dataset.path);
  $("#browser-pick-dir").onclick = () => { if (here) choose(here); };

  // -- wiring ------------------------------------------------------------------------------
  form.addEventListener("input", schedule);
  form.addEventListener("change", schedule);
  $("#plan-gpu").onchange = () => { $("#plan-gpu-other").hidden = $("#plan-gpu").value !== "other"; schedule(); };
  $("#plan-gpu-other").oninput = schedule;
  schedule();
  return { $, $$, el, post, get, body, fieldError, clearErrors, schedule, form };
})();
