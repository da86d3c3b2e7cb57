"""Measured service times, and the estimates built on them (job ETAs, batch dry runs).

A job's time is modelled as `fixed + steps × step_s (+ caption_s when the prompt is empty)`, with
`fixed` covering input, decoding, exports and uploads. Each term is the median of the last `KEEP`
measurements per (resolution, layers, quality) bucket, since the per-step cost grows with the first two
and the lossy qualities skip transformer calls; a median shrugs off a worker's cold first job, which a
running mean would carry for many jobs. A bucket never measured is estimated from a measured one of
the same quality where there is one, scaled by the number of latent tokens the transformer sees."""

from __future__ import annotations

import json
import statistics
from typing import Any

import redis

from storage.keys import Keys

KEEP = 10  # measurements kept per term and bucket: recent ones, since a machine's pace drifts


def bucket(params: dict[str, Any]) -> str:
    """`<resolution>x<layers>`, plus `-<quality>` for a lossy `quality` (`640x4-fast`): those modes run
    fewer transformer calls per requested step, so their times must not mix with `exact` ones."""
    layers = params.get("layers", 4)
    if layers == "auto":  # the model is asked for max_layers; dropping afterwards costs nothing
        layers = params.get("max_layers", 8)
    quality = params.get("quality") or "exact"
    return f"{int(params.get('resolution', 640))}x{int(layers)}" + ("" if quality == "exact" else f"-{quality}")


def _shape(b: str) -> tuple[int, int]:
    res, layers = b.split("-")[0].split("x")
    return int(res), int(layers)


def _quality(b: str) -> str:
    return b.partition("-")[2] or "exact"


def _tokens(b: str) -> float:
    res, layers = _shape(b)
    return (res / 16) ** 2 * (layers + 1)


class ServiceTimes:
    def __init__(self, client: redis.Redis, key_prefix: str, kind: str = "decompose") -> None:
        self._r = client
        self.key = Keys(key_prefix).stats(kind)
        self.samples_key = Keys(key_prefix).stats_samples(kind)

    def record(self, params: dict[str, Any], timings: dict[str, float]) -> None:
        """Fold one finished job's stage timings into the means."""
        steps = max(1, int(params.get("num_inference_steps", 1)))
        b = bucket(params)
        denoise = timings.get("denoising", 0.0)
        caption = timings.get("captioning", 0.0)
        fixed = max(0.0, timings.get("total", 0.0) - denoise - caption)
        update = {f"{b}:step_s": denoise / steps, f"{b}:fixed_s": fixed}
        if not (params.get("prompt") or "").strip():
            update[f"{b}:caption_s"] = caption
        # Read-modify-write without a lock: two workers finishing at once may drop one sample,
        # which a statistic can afford.
        current = self._r.hmget(self.samples_key, list(update))
        samples, medians = {}, {}
        for (name, v), old in zip(update.items(), current):
            kept = (json.loads(old) if old else [])[-(KEEP - 1):] + [round(v, 5)]
            samples[name] = json.dumps(kept)
            medians[name] = repr(statistics.median(kept))
        pipe = self._r.pipeline(transaction=False)
        pipe.hset(self.samples_key, mapping=samples)
        pipe.hset(self.key, mapping=medians)
        pipe.execute()

    def estimate_s(self, params: dict[str, Any], means: dict[str, str] | None = None) -> float | None:
        """Estimated seconds of one job with these params, or None before any job was measured.
        Pass `means` (from `snapshot()`) to estimate many jobs with one read."""
        means = self.snapshot() if means is None else means
        b = bucket(params)
        # The nearest measured bucket by token count: of the same quality when one was measured, else
        # an `exact` one (it over-estimates a lossy job: the safe side for an ETA), else any.
        quality = _quality(b)
        known = sorted({k.split(":")[0] for k in means}, key=lambda k: (
            _quality(k) != quality, _quality(k) != "exact", abs(_tokens(k) - _tokens(b))))
        if not known:
            return None
        source = b if f"{b}:step_s" in means else known[0]
        scale = _tokens(b) / _tokens(source)
        step_s = float(means[f"{source}:step_s"]) * scale
        fixed_s = float(means[f"{source}:fixed_s"]) * (_shape(b)[1] / _shape(source)[1])
        total = fixed_s + int(params.get("num_inference_steps", 50)) * step_s
        if not (params.get("prompt") or "").strip():
            caption = means.get(f"{source}:caption_s") or next(
                (means[k] for k in means if k.endswith(":caption_s")), None
            )
            total += float(caption) if caption is not None else 0.0
        return total

    def snapshot(self) -> dict[str, str]:
        return self._r.hgetall(self.key)
