"""End to end through real processes: the API under gunicorn on loopback, a Celery worker process
running the real QwenImageLayeredPipeline (tiny model), a real Redis, and storage either on local
disk (URLs signed and served by the API) or S3 spoken over HTTP (moto's server)."""

from __future__ import annotations

import io
import json
import time
import zipfile
from urllib.parse import parse_qs, urlencode, urlsplit

import numpy as np
import pytest
import requests
from PIL import Image
from pptx import Presentation
from psd_tools import PSDImage

from layerq.client import LayerqClient
from layerq.sample import sample_png

pytestmark = pytest.mark.e2e

FAST = {"num_inference_steps": 3, "prompt": "a poster with shapes"}


@pytest.fixture(scope="module", params=["local", "s3"])
def stack(request):
    return request.getfixturevalue(f"{request.param}_stack")


@pytest.fixture(scope="module")
def client(stack) -> LayerqClient:
    return LayerqClient(stack.url, timeout_s=30)


@pytest.fixture(scope="module")
def finished(client):
    """One job of 3 layers on a non-square image, run to the end; shared by the checks below."""
    job = client.submit(sample_png(600, 400), {**FAST, "layers": 3, "seed": 7})
    return client.wait(job["id"], timeout_s=300)


def fetch(url: str) -> bytes:
    resp = requests.get(url, timeout=30)
    assert resp.status_code == 200, (url, resp.status_code, resp.text[:200])
    return resp.content


def rgba(data: bytes) -> Image.Image:
    img = Image.open(io.BytesIO(data))
    assert img.format == "PNG" and img.mode == "RGBA"
    return img


def test_job_succeeds_with_layers_of_requested_count_and_size(finished):
    assert finished["status"] == "succeeded", finished.get("error")
    result = finished["result"]
    assert [layer["index"] for layer in result["layers"]] == [0, 1, 2]
    layers = [rgba(fetch(layer["url"])) for layer in result["layers"]]
    # The pipeline keeps the aspect ratio within the 640 bucket; sizes reported = sizes downloaded.
    for layer, img in zip(result["layers"], layers):
        assert img.size == (layer["width"], layer["height"])
    w, h = layers[0].size
    assert all(img.size == (w, h) for img in layers)
    assert w > h and abs(w / h - 1.5) < 0.1 and w * h <= 640 * 640 * 1.1


def test_composite_is_alpha_composite_of_downloaded_layers(finished):
    layers = [rgba(fetch(layer["url"])) for layer in finished["result"]["layers"]]
    expected = Image.new("RGBA", layers[0].size, (0, 0, 0, 0))
    for layer in layers:
        expected = Image.alpha_composite(expected, layer)
    composite = rgba(fetch(finished["result"]["composite"]))
    assert np.array_equal(np.asarray(composite), np.asarray(expected))


def test_psd_has_the_layers_in_order(finished):
    layers = [rgba(fetch(layer["url"])) for layer in finished["result"]["layers"]]
    psd = PSDImage.open(io.BytesIO(fetch(finished["result"]["exports"]["psd"])))
    assert psd.size == layers[0].size
    assert [layer.name for layer in psd] == ["Layer 1", "Layer 2", "Layer 3"]  # bottom → top
    for psd_layer, layer in zip(psd, layers):
        assert np.array_equal(np.asarray(psd_layer.topil().convert("RGBA")), np.asarray(layer))


def test_pptx_has_one_picture_per_layer(finished):
    layers = [rgba(fetch(layer["url"])) for layer in finished["result"]["layers"]]
    deck = Presentation(io.BytesIO(fetch(finished["result"]["exports"]["pptx"])))
    (slide,) = deck.slides
    pictures = [shape for shape in slide.shapes if shape.shape_type == 13]  # MSO_SHAPE_TYPE.PICTURE
    assert len(pictures) == len(layers)
    for pic, layer in zip(pictures, layers):
        assert np.array_equal(np.asarray(Image.open(io.BytesIO(pic.image.blob)).convert("RGBA")), np.asarray(layer))


def test_zip_holds_pngs_and_manifest(finished):
    archive = zipfile.ZipFile(io.BytesIO(fetch(finished["result"]["exports"]["zip"])))
    names = archive.namelist()
    pngs = sorted(n for n in names if n.endswith(".png"))
    assert len(pngs) == 3 and "manifest.json" in names
    manifest = json.loads(archive.read("manifest.json"))
    assert manifest["job_id"] == finished["id"] and len(manifest["layers"]) == 3
    for name, layer in zip(pngs, finished["result"]["layers"]):
        assert archive.read(name) == fetch(layer["url"])
    assert json.loads(fetch(finished["result"]["manifest"]))["job_id"] == finished["id"]


def test_progress_reaches_total_and_params_are_recorded(finished):
    assert finished["progress"]["step"] == finished["progress"]["total"] == FAST["num_inference_steps"]
    params = finished["params"]
    assert params["seed"] == 7 and params["layers"] == 3 and params["true_cfg_scale"] == 4.0
    assert finished["attempts"] == 1
    assert finished["timings"]["pipeline"] > 0 and finished["timings"]["total"] >= finished["timings"]["pipeline"]
    assert finished["created_at"] <= finished["started_at"] <= finished["finished_at"]


def test_seed_is_chosen_and_recorded_when_absent(client):
    job = client.submit(sample_png(320, 320), {**FAST, "layers": 2})
    assert isinstance(job["params"]["seed"], int)
    assert job["status"] == "queued" and job["queue_position"] is not None
    final = client.wait(job["id"], timeout_s=300)
    assert final["status"] == "succeeded" and final["params"]["seed"] == job["params"]["seed"]


def test_urls_are_signed_afresh_on_each_read(client, finished):
    again = client.get(finished["id"])
    assert again["result"]["expires_at"] >= finished["result"]["expires_at"]
    assert fetch(again["result"]["layers"][0]["url"]) == fetch(finished["result"]["layers"][0]["url"])


def test_local_urls_reject_tampering_expiry_and_other_keys(stack, finished):
    if stack.settings.storage != "local":
        pytest.skip("moto does not verify presigned URLs; the local backend's own checks are tested here")
    url = finished["result"]["layers"][0]["url"]
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()}
    base = f"{parts.scheme}://{parts.netloc}"

    tampered = {**query, "sig": ("0" if query["sig"][0] != "0" else "1") + query["sig"][1:]}
    assert requests.get(f"{base}{parts.path}?{urlencode(tampered)}", timeout=10).status_code == 403

    other_key = parts.path.replace("/layers/00.png", "/layers/01.png")
    assert requests.get(f"{base}{other_key}?{parts.query}", timeout=10).status_code == 403

    expired = {**query, "expires": str(int(query["expires"]) - 10 * 24 * 3600)}
    assert requests.get(f"{base}{parts.path}?{urlencode(expired)}", timeout=10).status_code == 403

    from storage.local import LocalDiskStore

    # Signed by the right key, for the right object, but two hours ago with a one-hour lifetime.
    past = LocalDiskStore(stack.settings.storage_path, stack.settings.signing_secret, clock=lambda: time.time() - 7200)
    stale = past.presign_get(f"jobs/{finished['id']}/layers/00.png", expires_s=3600)
    assert requests.get(base + stale, timeout=10).status_code == 403
    assert requests.get(f"{base}{parts.path}", timeout=10).status_code == 403  # unsigned
    assert requests.get(url, timeout=10).status_code == 200
