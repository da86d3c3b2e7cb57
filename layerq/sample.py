"""A generated poster-like sample image, so the demo and tests need no files from anywhere."""

from __future__ import annotations

import io

from PIL import Image, ImageDraw


def make_sample_image(width: int = 768, height: int = 512) -> Image.Image:
    """A background gradient, two overlapping shapes and a text band: something with layers in it."""
    img = Image.new("RGBA", (width, height))
    px = img.load()
    for y in range(height):
        for x in range(0, width, 4):
            c = (40 + 150 * y // height, 90 + 100 * x // width, 180, 255)
            for dx in range(min(4, width - x)):
                px[x + dx, y] = c
    draw = ImageDraw.Draw(img, "RGBA")
    draw.ellipse((width * 0.1, height * 0.2, width * 0.5, height * 0.8), fill=(250, 200, 40, 255))
    draw.rectangle((width * 0.4, height * 0.35, width * 0.85, height * 0.7), fill=(220, 40, 90, 200))
    draw.rectangle((0, height * 0.82, width, height * 0.95), fill=(255, 255, 255, 230))
    draw.text((width * 0.05, height * 0.85), "layerq sample poster", fill=(20, 20, 20, 255))
    return img


def sample_png(width: int = 768, height: int = 512) -> bytes:
    buf = io.BytesIO()
    make_sample_image(width, height).save(buf, format="PNG")
    return buf.getvalue()
