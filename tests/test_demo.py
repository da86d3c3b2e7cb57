"""The README's first command: `layerq demo` (what ./scripts/demo.sh runs, after bootstrapping) starts
its own stack, decomposes the sample poster with the classic decomposer and downloads everything."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from layerq.stack import RedisServer

pytestmark = [
    pytest.mark.e2e, pytest.mark.timeout(900),
    pytest.mark.skipif(not RedisServer.available(), reason="`layerq demo` starts a private redis-server"),
]

ROOT = Path(__file__).resolve().parents[1]


def test_demo_decomposes_the_sample_poster_with_the_classic_decomposer(tmp_path):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LAYERQ_")}
    env.update(PYTHONPATH=str(ROOT), HF_HUB_OFFLINE="1", LAYERQ_DEVICE="cpu")
    out = tmp_path / "out"
    done = subprocess.run([sys.executable, "-m", "layerq.cli", "demo", "--out", str(out)], cwd=tmp_path, env=env,
                          capture_output=True, text=True, timeout=840)
    assert done.returncode == 0, (done.stdout + done.stderr)[-4000:]
    assert "model 'classic'" in done.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["model"] == "classic"
    layers = sorted((out / "layers").glob("*.png"))
    assert 2 <= len(layers) <= 4 and len(layers) == len(manifest["layers"])
    # Flat shapes come back as separate, partly transparent layers (the tiny model's would be noise).
    alphas = [Image.open(p).getchannel("A") for p in layers]
    assert any(a.getextrema()[0] == 0 for a in alphas[1:])
    assert {p.name for p in out.iterdir()} >= {"composite.png", "layers.psd", "layers.pptx", "layers.zip"}
