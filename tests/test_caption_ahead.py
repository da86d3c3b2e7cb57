"""Auto-captions of waiting jobs written ahead (issue 12 item 4), through real processes: real Redis, a
real Celery worker running the tiny pipeline, the real API.

The tiny model's captions are noise, but they differ by the colour of a flat image (checked below, so
a caption handed to the wrong job would show). "Alone" captions are those the same worker writes
for a job when nothing else waits."""

from __future__ import annotations

import io
import os
import uuid

import pytest
import redis
from PIL import Image

from layerq.client import LayerqClient
from storage.captions import CaptionStore
from storage.jobs import JobStore
from tests.helpers import terminal_transitions, wait_running
from worker.caption_ahead import caption_key
from worker.pipeline import caption_flavour

pytestmark = pytest.mark.e2e

AUTO = {"layers": 2, "num_inference_steps": 2}
SLOW_AUTO = {"layers": 2, "num_inference_steps": 30}  # leaves the test time to act while it runs
BLOCKER = {"layers": 2, "num_inference_steps": 200, "prompt": "a poster"}
COLOURS = [(255, 0, 0), (0, 0, 255), (0, 200, 0), (250, 250, 0)]


def flat_png(colour: tuple[int, int, int]) -> bytes:
    out = io.BytesIO()
    Image.new("RGBA", (96, 96), (*colour, 255)).save(out, "PNG")
    return out.getvalue()


@pytest.fixture(scope="module")
def stack(make_stack):
    return make_stack(storage="local", caption_ahead="1", caption_ahead_jobs=7)


@pytest.fixture(scope="module")
def client(stack) -> LayerqClient:
    return LayerqClient(stack.url, timeout_s=60)


@pytest.fixture(scope="module")
def captions(stack) -> CaptionStore:
    client = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    return CaptionStore(client, key_prefix=stack.settings.key_prefix)


@pytest.fixture(scope="module")
def alone(stack, client) -> dict[tuple[int, int, int], str]:
    """Each colour's caption when its job runs with nothing else waiting (so nothing is captioned ahead)."""
    out = {}
    for colour in COLOURS:
        job = client.submit(flat_png(colour), AUTO, cache=False)
        final = client.wait(job["id"], timeout_s=300)
        assert final["status"] == "succeeded", final
        out[colour] = final["result"]["caption"]
    assert len(set(out.values())) == len(COLOURS), "the tiny model must caption these colours apart"
    return out


def cancel(client: LayerqClient, job_id: str) -> dict:
    resp = client.http.post(f"{client.base_url}/v1/jobs/{job_id}/cancel", timeout=30)
    assert resp.status_code in (200, 202), resp.text
    return resp.json()


def blocked(client: LayerqClient) -> dict:
    """A long prompted job holding the stack's one worker, so the next jobs wait in the queue."""
    blocker = client.submit(flat_png((9, 9, 9)), BLOCKER, cache=False)
    wait_running(client, blocker["id"], min_step=1, timeout_s=120)
    return blocker


def test_waiting_jobs_are_captioned_with_the_first_and_get_their_own_captions(stack, client, captions, alone):
    blocker = blocked(client)
    jobs = [client.submit(flat_png(c), AUTO, cache=False) for c in COLOURS[:3]]
    prompted = client.submit(flat_png((120, 40, 200)), {**AUTO, "prompt": "a square"}, cache=False)
    canceled = client.submit(flat_png(COLOURS[3]), AUTO, cache=False)
    cancel(client, canceled["id"])
    assert client.get(canceled["id"])["status"] == "canceled"
    cancel(client, blocker["id"])

    finals = [client.wait(j["id"], timeout_s=300) for j in jobs]
    assert [f["status"] for f in finals] == ["succeeded"] * 3, finals
    assert [f["result"]["caption"] for f in finals] == [alone[c] for c in COLOURS[:3]]
    first, *rest = jobs
    assert captions.get(first["id"]) is None  # it captioned itself, and the others with it
    for job in rest:
        entry = captions.get(job["id"])
        assert entry is not None and entry["with"] == first["id"], entry
    for job in jobs:
        assert terminal_transitions(stack, job["id"]) and len(terminal_transitions(stack, job["id"])) == 1
        assert client.get(job["id"])["attempts"] == 1

    prompted_final = client.wait(prompted["id"], timeout_s=300)
    assert prompted_final["status"] == "succeeded" and prompted_final["result"]["caption"] is None
    assert captions.get(prompted["id"]) is None
    assert captions.get(canceled["id"]) is None  # canceled while waiting: left alone
    canceled_final = client.get(canceled["id"])
    assert canceled_final["status"] == "canceled" and canceled_final["attempts"] == 0


def test_faults_while_looking_ahead_leave_every_job_to_run(stack, client, captions, alone):
    """One waiting job's input is unreadable while the first job looks ahead (a symlink loop in the
    storage directory), another's is missing: the first job still runs and captions the job after
    them, the unreadable one runs once its input is back, and a caption stored for another
    resolution is not used."""
    blocker = blocked(client)
    lead = client.submit(flat_png(COLOURS[0]), SLOW_AUTO, cache=False)
    faulty = client.submit(flat_png(COLOURS[1]), AUTO, cache=False)
    missing = client.submit(flat_png((1, 2, 3)), AUTO, cache=False)
    fine = client.submit(flat_png(COLOURS[2]), AUTO, cache=False)
    stale = client.submit(flat_png(COLOURS[3]), AUTO, cache=False)

    root = stack.settings.storage_path
    faulty_input = root / "jobs" / faulty["id"] / "input.png"
    saved = faulty_input.read_bytes()
    faulty_input.unlink()
    os.symlink(faulty_input.name, faulty_input)  # reading it: too many levels of symbolic links
    (root / "jobs" / missing["id"] / "input.png").unlink()
    # A caption written for the same image at resolution 1024: the 640 job must not take it.
    flavour = caption_flavour(stack.settings.model, "reference", "cpu", "float32")
    wrong = caption_key(flavour, flat_png(COLOURS[3]), True, 1024)
    writer = f"test-{uuid.uuid4().hex[:6]}"
    assert captions.offer(stale["id"], {"key": wrong, "text": "not this one", "flavour": flavour, "by": writer,
                                        "with": "", "at": 0}, writer)
    cancel(client, blocker["id"])

    wait_running(client, lead["id"], min_step=1, timeout_s=300)  # its caption (and look-ahead) is done
    faulty_input.unlink()
    faulty_input.write_bytes(saved)

    lead_final = client.wait(lead["id"], timeout_s=300)
    assert lead_final["status"] == "succeeded" and lead_final["result"]["caption"] == alone[COLOURS[0]]
    assert captions.get(faulty["id"]) is None and captions.get(missing["id"]) is None
    assert captions.get(fine["id"])["with"] == lead["id"]  # the look-ahead went on past the faults
    assert captions.get(stale["id"])["text"] == "not this one"  # same flavour: not captioned again
    faulty_final = client.wait(faulty["id"], timeout_s=300)
    assert faulty_final["status"] == "succeeded" and faulty_final["result"]["caption"] == alone[COLOURS[1]]
    assert len(terminal_transitions(stack, faulty["id"])) == 1
    missing_final = client.wait(missing["id"], timeout_s=300)
    assert missing_final["status"] == "failed" and "missing" in missing_final["error"]["message"]
    fine_final = client.wait(fine["id"], timeout_s=300)
    assert fine_final["status"] == "succeeded" and fine_final["result"]["caption"] == alone[COLOURS[2]]
    stale_final = client.wait(stale["id"], timeout_s=300)
    assert stale_final["status"] == "succeeded" and stale_final["result"]["caption"] == alone[COLOURS[3]]


def test_captions_are_written_only_for_queued_jobs_and_claims_exclude_other_workers(redis_url):
    r = redis.Redis.from_url(redis_url, decode_responses=True)
    prefix = f"t{uuid.uuid4().hex[:8]}"
    jobs = JobStore(r, key_prefix=prefix, ttl_s=600)
    store = CaptionStore(r, key_prefix=prefix)
    ids = [uuid.uuid4().hex for _ in range(4)]
    for job_id in ids:
        jobs.create(job_id, kind="decompose", queue="decompose", params={}, input_key=f"jobs/{job_id}/input.png")
    jobs.cancel([ids[3]])
    assert jobs.waiting_ids("decompose", 10) == ids[:3]  # reading does not take: the canceled one left

    assert store.claim(ids, "w1", 60, limit=2) == ids[:2]
    assert store.claim(ids, "w2", 60, limit=5) == [ids[2]]  # w1's claims hold; the canceled job is no candidate
    entry = {"key": "k", "text": "a caption"}
    assert not store.offer(ids[0], entry, "w2")  # claimed by w1
    assert store.offer(ids[0], entry, "w1") and store.get(ids[0]) == entry
    assert 0 < r.ttl(store.keys.caption(ids[0])) <= 600  # lives as long as the job's record
    assert not store.offer(ids[3], entry, "w1")  # canceled: never captioned
    jobs.begin_attempt(ids[1], max_deliveries=3, worker="w3")
    assert not store.offer(ids[1], entry, "w1")  # started meanwhile: its own run captions it
    store.release(ids, "w2")
    assert store.claim(ids, "w4", 60, limit=5) == [ids[0], ids[2]]  # offered and released claims are gone
    assert [jobs.get(i)["status"] for i in ids] == ["queued", "running", "queued", "canceled"]  # nothing moved


def test_captions_written_ahead_are_used_by_another_worker(make_stack, alone):
    """Two workers: the first to caption looks ahead, and the other worker runs some of those jobs
    with the captions it finds."""
    stack = make_stack(workers=2, storage="local", caption_ahead="1")
    client = LayerqClient(stack.url, timeout_s=60)
    captions = CaptionStore(redis.Redis.from_url(stack.settings.redis_url, decode_responses=True),
                            key_prefix=stack.settings.key_prefix)
    blockers = [blocked(client), blocked(client)]  # one on each worker
    lead = client.submit(flat_png(COLOURS[0]), SLOW_AUTO, cache=False)
    rest = [client.submit(flat_png(c), AUTO, cache=False) for c in COLOURS[1:]]
    cancel(client, blockers[0]["id"])
    wait_running(client, lead["id"], min_step=1, timeout_s=300)  # its look-ahead is done
    cancel(client, blockers[1]["id"])  # the other worker is free while the lead still runs

    finals = [client.wait(j["id"], timeout_s=300) for j in [lead, *rest]]
    assert [f["result"]["caption"] for f in finals] == [alone[c] for c in COLOURS]
    assert all(captions.get(j["id"])["with"] == lead["id"] for j in rest)
    jobs = JobStore.from_url(stack.settings.redis_url, key_prefix=stack.settings.key_prefix)
    lead_worker = jobs.get(lead["id"])["worker"]
    assert any(jobs.get(j["id"])["worker"] != lead_worker for j in rest)
    assert all(len(terminal_transitions(stack, j["id"])) == 1 for j in [lead, *rest])
