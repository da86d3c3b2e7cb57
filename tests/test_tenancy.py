"""Tenant isolation end to end (issue 8, bugs 4 and 5): tenant B gets 404 for everything of tenant
A's (job, batch, job listing, cancels, uploads), cannot turn a URL signed for itself into one of A's
files, and nothing of A's changes."""

from __future__ import annotations

import json
import urllib.parse

import pytest
import requests

from layerq.client import LayerqClient
from layerq.sample import sample_png

pytestmark = pytest.mark.e2e

QUICK = {"layers": 2, "num_inference_steps": 2, "prompt": "tenancy"}
A = {"Authorization": "Bearer tenant-a-token"}
B = {"Authorization": "Bearer tenant-b-token"}


def client_of(url: str, headers: dict) -> LayerqClient:
    session = requests.Session()
    session.headers.update(headers)
    return LayerqClient(url, session=session)


def upload(stack, headers: dict, data: bytes) -> dict:
    ticket = requests.post(stack.url + "/v1/uploads", json={"content_type": "image/png"}, headers=headers, timeout=10)
    assert ticket.status_code == 201, ticket.text
    t = ticket.json()
    put = requests.request(t["method"], t["url"], data=data, headers=t["headers"], timeout=30)
    assert put.status_code == 200, put.text
    return t


def walk_pages(list_url: str, headers: dict, limit: int = 2) -> list[str]:
    """The ids of every page of a time-cursor listing (`GET /v1/jobs`, `GET /v1/batches`), in order."""
    walked, cursor = [], "0"
    while cursor is not None:
        resp = requests.get(list_url, params={"limit": limit, "cursor": cursor}, headers=headers, timeout=10)
        assert resp.status_code == 200, resp.text
        walked += [item["id"] for item in resp.json()["items"]]
        cursor = resp.json()["next_cursor"]
    return walked


def stable(job: dict) -> dict:
    """A job view without what changes on every read (freshly signed URLs)."""
    return {k: v for k, v in job.items() if k != "result"}


def assert_not_found(resp: requests.Response, field: str | None = None) -> None:
    assert resp.status_code == 404, (resp.request.method, resp.request.url, resp.status_code, resp.text)
    if field:
        assert resp.json()["error"]["field"] == field, resp.text


def test_tenant_b_sees_nothing_of_tenant_a(local_stack):
    stack, url = local_stack, local_stack.url
    client_a, client_b = client_of(url, A), client_of(url, B)

    # Tenant A: an upload, a job on it, a multipart job and a batch; all run to the end.
    ticket = upload(stack, A, sample_png(128, 96))
    key_a = ticket["input_key"]
    on_upload = requests.post(url + "/v1/jobs", json={"input_key": key_a, "params": QUICK}, headers=A, timeout=30)
    assert on_upload.status_code == 202, on_upload.text  # the owner may use its upload
    job = requests.post(url + "/v1/jobs", files={"image": ("a.png", sample_png(96, 96), "image/png")},
                        data={"params": json.dumps({**QUICK, "seed": 5})}, headers=A, timeout=30)
    assert job.status_code == 202, job.text
    job_a = job.json()["id"]
    batch = requests.post(url + "/v1/batches", json={"defaults": QUICK, "items": [{"input_key": key_a}]},
                          headers=A, timeout=30)
    assert batch.status_code == 202, batch.text
    batch_a, batch_jobs = batch.json()["id"], batch.json()["job_ids"]
    for job_id in (on_upload.json()["id"], job_a, *batch_jobs):
        assert client_a.wait(job_id, timeout_s=120)["status"] == "succeeded"

    def a_view() -> tuple:
        jobs = [stable(requests.get(f"{url}/v1/jobs/{j}", headers=A, timeout=10).json())
                for j in (job_a, *batch_jobs)]
        summary = requests.get(f"{url}/v1/batches/{batch_a}", headers=A, timeout=10).json()
        return jobs, summary["counts"], summary["count"]

    before = a_view()
    a_job = requests.get(f"{url}/v1/jobs/{job_a}", headers=A, timeout=10).json()

    # Tenant B: reads, listings and cancels of A's records are 404s, as if they did not exist.
    assert_not_found(requests.get(f"{url}/v1/jobs/{job_a}", headers=B, timeout=10), "id")
    assert_not_found(requests.post(f"{url}/v1/jobs/{job_a}/cancel", headers=B, timeout=10), "id")
    assert_not_found(requests.get(f"{url}/v1/batches/{batch_a}", headers=B, timeout=10), "batch")
    assert_not_found(requests.get(f"{url}/v1/jobs", params={"batch": batch_a}, headers=B, timeout=10), "batch")
    assert_not_found(requests.post(f"{url}/v1/batches/{batch_a}/cancel", headers=B, timeout=10), "batch")
    # ...and so are A's uploads, alone or in a batch; a caller without a token is another tenant too.
    for headers in (B, {}):
        assert_not_found(requests.post(url + "/v1/jobs", json={"input_key": key_a, "params": QUICK},
                                       headers=headers, timeout=10), "input_key")
    assert_not_found(requests.post(url + "/v1/batches", json={"items": [{"input_key": key_a}]}, headers=B,
                                   timeout=10), "items.0.input_key")
    # An upload key nobody was handed out reads the same.
    assert_not_found(requests.post(url + "/v1/jobs", json={"input_key": "uploads/0123abcd/input"}, headers=B,
                                   timeout=10), "input_key")
    # Identical input and parameters do not answer B from A's result cache.
    same = requests.post(url + "/v1/jobs", files={"image": ("a.png", sample_png(96, 96), "image/png")},
                         data={"params": json.dumps({**QUICK, "seed": 5})}, headers=B, timeout=30)
    assert same.status_code == 202 and same.json()["cached_from"] is None

    # Files: URLs are signed per key, so B's own signatures open none of A's objects.
    own = requests.post(url + "/v1/uploads", json={"content_type": "image/png"}, headers=B, timeout=10).json()
    own_url = urllib.parse.urlsplit(own["url"])
    a_objects = [key_a, urllib.parse.urlsplit(a_job["result"]["composite"]).path.removeprefix("/files/")]
    for key in a_objects:
        guess = f"{url}/files/{key}?{own_url.query}"
        assert requests.put(guess, data=b"overwritten", headers={"Content-Type": "image/png"},
                            timeout=10).status_code in (403, 404)
        assert requests.get(guess, timeout=10).status_code in (403, 404)
    # A's own links still work, and still serve A's bytes.
    assert requests.get(a_job["result"]["composite"], timeout=10).status_code == 200

    # Nothing of A's changed.
    assert a_view() == before
    assert client_b.wait(same.json()["id"], timeout_s=120)["status"] == "succeeded"


def test_own_jobs_are_listed_newest_first_per_key_and_paged(local_stack):
    """`GET /v1/jobs` without `?batch=`: the key's jobs outside batches, newest first, paged by a
    time cursor; another key sees none of them, and callers without a key get an empty page."""
    url = local_stack.url
    mine, other = {"Authorization": "Bearer list-own-jobs"}, {"Authorization": "Bearer list-someone-else"}
    ids = []
    for seed in (1, 2, 3):
        job = requests.post(url + "/v1/jobs", files={"image": ("l.png", sample_png(64, 64), "image/png")},
                            data={"params": json.dumps({**QUICK, "seed": seed}), "cache": "false"},
                            headers=mine, timeout=30)
        assert job.status_code == 202, job.text
        ids.append(job.json()["id"])
    batch = requests.post(url + "/v1/batches", json={"defaults": QUICK, "items": [{"input_key": upload(
        local_stack, mine, sample_png(64, 48))["input_key"]}]}, headers=mine, timeout=30)
    assert batch.status_code == 202, batch.text

    page = requests.get(url + "/v1/jobs", headers=mine, timeout=10).json()
    assert [j["id"] for j in page["items"]] == ids[::-1]  # the batch's job is listed with ?batch= only
    assert walk_pages(url + "/v1/jobs", mine) == ids[::-1]
    assert requests.get(url + "/v1/jobs", headers=other, timeout=10).json() == {"items": [], "next_cursor": None}
    assert requests.get(url + "/v1/jobs", timeout=10).json() == {"items": [], "next_cursor": None}
    bad = requests.get(url + "/v1/jobs", params={"limit": 0}, headers=mine, timeout=10)
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "limit"
    client = client_of(url, mine)
    for job_id in ids + batch.json()["job_ids"]:  # the stack is shared: leave no work behind
        client.wait(job_id, timeout_s=300)


def test_own_batches_are_listed_newest_first_per_key_and_paged(local_stack):
    """`GET /v1/batches`: the key's batches, newest first, with their counts, paged by a time cursor
    and filtered by state; another key sees none of them, callers without a key an empty page."""
    url = local_stack.url
    mine, other = {"Authorization": "Bearer list-own-batches"}, {"Authorization": "Bearer list-other-batches"}
    ids, job_ids = [], []
    for seed in (1, 2, 3):
        key = upload(local_stack, mine, sample_png(64, 48))["input_key"]
        batch = requests.post(url + "/v1/batches", json={"defaults": {**QUICK, "seed": seed}, "cache": False,
                                                         "items": [{"input_key": key}]}, headers=mine, timeout=30)
        assert batch.status_code == 202, batch.text
        ids.append(batch.json()["id"])
        job_ids += batch.json()["job_ids"]
    client = client_of(url, mine)
    for job_id in job_ids:
        client.wait(job_id, timeout_s=300)

    page = requests.get(url + "/v1/batches", headers=mine, timeout=10).json()
    assert [b["id"] for b in page["items"]] == ids[::-1]
    first = page["items"][0]
    assert (first["kind"], first["count"], first["counts"]["succeeded"], first["progress"], first["done"]) == (
        "decompose", 1, 1, 1.0, True)
    assert walk_pages(url + "/v1/batches", mine) == ids[::-1]
    assert [b["id"] for b in client.batches(page_size=1)] == ids[::-1]
    assert [b["id"] for b in client.batches(state="done")] == ids[::-1]
    assert list(client.batches(state="active")) == []
    assert requests.get(url + "/v1/batches", headers=other, timeout=10).json() == {"items": [], "next_cursor": None}
    assert requests.get(url + "/v1/batches", timeout=10).json() == {"items": [], "next_cursor": None}
    for query, field in (({"state": "running"}, "state"), ({"limit": 0}, "limit"), ({"cursor": "x"}, "cursor")):
        bad = requests.get(url + "/v1/batches", params=query, headers=mine, timeout=10)
        assert bad.status_code == 400 and bad.json()["error"]["field"] == field, bad.text
