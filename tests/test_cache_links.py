"""A job answered from the result cache hands out links that work (issue 8, bug 1).

The cached job was never run: every object it points at belongs to the job that answered it. Each
URL of its result, from the API and from its `completed` webhook, must download (local disk and S3)."""

from __future__ import annotations

import json
import secrets
import urllib.parse

import pytest
import requests

from layerq.client import LayerqClient
from layerq.sample import sample_png
from tests.helpers import wait_for
from tests.test_webhooks_e2e import Receiver

pytestmark = pytest.mark.e2e

QUICK = {"layers": 2, "num_inference_steps": 2, "prompt": "cached links"}


@pytest.fixture(scope="module", params=["local", "s3"])
def stack(request):
    return request.getfixturevalue(f"{request.param}_stack")


@pytest.fixture(scope="module")
def receiver():
    r = Receiver()
    yield r
    r.server.shutdown()


def result_urls(result: dict) -> dict[str, str]:
    urls = {f"layer {layer['index']}": layer["url"] for layer in result["layers"]}
    urls.update({"composite": result["composite"], "manifest": result["manifest"]})
    urls.update({f"export {fmt}": url for fmt, url in result["exports"].items()})
    return urls


def assert_all_download(stack, urls: dict[str, str]) -> None:
    dead = {}
    for what, url in urls.items():
        resp = requests.get(urllib.parse.urljoin(stack.url, url), timeout=30)
        if resp.status_code != 200 or not resp.content:
            dead[what] = (resp.status_code, url)
    assert dead == {}


def post(stack, params: dict, image: bytes, webhook: dict | None = None) -> requests.Response:
    data = {"params": json.dumps(params)}
    if webhook:
        data["webhook"] = json.dumps(webhook)
    return requests.post(stack.url + "/v1/jobs", files={"image": ("a.png", image, "image/png")}, data=data,
                         timeout=30)


def test_every_url_of_a_cached_job_downloads(stack, receiver):
    client = LayerqClient(stack.url)
    params = {**QUICK, "seed": secrets.randbelow(2**31)}  # no earlier test's job answers this one
    image = sample_png(160, 120)
    first = post(stack, params, image)
    assert first.status_code == 202, first.text
    source = client.wait(first.json()["id"], timeout_s=120)
    assert source["status"] == "succeeded", source.get("error")

    path = f"/cached-{secrets.token_hex(4)}"
    again = post(stack, params, image, webhook={"url": receiver.url + path, "events": ["completed"]})
    assert again.status_code == 200, again.text
    cached = again.json()
    assert cached["cached_from"] == source["id"] and cached["id"] != source["id"]
    assert set(cached["result"]["exports"]) == set(source["result"]["exports"])
    assert_all_download(stack, result_urls(cached["result"]))
    assert_all_download(stack, result_urls(client.get(cached["id"])["result"]))  # signed afresh on a read

    # The client asked to be told when the job completes: a cached job completes at once.
    (event,) = wait_for(lambda: receiver.events(path), 60, what="completed webhook of the cached job")
    payload = json.loads(event["body"])
    assert payload["type"] == "job.completed" and payload["data"]["job"]["id"] == cached["id"]
    assert_all_download(stack, result_urls(payload["data"]["job"]["result"]))
