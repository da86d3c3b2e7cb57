"""A finished job's result as clients see it: download URLs signed at the moment of reading, never
stored. Shared by the API's job view and the webhook payloads (torch-free)."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import datetime, timezone
from typing import Any

from layerq import keys

DOWNLOAD_NAMES = {"psd": "layers.psd", "pptx": "layers.pptx", "zip": "layers.zip", "ora": "layers.ora"}


def iso(ts: float | None) -> str | None:
    """Unix seconds as ISO 8601 UTC with milliseconds (`2026-11-26T21:22:00.000Z`)."""
    if ts is None:
        return None
    return datetime.fromtimestamp(float(ts), tz=timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def signed_result(
    job_id: str, result: dict[str, Any], store: Any, ttl_s: int, absolute: Callable[[str], str] = lambda u: u
) -> dict[str, Any]:
    """Layers, composite, exports and manifest of a succeeded job with URLs valid `ttl_s` seconds.
    `absolute` turns the local backend's root-relative URLs into full ones where a host is known."""

    def url(key: str, filename: str | None = None) -> str:
        return absolute(store.presign_get(key, ttl_s, filename=filename))

    return {
        "layers": [
            {"index": layer["index"], "url": url(layer["key"]), "width": layer["width"], "height": layer["height"]}
            for layer in result.get("layers", [])
        ],
        "composite": url(keys.composite_key(job_id)),
        "exports": {fmt: url(keys.export_key(job_id, fmt), DOWNLOAD_NAMES.get(fmt)) for fmt in result.get("exports", [])},
        "manifest": url(keys.manifest_key(job_id)),
        "expires_at": iso(time.time() + ttl_s),
    }
