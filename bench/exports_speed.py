"""Time the export stage (worker/exports) piece by piece, on synthetic layer stacks.

For each kind of stack and size: every component alone on one thread (composite, the layer
PNGs, the composite PNG, PSD, PPTX, ZIP, ORA), then the whole export stage as the worker runs
it: "worker-pattern" is decompose._encode_outputs' pool pattern before encode_all (8 threads:
composite PNG, PSD through build_exports, layer PNGs, then one build_exports per other
format), "encode_all/N" is exports.encode_all on a fresh N-thread pool per job, "kept pool"
on one pool reused across jobs. Best-of-R min and median, in ms, plus the bytes each
artefact came to. The machine should be otherwise idle: on 2 cores, any other busy process
shows up in the stage rows first.

Stacks (4 layers by default, bottom first):
- noise: uniform random RGBA, random alpha (what the tiny random-weight test model gives);
- poster: an opaque gradient backdrop, then mostly transparent layers of a few shapes
  (flat colour, gradients, a text-like band), like real decompositions;
- photo: grainy smooth-gradient layers (opaque backdrop, soft-edged cut-outs above), the
  hard case for PNG between those two.

    .venv/bin/python bench/exports_speed.py                  # 640 and 1024, all kinds
    .venv/bin/python bench/exports_speed.py --sizes 640 --kinds noise poster --repeat 7

The exports package is imported as ``worker.exports`` from sys.path, so an older copy can be
timed by putting its root first: ``PYTHONPATH=/path/to/old/checkout python bench/...``
(components the old code lacks are emulated with what it has, and marked "*").
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import sys
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image

if not any(Path(p, "worker", "exports").is_dir() for p in sys.path if p):
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from worker import exports  # noqa: E402

MANIFEST = {"job_id": "bench", "layers": 4, "order": "bottom-to-top"}


# --------------------------------------------------------------------------- stacks


def noise_layers(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 4), dtype=np.uint8), "RGBA")
            for _ in range(count)]


def poster_layers(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size]
    backdrop = np.empty((size, size, 4), np.uint8)
    backdrop[..., 0] = 40 + 150 * yy // size
    backdrop[..., 1] = 90 + 100 * xx // size
    backdrop[..., 2] = 180
    backdrop[..., 3] = 255
    out = [Image.fromarray(backdrop, "RGBA")]
    for index in range(1, count):
        rgba = np.zeros((size, size, 4), np.uint8)
        for shape in range(3):
            cx, cy = rng.uniform(0.2, 0.8, 2) * size
            rx, ry = rng.uniform(0.05, 0.2, 2) * size
            if (index + shape) % 3 == 0:  # ellipse, flat colour
                mask = ((xx - cx) / rx) ** 2 + ((yy - cy) / ry) ** 2 <= 1
                rgba[mask, :3] = rng.integers(0, 256, 3)
                rgba[mask, 3] = 255
            elif (index + shape) % 3 == 1:  # rectangle with a colour gradient, half opaque
                mask = (np.abs(xx - cx) <= rx) & (np.abs(yy - cy) <= ry)
                rgba[mask, 0] = (xx[mask] * 255 // size).astype(np.uint8)
                rgba[mask, 1:3] = rng.integers(0, 256, 2)
                rgba[mask, 3] = 200
            else:  # a text-like band: thin strokes
                mask = (np.abs(yy - cy) <= size // 40) & (np.abs(xx - cx) <= rx) & ((xx // 3) % 4 != 0)
                rgba[mask] = (20, 20, 20, 255)
        out.append(Image.fromarray(rgba, "RGBA"))
    return out


def photo_layers(count: int, size: int, seed: int = 0) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32) / size
    out = []
    for index in range(count):
        rgba = np.empty((size, size, 4), np.float32)
        rgba[..., 0] = 120 + 100 * np.sin(6 * xx + 2 * yy + index)
        rgba[..., 1] = 100 + 80 * np.cos(5 * yy * xx + index)
        rgba[..., 2] = 90 + 60 * xx
        rgba[..., :3] += rng.normal(0, 3, (size, size, 3))
        if index == 0:
            rgba[..., 3] = 255
        else:  # a soft-edged blob
            cx, cy = rng.uniform(0.3, 0.7, 2)
            dist = np.hypot(xx - cx, yy - cy) / 0.25
            rgba[..., 3] = np.clip((1.2 - dist) * 255, 0, 255)
            rgba[rgba[..., 3] == 0, :3] = 0
        out.append(Image.fromarray(np.clip(rgba, 0, 255).astype(np.uint8), "RGBA"))
    return out


KINDS: dict[str, Callable[[int, int], list[Image.Image]]] = {
    "noise": noise_layers, "poster": poster_layers, "photo": photo_layers,
}


# --------------------------------------------------------------------------- the export stage


def worker_pattern(layers: list[Image.Image], formats: tuple[str, ...]) -> dict[str, bytes]:
    """worker/decompose.py's _encode_outputs before encode_all (keys aside)."""
    with ThreadPoolExecutor(8) as pool:
        composite_png = pool.submit(lambda: exports.png_bytes(exports.composite(layers)))
        psd = pool.submit(exports.build_exports, layers, MANIFEST, formats=("psd",)) if "psd" in formats else None
        pngs = list(pool.map(exports.png_bytes, layers))
        others = [pool.submit(exports.build_exports, layers, MANIFEST, layer_pngs=pngs, formats=(fmt,))
                  for fmt in formats if fmt != "psd"]
        out = {f"layer{i}.png": data for i, data in enumerate(pngs)}
        out["composite.png"] = composite_png.result()
        for future in ([psd] if psd else []) + others:
            out.update(future.result())
    return out


def encode_all_stage(layers: list[Image.Image], formats: tuple[str, ...], threads: int,
                     pool: ThreadPoolExecutor | None = None) -> dict[str, bytes]:
    if pool is None:
        with ThreadPoolExecutor(threads) as fresh:
            pngs, composite_png, files = exports.encode_all(layers, MANIFEST, formats, pool=fresh)
    else:
        pngs, composite_png, files = exports.encode_all(layers, MANIFEST, formats, pool=pool)
    out = {f"layer{i}.png": data for i, data in enumerate(pngs)}
    out["composite.png"] = composite_png
    out.update(files)
    return out


# --------------------------------------------------------------------------- timing


def timed(fn: Callable[[], object], repeat: int) -> tuple[float, float]:
    fn()  # warm-up (imports, template parsing, page faults)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return 1000 * min(times), 1000 * statistics.median(times)


def accepts(fn: Callable[..., object], name: str) -> bool:
    return name in inspect.signature(fn).parameters


def components(layers: list[Image.Image], formats: tuple[str, ...], repeat: int,
               threads: list[int]) -> tuple[dict[str, tuple[float, float]], dict[str, int]]:
    rows: dict[str, tuple[float, float]] = {}
    flat = exports.composite(layers)
    pngs = [exports.png_bytes(layer) for layer in layers]
    composite_png = exports.png_bytes(flat)
    rows["composite"] = timed(lambda: exports.composite(layers), repeat)
    rows[f"png x{len(layers)} layers"] = timed(lambda: [exports.png_bytes(layer) for layer in layers], repeat)
    rows["png composite"] = timed(lambda: exports.png_bytes(flat), repeat)
    if accepts(exports.to_psd, "merged"):
        rows["psd (merged given)"] = timed(lambda: exports.to_psd(layers, merged=flat), repeat)
    else:
        rows["psd (merged given)*"] = timed(lambda: exports.to_psd(layers), repeat)
    rows["pptx (pngs given)"] = timed(lambda: exports.to_pptx(layers, layer_pngs=pngs), repeat)
    rows["zip (pngs given)"] = timed(lambda: exports.to_zip(layers, MANIFEST, layer_pngs=pngs), repeat)
    if accepts(exports.to_ora, "merged_png"):
        rows["ora (pngs+merged given)"] = timed(
            lambda: exports.to_ora(layers, layer_pngs=pngs, merged=flat, merged_png=composite_png), repeat)
    else:
        rows["ora (pngs+merged given)*"] = timed(
            lambda: exports.to_ora(layers, layer_pngs=pngs, merged=flat), repeat)
    rows["stage: worker-pattern/8"] = timed(lambda: worker_pattern(layers, formats), repeat)
    outputs = worker_pattern(layers, formats)
    if hasattr(exports, "encode_all"):
        for count in threads:
            rows[f"stage: encode_all/{count}"] = timed(lambda c=count: encode_all_stage(layers, formats, c), repeat)
        with ThreadPoolExecutor(4) as kept:
            rows["stage: encode_all/4 kept pool"] = timed(
                lambda: encode_all_stage(layers, formats, 4, kept), repeat)
        outputs = encode_all_stage(layers, formats, threads[0])
    sizes = {
        "layer pngs": sum(len(v) for k, v in outputs.items() if k.startswith("layer")),
        "composite.png": len(outputs["composite.png"]),
        **{fmt: len(outputs[fmt]) for fmt in formats},
    }
    return rows, sizes


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", type=int, nargs="+", default=[640, 1024])
    ap.add_argument("--kinds", nargs="+", choices=list(KINDS), default=list(KINDS))
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--repeat", type=int, default=5, help="timed runs per cell (best-of-N)")
    ap.add_argument("--threads", type=int, nargs="+", default=[2, 4, 8], help="encode_all pool sizes")
    ap.add_argument("--formats", nargs="+", default=list(exports.EXPORT_FORMATS))
    ap.add_argument("--json", type=Path, help="write the numbers here too")
    args = ap.parse_args()

    formats = tuple(args.formats)
    print(f"exports from {Path(exports.__file__).parent}; {args.layers} layers, best-of-{args.repeat}; "
          f"min / median ms (* = emulated: the old API lacks the argument)")
    results = {}
    for size in args.sizes:
        for kind in args.kinds:
            layers = KINDS[kind](args.layers, size)
            rows, sizes = components(layers, formats, args.repeat, args.threads)
            results[f"{kind}-{size}"] = {"ms": rows, "bytes": sizes}
            print(f"\n{kind} {size}x{size}")
            for name, (best, median) in rows.items():
                print(f"  {name:28s} {best:8.1f} {median:8.1f}")
            print("  sizes KiB: " + ", ".join(f"{k} {v / 1024:.0f}" for k, v in sizes.items()))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
