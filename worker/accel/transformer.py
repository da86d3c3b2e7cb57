"""Changes to the loaded transformer: regional compilation and (lossy, opt-in) FP8 weights.

Regional compilation compiles the repeated `QwenImageTransformerBlock` instead of the whole model:
with PyTorch's inlined nn-module parameters all 60 blocks share one compiled graph, so the compile
costs one block's worth of time, and the code outside the blocks (RoPE tables, timestep embedding)
stays eager. Every change here can be undone except FP8, which adds an FP8 copy of the weights.
"""

from __future__ import annotations

import logging

import torch

log = logging.getLogger(__name__)


def repeated_blocks(transformer) -> list[torch.nn.Module]:
    names = set(getattr(transformer, "_repeated_blocks", ()) or ("QwenImageTransformerBlock",))
    return [m for m in transformer.modules() if type(m).__name__ in names]


def compile_blocks(
    transformer, dynamic: bool = True, cuda_graphs: bool = False, mode: str | None = None,
    tune_kernels: bool = False, deterministic: bool = False,
) -> int:
    """Compile each repeated block in place; returns how many blocks were compiled.

    `mode` is torch.compile's mode; None means "reduce-overhead" with `cuda_graphs`, else the default.
    `tune_kernels` (default mode only) has Inductor tune its generated norm/RoPE/elementwise kernels'
    block sizes by coordinate descent at compile time (same arithmetic, other launch shapes).
    `deterministic`: Inductor's deterministic mode for these graphs (`inductor_options`).
    """
    if mode is None and cuda_graphs:
        mode = "reduce-overhead"
    mode, options = inductor_options(mode, dynamic, tune_kernels, deterministic)
    blocks = repeated_blocks(transformer)
    for block in blocks:
        block.compile(dynamic=dynamic, mode=mode, fullgraph=False, options=options)
    return len(blocks)


def inductor_options(
    mode: str | None, dynamic: bool, tune_kernels: bool, deterministic: bool,
) -> tuple[str | None, dict | None]:
    """(mode, options) for `torch.compile` of the blocks.

    Deterministic mode: without it, Inductor picks some kernels' configurations by timing them at
    compile time (reduction block sizes, split reductions, padding, GEMM choices), and those change
    the summation order, so two compiles of the same graph (two workers, a restarted worker) can
    give different bits: 1.3e-2 relative on a 640/4 20-step job's latents (H200, torch 2.11,
    bench/compile_repro_gpu.py). With it, both compiles' jobs were bitwise equal at the same step
    time. Where it meets `tune_kernels`, deterministic mode wins: Inductor then tunes only kernels
    whose numerics the launch shape cannot change (no reduction kernels; torch 2.14's
    `_should_coordesc_tune`). torch.compile takes a mode or options, not both: a mode becomes its
    own options (`list_mode_options`, what torch.compile does with it) plus deterministic."""
    options: dict = {}
    if tune_kernels and mode is None:
        options["coordinate_descent_tuning"] = True
    if deterministic:
        import torch._inductor.config as inductor_config

        if not hasattr(inductor_config, "deterministic"):
            log.warning("compile_deterministic: this torch (%s) has no Inductor deterministic mode; "
                        "compiled blocks may differ bitwise between compiles", torch.__version__)
        else:
            if mode not in (None, "default"):
                from torch._inductor import list_mode_options

                options = {**list_mode_options(mode, dynamic), **options}
                mode = None
            options["deterministic"] = True
    return mode, options or None


def uncompile_blocks(transformer) -> None:
    """Return the blocks to eager execution (the compiled graphs stay in dynamo's cache)."""
    for block in repeated_blocks(transformer):
        block._compiled_call_impl = None


def quantize_fp8(transformer) -> int:
    """FP8 (e4m3) weights with dynamic per-row FP8 activations for every call of the blocks' linears
    (worker/accel/fp8.py; the modulation linears weight-only), from now on: `SpeedOptions.fp8_weights`.

    Lossy. The bf16 weights stay (the worker serves exact jobs from them: `DecomposePipeline.weights_for`);
    this switch is the benchmark's always-on form. Returns the number of linear layers converted."""
    from . import fp8

    modules = [m for block in repeated_blocks(transformer) for m in fp8.convert(block)]
    for m in modules:
        m.fp8_on = True
    return len(modules)


def _gelu_linear_forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
    """diffusers' `GELU.forward` (linear, then tanh-approximate GELU) as one cuBLASLt GEMM on CUDA.

    `torch._addmm_activation(..., use_gelu=True)` applies bias and tanh-GELU in the GEMM's epilogue, on
    the float32 accumulator, instead of writing the bf16 product and reading it back for a separate
    GELU pass (~10 ms per transformer call on an H100, run 6). On CPU the same op means the exact
    (erf) GELU, which is not this model's, so CPU keeps the module's own forward."""
    proj = self.proj
    # A fast job on FP8 weights goes through the module's own forward (proj is then an FP8 GEMM).
    fp8_on = getattr(proj, "fp8_on", False)
    if hidden_states.is_cuda and self.approximate == "tanh" and proj.bias is not None and not fp8_on:
        flat = hidden_states.reshape(-1, hidden_states.shape[-1])
        out = torch._addmm_activation(proj.bias, flat, proj.weight.t(), use_gelu=True)
        return out.view(*hidden_states.shape[:-1], out.shape[-1])
    return type(self).forward(self, hidden_states)


def gelu_modules(transformer) -> list[torch.nn.Module]:
    """The blocks' feed-forward input layers that are diffusers `GELU` (linear + GELU) modules."""
    return [
        m for block in repeated_blocks(transformer) for m in block.modules()
        if type(m).__name__ == "GELU" and hasattr(m, "proj") and hasattr(m, "approximate")
    ]


def fuse_gelu_epilogue(transformer) -> int:
    """Run each block's fc1 + GELU as one GEMM with a GELU epilogue (CUDA); returns how many."""
    import types

    modules = gelu_modules(transformer)
    for m in modules:
        m.forward = types.MethodType(_gelu_linear_forward, m)
    return len(modules)


def unfuse_gelu_epilogue(transformer) -> None:
    for m in gelu_modules(transformer):
        m.__dict__.pop("forward", None)
