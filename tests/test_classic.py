"""The classic decomposer on synthetic flat posters: each shape comes back as its own layer, back to
front by enclosure and area, soft edges in alpha, and the composite within 1 level of the input."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image, ImageDraw

from layerq.errors import JobCanceled, JobTimedOut
from layerq.params import DecomposeParams
from worker.exports import composite
from worker.layersets.classic import ClassicDecomposer, decompose_flat
from worker.pipeline import DecomposePipeline, output_size

SIZE = (160, 120)
SUPERSAMPLE = 4
BACKGROUND = (245, 222, 170)
# name -> (shape, box at 1x, colour); "dot" lies inside "frame", the rest on the background.
SHAPES = {
    "frame": ("rectangle", (12, 14, 72, 94), (30, 60, 150)),
    "dot": ("ellipse", (28, 34, 56, 66), (250, 250, 245)),
    "disc": ("ellipse", (92, 20, 146, 74), (210, 40, 50)),
    "bar": ("rectangle", (84, 90, 150, 104), (20, 140, 80)),
}


def poster(shapes=SHAPES, background=BACKGROUND, size=SIZE) -> tuple[Image.Image, dict[str, np.ndarray]]:
    """An anti-aliased flat poster (drawn 4x larger, then box-filtered down) and each shape's own
    coverage mask at 1x (shape pixels at least half covered)."""
    big = (size[0] * SUPERSAMPLE, size[1] * SUPERSAMPLE)
    canvas = Image.new("RGB", big, background)
    draw = ImageDraw.Draw(canvas)
    masks = {}
    for name, (kind, box, colour) in shapes.items():
        scaled = tuple(v * SUPERSAMPLE for v in box)
        getattr(draw, kind)(scaled, fill=colour)
        mask = Image.new("L", big, 0)
        getattr(ImageDraw.Draw(mask), kind)(scaled, fill=255)
        masks[name] = np.asarray(mask.resize(size, Image.Resampling.BOX)) >= 128
    return canvas.resize(size, Image.Resampling.BOX).convert("RGBA"), masks


def solid(layer: Image.Image) -> np.ndarray:
    return np.asarray(layer)[..., 3] >= 128


def layer_of(layers: list[Image.Image], mask: np.ndarray, hull: np.ndarray | None = None) -> int:
    """The one layer that IS this shape: its solid pixels match the shape (or its filled hull)."""
    target = mask if hull is None else hull
    scores = []
    for layer in layers:
        got = solid(layer)
        scores.append((got & target).sum() / max((got | target).sum(), 1))
    best = int(np.argmax(scores))
    assert scores[best] >= 0.9, f"no layer matches the shape (best IoU {scores[best]:.2f})"
    assert sorted(scores)[-2] < 0.5, "the shape is split over several layers"
    return best


def max_error(layers: list[Image.Image], image: Image.Image) -> int:
    return int(np.abs(np.asarray(composite(layers)).astype(int) - np.asarray(image).astype(int)).max())


def test_each_shape_is_its_own_layer_back_to_front():
    image, masks = poster()
    layers = decompose_flat(image, 8)
    assert len(layers) == 1 + len(SHAPES)
    assert all(layer.size == SIZE for layer in layers)
    # The backdrop spans the canvas, opaque, under everything.
    assert solid(layers[0]).all()
    index = {name: layer_of(layers, mask) for name, mask in masks.items()}
    assert index["dot"] > index["frame"] > 0  # enclosed in front of what encloses it
    assert 0 < index["disc"] < index["bar"] or 0 < index["bar"] < index["disc"]
    assert index["disc"] < index["bar"]  # same depth: bigger behind
    # The frame's layer fills the hole where the dot lies, with the frame's colour.
    frame = np.asarray(layers[index["frame"]])
    assert (frame[masks["dot"]][:, 3] == 255).all()
    assert np.abs(frame[masks["dot"]][:, :3].astype(int) - SHAPES["frame"][2]).max() <= 2
    assert max_error(layers, image) <= 1


def test_soft_edges_are_kept_in_alpha():
    image, masks = poster()
    layers = decompose_flat(image, 8)
    disc = np.asarray(layers[layer_of(layers, masks["disc"])])
    partial = (disc[..., 3] > 0) & (disc[..., 3] < 255)
    assert partial.sum() >= 50  # the disc's anti-aliased rim
    # Where alpha is partial, the colour is the disc's: the background was not baked into the edge.
    assert np.abs(disc[partial][:, :3].astype(int) - SHAPES["disc"][2]).max() <= 12


def test_shapes_of_one_colour_at_one_depth_are_one_layer():
    shapes = {"left": ("rectangle", (10, 10, 50, 50), (30, 60, 150)),
              "right": ("rectangle", (90, 60, 140, 110), (30, 60, 150))}
    image, masks = poster(shapes)
    layers = decompose_flat(image, 8)
    assert len(layers) == 2
    both = masks["left"] | masks["right"]
    assert layer_of(layers, both) == 1
    assert max_error(layers, image) <= 1


def test_the_layer_budget_merges_neighbours_and_keeps_the_composite():
    image, _ = poster()
    for budget in (1, 2, 3):
        layers = decompose_flat(image, budget)
        assert len(layers) == budget
        assert max_error(layers, image) <= 1


def test_overlapping_shapes_and_a_gradient_backdrop():
    big = Image.new("RGB", (SIZE[0] * 4, SIZE[1] * 4))
    gradient = np.linspace(40, 200, big.width)[None, :, None] * np.ones((big.height, 1, 3))
    gradient[..., 2] = 180
    big = Image.fromarray(gradient.astype(np.uint8), "RGB")
    draw = ImageDraw.Draw(big)
    draw.rectangle((40, 40, 360, 300), fill=(250, 200, 40))
    draw.ellipse((280, 160, 560, 440), fill=(200, 30, 90))
    image = big.resize(SIZE, Image.Resampling.BOX).convert("RGBA")
    layers = decompose_flat(image, 8)
    assert len(layers) == 3  # the gradient stays one region
    assert max_error(layers, image) <= 1


def test_transparent_input_pixels_stay_transparent():
    image, _ = poster()
    pixels = np.array(image)
    pixels[:, :20, 3] = 0
    pixels[:, 20:30, 3] = 128
    layers = decompose_flat(Image.fromarray(pixels, "RGBA"), 8)
    flat = np.asarray(composite(layers)).astype(int)
    assert (flat[:, :20, 3] == 0).all()
    assert np.abs(flat[:, 20:30, 3] - 128).max() <= 1
    assert all((np.asarray(layer)[:, :20, 3] == 0).all() for layer in layers)


def test_noise_still_round_trips():
    rng = np.random.default_rng(0)
    image = Image.fromarray(rng.integers(0, 256, (40, 50, 4), dtype=np.uint8) | np.uint8(0), "RGBA")
    image.putalpha(255)
    layers = decompose_flat(image, 4)
    assert 1 <= len(layers) <= 4 and max_error(layers, image) <= 1


def test_the_worker_loads_it_as_a_pipeline_and_runs_it_like_one():
    decomposer = DecomposePipeline.load("classic")
    assert isinstance(decomposer, ClassicDecomposer) and decomposer.model_id == "classic"
    image, _ = poster(size=(300, 200))
    steps = []
    layers = decomposer.run(image, DecomposeParams(layers=6, seed=1), on_step=lambda d, t: steps.append((d, t)))
    assert all(layer.size == output_size(300, 200, 640) for layer in layers)
    assert 2 <= len(layers) <= 6 and steps == [(1, 2), (2, 2)]
    auto = decomposer.run(image, DecomposeParams(layers="auto", max_layers=3, seed=1))
    assert len(auto) <= 3


@pytest.mark.parametrize("reason,error", [("canceled", JobCanceled), ("time_limit", JobTimedOut)])
def test_it_stops_when_asked(reason, error):
    image, _ = poster()
    with pytest.raises(error):
        ClassicDecomposer().run(image, DecomposeParams(seed=1), should_stop=lambda: reason)
