"""The one random-weight model builder: full-size shapes (on `meta`), the pinned tokenizer, tiny builds."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from worker.models import build_components, ensure_cached  # noqa: E402
from worker.models.build import STAMP_FILE, cache_name  # noqa: E402
from worker.models.text_encoder import FULL, build_processor  # noqa: E402
from worker.models.tokenizer import build_tokenizer  # noqa: E402

os.environ.setdefault("HF_HUB_OFFLINE", "1")


def billions(module: torch.nn.Module) -> float:
    return sum(p.numel() for p in module.parameters()) / 1e9


@pytest.mark.parametrize("kind", ["layered", "edit"])
def test_full_size_shapes_match_the_real_checkpoints(kind: str) -> None:
    # `meta` allocates nothing: the 29 B-parameter build is checked on a CPU machine in seconds.
    parts = build_components(kind, "full", device="meta")
    assert billions(parts["transformer"]) == pytest.approx(20.43, abs=0.01)
    assert billions(parts["text_encoder"]) == pytest.approx(8.29, abs=0.01)
    assert parts["text_encoder"].config.text_config.vocab_size == 152064
    assert parts["transformer"].config.in_channels == 4 * parts["vae"].config.z_dim == 64
    layered = kind == "layered"
    assert parts["vae"].config.input_channels == (4 if layered else 3)
    assert parts["transformer"].config.use_layer3d_rope is layered
    assert parts["transformer"].config.use_additional_t_cond is layered
    # Random weights never meet an end token: captions must run their full length, as measured.
    assert parts["text_encoder"].generation_config.eos_token_id is None


def test_full_size_caption_prompt_keeps_its_measured_length() -> None:
    """The GPU caption timings were measured with a 1,168-token prompt (640x640 image); keep it."""
    from diffusers import QwenImageLayeredPipeline
    from PIL import Image

    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, FULL.image_max_pixels)
    pipe = QwenImageLayeredPipeline(None, None, None, tokenizer, processor, None)
    ids = processor(text=pipe.image_caption_prompt_en, images=Image.new("RGB", (640, 640)), return_tensors="pt")
    assert ids.input_ids.shape == (1, 1168)


def test_tiny_edit_model_loads_through_from_pretrained(tmp_path: Path) -> None:
    from diffusers import QwenImageEditPlusPipeline

    path = ensure_cached(tmp_path, "edit", "tiny")
    assert path.name == cache_name("edit") and (path / STAMP_FILE).is_file()
    assert ensure_cached(tmp_path, "edit", "tiny") == path  # cached: no second build
    size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
    assert size < 20 * 2**20
    pipe = QwenImageEditPlusPipeline.from_pretrained(path)
    assert pipe.vae.config.input_channels == 3
    assert pipe.transformer.config.in_channels == 4 * pipe.vae.config.z_dim
    assert pipe.transformer.config.out_channels == pipe.vae.config.z_dim
    assert not pipe.transformer.config.use_layer3d_rope
