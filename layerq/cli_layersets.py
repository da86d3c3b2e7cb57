"""`layerq compose JOB --ops ops.json` and `layerq combine a.png b.png ...`: layer-set jobs from the
command line, waited for and downloaded like `layerq submit --out`."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any


def add_parsers(sub: Any) -> None:
    url = os.environ.get("LAYERQ_API_URL", "http://127.0.0.1:8000")
    c = sub.add_parser("compose", help="apply layer operations to a finished job's layer set (a new job)")
    c.add_argument("job_id")
    c.add_argument("--ops", type=Path, required=True, help='JSON file: a list like [{"op": "hide", "index": 0}]')
    c.add_argument("--url", default=url)
    c.add_argument("--out", type=Path, help="wait and download the new layer set here")
    m = sub.add_parser("combine", help="stack RGBA images (bottom first) into a layer set (a new job)")
    m.add_argument("images", nargs="+", type=Path)
    m.add_argument("--params", default="{}", help='JSON, e.g. {"placements": [{"x": 0, "y": 0}, ...]}')
    m.add_argument("--url", default=url)
    m.add_argument("--out", type=Path, help="wait and download the new layer set here")


def cmd_compose(args: argparse.Namespace) -> int:
    from layerq.client import LayerqClient

    client = LayerqClient(args.url)
    return _finish(client, client.compose(args.job_id, json.loads(args.ops.read_text())), args.out)


def cmd_combine(args: argparse.Namespace) -> int:
    from layerq.client import LayerqClient

    client = LayerqClient(args.url)
    return _finish(client, client.combine(list(args.images), json.loads(args.params)), args.out)


def _finish(client: Any, job: dict[str, Any], out: Path | None) -> int:
    print(f"job {job['id']} {job['status']}", flush=True)
    if out is None:
        return 0
    final = client.wait(job["id"])
    if final["status"] != "succeeded":
        print(f"job {final['status']}: {final.get('error')}", file=sys.stderr)
        return 1
    client.download(final, out)
    print(f"{len(final['result']['layers'])} layers and exports in {out}")
    return 0
