"""What makes an exact job the same bits on every worker (docs/decisions.md, "Reproducible jobs"):
Inductor's deterministic mode for the compiled blocks, and an attention backend chosen by a rule
that timing noise does not flip. The GPU measurement is bench/compile_repro_gpu.py."""

from __future__ import annotations

import logging

import pytest

torch = pytest.importorskip("torch")
pytest.importorskip("diffusers")

from worker.accel import attention  # noqa: E402
from worker.accel.attention import BackendProbe, choose_backend  # noqa: E402
from worker.accel.synthetic import build_pipeline  # noqa: E402
from worker.accel.transformer import inductor_options, repeated_blocks  # noqa: E402
from worker.acceleration import SpeedOptions, prepare  # noqa: E402


@pytest.fixture(scope="module")
def pipe():
    return build_pipeline("small", device="cpu", seed=0)


def _compiler_configs(pipe) -> list[dict]:
    """The Inductor configuration each compiled block will compile with (torch.compile's own record)."""
    return [block._compiled_call_impl.get_compiler_config() for block in repeated_blocks(pipe.transformer)]


# --- deterministic compile ------------------------------------------------------------------------


def test_deterministic_compile_is_a_cuda_default():
    assert SpeedOptions.for_device("cuda").compile_deterministic
    assert not SpeedOptions.for_device("cpu").compile_deterministic
    assert "compile_deterministic=True" in SpeedOptions.for_device("cuda").describe()


@pytest.mark.parametrize("deterministic", [True, False])
def test_the_option_reaches_every_compiled_block(pipe, deterministic):
    # Compiling is lazy: nothing is traced until a call, so this only reads what each block was given.
    options = SpeedOptions(compile_blocks=True, compile_tune_kernels=True, compile_deterministic=deterministic)
    fast = prepare(pipe, options)
    try:
        configs = _compiler_configs(pipe)
        assert configs and all(c["deterministic"] is deterministic for c in configs)
        assert all(c["coordinate_descent_tuning"] for c in configs)  # Inductor keeps it for safe kernels
    finally:
        fast.restore()


def test_a_compile_mode_keeps_its_own_options_beside_deterministic(pipe):
    # torch.compile takes a mode or options, not both: the mode is handed over as its options.
    fast = prepare(pipe, SpeedOptions(compile_blocks=True, cuda_graphs=True, compile_deterministic=True))
    try:
        configs = _compiler_configs(pipe)
        assert configs and all(c["deterministic"] and c["triton.cudagraphs"] for c in configs)
    finally:
        fast.restore()
    assert inductor_options("max-autotune-no-cudagraphs", True, False, True) == (
        None, {"max_autotune": True, "coordinate_descent_tuning": True, "deterministic": True})
    assert inductor_options("reduce-overhead", True, True, False) == ("reduce-overhead", None)
    assert inductor_options(None, True, False, False) == (None, None)


def test_a_torch_without_deterministic_mode_compiles_as_before_and_says_so(monkeypatch, caplog):
    import torch._inductor.config as inductor_config

    monkeypatch.delattr(inductor_config, "deterministic")
    with caplog.at_level(logging.WARNING, logger="worker.accel.transformer"):
        assert inductor_options(None, True, True, True) == (None, {"coordinate_descent_tuning": True})
    assert "no Inductor deterministic mode" in caplog.text


# --- attention backend choice ---------------------------------------------------------------------


def _probe(name: str, ms: float | None, ok: bool = True, masked_ok: bool = True) -> BackendProbe:
    return BackendProbe(name, ok, ms, 3e-3 if ok else None, masked_ok)


def test_the_preferred_backend_stays_unless_another_is_clearly_faster():
    # The H200's measured times (bench/GPU_NOTES.md, run 9 probe): FA4 is first in order and fastest.
    measured = [_probe("fa4", 1.614), _probe("native", 1.824), _probe("_native_cudnn", 2.025),
                _probe("_native_flash", 3.151, masked_ok=False)]
    assert choose_backend(measured) == "fa4"
    # Without FA4, SDPA's own choice; explicit cuDNN within noise of it (either way) never takes over.
    for cudnn_ms in (1.70, 1.824, 1.95):
        assert choose_backend([_probe("_native_cudnn", cudnn_ms), _probe("native", 1.824)]) == "native"
    # A clear gain (>= 10 %) wins: the first in order within the margin of the fastest.
    assert choose_backend([_probe("native", 2.0), _probe("_native_cudnn", 1.7)]) == "_native_cudnn"
    assert choose_backend([_probe("native", 2.0), _probe("_flash_3", 1.45), _probe("_native_cudnn", 1.5)]) \
        == "_native_cudnn"  # within 10 % of the fastest and before it in order
    # Exactly 10 % faster is "by the margin"; a hair less is not.
    assert choose_backend([_probe("native", 2.0), _probe("_native_cudnn", 1.8)]) == "_native_cudnn"
    assert choose_backend([_probe("native", 2.0), _probe("_native_cudnn", 1.81)]) == "native"


def test_the_choice_ignores_probe_order_and_unusable_backends():
    probes = [_probe("_native_cudnn", 1.8), _probe("fa4", None, ok=False), _probe("native", 1.9),
              _probe("flash", 1.0, ok=False), _probe("_native_efficient", 1.0, masked_ok=False)]
    assert choose_backend(probes) == choose_backend(probes[::-1]) == "native"
    assert choose_backend([_probe("fa4", None, ok=False)]) == "native"  # none usable
    assert choose_backend([_probe("native", 2.0), _probe("_native_cudnn", 1.9)], margin=0) == "_native_cudnn"
    with pytest.raises(ValueError, match="margin"):
        choose_backend([_probe("native", 1.0)], margin=1.0)


def test_the_preference_order_is_every_candidate_once_with_fa4_then_sdpa_first():
    assert attention.CANDIDATES[:2] == (attention.FA4, "native")
    assert len(set(attention.CANDIDATES)) == len(attention.CANDIDATES)


def test_an_explicit_backend_is_used_as_given(pipe):
    fast = prepare(pipe, SpeedOptions(attention_backend="native"))
    try:
        assert fast.attention_backend == "native" and fast.attention_probes == []
    finally:
        fast.restore()
