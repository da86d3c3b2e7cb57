"""Local-disk object store: files under one root directory, URLs signed with HMAC and served by the API.

Layout: the object `jobs/<id>/layers/00.png` is the file `<root>/jobs/<id>/layers/00.png`. Writes go to
a temporary file in the destination directory, are fsynced and renamed over the destination, so a
reader sees the old object or the new one, never a torn one, even across a crash.

Download and upload URLs point at the API's `/files/<key>` route, which must call `verify_url` before
serving `open_path(key)` or storing the request body with `put`. Content types are not stored:
`content_type_for(key)` derives them from the key's extension (every layerq key has one).

Limitation (inherent to a filesystem): a key cannot be both an object and a prefix of other objects
('a/b' and 'a/b/c'); writing the second raises `OSError`. layerq's layout never does this.
"""

from __future__ import annotations

import contextlib
import errno
import mimetypes
import os
import tempfile
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path

from layerq.errors import ObjectNotFound, StorageFull

from . import signing
from .base import (
    InvalidKey,
    ObjectStore,
    Pieces,
    PresignedRequest,
    StorageUnavailable,
    validate_key,
    validate_prefix,
    validate_ttl,
)

_FULL_ERRNOS = frozenset({errno.ENOSPC, errno.EDQUOT})
"""Write errors that mean "no space" (disk full, or the user's quota): `StorageFull`, not a crash."""

_LEFT_TO_CALLER_ERRNOS = frozenset({errno.ENOENT, errno.ENOTDIR, errno.EISDIR, errno.EEXIST})
"""Not faults of the filesystem: an absent object (each method says what that means) or a key that is
both an object and a prefix (the module's limitation: the caller's bug). Left as they are."""


@contextlib.contextmanager
def _os_faults(what: str) -> Iterator[None]:
    """The filesystem's faults as the storage errors callers handle, as the S3 backend does: no space
    is `StorageFull`; any other (EIO, EACCES, EROFS, ESTALE...) is `StorageUnavailable`, which the
    API answers with 503 and a worker retries with backoff, like an unreachable S3 endpoint."""
    try:
        yield
    except OSError as exc:
        if exc.errno in _FULL_ERRNOS:
            raise StorageFull(f"no space left to {what}: {exc.strerror}") from exc
        if exc.errno in _LEFT_TO_CALLER_ERRNOS:
            raise
        raise StorageUnavailable(f"local storage could not {what}: {exc.strerror or exc}") from exc

_TMP_PREFIX = ".layerq-tmp-"
"""Temporary files of in-flight writes start with this; listings skip them."""

_EXTRA_TYPES = {
    ".psd": "image/vnd.adobe.photoshop",
    ".pptx": "application/vnd.openxmlformats-officedocument.presentationml.presentation",
    ".ora": "image/openraster",
    ".zip": "application/zip",
    ".json": "application/json",
    ".png": "image/png",
    ".webp": "image/webp",
}


def content_type_for(key: str) -> str:
    """The media type of `key` guessed from its extension; `application/octet-stream` if unknown.

    Fixed table first, so answers don't depend on the host's mime.types files."""
    suffix = Path(key).suffix.lower()
    if suffix in _EXTRA_TYPES:
        return _EXTRA_TYPES[suffix]
    guessed, _ = mimetypes.guess_type(key, strict=False)
    return guessed or "application/octet-stream"


class LocalDiskStore(ObjectStore):
    """Objects as files under `root`; presigned URLs are `{public_url}/files/{key}?…` signed with `secret`.

    `public_url` is the base URL clients reach the API at (no trailing '/'); empty gives root-relative
    URLs (`/files/…`) that the API resolves against the request's host. `check()` fails while the
    filesystem has less than `min_free_bytes` free (0: never). `clock` (unix seconds) exists for tests."""

    def __init__(
        self,
        root: Path | str,
        secret: str,
        public_url: str = "",
        *,
        min_free_bytes: int = 0,
        clock: Callable[[], float] = time.time,
    ) -> None:
        if not secret:
            raise ValueError("the local-disk store needs a URL signing secret (set LAYERQ_SIGNING_SECRET)")
        self.root = Path(root).expanduser().resolve()
        self.root.mkdir(parents=True, exist_ok=True)
        self._secret = secret
        self.public_url = public_url.rstrip("/")
        self.min_free_bytes = min_free_bytes
        self._clock = clock

    # --- paths ---------------------------------------------------------------------------------

    def _path(self, key: str) -> Path:
        validate_key(key)
        path = self.root.joinpath(*key.split("/"))
        # validate_key already rules out traversal; this second check guards against a symlink
        # planted inside the root (or an OS quirk such as a Windows drive letter in a segment).
        try:
            path.resolve().relative_to(self.root)
        except ValueError:
            raise InvalidKey(f"object key resolves outside the store: {key!r}") from None
        return path

    def open_path(self, key: str) -> Path:
        """The file holding `key`, for the API to stream; raise `ObjectNotFound` when absent.

        Call `verify_url` first: this method checks the key's shape, not the caller's right."""
        path = self._path(key)
        if not path.is_file():
            raise ObjectNotFound(f"object not found: {key}")
        return path

    # --- ObjectStore ---------------------------------------------------------------------------

    def put(self, key: str, data: bytes | Pieces, content_type: str = "application/octet-stream") -> None:
        """Write `data` at `key` atomically (temp file, fsync, rename, fsync of the directory).

        `content_type` is accepted for interface parity and not stored (see `content_type_for`).
        Raises `StorageFull` when the filesystem is out of space or quota, `StorageUnavailable` on any
        other filesystem fault; either way nothing of the object stays."""
        path = self._path(key)
        with _os_faults(f"store {key} under {self.root}"):
            self._write(path, data)

    def _write(self, path: Path, data: bytes | Pieces) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp_name = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as f:
                if isinstance(data, Pieces):  # as they are: big ones straight through, small ones buffered
                    f.writelines(data)
                else:
                    f.write(data)
                f.flush()
                # Data must be on disk before the rename makes it visible, or a crash could leave
                # a complete-looking but empty file.
                os.fsync(f.fileno())
            os.replace(tmp_name, path)
        except BaseException:
            try:
                os.unlink(tmp_name)
            except FileNotFoundError:
                pass
            raise
        _fsync_dir(path.parent)

    def get(self, key: str) -> bytes:
        path = self._path(key)
        try:
            with _os_faults(f"read {key} under {self.root}"):
                return path.read_bytes()
        except (FileNotFoundError, IsADirectoryError, NotADirectoryError):
            raise ObjectNotFound(f"object not found: {key}") from None

    def exists(self, key: str) -> bool:
        return self._path(key).is_file()

    def list(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        # Walk only the deepest directory the prefix names fully: 'jobs/ab' walks 'jobs/'.
        dir_part = prefix.rsplit("/", 1)[0] if "/" in prefix else ""
        base = self.root.joinpath(*dir_part.split("/")) if dir_part else self.root
        if not base.is_dir():
            return []
        keys: list[str] = []
        for dirpath, dirnames, filenames in os.walk(base):
            rel_dir = Path(dirpath).relative_to(self.root).as_posix()
            rel_dir = "" if rel_dir == "." else rel_dir + "/"
            # Prune directories that cannot hold a match, so listing one job stays cheap in a big store.
            dirnames[:] = [
                d for d in dirnames if (rel_dir + d + "/").startswith(prefix) or prefix.startswith(rel_dir + d + "/")
            ]
            for name in filenames:
                if name.startswith(_TMP_PREFIX):
                    continue
                key = rel_dir + name
                if key.startswith(prefix):
                    keys.append(key)
        return sorted(keys)

    def delete_prefix(self, prefix: str) -> int:
        if validate_prefix(prefix) == "":
            raise InvalidKey("refusing to delete with an empty prefix (that would wipe the whole store)")
        deleted = 0
        parents: set[Path] = set()
        for key in self.list(prefix):
            path = self.root.joinpath(*key.split("/"))
            try:
                with _os_faults(f"delete {key} under {self.root}"):
                    path.unlink()
            except FileNotFoundError:
                continue  # deleted concurrently: not ours to count
            deleted += 1
            parents.add(path.parent)
        self._prune_empty_dirs(parents)
        return deleted

    def _prune_empty_dirs(self, dirs: set[Path]) -> None:
        # Remove directories left empty, deepest first, never the root itself. rmdir fails on a
        # non-empty directory, so a concurrent writer's new file is never lost.
        candidates: set[Path] = set()
        for d in dirs:
            while d != self.root and self.root in d.parents:
                candidates.add(d)
                d = d.parent
        for d in sorted(candidates, key=lambda p: len(p.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass

    def presign_get(self, key: str, expires_s: int, filename: str | None = None) -> str:
        """`{public_url}/files/{key}?expires=…[&download=…]&sig=…`, signed for GET (and HEAD)."""
        # The key is validated by the signer.
        query = signing.signed_query("GET", key, self._expires_at(expires_s), self._secret, filename=filename)
        return self._url(key, query)

    def presign_put(self, key: str, expires_s: int, content_type: str) -> PresignedRequest:
        """A PUT to `{public_url}/files/{key}?expires=…&content_type=…&sig=…`, signed for PUT with
        `content_type` bound: the upload must send that Content-Type."""
        query = signing.signed_query("PUT", key, self._expires_at(expires_s), self._secret, content_type=content_type)
        return {
            "url": self._url(key, query),
            "method": "PUT",
            "headers": {"Content-Type": query[signing.Q_CONTENT_TYPE]},
        }

    def _expires_at(self, expires_s: int) -> int:
        return int(self._clock()) + validate_ttl(expires_s)

    def verify_url(
        self,
        method: str,
        key: str,
        query: Mapping[str, str],
        *,
        content_type: str | None = None,
    ) -> None:
        """Raise `SignatureInvalid` (with `.reason`) unless `query` signs `method` on `key` and is fresh.

        `key` is the decoded path after `/files/` (what Flask's `<path:key>` gives); `query` the
        decoded query parameters (`request.args`); `content_type` the request's Content-Type, which
        must match for uploads. A path swapped for another key, a PUT URL used for GET, a changed
        `download` name or expiry all fail as `bad_signature`; a bad key fails as `malformed`."""
        signing.verify_query(method, key, query, self._secret, content_type=content_type, now=self._clock())

    def check(self) -> None:
        """Raise `StorageUnavailable` unless the root is a writable directory with at least
        `min_free_bytes` free (so a full disk shows on /healthz before jobs fail on it)."""
        try:
            self.root.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise StorageUnavailable(f"storage directory {self.root} cannot be created: {exc}") from exc
        if not os.access(self.root, os.W_OK | os.X_OK):
            raise StorageUnavailable(f"storage directory {self.root} is not writable")
        free = self.free_bytes()
        if free < self.min_free_bytes:
            raise StorageUnavailable(
                f"storage directory {self.root} has {free} bytes free space, below the "
                f"{self.min_free_bytes} bytes of LAYERQ_STORAGE_MIN_FREE_BYTES"
            )

    def free_bytes(self) -> int:
        """Bytes an unprivileged writer can still use on the root's filesystem."""
        st = os.statvfs(self.root)
        return st.f_bavail * st.f_frsize

    def _url(self, key: str, query: Mapping[str, str]) -> str:
        # quote() keeps '/' so the route sees the same segments; everything else ('?', '#', '%',
        # spaces, non-ASCII) is percent-encoded and decoded back to the exact key by the server.
        path = "/files/" + urllib.parse.quote(key, safe="/")
        return f"{self.public_url}{path}?{urllib.parse.urlencode(query, quote_via=urllib.parse.quote)}"

    def __repr__(self) -> str:
        return f"LocalDiskStore(root={str(self.root)!r}, public_url={self.public_url!r})"


def _fsync_dir(directory: Path) -> None:
    # The rename itself lives in the directory entry; fsync it so the new name survives a crash.
    # Not every platform can open a directory (Windows): durability there is best effort.
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)
