"""Metrics and logs (issue 11, point 5).

End to end: a job runs through the real stack (API under 2 gunicorn processes, a Celery worker with
the tiny model); the API's /metrics parses, adds up both processes exactly (multiprocess mode) and
counts the job; the worker's own exporter counts it as succeeded with its stage durations; the
worker's JSON log lines carry the job id and tenant. Plus the formatter and the Grafana dashboard.
"""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from layerq import metrics
from layerq.client import LayerqClient
from layerq.logs import JsonFormatter, bind_log_context, ContextFilter
from layerq.sample import sample_png
from layerq.stack import free_port

ROOT = Path(__file__).resolve().parents[1]
DASHBOARD = ROOT / "deploy" / "grafana" / "layerq-dashboard.json"


def samples(text: str) -> list[tuple[str, dict[str, str], float]]:
    return [(s.name, s.labels, s.value) for family in text_string_to_metric_families(text) for s in family.samples]


def value(text: str, name: str, **labels: str) -> float:
    return sum(v for n, lab, v in samples(text) if n == name and labels.items() <= lab.items())


def test_json_log_lines_carry_the_bound_job_and_tenant():
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.addFilter(ContextFilter())
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("layerq.test.json")
    logger.addHandler(handler)
    logger.propagate = False
    try:
        token = bind_log_context(job_id="j1", tenant="t9")
        logger.warning("hello %s", "there")
        token.reset()
        logger.warning("outside")
    finally:
        logger.removeHandler(handler)
    first, second = (json.loads(line) for line in stream.getvalue().splitlines())
    assert first["message"] == "hello there" and first["job_id"] == "j1" and first["tenant"] == "t9"
    assert first["level"] == "WARNING" and first["logger"] == "layerq.test.json"
    assert "job_id" not in second


def test_grafana_dashboard_queries_only_metrics_layerq_exports():
    dashboard = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in dashboard["panels"] for t in p.get("targets", [])]
    assert len(exprs) >= 6
    used = {m for e in exprs for m in re.findall(r"\blayerq_[a-z_]+", e)}
    suffixes = ("_total", "_bucket", "_sum", "_count")
    for name in used:
        base = next((name[: -len(s)] for s in suffixes if name.endswith(s) and name[: -len(s)] in metrics.FAMILIES), name)
        assert base in metrics.FAMILIES, f"the dashboard queries {name}, which layerq does not export"
    assert {"layerq_queue_depth", "layerq_jobs", "layerq_job_stage_duration_seconds"} <= {
        next((n[: -len(s)] for s in suffixes if n.endswith(s)), n) for n in used}


@pytest.mark.e2e
def test_metrics_count_a_job_across_two_api_processes_and_on_the_worker(make_stack):
    port = free_port()
    stack = make_stack(worker_metrics_port=port, log_format="json")
    assert stack.api_workers == 2
    client = LayerqClient(stack.url, timeout_s=30)
    job = client.submit(sample_png(96, 64), {"layers": 2, "num_inference_steps": 2, "prompt": "x"})
    final = client.wait(job["id"], timeout_s=300)
    assert final["status"] == "succeeded", final.get("error")

    livez = 20
    for _ in range(livez):
        requests.get(stack.url + "/livez", timeout=10).raise_for_status()
    for _ in range(4):  # whichever process answers adds up every process's counts
        resp = requests.get(stack.url + "/metrics", timeout=10)
        assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/plain")
        text = resp.text
        assert value(text, "layerq_jobs_submitted_total", kind="decompose", source="job") == 1
        assert value(text, "layerq_http_requests_total", method="GET", route="/livez", status="200") == livez
        assert value(text, "layerq_http_requests_total", method="POST", route="/v1/jobs", status="202") == 1
        assert any(n == "layerq_queue_depth" and lab == {"queue": "decompose", "priority": "interactive"}
                   for n, lab, _ in samples(text))
        assert value(text, "layerq_http_request_duration_seconds_count", route="/livez") == livez

    # The decompose worker's exporter (the CPU worker may hold the first port: it then takes the next).
    worker_text = None
    for candidate in range(port, port + 4):
        try:
            text = requests.get(f"http://127.0.0.1:{candidate}/metrics", timeout=5).text
        except requests.ConnectionError:
            continue
        if "layerq_model_load_seconds{" in text:
            worker_text = text
    assert worker_text, "no decompose worker exporter found"
    assert value(worker_text, "layerq_jobs_total", kind="decompose", status="succeeded") == 1
    assert value(worker_text, "layerq_jobs_total", kind="decompose", status="running") == 1
    assert value(worker_text, "layerq_job_stage_duration_seconds_count", stage="pipeline") == 1
    assert value(worker_text, "layerq_model_load_seconds") > 0

    lines = []
    for log in stack.run_dir.glob("worker-*.log"):
        for line in log.read_text(errors="replace").splitlines():
            try:
                lines.append(json.loads(line))
            except ValueError:
                pass  # Celery's start-up banner is not a log record
    about_job = [entry for entry in lines if isinstance(entry, dict) and entry.get("job_id") == job["id"]]
    assert about_job, "no JSON log line carries the job id"
    assert all(entry["tenant"] == "public" for entry in about_job)


@pytest.mark.e2e
def test_queue_depth_by_queue_and_priority_is_the_same_from_either_api_process(make_stack):
    # No worker: every job stays queued, so the depth is known exactly.
    stack = make_stack(workers=0)
    assert stack.api_workers == 2
    image = sample_png(64, 64)
    for _ in range(2):  # single jobs are interactive by default
        resp = requests.post(stack.url + "/v1/jobs", files={"image": ("a.png", image, "image/png")},
                             data={"params": json.dumps({"layers": 2}), "cache": "false"}, timeout=30)
        assert resp.status_code == 202, resp.text
    batch = {"defaults": {"layers": 2}, "items": [{"file": "f"}] * 3, "cache": False}  # a batch is bulk
    resp = requests.post(stack.url + "/v1/batches", files={"f": ("f.png", image, "image/png")},
                         data={"batch": json.dumps(batch)}, timeout=30)
    assert resp.status_code == 202, resp.text
    resp = requests.post(stack.url + "/v1/edits", files={"image": ("e.png", image, "image/png")},
                         data={"params": json.dumps({"prompt": "red"}), "priority": "bulk"}, timeout=30)
    assert resp.status_code == 202, resp.text
    for _ in range(4):  # both processes answer in turn; each reads the depth from Redis
        text = requests.get(stack.url + "/metrics", timeout=10).text
        depth = {(lab["queue"], lab["priority"]): v for n, lab, v in samples(text) if n == "layerq_queue_depth"}
        assert depth[("decompose", "interactive")] == 2 and depth[("decompose", "bulk")] == 3
        assert depth[("edit", "bulk")] == 1 and depth[("edit", "interactive")] == 0
        assert depth[("cpu", "interactive")] == 0 and depth[("cpu", "bulk")] == 0
