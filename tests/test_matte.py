"""Mattes on synthetic inputs with known answers."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from worker.matte import BACKDROP, ChromaMatte, KeepMatte, get_matte, on_backdrop

SIZE = (96, 64)


def disc_layer(colour: tuple[int, int, int], size: tuple[int, int] = SIZE) -> Image.Image:
    """An anti-aliased disc (drawn at 8x, downsampled) on a transparent layer: a soft alpha edge."""
    big = Image.new("RGBA", (size[0] * 8, size[1] * 8), (0, 0, 0, 0))
    w, h = big.size
    ImageDraw.Draw(big).ellipse((w * 0.25, h * 0.15, w * 0.75, h * 0.85), fill=(*colour, 255))
    return big.resize(size, Image.Resampling.BOX)


def green_excess(rgba: np.ndarray, mask: np.ndarray) -> np.ndarray:
    px = rgba[mask].astype(int)
    return px[:, 1] - np.maximum(px[:, 0], px[:, 2])


def test_keep_returns_the_source_alpha_bit_for_bit() -> None:
    rng = np.random.default_rng(0)
    source = Image.fromarray(rng.integers(0, 256, (*SIZE[::-1], 4), dtype=np.uint8), "RGBA")
    edited = Image.fromarray(rng.integers(0, 256, (*SIZE[::-1], 3), dtype=np.uint8), "RGB")
    out = KeepMatte()(edited, source)
    assert out.mode == "RGBA" and out.size == source.size
    assert np.array_equal(np.asarray(out)[..., 3], np.asarray(source)[..., 3])


def test_keep_unmixes_the_backdrop_from_soft_edges() -> None:
    source = disc_layer((200, 40, 40))
    out = np.asarray(KeepMatte()(on_backdrop(source), source))
    edge = (out[..., 3] > 0) & (out[..., 3] < 255)
    assert edge.sum() > 20
    assert green_excess(out, edge).max() <= 0


@pytest.mark.parametrize("colour", [(200, 40, 40), (250, 250, 250), (20, 20, 20), (40, 60, 210)])
def test_chroma_keys_out_the_backdrop_with_a_soft_edge_and_no_green_fringe(colour: tuple[int, int, int]) -> None:
    source = disc_layer(colour)
    true_alpha = np.asarray(source)[..., 3]
    out = np.asarray(ChromaMatte()(on_backdrop(source), source))
    alpha = out[..., 3]
    assert (alpha[true_alpha == 0] == 0).all()  # outside: transparent
    assert (alpha[true_alpha == 255] == 255).all()  # inside: opaque
    soft = (alpha > 0) & (alpha < 255)
    assert soft.sum() > 20  # a soft edge, not a hard cut
    assert (true_alpha[soft] > 0).all() and (true_alpha[soft] < 255).all()  # only where the edge is
    assert green_excess(out, soft).max() <= 0  # no green fringe
    inside = true_alpha == 255
    assert np.abs(out[inside][:, :3].astype(int) - colour).max() <= 1  # the shape keeps its colour


def test_chroma_follows_a_backdrop_the_model_drew_slightly_off() -> None:
    source = disc_layer((200, 40, 40))
    drifted = np.asarray(on_backdrop(source)).astype(int)
    bg = np.asarray(source)[..., 3] == 0
    drifted[bg] = np.clip(drifted[bg] + (12, -18, 10), 0, 255)
    out = np.asarray(ChromaMatte()(Image.fromarray(drifted.astype(np.uint8)), source))
    assert (out[..., 3][bg] == 0).all()


def test_model_matte_runs_a_tiny_segmenter_through_from_pretrained(tmp_path: Path) -> None:
    from transformers import SegformerForSemanticSegmentation

    from worker.models.segmenter import resolve_segmenter

    model_dir = resolve_segmenter("tiny", tmp_path)
    matte = get_matte("model", model=model_dir)
    assert isinstance(matte.model, SegformerForSemanticSegmentation)
    assert matte.foreground == 1
    source = disc_layer((200, 40, 40))
    out = matte(on_backdrop(source), source)
    assert out.mode == "RGBA" and out.size == source.size
    alpha = np.asarray(out)[..., 3]
    assert alpha.dtype == np.uint8 and alpha.std() > 0  # a per-pixel mask, not a constant


def test_unknown_or_unconfigured_mattes_are_refused() -> None:
    with pytest.raises(ValueError, match="unknown matte"):
        get_matte("rmbg")
    with pytest.raises(ValueError, match="not configured"):
        get_matte("model")
    assert get_matte("chroma").backdrop == BACKDROP
