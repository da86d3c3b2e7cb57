"""HMAC-SHA256 signed URLs for the local-disk backend.

A signature binds the HTTP method, the object key, the expiry (unix seconds) and, when present, the
download filename and the upload content type. Changing any of them — swapping the path for another
key, using a PUT URL for a GET, stretching the expiry — makes verification fail.

The signed message is the JSON encoding of a list, so no choice of key or filename can make two
different requests share one message. It starts with a purpose tag, so a signature made here can
never be replayed as another HMAC the same secret might produce elsewhere.

Query parameters of a signed URL: `expires` (decimal unix seconds), `sig` (unpadded base64url of
the 32-byte MAC), optionally `download` (filename) and `content_type` (PUT only).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import time
from collections.abc import Mapping

from layerq.errors import SignatureInvalid

from .base import InvalidKey, validate_filename, validate_key

_PURPOSE = "layerq-local-url-v1"
_SIG_BYTES = hashlib.sha256().digest_size
_MAX_EXPIRES_DIGITS = 12  # unix seconds stay below 10**12 for the next 30 000 years

SIGNED_METHODS = ("GET", "PUT")
"""Methods a URL can be signed for. HEAD is verified as GET (it is a GET without the body)."""

Q_EXPIRES = "expires"
Q_SIG = "sig"
Q_DOWNLOAD = "download"
Q_CONTENT_TYPE = "content_type"


class UrlSignatureInvalid(SignatureInvalid):
    """A `SignatureInvalid` that says why: `reason` is one of `malformed`, `bad_signature`,
    `expired`, `content_type_mismatch`."""

    def __init__(self, reason: str, message: str) -> None:
        super().__init__(message)
        self.reason = reason


def _normalize_method(method: str) -> str:
    m = method.upper() if isinstance(method, str) else ""
    if m == "HEAD":
        # A HEAD is answered exactly like the GET it abbreviates, so a GET URL may serve it.
        m = "GET"
    if m not in SIGNED_METHODS:
        raise ValueError(f"cannot sign or verify method {method!r}; expected one of {SIGNED_METHODS}")
    return m


def normalize_content_type(content_type: str | None) -> str | None:
    """The bare media type, lower-cased ('Image/PNG; charset=x' → 'image/png'); None stays None.

    Parameters are dropped because HTTP stacks add or reorder them freely; the media type is what
    the store records."""
    if content_type is None:
        return None
    return content_type.split(";", 1)[0].strip().lower()


def _secret_bytes(secret: str) -> bytes:
    if not isinstance(secret, str) or not secret:
        # An empty HMAC key is a valid key to HMAC; refusing it keeps a misconfigured API from
        # handing out URLs anybody could forge.
        raise ValueError("the URL signing secret is empty (set LAYERQ_SIGNING_SECRET)")
    return secret.encode("utf-8")


def _checked_method(method: str, key: str) -> str:
    """The normalised method; raises ValueError for an unsupported method, InvalidKey for a bad key."""
    m = _normalize_method(method)
    validate_key(key)
    return m


def _mac(method: str, key: str, expires_at: int, secret: str, filename: str | None, content_type: str | None) -> bytes:
    message = json.dumps(
        [_PURPOSE, method, key, expires_at, filename, normalize_content_type(content_type)],
        ensure_ascii=True,
        separators=(",", ":"),
    ).encode("ascii")
    return hmac.new(_secret_bytes(secret), message, hashlib.sha256).digest()


def sign(
    method: str,
    key: str,
    expires_at_unix: int,
    secret: str,
    *,
    filename: str | None = None,
    content_type: str | None = None,
) -> str:
    """The signature (unpadded base64url) of `method` on `key` until `expires_at_unix`.

    `filename` (the `download` query parameter) and `content_type` (uploads) are bound too when
    given. Raises `InvalidKey` for a bad key, `ValueError` for an unsupported method, a negative
    expiry or an empty secret."""
    m = _checked_method(method, key)
    if isinstance(expires_at_unix, bool) or not isinstance(expires_at_unix, int) or expires_at_unix < 0:
        raise ValueError(f"expiry must be a non-negative int of unix seconds, got {expires_at_unix!r}")
    if filename is not None:
        validate_filename(filename)
    mac = _mac(m, key, expires_at_unix, secret, filename, content_type)
    return base64.urlsafe_b64encode(mac).rstrip(b"=").decode("ascii")


def verify(
    method: str,
    key: str,
    expires_at_unix: int,
    signature: str,
    secret: str,
    *,
    filename: str | None = None,
    content_type: str | None = None,
    now: float | None = None,
) -> None:
    """Return if `signature` is valid for these fields and not expired at `now` (default: the clock).

    Raises `UrlSignatureInvalid` (a `SignatureInvalid`) with reason `malformed` (signature not
    base64url of 32 bytes, bad key), `bad_signature` (any bound field differs) or `expired`. The
    signature is checked before the expiry, so a tampered expiry reads as a bad signature. The
    comparison takes constant time."""
    try:
        m = _checked_method(method, key)
    except InvalidKey as exc:  # an InvalidKey is a ValueError too: this clause first
        raise UrlSignatureInvalid("malformed", f"signed URL names an invalid key: {exc.message}") from None
    except ValueError as exc:
        raise UrlSignatureInvalid("malformed", str(exc)) from None
    given = _decode_sig(signature)
    expected = _mac(m, key, expires_at_unix, secret, filename, content_type)
    if not hmac.compare_digest(given, expected):
        raise UrlSignatureInvalid("bad_signature", "signed URL signature does not match")
    current = time.time() if now is None else now
    if current > expires_at_unix:
        raise UrlSignatureInvalid("expired", "signed URL has expired")


def _decode_sig(signature: object) -> bytes:
    if not isinstance(signature, str) or not signature or len(signature) > 64:
        raise UrlSignatureInvalid("malformed", "signed URL has no usable signature")
    try:
        raw = base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4))
    except (binascii.Error, ValueError):
        raise UrlSignatureInvalid("malformed", "signed URL signature is not base64url") from None
    if len(raw) != _SIG_BYTES:
        raise UrlSignatureInvalid("malformed", "signed URL signature has the wrong length")
    return raw


def signed_query(
    method: str,
    key: str,
    expires_at_unix: int,
    secret: str,
    *,
    filename: str | None = None,
    content_type: str | None = None,
) -> dict[str, str]:
    """The query parameters of a signed URL for `key` (see the module docstring), in URL order."""
    query = {Q_EXPIRES: str(expires_at_unix)}
    if filename is not None:
        query[Q_DOWNLOAD] = filename
    ct = normalize_content_type(content_type)
    if ct is not None:
        query[Q_CONTENT_TYPE] = ct
    query[Q_SIG] = sign(method, key, expires_at_unix, secret, filename=filename, content_type=ct)
    return query


def verify_query(
    method: str,
    key: str,
    query: Mapping[str, str],
    secret: str,
    *,
    content_type: str | None = None,
    now: float | None = None,
) -> None:
    """Verify a request for `key` with `method` that carries the signed-URL `query` parameters.

    `content_type` is the request's Content-Type header. When the URL was signed with a content
    type (uploads), the request must send the same media type, else reason `content_type_mismatch`;
    for URLs signed without one the header is ignored. Other failures: see `verify`. Unknown
    query parameters are ignored (they are not signed and change nothing)."""
    raw_expires = query.get(Q_EXPIRES)
    # ASCII digits only: str.isdigit alone would accept other scripts' digits and superscripts.
    if (
        not isinstance(raw_expires, str)
        or not (raw_expires.isascii() and raw_expires.isdigit())
        or len(raw_expires) > _MAX_EXPIRES_DIGITS
    ):
        raise UrlSignatureInvalid("malformed", "signed URL has no valid 'expires' parameter")
    signature = query.get(Q_SIG)
    if signature is None:
        raise UrlSignatureInvalid("malformed", "signed URL has no 'sig' parameter")
    filename = query.get(Q_DOWNLOAD)
    signed_ct = query.get(Q_CONTENT_TYPE)
    verify(
        method,
        key,
        int(raw_expires),
        signature,
        secret,
        filename=filename,
        content_type=signed_ct,
        now=now,
    )
    # Only after the signature holds: the signed content type is then known to be the signer's.
    if signed_ct is not None and normalize_content_type(content_type) != normalize_content_type(signed_ct):
        raise UrlSignatureInvalid(
            "content_type_mismatch",
            f"upload must be sent with Content-Type {signed_ct!r}, got {content_type!r}",
        )
