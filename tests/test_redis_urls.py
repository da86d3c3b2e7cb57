"""`LAYERQ_REDIS_URL` forms: one Redis, or Sentinels naming the master; the broker and the job stores
read them alike. No server needed (the failover itself: tests/test_redis_failover.py)."""

from __future__ import annotations

import pytest

from layerq.celery_app import celery_config
from layerq.config import Settings
from storage.client import RedisOptions, connect, is_sentinel, options_of, parse_sentinel_url

URL = "sentinel://:s3cret@10.0.0.1:26379;sentinel://10.0.0.2;sentinel://10.0.0.3:26380/2"


def test_sentinel_url_lists_every_sentinel_and_the_masters_db_and_password():
    parsed = parse_sentinel_url(URL)
    assert parsed.sentinels == [("10.0.0.1", 26379), ("10.0.0.2", 26379), ("10.0.0.3", 26380)]
    assert parsed.db == 2 and parsed.password == "s3cret"
    assert is_sentinel(URL) and not is_sentinel("redis://localhost:6379/0")


@pytest.mark.parametrize("bad", ["sentinel://", "sentinel://h:1;redis://h:2"])
def test_malformed_sentinel_urls_are_refused(bad):
    with pytest.raises(ValueError):
        parse_sentinel_url(bad)


def test_broker_follows_the_same_master_name_and_sentinel_credentials():
    s = Settings.from_env({}, redis_url=URL, redis_sentinel_master="jobs", redis_sentinel_password="pw")
    conf = celery_config(s)
    assert conf["broker_url"] == URL
    opts = conf["broker_transport_options"]
    assert opts["master_name"] == "jobs" and opts["sentinel_kwargs"]["password"] == "pw"
    assert opts["global_keyprefix"] == "layerq:"  # the usual options stay
    assert options_of(s) == RedisOptions(sentinel_master="jobs", sentinel_password="pw")


def test_plain_url_keeps_plain_broker_options():
    conf = celery_config(Settings.from_env({}, redis_url="redis://r:6379/0"))
    assert "master_name" not in conf["broker_transport_options"] and "broker_use_ssl" not in conf


def test_sentinel_client_asks_for_the_named_master():
    client = connect(URL, RedisOptions(sentinel_master="jobs"))
    pool = client.connection_pool
    assert pool.service_name == "jobs"
    assert [c.connection_pool.connection_kwargs["port"] for c in pool.sentinel_manager.sentinels] == [26379, 26379, 26380]
    assert pool.connection_kwargs["db"] == 2 and pool.connection_kwargs["password"] == "s3cret"


# --- against the session's lone redis-server (no replica) ---------------------------------------


def test_a_claim_retried_after_a_connection_reset_is_still_its_own(redis_url, monkeypatch):
    import uuid

    from storage import idempotency
    from storage.idempotency import IdempotencyStore

    store = IdempotencyStore(connect(redis_url), key_prefix=f"idem{uuid.uuid4().hex[:8]}", ttl_s=3600)
    monkeypatch.setattr(idempotency.secrets, "token_hex", lambda n: "same-request")
    assert store.claim("t", "k", "fp") is None
    assert store.claim("t", "k", "fp") is None  # the SET ran, its reply was lost, the client sent it again
    monkeypatch.setattr(idempotency.secrets, "token_hex", lambda n: "another-request")
    assert store.claim("t", "k", "fp")["state"] == "pending"


@pytest.mark.e2e
def test_without_a_replica_durable_submissions_are_refused_and_leave_nothing_queued(make_stack):
    import requests

    from layerq.sample import sample_png
    from storage.keys import Keys

    stack = make_stack(workers=0, redis_wait_replicas=1, redis_wait_timeout_ms=200)
    resp = requests.post(stack.url + "/v1/jobs", files={"image": ("i.png", sample_png(64, 64), "image/png")},
                         data={"params": '{"layers": 2, "num_inference_steps": 2}'}, timeout=60)
    assert resp.status_code == 503 and resp.json()["error"]["code"] == "not_replicated"
    r = connect(stack.settings.redis_url)
    assert r.zcard(Keys(stack.settings.key_prefix).queued("decompose")) == 0


def test_launcher_and_store_shortcuts_ask_for_the_configured_master(tmp_path):
    # `layerq up` reads worker liveness through its own registry client (not Services.open): it must
    # follow the same master as everything else, with the settings' master name, not the default one.
    from layerq.stack import LocalStack
    from storage.jobs import JobStore

    s = Settings.from_env({}, redis_url=URL, redis_sentinel_master="jobs")
    registry = LocalStack(s, run_dir=tmp_path)._registry()
    assert registry._r.connection_pool.service_name == "jobs"
    assert JobStore.from_url(URL, options_of(s))._r.connection_pool.service_name == "jobs"


def test_a_connection_dropped_mid_command_reconnects_to_the_master_the_sentinels_name(redis_url):
    # redis-py reconnects a dropped connection from send_packed_command to its last address; ours
    # asks the Sentinels again. The pool here names the session's Redis as the master while the
    # connection still points at a dead port (the old master), as after a failover.
    from redis.connection import parse_url as redis_parse_url

    from storage.client import MasterConnection

    live = redis_parse_url(redis_url)

    class Pool:
        is_master, check_connection = True, False

        def get_master_address(self):
            return live["host"], live["port"]

    conn = MasterConnection(connection_pool=Pool(), host="127.0.0.1", port=1)
    conn.send_command("PING")
    assert conn.read_response() in (b"PONG", "PONG", True)
    assert conn.port == live["port"]
    assert connect(URL, RedisOptions(sentinel_master="jobs")).connection_pool.connection_class is MasterConnection
