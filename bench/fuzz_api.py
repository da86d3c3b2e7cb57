"""The API under a property-based fuzzer, longer than the test suite's run (issue 15): schemathesis
with every check and every phase (examples, coverage, fuzzing, stateful) against a real local stack
(gunicorn on loopback, Celery workers running the tiny model, private Redis) and its own
/openapi.json. Prints the requests the API answered (its access log) and the failures.

    .venv/bin/python bench/fuzz_api.py                  # 200 examples per operation, seed 7
    .venv/bin/python bench/fuzz_api.py --examples 500 --seed 3
    .venv/bin/python bench/fuzz_api.py --url http://127.0.0.1:8000   # a stack that is already up
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
import tempfile
import time
import uuid
from pathlib import Path

from layerq.config import Settings
from layerq.stack import LocalStack
from tests.fuzzing import drain, ensure_measured, run_schemathesis


def start_stack(tmp: Path) -> LocalStack:
    from worker.tiny_model import ensure_tiny_model

    settings = Settings.from_env(
        environ={}, storage="local", storage_dir=str(tmp / "data"), model=str(ensure_tiny_model(tmp / "models")),
        device="cpu", webhook_secret="fuzz-webhook-secret", webhook_allow_hosts="127.0.0.1",
        key_prefix=f"fuzz{uuid.uuid4().hex[:6]}",
    )
    return LocalStack(settings, run_dir=tmp / "run", api_workers=2).start(workers=1, start_redis=True, timeout_s=600)


def answered(run_dir: Path) -> int:
    """Requests in the API's access log (gunicorn logs one line per answered request)."""
    log = run_dir / "api.log"
    return sum(1 for line in log.read_text(errors="replace").splitlines() if '" ' in line and "HTTP/1." in line)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--examples", type=int, default=200, help="max examples per operation and phase")
    ap.add_argument("--seed", type=int, default=7)
    ap.add_argument("--url", help="fuzz this running API instead of starting a stack")
    args = ap.parse_args()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))  # stop the stack on TERM too

    with tempfile.TemporaryDirectory(prefix="layerq-fuzz-") as tmp_name:
        tmp = Path(tmp_name)
        stack = None if args.url else start_stack(tmp)
        url = args.url or stack.url
        try:
            ensure_measured(url)
            before = answered(stack.run_dir) if stack else 0
            t0 = time.monotonic()
            result = run_schemathesis(url, max_examples=args.examples, seed=args.seed, report_dir=tmp / "report",
                                      timeout_s=6 * 3600)
            elapsed = time.monotonic() - t0
            requests_made = answered(stack.run_dir) - before if stack else None
            if stack:
                drain(stack)
        finally:
            if stack:
                stack.stop()
    print(result.output[-4000:] if not result.ok else "")
    summary = {
        "examples_per_operation": args.examples, "seed": args.seed, "seconds": round(elapsed, 1),
        "test_cases": result.test_cases, "requests": requests_made,
        "failures": sum(f.get("count", 1) for f in result.failures), "errors": len(result.errors),
        "failure_codes": sorted({f["code"] for f in result.failures}), "exit_code": result.exit_code,
    }
    print(json.dumps(summary, indent=2))
    return 0 if result.ok else 1


if __name__ == "__main__":
    sys.exit(main())
