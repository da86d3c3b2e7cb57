"""Worker liveness: heartbeats, the job each worker holds, and reaping the jobs of dead workers.

Redis only redelivers an unacknowledged message after the visibility timeout (hours, since it must
exceed the longest job). A worker that is SIGKILLed or loses its node would leave its job stuck for
that long. Instead every live worker beats every `worker_heartbeat_s`, records which message it
holds, and also watches the others: the message of a worker silent for 3 beats is put back at the
front of its queue at once. Putting it back cannot run the job twice: a job running on a live
worker is refused as a duplicate by JobStore.begin_attempt, and a finished one is skipped.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from typing import Any

from celery import Celery

from layerq.errors import LayerqError
from layerq.messages import message_for
from layerq.queues import GPU_QUEUES, JOB_QUEUES
from storage.jobs import JobStore
from storage.workers import WorkerRegistry

log = logging.getLogger(__name__)

MISSED_BEATS = 3


def dead_after_s(heartbeat_s: float) -> float:
    return heartbeat_s * MISSED_BEATS


class Liveness:
    """Heartbeats and reaping for one worker process on every GPU queue it consumes: a worker beats
    on each (a big-memory worker consumes its class's decompose queue and the smaller classes'), so
    each queue's live workers, duplicate checks and reaping see it. `info` (kind, queues, memory
    class and budget, memory plan) is published with every beat for /healthz."""

    def __init__(
        self, jobs: JobStore, workers: WorkerRegistry, app: Celery, queues: list[str] | str, name: str,
        heartbeat_s: float, enqueue_grace_s: float = 60.0, on_beat: Callable[[], None] | None = None,
        info: dict[str, Any] | None = None,
    ) -> None:
        self.jobs, self.workers, self.app, self.name = jobs, workers, app, name
        self.queues = [queues] if isinstance(queues, str) else list(queues)
        self.heartbeat_s = heartbeat_s
        self.enqueue_grace_s = enqueue_grace_s
        self.info = dict(info or {})
        self._held: str | None = None
        self._stop = threading.Event()
        self.on_beat = on_beat
        """Runs after every beat: the fair-admission sweep (layerq/dispatch.py sweep)."""

    @property
    def queue(self) -> str:
        """The first queue (the largest memory class's, for decompose workers)."""
        return self.queues[0]

    def hold(self, job_id: str, delivery_tag: str | None, queue: str | None = None) -> None:
        """Record the message this worker is running, taken from `queue` (for reaping if the worker dies)."""
        self._held = queue or self.queue
        self.workers.hold(self._held, self.name, job_id, delivery_tag)

    def release(self) -> None:
        self.workers.release(self._held or self.queue, self.name)
        self._held = None

    def start(self) -> None:
        self.beat()
        threading.Thread(target=self._run, name="layerq-liveness", daemon=True).start()

    def stop(self) -> None:
        self._stop.set()
        try:
            for queue in self.queues:
                self.workers.gone(queue, self.name)
        except Exception:  # shutting down; Redis may be gone already
            pass

    def beat(self) -> None:
        # The description outlives the beat by the time it takes to be declared dead.
        self.workers.beat(self.queues, self.name, self.info, ttl_s=int(dead_after_s(self.heartbeat_s)) + 1)

    def _run(self) -> None:
        quiet_until = 0.0
        while not self._stop.wait(self.heartbeat_s):
            started = time.monotonic()
            try:
                self.beat()
                # A beat held up by a Redis outage (the client retries through a restart or a
                # failover) means every worker's beats were held up alike: give the others
                # MISSED_BEATS beats to beat again before judging any of them dead.
                if time.monotonic() - started > self.heartbeat_s:
                    quiet_until = time.monotonic() + dead_after_s(self.heartbeat_s)
                if time.monotonic() >= quiet_until:
                    self.reap()
                self.send_unsent()
                if self.on_beat is not None:
                    self.on_beat()
            except Exception:  # Redis briefly away: the next beat retries
                quiet_until = time.monotonic() + dead_after_s(self.heartbeat_s)
                log.warning("heartbeat failed", exc_info=True)

    def reap(self) -> list[str]:
        """Put back the messages of workers silent for MISSED_BEATS beats on any queue this worker
        watches; return their names. A dead worker's records are cleared on every GPU queue, not only
        the ones watched here: its held message goes back to the queue it came from (kombu keeps
        that with the message), whoever restores it."""
        cutoff = time.time() - dead_after_s(self.heartbeat_s)
        silent = sorted({w for queue in self.queues for w in self.workers.silent_since(queue, cutoff)})
        reaped = []
        for worker in silent:
            if not self.workers.claim_reaping(worker, self.name):
                continue
            for queue in sorted(GPU_QUEUES | set(self.queues)):
                held = self.workers.held_by(queue, worker)
                if held.get("delivery_tag"):
                    self._restore(held["delivery_tag"])
                    log.warning("worker %s is gone; job %s put back on %s", worker, held.get("job_id"), queue)
                self.workers.forget(queue, worker)
            reaped.append(worker)
        return reaped

    def send_unsent(self) -> int:
        """Send the message of every job, of every kind and memory class, the API recorded but never
        confirmed sending (it died in between). Every worker sweeps every job queue, so compose and
        combine jobs are covered as long as any worker lives; each queue has its own sweep lock, so a
        worker sweeping one queue never keeps another waiting. Sending twice is harmless:
        JobStore.begin_attempt skips finished jobs and refuses duplicates of running ones."""
        sent = 0
        for queue in JOB_QUEUES:
            if self.workers.claim_unsent_sweep(self.name, max(5, int(self.heartbeat_s)), queue):
                sent += self._send_unsent_on(queue)
        return sent

    def _send_unsent_on(self, queue: str) -> int:
        job_ids = self.jobs.unsent_since(self.enqueue_grace_s, queue)
        sent = 0
        for rec in self.jobs.get_many(job_ids):
            if not rec or rec["status"] != "queued":
                continue
            try:
                task, body = message_for(rec["kind"], rec["id"], rec["input_key"], rec["params"], rec.get("message"))
            except Exception as exc:  # a record no message can be made of: it would wait forever
                log.warning("job %s: cannot build its message (%s); failed", rec["id"], exc)
                try:
                    self.jobs.fail(rec["id"], "enqueue_failed", f"could not enqueue the job: {exc}", queue=queue)
                except LayerqError:
                    pass
                continue
            self.app.send_task(task, args=[body], queue=queue, task_id=rec["id"])
            sent += 1
        if job_ids:
            self.jobs.mark_sent(job_ids, queue)
            log.warning("sent %d %s jobs whose API process never confirmed sending them", sent, queue)
        return sent

    def _restore(self, delivery_tag: str) -> None:
        # kombu's Redis transport keeps unacked messages by delivery tag; restoring moves one back
        # to its queue atomically (WATCH on the unacked hash), so the visibility-timeout sweep and
        # this reaper can never both restore it. A tag already acked or restored is a no-op.
        with self.app.connection_for_write() as conn:
            conn.default_channel.qos.restore_by_tag(delivery_tag)
