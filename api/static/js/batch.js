// The Batch view: many images in one `POST /v1/batches` (multipart: a `batch` JSON field whose items
// name their file parts), then each item's status and the batch ETA from `GET /v1/batches/{id}`,
// and one ZIP with every finished item's exports.

import { api, hideError, showError } from "./api.js";
import { dropZone } from "./drop.js";
import { remember } from "./history.js";
import { buildSettings } from "./settings.js";
import { duration, watchBatch } from "./watch.js";
import { zipStore } from "./zip.js";

const $ = (id) => document.getElementById(id);
let files = [];
let names = [];
let settings = null;
let watcher = null;
let batch = null;

export async function initBatch(openJob) {
  settings = await buildSettings($("batch-settings"), "b");
  dropZone($("batch-drop"), $("batch-files"), (list) => {
    files = list.filter((f) => f.type.startsWith("image/") || !f.type);
    $("batch-count").textContent = `${files.length} image${files.length === 1 ? "" : "s"} chosen`;
    $("batch-drop-help").textContent = files.map((f) => f.name).slice(0, 8).join(", ") + (files.length > 8 ? ", …" : "");
  });
  $("batch-form").addEventListener("submit", (e) => { e.preventDefault(); submit(); });
  $("batch-cancel").addEventListener("click", async () => {
    try { await api("POST", `/v1/batches/${batch.id}/cancel`); } catch (err) { showError($("batch-error"), err); }
  });
  $("batch-download").addEventListener("click", downloadAll);
  initBatch.openJob = openJob;
}

async function submit() {
  const errBox = $("batch-error");
  hideError(errBox);
  if (!files.length) {
    showError(errBox, { message: "choose one or more images first", field: "items" }, "No images");
    return;
  }
  const form = new FormData();
  const body = { items: files.map((_, i) => ({ file: `f${i}` })), defaults: settings.read() };
  form.append("batch", JSON.stringify(body));
  files.forEach((f, i) => form.append(`f${i}`, f, f.name));
  $("batch-submit").disabled = true;
  try {
    const accepted = await api("POST", "/v1/batches", form);
    names = files.map((f) => f.name);
    remember({ id: accepted.id, kind: "batch", name: `${accepted.count} images`, names });
    follow(accepted.id, names);
  } catch (err) {
    showError(errBox, err);
    $("batch-submit").disabled = false;
  }
}

export function follow(batchId, itemNames = []) {
  watcher?.stop();
  names = itemNames;
  $("batch-progress").hidden = false;
  $("batch-table").hidden = false;
  $("batch-cancel").hidden = false;
  watcher = watchBatch(batchId, {
    onUpdate: render,
    onError: (err) => { showError($("batch-error"), err, "Lost the batch"); $("batch-submit").disabled = false; },
  });
}

function render(b) {
  batch = b;
  const c = b.counts;
  const done = c.succeeded + c.failed + c.canceled + (c.expired || 0);
  $("batch-bar").value = b.progress;
  const bits = [`${done} of ${b.count} done`, `${c.running} running`, `${c.queued} queued`];
  if (c.failed) bits.push(`${c.failed} failed`);
  if (c.canceled) bits.push(`${c.canceled} canceled`);
  if (c.expired) bits.push(`${c.expired} expired`);
  if (done < b.count && b.eta_s != null) bits.push(`about ${duration(b.eta_s)} left`);
  $("batch-text").textContent = `Batch ${b.id.slice(0, 8)}: ${bits.join(" · ")}`;
  const finished = done >= b.count;
  $("batch-cancel").hidden = finished;
  $("batch-submit").disabled = !finished;
  $("batch-download").hidden = c.succeeded === 0;
  const tbody = $("batch-table").querySelector("tbody");
  tbody.replaceChildren(...b.jobs.items.map((job, i) => row(job, i)));
}

function row(job, i) {
  const tr = document.createElement("tr");
  const cell = (...kids) => { const td = document.createElement("td"); td.append(...kids); tr.append(td); return td; };
  cell(String(i + 1));
  cell(names[i] || job.id.slice(0, 8));
  const p = job.progress || {};
  const status = Object.assign(document.createElement("span"), { className: `status ${job.status}`, textContent: job.status });
  const detail = job.status === "running" && p.total ? ` ${p.step}/${p.total}` : job.status === "queued" && job.queue_position != null ? ` (${job.queue_position} ahead)` : "";
  const td = cell(status, detail);
  if (job.error) td.append(Object.assign(document.createElement("div"), { className: "muted", textContent: job.error.message }));
  if (job.result) {
    cell(Object.assign(document.createElement("img"), { src: job.result.composite, alt: `Composite of ${names[i] || "item " + (i + 1)}`, className: "checker" }));
    const open = Object.assign(document.createElement("button"), { type: "button", textContent: "Open layers" });
    open.addEventListener("click", () => initBatch.openJob(job));
    const zip = Object.assign(document.createElement("a"), { href: job.result.exports.zip, textContent: "ZIP", className: "button" });
    cell(open, " ", zip);
  } else {
    cell("");
    cell("");
  }
  return tr;
}

async function downloadAll() {
  const btn = $("batch-download");
  btn.disabled = true;
  const label = btn.textContent;
  try {
    // Fresh URLs: the ones in the table may be old by now.
    const b = await api("GET", `/v1/batches/${batch.id}?limit=500`);
    const out = [];
    const used = new Set();
    for (const [i, job] of b.jobs.items.entries()) {
      if (!job.result) continue;
      let stem = (names[i] || job.id).replace(/\.[^.]+$/, "").replace(/[^\w.-]+/g, "_");
      if (used.has(stem)) stem = `${stem}_${i + 1}`;
      used.add(stem);
      btn.textContent = `Fetching ${out.length + 1}…`;
      for (const [fmt, url] of Object.entries(job.result.exports)) {
        const resp = await fetch(url);
        if (!resp.ok) throw new Error(`download of ${stem}.${fmt} failed (${resp.status})`);
        out.push({ name: `${stem}/layers.${fmt}`, bytes: new Uint8Array(await resp.arrayBuffer()) });
      }
    }
    const a = Object.assign(document.createElement("a"), { href: URL.createObjectURL(zipStore(out)), download: `batch_${batch.id.slice(0, 8)}.zip` });
    a.click();
    setTimeout(() => URL.revokeObjectURL(a.href), 30_000);
  } catch (err) {
    showError($("batch-error"), err, "Download failed");
  } finally {
    btn.disabled = false;
    btn.textContent = label;
  }
}
