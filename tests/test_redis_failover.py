"""Losing the Redis host, for real on loopback: one master, one replica, three Sentinels
(layerq/redis_ha.py), the API and two workers on `LAYERQ_REDIS_URL=sentinel://...` with durable
submissions on (`LAYERQ_REDIS_WAIT_REPLICAS=1`). The master is SIGKILLed in the middle of a stream of
tiny submissions; docs/redis-ha.md states what this proves and the bound on unavailability.

Every kind of worker is on the stream: decompose jobs (two GPU-queue workers), compose jobs (the CPU
worker) and edit jobs (an edit worker with the tiny edit model), so each process has to follow the
promotion, and after the failover one job of each kind is submitted again and must finish."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

import pytest
import requests

from layerq.client import LayerqApiError, LayerqClient
from layerq.redis_ha import SentinelGroup
from layerq.sample import sample_png
from storage.client import connect_settings
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

PARAMS = {"layers": 2, "num_inference_steps": 2, "prompt": "x"}
EDIT = {"num_inference_steps": 2, "matte": "chroma"}
SUBMISSIONS = 36
"""Mostly decompositions; every sixth a compose job (CPU worker), every twelfth an edit (edit worker)."""
KILL_AFTER = 12  # accepted submissions before the master dies
UNAVAILABLE_BOUND_S = 60.0
"""The API must answer requests that read jobs again within this long of the kill (measured: ~5-8 s on
loopback with down-after-milliseconds 2500; see BENCHMARKS.md)."""


@pytest.fixture(scope="module")
def ha(tmp_path_factory):
    group = SentinelGroup(tmp_path_factory.mktemp("sentinels")).start()
    yield group
    group.stop()


@pytest.fixture(scope="module")
def stack(make_stack, ha):
    s = make_stack(workers=2, edit_workers=1, redis_url=ha.url, redis_wait_replicas=1, redis_wait_timeout_ms=2000,
                   worker_heartbeat_s=1.0)
    yield s
    s.stop()  # before the Sentinels go: the workers hand back or ack their jobs first


@pytest.fixture(scope="module")
def source(stack):
    """A finished layer set: the source of the compose and edit jobs on the stream."""
    client = LayerqClient(stack.url, timeout_s=60)
    final = client.wait(client.submit(sample_png(96, 96), {**PARAMS, "seed": 999}, cache=False)["id"], timeout_s=300)
    assert final["status"] == "succeeded", final.get("error")
    return final["id"]


def kind_of(n: int) -> str:
    return "edit" if n % 12 == 7 else "compose" if n % 6 == 2 else "decompose"


def submit_one(client: LayerqClient, kind: str, source: str, n: int) -> dict:
    if kind == "edit":
        return client.edit(source, n % 2, "make it red", {**EDIT, "seed": n}, cache=False)
    if kind == "compose":
        return client.compose(source, [{"op": "hide", "index": n % 2}])
    return client.submit(sample_png(96, 96), {**PARAMS, "seed": n}, cache=False)


@dataclass
class Outcome:
    n: int
    kind: str = "decompose"
    job_id: str | None = None
    error: str = ""
    at: float = field(default_factory=time.monotonic)


def submit_all(client: LayerqClient, source: str, outcomes: list[Outcome], accepted_enough: threading.Event) -> None:
    for n in range(SUBMISSIONS):
        kind = kind_of(n)
        try:
            job = submit_one(client, kind, source, n)
            outcomes.append(Outcome(n, kind, job_id=job["id"]))
        except (LayerqApiError, requests.RequestException) as exc:
            outcomes.append(Outcome(n, kind, error=f"{type(exc).__name__}: {exc}"))
        if sum(o.job_id is not None for o in outcomes) >= KILL_AFTER:
            accepted_enough.set()


def transition_log(stack, job_id: str) -> list[str]:
    r = connect_settings(stack.settings)
    return r.lrange(f"{stack.settings.key_prefix}:job:{job_id}:log", 0, -1)


def test_master_killed_mid_batch_every_accepted_job_completes_once(stack, ha, source):
    client = LayerqClient(stack.url, timeout_s=60)
    outcomes: list[Outcome] = []
    enough = threading.Event()
    submitter = threading.Thread(target=submit_all, args=(client, source, outcomes, enough), daemon=True)
    submitter.start()
    assert enough.wait(300), [o.error for o in outcomes]

    old, killed_at = ha.kill_master()
    new_port = ha.wait_promoted(old.port, timeout_s=60)
    assert new_port != old.port

    def answers() -> bool:
        try:
            return requests.get(stack.url + "/healthz", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    wait_for(answers, UNAVAILABLE_BOUND_S, interval_s=0.1, what="API answering after the failover")
    back_after_s = time.monotonic() - killed_at
    ha.rejoin(old)  # the lost host returns as a replica: durable submissions can be confirmed again
    submitter.join(600)
    assert not submitter.is_alive()

    accepted = [o for o in outcomes if o.job_id]
    before_kill = [o for o in accepted if o.at < killed_at]
    assert len(outcomes) == SUBMISSIONS and len(before_kill) >= KILL_AFTER
    assert {o.kind for o in before_kill} == {"decompose", "compose", "edit"}
    # Every worker kind follows the promotion: one job of each, submitted on the new master, finishes.
    after = [Outcome(-1, kind, job_id=submit_one(client, kind, source, 100 + i)["id"])
             for i, kind in enumerate(("decompose", "compose", "edit"))]
    accepted += after
    finals = {o.job_id: client.wait(o.job_id, timeout_s=600) for o in accepted}
    bad = {j: (f["status"], f.get("error")) for j, f in finals.items() if f["status"] != "succeeded"}
    assert bad == {}
    for job_id in finals:
        log = transition_log(stack, job_id)
        terminal = [e for e in log if e.split(">")[1].split("@")[0] in {"succeeded", "failed", "canceled"}]
        assert len(terminal) == 1, (job_id, log)
    refused = [o for o in outcomes if not o.job_id]
    print(f"\nfailover: API answered {back_after_s:.1f} s after the kill; {len(accepted) - len(after)} accepted "
          f"({len(before_kill)} before the kill), {len(refused)} refused: {sorted({o.error[:80] for o in refused})}")
