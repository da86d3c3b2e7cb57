"""How the API's error boundary logs: an expected 5xx answer (the store is out, a write is not yet
replicated, the disk is full) is one warning line without a traceback; only an unexpected exception
(a 500) logs its traceback. A unit test of api/errors.py on a bare Flask app: no route, store or
worker of layerq is involved, only the handlers the real app registers."""

from __future__ import annotations

import logging

import pytest
from flask import Flask

from api import errors
from layerq import errors as e


def _app(exc: Exception) -> Flask:
    app = Flask(__name__)
    errors.register(app)

    @app.route("/boom")
    def boom():
        raise exc

    return app


@pytest.mark.parametrize(
    ("exc", "status"),
    [
        (e.NotReplicated("write not acknowledged by a replica"), 503),
        (e.StorageUnavailable("s3 unreachable"), 503),
        (e.TransientError("disk EIO"), 503),
        (e.QueueUnavailable("broker down"), 503),
        (e.StorageFull("no space left"), 507),
    ],
)
def test_expected_unavailable_answer_logs_one_warning_without_traceback(caplog, exc, status):
    caplog.set_level(logging.DEBUG, logger="api.errors")
    resp = _app(exc).test_client().get("/boom")
    assert resp.status_code == status
    assert resp.get_json()["error"]["code"] == exc.code
    records = [r for r in caplog.records if r.name == "api.errors"]
    assert len(records) == 1, [r.getMessage() for r in records]
    rec = records[0]
    assert rec.levelno == logging.WARNING
    assert rec.exc_info is None and "Traceback" not in caplog.text
    line = rec.getMessage()
    assert exc.code in line and exc.message in line and "/boom" in line


def test_unexpected_exception_keeps_its_traceback(caplog):
    caplog.set_level(logging.DEBUG, logger="api.errors")
    resp = _app(RuntimeError("a bug")).test_client().get("/boom")
    assert resp.status_code == 500 and resp.get_json()["error"]["code"] == "internal"
    records = [r for r in caplog.records if r.name == "api.errors"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR and records[0].exc_info


def test_layerq_error_without_a_known_status_is_an_unexpected_500(caplog):
    caplog.set_level(logging.DEBUG, logger="api.errors")
    resp = _app(e.PipelineFailed("should never reach the API")).test_client().get("/boom")
    assert resp.status_code == 500
    records = [r for r in caplog.records if r.name == "api.errors"]
    assert len(records) == 1 and records[0].levelno == logging.ERROR and records[0].exc_info
