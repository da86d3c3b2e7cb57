"""A tiny random-weight foreground segmenter for the `model` matte, built offline from real classes.

`SegformerForSemanticSegmentation` with two labels (background, foreground), saved with
`save_pretrained` so the matte loads it through the same `from_pretrained` path a real checkpoint
takes. Its masks are meaningless (random weights); it exists to exercise the loading and calling code.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

from worker.models.build import MODEL_RECIPE_VERSION

SEED = 0


def build_tiny_segmenter(dest: Path) -> Path:
    import torch
    from transformers import SegformerConfig, SegformerForSemanticSegmentation, SegformerImageProcessor

    config = SegformerConfig(
        num_channels=3,
        num_encoder_blocks=2,
        depths=[1, 1],
        sr_ratios=[4, 2],
        hidden_sizes=[8, 16],
        patch_sizes=[7, 3],
        strides=[4, 2],
        num_attention_heads=[1, 2],
        mlp_ratios=[2, 2],
        decoder_hidden_size=16,
        num_labels=2,
        id2label={0: "background", 1: "foreground"},
        label2id={"background": 0, "foreground": 1},
    )
    torch.manual_seed(SEED)
    model = SegformerForSemanticSegmentation(config).eval()
    # 128x128 input: the matte upsamples the mask to the layer's size anyway.
    processor = SegformerImageProcessor(size={"height": 128, "width": 128})
    dest = Path(dest)
    model.save_pretrained(dest)
    processor.save_pretrained(dest)
    return dest


def ensure_tiny_segmenter(cache_dir: Path) -> Path:
    """Return `cache_dir/tiny-segmenter-<version>`, building it first if absent (atomic rename)."""
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / f"tiny-segmenter-{MODEL_RECIPE_VERSION}"
    if (final / "config.json").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}-", dir=cache_dir))
    try:
        build_tiny_segmenter(tmp)
        tmp.chmod(0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / "config.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_segmenter(model: str, cache_dir: Path) -> str:
    """`tiny` → the cached tiny segmenter's directory; anything else is a hub id or local dir as given."""
    return str(ensure_tiny_segmenter(cache_dir)) if model == "tiny" else model
