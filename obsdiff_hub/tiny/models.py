"""Tiny random-weight models and pipelines with the real diffusers architectures.

No weights can be downloaded in tests or CI, so these build every supported family
from configs (same module types as SDXL, SD2.1, SD3, SD3.5-Large/-Medium and Flux,
only narrower) and write their own tokenizers to local files. Head size is kept
uniform within a model, as in the real ones.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import torch
from diffusers import (
    AutoencoderKL,
    EulerDiscreteScheduler,
    FlowMatchEulerDiscreteScheduler,
    FluxPipeline,
    FluxTransformer2DModel,
    PNDMScheduler,
    SD3Transformer2DModel,
    StableDiffusion3Pipeline,
    StableDiffusionPipeline,
    StableDiffusionXLPipeline,
    UNet2DConditionModel,
)
from transformers import (
    CLIPTextConfig,
    CLIPTextModel,
    CLIPTextModelWithProjection,
    T5Config,
    T5EncoderModel,
)

from ..architectures.inputs import run_denoiser
from ..errors import InputError
from .tokenizers import make_clip_tokenizer, make_t5_tokenizer


def clip_text_config(
    hidden: int, projection: int, vocab_size: int, heads: int = 2, max_length: int = 77
) -> CLIPTextConfig:
    """A two-layer CLIP text encoder config for the project's own tokenizer (bos 0, eos/pad 1)."""
    return CLIPTextConfig(
        hidden_size=hidden,
        intermediate_size=2 * hidden,
        num_attention_heads=heads,
        num_hidden_layers=2,
        projection_dim=projection,
        vocab_size=vocab_size,
        max_position_embeddings=max_length,
        bos_token_id=0,
        eos_token_id=1,
        pad_token_id=1,
    )


def _t5_encoder(d_model: int, vocab_size: int) -> T5EncoderModel:
    config = T5Config(
        vocab_size=vocab_size,
        d_model=d_model,
        d_kv=8,
        d_ff=2 * d_model,
        num_layers=2,
        num_heads=2,
        relative_attention_num_buckets=8,
        pad_token_id=0,
        eos_token_id=1,
        decoder_start_token_id=0,
    )
    return T5EncoderModel(config)


# ------------------------------------------------------------------------------ denoisers


def tiny_sdxl_unet(cross_attention_dim: int = 64, text_embeds_dim: int = 32) -> UNet2DConditionModel:
    """SDXL-like: text_time added conditioning, 1- and 2-layer transformer stacks, GEGLU, head size 16."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 64),
        layers_per_block=1,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        attention_head_dim=(2, 4),  # diffusers' name for the number of heads
        transformer_layers_per_block=(1, 2),
        use_linear_projection=True,
        addition_embed_type="text_time",
        addition_time_embed_dim=8,
        projection_class_embeddings_input_dim=8 * 6 + text_embeds_dim,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=8,
    )


def tiny_sd21_unet(cross_attention_dim: int = 32) -> UNet2DConditionModel:
    """SD2.1-like: three cross-attention stages, linear projections, head size 16."""
    return UNet2DConditionModel(
        sample_size=16,
        in_channels=4,
        out_channels=4,
        block_out_channels=(32, 32, 64),
        layers_per_block=1,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        attention_head_dim=(2, 2, 4),
        use_linear_projection=True,
        cross_attention_dim=cross_attention_dim,
        norm_num_groups=8,
    )


def tiny_sd3_transformer(variant: str = "sd3", joint_attention_dim: int = 64) -> SD3Transformer2DModel:
    """SD3-like MMDiT (``sd3``), with qk RMS-norm (``sd35-large``), or dual attention (``sd35-medium``)."""
    extra: dict = {}
    if variant in ("sd35-large", "sd35-medium"):
        extra["qk_norm"] = "rms_norm"
    if variant == "sd35-medium":
        extra["dual_attention_layers"] = (0, 1, 2)
    elif variant not in ("sd3", "sd35-large"):
        raise InputError(f"unknown SD3 variant {variant!r}; choose sd3, sd35-large or sd35-medium")
    return SD3Transformer2DModel(
        sample_size=16,
        patch_size=2,
        in_channels=4,
        out_channels=4,
        num_layers=4,
        attention_head_dim=8,
        num_attention_heads=4,
        caption_projection_dim=32,
        joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=64,
        pos_embed_max_size=32,
        **extra,
    )


def tiny_flux_transformer(joint_attention_dim: int = 32) -> FluxTransformer2DModel:
    """Flux-like: two double-stream and two single-stream blocks, head size 8, RoPE axes 2+2+4."""
    return FluxTransformer2DModel(
        patch_size=1,
        in_channels=16,
        num_layers=2,
        num_single_layers=2,
        attention_head_dim=8,
        num_attention_heads=4,
        joint_attention_dim=joint_attention_dim,
        pooled_projection_dim=32,
        axes_dims_rope=(2, 2, 4),
    )


def _vae(latent_channels: int, flow: bool) -> AutoencoderKL:
    return AutoencoderKL(
        block_out_channels=(8, 16),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D", "DownEncoderBlock2D"),
        up_block_types=("UpDecoderBlock2D", "UpDecoderBlock2D"),
        latent_channels=latent_channels,
        norm_num_groups=8,
        sample_size=32,
        scaling_factor=1.5035 if flow else 0.13025,
        shift_factor=0.0609 if flow else None,
        use_quant_conv=not flow,
        use_post_quant_conv=not flow,
    )


# ------------------------------------------------------------------------------ pipelines


def tiny_sdxl_pipeline(seed: int = 0) -> StableDiffusionXLPipeline:
    torch.manual_seed(seed)
    tokenizer = make_clip_tokenizer()
    vocab = len(tokenizer)
    return _inference_mode(
        StableDiffusionXLPipeline(
            vae=_vae(4, flow=False),
            text_encoder=CLIPTextModel(clip_text_config(32, 32, vocab)),
            text_encoder_2=CLIPTextModelWithProjection(clip_text_config(32, 32, vocab)),
            tokenizer=tokenizer,
            tokenizer_2=make_clip_tokenizer(),
            unet=tiny_sdxl_unet(cross_attention_dim=64, text_embeds_dim=32),
            scheduler=EulerDiscreteScheduler(
                beta_start=0.00085,
                beta_end=0.012,
                beta_schedule="scaled_linear",
                timestep_spacing="leading",
                steps_offset=1,
            ),
        )
    )


def tiny_sd21_pipeline(seed: int = 0) -> StableDiffusionPipeline:
    """SD 2.1-base-like: one CLIP encoder and its PNDM scheduler (one warm-up call per trajectory)."""
    torch.manual_seed(seed)
    tokenizer = make_clip_tokenizer()
    return _inference_mode(
        StableDiffusionPipeline(
            vae=_vae(4, flow=False),
            text_encoder=CLIPTextModel(clip_text_config(32, 32, len(tokenizer))),
            tokenizer=tokenizer,
            unet=tiny_sd21_unet(cross_attention_dim=32),
            scheduler=PNDMScheduler(
                beta_start=0.00085, beta_end=0.012, beta_schedule="scaled_linear", skip_prk_steps=True, steps_offset=1
            ),
            safety_checker=None,
            feature_extractor=None,
            requires_safety_checker=False,
        )
    )


def tiny_sd3_pipeline(variant: str = "sd3", seed: int = 0) -> StableDiffusion3Pipeline:
    torch.manual_seed(seed)
    clip_tok, t5_tok = make_clip_tokenizer(), make_t5_tokenizer()
    return _inference_mode(
        StableDiffusion3Pipeline(
            transformer=tiny_sd3_transformer(variant, joint_attention_dim=64),
            scheduler=FlowMatchEulerDiscreteScheduler(shift=3.0),
            vae=_vae(4, flow=True),
            text_encoder=CLIPTextModelWithProjection(clip_text_config(32, 32, len(clip_tok))),
            tokenizer=clip_tok,
            text_encoder_2=CLIPTextModelWithProjection(clip_text_config(32, 32, len(clip_tok))),
            tokenizer_2=make_clip_tokenizer(),
            text_encoder_3=_t5_encoder(64, len(t5_tok)),
            tokenizer_3=t5_tok,
        )
    )


def tiny_flux_pipeline(seed: int = 0) -> FluxPipeline:
    torch.manual_seed(seed)
    clip_tok, t5_tok = make_clip_tokenizer(), make_t5_tokenizer()
    return _inference_mode(
        FluxPipeline(
            scheduler=FlowMatchEulerDiscreteScheduler(),
            vae=_vae(4, flow=True),
            text_encoder=CLIPTextModel(clip_text_config(32, 32, len(clip_tok))),
            tokenizer=clip_tok,
            text_encoder_2=_t5_encoder(32, len(t5_tok)),
            tokenizer_2=t5_tok,
            transformer=tiny_flux_transformer(joint_attention_dim=32),
        )
    )


TINY_DENOISERS = {
    "sdxl": tiny_sdxl_unet,
    "sd21": tiny_sd21_unet,
    "sd3": lambda: tiny_sd3_transformer("sd3"),
    "sd35-large": lambda: tiny_sd3_transformer("sd35-large"),
    "sd35-medium": lambda: tiny_sd3_transformer("sd35-medium"),
    "flux": tiny_flux_transformer,
}

TINY_PIPELINES = {
    "sd21": tiny_sd21_pipeline,
    "sdxl": tiny_sdxl_pipeline,
    "sd3": tiny_sd3_pipeline,
    "sd35-large": lambda seed=0: tiny_sd3_pipeline("sd35-large", seed),
    "flux": tiny_flux_pipeline,
}


def toy_calibration(batches: list[dict], steps: int):
    """A ``calibrate(model, set_step)`` callable: ``steps`` denoiser calls per batch, timesteps 999 → 0.

    Not a sampler: a deterministic stand-in for tests and custom models.
    """
    timesteps = torch.linspace(999, 0, steps).tolist()

    def calibrate(model: torch.nn.Module, set_step) -> None:
        for inputs in batches:
            for i, t in enumerate(timesteps):
                set_step(i)
                run_denoiser(model, inputs, t)

    return calibrate


def _inference_mode(pipeline):
    """Built from configs, modules start in training mode (T5's dropout is 0.1); loaders use eval."""
    for component in pipeline.components.values():
        if isinstance(component, torch.nn.Module):
            component.eval()
    return pipeline


def save_tiny_pipeline(name: str, directory: str | Path | None = None, seed: int = 0) -> Path:
    """Build a tiny pipeline and save it in the diffusers layout (so it loads via ``from_pretrained``)."""
    if name not in TINY_PIPELINES:
        raise InputError(f"unknown tiny pipeline {name!r}; choose one of {', '.join(TINY_PIPELINES)}")
    target = Path(directory) if directory else Path(tempfile.mkdtemp(prefix=f"tiny-{name}-"))
    TINY_PIPELINES[name](seed=seed).save_pretrained(target)
    return target
