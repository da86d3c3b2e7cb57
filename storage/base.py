"""The object-store interface: S3 (storage/s3.py) and local disk (storage/local.py) implement it.

Both backends share the key rules below, so a key that works on one works on the other, and a key
can never name a path outside the local backend's root.
"""

from __future__ import annotations

import abc
import urllib.parse
from typing import TypedDict

from layerq.errors import StorageUnavailable, ValidationFailed  # noqa: F401 (re-exported for the backends)

MAX_KEY_BYTES = 1024
"""S3's own limit on a key's UTF-8 length; applied to both backends so they accept the same keys."""

MAX_URL_TTL_S = 7 * 24 * 3600
"""SigV4 presigned URLs cannot live longer than 7 days; the local backend keeps the same cap."""

MAX_FILENAME_CHARS = 255


class InvalidKey(ValidationFailed, ValueError):
    """Raised when an object key (or prefix) breaks the key rules of `validate_key`.

    It is a `ValidationFailed` (an `invalid_request` at the API's edge) and a `ValueError` (for
    callers that treat it as a programming error)."""

    def __init__(self, message: str) -> None:
        super().__init__(message, field="key")


class Pieces(tuple):
    """An object's bytes as pieces (bytes or byte memoryviews) to be written back to back.

    The exports (PSD, PPTX, ZIP) are mostly the layer PNGs and channel planes they hold, so their
    writer hands over the pieces instead of joining them: joining copies ~20 MB per 4-layer
    640x640 job into fresh memory, which on the 2-core benchmark machine cost ~10 ms per job. The
    local backend writes the pieces as they are; S3 joins them (boto3 wants one body)."""

    __slots__ = ()

    @property
    def nbytes(self) -> int:
        return sum(memoryview(piece).nbytes for piece in self)

    def tobytes(self) -> bytes:
        return b"".join(self)


def payload_bytes(data: bytes | Pieces) -> bytes:
    """`data` as one bytes object (joined when it is `Pieces`)."""
    return data.tobytes() if isinstance(data, Pieces) else data


class PresignedRequest(TypedDict):
    """A request a client can make without credentials: send `method` to `url` with `headers`."""

    url: str
    method: str
    headers: dict[str, str]


def _has_control_chars(text: str) -> bool:
    return any(ord(c) < 32 or ord(c) == 127 for c in text)


def validate_key(key: str) -> str:
    """Return `key` unchanged if it is a valid object key, else raise `InvalidKey`.

    A key is a relative '/'-separated path: non-empty, at most 1024 UTF-8 bytes, no leading '/',
    no empty segment (so no '//' and no trailing '/'), no '.' or '..' segment, no backslash and
    no control character. These rules make every key a safe path under a directory root on any OS
    and an unambiguous string inside a signature."""
    if not isinstance(key, str):
        raise InvalidKey(f"object key must be a string, not {type(key).__name__}")
    if not key:
        raise InvalidKey("object key is empty")
    if len(key.encode("utf-8", "surrogatepass")) > MAX_KEY_BYTES:
        raise InvalidKey(f"object key is longer than {MAX_KEY_BYTES} bytes")
    if key.startswith("/"):
        raise InvalidKey(f"object key must be relative, got {key!r}")
    if "\\" in key:
        # Backslashes are separators on Windows: 'a\\..\\..\\etc' would escape the root there.
        raise InvalidKey(f"object key must not contain a backslash: {key!r}")
    if _has_control_chars(key):
        raise InvalidKey(f"object key must not contain control characters: {key!r}")
    for segment in key.split("/"):
        if segment == "":
            raise InvalidKey(f"object key has an empty path segment: {key!r}")
        if segment in (".", ".."):
            raise InvalidKey(f"object key must not contain '.' or '..' segments: {key!r}")
    return key


def validate_prefix(prefix: str) -> str:
    """Return `prefix` unchanged if it is a valid listing prefix, else raise `InvalidKey`.

    A prefix is '' (everything) or the start of a key: the same rules as `validate_key`, except
    that it may end with '/' ('jobs/abc/') or in the middle of a segment ('jobs/ab')."""
    if not isinstance(prefix, str):
        raise InvalidKey(f"prefix must be a string, not {type(prefix).__name__}")
    if prefix == "":
        return prefix
    validate_key(prefix[:-1] if prefix.endswith("/") else prefix)
    return prefix


def validate_filename(filename: str) -> str:
    """Return `filename` unchanged if it can name a download, else raise `ValidationFailed`.

    A download filename is one path segment: non-empty, at most 255 characters, no '/', no
    backslash, no control character (which could split a Content-Disposition header)."""
    if not isinstance(filename, str) or not filename:
        raise ValidationFailed("download filename must be a non-empty string", field="filename")
    if len(filename) > MAX_FILENAME_CHARS:
        raise ValidationFailed(f"download filename is longer than {MAX_FILENAME_CHARS} characters", field="filename")
    if "/" in filename or "\\" in filename or _has_control_chars(filename) or filename in (".", ".."):
        raise ValidationFailed(f"download filename must be a plain file name: {filename!r}", field="filename")
    return filename


def validate_ttl(expires_s: int) -> int:
    """Return `expires_s` if it is a valid URL lifetime (1 s to 7 days), else raise `ValueError`."""
    if isinstance(expires_s, bool) or not isinstance(expires_s, int):
        raise ValueError(f"URL lifetime must be an int number of seconds, got {expires_s!r}")
    if not 1 <= expires_s <= MAX_URL_TTL_S:
        raise ValueError(f"URL lifetime must be between 1 and {MAX_URL_TTL_S} seconds, got {expires_s}")
    return expires_s


def content_disposition(filename: str) -> str:
    """An RFC 6266 `attachment` Content-Disposition for `filename`.

    Carries an ASCII fallback (`filename=`, non-ASCII and quote characters replaced by '_') for
    old clients and the exact UTF-8 name (`filename*=`) for everyone else."""
    validate_filename(filename)
    fallback = "".join(c if 32 <= ord(c) < 127 and c not in '"%;' else "_" for c in filename)
    encoded = urllib.parse.quote(filename, safe="")
    return f"attachment; filename=\"{fallback}\"; filename*=UTF-8''{encoded}"


class ObjectStore(abc.ABC):
    """Keys are '/'-separated paths like `jobs/<id>/layers/00.png` (rules: `validate_key`).

    Every method validates its key or prefix and raises `InvalidKey` before touching storage."""

    @abc.abstractmethod
    def put(self, key: str, data: bytes | Pieces, content_type: str = "application/octet-stream") -> None:
        """Write (or overwrite) one object; the object is visible whole or not at all."""

    @abc.abstractmethod
    def get(self, key: str) -> bytes:
        """Read one object; raise layerq.errors.ObjectNotFound when absent."""

    @abc.abstractmethod
    def exists(self, key: str) -> bool:
        """Whether an object is stored at exactly `key` (a 'directory' prefix is not an object)."""

    @abc.abstractmethod
    def list(self, prefix: str) -> list[str]:
        """Every key under `prefix` (a plain string prefix: 'jobs/ab' matches 'jobs/abc/x'), sorted."""

    @abc.abstractmethod
    def delete_prefix(self, prefix: str) -> int:
        """Delete every object under `prefix`; return how many were deleted.

        An empty prefix is refused with `InvalidKey`: wiping the whole store is never what a
        caller of this method meant."""

    @abc.abstractmethod
    def presign_get(self, key: str, expires_s: int, filename: str | None = None) -> str:
        """A URL that downloads `key` without credentials until `expires_s` seconds from now.
        `filename` sets the download's Content-Disposition (attachment)."""

    @abc.abstractmethod
    def presign_put(self, key: str, expires_s: int, content_type: str) -> PresignedRequest:
        """A request that uploads one object to `key` without credentials for `expires_s` seconds.

        The client sends `method` to `url` with exactly `headers` (which carry `content_type`) and
        the object's bytes as the body."""

    def check(self) -> None:
        """Raise `StorageUnavailable` if the store cannot be reached (readiness probes).

        The default trusts the store; backends override it with a real probe."""
        return None
