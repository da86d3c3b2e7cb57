"""Logs as text or as JSON lines (`LAYERQ_LOG_FORMAT`), carrying the job id and tenant in context.

`bind_log_context(job_id=..., tenant=...)` sets fields for the current thread or task (contextvars),
and every record logged until the returned token is reset carries them: a JSON line gets them as
keys, a text line as `[job=… tenant=…]`. The API binds them per request, workers per job.
"""

from __future__ import annotations

import contextvars
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any

_context: contextvars.ContextVar[dict[str, str]] = contextvars.ContextVar("layerq_log_context", default={})

TEXT_FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s%(layerq_context)s"


@dataclass
class ContextToken:
    token: contextvars.Token

    def reset(self) -> None:
        _context.reset(self.token)


def bind_log_context(**fields: Any) -> ContextToken:
    """Add `fields` (None values ignored) to the log context; `.reset()` restores the previous one."""
    merged = {**_context.get(), **{k: str(v) for k, v in fields.items() if v is not None}}
    return ContextToken(_context.set(merged))


def log_context() -> dict[str, str]:
    return dict(_context.get())


class ContextFilter(logging.Filter):
    """Puts the context on every record (as `record.layerq`) before a formatter sees it."""

    def filter(self, record: logging.LogRecord) -> bool:
        ctx = _context.get()
        record.layerq = ctx
        record.layerq_context = (" [" + " ".join(f"{k}={v}" for k, v in ctx.items()) + "]") if ctx else ""
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ts, level, logger, message, the context fields, and exc if any."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, timezone.utc).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            **getattr(record, "layerq", _context.get()),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def setup_logging(log_format: str = "text", level: int = logging.INFO) -> None:
    """Configure the root logger once per process: text (default) or `json`."""
    handler = logging.StreamHandler()
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter() if log_format == "json" else logging.Formatter(TEXT_FORMAT))
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
