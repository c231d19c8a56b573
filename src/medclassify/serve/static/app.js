// The medclassify page: pick or drop an image, POST it to /v1/predict, show the answer.
// No framework and no build step; everything is served by the medclassify server itself.
"use strict";

const $ = (id) => document.getElementById(id);
let modelInfo = null;
let currentFile = null;
let heatmapUrl = null;
let heatmapNote = "";

function decodeClass(headers) {
  // RFC 8187: UTF-8''percent-encoded, so class names outside Latin-1 survive the header
  const encoded = headers.get("X-Class-Encoded");
  return encoded ? decodeURIComponent(encoded.replace(/^UTF-8''/i, "")) : "the predicted class";
}

function apiKey() { return sessionStorage.getItem("medclassify-key") || ""; }

async function api(path, options = {}) {
  const headers = Object.assign({}, options.headers || {});
  if (apiKey()) headers["X-API-Key"] = apiKey();
  let response;
  try {
    response = await fetch(path, Object.assign({}, options, { headers }));
  } catch (e) {
    throw new Error("The server cannot be reached. Is medclassify serve still running?");
  }
  if (response.status === 401) $("key-box").hidden = false;
  if (!response.ok) {
    let message = `The server answered ${response.status}.`;
    try {
      const body = await response.json();
      if (body.error && body.error.message) message = body.error.message;
    } catch (e) { /* not JSON: keep the status line */ }
    throw new Error(message);
  }
  return response;
}

function showError(message) {
  $("error").textContent = message;
  $("error").hidden = !message;
}

async function loadModel() {
  try {
    modelInfo = await (await api("/v1/model")).json();
    const what = modelInfo.kind === "cascade" ? `cascade of ${Object.keys(modelInfo.stages).length} models` : modelInfo.model;
    $("model-line").textContent = `${modelInfo.name} · ${what} · classes: ${modelInfo.classes.join(", ")} · version ${modelInfo.version}`;
    $("heat-toggle-box").hidden = !modelInfo.explain;
  } catch (e) {
    $("model-line").textContent = "Model information unavailable.";
    showError(e.message);
  }
}

function pct(p) { return `${(100 * p).toFixed(1)}%`; }

function bars(probabilities, title) {
  const box = document.createElement("div");
  box.className = "bar-group";
  if (title) {
    const h = document.createElement("h3");
    h.textContent = title;
    box.appendChild(h);
  }
  const sorted = Object.entries(probabilities).sort((a, b) => b[1] - a[1]);
  for (const [name, p] of sorted) {
    const row = document.createElement("div");
    row.className = "bar-row";
    row.dataset.class = name;
    row.innerHTML = '<span class="bar-name"></span><span class="bar"><span class="fill"></span></span><span class="bar-value"></span>';
    row.querySelector(".bar-name").textContent = name;
    row.querySelector(".fill").style.width = pct(p);
    row.querySelector(".bar-value").textContent = pct(p);
    box.appendChild(row);
  }
  return box;
}

function showResult(body, fileName) {
  $("result").hidden = false;
  $("file-name").textContent = fileName;
  const foreign = body.in_distribution === false;
  $("label").textContent = foreign ? "Not like the training images" : body.label;
  $("confidence").textContent = foreign ? "" : pct(body.probability);
  $("abstain").hidden = !body.abstain || foreign;
  $("ood").hidden = !foreign;
  const barsBox = $("bars");
  barsBox.replaceChildren();
  $("bars").hidden = foreign;
  const path = $("path");
  path.replaceChildren();
  if (body.cascade_path) {
    path.hidden = false;
    for (const step of body.cascade_path) {
      const li = document.createElement("li");
      li.textContent = `${step.stage}: ${step.label} (${pct(step.probability)})`;
      path.appendChild(li);
      barsBox.appendChild(bars(step.probabilities, `Stage ${step.stage}`));
    }
  } else {
    path.hidden = true;
    barsBox.appendChild(bars(body.probabilities));
  }
  if (foreign) path.hidden = true;  // no class is shown for an image unlike the training data
  $("meta").textContent = `${body.image.format} ${body.image.width}×${body.image.height} · model ${body.model.version} · ${body.timing_ms.total.toFixed(0)} ms`;
}

function showPreview(file) {
  $("preview-box").hidden = false;
  $("heatmap").hidden = true;
  $("heat-note").hidden = true;
  $("heat-toggle").checked = false;
  if (heatmapUrl) { URL.revokeObjectURL(heatmapUrl); heatmapUrl = null; }
  const browserCanShow = /\.(png|jpe?g|bmp)$/i.test(file.name) || /^image\/(png|jpeg|bmp)$/.test(file.type);
  $("preview").hidden = !browserCanShow;
  $("no-preview").hidden = browserCanShow;
  if (browserCanShow) $("preview").src = URL.createObjectURL(file);
}

async function classify(file) {
  currentFile = file;
  showError("");
  $("result").hidden = true;
  showPreview(file);
  const form = new FormData();
  form.append("file", file, file.name);
  document.body.classList.add("busy");
  try {
    const body = await (await api("/v1/predict", { method: "POST", body: form })).json();
    showResult(body, file.name);
  } catch (e) {
    showError(e.message);
    $("preview-box").hidden = true;
  } finally {
    document.body.classList.remove("busy");
  }
}

async function toggleHeatmap() {
  const on = $("heat-toggle").checked;
  if (!on || !currentFile) {
    $("heatmap").hidden = true;
    $("heat-note").hidden = true;
    $("preview").hidden = !$("no-preview").hidden;  // back to the plain image where the browser can show it
    return;
  }
  if (!heatmapUrl) {
    const form = new FormData();
    form.append("file", currentFile, currentFile.name);
    try {
      const response = await api("/v1/explain", { method: "POST", body: form });
      heatmapNote = response.headers.get("X-Localised-Evidence") === "false"
        ? `No localised evidence for ${decodeClass(response.headers)} in this image: the heatmap is flat, so it shows nothing.`
        : "";
      heatmapUrl = URL.createObjectURL(await response.blob());
    } catch (e) {
      showError(e.message);
      $("heat-toggle").checked = false;
      return;
    }
  }
  $("heatmap").src = heatmapUrl;
  $("heatmap").hidden = false;
  $("heat-note").textContent = heatmapNote;
  $("heat-note").hidden = !heatmapNote;
  $("preview").hidden = true;  // the heatmap is drawn over the uploaded image itself, at its own resolution
}

function setUp() {
  const drop = $("drop");
  drop.addEventListener("click", () => $("file").click());
  drop.addEventListener("keydown", (e) => { if (e.key === "Enter" || e.key === " ") $("file").click(); });
  $("file").addEventListener("change", () => { if ($("file").files[0]) classify($("file").files[0]); });
  for (const type of ["dragenter", "dragover"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    drop.addEventListener(type, (e) => { e.preventDefault(); drop.classList.remove("over"); });
  }
  drop.addEventListener("drop", (e) => { if (e.dataTransfer.files[0]) classify(e.dataTransfer.files[0]); });
  $("heat-toggle").addEventListener("change", toggleHeatmap);
  $("key-save").addEventListener("click", () => {
    sessionStorage.setItem("medclassify-key", $("api-key").value.trim());
    $("key-box").hidden = true;
    showError("");
    loadModel();
  });
  loadModel();
}

setUp();
