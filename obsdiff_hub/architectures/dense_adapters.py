"""Adapters made for the dense base (LoRA, IP-Adapter) mapped onto a structurally pruned model.

Removing heads and neurons removed rows of q/k/v, add_q/k/v, the MLP inputs and columns of the
output projections (:mod:`.kept`). A dense LoRA's ``lora_B`` (and its bias and DoRA magnitude)
restricted to the kept rows is exactly the dense adapter's effect on the kept heads and neurons;
``lora_A`` restricted to the kept columns is its natural mapping on the compensated output layers.
A tensor that already has the pruned shape (an adapter trained on the pruned model) is left as it
is; one that fits neither is a one-line error naming it.
"""

from __future__ import annotations

from typing import Mapping

import torch
from torch import nn

from ..errors import CheckpointError, InputError
from .kept import Selection
from .surgery import sliced_linear

ROW_PARTS = (".lora_B.", ".lora_magnitude_vector")  # indexed by the layer's output rows
COL_PARTS = (".lora_A.",)  # indexed by the layer's input columns
UNRECORDED = (
    "this checkpoint does not record which heads and neurons pruning kept (it was saved before obsdiff-hub 0.3), "
    "so adapters made for the dense base cannot be mapped onto it; prune the base again with obsdiff-hub 0.3 or later"
)


def _lora_site(key: str) -> tuple[str, int] | None:
    """(module path, axis the tensor shares with the layer) of a peft-format LoRA key, else None."""
    for parts, axis in ((ROW_PARTS, 0), (COL_PARTS, 1)):
        for part in parts:
            if part in key or key.endswith(part.rstrip(".")):
                return key.split(part.rstrip("."))[0], axis
    return None


def map_lora_state_dict(
    state_dict: Mapping[str, torch.Tensor],
    model: nn.Module,
    selections: Mapping[str, Selection],
    prefix: str | None,
    recorded: bool,
) -> dict[str, torch.Tensor]:
    """``state_dict`` (peft format, keys optionally under ``prefix.``) with every tensor made for the
    dense base restricted to the rows or columns the pruned layer kept.

    ``recorded``: whether the model records its kept indices (older structured checkpoints do not).
    """
    mapped: dict[str, torch.Tensor] = {}
    for key, tensor in state_dict.items():
        name = key.removeprefix(f"{prefix}.") if prefix else key
        site = _lora_site(name) if not prefix or key.startswith(f"{prefix}.") else None
        layer = _linear(model, site[0]) if site else None
        if site is None or layer is None:
            mapped[key] = tensor
            continue
        path, axis = site
        expected = 1 if key.endswith(".bias") or "lora_magnitude_vector" in key else 2
        if tensor.ndim != expected:
            raise InputError(
                f"LoRA tensor {key} has {tensor.ndim} dimensions, a LoRA of the Linear {path} has {expected}"
            )
        current = layer.out_features if axis == 0 else layer.in_features
        size = tensor.shape[axis]
        selection = selections.get(path)
        index, dense = (
            (None, current)
            if selection is None
            else (selection.rows, selection.dense_rows)
            if axis == 0
            else (selection.cols, selection.dense_cols)
        )
        if size == current:
            mapped[key] = tensor
        elif index is not None and size == dense:
            mapped[key] = tensor.index_select(axis, index.to(tensor.device))
        elif not recorded:
            raise CheckpointError(f"LoRA tensor {key} does not fit {path}: {UNRECORDED}")
        else:
            what = "rows" if axis == 0 else "columns"
            fits = f"{current} (pruned) or {dense} (dense base)" if index is not None else str(current)
            raise InputError(
                f"LoRA tensor {key} has {size} {what}, {path} takes {fits}: the LoRA was made for a different base "
                "model"
            )
    return mapped


def _linear(model: nn.Module, path: str) -> nn.Linear | None:
    try:
        module = model.get_submodule(path)
    except AttributeError:
        return None
    base = getattr(module, "base_layer", module)  # a layer peft already wraps
    return base if isinstance(base, nn.Linear) else None


def slice_ip_adapter_processors(
    model: nn.Module, processors: Mapping[str, nn.Module], selections: Mapping[str, Selection], recorded: bool
) -> None:
    """Restrict the IP-Adapter key/value projections (``to_k_ip``/``to_v_ip``, built and loaded at the
    dense width by diffusers) of every pruned cross-attention to the heads it kept, in place."""
    for name, processor in processors.items():
        if not hasattr(processor, "to_k_ip"):
            continue
        attention = name.removesuffix(".processor")
        width = model.get_submodule(f"{attention}.to_k").out_features
        selection = selections.get(f"{attention}.to_k")
        for projections in (processor.to_k_ip, processor.to_v_ip):
            for i, linear in enumerate(projections):
                if linear.out_features == width:
                    continue
                if selection is None or selection.rows is None or linear.out_features != selection.dense_rows:
                    reason = UNRECORDED if not recorded else "the IP-Adapter was made for a different base model"
                    raise CheckpointError(
                        f"IP-Adapter projection for {attention} has {linear.out_features} outputs, the attention "
                        f"{width}: {reason}"
                    )
                projections[i] = sliced_linear(linear, rows=selection.rows)
        if hasattr(processor, "hidden_size"):
            processor.hidden_size = width
