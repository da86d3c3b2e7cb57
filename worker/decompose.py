"""Run one decomposition job: the plain function behind the thin Celery task.

Order matters for "a half-written job is never visible as succeeded": layers, composite and exports
are written first (in parallel), the manifest last, and only then is the job moved to `succeeded`.
A redelivered job writes the same keys again, so a job has one set of result objects however often
it ran.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from PIL import Image

from layerq import metrics
from layerq import objects as keys
from layerq.config import Settings
from layerq.errors import (
    ExceedsGpuMemory, InvalidImage, JobCanceled, JobNotFound, JobTimedOut, LayerqError, ObjectNotFound, PipelineFailed,
    ValidationFailed,
)
from layerq.jobs import JobStatus
from layerq.logs import bind_log_context
from layerq.messages import DecomposeMessage
from layerq.params import DecomposeParams
from layerq.queues import DECOMPOSE_QUEUE
from storage.client import is_transient
from worker.liveness import dead_after_s
from worker.outputs import manifest_for, store_layer_set
from worker.runtime import WorkerRuntime

if TYPE_CHECKING:
    from worker.layersets.tree import Decomposition

log = logging.getLogger(__name__)

KIND = "decompose"


class TransientJobError(Exception):
    """Raised when a job hit a fault worth retrying later: storage or Redis unreachable."""


def give_up(rt: WorkerRuntime, raw_message: Any, exc: TransientJobError) -> str:
    """The job's last retry hit a transient fault too: end it `failed` with the fault's code (e.g.
    `storage_unavailable`) rather than leave it `running` with no message left to run it."""
    job_id = raw_message.get("job_id") if isinstance(raw_message, dict) else None
    if not job_id:
        return "failed"
    code = getattr(exc.__cause__, "code", None) or "unavailable"
    log.warning("job %s: transient fault on its last retry (%s); failed", job_id, exc)
    return _end_failed(rt, job_id, code, f"gave up after retries: {exc}", {})


class StageClock:
    """Per-stage wall-clock timings of one job, in seconds."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self._last = self.t0

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.add(stage, now - self._last)
        self._last = now

    def skip(self) -> None:
        self._last = time.perf_counter()

    def add(self, stage: str, seconds: float) -> None:
        self.timings[stage] = round(self.timings.get(stage, 0.0) + max(0.0, seconds), 4)

    def total(self) -> dict[str, float]:
        return {**self.timings, "total": round(time.perf_counter() - self.t0, 4)}


def parse_message(raw: Any) -> DecomposeMessage:
    """Validate a queue message; a malformed one fails its job rather than the worker."""
    try:
        return DecomposeMessage.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError, or a non-dict body
        raise ValidationFailed(f"malformed decompose message: {exc}") from exc


def load_input(data: bytes, settings: Settings) -> Image.Image:
    # Uploaded inputs reach the worker unchecked (the API does not read them), so they get the very
    # checks the API applies to multipart uploads.
    from layerq.images import normalise_image

    return normalise_image(data, max_pixels=settings.max_image_pixels, max_side_px=settings.max_image_side_px)


@dataclass(frozen=True)
class JobKind:
    """What differs between job kinds in `run_job`: the message, the queue, the work (edit jobs:
    worker/edit_job.py). Claiming, cancel, failure, stats and webhooks are shared."""

    name: str
    queue: str
    parse: Callable[[Any], Any]
    execute: Callable[[WorkerRuntime, Any, StageClock], dict[str, Any]]


@contextmanager
def store_faults_retried(doing: str) -> Iterator[None]:
    """Around a worker's reads and writes of a job's record (its claim, `JobStore.begin_attempt`, and
    the `succeeded` transition): the job store unreachable after its own retries is a transient
    fault, for the task to retry later. It is not the job's fault; escaping, it would end the job
    `internal` (tasks.failing_job_on_escape) after a blip of Redis, and drop a finished job's files."""
    try:
        yield
    except Exception as exc:
        if is_transient(exc):
            raise TransientJobError(f"{type(exc).__name__} while {doing}: {exc}") from exc
        raise


def hand_back(rt: WorkerRuntime, job_id: str) -> None:
    """A job this worker claimed hit a transient fault and goes back for a retry: stop owning it, so
    the retry runs on whichever worker takes its delivery (`JobStore.unclaim`)."""
    try:
        rt.jobs.unclaim(job_id, rt.name)
    except Exception:  # Redis is the fault: the retry cannot be published on it either
        log.warning("job %s: could not hand it back for a retry", job_id, exc_info=True)


def run_job(
    rt: WorkerRuntime, raw_message: Any, *, delivery_tag: str | None = None, retries: int = 0,
    kind: JobKind | None = None,
) -> str:
    """Run one delivery of a decompose job to its end; return the job's final status.

    Never raises for a problem with the job itself: those end the job `failed` (or `canceled`) with a
    code and a readable message, so the worker keeps serving. Transient faults raise
    TransientJobError for the task to retry later."""
    kind = kind or DECOMPOSE
    job_id = raw_message.get("job_id") if isinstance(raw_message, dict) else None
    try:
        msg = kind.parse(raw_message)
    except ValidationFailed as exc:
        if job_id:
            _end_failed(rt, job_id, exc.code, exc.message, {})
        return "failed"

    try:
        with store_faults_retried("claiming the job"):
            # The job's own queue (decompose jobs wait in their memory class's queue), for its place
            # in the queue and the duplicate check against the workers of that queue.
            rec = rt.jobs.get(msg.job_id)
            queue = rec.get("queue") or kind.queue
            attempt = rt.jobs.begin_attempt(
                msg.job_id, max_deliveries=rt.settings.max_deliveries + retries, worker=rt.name,
                alive_within_s=dead_after_s(rt.settings.worker_heartbeat_s), queue=queue,
            )
    except JobNotFound:  # expired record, or a message for another deployment: nothing to do
        log.warning("job %s has no record; message dropped", msg.job_id)
        return "missing"
    if not attempt.run:
        log.info("job %s not run: %s%s", msg.job_id, attempt.status, " (duplicate)" if attempt.duplicate else "")
        if attempt.worker_lost:
            _discard_job(rt, msg.job_id)
            _notify(rt, msg.job_id)
        elif attempt.status == "expired":  # its cancel_after_s passed while queued: never ran
            _notify(rt, msg.job_id)
        return attempt.status
    if rt.liveness:
        rt.liveness.hold(msg.job_id, delivery_tag, queue)
    if attempt.attempts == 1:
        _notify(rt, msg.job_id)
    context = bind_log_context(job_id=msg.job_id, tenant=rec.get("tenant"))
    metrics.JOBS.labels(kind.name, "running").inc()
    try:
        status = _run_claimed(rt, msg, kind)
        metrics.JOBS.labels(kind.name, status).inc()
        return status
    except TransientJobError:
        hand_back(rt, msg.job_id)
        raise
    finally:
        context.reset()
        if rt.liveness:
            rt.liveness.release()


def _run_claimed(rt: WorkerRuntime, msg: Any, kind: JobKind) -> str:
    clock = StageClock()
    try:
        result = kind.execute(rt, msg, clock)
    except JobCanceled:
        return _cancel(rt, msg.job_id, clock.total())
    except (JobTimedOut, LayerqError) as exc:
        if is_transient(exc):  # StorageUnavailable is a LayerqError but not the job's fault
            raise TransientJobError(f"{type(exc).__name__}: {exc}") from exc
        code = exc.code
        if isinstance(exc, PipelineFailed) and "OutOfMemoryError" in type(exc.__cause__).__name__:
            code = "out_of_memory"  # permanent at this size: retrying on the same card fails again
        return _end_failed(rt, msg.job_id, code, exc.message, clock.total())
    except Exception as exc:
        if is_transient(exc):
            raise TransientJobError(f"{type(exc).__name__}: {exc}") from exc
        log.exception("job %s failed unexpectedly", msg.job_id)
        return _end_failed(rt, msg.job_id, "internal", f"{type(exc).__name__}: {exc}", clock.total())

    timings = clock.total()
    try:
        with store_faults_retried("recording the result"):  # a retry runs the job again, whole
            rt.jobs.succeed(msg.job_id, result, timings)
    except LayerqError:
        # Canceled while we were uploading: the cancel wins and the results go.
        return _cancel(rt, msg.job_id, timings)
    rt.services.stats_of(kind.name).record(msg.params.model_dump(), timings)
    metrics.observe_stages(kind.name, timings)
    rt.services.cache.remember(msg.job_id)  # identical later requests are answered by this job
    _notify(rt, msg.job_id)
    return "succeeded"


def decompose_job(rt: WorkerRuntime, msg: DecomposeMessage, clock: StageClock) -> dict[str, Any]:
    """Fetch the input, run the pipeline, write layers, composite, exports and manifest (last)."""
    params = msg.params
    _check_fits(rt, params)
    try:
        input_bytes = rt.store.get(msg.input_key)
        image = load_input(input_bytes, rt.settings)
    except ObjectNotFound as exc:
        raise ValidationFailed(f"input {msg.input_key} is missing from storage", field="input_key") from exc
    except InvalidImage as exc:
        raise InvalidImage(f"input {msg.input_key}: {exc.message}", field="input_key") from exc
    clock.lap("load_input")

    first_stage = "captioning" if not params.prompt.strip() else "encoding"
    rt.jobs.set_progress(msg.job_id, first_stage, 0, params.num_inference_steps)
    steps = _StepTimes(rt, msg.job_id)
    caption, extra = None, {}
    if first_stage == "captioning" and hasattr(rt.pipeline, "caption_images"):  # not the classic decomposer
        from worker.caption_ahead import caption_for

        # Written before the pipeline call (with waiting jobs' captions, or found written ahead), so
        # the job's record can show it; the pipeline then uses it where it would have captioned.
        caption = caption_for(rt, msg, image, input_bytes)
        clock.lap("captioning")
        first_stage, extra = "encoding", {"caption": caption}
    started = time.perf_counter()
    layers = rt.pipeline.run(image, params, on_step=steps.on_step, should_stop=steps.should_stop, **extra)
    ended = time.perf_counter()
    steps.split_into(clock, first_stage, started, ended)
    clock.timings["pipeline"] = round(ended - started, 4)
    clock.skip()  # the pipeline's time is in its parts above

    _set_stage(rt, msg.job_id, "exporting", params)
    from worker.layersets.jobs import decompose_tree, drop_layers

    layers, dropped = drop_layers(params, layers)  # `layers: "auto"`, `drop_empty: true`
    manifest = manifest_for(msg.job_id, KIND, [im.size for im in layers], rt.settings.export_format_list,
                            params.model_dump(), model=rt.settings.model)
    if caption is not None:  # what the pipeline captioned the image as: `prompt` reproduces the job
        manifest["caption"] = caption
    if dropped is not None:
        manifest["dropped"] = dropped
    stack: list[Image.Image] | Decomposition = layers
    parent = rt.services.lineage.parent(msg.job_id)
    if parent is not None and parent.get("layer") is not None:  # a layer of a finished set, decomposed again
        stack, manifest = decompose_tree(rt, parent, layers, manifest)

    def encoded() -> None:
        clock.lap("exporting")
        _set_stage(rt, msg.job_id, "uploading", params)

    result = store_layer_set(rt, msg.job_id, stack, manifest, on_encoded=encoded)
    clock.lap("uploading")
    if caption is not None:
        result["caption"] = caption
    return {**result, "steps": params.num_inference_steps}


DECOMPOSE = JobKind(KIND, DECOMPOSE_QUEUE, parse_message, decompose_job)


def _check_fits(rt: WorkerRuntime, params: DecomposeParams) -> None:
    """The last guard of the memory-class routing: a job this worker's class cannot run (a queue
    named by hand, fit constants changed between the API's version and this one) ends at once with
    `exceeds_gpu_memory`, never with an out-of-memory error halfway through."""
    memory = rt.memory
    if memory is None or memory.memory_class is None:
        return
    from layerq.memory_classes import fits, need_gib

    resolution, layers, caption = params.resolution, params.layer_count, not params.prompt.strip()
    if not fits(memory.memory_class, resolution, layers, caption):
        raise ExceedsGpuMemory(
            f"resolution {resolution} with {layers} layers{' and an auto-caption' if caption else ''} needs about "
            f"{need_gib(resolution, layers, caption):.0f} GiB; this worker is {memory.memory_class.label} "
            f"({memory.budget_gib or 0:.1f} GiB)", field="params")


class _StepTimes:
    """Reports each denoising step, answers the pipeline's stop question after it, and remembers when
    the first and last step ended, to split the pipeline call into captioning/encoding, denoising and
    decoding."""

    def __init__(self, rt: WorkerRuntime, job_id: str) -> None:
        self.rt, self.job_id = rt, job_id
        self.first: float | None = None
        self.last: float | None = None
        self.count = 0
        self.status: JobStatus | None = None
        # The solo pool enforces no time limit; the step callback does.
        self.deadline = time.monotonic() + rt.settings.job_soft_time_limit_s

    def on_step(self, step: int, total: int) -> None:
        now = time.perf_counter()
        self.first = self.first or now
        self.last, self.count = now, step
        # The progress write answers with the job's status: that is the cancel check, at no extra call.
        self.status = self.rt.jobs.set_progress(self.job_id, "denoising" if step < total else "decoding", step, total)

    def should_stop(self) -> str | None:
        """Asked after each step's report: stop on a cancel request or past the soft time limit."""
        if time.monotonic() > self.deadline:
            return "time_limit"
        return "canceled" if self.status is JobStatus.CANCELING else None

    def split_into(self, clock: StageClock, first_stage: str, started: float, ended: float) -> None:
        if self.first is None or self.last is None or self.count < 2:
            clock.add("denoising", ended - started)
            return
        step_s = (self.last - self.first) / (self.count - 1)
        clock.add(first_stage, self.first - started - step_s)
        clock.add("denoising", self.last - self.first + step_s)
        clock.add("decoding", ended - self.last)


def _set_stage(rt: WorkerRuntime, job_id: str, stage: str, params: DecomposeParams) -> None:
    steps = params.num_inference_steps
    rt.jobs.set_progress(job_id, stage, steps, steps)


def _discard_outputs(rt: WorkerRuntime, job_id: str) -> None:
    """Remove every result object of a job (its input stays, for a retry or an audit)."""
    for sub in ("layers/", "exports/"):
        rt.store.delete_prefix(keys.job_prefix(job_id) + sub)
    for key in (keys.composite_key(job_id), keys.manifest_key(job_id)):
        rt.store.delete_prefix(key)


def _cancel(rt: WorkerRuntime, job_id: str, timings: dict[str, float]) -> str:
    _discard_outputs(rt, job_id)
    try:
        rt.jobs.mark_canceled(job_id, timings)
    except LayerqError as exc:  # already terminal: the first terminal transition wins
        log.info("job %s: %s", job_id, exc)
        return "canceled"
    _notify(rt, job_id)
    return "canceled"


def _discard_job(rt: WorkerRuntime, job_id: str) -> None:
    """Remove everything under a failed job's prefix, input included: partial results are never
    served, and on a full disk they hold the space the next job needs. Called only after the job's
    `failed` transition succeeded, so a job another delivery finished keeps its results."""
    try:
        rt.store.delete_prefix(keys.job_prefix(job_id))
    except Exception:  # the job has failed either way; the objects wait for the lifecycle rule
        log.warning("job %s: could not delete its objects", job_id, exc_info=True)


def _end_failed(rt: WorkerRuntime, job_id: str, code: str, message: str, timings: dict[str, float]) -> str:
    """Fail the job (the first terminal transition wins), drop its objects, send its webhook."""
    try:
        rt.jobs.fail(job_id, code, message, timings)
    except LayerqError as exc:
        log.info("job %s: %s", job_id, exc)
        return "failed"
    _discard_job(rt, job_id)
    _notify(rt, job_id)
    return "failed"


def _notify(rt: WorkerRuntime, job_id: str) -> None:
    """Send the webhook event the job's current status stands for, if the job asked for one. `notify`
    sends each (job, event) at most once and never raises: a webhook problem must not fail the job."""
    from layerq.webhooks import notify

    try:
        rec = rt.jobs.get(job_id)
    except JobNotFound:
        return
    if rec.get("webhook"):
        notify(rt.app, rt.settings, rec, deliveries=rt.services.deliveries)


end_failed = _end_failed  # for the task wrapper (worker.tasks) that fails a job whose task raised
