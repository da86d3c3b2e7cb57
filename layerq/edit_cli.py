"""`layerq edit JOB LAYER "instruction" [--wait] [--out DIR]`: edit one layer of a finished job."""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path


def add_edit_parser(sub) -> None:
    e = sub.add_parser("edit", help="edit one layer of a finished job from an instruction (a new layer set)")
    e.add_argument("job", help="id of a succeeded decomposition or edit")
    e.add_argument("layer", type=int, help="layer index, 0 = bottom")
    e.add_argument("instruction", help="what to change, e.g. 'make it red'")
    e.add_argument("--url", default=os.environ.get("LAYERQ_API_URL", "http://127.0.0.1:8000"))
    e.add_argument("--params", default="{}", help="edit parameters as a JSON object")
    e.add_argument("--matte", choices=("keep", "chroma", "model"))
    e.add_argument("--steps", dest="num_inference_steps", type=int)
    e.add_argument("--seed", type=int)
    e.add_argument("--wait", action="store_true", help="wait for the job, with a progress bar")
    e.add_argument("--out", type=Path, help="download the new layer set here (implies --wait)")


def cmd_edit(args: argparse.Namespace) -> int:
    from layerq.client import LayerqApiError, LayerqClient
    from layerq.progress import follow_jobs

    params = json.loads(args.params)
    for name in ("matte", "num_inference_steps", "seed"):
        if getattr(args, name) is not None:
            params[name] = getattr(args, name)
    client = LayerqClient(args.url)
    try:
        job = client.edit(args.job, args.layer, args.instruction, params)
    except LayerqApiError as exc:
        print(f"rejected: {exc}" + (f" (field {exc.field})" if exc.field else ""), file=sys.stderr)
        return 2
    print(f"edit job {job['id']} {job['status']}")
    if not (args.wait or args.out):
        return 0
    (final,) = follow_jobs(client, [job["id"]])
    if final["status"] != "succeeded":
        print(f"{final['status']}: {final.get('error')}", file=sys.stderr)
        return 1
    if args.out:
        client.download(final, args.out)
        print(f"{len(final['result']['layers'])} layers (layer {args.layer} edited) and exports in {args.out}")
    return 0
