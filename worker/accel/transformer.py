"""Changes to the loaded transformer: regional compilation and (lossy, opt-in) FP8 weights.

Regional compilation compiles the repeated `QwenImageTransformerBlock` instead of the whole model:
with PyTorch's inlined nn-module parameters all 60 blocks share one compiled graph, so the compile
costs one block's worth of time, and the code outside the blocks (RoPE tables, timestep embedding)
stays eager. Every change here can be undone except FP8, which replaces the weights.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def repeated_blocks(transformer) -> list[torch.nn.Module]:
    names = set(getattr(transformer, "_repeated_blocks", ()) or ("QwenImageTransformerBlock",))
    return [m for m in transformer.modules() if type(m).__name__ in names]


def compile_blocks(transformer, dynamic: bool = True, cuda_graphs: bool = False, mode: str | None = None) -> int:
    """Compile each repeated block in place; returns how many blocks were compiled.

    `mode` is torch.compile's mode; None means "reduce-overhead" with `cuda_graphs`, else the default.
    """
    if mode is None and cuda_graphs:
        mode = "reduce-overhead"
    blocks = repeated_blocks(transformer)
    for block in blocks:
        block.compile(dynamic=dynamic, mode=mode, fullgraph=False)
    return len(blocks)


def uncompile_blocks(transformer) -> None:
    """Return the blocks to eager execution (the compiled graphs stay in dynamo's cache)."""
    for block in repeated_blocks(transformer):
        block._compiled_call_impl = None


def quantize_fp8(transformer) -> int:
    """FP8 (e4m3) weights with dynamic per-row FP8 activations for the blocks' linear layers (torchao).

    Lossy and irreversible: the bf16 weights are replaced. Needs a GPU with FP8 matrix units (sm_89+).
    Returns the number of linear layers converted.
    """
    from torchao.quantization import Float8DynamicActivationFloat8WeightConfig, PerRow, quantize_

    def is_big_linear(module, fqn):
        # The modulation linears see one token per image: FP8 would save nothing there.
        return isinstance(module, torch.nn.Linear) and "_mod" not in fqn

    count = 0
    for block in repeated_blocks(transformer):
        count += sum(is_big_linear(m, n) for n, m in block.named_modules())
        quantize_(block, Float8DynamicActivationFloat8WeightConfig(granularity=PerRow()), filter_fn=is_big_linear)
    return count
