"""Bad requests get a 4xx JSON error naming the field, and nothing is stored or enqueued.

Runs against the real API server (gunicorn on loopback) of a real stack."""

from __future__ import annotations

import io
import json

import pytest
import redis
import requests
from PIL import Image

from layerq.sample import sample_png

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def api(local_stack):
    return local_stack


def snapshot(stack) -> tuple[frozenset[str], frozenset[str], int]:
    """(job ids with records, job ids of messages waiting in the broker, stored objects) of this stack.

    The stack is shared: earlier tests' jobs may still move through the broker (a worker re-sending
    an unsent job, say), so what a rejected request must not add is a job of its own, not a message."""
    r = redis.Redis.from_url(stack.settings.redis_url, decode_responses=True)
    prefix = stack.settings.key_prefix
    jobs = frozenset(k.split(":")[2] for k in r.scan_iter(f"{prefix}:job:*") if k.count(":") == 2)
    queued = frozenset(json.loads(m)["headers"]["id"] for m in r.lrange(f"{prefix}:decompose", 0, -1))
    objects = sum(1 for p in stack.settings.storage_path.rglob("*") if p.is_file()) if stack.settings.storage_path.exists() else 0
    return jobs, queued, objects


def nothing_added(before, after) -> bool:
    jobs, _, objects = before
    new_jobs, new_queued, new_objects = after
    return new_jobs <= jobs and new_queued <= jobs and new_objects <= objects


def post(stack, *, image: bytes | None = None, params=None, extra: dict | None = None, raw_params: str | None = None):
    files = {"image": ("x.png", image, "application/octet-stream")} if image is not None else {}
    data = dict(extra or {})
    if raw_params is not None:
        data["params"] = raw_params
    elif params is not None:
        data["params"] = json.dumps(params)
    return requests.post(stack.url + "/v1/jobs", files=files or None, data=data, timeout=30)


CASES = [
    ("no image", dict(params={"layers": 4}), "image"),
    ("not an image", dict(image=b"this is plain text, not a picture"), "image"),
    ("empty file", dict(image=b""), "image"),
    ("truncated png", dict(image=sample_png(64, 64)[:200]), "image"),
    ("layers 1", dict(image=sample_png(64, 64), params={"layers": 1}), "params.layers"),
    ("layers 11", dict(image=sample_png(64, 64), params={"layers": 11}), "params.layers"),
    ("resolution 800", dict(image=sample_png(64, 64), params={"resolution": 800}), "params.resolution"),
    ("unknown field", dict(image=sample_png(64, 64), params={"layerz": 3}), "params.layerz"),
    ("steps 0", dict(image=sample_png(64, 64), params={"num_inference_steps": 0}), "params.num_inference_steps"),
    ("negative seed", dict(image=sample_png(64, 64), params={"seed": -1}), "params.seed"),
    ("params not json", dict(image=sample_png(64, 64), raw_params="{layers: 3"), "params"),
    ("params not object", dict(image=sample_png(64, 64), raw_params="[1, 2]"), "params"),
    ("unknown form field", dict(image=sample_png(64, 64), extra={"colour": "red"}), "colour"),
]


@pytest.mark.parametrize("case,kwargs,field", CASES, ids=[c[0] for c in CASES])
def test_bad_request_names_the_field_and_enqueues_nothing(api, case, kwargs, field):
    before = snapshot(api)
    resp = post(api, **kwargs)
    assert 400 <= resp.status_code < 500, resp.text
    assert resp.headers["Content-Type"].startswith("application/json")
    err = resp.json()["error"]
    assert err["field"] == field, err
    assert err["code"] and err["message"]
    assert nothing_added(before, snapshot(api))


def test_oversized_image_dimensions_rejected_before_decoding(api):
    # A 1×(max_side+1) PNG: tiny on the wire, refused from its header.
    img = Image.new("L", (1, api.settings.max_image_side_px + 1))
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    resp = post(api, image=buf.getvalue())
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "image"


def test_json_body_needs_an_uploaded_input_key(api):
    resp = requests.post(api.url + "/v1/jobs", json={"params": {"layers": 4}}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "input_key"
    resp = requests.post(api.url + "/v1/jobs", json={"input_key": "jobs/abc/layers/00.png"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "input_key"  # not an upload


def test_other_content_types_are_a_clear_400(api):
    resp = requests.post(api.url + "/v1/jobs", data=b"\x89PNG...", headers={"Content-Type": "image/png"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "image"


def test_unknown_job_is_404_json(api):
    resp = requests.get(api.url + "/v1/jobs/" + "0" * 32, timeout=10)
    assert resp.status_code == 404 and resp.json()["error"]["code"] == "not_found"


def test_openapi_document_describes_every_endpoint(api):
    from openapi_spec_validator import validate

    doc = requests.get(api.url + "/openapi.json", timeout=10).json()
    validate(doc)
    # Every route the app serves is documented, with the methods it serves.
    import re

    from api.app import create_app

    app = create_app(api.settings)
    served = {}
    for rule in app.url_map.iter_rules():
        # The web page (`/`, its assets under /web/, `/sample.png`) is for people, not part of the
        # JSON API the document describes; it is built on that API alone.
        if rule.endpoint != "static" and not rule.endpoint.startswith("web."):
            path = re.sub(r"<(?:path:)?(\w+)>", lambda m: "{" + ("id" if m.group(1).endswith("_id") else m.group(1)) + "}",
                          rule.rule)
            served.setdefault(path, set()).update(m.lower() for m in rule.methods - {"HEAD", "OPTIONS"})
    assert {p: set(ops) for p, ops in doc["paths"].items()} == served
    layers = doc["components"]["schemas"]["DecomposeParams"]["properties"]["layers"]
    assert {"type": "integer", "minimum": 2, "maximum": 10} in layers["anyOf"]  # or "auto"


def test_healthz_reports_dependencies_and_workers(api):
    body = requests.get(api.url + "/healthz", timeout=10).json()
    assert body["status"] == "ok" and body["checks"] == {"redis": "ok", "storage": "ok"} and body["workers"] >= 1
    # Each live worker with its memory plan (a CPU worker: everything in host memory).
    assert len(body["live_workers"]) == body["workers"]
    assert all(w["memory_plan"]["name"] == "full" for w in body["live_workers"]), body["live_workers"]
    # Every kind of worker is counted on its own queue: the shared stack runs no edit worker.
    by_queue = body["workers_by_queue"]
    assert by_queue["decompose"] == body["workers"] and by_queue["edit"] == 0 and by_queue["cpu"] >= 1, body
