"""The auto-caption of a decompose job, written together with those of jobs still waiting (issue 12 item 4).

Decoding a caption reads the 7B text encoder's weights once per token; a batch of eight reads them
once per token for all eight. So when a worker is about to caption a job, it looks at the queues it
serves for other auto-caption jobs still waiting, fetches their inputs (a bounded wait), captions them
with its own job and leaves each caption in Redis (storage/captions.py) for whichever worker runs that
job. That worker finds it and skips its own captioning.

What a user can rely on:
- The caption a job gets never depends on which jobs were captioned with it: captions are batched
  only where the captioner is batch-invariant (`DecomposePipeline.batches_captions`); elsewhere each
  is the authors' call for that image alone. A stored caption is used only where its key matches:
  the same model and captioner flavour, the same input bytes, language and resolution.
- Looking ahead only reads the queues; it never takes, reorders, loses or duplicates a job. Captions
  are written only while their job is still queued (a canceled job gets none).
- It never costs the running job more than its bounds (`caption_ahead_jobs`, `caption_ahead_fetch_s`),
  and any fault while looking ahead (Redis, storage, a bad input, a caption that raises for another
  job's image) only means "caption alone": the running job's own caption is never at stake.
"""

from __future__ import annotations

import hashlib
import json
import logging
import time
from concurrent.futures import ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from layerq import metrics
from layerq.errors import ObjectNotFound
from layerq.queues import DECOMPOSE_QUEUES

if TYPE_CHECKING:
    from PIL import Image

    from layerq.messages import DecomposeMessage
    from worker.runtime import WorkerRuntime

log = logging.getLogger(__name__)

SCAN = 64
"""Queued jobs looked at per queue (oldest first): enough to find a batch among prompted jobs."""
FETCH_THREADS = 4


@dataclass
class Waiting:
    """A waiting auto-caption job whose input was fetched for captioning ahead."""

    job_id: str
    use_en_prompt: bool
    resolution: int
    key: str
    image: Image.Image


def caption_key(flavour: str, input_bytes: bytes, use_en_prompt: bool, resolution: int) -> str:
    """Names everything a caption depends on, so a different image, language, resolution, model or
    captioner never matches."""
    digest = hashlib.sha256(input_bytes).hexdigest()
    canon = json.dumps({"flavour": flavour, "input": digest, "en": bool(use_en_prompt), "res": int(resolution)},
                       sort_keys=True)
    return hashlib.sha256(canon.encode()).hexdigest()


def caption_for(rt: WorkerRuntime, msg: DecomposeMessage, image: Image.Image, input_bytes: bytes) -> str:
    """The caption of an auto-caption job: the one written ahead for it if it matches, else its own,
    written now together with up to `caption_ahead_jobs` waiting jobs' (when looking ahead is on)."""
    pipeline, params = rt.pipeline, msg.params
    key = caption_key(pipeline.caption_flavour, input_bytes, params.use_en_prompt, params.resolution)
    stored = _stored(rt, msg.job_id)
    if stored is not None and stored.get("key") == key:
        metrics.CAPTIONS_AHEAD.labels("used").inc()
        return str(stored["text"])
    waiting: list[Waiting] = []
    if rt.settings.caption_ahead_on(pipeline.fast_captions) and rt.settings.caption_ahead_jobs > 0:
        waiting = _look_ahead(rt, msg.job_id)
    try:
        return _caption_with(rt, image, params.use_en_prompt, params.resolution, msg.job_id, waiting)
    finally:
        _release(rt, [w.job_id for w in waiting])


def _stored(rt: WorkerRuntime, job_id: str) -> dict[str, Any] | None:
    try:
        captions = rt.services.captions
        return captions.get(job_id) if captions is not None else None
    except Exception:  # Redis hiccup: the job captions itself
        log.warning("job %s: could not read a caption written ahead; captioning it here", job_id, exc_info=True)
        return None


# --- looking ahead --------------------------------------------------------------------------------
def _look_ahead(rt: WorkerRuntime, own_id: str) -> list[Waiting]:
    """Claim and fetch up to `caption_ahead_jobs` waiting auto-caption jobs. Never raises."""
    try:
        ids = _candidates(rt, own_id)
        claimed = rt.services.captions.claim(ids, rt.name, _claim_ttl_s(rt), rt.settings.caption_ahead_jobs)
    except Exception:
        log.warning("job %s: looking ahead failed; captioning it alone", own_id, exc_info=True)
        return []
    if not claimed:
        return []
    try:
        return _fetch(rt, claimed)
    except Exception:
        log.warning("job %s: fetching waiting jobs' inputs failed; captioning it alone", own_id, exc_info=True)
        _release(rt, claimed)
        return []


def _claim_ttl_s(rt: WorkerRuntime) -> float:
    # Long enough for the fetch and a batch of captions (a minute or so on the GPU, more on a CPU);
    # a lapsed claim only lets another worker caption the job again, never harms it.
    return rt.settings.caption_ahead_fetch_s + 600.0


def _queues(rt: WorkerRuntime) -> list[str]:
    """The decompose queues this worker serves: their jobs are the ones it or its peers run next."""
    served = rt.liveness.queues if rt.liveness is not None else list(DECOMPOSE_QUEUES)
    return [q for q in served if q in DECOMPOSE_QUEUES]


def _candidates(rt: WorkerRuntime, own_id: str) -> list[str]:
    """Waiting auto-caption jobs, those on the broker (next to run) first, then the oldest queued."""
    ids: list[str] = []
    for queue in _queues(rt):
        ids += rt.jobs.waiting_ids(queue, SCAN)
    ids = [i for i in dict.fromkeys(ids) if i != own_id]
    if not ids:
        return []
    flavour, now = rt.pipeline.caption_flavour, time.time()
    out = []
    for rec, stored in zip(rt.jobs.get_many(ids), rt.services.captions.get_many(ids)):
        if not rec or rec.get("status") != "queued" or rec.get("kind") != "decompose":
            continue  # canceled, expired, started meanwhile, or gone
        params = rec.get("params") or {}
        if str(params.get("prompt") or "").strip():
            continue  # has a prompt: nothing to caption
        if rec.get("deadline") and rec["deadline"] <= now:
            continue  # will expire unrun
        if stored is not None and stored.get("flavour") == flavour:
            continue  # already captioned ahead by a worker like this one
        out.append(rec["id"])
    return out


def _fetch(rt: WorkerRuntime, job_ids: list[str]) -> list[Waiting]:
    """Fetch and check the inputs of claimed jobs, in parallel, waiting at most `caption_ahead_fetch_s`.
    A job whose input is missing, unreadable, invalid or late is left out (and its claim dropped)."""
    from worker.decompose import load_input

    recs = {r["id"]: r for r in rt.jobs.get_many(job_ids) if r}
    pool = ThreadPoolExecutor(min(FETCH_THREADS, len(job_ids)), thread_name_prefix="caption-ahead")
    futures = {job_id: pool.submit(rt.store.get, recs[job_id]["input_key"]) for job_id in job_ids if job_id in recs}
    done, _ = wait(list(futures.values()), timeout=rt.settings.caption_ahead_fetch_s)
    pool.shutdown(wait=False, cancel_futures=True)  # a slow fetch finishes in the background, unused
    flavour, out, left_out = rt.pipeline.caption_flavour, [], []
    for job_id in job_ids:
        future = futures.get(job_id)
        outcome = "missing" if future is None else "slow" if future not in done else ""
        if not outcome:
            try:
                data = future.result()
                params = recs[job_id]["params"]
                use_en, resolution = bool(params.get("use_en_prompt", True)), int(params.get("resolution", 640))
                image = load_input(data, rt.settings)
                out.append(Waiting(job_id, use_en, resolution, caption_key(flavour, data, use_en, resolution), image))
                continue
            except ObjectNotFound:
                outcome = "missing"
            except Exception as exc:  # storage fault, an input that fails the checks: its own run says so
                outcome = "fault"
                log.info("caption ahead: job %s left out: %s", job_id, exc)
        metrics.CAPTIONS_AHEAD.labels(outcome).inc()
        left_out.append(job_id)
    _release(rt, left_out)
    return out


# --- captioning ------------------------------------------------------------------------------------
def _caption_with(rt: WorkerRuntime, image: Image.Image, use_en: bool, resolution: int, own_id: str,
                  waiting: list[Waiting]) -> str:
    """Caption the own image with the waiting jobs of its language and resolution (one batch where
    batched), then any others by their group; store the waiting jobs' captions. Only the own
    caption's failure raises; without batch-mates it is exactly the caption the job writes alone."""
    pipeline = rt.pipeline
    same = [w for w in waiting if (w.use_en_prompt, w.resolution) == (use_en, resolution)]
    own: str | None = None
    if same and pipeline.batches_captions:
        try:
            own, *theirs = pipeline.caption_images([image, *(w.image for w in same)], use_en, resolution)
            _store(rt, own_id, list(zip(same, theirs)))
        except Exception:
            log.warning("job %s: captioning waiting jobs failed; captioning it alone", own_id, exc_info=True)
            own = None
        same = []  # captioned together, or not at all
    if own is None:
        own = pipeline.caption_images([image], use_en, resolution)[0]
    rest = same + [w for w in waiting if (w.use_en_prompt, w.resolution) != (use_en, resolution)]
    groups: dict[tuple[bool, int], list[Waiting]] = {}
    for w in rest:
        groups.setdefault((w.use_en_prompt, w.resolution), []).append(w)
    for (en, res), group in groups.items():
        batches = [group] if pipeline.batches_captions else [[w] for w in group]
        for batch in batches:
            try:
                texts = pipeline.caption_images([w.image for w in batch], en, res)
            except Exception:  # that job's own run will caption (and report) it
                log.warning("job %s: captioning waiting jobs %s failed", own_id, [w.job_id for w in batch],
                            exc_info=True)
                continue
            _store(rt, own_id, list(zip(batch, texts)))
    return own


def _store(rt: WorkerRuntime, own_id: str, captioned: list[tuple[Waiting, str]]) -> None:
    for w, text in captioned:
        entry = {"key": w.key, "text": text, "flavour": rt.pipeline.caption_flavour, "by": rt.name,
                 "with": own_id, "at": time.time()}
        try:
            written = rt.services.captions.offer(w.job_id, entry, rt.name)
        except Exception:
            log.warning("caption ahead: could not store job %s's caption", w.job_id, exc_info=True)
            continue
        metrics.CAPTIONS_AHEAD.labels("written" if written else "not_queued").inc()


def _release(rt: WorkerRuntime, job_ids: list[str]) -> None:
    if not job_ids:
        return
    try:
        rt.services.captions.release(job_ids, rt.name)
    except Exception:  # the claims lapse by themselves
        log.info("caption ahead: could not drop claims on %s", job_ids, exc_info=True)
