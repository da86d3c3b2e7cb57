"""Job parameters: the authors' official call as defaults, strict ranges, unknown fields rejected."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from api.errors import validation_failed
from layerq.params import DecomposeParams


def test_defaults_are_the_official_call():
    p = DecomposeParams()
    assert (p.layers, p.resolution, p.num_inference_steps, p.true_cfg_scale) == (4, 640, 50, 4.0)
    assert p.negative_prompt == " " and p.prompt == "" and p.use_en_prompt and p.cfg_normalize
    assert p.seed is None


def test_seed_is_chosen_once_and_kept():
    p = DecomposeParams().with_seed()
    assert isinstance(p.seed, int) and p.with_seed().seed == p.seed
    assert DecomposeParams(seed=777).with_seed().seed == 777


@pytest.mark.parametrize(
    "data,field",
    [
        ({"layers": 1}, "params.layers"),
        ({"layers": 11}, "params.layers"),
        ({"resolution": 800}, "params.resolution"),
        ({"num_inference_steps": 1}, "params.num_inference_steps"),
        ({"true_cfg_scale": 0.5}, "params.true_cfg_scale"),
        ({"seed": 2**32}, "params.seed"),
        ({"layers": "four"}, "params.layers"),
        ({"bogus": 1}, "params.bogus"),
    ],
)
def test_invalid_values_name_the_field(data, field):
    with pytest.raises(ValidationError) as info:
        DecomposeParams.model_validate(data)
    err = validation_failed(info.value, prefix="params")
    assert err.field == field and field in err.message
