"""Flux.1: double-stream blocks (as MMDiT) then single-stream blocks (parallel attention + MLP)."""

from __future__ import annotations

from torch import nn

from .base import (
    QKV,
    Architecture,
    BasicUnit,
    HeadCoupling,
    LinearSite,
    NeuronCoupling,
    StructuredSite,
)
from .mmdit import joint_block_units


class FluxArchitecture(Architecture):
    family = "flux"
    model_class_name = "FluxTransformer2DModel"
    latent_packing = 2

    def blocks(self, model: nn.Module) -> list[str]:
        double = [f"transformer_blocks.{i}" for i in range(len(model.transformer_blocks))]
        return double + [f"single_transformer_blocks.{i}" for i in range(len(model.single_transformer_blocks))]

    def block_units(self, model: nn.Module, path: str, structured: bool) -> list[BasicUnit]:
        if path.startswith("transformer_blocks."):
            return joint_block_units(model, path, structured)
        # Single block: q, k, v and proj_mlp read the same normed tokens; proj_out reads
        # cat([attention heads, MLP neurons]), so heads are its leading columns, neurons the rest.
        block = model.get_submodule(path)
        attn = block.attn
        rows = tuple(f"{path}.attn.{n}" for n in QKV)
        if not structured:
            return [[LinearSite(rows + (f"{path}.proj_mlp",))], [LinearSite((f"{path}.proj_out",))]]
        out = (f"{path}.proj_out",)
        heads = HeadCoupling(f"{path}.attn", rows, out, attn.heads, attn.inner_dim // attn.heads)
        neurons = NeuronCoupling(path, f"{path}.proj_mlp", out[0], block.proj_mlp.out_features, geglu=False)
        return [[StructuredSite(out, heads=heads, neurons=neurons)]]
