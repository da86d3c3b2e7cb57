"""Retention (issue 11.4): a finished job's objects are deleted once its `retain_s` has passed, by the
reaper the CPU workers run; never a running job's; a second pass is harmless. On both backends, on a
real Redis; then through a whole stack (API, GPU worker, CPU worker reaping on its own)."""

from __future__ import annotations

import io
import time
import uuid
from typing import Any

import pytest
from PIL import Image

from layerq import objects
from layerq.client import LayerqClient
from layerq.config import Settings
from layerq.jobs import JobStatus
from storage.jobs import NewJob
from storage.services import Services
from tests.helpers import job_objects, wait_for
from storage.retention import RECHECK_S
from worker.reaper import reap_once


@pytest.fixture(params=["local", "s3"])
def services(request: pytest.FixtureRequest, redis_url: str, tmp_path) -> Services:
    values: dict[str, Any] = {"redis_url": redis_url, "key_prefix": f"ret{uuid.uuid4().hex[:8]}",
                              "storage_dir": str(tmp_path / "data"), "signing_secret": "s"}
    if request.param == "s3":
        s3 = request.getfixturevalue("s3_settings_overrides")
        values.update({**s3, "s3_bucket": f"{s3['s3_bucket']}-ret{uuid.uuid4().hex[:6]}"})
    return Services.open(Settings.from_env({}, **values))


def _job_with_objects(svc: Services, retain_s: int) -> str:
    job_id = uuid.uuid4().hex
    svc.jobs.create_many([NewJob(job_id, {"layers": 2}, objects.input_key(job_id), retain_s=retain_s)])
    for key in (objects.input_key(job_id), objects.layer_key(job_id, 0), objects.manifest_key(job_id)):
        svc.store.put(key, b"x", "image/png")
    svc.jobs.begin_attempt(job_id, max_deliveries=3, worker="w1")
    return job_id


def test_a_finished_job_is_reaped_after_retain_s_and_a_second_pass_is_harmless(services: Services):
    svc = services
    job_id = _job_with_objects(svc, retain_s=1)
    svc.jobs.succeed(job_id, {"layers": []}, {})
    sealed = svc.jobs.get(job_id)
    assert sealed["expires_at"] == pytest.approx(sealed["finished_at"] + 1)

    early = svc.jobs.retention.reap(svc.store, now=time.time() - 5)
    assert early.jobs == [] and len(svc.store.list(objects.job_prefix(job_id))) == 3

    first = svc.jobs.retention.reap(svc.store, now=time.time() + 2)
    assert first.jobs == [job_id] and first.objects == 3
    assert svc.store.list(objects.job_prefix(job_id)) == []
    assert svc.jobs.get_many([job_id]) == [None]

    second = svc.jobs.retention.reap(svc.store, now=time.time() + 2)
    assert second.jobs == [] and second.objects == 0


def test_a_running_job_is_never_reaped(services: Services):
    svc = services
    job_id = _job_with_objects(svc, retain_s=1)
    assert svc.jobs.status(job_id) is JobStatus.RUNNING
    # Far past its creation-time index entry: still running, so only postponed.
    report = svc.jobs.retention.reap(svc.store, now=time.time() + svc.settings.job_ttl_s + 10)
    assert report.jobs == [] and report.postponed == 1
    assert len(svc.store.list(objects.job_prefix(job_id))) == 3
    # Once it ends its own retention starts then, not at its creation.
    svc.jobs.fail(job_id, "boom", "failed on purpose")
    assert svc.jobs.retention.reap(svc.store, now=time.time()).jobs == []
    assert svc.jobs.retention.reap(svc.store, now=time.time() + 2).jobs == [job_id]


def test_sealing_twice_does_not_extend_and_a_canceled_queued_job_is_sealed(services: Services):
    svc = services
    job_id = uuid.uuid4().hex
    svc.jobs.create_many([NewJob(job_id, {}, objects.input_key(job_id), retain_s=5)])
    svc.store.put(objects.input_key(job_id), b"x")
    svc.jobs.cancel([job_id])
    first = svc.jobs.get(job_id)["expires_at"]
    svc.jobs.retention.seal([job_id], now=time.time() + 100)
    assert svc.jobs.get(job_id)["expires_at"] == first
    assert svc.jobs.retention.reap(svc.store, now=first + 1).jobs == [job_id]
    assert svc.store.list(objects.job_prefix(job_id)) == []


def test_a_parent_waits_for_its_unfinished_children_and_its_lineage_goes_with_it(services: Services):
    svc = services
    grandparent = _job_with_objects(svc, retain_s=3600)
    svc.jobs.succeed(grandparent, {"layers": []}, {})
    parent = _job_with_objects(svc, retain_s=1)
    svc.lineage.link(parent, grandparent, 0)
    svc.jobs.succeed(parent, {"layers": []}, {})
    # A compose made from the parent, not run yet: it will read the parent's layers.
    child = uuid.uuid4().hex
    svc.jobs.create_many([NewJob(child, {}, "", kind="compose", queue="cpu", retain_s=3600)])
    svc.lineage.link(child, parent, None)

    waiting = svc.jobs.retention.reap(svc.store, now=time.time() + 2)
    assert waiting.jobs == [] and waiting.postponed == 1
    assert len(svc.store.list(objects.job_prefix(parent))) == 3

    svc.jobs.begin_attempt(child, max_deliveries=3, worker="w1", queue="cpu")
    svc.jobs.succeed(child, {"layers": []}, {})
    done = svc.jobs.retention.reap(svc.store, now=time.time() + RECHECK_S + 2)
    assert done.jobs == [parent] and svc.store.list(objects.job_prefix(parent)) == []
    # No link names the reaped parent any more; the child and the grandparent live on.
    assert svc.lineage.of(parent) == (None, [])
    assert svc.lineage.of(child) == (None, [])
    assert svc.lineage.of(grandparent) == (None, [])
    assert svc.jobs.get(child)["status"] == "succeeded" and svc.jobs.get(grandparent)["status"] == "succeeded"


def test_a_source_waits_for_the_unfinished_children_of_its_cached_copies(services: Services):
    svc = services
    source = _job_with_objects(svc, retain_s=1)
    svc.jobs.succeed(source, {"layers": [{"index": 0, "key": objects.layer_key(source, 0)}]}, {})
    # An identical request answered from the cache: a job that owns no objects, pointing at the source's.
    cached = uuid.uuid4().hex
    svc.jobs.create_cached(cached, params={}, source=svc.jobs.get(source), tenant="")
    # A compose made from the cached job, not run yet: it will read the *source's* layer objects.
    child = uuid.uuid4().hex
    svc.jobs.create_many([NewJob(child, {}, "", kind="compose", queue="cpu", retain_s=3600)])
    svc.lineage.link(child, cached, None, owner_id=source)
    assert svc.lineage.of(source) == (None, [])  # the lineage shown stays child → cached job

    waiting = svc.jobs.retention.reap(svc.store, now=time.time() + 2)
    assert source not in waiting.jobs and waiting.postponed >= 1
    assert len(svc.store.list(objects.job_prefix(source))) == 3

    svc.jobs.begin_attempt(child, max_deliveries=3, worker="w1", queue="cpu")
    svc.jobs.succeed(child, {"layers": []}, {})
    done = svc.jobs.retention.reap(svc.store, now=time.time() + RECHECK_S + 2)
    assert done.jobs == [source] and svc.store.list(objects.job_prefix(source)) == []
    assert svc.jobs.retention._r.exists(svc.jobs.keys.readers(source)) == 0


def test_a_job_retained_past_the_job_ttl_stays_in_its_tenants_list(redis_url: str, tmp_path):
    # A short job TTL and a long retention maximum: a job retained that long must stay listed (GET
    # /v1/jobs) as long as its record lives, through later writes to the index and its expiry.
    settings = Settings.from_env({}, redis_url=redis_url, key_prefix=f"ret{uuid.uuid4().hex[:8]}",
                                 storage_dir=str(tmp_path / "data"), signing_secret="s", job_ttl_s=60,
                                 retain_max_s=3600)
    svc = Services.open(settings)
    job_id = uuid.uuid4().hex
    svc.jobs.create_many([NewJob(job_id, {}, objects.input_key(job_id), tenant="t1", retain_s=3600)])
    svc.jobs.begin_attempt(job_id, max_deliveries=3, worker="w1")
    svc.jobs.succeed(job_id, {"layers": []}, {})
    r = svc.jobs.retention._r
    assert r.ttl(svc.jobs.keys.tenant_jobs("t1")) >= r.ttl(svc.jobs.keys.job(job_id)) > 60
    # Another job of the tenant written well past the job TTL (but within the retention) trims the
    # index; the retained job's entry is kept.
    later = time.time() + 600
    pipe = svc.jobs.pipeline()
    svc.jobs.index_by_creation(pipe, svc.jobs.keys.tenant_jobs("t1"), {"other": int(later * 1e6)}, later)
    pipe.execute()
    assert [j for j, _ in svc.jobs.tenant_job_ids("t1", None, 10)] == ["other", job_id]


def test_a_job_that_expired_in_the_queue_is_sealed(services: Services):
    svc = services
    job_id = uuid.uuid4().hex
    # A deadline already past when the sweep runs (cancel_after_s of a microsecond).
    svc.jobs.create_many([NewJob(job_id, {}, objects.input_key(job_id), retain_s=5, cancel_after_s=1e-6)])
    assert svc.admission.expire_due("decompose") == [job_id]
    rec = svc.jobs.get(job_id)
    assert rec["status"] == "expired" and rec["expires_at"] == pytest.approx(rec["finished_at"] + 5)


def test_the_reaper_lock_lets_one_worker_reap_at_a_time(services: Services):
    svc = services
    assert svc.jobs.retention.lock("a", ttl_s=30)
    assert reap_once(svc, holder="b").jobs == []  # b finds the lock taken: no pass
    svc.jobs.retention.unlock("a")
    assert svc.jobs.retention.lock("b", ttl_s=30)
    svc.jobs.retention.unlock("b")


def _png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (64, 48), (200, 30, 30)).save(buf, "PNG")
    return buf.getvalue()


@pytest.mark.e2e
@pytest.mark.timeout(600)
def test_the_cpu_worker_reaps_a_short_lived_job_and_the_cache_forgets_it(make_stack):
    stack = make_stack(storage="local", reap_interval_s=1.0)
    client = LayerqClient(stack.url)
    resp = client.http.post(f"{stack.url}/v1/jobs", files={"image": ("a.png", _png(), "image/png")},
                            data={"params": '{"layers": 2, "num_inference_steps": 2}', "retain_s": "3"})
    assert resp.status_code == 202, resp.text
    job = client.wait(resp.json()["id"], timeout_s=300)
    assert job["status"] == "succeeded" and job["retained_until"], job
    assert job_objects(stack, job["id"])
    # Within the retention the same request is answered from the cache, for no longer than the source.
    again = client.http.post(f"{stack.url}/v1/jobs", files={"image": ("a.png", _png(), "image/png")},
                             data={"params": '{"layers": 2, "num_inference_steps": 2, "seed": %d}'
                                   % job["params"]["seed"], "retain_s": "3600"}).json()
    if again.get("cached_from"):
        assert again["retained_until"] <= job["retained_until"]
    wait_for(lambda: not job_objects(stack, job["id"]), timeout_s=120, interval_s=0.5, what="objects reaped")
    gone = client.http.get(f"{stack.url}/v1/jobs/{job['id']}")
    assert gone.status_code == 404
