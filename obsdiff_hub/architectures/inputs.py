"""Forward inputs per denoiser family, for calibration stand-ins, tests and FLOP counting."""

from __future__ import annotations

import torch
from diffusers import (
    FluxTransformer2DModel,
    SD3Transformer2DModel,
    UNet2DConditionModel,
)

from ..errors import InputError


def example_inputs(
    model: torch.nn.Module, batch: int = 2, seed: int = 0, latent_size: int | None = None, tokens: int = 7
) -> dict[str, torch.Tensor]:
    """Seeded random forward inputs for a denoiser of any supported family (timestep excluded).

    ``latent_size``: latent side (image side / 8; default the config's ``sample_size``, or 8
    for Flux, which packs 2×2 latent patches into one token). ``tokens``: text length.
    Works under ``FakeTensorMode`` too (planning).
    """
    g = torch.Generator().manual_seed(seed)
    cfg = model.config
    side = latent_size or cfg.get("sample_size") or 8
    dtype = next(model.parameters()).dtype

    def randn(*shape: int) -> torch.Tensor:
        return torch.randn(*shape, generator=g).to(dtype)

    if isinstance(model, UNet2DConditionModel):
        inputs = {
            "sample": randn(batch, cfg.in_channels, side, side),
            "encoder_hidden_states": randn(batch, tokens, cfg.cross_attention_dim),
        }
        if cfg.addition_embed_type == "text_time":
            text_dim = cfg.projection_class_embeddings_input_dim - 6 * cfg.addition_time_embed_dim
            inputs["added_cond_kwargs"] = {"text_embeds": randn(batch, text_dim), "time_ids": randn(batch, 6)}
        return inputs
    if isinstance(model, SD3Transformer2DModel):
        return {
            "hidden_states": randn(batch, cfg.in_channels, side, side),
            "encoder_hidden_states": randn(batch, tokens, cfg.joint_attention_dim),
            "pooled_projections": randn(batch, cfg.pooled_projection_dim),
        }
    if isinstance(model, FluxTransformer2DModel):
        packed = side // 2
        ids = torch.stack(
            torch.meshgrid(torch.zeros(1), torch.arange(float(packed)), torch.arange(float(packed)), indexing="ij"), -1
        )
        inputs = {
            "hidden_states": randn(batch, packed * packed, cfg.in_channels),
            "encoder_hidden_states": randn(batch, tokens, cfg.joint_attention_dim),
            "pooled_projections": randn(batch, cfg.pooled_projection_dim),
            "img_ids": ids.reshape(-1, 3).to(dtype),
            "txt_ids": torch.zeros(tokens, 3, dtype=dtype),
        }
        if cfg.guidance_embeds:
            inputs["guidance"] = torch.full((batch,), 3.5)
        return inputs
    raise InputError(f"no example inputs for {type(model).__name__}")


def run_denoiser(model: torch.nn.Module, inputs: dict, timestep: float) -> torch.Tensor:
    """One forward pass with the family's timestep argument name; returns the prediction."""
    batch = inputs["encoder_hidden_states"].shape[0]
    t = torch.full((batch,), timestep)
    if isinstance(model, FluxTransformer2DModel):
        t = t / 1000  # Flux takes timesteps in [0, 1]
    return model(**inputs, timestep=t, return_dict=False)[0]
