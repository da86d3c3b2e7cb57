"""pytest plugin: a real S3 endpoint over HTTP (moto's server in a separate process).

Fixtures:
- `s3_server` (session): starts `python -m moto.server` on a free loopback port, waits until it
  answers HTTP, yields its endpoint URL (`http://127.0.0.1:PORT`), terminates it at the end.
- `s3_settings_overrides` (session): `Settings` overrides that point layerq at that server with a
  bucket unique to this test session. Treat it as read-only; copy it (`{**overrides, ...}`) to change it.

moto accepts any credentials and checks neither the signature nor the expiry of presigned URLs: tests
of URL security belong to the local-disk backend. Every AWS_* variable of the outer environment is
hidden from both moto and the test process for the session, so tests can never reach (or sign with)
real AWS credentials, and child processes the tests start inherit the fake ones.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

FAKE_CREDENTIAL = "testing"
_START_TIMEOUT_S = 30.0


def _free_port() -> int:
    # Bind to port 0 to let the OS pick; a tiny race with other processes remains, handled by
    # retrying the start when moto exits early.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _fake_aws_env(base: dict[str, str], scratch: Path) -> dict[str, str]:
    env = {k: v for k, v in base.items() if not k.startswith("AWS_")}
    missing = str(scratch / "no-such-aws-file")
    env.update(
        AWS_ACCESS_KEY_ID=FAKE_CREDENTIAL,
        AWS_SECRET_ACCESS_KEY=FAKE_CREDENTIAL,
        AWS_SESSION_TOKEN=FAKE_CREDENTIAL,
        AWS_SECURITY_TOKEN=FAKE_CREDENTIAL,
        AWS_DEFAULT_REGION="us-east-1",
        # Point the shared config/credential files at nothing so no profile on this machine
        # (or its SSO / credential_process settings) is ever consulted.
        AWS_CONFIG_FILE=missing,
        AWS_SHARED_CREDENTIALS_FILE=missing,
        AWS_EC2_METADATA_DISABLED="true",
    )
    # boto3 and requests honour HTTP(S)_PROXY; loopback must bypass any proxy configured here.
    no_proxy = ",".join(p for p in (base.get("NO_PROXY") or base.get("no_proxy"), "127.0.0.1", "localhost") if p)
    env["NO_PROXY"] = env["no_proxy"] = no_proxy
    return env


# Loopback never goes through a proxy, whatever HTTP_PROXY says.
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def _answers(endpoint: str) -> bool:
    try:
        with _DIRECT.open(endpoint + "/", timeout=1.0):
            return True
    except urllib.error.HTTPError:
        return True  # any HTTP answer, even an error status, means the server is up
    except OSError:
        return False


def _start_moto(env: dict[str, str], log_path: Path) -> tuple[subprocess.Popen[bytes], str]:
    last_error = ""
    for _attempt in range(3):
        port = _free_port()
        endpoint = f"http://127.0.0.1:{port}"
        log = open(log_path, "ab")
        proc = subprocess.Popen(
            [sys.executable, "-m", "moto.server", "-H", "127.0.0.1", "-p", str(port)],
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        log.close()  # the child holds its own descriptor
        deadline = time.monotonic() + _START_TIMEOUT_S
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                break
            if _answers(endpoint):
                return proc, endpoint
            time.sleep(0.1)
        if proc.poll() is None:
            _stop(proc)
            last_error = f"moto server did not answer on {endpoint} within {_START_TIMEOUT_S:.0f} s"
        else:
            last_error = f"moto server exited with status {proc.returncode}"
    log_tail = log_path.read_text(errors="replace")[-4000:] if log_path.exists() else ""
    raise RuntimeError(f"{last_error}; its output:\n{log_tail}")


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=5)


@pytest.fixture(scope="session")
def s3_server() -> Iterator[str]:
    """The endpoint URL of a moto S3 server running in its own process for the whole session."""
    scratch = Path(tempfile.mkdtemp(prefix="layerq-moto-"))
    env = _fake_aws_env(dict(os.environ), scratch)
    with pytest.MonkeyPatch.context() as mp:
        # The test process gets the same fake AWS environment (restored after the session).
        for name in [k for k in os.environ if k.startswith("AWS_")]:
            mp.delenv(name)
        for name, value in env.items():
            if name.startswith("AWS_") or name in ("NO_PROXY", "no_proxy"):
                mp.setenv(name, value)
        proc, endpoint = _start_moto(env, scratch / "moto.log")
        try:
            yield endpoint
        finally:
            _stop(proc)
            shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_settings_overrides(s3_server: str) -> dict[str, Any]:
    """Settings overrides for the moto server: `Settings.from_env(**s3_settings_overrides)`."""
    return {
        "storage": "s3",
        "s3_endpoint_url": s3_server,
        "s3_public_endpoint_url": "",
        "s3_bucket": f"layerq-test-{uuid.uuid4().hex[:12]}",
        "s3_region": "us-east-1",
        "s3_access_key_id": FAKE_CREDENTIAL,
        "s3_secret_access_key": FAKE_CREDENTIAL,
        "s3_create_bucket": True,
    }
