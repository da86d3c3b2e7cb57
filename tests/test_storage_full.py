"""A full disk, through the real stack: the local storage directory lives on a 64 MiB tmpfs (a job
of the tiny model writes about 12 MB).

A job that runs out of space ends `failed` with `storage_full` and leaves nothing under its prefix,
new uploads are refused with 507, `/healthz` answers 503 naming the free space while it is below
LAYERQ_STORAGE_MIN_FREE_BYTES, and once space is freed jobs succeed and /healthz is 200 again.
Mounting needs root; elsewhere the end-to-end test is skipped (the unit tests above it still run)."""

from __future__ import annotations

import errno
import os
import subprocess
from pathlib import Path

import pytest
import requests

from layerq.client import LayerqClient
from layerq.errors import StorageFull
from layerq.sample import sample_png
from storage.base import StorageUnavailable
from storage.local import LocalDiskStore
from tests.helpers import job_objects, wait_for, wait_running

MIN_FREE_BYTES = 1 << 20
PARAMS = {"layers": 2, "num_inference_steps": 30, "prompt": "a poster"}


@pytest.fixture(scope="module")
def small_disk(tmp_path_factory: pytest.TempPathFactory):
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    mountpoint = tmp_path_factory.mktemp("small-disk")
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64m", "tmpfs", str(mountpoint)],
                          capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip() or done.returncode}")
    yield mountpoint
    subprocess.run(["umount", "-l", str(mountpoint)], check=False)


@pytest.fixture(scope="module")
def stack(make_stack, small_disk):
    stack = make_stack(storage="local", storage_dir=str(small_disk / "data"), storage_min_free_bytes=MIN_FREE_BYTES)
    yield stack
    stack.stop()  # before the tmpfs is unmounted


def fill(directory: Path) -> Path:
    """Grow a file until the filesystem refuses another byte."""
    filler = directory / "filler"
    fd = os.open(filler, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    try:
        for size in (1 << 16, 1 << 12, 1):
            try:
                while True:
                    os.write(fd, b"\0" * size)
            except OSError as exc:
                assert exc.errno == errno.ENOSPC, exc
    finally:
        os.close(fd)
    return filler


def healthz(stack) -> requests.Response:
    return requests.get(stack.url + "/healthz", timeout=10)


def test_local_free_space_below_threshold_fails_the_check(tmp_path):
    store = LocalDiskStore(tmp_path, "secret", min_free_bytes=1 << 62)
    with pytest.raises(StorageUnavailable, match="free space"):
        store.check()
    LocalDiskStore(tmp_path, "secret", min_free_bytes=0).check()


def test_local_write_errors_for_lack_of_space_are_storage_full(tmp_path, monkeypatch):
    store = LocalDiskStore(tmp_path, "secret")

    def no_space(fd: int) -> None:
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", no_space)
    with pytest.raises(StorageFull) as caught:
        store.put("jobs/j/layers/00.png", b"x" * 1000)
    assert caught.value.code == "storage_full"
    monkeypatch.undo()
    assert store.list("jobs/") == [] and [p.name for p in tmp_path.rglob("*") if p.is_file()] == []


def test_the_api_answers_storage_faults_as_retryable():
    """No space is 507; any other storage fault (S3 5xx, a local disk's EIO or EROFS) is 503, not 500."""
    from api.errors import status_for

    assert status_for(StorageFull("full")) == 507
    assert status_for(StorageUnavailable("EIO")) == 503


@pytest.mark.parametrize("code,status",
                         [("XMinioStorageFull", 507), ("QuotaExceeded", 403), ("InsufficientStorage", 507)])
def test_s3_no_space_answers_are_storage_full(code, status):
    from botocore.stub import Stubber

    from storage.s3 import S3Store

    store = S3Store("bucket", endpoint_url="http://127.0.0.1:9", access_key_id="k", secret_access_key="s")
    with Stubber(store._client) as stub:
        stub.add_client_error("put_object", service_error_code=code, http_status_code=status)
        with pytest.raises(StorageFull):
            store.put("jobs/j/layers/00.png", b"x")


@pytest.mark.e2e
def test_full_disk_fails_the_job_cleanly_and_recovers(stack, small_disk):
    client = LayerqClient(stack.url, timeout_s=60)
    assert healthz(stack).status_code == 200

    job = client.submit(sample_png(256, 192), PARAMS)
    wait_running(client, job["id"], min_step=1, timeout_s=120)
    filler = fill(small_disk)  # the input is stored; the layers and exports will not fit
    final = client.wait(job["id"], timeout_s=180)
    assert final["status"] == "failed", final
    assert final["error"]["code"] == "storage_full", final["error"]
    assert job_objects(stack, job["id"]) == []  # partial objects (and the input) are gone

    fill(small_disk)  # deleting them freed space: take it again
    health = healthz(stack)
    assert health.status_code == 503
    assert "free space" in health.json()["checks"]["storage"], health.json()
    refused = requests.post(stack.url + "/v1/jobs", files={"image": ("a.png", sample_png(256, 256), "image/png")},
                            data={"params": '{"layers": 2}'}, timeout=30)
    assert refused.status_code == 507 and refused.json()["error"]["code"] == "storage_full", refused.text

    filler.unlink()
    wait_for(lambda: healthz(stack).status_code == 200, 30, interval_s=0.2, what="healthz ok after freeing space")
    again = client.wait(client.submit(sample_png(256, 192), PARAMS)["id"], timeout_s=180)
    assert again["status"] == "succeeded", again.get("error")
    assert len(job_objects(stack, again["id"])) > 1
