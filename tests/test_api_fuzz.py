"""The OpenAPI document is the API's contract, checked by a property-based fuzzer (issue 15).

schemathesis reads the running API's own /openapi.json, so every route joins the run as soon as
it is documented (and test_api_validation checks that every route Flask serves is documented).
Every operation, every check, every phase (examples, coverage, fuzzing, stateful), a bounded
number of examples and a fixed seed: deterministic, a couple of minutes on two cores. The longer
run is bench/fuzz_api.py."""

from __future__ import annotations

import pytest

from tests.fuzzing import drain, ensure_measured, run_schemathesis

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

EXAMPLES = 25
SEED = 15


def test_api_keeps_its_contract_under_the_fuzzer(local_stack, tmp_path):
    ensure_measured(local_stack.url)
    try:
        result = run_schemathesis(local_stack.url, max_examples=EXAMPLES, seed=SEED, report_dir=tmp_path,
                                  timeout_s=840)
    finally:
        drain(local_stack)  # the stack is shared: later tests must not queue behind fuzzed jobs
    report = result.report
    assert report.get("operations", {}).get("tested") == report.get("operations", {}).get("total"), report
    assert set(report.get("phases", {})) >= {"coverage", "fuzzing", "stateful"}
    assert report["phases"]["stateful"]["status"] != "skip", report["phases"]
    assert result.ok, result.output[-12000:]


def test_every_operation_states_the_shared_parts_of_the_contract():
    """What new routes must follow so that the fuzzer's run stays green (no stack needed)."""
    from api.ids import ID_PATTERN
    from api.openapi import build_document

    doc = build_document()
    for path, operations in doc["paths"].items():
        for method, op in operations.items():
            where = f"{method.upper()} {path}"
            assert op.get("operationId"), where
            assert "414" in op["responses"], where
            if method in ("post", "put", "patch"):
                assert {"400", "413"} <= set(op["responses"]), where
            for param in op.get("parameters", []):
                if param["in"] == "path" and param["name"] == "id":
                    assert param["schema"].get("pattern") == ID_PATTERN, where
            if path.startswith("/v1/"):
                assert "503" in op["responses"] or op["operationId"] == "createUpload", where
                for status, response in op["responses"].items():
                    if status.startswith(("4", "5")):
                        assert response["content"]["application/json"]["schema"] == {
                            "$ref": "#/components/schemas/ErrorResponse"}, where
