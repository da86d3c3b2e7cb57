"""Slow clients (issue 11, point 9): uploads trickling in a few bytes per second must not stop the API.

The real API under gunicorn (as `layerq api` runs it) on loopback. With 50 such uploads in flight,
`/livez` and a normal submission still answer; a body that misses `request_body_timeout_s` gets 408.
No timing is asserted beyond generous timeouts: `bench/slow_clients.py` measures the latency.
"""

from __future__ import annotations

import json
import socket
import time

import pytest
import requests

from layerq.sample import sample_png

pytestmark = pytest.mark.e2e

SLOW_UPLOADS = 50
BODY_TIMEOUT_S = 20


def open_slow_upload(port: int) -> socket.socket:
    """A multipart job submission that announces 1 MB and sends only its first few bytes."""
    s = socket.create_connection(("127.0.0.1", port), timeout=10)
    s.sendall(b"POST /v1/jobs HTTP/1.1\r\nHost: 127.0.0.1\r\n"
              b"Content-Type: multipart/form-data; boundary=slow\r\nContent-Length: 1000000\r\n\r\n"
              b"--slow\r\nContent-Disposition: form-data; name=\"image\"; filename=\"a.png\"\r\n\r\n")
    return s


@pytest.fixture(scope="module")
def stack(make_stack):
    return make_stack(workers=0, request_body_timeout_s=BODY_TIMEOUT_S)


def test_api_answers_while_50_uploads_trickle_in_and_late_bodies_get_408(stack):
    slow = [open_slow_upload(stack.port) for _ in range(SLOW_UPLOADS)]
    try:
        for s in slow:
            s.sendall(b"\x89PN")  # every upload has started its body
        opened = time.monotonic()

        assert requests.get(stack.url + "/livez", timeout=10).status_code == 200
        resp = requests.post(stack.url + "/v1/jobs", files={"image": ("a.png", sample_png(64, 64), "image/png")},
                             data={"params": json.dumps({"layers": 2, "num_inference_steps": 2})}, timeout=10)
        assert resp.status_code == 202, resp.text
        assert requests.get(stack.url + resp.headers["Location"], timeout=10).json()["status"] == "queued"

        # The slow uploads were still in flight while those answered: none has had a reply yet ...
        if time.monotonic() - opened < BODY_TIMEOUT_S - 2:
            for s in slow:
                s.setblocking(False)
                with pytest.raises(BlockingIOError):
                    s.recv(1)
        # ... and each is answered 408 once its body misses the deadline.
        slow[0].settimeout(BODY_TIMEOUT_S + 60)
        reply = b""
        while b"\r\n\r\n" not in reply:
            chunk = slow[0].recv(4096)
            assert chunk, f"connection closed without a reply: {reply!r}"
            reply += chunk
        assert reply.startswith(b"HTTP/1.1 408"), reply
        head, _, body = reply.partition(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        while len(body) < length:
            body += slow[0].recv(4096)
        assert json.loads(body)["error"]["code"] == "request_timeout"
        assert json.loads(body)["error"]["field"] == "body"
    finally:
        for s in slow:
            s.close()
    assert requests.get(stack.url + "/livez", timeout=10).status_code == 200
