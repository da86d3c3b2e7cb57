"""Issue 12 item 1: the one-pass q/k RMSNorm + RoPE + [text, image] concatenation, measured in one process.

Sections (--sections, in this order; each guarded: an error is recorded and the next runs; a section whose
estimate would end after --budget-s is skipped):

  micro     the job's shapes (S_img 9600, S_txt 283, 24 heads × 128, bf16; projections as views into fused
            Q/K/V GEMM outputs and as three separate outputs): the kernel directly for a sweep of launch
            configs (the fastest is used for the rest of the run), vs the same preparation as Inductor
            compiles it inside the blocks today (norm + real RoPE + cat, dynamic shapes, coordinate-descent
            tuning), alone and followed by SDPA attention; kernel error vs the eager bf16 path and float32
  build     the full-size synthetic pipeline (worker.accel.synthetic)
  ref       the authors' call, 50 steps (final latents = the reference)
  variants  FastDecomposer per switch set (dynamo reset between; SDPA, GELU epilogue, kernel tuning as the
            CUDA defaults have them, FA4 left out): 2-step compile, then --variant-steps timed steps, one
            transformer call profiled per kernel category; variants named in --job-variants also run one
            50-step call: e2e, error vs the authors' call, peak memory

  PYTHONUNBUFFERED=1 python bench/gpu_qkfuse.py --size full --out $OUT
  TRITON_INTERPRET=1 python bench/gpu_qkfuse.py --size small --steps 3 --variant-steps 2 --out /tmp/qk   # CPU smoke
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
import time
import types

import torch

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from bench import gpu_timing as gt  # noqa: E402
from bench.bench_sections import PROMPT, SEED  # noqa: E402
from bench.gpu_round2 import bench_ms  # noqa: E402
from bench.worker_path_gpu import _err, _graphs, _step_row, reference_job  # noqa: E402
from layerq.params import DecomposeParams  # noqa: E402
from worker.accel import joint_attention, qk_norm_rope  # noqa: E402
from worker.accel.decomposer import FastDecomposer  # noqa: E402
from worker.accel.options import SpeedOptions  # noqa: E402
from worker.accel.synthetic import build_pipeline, sample_image  # noqa: E402
from worker.accel.transformer import repeated_blocks  # noqa: E402

EST = {"micro": 60, "build": 25, "ref": 55, "variant": 50, "job": 40}

BASE = dict(attention_backend="native", gelu_epilogue=True, compile_tune_kernels=True, fused_qkv=False,
            fused_qk_norm_rope=False)
VARIANTS = {
    "base": dict(BASE),
    "qknr": dict(BASE, fused_qk_norm_rope=True),
    "qknr+qkv": dict(BASE, fused_qk_norm_rope=True, fused_qkv=True),
    "qknr-opaque": dict(BASE, fused_qk_norm_rope=True, _impl="custom_op"),
    "qkv": dict(BASE, fused_qkv=True),
}
SWEEP = tuple((b, w, p) for p in ("split", "strided") for b, w in ((16, 4), (32, 4), (32, 8), (64, 8)))


# --- micro -----------------------------------------------------------------------------------------
def _micro_inputs(device, s_img, s_txt, heads, dim, fused: bool, seed=0):
    from diffusers.models.normalization import RMSNorm

    g = torch.Generator(device=device).manual_seed(seed)
    width = heads * dim

    def stream(seq):
        if fused:
            out = torch.randn(1, seq, 3 * width, device=device, dtype=torch.bfloat16, generator=g) * 2
            return tuple(c.unflatten(-1, (heads, dim)) for c in out.chunk(3, dim=-1))
        return tuple((torch.randn(1, seq, width, device=device, dtype=torch.bfloat16, generator=g) * 2)
                     .unflatten(-1, (heads, dim)) for _ in range(3))

    norms = types.SimpleNamespace()
    for name in ("norm_q", "norm_k", "norm_added_q", "norm_added_k"):
        n = RMSNorm(dim, eps=1e-6).to(device=device, dtype=torch.bfloat16).requires_grad_(False)
        with torch.no_grad():
            n.weight.copy_(torch.rand(dim, device=device, generator=g) + 0.5)
        setattr(norms, name, n)

    def table(seq):
        angles = torch.rand(seq, dim // 2, device=device, generator=g) * 6.3
        return torch.view_as_real(torch.polar(torch.ones_like(angles), angles))

    return stream(s_img), stream(s_txt), norms, (table(s_img), table(s_txt))


def _kernel_args(img, txt, norms, rope, heads_major):
    return (*img, *txt, norms.norm_q.weight, norms.norm_k.weight, norms.norm_added_q.weight,
            norms.norm_added_k.weight, *rope, 1e-6, heads_major)


def _float32_truth(img, txt, norms, rope):
    """q, k of the authors' formula in float32 throughout (no intermediate bf16 rounding)."""
    outs = []
    for which, (wi, wt) in (("q", (norms.norm_q, norms.norm_added_q)), ("k", (norms.norm_k, norms.norm_added_k))):
        i = 0 if which == "q" else 1
        parts = []
        for x, w, r in ((txt[i], wt.weight, rope[1]), (img[i], wi.weight, rope[0])):
            xf = x.float()
            n = xf * torch.rsqrt(xf.pow(2).mean(-1, keepdim=True) + 1e-6) * w.float()
            cos, sin = r[..., 0].unsqueeze(1), r[..., 1].unsqueeze(1)
            re, im = n.unflatten(-1, (-1, 2)).unbind(-1)
            parts.append(torch.stack((re * cos - im * sin, re * sin + im * cos), -1).flatten(-2))
        outs.append(torch.cat(parts, dim=1))
    return outs


def micro(device: str, s_img: int, s_txt: int, heads: int, dim: int, with_sdpa: bool = False) -> dict:
    from diffusers.models.attention_dispatch import dispatch_attention_fn
    from diffusers.models.transformers import transformer_qwenimage as tq

    from worker.accel import rope as real_rope

    tq.apply_rotary_emb_qwen = real_rope.apply_rotary_emb_qwen  # what enable_real_rope does
    qk_norm_rope.register()
    out: dict = {"shape": dict(s_img=s_img, s_txt=s_txt, heads=heads, dim=dim)}
    seq = s_img + s_txt
    moved = 2 * 3 * seq * heads * dim * 2  # read q, k, v once and write them once, bf16
    out["bytes_per_call_mb"] = round(moved / 1e6, 1)
    options = {"coordinate_descent_tuning": True} if device == "cuda" else None

    def prep_ref(img, txt, norms, rope):
        return joint_attention._norm_rope_cat(norms, img, txt, rope)

    def prep_attn_ref(img, txt, norms, rope):
        q, k, v = joint_attention._norm_rope_cat(norms, img, txt, rope)
        return dispatch_attention_fn(q, k, v, backend=None)

    def prep_attn_kernel(img, txt, norms, rope):
        q, k, v = qk_norm_rope.joint_qkv(img, txt, (norms.norm_q.weight, norms.norm_k.weight),
                                         (norms.norm_added_q.weight, norms.norm_added_k.weight), *rope, 1e-6,
                                         heads_major=True)
        return dispatch_attention_fn(q, k, v, backend=None)

    for fused in (True, False):
        key = "fused_qkv_views" if fused else "separate_outputs"
        img, txt, norms, rope = _micro_inputs(device, s_img, s_txt, heads, dim, fused)
        row: dict = {}
        want = qk_norm_rope.reference(*_kernel_args(img, txt, norms, rope, False))
        truth = _float32_truth(img, txt, norms, rope)
        sweep = {}
        for block, warps, pairs in SWEEP:
            qk_norm_rope.CONFIG.update(block_rows=block, num_warps=warps, pairs=pairs)
            for heads_major in (False, True):
                args = _kernel_args(img, txt, norms, rope, heads_major)
                fn = lambda args=args: qk_norm_rope._run(qk_norm_rope._joint_rows_kernel, *args)  # noqa: E731
                sweep[f"{block}x{warps}x{pairs}{' hm' if heads_major else ''}"] = round(bench_ms(fn), 4)
        row["kernel_sweep_ms"] = sweep
        # Chosen on the heads-major layout: the SDPA variants below use it (FA4's layout is in the sweep too).
        best = min((k for k in sweep if k.endswith(" hm")), key=sweep.get)[: -len(" hm")]
        block, warps, pairs = best.split("x")
        qk_norm_rope.CONFIG.update(block_rows=int(block), num_warps=int(warps), pairs=pairs)
        row["kernel_best"] = best
        row["kernel_ms"] = sweep[best]
        row["kernel_hm_ms"] = sweep[best + " hm"]
        row["kernel_tb_per_s"] = round(moved / row["kernel_ms"] / 1e9, 2)
        got = qk_norm_rope._run(qk_norm_rope._joint_rows_kernel, *_kernel_args(img, txt, norms, rope, False))
        for name, a, b in (("q", got[0], want[0]), ("k", got[1], want[1]), ("v", got[2], want[2])):
            diff = (a.float() - b.float()).abs()
            row[f"{name}_vs_eager_bf16"] = {"max_abs": float(diff.max()), "frac_differ": round(float((diff > 0).float().mean()), 6)}
        for name, a, b, t in (("q", got[0], want[0], truth[0]), ("k", got[1], want[1], truth[1])):
            row[f"{name}_rel_err_vs_float32"] = {"kernel": round(gt.rel_err(a, t), 6), "eager_bf16": round(gt.rel_err(b, t), 6)}
        # Inductor's version of the same preparation (what the compiled blocks run today).
        if not fused and not with_sdpa:  # compile time: the fused-views case is the one that matters
            out[key] = row
            print("micro", key, json.dumps(row), flush=True)
            continue
        torch._dynamo.reset()
        compiled = torch.compile(prep_ref, dynamic=True, options=options)
        t0 = time.perf_counter()
        ref_out = compiled(img, txt, norms, rope)
        gt.sync()
        row["inductor_compile_s"] = round(time.perf_counter() - t0, 1)
        row["inductor_ms"] = round(bench_ms(lambda: compiled(img, txt, norms, rope)), 4)
        row["inductor_tb_per_s"] = round(moved / row["inductor_ms"] / 1e9, 2)
        row["q_kernel_vs_inductor_max_abs"] = float((got[0].float() - ref_out[0].float()).abs().max())
        row["q_rel_err_vs_float32_inductor"] = round(gt.rel_err(ref_out[0], truth[0]), 6)
        # Preparation + SDPA attention, both compiled: includes any layout copy SDPA's kernel needs.
        if fused and with_sdpa:
            for name, fn in (("inductor_then_sdpa_ms", prep_attn_ref), ("kernel_then_sdpa_ms", prep_attn_kernel)):
                torch._dynamo.reset()
                c = torch.compile(fn, dynamic=True)  # untuned on both sides: compile time
                c(img, txt, norms, rope)
                row[name] = round(bench_ms(lambda c=c: c(img, txt, norms, rope)), 4)
            torch._dynamo.reset()
        out[key] = row
        print("micro", key, json.dumps(row), flush=True)
        del img, txt, norms, rope, want, truth, got, ref_out
        gc.collect()
    block, warps, pairs = out["fused_qkv_views"]["kernel_best"].split("x")
    qk_norm_rope.CONFIG.update(block_rows=int(block), num_warps=int(warps), pairs=pairs)
    out["config_used"] = dict(qk_norm_rope.CONFIG)
    return out


# --- variants ----------------------------------------------------------------------------------------
def _call_kwargs(params, image):
    return dict(image=image, prompt=params.prompt, negative_prompt=params.negative_prompt,
                true_cfg_scale=params.true_cfg_scale, layers=params.layers, resolution=params.resolution,
                cfg_normalize=params.cfg_normalize, use_en_prompt=params.use_en_prompt)


def variant(pipe, changes: dict, image, params, steps: int, prev, profile: bool, job: bool, ref_latents, left) -> tuple:
    if prev is not None:
        prev.restore()
    torch._dynamo.reset()
    gc.collect()
    changes = dict(changes)
    qk_norm_rope.IMPL = changes.pop("_impl", "triton_op")
    opts = SpeedOptions.for_device(pipe._execution_device).replace(**changes)
    fast, apply_s = gt.timed(lambda: FastDecomposer(pipe, opts).apply())
    kwargs = _call_kwargs(params, image)
    call: dict = {}
    transformer = pipe.transformer
    forward = transformer.forward

    def recording(*a, **k):  # the first transformer call's inputs, for the profile
        if not call:
            call.update(args=a, kwargs=k)
        return forward(*a, **k)

    row: dict = {"options": opts.describe(), "impl": qk_norm_rope.IMPL, "apply_s": round(apply_s, 1)}
    with torch.inference_mode():
        transformer.forward = recording
        try:
            _, warm_s = gt.timed(fast, num_inference_steps=2, generator=torch.Generator(device="cpu").manual_seed(0),
                                 **kwargs)
        finally:
            del transformer.forward
        rec = gt.StepRecorder()
        g0 = _graphs()
        _, run_s = gt.timed(fast, num_inference_steps=steps, callback_on_step_end=rec,
                            generator=torch.Generator(device=pipe._execution_device).manual_seed(params.seed), **kwargs)
        row.update(warmup_2steps_s=round(warm_s, 1), run_s=round(run_s, 2), **_step_row(rec),
                   step_times_s=[round(t, 4) for t in rec.step_times_s()], graphs_in_run=_graphs() - g0)
        if profile and call:
            row["profile"] = _profile(lambda: transformer(*call["args"], **call["kwargs"]),
                                      len(repeated_blocks(transformer)))
        if job and left() > EST["job"]:
            rec = gt.StepRecorder()
            gt.reset_peak()
            g0 = _graphs()
            _, e2e = gt.timed(fast, num_inference_steps=params.num_inference_steps, callback_on_step_end=rec,
                              generator=torch.Generator(device=pipe._execution_device).manual_seed(params.seed),
                              num_images_per_prompt=1, output_type="pil", **kwargs)
            row["job"] = {"e2e_s": round(e2e, 2), **_step_row(rec), "graphs_compiled": _graphs() - g0,
                          "rel_err_vs_ref": _err(rec.latents, ref_latents), **gt.peak_gib()}
    call.clear()
    return row, fast


def _profile(fn, n_blocks: int) -> dict:
    acts = [torch.profiler.ProfilerActivity.CPU] + ([torch.profiler.ProfilerActivity.CUDA] if gt.cuda() else [])
    fn()
    times = [gt.timed(fn)[1] for _ in range(3)]
    with torch.profiler.profile(activities=acts) as prof:
        fn()
        gt.sync()
    table = gt.kernel_table(prof, n_blocks=n_blocks, top=25)
    return {"call_ms": round(sorted(times)[1] * 1e3, 2), **table}


# --- main ----------------------------------------------------------------------------------------------
def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", choices=["full", "small"], default="full")
    ap.add_argument("--sections", default="micro,build,ref,variants")
    ap.add_argument("--variants", default="base,qknr,qknr+qkv")
    ap.add_argument("--job-variants", default="qknr", help="variants that also run one 50-step call (error vs ref)")
    ap.add_argument("--profile-variants", default="base,qknr,qknr+qkv")
    ap.add_argument("--fallback", default="qknr-opaque", help="run this variant if qknr failed")
    ap.add_argument("--bucket", type=int, default=640)
    ap.add_argument("--layers", type=int, default=4)
    ap.add_argument("--steps", type=int, default=50)
    ap.add_argument("--variant-steps", type=int, default=8)
    ap.add_argument("--micro-sdpa", action="store_true", help="also time compiled prep + SDPA both ways")
    ap.add_argument("--micro-shape", default="9600,283,24,128", help="S_img,S_txt,heads,head_dim")
    ap.add_argument("--budget-s", type=float, default=380)
    ap.add_argument("--out", default=os.environ.get("OUT", "bench-out"))
    args = ap.parse_args(argv)
    t_start, device, res = gt.start(args)
    sections = args.sections.split(",")
    scale = 1.0 if args.size == "full" else 0.1
    path = os.path.join(args.out, f"qkfuse_{args.bucket}.json")
    left = lambda: args.budget_s - (time.perf_counter() - t_start)  # noqa: E731

    save = gt.saver(res, path, t_start)

    def room(section: str) -> bool:
        if EST[section] * scale > left():
            res.setdefault("skipped", []).append(f"{section} ({left():.0f}s left)")
            print("skip", section, flush=True)
            return False
        return True

    guarded = gt.guard(res, save)

    if "micro" in sections and room("micro"):
        s_img, s_txt, heads, dim = (int(x) for x in args.micro_shape.split(","))
        with torch.inference_mode():  # as the pipeline runs (the ops have no autograd formula)
            res["micro"] = guarded("micro", lambda: micro(device, s_img, s_txt, heads, dim, args.micro_sdpa))
        gc.collect()
        if gt.cuda():
            torch.cuda.empty_cache()
    pipe, build_s = gt.timed(build_pipeline, args.size, device)
    res["build_s"] = round(build_s, 1)
    image = sample_image(args.bucket, args.bucket, seed=0)
    params = DecomposeParams(prompt=PROMPT, seed=SEED, num_inference_steps=args.steps, layers=args.layers,
                             resolution=args.bucket)
    ref_latents = None
    if "ref" in sections and room("ref"):
        out = guarded("ref", lambda: reference_job(pipe, image, params, device))
        if out:
            res["ref"], ref_latents = out
            print("ref", res["ref"], flush=True)

    prev = None
    if "variants" in sections:
        res["variants"] = {}
        names = args.variants.split(",")
        i = 0
        while i < len(names):
            name = names[i]
            i += 1
            if not room("variant"):
                break
            out = guarded(f"variant {name}", lambda: variant(
                pipe, VARIANTS[name], image, params, args.variant_steps, prev,
                name in args.profile_variants.split(","), name in args.job_variants.split(","), ref_latents, left))
            if out:
                res["variants"][name], prev = out
                print("variant", name, json.dumps({k: v for k, v in out[0].items() if k != "profile"}), flush=True)
                if "profile" in out[0]:
                    print("profile", name, json.dumps(out[0]["profile"]["categories_ms"]), flush=True)
            elif name == "qknr" and args.fallback and args.fallback not in names:
                names.insert(i, args.fallback)
                prev = None
        if prev is not None:
            prev.restore()
        torch._dynamo.reset()
    save()
    summary(res)
    print("done", round(time.perf_counter() - t_start, 1), "s", flush=True)
    return 0


def summary(res: dict) -> None:
    print("\n== summary ==")
    for key in ("fused_qkv_views", "separate_outputs"):
        row = (res.get("micro") or {}).get(key)
        if row:
            print(f"micro {key}: kernel {row.get('kernel_ms')} ms ({row.get('kernel_best')}, hm {row.get('kernel_hm_ms')}) "
                  f"inductor {row.get('inductor_ms')} ms; +sdpa {row.get('inductor_then_sdpa_ms')} vs {row.get('kernel_then_sdpa_ms')}")
    ref = res.get("ref") or {}
    print(f"ref: e2e {ref.get('e2e_s')} s, step {ref.get('step_s')} s")
    for name, row in (res.get("variants") or {}).items():
        job = row.get("job") or {}
        print(f"variant {name:12s} step {row.get('step_s')} s graphs {row.get('graphs_in_run')} "
              f"call {(row.get('profile') or {}).get('call_ms')} ms job {job.get('e2e_s')} s err {job.get('rel_err_vs_ref')} "
              f"peak {job.get('allocated_gib')}/{job.get('reserved_gib')}")
    if res.get("errors"):
        print("errors:", {k: v[:300] for k, v in res["errors"].items()})


if __name__ == "__main__":
    raise SystemExit(main())
