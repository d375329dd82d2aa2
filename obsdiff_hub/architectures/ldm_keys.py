"""A diffusers UNet's parameter names in the original (LDM / SGM) single-file layout, the one ComfyUI, A1111 /
Forge, InvokeAI and diffusers' own ``from_single_file`` read: the inverse of diffusers'
``convert_ldm_unet_checkpoint``, which the tests hold it to.

The top-level layers come from diffusers' own table (``DIFFUSERS_TO_LDM_MAPPING``); the blocks follow the
LDM numbering: input block ``b·(L+1) + l + 1`` is down block ``b``'s layer ``l`` (``L`` layers per block, the
downsampler closing each level), the middle block alternates resnets and the attention, output block
``b·(L+1) + l`` is up block ``b``'s layer ``l``. Attention modules keep their inner names.
"""

from __future__ import annotations

from typing import Any, Mapping

import torch
from diffusers.loaders.single_file_utils import DIFFUSERS_TO_LDM_MAPPING, LDM_UNET_KEY

from ..errors import InputError

RESNET_NAMES = (  # diffusers → LDM, inside a resnet
    ("norm1", "in_layers.0"),
    ("conv1", "in_layers.2"),
    ("norm2", "out_layers.0"),
    ("conv2", "out_layers.3"),
    ("time_emb_proj", "emb_layers.1"),
    ("conv_shortcut", "skip_connection"),
)


def _resnet(rest: str) -> str:
    head, _, tail = rest.partition(".")
    return dict(RESNET_NAMES).get(head, head) + (f".{tail}" if tail else "")


def _top_level(config: Mapping[str, Any]) -> dict[str, str]:
    table = dict(DIFFUSERS_TO_LDM_MAPPING["unet"]["layers"])
    if config.get("class_embed_type") in ("timestep", "projection"):
        table.update(DIFFUSERS_TO_LDM_MAPPING["unet"]["class_embed_type"])
    if config.get("addition_embed_type") == "text_time":
        table.update(DIFFUSERS_TO_LDM_MAPPING["unet"]["addition_embed_type"])
    return table


def ldm_name(key: str, config: Mapping[str, Any], up_attentions: set[int]) -> str:
    """One diffusers UNet parameter name in the LDM layout (without the ``model.diffusion_model.`` prefix).
    ``up_attentions``: the up blocks that have attentions (their upsampler sits one slot later)."""
    top = _top_level(config)
    if key in top:
        return top[key]
    per_level = int(config["layers_per_block"]) + 1
    parts = key.split(".")
    if parts[0] == "down_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"input_blocks.{block * per_level + index + 1}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"input_blocks.{block * per_level + index + 1}.1.{rest}"
        if kind == "downsamplers":
            return f"input_blocks.{(block + 1) * per_level}.0.op.{rest.removeprefix('conv.')}"
    if parts[0] == "mid_block":
        kind, index, rest = parts[1], int(parts[2]), ".".join(parts[3:])
        if kind == "resnets":
            return f"middle_block.{2 * index}.{_resnet(rest)}"
        if kind == "attentions":
            return f"middle_block.1.{rest}"
    if parts[0] == "up_blocks":
        block, kind, index, rest = int(parts[1]), parts[2], int(parts[3]), ".".join(parts[4:])
        if kind == "resnets":
            return f"output_blocks.{block * per_level + index}.0.{_resnet(rest)}"
        if kind == "attentions":
            return f"output_blocks.{block * per_level + index}.1.{rest}"
        if kind == "upsamplers":
            slot = 2 if block in up_attentions else 1
            return f"output_blocks.{block * per_level + per_level - 1}.{slot}.{rest}"
    raise InputError(f"no single-file name for UNet parameter {key!r}; this UNet layout cannot be exported")


def unet_to_ldm(state_dict: Mapping[str, torch.Tensor], config: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """``state_dict`` (a diffusers UNet's) under LDM names, prefixed ``model.diffusion_model.``: the same tensors."""
    up_attentions = {int(k.split(".")[1]) for k in state_dict if k.startswith("up_blocks.") and ".attentions." in k}
    return {LDM_UNET_KEY + ldm_name(key, config, up_attentions): tensor for key, tensor in state_dict.items()}
