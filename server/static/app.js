// phonesim web page: browse the catalog, or upload a photo, and see the most similar phones.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 24;
// What the results show, so that changing an option can show it again:
// {kind: "catalog"} | {kind: "search", file} | {kind: "similar", item}.
let view = { kind: "catalog" };
// Each view's request takes a number; an answer that a newer view has overtaken is dropped,
// so a slow search cannot overwrite the phones the user clicked on since.
let latest = 0;
let nextCursor = null;

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
  // Say what the class came from: the classifier, the neighbours' labels, the photo's text.
  const fused = prediction.source.startsWith("classifier+knn");
  let source = fused
    ? "classifier, fused with the labels of the nearest catalog phones"
    : "classifier";
  if (prediction.source.endsWith("+text")) {
    source += "; the text on the photo names " + prediction.text_cues.join(", ");
  } else if (!fused) {
    source += " alone";
  }
  if (prediction.text_read === false) {
    const why = {
      sure: "sure enough that the photo's text was not read",
      never: "the photo's text was not read",
      failed: "the photo's text could not be read",
      budget: "the photo's text was not read: the request's reading time was spent",
      busy: "the photo's text was not read: the reader was busy with other requests",
    };
    source += " (" + (why[prediction.text_unread] || "the photo's text was not read") + ")";
  }
  $("prediction-source").textContent = source;
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

// A neutral placeholder where an item has no image or its image cannot be loaded.
function markMissing(thumb) {
  thumb.replaceChildren(el("span", "placeholder-text", "no image"));
  thumb.classList.add("missing");
}

function thumbnail(item) {
  const thumb = el("div", "thumb");
  if (!item.image_url) {
    markMissing(thumb);
    return thumb;
  }
  loadThumb(thumb, item, 0);
  return thumb;
}

// A thumbnail refused by --rate-limit (429) fails like a missing one: a fresh image asks
// again twice, a little later each time, before the card says "no image".
function loadThumb(thumb, item, tries) {
  const img = document.createElement("img");
  img.alt = item.title || item.id;
  img.loading = "lazy";
  img.addEventListener("error", () => {
    if (tries >= 2) {
      markMissing(thumb);
    } else {
      // Not for a card a newer answer has replaced: its retries would spend the new one's.
      setTimeout(() => { if (thumb.isConnected) loadThumb(thumb, item, tries + 1); },
        1000 * (tries + 1));
    }
  }, { once: true });
  img.src = item.image_url;
  thumb.replaceChildren(img);
}

function itemCard(item) {
  const li = el("li", "card neighbor");
  li.tabIndex = 0;
  li.setAttribute("role", "button");  // a control: Enter and Space open it
  li.dataset.id = item.id;
  const body = el("div", "body");
  const title = el("div", "title", item.title || item.id);
  title.title = item.title || item.id;
  body.append(title);
  const meta = el("div", "meta");
  meta.append(el("span", "", item.label || item.brand || ""));
  if (item.price != null && item.price !== "") meta.append(el("span", "", `$${item.price}`));
  body.append(meta);
  if (item.brand && item.brand !== item.label) body.append(el("div", "meta", item.brand));
  if (typeof item.score === "number") {
    const score = el("div", "score");
    const track = el("span", "track");
    const fill = el("span", "fill");
    fill.style.width = pct(item.score);
    track.append(fill);
    score.append(track, el("span", "", item.score.toFixed(3)));
    body.append(score);
  } else {
    body.append(el("div", "action", "Phones like this →"));
  }
  li.append(thumbnail(item), body);
  const open = () => showSimilar(item);
  li.addEventListener("click", open);
  li.addEventListener("keydown", (e) => {
    if ((e.key === "Enter" || e.key === " ") && !e.repeat) {  // a held key opens it once
      e.preventDefault();  // Space would scroll the page
      open();
    }
  });
  return li;
}

// A failed request leaves nothing of the previous answer beside the new photo.
function clearResults(title) {
  $("prediction").hidden = true;
  $("neighbors").replaceChildren();
  $("timing").textContent = "";
  $("results-title").textContent = title;
  $("results-hint").hidden = true;
}

// Show items under a title; ``hint`` is the line above them (default: only when there are none).
function showResults(items, title, { append = false, hint = null } = {}) {
  $("results-title").textContent = title;
  $("browse").hidden = view.kind === "catalog";
  const cards = items.map(itemCard);
  if (append) {
    $("neighbors").append(...cards);
    return;
  }
  $("neighbors").replaceChildren(...cards);
  const text = hint || (items.length ? "" : "No catalog phone matches.");
  $("results-hint").textContent = text;
  $("results-hint").hidden = !text;
}

// The class and the price range as one JSON filter ({"price": {"gte": .., "lte": ..}}).
function currentFilter() {
  const filter = {};
  const label = $("label-filter").value;
  if (label) filter.label = label;
  const range = {};
  const min = $("price-min").value;
  const max = $("price-max").value;
  if (min !== "") range.gte = Number(min);
  if (max !== "") range.lte = Number(max);
  if (Object.keys(range).length) filter.price = range;
  return filter;
}

function withFilter(params) {
  const filter = currentFilter();
  if (Object.keys(filter).length) params.set("filter", JSON.stringify(filter));
  return params;
}

function queryString() {
  return withFilter(new URLSearchParams({ k: $("k").value })).toString();
}

function showTiming(timing) {
  const parts = Object.entries(timing || {})
    .filter(([key]) => key !== "batch_size")
    .map(([key, ms]) => `${key} ${Number(ms).toFixed(1)} ms`);
  $("timing").textContent = parts.join(" · ");
}

function setMore(cursor) {
  nextCursor = cursor;
  $("more").hidden = view.kind !== "catalog" || !cursor;
}

async function loadCatalog(more = false) {
  view = { kind: "catalog" };
  const mine = ++latest;
  const params = withFilter(new URLSearchParams({ limit: PAGE_SIZE }));
  if (more && nextCursor) params.set("cursor", nextCursor);
  try {
    const page = await api(`/v1/items?${params}`);
    if (mine !== latest) return;
    const hint = page.items.length
      ? "Click a phone to see the phones most like it, or upload a photo of your own."
      : "The catalog is empty.";
    showResults(page.items, "Catalog phones", { append: more, hint });
    setMore(page.next_cursor);
    setStatus(""); // a page that loads clears the error of one that did not
  } catch (e) {
    if (mine !== latest) return;
    if (!more) clearResults("Catalog phones");
    setStatus(`cannot list the catalog: ${e.message}`, true);
  }
}

async function search(file) {
  if (!file) return;
  view = { kind: "search", file };
  const mine = ++latest;
  setMore(null);
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  setStatus("Searching…");
  const form = new FormData();
  form.append("image", file);
  try {
    let query = `${queryString()}&ranking=${encodeURIComponent($("ranking").value)}`;
    if (!$("read-text-choice").hidden) {
      query += `&read_text=${encodeURIComponent($("read-text").value)}`;
    }
    const result = await api(`/v1/search?${query}`, { method: "POST", body: form });
    if (mine !== latest) return;
    showPrediction(result.prediction);
    const order = result.ranking === "class" ? " (re-ranked by predicted class)" : "";
    showResults(result.neighbors, `Nearest catalog phones${order}`);
    showTiming(result.timing_ms);
    setStatus(`${result.neighbors.length} similar phones found.`);
  } catch (e) {
    if (mine !== latest) return;
    clearResults("Nearest catalog phones");
    setStatus(e.message, true);
  }
}

async function showSimilar(item) {
  const name = item.title || item.id;
  view = { kind: "similar", item };
  const mine = ++latest;
  setMore(null);
  setStatus(`Loading phones similar to ${name}…`);
  try {
    const query = `${queryString()}&ranking=${encodeURIComponent($("ranking").value)}`;
    const result = await api(`/v1/items/${encodeURIComponent(item.id)}/similar?${query}`);
    if (mine !== latest) return;
    const order = result.ranking === "class" ? " (re-ranked by its label)" : "";
    showResults(result.neighbors, `Similar to ${name}${order}`);
    showTiming(result.timing_ms);
    setStatus(`${result.neighbors.length} phones similar to the selected one.`);
    window.scrollTo({ top: 0, behavior: "smooth" });
  } catch (e) {
    if (mine !== latest) return;
    clearResults(`Similar to ${name}`);
    setStatus(e.message, true);
  }
}

function refresh() {
  if (view.kind === "search") search(view.file);
  else if (view.kind === "similar") showSimilar(view.item);
  else loadCatalog();
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
    $("price-filter").hidden = !info.index.filterable_fields.includes("price");
    $("read-text-choice").hidden = !info.prediction.read_text;
    return true;
  } catch (e) {
    $("server-info").textContent = `server not ready: ${e.message}`;
    return false;
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
  for (const id of ["k", "label-filter", "price-min", "price-max", "ranking", "read-text"]) {
    $(id).addEventListener("change", refresh);
  }
  $("more").addEventListener("click", () => loadCatalog(true));
  $("browse").addEventListener("click", () => {
    setStatus("");
    loadCatalog();
  });
  loadInfo().then((ready) => { if (ready) loadCatalog(); });
}

document.addEventListener("DOMContentLoaded", setup);
