"""The sections of bench/gpu_bench.py; each takes the shared `Context` and returns a dict of numbers."""

from __future__ import annotations

import statistics
from dataclasses import dataclass, field

import torch

from bench import gpu_timing as gt
from worker.accel.synthetic import sample_image
from worker.acceleration import FastDecomposer, SpeedOptions, prepare, prompt_image_for

PROMPT = (
    "A summer sale poster: a bold yellow title 'SUMMER SALE' across the top on a deep blue sky, three "
    "white clouds, a red beach umbrella and two striped deck chairs on golden sand in the middle, a "
    "surfboard leaning on the umbrella, small black text '50% OFF ALL ITEMS' at the bottom right, and a "
    "soft shadow under the chairs; flat illustration style with clean edges and bright colours."
)
SEED = 777


@dataclass
class Context:
    pipe: object
    args: object
    device: str
    results: dict
    fast: FastDecomposer | None = None
    ref_latents: torch.Tensor | None = None
    refcap_latents: torch.Tensor | None = None
    refcap_ids: list | None = None
    fast_ids: dict = field(default_factory=dict)
    image: object = field(default_factory=lambda: sample_image(640, 640, seed=0))

    def job(self, **overrides) -> dict:
        kw = dict(
            negative_prompt=" ",
            true_cfg_scale=4.0,
            layers=4,
            resolution=640,
            num_inference_steps=self.args.steps,
            cfg_normalize=True,
            use_en_prompt=True,
            generator=torch.Generator(device=self.device).manual_seed(SEED),
        )
        kw.update(overrides)
        return kw


def _run(ctx: Context, fn, watch_syncs=False, **overrides) -> dict:
    rec = gt.StepRecorder(watch_syncs=watch_syncs)
    with gt.count_sync_warnings() as syncs:
        _, seconds = gt.timed(fn, image=ctx.image, callback_on_step_end=rec, **ctx.job(**overrides))
    step = rec.median_step_s()
    out = {"e2e_s": round(seconds, 2), "step_s": round(step, 4) if step else None, "steps": rec.num_steps}
    if watch_syncs:
        out["syncs_in_loop"] = len(syncs)
        out["sync_examples"] = syncs[:2]
    host = rec.host_times
    if len(host) > 1:
        out["host_step_s"] = round(statistics.median(b - a for a, b in zip(host, host[1:])), 4)
    return {"row": out, "latents": rec.latents}


def _err(latents, ref) -> float | None:
    if latents is None or ref is None or latents.shape != ref.shape:
        return None
    return round(gt.rel_err(latents, ref), 5)


def fast_options(ctx: Context) -> SpeedOptions:
    if ctx.device != "cuda":  # CPU smoke test: exercise the lossless switches that run on a CPU
        return SpeedOptions.for_device("cpu").replace(
            cache_negative_embeds=True, caption_static_cache=True, caption_cache_entries=64
        )
    a = ctx.args
    opts = SpeedOptions.for_device("cuda")
    attention = None if a.attention == "none" else a.attention
    return opts.replace(attention_backend=attention, compile_blocks=not a.no_compile, cuda_graphs=a.cuda_graphs)


def ensure_fast(ctx: Context) -> FastDecomposer:
    if ctx.fast is None:
        opts = fast_options(ctx)
        fast, prep_s = gt.timed(prepare, ctx.pipe, opts)
        sections = ctx.args.sections.split(",")
        with_captions = "captions" in sections or "autocap" in sections
        warm, warm_s = gt.timed(fast.warmup, [(640, 4)], captions=with_captions)
        ctx.fast = fast
        ctx.results["prepare"] = {
            "options": opts.describe(),
            "prepare_s": round(prep_s, 1),
            "warmup_s": round(warm_s, 1),
            "warmup_items_s": {k: round(v, 1) for k, v in warm.items()},
            "attention_backend": fast.attention_backend,
            "attention_probes": [p.__dict__ for p in fast.attention_probes],
        }
        print("prepare", ctx.results["prepare"], flush=True)
    return ctx.fast


# --- sections ------------------------------------------------------------------------------------
def section_ref(ctx: Context) -> dict:
    r = _run(ctx, ctx.pipe, watch_syncs=True, prompt=PROMPT)
    ctx.ref_latents = r["latents"]
    neg, neg_s = gt.timed(ctx.pipe.encode_prompt, prompt=" ", device=ctx.pipe._execution_device)
    return {**r["row"], "negative_encode_s": round(neg_s, 4)}


def section_fast(ctx: Context) -> dict:
    fast = ensure_fast(ctx)
    gt.reset_peak()
    first = _run(ctx, fast, watch_syncs=True, prompt=PROMPT)
    second = _run(ctx, fast, prompt=PROMPT)
    return {
        "first_job": first["row"],
        "steady_job": second["row"],
        "first_over_steady": round(first["row"]["e2e_s"] / second["row"]["e2e_s"], 3),
        "rel_err_first": _err(first["latents"], ctx.ref_latents),
        "rel_err_steady": _err(second["latents"], ctx.ref_latents),
        "run_to_run_err": _err(first["latents"], second["latents"]),
    }


def section_ablate(ctx: Context) -> dict:
    """Per-step time of each transformer switch alone, on the prepared pipeline."""
    from worker.accel import attention

    fast = ensure_fast(ctx)
    transformer = ctx.pipe.transformer
    best = fast.attention_backend or "native"
    steps = ctx.args.ablate_steps
    rows = {}

    def measure(name):
        r = _run(ctx, fast, prompt=PROMPT, num_inference_steps=steps)
        rows[name] = {"step_s": r["row"]["step_s"], "host_step_s": r["row"].get("host_step_s")}
        print("  ablate", name, rows[name], flush=True)

    compiled = fast.options.compile_blocks
    measure(f"{'compiled' if compiled else 'eager'} + {best} (fast path)")
    with torch.compiler.set_stance("force_eager"):
        measure(f"eager + {best}")
        attention.apply_backend(transformer, "native")
        measure("eager + native (reference)")
    if compiled and best != "native":
        measure("compiled + native")  # recompiles in step 0, which the step times leave out
    attention.apply_backend(transformer, best)
    overhead = {"eager": None, "compiled": None}
    with torch.compiler.set_stance("force_eager"):
        overhead["eager"] = host_overhead_ms(ctx.pipe)
    if compiled:
        overhead["compiled"] = host_overhead_ms(ctx.pipe)
    print("  host overhead ms per transformer call (tiny input)", overhead, flush=True)
    return {"ablate_steps": steps, "rows": rows, "host_overhead_ms_per_call": overhead}


def host_overhead_ms(pipe, calls: int = 10) -> float:
    """Wall time of one transformer call on a 96-token image: the host's launch cost, GPU time ~0.

    The denoising loop reads nothing back, so the host runs ahead of the GPU; CUDA graphs can only help
    where this cost approaches the GPU time of a real call.
    """
    t = pipe.transformer
    dev, dtype = pipe._execution_device, t.dtype
    args = dict(
        hidden_states=torch.randn(1, 96, t.config.in_channels, device=dev, dtype=dtype),
        encoder_hidden_states=torch.randn(1, 16, t.config.joint_attention_dim, device=dev, dtype=dtype),
        encoder_hidden_states_mask=None,
        timestep=torch.tensor([0.5], device=dev, dtype=dtype),
        img_shapes=[[(1, 4, 4)] * 6],
        additional_t_cond=torch.zeros(1, dtype=torch.long, device=dev),
        return_dict=False,
    )
    for _ in range(3):
        t(**args)
    _, seconds = gt.timed(lambda: [t(**args) for _ in range(calls)])
    return round(seconds / calls * 1000, 2)


def section_rope(ctx: Context) -> dict:
    """Step time with diffusers' complex RoPE vs real RoPE tables, both compiled (one recompile)."""
    from worker.accel.rope import disable_real_rope, enable_real_rope

    fast = ensure_fast(ctx)
    steps = ctx.args.ablate_steps
    rows = {}
    on = fast.options.real_rope
    r = _run(ctx, fast, prompt=PROMPT, num_inference_steps=steps)
    rows[f"real_rope={on} (fast path)"] = r["row"]["step_s"]
    (disable_real_rope if on else enable_real_rope)(ctx.pipe.transformer)
    r = _run(ctx, fast, prompt=PROMPT, num_inference_steps=steps)
    rows[f"real_rope={not on} (step 0 recompiles)"] = r["row"]["step_s"]
    (enable_real_rope if on else disable_real_rope)(ctx.pipe.transformer)
    return {"ablate_steps": steps, "step_s": rows}


def section_lossy(ctx: Context) -> dict:
    fast = ensure_fast(ctx)
    rows = {}
    for steps in (30, 20):
        r = _run(ctx, fast, prompt=PROMPT, num_inference_steps=steps)
        rows[f"{steps} steps"] = {**r["row"], "rel_err_vs_ref": _err(r["latents"], ctx.ref_latents)}
    for interval in (2, 3):
        opts = fast.options.replace(step_cache_interval=interval, step_cache_window=(0.2, 0.8))
        cached = FastDecomposer(ctx.pipe, opts)  # shares the prepared transformer; not re-applied
        cached.captioner, cached._negative = fast.captioner, fast._negative
        r = _run(ctx, cached, prompt=PROMPT)
        sc = cached.last_step_cache
        rows[f"step cache every {interval} in 20-80%"] = {
            **r["row"],
            "rel_err_vs_ref": _err(r["latents"], ctx.ref_latents),
            "transformer_calls": {"computed": sc.computed_calls, "reused": sc.reused_calls},
        }
    for name, row in rows.items():
        print("  lossy", name, row, flush=True)
    return {"rows": rows}


def section_refcap(ctx: Context) -> dict:
    pipe = ctx.pipe
    te = pipe.text_encoder
    record = {}

    def generate(*a, **k):
        out, secs = gt.timed(type(te).generate, te, *a, **k)
        record["ids"] = out[0, k["input_ids"].shape[1] :].tolist()
        record["prompt_tokens"] = int(k["input_ids"].shape[1])
        record["seconds"] = secs
        return out

    te.generate = generate
    try:
        r = _run(ctx, pipe, prompt="")
    finally:
        del te.generate
    ctx.refcap_latents, ctx.refcap_ids = r["latents"], record["ids"]
    return {
        **r["row"],
        "caption_s": round(record["seconds"], 2),
        "caption_new_tokens": len(record["ids"]),
        "caption_prompt_tokens": record["prompt_tokens"],
        "decompose_s": round(r["row"]["e2e_s"] - record["seconds"], 2),
    }


def _images(n: int) -> list:
    sizes = [(640, 640), (720, 540), (540, 720), (800, 600), (640, 640), (600, 800), (700, 700), (640, 480)]
    return [sample_image(*sizes[i % len(sizes)], seed=i) for i in range(n)]


def _first_divergence(a: list, b: list) -> int:
    for i, (x, y) in enumerate(zip(a, b)):
        if x != y:
            return i
    return min(len(a), len(b))


def section_captions(ctx: Context) -> dict:
    fast = ensure_fast(ctx)
    cap = fast.captioner
    tokens = ctx.args.caption_tokens
    imgs = _images(8)
    pimgs = [prompt_image_for(ctx.pipe, im, 640) for im in imgs]
    out = {"new_tokens": tokens}
    ids1, t1 = gt.timed(cap.generate_ids, [pimgs[0]], True, tokens)
    ids1b, t1b = gt.timed(cap.generate_ids, [pimgs[1]], True, tokens)
    _, t1c = gt.timed(cap.generate_ids, [pimgs[0]], True, tokens)
    out["batch1_s"] = [round(t1, 2), round(t1b, 2), round(t1c, 2)]
    ids8, t8 = gt.timed(cap.generate_ids, pimgs, True, tokens)
    _, t8b = gt.timed(cap.generate_ids, pimgs, True, tokens)
    out["batch8_s"] = [round(t8, 2), round(t8b, 2)]
    out["batch8_per_job_s"] = round(min(t8, t8b) / 8, 3)
    out["batch1_per_job_s"] = round(min(t1b, t1c), 3)
    out["batched_equals_single"] = [ids8[0] == ids1[0], ids8[1] == ids1b[0]]
    out["batched_vs_single_first_divergence"] = [
        _first_divergence(ids8[0], ids1[0]),
        _first_divergence(ids8[1], ids1b[0]),
    ]
    if ctx.refcap_ids is not None and tokens == len(ctx.refcap_ids):
        out["fast_equals_reference"] = ids1[0] == ctx.refcap_ids
        out["fast_vs_reference_first_divergence"] = _first_divergence(ids1[0], ctx.refcap_ids)
    _, miss_s = gt.timed(fast.caption, imgs[2], True, 640)
    _, hit_s = gt.timed(fast.caption, imgs[2], True, 640)
    out["cache"] = {"miss_s": round(miss_s, 2), "hit_s": round(hit_s, 4), "hits": cap.hits}
    ctx.fast_ids["img0"] = ids1[0]
    return out


def section_autocap(ctx: Context) -> dict:
    fast = ensure_fast(ctx)
    fast.captioner._cache.clear()
    one = _run(ctx, fast, prompt="")
    out = {"single_job": {**one["row"], "rel_err_vs_refcap": _err(one["latents"], ctx.refcap_latents)}}
    imgs = [ctx.image] + _images(8)[1:]
    fast.captioner._cache.clear()
    _, cap8_s = gt.timed(fast.caption_batch, imgs, True, 640)
    job = _run(ctx, fast, prompt="")  # ctx.image: its caption is now cached
    out["queue8"] = {
        "caption_batch8_s": round(cap8_s, 2),
        "caption_per_job_s": round(cap8_s / 8, 3),
        "decompose_job_s": job["row"]["e2e_s"],
        "per_job_s": round(cap8_s / 8 + job["row"]["e2e_s"], 2),
        "cache_hits": fast.captioner.hits,
    }
    return out


def section_fp8(ctx: Context) -> dict:
    from worker.accel.transformer import quantize_fp8

    fast = ensure_fast(ctx)
    n, q_s = gt.timed(quantize_fp8, ctx.pipe.transformer)
    gt.reset_peak()
    warm = _run(ctx, fast, prompt=PROMPT, num_inference_steps=2)
    r = _run(ctx, fast, prompt=PROMPT)
    return {
        "linears": n,
        "quantize_s": round(q_s, 1),
        "warmup_e2e_s": warm["row"]["e2e_s"],
        **r["row"],
        "rel_err_vs_ref": _err(r["latents"], ctx.ref_latents),
        "weights_gib_after": round(torch.cuda.memory_allocated() / 2**30, 2) if gt.cuda() else None,
    }


SECTIONS = {
    "ref": section_ref,
    "fast": section_fast,
    "ablate": section_ablate,
    "lossy": section_lossy,
    "rope": section_rope,
    "refcap": section_refcap,
    "captions": section_captions,
    "autocap": section_autocap,
    "fp8": section_fp8,
}
