"""Baselines the paper compares against, with the solvers' calling convention. Imports torch only.

Each unstructured baseline is called like :func:`obsdiff_hub.solvers.obs_prune` and
returns ``(W_pruned, mask)``; none of them updates the kept weights.
"""

from __future__ import annotations

from typing import Sequence

import torch

from .solvers import check_sparsity, column_groups, prepare_layer


def _mask_from_scores(scores: torch.Tensor, sparsity: float, n: int, m: int, per_row: bool) -> torch.Tensor:
    """Prune the lowest scores: per N:M group, per output row, or over the whole layer."""
    rows, cols = scores.shape
    mask = torch.zeros_like(scores, dtype=torch.bool)
    if m:
        if cols % m:
            raise ValueError(f"{n}:{m} sparsity needs the input width ({cols}) to be a multiple of {m}")
        grouped = scores.reshape(rows, cols // m, m)
        idx = torch.topk(grouped, n, dim=-1, largest=False).indices
        return mask.view(rows, cols // m, m).scatter_(-1, idx, True).view(rows, cols)
    if per_row:
        k = round(sparsity * cols)
        if k:
            mask.scatter_(1, torch.topk(scores, k, dim=1, largest=False).indices, True)
        return mask
    k = round(sparsity * scores.numel())
    if k:
        mask.view(-1)[torch.topk(scores.flatten(), k, largest=False).indices] = True
    return mask


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
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match the weight's {W.shape[1]} input columns")
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
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """DSnoT-style training-free mask refinement with a Hessian-based criterion.

    Starts from the Wanda mask. Each cycle, in every row, regrows the pruned weight that
    lowers the row's reconstruction error ``e = δᵀ H δ`` (``δ`` = the pruned weights) the
    most and prunes the kept weight (in the same N:M group) that raises it the least; the
    swap is kept only if ``e`` falls, so the error decreases monotonically and the
    sparsity pattern (per row, or per group) is preserved. Weights are not updated.
    """
    _, mask = wanda_prune(W, H, sparsity, n, m)
    Wf, Hd = prepare_layer(W, H, percdamp)
    rows, cols = Wf.shape
    mask = mask.to(Wf.device).clone()
    diag = torch.diag(Hd)
    row_ids = torch.arange(rows, device=Wf.device)
    active = torch.ones(rows, dtype=torch.bool, device=Wf.device)
    inf = torch.tensor(float("inf"), device=Wf.device)
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


def smallest_l1_groups(W: torch.Tensor, groups: Sequence[torch.Tensor], candidates: Sequence[int], num_remove: int) -> list[int]:
    """The ``num_remove`` candidate groups (equal sizes) whose columns have the smallest ``Σ|w|``."""
    if not 0 <= num_remove <= len(candidates):
        raise ValueError(f"cannot remove {num_remove} of {len(candidates)} groups")
    if num_remove == 0:
        return []
    columns = torch.stack([groups[c] for c in candidates]).to(W.device)  # [G, g]
    norms = W.detach().abs().float()[:, columns].sum((0, 2))
    return [candidates[i] for i in torch.argsort(norms, stable=True)[:num_remove].tolist()]


def l1_prune_columns(
    W: torch.Tensor, H: torch.Tensor | None = None, num_remove: int = 0, group_size: int = 1
) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured L1 baseline: zero the ``num_remove`` column groups with the smallest ``Σ|w|``.

    Returns ``(W_pruned, removed)`` like :func:`obsdiff_hub.solvers.obs_prune_columns`.
    """
    groups = column_groups(W.shape[1], group_size)
    removed = smallest_l1_groups(W, groups, range(len(groups)), num_remove)
    out = W.clone()
    if removed:
        out[:, torch.cat([groups[g] for g in removed]).to(W.device)] = 0
    return out, torch.tensor(removed, dtype=torch.long)
