// Following a job or a batch until it ends. Where the server documents server-sent events
// (`GET /v1/jobs/{id}/events`, `GET /v1/batches/{id}/events` in its /openapi.json) the page listens
// to them; otherwise, or when a stream cannot be opened, it polls `GET /v1/jobs/{id}` and
// `GET /v1/batches/{id}`. Either way the views get `onUpdate(record)` with the JSON the status
// endpoint returns, `onError(err)` on failures, and the watch stops by itself once the record is
// terminal (or when the caller calls `stop()`).
//
// The stream is read with fetch() rather than EventSource: EventSource cannot send the
// `Authorization` header, and a keyed caller's jobs are invisible without it (404).

import { ApiError, api, apiKey } from "./api.js";
import { hasEvents } from "./openapi.js";

export const TERMINAL = new Set(["succeeded", "failed", "canceled", "expired"]);

function poll(path, isDone, onUpdate, onError, intervalMs) {
  let timer = null;
  let stopped = false;
  let failures = 0;
  const tick = async () => {
    if (stopped) return;
    try {
      const rec = await api("GET", path);
      failures = 0;
      if (stopped) return;
      onUpdate(rec);
      if (isDone(rec)) { stopped = true; return; }
    } catch (err) {
      // A 404 is final (expired or not ours); network blips are retried a few times.
      if (err.status === 404 || ++failures >= 5) { stopped = true; onError(err); return; }
    }
    timer = setTimeout(tick, intervalMs);
  };
  tick();
  return { stop() { stopped = true; clearTimeout(timer); } };
}

/** Read `text/event-stream` frames from `path`, calling `onEvent(name, data)`; resolves when the
 * server closes the stream, rejects (ApiError) when it cannot be opened. `signal` aborts it. */
async function readEvents(path, onEvent, signal) {
  const headers = { Accept: "text/event-stream" };
  const key = apiKey();
  if (key) headers.Authorization = `Bearer ${key}`;
  const resp = await fetch(path, { headers, signal, cache: "no-store" });
  if (!resp.ok || !resp.body) throw new ApiError(resp.status, `http_${resp.status}`, `event stream: ${resp.statusText}`);
  const reader = resp.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value.replace(/\r\n?/g, "\n");
    let end;
    while ((end = buffer.indexOf("\n\n")) >= 0) {
      const frame = buffer.slice(0, end);
      buffer = buffer.slice(end + 2);
      let name = "message";
      const data = [];
      for (const line of frame.split("\n")) {
        if (line.startsWith("event:")) name = line.slice(6).trim();
        else if (line.startsWith("data:")) data.push(line.slice(5).replace(/^ /, ""));
      }
      if (data.length) onEvent(name, JSON.parse(data.join("\n")));
    }
  }
}

/** Follow `path`'s event stream; `handle(name, data)` returns true once the record is final. A stream
 * closed at its length limit (`timeout`) is reopened; one that cannot be opened, or breaks, hands
 * over to polling (`fallback()`), so a server without streams or out of stream slots still works. */
function stream(path, handle, onError, fallback) {
  const abort = new AbortController();
  let stopped = false, polling = null;
  const run = async () => {
    while (!stopped) {
      let final = false;
      try {
        await readEvents(path, (name, data) => {
          if (name === "gone") { final = true; onError(new ApiError(404, "not_found", data.message || "the record expired")); return; }
          if (handle(name, data)) final = true;
        }, abort.signal);
      } catch (err) {
        if (stopped) return;
        if (err.status === 404) { stopped = true; onError(err); return; }
        transport("polling after a failed stream");
        polling = fallback(); // 503 (no free stream slot), a proxy that buffers, a dropped connection
        return;
      }
      if (final) { stopped = true; return; }
    }
  };
  run();
  return { stop() { stopped = true; abort.abort(); polling?.stop(); } };
}

/** How the page last followed progress, on <html data-progress>: for people reading the DOM and for
 * the browser tests, which check which path ran. */
function transport(how) { document.documentElement.dataset.progress = how; }

/** Start `watch` at once, or an event stream if the server documents one: the choice needs
 * /openapi.json (read once per page), so the handle is returned before it is made. */
function choose(prefix, useStream, usePoll) {
  let inner = null, stopped = false;
  hasEvents(prefix).then((yes) => {
    if (stopped) return;
    transport(yes ? "events" : "polling");
    inner = yes ? useStream() : usePoll();
  });
  return { stop() { stopped = true; inner?.stop(); } };
}

export function watchJob(jobId, { onUpdate, onError = () => {}, intervalMs = 1000 }) {
  const path = `/v1/jobs/${encodeURIComponent(jobId)}`;
  const usePoll = () => poll(path, (rec) => TERMINAL.has(rec.status), onUpdate, onError, intervalMs);
  let last = { id: jobId };
  const handle = (name, data) => {
    if (name === "progress") {
      // The last progress event already says "succeeded" but has no result: `done`, next, has it.
      if (TERMINAL.has(data.status)) return false;
      // A progress event is a snapshot of what changes; the view keeps the rest of the record.
      last = { ...last, status: data.status, queue_position: data.queue_position, eta_s: data.eta_s,
               progress: { stage: data.stage, step: data.step, total: data.total } };
      onUpdate(last);
      return false;
    }
    if (name === "done") { onUpdate(data); return true; }
    return false; // timeout: reopened by stream()
  };
  return choose("/v1/jobs", () => stream(`${path}/events`, handle, onError, usePoll), usePoll);
}

export function watchBatch(batchId, { onUpdate, onError = () => {}, intervalMs = 1500 }) {
  const path = `/v1/batches/${encodeURIComponent(batchId)}`;
  const done = (b) => ["succeeded", "failed", "canceled", "expired"].reduce((n, s) => n + (b.counts[s] || 0), 0) >= b.count;
  const usePoll = () => poll(`${path}?limit=500`, done, onUpdate, onError, intervalMs);
  // A batch's events carry counts only; the table needs each item, so each event triggers one read.
  const refresh = () => api("GET", `${path}?limit=500`).then(onUpdate, onError);
  const handle = (name) => {
    if (name === "progress") refresh();
    if (name === "done") { refresh(); return true; }
    return false;
  };
  return choose("/v1/batches", () => stream(`${path}/events`, handle, onError, usePoll), usePoll);
}

/** "3rd in the queue · about 1 min 20 s left" — the words the progress line shows. */
export function describeJob(rec) {
  const p = rec.progress || {};
  const parts = [];
  if (rec.status === "queued") {
    parts.push(rec.queue_position ? `queued, ${rec.queue_position} job${rec.queue_position === 1 ? "" : "s"} ahead` : "queued, next in line");
  } else if (rec.status === "running") {
    parts.push(p.total ? `${p.stage}: step ${p.step} of ${p.total}` : (p.stage || "running"));
  } else {
    parts.push(rec.status);
  }
  if (rec.eta_s != null && !TERMINAL.has(rec.status)) parts.push(`about ${duration(rec.eta_s)} left`);
  return parts.join(" · ");
}

export function fraction(rec) {
  if (rec.status === "succeeded") return 1;
  const p = rec.progress || {};
  return p.total ? p.step / p.total : 0;
}

export function duration(s) {
  s = Math.max(0, Math.round(s));
  if (s < 60) return `${s} s`;
  const m = Math.floor(s / 60);
  return m < 60 ? `${m} min ${s % 60} s` : `${Math.floor(m / 60)} h ${m % 60} min`;
}
