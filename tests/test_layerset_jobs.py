"""Layer-set jobs end to end on the shared local stack (real API, Redis, GPU-queue worker with the tiny
model, CPU worker): a layer decomposed again (`layers: "auto"`), compose, combine, parents and
children, and bad requests refused with nothing enqueued. Two tiny-model jobs in all."""

from __future__ import annotations

import io
import json
import zipfile
from xml.etree import ElementTree

import numpy as np
import pytest
import redis
import requests
from PIL import Image
from psd_tools import PSDImage

from layerq.client import LayerqApiError, LayerqClient
from layerq.sample import sample_png
from storage.keys import Keys
from tests.layerset_helpers import premultiplied, reference_over, shape_layer
from worker.layersets.operations import compose

pytestmark = [pytest.mark.e2e, pytest.mark.timeout(900)]

FAST = {"num_inference_steps": 2, "prompt": "a poster with shapes"}


def fetch(url: str) -> bytes:
    resp = requests.get(url, timeout=30)
    assert resp.status_code == 200, (url, resp.status_code)
    return resp.content


def image(url: str) -> Image.Image:
    return Image.open(io.BytesIO(fetch(url))).convert("RGBA")


def px(img: Image.Image) -> np.ndarray:
    return np.asarray(img.convert("RGBA")).astype(np.int32)


@pytest.fixture(scope="module")
def client(local_stack) -> LayerqClient:
    return LayerqClient(local_stack.url, timeout_s=30)


@pytest.fixture(scope="module")
def jobs_in_redis(local_stack):
    r = redis.Redis.from_url(local_stack.settings.redis_url, decode_responses=True)
    prefix = local_stack.settings.key_prefix
    return lambda: sum(1 for key in r.scan_iter(f"{prefix}:job:*", count=1000) if key.count(":") == 2)


@pytest.fixture(scope="module")
def parent(client):
    """A 3-layer decomposition; while it is not finished, it cannot be a source (409)."""
    job = client.submit(sample_png(320, 320), {**FAST, "layers": 3, "seed": 4242}, cache=False)
    with pytest.raises(LayerqApiError) as early:
        client.compose(job["id"], [{"op": "hide", "index": 0}])
    assert (early.value.status, early.value.field) == (409, "source.job_id")
    final = client.wait(job["id"], timeout_s=600)
    assert final["status"] == "succeeded", final
    return final


def test_a_layer_decomposed_again_nests_in_the_exports(client, parent):
    child = client.decompose_layer(parent["id"], 1, {**FAST, "layers": "auto", "max_layers": 2, "seed": 3})
    assert child["kind"] == "decompose" and child["parent"] == {"job_id": parent["id"], "layer": 1}
    done = client.wait(child["id"], timeout_s=600)
    assert done["status"] == "succeeded", done
    manifest = json.loads(fetch(done["result"]["manifest"]))
    # "auto" records what it dropped; the tree's layers are the parent's with layer 1 replaced.
    subs = 2 - len(manifest["dropped"])
    assert all(set(d) == {"index", "coverage"} for d in manifest["dropped"])
    assert manifest["tree"] == {"parent": {"job_id": parent["id"], "layer": 1}, "group": "Layer 2", "sub_layers": subs}
    assert [layer["name"] for layer in manifest["layers"]] == \
        ["Layer 1", *[f"Layer 2.{i + 1}" for i in range(subs)], "Layer 3"]
    assert len(done["result"]["layers"]) == 2 + subs

    layers = [image(layer["url"]) for layer in done["result"]["layers"]]
    parent_layers = [image(layer["url"]) for layer in parent["result"]["layers"]]
    assert np.array_equal(px(layers[0]), px(parent_layers[0]))
    assert np.array_equal(px(layers[-1]), px(parent_layers[2]))
    composite = px(image(done["result"]["composite"]))
    # Pillow rounds after each of the four "over" steps: within 2 levels of the float reference.
    assert np.abs(premultiplied(reference_over([px(im) for im in layers])) - premultiplied(composite)).max() <= 2

    psd = PSDImage.open(io.BytesIO(fetch(done["result"]["exports"]["psd"])))
    assert [layer.name for layer in psd] == ["Layer 1", "Layer 2", "Layer 3"]
    assert psd[1].is_group() and [layer.name for layer in psd[1]] == [f"Layer 2.{i + 1}" for i in range(subs)]
    flattened = px(psd.composite())
    assert np.abs(premultiplied(flattened) - premultiplied(composite)).max() <= 2
    if "ora" in done["result"]["exports"]:
        ora = zipfile.ZipFile(io.BytesIO(fetch(done["result"]["exports"]["ora"])))
        root = ElementTree.fromstring(ora.read("stack.xml"))[0]
        assert [(el.tag, el.get("name")) for el in root] == \
            [("layer", "Layer 3"), ("stack", "Layer 2"), ("layer", "Layer 1")]

    # The parent lists the child; the child's own children list starts empty.
    assert child["id"] in client.get(parent["id"])["children"]
    assert client.get(child["id"])["children"] == []


def test_a_source_must_be_a_finished_layer_set_of_the_caller(client, parent, jobs_in_redis):
    before = jobs_in_redis()
    cases = [
        (lambda: client.decompose_layer("f" * 32, 0), 404, "source.job_id"),
        (lambda: client.decompose_layer(parent["id"], 3), 400, "source.layer"),
        (lambda: client.compose("f" * 32, []), 404, "source.job_id"),
    ]
    for call, status, field in cases:
        with pytest.raises(LayerqApiError) as err:
            call()
        assert (err.value.status, err.value.field) == (status, field)
    other = LayerqClient(client.base_url)
    other.http.headers["Authorization"] = "Bearer someone-else"
    with pytest.raises(LayerqApiError) as err:
        other.compose(parent["id"], [])
    assert (err.value.status, err.value.field) == (404, "source.job_id")
    assert jobs_in_redis() == before


@pytest.mark.parametrize("ops,field", [
    ([{"op": "blur", "index": 0}], "params.ops.0.op"),
    ([{"op": "hide", "index": 0}, {"op": "hide", "index": 3}], "params.ops.1.index"),
    ([{"op": "scale", "index": 0, "factor": 0}], "params.ops.0.factor"),
    ([{"op": "move", "index": 2, "dx": 10_000}], "params.ops.0.dx"),
    ([{"op": "delete", "index": 1}, {"op": "opacity", "index": 1, "value": 0.5}], "params.ops.1.index"),
])
def test_bad_operations_are_refused_naming_the_field(client, parent, jobs_in_redis, ops, field):
    before = jobs_in_redis()
    with pytest.raises(LayerqApiError) as err:
        client.compose(parent["id"], ops)
    assert (err.value.status, err.value.field) == (400, field), err.value
    assert jobs_in_redis() == before


def test_compose_applies_the_operations_to_a_new_layer_set(client, parent):
    ops = [{"op": "move", "index": 0, "dx": 17, "dy": -5}, {"op": "hide", "index": 1},
           {"op": "recolour", "index": 2, "hue_shift": 90}, {"op": "reorder", "index": 2, "position": 0}]
    job = client.compose(parent["id"], ops)
    assert (job["kind"], job["parent"]) == ("compose", {"job_id": parent["id"], "layer": None})
    done = client.wait(job["id"], timeout_s=300)
    assert done["status"] == "succeeded", done
    parent_layers = [image(layer["url"]) for layer in parent["result"]["layers"]]
    from layerq.layer_ops import parse_ops
    from worker.layersets.placed import flatten

    canvas, expected = compose(parent_layers, parse_ops(ops))
    got = [px(image(layer["url"])) for layer in done["result"]["layers"]]
    assert len(got) == 2  # the hidden layer is left out
    assert np.abs(px(flatten(expected, canvas)) - px(image(done["result"]["composite"]))).max() <= 1
    manifest = json.loads(fetch(done["result"]["manifest"]))
    assert manifest["parent"] == {"job_id": parent["id"], "layer": None} and manifest["ops"][0]["dx"] == 17
    assert manifest["sources"] == [2, 0]
    assert job["id"] in client.get(parent["id"])["children"]
    assert set(done["result"]["exports"]) >= {"psd", "pptx", "zip"}


def test_combine_stacks_uploaded_layers_bottom_first(client):
    size = (96, 64)
    red = shape_layer(size, (0, 0, 60, 40), (220, 30, 30, 255))
    blue = shape_layer((40, 40), (0, 0, 39, 39), (30, 30, 220, 200), kind="ellipse")
    green = shape_layer((30, 30), (5, 5, 25, 25), (30, 200, 30, 128))
    pngs = []
    for layer in (red, blue, green):
        buf = io.BytesIO()
        layer.save(buf, format="PNG")
        pngs.append(buf.getvalue())
    job = client.combine(pngs, {"placements": [{"x": 0, "y": 0}, {"x": 30, "y": 10}, {"x": 50, "y": 30}]})
    assert (job["kind"], job["parent"]) == ("combine", None)
    done = client.wait(job["id"], timeout_s=300)
    assert done["status"] == "succeeded", done
    placed = []
    for layer, (x, y) in zip((red, blue, green), ((0, 0), (30, 10), (50, 30))):
        canvas = Image.new("RGBA", size, (0, 0, 0, 0))
        canvas.paste(layer, (x, y))
        placed.append(px(canvas))
    composite = px(image(done["result"]["composite"]))
    assert composite.shape[:2] == (64, 96)  # (0, 0) to the furthest edge
    assert np.abs(premultiplied(reference_over(placed)) - premultiplied(composite)).max() <= 1
    psd = PSDImage.open(io.BytesIO(fetch(done["result"]["exports"]["psd"])))
    assert [layer.name for layer in psd] == ["Layer 1", "Layer 2", "Layer 3"]
    with pytest.raises(LayerqApiError) as err:
        client.combine(pngs[:1], {"placements": [{"x": 0}, {"x": 1}]})
    assert (err.value.status, err.value.field) == (400, "params.placements.1")


def test_combine_takes_uploaded_inputs_by_key(client):
    keys = []
    for colour in ((200, 0, 0, 255), (0, 0, 200, 128)):
        buf = io.BytesIO()
        shape_layer((48, 48), (8, 8, 40, 40), colour).save(buf, format="PNG")
        ticket = requests.post(f"{client.base_url}/v1/uploads", json={"filename": "layer.png"}, timeout=30).json()
        put = requests.request(ticket["method"], ticket["url"], data=buf.getvalue(), headers=ticket["headers"],
                               timeout=30)
        assert put.status_code in (200, 204), put.text
        keys.append(ticket["input_key"])
    job = client._post("/v1/layersets/combine", {"input_keys": keys, "params": {"canvas": {"width": 64, "height": 48}}})
    done = client.wait(job["id"], timeout_s=300)
    assert done["status"] == "succeeded", done
    assert [(layer["width"], layer["height"]) for layer in done["result"]["layers"]] == [(64, 48), (64, 48)]
    other = LayerqClient(client.base_url)
    other.http.headers["Authorization"] = "Bearer someone-else"
    with pytest.raises(LayerqApiError) as err:
        other._post("/v1/layersets/combine", {"input_keys": keys})
    assert (err.value.status, err.value.field) == (404, "input_keys.0")


def test_compose_and_decompose_again_carry_retain_s_and_stream_their_events(local_stack, client, parent):
    # compose: on the cpu queue, sent at once (no priority, no deadline), retained as asked.
    resp = requests.post(f"{local_stack.url}/v1/layersets/compose", timeout=30, json={
        "source": {"job_id": parent["id"]}, "params": {"ops": [{"op": "hide", "index": 0}]}, "retain_s": 7200})
    assert resp.status_code == 202, resp.text
    assert resp.json()["priority"] is None and resp.json()["deadline_at"] is None
    events = list(client.events(f"/v1/jobs/{resp.json()['id']}/events"))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded", events[-1]
    done = events[-1][1]
    held = ((np.datetime64(done["retained_until"][:-1]) - np.datetime64(done["finished_at"][:-1]))
            / np.timedelta64(1, "s"))
    assert abs(held - 7200) < 1
    # Not a field of compose: refused naming it, nothing enqueued.
    bad = requests.post(f"{local_stack.url}/v1/layersets/compose", timeout=30, json={
        "source": {"job_id": parent["id"]}, "params": {"ops": [{"op": "hide", "index": 0}]}, "priority": "bulk"})
    assert bad.status_code == 400 and bad.json()["error"]["field"] == "priority"
    # A layer decomposed again is a decompose job: admitted like one, with a priority and a deadline.
    resp = requests.post(f"{local_stack.url}/v1/layersets/decompose", timeout=30, json={
        "source": {"job_id": parent["id"], "layer": 1}, "params": {**FAST, "layers": 2},
        "priority": "bulk", "cancel_after_s": 3600, "retain_s": 60})
    assert resp.status_code == 202, resp.text
    job = resp.json()
    assert job["priority"] == "bulk" and job["deadline_at"] is not None
    events = list(client.events(f"/v1/jobs/{job['id']}/events"))
    assert events[-1][0] == "done" and events[-1][1]["status"] == "succeeded", events[-1]
def test_a_set_made_from_a_cached_job_is_a_reader_of_the_job_owning_its_objects(local_stack, client):
    # A cached job owns no objects: a compose made from it reads its source's, so the source lists it
    # among its readers (the reaper holds the source back for it), while its lineage names the cached job.
    params = {**FAST, "layers": 2, "seed": 777}
    image_bytes = sample_png(160, 160)
    source = client.wait(client.submit(image_bytes, params)["id"], timeout_s=600)
    assert source["status"] == "succeeded", source
    cached = client.submit(image_bytes, params)
    assert cached["cached_from"] == source["id"]
    job = client.compose(cached["id"], [{"op": "hide", "index": 0}])
    assert job["parent"] == {"job_id": cached["id"], "layer": None}
    r = redis.Redis.from_url(local_stack.settings.redis_url, decode_responses=True)
    assert r.lrange(Keys(local_stack.settings.key_prefix).readers(source["id"]), 0, -1) == [job["id"]]
    assert client.wait(job["id"], timeout_s=300)["status"] == "succeeded"


def test_compose_and_combine_jobs_the_api_never_sent_are_sent_by_a_worker(local_stack, client, parent):
    """As if the API died between writing the records and sending the messages: the workers' sweep of
    unsent jobs sends compose and combine jobs too (from the message kept in their record), and a
    record no message can be made of ends `failed`, not queued forever."""
    from layerq.layer_ops import ComposeParams
    from layerq.layersets import ComposeMessage
    from layerq.results import with_object_keys
    from storage.jobs import JobStore, NewJob, new_job_id

    settings = local_stack.settings
    jobs = JobStore.from_url(settings.redis_url, key_prefix=settings.key_prefix)
    keys = [ref["key"] for ref in with_object_keys(jobs.get(parent["id"])["result"], parent["id"])["layers"]]
    params = ComposeParams.from_request({"ops": [{"op": "hide", "index": 0}]})
    good, bad = new_job_id(), new_job_id()
    message = ComposeMessage(job_id=good, parent_id=parent["id"], layer_keys=keys, params=params)
    jobs.create_many([
        NewJob(good, params.model_dump(mode="json"), "", kind="compose", queue="cpu",
               message=message.model_dump(mode="json")),
        NewJob(bad, params.model_dump(mode="json"), "", kind="compose", queue="cpu"),  # no message kept
    ])  # recorded, never sent; backdated past the grace period instead of waiting a minute
    redis.Redis.from_url(settings.redis_url).zadd(Keys(settings.key_prefix).unsent("cpu"), {good: 1.0, bad: 1.0})

    done = client.wait(good, timeout_s=120)
    assert done["status"] == "succeeded", done
    assert len(done["result"]["layers"]) == len(keys) - 1
    failed = client.wait(bad, timeout_s=60)
    assert (failed["status"], failed["error"]["code"]) == ("failed", "enqueue_failed"), failed
    assert jobs.unsent_since(0, "cpu") == [] and jobs.queued_count("cpu") == 0
