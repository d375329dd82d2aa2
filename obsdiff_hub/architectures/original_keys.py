"""A diffusers MMDiT's or Flux transformer's parameters in the original single-file layout (Stability's SD3 / SD3.5
files, Black Forest Labs' Flux files), the one ComfyUI, Forge, InvokeAI and diffusers' ``from_single_file`` read:
the inverse of diffusers' ``convert_sd3_transformer_checkpoint_to_diffusers`` and
``convert_flux_transformer_checkpoint_to_diffusers``, which the tests hold it to.

Three things differ from diffusers' names. The originals fuse projections into one tensor along its rows: q, k
and v of each stream (``qkv``), and in a Flux single block q, k, v and the MLP input (``linear1``). They split an
``AdaLayerNormContinuous`` projection as (shift, scale) where diffusers splits (scale, shift), so those halves
swap. And Flux's RMS norms call their weight ``scale``. Reading a file back splits each fused tensor by the
target model's own row counts, so a structurally pruned model (fewer heads, narrower MLPs) round-trips exactly;
diffusers' Flux reader assumes the dense widths (3072, 12288) and reads only unpruned widths.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

import torch
from diffusers.models.normalization import AdaLayerNormContinuous
from torch import nn

from ..errors import CheckpointError, InputError

Rule = str | tuple[str, int]  # an original name, or (fused original name, position along its rows)


def _qkv(original: str, names: tuple[str, ...]) -> dict[str, Rule]:
    return {name: (original, i) for i, name in enumerate(names)}


QKV = ("attn.to_q", "attn.to_k", "attn.to_v")
ADDED_QKV = ("attn.add_q_proj", "attn.add_k_proj", "attn.add_v_proj")


@dataclass(frozen=True)
class OriginalLayout:
    """How one family's diffusers parameter names map onto its original file: ``top`` for the embedders and the
    final layer, ``blocks`` per diffusers block list (its original list name and the rules inside a block).
    A rule matches a full parameter name first (a renamed parameter), else the module path."""

    prefix: str
    top: Mapping[str, Rule]
    blocks: Mapping[str, tuple[str, Mapping[str, Rule]]]

    def locate(self, key: str) -> tuple[str, int]:
        """(original tensor name, position of ``key``'s rows in it) for one diffusers parameter name."""
        block_list, index, rest = (key.split(".", 2) + ["", ""])[:3]
        if block_list in self.blocks and index.isdigit():
            original, rules = self.blocks[block_list]
            head = f"{original}.{index}."
        else:
            head, rules, rest = "", self.top, key
        path, _, param = rest.rpartition(".")
        rule, suffix = (rules[rest], "") if rest in rules else (rules.get(path), f".{param}")
        if rule is None:
            raise InputError(f"no single-file name for parameter {key!r}; this model layout cannot be exported")
        name, position = (rule, 0) if isinstance(rule, str) else rule
        return f"{self.prefix}{head}{name}{suffix}", position


SD3_LAYOUT = OriginalLayout(
    prefix="model.diffusion_model.",
    top={
        "pos_embed.pos_embed": "pos_embed",
        "pos_embed.proj": "x_embedder.proj",
        "time_text_embed.timestep_embedder.linear_1": "t_embedder.mlp.0",
        "time_text_embed.timestep_embedder.linear_2": "t_embedder.mlp.2",
        "time_text_embed.text_embedder.linear_1": "y_embedder.mlp.0",
        "time_text_embed.text_embedder.linear_2": "y_embedder.mlp.2",
        "context_embedder": "context_embedder",
        "proj_out": "final_layer.linear",
        "norm_out.linear": "final_layer.adaLN_modulation.1",
    },
    blocks={
        "transformer_blocks": (
            "joint_blocks",
            {
                **_qkv("x_block.attn.qkv", QKV),
                **_qkv("context_block.attn.qkv", ADDED_QKV),
                **_qkv("x_block.attn2.qkv", ("attn2.to_q", "attn2.to_k", "attn2.to_v")),
                "attn.norm_q": "x_block.attn.ln_q",
                "attn.norm_k": "x_block.attn.ln_k",
                "attn.norm_added_q": "context_block.attn.ln_q",
                "attn.norm_added_k": "context_block.attn.ln_k",
                "attn2.norm_q": "x_block.attn2.ln_q",
                "attn2.norm_k": "x_block.attn2.ln_k",
                "attn.to_out.0": "x_block.attn.proj",
                "attn.to_add_out": "context_block.attn.proj",
                "attn2.to_out.0": "x_block.attn2.proj",
                "norm1.linear": "x_block.adaLN_modulation.1",
                "norm1_context.linear": "context_block.adaLN_modulation.1",
                "ff.net.0.proj": "x_block.mlp.fc1",
                "ff.net.2": "x_block.mlp.fc2",
                "ff_context.net.0.proj": "context_block.mlp.fc1",
                "ff_context.net.2": "context_block.mlp.fc2",
            },
        )
    },
)

FLUX_LAYOUT = OriginalLayout(
    prefix="",  # Black Forest Labs' files carry no prefix; diffusers and ComfyUI read both
    top={
        "time_text_embed.timestep_embedder.linear_1": "time_in.in_layer",
        "time_text_embed.timestep_embedder.linear_2": "time_in.out_layer",
        "time_text_embed.text_embedder.linear_1": "vector_in.in_layer",
        "time_text_embed.text_embedder.linear_2": "vector_in.out_layer",
        "time_text_embed.guidance_embedder.linear_1": "guidance_in.in_layer",
        "time_text_embed.guidance_embedder.linear_2": "guidance_in.out_layer",
        "context_embedder": "txt_in",
        "x_embedder": "img_in",
        "proj_out": "final_layer.linear",
        "norm_out.linear": "final_layer.adaLN_modulation.1",
    },
    blocks={
        "transformer_blocks": (
            "double_blocks",
            {
                **_qkv("img_attn.qkv", QKV),
                **_qkv("txt_attn.qkv", ADDED_QKV),
                "norm1.linear": "img_mod.lin",
                "norm1_context.linear": "txt_mod.lin",
                "attn.norm_q.weight": "img_attn.norm.query_norm.scale",
                "attn.norm_k.weight": "img_attn.norm.key_norm.scale",
                "attn.norm_added_q.weight": "txt_attn.norm.query_norm.scale",
                "attn.norm_added_k.weight": "txt_attn.norm.key_norm.scale",
                "attn.to_out.0": "img_attn.proj",
                "attn.to_add_out": "txt_attn.proj",
                "ff.net.0.proj": "img_mlp.0",
                "ff.net.2": "img_mlp.2",
                "ff_context.net.0.proj": "txt_mlp.0",
                "ff_context.net.2": "txt_mlp.2",
            },
        ),
        "single_transformer_blocks": (
            "single_blocks",
            {
                **_qkv("linear1", (*QKV, "proj_mlp")),
                "norm.linear": "modulation.lin",
                "attn.norm_q.weight": "norm.query_norm.scale",
                "attn.norm_k.weight": "norm.key_norm.scale",
                "proj_out": "linear2",
            },
        ),
    },
)

LAYOUTS = {"SD3Transformer2DModel": SD3_LAYOUT, "FluxTransformer2DModel": FLUX_LAYOUT}


def _swapped(model: nn.Module) -> set[str]:
    """The projections whose (scale, shift) halves the original layout stores as (shift, scale)."""
    return {f"{name}.linear" for name, module in model.named_modules() if isinstance(module, AdaLayerNormContinuous)}


def _swap_halves(tensor: torch.Tensor) -> torch.Tensor:
    first, second = tensor.chunk(2, dim=0)
    return torch.cat([second, first])


def _groups(layout: OriginalLayout, keys: list[str]) -> dict[str, list[str]]:
    """Per original tensor, the diffusers parameters it holds, in row order."""
    located: dict[str, list[tuple[int, str]]] = {}
    for key in keys:
        name, position = layout.locate(key)
        located.setdefault(name, []).append((position, key))
    return {name: [key for _, key in sorted(parts)] for name, parts in located.items()}


def to_original(model: nn.Module, layout: OriginalLayout) -> dict[str, torch.Tensor]:
    """``model``'s weights under the original names, fused and swapped as the original files store them."""
    state, swapped = model.state_dict(), _swapped(model)
    tensors = {}
    for name, keys in _groups(layout, list(state)).items():
        parts = [_swap_halves(state[k]) if k.rpartition(".")[0] in swapped else state[k] for k in keys]
        tensors[name] = (torch.cat(parts) if len(parts) > 1 else parts[0]).contiguous()
    return tensors


def from_original(
    tensors: Mapping[str, torch.Tensor], model: nn.Module, layout: OriginalLayout
) -> dict[str, torch.Tensor]:
    """The diffusers state dict of ``model`` (its shapes: pruned or not) read from original-layout ``tensors``;
    a missing, extra or wrongly sized tensor is a :class:`CheckpointError` naming it."""
    shapes = {key: value.shape for key, value in model.state_dict().items()}
    groups, swapped = _groups(layout, list(shapes)), _swapped(model)
    extra = sorted(set(tensors) - set(groups))
    missing = sorted(set(groups) - set(tensors))
    model_name = type(model).__name__
    if extra:
        raise CheckpointError(f"holds {extra[0]}, which this {model_name} has no parameter for")
    if missing:
        raise CheckpointError(f"lacks {missing[0]}, which this {model_name} needs")
    state = {}
    for name, keys in groups.items():
        rows = [shapes[k][0] if len(shapes[k]) else 1 for k in keys]
        tensor = tensors[name]
        if tensor.ndim == 0 or tensor.shape[0] != sum(rows) or (len(keys) == 1 and tensor.shape != shapes[keys[0]]):
            raise CheckpointError(f"{name} has shape {tuple(tensor.shape)}, the model's config needs {sum(rows)} rows")
        for key, part in zip(keys, tensor.split(rows) if len(keys) > 1 else [tensor]):
            state[key] = _swap_halves(part) if key.rpartition(".")[0] in swapped else part
    return state
