"""The layer-set jobs: compose and combine on the `cpu` queue (no model, no torch), and the parts of a
decompose job that make it a layer set of its own (sparse layers dropped, a decomposed layer's tree).

Every job writes as a decompose job does: layers, composite and exports under its own prefix, the
manifest last, and only then `succeeded`."""

from __future__ import annotations

import io
import logging
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from PIL import Image
from pydantic import BaseModel

from layerq import metrics
from layerq import objects as keys
from layerq.errors import JobNotFound, LayerqError, ObjectNotFound, ValidationFailed
from layerq.layersets import CombineMessage, ComposeMessage
from layerq.params import DecomposeParams
from layerq.queues import COMBINE_TASK, COMPOSE_TASK, LAYERSET_QUEUE
from layerq.results import with_object_keys
from storage.client import is_transient
from worker.decompose import (
    StageClock, TransientJobError, _cancel, _end_failed, _notify, give_up, hand_back, load_input,
    store_faults_retried,
)
from worker.liveness import dead_after_s
from worker.outputs import manifest_for, store_layer_set
from worker.runtime import WorkerRuntime
from worker.tasks import failing_job_on_escape

from .combine import combine
from .coverage import drop_sparse_layers
from .operations import compose
from .placed import Canvas, PlacedLayer, render_stack
from .tree import Decomposition, fitted, leaves

log = logging.getLogger(__name__)


def _rgba(rt: WorkerRuntime, key: str, field: str) -> Image.Image:
    try:
        return Image.open(io.BytesIO(rt.store.get(key))).convert("RGBA")
    except ObjectNotFound as exc:
        raise ValidationFailed(f"{key} is missing from storage (expired?)", field=field) from exc


# --- decompose: drops and trees -----------------------------------------------------------------

def drop_layers(params: DecomposeParams, layers: list[Image.Image]) -> tuple[list[Image.Image], list[dict] | None]:
    """`layers: "auto"` and `drop_empty: true`: the layers that show, and what was dropped (None
    when the params do not ask for it)."""
    if not params.drops_sparse_layers:
        return layers, None
    kept, dropped = drop_sparse_layers(layers)
    return kept, [{"index": d.index, "coverage": d.coverage} for d in dropped]


def decompose_tree(rt: WorkerRuntime, parent: dict[str, Any], sub_layers: list[Image.Image],
                   manifest: dict[str, Any]) -> tuple[Decomposition, dict[str, Any]]:
    """A recursive decomposition's layer set and its manifest: the parent's layers with layer
    `parent["layer"]` replaced by `sub_layers`, depth first; its PSD groups and its ORA stacks them
    (`tree_exports`, through `store_layer_set`)."""
    try:
        rec = rt.jobs.get(parent["job_id"])
    except JobNotFound as exc:
        raise ValidationFailed(f"parent job {parent['job_id']} has expired", field="source.job_id") from exc
    refs = with_object_keys(rec.get("result") or {}, parent["job_id"]).get("layers") or []
    images = [_rgba(rt, ref["key"], "source.job_id") for ref in refs]
    index = int(parent["layer"])
    tree = Decomposition(images, {index: Decomposition(fitted(sub_layers, images[index].size))})
    drawn = leaves(tree)
    job_id = manifest["job_id"]
    manifest = {**manifest, "layers": [
        {"index": i, "key": keys.layer_key(job_id, i), "width": leaf.image.width, "height": leaf.image.height,
         "name": leaf.name, "group": leaf.groups[-1] if leaf.groups else None}
        for i, leaf in enumerate(drawn)
    ], "tree": {"parent": {"job_id": parent["job_id"], "layer": index},
                "group": drawn[index].groups[-1] if drawn[index].groups else None,
                "sub_layers": len(sub_layers)}}
    return tree, manifest


# --- compose and combine ------------------------------------------------------------------------

def build_compose(rt: WorkerRuntime, msg: ComposeMessage) -> dict[str, Any]:
    parents = [_rgba(rt, key, "source.job_id") for key in msg.layer_keys]
    canvas, placed = compose(parents, msg.params.ops)
    stack = render_stack(placed, canvas)
    manifest = manifest_for(msg.job_id, "compose", [im.size for im in stack], rt.settings.export_format_list,
                            msg.params.model_dump(mode="json"), parent={"job_id": msg.parent_id, "layer": None},
                            ops=msg.params.model_dump(mode="json")["ops"],
                            sources=[layer.source for layer in placed if layer.visible])
    return {**store_layer_set(rt, msg.job_id, stack, manifest), "steps": 0}


def build_combine(rt: WorkerRuntime, msg: CombineMessage) -> dict[str, Any]:
    images = []
    for i, key in enumerate(msg.input_keys):
        try:
            images.append(load_input(rt.store.get(key), rt.settings))
        except ObjectNotFound as exc:
            raise ValidationFailed(f"input {key} is missing from storage", field=f"input_keys.{i}") from exc
    placements = list(msg.params.placements)
    placed = [PlacedLayer(image, p.x, p.y) if p else PlacedLayer(image)
              for image, p in zip(images, placements + [None] * (len(images) - len(placements)))]
    size = msg.params.canvas
    try:
        layer_set = combine(placed, Canvas(size.width, size.height) if size else None)
    except ValueError as exc:
        raise ValidationFailed(str(exc), field="params.placements") from exc
    stack = layer_set.stack
    manifest = manifest_for(msg.job_id, "combine", [im.size for im in stack], rt.settings.export_format_list,
                            msg.params.model_dump(mode="json"), parent=None, inputs=list(msg.input_keys))
    return {**store_layer_set(rt, msg.job_id, stack, manifest), "steps": 0}


_here: set[str] = set()
_here_lock = threading.Lock()


@contextmanager
def _first_here(job_id: str) -> Iterator[bool]:
    """Whether no other thread of this worker runs `job_id` now. A CPU worker runs several jobs at
    once in threads under one worker name, and `JobStore.begin_attempt` lets a worker take over a
    job recorded as its own (a restarted worker keeps its name), so two deliveries of one job (a
    message put back, a re-sent one) could both run here; the second is skipped instead."""
    with _here_lock:
        first = job_id not in _here
        _here.add(job_id)
    try:
        yield first
    finally:
        if first:
            with _here_lock:
                _here.discard(job_id)


def run_layerset_job(rt: WorkerRuntime, kind: str, model: type[BaseModel], raw: Any,
                     build: Callable[[WorkerRuntime, Any], dict[str, Any]], retries: int = 0) -> str:
    """One delivery of a compose or combine job, to its end (as `worker.decompose.run_job`; `retries`:
    the task's transient-fault retries so far, each allowed one more delivery)."""
    job_id = raw.get("job_id") if isinstance(raw, dict) else None
    try:
        msg = model.model_validate(raw)
    except Exception as exc:
        if job_id:
            _end_failed(rt, job_id, "invalid_request", f"malformed {kind} message: {exc}", {})
        return "failed"
    with _first_here(msg.job_id) as first:
        if not first:
            log.info("%s job %s already runs in this worker; duplicate delivery skipped", kind, msg.job_id)
            return "running"
        return _run_delivery(rt, kind, msg, build, retries)


def _run_delivery(rt: WorkerRuntime, kind: str, msg: Any,
                  build: Callable[[WorkerRuntime, Any], dict[str, Any]], retries: int) -> str:
    try:
        # CPU workers beat on the `cpu` queue too: a duplicate message of a job running on a live
        # worker is refused, a dead worker's job is taken over.
        with store_faults_retried("claiming the job"):
            # A retry is a new delivery: it must not count towards `worker_lost` (as for decompose jobs).
            attempt = rt.jobs.begin_attempt(msg.job_id, max_deliveries=rt.settings.max_deliveries + retries,
                                            worker=rt.name,
                                            alive_within_s=dead_after_s(rt.settings.worker_heartbeat_s),
                                            queue=LAYERSET_QUEUE)
    except JobNotFound:
        return "missing"
    if not attempt.run:
        return attempt.status
    if attempt.attempts == 1:
        _notify(rt, msg.job_id)
    metrics.JOBS.labels(kind, "running").inc()
    try:
        return _run_claimed(rt, kind, msg, build)
    except TransientJobError:
        hand_back(rt, msg.job_id)  # the retry may run on another worker
        raise


def _run_claimed(rt: WorkerRuntime, kind: str, msg: Any, build: Callable[[WorkerRuntime, Any], dict[str, Any]]) -> str:
    clock = StageClock()
    try:
        rt.jobs.set_progress(msg.job_id, "exporting", 0, 0)
        result = build(rt, msg)
        clock.lap("exporting")
    except LayerqError as exc:
        if is_transient(exc):
            raise TransientJobError(f"{type(exc).__name__}: {exc}") from exc
        metrics.JOBS.labels(kind, "failed").inc()
        return _end_failed(rt, msg.job_id, exc.code, exc.message, clock.total())
    except Exception as exc:
        if is_transient(exc):
            raise TransientJobError(f"{type(exc).__name__}: {exc}") from exc
        log.exception("%s job %s failed unexpectedly", kind, msg.job_id)
        metrics.JOBS.labels(kind, "failed").inc()
        return _end_failed(rt, msg.job_id, "internal", f"{type(exc).__name__}: {exc}", clock.total())
    try:
        with store_faults_retried("recording the result"):
            rt.jobs.succeed(msg.job_id, result, clock.total())
    except LayerqError:
        return _cancel(rt, msg.job_id, clock.total())
    metrics.JOBS.labels(kind, "succeeded").inc()
    _notify(rt, msg.job_id)
    return "succeeded"


def register(app: Any) -> None:
    """Add the `layerq.compose` and `layerq.combine` tasks (queue `cpu`) to a worker app."""
    from worker import runtime

    app.conf.task_routes = {**(app.conf.task_routes or {}),
                            COMPOSE_TASK: {"queue": LAYERSET_QUEUE}, COMBINE_TASK: {"queue": LAYERSET_QUEUE}}

    def task(name: str, kind: str, model: type[BaseModel], build: Callable[[WorkerRuntime, Any], dict[str, Any]]):
        @app.task(name=name, bind=True, acks_late=True, reject_on_worker_lost=True)
        def run(self, message: dict) -> str:
            with failing_job_on_escape(message):  # an escape must not leave the job non-terminal
                rt = runtime.current()
                try:
                    return run_layerset_job(rt, kind, model, message, build, retries=self.request.retries)
                except TransientJobError as exc:
                    if self.request.retries >= rt.settings.max_transient_retries:
                        return give_up(rt, message, exc)
                    countdown = rt.settings.retry_backoff_s * 2**self.request.retries
                    raise self.retry(exc=exc, countdown=countdown, max_retries=rt.settings.max_transient_retries)
        return run

    task(COMPOSE_TASK, "compose", ComposeMessage, build_compose)
    task(COMBINE_TASK, "combine", CombineMessage, build_combine)
