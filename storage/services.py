"""Everything a layerq process talks to, opened one way: `Services.open(settings)`.

The API, the GPU worker and the CPU worker each hold one `Services` for their whole life: one Redis
connection pool shared by every store, the object store the settings name, and the Celery app that
sends messages. The stores keep the Redis client to themselves; nothing outside `storage/` speaks
Redis."""

from __future__ import annotations

from dataclasses import dataclass

from celery import Celery

from layerq.config import Settings
from storage.admission import Admission
from storage.apikeys import ApiKeyStore
from storage.base import ObjectStore
from storage.batches import BatchStore
from storage.cache import ResultCache
from storage.captions import CaptionStore
from storage.client import connect, options_of
from storage.deliveries import WebhookDeliveries
from storage.factory import open_object_store
from storage.idempotency import IdempotencyStore
from storage.jobs import JobStore
from storage.lineage import Lineage
from storage.stats import ServiceTimes
from storage.uploads import UploadStore
from storage.workers import WorkerRegistry


@dataclass(frozen=True)
class Services:
    settings: Settings
    store: ObjectStore
    """Inputs, layers, exports and manifests (S3 or local disk)."""
    jobs: JobStore
    batches: BatchStore
    cache: ResultCache
    idempotency: IdempotencyStore
    deliveries: WebhookDeliveries
    workers: WorkerRegistry
    uploads: UploadStore
    stats: ServiceTimes
    celery: Celery
    lineage: Lineage
    """Parents and children of layer-set jobs."""
    admission: Admission
    """Fair admission of queued jobs to the broker (a no-op unless `fair_queues`)."""
    api_keys: ApiKeyStore
    captions: CaptionStore | None = None
    """Auto-captions written ahead for queued jobs (worker/caption_ahead.py)."""
    edit_stats: ServiceTimes | None = None
    """Service times of edit jobs (their own buckets: an edit's cost does not depend on layer counts)."""

    def stats_of(self, kind: str) -> ServiceTimes:
        return self.edit_stats if kind == "edit" and self.edit_stats is not None else self.stats

    @classmethod
    def open(cls, settings: Settings, celery: Celery | None = None) -> "Services":
        """Open every store on one Redis client; `celery` defaults to the shared app built from `settings`."""
        if celery is None:
            from layerq.celery_app import make_celery

            celery = make_celery(settings)
        client = connect(settings.redis_url, options_of(settings))
        prefix = settings.key_prefix
        jobs = JobStore(client, key_prefix=prefix, ttl_s=settings.job_ttl_s, fair=settings.fair_queues,
                        retain_max_s=settings.retain_max_s)
        return cls(
            settings=settings,
            store=open_object_store(settings),
            jobs=jobs,
            batches=BatchStore(client, jobs),
            cache=ResultCache(client, jobs),
            idempotency=IdempotencyStore(client, key_prefix=prefix, ttl_s=settings.idempotency_ttl_s),
            deliveries=WebhookDeliveries(client, key_prefix=prefix, ttl_s=settings.job_ttl_s),
            workers=WorkerRegistry(client, key_prefix=prefix),
            uploads=UploadStore(client, key_prefix=prefix, ttl_s=settings.job_ttl_s),
            stats=ServiceTimes(client, prefix),
            celery=celery,
            lineage=Lineage(client, key_prefix=prefix, ttl_s=settings.job_ttl_s),
            edit_stats=ServiceTimes(client, prefix, "edit"),
            admission=Admission(client, jobs, ahead=settings.admit_ahead, bulk_every=settings.bulk_every,
                                alive_within_s=settings.worker_heartbeat_s * 3),
            api_keys=ApiKeyStore(client, key_prefix=prefix),
            captions=CaptionStore(client, key_prefix=prefix),
        )
