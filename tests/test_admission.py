"""Fair admission in a real Redis (storage/admission.py): round robin across tenants, interactive
first but bulk never starved, cancel and deadlines of jobs still in a backlog."""

from __future__ import annotations

import time
import uuid

import pytest

from storage.admission import Admission
from storage.client import connect
from storage.jobs import JobStore, NewJob, new_job_id

Q = "decompose"


@pytest.fixture
def fair(redis_url) -> Admission:
    client = connect(redis_url)
    jobs = JobStore(client, key_prefix=f"fair{uuid.uuid4().hex[:8]}", fair=True)
    return Admission(client, jobs, ahead=0, bulk_every=4)


def submit(adm: Admission, tenant: str, n: int, priority: str = "bulk", cancel_after_s: float = 0.0) -> list[str]:
    ids = [new_job_id() for _ in range(n)]
    adm.jobs.create_many([NewJob(i, {}, "in.png", tenant=tenant, priority=priority, cancel_after_s=cancel_after_s)
                          for i in ids])
    return ids


def drain(adm: Admission, n: int) -> list[str]:
    """One worker: start whatever is admitted, admit the next; return the order of admission."""
    order: list[str] = []
    for _ in range(n):
        for job_id in adm._r.zrange(adm.keys.admitted(Q), 0, -1):
            adm.jobs.begin_attempt(job_id, max_deliveries=3)
        order += adm.admit(Q)[0]
    return order


def test_one_tenants_batch_does_not_hold_back_anothers_job(fair):
    a = submit(fair, "A", 200)
    assert fair.admit(Q)[0] == a[:1]  # room for one: no live worker counts as one
    b = submit(fair, "B", 1)
    fair.jobs.begin_attempt(a[0], max_deliveries=3)
    assert fair.admit(Q)[0] == b  # B's turn comes before A's second job
    assert drain(fair, 3) == a[1:4]


def test_interactive_goes_first_but_bulk_gets_every_fourth_turn(fair):
    bulk = submit(fair, "A", 10)
    inter = submit(fair, "B", 10, priority="interactive")
    order = drain(fair, 8)
    assert [j in bulk for j in order].count(True) == 2  # turns 4 and 8
    assert order[:3] == inter[:3]


def test_positions_follow_the_round_robin(fair):
    a = submit(fair, "A", 5)
    b = submit(fair, "B", 2)
    recs = {r["id"]: r for r in fair.jobs.get_many(a + b)}
    # Nothing admitted yet: B's first job waits behind at most A's first.
    assert fair.position(recs[b[0]]) == 1
    assert fair.position(recs[a[3]]) == 3 + 2  # A's 3 ahead, and both of B's
    fair.admit(Q)
    assert fair.position(fair.jobs.get(a[0])) == 0


def test_a_job_canceled_in_its_backlog_never_reaches_the_broker(fair):
    a = submit(fair, "A", 3)
    fair.jobs.cancel([a[0]])
    assert fair.admit(Q)[0] == [a[1]]
    assert fair.jobs.get(a[0])["status"] == "canceled"


def test_deadlines_expire_jobs_in_a_backlog_and_at_the_worker(fair):
    a = submit(fair, "A", 3, cancel_after_s=0.05)
    time.sleep(0.1)
    sent, expired = fair.admit(Q)
    assert sent == [] and expired == a  # all three popped and expired on the way
    b = submit(fair, "B", 2, cancel_after_s=0.05)
    time.sleep(0.1)
    assert sorted(fair.expire_due(Q)) == sorted(b)
    c = submit(fair, "C", 1, cancel_after_s=0.05)
    (admitted,), _ = fair.admit(Q)
    time.sleep(0.1)
    attempt = fair.jobs.begin_attempt(admitted, max_deliveries=3)
    assert not attempt.run and attempt.status == "expired"
    rec = fair.jobs.get(c[0])
    assert rec["error"]["code"] == "expired" and fair.jobs.transition_log(c[0])[-1].startswith("queued>expired@")


def test_expired_counts_in_its_batch(redis_url):
    from storage.batches import BatchStore

    client = connect(redis_url)
    jobs = JobStore(client, key_prefix=f"fair{uuid.uuid4().hex[:8]}", fair=True)
    adm = Admission(client, jobs)
    ids = [new_job_id() for _ in range(2)]
    BatchStore(client, jobs).create("b1", [NewJob(i, {}, "x", batch_id="b1", tenant="A", cancel_after_s=0.01)
                                          for i in ids], tenant="A", meta={}, all_ids=ids)
    time.sleep(0.05)
    adm.expire_due(Q)
    counts = BatchStore(client, jobs).get("b1")["counts"]
    assert counts["expired"] == 2 and counts["queued"] == 0
