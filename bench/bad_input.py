"""Time for the API to refuse hostile inputs (issue 3: decompression bombs answered 400 within 1 s,
memory bounded), measured over HTTP against the real API, with the API processes' peak RSS: the
kernel's high-water mark (VmHWM in /proc/<pid>/status, Linux), so a spike that came and went between
two requests still counts — the current RSS read after the requests would miss it.

    .venv/bin/python bench/bad_input.py
"""

from __future__ import annotations

import json
import struct
import sys
import tempfile
import time
import zlib
from pathlib import Path

import psutil
import requests

from layerq.config import Settings
from layerq.stack import LocalStack, RedisServer


def png_header(width: int, height: int, payload: bytes = b"\0" * 64) -> bytes:
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 6, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(payload)) + chunk(b"IEND", b"")


def peak_rss_mib(proc: psutil.Process) -> float | None:
    """The most resident memory `proc` ever had (VmHWM), in MiB; None where /proc has no VmHWM."""
    try:
        with open(f"/proc/{proc.pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # the kernel reports kB
    except OSError:
        pass
    return None


def reset_peak_rss(proc: psutil.Process) -> bool:
    """Reset VmHWM to the current RSS (Linux >= 4.0, `clear_refs` value 5), so the next reading is
    the peak of what happens from now on; False where that is not possible (the peak is then
    cumulative since the process started)."""
    try:
        with open(f"/proc/{proc.pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def main() -> int:
    cases = {
        "bomb 50000x50000 RGBA (10 GB decoded)": png_header(50_000, 50_000),
        "bomb 8192x8192 RGBA, 16 MB of zeros deflated to 16 KB": png_header(8192, 8192, b"\0" * (16 << 20)),
        "truncated PNG": png_header(640, 640)[:40],
        "text file named .png": b"hello" * 1000,
    }
    with tempfile.TemporaryDirectory() as tmp:
        settings = Settings.from_env(environ={}, storage_dir=str(Path(tmp) / "data"))
        with LocalStack(settings, run_dir=Path(tmp)) as stack:
            stack.start(workers=0, cpu_workers=0, start_redis=RedisServer.available(), timeout_s=120)
            api = psutil.Process(stack.api.pid)
            out = {}
            for name, data in cases.items():
                procs = [api, *api.children()]
                per_case = all([reset_peak_rss(p) for p in procs])
                times = []
                for _ in range(5):
                    t0 = time.perf_counter()
                    r = requests.post(stack.url + "/v1/jobs", files={"image": ("x.png", data)}, timeout=30)
                    times.append(time.perf_counter() - t0)
                    assert r.status_code == 400, r.text
                # The largest peak among the API processes (gunicorn master and workers).
                peaks = [peak_rss_mib(p) for p in procs]
                peak = max((m for m in peaks if m is not None), default=None)
                out[name] = {"status": 400, "max_ms": round(1000 * max(times), 1),
                             "api_peak_rss_mib": None if peak is None else round(peak, 1),
                             "peak_since": "this case" if per_case else "API start"}
    print(json.dumps(out, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
