"""Webhooks through the real stack: a local HTTP receiver gets signed, filtered events from the CPU
worker, and a receiver that fails first is retried with the same delivery id."""

from __future__ import annotations

import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest
import requests

from layerq.client import LayerqClient
from layerq.sample import sample_png
from layerq.webhooks import verify
from tests.helpers import wait_for

pytestmark = pytest.mark.e2e

QUICK = {"layers": 2, "num_inference_steps": 2, "prompt": "a poster"}


class Receiver:
    """Records every request; answers the status codes queued in `script`, then 200."""

    def __init__(self) -> None:
        self.requests: list[dict] = []
        self.script: list[int] = []
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                outer.requests.append({"headers": dict(self.headers), "body": body, "path": self.path})
                self.send_response(outer.script.pop(0) if outer.script else 200)
                self.end_headers()

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.url = f"http://127.0.0.1:{self.server.server_port}"

    def events(self, path: str) -> list[dict]:
        return [r for r in self.requests if r["path"] == path]


@pytest.fixture(scope="module")
def stack(make_stack):
    return make_stack(storage="local", webhook_backoff_base_s=0.5)


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def submit(stack, params, webhook):
    resp = requests.post(stack.url + "/v1/jobs", files={"image": ("a.png", sample_png(128, 128), "image/png")},
                         data={"params": json.dumps(params), "webhook": json.dumps(webhook)}, timeout=30)
    assert resp.status_code == 202, resp.text
    return resp.json()


def test_signed_events_respect_the_filter(stack, receiver):
    client = LayerqClient(stack.url)
    job = submit(stack, QUICK, {"url": receiver.url + "/a", "events": ["started", "completed"]})
    client.wait(job["id"], timeout_s=60)
    got = wait_for(lambda: (lambda ev: ev if len(ev) >= 2 else None)(receiver.events("/a")), 60, what="2 events")
    time.sleep(1.0)  # nothing else may arrive (failed/canceled are filtered out, and none happened)
    events = receiver.events("/a")
    assert sorted(json.loads(e["body"])["type"] for e in events) == ["job.completed", "job.started"]
    for e in got:
        assert verify(stack.settings.webhook_secret, e["headers"]["Layerq-Signature"], e["body"])
        assert not verify("another secret", e["headers"]["Layerq-Signature"], e["body"])
        payload = json.loads(e["body"])
        assert payload["data"]["job"]["id"] == job["id"]
    done = next(json.loads(e["body"]) for e in got if json.loads(e["body"])["type"] == "job.completed")
    assert done["data"]["job"]["status"] == "succeeded" and done["data"]["job"]["result"]["layers"]


def test_failed_deliveries_are_retried_with_a_stable_id(stack, receiver):
    receiver.script[:] = [500, 503]
    client = LayerqClient(stack.url)
    job = submit(stack, QUICK, {"url": receiver.url + "/b", "events": ["completed"]})
    client.wait(job["id"], timeout_s=60)
    attempts = wait_for(lambda: (lambda ev: ev if len(ev) >= 3 else None)(receiver.events("/b")), 60,
                        what="3 attempts")
    assert len({a["headers"]["Layerq-Delivery"] for a in attempts}) == 1


def test_canceled_queued_job_sends_canceled_event(stack, receiver):
    client = LayerqClient(stack.url)
    blocker = client.submit(sample_png(128, 128), {**QUICK, "num_inference_steps": 40})
    job = submit(stack, QUICK, {"url": receiver.url + "/c", "events": ["canceled"]})
    requests.post(f"{stack.url}/v1/jobs/{job['id']}/cancel", timeout=10)
    got = wait_for(lambda: receiver.events("/c"), 60, what="canceled event")
    assert json.loads(got[0]["body"])["type"] == "job.canceled"
    client.wait(blocker["id"], timeout_s=120)


def test_private_targets_are_refused_unless_allow_listed(stack):
    # This stack allow-lists 127.0.0.1 (the receiver above); everything else private is refused.
    for url in ("http://10.0.0.1/hook", "http://169.254.169.254/latest", "http://[::1]:9/x", "http://192.168.1.5/x"):
        resp = requests.post(stack.url + "/v1/jobs", files={"image": ("a.png", sample_png(64, 64), "image/png")},
                             data={"params": json.dumps(QUICK), "webhook": json.dumps({"url": url})}, timeout=30)
        assert resp.status_code == 400 and resp.json()["error"]["field"].startswith("webhook"), (url, resp.text)
