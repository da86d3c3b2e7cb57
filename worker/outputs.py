"""Writing a job's layer set to the object store: the one path every job kind takes (decompose, edit,
compose, combine, a decomposed layer's tree).

What it guarantees, for "succeeded means every file is there" and "no half-written result": every
layer, the composite and each export are stored (and each write checked) before the manifest, and the
manifest is written last; the caller moves the job to `succeeded` only after this returns. If any
write fails, the manifest is never written and the error reaches the caller, whose failure path
removes the job's prefix. A redelivered job writes the same keys again.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from typing import TYPE_CHECKING, Any

from layerq import objects as keys
from storage.base import Pieces
from worker import exports

if TYPE_CHECKING:
    from PIL import Image

    from worker.layersets.tree import Decomposition
    from worker.runtime import WorkerRuntime

UPLOAD_THREADS = 8  # storage writes are I/O bound: more of them than encoding threads


def manifest_for(job_id: str, kind: str, sizes: Sequence[tuple[int, int]], formats: Sequence[str],
                 params: dict[str, Any], **extra: Any) -> dict[str, Any]:
    """A layer set's manifest: its layers (bottom first) with their keys and sizes, composite and
    exports keys, plus what the job kind adds (`model`, `parent`, `ops`, …)."""
    return {
        "job_id": job_id, "kind": kind, "params": params,
        "layers": [{"index": i, "key": keys.layer_key(job_id, i), "width": w, "height": h}
                   for i, (w, h) in enumerate(sizes)],
        "composite": keys.composite_key(job_id),
        "exports": {fmt: keys.export_key(job_id, fmt) for fmt in formats},
        "order": "bottom-to-top",
        **extra,
    }


def object_for(job_id: str, name: str) -> tuple[str, str]:
    """Object key and content type of a piece `exports.encode_all` hands over."""
    png = exports.CONTENT_TYPES["png"]
    if name.startswith("layer:"):
        return keys.layer_key(job_id, int(name.split(":")[1])), png
    if name == "composite":
        return keys.composite_key(job_id), png
    return keys.export_key(job_id, name), exports.CONTENT_TYPES[name]


def store_layer_set(
    rt: WorkerRuntime, job_id: str, layers: Sequence[Image.Image] | Decomposition, manifest: dict[str, Any],
    *, on_encoded: Callable[[], None] | None = None,
) -> dict[str, Any]:
    """Encode `layers` (a flat stack, or a tree whose PSD and ORA nest) and store every object, the
    manifest last; return the job's result (every object by its key: a job answered from the cache
    later signs these very keys). `on_encoded` runs once everything is encoded, while the last
    writes may still be in flight (the caller's "exporting" → "uploading" moment)."""
    formats = rt.settings.export_format_list
    # Each object is stored as soon as it is encoded, so storage writes overlap the encoding of the rest.
    with ThreadPoolExecutor(UPLOAD_THREADS, thread_name_prefix="uploads") as uploads, \
            ThreadPoolExecutor(rt.settings.encode_thread_count, thread_name_prefix="exports") as encoders:
        pending: list[Future[None]] = []

        def store(name: str, data: bytes | Pieces) -> None:
            key, content_type = object_for(job_id, name)
            pending.append(uploads.submit(rt.store.put, key, data, content_type))

        if isinstance(layers, Sequence):
            exports.encode_all(layers, manifest, formats, pool=encoders, on_ready=store, pieces=True)
        else:
            _encode_tree(layers, manifest, formats, store)
        if on_encoded is not None:
            on_encoded()
        for future in pending:
            future.result()  # the first failed write raises here, before the manifest exists
    rt.store.put(keys.manifest_key(job_id), json.dumps(manifest, indent=2).encode(), "application/json")
    return {"layers": manifest["layers"], "composite": manifest["composite"],
            "manifest": keys.manifest_key(job_id), "exports": dict(manifest["exports"])}


def _encode_tree(tree: Decomposition, manifest: dict[str, Any], formats: Sequence[str],
                 store: Callable[[str, bytes | Pieces], None]) -> None:
    from worker.layersets.tree import tree_exports

    pngs, composite_png, built = tree_exports(tree, manifest, formats)
    for i, data in enumerate(pngs):
        store(f"layer:{i}", data)
    store("composite", composite_png)
    for fmt, data in built.items():
        store(fmt, data)
