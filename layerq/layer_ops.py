"""The operations a `compose` job applies to a finished layer set, as the API validates them.

Pydantic only (the API process imports this). Applying them is `worker.layersets.operations`.

Every operation names its layer by `index`: the layer's index in the PARENT set (0 = bottom), not
its position after earlier operations, so `[{"op": "delete", "index": 0}, {"op": "hide",
"index": 1}]` hides what was layer 1 of the parent. Structure is checked here (`parse_ops`); what
needs the parent set — index in range, not deleted yet, a move within 4x the canvas — is checked by
`check_ops`. Both raise `ValidationFailed` naming `params.ops.N.field`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Annotated, Literal, Union

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from layerq.errors import ValidationFailed

#: How far a move may take a layer, in canvas widths (dx) or heights (dy): further, it is a mistake.
MAX_MOVE_CANVASES = 4
#: Bounds of a scale factor; 0 and negatives are refused, like factors that blow a layer up past use.
MIN_SCALE_FACTOR = 0.01
MAX_SCALE_FACTOR = 16.0

Anchor = Literal[
    "center", "top-left", "top", "top-right", "left", "right", "bottom-left", "bottom", "bottom-right"
]


class _Op(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    index: int = Field(ge=0, description="The layer's index in the parent set (0 = bottom).")


class Hide(_Op):
    """Keep the layer in the set but out of the composite and the exports."""

    op: Literal["hide"]


class Delete(_Op):
    """Remove the layer from the set."""

    op: Literal["delete"]


class Reorder(_Op):
    """Move the layer to `position` in the stack as it is at this point (0 = bottom, -1 = top)."""

    op: Literal["reorder"]
    position: int = Field(description="New position, 0 = bottom; negative counts from the top (-1 = top).")


class Move(_Op):
    """Shift the layer by (dx, dy) pixels (right and down are positive)."""

    op: Literal["move"]
    dx: int = 0
    dy: int = 0


class Scale(_Op):
    """Resize the layer's content by `factor`, keeping its `anchor` point (of the content's bounding
    box: the layer's non-transparent pixels) where it is."""

    op: Literal["scale"]
    factor: float = Field(ge=MIN_SCALE_FACTOR, le=MAX_SCALE_FACTOR, description="How much larger (0.5: half the size).")
    anchor: Anchor = "center"


class Recolour(_Op):
    """Shift the layer's hue by `hue_shift` degrees, or tint it towards `tint` by `strength`. Alpha is
    never changed."""

    op: Literal["recolour"]
    hue_shift: float | None = Field(None, ge=-360, le=360, description="Degrees around the colour wheel.")
    tint: str | None = Field(None, pattern=r"^#[0-9a-fA-F]{6}$", description="Target colour, #rrggbb.")
    strength: float = Field(1.0, ge=0, le=1, description="How far towards the tint (1 = fully).")


class Opacity(_Op):
    """Set the layer's opacity (multiplies its alpha; 1 = as it is)."""

    op: Literal["opacity"]
    value: float = Field(ge=0, le=1)


LayerOp = Annotated[Union[Hide, Delete, Reorder, Move, Scale, Recolour, Opacity], Field(discriminator="op")]
OP_NAMES: tuple[str, ...] = ("hide", "delete", "reorder", "move", "scale", "recolour", "opacity")
#: Most operations one job may carry.
MAX_OPS = 100

_OPS = TypeAdapter(list[LayerOp])


def op_error_field(loc: Sequence[int | str], error_type: str = "") -> str:
    """`params.ops.N.field` for a pydantic error location inside the ops list.

    A discriminated union puts the op's name into the location (`0.move.dx`); the user wrote no such
    level, so it is dropped. An unknown or missing `op` is reported on the `op` field itself.
    """
    parts = [str(part) for part in loc]
    if len(parts) >= 2 and parts[1] in OP_NAMES:
        parts.pop(1)
    if error_type in ("union_tag_invalid", "union_tag_not_found") and len(parts) == 1:
        parts.append("op")
    return ".".join(["params.ops", *parts])


def parse_ops(raw: object) -> list[LayerOp]:
    """Validate the structure of an ops list (as JSON decoded it).

    :raises ValidationFailed: naming `params.ops.N.field` (or `params.ops` for a non-list).
    """
    if not isinstance(raw, list):
        raise ValidationFailed("params.ops: must be a list of operations", field="params.ops")
    if len(raw) > MAX_OPS:
        raise ValidationFailed(f"params.ops: at most {MAX_OPS} operations", field="params.ops")
    try:
        ops = _OPS.validate_python(raw)
    except ValidationError as exc:
        first = exc.errors()[0]
        field = op_error_field(first["loc"], first["type"])
        message = "unknown field" if first["type"] == "extra_forbidden" else first["msg"]
        if first["type"] in ("union_tag_invalid", "union_tag_not_found"):
            message = f"unknown operation; expected one of {list(OP_NAMES)}"
        raise ValidationFailed(f"{field}: {message}", field=field) from None
    for n, op in enumerate(ops):
        if isinstance(op, Scale) and not MIN_SCALE_FACTOR <= op.factor <= MAX_SCALE_FACTOR:
            raise _failed(n, "factor", f"must be between {MIN_SCALE_FACTOR} and {MAX_SCALE_FACTOR}")
        if isinstance(op, Recolour) and (op.hue_shift is None) == (op.tint is None):
            raise _failed(n, "hue_shift", "give exactly one of hue_shift and tint")
    return ops


def check_ops(ops: Sequence[LayerOp], layer_count: int, width: int, height: int) -> None:
    """Check the ops against the parent set: each index names a layer that exists and is not deleted
    by an earlier op, a reorder position exists, and no move goes past 4x the canvas.

    :raises ValidationFailed: naming `params.ops.N.field`.
    """
    alive = layer_count
    deleted: set[int] = set()
    for n, op in enumerate(ops):
        if op.index >= layer_count:
            raise _failed(n, "index", f"layer {op.index} does not exist; the parent set has {layer_count} layers")
        if op.index in deleted:
            raise _failed(n, "index", f"layer {op.index} was deleted by an earlier operation")
        if isinstance(op, Delete):
            deleted.add(op.index)
            alive -= 1
        elif isinstance(op, Reorder) and not -alive <= op.position < alive:
            raise _failed(n, "position", f"must be between {-alive} and {alive - 1} ({alive} layers at this point)")
        elif isinstance(op, Move):
            for name, delta, side in (("dx", op.dx, width), ("dy", op.dy, height)):
                if abs(delta) > MAX_MOVE_CANVASES * side:
                    raise _failed(n, name, f"moves more than {MAX_MOVE_CANVASES}x the canvas ({side} px)")


def _failed(n: int, name: str, message: str) -> ValidationFailed:
    field = f"params.ops.{n}.{name}"
    return ValidationFailed(f"{field}: {message}", field=field)


class ComposeParams(BaseModel):
    """`params` of a `compose` job: the operations, applied in order to the parent set."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    ops: list[LayerOp] = Field(default_factory=list, max_length=MAX_OPS)

    @classmethod
    def from_request(cls, raw: object) -> ComposeParams:
        """Validate request params, naming `params.ops.N.field` (pydantic's own location would carry
        the op's name as an extra level). Check against the parent set with `check_ops` once it is known.

        :raises ValidationFailed: naming the field.
        """
        if not isinstance(raw, dict):
            raise ValidationFailed("params: must be an object", field="params")
        unknown = sorted(set(raw) - {"ops"})
        if unknown:
            raise ValidationFailed(f"params.{unknown[0]}: unknown field", field=f"params.{unknown[0]}")
        return cls(ops=parse_ops(raw.get("ops", [])))


#: Bounds of a combine: a layer's offset and an explicit canvas side, in pixels.
MAX_CANVAS_SIDE = 8192


class LayerPlacement(BaseModel):
    """Where one uploaded layer's top-left corner sits on the canvas (may be negative: cropped)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    x: int = Field(0, ge=-MAX_CANVAS_SIDE, le=MAX_CANVAS_SIDE)
    y: int = Field(0, ge=-MAX_CANVAS_SIDE, le=MAX_CANVAS_SIDE)


class CanvasSize(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    width: int = Field(ge=1, le=MAX_CANVAS_SIDE)
    height: int = Field(ge=1, le=MAX_CANVAS_SIDE)


class CombineParams(BaseModel):
    """`params` of a `combine` job. The layers are the uploaded images, bottom first; `placements[i]`
    places upload i (missing entries: at the origin). Without `canvas`, the canvas runs from the origin
    to the furthest right and bottom edge of any layer."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    placements: list[LayerPlacement] = Field(default_factory=list, max_length=64)
    canvas: CanvasSize | None = None
