"""CFG-parallel (issue 14, point 1) on the CPU: two real processes, gloo, the tiny model.

Rank 1 is the real follower program (`python -m worker.cfg_follower`); rank 0 is this test process
holding the ordinary `DecomposePipeline`. The split must not change the arithmetic: the same passes
on the same tensors, so float32 results equal the one-process path's.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from layerq.config import Settings
from layerq.errors import PipelineFailed
from layerq.params import DecomposeParams
from worker.accel.cfg_parallel import CfgLink, CfgParallel, PeerLost
from worker.pipeline import DecomposePipeline

STEPS = 4


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_follower(model_dir: Path, port: int, log_path: Path, timeout_s: float = 30.0) -> subprocess.Popen:
    settings = Settings.from_env(environ={}, model=str(model_dir), device="cpu",
                                 cfg_parallel_peer=f"127.0.0.1:{port}", cfg_parallel_timeout_s=timeout_s,
                                 cfg_parallel_connect_timeout_s=120)
    env = {**os.environ, **settings.as_env(), "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "worker.cfg_follower"], env=env,
                            stdout=open(log_path, "wb"), stderr=subprocess.STDOUT)


@pytest.fixture(scope="module")
def pipeline(tiny_model_dir) -> DecomposePipeline:
    return DecomposePipeline.load(str(tiny_model_dir), device="cpu")


@pytest.fixture
def pair(pipeline, tiny_model_dir, tmp_path):
    """(rank 0's hook, the follower process); the link is torn down after the test."""
    port = free_port()
    follower = start_follower(tiny_model_dir, port, tmp_path / "follower.log")
    cfg = None
    try:
        cfg = CfgParallel(CfgLink.connect(f"127.0.0.1:{port}", 0, "cpu", timeout_s=30, connect_timeout_s=120))
        yield cfg, follower
    finally:
        if cfg is not None:
            cfg.close()
        if follower.poll() is None and cfg is None:
            follower.kill()
        code = follower.wait(60)
        assert code in (0, -signal.SIGKILL), f"follower exited with {code}"
        print((tmp_path / "follower.log").read_text(errors="replace")[-3000:])


def poster() -> Image.Image:
    img = Image.new("RGBA", (96, 80), (240, 230, 200, 255))
    img.paste((200, 40, 40, 255), (10, 10, 50, 40))
    img.paste((30, 60, 200, 255), (40, 30, 90, 75))
    return img


def raw_call(pipeline: DecomposePipeline, seed: int = 777) -> np.ndarray:
    """The pipeline's decoded layers as floats (no 8-bit rounding that could hide a difference)."""
    with torch.inference_mode():
        out = pipeline.pipe(image=poster(), prompt="a red box and a blue box", negative_prompt=" ",
                            true_cfg_scale=4.0, layers=3, num_inference_steps=STEPS, resolution=640,
                            cfg_normalize=True, generator=torch.Generator("cpu").manual_seed(seed),
                            output_type="np")
    return np.asarray(out.images[0], dtype=np.float64)


def test_cfg_parallel_equals_the_one_process_path(pipeline, pair):
    cfg, follower = pair
    reference = raw_call(pipeline)
    with cfg.active(pipeline.pipe):
        split = raw_call(pipeline)
    assert cfg.remote_calls == STEPS, "every uncond pass ran on rank 1"
    diff = np.abs(split - reference)
    rel = float(diff.max() / max(np.abs(reference).max(), 1e-12))
    print(f"CFG-parallel vs one process: max abs {diff.max():.3g}, max rel {rel:.3g}, "
          f"bitwise equal {np.array_equal(split, reference)}")
    assert rel <= 1e-6

    # And through the worker's own entry point, job after job on one pair.
    params = DecomposeParams(layers=3, num_inference_steps=STEPS, seed=5, prompt="two boxes")
    alone = pipeline.run(poster(), params)
    pipeline.cfg = cfg
    try:
        together = [pipeline.run(poster(), params) for _ in range(2)]
    finally:
        pipeline.cfg = None
    for layers in together:
        assert [np.asarray(a).tobytes() for a in layers] == [np.asarray(b).tobytes() for b in alone]
    assert cfg.jobs == 3 and cfg.remote_calls == 3 * STEPS
    assert follower.poll() is None, "the follower serves job after job"


def test_without_cfg_nothing_is_sent(pipeline, pair):
    cfg, _follower = pair
    with cfg.active(pipeline.pipe), torch.inference_mode():
        pipeline.pipe(image=poster(), prompt="x", true_cfg_scale=1.0, layers=2, num_inference_steps=2,
                      generator=torch.Generator("cpu").manual_seed(1), output_type="np")
    assert cfg.jobs == 0 and cfg.remote_calls == 0


def test_a_dead_follower_is_reported_not_waited_for(pipeline, pair):
    cfg, follower = pair
    lost: list[PeerLost] = []
    cfg.on_lost = lost.append
    pipeline.cfg = cfg

    def kill_after_first_step(done: int, _total: int) -> None:
        if done == 1:
            follower.send_signal(signal.SIGKILL)
            follower.wait(30)

    params = DecomposeParams(layers=2, num_inference_steps=STEPS, seed=3, prompt="boxes")
    try:
        with pytest.raises(PipelineFailed, match="PeerLost"):
            pipeline.run(poster(), params, on_step=kill_after_first_step)
    finally:
        pipeline.cfg = None
    assert lost and isinstance(lost[0], PeerLost)
