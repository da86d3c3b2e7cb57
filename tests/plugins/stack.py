"""pytest plugin: real layerq processes for end-to-end tests.

- `redis_url` (session): a private redis-server the tests start themselves (never the machine's own
  data), or LAYERQ_TEST_REDIS_URL when no redis-server binary exists.
- `tiny_model_dir` (session): the tiny real-architecture model, built once.
- `make_stack` (session): starts a LocalStack (API under gunicorn on loopback + Celery worker
  processes running the tiny pipeline) with the given Settings overrides; every stack gets its own
  Redis key prefix and queue namespace so stacks never see each other's jobs.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from layerq.config import Settings
from layerq.stack import LocalStack, RedisServer


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if not RedisServer.available():
        yield os.environ.get("LAYERQ_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")
        return
    server = RedisServer(tmp_path_factory.mktemp("redis")).start()
    yield server.url
    server.stop()


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from worker.tiny_model import ensure_tiny_model

    cache = Path(os.environ.get("LAYERQ_TEST_MODEL_CACHE") or tmp_path_factory.mktemp("models"))
    return ensure_tiny_model(cache)


@pytest.fixture(scope="session")
def make_stack(
    redis_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., LocalStack]]:
    stacks: list[LocalStack] = []

    def start(workers: int = 1, own_redis: bool = False, edit_workers: int = 0, **overrides) -> LocalStack:
        """`own_redis`: a private, persistent redis-server for this stack alone (tests that restart it).
        `edit_workers`: workers on the `edit` queue with the tiny edit model (opt-in: each loads a model)."""
        name = uuid.uuid4().hex[:8]
        run_dir = tmp_path_factory.mktemp(f"stack-{name}")
        base = dict(
            redis_url=redis_url,
            webhook_secret="test-webhook-secret",
            webhook_allow_hosts="127.0.0.1",
            key_prefix=f"t{name}",
            model=str(tiny_model_dir),
            device="cpu",
            storage_dir=str(run_dir / "data"),
        )
        if edit_workers:  # built next to the tiny decompose model, once per session
            base.update(edit_model="tiny", model_cache_dir=str(tiny_model_dir.parent))
        settings = Settings.from_env(environ={}, **{**base, **overrides})
        stack = LocalStack(settings, run_dir=run_dir, api_workers=2)
        stacks.append(stack)
        stack.start(workers=workers, start_redis=own_redis, persist_redis=own_redis, timeout_s=300,
                    edit_workers=edit_workers)
        return stack

    yield start
    for stack in stacks:
        stack.stop()


@pytest.fixture(scope="session")
def local_stack(make_stack) -> LocalStack:
    """One stack on the local-disk backend, shared by the tests that only read from it."""
    return make_stack(storage="local")


@pytest.fixture(scope="session")
def s3_stack(make_stack, s3_settings_overrides) -> LocalStack:
    """One stack on S3 over HTTP (moto's server)."""
    return make_stack(**s3_settings_overrides)
