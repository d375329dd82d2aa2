"""What a pruning method is: settings of its own, and the solves it knows."""

from __future__ import annotations

from typing import ClassVar, Sequence

import torch

from ...maths.counts import removal_count
from ...maths.group_obs import GroupSelection
from ..registry import Registry, Settings

LayerResult = list[tuple[torch.Tensor, torch.Tensor]]  # (W_pruned, mask True where pruned) per layer
GroupResult = tuple[list[torch.Tensor], list[list[int]]]  # weights, removed groups per selection


class PruningMethod(Settings):
    """A pruning method. Unstructured and N:M methods implement :meth:`prune_layers` (and
    :meth:`removal_count`, which ``plan`` and sparsity allocation use); structured ones implement
    :meth:`remove_groups`. ``granularities`` says which apply."""

    kind: ClassVar[str] = "method"
    compensates: ClassVar[bool] = False  # whether the kept weights are updated from the Hessian (OBS)

    def removal_count(self, rows: int, cols: int, ratio: float) -> int:
        """Weights ``ratio`` removes from one ``rows × cols`` layer, unstructured (default: over the layer)."""
        return removal_count(rows * cols, ratio)

    def prune_layers(
        self,
        weights: Sequence[torch.Tensor],
        H: torch.Tensor,
        ratios: Sequence[float],
        *,
        n: int,
        m: int,
        damping_fraction: float,
        counts: Sequence[int] | None = None,
    ) -> LayerResult:
        """Prune layers that share the input Hessian ``H``, each at its ratio (or, unstructured, its
        exact ``counts``), or ``n`` of every ``m`` inputs."""
        raise NotImplementedError(f"{self.name} does not prune unstructured or N:M")

    def remove_groups(
        self,
        weights: Sequence[torch.Tensor],
        hessians: Sequence[torch.Tensor],
        groups: Sequence[torch.Tensor],
        selections: Sequence[GroupSelection],
        *,
        damping_fraction: float,
    ) -> GroupResult:
        """Remove column groups (heads, neurons) from output projections that share them."""
        raise NotImplementedError(f"{self.name} does not prune structured")

    def group_batch(self, kind: str) -> int:
        """Groups of ``kind`` (``heads`` or ``neurons``) removed per round."""
        return 1


METHODS: Registry[PruningMethod] = Registry("method", PruningMethod, default="obs-diff")
