"""Job parameters, named as the pipeline names them, defaulting to the authors' official call.

The same pydantic models validate API requests, validate job messages in the worker, and generate
the OpenAPI document, so the three can never disagree.
"""

from __future__ import annotations

import secrets
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

MAX_SEED = 2**32 - 1


class DecomposeParams(BaseModel):
    """Parameters of one decomposition (Qwen-Image-Layered)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    layers: int = Field(4, ge=2, le=10, description="Number of RGBA layers to produce.")
    resolution: Literal[640, 1024] = Field(640, description="Resolution bucket (640 recommended).")
    num_inference_steps: int = Field(50, ge=2, le=200, description="Denoising steps (the scheduler needs two or more).")
    true_cfg_scale: float = Field(4.0, ge=1.0, le=20.0, description="Classifier-free guidance scale.")
    negative_prompt: str = Field(" ", max_length=2000, description="A non-empty negative prompt turns CFG on.")
    prompt: str = Field(
        "", max_length=2000, description="Caption of the image; empty: the pipeline captions it itself."
    )
    use_en_prompt: bool = Field(True, description="Caption in English (else Chinese) when `prompt` is empty.")
    cfg_normalize: bool = Field(True, description="Renormalise the CFG output to the conditional norm.")
    seed: int | None = Field(None, ge=0, le=MAX_SEED, description="Chosen and recorded when absent.")
    quality: Literal["exact", "balanced", "fast"] = Field(
        "exact",
        description=(
            "exact: the authors' computation. balanced: step caching (~30 % less transformer work). "
            "fast: 60 % of the steps plus step caching. balanced and fast change the output; see BENCHMARKS.md."
        ),
    )

    def with_seed(self) -> "DecomposeParams":
        """These parameters with a seed fixed, so the recorded job can be reproduced exactly."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})
