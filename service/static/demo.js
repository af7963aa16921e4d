// Demo page of KinD Serve: plain JavaScript against the public API, no framework, no build step.
//
// A photo is stored once (POST /images); every setting afterwards asks for /enhance?image_id=..., so moving
// the slider never re-uploads it. A newer request aborts the one in flight (the server drops its queued work).
// A photo larger than PREVIEW_SIDE is shown and re-lit as a preview (preview=PREVIEW_SIDE: the server keeps the
// preview's parts, so each slider move costs a fraction of a second); the download asks for the full resolution.
// The full resolution is not started in the background: on a CPU server it would hold the model for a minute,
// and this page's slider requests would queue behind its tiles.
"use strict";

const ALPHA_LO = 0.5;
const ALPHA_HI = 20;
const SLIDER_MAX = 1000;
const DEBOUNCE_MS = 120; // coalesces a drag's input events (every frame) into one request
const TOKEN_KEY = "kind-token";
const PREVIEW_SIDE = 1024; // px, longest side: about 0.8 megapixels for a 4:3 photo

const $ = (id) => document.getElementById(id);
const state = {
  file: null,
  imageId: null,
  size: null, // [width, height] of the stored photo
  preview: null, // longest side of the previews asked for; null: the photo is small enough to show whole
  token: sessionStorage.getItem(TOKEN_KEY) || "",
  inFlight: null, // AbortController of the running request
  resultUrl: null,
  lastAction: null, // retried after a token is entered
  timer: null,
};

// -- light level: a log-scale slider, since α multiplies the illumination ------------------------------
function sliderToAlpha(position) {
  return ALPHA_LO * Math.pow(ALPHA_HI / ALPHA_LO, position / SLIDER_MAX);
}

function alphaToSlider(alpha) {
  const clamped = Math.min(ALPHA_HI, Math.max(ALPHA_LO, alpha));
  return Math.round((SLIDER_MAX * Math.log(clamped / ALPHA_LO)) / Math.log(ALPHA_HI / ALPHA_LO));
}

function alphaParam() {
  return $("auto").checked ? "auto" : sliderToAlpha(Number($("alpha").value)).toFixed(2);
}

function mode() {
  return document.querySelector('input[name="mode"]:checked').value;
}

function showAlpha(alpha, auto) {
  $("alpha-value").textContent = alpha === null ? "α auto" : `α ${alpha.toFixed(2)}${auto ? " (auto)" : ""}`;
}

// -- status, progress and errors -------------------------------------------------------------------------
function busy(text, fraction) {
  const progress = $("progress");
  progress.hidden = false;
  if (fraction === undefined) progress.removeAttribute("value");
  else progress.value = fraction;
  $("status-text").textContent = text;
  document.body.setAttribute("aria-busy", "true");
}

function idle(text) {
  $("progress").hidden = true;
  $("status-text").textContent = text;
  document.body.removeAttribute("aria-busy");
}

function showError(message) {
  const box = $("error");
  box.textContent = message;
  box.hidden = false;
  idle("Failed.");
}

function clearError() {
  $("error").hidden = true;
}

class ApiError extends Error {
  constructor(status, problem) {
    const title = problem.title || `HTTP ${status}`;
    const retry = problem.retry_after ? ` Try again in ${problem.retry_after} s.` : "";
    super(problem.detail ? `${title}: ${problem.detail}.${retry}` : `${title}.${retry}`);
    this.status = status;
    this.kind = problem.type || "";
  }
}

async function problemOf(status, text, retryAfter) {
  let problem = {};
  try {
    problem = JSON.parse(text);
  } catch {
    problem = { title: `HTTP ${status}`, detail: text.slice(0, 200) };
  }
  if (retryAfter) problem.retry_after = retryAfter;
  return new ApiError(status, problem);
}

function authHeaders() {
  return state.token ? { Authorization: `Bearer ${state.token}` } : {};
}

// -- API calls ------------------------------------------------------------------------------------------
function upload(file, signal) {
  // XMLHttpRequest, not fetch: it reports upload progress
  return new Promise((resolve, reject) => {
    const xhr = new XMLHttpRequest();
    signal.addEventListener("abort", () => xhr.abort());
    xhr.onabort = () => reject(new DOMException("upload replaced by a newer one", "AbortError"));
    xhr.open("POST", "/images");
    for (const [name, value] of Object.entries(authHeaders())) xhr.setRequestHeader(name, value);
    xhr.setRequestHeader("Content-Type", file.type || "application/octet-stream");
    xhr.upload.onprogress = (event) => {
      if (event.lengthComputable) busy(`Uploading… ${Math.round((100 * event.loaded) / event.total)} %`, event.loaded / event.total);
    };
    xhr.onload = async () => {
      if (xhr.status === 201) resolve(JSON.parse(xhr.responseText));
      else reject(await problemOf(xhr.status, xhr.responseText, xhr.getResponseHeader("Retry-After")));
    };
    xhr.onerror = () => reject(new ApiError(0, { title: "Network error", detail: "the server could not be reached" }));
    xhr.send(file);
  });
}

async function call(url, options = {}) {
  const response = await fetch(url, { ...options, headers: { ...authHeaders(), ...(options.headers || {}) } });
  if (!response.ok) throw await problemOf(response.status, await response.text(), response.headers.get("Retry-After"));
  return response;
}

// Runs `action`; asks for a token on 401, stores the photo again if the server has forgotten it.
async function run(action, label) {
  if (state.inFlight) state.inFlight.abort();
  const controller = new AbortController();
  state.inFlight = controller;
  clearError();
  const started = performance.now();
  busy(`${label}…`);
  const tick = setInterval(() => {
    if (!$("progress").hasAttribute("value")) busy(`${label}… ${((performance.now() - started) / 1000).toFixed(1)} s`);
  }, 200); // the upload shows its own percentage
  try {
    await action(controller.signal).catch(async (error) => {
      if (error.status !== 404 || !error.kind.endsWith("unknown-image") || !state.file) throw error;
      await store(state.file, controller.signal); // expired from the store: upload once more, then retry
      return action(controller.signal);
    });
    if (state.inFlight === controller) idle(`Done in ${((performance.now() - started) / 1000).toFixed(1)} s.`);
  } catch (error) {
    if (error.name === "AbortError") return;
    if (error.status === 401) {
      state.lastAction = [action, label];
      $("token-form").hidden = false;
      $("token").focus();
    }
    showError(error.message);
  } finally {
    clearInterval(tick);
    if (state.inFlight === controller) state.inFlight = null;
  }
}

async function store(file, signal) {
  busy("Uploading…", 0);
  const stored = await upload(file, signal);
  state.imageId = stored.id;
  state.size = [stored.width, stored.height];
  state.preview = Math.max(stored.width, stored.height) > PREVIEW_SIDE ? PREVIEW_SIDE : null;
  $("progress").removeAttribute("value"); // uploaded: the rest has no measurable progress
  return stored;
}

function enhanceUrl(format, preview = null) {
  const params = new URLSearchParams({ image_id: state.imageId, alpha: alphaParam(), mode: mode(), format });
  if (preview) params.set("preview", String(preview));
  if ($("strip").checked) params.set("strip_metadata", "true");
  return `/enhance?${params}`;
}

async function enhance(signal) {
  const preview = state.preview;
  const response = await call(enhanceUrl("jpeg", preview), { method: "POST", signal });
  const blob = await response.blob();
  const used = Number(response.headers.get("X-Alpha"));
  const gain = Number(response.headers.get("X-Exposure-Gain"));
  if (state.resultUrl) URL.revokeObjectURL(state.resultUrl);
  state.resultUrl = URL.createObjectURL(blob);
  const after = $("after");
  await new Promise((resolve) => {
    after.onload = resolve;
    after.onerror = resolve;
    after.src = state.resultUrl;
  });
  if ($("before").dataset.broken === "true") $("compare").style.setProperty("--split", "0%");
  after.dataset.alpha = String(used);
  after.dataset.preview = preview ? "true" : "false";
  const [width, height] = state.size;
  $("resolution").textContent = preview
    ? `Preview at ${after.naturalWidth}×${after.naturalHeight}; the download is the full ${width}×${height}.`
    : "";
  $("resolution").hidden = !preview;
  if ($("auto").checked) $("alpha").value = alphaToSlider(used);
  showAlpha(used, $("auto").checked);
  $("exposure").textContent = gain > 0 ? `${gain < 10 ? gain.toFixed(1) : gain.toFixed(0)}× as bright as the photo` : "";
  $("download").disabled = false;
  $("decomposition").hidden = false;
}

async function download(signal) {
  const format = $("format").value;
  // quality=fast: the full resolution from networks run at half of it (the server says so in X-Quality)
  const url = enhanceUrl(format) + ($("fast").checked ? "&quality=fast" : "");
  const response = await call(url, { method: "POST", signal });
  const blobUrl = URL.createObjectURL(await response.blob());
  const link = document.createElement("a");
  const stem = (state.file.name || "photo").replace(/\.[^.]*$/, "");
  link.href = blobUrl;
  link.download = `${stem}-kind.${format === "jpeg" ? "jpg" : format}`;
  document.body.append(link);
  link.click();
  link.remove();
  setTimeout(() => URL.revokeObjectURL(blobUrl), 10000);
}

const COMPONENTS = { R: "reflectance R", L: "illumination L", L_adj: "adjusted illumination" };

async function decompose(signal) {
  const params = new URLSearchParams({ image_id: state.imageId, alpha: alphaParam(), mode: mode() });
  const links = await (await call(`/decompose?${params}`, { signal })).json();
  const figures = [];
  for (const [name, url] of Object.entries(links.components)) {
    const blob = await (await call(url, { signal })).blob();
    const figure = document.createElement("figure");
    const image = document.createElement("img");
    image.src = URL.createObjectURL(blob);
    image.alt = COMPONENTS[name] || name;
    image.dataset.component = name;
    const caption = document.createElement("figcaption");
    caption.textContent = name === "L_adj" ? `${COMPONENTS[name]} (α ${links.alpha.toFixed(2)})` : COMPONENTS[name];
    figure.append(image, caption);
    figures.push(figure);
  }
  for (const old of $("components").querySelectorAll("img")) URL.revokeObjectURL(old.src);
  $("components").replaceChildren(...figures);
}

// -- choosing a photo -------------------------------------------------------------------------------------
function choose(file) {
  if (!file) return;
  state.file = file;
  state.imageId = null;
  state.preview = null;
  $("resolution").hidden = true;
  $("components").replaceChildren();
  const before = $("before");
  before.dataset.broken = "false";
  $("note").hidden = true;
  before.onerror = () => {
    // e.g. HEIC outside Safari: the server reads it, this browser cannot show it
    before.dataset.broken = "true";
    $("note").textContent = "This browser cannot display the original format; the result is shown alone.";
    $("note").hidden = false;
  };
  if (before.src) URL.revokeObjectURL(before.src);
  before.src = URL.createObjectURL(file);
  $("compare").style.setProperty("--split", "50%");
  $("after").removeAttribute("src");
  $("view").hidden = false;
  run(async (signal) => {
    await store(file, signal);
    await enhance(signal);
  }, "Enhancing");
}

function scheduleEnhance() {
  if (!state.imageId) return;
  clearTimeout(state.timer);
  state.timer = setTimeout(() => run(enhance, "Enhancing"), DEBOUNCE_MS);
}

// -- before/after split -----------------------------------------------------------------------------------
function setSplit(percent) {
  const value = Math.min(100, Math.max(0, percent));
  $("compare").style.setProperty("--split", `${value}%`);
  $("handle").setAttribute("aria-valuenow", String(Math.round(value)));
}

function splitFromPointer(event) {
  const box = $("compare").getBoundingClientRect();
  setSplit((100 * (event.clientX - box.left)) / box.width);
}

function wire() {
  $("file").addEventListener("change", (event) => choose(event.target.files[0]));
  const pick = $("pick");
  for (const name of ["dragenter", "dragover"]) {
    document.addEventListener(name, (event) => {
      event.preventDefault();
      pick.classList.add("over");
    });
  }
  document.addEventListener("dragleave", () => pick.classList.remove("over"));
  document.addEventListener("drop", (event) => {
    event.preventDefault();
    pick.classList.remove("over");
    choose(event.dataTransfer.files[0]);
  });

  $("alpha").addEventListener("input", () => {
    $("auto").checked = false;
    showAlpha(sliderToAlpha(Number($("alpha").value)), false);
    scheduleEnhance();
  });
  $("auto").addEventListener("change", () => {
    if (!$("auto").checked) showAlpha(sliderToAlpha(Number($("alpha").value)), false);
    scheduleEnhance();
  });
  for (const radio of document.querySelectorAll('input[name="mode"]')) radio.addEventListener("change", scheduleEnhance);
  $("download").addEventListener("click", () =>
    run(download, state.preview ? "Enhancing the full resolution for the download" : "Preparing the download"),
  );
  $("decompose").addEventListener("click", () => run(decompose, "Decomposing"));

  const compare = $("compare");
  compare.addEventListener("dragstart", (event) => event.preventDefault()); // an image drag would cancel the pointer
  compare.addEventListener("pointerdown", (event) => {
    event.preventDefault();
    compare.setPointerCapture(event.pointerId);
    splitFromPointer(event);
  });
  compare.addEventListener("pointermove", (event) => {
    if (compare.hasPointerCapture(event.pointerId)) splitFromPointer(event);
  });
  $("handle").addEventListener("keydown", (event) => {
    const now = Number($("handle").getAttribute("aria-valuenow"));
    if (event.key === "ArrowLeft") setSplit(now - 5);
    else if (event.key === "ArrowRight") setSplit(now + 5);
    else return;
    event.preventDefault();
  });

  $("token-form").addEventListener("submit", (event) => {
    event.preventDefault();
    state.token = $("token").value.trim();
    sessionStorage.setItem(TOKEN_KEY, state.token);
    $("token-form").hidden = true;
    if (state.lastAction) run(...state.lastAction);
    else if (state.file) choose(state.file);
  });
}

wire();
