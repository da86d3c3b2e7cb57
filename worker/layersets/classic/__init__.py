"""The classic decomposer (`--model classic`): a baseline for flat graphics that needs no GPU and no
weights. Palette clustering plus connected regions; see `regions` and `layering`."""

from .decomposer import CLASSIC_MODEL, ClassicDecomposer, decompose_flat

__all__ = ["CLASSIC_MODEL", "ClassicDecomposer", "decompose_flat"]
