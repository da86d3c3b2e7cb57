"""Are batch-invariant captions (worker/accel/caption_decode.py) token-identical on the GPU? (issue 12, item 4)

One process, bf16, the full-size synthetic Qwen2.5-VL text encoder with its generation config set like the
real model's (sampling with top_k=1, repetition penalty 1.05), English prompt, 512 new tokens (random
weights never meet an end token). The Captioner with `caption_batch_invariant=True` (batch-1 prefill,
fixed batch of 8, one decode step captured in a CUDA graph):

  image A alone three times, B alone twice; A and B in three batches of 8 at other rows with other mates,
  and in a short batch of 3 (padded to 8): the first differing token of each against the row alone
  (None = identical). Also: the same decode without the CUDA graph (eager), and the authors' `generate`
  (batch 1, eager) for the first `--ref-tokens` tokens, both for information. Timings: prefill per
  image, decode per batch of 8 x 512 tokens, warm-up (graph capture), peak memory.

If any comparison differs, the script looks for the first decode step whose logits differ (bitwise)
between A alone and A in the first batch of 8, and whether the prefills of A agree run to run.

  PYTHONUNBUFFERED=1 python bench/caption_invariance.py --out $OUT
  python bench/caption_invariance.py --size tiny --tokens 12 --ref-tokens 8 --out /tmp/ci     # CPU smoke test
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from worker.accel.caption_decode import FixedBatchDecoder, Selection, prefill  # noqa: E402
from worker.accel.captioner import Captioner, no_cudnn_sdpa, prompt_image_for, reference_caption_ids  # noqa: E402
from worker.accel.options import SpeedOptions  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402

SHAPES = ((640, 640), (640, 480), (480, 640), (600, 600), (700, 500), (512, 640), (640, 560), (560, 640),
          (660, 520), (520, 660))
REAL_LIKE = dict(do_sample=True, top_k=1, top_p=0.001, temperature=0.1, repetition_penalty=1.05)


def first_diff(a: list[int] | None, b: list[int] | None) -> int | None:
    if a is None or b is None:
        return None
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), None if len(a) == len(b) else min(len(a), len(b)))


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small", "tiny"], default="full")
    ap.add_argument("--tokens", type=int, default=512)
    ap.add_argument("--ref-tokens", type=int, default=64, help="tokens of the authors' generate for A (0: skip)")
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    ap.add_argument("--diagnose", action="store_true", help="trace logits step by step even when all agree")
    args = ap.parse_args(argv)
    t_start, device, res = gt.start(args)
    path = os.path.join(args.out, "caption_invariance.json")

    def save():
        res["elapsed_s"] = round(time.perf_counter() - t_start, 1)
        with open(path, "w") as f:
            json.dump(res, f, indent=1, default=str)

    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    te = pipe.text_encoder
    for name, value in REAL_LIKE.items():
        setattr(te.generation_config, name, value)
    res["build_s"] = round(build_s, 1)
    res["generation_config"] = {k: getattr(te.generation_config, k) for k in [*REAL_LIKE, "eos_token_id"]}
    images = [prompt_image_for(pipe, sample_image(w, h, seed=i), 640) for i, (w, h) in enumerate(SHAPES)]
    a, b, others = images[0], images[5], images[1:5] + images[6:]
    opts = SpeedOptions.for_device(device).replace(caption_batch_invariant=True, caption_batch_sizes=(1, 8))
    cap = Captioner(pipe, opts)
    selection = Selection.from_config(te.generation_config)
    n = args.tokens
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    mem0 = torch.cuda.memory_allocated() if device == "cuda" else 0

    # --- prefill alone: time per image, and bitwise agreement run to run ---------------------------
    def prefill_image(image):
        inputs = pipe.vl_processor(text=[pipe.image_caption_prompt_en], images=[image], return_tensors="pt").to(device)
        with no_cudnn_sdpa() if device == "cuda" else torch.no_grad():
            return prefill(te, inputs, selection)

    prefill_image(a)  # first call: lazy initialisation
    pre_times, lengths = [], []
    for image in images[:8]:
        row, s = gt.timed(prefill_image, image)
        pre_times.append(round(s, 3))
        lengths.append(row.length)
    pa1, pa2 = prefill_image(a), prefill_image(a)
    res["prefill"] = {
        "s_per_image": pre_times, "prompt_tokens": lengths,
        "A_twice_bitwise_equal": all(torch.equal(x, y) for x, y in zip(pa1.keys + pa1.values, pa2.keys + pa2.values))
        and pa1.first_token == pa2.first_token,
    }
    print("prefill", res["prefill"], flush=True)
    save()

    # --- warm-up (captures the decode step) -------------------------------------------------------
    _, warm_s = gt.timed(cap.warmup, 640)
    decoder = next(iter(cap._decoders.values()))
    res["warmup_s"] = round(warm_s, 2)
    res["graph_capture_s"] = round(decoder.capture_s, 2)
    res["graph_used"] = decoder.graph is not None
    res["graph_capture_error"] = decoder.capture_error
    print("warm-up", warm_s, "capture", decoder.capture_s, "graph", decoder.graph is not None, flush=True)

    times, ids = {}, {}

    def gen(name, imgs):
        out, s = gt.timed(cap.generate_ids, imgs, True, n)
        times[name] = round(s, 3)
        ids[name] = out
        print(name, times[name], "s", flush=True)
        return out

    a_alone = [gen(f"A alone #{i + 1}", [a])[0] for i in range(3)]
    b_alone = [gen(f"B alone #{i + 1}", [b])[0] for i in range(2)]
    batches = {
        "batch 8: A row 0, B row 3": [a, others[0], others[1], b, *others[2:6]],
        "batch 8: B row 2, A row 5": [others[7], others[6], b, others[5], others[4], a, others[3], others[2]],
        "batch 8: B row 0, A row 7": [b, *others[1:7], a],
        "batch 3 (padded to 8): A row 1, B row 2": [others[0], a, b],
    }
    comparisons = {
        "A alone run 1 vs run 2": first_diff(a_alone[0], a_alone[1]),
        "A alone run 1 vs run 3": first_diff(a_alone[0], a_alone[2]),
        "B alone run 1 vs run 2": first_diff(b_alone[0], b_alone[1]),
    }
    for name, batch in batches.items():
        out = gen(name, batch)
        comparisons[f"A: alone vs {name}"] = first_diff(a_alone[0], out[batch.index(a)])
        comparisons[f"B: alone vs {name}"] = first_diff(b_alone[0], out[batch.index(b)])
    comparisons["A and B captions differ at"] = first_diff(a_alone[0], b_alone[0])
    res["comparisons_first_diff"] = comparisons
    res["times_s"] = times
    batch8 = [times[k] for k in times if k.startswith("batch 8")]
    res["batch8_s"] = batch8
    res["per_job_caption_s_batch8"] = round(min(batch8) / 8, 3)
    res["decode_step_ms_batch8"] = round((min(batch8) - 8 * min(pre_times)) / (n - 1) * 1000, 2)
    print("comparisons", comparisons, flush=True)
    save()

    # --- the same decode without the graph, and the authors' generate (information) ----------------
    eager = FixedBatchDecoder(te, selection, 8, decoder.length, use_graph=False)
    with no_cudnn_sdpa() if device == "cuda" else torch.no_grad():
        eager_ids, eager_s = gt.timed(eager.decode, [prefill_image(a)], n)
    res["eager_decode"] = {"A_s": round(eager_s, 2), "first_diff_vs_graph": first_diff(a_alone[0], eager_ids[0])}
    del eager
    if args.ref_tokens:
        with no_cudnn_sdpa() if device == "cuda" else torch.no_grad():
            torch.manual_seed(0)
            ref, ref_s = gt.timed(reference_caption_ids, pipe, a, True, args.ref_tokens)
        res["authors_generate"] = {"tokens": args.ref_tokens, "s": round(ref_s, 2),
                                   "first_diff_vs_invariant": first_diff(ref, a_alone[0][: args.ref_tokens])}
    print("eager / authors", res["eager_decode"], res.get("authors_generate"), flush=True)
    save()

    # --- diagnosis when something differs: first decode step whose logits differ ------------------
    invariant = all(v is None for k, v in comparisons.items() if not k.startswith("A and B"))
    res["invariant"] = invariant
    if not invariant or args.diagnose:
        with no_cudnn_sdpa() if device == "cuda" else torch.no_grad():
            batch = batches["batch 8: A row 0, B row 3"]
            rows = [prefill_image(im) for im in batch]
            alone_ids = decoder.decode([rows[0]], n, trace_row=0)
            alone_trace = decoder.trace
            batch_ids = decoder.decode(rows, n, trace_row=0)
            batch_trace = decoder.trace
            again_ids = decoder.decode([rows[0]], n, trace_row=0)
            again_trace = decoder.trace

        def step_diff(t1, t2):
            for i, (x, y) in enumerate(zip(t1, t2)):
                if not torch.equal(x, y):
                    return {"step": i + 1, "max_abs": float((x - y).abs().max())}
            return None

        res["diagnosis"] = {
            "tokens alone vs batch": first_diff(alone_ids[0], batch_ids[0]),
            "tokens alone vs alone": first_diff(alone_ids[0], again_ids[0]),
            "logits alone vs batch (first differing decode step)": step_diff(alone_trace, batch_trace),
            "logits alone vs alone": step_diff(alone_trace, again_trace),
        }
        print("diagnosis", res["diagnosis"], flush=True)
    if device == "cuda":
        res["peak_allocated_gib"] = round(torch.cuda.max_memory_allocated() / 2**30, 2)
        res["model_gib"] = round(mem0 / 2**30, 2)
        res["decode_buffers_gib"] = round(sum(t.numel() * t.element_size() for t in decoder.k + decoder.v) / 2**30, 3)
    save()
    print("\n== summary ==")
    print("identical everywhere:", invariant, comparisons)
    print("batch of 8 x", n, "tokens:", batch8, "s; per job", res["per_job_caption_s_batch8"], "s; prefill",
          pre_times, "; peak", res.get("peak_allocated_gib"), "GiB")
    print("done", round(time.perf_counter() - t_start, 1), "s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
