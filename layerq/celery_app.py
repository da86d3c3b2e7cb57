"""The Celery application, built once from Settings, and the settings that matter for hour-long GPU
jobs. Shared by the API (which only sends tasks by name) and the workers; imports no worker code."""

from __future__ import annotations

import ssl

from celery import Celery

from layerq.config import Settings
from layerq.kombu_fixes import guard_collected_channels
from layerq.messages import DECOMPOSE_QUEUE, DECOMPOSE_TASK


def celery_config(settings: Settings) -> dict:
    """Broker settings shared by the API (which only sends) and the workers."""
    return _with_sentinel(settings, {
        "broker_url": settings.redis_url,
        "task_serializer": "json",
        "accept_content": ["json"],
        "task_ignore_result": True,  # job records in Redis are the results
        "task_routes": {DECOMPOSE_TASK: {"queue": DECOMPOSE_QUEUE}},
        # Ack after the job ends, and give the message back if the worker process dies: a lost
        # job is redelivered, and JobStore.begin_attempt caps deliveries (poison jobs).
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        # An unacked message is redelivered after the visibility timeout, so it must stay well above
        # the hard time limit or a long job would run twice at once.
        # The key prefix also namespaces the broker's queues, so deployments sharing one Redis
        # never take each other's jobs.
        "broker_transport_options": {
            "visibility_timeout": settings.visibility_timeout_s,
            "global_keyprefix": f"{settings.key_prefix}:",
            # The visibility-timeout sweep is only the last line of defence (worker/liveness.py
            # puts back a dead worker's job within seconds); sweep at a pace that fits the timeout.
            "unacked_restore_interval": max(1, min(60, settings.visibility_timeout_s // 10)),
            "unacked_restore_throttle": 1,
        },
        "task_time_limit": settings.job_time_limit_s,
        "task_soft_time_limit": settings.job_soft_time_limit_s,
        "worker_cancel_long_running_tasks_on_connection_loss": True,
        # SIGTERM is Celery's warm shutdown: the running job finishes, however long it takes (the
        # deployments give workers a grace period above the time limit). A cold shutdown (SIGQUIT)
        # first gives the job this long, then stops; the unacked job is redelivered to another worker.
        "worker_soft_shutdown_timeout": 60.0,
        "broker_connection_retry_on_startup": True,
        # Sending a message rides out a Redis restart or failover like the job stores do (about 12 s,
        # each retry on a fresh connection, so on the master the Sentinels name now); Celery's default
        # gives up after 0.6 s and the submission would answer 503 (docs/redis-ha.md).
        "task_publish_retry_policy": {"max_retries": 14, "interval_start": 0, "interval_step": 0.25,
                                      "interval_max": 1.0},
        "worker_hijack_root_logger": False,
        "worker_send_task_events": False,
    })


def _with_sentinel(settings: Settings, conf: dict) -> dict:
    """A `sentinel://` URL: kombu asks the Sentinels for the master of `redis_sentinel_master`, on
    every (re)connection, so the broker follows a failover as the job store does (storage/client.py)."""
    if not settings.redis_url.strip().lower().startswith("sentinel://"):
        return conf
    sentinel_kwargs: dict = {"socket_timeout": 1.0, "socket_connect_timeout": 1.0}
    if settings.redis_sentinel_password:
        sentinel_kwargs["password"] = settings.redis_sentinel_password
    if settings.redis_sentinel_tls:
        sentinel_kwargs["ssl"] = True
        conf["broker_use_ssl"] = {"ssl_cert_reqs": ssl.CERT_REQUIRED}
    conf["broker_transport_options"].update(master_name=settings.redis_sentinel_master,
                                            sentinel_kwargs=sentinel_kwargs)
    return conf


def make_celery(settings: Settings | None = None) -> Celery:
    settings = settings or Settings.from_env()
    guard_collected_channels()  # a consumer must survive losing the master (layerq/kombu_fixes.py)
    app = Celery("layerq")
    app.conf.update(celery_config(settings))
    app.conf.layerq_settings = settings
    return app
