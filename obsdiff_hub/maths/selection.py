"""Which weights a score prunes: the selection rules, each returning a mask that is True where pruned.

Every solver and baseline selects through these three rules, so "the ``k`` smallest" means the same
thing everywhere (ties: whichever ``torch.topk`` returns first).
"""

from __future__ import annotations

import torch

from ..errors import InputError


def smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` smallest scores of the whole tensor (a layer's unstructured budget)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        mask.view(-1)[torch.topk(scores.reshape(-1), k, largest=False, sorted=False).indices] = True
    return mask


def smallest_per_row(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` smallest scores of every row (Wanda compares weights within an output)."""
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, True)
    return mask


def smallest_n_of_m(scores: torch.Tensor, n: int, m: int) -> torch.Tensor:
    """In every row, the ``n`` smallest of each group of ``m`` consecutive columns (N:M sparsity)."""
    rows, cols = scores.shape
    if cols % m:
        raise InputError(f"{n}:{m} sparsity needs the input width ({cols}) to be a multiple of {m}")
    grouped = scores.reshape(rows, cols // m, m)
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    return mask.scatter_(-1, torch.topk(grouped, n, dim=-1, largest=False).indices, True).view(rows, cols)
