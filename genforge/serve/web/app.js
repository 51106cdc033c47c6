// genforge web page: plain JS, no build step. Talks to the same /v1 API as any client.
"use strict";

const $ = (id) => document.getElementById(id);
const state = { key: sessionStorage.getItem("genforge-key") || "", models: [], images: [] };

const WHY = {
  401: "The server refused the key (missing, wrong or revoked).",
  403: "This key lacks the scope for that action.",
  404: "Not found.",
  413: "The upload is too large.",
  422: "The server could not accept those settings.",
  429: "Too many requests with this key; slow down.",
  503: "The server is busy; try again in a moment.",
};

async function api(path, options = {}) {
  const headers = { Authorization: `Bearer ${state.key}`, ...(options.headers || {}) };
  let res;
  try {
    res = await fetch(path, { ...options, headers });
  } catch (e) {
    throw new Error(`Cannot reach the server (${e.message}).`);
  }
  let body = null;
  try { body = await res.json(); } catch (e) { body = null; }
  if (!res.ok) {
    const detail = body && body.error ? body.error.message : res.statusText;
    const retry = res.headers.get("Retry-After");
    let msg = `${WHY[res.status] || "Request failed."} ${detail}`;
    if (retry) msg += ` (retry after ${retry} s)`;
    throw new Error(`${res.status}: ${msg}`);
  }
  return body;
}

// the error of a response read raw (a stream, audio) rather than through api(): its status in words
async function failure(res) {
  let detail = res.statusText;
  try { detail = (await res.json()).error.message; } catch (e) { /* not JSON: the status text */ }
  return new Error(`${res.status}: ${WHY[res.status] || "The server could not accept those settings."} ${detail}`);
}

function setText(id, text) { $(id).textContent = text || ""; }

// a section for the models of one kind (prefix-section, prefix-model): its picker filled, the
// section and its action button shown only when there are any; the key status's words for them
function showKindSection(kind, prefix, button, noun, update) {
  const ms = state.models.filter((m) => m.kind === kind);
  fillSelect($(`${prefix}-model`), ms);
  $(`${prefix}-section`).hidden = !ms.length;
  $(button).disabled = !ms.length;
  update();
  return ms.length ? `, ${ms.length} ${noun} model(s)` : "";
}

// a section's media player and download link emptied, and the blob URL they played freed
function clearMedia(prefix, held) {
  const player = $(`${prefix}-player`);
  player.pause();
  player.removeAttribute("src");
  player.hidden = true;
  $(`${prefix}-download`).hidden = true;
  if (held.url) URL.revokeObjectURL(held.url);
  held.url = null;
}

function fillSelect(select, models) {
  select.replaceChildren();
  for (const m of models) {
    const opt = document.createElement("option");
    opt.value = m.id;
    opt.textContent = `${m.id} (${m.task || m.kind}${m.size ? ", " + m.size : ""})`;
    select.append(opt);
  }
  if (!models.length) {
    const opt = document.createElement("option");
    opt.value = "";
    opt.textContent = "none loaded";
    select.append(opt);
  }
}

function currentGenModel() { return state.models.find((m) => m.id === $("gen-model").value); }

function updateGenFields() {
  const m = currentGenModel();
  const diffusion = m && m.task === "diffusion";
  const conditional = m && m.conditional;
  for (const el of document.querySelectorAll(".diffusion-only")) {
    el.classList.toggle("hidden-field", !diffusion || (el.classList.contains("conditional-only") && !conditional));
  }
  for (const el of document.querySelectorAll(".conditional-only:not(.diffusion-only)")) {
    el.classList.toggle("hidden-field", !conditional);
  }
  $("gen-labels").placeholder = conditional && m.classes.length
    ? `e.g. ${m.classes.slice(0, 3).join(", ")}; empty: every class in turn` : "";
}

async function connect(ev) {
  if (ev) ev.preventDefault();
  state.key = $("api-key").value.trim();
  setText("key-status", "Connecting...");
  setText("key-error", "");
  try {
    const list = await api("/v1/models");
    state.models = list.data;
    sessionStorage.setItem("genforge-key", state.key);
    const gens = state.models.filter((m) => m.kind === "image-generation");
    const clfs = state.models.filter((m) => m.kind === "image-classification");
    fillSelect($("gen-model"), gens);
    fillSelect($("clf-model"), clfs);
    $("generate").disabled = !gens.length;
    $("classify").disabled = !clfs.length;
    updateGenFields();
    const text = showTextModels() + (typeof showLanguageModels === "function" ? showLanguageModels() : "")
      + (typeof showVideoModels === "function" ? showVideoModels() : "")
      + (typeof showSpeechModels === "function" ? showSpeechModels() : "");
    setText("key-status", `Connected: ${gens.length} image generator(s), ${clfs.length} classifier(s)${text}.`);
  } catch (e) {
    $("generate").disabled = $("classify").disabled = $("t2i-generate").disabled = true;
    setText("key-status", "");
    setText("key-error", e.message);
  }
}

function samplesParams() {
  const m = currentGenModel();
  const p = { model: $("gen-model").value, n: Number($("gen-n").value), seed: Number($("gen-seed").value) };
  if (m && m.task === "diffusion") {
    p.steps = Number($("gen-steps").value);
    p.sampler = $("gen-sampler").value;
    if (m.conditional) p.guidance = Number($("gen-guidance").value);
  }
  const labels = $("gen-labels").value.split(",").map((s) => s.trim()).filter(Boolean);
  if (m && m.conditional && labels.length) p.labels = labels;
  return p;
}

function showImages(result) {
  state.images = result.images;
  const gallery = $("gallery");
  gallery.replaceChildren();
  result.images.forEach((b64, i) => {
    const fig = document.createElement("figure");
    const img = document.createElement("img");
    img.src = `data:image/png;base64,${b64}`;
    img.alt = `sample ${i} (seed ${result.seed})`;
    const link = document.createElement("a");
    link.href = img.src;
    link.download = `${result.model}_seed${result.seed}_${String(i).padStart(3, "0")}.png`;
    link.textContent = "download";
    fig.append(img, link);
    gallery.append(fig);
  });
  $("gen-actions").hidden = !result.images.length;
  setText("gen-info", `${result.images.length} image(s) from ${result.model}, seed ${result.seed}, ${result.size}.`);
}

function clearImages() {
  state.images = [];
  $("gallery").replaceChildren();
  $("gen-actions").hidden = true;
}

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function runJob(params) {
  const job = await api("/v1/jobs", {
    method: "POST", headers: { "Content-Type": "application/json" },
    body: JSON.stringify({ type: "samples", params }),
  });
  $("gen-progress").hidden = false;
  for (;;) {
    const j = await api(`/v1/jobs/${encodeURIComponent(job.id)}`);
    $("gen-progress-bar").value = j.progress;
    setText("gen-progress-text", `${j.status} ${Math.round(j.progress * 100)}%`);
    if (j.status === "succeeded") return j.result;
    if (j.status === "failed") throw new Error(`The job failed: ${j.error}`);
    await sleep(500);
  }
}

async function generate(ev) {
  ev.preventDefault();
  setText("gen-error", "");
  setText("gen-info", "Working...");
  $("generate").disabled = true;
  $("gen-progress").hidden = true;
  try {
    const params = samplesParams();
    const asJob = $("gen-job").checked || params.n > 64;
    const result = asJob ? await runJob(params) : await api("/v1/samples", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(params),
    });
    showImages(result);
  } catch (e) {
    clearImages();  // the old images are not the answer to this request
    setText("gen-info", "");
    setText("gen-error", e.message);
  } finally {
    $("generate").disabled = false;
  }
}

async function downloadGrid() {
  const imgs = [...$("gallery").querySelectorAll("img")];
  if (!imgs.length) return;
  const w = imgs[0].naturalWidth, h = imgs[0].naturalHeight, pad = 2;
  const cols = Math.ceil(Math.sqrt(imgs.length)), rows = Math.ceil(imgs.length / cols);
  const canvas = document.createElement("canvas");
  canvas.width = pad + cols * (w + pad);
  canvas.height = pad + rows * (h + pad);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "#000";
  ctx.fillRect(0, 0, canvas.width, canvas.height);
  imgs.forEach((img, i) => ctx.drawImage(img, pad + (i % cols) * (w + pad), pad + Math.floor(i / cols) * (h + pad)));
  const link = document.createElement("a");
  link.href = canvas.toDataURL("image/png");
  link.download = `${$("gen-model").value}_grid.png`;
  link.click();
}

async function classify(ev) {
  ev.preventDefault();
  setText("clf-error", "");
  const file = $("clf-file").files[0];
  if (!file) { setText("clf-error", "Choose an image file first."); return; }
  const form = new FormData();
  form.append("image", file);
  form.append("model", $("clf-model").value);
  form.append("top_k", $("clf-k").value || "3");
  $("classify").disabled = true;
  try {
    const res = await api("/v1/images/classify", { method: "POST", body: form });
    const preview = $("clf-preview");
    preview.src = URL.createObjectURL(file);
    preview.hidden = false;
    const list = $("clf-labels");
    list.replaceChildren();
    for (const p of res.labels) {
      const li = document.createElement("li");
      li.textContent = `${p.label}: ${(p.score * 100).toFixed(1)}%`;
      const bar = document.createElement("span");
      bar.className = "bar";
      bar.style.width = `${Math.max(2, p.score * 160)}px`;
      li.append(bar);
      list.append(li);
    }
  } catch (e) {
    $("clf-preview").hidden = true;
    $("clf-labels").replaceChildren();
    setText("clf-error", e.message);
  } finally {
    $("classify").disabled = false;
  }
}

// -- text models: generate from a prompt, caption an image ---------------------------------------
const TEXT_TO_IMAGE = "text-to-image", CAPTIONER = "image-captioning";

function showTextModels() {
  const t2i = state.models.filter((m) => m.kind === TEXT_TO_IMAGE);
  const caps = state.models.filter((m) => m.kind === CAPTIONER);
  fillSelect($("t2i-model"), t2i);
  fillSelect($("cap-model"), caps);
  $("t2i-section").hidden = !t2i.length;
  $("cap-section").hidden = !caps.length;
  $("t2i-generate").disabled = !t2i.length;
  updateTextFields();
  return t2i.length || caps.length ? `, ${t2i.length} text-to-image, ${caps.length} captioner(s)` : "";
}

function currentTextModel() { return state.models.find((m) => m.id === $("t2i-model").value); }

function updateTextFields() {
  const m = currentTextModel();
  const diffusion = Boolean(m && m.samplers && m.samplers.length);
  for (const el of document.querySelectorAll(".t2i-diffusion")) el.classList.toggle("hidden-field", !diffusion);
  if (m && m.default_steps) $("t2i-steps").value = m.default_steps;
  $("t2i-guidance").placeholder = m && m.default_guidance != null ? `${m.default_guidance} (model default)` : "";
}

async function generateFromText(ev) {
  ev.preventDefault();
  setText("t2i-error", "");
  setText("t2i-info", "Working...");
  $("t2i-generate").disabled = true;
  try {
    const m = currentTextModel();
    const body = { model: $("t2i-model").value, prompt: $("t2i-prompt").value, n: Number($("t2i-n").value),
                   seed: Number($("t2i-seed").value) };
    const negative = $("t2i-negative").value.trim();
    if (negative) body.negative_prompt = negative;
    if (m && m.samplers && m.samplers.length) {
      body.steps = Number($("t2i-steps").value);
      if ($("t2i-guidance").value !== "") body.guidance = Number($("t2i-guidance").value);
    }
    const res = await api("/v1/images/generations", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    const gallery = $("t2i-gallery");
    gallery.replaceChildren();
    res.data.forEach((d, i) => {
      const fig = document.createElement("figure");
      const img = document.createElement("img");
      img.src = `data:image/png;base64,${d.b64_json}`;
      img.alt = `${d.revised_prompt || body.prompt} (seed ${res.seed}, image ${i})`;
      const link = document.createElement("a");
      link.href = img.src;
      link.download = `${res.model}_seed${res.seed}_${String(i).padStart(3, "0")}.png`;
      link.textContent = "download";
      fig.append(img, link);
      gallery.append(fig);
    });
    const notes = (res.warnings || []).join(" ");
    setText("t2i-info", `${res.data.length} image(s) from ${res.model}, seed ${res.seed}.${notes ? " Note: " + notes : ""}`);
  } catch (e) {
    $("t2i-gallery").replaceChildren();  // the old images are not the answer to this prompt
    setText("t2i-info", "");
    setText("t2i-error", e.message);
  } finally {
    $("t2i-generate").disabled = false;
  }
}

async function captionFile(file) {
  setText("cap-error", "");
  setText("cap-text", "");
  $("cap-preview").hidden = true;
  if (!file) return;
  const form = new FormData();
  form.append("image", file);
  form.append("model", $("cap-model").value);
  form.append("beam", $("cap-beam").value || "1");
  setText("cap-text", "Captioning...");
  try {
    const res = await api("/v1/images/captions", { method: "POST", body: form });
    $("cap-preview").src = URL.createObjectURL(file);
    $("cap-preview").hidden = false;
    setText("cap-text", res.caption);
  } catch (e) {
    setText("cap-text", "");
    setText("cap-error", e.message);
  }
}

document.addEventListener("DOMContentLoaded", () => {
  $("key-form").addEventListener("submit", connect);
  $("gen-form").addEventListener("submit", generate);
  $("clf-form").addEventListener("submit", classify);
  $("gen-model").addEventListener("change", updateGenFields);
  $("download-grid").addEventListener("click", downloadGrid);
  $("t2i-form").addEventListener("submit", generateFromText);
  $("t2i-model").addEventListener("change", updateTextFields);
  $("cap-file").addEventListener("change", () => captionFile($("cap-file").files[0]));
  const drop = $("cap-drop");
  drop.addEventListener("dragover", (ev) => { ev.preventDefault(); drop.classList.add("over"); });
  drop.addEventListener("dragleave", () => drop.classList.remove("over"));
  drop.addEventListener("drop", (ev) => {
    ev.preventDefault();
    drop.classList.remove("over");
    if (ev.dataTransfer.files.length) $("cap-file").files = ev.dataTransfer.files;  // shows its name
    captionFile(ev.dataTransfer.files[0]);
  });
  if (state.key) {
    $("api-key").value = state.key;
    connect();
  }
});
