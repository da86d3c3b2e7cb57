"""A progress bar over many jobs (tqdm), driven by polling their status."""

from __future__ import annotations

import time

from tqdm import tqdm

from layerq.client import TERMINAL, LayerqClient


def follow_jobs(client: LayerqClient, job_ids: list[str], poll_s: float = 0.3) -> list[dict]:
    """Poll until every job ends, showing denoising steps done over all jobs; return the final records."""
    finals: dict[str, dict] = {}
    with tqdm(total=0, unit="step", desc="jobs 0/%d" % len(job_ids), dynamic_ncols=True) as bar:
        while len(finals) < len(job_ids):
            done_steps, total_steps, stages = 0, 0, set()
            for job_id in job_ids:
                job = finals.get(job_id) or client.get(job_id)
                if job["status"] in TERMINAL:
                    finals[job_id] = job
                prog = job.get("progress") or {}
                stages.add(job["status"] if job["status"] in TERMINAL else prog.get("stage", job["status"]))
                total = prog.get("total") or job["params"].get("num_inference_steps", 0)
                total_steps += total
                done_steps += total if job["status"] in TERMINAL else prog.get("step", 0)
            bar.total = total_steps
            bar.n = done_steps
            bar.set_description(f"jobs {len(finals)}/{len(job_ids)}")
            bar.set_postfix_str(",".join(sorted(stages)))
            bar.refresh()
            if len(finals) < len(job_ids):
                time.sleep(poll_s)
    return [finals[j] for j in job_ids]
