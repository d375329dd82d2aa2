"""Which weights a score prunes: the selection rules, each returning a mask that is True where pruned.

Every solver and baseline selects through these three rules, so "the ``k`` smallest" means the same
thing everywhere (ties at the boundary: whichever ``torch.topk`` returns first).
"""

from __future__ import annotations

import torch

from ..errors import InputError

BAND_MIN_SIZE = 1 << 20  # below this a full top-k is as fast as the band search
SAMPLE_SIZE = 1 << 16


def smallest(scores: torch.Tensor, k: int) -> torch.Tensor:
    """The ``k`` smallest scores of the whole tensor (a layer's unstructured budget)."""
    flat = scores.reshape(-1)
    if k and flat.numel() >= BAND_MIN_SIZE and k < flat.numel():
        banded = smallest_in_band(flat, k)
        if banded is not None:
            return banded.view_as(scores)
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if k:
        mask.view(-1)[torch.topk(flat, k, largest=False, sorted=False).indices] = True
    return mask


def smallest_in_band(flat: torch.Tensor, k: int) -> torch.Tensor | None:
    """The same selection as a full top-k on large tensors, about 5× faster: a strided sample brackets the
    ``k``-th value in a narrow band ``[lo, hi]``, everything below ``lo`` is selected and a top-k runs
    over the band alone. ``None`` when the sample's bracket misses (then the caller runs the full top-k)."""
    sample = flat[:: max(flat.numel() // SAMPLE_SIZE, 1)].float()
    margin = 4.0 / sample.numel() ** 0.5 + 1e-3  # quantile slack: 4 sample standard deviations and more
    fraction = k / flat.numel()
    bracket = torch.tensor([max(fraction - margin, 0.0), min(fraction + margin, 1.0)], device=flat.device)
    lo, hi = torch.quantile(sample, bracket).tolist()
    mask = flat < lo
    below = int(mask.sum())
    band = ((flat >= lo) & (flat <= hi)).nonzero().squeeze(1)
    if not below <= k <= below + band.numel():
        return None
    mask[band[torch.topk(flat[band], k - below, largest=False, sorted=False).indices]] = True
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
