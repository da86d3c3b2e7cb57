// "My jobs": the jobs and batches this browser submitted with the key in use, each read afresh from
// `GET /v1/jobs/{id}` / `GET /v1/batches/{id}` (the API has no per-key job list yet).

import { api, hideError, showError } from "./api.js";
import { forget, forgetAll, remembered } from "./history.js";
import { describeJob } from "./watch.js";

const $ = (id) => document.getElementById(id);
let actions = {};

export function initJobs(handlers) {
  actions = handlers; // {openJob(job), openBatch(id, names)}
  $("jobs-refresh").addEventListener("click", refresh);
  $("jobs-forget").addEventListener("click", () => { forgetAll(); refresh(); });
}

export async function refresh() {
  hideError($("jobs-error"));
  const entries = remembered();
  $("jobs-empty").hidden = entries.length > 0;
  const tbody = $("jobs-table").querySelector("tbody");
  const rows = await Promise.all(entries.map(async (entry) => {
    try {
      const rec = await api("GET", `/v1/${entry.kind === "batch" ? "batches" : "jobs"}/${entry.id}`);
      return entry.kind === "batch" ? batchRow(entry, rec) : jobRow(entry, rec);
    } catch (err) {
      return goneRow(entry, err);
    }
  }));
  tbody.replaceChildren(...rows);
}

function tr(entry, result, status, settings, ...buttons) {
  const row = document.createElement("tr");
  const when = new Date(entry.at).toLocaleString();
  for (const content of [[`${when} — ${entry.name || entry.id.slice(0, 8)}`], result, status, settings, buttons]) {
    const td = document.createElement("td");
    td.append(...content);
    row.append(td);
  }
  return row;
}

function btn(text, label, onClick) {
  const b = Object.assign(document.createElement("button"), { type: "button", textContent: text });
  b.setAttribute("aria-label", label);
  b.addEventListener("click", onClick);
  return b;
}

function statusSpan(status, text) {
  return Object.assign(document.createElement("span"), { className: `status ${status}`, textContent: text });
}

function jobRow(entry, job) {
  const name = entry.name || job.id.slice(0, 8);
  const result = job.result ? [Object.assign(document.createElement("img"), { src: job.result.composite, alt: `Composite of ${name}`, className: "checker" })] : [];
  const status = [statusSpan(job.status, describeJob(job))];
  if (job.error) status.push(Object.assign(document.createElement("div"), { className: "muted", textContent: `${job.error.code}: ${job.error.message}` }));
  const p = job.params;
  const settings = [`${p.layers} layers · ${p.resolution} · ${p.num_inference_steps} steps · seed ${p.seed}`];
  const buttons = [btn("Open", `Open job ${name}`, () => actions.openJob(job))];
  if (["queued", "running"].includes(job.status)) {
    buttons.push(" ", btn("Cancel", `Cancel job ${name}`, async () => {
      try { await api("POST", `/v1/jobs/${job.id}/cancel`); } catch (err) { showError($("jobs-error"), err); }
      refresh();
    }));
  }
  buttons.push(" ", btn("Forget", `Forget job ${name}`, () => { forget(entry.id); refresh(); }));
  return tr(entry, result, status, settings, ...buttons);
}

function batchRow(entry, b) {
  const c = b.counts;
  const done = c.succeeded + c.failed + c.canceled + (c.expired || 0);
  const status = [statusSpan(done >= b.count ? "succeeded" : "running", `batch: ${done}/${b.count} done`), c.failed ? ` · ${c.failed} failed` : ""];
  return tr(entry, [], status, [`${b.count} images`],
    btn("Open", `Open batch ${entry.name}`, () => actions.openBatch(b.id, entry.names || [])), " ",
    btn("Forget", `Forget batch ${entry.name}`, () => { forget(entry.id); refresh(); }));
}

function goneRow(entry, err) {
  const text = err.status === 404 ? "expired or deleted on the server" : err.message;
  return tr(entry, [], [statusSpan("failed", text)], [], btn("Forget", `Forget ${entry.name || entry.id}`, () => { forget(entry.id); refresh(); }));
}
