"""S3-compatible object store (AWS S3, MinIO, R2, moto) through boto3.

Two clients: the data client talks to `endpoint_url` (the address inside the cluster network, e.g.
`http://minio:9000`); the presign client is bound to `public_endpoint_url` and never sends a request.
A presigned URL embeds its host in the signature, so URLs handed to clients must be signed for the
host clients can reach — signing with the internal client and rewriting the host afterwards would
break the signature.
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeVar, cast

import boto3
from botocore.config import Config
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from layerq.errors import ObjectNotFound, StorageFull

from .base import (
    InvalidKey,
    ObjectStore,
    Pieces,
    PresignedRequest,
    StorageUnavailable,
    content_disposition,
    payload_bytes,
    validate_key,
    validate_prefix,
    validate_ttl,
)

_DELETE_BATCH = 1000
"""DeleteObjects accepts at most 1000 keys per request."""

_NOT_FOUND_CODES = frozenset({"NoSuchKey", "404", "NotFound"})
_NO_BUCKET_CODES = frozenset({"NoSuchBucket", "404", "NotFound"})
_FULL_CODES = frozenset({
    "XMinioStorageFull",  # MinIO: drives below their free-space threshold (HTTP 507)
    "XMinioAdminBucketQuotaExceeded",  # MinIO: bucket quota reached
    "QuotaExceeded",  # Ceph RGW (and gateways modelled on it): user or bucket quota reached
})
"""Error codes that mean "the store has no room" rather than "this request is wrong". `EntityTooLarge`
is left out: it is S3's 5 GB single-PUT limit, which a retry with the same object fails again for
reasons that have nothing to do with free space."""
_INSUFFICIENT_STORAGE = 507


_THROTTLED_CODES = frozenset({"SlowDown", "Throttling", "ThrottlingException", "RequestTimeout"})

F = TypeVar("F", bound=Callable[..., Any])


def _error_code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code", ""))


def _is_full(exc: ClientError) -> bool:
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
    return _error_code(exc) in _FULL_CODES or status == _INSUFFICIENT_STORAGE


def _is_transient(exc: BaseException) -> bool:
    """A fault that outlasted botocore's own retries but may pass: the endpoint unreachable or
    timing out, a 5xx or throttling. A 4xx (denied, bad request) or a malformed call is permanent."""
    if isinstance(exc, ClientError):
        if _is_full(exc):  # no room: it does not pass within a retry's backoff
            return False
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0) or 0
        return status >= 500 or _error_code(exc) in _THROTTLED_CODES
    return isinstance(exc, (BotoConnectionError, HTTPClientError))


def _translated(method: F) -> F:
    """Raise the project's `StorageUnavailable` for transient botocore faults, so callers (the
    worker's retry decision) never need to know botocore's exception classes."""

    @functools.wraps(method)
    def wrapper(self: "S3Store", *args: Any, **kwargs: Any) -> Any:
        try:
            return method(self, *args, **kwargs)
        except (ClientError, BotoCoreError) as exc:
            if _is_transient(exc):
                raise StorageUnavailable(f"S3 {method.__name__} failed: {type(exc).__name__}: {exc}") from exc
            raise

    return cast(F, wrapper)


class S3Store(ObjectStore):
    """Objects in one S3 bucket.

    `endpoint_url` empty/None means AWS itself; `public_endpoint_url` empty/None means "same as
    `endpoint_url`". Empty credentials fall back to boto3's default chain (environment, instance
    role...). `max_attempts` is botocore's standard retry mode total per call. With
    `create_bucket`, a missing bucket is created here (development and tests)."""

    def __init__(
        self,
        bucket: str,
        endpoint_url: str | None = None,
        public_endpoint_url: str | None = None,
        region: str = "us-east-1",
        access_key_id: str | None = None,
        secret_access_key: str | None = None,
        max_attempts: int = 5,
        create_bucket: bool = False,
    ) -> None:
        if not bucket:
            raise ValueError("S3 bucket name is empty (set LAYERQ_S3_BUCKET)")
        self.bucket = bucket
        self.endpoint_url = endpoint_url or None
        self.public_endpoint_url = public_endpoint_url or self.endpoint_url
        self.region = region or "us-east-1"
        config = Config(
            region_name=self.region,
            signature_version="s3v4",
            retries={"mode": "standard", "max_attempts": max_attempts},
            # S3-compatible servers (MinIO, moto, most on-prem gateways) need path-style URLs;
            # AWS itself works best with virtual-hosted style, which "auto" picks.
            s3={"addressing_style": "path" if self.endpoint_url else "auto"},
            # botocore >= 1.36 adds CRC checksum headers to every upload (and validates them on
            # downloads) by default; several S3-compatible stores (older MinIO, R2, gateways)
            # reject or mangle them. Only use them where the S3 API requires them.
            request_checksum_calculation="when_required",
            response_checksum_validation="when_required",
            connect_timeout=5,
            read_timeout=60,
        )
        # One session per store: sessions are not thread-safe, clients are (and are shared).
        session = boto3.session.Session(
            aws_access_key_id=access_key_id or None,
            aws_secret_access_key=secret_access_key or None,
            region_name=self.region,
        )
        self._client = session.client("s3", endpoint_url=self.endpoint_url, config=config)
        self._presign_client = session.client("s3", endpoint_url=self.public_endpoint_url, config=config)
        if create_bucket:
            self._ensure_bucket()

    def _ensure_bucket(self) -> None:
        try:
            self._client.head_bucket(Bucket=self.bucket)
            return
        except ClientError as exc:
            if _error_code(exc) not in _NO_BUCKET_CODES:
                raise
        kwargs: dict[str, Any] = {"Bucket": self.bucket}
        if self.region != "us-east-1":
            # us-east-1 is the one region that rejects an explicit LocationConstraint.
            kwargs["CreateBucketConfiguration"] = {"LocationConstraint": self.region}
        try:
            self._client.create_bucket(**kwargs)
        except ClientError as exc:
            # Another process (a second API replica) won the race: the bucket exists, as wanted.
            if _error_code(exc) not in {"BucketAlreadyOwnedByYou", "BucketAlreadyExists"}:
                raise

    # --- ObjectStore ---------------------------------------------------------------------------

    @_translated
    def put(self, key: str, data: bytes | Pieces, content_type: str = "application/octet-stream") -> None:
        """PutObject with `ContentType`; S3 makes the object visible whole or not at all."""
        validate_key(key)
        body = payload_bytes(data)
        try:
            self._client.put_object(Bucket=self.bucket, Key=key, Body=body, ContentType=content_type)
        except ClientError as exc:
            if _is_full(exc):
                raise StorageFull(
                    f"S3 bucket {self.bucket!r} refused {key}: {_error_code(exc)} (no space or quota)"
                ) from exc
            raise

    @_translated
    def get(self, key: str) -> bytes:
        validate_key(key)
        try:
            response = self._client.get_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            if _error_code(exc) in _NOT_FOUND_CODES:
                raise ObjectNotFound(f"object not found: {key}") from None
            raise
        with response["Body"] as body:
            return cast(bytes, body.read())

    @_translated
    def exists(self, key: str) -> bool:
        validate_key(key)
        try:
            self._client.head_object(Bucket=self.bucket, Key=key)
        except ClientError as exc:
            # HEAD responses have no body, so the code is the bare status ("404").
            if _error_code(exc) in _NOT_FOUND_CODES:
                return False
            raise
        return True

    def _iter_keys(self, prefix: str) -> Iterator[str]:
        paginator = self._client.get_paginator("list_objects_v2")
        for page in paginator.paginate(Bucket=self.bucket, Prefix=prefix):
            for item in page.get("Contents", []):
                yield item["Key"]

    @_translated
    def list(self, prefix: str) -> list[str]:
        validate_prefix(prefix)
        # S3 orders by UTF-8 bytes, Python by code points; sort here so both backends agree.
        return sorted(self._iter_keys(prefix))

    @_translated
    def delete_prefix(self, prefix: str) -> int:
        if validate_prefix(prefix) == "":
            raise InvalidKey("refusing to delete with an empty prefix (that would wipe the whole bucket)")
        # Collect first, then delete: deleting while paginating could shift the listing's pages.
        keys = self.list(prefix)
        return sum(self._delete_batch(keys[i : i + _DELETE_BATCH]) for i in range(0, len(keys), _DELETE_BATCH))

    def _delete_batch(self, keys: Sequence[str]) -> int:
        response = self._client.delete_objects(
            Bucket=self.bucket,
            Delete={"Objects": [{"Key": k} for k in keys], "Quiet": True},
        )
        # DeleteObjects answers 200 even when some keys failed; they are listed under Errors.
        errors = response.get("Errors", [])
        if errors:
            first = errors[0]
            raise RuntimeError(
                f"S3 could not delete {len(errors)} of {len(keys)} objects; first: "
                f"{first.get('Key')}: {first.get('Code')} {first.get('Message')}"
            )
        return len(keys)

    def presign_get(self, key: str, expires_s: int, filename: str | None = None) -> str:
        """A SigV4 GET URL signed for the public endpoint; with `filename`, S3 answers with an
        attachment Content-Disposition (ResponseContentDisposition, bound into the signature)."""
        validate_key(key)
        params: dict[str, Any] = {"Bucket": self.bucket, "Key": key}
        if filename is not None:
            params["ResponseContentDisposition"] = content_disposition(filename)
        url = self._presign_client.generate_presigned_url(
            "get_object", Params=params, ExpiresIn=validate_ttl(expires_s), HttpMethod="GET"
        )
        return cast(str, url)

    def presign_put(self, key: str, expires_s: int, content_type: str) -> PresignedRequest:
        """A SigV4 PUT URL signed for the public endpoint with `Content-Type` as a signed header."""
        validate_key(key)
        url: str = self._presign_client.generate_presigned_url(
            "put_object",
            Params={"Bucket": self.bucket, "Key": key, "ContentType": content_type},
            ExpiresIn=validate_ttl(expires_s),
            HttpMethod="PUT",
        )
        return {"url": url, "method": "PUT", "headers": {"Content-Type": content_type}}

    def check(self) -> None:
        """HeadBucket on the data endpoint; raise `StorageUnavailable` on any failure."""
        try:
            self._client.head_bucket(Bucket=self.bucket)
        except (ClientError, BotoCoreError) as exc:
            where = self.endpoint_url or "AWS"
            raise StorageUnavailable(f"S3 bucket {self.bucket!r} at {where} is not reachable: {exc}") from exc

    def __repr__(self) -> str:
        return (
            f"S3Store(bucket={self.bucket!r}, endpoint_url={self.endpoint_url!r}, "
            f"public_endpoint_url={self.public_endpoint_url!r})"
        )
