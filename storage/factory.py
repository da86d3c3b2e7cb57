"""Build the configured object store from Settings (the one place that maps settings to a backend)."""

from __future__ import annotations

from layerq.config import Settings

from .base import ObjectStore

BACKENDS = ("local", "s3")


def open_object_store(settings: Settings) -> ObjectStore:
    """The object store `settings.storage` names: `local` (LocalDiskStore under `storage_path`) or
    `s3` (S3Store). Raises `ValueError` naming the variable to fix for an unknown backend or a
    local store without a signing secret. Imports boto3 only for `s3`."""
    backend = (settings.storage or "").strip().lower()
    if backend == "local":
        if not settings.signing_secret:
            raise ValueError(
                "LAYERQ_SIGNING_SECRET is empty: the local-disk storage backend signs download URLs "
                "with it; set the same random secret for every API process (layerq up generates one)"
            )
        from .local import LocalDiskStore

        return LocalDiskStore(settings.storage_path, settings.signing_secret, settings.public_url,
                              min_free_bytes=settings.storage_min_free_bytes)
    if backend == "s3":
        # Imported lazily so processes on the local backend never pay for importing boto3.
        from .s3 import S3Store

        return S3Store(
            bucket=settings.s3_bucket,
            endpoint_url=settings.s3_endpoint_url or None,
            public_endpoint_url=settings.s3_public_endpoint_url or None,
            region=settings.s3_region,
            access_key_id=settings.s3_access_key_id or None,
            secret_access_key=settings.s3_secret_access_key or None,
            max_attempts=settings.s3_max_attempts,
            create_bucket=settings.s3_create_bucket,
        )
    raise ValueError(f"LAYERQ_STORAGE must be one of {', '.join(BACKENDS)}; got {settings.storage!r}")
