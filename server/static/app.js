// phonesim web page: browse the catalog, or upload a photo, and see the most similar phones.
"use strict";

const $ = (id) => document.getElementById(id);
const PAGE_SIZE = 24;
// Seconds a request may take before the page gives up on it; an upload is embedded (slower).
// ?timeout_s=N overrides both (tests; a slow server).
const TIMEOUT_OVERRIDE = Number(new URLSearchParams(location.search).get("timeout_s"));
const UPLOAD_TIMEOUT_S = TIMEOUT_OVERRIDE > 0 ? TIMEOUT_OVERRIDE : 60;
const TIMEOUT_S = TIMEOUT_OVERRIDE > 0 ? TIMEOUT_OVERRIDE : 30;
// /v1/info is asked again while the server loads: 2 s, then twice as long, 30 s at most.
const INFO_RETRY_S = [2, 30];
// What the results show, so that changing an option can show it again:
// {kind: "catalog"} | {kind: "search", file} | {kind: "similar", item}.
let view = { kind: "catalog" };
// Each view's request takes a number; an answer that a newer view has overtaken is dropped,
// so a slow search cannot overwrite the phones the user clicked on since.
let latest = 0;
// The running view's request: a newer view aborts it (its answer would be dropped anyway).
let pending = null;
let nextCursor = null;
// Catalog size from /v1/info, 0 when the catalog is empty; null when unknown.
let catalogSize = null;

// A status line: plain text, or a list of strings and nodes (names isolated in <bdi>).
function setStatus(parts, isError = false) {
  const node = $("status");
  node.replaceChildren(...[].concat(parts));
  node.classList.toggle("error", isError);
}

// Metadata text in its own bidi context: a name with U+202E cannot flip the page's words.
function bdi(text) {
  return el("bdi", "", text);
}

function plural(n, one, many) {
  return `${n} ${n === 1 ? one : many}`;
}

// A user's words for an HTTP status that came without the server's JSON message.
function statusMessage(status) {
  if (status === 413) return `the server answered ${status} (the file is too large)`;
  if (status === 429) return `the server answered ${status} (too many requests); try again soon`;
  if (status >= 500) {
    return `the server answered ${status} (it may be restarting or overloaded); try again soon`;
  }
  return `the server answered ${status} (an unexpected answer); try again`;
}

// A new view's signal: the previous view's request is aborted.
function startRequest() {
  if (pending) pending.abort();
  pending = new AbortController();
  return pending.signal;
}

// fetch + JSON, given up after timeoutS seconds (or when ``signal`` aborts), with messages a
// shop employee can act on instead of "Failed to fetch".
async function api(url, { signal = null, timeoutS = TIMEOUT_S, ...options } = {}) {
  const controller = new AbortController();
  let timedOut = false;
  const timer = setTimeout(() => { timedOut = true; controller.abort(); }, timeoutS * 1000);
  const onAbort = () => controller.abort();
  if (signal) signal.addEventListener("abort", onAbort, { once: true });
  let response;
  let body = null;
  try {
    response = await fetch(url, { ...options, signal: controller.signal });
    try {
      body = await response.json();
    } catch (e) {
      if (!controller.signal.aborted) throw new Error(statusMessage(response.status));
      throw e;
    }
  } catch (e) {
    if (timedOut) throw new Error(`the server did not answer in ${timeoutS} s; try again`);
    if (controller.signal.aborted) throw e;  // a newer view took over: its caller drops it
    if (e instanceof TypeError) {
      throw new Error("cannot reach the server (check the network, or that it is running)");
    }
    throw e;
  } finally {
    clearTimeout(timer);
    if (signal) signal.removeEventListener("abort", onAbort);
  }
  if (!response.ok) {
    const err = (body && body.error) || {};
    throw new Error(err.message || statusMessage(response.status));
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

// Metadata shown as text: strings and numbers as given, anything else (true, {}) as nothing.
function plain(value) {
  if (typeof value === "string") return value;
  if (typeof value === "number" && Number.isFinite(value)) return String(value);
  return "";
}

function itemName(item) {
  return typeof item.title === "string" && item.title.trim() ? item.title : String(item.id);
}

// "$1,299" or "$499.50" for a number (or a numeric string); any other string as the catalog
// wrote it ("1 299,00 €", "call us"); nothing for true, {} or none.
function formatPrice(price) {
  const numeric = typeof price === "number"
    || (typeof price === "string" && price.trim() !== "" && !Number.isNaN(Number(price)));
  const value = Number(price);
  if (numeric && Number.isFinite(value)) {
    const cents = Number.isInteger(value) ? 0 : 2;
    return `$${value.toLocaleString("en-US", {
      minimumFractionDigits: cents, maximumFractionDigits: cents,
    })}`;
  }
  return typeof price === "string" ? price.trim() : "";
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
    const name = el("span", "name", c.label);
    name.dir = "auto";
    li.append(name);
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
  const text = el("span", "placeholder-text", "no image");
  text.setAttribute("aria-hidden", "true");  // the card's name is its title, not this
  thumb.replaceChildren(text);
  thumb.classList.add("missing");
}

function thumbnail(item) {
  const thumb = el("span", "thumb");
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
  img.alt = "";  // decorative: the title beside it names the phone
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

// A list item holding a real button (the list keeps its items; Enter and Space open it).
function itemCard(item) {
  const li = el("li", "cell");
  const card = el("button", "card neighbor");
  card.type = "button";
  card.dataset.id = item.id;
  const name = itemName(item);
  const body = el("span", "body");
  const title = el("span", "title", name);
  title.title = name;
  title.dir = "auto";
  body.append(title);
  const meta = el("span", "meta");
  const kind = el("span", "", plain(item.label) || plain(item.brand));
  kind.dir = "auto";
  meta.append(kind);
  const price = formatPrice(item.price);
  if (price) {
    const priceNode = el("span", "price", price);
    priceNode.dir = "auto";
    meta.append(priceNode);
  }
  body.append(meta);
  const brand = plain(item.brand);
  if (brand && brand !== plain(item.label)) body.append(el("span", "meta", brand));
  if (typeof item.score === "number") {
    const score = el("span", "score");
    const track = el("span", "track");
    const fill = el("span", "fill");
    fill.style.width = pct(item.score);
    track.append(fill);
    score.append(track, el("span", "", item.score.toFixed(3)));
    body.append(score);
  } else {
    body.append(el("span", "action", "Phones like this →"));
  }
  card.append(thumbnail(item), body);
  card.addEventListener("click", () => showSimilar(item, { focus: true }));
  card.addEventListener("keydown", (e) => {
    if (e.key === "Enter" && e.repeat) e.preventDefault();  // a held key opens it once
  });
  li.append(card);
  return li;
}

function setTitle(parts) {
  $("results-title").replaceChildren(...[].concat(parts));
}

// After a view the user asked for, focus goes to its heading, not to the page's top (the
// clicked card is gone). Not when the user has moved on to another control meanwhile.
function focusResults() {
  const active = document.activeElement;
  if (!active || active === document.body || $("results").contains(active)) {
    $("results-title").focus();
  }
}

// The photo's prediction and preview belong to its search: other views put the hint back.
function leaveUpload() {
  $("prediction").hidden = true;
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.removeAttribute("src");
  preview.hidden = true;
  $("drop-hint").hidden = false;
}

// A failed request leaves nothing of the previous answer beside the new photo.
function clearResults(title) {
  $("prediction").hidden = true;
  $("neighbors").replaceChildren();
  $("timing").textContent = "";
  setTitle(title);
  $("results-hint").hidden = true;
}

// Show items under a title; ``hint`` is the line above them (default: only when there are
// none). Returns the new cards' buttons.
function showResults(items, title, { append = false, hint = null } = {}) {
  setTitle(title);
  $("browse").hidden = view.kind === "catalog";
  const cards = items.map(itemCard);
  if (append) {
    $("neighbors").append(...cards);
  } else {
    $("neighbors").replaceChildren(...cards);
    const none = catalogSize === 0 ? "The catalog is empty." : "No catalog phone matches.";
    const text = hint || (items.length ? "" : none);
    $("results-hint").textContent = text;
    $("results-hint").hidden = !text;
  }
  return cards.map((li) => li.firstChild);
}

// Any phone in an answer means the catalog is not empty (it may have been when loaded).
function sawPhones(count) {
  if (count > 0 && catalogSize === 0) catalogSize = null;
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

async function loadCatalog(more = false, { focus = false } = {}) {
  view = { kind: "catalog" };
  const mine = ++latest;
  const signal = startRequest();
  if (!more) leaveUpload();
  const filter = currentFilter();
  const params = withFilter(new URLSearchParams({ limit: PAGE_SIZE }));
  if (more && nextCursor) params.set("cursor", nextCursor);
  try {
    const page = await api(`/v1/items?${params}`, { signal });
    if (mine !== latest) return;
    if (!more && !Object.keys(filter).length) catalogSize = page.items.length ? null : 0;
    const filtered = Object.keys(filter).length > 0;
    let hint = "Click a phone to see the phones most like it, or upload a photo of your own.";
    if (!page.items.length) {
      hint = filtered ? "No catalog phone matches the filter." : "The catalog is empty.";
    }
    const cards = showResults(page.items, "Catalog phones", { append: more, hint });
    setMore(page.next_cursor);
    if (more) {
      setStatus(`${plural(page.items.length, "more phone", "more phones")} shown.`);
      // The button may have gone with the last page: focus goes on to the first new phone.
      if (cards.length && document.activeElement === document.body) cards[0].focus();
    } else {
      setStatus(""); // a page that loads clears the error of one that did not
    }
    if (focus) focusResults();
  } catch (e) {
    if (mine !== latest) return;
    if (!more) clearResults("Catalog phones");
    setStatus(`cannot list the catalog: ${e.message}`, true);
    if (focus) focusResults();
  }
}

// ``note`` (a list of strings and nodes) goes before each status line of this search.
async function search(file, note = []) {
  if (!file) return;
  view = { kind: "search", file };
  const mine = ++latest;
  const signal = startRequest();
  setMore(null);
  const preview = $("preview");
  if (preview.src) URL.revokeObjectURL(preview.src);
  preview.src = URL.createObjectURL(file);
  preview.hidden = false;
  $("drop-hint").hidden = true;
  setStatus([...note, "Searching…"]);
  const form = new FormData();
  form.append("image", file);
  try {
    let query = `${queryString()}&ranking=${encodeURIComponent($("ranking").value)}`;
    if (!$("read-text-choice").hidden) {
      query += `&read_text=${encodeURIComponent($("read-text").value)}`;
    }
    const result = await api(`/v1/search?${query}`, {
      method: "POST", body: form, signal, timeoutS: UPLOAD_TIMEOUT_S,
    });
    if (mine !== latest) return;
    const found = result.neighbors.length;
    sawPhones(found);
    showPrediction(result.prediction);
    const order = found && result.ranking === "class" ? " (re-ranked by predicted class)" : "";
    showResults(result.neighbors, `Nearest catalog phones${order}`);
    showTiming(result.timing_ms);
    const label = bdi(result.prediction.label);
    const count = catalogSize === 0
      ? "the catalog is empty."
      : `${plural(found, "similar phone", "similar phones")} found.`;
    setStatus([...note, "Predicted ", label, ` (${pct(result.prediction.score)}); ${count}`]);
  } catch (e) {
    if (mine !== latest) return;
    clearResults("Nearest catalog phones");
    setStatus([...note, e.message], true);
  }
}

async function showSimilar(item, { focus = false } = {}) {
  const name = itemName(item);
  view = { kind: "similar", item };
  const mine = ++latest;
  const signal = startRequest();
  setMore(null);
  leaveUpload();
  setStatus(["Loading phones similar to ", bdi(name), "…"]);
  try {
    const query = `${queryString()}&ranking=${encodeURIComponent($("ranking").value)}`;
    const result = await api(`/v1/items/${encodeURIComponent(item.id)}/similar?${query}`,
      { signal });
    if (mine !== latest) return;
    const found = result.neighbors.length;
    sawPhones(found);
    const order = found && result.ranking === "class" ? " (re-ranked by its label)" : "";
    showResults(result.neighbors, ["Similar to ", bdi(name), order]);
    showTiming(result.timing_ms);
    setStatus([`${plural(found, "phone", "phones")} similar to `, bdi(name), "."]);
    if (focus) focusResults();
  } catch (e) {
    if (mine !== latest) return;
    clearResults(["Similar to ", bdi(name)]);
    setStatus(e.message, true);
    if (focus) focusResults();
  }
}

function refresh() {
  if (view.kind === "search") search(view.file);
  else if (view.kind === "similar") showSimilar(view.item);
  else loadCatalog();
}

async function loadInfo() {
  const info = await api("/v1/info");
  catalogSize = info.index.size;
  $("server-info").textContent =
    `${info.model.name} · ${info.classes.length} classes · ` +
    `${info.index.size} catalog phones (${info.index.kind} index)`;
  if (info.index.filterable_fields.includes("label")) {
    for (const name of info.classes) {
      const option = el("option", "", name);
      option.value = name;
      option.dir = "auto";
      $("label-filter").append(option);
    }
  } else {
    $("label-filter").disabled = true;
  }
  $("price-filter").hidden = !info.index.filterable_fields.includes("price");
  $("read-text-choice").hidden = !info.prediction.read_text;
}

// A server still loading (503) is asked again, less often each time; then the catalog loads.
async function connect(delayS = INFO_RETRY_S[0]) {
  try {
    await loadInfo();
  } catch (e) {
    $("server-info").textContent = `server not ready (${e.message}); trying again in ${delayS} s`;
    setTimeout(() => connect(Math.min(delayS * 2, INFO_RETRY_S[1])), delayS * 1000);
    return;
  }
  // Not over a photo or a phone the user opened while the server was loading.
  if (view.kind === "catalog") loadCatalog();
}

// Dropped or pasted files: the first is searched; the status says when others were left.
function takeFiles(files, how) {
  const file = files[0];
  if (!file) return;
  const note = files.length > 1
    ? [`${files.length} files ${how}; only the first, `, bdi(file.name), ", is used. "]
    : [];
  search(file, note);
}

function hasFiles(e) {
  return Boolean(e.dataTransfer && [...e.dataTransfer.types].includes("Files"));
}

function setup() {
  const zone = $("dropzone");
  const input = $("file");
  input.addEventListener("change", () => {
    const file = input.files[0];
    input.value = "";  // choosing the same file again (after an error) is a change again
    search(file);
  });
  // A photo that the browser cannot show (a text file named .jpg): the hint, not a broken box.
  $("preview").addEventListener("error", () => {
    $("preview").hidden = true;
    $("drop-hint").hidden = false;
  });
  for (const type of ["dragenter", "dragover"]) {
    zone.addEventListener(type, (e) => { e.preventDefault(); zone.classList.add("over"); });
  }
  for (const type of ["dragleave", "drop"]) {
    zone.addEventListener(type, () => zone.classList.remove("over"));
  }
  // A file dropped anywhere on the page is searched; the browser would open it instead,
  // leaving the page. Text dragged into a price box still drops there.
  document.addEventListener("dragover", (e) => { if (hasFiles(e)) e.preventDefault(); });
  document.addEventListener("drop", (e) => {
    if (!hasFiles(e)) return;
    e.preventDefault();
    takeFiles(e.dataTransfer.files, "dropped");
  });
  document.addEventListener("paste", (e) => {
    const files = e.clipboardData ? e.clipboardData.files : [];
    if (!files.length) return;
    e.preventDefault();
    takeFiles(files, "pasted");
  });
  for (const id of ["k", "label-filter", "price-min", "price-max", "ranking", "read-text"]) {
    $(id).addEventListener("change", refresh);
  }
  $("more").addEventListener("click", () => loadCatalog(true));
  $("browse").addEventListener("click", () => {
    setStatus("");
    loadCatalog(false, { focus: true });
  });
  connect();
}

document.addEventListener("DOMContentLoaded", setup);
