"""An offline, few-MB stand-in for Qwen/Qwen-Image-Layered, built from the real classes.

Tests, CI and benchmarks never reach a model hub, yet the worker's loading and calling code must stay
real. The recipe lives in `worker.models` (one builder for every size and both pipeline kinds); this
module keeps the names the worker and the tests have always used for the tiny layered model, which is
saved with `save_pretrained` and loaded back through the ordinary `from_pretrained` path.
"""

from __future__ import annotations

from pathlib import Path

from worker.models.build import MODEL_RECIPE_VERSION, ensure_cached, save
from worker.models.tokenizer import SPECIAL_TOKENS

# The cache directory name carries it (`tiny-<version>`), so a stale cached model is rebuilt.
TINY_MODEL_VERSION = MODEL_RECIPE_VERSION

__all__ = ["SPECIAL_TOKENS", "TINY_MODEL_VERSION", "build_tiny_model", "ensure_tiny_model"]


def build_tiny_model(dest: Path) -> Path:
    """Build the tiny layered pipeline (deterministic: fixed seed) and `save_pretrained` it into `dest`."""
    return save("layered", Path(dest), "tiny")


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Return `cache_dir/tiny-<version>`, building it first if absent (race-safe, see `ensure_cached`)."""
    return ensure_cached(Path(cache_dir), "layered", "tiny")
