"""A progress bar over many jobs (tqdm), driven by each job's event stream (`/v1/jobs/{id}/events`).

Jobs are followed one after another: a job that ended while an earlier one was followed answers its
stream with `done` at once, so the whole wait holds one stream (one API thread) at a time."""

from __future__ import annotations

from tqdm import tqdm

from layerq.client import TERMINAL, LayerqClient


def follow_jobs(client: LayerqClient, job_ids: list[str], timeout_s: float = 24 * 3600.0) -> list[dict]:
    """Follow every job until it ends, showing denoising steps done over all jobs; return the final records."""
    finals: dict[str, dict] = {}
    totals: dict[str, int] = {}
    steps: dict[str, int] = {}
    with tqdm(total=0, unit="step", desc="jobs 0/%d" % len(job_ids), dynamic_ncols=True) as bar:

        def show(job_id: str, status: str, stage: str, step: int, total: int) -> None:
            totals[job_id], steps[job_id] = total, step
            bar.total = sum(totals.values())
            bar.n = sum(steps.values())
            bar.set_description(f"jobs {len(finals)}/{len(job_ids)}")
            bar.set_postfix_str(status if status in TERMINAL else f"{status}:{stage}")
            bar.refresh()

        for job_id in job_ids:
            def update(event: dict, job_id: str = job_id) -> None:
                show(job_id, event["status"], event.get("stage", ""), event.get("step") or 0, event.get("total") or 0)

            final = client.follow(job_id, timeout_s=timeout_s, on_update=update)
            finals[job_id] = final
            prog = final.get("progress") or {}
            total = prog.get("total") or 0
            show(job_id, final["status"], prog.get("stage", ""), total, total)
    return [finals[j] for j in job_ids]
