"""One rooted error hierarchy. Each error knows its stable `code`; HTTP statuses are mapped only at
the API's edge (`api/errors.py`)."""

from __future__ import annotations


class LayerqError(Exception):
    """Base of every error layerq raises on purpose."""

    code = "internal"

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class ValidationFailed(LayerqError):
    """Raised when a request or a job message carries a missing, unknown or out-of-range field."""

    code = "invalid_request"


class InvalidImage(ValidationFailed):
    """Raised when an input is not a decodable image of a supported format and size."""

    code = "invalid_image"


class ExceedsGpuMemory(ValidationFailed):
    """Raised when a decompose job needs more GPU memory than any worker memory class of the fleet
    (at submission) or than the worker holding it (layerq/memory_classes.py)."""

    code = "exceeds_gpu_memory"


class PayloadTooLarge(ValidationFailed):
    """Raised when a request body exceeds `max_upload_bytes`."""

    code = "payload_too_large"


class JobNotFound(LayerqError):
    """Raised when a job id is unknown (or its record has expired)."""

    code = "not_found"


class IllegalTransition(LayerqError):
    """Raised when a job status change is not allowed from the job's current status."""

    code = "illegal_transition"


class ObjectNotFound(LayerqError):
    """Raised when an object key does not exist in the object store."""

    code = "object_not_found"


class SignatureInvalid(LayerqError):
    """Raised when a signed URL's signature, expiry or key does not verify."""

    code = "forbidden"


class StorageFull(LayerqError):
    """Raised when the object store refuses a write for lack of space or quota (ENOSPC, EDQUOT, S3 507)."""

    code = "storage_full"


class PipelineFailed(LayerqError):
    """Raised when the model pipeline raised while running a job."""

    code = "pipeline_error"


class JobCanceled(LayerqError):
    """Raised inside a running job when its cancellation was requested."""

    code = "canceled"


class JobTimedOut(LayerqError):
    """Raised inside a running job that passed its soft time limit."""

    code = "time_limit"


class QueueUnavailable(LayerqError):
    """Raised when a job could not be handed to the broker."""

    code = "queue_unavailable"


class IdempotencyConflict(LayerqError):
    """Raised when an Idempotency-Key is reused with another request, or while its first use runs."""

    code = "idempotency_conflict"


class TransientError(LayerqError):
    """Raised when a fault outside the job (storage or Redis unreachable) may pass: the worker
    retries the job later instead of failing it."""

    code = "unavailable"


class NotReplicated(TransientError):
    """Raised when new jobs did not reach `redis_wait_replicas` replicas in time: they were canceled
    and the submission is refused (a failover could have lost them)."""

    code = "not_replicated"


class StorageUnavailable(TransientError):
    """Raised by an object store that cannot be reached or answers with a server error after its
    own retries (the backends translate their libraries' exceptions into this)."""

    code = "storage_unavailable"
