"""Optimal Brain Surgeon solvers for linear layers (SPEC §1). Imports torch only.

Conventions: ``W`` is ``[rows, cols]`` (outputs × inputs) and ``H`` is the
``cols × cols`` Hessian of ``||W X − Ŵ X||²``. Every solver works in fp32 on the
device of ``W`` and returns weights in their input dtype; masks are ``True``
where a weight was pruned. Rows are independent given ``H``, so layers that read the
same input (q/k/v, a GEGLU's halves) are solved as one stacked problem with one
factorisation.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

from ..errors import InputError
from .counts import block_removal_counts

HeadSaliency = Literal["reference", "exact"]


# --------------------------------------------------------------------------- checks


def check_sparsity(sparsity: float, n: int = 0, m: int = 0) -> None:
    """Validate a sparsity ratio or an N:M pattern (``n = m = 0`` means unstructured)."""
    if n or m:
        if not (0 < n < m):
            raise InputError(f"N:M sparsity needs 0 < N < M, got {n}:{m}")
        return
    if not 0.0 <= sparsity < 1.0:
        raise InputError(f"sparsity must be in [0, 1), got {sparsity}")


def _check_shapes(W: torch.Tensor, H: torch.Tensor) -> None:
    if W.dim() != 2:
        raise InputError(f"weight must be 2-D [rows, cols], got shape {tuple(W.shape)}")
    if H.shape != (W.shape[1], W.shape[1]):
        raise InputError(f"Hessian shape {tuple(H.shape)} does not match the weight's {W.shape[1]} input columns")


def _check_finite(H: torch.Tensor) -> None:
    # One fp64 reduction instead of an elementwise pass: any NaN or Inf makes the sum non-finite.
    if not bool(torch.isfinite(H.sum(dtype=torch.float64))):
        raise InputError(
            "Hessian contains NaN or Inf; the calibration activations overflowed (calibrate with the `dtype` float32 or bfloat16)"
        )


def _check_layer(W: torch.Tensor, H: torch.Tensor) -> None:
    _check_shapes(W, H)
    _check_finite(H)


def damp_hessian(
    H: torch.Tensor, percdamp: float, device: torch.device | None = None, reversed: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """An fp32 copy of ``H`` with dead inputs (``diag H = 0``) set to 1 and ``percdamp · mean(diag H)``
    added to the diagonal, so the Cholesky exists even with fewer samples than columns.
    ``reversed``: the copy is index-reversed (``J H J``, what :func:`reversed_cholesky` factors),
    made in the same pass. Returns ``(H_damped, dead)`` (``dead`` in the original order); the
    caller zeroes the dead inputs' weights."""
    if percdamp < 0:
        raise InputError(f"percdamp must be non-negative, got {percdamp}")
    H = H.detach().to(device=device or H.device, dtype=torch.float32)
    H = H.flip(0, 1) if reversed else H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    return H, dead.flip(0) if reversed else dead


def prepare_layer(W: torch.Tensor, H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 copies of ``W`` (dead inputs zeroed) and the damped ``H`` (see :func:`damp_hessian`)."""
    _check_layer(W, H)
    H, dead = damp_hessian(H, percdamp, W.device)
    W = W.detach().to(torch.float32).clone()
    W[:, dead] = 0.0
    return W, H


def _cholesky(H: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor. A NaN or Inf anywhere in the lower triangle reaches the factor's
    diagonal, so finiteness is checked there (cheap) and ``H`` is scanned only on failure."""
    L, info = torch.linalg.cholesky_ex(H)
    if bool((info != 0).any()) or not bool(torch.isfinite(torch.diagonal(L, dim1=-2, dim2=-1)).all()):
        _check_finite(H)
        raise InputError(
            "the damped Hessian is not positive definite; raise percdamp (e.g. 0.01 → 0.1) "
            "or calibrate with more samples"
        )
    return L


def reversed_cholesky(H: torch.Tensor, already_reversed: bool = False) -> torch.Tensor:
    """Upper-triangular ``R`` with ``H = R Rᵀ``, from one Cholesky of the index-reversed ``H``
    (``JHJ = L Lᵀ`` gives ``R = J L J``); pass ``JHJ`` itself with ``already_reversed``.

    Then ``H⁻¹ = R⁻ᵀ R⁻¹``: ``U = R⁻¹`` is the upper Cholesky factor of ``H⁻¹`` that the
    SparseGPT walk uses, and ``U``'s diagonal blocks are the inverses of ``R``'s.
    """
    return _cholesky(H if already_reversed else H.flip(0, 1)).flip(0, 1)


def asymmetric_target(W: torch.Tensor, H: torch.Tensor, G: torch.Tensor, percdamp: float = 0.01) -> torch.Tensor:
    """The weight whose OBS pruning solves the asymmetric problem ``min ‖W X − Ŵ X̂‖²``.

    ``H`` is the (damped) Hessian of the drifted inputs ``X̂`` and ``G = 2 (X − X̂)ᵀ X̂`` (same
    normalisation) the cross term with the dense inputs ``X``. The unconstrained optimum is
    ``W* = W X X̂ᵀ (X̂ X̂ᵀ)⁻¹ = W + W G H⁻¹``, and ``‖W X − Ŵ X̂‖² = ‖(W* − Ŵ) X̂‖² + const``: pruning
    ``W*`` with the same ``H`` (any sparsity constraint, unstructured, N:M or groups) is the
    exact asymmetric solution. Cost: one Cholesky and two triangular solves, rows·n² each.
    Returns fp32.
    """
    _check_shapes(W, H)
    Hd, _ = damp_hessian(H, percdamp, W.device)
    L = _cholesky(Hd)
    WG = W.detach().float() @ G.to(device=W.device, dtype=torch.float32)
    # (W G) H⁻¹ = (H⁻¹ (W G)ᵀ)ᵀ with H = L Lᵀ symmetric
    correction = torch.cholesky_solve(WG.T.contiguous(), L).T
    return W.detach().float() + correction


def split_count(count: int, rows: int, cols: int, blocksize: int) -> list[int]:
    """``count`` removals spread over the column blocks of a ``rows × cols`` layer in proportion to
    their sizes (largest remainder), each within its block: the per-block counts sum to ``count``."""
    sizes = [min(blocksize, cols - i) * rows for i in range(0, cols, blocksize)]
    if not 0 <= count <= sum(sizes):
        raise InputError(f"cannot remove {count} of {sum(sizes)} weights")
    exact = [count * size / sum(sizes) for size in sizes]
    counts = [int(e) for e in exact]
    for i in sorted(range(len(sizes)), key=lambda i: counts[i] - exact[i])[: count - sum(counts)]:
        counts[i] += 1
    return counts


# ------------------------------------------------------------- unstructured and N:M


def obs_prune_shared(
    weights: Sequence[torch.Tensor],
    H: torch.Tensor,
    sparsity: float | Sequence[float],
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
    counts: Sequence[int] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Blocked OBS (SparseGPT) pruning of layers that share one input Hessian ``H``.

    Each layer keeps its own exact count: unstructured, at the start of each block of
    ``blocksize`` columns exactly ``round(sparsity · rows · block_cols)`` weights of that
    layer with the smallest saliency ``w² / U_jj²`` (weights as updated so far) are pruned;
    N:M, in every group of ``m`` consecutive columns of a row, the ``n`` least salient,
    chosen when the walk reaches the group. Each pruned column's error is propagated to
    the columns to its right. ``sparsity`` is one ratio or one per layer; unstructured,
    ``counts`` (one per layer) instead sets each layer's exact total, spread over its blocks
    by :func:`split_count` (used by sparsity allocation).

    The rows of all layers are stacked and walked once, column by column, in the
    transposed layout (column j is the contiguous row ``Wt[j]``). With ``H = R Rᵀ``
    (:func:`reversed_cholesky`), ``U = R⁻¹`` is never formed: the errors ``E`` of
    finished blocks enter later blocks through ``Z = E U``, kept by block forward
    substitution, ``Z_b = (E_b − P_b) U_bb`` with ``P_b = Σ_{k<b} Z_k R_kb``; only the
    diagonal blocks ``U_bb = R_bb⁻¹`` are inverted. Cost: one Cholesky (n³/3) plus
    ``rows·cols²`` GEMM FLOPs (the part of ``P_b`` from earlier super-blocks of 4 blocks is
    one larger GEMM per super-block); inside a block, sub-blocks of 16 columns take rank-1
    updates and pass their errors on in one GEMM. No host synchronisation in the walk.
    Returns ``[(W_pruned, mask), ...]`` in the order of ``weights``.
    """
    if not weights:
        return []
    ratios = [float(sparsity)] * len(weights) if isinstance(sparsity, (int, float)) else [float(s) for s in sparsity]
    if len(ratios) != len(weights):
        raise InputError(f"{len(ratios)} sparsities for {len(weights)} layers")
    for ratio in ratios:
        check_sparsity(ratio, n, m)
    if blocksize < 1:
        raise InputError(f"blocksize must be positive, got {blocksize}")
    for W in weights:
        _check_shapes(W, H)  # finiteness: checked on the Cholesky factor
    cols = weights[0].shape[1]
    if counts is not None and (m or len(counts) != len(weights)):
        raise InputError("counts (one per layer) apply to unstructured pruning only")
    if m:
        if cols % m:
            raise InputError(f"{n}:{m} sparsity needs the input width ({cols}) to be a multiple of {m}")
        blocksize = max(m, blocksize - blocksize % m)  # groups never straddle a block
    sub = max(m, 16 - 16 % m) if m else 16
    device = weights[0].device
    Hr, dead = damp_hessian(H, percdamp, device, reversed=True)
    R = reversed_cholesky(Hr, already_reversed=True)
    del Hr
    Wt = torch.cat([W.detach().to(device=device, dtype=torch.float32).T for W in weights], dim=1)  # [cols, rows]
    Wt[dead] = 0.0
    Zt = torch.empty_like(Wt)
    mask = torch.zeros_like(Wt, dtype=torch.bool)
    bounds = torch.tensor([0] + [W.shape[0] for W in weights]).cumsum(0).tolist()
    eye = torch.eye(blocksize, device=device)
    per_block = (
        [split_count(c, W.shape[0], cols, blocksize) for c, W in zip(counts, weights)]
        if counts is not None
        else [block_removal_counts(W.shape[0], cols, ratio, blocksize) for W, ratio in zip(weights, ratios)]
    )

    superblock = 4 * blocksize
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        U_bb = torch.linalg.solve_triangular(R[i1:i2, i1:i2], eye[:count, :count], upper=True)
        d = torch.diag(U_bb)
        block = Wt[i1:i2]
        # P_b = Σ_{k<b} Z_k R_kb: the earlier super-blocks' part once per super-block (one GEMM
        # with 4× the rows, faster), the part from earlier blocks of this super-block per block.
        s1 = i1 - i1 % superblock
        if i1 == s1 and s1:
            P_super = R[:s1, s1 : min(s1 + superblock, cols)].T @ Zt[:s1]
        P_t = P_super[i1 - s1 : i2 - s1].clone() if s1 else None
        if i1 > s1:
            local = R[s1:i1, i1:i2].T @ Zt[s1:i1]
            P_t = local if P_t is None else P_t.add_(local)
        if P_t is not None:
            block.addmm_(U_bb.T, P_t)  # earlier blocks' errors: W_b −= Σ_{k<b} E_k U_kb = −P_b U_bb
        block_mask = mask[i1:i2]
        errors = torch.empty_like(block)
        if not m:
            scores = block.abs() / d.unsqueeze(1)  # orders like w² / d², one pass cheaper
            for layer, (r1, r2) in enumerate(zip(bounds, bounds[1:])):
                k = per_block[layer][i1 // blocksize]
                if k:  # each layer's own count, chosen among its own rows
                    layer_scores = scores[:, r1:r2].reshape(-1)
                    chosen = torch.zeros_like(layer_scores, dtype=torch.bool)
                    chosen[torch.topk(layer_scores, k, largest=False, sorted=False).indices] = True
                    block_mask[:, r1:r2] = chosen.view(count, r2 - r1)
        for s1 in range(0, count, sub):
            s2 = min(s1 + sub, count)
            for i in range(s1, s2):
                if m and i % m == 0:
                    group = (block[i : i + m] / d[i : i + m].unsqueeze(1)) ** 2
                    block_mask[i : i + m].scatter_(0, torch.topk(group, n, dim=0, largest=False).indices, True)
                torch.mul(block[i], block_mask[i] / d[i], out=errors[i])
                if i + 1 < s2:
                    block[i + 1 : s2].addr_(U_bb[i, i + 1 : s2], errors[i], alpha=-1)
            if s2 < count:
                block[s2:].addmm_(U_bb[s1:s2, s2:].T, errors[s1:s2], alpha=-1)
        block.masked_fill_(block_mask, 0.0)  # exact zeros, not round-off residues
        if P_t is not None:
            errors.sub_(P_t)
        torch.mm(U_bb.T, errors, out=Zt[i1:i2])
    return [
        (Wt[:, r1:r2].T.to(W.dtype).contiguous(), mask[:, r1:r2].T.contiguous())
        for (r1, r2), W in zip(zip(bounds, bounds[1:]), weights)
    ]


def obs_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """One layer: :func:`obs_prune_shared` with a single weight. Returns ``(W_pruned, mask)``."""
    return obs_prune_shared([W], H, sparsity, n, m, blocksize, percdamp)[0]


# ------------------------------------------------------------------ structured (groups)


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
        percdamp: float = 0.01,
        saliency: HeadSaliency = "reference",
    ) -> GroupOBS:
        if saliency not in ("reference", "exact"):
            raise InputError(f"saliency must be 'reference' or 'exact', got {saliency!r}")
        W, H = prepare_layer(W, H, percdamp)
        Hinv = torch.cholesky_inverse(_cholesky(H))
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
        chol_diag = torch.diagonal(_cholesky(block), dim1=-2, dim2=-1)  # [G, g]
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
    percdamp: float = 0.01,
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
    compensated with its own Hessian. Selections run in order on the same solvers.
    Removed columns are zeroed (the caller deletes them) and the remaining columns carry
    the compensation: the least-squares optimum over the kept columns.
    Returns ``(pruned weights, removed group indices per selection in removal order)``.
    """
    if len(weights) != len(hessians):
        raise InputError(f"{len(weights)} weights but {len(hessians)} Hessians")
    solvers = [GroupOBS.from_layer(W, H, groups, percdamp, saliency) for W, H in zip(weights, hessians)]
    removed_per_selection: list[list[int]] = []
    for selection in selections:
        remaining = list(selection.candidates)
        removed: list[int] = []
        if selection.count:
            columns = torch.stack([solvers[0].groups[c] for c in remaining])  # stacked once, rows dropped as we go
        while len(removed) < selection.count:
            if len(solvers) == 1:
                take = min(selection.batch, selection.count - len(removed))
                picks = torch.topk(solvers[0].saliencies(columns), take, largest=False).indices.tolist()
            else:
                picks = [rrf_pick([s.saliencies(columns) for s in solvers], rrf_k)]
            chosen = [remaining[p] for p in picks]
            keep = torch.ones(len(remaining), dtype=torch.bool)
            keep[picks] = False
            remaining = [g for g, k in zip(remaining, keep.tolist()) if k]
            columns = columns[keep.to(columns.device)]
            for solver in solvers:
                solver.remove(chosen)
            removed.extend(chosen)
        removed_per_selection.append(removed)
    return [s.W.to(W.dtype) for s, W in zip(solvers, weights)], removed_per_selection
