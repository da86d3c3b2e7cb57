"""The API key store on a real Redis: keys are shown once, stored hashed, checked exactly, revoked."""

from __future__ import annotations

import uuid

import pytest

from layerq.config import Settings
from layerq.errors import ValidationFailed
from storage.services import Services


@pytest.fixture
def keys(redis_url: str):
    return Services.open(Settings.from_env({}, redis_url=redis_url, key_prefix=f"k{uuid.uuid4().hex[:8]}",
                                             signing_secret="s")).api_keys


def test_a_key_authenticates_as_its_tenant_until_revoked(keys):
    record, key = keys.create("acme", name="ci")
    assert key.startswith(f"lq_{record.key_id}_") and len(key) == 3 + 12 + 1 + 43
    assert keys.authenticate(key) == record
    assert keys.authenticate(key[:-1] + ("A" if key[-1] != "A" else "B")) is None  # one character off
    assert keys.authenticate("lq_" + "0" * 12 + "_" + "x" * 43) is None  # unknown id
    assert keys.authenticate("not-a-key") is None
    assert keys.revoke(record.key_id).revoked_at is not None
    assert keys.authenticate(key) is None
    assert keys.revoke("ffffffffffff") is None
    assert [k.key_id for k in keys.list()] == [record.key_id]


def test_only_the_hash_is_stored(keys, redis_url):
    import redis

    record, key = keys.create("acme")
    stored = redis.Redis.from_url(redis_url, decode_responses=True).hgetall(keys.keys.api_key(record.key_id))
    assert key not in stored.values() and key.split("_", 2)[2] not in "".join(stored.values())


@pytest.mark.parametrize("tenant", ["", "-x", "a b", "x" * 65, "ü"])
def test_tenant_names_are_checked(keys, tenant):
    with pytest.raises(ValidationFailed):
        keys.create(tenant)
