"""A deadline on reading request bodies, so a slow client holds an API thread for a bounded time.

gunicorn's threaded worker reads a request's body in the thread that serves it: a client that sends
its upload a few bytes per second keeps that thread for as long as it likes. This WSGI middleware
reads the whole body before the app runs, with `request_body_timeout_s` as the budget for all of it,
spools it (memory up to 1 MiB, then a temporary file) and hands the app a complete body. A body that
misses the deadline is answered 408; gunicorn then closes the connection, since the rest of the body
cannot be drained in time. Bodies announced larger than the upload limit are left to Flask, which
answers 413 without reading them.

A socket timeout cannot express that budget: it bounds each recv(), and a trickling client makes
every recv() return in time. So one watchdog thread per process shuts the reading side of a late
connection (`shutdown(SHUT_RD)`), which ends the blocked read at once.
"""

from __future__ import annotations

import heapq
import itertools
import json
import socket
import tempfile
import threading
import time
from collections.abc import Callable, Iterable
from typing import Any

SPOOL_IN_MEMORY_BYTES = 1024 * 1024
READ_CHUNK_BYTES = 64 * 1024


class BodyTimeout(Exception):
    """Raised when a request body has not fully arrived within its deadline."""


class Watchdog:
    """Shuts the reading side of sockets whose deadline passed; one daemon thread serves them all."""

    def __init__(self) -> None:
        self._heap: list[tuple[float, int, socket.socket]] = []
        self._live: set[int] = set()
        self._fired: set[int] = set()
        self._ids = itertools.count()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None

    def arm(self, sock: socket.socket, deadline: float) -> int:
        with self._cond:
            if self._thread is None:  # started lazily: gunicorn forks after the app is built
                self._thread = threading.Thread(target=self._run, name="body-deadline", daemon=True)
                self._thread.start()
            token = next(self._ids)
            self._live.add(token)
            heapq.heappush(self._heap, (deadline, token, sock))
            self._cond.notify()
            return token

    def disarm(self, token: int) -> bool:
        """Forget `token`; True when its deadline had already fired."""
        with self._cond:
            self._live.discard(token)
            fired = token in self._fired
            self._fired.discard(token)
            return fired

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._heap and self._heap[0][1] not in self._live:
                    heapq.heappop(self._heap)  # disarmed in time
                if not self._heap:
                    self._cond.wait()
                    continue
                deadline, token, sock = self._heap[0]
                wait_s = deadline - time.monotonic()
                if wait_s > 0:
                    self._cond.wait(wait_s)
                    continue
                heapq.heappop(self._heap)
                self._live.discard(token)
                self._fired.add(token)
                try:
                    sock.shutdown(socket.SHUT_RD)  # the blocked recv() returns b"" now
                except OSError:
                    pass  # already closed by the client


class BodyDeadline:
    def __init__(self, app: Callable, timeout_s: float, max_bytes: int) -> None:
        self.app, self.timeout_s, self.max_bytes = app, timeout_s, max_bytes
        self.watchdog = Watchdog()

    def __call__(self, environ: dict[str, Any], start_response: Callable) -> Iterable[bytes]:
        length = environ.get("CONTENT_LENGTH") or ""
        chunked = "chunked" in environ.get("HTTP_TRANSFER_ENCODING", "").lower()
        if not chunked and (not length.isdigit() or int(length) == 0 or int(length) > self.max_bytes):
            return self.app(environ, start_response)  # no body, or one Flask refuses unread (413)
        try:
            body, size = self._spool(environ)
        except BodyTimeout:
            return self._timed_out(start_response)
        environ["wsgi.input"] = body
        environ["CONTENT_LENGTH"] = str(size)
        environ.pop("HTTP_TRANSFER_ENCODING", None)
        environ["wsgi.input_terminated"] = True
        return self.app(environ, start_response)

    def _spool(self, environ: dict[str, Any]) -> tuple[Any, int]:
        stream = environ["wsgi.input"]
        sock: socket.socket | None = environ.get("gunicorn.socket")  # absent under other servers
        token = self.watchdog.arm(sock, time.monotonic() + self.timeout_s) if sock is not None else None
        spool = tempfile.SpooledTemporaryFile(max_size=SPOOL_IN_MEMORY_BYTES)
        size = 0
        failure: BaseException | None = None
        try:
            # Past the limit Flask answers 413 from the length: stop reading one byte after it.
            while size <= self.max_bytes:
                chunk = stream.read(min(READ_CHUNK_BYTES, self.max_bytes + 1 - size))
                if not chunk:
                    break
                spool.write(chunk)
                size += len(chunk)
        except BaseException as exc:  # a client gone mid-body, or the watchdog's shutdown
            failure = exc
        fired = token is not None and self.watchdog.disarm(token)
        if fired or failure is not None:
            spool.close()
            if fired:
                raise BodyTimeout() from failure
            raise failure
        spool.seek(0)
        return spool, size

    def _timed_out(self, start_response: Callable) -> list[bytes]:
        body = json.dumps({"error": {
            "code": "request_timeout", "field": "body",
            "message": f"the request body did not arrive within {self.timeout_s:g} s; "
                       "upload large inputs through POST /v1/uploads",
        }}).encode()
        start_response("408 Request Timeout", [
            ("Content-Type", "application/json"), ("Content-Length", str(len(body))),
        ])  # gunicorn then closes the connection: the unread rest of the body misses its drain deadline
        return [body]
