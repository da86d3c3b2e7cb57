"""Webhooks, the torch-free half: what a request may ask for, where we may send, how a delivery is
signed and what it carries. The API uses it to validate requests and to enqueue events of jobs that
end without a worker (canceled while queued, answered from the cache); the CPU worker
(`worker/webhooks.py`) delivers. User-facing description: `docs/webhooks.md`. Delivery records are
kept by `storage.deliveries.WebhookDeliveries`; this module never opens a Redis client."""

from __future__ import annotations

import hashlib
import hmac
import ipaddress
import json
import logging
import socket
import time
import urllib.parse
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from layerq import __version__
from layerq.config import Settings
from layerq.errors import ValidationFailed
from layerq.queues import WEBHOOK_QUEUE, WEBHOOK_TASK  # noqa: F401 (re-exported)
from layerq.results import iso

if TYPE_CHECKING:
    from storage.deliveries import WebhookDeliveries

log = logging.getLogger(__name__)

MAX_URL_CHARS = 2048
Event = Literal["completed", "failed", "canceled", "expired", "started"]
DEFAULT_EVENTS: tuple[Event, ...] = ("completed", "failed", "canceled", "expired")
EVENT_FOR_STATUS: dict[str, Event] = {
    "running": "started", "succeeded": "completed", "failed": "failed", "canceled": "canceled", "expired": "expired",
}
USER_AGENT = f"layerq-webhooks/{__version__}"
# A namespace of our own, so delivery ids never collide with uuid5s other software derives from job ids.
_DELIVERY_NS = uuid.UUID("6c1d0f5e-2b8a-4c55-9a51-3f3f0a9e7b21")
_CGNAT = ipaddress.ip_network("100.64.0.0/10")
_NAT64 = ipaddress.ip_network("64:ff9b::/96")

Resolver = Callable[..., list]  # socket.getaddrinfo's shape; tests inject fakes


class WebhookTargetRefused(ValidationFailed):
    """Raised when a webhook URL is malformed or points at an address we refuse (private, loopback,
    link-local, ...). A ValidationFailed (400 at the API, field `webhook.url`); at delivery time it is
    final: the host now resolves somewhere forbidden (DNS rebinding), and retrying will not help."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="webhook.url")


class WebhookUnresolvable(WebhookTargetRefused):
    """Raised when the host does not resolve. Refused at request time; retried at delivery time
    (DNS outages pass)."""


class WebhookSpec(BaseModel):
    """The `webhook` field of a job or batch request."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    url: str = Field(max_length=MAX_URL_CHARS)
    events: list[Event] = Field(default_factory=lambda: list(DEFAULT_EVENTS), min_length=1)

    @field_validator("url")
    @classmethod
    def _url_syntax(cls, url: str) -> str:
        try:
            parse_url(url)  # syntax only; the address check needs Settings (check_request)
        except WebhookTargetRefused as exc:  # pydantic reports ValueErrors as field errors
            raise ValueError(exc.message) from None
        return url

    @field_validator("events")
    @classmethod
    def _dedupe(cls, events: list[Event]) -> list[Event]:
        return list(dict.fromkeys(events))


@dataclass(frozen=True)
class Target:
    """A checked destination: connect to one of `addresses`, send `host_header`, verify TLS as `host`."""

    scheme: str
    host: str
    port: int
    request_target: str
    addresses: tuple[str, ...]

    @property
    def host_header(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        default = 443 if self.scheme == "https" else 80
        return host if self.port == default else f"{host}:{self.port}"


def parse_url(url: str) -> tuple[str, str, int, str]:
    """(scheme, host, port, path?query) of an http(s) URL, or WebhookTargetRefused."""
    if len(url) > MAX_URL_CHARS or any(c.isspace() or ord(c) < 32 or ord(c) == 127 for c in url):
        raise WebhookTargetRefused("webhook URL is too long or contains whitespace/control characters")
    parts = urllib.parse.urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise WebhookTargetRefused("webhook URL must be http or https")
    if parts.username is not None or parts.password is not None:
        raise WebhookTargetRefused("webhook URL must not carry credentials; verify the signature instead")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
        host = (parts.hostname or "").encode("idna").decode("ascii")
    except (ValueError, UnicodeError) as exc:
        raise WebhookTargetRefused(f"webhook URL has an invalid host or port: {exc}") from exc
    if not host:
        raise WebhookTargetRefused("webhook URL has no host")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return parts.scheme, host, port, path


def parse_allow(allow: str | Sequence[str]) -> tuple[set[str], list[Any]]:
    """Split an allow-list ("127.0.0.1, hooks.internal, 10.0.0.0/8") into host names and networks."""
    items = allow.split(",") if isinstance(allow, str) else allow
    hosts, nets = set(), []
    for item in (i.strip().lower() for i in items):
        if not item:
            continue
        try:
            nets.append(ipaddress.ip_network(item.strip("[]"), strict=False))
        except ValueError:
            hosts.add(item.rstrip("."))
    return hosts, nets


def refusal(ip: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    """Why we must not connect to `ip`, or None when it is a public unicast address."""
    if isinstance(ip, ipaddress.IPv6Address):
        # IPv4 addresses smuggled inside IPv6 (mapped, 6to4, Teredo, NAT64) reach the IPv4 host.
        if ip in _NAT64:  # DNS64 on IPv6-only networks: as good or bad as the IPv4 address it wraps
            why = refusal(ipaddress.IPv4Address(int(ip) & 0xFFFFFFFF))
            return f"{why} (IPv4 inside IPv6)" if why else None
        embedded = ip.ipv4_mapped or ip.sixtofour or (ip.teredo[1] if ip.teredo else None)
        if embedded is not None and (why := refusal(embedded)):
            return f"{why} (IPv4 inside IPv6)"
    for name in ("loopback", "unspecified", "link_local", "multicast", "private", "reserved"):
        if getattr(ip, f"is_{name}"):
            return name.replace("_", "-")
    if ip.version == 4 and ip in _CGNAT:
        return "carrier-grade NAT"
    return None if ip.is_global else "not globally routable"


def resolve_target(url: str, allow: str | Sequence[str] = "", resolve: Resolver | None = None) -> Target:
    """Resolve the host once and check every address; the caller connects only to these addresses,
    so a second lookup (DNS rebinding) can never send us elsewhere."""
    scheme, host, port, path = parse_url(url)
    allow_hosts, allow_nets = parse_allow(allow)
    try:
        infos = (resolve or socket.getaddrinfo)(host, port, proto=socket.IPPROTO_TCP)
    except (OSError, UnicodeError) as exc:
        raise WebhookUnresolvable(f"webhook host {host!r} does not resolve: {exc}") from exc
    addresses = list(dict.fromkeys(str(info[4][0]).split("%")[0] for info in infos))
    if not addresses:
        raise WebhookUnresolvable(f"webhook host {host!r} has no addresses")
    if host.rstrip(".") not in allow_hosts:
        for text in addresses:
            ip = ipaddress.ip_address(text)
            why = refusal(ip)
            if why and not any(ip.version == net.version and ip in net for net in allow_nets):
                raise WebhookTargetRefused(
                    f"webhook host {host!r} resolves to {text} ({why}); "
                    "add it to LAYERQ_WEBHOOK_ALLOW_HOSTS to allow it"
                )
    return Target(scheme, host.strip("[]"), port, path, tuple(addresses))


def check_target(url: str, allow: str | Sequence[str] = "", resolve: Resolver | None = None) -> None:
    """Raise WebhookTargetRefused (a ValidationFailed, field `webhook.url`) unless `url` may be called."""
    resolve_target(url, allow, resolve)


def check_request(spec: WebhookSpec, settings: Settings, resolve: Resolver | None = None) -> None:
    """Request-time check for the API: webhooks configured, and the target acceptable now."""
    if not settings.webhook_secret:
        raise ValidationFailed("webhooks are not enabled: LAYERQ_WEBHOOK_SECRET is unset", field="webhook")
    check_target(spec.url, settings.webhook_allow_hosts, resolve)


# --- signing ---------------------------------------------------------------------------------------
def sign(secret: str, timestamp: int, body: bytes) -> str:
    """Hex HMAC-SHA256 of `"<timestamp>." + body`: binding the time stops replays of old bodies."""
    return hmac.new(secret.encode(), f"{timestamp}.".encode() + body, hashlib.sha256).hexdigest()


def delivery_headers(
    secret: str, body: bytes, event: str, delivery_id: str, timestamp: int | None = None
) -> dict[str, str]:
    ts = int(time.time()) if timestamp is None else timestamp
    return {
        "Content-Type": "application/json",
        "User-Agent": USER_AGENT,
        "Layerq-Event": f"job.{event}",
        "Layerq-Delivery": delivery_id,
        "Layerq-Signature": f"t={ts},v1={sign(secret, ts, body)}",
    }


def verify(secret: str, header: str, body: bytes, tolerance_s: float = 300, now: float | None = None) -> bool:
    """Receiver side: True when `header` (`t=<ts>,v1=<hex>[,v1=...]`) signs `body` within tolerance."""
    ts, sigs = None, []
    for part in (header or "").split(","):
        name, _, value = part.strip().partition("=")
        if not value.isascii():  # hostile headers: int("²") and compare_digest("é", ...) would raise
            continue
        if name == "t" and value.isdigit():
            ts = int(value)
        elif name == "v1":
            sigs.append(value)
    if ts is None or not sigs:
        return False
    if abs((time.time() if now is None else now) - ts) > tolerance_s:
        return False
    expected = sign(secret, ts, body)
    return any(hmac.compare_digest(expected, s) for s in sigs)


# --- events and payloads ---------------------------------------------------------------------------
def delivery_id_for(job_id: str, event: str) -> str:
    """Deterministic, so a redelivered job (or a racing second worker) cannot make two deliveries."""
    return str(uuid.uuid5(_DELIVERY_NS, f"{job_id}:{event}"))


def plan_retries(attempts: int = 6, base_s: float = 30.0, factor: float = 3.0, cap_s: float = 1200.0) -> list[float]:
    """Delay before each attempt: 0, then base·factor^k capped. Defaults: 0, 30, 90, 270, 810, 1200 s
    (6 attempts over 40 min, so a receiver down for a deploy or a short outage still gets the event)."""
    return [0.0] + [min(cap_s, base_s * factor**k) for k in range(max(0, attempts - 1))]


def event_payload(
    event: str, job_view: dict[str, Any], delivery_id: str, created_at: float | None = None
) -> dict[str, Any]:
    """The thin body: the job's status, error, progress and signed result URLs; never params or bytes."""
    fields = ("id", "kind", "status", "batch_id", "error", "progress",
              "created_at", "started_at", "finished_at", "result")
    return {
        "id": delivery_id,
        "type": f"job.{event}",
        "created_at": iso(time.time() if created_at is None else created_at),
        "data": {"job": {k: job_view.get(k) for k in fields}},
    }


# --- enqueueing (API and decompose worker) ---------------------------------------------------------
def enqueue_event(
    celery_app: Any, settings: Settings, job_id: str, event: str, spec: WebhookSpec | None,
    *, deliveries: "WebhookDeliveries", created_at: float | None = None,
) -> str | None:
    """Queue the first attempt of `event` for `job_id` if `spec` asks for it; return the delivery id,
    or None when filtered out, already queued (a redelivered job), or webhooks are off.

    Never raises: a webhook problem must not change a job's outcome, so errors are logged."""
    if spec is None or event not in spec.events:
        return None
    if not settings.webhook_secret:
        log.warning("job %s: webhook %s not sent: LAYERQ_WEBHOOK_SECRET is unset", job_id, event)
        return None
    delivery_id = delivery_id_for(job_id, event)
    try:
        if not deliveries.claim(delivery_id, job_id=job_id, event=event, url=spec.url):
            return None  # the dedupe: one delivery per (job, event), ever
        message = {"job_id": job_id, "event": event, "delivery_id": delivery_id, "url": spec.url, "attempt": 1,
                   "created_at": time.time() if created_at is None else created_at}
        # The queue is named here, not only in task_routes: the API's app may not route this task.
        celery_app.send_task(WEBHOOK_TASK, args=[message], queue=WEBHOOK_QUEUE)
    except Exception:
        log.exception("job %s: could not enqueue webhook %s", job_id, event)
        try:
            deliveries.release(delivery_id)  # let a later redelivery of the job try again
        except Exception:
            pass
        return None
    return delivery_id


def notify(
    celery_app: Any, settings: Settings, rec: dict[str, Any], *, deliveries: "WebhookDeliveries"
) -> str | None:
    """Enqueue the event a job record's current status stands for (running → started, succeeded →
    completed, failed, canceled), if the record's `webhook` field (WebhookSpec JSON) asks for it.
    Call it after every transition; it never raises and sends each (job, event) at most once."""
    event, raw = EVENT_FOR_STATUS.get(str(rec.get("status"))), rec.get("webhook")
    if event is None or not raw:
        return None
    try:
        spec = WebhookSpec.model_validate(json.loads(raw) if isinstance(raw, str) else raw)
    except ValueError:
        log.error("job %s: stored webhook spec is invalid; no webhook sent", rec.get("id"))
        return None
    when = rec.get("started_at") if event == "started" else rec.get("finished_at")
    return enqueue_event(celery_app, settings, rec["id"], event, spec, deliveries=deliveries, created_at=when)
