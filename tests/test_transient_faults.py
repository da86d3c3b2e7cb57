"""A transient storage outage is retried with backoff and the job still succeeds once.

The worker reaches S3 (moto's server) through a TCP proxy the test can cut: while it is cut the
worker's input fetch fails after botocore's own retries, the job is retried by Celery after
`retry_backoff_s`, and succeeds once the proxy lets traffic through again."""

from __future__ import annotations

import socket
import threading

import pytest

from layerq.client import LayerqClient
from layerq.sample import sample_png
from tests.helpers import terminal_transitions, wait_for

pytestmark = pytest.mark.e2e


class CuttableProxy:
    """Forwards loopback TCP connections to `target`; `cut()` drops and refuses them."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.open = True
        self.conns: list[socket.socket] = []
        self.sock = socket.create_server(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            client, _ = self.sock.accept()
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.conns += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(src: socket.socket, dst: socket.socket) -> None:
        try:
            while data := src.recv(65536):
                dst.sendall(data)
        except OSError:
            pass
        finally:
            for s in (src, dst):
                try:
                    s.close()
                except OSError:
                    pass

    def cut(self) -> None:
        self.open = False
        for s in self.conns:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.conns.clear()

    def restore(self) -> None:
        self.open = True


def _worker_behind_proxy(make_stack, s3_settings_overrides, **overrides):
    """A stack whose one worker reaches S3 through a proxy the test can cut (the API goes direct)."""
    stack = make_stack(workers=0, **overrides, **s3_settings_overrides)
    proxy = CuttableProxy(int(s3_settings_overrides["s3_endpoint_url"].rsplit(":", 1)[1]))
    stack.add_worker(extra_env={"LAYERQ_S3_ENDPOINT_URL": f"http://127.0.0.1:{proxy.port}"})
    stack.wait_for_workers(1)
    return stack, proxy, LayerqClient(stack.url)


def test_storage_outage_is_retried_and_the_job_succeeds_once(make_stack, s3_settings_overrides):
    stack, proxy, client = _worker_behind_proxy(make_stack, s3_settings_overrides, retry_backoff_s=2.0,
                                                s3_max_attempts=2)

    proxy.cut()
    job = client.submit(sample_png(128, 128), {"layers": 2, "num_inference_steps": 2, "prompt": "x"})
    # The first delivery fails on storage and is put back for a retry (the worker logs it).
    worker_log = stack.run_dir / "worker-0.log"
    wait_for(lambda: f"job {job['id']}: transient fault" in worker_log.read_text(errors="replace"), 120,
             interval_s=0.2, what="the first delivery's transient fault")
    assert client.get(job["id"])["status"] in ("running", "queued")
    proxy.restore()
    final = client.wait(job["id"], timeout_s=120)
    assert final["status"] == "succeeded", final.get("error")
    assert final["attempts"] >= 2
    assert len(terminal_transitions(stack, job["id"])) == 1


def test_an_outage_longer_than_every_retry_fails_the_job_cleanly(make_stack, s3_settings_overrides):
    """Past its last retry a job ends `failed` with the fault's code, not `running` forever."""
    stack, proxy, client = _worker_behind_proxy(make_stack, s3_settings_overrides, retry_backoff_s=1.0,
                                                s3_max_attempts=2, max_transient_retries=1)

    proxy.cut()
    job = client.submit(sample_png(128, 128), {"layers": 2, "num_inference_steps": 2, "prompt": "x"})
    final = client.wait(job["id"], timeout_s=180)
    assert (final["status"], final["error"]["code"]) == ("failed", "storage_unavailable"), final
    assert final["attempts"] == 2  # the first delivery and its one retry
    assert len(terminal_transitions(stack, job["id"])) == 1
