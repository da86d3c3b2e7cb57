"""Webhooks: signing, target checks and retry plans as unit tests; delivery against real HTTP(S)
receivers on loopback (allow-listed) through `deliver()`, and one run through a real Celery worker
process on the `cpu` queue."""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
import types
import uuid
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from layerq import objects as keys
from layerq.config import Settings
from layerq.errors import ValidationFailed
from layerq.webhooks import (
    WEBHOOK_QUEUE, WEBHOOK_TASK, WebhookSpec, WebhookTargetRefused, check_request, check_target,
    delivery_headers, delivery_id_for, enqueue_event, event_payload, notify, plan_retries, resolve_target, sign,
    verify,
)
from storage.client import connect
from storage.deliveries import WebhookDeliveries
from storage.jobs import JobStore, NewJob, new_job_id
from storage.local import LocalDiskStore
from tests.helpers import wait_for
from worker.webhooks import WebhookMessage, deliver, delivery_status

SECRET = "whsec-test"


# --- fixtures ------------------------------------------------------------------------------------
class Overlay(types.SimpleNamespace):
    """Settings plus overrides, as attributes; anything else (properties too) from the Settings.
    Not Settings.replace: works before and after the webhook fields join Settings."""

    def __init__(self, base: Settings, **overrides: Any) -> None:
        super().__init__(**overrides)
        object.__setattr__(self, "_base", base)

    def __getattr__(self, name: str) -> Any:
        return getattr(object.__getattribute__(self, "_base"), name)


WEBHOOK_DEFAULTS = dict(webhook_secret=SECRET, webhook_allow_hosts="127.0.0.1", webhook_max_attempts=6,
                        webhook_backoff_base_s=0.01, webhook_backoff_factor=2.0, webhook_backoff_cap_s=0.05,
                        webhook_timeout_s=2.0)


def make_settings(**overrides: Any) -> Any:
    fields = {f.name for f in dataclasses.fields(Settings)}
    base = Settings.from_env(environ={}, **{k: v for k, v in overrides.items() if k in fields})
    return Overlay(base, **{**WEBHOOK_DEFAULTS, **overrides})


@pytest.fixture
def jobs(redis_url: str) -> JobStore:
    return JobStore.from_url(redis_url, key_prefix=f"wh{uuid.uuid4().hex[:8]}")


@pytest.fixture
def deliveries(redis_url: str, jobs: JobStore) -> WebhookDeliveries:
    return WebhookDeliveries(connect(redis_url), key_prefix=jobs.prefix, ttl_s=3600)


@pytest.fixture
def store(tmp_path: Path) -> LocalDiskStore:
    return LocalDiskStore(tmp_path / "data", "signing-secret")


def finished_job(jobs: JobStore) -> str:
    job_id = new_job_id()
    jobs.create(job_id, kind="decompose", queue="decompose", params={"layers": 2, "prompt": "x" * 500},
                input_key=keys.input_key(job_id))
    jobs.begin_attempt(job_id, max_deliveries=3)
    layers = [{"index": i, "key": keys.layer_key(job_id, i), "width": 8, "height": 8} for i in range(2)]
    jobs.succeed(job_id, {"layers": layers, "exports": ["zip"], "steps": 2}, {"total": 1.0})
    return job_id


class Receiver:
    """A real HTTP(S) server on loopback answering POSTs from a script of (status, headers)."""

    def __init__(self, script: list[tuple[int, dict[str, str]]] = (), tls: ssl.SSLContext | None = None,
                 delay_s: float = 0.0) -> None:
        self.script, self.requests, self.delay_s = list(script), [], delay_s
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
                body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
                valid = verify(SECRET, self.headers["Layerq-Signature"], body)
                receiver.requests.append({"method": "POST", "path": self.path, "headers": dict(self.headers),
                                          "body": body, "valid": valid})
                time.sleep(receiver.delay_s)
                status, headers = receiver.script.pop(0) if receiver.script else (200, {})
                try:
                    self.send_response(status)
                    for name, value in {**headers, "Content-Length": "2"}.items():
                        self.send_header(name, value)
                    self.end_headers()
                    self.wfile.write(b"ok")
                except OSError:  # the client gave up waiting (the timeout test)
                    pass

            def do_GET(self) -> None:  # noqa: N802 (a followed redirect would land here)
                receiver.requests.append({"method": "GET", "path": self.path})
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        if tls is not None:
            self.server.socket = tls.wrap_socket(self.server.socket, server_side=True)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()

    def url(self, host: str = "127.0.0.1", path: str = "/hook", scheme: str = "http") -> str:
        return f"{scheme}://{host}:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture
def receiver_factory():
    made: list[Receiver] = []

    def make(*args: Any, **kwargs: Any) -> Receiver:
        made.append(Receiver(*args, **kwargs))
        return made[-1]

    yield make
    for r in made:
        r.close()


def drive(msg: WebhookMessage, **kwargs: Any) -> list:
    """Run attempts the way the task chains them (next attempt after `retry_in`) until one is final."""
    outcomes = [deliver(msg, **kwargs)]
    while outcomes[-1].state == "retrying":
        time.sleep(outcomes[-1].retry_in or 0)
        msg = msg.next()
        outcomes.append(deliver(msg, **kwargs))
    return outcomes


def message(job_id: str, url: str, event: str = "completed") -> WebhookMessage:
    return WebhookMessage(job_id=job_id, event=event, delivery_id=delivery_id_for(job_id, event), url=url,
                          attempt=1, created_at=time.time())


# --- signing -------------------------------------------------------------------------------------
def test_signature_verifies_and_tampering_fails():
    body = b'{"id":"d1"}'
    headers = delivery_headers(SECRET, body, "completed", "d1", timestamp=1_700_000_000)
    header = headers["Layerq-Signature"]
    assert header == f"t=1700000000,v1={sign(SECRET, 1_700_000_000, body)}"
    assert headers["Layerq-Delivery"] == "d1" and headers["Layerq-Event"] == "job.completed"
    assert headers["User-Agent"].startswith("layerq-webhooks/") and headers["Content-Type"] == "application/json"
    now = 1_700_000_010
    assert verify(SECRET, header, body, now=now)
    assert not verify(SECRET, header, body + b" ", now=now)  # tampered body
    assert not verify(SECRET, header.replace("t=1700000000", "t=1700000001"), body, now=now)  # tampered time
    assert not verify("other", header, body, now=now)
    assert not verify(SECRET, header, body, now=now + 301)  # too old: a replay
    for hostile in ["garbage", "", "t=²,v1=ab", f"t=1700000000,v1=é{header[-63:]}", "t=1700000000"]:
        assert not verify(SECRET, hostile, body, now=now)
    # Several v1 values (secret rotation on the receiver side): any match verifies.
    assert verify(SECRET, f"t=1700000000,v1={'0' * 64},{header.split(',')[1]}", body, now=now)


# --- retry plan and spec -------------------------------------------------------------------------
def test_default_retry_plan_spans_ten_minutes_in_five_or_more_attempts():
    plan = plan_retries()
    assert plan[0] == 0 and len(plan) >= 5 and sum(plan) >= 600
    assert plan == sorted(plan)
    assert plan_retries(3, 0.01, 2, 1) == [0, 0.01, 0.02]
    assert max(plan_retries(10, 30, 3, 1200)) == 1200


def test_spec_validates_url_and_events():
    spec = WebhookSpec(url="https://hooks.example.com/x")
    assert spec.events == ["completed", "failed", "canceled", "expired"]
    assert WebhookSpec(url="http://a.example", events=["started", "started", "failed"]).events == ["started", "failed"]
    for bad in [{"url": "ftp://a.example"}, {"url": "https://a.example/" + "x" * 2048}, {"url": "http://u:p@a.example"},
                {"url": "http://a.example", "events": []}, {"url": "http://a.example", "events": ["done"]},
                {"url": "http://a.example", "secret": "x"}, {"url": "http://a.example/\nx"}, {"url": "http:///x"}]:
        with pytest.raises(ValueError):
            WebhookSpec.model_validate(bad)


# --- target checks -------------------------------------------------------------------------------
@pytest.mark.parametrize("host", ["127.0.0.1", "10.1.2.3", "169.254.169.254", "[::1]", "[::ffff:127.0.0.1]",
                                  "100.64.0.7", "192.168.1.1", "0.0.0.0", "224.0.0.1", "[fe80::1]", "[fc00::1]",
                                  "localhost"])
def test_private_targets_are_refused(host: str):
    with pytest.raises(WebhookTargetRefused) as info:
        check_target(f"http://{host}:8080/hook", "")
    assert isinstance(info.value, ValidationFailed) and info.value.field == "webhook.url"


def test_allow_list_admits_hosts_ips_and_cidrs():
    check_target("http://127.0.0.1:9/", "127.0.0.1")
    check_target("http://10.9.8.7/", "hooks.internal, 10.0.0.0/8")
    check_target("http://localhost:9/", "localhost")
    with pytest.raises(WebhookTargetRefused):
        check_target("http://10.9.8.7/", "10.0.0.0/16")


def fake_dns(table: dict[str, list[str]]):
    def resolve(host: str, port: int, **_kw: Any) -> list:
        if host not in table:
            raise socket.gaierror(socket.EAI_NONAME, "Name or service not known")
        return [(socket.AF_INET6 if ":" in a else socket.AF_INET, socket.SOCK_STREAM, 6, "", (a, port))
                for a in table[host]]

    return resolve


def test_every_resolved_address_is_checked():
    resolve = fake_dns({"mixed.example": ["93.184.216.34", "10.0.0.1"], "public.example": ["93.184.216.34"]})
    with pytest.raises(WebhookTargetRefused):
        check_target("https://mixed.example/", "", resolve)
    target = resolve_target("https://public.example:8443/a?b=1", "", resolve)
    assert target.addresses == ("93.184.216.34",) and target.host_header == "public.example:8443"
    assert target.request_target == "/a?b=1"
    with pytest.raises(WebhookTargetRefused):  # unresolvable hosts are refused at request time
        check_target("https://nowhere.example/", "", resolve)


def test_check_request_needs_a_secret():
    spec = WebhookSpec(url="http://127.0.0.1:9/")
    with pytest.raises(ValidationFailed):
        check_request(spec, make_settings(webhook_secret=""))
    check_request(spec, make_settings())


# --- payload -------------------------------------------------------------------------------------
def test_payload_is_thin():
    view = {"id": "j1", "kind": "decompose", "status": "succeeded", "params": {"prompt": "x" * 1000},
            "result": {"layers": [{"index": 0, "url": "https://s/0.png", "width": 1, "height": 1}]}}
    payload = event_payload("completed", view, "d1", created_at=0)
    assert payload["id"] == "d1" and payload["type"] == "job.completed"
    assert payload["created_at"] == "1970-01-01T00:00:00.000Z"
    assert "params" not in payload["data"]["job"] and payload["data"]["job"]["result"] == view["result"]


# --- delivery against real receivers -------------------------------------------------------------
def test_delivery_is_signed_thin_and_carries_fresh_urls(jobs, store, deliveries, receiver_factory):
    rx = receiver_factory()
    job_id = finished_job(jobs)
    (outcome,) = drive(message(job_id, rx.url()), settings=make_settings(), jobs=jobs, store=store, deliveries=deliveries)
    assert outcome.state == "delivered" and outcome.status_code == 200
    (req,) = rx.requests
    assert req["valid"] and req["headers"]["Layerq-Event"] == "job.completed"
    assert req["headers"]["Layerq-Delivery"] == delivery_id_for(job_id, "completed")
    body = json.loads(req["body"])
    job = body["data"]["job"]
    assert job["id"] == job_id and job["status"] == "succeeded" and "params" not in job
    # Local backend without a public URL: root-relative signed URLs (documented).
    assert job["result"]["layers"][1]["url"].startswith(f"/files/{keys.layer_key(job_id, 1)}?")
    assert "sig=" in job["result"]["exports"]["zip"] and len(req["body"]) < 4096


def test_failures_are_retried_with_the_same_delivery_id(jobs, store, deliveries, receiver_factory):
    rx = receiver_factory([(500, {}), (503, {})])
    job_id = finished_job(jobs)
    settings = make_settings()
    outcomes = drive(message(job_id, rx.url()), settings=settings, jobs=jobs, store=store, deliveries=deliveries)
    assert [o.state for o in outcomes] == ["retrying", "retrying", "delivered"]
    assert [o.retry_in for o in outcomes[:2]] == [0.01, 0.02]
    assert len(rx.requests) == 3 and all(r["valid"] for r in rx.requests)
    assert len({r["headers"]["Layerq-Delivery"] for r in rx.requests}) == 1
    assert [r["headers"]["Layerq-Attempt"] for r in rx.requests] == ["1", "2", "3"]
    status = delivery_status(deliveries, delivery_id_for(job_id, "completed"))
    assert status["state"] == "delivered" and status["attempts"] == 3
    assert [h["status_code"] for h in status["history"]] == [500, 503, 200]
    # A redelivered message for an attempt that already ran sends nothing.
    assert deliver(message(job_id, rx.url()), settings=settings, jobs=jobs, store=store, deliveries=deliveries).state == "skipped"
    assert len(rx.requests) == 3


def test_attempts_are_capped(jobs, store, deliveries, receiver_factory):
    rx = receiver_factory([(500, {})] * 10)
    outcomes = drive(message(finished_job(jobs), rx.url()), settings=make_settings(webhook_max_attempts=4),
                     jobs=jobs, store=store, deliveries=deliveries)
    assert [o.state for o in outcomes] == ["retrying"] * 3 + ["failed"] and len(rx.requests) == 4


def test_redirects_are_not_followed(jobs, store, deliveries, receiver_factory):
    rx = receiver_factory([(302, {"Location": "/elsewhere"})])
    outcome = deliver(message(finished_job(jobs), rx.url()), settings=make_settings(), jobs=jobs, store=store, deliveries=deliveries)
    assert outcome.state == "retrying" and outcome.status_code == 302
    assert [r["path"] for r in rx.requests] == ["/hook"]


def test_gone_stops_retries(jobs, store, deliveries, receiver_factory):
    rx = receiver_factory([(410, {})])
    outcomes = drive(message(finished_job(jobs), rx.url()), settings=make_settings(), jobs=jobs, store=store, deliveries=deliveries)
    assert [o.state for o in outcomes] == ["gone"] and len(rx.requests) == 1


def test_connection_errors_and_timeouts_are_retried(jobs, store, deliveries, receiver_factory):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    job_id = finished_job(jobs)
    refused = deliver(message(job_id, f"http://127.0.0.1:{closed_port}/"), settings=make_settings(), jobs=jobs,
                      store=store, deliveries=deliveries)
    assert refused.state == "retrying" and "Connection" in (refused.error or "")
    slow = receiver_factory(delay_s=1.0)
    timed_out = deliver(message(job_id, slow.url(), "failed"), settings=make_settings(webhook_timeout_s=0.3),
                        jobs=jobs, store=store, deliveries=deliveries)
    assert timed_out.state == "retrying" and "Timeout" in (timed_out.error or "")


def test_delivery_time_check_refuses_rebound_dns_and_pins_the_checked_address(jobs, store, deliveries, receiver_factory):
    rx = receiver_factory()
    job_id = finished_job(jobs)
    settings = make_settings(webhook_allow_hosts="")
    # The host passed the API's check with a public address, now resolves to loopback: never sent.
    outcome = deliver(message(job_id, rx.url("hooks.example")), settings=settings, jobs=jobs, store=store, deliveries=deliveries,
                      resolve=fake_dns({"hooks.example": ["127.0.0.1"]}))
    assert outcome.state == "refused" and rx.requests == []
    # Allow-listed by name: we connect to the address we resolved, with the URL's Host header.
    outcome = deliver(message(job_id, rx.url("hooks.example"), "failed"),
                      settings=make_settings(webhook_allow_hosts="hooks.example"), jobs=jobs, store=store, deliveries=deliveries,
                      resolve=fake_dns({"hooks.example": ["127.0.0.1"]}))
    assert outcome.state == "delivered" and rx.requests[0]["headers"]["Host"] == f"hooks.example:{rx.port}"


def self_signed(tmp_path: Path, name: str) -> tuple[ssl.SSLContext, str]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.timezone.utc)
    cert = (x509.CertificateBuilder().subject_name(subject).issuer_name(subject).public_key(key.public_key())
            .serial_number(x509.random_serial_number()).not_valid_before(now - datetime.timedelta(hours=1))
            .not_valid_after(now + datetime.timedelta(hours=1))
            .add_extension(x509.SubjectAlternativeName([x509.DNSName(name)]), critical=False)
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(key, hashes.SHA256()))
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(cert_path, key_path)
    return ctx, str(cert_path)


def test_https_verifies_the_url_host_while_connecting_to_the_checked_address(jobs, store, deliveries, tmp_path, receiver_factory):
    pytest.importorskip("cryptography")
    ctx, ca = self_signed(tmp_path, "hooks.example")
    rx = receiver_factory(tls=ctx)
    job_id = finished_job(jobs)
    dns = fake_dns({"hooks.example": ["127.0.0.1"], "other.example": ["127.0.0.1"]})
    settings = make_settings(webhook_allow_hosts="hooks.example,other.example")
    ok = deliver(message(job_id, rx.url("hooks.example", scheme="https")), settings=settings, jobs=jobs,
                 store=store, deliveries=deliveries, resolve=dns, ca_certs=ca)
    assert ok.state == "delivered" and rx.requests[0]["valid"]
    wrong_name = deliver(message(job_id, rx.url("other.example", scheme="https"), "failed"), settings=settings,
                         jobs=jobs, store=store, deliveries=deliveries, resolve=dns, ca_certs=ca)
    assert wrong_name.state == "retrying" and len(rx.requests) == 1


# --- enqueueing ----------------------------------------------------------------------------------
class FakeCelery:
    def __init__(self) -> None:
        self.sent: list[dict] = []

    def send_task(self, name: str, args: list, queue: str, **_kw: Any) -> None:
        self.sent.append({"name": name, "args": args, "queue": queue})


def test_enqueue_respects_filters_and_dedupes(jobs, deliveries):
    app, spec = FakeCelery(), WebhookSpec(url="http://127.0.0.1:9/", events=["completed", "started"])
    settings = make_settings(key_prefix=jobs.prefix)
    assert enqueue_event(app, settings, "j1", "failed", spec, deliveries=deliveries) is None  # filtered out
    delivery = enqueue_event(app, settings, "j1", "completed", spec, deliveries=deliveries)
    assert delivery == delivery_id_for("j1", "completed")
    assert enqueue_event(app, settings, "j1", "completed", spec, deliveries=deliveries) is None  # a redelivered job
    assert enqueue_event(app, make_settings(webhook_secret=""), "j2", "completed", spec, deliveries=deliveries) is None
    (sent,) = app.sent
    assert sent["name"] == WEBHOOK_TASK and sent["queue"] == WEBHOOK_QUEUE
    msg = WebhookMessage.model_validate(sent["args"][0])
    assert msg.attempt == 1 and msg.delivery_id == delivery and msg.url == spec.url
    assert delivery_status(deliveries, delivery)["state"] == "queued"


def test_notify_maps_record_status_to_events_once(jobs, deliveries):
    app, settings = FakeCelery(), make_settings(key_prefix=jobs.prefix)
    job_id = new_job_id()
    spec = WebhookSpec(url="http://127.0.0.1:9/", events=["started", "completed"])
    jobs.create_many([NewJob(job_id, {}, keys.input_key(job_id), webhook=spec.model_dump())])  # how the API stores it
    assert notify(app, settings, jobs.get(job_id), deliveries=deliveries) is None  # queued: no event
    jobs.begin_attempt(job_id, max_deliveries=3)
    assert notify(app, settings, jobs.get(job_id), deliveries=deliveries) == delivery_id_for(job_id, "started")
    jobs.begin_attempt(job_id, max_deliveries=3)  # redelivered job: running again, no second event
    assert notify(app, settings, jobs.get(job_id), deliveries=deliveries) is None
    jobs.succeed(job_id, {"layers": [], "exports": []}, {"total": 1.0})
    rec = jobs.get(job_id)
    assert notify(app, settings, rec, deliveries=deliveries) == delivery_id_for(job_id, "completed")
    assert [m["args"][0]["event"] for m in app.sent] == ["started", "completed"]
    assert app.sent[1]["args"][0]["created_at"] == rec["finished_at"]
    assert notify(app, settings, {"id": "x", "status": "failed"}, deliveries=deliveries) is None  # no webhook


# --- through a real Celery worker on the cpu queue -----------------------------------------------
WORKER = """
import json, os
from layerq.celery_app import make_celery
from tests.test_webhooks import make_settings
from worker import webhooks
app = make_celery(make_settings(**json.loads(os.environ["WEBHOOK_TEST_SETTINGS"])))
webhooks.register(app)
app.worker_main(["worker", "--pool=solo", "-Q", "cpu", "-n", "wh@%h", "--loglevel", "WARNING",
                 "--without-gossip", "--without-mingle", "--without-heartbeat"])
"""


def test_real_worker_retries_until_delivered(jobs, deliveries, redis_url, tmp_path, receiver_factory):
    from layerq.celery_app import make_celery

    rx = receiver_factory([(500, {}), (500, {})])
    settings = make_settings(redis_url=redis_url, key_prefix=jobs.prefix, storage_dir=str(tmp_path / "data"),
                             signing_secret="signing-secret", webhook_backoff_base_s=0.2, webhook_backoff_cap_s=0.5)
    overrides = {k: v for k, v in vars(settings).items() if k.startswith("webhook_") or k in
                 ("redis_url", "key_prefix", "storage_dir", "signing_secret")}
    env = {**os.environ, "WEBHOOK_TEST_SETTINGS": json.dumps(overrides)}
    proc = subprocess.Popen([sys.executable, "-c", WORKER], env=env, cwd=Path(__file__).resolve().parents[1])
    try:
        job_id = finished_job(jobs)
        spec = WebhookSpec(url=rx.url())
        delivery = enqueue_event(make_celery(settings), settings, job_id, "completed", spec, deliveries=deliveries)
        wait_for(lambda: len(rx.requests) >= 3 or proc.poll() is not None, 20, what="3 delivery attempts")
        assert [r["valid"] for r in rx.requests] == [True] * 3
        # The attempt is recorded just after the receiver answered.
        wait_for(lambda: delivery_status(deliveries, delivery)["state"] == "delivered", 20,
                 what="delivery recorded as delivered")
    finally:
        proc.terminate()
        proc.wait(10)
