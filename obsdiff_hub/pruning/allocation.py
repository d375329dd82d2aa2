"""Sparsity allocation (``allocation: error``): non-uniform removals at the uniform total.

Per module package, from its calibration Hessians: every prunable unit (a weight, or a
head / FFN neuron) gets a saliency, its removal cost with the diagonal of H relative to its
layer's output energy, and :func:`obsdiff_hub.maths.allocation.allocate_counts` spreads the
package's uniform total over the layers (unstructured) or the couplings (structured), each
within ``ratio ± allocation_spread``. Structured couplings are allocated only among couplings
of identical shapes, so every removed head or neuron weighs the same number of parameters and
the parameter count stays exactly the recipe's plan.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch import nn

from ..architectures import BlockUnit, HeadCoupling, StructuredSite
from ..maths.allocation import allocate_counts, bounds_for, weight_saliencies
from ..maths.counts import group_removal_count
from .config import PruneConfig


def _bounded(total: int, uniform: int, ratio: float, spread: float, ceiling: int) -> tuple[int, int]:
    low, high = bounds_for(total, ratio, spread)
    return min(low, uniform), min(max(high, uniform), ceiling)


def allocate_package(
    model: nn.Module,
    package: list[BlockUnit],
    weight: Callable[[str], torch.Tensor],
    hessian: Callable[[str], torch.Tensor],
    cfg: PruneConfig,
) -> dict[str, int]:
    """Removal counts: per layer path (unstructured) or per coupling key (structured)."""
    if cfg.granularity == "structured":
        return _structured(model, package, weight, hessian, cfg)
    scores, lower, upper, names, total = [], [], [], [], 0
    for unit in package:
        ratio = cfg.sparsity_for(unit.block)
        for site in unit.sites:
            H = hessian(site.hessian_layer)
            for path in site.layers:  # type: ignore[union-attr]
                W = weight(path)
                rows, cols = W.shape
                uniform = cfg.method.removal_count(rows, cols, ratio)
                low, high = _bounded(W.numel(), uniform, ratio, cfg.allocation_spread, W.numel())
                scores.append(weight_saliencies(W, H))
                lower.append(low)
                upper.append(high)
                names.append(path)
                total += uniform
    return dict(zip(names, allocate_counts(scores, total, lower, upper)))


def _structured(
    model: nn.Module,
    package: list[BlockUnit],
    weight: Callable[[str], torch.Tensor],
    hessian: Callable[[str], torch.Tensor],
    cfg: PruneConfig,
) -> dict[str, int]:
    classes: dict[tuple, list[tuple[str, torch.Tensor, int]]] = {}
    for unit in package:
        ratio = cfg.sparsity_for(unit.block)
        for site in unit.sites:
            assert isinstance(site, StructuredSite)
            groups, head_ids, neuron_ids = site.column_groups(model)
            column_scores = sum(weight_saliencies(weight(p), hessian(p)).sum(0) for p in site.out_layers)
            for coupling, ids in ((site.heads, head_ids), (site.neurons, neuron_ids)):
                if coupling is None or not ids:
                    continue
                group_scores = torch.stack([column_scores[groups[g]].sum() for g in ids])
                layers = (
                    coupling.row_layers + coupling.out_layers
                    if isinstance(coupling, HeadCoupling)
                    else (coupling.in_layer, coupling.out_layer)
                )
                shape_class = (
                    type(coupling).__name__,
                    len(ids),
                    tuple(tuple(model.get_submodule(p).weight.shape) for p in layers),
                )
                classes.setdefault(shape_class, []).append(
                    (coupling.key, group_scores, group_removal_count(len(ids), ratio))
                )
    counts: dict[str, int] = {}
    for members in classes.values():
        n = len(members[0][1])
        bounds = [_bounded(n, uniform, uniform / n, cfg.allocation_spread, n - 1) for _, _, uniform in members]
        allocated = allocate_counts(
            [s for _, s, _ in members], sum(u for _, _, u in members), [b[0] for b in bounds], [b[1] for b in bounds]
        )
        counts.update({key: count for (key, _, _), count in zip(members, allocated)})
    return counts
