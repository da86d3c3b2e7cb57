"""Build the full-size random-weight models on one GPU and run the edit step once (smoke + numbers).

    python3 bench/models_gpu.py --steps 4 --out results.json
    python3 bench/models_gpu.py --size tiny --device cpu --steps 2     # the same path, on a CPU

1. `build_layered("full", "cuda")`: build time, parameters, weights in memory, caption prompt length.
2. `build_edit("full", "cuda")` (Qwen-Image-Edit-2509 architecture): build time, then `edit_layer` on a
   640x640 layer (the pipeline works at 1024x1024): seconds per CFG step from the step callback,
   end-to-end time, peak memory. Not the issue's speed benchmark: it only proves the full path runs.
"""

from __future__ import annotations

import argparse
import gc
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import torch  # noqa: E402

from worker.accel.synthetic import sample_image  # noqa: E402
from worker.edit import edit_layer  # noqa: E402
from worker.models import build_edit, build_layered  # noqa: E402

GiB = 2**30


def billions(m: torch.nn.Module) -> float:
    return round(sum(p.numel() for p in m.parameters()) / 1e9, 3)


def sync() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()


def allocated_gib() -> float | None:
    return round(torch.cuda.memory_allocated() / GiB, 2) if torch.cuda.is_available() else None


def build(fn, name: str, size: str, device: str) -> tuple[object, dict]:
    sync()
    t = time.perf_counter()
    pipe = fn(size, device=device)
    sync()
    info = {
        "build_s": round(time.perf_counter() - t, 2),
        "transformer_B": billions(pipe.transformer),
        "text_encoder_B": billions(pipe.text_encoder),
        "vae_B": billions(pipe.vae),
        "weights_GiB": allocated_gib(),
    }
    print(name, info, flush=True)
    return pipe, info


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=4)
    ap.add_argument("--out", type=Path, default=None)
    ap.add_argument("--size", default="full", choices=["tiny", "small", "full"])
    ap.add_argument("--device", default="cuda")
    args = ap.parse_args()
    cuda = torch.device(args.device).type == "cuda"
    result: dict = {"device": torch.cuda.get_device_name() if cuda else "cpu", "torch": torch.__version__,
                    "size": args.size}

    pipe, result["layered"] = build(build_layered, "layered", args.size, args.device)
    image = sample_image(640, 640).convert("RGB")
    ids = pipe.processor(text=pipe.image_caption_prompt_en, images=image, return_tensors="pt").input_ids
    result["layered"]["caption_prompt_tokens"] = int(ids.shape[1])
    del pipe
    gc.collect()
    if cuda:
        torch.cuda.empty_cache()

    pipe, result["edit"] = build(build_edit, "edit", args.size, args.device)
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    layer = sample_image(640, 640, seed=3)
    stamps: list[float] = []
    for run in ("warm-up", "timed"):
        stamps.clear()
        sync()
        t = time.perf_counter()
        out = edit_layer(pipe, layer, "make the blocks blue", num_inference_steps=args.steps, seed=777,
                         on_step=lambda i, n: (sync(), stamps.append(time.perf_counter())))
        sync()
        total = time.perf_counter() - t
        print(run, round(total, 2), flush=True)
    steps = [b - a for a, b in zip(stamps, stamps[1:])]
    result["edit"].update(
        steps=args.steps,
        step_s_median=round(sorted(steps)[len(steps) // 2], 4) if steps else None,
        edit_s=round(total, 2),
        before_first_step_s=round(stamps[0] - t, 2),
        peak_GiB=round(torch.cuda.max_memory_allocated() / GiB, 2) if cuda else None,
        output=[out.mode, *out.size],
    )
    print(json.dumps(result, indent=1), flush=True)
    if args.out:
        args.out.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
