"""Physical removal of heads and neurons: rewrites Linear shapes and the attention attributes.

Used by the engine after a structured solve (with the kept indices) and by the loaders
to rebuild pruned shapes from config (with ``keep = arange(count)`` on the meta device).
"""

from __future__ import annotations

import torch
from torch import nn

from ..errors import InputError
from .base import Architecture, HeadCoupling, NeuronCoupling


def sliced_linear(linear: nn.Linear, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> nn.Linear:
    """A new Linear holding ``rows`` of the weight (and bias) and ``cols`` of its inputs; no dense copy is kept."""
    weight = linear.weight
    if rows is not None:
        weight = weight.index_select(0, rows.to(weight.device))
    if cols is not None:
        weight = weight.index_select(1, cols.to(weight.device))
    bias = linear.bias
    if bias is not None and rows is not None:
        bias = bias.index_select(0, rows.to(bias.device))
    new = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None, device="meta", dtype=weight.dtype)
    new.weight = nn.Parameter(weight.detach().contiguous(), requires_grad=linear.weight.requires_grad)
    if bias is not None:
        new.bias = nn.Parameter(bias.detach().contiguous(), requires_grad=linear.bias.requires_grad)
    return new


def _replace(model: nn.Module, path: str, rows: torch.Tensor | None = None, cols: torch.Tensor | None = None) -> None:
    model.set_submodule(path, sliced_linear(model.get_submodule(path), rows, cols))


def keep_heads(model: nn.Module, coupling: HeadCoupling, keep: torch.Tensor) -> None:
    """Keep only the heads ``keep`` (sorted indices) of one attention module.

    Head j is rows ``j·d … j·d+d−1`` of every q/k/v projection and the same leading
    columns of every output projection; columns past ``heads·d`` (Flux's MLP branch
    in ``proj_out``) are untouched. ``heads``, ``inner_dim``, ``inner_kv_dim`` and
    ``sliceable_head_dim`` are updated because processors derive the head size from them.
    """
    attn = model.get_submodule(coupling.attention)
    d = coupling.head_dim
    if len(keep) < 1:
        raise InputError(f"{coupling.attention}: at least one head must remain")
    head_cols = (keep.unsqueeze(1) * d + torch.arange(d)).flatten()
    for path in coupling.row_layers:
        _replace(model, path, rows=head_cols)
    for path in coupling.out_layers:
        width = model.get_submodule(path).in_features
        _replace(model, path, cols=torch.cat([head_cols, torch.arange(attn.heads * d, width)]))
    attn.heads = len(keep)
    attn.inner_dim = len(keep) * d
    for name in ("inner_kv_dim",):
        if hasattr(attn, name):
            setattr(attn, name, len(keep) * d)
    if hasattr(attn, "sliceable_head_dim"):
        attn.sliceable_head_dim = len(keep)


def keep_neurons(model: nn.Module, coupling: NeuronCoupling, keep: torch.Tensor) -> None:
    """Keep only the hidden neurons ``keep`` of one MLP.

    Neuron j is row j of the input projection (rows j and j+width for GEGLU, whose
    projection stacks value and gate halves) and the j-th of the output projection's
    trailing ``width`` columns (Flux's ``proj_out`` puts the attention heads first).
    """
    if len(keep) < 1:
        raise InputError(f"{coupling.owner}: at least one neuron must remain")
    in_layer = model.get_submodule(coupling.in_layer)
    width = in_layer.out_features // 2 if coupling.geglu else in_layer.out_features
    rows = torch.cat([keep, keep + width]) if coupling.geglu else keep
    _replace(model, coupling.in_layer, rows=rows)
    offset = model.get_submodule(coupling.out_layer).in_features - width
    _replace(model, coupling.out_layer, cols=torch.cat([torch.arange(offset), offset + keep]))
    owner = model.get_submodule(coupling.owner)
    if hasattr(owner, "mlp_hidden_dim"):
        owner.mlp_hidden_dim = len(keep)


def structure_of(model: nn.Module, architecture: Architecture) -> dict[str, int]:
    """Heads per attention and hidden width per MLP, keyed by module path (what config.json records)."""
    return {c.key: c.count(model) for c in architecture.couplings(model)}


def apply_structure(model: nn.Module, architecture: Architecture, structure: dict[str, int]) -> None:
    """Shrink a dense skeleton to the recorded shapes, keeping the leading heads/neurons.

    Weights are not meaningful afterwards (loaders fill them); on the meta device nothing
    is allocated.
    """
    couplings = {c.key: c for c in architecture.couplings(model)}
    unknown = sorted(set(structure) - set(couplings))
    if unknown:
        raise InputError(
            f"pruned structure names modules this {architecture.model_class_name} does not have: "
            f"{', '.join(unknown[:3])}"
        )
    for key, count in structure.items():
        c = couplings[key]
        dense = c.count(model)
        if not isinstance(count, int) or isinstance(count, bool) or not 1 <= count <= dense:
            raise InputError(f"{key}: pruned size {count} must be between 1 and the dense {dense}")
        if count == dense:
            continue
        if isinstance(c, HeadCoupling):
            keep_heads(model, c, torch.arange(count))
        else:
            keep_neurons(model, c, torch.arange(count))
