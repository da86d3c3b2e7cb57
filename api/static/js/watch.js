// Following a job or a batch until it ends. Today this polls `GET /v1/jobs/{id}` and
// `GET /v1/batches/{id}`; when the API grows server-sent events, a `watchJob` built on EventSource
// can replace the polling one here without touching the views: both call `onUpdate(record)` with the
// same JSON the status endpoint returns, `onError(err)` on failures, and stop by themselves once
// the record is terminal (or when the caller calls `stop()`).

import { api } from "./api.js";

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

export function watchJob(jobId, { onUpdate, onError = () => {}, intervalMs = 1000 }) {
  return poll(`/v1/jobs/${encodeURIComponent(jobId)}`, (rec) => TERMINAL.has(rec.status), onUpdate, onError, intervalMs);
}

export function watchBatch(batchId, { onUpdate, onError = () => {}, intervalMs = 1500 }) {
  const done = (b) => ["succeeded", "failed", "canceled", "expired"].reduce((n, s) => n + (b.counts[s] || 0), 0) >= b.count;
  return poll(`/v1/batches/${encodeURIComponent(batchId)}?limit=500`, done, onUpdate, onError, intervalMs);
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
