"""Input images: recognised from their content, bounded in size before decoding, normalised to RGBA.

Everything is checked here, in the API, so a bad file is a 400 and never reaches a worker."""

from __future__ import annotations

import io
import warnings

from PIL import Image, ImageOps, UnidentifiedImageError

from layerq.errors import InvalidImage

ALLOWED_FORMATS = {"PNG", "JPEG", "WEBP", "BMP", "TIFF", "GIF"}
# The pipeline keeps the aspect ratio at about resolution² pixels; past this ratio the short side
# shrinks to a few dozen pixels (and to zero near 1600:1, where the pipeline itself raises).
MAX_ASPECT_RATIO = 20.0


def normalise_image(data: bytes, *, max_pixels: int, max_side_px: int, field: str = "image") -> Image.Image:
    """Decode `data` into an RGBA image (EXIF rotation applied), or raise InvalidImage naming `field`."""
    if not data:
        raise InvalidImage("image is empty", field=field)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            fmt = img.format
            if fmt not in ALLOWED_FORMATS:
                raise InvalidImage(
                    f"unsupported image format {fmt}; allowed: {', '.join(sorted(ALLOWED_FORMATS))}", field=field
                )
            w, h = img.size
            # Checked from the header, before any pixel is decoded (decompression bombs).
            if w < 1 or h < 1 or w > max_side_px or h > max_side_px or w * h > max_pixels:
                raise InvalidImage(
                    f"image is {w}x{h}; at most {max_side_px} px a side and {max_pixels} pixels", field=field
                )
            if max(w, h) / min(w, h) > MAX_ASPECT_RATIO:
                raise InvalidImage(f"image is {w}x{h}; the aspect ratio may be at most {MAX_ASPECT_RATIO:g}:1", field=field)
            img.load()
    except InvalidImage:
        raise
    # Pillow's own messages name its internals (`cannot identify image file <_io.BytesIO object at
    # 0x…>`, `broken PNG file (chunk b'…')`): the client gets a plain sentence naming its field.
    except UnidentifiedImageError as exc:
        raise InvalidImage(f"{field}: not an image in a known format (allowed: "
                           f"{', '.join(sorted(ALLOWED_FORMATS))})", field=field) from exc
    except (Image.DecompressionBombWarning, Image.DecompressionBombError) as exc:
        raise InvalidImage(f"{field}: decodes to more pixels than allowed ({max_pixels})", field=field) from exc
    except (OSError, ValueError, SyntaxError) as exc:  # truncated or corrupt data
        raise InvalidImage(f"{field}: the image data is corrupt or truncated", field=field) from exc
    img = ImageOps.exif_transpose(img)
    if img.mode != "RGBA":
        if img.mode in ("I;16", "I;16B", "I;16L", "I"):
            # 16-bit grayscale: scale to 8 bits before the RGBA conversion, which would clip.
            img = img.point(lambda v: v / 257).convert("L")
        img = img.convert("RGBA")
    return img


def png_bytes(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG", compress_level=1)
    return buf.getvalue()
