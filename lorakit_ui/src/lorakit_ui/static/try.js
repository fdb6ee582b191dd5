// lorakit ui: the run page's "Try it" panel (chat with the adapter on and off, or render a
// sample). Text from the model or the run is put in with textContent, never as markup.
"use strict";
(() => {
  if (document.body.dataset.page !== "run") return;
  const $ = (sel) => document.querySelector(sel);
  const name = document.body.dataset.run;
  const api = "/api/try/" + lk.runPath(name);
  const history = { on: [], off: [] };
  let info = null;

  function say(text, error) {
    $("#try-error").textContent = error ? text : "";
    if (!error) $("#try-state").textContent = text;
  }

  function turn(side, role, text) {
    const p = document.createElement("p");
    p.className = "turn " + role;
    const who = document.createElement("b");
    who.textContent = role === "user" ? "you: " : "answer: ";
    p.append(who, document.createTextNode(text));
    $("#chat-" + side).append(p);
  }

  // Poll a queued request until it is done; the state line says where it stands.
  async function follow(job) {
    for (;;) {
      const r = await (await fetch("/api/try-jobs/" + job.id)).json();
      if (r.state === "done" || r.state === "failed" || r.ok === false) return r;
      say(r.state === "queued" ? `queued: ${r.ahead} ahead` : `working… ${Math.round(r.seconds)} s`);
      await new Promise((done) => setTimeout(done, 300));
    }
  }

  async function send(route, body, button) {
    button.disabled = true;
    say("", true);
    try {
      const queued = await lk.post(api + "/" + route, { checkpoint: $("#try-from").value, ...body });
      if (!queued.ok) { say(queued.error, true); say(""); return null; }
      const r = await follow(queued);
      if (r.state !== "done") { say(r.error || "failed", true); say(""); return null; }
      say(`done in ${r.seconds} s`);
      return r;
    } finally { button.disabled = false; }
  }

  function reset() {
    history.on = []; history.off = [];
    $("#chat-on").textContent = ""; $("#chat-off").textContent = "";
  }

  async function chat() {
    const prompt = $("#chat-prompt").value;
    const r = await send("chat", { prompt, on: history.on, off: history.off,
      max_new_tokens: +$("#chat-tokens").value || 128 }, $("#chat-send"));
    if (!r) return;
    for (const side of ["on", "off"]) {
      const answer = r.result[side];
      turn(side, "user", prompt);
      turn(side, "assistant", answer);
      history[side].push({ role: "user", content: prompt }, { role: "assistant", content: answer });
    }
    $("#chat-prompt").value = "";
  }

  async function sample() {
    const prompt = $("#sample-prompt").value;
    const steps = $("#sample-steps").value;
    const r = await send("sample", { prompt, weight: $("#sample-weight").value,
      seed: $("#sample-seed").value, steps: steps === "" ? null : steps }, $("#sample-render"));
    if (!r) return;
    $("#sample-image").src = "/api/try-jobs/" + r.id + "/image";
    $("#sample-caption").textContent = `${prompt} · weight ${$("#sample-weight").value} · seed ${$("#sample-seed").value}`;
    $("#sample-figure").hidden = false;
  }

  async function load(first) {
    const r = await (await fetch(api)).json();
    if (r.ok === false) { say(r.error, true); return; }
    info = r;
    if (!info.kind) { say("nothing to try: " + info.reason); return; }
    const from = $("#try-from");
    const was = from.value;
    const sources = JSON.stringify([info.final, info.checkpoints]);
    if (from.dataset.sources === sources) return;  // nothing new: leave the list as it is
    from.dataset.sources = sources;
    from.textContent = "";
    const add = (value, label) => {
      const o = document.createElement("option");
      o.value = value; o.textContent = label;
      from.append(o);
    };
    if (info.final) add("", "the finished run");
    info.checkpoints.forEach((c) => add(c, "checkpoint " + c));
    if (!from.options.length) { say("nothing to try yet: no checkpoint, not finished"); return; }
    if ([...from.options].some((o) => o.value === was)) from.value = was;
    $("#chat-panel").hidden = info.kind !== "chat";
    $("#sample-panel").hidden = info.kind !== "sample";
    if (info.kind === "sample" && !$("#sample-prompt").value) $("#sample-prompt").value = info.prompts[0] || "";
    if (!first) return;
    say(info.kind === "chat" ? "chat: each message is answered with the adapter and without it"
      : "renders with lorakit sample's code, one at a time");
  }

  $("#chat-send").onclick = chat;
  $("#chat-reset").onclick = reset;
  $("#try-from").onchange = reset;
  $("#sample-render").onclick = sample;
  load(true);
  setInterval(() => { if (!$("#chat-send").disabled && !$("#sample-render").disabled) load(); }, 5000);
})();
