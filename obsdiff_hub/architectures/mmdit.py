"""SD3 / SD3.5 MMDiT: every ``JointTransformerBlock`` (joint attention, optional dual attention)."""

from __future__ import annotations

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

ADDED_QKV = ("add_q_proj", "add_k_proj", "add_v_proj")


def joint_block_units(model: nn.Module, path: str, structured: bool) -> list[BasicUnit]:
    """Units of a two-stream block (SD3 ``JointTransformerBlock``, Flux ``FluxTransformerBlock``).

    Image and text streams have independent inputs in one forward, so their layers
    share a unit: q/k/v + add_q/k/v (+ SD3.5-Medium's ``attn2``), the output
    projections, the FFN inputs, the FFN outputs. The last SD3 block is
    context-pre-only: no ``to_add_out`` and no ``ff_context``.
    """
    block = model.get_submodule(path)
    attns = [f"{path}.{n}" for n in ("attn", "attn2") if getattr(block, n, None) is not None]
    ffs = [f"{path}.{n}" for n in ("ff", "ff_context") if getattr(block, n, None) is not None]
    if structured:
        head_sites = []
        for a in attns:
            heads = head_coupling(model, a, QKV + ADDED_QKV, ("to_out.0", "to_add_out"))
            head_sites.append(StructuredSite(heads.out_layers, heads=heads))
        neuron_sites = []
        for f in ffs:
            neurons = feed_forward_coupling(model, f)
            neuron_sites.append(StructuredSite((neurons.out_layer,), neurons=neurons))
        return [head_sites, neuron_sites]
    qkv_unit, out_unit = [], []
    for a in attns:
        attn = model.get_submodule(a)
        for names in (QKV, ADDED_QKV):
            present = tuple(f"{a}.{n}" for n in names if has(attn, n))
            if present:
                qkv_unit.append(LinearSite(present))
        out_unit += [LinearSite((f"{a}.{n}",)) for n in ("to_out.0", "to_add_out") if has(attn, n)]
    ff_in, ff_out = feed_forward_sites(ffs)
    return [qkv_unit, out_unit, ff_in, ff_out]


class MMDiTArchitecture(Architecture):
    family = "mmdit"
    model_class_name = "SD3Transformer2DModel"

    def blocks(self, model: nn.Module) -> list[str]:
        return [f"transformer_blocks.{i}" for i in range(len(model.transformer_blocks))]

    def block_units(self, model: nn.Module, path: str, structured: bool) -> list[BasicUnit]:
        return joint_block_units(model, path, structured)
