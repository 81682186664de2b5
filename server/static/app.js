// phonesim web page: upload a photo, show the predicted class and the nearest catalog phones.
"use strict";

const $ = (id) => document.getElementById(id);
let lastFile = null;

function setStatus(text, isError = false) {
  const el = $("status");
  el.textContent = text;
  el.classList.toggle("error", isError);
}

async function api(url, options = {}) {
  const response = await fetch(url, options);
  let body = null;
  try {
    body = await response.json();
  } catch (e) {
    throw new Error(`server answered ${response.status} without JSON`);
  }
  if (!response.ok) {
    const err = (body && body.error) || {};
    throw new Error(err.message || `server answered ${response.status}`);
  }
  return body;
}

function pct(x) {
  return `${(Math.max(0, Math.min(1, x)) * 100).toFixed(1)}%`;
}

function el(tag, className, text) {
  const node = document.createElement(tag);
  if (className) node.className = className;
  if (text !== undefined) node.textContent = text;
  return node;
}

function showPrediction(prediction) {
  $("prediction").hidden = false;
  $("prediction-label").textContent = prediction.label;
  $("prediction-score").textContent = pct(prediction.score);
  const bars = $("prediction-bars");
  bars.replaceChildren();
  for (const c of prediction.top) {
    const li = el("li");
    li.append(el("span", "name", c.label));
    const track = el("span", "track");
    const fill = el("span", "fill");
    fill.style.width = pct(c.score);
    track.append(fill);
    li.append(track, el("span", "pct", pct(c.score)));
    bars.append(li);
  }
}

function neighborCard(n) {
  const li = el("li", "card neighbor");
  li.tabIndex = 0;
  li.dataset.id = n.id;
  const thumb = el("div", "thumb");
  if (n.image_url) {
    const img = document.createElement("img");
    img.src = n.image_url;
    img.alt = n.title || n.id;
    img.loading = "lazy";
    thumb.append(img);
  }
  const body = el("div", "body");
  const title = el("div", "title", n.title || n.id);
  title.title = n.title || n.id;
  body.append(title);
  const meta = el("div", "meta");
  meta.append(el("span", "", n.label || n.brand || ""));
  if (n.price !== undefined && n.price !== "") meta.append(el("span", "", `$${n.price}`));
  body.append(meta);
  if (n.brand && n.brand !== n.label) body.append(el("div", "meta", n.brand));
  const score = el("div", "score");
  const track = el("span", "track");
  const fill = el("span", "fill");
  fill.style.width = pct(n.score);
  track.append(fill);
  score.append(track, el("span", "", n.score.toFixed(3)));
  body.append(score);
  li.append(thumb, body);
  const open = () => showSimilar(n);
  li.addEventListener("click", open);
  li.addEventListener("keydown", (e) => { if (e.key === "Enter") open(); });
  return li;
}

function showNeighbors(neighbors, title) {
  $("results-title").textContent = title;
  $("results-hint").hidden = neighbors.length > 0;
  if (!neighbors.length) $("results-hint").textContent = "No catalog phone matches.";
  $("neighbors").replaceChildren(...neighbors.map(neighborCard));
}

function queryString() {
  const params = new URLSearchParams({ k: $("k").value });
  const label = $("label-filter").value;
  if (label) params.set("label", label);
  return params.toString();
}

function showTiming(timing) {
  const parts = Object.entries(timing || {})
    .filter(([key]) => key !== "batch_size")
    .map(([key, ms]) => `${key} ${Number(ms).toFixed(1)} ms`);
  $("timing").textContent = parts.join(" · ");
}

async function search(file) {
  if (!file) return;
  lastFile = file;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  setStatus("Searching…");
  const form = new FormData();
  form.append("image", file);
  try {
    const result = await api(`/v1/search?${queryString()}`, { method: "POST", body: form });
    showPrediction(result.prediction);
    showNeighbors(result.neighbors, "Nearest catalog phones");
    showTiming(result.timing_ms);
    setStatus(`${result.neighbors.length} similar phones found.`);
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function showSimilar(item) {
  setStatus(`Loading phones similar to ${item.title || item.id}…`);
  try {
    const url = `/v1/items/${encodeURIComponent(item.id)}/similar?${queryString()}`;
    const result = await api(url);
    showNeighbors(result.neighbors, `Similar to ${item.title || item.id}`);
    showTiming(result.timing_ms);
    setStatus(`${result.neighbors.length} phones similar to the selected one.`);
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (e) {
    setStatus(e.message, true);
  }
}

async function loadInfo() {
  try {
    const info = await api("/v1/info");
    $("server-info").textContent =
      `${info.model.name} · ${info.classes.length} classes · ` +
      `${info.index.size} catalog phones (${info.index.kind} index)`;
    if (info.index.filterable_fields.includes("label")) {
      for (const name of info.classes) {
        const option = el("option", "", name);
        option.value = name;
        $("label-filter").append(option);
      }
    } else {
      $("label-filter").disabled = true;
    }
  } catch (e) {
    $("server-info").textContent = `server not ready: ${e.message}`;
  }
}

function setup() {
  const zone = $("dropzone");
  $("file").addEventListener("change", (e) => search(e.target.files[0]));
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  zone.addEventListener("drop", (e) => {
    e.preventDefault();
    const file = e.dataTransfer.files[0];
    if (file) search(file);
  });
  for (const id of ["k", "label-filter"]) {
    $(id).addEventListener("change", () => { if (lastFile) search(lastFile); });
  }
  loadInfo();
}

document.addEventListener("DOMContentLoaded", setup);
