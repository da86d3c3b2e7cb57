"""Job records in a real Redis: guarded transitions, delivery caps, progress only while running."""

from __future__ import annotations

import threading
import uuid

import pytest

from layerq.errors import IllegalTransition, JobNotFound
from layerq.jobs import ALLOWED, JobStatus, check_transition
from storage.jobs import JobStore, new_job_id


@pytest.fixture
def jobs(redis_url) -> JobStore:
    return JobStore.from_url(redis_url, key_prefix=f"unit{uuid.uuid4().hex[:8]}")


def make_job(jobs: JobStore) -> str:
    job_id = new_job_id()
    jobs.create(job_id, kind="decompose", queue="decompose", params={"layers": 4}, input_key="in.png")
    return job_id


def test_created_job_is_queued_with_a_position(jobs):
    a, b = make_job(jobs), make_job(jobs)
    assert jobs.get(a)["status"] == "queued"
    assert jobs.queue_position("decompose", a) == 0 and jobs.queue_position("decompose", b) == 1
    jobs.begin_attempt(a, max_deliveries=3)
    assert jobs.queue_position("decompose", a) is None and jobs.queue_position("decompose", b) == 0


@pytest.mark.parametrize("queue", ["edit", "cpu"])
def test_a_job_failed_before_it_starts_leaves_its_own_queue(jobs, queue):
    """An edit or compose job failed at enqueue (broker down) or for a bad message: no stale position
    is left in its queue, whether or not the caller names the queue."""
    named, unnamed = new_job_id(), new_job_id()
    for job_id in (named, unnamed):
        jobs.create(job_id, kind="edit" if queue == "edit" else "compose", queue=queue, params={}, input_key="")
    jobs.fail(named, "enqueue_failed", "broker down", queue=queue)
    jobs.fail(unnamed, "invalid_request", "bad message")
    assert jobs.queue_position(queue, named) is None and jobs.queue_position(queue, unnamed) is None
    assert jobs.queued_count(queue) == 0


def test_terminal_statuses_never_change(jobs):
    job = make_job(jobs)
    jobs.begin_attempt(job, max_deliveries=3)
    jobs.succeed(job, {"layers": []}, {"total": 1.0})
    for target in JobStatus:
        with pytest.raises(IllegalTransition):
            jobs.transition(job, target)
    assert jobs.get(job)["status"] == "succeeded"


def test_redelivered_terminal_job_is_skipped(jobs):
    job = make_job(jobs)
    assert jobs.begin_attempt(job, max_deliveries=3).run
    jobs.fail(job, "pipeline_error", "boom")
    again = jobs.begin_attempt(job, max_deliveries=3)
    assert not again.run and again.status == "failed"
    assert jobs.get(job)["attempts"] == 1


def test_deliveries_past_the_cap_fail_with_worker_lost(jobs):
    job = make_job(jobs)
    for n in (1, 2, 3):
        attempt = jobs.begin_attempt(job, max_deliveries=3)
        assert attempt.run and attempt.attempts == n
    lost = jobs.begin_attempt(job, max_deliveries=3)
    assert not lost.run and lost.worker_lost
    rec = jobs.get(job)
    assert rec["status"] == "failed" and rec["error"]["code"] == "worker_lost"


def test_progress_is_written_only_while_running(jobs):
    job = make_job(jobs)
    assert jobs.set_progress(job, "denoising", 1, 10) is JobStatus.QUEUED
    assert jobs.get(job)["progress"]["step"] == 0
    jobs.begin_attempt(job, max_deliveries=3)
    assert jobs.set_progress(job, "denoising", 3, 10) is JobStatus.RUNNING
    assert jobs.get(job)["progress"] == {"stage": "denoising", "step": 3, "total": 10}


def test_only_one_of_racing_finishers_wins(jobs):
    job = make_job(jobs)
    jobs.begin_attempt(job, max_deliveries=3)
    wins: list[str] = []

    def finish(kind: str) -> None:
        try:
            if kind == "ok":
                jobs.succeed(job, {"layers": []}, {})
            else:
                jobs.fail(job, "x", "y")
            wins.append(kind)
        except IllegalTransition:
            pass

    threads = [threading.Thread(target=finish, args=(k,)) for k in ("ok", "fail") * 10]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(wins) == 1 and jobs.get(job)["status"] == {"ok": "succeeded", "fail": "failed"}[wins[0]]


def test_unknown_job_raises_not_found(jobs):
    with pytest.raises(JobNotFound):
        jobs.get("nope")
    with pytest.raises(JobNotFound):
        jobs.transition("nope", JobStatus.RUNNING)


def test_state_machine_table():
    for status in JobStatus:
        assert status.is_terminal() == (not ALLOWED[status])
    check_transition(JobStatus.QUEUED, JobStatus.RUNNING)
    with pytest.raises(IllegalTransition):
        check_transition(JobStatus.CANCELED, JobStatus.RUNNING)


def test_a_job_handed_back_for_a_retry_runs_on_another_live_worker(jobs, redis_url):
    """A delivery of a job running on a live worker is refused as a duplicate; once that worker hands
    the job back for a retry (a transient fault), the retry's delivery runs wherever it lands."""
    from storage.workers import WorkerRegistry

    workers = WorkerRegistry.from_url(redis_url, key_prefix=jobs.prefix)
    workers.beat(["decompose"], "a@host")
    workers.beat(["decompose"], "b@host")
    job = make_job(jobs)
    assert jobs.begin_attempt(job, max_deliveries=3, worker="a@host").run
    refused = jobs.begin_attempt(job, max_deliveries=3, worker="b@host")
    assert not refused.run and refused.duplicate

    assert not jobs.unclaim(job, "b@host")  # only the owner hands a job back
    assert jobs.get(job)["worker"] == "a@host"
    assert jobs.unclaim(job, "a@host")
    retry = jobs.begin_attempt(job, max_deliveries=3 + 1, worker="b@host")
    assert retry.run and retry.attempts == 2
    assert jobs.get(job)["worker"] == "b@host"


def test_a_finished_job_is_not_handed_back(jobs):
    job = make_job(jobs)
    jobs.begin_attempt(job, max_deliveries=3, worker="a@host")
    jobs.succeed(job, {"layers": []}, {})
    assert not jobs.unclaim(job, "a@host")
    assert jobs.get(job)["status"] == "succeeded"


def test_a_tenants_batches_are_indexed_newest_first_and_expired_ones_skipped(jobs):
    from storage.batches import BatchStore
    from storage.jobs import NewJob

    batches = BatchStore(jobs._r, jobs)
    for n in range(3):
        job = new_job_id()
        batches.create(f"b{n}", [NewJob(job, {}, "in.png", batch_id=f"b{n}", tenant="t")], tenant="t",
                       meta={"kind": "decompose"}, all_ids=[job])
    rows = batches.tenant_batch_ids("t", None, 10)
    assert [b for b, _ in rows] == ["b2", "b1", "b0"]
    assert [b for b, _ in batches.tenant_batch_ids("t", rows[0][1], 10)] == ["b1", "b0"]  # a time cursor
    assert batches.tenant_batch_ids("someone-else", None, 10) == []
    jobs._r.delete(jobs.keys.batch("b1"))  # expired
    jobs._r.delete(jobs.keys.batch("b0"))
    jobs._r.hincrby(jobs.keys.batch("b0"), "n_succeeded", 1)  # a late job's counter: no batch revived
    listed = batches.get_many(["b2", "b1", "b0"])
    assert listed[0]["id"] == "b2" and listed[0]["count"] == 1 and listed[1:] == [None, None]
