"""Fast unit checks of the fleet pieces: the body-read watchdog and the supervisor's restart backoff."""

from __future__ import annotations

import socket
import subprocess
import sys
import time

from api.body_deadline import BodyDeadline, Watchdog
from worker import supervisor
from worker.supervisor import Child, Supervisor


def test_watchdog_ends_a_blocked_read_at_its_deadline_and_not_before():
    a, b = socket.socketpair()
    dog = Watchdog()
    try:
        late = dog.arm(a, time.monotonic() + 2)
        b.sendall(b"x")
        assert a.recv(1) == b"x"  # data before the deadline is read normally
        assert a.recv(1) == b""  # the blocked read ends: the watchdog shut the reading side
        assert dog.disarm(late) is True
        c, d = socket.socketpair()
        on_time = dog.arm(c, time.monotonic() + 30)
        assert dog.disarm(on_time) is False
        c.close()
        d.close()
    finally:
        a.close()
        b.close()


def test_body_deadline_hands_the_app_the_whole_body_and_leaves_oversized_ones_to_flask():
    seen = {}

    def app(environ, start_response):
        seen["body"] = environ["wsgi.input"].read()
        seen["length"] = environ.get("CONTENT_LENGTH")
        start_response("200 OK", [])
        return [b""]

    import io

    wrapped = BodyDeadline(app, timeout_s=5, max_bytes=10)
    wrapped({"CONTENT_LENGTH": "5", "wsgi.input": io.BytesIO(b"hello")}, lambda *a: None)
    assert seen == {"body": b"hello", "length": "5"}
    big = io.BytesIO(b"x" * 50)
    wrapped({"CONTENT_LENGTH": "50", "wsgi.input": big}, lambda *a: None)
    assert seen["length"] == "50" and big.tell() == 50  # untouched: the app (Flask) answers 413


def test_a_crashing_worker_is_restarted_with_doubling_backoff_up_to_the_cap():
    sup = Supervisor(["0"], [sys.executable, "-c", "raise SystemExit(3)"], drain_timeout_s=1)
    (child,) = sup.children
    delays = []
    now = 1000.0
    for _ in range(9):
        child.proc = subprocess.Popen([sys.executable, "-c", "pass"])
        child.proc.wait()
        child.started_at, child.restart_at = now, None
        sup._restart_crashed(now + 1)  # crashed a second after its start
        delays.append(child.restart_at - (now + 1))
    assert delays[:4] == [1.0, 2.0, 4.0, 8.0]
    assert max(delays) == supervisor.MAX_BACKOFF_S
    # A worker that stayed up long enough starts the count again.
    child.proc = subprocess.Popen([sys.executable, "-c", "pass"])
    child.proc.wait()
    child.restart_at = None
    sup._restart_crashed(child.started_at + supervisor.STABLE_AFTER_S + 1)
    assert child.crashes == 1
    assert isinstance(child, Child)
