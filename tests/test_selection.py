"""The selection rules on large tensors: the sampled band search selects exactly what a full top-k
selects (distinct values), keeps the exact count through ties, and falls back when its bracket misses."""

import pytest
import torch

from obsdiff_hub.maths import selection
from obsdiff_hub.maths.selection import smallest


def full_topk(scores: torch.Tensor, k: int) -> torch.Tensor:
    mask = torch.zeros(scores.numel(), dtype=torch.bool)
    mask[torch.topk(scores.reshape(-1), k, largest=False).indices] = True
    return mask.view_as(scores)


@pytest.mark.parametrize("fraction", [1e-6, 0.3, 0.5, 0.9, 0.999999])
def test_the_band_search_selects_what_a_full_topk_selects(fraction):
    g = torch.Generator().manual_seed(0)
    scores = torch.randperm(1 << 21, generator=g).float().view(1024, -1)  # distinct values: one right answer
    k = max(int(fraction * scores.numel()), 1)
    assert torch.equal(smallest(scores, k), full_topk(scores, k))


def test_ties_at_the_boundary_keep_the_exact_count():
    scores = torch.zeros(1 << 21)
    scores[: 1 << 19] = torch.rand(1 << 19, generator=torch.Generator().manual_seed(1)) + 1
    k = (1 << 20) + 12345  # the boundary falls inside a million tied zeros
    mask = smallest(scores, k)
    assert int(mask.sum()) == k and bool((scores[mask] == 0).all())


def test_a_missed_bracket_falls_back_to_the_full_topk():
    scores = torch.randperm(1 << 20, generator=torch.Generator().manual_seed(2)).float()
    stride = (1 << 20) // selection.SAMPLE_SIZE
    scores[::stride] = -scores[::stride]  # the strided sample sees only negatives: its bracket misses the median
    assert selection.smallest_in_band(scores, 1 << 19) is None
    assert torch.equal(smallest(scores, 1 << 19), full_topk(scores, 1 << 19))
