"""Run one edit job: the work behind the `layerq.edit` task, on the claiming, cancel, failure, stats and
webhook path decompose jobs use (`worker.decompose.run_job` with `kind=EDIT`).

The result is a new layer set: the parent job's stack with the edited layer in place of its source
(or, for an uploaded image, a one-layer set), re-composited and re-exported through the same export
path as a decomposition, with a manifest that records the parent and which layer changed. Edits
chain: an edit's layers are a parent like any other's. As for decompositions, the manifest is
written last and a redelivered job writes the same keys again.
"""

from __future__ import annotations

import io
import time
from typing import Any

from PIL import Image

from layerq.edits import KIND, EditMessage
from layerq.errors import InvalidImage, JobNotFound, ObjectNotFound, ValidationFailed
from layerq.queues import EDIT_QUEUE
from layerq.results import with_object_keys
from worker.decompose import JobKind, StageClock, _StepTimes, load_input
from worker.outputs import manifest_for, store_layer_set
from worker.runtime import WorkerRuntime


def parse_edit_message(raw: Any) -> EditMessage:
    try:
        return EditMessage.model_validate(raw)
    except Exception as exc:
        raise ValidationFailed(f"malformed edit message: {exc}") from exc


def _open_png(data: bytes, field: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(data))
        image.load()
    except Exception as exc:
        raise InvalidImage("the source layer is not a readable image", field=field) from exc
    return image.convert("RGBA")


def parent_stack(rt: WorkerRuntime, msg: EditMessage) -> tuple[list[Image.Image], int]:
    """The layers the edited one goes back into and its index: the parent job's whole stack, or the
    uploaded image alone (index 0)."""
    source = msg.params.source
    if source is None:
        try:
            return [load_input(rt.store.get(msg.input_key), rt.settings)], 0
        except ObjectNotFound as exc:
            raise ValidationFailed(f"input {msg.input_key} is missing from storage", field="input_key") from exc
    try:
        parent = rt.jobs.get(source.job_id)
        result = with_object_keys(parent["result"], parent["id"])
        layers = [_open_png(rt.store.get(layer["key"]), "source.layer") for layer in result["layers"]]
    except (JobNotFound, ObjectNotFound, KeyError, TypeError) as exc:
        raise ValidationFailed(f"the source job {source.job_id} or its layers are gone (expired?)",
                               field="source.job_id") from exc
    if not 0 <= source.layer < len(layers):
        raise ValidationFailed(f"job {source.job_id} has {len(layers)} layers", field="source.layer")
    return layers, source.layer


def edit_job(rt: WorkerRuntime, msg: EditMessage, clock: StageClock) -> dict[str, Any]:
    """Fetch the parent stack, edit one layer, write layers, composite, exports and manifest (last)."""
    from worker.edit import edit_layer

    params = msg.params
    stack, index = parent_stack(rt, msg)
    clock.lap("load_input")

    rt.jobs.set_progress(msg.job_id, "encoding", 0, params.num_inference_steps)
    steps = _StepTimes(rt, msg.job_id)
    started = time.perf_counter()
    matte = rt.matte_model if params.matte == "model" and rt.matte_model is not None else params.matte
    edited = edit_layer(
        rt.pipeline, stack[index], params.prompt, negative_prompt=params.negative_prompt,
        true_cfg_scale=params.true_cfg_scale, num_inference_steps=params.num_inference_steps,
        seed=params.seed or 0, matte=matte, on_step=steps.on_step, should_stop=steps.should_stop,
    )
    ended = time.perf_counter()
    steps.split_into(clock, "encoding", started, ended)
    clock.timings["pipeline"] = round(ended - started, 4)
    clock.skip()

    layers = [*stack[:index], edited, *stack[index + 1:]]
    n = params.num_inference_steps
    rt.jobs.set_progress(msg.job_id, "exporting", n, n)
    parent = None if params.source is None else {"job_id": params.source.job_id, "layer": params.source.layer}
    manifest = manifest_for(msg.job_id, KIND, [im.size for im in layers], rt.settings.export_format_list,
                            params.model_dump(), model=rt.settings.edit_model, parent=parent,
                            changed_layers=[index])

    def encoded() -> None:
        clock.lap("exporting")
        rt.jobs.set_progress(msg.job_id, "uploading", n, n)

    result = store_layer_set(rt, msg.job_id, layers, manifest, on_encoded=encoded)
    clock.lap("uploading")
    return {**result, "steps": n, "parent": parent, "changed_layers": [index]}


EDIT = JobKind(KIND, EDIT_QUEUE, parse_edit_message, edit_job)
