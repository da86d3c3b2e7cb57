"""Choosing the layer count: `layers: "auto"` / `drop_empty` params and the sparse-layer filter."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image
from pydantic import ValidationError

from api.errors import validation_failed
from layerq.params import DecomposeParams
from tests.layerset_helpers import shape_layer
from worker.exports import composite
from worker.layersets.coverage import SPARSE_COVERAGE, DroppedLayer, drop_sparse_layers, visible_coverage

SIZE = (100, 80)


def blank() -> Image.Image:
    return Image.new("RGBA", SIZE, (0, 0, 0, 0))


def test_auto_asks_the_model_for_max_layers_and_drops():
    auto = DecomposeParams(layers="auto")
    assert auto.layer_count == 8 and auto.drops_sparse_layers
    assert DecomposeParams(layers="auto", max_layers=5).layer_count == 5
    explicit = DecomposeParams(layers=3)
    assert explicit.layer_count == 3 and not explicit.drops_sparse_layers
    assert DecomposeParams(layers=3, drop_empty=True).drops_sparse_layers
    assert DecomposeParams.model_validate({"layers": "auto"}).model_dump()["layers"] == "auto"


def test_params_survive_the_round_trip_to_the_worker():
    # The API dumps the params into the queue message and the worker validates them again.
    for params in (DecomposeParams(), DecomposeParams(layers="auto", max_layers=5), DecomposeParams(layers=3, drop_empty=True)):
        assert DecomposeParams.model_validate(params.model_dump(mode="json")) == params


@pytest.mark.parametrize("data,field", [
    ({"layers": "many"}, "params.layers"),
    ({"layers": 1}, "params.layers"),
    ({"layers": True}, "params.layers"),
    ({"layers": 4.5}, "params.layers"),
    ({"layers": "auto", "max_layers": 11}, "params.max_layers"),
    ({"layers": "auto", "max_layers": 1}, "params.max_layers"),
    ({"drop_empty": "sometimes"}, "params.drop_empty"),
])
def test_bad_counts_name_the_field(data, field):
    with pytest.raises(ValidationError) as info:
        DecomposeParams.model_validate(data)
    assert validation_failed(info.value, prefix="params").field == field


def test_layers_schema_offers_a_bounded_integer_or_auto():
    schema = DecomposeParams.model_json_schema()["properties"]["layers"]
    assert {"type": "integer", "minimum": 2, "maximum": 10} in schema["anyOf"]
    assert {"const": "auto", "type": "string"} in schema["anyOf"]


def test_auto_jobs_are_timed_in_the_bucket_of_the_count_the_model_runs():
    from storage.stats import bucket

    assert bucket(DecomposeParams(layers="auto", max_layers=6).model_dump()) == "640x6"
    assert bucket(DecomposeParams(layers="auto").model_dump()) == "640x8"
    assert bucket(DecomposeParams(layers=3).model_dump()) == "640x3"


def test_coverage_is_each_layers_share_of_the_composite():
    backdrop = Image.new("RGBA", SIZE, (255, 255, 255, 255))
    half = shape_layer(SIZE, (0, 0, 49, 79), (255, 0, 0, 255))  # left half
    faint = Image.new("RGBA", SIZE, (0, 0, 255, 51))  # 20 % everywhere
    shares = visible_coverage([backdrop, half, faint])
    assert shares == pytest.approx([0.4, 0.4, 0.2])
    assert sum(shares) == pytest.approx(1.0)


def test_empty_and_hidden_layers_are_dropped_and_order_is_kept():
    backdrop = Image.new("RGBA", SIZE, (240, 240, 240, 255))
    shape = shape_layer(SIZE, (10, 10, 59, 49), (200, 30, 30, 255))
    speck = shape_layer(SIZE, (90, 70, 92, 72), (0, 0, 0, 255))  # 9 px of 8000: 0.11 %
    covered = shape_layer(SIZE, (20, 20, 30, 30), (0, 255, 0, 255))  # under the opaque cover
    cover = shape_layer(SIZE, (15, 15, 35, 35), (0, 0, 200, 255))
    layers = [backdrop, blank(), shape, speck, covered, cover, blank()]
    kept, dropped = drop_sparse_layers(layers)
    assert kept == [backdrop, shape, cover]
    assert [d.index for d in dropped] == [1, 3, 4, 6]
    assert dropped[0] == DroppedLayer(1, 0.0) and dropped[1].coverage == pytest.approx(9 / 8000, abs=1e-6)
    assert dropped[2].coverage == 0.0
    # What was dropped hardly shows: the composite changes only at the speck.
    changed = (np.asarray(composite(kept)) != np.asarray(composite(layers))).any(-1)
    assert changed.sum() == 9


def test_threshold_is_a_share_of_the_canvas():
    speck = shape_layer(SIZE, (0, 0, 9, 9), (0, 0, 0, 255))  # 100 px = 1.25 %
    layers = [Image.new("RGBA", SIZE, (255, 255, 255, 255)), speck]
    assert len(drop_sparse_layers(layers)[0]) == 2
    assert len(drop_sparse_layers(layers, threshold=0.02)[0]) == 1
    assert SPARSE_COVERAGE == 0.005


def test_at_least_one_layer_is_kept():
    faint = Image.new("RGBA", SIZE, (0, 0, 0, 1))
    kept, dropped = drop_sparse_layers([blank(), faint, blank()])
    assert kept == [faint] and [d.index for d in dropped] == [0, 2]


def test_the_cli_passes_auto_through():
    from layerq.cli import build_parser

    assert build_parser().parse_args(["submit", "poster.png", "--layers", "auto"]).layers == "auto"
    assert build_parser().parse_args(["submit", "poster.png", "--layers", "5"]).layers == 5
