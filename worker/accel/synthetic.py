"""A QwenImageLayeredPipeline with random weights, built in-process from configs (no download).

Used by bench/gpu_bench.py and tests/test_acceleration.py; the saved tiny model lives elsewhere.

`build_pipeline("full", device="cuda")` builds the real architecture (20.4 B transformer, 8.3 B
Qwen2.5-VL text encoder, RGBA VAE) directly on the GPU in bf16, for timing and memory: the shapes are
the ones DESIGN.md lists. `build_pipeline("small")` builds a scaled-down model with the same classes so
that the benchmark script and the acceleration tests run on a CPU in seconds.

With random weights a caption never meets its end token; the text encoder's end token is unset so
every caption runs the full `max_new_tokens`, as the reference measurement did.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from worker.tiny_model import SPECIAL_TOKENS as QWEN_SPECIAL_TOKENS  # one list for both models

_CORPUS = [
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships",
    "of the objects and background. You are a helpful assistant. Image Annotator professional caption",
    "A poster with a red title at the top, a blue sky, three white clouds and a green field below.",
    "The text reads 'SUMMER SALE' in bold yellow letters on a dark background with soft lighting.",
    "图像标注器 你是一个专业的图像标注器 请基于输入图像 撰写图注 对象的属性 数量 颜色 形状 大小 位置",
    "system user assistant layers decompose foreground background person cat dog tree house car",
]


@dataclass(frozen=True)
class SyntheticSizes:
    """Model dimensions for one synthetic build."""

    transformer: dict
    vae: dict
    text: dict
    vision: dict
    vocab_size: int | None  # None: the tokenizer's own length
    image_max_pixels: int


FULL = SyntheticSizes(
    transformer=dict(use_additional_t_cond=True, use_layer3d_rope=True),
    vae=dict(input_channels=4),
    text=dict(
        hidden_size=3584,
        intermediate_size=18944,
        num_hidden_layers=28,
        num_attention_heads=28,
        num_key_value_heads=4,
        vocab_size=152064,
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
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[7, 15, 23, 31],
        in_channels=3,
    ),
    vocab_size=152064,
    image_max_pixels=12845056,  # Qwen2.5-VL's processor default; a 640-bucket image stays ~640x640
)

SMALL = SyntheticSizes(
    transformer=dict(
        num_layers=2,
        attention_head_dim=32,
        num_attention_heads=2,
        joint_attention_dim=64,
        axes_dims_rope=(8, 12, 12),
        in_channels=32,
        out_channels=8,
        use_additional_t_cond=True,
        use_layer3d_rope=True,
    ),
    vae=dict(
        base_dim=8,
        z_dim=8,
        dim_mult=[1, 1, 1, 1, 1],
        num_res_blocks=1,
        temperal_downsample=[False, False, False, False],
        latents_mean=[0.0] * 8,
        latents_std=[1.0] * 8,
        input_channels=4,
    ),
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
    vision=dict(
        depth=2,
        hidden_size=32,
        intermediate_size=64,
        num_heads=2,
        out_hidden_size=64,
        patch_size=14,
        spatial_merge_size=2,
        temporal_patch_size=2,
        window_size=112,
        fullatt_block_indexes=[1],
        in_channels=3,
    ),
    vocab_size=None,
    image_max_pixels=56 * 56 * 4,
)

SIZES = {"full": FULL, "small": SMALL}


def build_tokenizer(bpe_vocab_size: int = 400):
    """A byte-level BPE trained offline on a few lines, with the Qwen special tokens, as a Qwen2 tokenizer."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=bpe_vocab_size,
        special_tokens=QWEN_SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(_CORPUS * 4, trainer=trainer)
    return Qwen2TokenizerFast(
        tokenizer_object=tok,
        unk_token=None,
        bos_token=None,
        eos_token="<|endoftext|>",
        pad_token="<|endoftext|>",
        additional_special_tokens=QWEN_SPECIAL_TOKENS[1:],
    )


def build_processor(tokenizer, max_pixels: int):
    from transformers import Qwen2VLImageProcessor, Qwen2VLProcessor, Qwen2VLVideoProcessor

    size = {"shortest_edge": 56 * 56, "longest_edge": max_pixels}
    return Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(size=size),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )


def _text_encoder_config(sizes: SyntheticSizes, tokenizer):
    from transformers import Qwen2_5_VLConfig

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in QWEN_SPECIAL_TOKENS}
    text = dict(sizes.text)
    text["vocab_size"] = sizes.vocab_size or len(tokenizer)
    text.update(bos_token_id=None, eos_token_id=None, pad_token_id=ids["<|endoftext|>"])
    cfg = Qwen2_5_VLConfig(
        text_config=text,
        vision_config=dict(sizes.vision),
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    return cfg


@contextlib.contextmanager
def _default_dtype(dtype: torch.dtype):
    old = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    try:
        yield
    finally:
        torch.set_default_dtype(old)


def build_pipeline(size: str = "small", device: str | torch.device = "cpu", dtype=None, seed: int = 0):
    """Build a `QwenImageLayeredPipeline` with random weights directly on `device`.

    `dtype` defaults to bf16 on CUDA and fp32 on CPU. Weights are drawn from `seed`, so the same call
    builds the same model on the same device type.
    """
    from diffusers import (
        AutoencoderKLQwenImage,
        FlowMatchEulerDiscreteScheduler,
        QwenImageLayeredPipeline,
        QwenImageTransformer2DModel,
    )
    from transformers import Qwen2_5_VLForConditionalGeneration

    sizes = SIZES[size]
    device = torch.device(device)
    if dtype is None:
        dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    tokenizer = build_tokenizer()
    processor = build_processor(tokenizer, sizes.image_max_pixels)
    te_config = _text_encoder_config(sizes, tokenizer)
    torch.manual_seed(seed)
    with device, _default_dtype(dtype):
        transformer = QwenImageTransformer2DModel(**sizes.transformer)
        vae = AutoencoderKLQwenImage(**sizes.vae)
        text_encoder = Qwen2_5_VLForConditionalGeneration(te_config)
    if size == "small":
        # Default init leaves the tiny transformer's outputs near zero; widen it so errors are visible.
        with torch.no_grad():
            for p in transformer.parameters():
                if p.dim() >= 2:
                    p.normal_(0.0, 0.2)
    for m in (transformer, vae, text_encoder):
        m.to(device=device, dtype=dtype).eval().requires_grad_(False)
    gc = text_encoder.generation_config
    gc.eos_token_id = None
    gc.bos_token_id = None
    gc.pad_token_id = te_config.text_config.pad_token_id
    scheduler = FlowMatchEulerDiscreteScheduler(
        base_image_seq_len=256,
        base_shift=0.5,
        max_image_seq_len=8192,
        max_shift=0.9,
        num_train_timesteps=1000,
        shift=1.0,
        shift_terminal=0.02,
        use_dynamic_shifting=True,
        time_shift_type="exponential",
    )
    pipe = QwenImageLayeredPipeline(
        scheduler=scheduler,
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        processor=processor,
        transformer=transformer,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe


def sample_image(width: int = 640, height: int = 640, seed: int = 0):
    """A deterministic RGBA test image with some structure (gradients and blocks)."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:height, 0:width]
    rgba = np.zeros((height, width, 4), dtype=np.uint8)
    rgba[..., 0] = (x * 255 // max(width - 1, 1)).astype(np.uint8)
    rgba[..., 1] = (y * 255 // max(height - 1, 1)).astype(np.uint8)
    rgba[..., 2] = rng.integers(0, 255)
    rgba[..., 3] = 255
    for _ in range(4):
        x0, y0 = rng.integers(0, width // 2), rng.integers(0, height // 2)
        rgba[y0 : y0 + height // 4, x0 : x0 + width // 4, :3] = rng.integers(0, 255, size=3)
    return Image.fromarray(rgba, "RGBA")
