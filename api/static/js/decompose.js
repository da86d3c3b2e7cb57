// The Decompose view: choose an image, submit `POST /v1/jobs`, follow its progress, then show the
// layers on a checkerboard beside a live composite, with downloads.

import { api, hideError, showError } from "./api.js";
import { LayerStack } from "./compose.js";
import { dropZone } from "./drop.js";
import { remember } from "./history.js";
import { initSave } from "./save.js";
import { buildSettings } from "./settings.js";
import { describeJob, fraction, watchJob } from "./watch.js";

const $ = (id) => document.getElementById(id);
const EXPORT_LABELS = { psd: "PSD (Photoshop)", pptx: "PPTX (PowerPoint)", zip: "ZIP of PNG layers", ora: "ORA (OpenRaster)" };

let chosen = null; // {blob, name}
let watcher = null;
let currentJob = null;
let settings = null;
let stack = null;
const setListeners = [];

/** Call `fn(job)` whenever the page starts working on another finished layer set. */
export function onSet(fn) { setListeners.push(fn); }
export function currentSet() { return currentJob?.status === "succeeded" ? currentJob : null; }

export async function initDecompose({ editLayer } = {}) {
  initDecompose.editLayer = editLayer;
  settings = await buildSettings($("settings"), "d");
  stack = new LayerStack($("composite"), renderGallery);
  dropZone($("drop"), $("file"), ([f]) => choose(f, f.name));
  $("use-sample").addEventListener("click", async () => {
    const resp = await fetch("/sample.png");
    $("file").value = ""; // the picker would otherwise still name the previous file
    choose(await resp.blob(), "sample.png");
  });
  $("decompose-form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  $("cancel").addEventListener("click", cancel);
  $("reset-layers").addEventListener("click", () => stack.reset());
  $("download-composite").addEventListener("click", downloadComposite);
  initSave(stack, () => currentJob, (job, name) => { remember({ id: job.id, kind: "job", name }); follow(job); });
}

function choose(blob, name) {
  chosen = { blob, name };
  const img = $("preview");
  if (img.src.startsWith("blob:")) URL.revokeObjectURL(img.src);
  img.src = URL.createObjectURL(blob);
  img.alt = `Chosen image: ${name}`;
  img.hidden = false;
  $("drop-help").textContent = `${name} — drop another image or press Enter to change it`;
  hideError($("decompose-error"));
  // A finished job's progress line would read as if it belonged to the new image.
  if (!currentJob || ["succeeded", "failed", "canceled", "expired"].includes(currentJob.status)) $("progress-box").hidden = true;
}

async function submit() {
  const errBox = $("decompose-error");
  hideError(errBox);
  if (!chosen) {
    showError(errBox, { message: "choose an image first (drop one, pick a file, or use the sample)", field: "image" }, "Missing image");
    return;
  }
  const form = new FormData();
  form.append("image", chosen.blob, chosen.name);
  form.append("params", JSON.stringify(settings.read()));
  $("submit").disabled = true;
  try {
    const job = await api("POST", "/v1/jobs", form);
    remember({ id: job.id, kind: "job", name: chosen.name });
    settings.showSeed(job.params.seed);
    follow(job);
  } catch (err) {
    showError(errBox, err);
    $("submit").disabled = false;
  }
}

/** Follow a job opened from the jobs list or the batch table: the chosen image is not its input. */
export function open(job) {
  chosen = null;
  $("file").value = "";
  $("preview").hidden = true;
  $("drop-help").textContent = "Drop an image here, or press Enter to choose a file";
  follow(job);
}

/** Follow a job until it ends, then show its layers. */
export function follow(job) {
  watcher?.stop();
  currentJob = job;
  $("result").hidden = true;
  $("result-empty").hidden = false;
  hideError($("decompose-error"));
  $("progress-box").hidden = false;
  update(job);
  // A finished job (opened from a list, an accepted edit) needs no watch: a second read would show
  // its layers again and undo whatever the user arranged meanwhile.
  if (["succeeded", "failed", "canceled", "expired"].includes(job.status)) return;
  watcher = watchJob(job.id, {
    onUpdate: update,
    onError: (err) => { showError($("decompose-error"), err, "Lost the job"); finish(); },
  });
}

function update(job) {
  currentJob = job;
  $("progress-bar").value = fraction(job);
  $("progress-text").textContent = `Job ${job.id.slice(0, 8)}: ${describeJob(job)}${job.cached_from ? " (answered from an identical earlier job)" : ""}`;
  const running = !["succeeded", "failed", "canceled", "expired"].includes(job.status);
  $("cancel").hidden = !running;
  $("submit").disabled = running;
  if (job.status === "succeeded") { finish(); showResult(job); }
  if (job.status === "failed") {
    finish();
    const e = job.error || {};
    showError($("decompose-error"), { message: `${e.message || "the job failed"}${e.code ? ` (${e.code})` : ""}` }, "The job failed");
  }
  if (job.status === "canceled" || job.status === "expired") finish();
}

function finish() {
  $("submit").disabled = false;
  $("cancel").hidden = true;
}

async function cancel() {
  if (!currentJob) return;
  try {
    const out = await api("POST", `/v1/jobs/${currentJob.id}/cancel`);
    $("progress-text").textContent = out.message;
  } catch (err) {
    showError($("decompose-error"), err);
  }
}

async function showResult(job) {
  const r = job.result;
  const first = r.layers[0];
  try {
    await stack.load(r.layers, first.width, first.height);
  } catch (err) {
    showError($("decompose-error"), err, "Could not load the layers");
    return;
  }
  $("result-meta").textContent = `${r.layers.length} layers · ${first.width}×${first.height} · ${describeSet(job)} · links valid until ${new Date(r.expires_at).toLocaleString()}`;
  // No prompt given: the model captioned the image first; that caption (with the seed) reproduces the job.
  // Folded: a caption can run to a long paragraph.
  $("result-caption").hidden = !r.caption;
  $("result-caption").open = false;
  $("result-caption-text").textContent = r.caption || "";
  const list = $("exports");
  list.replaceChildren();
  for (const [fmt, url] of Object.entries(r.exports)) {
    const a = Object.assign(document.createElement("a"), { href: url, textContent: EXPORT_LABELS[fmt] || fmt.toUpperCase() });
    a.dataset.format = fmt;
    a.setAttribute("download", "");
    const li = document.createElement("li");
    li.append(a);
    list.append(li);
  }
  $("result").hidden = false;
  $("result-empty").hidden = true;
  $("save-status").textContent = "";
  hideError($("save-error"));
  for (const fn of setListeners) fn(job);
}

/** "Decomposition, seed 7, 3 steps" / "Edit of layer 2 of 1a2b3c4d" / "Arrangement of 1a2b3c4d". */
export function describeSet(job) {
  const p = job.params || {};
  const parent = job.parent?.job_id ? job.parent.job_id.slice(0, 8) : "";
  if (job.kind === "edit") return `Edit of layer ${(p.source?.layer ?? job.parent?.layer ?? 0) + 1}${parent ? ` of ${parent}` : ""}: “${p.prompt}”`;
  if (job.kind === "compose") return `Arrangement of ${parent || "a set"} (${(p.ops || []).length} operations)`;
  if (job.kind === "combine") return "Combined layers";
  return `Decomposition · seed ${p.seed} · ${p.num_inference_steps} steps`;
}

function renderGallery(s) {
  const gallery = $("gallery");
  // The gallery is rebuilt on every change: keep keyboard focus on the control that had it.
  const focused = gallery.contains(document.activeElement) ? document.activeElement.id : null;
  gallery.replaceChildren();
  const n = s.layers.length;
  s.layers.forEach((layer, pos) => {
    const name = `Layer ${layer.index + 1}`;
    const li = document.createElement("li");
    li.className = (layer === s.selected ? "selected " : "") + (layer.visible ? "" : "hidden-layer");
    li.dataset.layer = layer.index;
    const img = Object.assign(document.createElement("img"), { src: layer.url, alt: `${name} of ${n}`, className: "checker" });
    const title = Object.assign(document.createElement("div"), { className: "name", textContent: `${name}${pos === 0 ? " (bottom)" : pos === n - 1 ? " (top)" : ""}` });
    const tools = Object.assign(document.createElement("div"), { className: "tools" });
    const vis = Object.assign(document.createElement("input"), { type: "checkbox", checked: layer.visible, id: `vis-${layer.index}` });
    vis.addEventListener("change", () => s.toggle(layer, vis.checked));
    const visLabel = Object.assign(document.createElement("label"), { htmlFor: vis.id, textContent: "Visible" });
    const sel = button(`sel-${layer.index}`, "Select", `Select ${name} to move it on the composite`, () => s.select(layer));
    sel.setAttribute("aria-pressed", String(layer === s.selected));
    const up = button(`up-${layer.index}`, "↑", `Move ${name} up`, () => s.restack(layer, +1), pos === n - 1);
    const down = button(`down-${layer.index}`, "↓", `Move ${name} down`, () => s.restack(layer, -1), pos === 0);
    const dl = Object.assign(document.createElement("a"), { href: layer.url, textContent: "PNG", title: `Download ${name}` });
    dl.setAttribute("download", `layer_${String(layer.index).padStart(2, "0")}.png`);
    dl.setAttribute("aria-label", `Download ${name} as PNG`);
    const order = Object.assign(document.createElement("div"), { className: "tools" });
    tools.append(vis, visLabel, dl);
    order.append(sel, up, down);
    if (initDecompose.editLayer) {
      order.append(button(`edit-${layer.index}`, "Edit…", `Edit ${name} from an instruction`, () => initDecompose.editLayer(currentJob, layer.index)));
    }
    li.append(img, title, tools, order);
    gallery.append(li);
  });
  if (focused) document.getElementById(focused)?.focus();
}

function button(id, text, label, onClick, disabled = false) {
  const b = Object.assign(document.createElement("button"), { id, type: "button", textContent: text, disabled });
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function downloadComposite() {
  stack.canvas.toBlob((blob) => {
    if (!blob) return;
    const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(blob), download: `${currentJob?.id || "layers"}_composite.png` });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 10_000);
  }, "image/png");
}
