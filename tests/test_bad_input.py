"""Bad input through the real API: size limits, decompression bombs, formats recognised from content,
and awkward-but-valid images (palette, grayscale, CMYK, 16-bit, EXIF-rotated) decomposed correctly."""

from __future__ import annotations

import io
import json
import struct
import zlib

import numpy as np
import pytest
import requests
from PIL import Image

from layerq.client import LayerqClient

pytestmark = pytest.mark.e2e

QUICK = {"layers": 2, "num_inference_steps": 2, "prompt": "a poster"}


def png_header_only(width: int, height: int) -> bytes:
    """A PNG declaring width×height (1-bit) whose data is a few bytes: what a bomb looks like."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    ihdr = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\x00" * 64)) + chunk(b"IEND", b"")


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def post(stack, data: bytes, name: str = "x.png", params=QUICK):
    return requests.post(stack.url + "/v1/jobs", files={"image": (name, data, "application/octet-stream")},
                         data={"params": json.dumps(params)}, timeout=60)


def test_body_over_the_limit_is_413(local_stack):
    big = b"\0" * (local_stack.settings.max_upload_bytes + 1024)
    resp = post(local_stack, big)
    assert resp.status_code == 413 and resp.json()["error"]["code"] == "payload_too_large"


@pytest.mark.parametrize("w,h", [(50_000, 50_000), (9000, 10), (1, 100_000)])
def test_decompression_bombs_and_extreme_dimensions_are_refused_from_the_header(local_stack, w, h):
    resp = post(local_stack, png_header_only(w, h))
    assert resp.status_code == 400 and resp.json()["error"]["field"] == "image"


def test_format_comes_from_content_not_the_name(local_stack):
    client = LayerqClient(local_stack.url)
    good = post(local_stack, encode(Image.new("RGB", (96, 96), "red"), "PNG"), name="photo.jpg")
    assert good.status_code == 202
    assert client.wait(good.json()["id"], timeout_s=60)["status"] == "succeeded"
    bad = post(local_stack, b"<svg xmlns='http://www.w3.org/2000/svg'/>", name="logo.png")
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_image"
    error = bad.json()["error"]
    # A sentence naming the field, not Pillow's `<_io.BytesIO object at 0x…>`.
    assert error["field"] == "image" and error["message"].startswith("image: ") and " at 0x" not in error["message"]
    assert "PNG" in error["message"], error


def test_input_urls_are_not_accepted(local_stack):
    resp = requests.post(local_stack.url + "/v1/jobs", json={"input_url": "http://169.254.169.254/latest"}, timeout=10)
    assert resp.status_code == 400 and resp.json()["error"]["field"] in ("input_url", "input_key")


def images_of_every_kind() -> dict[str, bytes]:
    gradient = np.tile(np.arange(128, dtype=np.uint8), (96, 1))
    rgb = Image.fromarray(np.stack([gradient, gradient[::-1], np.full_like(gradient, 80)], axis=-1))
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    return {
        "palette": encode(rgb.convert("P", palette=Image.Palette.ADAPTIVE), "PNG"),
        "grayscale": encode(rgb.convert("L"), "PNG"),
        "cmyk": encode(rgb.convert("CMYK"), "JPEG"),
        "16-bit": encode(Image.fromarray((gradient.astype(np.uint16) * 257)), "PNG"),
        "exif-rotated": encode(rgb, "JPEG", exif=exif),
        "webp": encode(rgb, "WEBP", lossless=True),
    }


def test_awkward_images_are_normalised_and_decomposed(local_stack):
    client = LayerqClient(local_stack.url)
    jobs = {}
    for kind, data in images_of_every_kind().items():
        resp = post(local_stack, data)
        assert resp.status_code == 202, (kind, resp.text)
        jobs[kind] = resp.json()["id"]
    for kind, job_id in jobs.items():
        final = client.wait(job_id, timeout_s=120)
        assert final["status"] == "succeeded", (kind, final.get("error"))
        layer = final["result"]["layers"][0]
        if kind == "exif-rotated":
            assert layer["height"] > layer["width"]  # the rotation was applied before decomposing
        else:
            assert layer["width"] > layer["height"]
