"""Layer operations: validation naming `params.ops.N.field`, and pixel-exact effects on synthetic layers."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from layerq.errors import ValidationFailed
from layerq.layer_ops import check_ops, parse_ops
from tests.layerset_helpers import pixels, premultiplied, shape_layer, soft_blob
from worker.layersets.operations import apply_ops, hue_shifted, scale_layer, tinted
from worker.layersets.placed import Canvas, PlacedLayer, flatten, from_stack, render_stack

SIZE = (64, 48)
CANVAS = Canvas(*SIZE)


def three_layers() -> list[PlacedLayer]:
    """Opaque backdrop, then a red and a blue square that overlap in [28, 36) x [18, 30)."""
    return from_stack([
        Image.new("RGBA", SIZE, (240, 240, 240, 255)),
        shape_layer(SIZE, (10, 10, 35, 29), (200, 30, 30, 255)),
        shape_layer(SIZE, (28, 18, 50, 40), (30, 30, 200, 180)),
    ])


def run(layers, ops, canvas=CANVAS):
    return apply_ops(layers, parse_ops(ops), canvas)


# --------------------------------------------------------------------------- validation


@pytest.mark.parametrize("ops,field", [
    ([{"op": "explode", "index": 0}], "params.ops.0.op"),
    ([{"index": 0}], "params.ops.0.op"),
    ([{"op": "hide", "index": 0}, {"op": "scale", "index": 1, "factor": 0}], "params.ops.1.factor"),
    ([{"op": "scale", "index": 1, "factor": -2}], "params.ops.0.factor"),
    ([{"op": "scale", "index": 1, "factor": 100}], "params.ops.0.factor"),
    ([{"op": "scale", "index": 1, "factor": 2, "anchor": "middle"}], "params.ops.0.anchor"),
    ([{"op": "move", "index": 0, "dx": 1.5}], "params.ops.0.dx"),
    ([{"op": "move", "index": 0, "dz": 3}], "params.ops.0.dz"),
    ([{"op": "hide"}], "params.ops.0.index"),
    ([{"op": "hide", "index": -1}], "params.ops.0.index"),
    ([{"op": "opacity", "index": 0, "value": 1.5}], "params.ops.0.value"),
    ([{"op": "recolour", "index": 0}], "params.ops.0.hue_shift"),
    ([{"op": "recolour", "index": 0, "hue_shift": 10, "tint": "#ff0000"}], "params.ops.0.hue_shift"),
    ([{"op": "recolour", "index": 0, "tint": "red"}], "params.ops.0.tint"),
    ("hide", "params.ops"),
])
def test_bad_structure_names_the_field(ops, field):
    with pytest.raises(ValidationFailed) as info:
        parse_ops(ops)
    assert info.value.field == field and field in info.value.message


@pytest.mark.parametrize("ops,field", [
    ([{"op": "hide", "index": 3}], "params.ops.0.index"),  # the parent set has 3 layers: 0..2
    ([{"op": "delete", "index": 1}, {"op": "move", "index": 1, "dx": 2}], "params.ops.1.index"),
    ([{"op": "move", "index": 1, "dx": 4 * 64 + 1}], "params.ops.0.dx"),
    ([{"op": "move", "index": 1, "dy": -(4 * 48 + 1)}], "params.ops.0.dy"),
    ([{"op": "delete", "index": 0}, {"op": "reorder", "index": 1, "position": 2}], "params.ops.1.position"),
])
def test_ops_that_do_not_fit_the_parent_set_name_the_field(ops, field):
    with pytest.raises(ValidationFailed) as info:
        check_ops(parse_ops(ops), 3, *SIZE)
    assert info.value.field == field
    with pytest.raises(ValidationFailed):  # apply_ops checks too, for messages that skipped the API
        run(three_layers(), ops)


def test_a_move_of_exactly_four_canvases_is_allowed():
    check_ops(parse_ops([{"op": "move", "index": 0, "dx": -256, "dy": 192}]), 1, *SIZE)


# --------------------------------------------------------------------------- effects


@pytest.mark.parametrize("dx,dy", [(5, 0), (-7, 3), (0, -11)])
def test_move_shifts_every_pixel(dx, dy):
    layers = three_layers()
    moved = run(layers, [{"op": "move", "index": 1, "dx": dx, "dy": dy}])
    before = pixels(render_stack([layers[1]], CANVAS)[0])
    after = pixels(render_stack([moved[1]], CANVAS)[0])
    height, width = before.shape[:2]
    src = before[max(0, -dy):height - max(0, dy), max(0, -dx):width - max(0, dx)]
    dst = after[max(0, dy):height - max(0, -dy), max(0, dx):width - max(0, -dx)]
    assert np.array_equal(src, dst)
    assert moved[0] is layers[0] and moved[2] is layers[2]


def test_a_layer_moved_off_the_canvas_and_back_is_unchanged():
    layers = three_layers()
    back = run(layers, [{"op": "move", "index": 1, "dx": -60}, {"op": "move", "index": 1, "dx": 60}])
    assert np.array_equal(pixels(flatten(back, CANVAS)), pixels(flatten(layers, CANVAS)))


def test_reorder_changes_exactly_the_overlapping_pixels():
    layers = three_layers()
    swapped = run(layers, [{"op": "reorder", "index": 2, "position": 1}])
    assert [layer.source for layer in swapped] == [0, 2, 1]
    changed = (pixels(flatten(swapped, CANVAS)) != pixels(flatten(layers, CANVAS))).any(-1)
    overlap = np.zeros(changed.shape, bool)
    overlap[18:30, 28:36] = True  # red [10, 35] x [10, 29] meets blue [28, 50] x [18, 40]
    assert np.array_equal(changed, overlap)


def test_reorder_to_the_top_with_a_negative_position():
    swapped = run(three_layers(), [{"op": "reorder", "index": 0, "position": -1}])
    assert [layer.source for layer in swapped] == [1, 2, 0]


def test_hide_equals_delete_in_the_composite():
    layers = three_layers()
    hidden = run(layers, [{"op": "hide", "index": 1}])
    deleted = run(layers, [{"op": "delete", "index": 1}])
    assert len(hidden) == 3 and not hidden[1].visible and len(deleted) == 2
    assert np.array_equal(pixels(flatten(hidden, CANVAS)), pixels(flatten(deleted, CANVAS)))
    assert not np.array_equal(pixels(flatten(hidden, CANVAS)), pixels(flatten(layers, CANVAS)))


def test_ops_address_layers_by_parent_index_after_deletes_and_reorders():
    result = run(three_layers(), [
        {"op": "delete", "index": 0},
        {"op": "reorder", "index": 2, "position": 0},
        {"op": "opacity", "index": 1, "value": 0.5},
    ])
    assert [(layer.source, layer.opacity) for layer in result] == [(2, 1.0), (1, 0.5)]


@pytest.mark.parametrize("op", [
    {"op": "recolour", "index": 1, "hue_shift": 120},
    {"op": "recolour", "index": 1, "hue_shift": -45.5},
    {"op": "recolour", "index": 1, "tint": "#10a0ff"},
    {"op": "recolour", "index": 1, "tint": "#ffcc00", "strength": 0.3},
])
def test_recolour_leaves_alpha_unchanged(op):
    layers = from_stack([soft_blob(SIZE, (30, 20), 12, (200, 60, 20))] * 2)
    result = run(layers, [op])
    before, after = pixels(layers[1].image), pixels(result[1].image)
    assert np.array_equal(before[..., 3], after[..., 3])
    assert not np.array_equal(before[..., :3], after[..., :3])


def test_hue_shift_turns_red_to_green_and_a_full_turn_is_identity():
    red = Image.new("RGBA", (4, 4), (255, 0, 0, 200))
    assert tuple(pixels(hue_shifted(red, 120))[0, 0]) == (0, 255, 0, 200)
    assert np.array_equal(pixels(hue_shifted(red, 360)), pixels(red))
    grey = Image.new("RGBA", (2, 2), (128, 128, 128, 255))
    assert tuple(pixels(tinted(grey, "#ff0000"))[0, 0]) == (128, 0, 0, 255)


def test_opacity_multiplies_alpha_when_rendered():
    layers = run(three_layers(), [{"op": "opacity", "index": 1, "value": 0.5}])
    rendered = pixels(render_stack(layers, CANVAS)[1])
    assert rendered[15, 15, 3] == 128 and rendered[0, 0, 3] == 0
    assert np.array_equal(rendered[15, 15, :3], [200, 30, 30])


@pytest.mark.parametrize("anchor", ["center", "top-left", "bottom-right"])
def test_scale_up_then_down_returns_the_layer(anchor):
    layer = PlacedLayer(soft_blob((80, 80), (40, 40), 10, (30, 140, 220)), source=0)
    round_trip = scale_layer(scale_layer(layer, 2, anchor), 0.5, anchor)
    restored = pixels(render_stack([round_trip], Canvas(80, 80))[0])
    original = pixels(layer.image)
    # Lanczos there and back, through Pillow's 8-bit premultiplied colour: within rounding of a
    # smooth layer. Premultiplied, since straight colour under a faint alpha has few significant bits.
    assert np.abs(premultiplied(restored) - premultiplied(original)).max() <= 3


def test_scale_keeps_the_anchor_of_the_content_box():
    layer = PlacedLayer(shape_layer(SIZE, (10, 10, 19, 19), (255, 0, 0, 255)), source=0)  # 10x10 at (10, 10)
    centre = scale_layer(layer, 2, "center")
    assert centre.content_box() == (5, 5, 25, 25)
    corner = scale_layer(layer, 2, "top-left")
    assert corner.content_box() == (10, 10, 30, 30)
    corner = scale_layer(layer, 0.5, "bottom-right")
    assert corner.content_box() == (15, 15, 20, 20)


def test_scale_of_an_empty_layer_is_a_no_op():
    empty = PlacedLayer(Image.new("RGBA", SIZE, (0, 0, 0, 0)), source=0)
    assert scale_layer(empty, 3) is empty


def test_apply_ops_does_not_modify_its_input():
    layers = three_layers()
    snapshot = [pixels(layer.image) for layer in layers]
    run(layers, [{"op": "recolour", "index": 1, "hue_shift": 90}, {"op": "scale", "index": 2, "factor": 2}])
    assert all(np.array_equal(pixels(l.image), s) for l, s in zip(layers, snapshot, strict=True))


def test_compose_params_from_a_request_name_the_fields():
    from layerq.layer_ops import ComposeParams

    params = ComposeParams.from_request({"ops": [{"op": "move", "index": 1, "dx": 3}]})
    assert params.ops[0].dx == 3 and ComposeParams.from_request({}).ops == []
    for raw, field in [({"ops": [{"op": "scale", "index": 0, "factor": 0}]}, "params.ops.0.factor"),
                       ({"opz": []}, "params.opz"), ([], "params")]:
        with pytest.raises(ValidationFailed) as info:
            ComposeParams.from_request(raw)
        assert info.value.field == field
    # The params survive the trip through a queue message.
    assert ComposeParams.model_validate(params.model_dump(mode="json")) == params


def test_compose_applies_ops_to_a_stored_parent_set():
    from worker.layersets.operations import compose

    parent = [layer.image for layer in three_layers()]
    canvas, layers = compose(parent, parse_ops([{"op": "delete", "index": 0}]))
    assert canvas == CANVAS and [layer.source for layer in layers] == [1, 2]
    assert all(image.size == SIZE for image in render_stack(layers, canvas))


def test_combine_params():
    from pydantic import ValidationError

    from layerq.layer_ops import CombineParams

    params = CombineParams.model_validate({"placements": [{}, {"x": -4, "y": 9}], "canvas": {"width": 50, "height": 40}})
    assert params.placements[1].x == -4 and params.canvas.width == 50
    with pytest.raises(ValidationError):
        CombineParams.model_validate({"canvas": {"width": 0, "height": 10}})
