"""Object layout: one prefix per job; the manifest is written last."""

from __future__ import annotations

EXPORT_FORMATS = ("psd", "pptx", "zip", "ora")


def job_prefix(job_id: str) -> str:
    return f"jobs/{job_id}/"


def input_key(job_id: str) -> str:
    return f"jobs/{job_id}/input.png"


def layer_key(job_id: str, index: int) -> str:
    return f"jobs/{job_id}/layers/{index:02d}.png"


def composite_key(job_id: str) -> str:
    return f"jobs/{job_id}/composite.png"


def export_key(job_id: str, fmt: str) -> str:
    return f"jobs/{job_id}/exports/layers.{fmt}"


def manifest_key(job_id: str) -> str:
    return f"jobs/{job_id}/manifest.json"


def layer_input_key(job_id: str, index: int) -> str:
    """Layer `index` (0 = bottom) uploaded with a combine job's request."""
    return f"jobs/{job_id}/inputs/{index:02d}.png"
