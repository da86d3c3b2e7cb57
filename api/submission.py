"""What every submission path shares: parameter parsing, the result cache, job creation and
enqueueing. Jobs are written to Redis before their messages are sent, so a worker always finds the
record of the message it takes."""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from pydantic import ValidationError

from api.errors import validation_failed
from layerq.errors import LayerqError, QueueUnavailable, ValidationFailed
from layerq.messages import DECOMPOSE_QUEUE, DECOMPOSE_TASK, DecomposeMessage
from layerq.params import DecomposeParams
from layerq.webhooks import WebhookSpec, check_request
from storage.jobs import NewJob

log = logging.getLogger(__name__)


def parse_params(data: Any, field: str = "params") -> DecomposeParams:
    if not isinstance(data, dict):
        raise ValidationFailed(f"{field} must be a JSON object", field=field)
    try:
        return DecomposeParams.model_validate(data)
    except ValidationError as exc:
        raise validation_failed(exc, prefix=field) from exc


def parse_json_field(raw: str | None, field: str) -> Any:
    if raw is None or raw.strip() == "":
        return {}
    try:
        return json.loads(raw)
    except json.JSONDecodeError as exc:
        raise ValidationFailed(f"{field} is not valid JSON: {exc.msg}", field=field) from exc


def check_webhook(spec: WebhookSpec | None, settings: Any) -> dict[str, Any] | None:
    if spec is None:
        return None
    if not settings.webhook_secret:
        raise ValidationFailed("webhooks are not enabled on this server (no LAYERQ_WEBHOOK_SECRET)", field="webhook")
    check_request(spec, settings)  # refuses private and loopback targets unless allow-listed
    return spec.model_dump()


def cache_key(prefix: str, tenant: str, input_digest: str, params: DecomposeParams, model: str) -> str:
    """Same tenant, same input bytes, same parameters (seed included), same model → same result."""
    canon = json.dumps({"params": params.model_dump(), "model": model}, sort_keys=True)
    h = hashlib.sha256(f"{tenant}\n{input_digest}\n{canon}".encode()).hexdigest()
    return f"{prefix}:cache:{tenant}:{h}"


def cached_source(svc: Any, key: str, tenant: str) -> dict[str, Any] | None:
    """The finished job that answers `key`, if its record (and so its retention) is still alive."""
    job_id = svc.jobs.r.get(key)
    if not job_id:
        return None
    rec = svc.jobs.get_many([job_id])[0]
    if not rec or rec.get("status") != "succeeded" or rec.get("tenant", "") != tenant:
        return None
    return rec


def enqueue(svc: Any, jobs: list[NewJob]) -> None:
    """Send one message per job (one producer connection for all). If the broker is unreachable the
    jobs not yet sent are failed with `enqueue_failed` so none sits queued forever."""
    sent = 0
    try:
        with svc.celery.producer_or_acquire() as producer:
            for job in jobs:
                msg = DecomposeMessage(job_id=job.job_id, input_key=job.input_key, params=job.params)
                svc.celery.send_task(DECOMPOSE_TASK, args=[msg.model_dump(mode="json")], queue=DECOMPOSE_QUEUE,
                                     task_id=job.job_id, producer=producer)
                sent += 1
    except Exception as exc:
        log.exception("enqueue failed after %d of %d jobs", sent, len(jobs))
        for job in jobs[sent:]:
            try:
                svc.jobs.fail(job.job_id, "enqueue_failed", f"could not enqueue the job: {exc}")
            except LayerqError:
                pass
        raise QueueUnavailable("the job queue is unavailable; try again") from exc
    finally:
        # Sent or failed, none of them is waiting for the unsent-jobs sweeper any more.
        try:
            svc.jobs.mark_sent([job.job_id for job in jobs])
        except Exception:  # the sweeper re-sends them later; a duplicate message is harmless
            log.warning("could not mark %d jobs as sent", len(jobs), exc_info=True)
