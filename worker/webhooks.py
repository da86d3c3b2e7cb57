"""Webhook delivery on the CPU worker: the `layerq.webhook` task and the plain `deliver()` behind it.

One message is one attempt. `deliver()` loads the job as it is now, signs fresh result URLs, checks
the target again (the address it checks is the one it connects to: no DNS rebinding), POSTs once
without following redirects, and records the attempt in Redis. The task then queues the next attempt
with a countdown when the attempt failed and attempts are left. Torch-free: `layerq worker --queues
cpu` runs it without loading the model.

Delivery is at least once: a worker killed after the receiver answered but before the attempt was
recorded sends it again, with the same `Layerq-Delivery` id, so receivers dedupe on that id.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import random
import time
from dataclasses import dataclass
from typing import Any

import certifi
import urllib3
from celery import Celery
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from urllib3.exceptions import ConnectTimeoutError, HTTPError, NewConnectionError

from layerq import metrics
from layerq.config import Settings
from layerq.errors import JobNotFound
from layerq.queues import WEBHOOK_QUEUE, WEBHOOK_TASK
from layerq.webhooks import (
    Event, Resolver, Target, WebhookTargetRefused, WebhookUnresolvable, delivery_headers, enqueue_event,
    event_payload, iso, plan_retries, resolve_target,
)
from layerq.results import signed_result
from storage.base import ObjectStore
from storage.deliveries import WebhookDeliveries
from storage.jobs import JobStore
from storage.services import Services

__all__ = ["WebhookMessage", "Outcome", "deliver", "post", "register", "enqueue_event", "delivery_status"]

log = logging.getLogger(__name__)

MAX_RESPONSE_BYTES = 64 * 1024
"""We read at most this much of a receiver's answer: its body is ignored, and a huge one must not
hold the worker."""
FINAL_STATES = frozenset({"delivered", "gone", "failed", "refused"})


class WebhookMessage(BaseModel):
    """What is on the `cpu` queue for one delivery attempt: ids and the URL, never the payload (the
    payload is rebuilt on each attempt so its signed URLs are fresh)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    job_id: str
    event: Event
    delivery_id: str
    url: str
    attempt: int = Field(1, ge=1)
    created_at: float | None = None  # when the event happened; the payload's created_at

    def next(self) -> "WebhookMessage":
        return self.model_copy(update={"attempt": self.attempt + 1})


@dataclass(frozen=True)
class Outcome:
    """One attempt's result. `state`: delivered | retrying | gone (410) | failed (attempts used up or
    not deliverable) | refused (target now forbidden) | skipped (this attempt already ran)."""

    state: str
    status_code: int | None = None
    error: str | None = None
    retry_in: float | None = None


# --- the work ------------------------------------------------------------------------------------
def deliver(msg: WebhookMessage, *, settings: Settings, jobs: JobStore, store: ObjectStore,
            deliveries: WebhookDeliveries, resolve: Resolver | None = None, ca_certs: str | None = None) -> Outcome:
    """Make attempt `msg.attempt` of one delivery and record it; never raises for receiver faults."""
    state, done = deliveries.progress(msg.delivery_id)
    if state in FINAL_STATES or done >= msg.attempt:
        # A redelivered message (worker lost after recording): the attempt already happened.
        return Outcome("skipped", error=f"delivery is {state} after {done} attempts")
    started = time.time()
    outcome = _attempt(msg, settings, jobs, store, resolve, ca_certs)
    if outcome.state == "retry":
        plan = retry_plan(settings)
        if msg.attempt < len(plan):
            outcome = dataclasses.replace(outcome, state="retrying", retry_in=plan[msg.attempt])
        else:
            outcome = dataclasses.replace(outcome, state="failed")
    _record(deliveries, msg, outcome, started)
    metrics.WEBHOOK_DELIVERIES.labels(str(msg.event), outcome.state).inc()
    log_fn = log.info if outcome.state in ("delivered", "retrying") else log.warning
    log_fn("webhook %s attempt %d for job %s: %s %s", msg.delivery_id, msg.attempt, msg.job_id, outcome.state,
           outcome.error or outcome.status_code)
    return outcome


def _attempt(msg: WebhookMessage, settings: Settings, jobs: JobStore, store: ObjectStore,
             resolve: Resolver | None, ca_certs: str | None) -> Outcome:
    secret = settings.webhook_secret
    if not secret:
        return Outcome("failed", error="LAYERQ_WEBHOOK_SECRET is unset")
    try:
        rec = jobs.get(msg.job_id)
    except JobNotFound:
        return Outcome("failed", error="job record expired")
    try:
        target = resolve_target(msg.url, settings.webhook_allow_hosts, resolve)
    except WebhookUnresolvable as exc:  # DNS trouble passes: try again later
        return Outcome("retry", error=exc.message)
    except WebhookTargetRefused as exc:  # now resolves somewhere forbidden: never send there
        return Outcome("refused", error=exc.message)
    view = job_snapshot(rec, store, settings.url_ttl_s)
    payload = event_payload(msg.event, view, msg.delivery_id, msg.created_at)
    body = json.dumps(payload, separators=(",", ":")).encode()
    headers = {**delivery_headers(secret, body, msg.event, msg.delivery_id), "Layerq-Attempt": str(msg.attempt)}
    try:
        status = post(target, body, headers, settings.webhook_timeout_s, ca_certs=ca_certs)
    except (HTTPError, OSError) as exc:  # refused, reset, timed out, TLS failure
        return Outcome("retry", error=f"{type(exc).__name__}: {exc}"[:500])
    if 200 <= status < 300:
        return Outcome("delivered", status_code=status)
    if status == 410:  # the receiver says this endpoint is gone for good
        return Outcome("gone", status_code=status)
    return Outcome("retry", status_code=status, error=f"HTTP {status}")


def post(target: Target, body: bytes, headers: dict[str, str], timeout_s: float, *, ca_certs: str | None = None) -> int:
    """POST to the checked addresses only (first that connects), with the URL's Host header and TLS
    name, no redirects and no retries of urllib3's own; return the status code."""
    last: Exception | None = None
    # Everything but the address is the same for each address tried.
    tls: dict[str, Any] = {}
    cls: type[urllib3.HTTPConnectionPool] = urllib3.HTTPConnectionPool
    if target.scheme == "https":
        tls = {"server_hostname": target.host, "assert_hostname": target.host, "cert_reqs": "CERT_REQUIRED",
               "ca_certs": ca_certs or certifi.where()}
        cls = urllib3.HTTPSConnectionPool
    timeout = urllib3.Timeout(connect=timeout_s, read=timeout_s)
    headers = {**headers, "Host": target.host_header}
    for address in target.addresses:
        pool = cls(address, target.port, maxsize=1, retries=False, timeout=timeout, **tls)
        try:
            resp = pool.urlopen("POST", target.request_target, body=body,
                                headers=headers, redirect=False, retries=False,
                                preload_content=False, assert_same_host=False)
        except (NewConnectionError, ConnectTimeoutError) as exc:  # this address is down: try the next one
            last = exc
            pool.close()
            continue
        try:
            resp.read(MAX_RESPONSE_BYTES)
        except (HTTPError, OSError):  # the answer's status is what counts
            pass
        finally:
            resp.release_conn()
            pool.close()
        return resp.status
    assert last is not None
    raise last


def _record(deliveries: WebhookDeliveries, msg: WebhookMessage, outcome: Outcome, started: float) -> None:
    entry = {"attempt": msg.attempt, "at": iso(started), "state": outcome.state, "status_code": outcome.status_code,
             "error": outcome.error, "duration_s": round(time.time() - started, 3)}
    summary = {"job_id": msg.job_id, "event": msg.event, "url": msg.url, "state": outcome.state,
               "attempts": msg.attempt, "last_status": outcome.status_code or "", "last_error": outcome.error or "",
               "next_attempt_at": iso(started + outcome.retry_in) if outcome.retry_in is not None else ""}
    deliveries.record(msg.delivery_id, summary, entry)


def delivery_status(deliveries: WebhookDeliveries, delivery_id: str) -> dict[str, Any] | None:
    """The summary and every attempt of one delivery (for the API or an operator), or None."""
    return deliveries.status(delivery_id)


def retry_plan(settings: Settings) -> list[float]:
    """The delays of every attempt of one delivery, from Settings."""
    return plan_retries(settings.webhook_max_attempts, settings.webhook_backoff_base_s,
                        settings.webhook_backoff_factor, settings.webhook_backoff_cap_s)


# --- the job as a receiver sees it -----------------------------------------------------------------
def job_snapshot(rec: dict[str, Any], store: ObjectStore, url_ttl_s: int) -> dict[str, Any]:
    """A job-view-shaped dict from a raw JobStore record (what a worker has instead of api.views)."""
    view = {k: rec.get(k) for k in ("id", "kind", "status", "batch_id", "error", "progress")}
    view.update({k: iso(rec.get(k)) for k in ("created_at", "started_at", "finished_at")})
    if rec.get("status") == "succeeded" and rec.get("result"):
        view["result"] = signed_result(rec["id"], rec["result"], store, url_ttl_s)
    return view


# --- the Celery task -------------------------------------------------------------------------------
_services: Services | None = None


def _open_services(settings: Settings, app: Celery) -> Services:
    # The worker runtime's services when worker_init started one (one Redis pool per process); else
    # opened lazily in the process that runs tasks (after any fork), once.
    from worker import runtime

    try:
        return runtime.current().services
    except RuntimeError:
        pass
    global _services
    if _services is None:
        _services = Services.open(settings, celery=app)
    return _services


def register(app: Celery) -> None:
    """Add the `layerq.webhook` task (queue `cpu`) to a worker app."""
    settings = app.conf.layerq_settings
    app.conf.task_routes = {**(app.conf.task_routes or {}), WEBHOOK_TASK: {"queue": WEBHOOK_QUEUE}}
    # Limits a little above the worst single attempt, not the hour-long job limits of the app
    # (prefork pools enforce them; solo does not). Celery wants soft <= hard.
    soft_s = 3 * settings.webhook_timeout_s + 30

    @app.task(name=WEBHOOK_TASK, bind=True, acks_late=True, reject_on_worker_lost=True,
              soft_time_limit=soft_s, time_limit=soft_s + 10)
    def webhook(self, message: dict) -> str:
        try:
            msg = WebhookMessage.model_validate(message)
        except ValidationError as exc:
            log.error("malformed webhook message dropped: %s", exc)
            return "malformed"
        svc = _open_services(settings, app)
        outcome = deliver(msg, settings=settings, jobs=svc.jobs, store=svc.store, deliveries=svc.deliveries)
        if outcome.state == "retrying":
            # Jitter: thousands of jobs that failed together against one receiver must not retry in lockstep.
            countdown = (outcome.retry_in or 0.0) * random.uniform(0.9, 1.1)
            self.apply_async(args=[msg.next().model_dump()], countdown=countdown, queue=WEBHOOK_QUEUE)
        return outcome.state
