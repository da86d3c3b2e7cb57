"""Run one decomposition job: the plain function behind the thin Celery task.

Order matters for "a half-written job is never visible as succeeded": layers, composite and exports
are written first (in parallel), the manifest last, and only then is the job moved to `succeeded`.
A redelivered job writes the same keys again, so a job has one set of result objects however often
it ran.
"""

from __future__ import annotations

import io
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from PIL import Image

from layerq import keys
from layerq.errors import InvalidImage, JobCanceled, JobNotFound, JobTimedOut, LayerqError, ObjectNotFound, ValidationFailed
from layerq.jobs import JobStatus
from layerq.messages import DecomposeMessage
from layerq.params import DecomposeParams
from worker import exports
from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

KIND = "decompose"
_UPLOAD_THREADS = 8


class StageClock:
    """Per-stage wall-clock timings of one job, in seconds."""

    def __init__(self) -> None:
        self.t0 = time.perf_counter()
        self.timings: dict[str, float] = {}
        self._last = self.t0

    def lap(self, stage: str) -> None:
        now = time.perf_counter()
        self.timings[stage] = round(self.timings.get(stage, 0.0) + now - self._last, 4)
        self._last = now

    def total(self) -> dict[str, float]:
        return {**self.timings, "total": round(time.perf_counter() - self.t0, 4)}


def parse_message(raw: Any) -> DecomposeMessage:
    """Validate a queue message; a malformed one fails its job rather than the worker."""
    try:
        return DecomposeMessage.model_validate(raw)
    except Exception as exc:  # pydantic.ValidationError, or a non-dict body
        raise ValidationFailed(f"malformed decompose message: {exc}") from exc


def load_input(data: bytes) -> Image.Image:
    try:
        with Image.open(io.BytesIO(data)) as img:
            return img.convert("RGBA")
    except Exception as exc:
        raise InvalidImage(f"stored input is not a readable image: {exc}", field="image") from exc


def run_job(rt: WorkerRuntime, raw_message: Any) -> str:
    """Run one delivery of a decompose job to its end; return the job's final status.

    Never raises for a problem with the job itself: those end the job `failed` (or `canceled`) with
    a code and a readable message, so the worker keeps serving."""
    job_id = raw_message.get("job_id") if isinstance(raw_message, dict) else None
    try:
        msg = parse_message(raw_message)
    except ValidationFailed as exc:
        if job_id:
            _end_failed(rt, job_id, exc.code, exc.message, {})
        return "failed"

    try:
        attempt = rt.jobs.begin_attempt(msg.job_id, max_deliveries=rt.settings.max_deliveries)
    except JobNotFound:  # expired record, or a message for another deployment: nothing to do
        log.warning("job %s has no record; message dropped", msg.job_id)
        return "missing"
    if not attempt.run:
        log.info("job %s not run: %s", msg.job_id, attempt.status)
        return attempt.status
    rt.jobs.worker_heartbeat(KIND, rt.name)

    clock = StageClock()
    try:
        result = decompose_job(rt, msg, clock)
    except JobCanceled:
        _discard_outputs(rt, msg.job_id)
        _end(rt, msg.job_id, JobStatus.CANCELED, finished_at=repr(time.time()), timings=clock.total())
        return "canceled"
    except JobTimedOut as exc:
        _discard_outputs(rt, msg.job_id)
        _end_failed(rt, msg.job_id, exc.code, exc.message, clock.total())
        return "failed"
    except LayerqError as exc:
        _end_failed(rt, msg.job_id, exc.code, exc.message, clock.total())
        return "failed"
    except Exception as exc:  # a bug or an unexpected fault: fail this job, keep the worker
        log.exception("job %s failed unexpectedly", msg.job_id)
        _end_failed(rt, msg.job_id, "internal", f"{type(exc).__name__}: {exc}", clock.total())
        return "failed"

    timings = clock.total()
    try:
        rt.jobs.succeed(msg.job_id, result, timings)
    except LayerqError:
        # Canceled while we were uploading: the cancel wins and the results go.
        _discard_outputs(rt, msg.job_id)
        _end(rt, msg.job_id, JobStatus.CANCELED, finished_at=repr(time.time()), timings=timings)
        return "canceled"
    rt.jobs.record_service_time(KIND, timings["total"])
    return "succeeded"


def decompose_job(rt: WorkerRuntime, msg: DecomposeMessage, clock: StageClock) -> dict[str, Any]:
    """Fetch the input, run the pipeline, write layers, composite, exports and manifest (last)."""
    params = msg.params
    try:
        image = load_input(rt.store.get(msg.input_key))
    except ObjectNotFound as exc:
        raise ValidationFailed(f"input {msg.input_key} is missing from storage", field="input_key") from exc
    clock.lap("load_input")

    rt.jobs.set_progress(msg.job_id, "captioning" if not params.prompt else "encoding", 0, params.num_inference_steps)
    layers = rt.pipeline.run(
        image, params, on_step=_progress_reporter(rt, msg.job_id), should_stop=_stop_check(rt, msg.job_id)
    )
    clock.lap("pipeline")

    _set_stage(rt, msg.job_id, "exporting", params)
    formats = rt.settings.export_format_list
    manifest = _manifest(msg, params, layers, rt.settings.model, formats)
    blobs = _encode_outputs(msg.job_id, layers, manifest, formats)
    clock.lap("export")

    _set_stage(rt, msg.job_id, "uploading", params)
    with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
        list(pool.map(lambda kv: rt.store.put(kv[0], kv[1][0], kv[1][1]), blobs.items()))
    rt.store.put(keys.manifest_key(msg.job_id), json.dumps(manifest, indent=2).encode(), "application/json")
    clock.lap("upload")
    return {"layers": manifest["layers"], "exports": list(manifest["exports"]), "steps": params.num_inference_steps}


def _encode_outputs(
    job_id: str, layers: list[Image.Image], manifest: dict, formats: tuple[str, ...]
) -> dict[str, tuple[bytes, str]]:
    """Every result object but the manifest: key → (bytes, content type). Encodes run in threads
    (PIL, zlib and the PSD codec release the GIL); each layer's PNG is encoded once and reused."""
    png = exports.CONTENT_TYPES["png"]
    with ThreadPoolExecutor(_UPLOAD_THREADS) as pool:
        composite_png = pool.submit(lambda: exports.png_bytes(exports.composite(layers)))
        psd = pool.submit(exports.build_exports, layers, manifest, formats=("psd",)) if "psd" in formats else None
        pngs = list(pool.map(exports.png_bytes, layers))
        others = [
            pool.submit(exports.build_exports, layers, manifest, layer_pngs=pngs, formats=(fmt,))
            for fmt in formats
            if fmt != "psd"
        ]
        out = {keys.layer_key(job_id, i): (data, png) for i, data in enumerate(pngs)}
        out[keys.composite_key(job_id)] = (composite_png.result(), png)
        for future in ([psd] if psd else []) + others:
            for fmt, data in future.result().items():
                out[keys.export_key(job_id, fmt)] = (data, exports.CONTENT_TYPES[fmt])
    return out


def _manifest(
    msg: DecomposeMessage, params: DecomposeParams, layers: list[Image.Image], model: str, formats: tuple[str, ...]
) -> dict:
    return {
        "job_id": msg.job_id,
        "kind": KIND,
        "model": model,
        "params": params.model_dump(),
        "layers": [
            {"index": i, "key": keys.layer_key(msg.job_id, i), "width": im.width, "height": im.height}
            for i, im in enumerate(layers)
        ],
        "composite": keys.composite_key(msg.job_id),
        "exports": {fmt: keys.export_key(msg.job_id, fmt) for fmt in formats},
        "order": "bottom-to-top",
    }


def _progress_reporter(rt: WorkerRuntime, job_id: str) -> Callable[[int, int], None]:
    def on_step(step: int, total: int) -> None:
        rt.jobs.set_progress(job_id, "denoising" if step < total else "decoding", step, total)

    return on_step


def _stop_check(rt: WorkerRuntime, job_id: str) -> Callable[[], str | None]:
    """Asked once per denoising step: stop on a cancel request or past the soft time limit (the solo
    pool enforces no time limits itself)."""
    deadline = time.monotonic() + rt.settings.job_soft_time_limit_s

    def should_stop() -> str | None:
        if time.monotonic() > deadline:
            return "time_limit"
        status = rt.jobs.r.hget(rt.jobs.job_key(job_id), "status")
        return "canceled" if status == JobStatus.CANCELING.value else None

    return should_stop


def _set_stage(rt: WorkerRuntime, job_id: str, stage: str, params: DecomposeParams) -> None:
    steps = params.num_inference_steps
    rt.jobs.set_progress(job_id, stage, steps, steps)


def _discard_outputs(rt: WorkerRuntime, job_id: str) -> None:
    prefix = keys.job_prefix(job_id)
    for sub in ("layers/", "exports/"):
        rt.store.delete_prefix(prefix + sub)
    for key in (keys.composite_key(job_id), keys.manifest_key(job_id)):
        rt.store.delete_prefix(key)


def _end(rt: WorkerRuntime, job_id: str, status: JobStatus, **fields: Any) -> None:
    try:
        rt.jobs.transition(job_id, status, **fields)
    except LayerqError as exc:  # already terminal (e.g. canceled meanwhile): first terminal wins
        log.info("job %s: %s", job_id, exc)


def _end_failed(rt: WorkerRuntime, job_id: str, code: str, message: str, timings: dict[str, float]) -> None:
    try:
        rt.jobs.fail(job_id, code, message, timings)
    except LayerqError as exc:
        log.info("job %s: %s", job_id, exc)
