"""A short text table of a gpu_bench results dict (printed last, so it lands in the reply's tail)."""

from __future__ import annotations


def _g(d: dict, *path, default=None):
    for key in path:
        if not isinstance(d, dict) or key not in d:
            return default
        d = d[key]
    return d


def summary(r: dict) -> str:
    env = r.get("env", {})
    lines = [
        f"card {env.get('gpu', 'cpu')} | torch {env.get('torch')} | diffusers {env.get('diffusers')} | "
        f"transformers {env.get('transformers')} | {env.get('date_utc')}",
        f"ceilings {r.get('ceilings')} | build {r.get('build')}",
        f"{'measure':52s} {'reference':>12s} {'layerq fast':>12s}",
    ]

    def row(name, ref, fast):
        lines.append(f"{name:52s} {str(ref):>12s} {str(fast):>12s}")

    row("step, 2 transformer calls (s, median)", _g(r, "ref", "step_s"), _g(r, "fast", "steady_job", "step_s"))
    row("decomposition with prompt, 50 steps, e2e (s)", _g(r, "ref", "e2e_s"), _g(r, "fast", "steady_job", "e2e_s"))
    row("first job after warm-up (s) / ratio to steady", "", f"{_g(r, 'fast', 'first_job', 'e2e_s')}/"
        f"{_g(r, 'fast', 'first_over_steady')}")
    row("rel. error of final latents vs ref", "0", _g(r, "fast", "rel_err_steady"))
    row("host syncs inside the loop (steps 1..N-1)", _g(r, "ref", "syncs_in_loop"),
        _g(r, "fast", "first_job", "syncs_in_loop"))
    row("peak allocated / reserved (GiB)", _peak(r, "ref"), _peak(r, "fast"))
    row("auto-caption 512 tokens, batch 1 (s)", _g(r, "refcap", "caption_s"), _g(r, "captions", "batch1_per_job_s"))
    row("auto-caption, batch 8, per job (s)", "", _g(r, "captions", "batch8_per_job_s"))
    row("decomposition with auto-caption, one job (s)", _g(r, "refcap", "e2e_s"),
        _g(r, "autocap", "single_job", "e2e_s"))
    row("auto-caption job in a queue of 8, per job (s)", _g(r, "refcap", "e2e_s"),
        _g(r, "autocap", "queue8", "per_job_s"))
    row("peak with captions (GiB)", _peak(r, "refcap"), _peak(r, "autocap"))
    prep = r.get("prepare", {})
    if prep:
        lines.append(f"prepare: backend {prep.get('attention_backend')} | prepare {prep.get('prepare_s')} s | "
                     f"warm-up {prep.get('warmup_s')} s {prep.get('warmup_items_s')}")
        for p in prep.get("attention_probes", []):
            lines.append(f"  attn {p['name']:18s} ok={p['ok']} masked_ok={p['masked_ok']} ms={p['ms']} "
                         f"err={p['rel_err']} {p['note'][:60]}")
    for name, v in (_g(r, "ablate", "rows") or {}).items():
        lines.append(f"  ablate {name:44s} step {v.get('step_s')} s (host {v.get('host_step_s')})")
    for name, v in (_g(r, "rope", "step_s") or {}).items():
        lines.append(f"  rope   {name:44s} step {v} s")
    for name, v in (_g(r, "lossy", "rows") or {}).items():
        lines.append(f"  lossy {name:30s} e2e {v.get('e2e_s')} s  step {v.get('step_s')}  err {v.get('rel_err_vs_ref')}")
    if "fp8" in r:
        f = r["fp8"]
        lines.append(f"  lossy fp8: e2e {f.get('e2e_s')} s step {f.get('step_s')} err {f.get('rel_err_vs_ref')} "
                     f"peak {f.get('peak')} {f.get('error', '')[:200]}")
    if "captions" in r:
        c = r["captions"]
        lines.append(f"  captions: b1 {c.get('batch1_s')} b8 {c.get('batch8_s')} batched==single "
                     f"{c.get('batched_equals_single')} div {c.get('batched_vs_single_first_divergence')} "
                     f"fast==ref {c.get('fast_equals_reference')} div {c.get('fast_vs_reference_first_divergence')} "
                     f"cache {c.get('cache')}")
    for name, v in r.items():
        if isinstance(v, dict) and "error" in v:
            lines.append(f"  ERROR in {name}: {v['error'][:300]}")
    if r.get("skipped"):
        lines.append(f"  skipped (time budget): {r['skipped']}")
    lines.append(f"total {r.get('total_s')} s")
    return "\n".join(lines)


def _peak(r: dict, section: str) -> str:
    p = _g(r, section, "peak") or {}
    return f"{p.get('allocated_gib')}/{p.get('reserved_gib')}" if p else ""
