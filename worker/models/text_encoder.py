"""The Qwen2.5-VL text encoder and its processor, shared by the layered and the edit pipelines."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from worker.models.tokenizer import special_token_ids


@dataclass(frozen=True)
class TextEncoderSize:
    """Qwen2.5-VL dimensions for one build size."""

    text: dict[str, Any]
    vision: dict[str, Any]
    vocab_size: int | None  # None: the tokenizer's own length
    image_max_pixels: int
    # With random weights a caption meets its end token only by chance. Full/small builds unset it so
    # every caption runs the whole `max_new_tokens` (as the reference GPU measurement did); the tiny
    # model keeps Qwen's end tokens so CPU jobs stay short.
    caption_stops_at_eos: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


_VISION_COMMON = dict(patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112, in_channels=3)

# Qwen2.5-VL-7B (DESIGN.md): 8.3 B parameters.
FULL = TextEncoderSize(
    text=dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        max_position_embeddings=128000,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
    ),
    vision=dict(
        depth=32,
        hidden_size=1280,
        intermediate_size=3420,
        num_heads=16,
        out_hidden_size=3584,
        fullatt_block_indexes=[7, 15, 23, 31],
        **_VISION_COMMON,
    ),
    vocab_size=152064,
    image_max_pixels=12845056,  # Qwen2.5-VL's processor default; a 640-bucket image stays ~640x640
)

SMALL = TextEncoderSize(
    text=dict(
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    ),
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=64,
                fullatt_block_indexes=[1], **_VISION_COMMON),
    vocab_size=None,
    image_max_pixels=56 * 56 * 4,
)

TINY = TextEncoderSize(
    text=dict(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=2,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=4096,
        rms_norm_eps=1e-6,
        # head_dim 16 → 8 rotary frequencies, split over (temporal, height, width) like [16, 24, 24].
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
    ),
    vision=dict(depth=2, hidden_size=32, intermediate_size=64, num_heads=2, out_hidden_size=32,
                fullatt_block_indexes=[1], **_VISION_COMMON),
    vocab_size=None,
    image_max_pixels=12845056,
    caption_stops_at_eos=True,
)


def build_processor(tokenizer: Any, max_pixels: int) -> Any:
    """`Qwen2VLProcessor` (it needs an image and a video processor, hence torchvision)."""
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )


def text_encoder_config(size: TextEncoderSize, tokenizer: Any) -> Any:
    """A `Qwen2_5_VLConfig` whose token ids are the small vocabulary's."""
    from transformers import Qwen2_5_VLConfig

    ids = special_token_ids(tokenizer)
    text = dict(size.text)
    text["vocab_size"] = size.vocab_size or len(tokenizer)
    eos = ids["<|im_end|>"] if size.caption_stops_at_eos else None
    text.update(bos_token_id=None, eos_token_id=eos, pad_token_id=ids["<|endoftext|>"])
    return Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(size.vision),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )


def finish_generation_config(text_encoder: Any, size: TextEncoderSize, tokenizer: Any) -> None:
    """Set the end/pad tokens `generate` uses for the pipeline's auto-caption."""
    ids = special_token_ids(tokenizer)
    gc = text_encoder.generation_config
    gc.bos_token_id = None
    gc.pad_token_id = ids["<|endoftext|>"]
    # Qwen2.5-VL-Instruct stops at either token.
    gc.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]] if size.caption_stops_at_eos else None
