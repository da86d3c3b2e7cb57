"""Object-store contract, run against both backends: local disk (tmp_path) and S3 (moto over HTTP).

Downloads and uploads through presigned URLs go over real HTTP for both backends: S3 URLs to the moto
server, local URLs to a minimal reference `/files/<key>` route (the shape the API's route must have)
served by werkzeug on loopback. moto checks neither signature nor expiry, so URL security is proven on
the local backend, whose `verify_url` does both.

Needs the S3 plugin: `pytest -p tests.plugins.s3server` (conftest registers it for the whole suite).
"""

from __future__ import annotations

import errno
import itertools
import os
import threading
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from flask import Flask, Response, request
from werkzeug.serving import make_server

from layerq.config import Settings
from layerq.errors import ObjectNotFound, SignatureInvalid, TransientError, ValidationFailed
from storage import signing
from storage.base import (
    MAX_URL_TTL_S,
    InvalidKey,
    ObjectStore,
    StorageUnavailable,
    content_disposition,
    validate_key,
    validate_prefix,
)
from storage.factory import open_object_store
from storage.local import LocalDiskStore, content_type_for
from storage.s3 import S3Store

SECRET = "test-secret-0123456789"
PNG = b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4


class FakeClock:
    """A settable unix clock, so expiry is tested without sleeping."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def _http() -> requests.Session:
    # Loopback only: never let a proxy from the environment get in the way.
    session = requests.Session()
    session.trust_env = False
    return session


# --- a reference /files route for the local backend --------------------------------------------


def make_files_app(store: LocalDiskStore) -> Flask:
    """The smallest correct `GET|PUT /files/<path:key>` route over `LocalDiskStore`."""
    app = Flask("files-reference")

    @app.route("/files/<path:key>", methods=["GET", "PUT"])
    def files(key: str) -> Response | tuple[Any, int]:
        try:
            store.verify_url(request.method, key, request.args, content_type=request.headers.get("Content-Type"))
        except SignatureInvalid as exc:
            return {"error": {"code": exc.code, "message": exc.message}}, 403
        if request.method == "PUT":
            store.put(key, request.get_data(), request.mimetype)
            return Response(status=204)
        try:
            path = store.open_path(key)
        except ObjectNotFound as exc:
            return {"error": {"code": exc.code, "message": exc.message}}, 404
        response = Response(path.read_bytes(), mimetype=content_type_for(key))
        download = request.args.get(signing.Q_DOWNLOAD)
        if download is not None:
            response.headers["Content-Disposition"] = content_disposition(download)
        return response

    return app


@pytest.fixture
def local_http_store(tmp_path: Path) -> Iterator[LocalDiskStore]:
    """A LocalDiskStore whose public_url is a live reference server on loopback."""
    store = LocalDiskStore(tmp_path / "data", SECRET)
    server = make_server("127.0.0.1", 0, make_files_app(store), threaded=True)
    store.public_url = f"http://127.0.0.1:{server.server_port}"
    # A short poll interval keeps shutdown (once per test) from costing half a second.
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield store
    finally:
        server.shutdown()
        thread.join(timeout=5)


_bucket_counter = itertools.count()


def _s3_settings(overrides: dict[str, Any], **changes: Any) -> Settings:
    # A bucket per test keeps listings independent; environ={} keeps a developer's LAYERQ_* out.
    values = {**overrides, "s3_bucket": f"{overrides['s3_bucket']}-{next(_bucket_counter)}", **changes}
    return Settings.from_env({}, **values)


@pytest.fixture(params=["local", "s3"])
def store(request: pytest.FixtureRequest) -> ObjectStore:
    """Each backend in turn, with presigned URLs that really download over HTTP."""
    if request.param == "local":
        local_store: LocalDiskStore = request.getfixturevalue("local_http_store")
        return local_store
    overrides: dict[str, Any] = request.getfixturevalue("s3_settings_overrides")
    return open_object_store(_s3_settings(overrides))


# --- the contract, on both backends --------------------------------------------------------------


def test_put_writes_pieces_back_to_back(store: ObjectStore) -> None:
    from storage.base import Pieces

    data = Pieces([b"head-", memoryview(b"0123456789" * 100_000)[5:], b"", bytes(range(256)) * 40, b"-tail"])
    store.put("jobs/p/exports/layers.zip", data, "application/zip")
    assert store.get("jobs/p/exports/layers.zip") == data.tobytes()
    assert data.nbytes == len(data.tobytes())


def test_put_get_roundtrip_and_overwrite(store: ObjectStore) -> None:
    store.put("jobs/j1/input.png", PNG, "image/png")
    assert store.get("jobs/j1/input.png") == PNG
    store.put("jobs/j1/input.png", b"second", "image/png")
    assert store.get("jobs/j1/input.png") == b"second"
    store.put("jobs/j1/empty.bin", b"")
    assert store.get("jobs/j1/empty.bin") == b""


def test_missing_objects(store: ObjectStore) -> None:
    store.put("jobs/j1/layers/00.png", PNG, "image/png")
    with pytest.raises(ObjectNotFound):
        store.get("jobs/j1/layers/01.png")
    # A 'directory' is a prefix, not an object, on both backends.
    with pytest.raises(ObjectNotFound):
        store.get("jobs/j1/layers")
    assert store.exists("jobs/j1/layers/00.png")
    assert not store.exists("jobs/j1/layers/01.png")
    assert not store.exists("jobs/j1/layers")
    assert not store.exists("nothing/here.png")


def test_list_is_sorted_and_prefix_is_a_string_prefix(store: ObjectStore) -> None:
    keys = [
        "jobs/ab/manifest.json",
        "jobs/ab/layers/01.png",
        "jobs/ab/layers/00.png",
        "jobs/abc/input.png",
        "jobs/b/input.png",
        "other.txt",
    ]
    for k in keys:
        store.put(k, k.encode())
    assert store.list("jobs/ab/") == ["jobs/ab/layers/00.png", "jobs/ab/layers/01.png", "jobs/ab/manifest.json"]
    assert store.list("jobs/ab") == [
        "jobs/ab/layers/00.png",
        "jobs/ab/layers/01.png",
        "jobs/ab/manifest.json",
        "jobs/abc/input.png",
    ]
    assert store.list("jobs/ab/layers/0") == ["jobs/ab/layers/00.png", "jobs/ab/layers/01.png"]
    assert store.list("") == sorted(keys)
    assert store.list("missing/") == []
    assert store.list("jobs/zz") == []


def test_delete_prefix(store: ObjectStore) -> None:
    for k in ["jobs/a/input.png", "jobs/a/layers/00.png", "jobs/a/layers/01.png", "jobs/ab/input.png"]:
        store.put(k, b"x")
    assert store.delete_prefix("jobs/a/") == 3
    assert store.list("jobs/") == ["jobs/ab/input.png"]
    assert store.delete_prefix("jobs/a/") == 0
    with pytest.raises(InvalidKey):
        store.delete_prefix("")
    assert store.exists("jobs/ab/input.png")


@pytest.mark.parametrize("bad", ["", "/etc/passwd", "../x", "a/../../b", "a/./b", "a//b", "a/", "a\\b", "a\x00b"])
def test_every_method_rejects_invalid_keys(store: ObjectStore, bad: str) -> None:
    calls: list[Callable[[], object]] = [
        lambda: store.put(bad, b"x"),
        lambda: store.get(bad),
        lambda: store.exists(bad),
        lambda: store.presign_get(bad, 60),
        lambda: store.presign_put(bad, 60, "image/png"),
    ]
    for call in calls:
        with pytest.raises(InvalidKey):
            call()
    with pytest.raises(InvalidKey):
        store.list("../")
    with pytest.raises(InvalidKey):
        store.delete_prefix("/jobs")


def test_presign_get_downloads_over_http(store: ObjectStore) -> None:
    store.put("jobs/j1/layers/00.png", PNG, "image/png")
    url = store.presign_get("jobs/j1/layers/00.png", 300)
    response = _http().get(url, timeout=10)
    assert response.status_code == 200, response.text
    assert response.content == PNG
    assert response.headers["Content-Type"] == "image/png"
    assert "Content-Disposition" not in response.headers


def test_presign_get_with_filename_sets_content_disposition(store: ObjectStore) -> None:
    store.put("jobs/j1/exports/layers.zip", b"PK\x05\x06" + b"\0" * 18, "application/zip")
    url = store.presign_get("jobs/j1/exports/layers.zip", 300, filename="poster layers é.zip")
    response = _http().get(url, timeout=10)
    assert response.status_code == 200, response.text
    disposition = response.headers["Content-Disposition"]
    assert disposition.startswith("attachment;")
    assert "filename*=UTF-8''poster%20layers%20%C3%A9.zip" in disposition


def test_presign_get_of_missing_object_is_404(store: ObjectStore) -> None:
    response = _http().get(store.presign_get("jobs/none/input.png", 300), timeout=10)
    assert response.status_code == 404


def test_presign_put_uploads_over_http(store: ObjectStore) -> None:
    req = store.presign_put("uploads/u1/input.png", 300, "image/png")
    assert req["method"] == "PUT"
    assert req["headers"] == {"Content-Type": "image/png"}
    response = _http().request(req["method"], req["url"], data=PNG, headers=req["headers"], timeout=10)
    assert response.status_code in (200, 204), response.text
    assert store.get("uploads/u1/input.png") == PNG


def test_keys_with_spaces_and_unicode_survive_urls(store: ObjectStore) -> None:
    key = "jobs/j 1/ü+%?#.png"
    store.put(key, PNG, "image/png")
    assert store.list("jobs/j 1/") == [key]
    response = _http().get(store.presign_get(key, 300), timeout=10)
    assert response.status_code == 200, response.text
    assert response.content == PNG


@pytest.mark.parametrize("ttl", [0, -5, MAX_URL_TTL_S + 1])
def test_presign_rejects_bad_lifetimes(store: ObjectStore, ttl: int) -> None:
    with pytest.raises(ValueError):
        store.presign_get("jobs/j1/input.png", ttl)
    with pytest.raises(ValueError):
        store.presign_put("jobs/j1/input.png", ttl, "image/png")


def test_check_passes_on_a_healthy_store(store: ObjectStore) -> None:
    store.check()


# --- key rules ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad",
    ["", "/abs", "..", ".", "../x", "x/..", "a/../b", "a/./b", "a//b", "a/", "a\\..\\b", "a\nb", "a\x7fb", "k" * 1025],
)
def test_validate_key_rejects(bad: str) -> None:
    with pytest.raises(InvalidKey) as info:
        validate_key(bad)
    # An invalid key is a 400-class validation error and a ValueError for library callers.
    assert isinstance(info.value, ValidationFailed)
    assert isinstance(info.value, ValueError)


@pytest.mark.parametrize("good", ["jobs/abc/layers/00.png", "a", "a b/ü.png", "...x/.hidden", "k" * 1024])
def test_validate_key_accepts(good: str) -> None:
    assert validate_key(good) == good


def test_validate_prefix() -> None:
    for good in ["", "jobs/", "jobs/ab", "jobs/ab/layers/"]:
        assert validate_prefix(good) == good
    for bad in ["/", "/jobs", "../", "jobs//", "jobs/../"]:
        with pytest.raises(InvalidKey):
            validate_prefix(bad)


def test_content_disposition_is_header_safe() -> None:
    value = content_disposition('my "poster";x.psd')
    assert value == "attachment; filename=\"my _poster__x.psd\"; filename*=UTF-8''my%20%22poster%22%3Bx.psd"
    for bad in ["a/b.png", "a\r\nSet-Cookie: x", "", ".."]:
        with pytest.raises(ValidationFailed):
            content_disposition(bad)


# --- signing (pure) ----------------------------------------------------------------------------


def test_sign_and_verify_bind_every_field() -> None:
    sig = signing.sign("GET", "jobs/a/x.png", 2000, SECRET, filename="x.png")
    signing.verify("GET", "jobs/a/x.png", 2000, sig, SECRET, filename="x.png", now=1999)
    signing.verify("GET", "jobs/a/x.png", 2000, sig, SECRET, filename="x.png", now=2000)  # inclusive
    changed: list[dict[str, Any]] = [
        {"method": "PUT"},
        {"key": "jobs/a/y.png"},
        {"expires": 2001},
        {"secret": SECRET + "x"},
        {"filename": None},
        {"filename": "y.png"},
        {"content_type": "image/png"},
    ]
    for change in changed:
        args: dict[str, Any] = {
            "method": "GET", "key": "jobs/a/x.png", "expires": 2000, "secret": SECRET, "filename": "x.png",
            "content_type": None,
        }
        args.update(change)
        with pytest.raises(signing.UrlSignatureInvalid) as info:
            signing.verify(
                args["method"], args["key"], args["expires"], sig, args["secret"],
                filename=args["filename"], content_type=args["content_type"], now=1000,
            )
        assert info.value.reason == "bad_signature", change
    with pytest.raises(signing.UrlSignatureInvalid) as info:
        signing.verify("GET", "jobs/a/x.png", 2000, sig, SECRET, filename="x.png", now=2001)
    assert info.value.reason == "expired"


def test_sign_is_deterministic_and_url_safe() -> None:
    a = signing.sign("get", "k/x", 10, SECRET)
    assert a == signing.sign("GET", "k/x", 10, SECRET)
    assert len(a) == 43 and "=" not in a and "+" not in a and "/" not in a


def test_sign_refuses_empty_secret_and_odd_methods() -> None:
    with pytest.raises(ValueError, match="LAYERQ_SIGNING_SECRET"):
        signing.sign("GET", "k/x", 10, "")
    with pytest.raises(ValueError):
        signing.sign("DELETE", "k/x", 10, SECRET)
    with pytest.raises(InvalidKey):
        signing.sign("GET", "../x", 10, SECRET)


@pytest.mark.parametrize("sig", ["", "!!!!", "YWJj", "A" * 200, "é" * 43])
def test_verify_rejects_malformed_signatures(sig: str) -> None:
    with pytest.raises(signing.UrlSignatureInvalid) as info:
        signing.verify("GET", "k/x", 10, sig, SECRET, now=0)
    assert info.value.reason == "malformed"


# --- local backend: URL verification -------------------------------------------------------------


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def local(tmp_path: Path, clock: FakeClock) -> LocalDiskStore:
    return LocalDiskStore(tmp_path / "data", SECRET, "https://api.example.com/", clock=clock)


def _split(url: str) -> tuple[str, dict[str, str]]:
    """(key, query) as Flask's `<path:key>` and `request.args` would decode them."""
    parts = urllib.parse.urlsplit(url)
    assert parts.path.startswith("/files/")
    key = urllib.parse.unquote(parts.path[len("/files/"):])
    return key, dict(urllib.parse.parse_qsl(parts.query, keep_blank_values=True))


def _reason(fn: Callable[[], None]) -> str:
    """Run `fn`, expect a `SignatureInvalid` (the API maps its code to 403), return its reason."""
    with pytest.raises(SignatureInvalid) as info:
        fn()
    assert info.value.code == "forbidden"
    assert isinstance(info.value, signing.UrlSignatureInvalid)
    return info.value.reason


def test_local_url_shape(local: LocalDiskStore, clock: FakeClock) -> None:
    url = local.presign_get("jobs/j1/layers/00.png", 600, filename="00.png")
    assert url.startswith("https://api.example.com/files/jobs/j1/layers/00.png?")
    key, query = _split(url)
    assert key == "jobs/j1/layers/00.png"
    assert query["expires"] == str(int(clock.now) + 600)
    assert query["download"] == "00.png"
    assert set(query) == {"expires", "download", "sig"}
    # No public_url: a root-relative URL the API resolves against the request's host.
    relative = LocalDiskStore(local.root, SECRET, clock=clock).presign_get("a/b.png", 60)
    assert relative.startswith("/files/a/b.png?expires=")


def test_local_verify_accepts_fresh_url(local: LocalDiskStore) -> None:
    key, query = _split(local.presign_get("jobs/j1/layers/00.png", 600, filename="00.png"))
    local.verify_url("GET", key, query)
    local.verify_url("HEAD", key, query)  # HEAD is GET without a body


def test_local_verify_rejects_tampered_signature(local: LocalDiskStore) -> None:
    key, query = _split(local.presign_get("jobs/j1/layers/00.png", 600))
    sig = query["sig"]
    query["sig"] = ("B" if sig[0] == "A" else "A") + sig[1:]
    assert _reason(lambda: local.verify_url("GET", key, query)) == "bad_signature"


def test_local_verify_rejects_expired_url(local: LocalDiskStore, clock: FakeClock) -> None:
    key, query = _split(local.presign_get("jobs/j1/layers/00.png", 600))
    clock.now += 600
    local.verify_url("GET", key, query)  # still valid at the expiry second itself
    clock.now += 1
    assert _reason(lambda: local.verify_url("GET", key, query)) == "expired"


def test_local_verify_rejects_stretched_expiry(local: LocalDiskStore) -> None:
    key, query = _split(local.presign_get("jobs/j1/layers/00.png", 600))
    query["expires"] = str(int(query["expires"]) + 86400)
    assert _reason(lambda: local.verify_url("GET", key, query)) == "bad_signature"


def test_local_verify_rejects_swapped_path(local: LocalDiskStore) -> None:
    _, query = _split(local.presign_get("jobs/j1/layers/00.png", 600))
    assert _reason(lambda: local.verify_url("GET", "jobs/j2/layers/00.png", query)) == "bad_signature"
    assert _reason(lambda: local.verify_url("GET", "jobs/j1/input.png", query)) == "bad_signature"


def test_local_verify_rejects_method_confusion(local: LocalDiskStore) -> None:
    put = local.presign_put("uploads/u1/input.png", 600, "image/png")
    key, query = _split(put["url"])
    local.verify_url("PUT", key, query, content_type="image/png")
    assert _reason(lambda: local.verify_url("GET", key, query)) == "bad_signature"
    get_key, get_query = _split(local.presign_get("uploads/u1/input.png", 600))
    assert _reason(lambda: local.verify_url("PUT", get_key, get_query, content_type="image/png")) == "bad_signature"
    assert _reason(lambda: local.verify_url("DELETE", get_key, get_query)) == "malformed"


def test_local_verify_rejects_changed_download_name(local: LocalDiskStore) -> None:
    key, query = _split(local.presign_get("jobs/j1/exports/layers.psd", 600, filename="layers.psd"))
    query["download"] = "evil.html"
    assert _reason(lambda: local.verify_url("GET", key, query)) == "bad_signature"
    del query["download"]
    assert _reason(lambda: local.verify_url("GET", key, query)) == "bad_signature"


def test_local_put_url_binds_content_type(local: LocalDiskStore) -> None:
    key, query = _split(local.presign_put("uploads/u1/input.png", 600, "image/png")["url"])
    local.verify_url("PUT", key, query, content_type="Image/PNG; charset=binary")  # parameters ignored
    assert _reason(lambda: local.verify_url("PUT", key, query, content_type="text/html")) == "content_type_mismatch"
    assert _reason(lambda: local.verify_url("PUT", key, query, content_type=None)) == "content_type_mismatch"
    query["content_type"] = "text/html"
    assert _reason(lambda: local.verify_url("PUT", key, query, content_type="text/html")) == "bad_signature"


@pytest.mark.parametrize(
    "query",
    [
        {},
        {"sig": "x"},
        {"expires": "10"},
        {"expires": "-1", "sig": "x"},
        {"expires": "1e9", "sig": "x"},
        {"expires": "١٢", "sig": "x"},  # Arabic-Indic digits: isdigit() is True, int() accepts them
        {"expires": "²", "sig": "x"},
    ],
)
def test_local_verify_rejects_malformed_queries(local: LocalDiskStore, query: dict[str, str]) -> None:
    assert _reason(lambda: local.verify_url("GET", "jobs/j1/input.png", query)) == "malformed"


@pytest.mark.parametrize("bad", ["../secret", "jobs/../../etc/passwd", "/etc/passwd", "jobs\\..\\x", "jobs//x"])
def test_local_verify_rejects_traversal_keys(local: LocalDiskStore, bad: str) -> None:
    _, query = _split(local.presign_get("jobs/j1/input.png", 600))
    assert _reason(lambda: local.verify_url("GET", bad, query)) == "malformed"


def test_local_verify_rejects_another_secret(local: LocalDiskStore, clock: FakeClock) -> None:
    other = LocalDiskStore(local.root, "another-secret", clock=clock)
    key, query = _split(other.presign_get("jobs/j1/input.png", 600))
    assert _reason(lambda: local.verify_url("GET", key, query)) == "bad_signature"


def test_local_served_over_http_rejects_bad_urls(local_http_store: LocalDiskStore) -> None:
    store = local_http_store
    store.put("jobs/j1/input.png", PNG, "image/png")
    store.put("jobs/j2/input.png", b"other job", "image/png")
    url = store.presign_get("jobs/j1/input.png", 600)
    http = _http()
    assert http.get(url, timeout=10).content == PNG
    assert http.head(url, timeout=10).status_code == 200
    swapped = url.replace("/jobs/j1/", "/jobs/j2/")
    assert http.get(swapped, timeout=10).status_code == 403
    assert http.get(url[:-2] + ("AA" if not url.endswith("AA") else "BB"), timeout=10).status_code == 403
    assert http.put(url, data=b"overwrite", headers={"Content-Type": "image/png"}, timeout=10).status_code == 403
    assert store.get("jobs/j1/input.png") == PNG
    # Traversal in the URL path never reaches the disk.
    escape = f"{store.public_url}/files/jobs/..%2F..%2F..%2Fetc/passwd?{urllib.parse.urlsplit(url).query}"
    assert http.get(escape, timeout=10).status_code in (403, 404)


# --- local backend: disk behaviour ---------------------------------------------------------------


def test_local_writes_are_atomic(local: LocalDiskStore, monkeypatch: pytest.MonkeyPatch) -> None:
    local.put("jobs/j1/manifest.json", b'{"v": 1}', "application/json")

    def failing_replace(src: str, dst: str) -> None:
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", failing_replace)
    with pytest.raises(StorageUnavailable, match="disk full"):
        local.put("jobs/j1/manifest.json", b'{"v": 2}', "application/json")
    monkeypatch.undo()
    assert local.get("jobs/j1/manifest.json") == b'{"v": 1}'
    # The temporary file was cleaned up and never shows in a listing.
    assert sorted(p.name for p in (local.root / "jobs" / "j1").iterdir()) == ["manifest.json"]


@pytest.mark.parametrize("code", [errno.EIO, errno.EACCES, errno.EROFS, errno.ESTALE])
def test_local_filesystem_faults_are_storage_errors(local: LocalDiskStore, monkeypatch: pytest.MonkeyPatch,
                                                    code: int) -> None:
    """Like S3's outages: a transient storage error (503 at the API, retried by a worker), never a
    bare OSError (a 500, or a job failed as `internal`); a failed write leaves nothing behind."""
    local.put("jobs/j1/input.png", PNG)

    def fault(*args: Any, **kwargs: Any) -> None:
        raise OSError(code, os.strerror(code))

    monkeypatch.setattr(os, "fsync", fault)
    with pytest.raises(StorageUnavailable) as caught:
        local.put("jobs/j1/layers/00.png", PNG)
    assert isinstance(caught.value, TransientError) and os.strerror(code) in caught.value.message
    monkeypatch.setattr(Path, "read_bytes", fault)
    with pytest.raises(StorageUnavailable):
        local.get("jobs/j1/input.png")
    monkeypatch.setattr(Path, "unlink", fault)
    with pytest.raises(StorageUnavailable):
        local.delete_prefix("jobs/j1/")
    monkeypatch.undo()
    assert local.list("jobs/") == ["jobs/j1/input.png"]
    with pytest.raises(ObjectNotFound):  # an absent object is still just absent
        local.get("jobs/j1/missing.png")


def test_local_listing_skips_in_flight_temp_files(local: LocalDiskStore) -> None:
    local.put("jobs/j1/input.png", PNG)
    (local.root / "jobs" / "j1" / ".layerq-tmp-abc123").write_bytes(b"partial")
    assert local.list("jobs/") == ["jobs/j1/input.png"]


def test_local_delete_prefix_prunes_empty_directories(local: LocalDiskStore) -> None:
    local.put("jobs/j1/layers/00.png", PNG)
    local.put("jobs/j2/input.png", PNG)
    assert local.delete_prefix("jobs/j1/") == 1
    assert not (local.root / "jobs" / "j1").exists()
    assert (local.root / "jobs" / "j2" / "input.png").is_file()
    assert local.root.is_dir()


def test_local_refuses_symlink_escape(local: LocalDiskStore, tmp_path: Path) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "secret.txt").write_text("secret")
    (local.root / "jobs").mkdir()
    (local.root / "jobs" / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(InvalidKey):
        local.open_path("jobs/link/secret.txt")
    with pytest.raises(InvalidKey):
        local.get("jobs/link/secret.txt")
    with pytest.raises(InvalidKey):
        local.put("jobs/link/new.txt", b"x")
    assert not (outside / "new.txt").exists()


def test_local_open_path(local: LocalDiskStore) -> None:
    local.put("jobs/j1/input.png", PNG, "image/png")
    path = local.open_path("jobs/j1/input.png")
    assert path.read_bytes() == PNG and path.is_relative_to(local.root)
    with pytest.raises(ObjectNotFound):
        local.open_path("jobs/j1/missing.png")
    with pytest.raises(ObjectNotFound):
        local.open_path("jobs/j1")


def test_content_type_for() -> None:
    assert content_type_for("jobs/a/layers/00.png") == "image/png"
    assert content_type_for("jobs/a/exports/layers.psd") == "image/vnd.adobe.photoshop"
    assert content_type_for("jobs/a/exports/layers.pptx").endswith("presentationml.presentation")
    assert content_type_for("jobs/a/manifest.json") == "application/json"
    assert content_type_for("jobs/a/blob") == "application/octet-stream"


def test_local_check_fails_on_unwritable_root(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a dir")
    store = LocalDiskStore(tmp_path / "data", SECRET)
    store.root = blocker / "sub"  # a root that can no longer be created
    with pytest.raises(StorageUnavailable):
        store.check()


# --- S3 backend specifics --------------------------------------------------------------------------


def test_s3_presigns_for_the_public_endpoint(s3_settings_overrides: dict[str, Any]) -> None:
    internal = s3_settings_overrides["s3_endpoint_url"]
    port = urllib.parse.urlsplit(internal).port
    # 'localhost' reaches the same server under another name: the URL must carry the public host
    # and still work, while data calls keep using the internal endpoint.
    store = open_object_store(_s3_settings(s3_settings_overrides, s3_public_endpoint_url=f"http://localhost:{port}"))
    assert isinstance(store, S3Store)
    assert store._client.meta.endpoint_url == internal
    store.put("jobs/j1/input.png", PNG, "image/png")
    url = store.presign_get("jobs/j1/input.png", 300)
    assert urllib.parse.urlsplit(url).netloc == f"localhost:{port}"
    assert _http().get(url, timeout=10).content == PNG
    put = store.presign_put("jobs/j1/other.png", 300, "image/png")
    assert urllib.parse.urlsplit(put["url"]).netloc == f"localhost:{port}"


def test_s3_public_endpoint_is_never_called(s3_settings_overrides: dict[str, Any]) -> None:
    store = open_object_store(
        _s3_settings(s3_settings_overrides, s3_public_endpoint_url="https://files.example.invalid:9443")
    )
    store.put("jobs/j1/input.png", PNG, "image/png")
    assert store.get("jobs/j1/input.png") == PNG
    store.check()
    url = store.presign_get("jobs/j1/input.png", 300, filename="input.png")
    parts = urllib.parse.urlsplit(url)
    assert (parts.scheme, parts.netloc) == ("https", "files.example.invalid:9443")
    query = urllib.parse.parse_qs(parts.query)
    assert query["X-Amz-Expires"] == ["300"]
    assert query["response-content-disposition"][0].startswith("attachment;")


def test_s3_presigned_put_has_no_checksum_parameters(s3_settings_overrides: dict[str, Any]) -> None:
    # Clients (browsers, curl) cannot be expected to compute botocore's default CRC32 headers.
    store = open_object_store(_s3_settings(s3_settings_overrides))
    url = store.presign_put("uploads/u/input.png", 300, "image/png")["url"]
    assert "checksum" not in url.lower()
    assert "content-type" in urllib.parse.parse_qs(urllib.parse.urlsplit(url).query)["X-Amz-SignedHeaders"][0]


def test_s3_list_paginates_and_delete_batches(
    s3_settings_overrides: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_object_store(_s3_settings(s3_settings_overrides))
    assert isinstance(store, S3Store)
    keys = [f"jobs/j1/layers/{i:02d}.png" for i in range(7)]
    for k in keys:
        store.put(k, b"x")
    calls: dict[str, int] = {"ListObjectsV2": 0, "DeleteObjects": 0}

    def small_pages(params: dict[str, Any], **_: Any) -> None:
        params["MaxKeys"] = 2  # force four pages for seven keys

    def count(model: Any, **_: Any) -> None:
        if model.name in calls:
            calls[model.name] += 1

    store._client.meta.events.register("provide-client-params.s3.ListObjectsV2", small_pages)
    store._client.meta.events.register("before-call.s3", count)
    assert store.list("jobs/j1/") == keys
    assert calls["ListObjectsV2"] == 4
    monkeypatch.setattr("storage.s3._DELETE_BATCH", 3)
    assert store.delete_prefix("jobs/j1/") == 7
    assert calls["DeleteObjects"] == 3
    assert store.list("jobs/") == []


def test_s3_creates_missing_bucket_only_when_asked(s3_settings_overrides: dict[str, Any]) -> None:
    settings = _s3_settings(s3_settings_overrides, s3_create_bucket=False)
    store = open_object_store(settings)
    with pytest.raises(StorageUnavailable):
        store.check()
    created = open_object_store(settings.replace(s3_create_bucket=True))
    created.check()
    # A second store on the now-existing bucket (another replica starting) is fine.
    open_object_store(settings.replace(s3_create_bucket=True)).check()
    store.check()


def test_s3_check_fails_fast_on_unreachable_endpoint(s3_settings_overrides: dict[str, Any]) -> None:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}"  # bound but not listening: refused
        settings = _s3_settings(s3_settings_overrides, s3_endpoint_url=dead, s3_create_bucket=False, s3_max_attempts=1)
        store = open_object_store(settings)
        with pytest.raises(StorageUnavailable):
            store.check()
        # Every call, not only the probe: the worker retries a job on the project's own
        # TransientError and never needs botocore's exception classes.
        for call in (lambda: store.put("jobs/x/a.png", PNG), lambda: store.get("jobs/x/a.png"),
                     lambda: store.list("jobs/x/"), lambda: store.delete_prefix("jobs/x/")):
            with pytest.raises(StorageUnavailable) as caught:
                call()
            assert isinstance(caught.value, TransientError)


def test_s3_permanent_faults_stay_permanent(s3_settings_overrides: dict[str, Any]) -> None:
    # A missing bucket is a 404: a configuration error, not an outage to wait out.
    store = open_object_store(_s3_settings(s3_settings_overrides, s3_bucket="no-such-bucket-here",
                                           s3_create_bucket=False))
    with pytest.raises(Exception) as caught:
        store.put("jobs/x/a.png", PNG)
    assert not isinstance(caught.value, TransientError)


# --- factory ---------------------------------------------------------------------------------------


def test_factory_local(tmp_path: Path) -> None:
    settings = Settings.from_env({}, storage="local", storage_dir=str(tmp_path / "d"), signing_secret=SECRET)
    store = open_object_store(settings)
    assert isinstance(store, LocalDiskStore)
    assert store.root == (tmp_path / "d").resolve()


def test_factory_local_needs_a_secret(tmp_path: Path) -> None:
    settings = Settings.from_env({}, storage="local", storage_dir=str(tmp_path / "d"))
    with pytest.raises(ValueError, match="LAYERQ_SIGNING_SECRET"):
        open_object_store(settings)


def test_factory_unknown_backend() -> None:
    with pytest.raises(ValueError, match="LAYERQ_STORAGE"):
        open_object_store(Settings.from_env({}, storage="ftp"))
