"""The pruning methods the engine can apply, by name: one signature per kind.

A *layer method* prunes layers that share one input Hessian (unstructured or N:M) and
returns ``(W_pruned, mask)`` per layer; a *refiner* improves such a result (``solver: obs+lsq``
or ``admm``). A *group method* removes column groups (heads, neurons) from the output
projections of a structured site. The engine calls exactly these functions; the maths tests
call the same ones.
"""

from __future__ import annotations

from typing import Callable, Sequence

import torch

from ..maths import baselines, solvers
from ..maths.admm import AdmmSettings, refine
from ..maths.solvers import GroupSelection
from .config import PruneConfig

LayerMethod = Callable[
    [Sequence[torch.Tensor], torch.Tensor, Sequence[float], PruneConfig, Sequence[int] | None],
    list[tuple[torch.Tensor, torch.Tensor]],
]
Refiner = Callable[
    [Sequence[torch.Tensor], torch.Tensor, Sequence[tuple[torch.Tensor, torch.Tensor]], PruneConfig],
    list[tuple[torch.Tensor, torch.Tensor]],
]
GroupMethod = Callable[
    [Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[torch.Tensor], Sequence[GroupSelection], PruneConfig],
    tuple[list[torch.Tensor], list[list[int]]],
]


def _obs_diff_layers(
    weights: Sequence[torch.Tensor],
    H: torch.Tensor,
    sparsities: Sequence[float],
    cfg: PruneConfig,
    counts: Sequence[int] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    return solvers.obs_prune_shared(weights, H, sparsities, cfg.n, cfg.m, cfg.blocksize, cfg.percdamp, counts)


def _each_layer(prune_one: Callable[..., tuple[torch.Tensor, torch.Tensor]]) -> LayerMethod:
    """A baseline that prunes one layer at a time, lifted to the shared-Hessian signature."""

    def method(
        weights: Sequence[torch.Tensor],
        H: torch.Tensor,
        sparsities: Sequence[float],
        cfg: PruneConfig,
        counts: Sequence[int] | None = None,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        return [prune_one(W, H, s, cfg.n, cfg.m) for W, s in zip(weights, sparsities)]

    return method


def _obs_diff_groups(weights, hessians, groups, selections, cfg: PruneConfig):  # type: ignore[no-untyped-def]
    return solvers.obs_remove_groups(
        weights, hessians, groups, selections, percdamp=cfg.percdamp, saliency=cfg.head_saliency, rrf_k=cfg.rrf_k
    )


def _l1_groups(weights, hessians, groups, selections, cfg: PruneConfig):  # type: ignore[no-untyped-def]
    return baselines.l1_remove_groups(weights, hessians, groups, selections)


LAYER_METHODS: dict[str, LayerMethod] = {
    "obs-diff": _obs_diff_layers,
    "magnitude": _each_layer(baselines.magnitude_prune),
    "wanda": _each_layer(baselines.wanda_prune),
    "dsnot": _each_layer(baselines.dsnot_prune),
}


def _refiner(search: bool) -> Refiner:
    """:func:`obsdiff_hub.maths.admm.refine` with the run's settings; ``search``: ADMM over masks too."""

    def method(
        weights: Sequence[torch.Tensor],
        H: torch.Tensor,
        starts: Sequence[tuple[torch.Tensor, torch.Tensor]],
        cfg: PruneConfig,
    ) -> list[tuple[torch.Tensor, torch.Tensor]]:
        settings = AdmmSettings(cfg.admm_iterations, cfg.admm_rho, cfg.refit_iterations, cfg.refit_tolerance)
        return refine(
            weights,
            H,
            [w for w, _ in starts],
            [k for _, k in starts],
            search=search,
            n=cfg.n,
            m=cfg.m,
            percdamp=cfg.percdamp,
            settings=settings,
        )

    return method


REFINERS: dict[str, Refiner] = {
    "obs+lsq": _refiner(search=False),
    "admm": _refiner(search=True),
}

GROUP_METHODS: dict[str, GroupMethod] = {
    "obs-diff": _obs_diff_groups,
    "l1": _l1_groups,
}
