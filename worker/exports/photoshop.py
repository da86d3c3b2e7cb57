"""Layered Photoshop (PSD) export through psd-tools."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from PIL import Image
from psd_tools import PSDImage
from psd_tools.compression import encode_rle
from psd_tools.constants import ChannelID, Compression, SectionDivider, Tag
from psd_tools.psd.image_data import ImageData
from psd_tools.psd.layer_and_mask import (
    ChannelData,
    ChannelDataList,
    ChannelImageData,
    ChannelInfo,
    GlobalLayerMaskInfo,
    LayerInfo,
    LayerRecord,
    LayerRecords,
)
from psd_tools.psd.tagged_blocks import TaggedBlocks

from .raster import checked_merged, sample_rows, validate_layers
from .sink import ByteSink

# Compression is chosen per layer channel (and for the merged image) from a sample of
# rows: PackBits RLE, Photoshop's own default, when it saves at least 1 - _RLE_RATIO of
# the sample, RAW otherwise. Every PSD reader handles both (ZIP is left out: several
# readers do not decode it). RLE (psd-tools' Cython codec) shrinks a mostly transparent
# 640x640 layer 10-50x for ~1.5 ms; on noise it is ~1 % *bigger* than RAW and costs
# ~3 ms a layer, with the GIL held.
_RLE_RATIO = 0.9


def layer_name(index: int) -> str:
    """Display name of the layer at stack position *index* (0 = bottom): "Layer 1", ...

    The authors' exports number from the bottom, so "Layer 1" is the backdrop."""
    return f"Layer {index + 1}"


def _rle_pays(planes: np.ndarray) -> bool:
    """Whether PackBits RLE stores *planes* ((channels, height, width) uint8, as a PSD
    lays them out) in at most _RLE_RATIO of their raw size, judged on sample rows."""
    sample = np.ascontiguousarray(planes[:, sample_rows(planes.shape[1])])
    rows = sample.shape[0] * sample.shape[1]
    encoded = encode_rle(sample.tobytes(), sample.shape[2], rows, 8, 1)
    return len(encoded) <= _RLE_RATIO * sample.nbytes


def rle_plane(plane: np.ndarray) -> bytes:
    """PSD PackBits RLE of one (height, width) uint8 plane: the big-endian uint16 byte
    count of every row, then the rows. Byte for byte what psd-tools'
    ``encode_rle(plane.tobytes(), width, height, 8, 1)`` returns, but rows that are one
    value throughout (the transparent areas of a layer, flat backgrounds) are encoded
    once per run of equal rows and repeated, instead of one codec call per row (the
    codec holds the GIL): ~1.5x faster on the benchmark's poster layers, the more
    transparent rows the more."""
    height, width = plane.shape
    uniform = (plane == plane[:, :1]).all(axis=1)
    # Break the rows into runs: consecutive non-uniform rows, or consecutive uniform
    # rows of one value.
    key = np.where(uniform, plane[:, 0].astype(np.int16), -1)
    starts = np.flatnonzero(np.concatenate(([True], key[1:] != key[:-1])))
    ends = np.append(starts[1:], height)
    counts = np.empty(height, ">u2")
    pieces: list[bytes] = []
    for start, end in zip(starts.tolist(), ends.tolist(), strict=True):
        rows = end - start
        if uniform[start]:
            encoded = encode_rle(plane[start].tobytes(), width, 1, 8, 1)
            counts[start:end] = len(encoded) - 2
            pieces.append(encoded[2:] * rows)
        else:
            encoded = encode_rle(plane[start:end].tobytes(), width, rows, 8, 1)
            counts[start:end] = np.frombuffer(encoded, ">u2", rows)
            pieces.append(encoded[2 * rows:])
    return counts.tobytes() + b"".join(pieces)


# Channel order of a pixel layer's record: transparency first, then R, G, B (what
# psd-tools' own create_pixel_layer writes), with the RGBA band each one comes from.
_LAYER_CHANNELS = ((ChannelID.TRANSPARENCY_MASK, 3), (ChannelID(0), 0), (ChannelID(1), 1), (ChannelID(2), 2))


def _channel(plane: np.ndarray) -> ChannelData:
    """One (height, width) uint8 plane as layer channel data: PackBits RLE where it stores the
    plane in at most _RLE_RATIO of its raw size (judged on sample rows), RAW otherwise.

    Decided per channel, not per layer: an opaque photo layer has an alpha plane that RLE
    shrinks to nothing and colour planes it cannot shrink (and is slowest on)."""
    if _rle_pays(plane[None]):
        return ChannelData(Compression.RLE, rle_plane(np.ascontiguousarray(plane)))
    return ChannelData(Compression.RAW, plane.tobytes())


def layer_info(stack: Sequence[Image.Image], pixels: Sequence[np.ndarray] | None = None) -> LayerInfo:
    """The layer records and channel data of *stack*, bottom first, as psd-tools'
    ``create_pixel_layer`` builds them (full-canvas pixel layers named :func:`layer_name`,
    default flags, opacity and blending), built from the planes directly: through
    ``create_pixel_layer`` the 4 layers of a 640x640 job took ~7 ms (a converted copy of
    each image, a copy per band, the layer tree rebuilt on every append), with the GIL held.

    The count is negative: a layered PSD declares that the merged image's extra channel is
    its transparency that way (Photoshop's convention, which psd-tools and ImageMagick
    honour; tests/test_exports.py checks the file reads back with merged alpha)."""
    records, channels = LayerRecords(), ChannelImageData()
    for index, layer in enumerate(stack):
        record, data = pixel_layer(np.asarray(layer) if pixels is None else pixels[index], layer_name(index))
        records.append(record)
        channels.append(data)
    return LayerInfo(layer_count=-len(records), layer_records=records, channel_image_data=channels)


def pixel_layer(rgba: np.ndarray, name: str) -> tuple[LayerRecord, ChannelDataList]:
    """One full-canvas pixel layer's record and channel data, from its (height, width, 4) pixels."""
    height, width = rgba.shape[:2]
    record = LayerRecord(top=0, left=0, bottom=height, right=width, name=name)
    data = ChannelDataList()
    for channel_id, band in _LAYER_CHANNELS:
        channel = _channel(rgba[..., band])
        record.channel_info.append(ChannelInfo(id=channel_id, length=len(channel.data) + 2))
        data.append(channel)
    return record, data


def group_markers(name: str) -> tuple[tuple[LayerRecord, ChannelDataList], tuple[LayerRecord, ChannelDataList]]:
    """The two records that bracket a layer group, as psd-tools' ``Group.new`` builds them:
    ``(opening, closing)``. Records run bottom first, so a group is written as the closing
    "</Layer group>" divider, then its members, then the opening record that carries the group's
    *name* (an open folder)."""

    def marker(label: str, kind: SectionDivider) -> tuple[LayerRecord, ChannelDataList]:
        record = LayerRecord(top=0, left=0, bottom=0, right=0, name=label)
        record.tagged_blocks = TaggedBlocks()
        record.tagged_blocks.set_data(Tag.SECTION_DIVIDER_SETTING, kind=kind)
        record.tagged_blocks.set_data(Tag.UNICODE_LAYER_NAME, label)
        record.channel_info = [ChannelInfo(id=ChannelID(i - 1), length=2) for i in range(4)]
        data = ChannelDataList()
        for _ in range(4):
            data.append(ChannelData(compression=Compression.RAW, data=b""))
        return record, data

    return marker(name, SectionDivider.OPEN_FOLDER), marker("</Layer group>", SectionDivider.BOUNDING_SECTION_DIVIDER)


def merged_planes(flat: Image.Image, pixels: np.ndarray | None = None) -> np.ndarray:
    """The PSD merged-image planes (R, G, B, A as a (4, height, width) uint8 array) of
    the RGBA composite *flat*: colour matted over white in 8 bits, as Photoshop stores a
    transparent document (so a reader that ignores the alpha plane shows the picture on
    white), then the alpha itself.

    Integer arithmetic: ``round(C * a + 255 * (1 - a))`` with a = A / 255, i.e.
    ``round((65025 - A * (255 - C)) / 255)``, exact for every (C, A). *pixels* is
    ``np.asarray(flat)`` when the caller has it already.
    """
    rgba = np.asarray(flat) if pixels is None else pixels
    alpha = rgba[..., 3].astype(np.uint16)
    planes = np.empty((4, *alpha.shape), np.uint8)
    for index in range(3):
        over = 65025 + 128 - alpha * (255 - rgba[..., index].astype(np.uint16))
        planes[index] = (over + (over >> 8)) >> 8  # round(over / 255) for over <= 65535
    planes[3] = rgba[..., 3]
    return planes


def to_psd(layers: Sequence[Image.Image], *, merged: Image.Image | None = None) -> bytes:
    """:func:`psd_sink`'s bytes."""
    return psd_sink(layers, merged=merged).getvalue()


def psd_sink(
    layers: Sequence[Image.Image],
    *,
    merged: Image.Image | None = None,
    pixels: Sequence[np.ndarray] | None = None,
    merged_pixels: np.ndarray | None = None,
    layers_section: LayerInfo | None = None,
) -> ByteSink:
    """Build an 8-bit RGBA PSD with one full-canvas pixel layer per input layer.

    Layers are named :func:`layer_name` bottom to top and keep their alpha as the
    layer transparency channel (no masks, opacity 255, normal blending). The merged
    image section holds the flattened stack *with* its transparency, exactly
    :func:`merged_planes` of :func:`~worker.exports.composite`, so readers that only
    look at the merged image (previewers, ImageMagick's ``file.psd[0]``) show the same
    picture as the job's composite PNG, up to the 8-bit rounding of Photoshop's
    store-over-white convention for semi-transparent pixels. (Until psd-tools'
    re-composite was dropped, the preview came from psd-tools' float compositor
    instead: the same picture, give or take one LSB of rounding.)

    Channels are RLE- or RAW-compressed, whichever suits each (see
    :func:`_compress_layer_channels`); both read back to the same pixels in every reader.

    :param merged: the stack's :func:`~worker.exports.composite`, if already computed
        (it must be exactly that: it is stored as the PSD's preview as given).
    :param pixels, merged_pixels: ``np.asarray`` of each layer and of *merged*, where the
        caller has them already (:func:`~worker.exports.encode_all` shares them with the PNGs).
    :param layers_section: :func:`layer_info` of the stack, if already built (it needs no
        composite, so :func:`~worker.exports.encode_all` builds it while the composite is).
    :raises TypeError, ValueError: as :func:`~worker.exports.validate_layers`; ValueError
        when *merged* is not the layers' size.
    """
    stack = validate_layers(layers)
    flat = checked_merged(stack, merged)
    # The document's header, colour mode and image resources as psd-tools makes them for a
    # new RGBA document; its layer section is then ours (see layer_info).
    record = PSDImage.new("RGBA", stack[0].size, color=0)._record
    assert record.header.depth == 8 and record.header.version == 1  # what rle_plane writes
    sections = record.layer_and_mask_information
    sections.layer_info = layers_section if layers_section is not None else layer_info(stack, pixels)
    if sections.global_layer_mask_info is None:
        sections.global_layer_mask_info = GlobalLayerMaskInfo()
    if sections.tagged_blocks is None:
        sections.tagged_blocks = TaggedBlocks()
    # The merged image is written from our composite rather than through
    # PSDImage.save(), which would re-composite the layers with psd-tools' float
    # compositor (~60 ms of the ~75 ms a 4-layer 640x640 PSD took) to get the same
    # picture. Writing the low-level record directly is exactly what save() does
    # after that step.
    planes = merged_planes(flat, merged_pixels if merged is not None else None)
    if _rle_pays(planes):  # one compression for all the merged planes
        # One RLE stream over the planes stacked: all row counts first, then all rows.
        stacked = planes.reshape(-1, planes.shape[2])
        record.image_data = ImageData(compression=Compression.RLE, data=rle_plane(stacked))
    else:
        record.image_data = ImageData(compression=Compression.RAW, data=planes.tobytes())
    sink = ByteSink()
    record.write(sink)
    return sink
