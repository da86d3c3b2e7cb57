// "My jobs". With an API key: the key's batches and jobs as the server lists them (`GET /v1/batches`,
// its newest page, then `GET /v1/jobs`, newest first, paged). Without a key the server lists nothing
// (keyless callers share one tenant), so the page shows what this browser submitted, each read
// afresh from `GET /v1/jobs/{id}` / `/v1/batches/{id}`.

import { api, apiKey, hideError, showError } from "./api.js";
import { forget, forgetAll, remembered } from "./history.js";
import { describeJob } from "./watch.js";

const $ = (id) => document.getElementById(id);
const PAGE = 25;
let actions = {};
let cursor = null;
let generation = 0; // a refresh started later wins over one still loading

export function initJobs(handlers) {
  actions = handlers; // {openJob(job), openBatch(id, names)}
  $("jobs-refresh").addEventListener("click", refresh);
  $("jobs-forget").addEventListener("click", () => { forgetAll(); refresh(); });
  $("jobs-more").addEventListener("click", () => more(generation));
}

export async function refresh() {
  const mine = ++generation;
  hideError($("jobs-error"));
  const local = remembered();
  const names = new Map(local.map((e) => [e.id, e.name]));
  const tbody = $("jobs-table").querySelector("tbody");
  let rows;
  if (apiKey()) {
    // The server's lists: the key's newest batches on top, then its jobs.
    cursor = "0";
    const [batchRows, jobRows] = await Promise.all([serverBatches(local), page(names)]);
    rows = [...batchRows, ...jobRows];
  } else {
    cursor = null;
    rows = await Promise.all(local.map(readRow));
  }
  if (mine !== generation) return;
  $("jobs-more").hidden = !cursor;
  $("jobs-forget").hidden = Boolean(apiKey()); // the server's list is not the browser's to forget
  $("jobs-empty").hidden = rows.length > 0;
  tbody.replaceChildren(...rows);
}

async function more(mine) {
  const names = new Map(remembered().map((e) => [e.id, e.name]));
  const rows = await page(names);
  if (mine !== generation) return;
  $("jobs-more").hidden = !cursor;
  $("jobs-table").querySelector("tbody").append(...rows);
}

async function page(names) {
  try {
    const out = await api("GET", `/v1/jobs?limit=${PAGE}&cursor=${cursor}`);
    cursor = out.next_cursor;
    return out.items.map((job) => jobRow({ id: job.id, kind: "job", name: names.get(job.id) || kindName(job), at: job.created_at, listed: true }, job));
  } catch (err) {
    cursor = null;
    showError($("jobs-error"), err, "Could not list the jobs");
    return [];
  }
}

/** The key's newest batches; the names of their images where this browser submitted them. */
async function serverBatches(local) {
  const mine = new Map(local.filter((e) => e.kind === "batch").map((e) => [e.id, e]));
  try {
    const out = await api("GET", `/v1/batches?limit=${PAGE}`);
    return out.items.map((b) => {
      const entry = mine.get(b.id);
      return batchRow({ id: b.id, kind: "batch", name: entry?.name || `batch ${b.id.slice(0, 8)}`, names: entry?.names, at: b.created_at, listed: true }, b);
    });
  } catch (err) {
    showError($("jobs-error"), err, "Could not list the batches");
    return [];
  }
}

function kindName(job) {
  return { edit: "an edit", compose: "an arrangement", combine: "combined layers" }[job.kind] || job.id.slice(0, 8);
}

async function readRow(entry) {
  try {
    const rec = await api("GET", `/v1/${entry.kind === "batch" ? "batches" : "jobs"}/${entry.id}`);
    return entry.kind === "batch" ? batchRow(entry, rec) : jobRow(entry, rec);
  } catch (err) {
    return goneRow(entry, err);
  }
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
  const p = job.params || {};
  const settings = [{
    edit: () => `edit of layer ${(p.source?.layer ?? 0) + 1}: “${p.prompt}” · ${p.num_inference_steps} steps · matte ${p.matte}`,
    compose: () => `${(p.ops || []).length} layer operations`,
    combine: () => "layers stacked",
  }[job.kind]?.() ?? `${p.layers} layers · ${p.resolution} · ${p.num_inference_steps} steps · seed ${p.seed}`];
  const buttons = [btn("Open", `Open job ${name}`, () => actions.openJob(job))];
  if (["queued", "running"].includes(job.status)) {
    buttons.push(" ", btn("Cancel", `Cancel job ${name}`, async () => {
      try { await api("POST", `/v1/jobs/${job.id}/cancel`); } catch (err) { showError($("jobs-error"), err); }
      refresh();
    }));
  }
  if (!entry.listed) buttons.push(" ", btn("Forget", `Forget job ${name}`, () => { forget(entry.id); refresh(); }));
  return tr(entry, result, status, settings, ...buttons);
}

function batchRow(entry, b) {
  const c = b.counts;
  const done = c.succeeded + c.failed + c.canceled + (c.expired || 0);
  const status = [statusSpan(done >= b.count ? "succeeded" : "running", `batch: ${done}/${b.count} done`), c.failed ? ` · ${c.failed} failed` : ""];
  const buttons = [btn("Open", `Open batch ${entry.name}`, () => actions.openBatch(b.id, entry.names || []))];
  if (!entry.listed) buttons.push(" ", btn("Forget", `Forget batch ${entry.name}`, () => { forget(entry.id); refresh(); }));
  return tr(entry, [], status, [`${b.count} image${b.count === 1 ? "" : "s"}`], ...buttons);
}

function goneRow(entry, err) {
  const text = err.status === 404 ? "expired or deleted on the server" : err.message;
  return tr(entry, [], [statusSpan("failed", text)], [], btn("Forget", `Forget ${entry.name || entry.id}`, () => { forget(entry.id); refresh(); }));
}
