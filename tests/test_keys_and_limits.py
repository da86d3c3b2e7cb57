"""API keys and rate limits (issue 11.7), through a real stack with LAYERQ_AUTH=keys: keys issued and
revoked with the real `layerq keys` command, 401s with WWW-Authenticate, tenants from the keys,
429 with Retry-After per caller and route, and the event-stream bounds (11.8) of that stack."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading

import pytest
import requests

from layerq.sample import sample_png

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(600)]


@pytest.fixture(scope="module")
def keys_stack(make_stack):
    # No GPU worker: jobs stay queued, which is what the stream-bound checks need.
    return make_stack(workers=0, auth="keys", rate_limit_submit="2/minute", rate_limit_read="1000/minute",
                      events_max_s=8.0, events_heartbeat_s=0.5, events_max_streams=1)


def layerq_keys(stack, *args: str) -> subprocess.CompletedProcess:
    # What an operator has at hand: the Redis URL and the key prefix, nothing about storage.
    env = {**os.environ, "LAYERQ_REDIS_URL": stack.settings.redis_url, "LAYERQ_KEY_PREFIX": stack.settings.key_prefix}
    return subprocess.run([sys.executable, "-m", "layerq.cli", "keys", *args], env=env, capture_output=True,
                          text=True, timeout=120)


def new_key(stack, tenant: str) -> dict:
    done = layerq_keys(stack, "create", "--tenant", tenant, "--json")
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


def submit(stack, key: str) -> requests.Response:
    return requests.post(f"{stack.url}/v1/jobs", headers=bearer(key), timeout=30,
                         files={"image": ("a.png", sample_png(64, 64), "image/png")},
                         data={"params": json.dumps({"layers": 2, "num_inference_steps": 2})})


def test_without_a_valid_key_every_v1_route_is_401_and_probes_stay_open(keys_stack):
    url = keys_stack.url
    none = requests.get(f"{url}/v1/jobs/{'a' * 32}", timeout=10)
    assert none.status_code == 401 and none.json()["error"]["code"] == "unauthorized"
    assert none.headers["WWW-Authenticate"] == 'Bearer realm="layerq"'
    made_up = requests.post(f"{url}/v1/jobs", headers=bearer("lq_0123456789ab_" + "x" * 43), timeout=10)
    assert made_up.status_code == 401
    assert 'error="invalid_token"' in made_up.headers["WWW-Authenticate"]
    assert requests.get(f"{url}/v1/jobs/{'a' * 32}", headers=bearer("any-token"), timeout=10).status_code == 401
    for open_path in ("/livez", "/healthz", "/openapi.json"):
        assert requests.get(url + open_path, timeout=10).status_code == 200, open_path


def test_a_key_is_its_tenant_and_revoking_it_takes_effect_at_once(keys_stack):
    acme, other = new_key(keys_stack, "acme"), new_key(keys_stack, "globex")
    resp = submit(keys_stack, acme["key"])
    assert resp.status_code == 202, resp.text
    job_url = f"{keys_stack.url}/v1/jobs/{resp.json()['id']}"
    assert requests.get(job_url, headers=bearer(acme["key"]), timeout=10).status_code == 200
    assert requests.get(job_url, headers=bearer(other["key"]), timeout=10).status_code == 404  # another tenant

    revoked = layerq_keys(keys_stack, "revoke", acme["key_id"])
    assert revoked.returncode == 0, revoked.stderr
    after = requests.get(job_url, headers=bearer(acme["key"]), timeout=10)
    assert after.status_code == 401 and 'error="invalid_token"' in after.headers["WWW-Authenticate"]
    listed = {k["key_id"]: k for k in json.loads(layerq_keys(keys_stack, "list", "--json").stdout)}
    assert listed[acme["key_id"]]["revoked_at"] and listed[other["key_id"]]["revoked_at"] is None
    assert "key" not in listed[acme["key_id"]] and "sha256" not in listed[acme["key_id"]]
    assert layerq_keys(keys_stack, "revoke", "000000000000").returncode == 1


def test_submissions_are_limited_per_key_and_route_with_retry_after(keys_stack):
    first, second = new_key(keys_stack, "limited"), new_key(keys_stack, "limited")
    url = keys_stack.url
    bad = {"params": "{}"}  # no image: a 400, which counts towards the limit like any request
    codes = [requests.post(f"{url}/v1/jobs", headers=bearer(first["key"]), data=bad, timeout=10).status_code
             for _ in range(2)]
    assert codes == [400, 400]
    limited = requests.post(f"{url}/v1/jobs", headers=bearer(first["key"]), data=bad, timeout=10)
    assert limited.status_code == 429, limited.text
    assert limited.json()["error"]["code"] == "rate_limited"
    assert 1 <= int(limited.headers["Retry-After"]) <= 61  # the window (60 s), rounded up
    # Another route of the same key, and the same route of another key, are counted apart.
    assert requests.get(f"{url}/v1/jobs/{'a' * 32}", headers=bearer(first["key"]), timeout=10).status_code == 404
    assert requests.post(f"{url}/v1/jobs", headers=bearer(second["key"]), data=bad, timeout=10).status_code == 400


def test_every_route_that_creates_jobs_needs_a_key_and_is_limited(keys_stack):
    key = new_key(keys_stack, "makers")["key"]
    for path in ("/v1/edits", "/v1/layersets/decompose", "/v1/layersets/compose", "/v1/layersets/combine"):
        url = keys_stack.url + path
        assert requests.post(url, json={}, timeout=10).status_code == 401, path
        # An empty body is a 400, which counts like any request: the third within the minute is refused.
        codes = [requests.post(url, headers=bearer(key), json={}, timeout=10).status_code for _ in range(3)]
        assert codes == [400, 400, 429], (path, codes)


def test_event_streams_are_bounded_in_length_and_number(keys_stack):
    key = new_key(keys_stack, "streams")["key"]
    job_id = submit(keys_stack, key).json()["id"]
    url = f"{keys_stack.url}/v1/jobs/{job_id}/events"
    opened = threading.Event()
    events: list[str] = []

    def follow() -> None:
        with requests.get(url, headers=bearer(key), stream=True, timeout=30) as resp:
            assert resp.status_code == 200 and resp.headers["Content-Type"].startswith("text/event-stream")
            opened.set()
            events.extend(line for line in resp.iter_lines(decode_unicode=True) if line)

    reader = threading.Thread(target=follow)
    reader.start()
    assert opened.wait(30)
    # One stream per process in this stack (events_max_streams=1; the stack runs 2 API processes):
    # while it is open, some second stream is refused with 503 and Retry-After.
    answers = [requests.get(url, headers=bearer(key), stream=True, timeout=30) for _ in range(2)]
    refused = [(r.headers.get("Retry-After"), r.json()["error"]["code"]) for r in answers if r.status_code == 503]
    for r in answers:
        r.close()
    reader.join(60)
    assert refused and refused[0] == ("5", "too_many_streams")
    # The queued job never ends here: the stream reported it, kept alive, then closed at its length limit.
    assert "event: progress" in events and events[-2] == "event: timeout", events
    first = json.loads(events[events.index("event: progress") + 1][len("data: "):])
    assert first["status"] == "queued" and first["queue_position"] is not None
    assert ": keep-alive" in events
