"""Celery settings for Flower (compose profile `flower`): layerq's broker and its key prefix.

layerq namespaces every broker key with `LAYERQ_KEY_PREFIX` (kombu's `global_keyprefix`, see
layerq/celery_app.py), so a Celery client without the same prefix sees no queues and no workers.
Flower's image carries Celery but not layerq, hence this small module instead of `-A layerq...`.
"""

import os

broker_url = os.environ.get("LAYERQ_REDIS_URL", "redis://redis:6379/0")
broker_transport_options = {"global_keyprefix": os.environ.get("LAYERQ_KEY_PREFIX", "layerq") + ":"}
if broker_url.startswith("sentinel://"):  # docs/redis-ha.md: the same master layerq follows
    broker_transport_options["master_name"] = os.environ.get("LAYERQ_REDIS_SENTINEL_MASTER", "mymaster")
