"""Baselines the paper compares against, with the solvers' calling convention. Imports torch only.

Each unstructured baseline is called like :func:`obsdiff_hub.maths.obs.obs_prune` and
returns ``(W_pruned, mask)``; none of them updates the kept weights.
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..errors import InputError
from .counts import check_sparsity, removal_count
from .factor import prepare_layer
from .group_obs import GroupSelection
from .selection import smallest, smallest_n_of_m, smallest_per_row


def _mask_from_scores(scores: torch.Tensor, sparsity: float, n: int, m: int, per_row: bool) -> torch.Tensor:
    """Prune the lowest scores: per N:M group, per output row, or over the whole layer."""
    if m:
        return smallest_n_of_m(scores, n, m)
    if per_row:
        return smallest_per_row(scores, removal_count(scores.shape[1], sparsity))
    return smallest(scores, removal_count(scores.numel(), sparsity))


def _apply(W: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return W.masked_fill(mask.to(W.device), 0)


def magnitude_prune(
    W: torch.Tensor, H: torch.Tensor | None = None, sparsity: float = 0.5, n: int = 0, m: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune the smallest ``|w|`` over the whole layer (exactly ``round(sparsity·size)``) or per N:M group."""
    check_sparsity(sparsity, n, m)
    mask = _mask_from_scores(W.detach().abs().float(), sparsity, n, m, per_row=False)
    return _apply(W, mask), mask


def wanda_prune(
    W: torch.Tensor, H: torch.Tensor, sparsity: float = 0.5, n: int = 0, m: int = 0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Wanda: score ``|w_ij| · ‖X_j‖₂`` compared within each output row (or N:M group).

    ``‖X_j‖₂ ∝ sqrt(diag H)_j`` since ``H = 2 X Xᵀ`` up to a positive normalisation.
    """
    check_sparsity(sparsity, n, m)
    if H.shape != (W.shape[1], W.shape[1]):
        raise InputError(f"Hessian shape {tuple(H.shape)} does not match the weight's {W.shape[1]} input columns")
    norms = torch.sqrt(torch.diag(H).float().clamp_min(0)).to(W.device)
    mask = _mask_from_scores(W.detach().abs().float() * norms.unsqueeze(0), sparsity, n, m, per_row=True)
    return _apply(W, mask), mask


def dsnot_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float = 0.5,
    n: int = 0,
    m: int = 0,
    max_cycles: int = 50,
    damping_fraction: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DSnoT-style training-free mask refinement with a Hessian-based criterion.

    Starts from the Wanda mask. Each cycle, in every row, regrows the pruned weight that
    lowers the row's reconstruction error ``e = δᵀ H δ`` (``δ`` = the pruned weights) the
    most and prunes the kept weight (in the same N:M group) that raises it the least; the
    swap is kept only if ``e`` falls, so the error decreases monotonically and the
    sparsity pattern (per row, or per group) is preserved. Weights are not updated.
    """
    _, mask = wanda_prune(W, H, sparsity, n, m)
    Wf, Hd = prepare_layer(W, H, damping_fraction)
    rows, cols = Wf.shape
    mask = mask.to(Wf.device).clone()
    diag = torch.diag(Hd)
    row_ids = torch.arange(rows, device=Wf.device)
    active = torch.ones(rows, dtype=torch.bool, device=Wf.device)
    inf = torch.tensor(float("inf"), device=Wf.device, dtype=Wf.dtype)
    for _ in range(max_cycles):
        delta = torch.where(mask, Wf, torch.zeros_like(Wf))
        g = delta @ Hd  # gradient of e/2 with respect to δ
        # Regrowing q removes w_q from δ: Δe = w_q² H_qq − 2 w_q g_q.
        grow_gain = torch.where(mask, Wf**2 * diag - 2 * Wf * g, inf)
        q = torch.argmin(grow_gain, dim=1)
        wq = Wf[row_ids, q]
        g_after = g - wq.unsqueeze(1) * Hd[q]
        # Pruning p adds w_p to δ: Δe = w_p² H_pp + 2 w_p g_p.
        prune_cost = torch.where(mask, inf, Wf**2 * diag + 2 * Wf * g_after)
        if m:
            same_group = (torch.arange(cols, device=Wf.device).unsqueeze(0) // m) == (q // m).unsqueeze(1)
            prune_cost = torch.where(same_group, prune_cost, inf)
        prune_cost[row_ids, q] = inf
        p = torch.argmin(prune_cost, dim=1)
        change = grow_gain[row_ids, q] + prune_cost[row_ids, p]
        swap = active & (change < -1e-12 * (1 + diag.mean()))
        if not swap.any():
            break
        r = row_ids[swap]
        mask[r, q[swap]] = False
        mask[r, p[swap]] = True
        active &= swap
    return _apply(W, mask), mask


def l1_remove_groups(
    weights: Sequence[torch.Tensor],
    hessians: Sequence[torch.Tensor | None],
    groups: Sequence[torch.Tensor],
    selections: Sequence[GroupSelection],
    **_: object,
) -> tuple[list[torch.Tensor], list[list[int]]]:
    """Structured L1 baseline, called like :func:`obsdiff_hub.maths.group_obs.obs_remove_groups`.

    Each selection removes the groups whose columns have the smallest ``Σ|w|`` over all
    ``weights`` together (stable order on ties); their columns are zeroed, nothing is
    compensated and the Hessians are not used.
    """
    out = [W.clone() for W in weights]
    removed_per_selection: list[list[int]] = []
    for selection in selections:
        if selection.count == 0:
            removed_per_selection.append([])
            continue
        stacked = torch.cat([W.detach().abs().float() for W in out])
        columns = torch.stack([groups[c] for c in selection.candidates]).to(stacked.device)  # [G, g]
        norms = stacked[:, columns].sum((0, 2))
        removed = [selection.candidates[i] for i in torch.argsort(norms, stable=True)[: selection.count].tolist()]
        gone = torch.cat([groups[g] for g in removed])
        for W in out:
            W[:, gone.to(W.device)] = 0
        removed_per_selection.append(removed)
    return out, removed_per_selection
