"""An offline, few-MB stand-in for Qwen/Qwen-Image-Layered, built from the real classes.

Tests, CI and benchmarks never reach a model hub, yet the worker's loading and calling code must stay
real. So we build every component of `diffusers.QwenImageLayeredPipeline` from the same classes the
real checkpoint uses, shrink only the sizes, fill them with seeded random weights, and save the result
with `save_pretrained`. Loading it back goes through the ordinary `from_pretrained` path.

Nothing heavy happens at import time: torch, diffusers and transformers are imported inside the
functions, so importing this module (e.g. from a CLI that only prints settings) stays cheap.
"""

from __future__ import annotations

import json
import logging
import os
import random
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any

log = logging.getLogger(__name__)

# Bump whenever the recipe below changes: the cache directory name carries it, so a worker with a
# stale cached model builds the new one instead of loading the old.
TINY_MODEL_VERSION = "5"

SEED = 0
# The special tokens the Qwen-Image prompt templates and the Qwen2-VL processor rely on, in the
# order the real Qwen2.5-VL vocabulary has them (they sit after the BPE tokens there too).
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]
VOCAB_SIZE = 1024  # at most (the small corpus yields ~660 BPE tokens); special tokens come on top
Z_DIM = 8  # must not be 4: the pipeline takes a 4-channel (RGBA) image tensor for latents when z_dim == 4
TEXT_HIDDEN = 32

# FlowMatchEulerDiscreteScheduler config as the Qwen-Image family ships it (scheduler_config.json of
# Qwen/Qwen-Image and the Edit models); the layered pipeline passes its own `mu` and `sigmas`.
SCHEDULER_CONFIG: dict[str, Any] = {
    "base_image_seq_len": 256,
    "base_shift": 0.5,
    "invert_sigmas": False,
    "max_image_seq_len": 8192,
    "max_shift": 0.9,
    "num_train_timesteps": 1000,
    "shift": 1.0,
    "shift_terminal": 0.02,
    "stochastic_sampling": False,
    "time_shift_type": "exponential",
    "use_beta_sigmas": False,
    "use_dynamic_shifting": True,
    "use_exponential_sigmas": False,
    "use_karras_sigmas": False,
}

_WORDS = (
    "the a an of in on with and or to from by at under over near behind red green blue yellow white "
    "black orange purple pink gray brown large small tall short round square bright dark soft rough "
    "poster title text logo banner person woman man child cat dog tree flower sky cloud sun mountain "
    "river building street car table chair cup book bottle background foreground layer shadow light "
    "color shape size texture quantity spatial relationships objects describe image caption detailed"
).split()


def _training_text(rng: random.Random, lines: int = 2000) -> list[str]:
    """Deterministic English-like sentences (plus a little Chinese and digits) to train the BPE on."""
    out = []
    for i in range(lines):
        words = [rng.choice(_WORDS) for _ in range(rng.randint(4, 16))]
        out.append(" ".join(words).capitalize() + (f" {i}." if i % 7 == 0 else "."))
    out.append("图像标注器 请基于输入图像 撰写图注 颜色 形状 大小 位置 材质")
    return out


def _build_tokenizer() -> Any:
    """A byte-level BPE trained here (no download), wrapped in the tokenizer class Qwen ships."""
    from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers
    from transformers import AddedToken, Qwen2TokenizerFast
    from transformers.models.qwen2.tokenization_qwen2 import PRETOKENIZE_REGEX

    # Same normaliser and pre-tokeniser as Qwen2TokenizerFast, so the trained merges fit it.
    bpe = Tokenizer(models.BPE())
    bpe.normalizer = normalizers.NFC()
    bpe.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(PRETOKENIZE_REGEX), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB_SIZE, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False
    )
    bpe.train_from_iterator(_training_text(random.Random(SEED)), trainer=trainer)
    model = json.loads(bpe.to_str())["model"]
    vocab: dict[str, int] = model["vocab"]
    # Serialised merges are "a b" strings (older tokenizers) or [a, b] pairs; the BPE wants tuples.
    merges = [tuple(m.split(" ", 1)) if isinstance(m, str) else tuple(m) for m in model["merges"]]
    # Special tokens appended after the BPE ids in the real vocabulary's order (<|endoftext|> first),
    # so the wrapper below finds them in the vocabulary instead of assigning ids in its own order.
    for t in SPECIAL_TOKENS:
        vocab[t] = len(vocab)
    # eos/pad as Qwen2.5-VL-Instruct has them.
    tok = Qwen2TokenizerFast(vocab=vocab, merges=merges, eos_token="<|im_end|>", pad_token="<|endoftext|>")
    tok.add_tokens([AddedToken(t, special=True, normalized=False) for t in SPECIAL_TOKENS], special_tokens=True)
    tok.model_max_length = 32768
    return tok


def _build_components(tokenizer: Any) -> dict[str, Any]:
    import torch
    from diffusers import AutoencoderKLQwenImage, FlowMatchEulerDiscreteScheduler, QwenImageTransformer2DModel
    from transformers import (
        Qwen2_5_VLConfig,
        Qwen2_5_VLForConditionalGeneration,
        Qwen2VLImageProcessor,
        Qwen2VLProcessor,
        Qwen2VLVideoProcessor,
    )

    ids = {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
    torch.manual_seed(SEED)
    te_config = Qwen2_5_VLConfig(
        text_config={
            "vocab_size": len(tokenizer),
            "hidden_size": TEXT_HIDDEN,
            "intermediate_size": 64,
            "num_hidden_layers": 2,
            "num_attention_heads": 2,
            "num_key_value_heads": 1,
            "max_position_embeddings": 4096,
            # head_dim 16 → 8 rotary frequencies, split over (temporal, height, width) like [16, 24, 24].
            "rope_scaling": {"type": "mrope", "mrope_section": [2, 3, 3]},
            "rope_theta": 1000000.0,
            "bos_token_id": ids["<|endoftext|>"],
            "eos_token_id": ids["<|im_end|>"],
            "pad_token_id": ids["<|endoftext|>"],
        },
        vision_config={
            "depth": 2,
            "hidden_size": 32,
            "intermediate_size": 64,
            "num_heads": 2,
            "out_hidden_size": TEXT_HIDDEN,
            "patch_size": 14,
            "spatial_merge_size": 2,
            "temporal_patch_size": 2,
            "window_size": 112,
            "fullatt_block_indexes": [1],
        },
        image_token_id=ids["<|image_pad|>"],
        video_token_id=ids["<|video_pad|>"],
        vision_start_token_id=ids["<|vision_start|>"],
        vision_end_token_id=ids["<|vision_end|>"],
    )
    text_encoder = Qwen2_5_VLForConditionalGeneration(te_config).eval()
    gen = text_encoder.generation_config
    gen.bos_token_id = ids["<|endoftext|>"]
    gen.eos_token_id = [ids["<|im_end|>"], ids["<|endoftext|>"]]
    gen.pad_token_id = ids["<|endoftext|>"]

    processor = Qwen2VLProcessor(
        image_processor=Qwen2VLImageProcessor(min_pixels=56 * 56, max_pixels=12845056),
        tokenizer=tokenizer,
        video_processor=Qwen2VLVideoProcessor(),
    )

    torch.manual_seed(SEED)
    transformer = QwenImageTransformer2DModel(
        patch_size=2,
        in_channels=4 * Z_DIM,  # 2x2 packed latent patches
        out_channels=Z_DIM,
        num_layers=2,
        # Attention over all layers' tokens dominates a step (~2,350 tokens at the 640 bucket with
        # 4 layers): 2 heads of 16 keep 50 CFG steps around a second on a CPU.
        attention_head_dim=16,
        num_attention_heads=2,
        joint_attention_dim=TEXT_HIDDEN,
        guidance_embeds=False,
        axes_dims_rope=(4, 6, 6),  # sums to attention_head_dim, like (16, 56, 56) for 128
        use_additional_t_cond=True,
        use_layer3d_rope=True,
    ).eval()

    torch.manual_seed(SEED)
    # Four down stages → 16x spatial compression: the layer sequences are 4x shorter than with the real
    # 8x VAE, which keeps a 640-bucket job at seconds on a CPU (two stages made it ~90 s). Decoding every
    # layer at full resolution is then the largest fixed cost, so the full-resolution stages are 2
    # channels wide (the RMS norms there dominate the decoder's CPU time).
    vae = AutoencoderKLQwenImage(
        base_dim=2,
        z_dim=Z_DIM,
        dim_mult=[1, 2, 4, 8, 8],
        num_res_blocks=1,
        temperal_downsample=[False, True, True, True],  # the real [False, True, True] plus one stage
        input_channels=4,  # RGBA
        latents_mean=[0.0] * Z_DIM,
        latents_std=[1.0] * Z_DIM,
    ).eval()

    scheduler = FlowMatchEulerDiscreteScheduler(**SCHEDULER_CONFIG)
    return {
        "scheduler": scheduler,
        "vae": vae,
        "text_encoder": text_encoder,
        "tokenizer": tokenizer,
        "processor": processor,
        "transformer": transformer,
    }


def build_tiny_model(dest: Path) -> Path:
    """Build the tiny pipeline (deterministic: fixed seeds) and `save_pretrained` it into `dest`."""
    from diffusers import QwenImageLayeredPipeline

    started = time.monotonic()
    dest = Path(dest)
    pipe = QwenImageLayeredPipeline(**_build_components(_build_tokenizer()))
    pipe.save_pretrained(dest)
    log.info("built tiny Qwen-Image-Layered model in %s (%.1f s)", dest, time.monotonic() - started)
    return dest


def ensure_tiny_model(cache_dir: Path) -> Path:
    """Return `cache_dir/tiny-<version>`, building it first if absent.

    Built into a private temporary directory next to the target and moved into place with one
    `os.rename`, so a reader never sees a half-written model; when two processes race, one rename
    wins and the loser discards its copy.
    """
    cache_dir = Path(cache_dir).expanduser()
    final = cache_dir / f"tiny-{TINY_MODEL_VERSION}"
    if (final / "model_index.json").is_file():
        return final
    cache_dir.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".tiny-{TINY_MODEL_VERSION}-", dir=cache_dir))
    try:
        build_tiny_model(tmp)
        tmp.chmod(0o755)  # mkdtemp makes it private; the cache may be shared by a worker and its tests
        try:
            os.rename(tmp, final)
        except OSError:
            # Another process renamed its build into place first (the target now exists, non-empty).
            if not (final / "model_index.json").is_file():
                raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final
