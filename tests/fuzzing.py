"""Run schemathesis (its CLI, in a subprocess) against a live layerq API and its own /openapi.json:
every operation, every check, every phase (examples, coverage, fuzzing, stateful).

Shared by tests/test_api_fuzz.py (small, fixed seed) and bench/fuzz_api.py (longer). The hooks in
tests/fuzzing_hooks.py adjust *positive* cases only where a schema cannot say what the server needs
(see that module); negative cases go out untouched."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from layerq.jobs import TERMINAL
from layerq.sample import sample_png

# Where generated webhooks point: loopback, which the fuzz stack allow-lists. Nothing listens on
# the discard port, so deliveries fail fast and are retried by the CPU worker, as for any client.
WEBHOOK_URL = "http://127.0.0.1:9/layerq-fuzz"
CONFIG = Path(__file__).with_name("schemathesis.toml")


@dataclass
class FuzzResult:
    exit_code: int
    test_cases: int
    failures: list[dict]
    errors: list
    report: dict
    output: str

    @property
    def ok(self) -> bool:
        return self.exit_code == 0 and not self.failures and not self.errors


def ensure_measured(base_url: str, timeout_s: float = 600) -> None:
    """Run one tiny job to completion unless one already ran: a dry-run batch answers 400 until the
    service has measured a job (the estimate needs it), which a schema cannot express."""
    files = {"image": ("x.png", sample_png(64, 64), "image/png")}
    data = {"params": json.dumps({"layers": 2, "num_inference_steps": 2, "prompt": "fuzz"}), "cache": "false"}
    probe = {"items": [{"input_key": "uploads/x/y"}], "dry_run": True}
    if requests.post(base_url + "/v1/batches", json=probe, timeout=30).status_code == 200:
        return
    job = requests.post(base_url + "/v1/jobs", files=files, data=data, timeout=60).json()
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = requests.get(f"{base_url}/v1/jobs/{job['id']}", timeout=30).json()["status"]
        if status == "succeeded":
            return
        if status in ("failed", "canceled"):
            raise RuntimeError(f"the measuring job ended {status}")
        time.sleep(1)
    raise TimeoutError("the measuring job did not finish")


def run_schemathesis(base_url: str, *, max_examples: int, seed: int, report_dir: Path,
                     workers: int = 1, timeout_s: float = 1800) -> FuzzResult:
    report_dir.mkdir(parents=True, exist_ok=True)
    report = report_dir / "schemathesis.json"
    cmd = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(CONFIG), "run", f"{base_url}/openapi.json",
        "--checks", "all", "--phases", "examples,coverage,fuzzing,stateful",
        "--max-examples", str(max_examples), "--seed", str(seed), "--workers", str(workers),
        "--request-timeout", "60", "--no-color",
        "--report", "json", "--report-json-path", str(report),
    ]
    # The hooks live in tests/, which the installed package does not include: put the repository
    # root on the subprocess's path (it runs from the report folder).
    root = str(Path(__file__).resolve().parent.parent)
    path = os.pathsep.join(p for p in (root, os.environ.get("PYTHONPATH", "")) if p)
    env = {**os.environ, "PYTHONPATH": path, "SCHEMATHESIS_HOOKS": "tests.fuzzing_hooks",
           "LAYERQ_FUZZ_WEBHOOK_URL": WEBHOOK_URL}
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=timeout_s, cwd=report_dir)
    data = json.loads(report.read_text()) if report.exists() else {}
    return FuzzResult(
        exit_code=proc.returncode,
        test_cases=data.get("test_cases", {}).get("generated", 0),
        failures=data.get("failures", []),
        errors=data.get("errors", []),
        report=data,
        output=proc.stdout + proc.stderr,
    )


def drain(stack, settle_s: float = 120.0) -> int:
    """Cancel every job the fuzzer left queued or running on `stack` (all of the public tenant: the
    fuzzer sends no token), so a shared stack's later tests do not wait behind them, then wait (up to
    `settle_s`) until every job has ended: a canceled job stops at its next step, and a compose job
    writes its files to the end, so later tests that count the stack's stored objects would see them
    change (seen in CI once the fuzzer's seeded sequence changed)."""
    import redis

    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    stopped = 0
    head = f"{stack.settings.key_prefix}:batch:"
    for key in r.scan_iter(head + "*", count=500):
        batch_id = key[len(head):]
        if ":" not in batch_id:  # one request per batch, however many jobs it holds
            resp = requests.post(f"{stack.url}/v1/batches/{batch_id}/cancel", timeout=60)
            stopped += resp.json().get("canceled", 0) + resp.json().get("canceling", 0) if resp.ok else 0
    head = f"{stack.settings.key_prefix}:job:"
    for key in r.scan_iter(head + "*", count=500):
        job_id = key[len(head):]
        if ":" in job_id:
            continue  # a job's transition log
        resp = requests.post(f"{stack.url}/v1/jobs/{job_id}/cancel", timeout=30)
        if resp.status_code == 200 and resp.json().get("changed"):
            stopped += 1
    deadline = time.monotonic() + settle_s
    while _unfinished(r, head) and time.monotonic() < deadline:
        time.sleep(0.5)
    return stopped


def _unfinished(r, head: str) -> list[str]:
    keys = [k for k in r.scan_iter(head + "*", count=500) if ":" not in k[len(head):]]
    pipe = r.pipeline(transaction=False)
    for key in keys:
        pipe.hget(key, "status")
    ended = {s.value for s in TERMINAL}
    return [k for k, status in zip(keys, pipe.execute()) if status is not None and status not in ended]
