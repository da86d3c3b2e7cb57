"""Process boundaries: the API and the CPU worker never import torch or diffusers (the API image has
neither and must start fast)."""

from __future__ import annotations

import subprocess
import sys

import pytest

CHECK = """
import sys
{body}
heavy = sorted(m for m in ("torch", "diffusers", "transformers") if m in sys.modules)
assert not heavy, heavy
"""


@pytest.mark.parametrize("body", [
    "from api.app import create_app\ncreate_app(signing_secret='x').test_client().get('/openapi.json')",
    "from worker.celery_app import make_worker_app\nfrom layerq.config import Settings\n"
    "make_worker_app(Settings(), queues='cpu')\nimport worker.decompose, worker.webhooks",
    "import layerq.cli, layerq.client, layerq.stack",
], ids=["api", "cpu-worker", "cli"])
def test_no_torch_outside_the_gpu_worker(body):
    subprocess.run([sys.executable, "-c", CHECK.format(body=body)], check=True, timeout=60)
