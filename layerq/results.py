"""A finished job's result as clients see it: download URLs signed at the moment of reading, never
stored. Shared by the API's job view and the webhook payloads (torch-free).

A stored result names every object it points at by its key (`layers[].key`, `composite`,
`manifest`, `exports` as {format: key}); URLs are signed for those keys, never for keys rebuilt from
the job id, so a job answered from the result cache hands out its source job's objects."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from layerq import objects

DOWNLOAD_NAMES = {"psd": "layers.psd", "pptx": "layers.pptx", "zip": "layers.zip", "ora": "layers.ora"}


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds (`2026-11-26T21:22:00.000Z`)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def with_object_keys(result: dict[str, Any], job_id: str) -> dict[str, Any]:
    """`result` with the keys of its composite, manifest and exports filled in. Results stored before
    the keys were recorded name exports as a list of formats: their objects are under `job_id`
    (the job that wrote them)."""
    exports = result.get("exports") or {}
    if not isinstance(exports, dict):
        exports = {fmt: objects.export_key(job_id, fmt) for fmt in exports}
    return {
        **result,
        "composite": result.get("composite") or objects.composite_key(job_id),
        "manifest": result.get("manifest") or objects.manifest_key(job_id),
        "exports": exports,
    }


def signed_result(
    job_id: str, result: dict[str, Any], store: Any, ttl_s: int, absolute: Callable[[str], str] = lambda u: u
) -> dict[str, Any]:
    """Layers, composite, exports and manifest of a succeeded job with URLs valid `ttl_s` seconds.
    `absolute` turns the local backend's root-relative URLs into full ones where a host is known."""

    def url(key: str, filename: str | None = None) -> str:
        return absolute(store.presign_get(key, ttl_s, filename=filename))

    result = with_object_keys(result, job_id)
    return {
        "layers": [
            {"index": layer["index"], "url": url(layer["key"]), "width": layer["width"], "height": layer["height"]}
            for layer in result.get("layers", [])
        ],
        "composite": url(result["composite"]),
        "exports": {fmt: url(key, DOWNLOAD_NAMES.get(fmt)) for fmt, key in result["exports"].items()},
        "manifest": url(result["manifest"]),
        "expires_at": iso(time.time() + ttl_s),
        "caption": result.get("caption"),
    }
