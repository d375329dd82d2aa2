"""Which pipeline component is the denoiser, and the image sizes a pipeline is made for.

Every command that takes a resolution defaults to the pipeline's own (``sample_size`` latents
times the VAE's pixels per latent: 1024 for SDXL, SD3 and Flux, 768 for SD 2.1, 32 for the
embedded shapes model), and checks a given one against the multiple the denoiser needs.
"""

from __future__ import annotations

from typing import Any, Mapping

from torch import nn

from ..errors import InputError
from . import architecture_of

TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")
DENOISERS = ("unet", "transformer")
# Flux configs carry no sample_size; its pipelines default to 128 latents, like SDXL and SD3.
DEFAULT_SAMPLE_SIZE = 128


def denoiser_name(pipeline: Any) -> str:
    """The pipeline's denoiser component: ``unet`` for SD/SDXL, ``transformer`` for SD3 and Flux."""
    for name in DENOISERS:
        if isinstance(getattr(pipeline, name, None), nn.Module):
            return name
    raise InputError(f"{type(pipeline).__name__} has no unet or transformer to prune")


def denoiser_of(pipeline: Any) -> nn.Module:
    return getattr(pipeline, denoiser_name(pipeline))


def vae_scale_factor(vae_config: Mapping[str, Any] | None) -> int:
    """Pixels per latent, as diffusers' pipelines compute it (``2 ** (len(block_out_channels) - 1)``);
    8, the factor of every supported family, when there is no VAE config to read."""
    channels = (vae_config or {}).get("block_out_channels")
    if not isinstance(channels, (list, tuple)) or not 1 <= len(channels) <= 8:
        return 8
    return 2 ** (len(channels) - 1)


def pipeline_vae_scale(pipeline: Any) -> int:
    vae = getattr(pipeline, "vae", None)
    return vae_scale_factor(dict(vae.config) if vae is not None else None)


def default_resolution(denoiser_config: Mapping[str, Any], scale: int) -> int:
    """The image side the pipeline samples at by default: its ``sample_size`` latents × ``scale``."""
    return int(denoiser_config.get("sample_size") or DEFAULT_SAMPLE_SIZE) * scale


def resolution_multiple(denoiser: nn.Module, scale: int) -> int:
    """Image sides the denoiser accepts are multiples of this: the VAE factor times the patch size
    and the latent packing (Flux packs 2×2 latents into a token), or for a UNet times its downsampling."""
    config = denoiser.config
    if config.get("patch_size"):
        return scale * int(config["patch_size"]) * architecture_of(denoiser).latent_packing
    return scale * 2 ** (len(config["block_out_channels"]) - 1)


def check_resolution(resolution: int, multiple: int) -> int:
    """``resolution`` if it is a positive multiple of ``multiple``, else an :class:`InputError`."""
    if resolution <= 0 or resolution % multiple:
        raise InputError(f"`resolution` must be a positive multiple of {multiple} for this model, got {resolution}")
    return resolution
