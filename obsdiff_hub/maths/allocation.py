"""Non-uniform sparsity: where to remove weights when the total is fixed. Imports torch only.

Each layer (or group of heads/neurons) has saliencies, the estimated cost of removing each
weight, normalised by the layer's output energy so layers are comparable. Removing a layer's
``k`` least salient weights costs the sum of its ``k`` smallest saliencies: convex in ``k``. So
taking, globally, the smallest next saliencies within each layer's bounds is the exact
minimiser of the summed cost at a fixed total (a greedy merge).
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError


def allocate_counts(
    scores: Sequence[torch.Tensor], total: int, lower: Sequence[int], upper: Sequence[int]
) -> list[int]:
    """Removal counts per layer: ``Σ k = total`` exactly, ``lower ≤ k ≤ upper`` per layer, and the sum
    of the removed scores minimal (each layer removes its ``k`` smallest)."""
    if not (len(scores) == len(lower) == len(upper)):
        raise InputError("one score vector and one pair of bounds per layer")
    for s, lo, hi in zip(scores, lower, upper):
        if not 0 <= lo <= hi <= s.numel():
            raise InputError(f"bounds {lo}..{hi} do not fit a layer of {s.numel()} weights")
    if not sum(lower) <= total <= sum(upper):
        raise InputError(f"cannot remove {total}: the bounds allow {sum(lower)}..{sum(upper)}")
    candidates, owners = [], []
    for layer, (s, lo, hi) in enumerate(zip(scores, lower, upper)):
        ordered = torch.sort(s.detach().flatten().double()).values
        candidates.append(ordered[lo:hi])
        owners.append(torch.full((hi - lo,), layer, dtype=torch.long))
    counts = list(lower)
    extra = total - sum(lower)
    if extra:
        merged, owner = torch.cat(candidates), torch.cat(owners)
        picked = owner[torch.topk(merged, extra, largest=False, sorted=False).indices]
        for layer, added in enumerate(torch.bincount(picked, minlength=len(scores)).tolist()):
            counts[layer] += added
    return counts


def weight_saliencies(W: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``w² · H_qq / tr(W H Wᵀ)``: each weight's removal cost with the diagonal of H (OBD),
    relative to the layer's output energy ``‖W X‖²``."""
    W = W.detach().float()
    diag = torch.diagonal(H).float().to(W.device).clamp_min(0)
    energy = float((W @ H.float().to(W.device) * W).sum())
    return W**2 * diag.unsqueeze(0) / max(energy, 1e-30)


def bounds_for(total_weights: int, ratio: float, spread: float) -> tuple[int, int]:
    """Removal count bounds ``round((ratio ∓ spread) · n)``, within 0..n."""
    return max(0, round((ratio - spread) * total_weights)), min(total_weights, round((ratio + spread) * total_weights))
