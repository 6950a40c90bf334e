// localai-sd studio: plain JS, no build step. Talks only to this server's own API.
"use strict";

const $ = (id) => document.getElementById(id);
const KEY_STORE = "studio.apiKey";
const HISTORY_STORE = "studio.history";
const HISTORY_MAX = 40;
const THUMB_SIDE = 128;
const state = { job: null, abort: null, lastParams: null };

// ---------- API: JSON, the key as Bearer, one prompt for a key on 401 ----------

class ApiError extends Error {
  constructor(status, error) {
    super(error.message || `HTTP ${status}`);
    this.status = status;
    this.param = error.param || null;
  }
}

function authHeaders(extra = {}) {
  const key = localStorage.getItem(KEY_STORE);
  return key ? { ...extra, Authorization: `Bearer ${key}` } : extra;
}

async function api(path, { method = "GET", body, form, signal } = {}, retried = false) {
  const headers = authHeaders(body !== undefined || method === "POST" ? { "Content-Type": "application/json" } : {});
  const init = { method, headers, signal };
  if (form) {
    delete headers["Content-Type"];
    init.body = form;
  } else if (method === "POST") {
    init.body = JSON.stringify(body === undefined ? {} : body);
  }
  const response = await fetch(path, init);
  if (response.status === 401 && !retried && askForKey()) return api(path, { method, body, form, signal }, true);
  if (!response.ok) {
    let error = { message: `HTTP ${response.status}` };
    try { error = (await response.json()).error || error; } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, error);
  }
  return response;
}

function askForKey() {
  const key = window.prompt("This server needs an API key. Enter it once; it stays in this browser.");
  if (!key) return false;
  localStorage.setItem(KEY_STORE, key.trim());
  $("forget-key").hidden = false;
  return true;
}

// Server-sent events over fetch (EventSource cannot send an Authorization header).
async function* sseEvents(path, signal) {
  const response = await api(path, { signal });
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    let cut;
    while ((cut = buffer.indexOf("\n\n")) >= 0) {
      const block = buffer.slice(0, cut);
      buffer = buffer.slice(cut + 2);
      const data = block.split("\n").filter((l) => l.startsWith("data:")).map((l) => l.slice(5).trim()).join("\n");
      if (data) yield JSON.parse(data);
    }
  }
}

// ---------- the form ----------

function sizeOf() { return `${$("width").value}x${$("height").value}`; }

function readParams() {
  const params = {
    prompt: $("prompt").value,
    negative_prompt: $("negative_prompt").value || undefined,
    model: $("model").value || undefined,
    size: sizeOf(),
    steps: Number($("steps").value),
    cfg_scale: Number($("cfg_scale").value),
    sampler: $("sampler").value || undefined,
    schedule: $("schedule").value === "default" ? undefined : $("schedule").value,
    mode: $("mode").value === "auto" ? "auto" : Number($("mode").value),
    n: Number($("n").value),
    response_format: "b64_json",
  };
  if ($("seed").value !== "") params.seed = Number($("seed").value);
  return params;
}

function applyParams(p) {
  $("prompt").value = p.prompt || "";
  $("negative_prompt").value = p.negative_prompt || "";
  const [w, h] = (p.size || "512x512").split("x");
  $("width").value = w; $("height").value = h; syncPreset();
  for (const id of ["steps", "cfg_scale", "mode", "n"]) if (p[id] !== undefined) $(id).value = p[id];
  if (p.sampler) $("sampler").value = p.sampler;
  $("schedule").value = p.schedule || "default";
  if (p.model) $("model").value = p.model;
  $("seed").value = p.seed ?? "";
}

function syncPreset() {
  const size = sizeOf();
  const preset = $("size-preset");
  preset.value = [...preset.options].some((o) => o.value === size) ? size : "custom";
}

function clearErrors() {
  document.querySelectorAll(".field-error").forEach((e) => { e.textContent = ""; });
  document.querySelectorAll(".has-error").forEach((e) => e.classList.remove("has-error"));
  $("form-error").textContent = "";
}

function showError(error) {
  const param = error.param;
  const slot = param && [...document.querySelectorAll(".field-error")].find((e) => e.dataset.param.split(" ").includes(param));
  if (slot) {
    slot.textContent = error.message;
    slot.closest(".field").classList.add("has-error");
  } else {
    $("form-error").textContent = error.message;
  }
}

// ---------- a generation: submit, follow events, show results ----------

function setBusy(busy) {
  $("generate").disabled = busy;
  $("live").hidden = false;
  $("cancel").hidden = !busy;
}

function onEvent(event, params) {
  const bar = $("progress");
  if (event.type === "queued") {
    $("live-title").textContent = `In queue: position ${event.position}`;
  } else if (event.type === "progress") {
    const done = (event.image - 1) * event.steps + event.step;
    bar.max = event.images * event.steps;
    bar.value = done;
    $("live-title").textContent = "Generating…";
    const eta = event.eta_seconds == null ? "" : ` · ETA ${formatSeconds(event.eta_seconds)}`;
    $("progress-text").textContent = `Image ${event.image}/${event.images} · step ${event.step}/${event.steps}${eta}`;
  } else if (event.type === "preview") {
    const img = $("preview");
    img.src = `data:image/png;base64,${event.png_b64}`;
    img.hidden = false;
    img.dataset.step = String(event.step);
  } else if (event.type === "done") {
    bar.value = bar.max;
    $("live-title").textContent = "Done";
  } else if (event.type === "error") {
    $("live-title").textContent = "Failed";
    showError(event);
  } else if (event.type === "cancelled") {
    $("live-title").textContent = "Cancelled";
    $("progress-text").textContent = event.message;
  }
}

function formatSeconds(s) {
  return s >= 90 ? `${Math.floor(s / 60)} min ${Math.round(s % 60)} s` : `${Math.round(s)} s`;
}

async function generate() {
  if (state.job) return;
  clearErrors();
  const params = readParams();
  if ($("init-image").files.length) return generateEdit(params);
  setBusy(true);
  $("preview").hidden = true;
  $("progress").value = 0;
  $("progress-text").textContent = "";
  $("live-title").textContent = "Submitting…";
  state.abort = new AbortController();
  try {
    const created = await (await api("/v1/images/jobs", { method: "POST", body: params })).json();
    state.job = created.id;
    $("live").dataset.job = created.id;
    let final = null;
    for await (const event of sseEvents(created.events_url, state.abort.signal)) {
      onEvent(event, params);
      if (["done", "error", "cancelled"].includes(event.type)) { final = event; break; }
    }
    if (final && final.type === "done") {
      const result = await (await api(created.result_url)).json();
      showResults(result.data, params);
    }
  } catch (error) {
    if (error.name !== "AbortError") { showError(error); $("live-title").textContent = "Failed"; }
  } finally {
    state.job = null;
    setBusy(false);
  }
}

async function cancel() {
  if (!state.job) return;
  $("live-title").textContent = "Cancelling…";
  try { await api(`/v1/images/jobs/${state.job}/cancel`, { method: "POST" }); } catch (error) { showError(error); }
}

function showResults(images, params) {
  const out = $("outputs");
  out.replaceChildren();
  for (const image of images) {
    const used = { ...params, seed: image.seed };
    const src = image.b64_json ? `data:image/png;base64,${image.b64_json}` : image.url;
    out.append(resultCard(src, image.parameters, used));
    addHistory(src, image.parameters, used);
  }
}

function resultCard(src, parameters, used) {
  const card = $("result-template").content.firstElementChild.cloneNode(true);
  const img = card.querySelector("img");
  img.src = src;
  img.alt = `Generated: ${used.prompt}`;
  card.querySelector(".params").textContent = parameters;
  const link = card.querySelector(".download");
  link.href = src;
  link.download = `sd-${used.seed}.png`;
  card.querySelector(".again").addEventListener("click", () => applyParams(used));
  card.querySelector(".reuse-seed").addEventListener("click", () => { $("seed").value = used.seed; });
  return card;
}

// ---------- history: small thumbnails + parameters in localStorage ----------

function loadHistory() {
  try { return JSON.parse(localStorage.getItem(HISTORY_STORE)) || []; } catch (_) { return []; }
}

function saveHistory(items) {
  for (let keep = items.length; keep > 0; keep = Math.floor(keep / 2)) {
    try { localStorage.setItem(HISTORY_STORE, JSON.stringify(items.slice(0, keep))); return; } catch (_) { /* quota: keep fewer */ }
  }
}

function thumbnail(src) {
  return new Promise((resolve) => {
    const img = new Image();
    img.onload = () => {
      const scale = THUMB_SIDE / Math.max(img.naturalWidth, img.naturalHeight);
      const canvas = document.createElement("canvas");
      canvas.width = Math.max(1, Math.round(img.naturalWidth * Math.min(1, scale)));
      canvas.height = Math.max(1, Math.round(img.naturalHeight * Math.min(1, scale)));
      canvas.getContext("2d").drawImage(img, 0, 0, canvas.width, canvas.height);
      resolve(canvas.toDataURL("image/jpeg", 0.8));
    };
    img.onerror = () => resolve(null);
    img.src = src;
  });
}

async function addHistory(src, parameters, used) {
  const thumb = await thumbnail(src);
  const items = [{ thumb, parameters, params: used, at: Date.now() }, ...loadHistory()].slice(0, HISTORY_MAX);
  saveHistory(items);
  renderHistory();
}

function renderHistory() {
  const items = loadHistory();
  $("history-empty").hidden = items.length > 0;
  $("history").replaceChildren(...items.map((item) => {
    const button = document.createElement("button");
    button.type = "button";
    button.title = `${item.params.prompt}\nseed ${item.params.seed} · click to use these settings`;
    const img = document.createElement("img");
    img.src = item.thumb || "";
    img.alt = item.params.prompt;
    button.append(img);
    button.addEventListener("click", () => applyParams(item.params));
    return button;
  }));
}

// ---------- image to image: upload, strength, mask brush; posts to /v1/images/edits ----------

const mask = { image: null, painted: false, drawing: false };

function loadInitImage(file) {
  const img = new Image();
  img.onload = () => {
    mask.image = img;
    const canvas = $("mask-canvas");
    canvas.width = img.naturalWidth;
    canvas.height = img.naturalHeight;
    mask.painted = false;
    drawMask();
    $("mask-wrap").hidden = false;
  };
  img.src = URL.createObjectURL(file);
}

function drawMask() {
  const canvas = $("mask-canvas");
  const ctx = canvas.getContext("2d");
  ctx.clearRect(0, 0, canvas.width, canvas.height);
  if (mask.image) ctx.drawImage(mask.image, 0, 0);
  mask.painted = false;
}

function paint(event) {
  if (!mask.drawing) return;
  const canvas = $("mask-canvas");
  const rect = canvas.getBoundingClientRect();
  const x = (event.clientX - rect.left) * (canvas.width / rect.width);
  const y = (event.clientY - rect.top) * (canvas.height / rect.height);
  const ctx = canvas.getContext("2d");
  ctx.fillStyle = "rgba(255, 64, 64, 1)";
  ctx.beginPath();
  ctx.arc(x, y, Number($("brush").value) * (canvas.width / rect.width) / 2, 0, Math.PI * 2);
  ctx.fill();
  mask.painted = true;
}

// The mask OpenAI expects: same size, opaque where kept, fully transparent where painted.
function maskBlob() {
  const canvas = $("mask-canvas");
  const painted = canvas.getContext("2d").getImageData(0, 0, canvas.width, canvas.height);
  const original = document.createElement("canvas");
  original.width = canvas.width; original.height = canvas.height;
  const octx = original.getContext("2d");
  octx.drawImage(mask.image, 0, 0);
  const before = octx.getImageData(0, 0, canvas.width, canvas.height);
  const out = octx.createImageData(canvas.width, canvas.height);
  for (let i = 0; i < out.data.length; i += 4) {
    const changed = painted.data[i] !== before.data[i] || painted.data[i + 1] !== before.data[i + 1] || painted.data[i + 2] !== before.data[i + 2];
    out.data[i + 3] = changed ? 0 : 255;
  }
  octx.putImageData(out, 0, 0);
  return new Promise((resolve) => original.toBlob(resolve, "image/png"));
}

async function generateEdit(params) {
  setBusy(true);
  $("cancel").hidden = true;
  $("preview").hidden = true;
  $("live-title").textContent = "Editing… (progress is shown for text-to-image jobs)";
  const form = new FormData();
  form.append("image", $("init-image").files[0]);
  if (mask.painted) form.append("mask", await maskBlob(), "mask.png");
  form.append("strength", $("strength").value);
  for (const [key, value] of Object.entries(params)) if (value !== undefined) form.append(key, String(value));
  try {
    const result = await (await api("/v1/images/edits", { method: "POST", form })).json();
    $("live-title").textContent = "Done";
    showResults(result.data.map((d) => ({ ...d, parameters: d.parameters || "" })), params);
  } catch (error) {
    $("live-title").textContent = "Failed";
    showError(error.status === 404 ? { message: "This server has no image editing route yet." } : error);
  } finally {
    setBusy(false);
  }
}

// ---------- models tab ----------

async function loadModels() {
  const select = $("model");
  try {
    const models = (await (await api("/v1/models")).json()).data.map((m) => m.id);
    const current = select.value;
    select.replaceChildren(...models.map((id) => new Option(id, id)));
    if (models.includes(current)) select.value = current;
    else if (state.defaultModel && models.includes(state.defaultModel)) select.value = state.defaultModel;
    if (!models.length) select.append(new Option("(no model installed: see Models)", ""));
  } catch (error) { showError(error); }
}

async function loadGallery() {
  $("models-error").textContent = "";
  const list = $("model-list");
  try {
    const entries = await (await api("/models/available")).json();
    list.replaceChildren(...entries.map(modelRow));
    if (!entries.length) list.textContent = "No image models in the configured galleries.";
  } catch (error) { $("models-error").textContent = error.message; }
}

function modelRow(entry) {
  const row = document.createElement("div");
  row.className = "model";
  row.dataset.name = entry.name;
  const info = document.createElement("div");
  const title = document.createElement("h3");
  title.textContent = entry.name;
  if (entry.installed) title.insertAdjacentHTML("beforeend", '<span class="badge">installed</span>');
  const description = document.createElement("p");
  description.className = "muted small";
  description.textContent = entry.description || "";
  info.append(title, description);
  const button = document.createElement("button");
  button.type = "button";
  button.className = entry.installed ? "danger" : "secondary";
  button.textContent = entry.installed ? "Delete" : "Install";
  button.addEventListener("click", () => (entry.installed ? deleteModel(entry, row) : installModel(entry, row)));
  row.append(info, button);
  return row;
}

async function installModel(entry, row) {
  const gallery = entry.gallery && entry.gallery.name;
  const id = gallery ? `${gallery}@${entry.name}` : entry.name;
  const bar = document.createElement("progress");
  bar.max = 100; bar.value = 0;
  const text = document.createElement("p");
  text.className = "muted small install-status";
  row.append(bar, text);
  row.querySelector("button").disabled = true;
  try {
    const applied = await (await api("/models/apply", { method: "POST", body: { id } })).json();
    for (;;) {
      const status = await (await api(`/models/jobs/${applied.uuid}`)).json();
      bar.value = status.progress || 0;
      text.textContent = status.file_size
        ? `${status.file_name || ""} ${status.downloaded_size} of ${status.file_size} (${Math.round(status.progress)}%)`
        : status.message || "starting…";
      if (status.processed) {
        if (status.error) throw new Error(status.error);
        text.textContent = "Installed";
        break;
      }
      await new Promise((r) => setTimeout(r, 400));
    }
    await loadModels();
    await loadGallery();
  } catch (error) {
    text.textContent = "";
    $("models-error").textContent = error.message;
    row.querySelector("button").disabled = false;
  }
}

async function deleteModel(entry, row) {
  if (!window.confirm(`Delete model ${entry.name} and its files?`)) return;
  try {
    await api(`/models/delete/${encodeURIComponent(entry.name)}`, { method: "POST" });
    await loadModels();
    await loadGallery();
  } catch (error) { $("models-error").textContent = error.message; }
}

// ---------- start ----------

function showTab(button) {
  document.querySelectorAll("nav [role=tab]").forEach((tab) => {
    const selected = tab === button;
    tab.setAttribute("aria-selected", String(selected));
    $(tab.dataset.panel).hidden = !selected;
  });
  if (button.id === "tab-models") loadGallery();
}

async function loadOptions() {
  const options = await (await api("/v1/studio/options")).json();
  state.defaultModel = options.default_model;
  $("sampler").replaceChildren(...options.samplers.map((s) => new Option(`${s.a1111} (${s.name})`, s.name)));
  $("schedule").replaceChildren(...options.schedules.map((s) => new Option(s, s)));
  $("size-preset").replaceChildren(...options.sizes.map((s) => new Option(s.replace("x", " × "), s)), new Option("custom", "custom"));
  $("steps").value = options.default_steps;
  $("mode").value = options.default_mode === "auto" ? "auto" : String(options.default_mode ? 1 : 0);
  syncPreset();
}

function wire() {
  $("form").addEventListener("submit", (e) => { e.preventDefault(); generate(); });
  document.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && (e.ctrlKey || e.metaKey)) { e.preventDefault(); generate(); }
  });
  $("cancel").addEventListener("click", cancel);
  $("seed-random").addEventListener("click", () => { $("seed").value = ""; });
  $("size-preset").addEventListener("change", (e) => {
    if (e.target.value === "custom") return;
    const [w, h] = e.target.value.split("x");
    $("width").value = w; $("height").value = h;
  });
  $("width").addEventListener("input", syncPreset);
  $("height").addEventListener("input", syncPreset);
  document.querySelectorAll("nav [role=tab]").forEach((tab) => tab.addEventListener("click", () => showTab(tab)));
  $("models-refresh").addEventListener("click", loadGallery);
  $("history-clear").addEventListener("click", () => { localStorage.removeItem(HISTORY_STORE); renderHistory(); });
  $("forget-key").hidden = !localStorage.getItem(KEY_STORE);
  $("forget-key").addEventListener("click", () => { localStorage.removeItem(KEY_STORE); $("forget-key").hidden = true; });
  $("strength").addEventListener("input", (e) => { $("strength-out").textContent = e.target.value; });
  $("brush").addEventListener("input", (e) => { $("brush-out").textContent = e.target.value; });
  $("init-image").addEventListener("change", (e) => { if (e.target.files.length) loadInitImage(e.target.files[0]); });
  $("init-clear").addEventListener("click", () => { $("init-image").value = ""; mask.image = null; $("mask-wrap").hidden = true; });
  $("mask-clear").addEventListener("click", drawMask);
  const canvas = $("mask-canvas");
  canvas.addEventListener("pointerdown", (e) => { mask.drawing = true; canvas.setPointerCapture(e.pointerId); paint(e); });
  canvas.addEventListener("pointermove", paint);
  canvas.addEventListener("pointerup", () => { mask.drawing = false; });
}

wire();
renderHistory();
loadOptions().catch(showError).then(loadModels);
