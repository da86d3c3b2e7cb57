"""Input normalisation: formats from content, bounded sizes, modes and EXIF rotation handled."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from layerq.images import normalise_image
from layerq.errors import InvalidImage

LIMITS = dict(max_pixels=4_000_000, max_side_px=4096)


def encode(img: Image.Image, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


@pytest.mark.parametrize("mode", ["RGB", "RGBA", "L", "LA", "P", "CMYK", "I;16", "1"])
def test_every_mode_becomes_rgba(mode):
    img = Image.new(mode, (40, 30))
    fmt = "JPEG" if mode == "CMYK" else ("TIFF" if mode == "I;16" else "PNG")
    out = normalise_image(encode(img, fmt), **LIMITS)
    assert out.mode == "RGBA" and out.size == (40, 30)


def test_16_bit_grayscale_keeps_its_brightness():
    arr = np.full((8, 8), 65535 // 2, dtype=np.uint16)
    out = normalise_image(encode(Image.fromarray(arr), "TIFF"), **LIMITS)
    assert 120 <= np.asarray(out)[0, 0, 0] <= 135


def test_exif_rotation_is_applied():
    img = Image.new("RGB", (40, 20))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise on display
    out = normalise_image(encode(img, "JPEG", exif=exif), **LIMITS)
    assert out.size == (20, 40)


def test_format_is_recognised_from_content_not_name():
    with pytest.raises(InvalidImage) as info:
        normalise_image(b"GIF89a not really", **LIMITS)
    assert info.value.field == "image"


@pytest.mark.parametrize("data", [b"<svg/>", b"GIF89a not really", b"\x89PNG\r\n\x1a\n" + b"\x00" * 40])
def test_undecodable_input_is_named_plainly(data):
    """The message names the field and holds no Python repr (`<_io.BytesIO object at 0x…>`, `b'…'`)."""
    with pytest.raises(InvalidImage) as info:
        normalise_image(data, **LIMITS, field="layers.2")
    assert info.value.field == "layers.2" and info.value.message.startswith("layers.2")
    assert " at 0x" not in info.value.message and "b'" not in info.value.message and "<" not in info.value.message


def test_too_many_pixels_rejected_from_header():
    with pytest.raises(InvalidImage, match="at most"):
        normalise_image(encode(Image.new("1", (3000, 3000)), "PNG"), max_pixels=1_000_000, max_side_px=4096)


def test_truncated_file_rejected():
    data = encode(Image.effect_noise((200, 200), 50).convert("RGB"), "PNG")
    with pytest.raises(InvalidImage):
        normalise_image(data[: len(data) // 2], **LIMITS)


def test_unsupported_format_rejected():
    with pytest.raises(InvalidImage, match="unsupported"):
        normalise_image(encode(Image.new("RGB", (8, 8)), "ICO"), **LIMITS)


def test_extreme_aspect_ratio_rejected():
    with pytest.raises(InvalidImage, match="aspect ratio"):
        normalise_image(encode(Image.new("RGB", (2100, 100)), "PNG"), **LIMITS)
    assert normalise_image(encode(Image.new("RGB", (2000, 100)), "PNG"), **LIMITS).size == (2000, 100)
