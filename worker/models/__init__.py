"""Random-weight stand-ins for the Qwen-Image models, built offline from the real classes.

One recipe for every size: `tiny` (saved with `save_pretrained`, loaded back through `from_pretrained`,
a few MB, seconds a job on CPU), `small` (in-process, for the acceleration tests), and `full` (the real
architecture, built directly on a GPU in bf16 for timing and memory). Two pipeline kinds share the
tokenizer, processor and Qwen2.5-VL text encoder: `layered` (QwenImageLayeredPipeline) and `edit`
(QwenImageEditPlusPipeline). Importing this package imports neither torch nor diffusers.
"""

from worker.models.build import (
    MODEL_RECIPE_VERSION,
    build_components,
    build_edit,
    build_layered,
    ensure_cached,
    save,
)

__all__ = [
    "MODEL_RECIPE_VERSION",
    "build_components",
    "build_edit",
    "build_layered",
    "ensure_cached",
    "save",
]
