"""SD 2.1 / SDXL UNets: every ``BasicTransformerBlock`` (attn1 self, attn2 cross, GEGLU FFN)."""

from __future__ import annotations

from diffusers.models.attention import BasicTransformerBlock
from torch import nn

from .base import (
    QKV,
    Architecture,
    BasicUnit,
    LinearSite,
    StructuredSite,
    feed_forward_coupling,
    feed_forward_sites,
    has,
    head_coupling,
)


class UNetArchitecture(Architecture):
    family = "unet"
    model_class_name = "UNet2DConditionModel"

    def blocks(self, model: nn.Module) -> list[str]:
        # Registration order is down, up, mid; the forward order is down, mid, up.
        stage = {"down_blocks": 0, "mid_block": 1, "up_blocks": 2}
        paths = [p for p, m in model.named_modules() if isinstance(m, BasicTransformerBlock)]
        return sorted(paths, key=lambda p: stage[p.split(".")[0]])

    def block_units(self, model: nn.Module, path: str, structured: bool) -> list[BasicUnit]:
        block = model.get_submodule(path)
        attns = [name for name in ("attn1", "attn2") if getattr(block, name, None) is not None]
        if structured:
            units: list[BasicUnit] = []
            for name in attns:
                heads = head_coupling(model, f"{path}.{name}", QKV, ("to_out.0",))
                units.append([StructuredSite(heads.out_layers, heads=heads)])
            neurons = feed_forward_coupling(model, f"{path}.ff")
            units.append([StructuredSite((neurons.out_layer,), neurons=neurons)])
            return units
        units = []
        for name in attns:
            attn = block.get_submodule(name)
            a = f"{path}.{name}"
            if attn.is_cross_attention:  # q reads the image tokens, k/v the text embeddings
                units.append([LinearSite((f"{a}.to_q",)), LinearSite((f"{a}.to_k", f"{a}.to_v"))])
            else:
                units.append([LinearSite(tuple(f"{a}.{n}" for n in QKV if has(attn, n)))])
            units.append([LinearSite((f"{a}.to_out.0",))])
        ff_in, ff_out = feed_forward_sites([f"{path}.ff"])
        return units + [ff_in, ff_out]


class ControlNetArchitecture(UNetArchitecture):
    """A ControlNet made from a UNet: a copy of its encoder half (down blocks and mid block), with the same
    blocks and couplings at the same paths. Not a pruning target: it takes the pruned UNet's shapes."""

    model_class_name = "ControlNetModel"
