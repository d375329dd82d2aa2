"""Structured OBS: removing whole column groups (attention heads, FFN neurons) with exact compensation
(SPEC §1, "Structured"). Imports torch only.

A head is the ``d`` input columns of the attention's output projection that it feeds; an FFN neuron
is one input column of the FFN's output projection. Removing a group ``S`` from ``W`` costs
``½ Σ_rows w_Sᵀ (H⁻¹_SS)⁻¹ w_S`` and is best compensated by ``δW = −W_S (H⁻¹_SS)⁻¹ H⁻¹_{S,:}``; groups
are removed greedily, least salient first. The caller deletes the removed columns (and the rows of
q/k/v or the FFN input that produced them).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from ..errors import InputError
from .factor import cholesky, prepare_layer

HeadSaliency = Literal["reference", "exact"]


def column_groups(num_columns: int, group_size: int, offset: int = 0) -> list[torch.Tensor]:
    """Consecutive index groups (heads when ``group_size`` is the head dim, neurons when 1)."""
    if group_size < 1 or num_columns % group_size:
        raise InputError(f"{num_columns} columns cannot be split into groups of {group_size}")
    return [torch.arange(offset + s, offset + s + group_size) for s in range(0, num_columns, group_size)]


@dataclass
class GroupOBS:
    """Removes whole column groups of one layer with exact OBS compensation.

    Holds ``W`` and the full inverse Hessian ``Hinv``. Removing the set ``S`` applies
    ``δW = −W_S (Hinv_SS)⁻¹ Hinv_{S,:}`` and the Schur-complement downdate
    ``Hinv ← Hinv − Hinv_{:,S} (Hinv_SS)⁻¹ Hinv_{S,:}``, which is the inverse Hessian of
    the remaining columns: O(n²·|S|) in place instead of a fresh O(n³) inverse.
    """

    W: torch.Tensor
    Hinv: torch.Tensor
    groups: list[torch.Tensor]
    saliency: HeadSaliency = "reference"

    @classmethod
    def from_layer(
        cls,
        W: torch.Tensor,
        H: torch.Tensor,
        groups: Sequence[torch.Tensor],
        damping_fraction: float = 0.01,
        saliency: HeadSaliency = "reference",
    ) -> GroupOBS:
        if saliency not in ("reference", "exact"):
            raise InputError(f"saliency must be 'reference' or 'exact', got {saliency!r}")
        W, H = prepare_layer(W, H, damping_fraction)
        Hinv = torch.cholesky_inverse(cholesky(H))
        return cls(W=W, Hinv=Hinv, groups=[g.to(W.device) for g in groups], saliency=saliency)

    def saliencies(self, columns: torch.Tensor) -> torch.Tensor:
        """OBS cost of removing each candidate group alone, given the groups already removed.

        ``columns``: the candidates' stacked column indices ``[G, g]``.

        Single columns: ``Σ_rows w_q² / (2 Hinv_qq)``. Groups, ``reference`` (paper Eq. 7
        as implemented by its authors): ``½ Σ_k Σ_rows w_k² / C_kk²`` with ``C`` the
        Cholesky factor of ``Hinv_SS`` (conditional variances). ``exact``:
        ``½ Σ_rows w_Sᵀ (Hinv_SS)⁻¹ w_S``, the true cost of removing the set at once.
        """
        if columns.shape[1] == 1:
            index = columns[:, 0]
            return 0.5 * torch.linalg.vector_norm(self.W, dim=0)[index] ** 2 / self.Hinv.diagonal()[index]
        w = self.W[:, columns].permute(1, 0, 2)  # [G, rows, g]
        block = self.Hinv[columns.unsqueeze(-1), columns.unsqueeze(-2)]  # [G, g, g]
        if self.saliency == "exact":
            solved = torch.linalg.solve(block, w.transpose(1, 2))  # [G, g, rows]
            return 0.5 * (w.transpose(1, 2) * solved).sum((1, 2))
        chol_diag = torch.diagonal(cholesky(block), dim1=-2, dim2=-1)  # [G, g]
        return 0.5 * ((w**2) / chol_diag.unsqueeze(1) ** 2).sum((1, 2))

    def remove(self, groups: Sequence[int]) -> None:
        """Remove the groups as one set, compensating the remaining columns and downdating ``Hinv``."""
        S = torch.cat([self.groups[g] for g in groups])
        block_inv = torch.linalg.inv(self.Hinv[S][:, S])
        rows_S = self.Hinv[S, :]  # [|S|, n]
        self.W.addmm_(self.W[:, S] @ block_inv, rows_S, alpha=-1)
        self.Hinv.addmm_(rows_S.T, block_inv @ rows_S, alpha=-1)
        self.W[:, S] = 0.0
        # Removed columns are decoupled; a unit diagonal keeps later group blocks invertible.
        self.Hinv[S, :] = 0.0
        self.Hinv[:, S] = 0.0
        self.Hinv[S, S] = 1.0


@dataclass(frozen=True)
class GroupSelection:
    """Remove ``count`` of the ``candidates`` groups, ``batch`` per OBS round (heads: 1)."""

    candidates: tuple[int, ...]
    count: int
    batch: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.count <= len(self.candidates):
            raise InputError(f"cannot remove {self.count} of {len(self.candidates)} groups")
        if self.batch < 1:
            raise InputError(f"batch must be at least 1, got {self.batch}")


def _rank_ascending(values: torch.Tensor) -> torch.Tensor:
    """Rank 1 for the smallest value (the least salient group)."""
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[torch.argsort(values, stable=True)] = torch.arange(
        1, len(values) + 1, dtype=torch.float64, device=values.device
    )
    return ranks


def rrf_pick(saliencies: Sequence[torch.Tensor], rrf_k: int) -> int:
    """Reciprocal Rank Fusion over several rankings: ``S_j = Σ 1 / (k + rank(j))``, rank 1 the
    least salient; the highest fused score wins. Ties go as in the reference implementation,
    which sorts the first (image) stream's order stably: the less salient head there wins."""
    order = torch.argsort(saliencies[0], stable=True)
    fused = sum(1.0 / (rrf_k + _rank_ascending(s)) for s in saliencies)
    return int(order[torch.argmax(fused[order])])


def obs_remove_groups(
    weights: Sequence[torch.Tensor],
    hessians: Sequence[torch.Tensor],
    groups: Sequence[torch.Tensor],
    selections: Sequence[GroupSelection],
    *,
    damping_fraction: float = 0.01,
    saliency: HeadSaliency = "reference",
    rrf_k: int = 60,
) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Structured OBS: remove column groups (heads, neurons) from layers that share them.

    ``weights[i]`` with ``hessians[i]`` are output projections whose input columns are
    split into ``groups``; every selection removes the same groups from all of them.
    One layer: the least salient group each round, or the ``batch`` least salient as one
    set (exact OBS update for the set, saliencies refreshed between rounds: ``batch``×
    fewer O(n²) downdates). Several layers (MMDiT joint attention, one head set feeding
    two streams): :func:`rrf_pick` each round, one group at a time, every layer
    compensated with its own Hessian. Selections run in order on the same layers.
    Removed columns are zeroed (the caller deletes them) and the remaining columns carry
    the compensation: the least-squares optimum over the kept columns.
    Returns ``(pruned weights, removed group indices per selection in removal order)``.
    """
    if len(weights) != len(hessians):
        raise InputError(f"{len(weights)} weights but {len(hessians)} Hessians")
    layers = [GroupOBS.from_layer(W, H, groups, damping_fraction, saliency) for W, H in zip(weights, hessians)]
    removed_per_selection: list[list[int]] = []
    for selection in selections:
        remaining = list(selection.candidates)
        removed: list[int] = []
        if selection.count:
            columns = torch.stack([layers[0].groups[c] for c in remaining])  # stacked once, rows dropped as we go
        while len(removed) < selection.count:
            if len(layers) == 1:
                take = min(selection.batch, selection.count - len(removed))
                picks = torch.topk(layers[0].saliencies(columns), take, largest=False).indices.tolist()
            else:
                picks = [rrf_pick([s.saliencies(columns) for s in layers], rrf_k)]
            chosen = [remaining[p] for p in picks]
            picked = torch.zeros(len(remaining), dtype=torch.bool)
            picked[picks] = True
            remaining = [g for g, gone in zip(remaining, picked.tolist()) if not gone]
            columns = columns[~picked.to(columns.device)]
            for layer in layers:
                layer.remove(chosen)
            removed.extend(chosen)
        removed_per_selection.append(removed)
    return [layer.W.to(W.dtype) for layer, W in zip(layers, weights)], removed_per_selection
