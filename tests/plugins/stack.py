"""pytest plugin: real layerq processes for end-to-end tests.

- `redis_url` (session): a private redis-server the tests start themselves (never the machine's own
  data), or LAYERQ_TEST_REDIS_URL when no redis-server binary exists.
- `tiny_model_dir` (session): the tiny real-architecture model, built once.
- `make_stack` (session): starts a LocalStack (API under gunicorn on loopback + Celery worker
  processes running the tiny pipeline) with the given Settings overrides; every stack gets its own
  Redis key prefix and queue namespace so stacks never see each other's jobs. A stack started while a
  test module runs (by its fixtures or its tests) stops when that module ends; only the shared
  `local_stack` and `s3_stack` live for the whole session. (Kept to the session's end, the stacks of
  all modules were ~40 worker processes and 21 GB at once by the last modules: the CI machine's memory.)
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


# Every stack started in this session, with whether it lives for the whole session.
_STACKS: list[tuple[LocalStack, bool]] = []


@pytest.fixture(autouse=True, scope="module")
def _stop_the_modules_stacks() -> Iterator[None]:
    """Stop the stacks this module started, once its fixtures are done with them (this autouse fixture
    is set up before them, so it is torn down after them). Requests nothing: modules without stacks
    start no Redis and build no model."""
    first = len(_STACKS)
    yield
    for stack, session_long in _STACKS[first:]:
        if not session_long:
            stack.stop()


@pytest.fixture(scope="session")
def make_stack(
    redis_url: str, tiny_model_dir: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[..., LocalStack]]:
    first = len(_STACKS)

    def start(workers: int = 1, own_redis: bool = False, edit_workers: int = 0, session_long: bool = False,
              **overrides) -> LocalStack:
        """`own_redis`: a private, persistent redis-server for this stack alone (tests that restart it).
        `edit_workers`: workers on the `edit` queue with the tiny edit model (opt-in: each loads a model).
        `session_long`: not stopped when the module that started it ends (the shared stacks)."""
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
        _STACKS.append((stack, session_long))
        stack.start(workers=workers, start_redis=own_redis, persist_redis=own_redis, timeout_s=300,
                    edit_workers=edit_workers)
        return stack

    yield start
    for stack, session_long in _STACKS[first:]:
        if session_long:  # the others stopped with their module
            stack.stop()


@pytest.fixture(scope="session")
def local_stack(make_stack) -> LocalStack:
    """One stack on the local-disk backend, shared by the tests that only read from it."""
    return make_stack(storage="local", session_long=True)


@pytest.fixture(scope="session")
def s3_stack(make_stack, s3_settings_overrides) -> LocalStack:
    """One stack on S3 over HTTP (moto's server)."""
    return make_stack(session_long=True, **s3_settings_overrides)
