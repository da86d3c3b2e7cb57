"""Job parameters, named as the pipeline names them, defaulting to the authors' official call.

The same pydantic models validate API requests, validate job messages in the worker, and generate
the OpenAPI document, so the three can never disagree.
"""

from __future__ import annotations

import secrets
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator

MAX_SEED = 2**32 - 1
MIN_LAYERS, MAX_LAYERS = 2, 10


def _layer_count(value: Any) -> int | str:
    """`layers` is an int in range or "auto". Checked by hand (not as a pydantic union) so an error
    is reported on `layers` itself rather than on one member of the union."""
    if value == "auto" and isinstance(value, str):
        return value
    if isinstance(value, float) and value.is_integer():  # JSON Schema's integer: 4.0 is one
        value = int(value)
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError('must be an integer or "auto"')
    if not MIN_LAYERS <= value <= MAX_LAYERS:
        raise ValueError(f"must be between {MIN_LAYERS} and {MAX_LAYERS}, or \"auto\"")
    return value


LayerCount = Annotated[int | Literal["auto"], PlainValidator(
    _layer_count, json_schema_input_type=Annotated[int, Field(ge=MIN_LAYERS, le=MAX_LAYERS)] | Literal["auto"],
)]


def _integral(value: Any) -> Any:
    # The models are strict ("4" or true is not a number of layers), but JSON Schema's `integer` is
    # any integral number, so 4.0 is one; pass anything else on for the strict check to refuse.
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return value


JsonInt = Annotated[int, BeforeValidator(_integral)]
Resolution = Annotated[Literal[640, 1024], BeforeValidator(_integral)]


class DecomposeParams(BaseModel):
    """Parameters of one decomposition (Qwen-Image-Layered)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    layers: LayerCount = Field(
        4, description='Number of RGBA layers to produce, or "auto": decompose into `max_layers` and drop the '
        "layers that hardly show (see `drop_empty`).",
    )
    # Ignored, not refused, next to an explicit count: the params are dumped into the queue message and
    # validated again in the worker, where the default comes back as an explicit value.
    max_layers: JsonInt = Field(
        8, ge=MIN_LAYERS, le=MAX_LAYERS, description='How many layers `"auto"` decomposes into; ignored with a count.',
    )
    drop_empty: bool = Field(
        False, description="Drop layers whose visible coverage is under the threshold (always on for `auto`).",
    )
    resolution: Resolution = Field(640, description="Resolution bucket (640 recommended).")
    num_inference_steps: JsonInt = Field(
        50, ge=2, le=200, description="Denoising steps (the scheduler needs two or more)."
    )
    true_cfg_scale: float = Field(4.0, ge=1.0, le=20.0, description="Classifier-free guidance scale.")
    negative_prompt: str = Field(" ", max_length=2000, description="A non-empty negative prompt turns CFG on.")
    prompt: str = Field(
        "", max_length=2000, description="Caption of the image; empty: the pipeline captions it itself."
    )
    use_en_prompt: bool = Field(True, description="Caption in English (else Chinese) when `prompt` is empty.")
    cfg_normalize: bool = Field(True, description="Renormalise the CFG output to the conditional norm.")
    seed: Annotated[int | None, BeforeValidator(_integral)] = Field(
        None, ge=0, le=MAX_SEED, description="Chosen and recorded when absent."
    )
    quality: Literal["exact", "balanced", "fast"] = Field(
        "exact",
        description=(
            "exact: the authors' computation. balanced: step caching (~30 % less transformer work). "
            "fast: 60 % of the steps plus step caching. balanced and fast change the output; see BENCHMARKS.md."
        ),
    )

    @property
    def layer_count(self) -> int:
        """How many layers the model is asked for."""
        return self.max_layers if self.layers == "auto" else int(self.layers)

    @property
    def drops_sparse_layers(self) -> bool:
        """Whether layers under the coverage threshold are dropped after decomposing."""
        return self.layers == "auto" or self.drop_empty

    def with_seed(self) -> "DecomposeParams":
        """These parameters with a seed fixed, so the recorded job can be reproduced exactly."""
        if self.seed is not None:
            return self
        return self.model_copy(update={"seed": secrets.randbelow(MAX_SEED + 1)})
