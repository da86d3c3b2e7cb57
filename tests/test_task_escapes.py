"""An exception that escapes a job's Celery task (raised before `run_job` starts, or one `run_job`
does not expect) fails that job with code `internal` instead of leaving it `queued` or `running`
forever: Celery acks a task that raised, so no message would be left to run it.

A focused unit test on a real Redis job store: the task body is called in this process (not through
a broker), with a stand-in runtime holding that store, and the escape is forced at the start of the
job's run. The job store unreachable while a worker claims a job is no escape: a transient fault,
retried."""

from __future__ import annotations

import uuid
from types import SimpleNamespace

import pytest
import redis
from celery import Celery
from pydantic import BaseModel

from layerq.messages import DECOMPOSE_TASK
from layerq.queues import COMBINE_TASK, COMPOSE_TASK, EDIT_TASK
from storage.jobs import JobStore, new_job_id
from worker import runtime, tasks
from worker.decompose import TransientJobError
from worker.layersets import jobs as layerset_jobs


@pytest.fixture
def jobs(redis_url) -> JobStore:
    return JobStore.from_url(redis_url, key_prefix=f"unit{uuid.uuid4().hex[:8]}")


@pytest.fixture(scope="module")
def app() -> Celery:
    app = Celery("escapes")  # never started: only its task bodies are called
    tasks.register(app)
    layerset_jobs.register(app)
    return app


@pytest.fixture
def rt(jobs, monkeypatch):
    deleted: list[str] = []
    stand_in = SimpleNamespace(jobs=jobs, store=SimpleNamespace(delete_prefix=deleted.append), deleted=deleted)
    monkeypatch.setattr(runtime, "_runtime", stand_in)
    return stand_in


def _job(jobs: JobStore, kind: str) -> str:
    job_id = new_job_id()
    jobs.create(job_id, kind=kind, queue=kind, params={"layers": 4}, input_key="in.png")
    return job_id


def test_an_escape_fails_the_job_and_is_reraised(rt):
    job_id = _job(rt.jobs, "decompose")
    with pytest.raises(ImportError), tasks.failing_job_on_escape({"job_id": job_id}):
        raise ImportError("no module named 'worker.models.broken'")
    rec = rt.jobs.get(job_id)
    assert rec["status"] == "failed"
    assert rec["error"] == {"code": "internal",
                            "message": "worker error: ImportError: no module named 'worker.models.broken'"}
    assert rt.deleted  # its objects go, like any failed job's


def test_a_finished_job_stays_finished_and_a_retry_is_no_escape(rt):
    from celery.exceptions import Retry

    done = _job(rt.jobs, "decompose")
    rt.jobs.begin_attempt(done, max_deliveries=3)
    rt.jobs.succeed(done, {"layers": []}, {})
    with pytest.raises(RuntimeError), tasks.failing_job_on_escape({"job_id": done}):
        raise RuntimeError("after the end")
    assert rt.jobs.get(done)["status"] == "succeeded"  # the first terminal transition wins

    retried = _job(rt.jobs, "decompose")
    with pytest.raises(Retry), tasks.failing_job_on_escape({"job_id": retried}):
        raise Retry("back off")
    assert rt.jobs.get(retried)["status"] == "queued"


@pytest.mark.parametrize(("task_name", "kind"), [(DECOMPOSE_TASK, "decompose"), (EDIT_TASK, "edit"), (COMPOSE_TASK, "compose"), (COMBINE_TASK, "combine")],)
def test_job_tasks_fail_their_job_when_setup_raises(app, rt, monkeypatch, task_name, kind):
    import worker.decompose

    def broken_setup(*_args, **_kwargs):
        raise KeyError("pipeline")

    monkeypatch.setattr(worker.decompose, "run_job", broken_setup)
    monkeypatch.setattr(layerset_jobs, "run_layerset_job", broken_setup)
    job_id = _job(rt.jobs, kind)
    with pytest.raises(KeyError):
        app.tasks[task_name].run({"job_id": job_id})
    rec = rt.jobs.get(job_id)
    assert rec["status"] == "failed" and rec["error"]["code"] == "internal"
    assert "KeyError" in rec["error"]["message"]


class _Message(BaseModel):  # a layer-set job's message, as far as the claim reads it
    job_id: str


def _redis_down(*_args, **_kwargs):
    raise redis.ConnectionError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")


@pytest.fixture
def worker_rt(rt, monkeypatch):
    """The stand-in runtime with what `run_job` and `run_layerset_job` read of a worker's."""
    monkeypatch.setattr(rt, "settings", SimpleNamespace(max_deliveries=3, worker_heartbeat_s=15.0), raising=False)
    monkeypatch.setattr(rt, "name", "w1@host", raising=False)
    monkeypatch.setattr(rt, "liveness", None, raising=False)
    return rt


def _claim_decompose(rt, job_id: str) -> None:
    from worker.decompose import run_job

    run_job(rt, {"job_id": job_id, "input_key": "in.png", "params": {"layers": 4}})


def _claim_compose(rt, job_id: str) -> None:
    layerset_jobs.run_layerset_job(rt, "compose", _Message, {"job_id": job_id}, build=None)  # only its claim runs


@pytest.mark.parametrize(("kind", "claim", "failing"), [
    ("decompose", _claim_decompose, "get"), ("decompose", _claim_decompose, "begin_attempt"),
    ("compose", _claim_compose, "begin_attempt")])
def test_the_store_unreachable_at_the_claim_is_retried_not_failed(worker_rt, monkeypatch, kind, claim, failing):
    """A Redis blip while a worker claims a job is a transient fault (the task retries it with
    backoff), not an escape that would end the job `internal`; nothing has run, the job stays queued."""
    rt = worker_rt
    job_id = _job(rt.jobs, kind)
    with monkeypatch.context() as outage:
        outage.setattr(rt.jobs, failing, _redis_down)
        with pytest.raises(TransientJobError, match="ConnectionError while claiming"):
            claim(rt, job_id)
    rec = rt.jobs.get(job_id)
    assert rec["status"] == "queued" and not rec.get("error")


def test_a_transient_fault_mid_job_hands_the_job_back(worker_rt, monkeypatch):
    """The delivery that hit the fault stops owning the job, so its retry may run on another worker."""
    import worker.decompose
    from worker.decompose import run_job

    def storage_down(*_args, **_kwargs):
        raise TransientJobError("StorageUnavailable: S3 unreachable")

    rt = worker_rt
    monkeypatch.setattr(worker.decompose, "_run_claimed", storage_down)
    job_id = _job(rt.jobs, "decompose")
    with pytest.raises(TransientJobError):
        run_job(rt, {"job_id": job_id, "input_key": "in.png", "params": {"layers": 4}})
    rec = rt.jobs.get(job_id)
    assert rec["status"] == "running" and rec["attempts"] == 1 and not rec.get("worker")


def test_two_deliveries_of_a_cpu_job_in_one_worker_run_it_once(worker_rt):
    """A CPU worker runs jobs in threads under one name: a second delivery of a job that one of its
    threads is running is skipped (begin_attempt alone would let the same worker take it over)."""
    import threading

    rt = worker_rt
    job_id = _job(rt.jobs, "compose")
    inside, release, builds = threading.Event(), threading.Event(), []

    def build(_rt, _msg):
        builds.append(1)
        inside.set()
        assert release.wait(30)
        return {"layers": [], "steps": 0}

    outcomes = []
    first = threading.Thread(target=lambda: outcomes.append(
        layerset_jobs.run_layerset_job(rt, "compose", _Message, {"job_id": job_id}, build)))
    first.start()
    assert inside.wait(30)
    assert layerset_jobs.run_layerset_job(rt, "compose", _Message, {"job_id": job_id}, build) == "running"
    release.set()
    first.join(30)
    assert outcomes == ["succeeded"] and builds == [1]
    assert rt.jobs.get(job_id)["attempts"] == 1
    # Once it ended, a late delivery is skipped by the record (finished), not by this worker's memory.
    assert layerset_jobs.run_layerset_job(rt, "compose", _Message, {"job_id": job_id}, build) == "succeeded"
    assert builds == [1]


def test_the_store_unreachable_when_recording_the_result_is_retried_not_failed(worker_rt, monkeypatch):
    """A finished job whose `succeeded` write fails on a Redis blip is retried (and handed back), not
    failed `internal` with its files dropped."""
    from worker.decompose import DECOMPOSE, JobKind, run_job

    rt = worker_rt
    finished = JobKind(DECOMPOSE.name, DECOMPOSE.queue, DECOMPOSE.parse, lambda *_: {"layers": [], "steps": 0})
    job_id = _job(rt.jobs, "decompose")
    with monkeypatch.context() as outage:
        outage.setattr(rt.jobs, "succeed", _redis_down)
        with pytest.raises(TransientJobError, match="ConnectionError while recording the result"):
            run_job(rt, {"job_id": job_id, "input_key": "in.png", "params": {"layers": 4}}, kind=finished)
    rec = rt.jobs.get(job_id)
    assert rec["status"] == "running" and not rec.get("worker") and not rec.get("error")
    assert not rt.deleted  # nothing of the job's was dropped


@pytest.mark.parametrize(("retries", "outcome"), [(3, "succeeded"), (0, "failed")])
def test_a_layerset_jobs_transient_retries_do_not_count_as_lost_deliveries(worker_rt, retries, outcome):
    """Three deliveries ended by transient faults, then the third retry: it runs (as a decompose job's
    would); only deliveries beyond the cap without retries count as a lost worker's."""
    rt = worker_rt
    job_id = _job(rt.jobs, "compose")
    for _ in range(3):  # each ended by a transient fault and handed back
        assert rt.jobs.begin_attempt(job_id, max_deliveries=9, worker=rt.name, queue="cpu").run
        rt.jobs.unclaim(job_id, rt.name)
    done = layerset_jobs.run_layerset_job(rt, "compose", _Message, {"job_id": job_id},
                                          lambda *_: {"layers": [], "steps": 0}, retries=retries)
    assert done == outcome
    rec = rt.jobs.get(job_id)
    assert rec["status"] == outcome and (outcome == "succeeded" or rec["error"]["code"] == "worker_lost")
