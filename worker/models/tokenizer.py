"""A small byte-level BPE with the Qwen special tokens, as the `Qwen2TokenizerFast` Qwen ships.

Trained here on a few lines (no download). The corpus and sizes are fixed: the full-size synthetic
model's auto-caption prompt for a 640x640 image is 1,168 tokens with exactly this tokenizer, and the GPU
measurements depend on that length (tests/test_models.py pins it). Change it and the caption timings
stop being comparable with earlier runs.
"""

from __future__ import annotations

from typing import Any

# The special tokens the Qwen-Image prompt templates and the Qwen2-VL processor rely on, in the order
# the real Qwen2.5-VL vocabulary lists them.
SPECIAL_TOKENS = [
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
]

BPE_VOCAB_SIZE = 400

# Words from the pipelines' own prompt templates (English and Chinese), so they tokenise into a
# realistic number of pieces rather than single bytes.
_CORPUS = [
    "Describe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships",
    "of the objects and background. You are a helpful assistant. Image Annotator professional caption",
    "A poster with a red title at the top, a blue sky, three white clouds and a green field below.",
    "The text reads 'SUMMER SALE' in bold yellow letters on a dark background with soft lighting.",
    "图像标注器 你是一个专业的图像标注器 请基于输入图像 撰写图注 对象的属性 数量 颜色 形状 大小 位置",
    "system user assistant layers decompose foreground background person cat dog tree house car",
]


def build_tokenizer() -> Any:
    """Train the BPE (deterministic) and wrap it in `Qwen2TokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import Qwen2TokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=BPE_VOCAB_SIZE,
        special_tokens=SPECIAL_TOKENS,
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
        additional_special_tokens=SPECIAL_TOKENS[1:],
    )


def special_token_ids(tokenizer: Any) -> dict[str, int]:
    return {t: tokenizer.convert_tokens_to_ids(t) for t in SPECIAL_TOKENS}
