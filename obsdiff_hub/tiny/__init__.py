"""Tiny random-weight models and pipelines of every supported family, and their tokenizers.

No weights can be downloaded in tests or CI, so these build each family from configs with
the real diffusers module types, only narrower, and write their own tokenizers.
"""

from ..architectures.inputs import example_inputs, run_denoiser
from .models import (
    TINY_DENOISERS,
    TINY_PIPELINES,
    clip_text_config,
    save_tiny_pipeline,
    tiny_flux_pipeline,
    tiny_flux_transformer,
    tiny_sd3_pipeline,
    tiny_sd3_transformer,
    tiny_sd21_pipeline,
    tiny_sd21_unet,
    tiny_sdxl_pipeline,
    tiny_sdxl_unet,
    toy_calibration,
)
from .tokenizers import (
    TOKENIZER_WORDS,
    clip_vocab,
    make_clip_tokenizer,
    make_t5_tokenizer,
)

__all__ = [
    "TINY_DENOISERS",
    "TINY_PIPELINES",
    "TOKENIZER_WORDS",
    "clip_text_config",
    "clip_vocab",
    "example_inputs",
    "make_clip_tokenizer",
    "make_t5_tokenizer",
    "run_denoiser",
    "save_tiny_pipeline",
    "tiny_flux_pipeline",
    "tiny_flux_transformer",
    "tiny_sd3_pipeline",
    "tiny_sd3_transformer",
    "tiny_sd21_pipeline",
    "tiny_sd21_unet",
    "tiny_sdxl_pipeline",
    "tiny_sdxl_unet",
    "toy_calibration",
]
