"""What a pruning method is: settings of its own, and the solves it knows."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar, Sequence

import torch

from ...maths.counts import removal_count
from ...maths.group_obs import GroupSelection
from ..registry import Registry, Settings

LayerResult = list[tuple[torch.Tensor, torch.Tensor]]  # (W_pruned, mask True where pruned) per layer
GroupResult = tuple[list[torch.Tensor], list[list[int]]]  # weights, removed groups per selection


@dataclass(frozen=True)
class LayerProblem:
    """Layers that read one input (unstructured or N:M): their weights (or asymmetric targets), the shared
    Hessian ``H``, each layer's ratio or, with sparsity allocation, exact ``counts``, the ``n:m`` pattern
    (``m = 0``: unstructured) and the Hessian damping."""

    weights: Sequence[torch.Tensor]
    H: torch.Tensor
    ratios: Sequence[float]
    n: int = 0
    m: int = 0
    damping_fraction: float = 0.01
    counts: Sequence[int] | None = None


@dataclass(frozen=True)
class GroupProblem:
    """Output projections whose input columns are split into ``groups`` (heads, neurons), each with its
    Hessian; ``selections`` say how many of which groups to remove."""

    weights: Sequence[torch.Tensor]
    hessians: Sequence[torch.Tensor]
    groups: Sequence[torch.Tensor]
    selections: Sequence[GroupSelection]
    damping_fraction: float = 0.01


class PruningMethod(Settings):
    """A pruning method. Unstructured and N:M methods implement :meth:`prune_layers` (and
    :meth:`removal_count`, which ``plan`` and sparsity allocation use); structured ones implement
    :meth:`remove_groups`. ``granularities`` says which apply."""

    kind: ClassVar[str] = "method"
    compensates: ClassVar[bool] = False  # whether the kept weights are updated from the Hessian (OBS)

    def removal_count(self, rows: int, cols: int, ratio: float) -> int:
        """Weights ``ratio`` removes from one ``rows × cols`` layer, unstructured (default: over the layer)."""
        return removal_count(rows * cols, ratio)

    def prune_layers(self, problem: LayerProblem) -> LayerResult:
        """Prune layers that share one input Hessian, each at its ratio or exact count, or N:M."""
        raise NotImplementedError(f"{self.name} does not prune unstructured or N:M")

    def remove_groups(self, problem: GroupProblem) -> GroupResult:
        """Remove column groups (heads, neurons) from output projections that share them."""
        raise NotImplementedError(f"{self.name} does not prune structured")

    def group_batch(self, kind: str) -> int:
        """Groups of ``kind`` (``heads`` or ``neurons``) removed per round."""
        return 1


METHODS: Registry[PruningMethod] = Registry("method", PruningMethod, default="obs-diff")
