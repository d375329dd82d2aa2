"""Which heads and FFN neurons of the base model a structurally pruned model kept, and what that
means for each Linear layer's rows and columns.

A structured checkpoint records, per pruned attention or MLP (``HeadCoupling.key`` /
``NeuronCoupling.key``), the kept unit indices of the *dense base* as a bit mask: ``{"of": dense
count, "kept": hex}`` (bit ``i`` of the hex number is unit ``i``). From that record
:func:`dense_selections` derives, for every layer whose shape pruning changed, which of the dense
layer's rows and input columns survive. That is what maps a tensor made for the dense base (a
LoRA's ``lora_B`` rows and ``lora_A`` columns, an IP-Adapter's ``to_k_ip`` rows) onto the pruned
model: removing heads and neurons removed exactly those rows and columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import torch
from torch import nn

from ..errors import CheckpointError
from .base import Architecture, HeadCoupling, NeuronCoupling

MAX_UNITS = 1 << 20  # no attention has more heads, no MLP more neurons


def encode(kept: Sequence[int], dense: int) -> dict[str, Any]:
    """The JSON record of ``kept`` (sorted unit indices) out of ``dense`` units."""
    bits = 0
    for index in kept:
        bits |= 1 << int(index)
    return {"of": int(dense), "kept": format(bits, "x").zfill((dense + 3) // 4)}


def decode(entry: Any, where: str) -> torch.Tensor:
    """The kept indices of one record (sorted), or a :class:`CheckpointError` naming ``where``."""
    if not isinstance(entry, dict) or set(entry) != {"of", "kept"}:
        raise CheckpointError(f"{where}: a kept-indices record must be {{'of': count, 'kept': hex mask}}")
    dense, mask = entry["of"], entry["kept"]
    if not isinstance(dense, int) or isinstance(dense, bool) or not 1 <= dense <= MAX_UNITS:
        raise CheckpointError(f"{where}: kept-indices count {str(dense)[:20]} is not between 1 and {MAX_UNITS:,}")
    if not isinstance(mask, str) or len(mask) != (dense + 3) // 4 or not all(c in "0123456789abcdef" for c in mask):
        raise CheckpointError(f"{where}: kept-indices mask is not {(dense + 3) // 4} lower-case hex digits")
    kept = [
        4 * j + b for j, digit in enumerate(reversed(mask)) for b in range(4) if int(digit, 16) >> b & 1
    ]  # linear in the mask's length
    if kept and kept[-1] >= dense:
        raise CheckpointError(f"{where}: kept-indices mask names units past the {dense} the base has")
    if not kept:
        raise CheckpointError(f"{where}: kept-indices mask keeps no unit")
    return torch.tensor(kept, dtype=torch.long)


def compose(previous: Any, kept: Sequence[int], before: int, where: str) -> dict[str, Any]:
    """The record after keeping ``kept`` of the ``before`` units a model has now: relative to the
    dense base through ``previous`` (the model's existing record), if it was already pruned."""
    if previous is None:
        return encode(kept, before)
    earlier = decode(previous, where)
    if len(earlier) != before:
        raise CheckpointError(f"{where}: the recorded kept indices list {len(earlier)} units, the model has {before}")
    return encode(earlier[list(kept)].tolist(), previous["of"])


def ranges(indices: Sequence[int], limit: int = 48) -> str:
    """Indices as compact ranges (``0-2,5,7-9``), cut at about ``limit`` characters (for display)."""
    parts: list[str] = []
    for index in indices:
        if parts and parts[-1].rsplit("-", 1)[-1] == str(index - 1):
            parts[-1] = f"{parts[-1].split('-')[0]}-{index}"
        else:
            parts.append(str(index))
    text = ",".join(parts)
    return text if len(text) <= limit else text[:limit].rsplit(",", 1)[0] + ",…"


@dataclass
class Selection:
    """The dense layer's rows and input columns a pruned layer keeps (``None``: all of them)."""

    rows: torch.Tensor | None
    dense_rows: int
    cols: torch.Tensor | None
    dense_cols: int


def _axis(current: int, pieces: list[tuple[bool, torch.Tensor]]) -> tuple[torch.Tensor | None, int]:
    """Kept indices along one axis, from masks over its leading (``False``) or trailing (``True``) part."""
    if not pieces:
        return None, current
    dense = current + sum(int((~mask).sum()) for _, mask in pieces)
    full = torch.ones(dense, dtype=torch.bool)
    for trailing, mask in pieces:
        if trailing:
            full[dense - len(mask) :] = mask
        else:
            full[: len(mask)] = mask
    return full.nonzero().flatten(), dense


def dense_selections(
    model: nn.Module, architecture: Architecture, kept: Mapping[str, torch.Tensor], dense: Mapping[str, int]
) -> dict[str, Selection]:
    """Per Linear layer whose shape pruning changed, the rows and columns of the dense layer it kept.

    ``kept``: coupling key → kept unit indices of the base; ``dense``: coupling key → the base's
    count. Heads own rows ``j·d … j·d+d−1`` of every q/k/v projection and the same leading columns
    of the output projections; neurons own rows of the MLP input (both GEGLU halves) and the
    trailing columns of its output (Flux's ``proj_out`` has heads first, then neurons).
    """
    rows: dict[str, list[tuple[bool, torch.Tensor]]] = {}
    cols: dict[str, list[tuple[bool, torch.Tensor]]] = {}
    couplings = architecture.couplings(model)
    unknown = sorted(set(kept) - {c.key for c in couplings})
    if unknown:
        raise CheckpointError(
            f"the kept-indices record names {unknown[0]}, which this {type(model).__name__} does not have"
        )
    for coupling in couplings:
        if coupling.key not in kept:
            continue
        if len(kept[coupling.key]) != coupling.count(model):
            raise CheckpointError(
                f"{coupling.key}: the kept-indices record keeps {len(kept[coupling.key])} units, the model has "
                f"{coupling.count(model)}"
            )
        unit = torch.zeros(dense[coupling.key], dtype=torch.bool)
        unit[kept[coupling.key]] = True
        if isinstance(coupling, HeadCoupling):
            mask = unit.repeat_interleave(coupling.head_dim)
            for path in coupling.row_layers:
                rows.setdefault(path, []).append((False, mask))
            for path in coupling.out_layers:
                cols.setdefault(path, []).append((False, mask))
        else:
            assert isinstance(coupling, NeuronCoupling)
            rows.setdefault(coupling.in_layer, []).append((False, unit))
            if coupling.geglu:
                rows[coupling.in_layer].append((True, unit))
            cols.setdefault(coupling.out_layer, []).append((True, unit))
    selections = {}
    for path in sorted(set(rows) | set(cols)):
        layer = model.get_submodule(path)
        row_index, dense_rows = _axis(layer.out_features, rows.get(path, []))
        col_index, dense_cols = _axis(layer.in_features, cols.get(path, []))
        selections[path] = Selection(row_index, dense_rows, col_index, dense_cols)
    return selections
