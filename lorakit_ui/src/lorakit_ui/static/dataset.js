// lorakit ui, the dataset view of the new-run form: the training data as its backend reads
// it (POST /api/dataset); captions saved through /api/metadata, the file training reads.
// Every text from the server or a file is set as text, never markup.
"use strict";
(() => {
  if (!lkNew) return;
  const { $, $$, el, post, get, body, fieldError, clearErrors } = lkNew;
  const dialog = $("#dataset");
  let report = null;
  const img = (row) => "/api/image?data_dir=" + encodeURIComponent(row.folder) + "&name=" + encodeURIComponent(row.name);
  const size = (s) => s ? s[0] + "×" + s[1] : "?";

  async function open() {
    dialog.showModal();
    $("#dataset-summary").textContent = "reading the data…";
    $$("#dataset-warnings, #dataset-rows").forEach((e) => e.replaceChildren());
    $("#dataset-buckets").textContent = "";
    $("#dataset-ok").textContent = $("#dataset-error").textContent = "";
    $("#dataset-save").disabled = true;
    const r = await post("/api/dataset", body());
    report = r;
    clearErrors();
    if (!r.ok) {
      fieldError(r.key, r.error);
      $("#dataset-summary").textContent = "";
      $("#dataset-error").textContent = r.error;
      dialog.dataset.state = "error";
      return;
    }
    $("#dataset-source").textContent = r.source;
    r.warnings.forEach((w) => $("#dataset-warnings").append(el("li", {}, w)));
    $("#dataset-save").hidden = r.kind !== "images";
    // the label page (any labeler, the vision-language ones included) on this folder
    $("#dataset-label").hidden = r.kind !== "images";
    $("#dataset-label").href = "/label?data_dir=" + encodeURIComponent(r.source);
    if (r.kind === "images") images(r); else texts(r);
    dialog.dataset.state = "shown";
  }

  function images(r) {
    const shown = r.rows.length < r.total ? ` (the first ${r.rows.length} shown)` : "";
    $("#dataset-summary").textContent = `${r.total} images, read as ${r.format}${shown}`;
    const buckets = Object.entries(r.buckets).sort((a, b) => b[1] - a[1])
      .map(([b, n]) => b.replace("x", "×") + " × " + n).join(", ");
    const of = r.rows.length < r.total ? ` (of the ${r.rows.length} shown)` : "";
    $("#dataset-buckets").textContent = `buckets at ${r.resolution} px${of}: ${buckets || "none"}`;
    const box = $("#dataset-rows");
    for (const row of r.rows) {
      const editable = r.editable.includes(row.folder);
      const caption = el("textarea", { rows: 3, "data-folder": row.folder, "data-name": row.name,
        "aria-label": "caption of " + row.name }, row.text);
      caption.dataset.saved = row.text;
      caption.readOnly = !editable;
      caption.oninput = () => { $("#dataset-save").disabled = false; };
      box.append(el("figure", { class: "data-row" + (row.notes.length ? " noted" : ""), "data-name": row.name },
        row.size ? el("img", { src: img(row), alt: "", loading: "lazy" }) : el("div", { class: "noimg" }, "no image"),
        el("figcaption", {}, el("b", {}, row.name), " ",
          el("span", { class: "muted" }, size(row.size) + (row.bucket ? " → " + size(row.bucket) : "")),
          caption, row.notes.map((n) => el("div", { class: "note" }, n)))));
    }
    if (!r.editable.length) $("#dataset-ok").textContent = "captions are read-only here (only a folder's metadata.csv is edited)";
  }

  function texts(r) {
    const longest = Math.max(0, ...r.rows.map((x) => x.tokens || 0));
    $("#dataset-summary").textContent = `${r.total} rows, format ${r.format}` +
      (r.template ? `, chat template ${r.template}` : "") +
      (longest ? `; longest ${longest} tokens (llm.max_seq_len ${r.resolution})` : "");
    const rows = [...r.rows].sort((a, b) => (b.tokens || 0) - (a.tokens || 0));
    $("#dataset-buckets").textContent = "longest rows first";
    const box = $("#dataset-rows");
    for (const row of rows) {
      box.append(el("div", { class: "text-row" + (row.notes.length ? " noted" : "") },
        el("div", {}, el("b", {}, row.name), " ", el("span", { class: "muted tokens" },
          row.tokens == null ? "" : row.tokens + " tokens")),
        row.notes.map((n) => el("div", { class: "note" }, n)), el("pre", {}, row.text)));
    }
  }

  // Save: each folder's metadata.csv read fresh, the edited captions set, written back whole.
  async function save() {
    $("#dataset-save").disabled = true;
    $("#dataset-error").textContent = $("#dataset-ok").textContent = "";
    const edited = $$("#dataset-rows textarea").filter((t) => t.value !== t.dataset.saved);
    const folders = [...new Set(edited.map((t) => t.dataset.folder))];
    for (const folder of folders) {
      const table = await get("/api/metadata?data_dir=" + encodeURIComponent(folder));
      if (table.ok === false) { $("#dataset-error").textContent = table.error; return; }
      const fileCol = ["file_name", "image", "file"].find((c) => table.columns.includes(c));
      let textCol = ["text", "caption"].find((c) => table.columns.includes(c));
      if (!textCol) { textCol = "text"; table.columns.push(textCol); }
      for (const t of edited.filter((x) => x.dataset.folder === folder)) {
        const row = table.rows.find((x) => x[fileCol] === t.dataset.name);
        if (row) row[textCol] = t.value;
      }
      const r = await post("/api/metadata", { data_dir: folder, columns: table.columns, rows: table.rows });
      if (!r.ok) { $("#dataset-error").textContent = r.error; return; }
      $("#dataset-ok").textContent = "saved " + r.path;
    }
    edited.forEach((t) => { t.dataset.saved = t.value; });
    dialog.dataset.saved = String(Number(dialog.dataset.saved || 0) + 1);
  }

  if ($("#see-data")) $("#see-data").onclick = open;
  $("#dataset-save").onclick = save;
})();
