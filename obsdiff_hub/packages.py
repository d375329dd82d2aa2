"""Splitting basic units, in forward order, into module packages (SPEC §1, §7)."""

from __future__ import annotations

from torch import nn

from .adapters import BlockUnit, LinearSite


def hessian_layers(unit: BlockUnit) -> list[str]:
    """The layers whose inputs the unit needs a Hessian of (one per distinct input)."""
    paths: list[str] = []
    for site in unit.sites:
        paths += [site.hessian_layer] if isinstance(site, LinearSite) else list(site.out_layers)
    return paths


def hessian_bytes(model: nn.Module, unit: BlockUnit) -> int:
    return sum(4 * model.get_submodule(p).in_features ** 2 for p in hessian_layers(unit))


def split_packages(
    model: nn.Module, units: list[BlockUnit], packages: int | None, memory_budget_gb: float | None
) -> list[list[BlockUnit]]:
    """Contiguous packages: ``packages`` of near-equal unit counts, or the fewest within a memory budget.

    With a budget, units are packed greedily in forward order so that the fp32 Hessians
    alive at once stay under it; a unit larger than the budget gets a package of its own.
    """
    if not units:
        raise ValueError("no layers to prune: the block selection is empty")
    if memory_budget_gb is not None:
        budget = memory_budget_gb * 1024**3
        out: list[list[BlockUnit]] = [[]]
        used = 0
        for unit in units:
            size = hessian_bytes(model, unit)
            if out[-1] and used + size > budget:
                out.append([])
                used = 0
            out[-1].append(unit)
            used += size
        return out
    count = min(packages or 1, len(units))
    base, extra = divmod(len(units), count)
    out, start = [], 0
    for i in range(count):
        stop = start + base + (1 if i < extra else 0)
        out.append(units[start:stop])
        start = stop
    return out
