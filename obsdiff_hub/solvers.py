"""Optimal Brain Surgeon solvers for one linear layer (SPEC §1). Imports torch only.

Conventions: ``W`` is ``[rows, cols]`` (outputs × inputs) and ``H`` is the
``cols × cols`` Hessian of ``||W X − Ŵ X||²``. Every solver works in fp32 on the
device of ``W`` and returns the weight in its input dtype; masks are ``True``
where a weight was pruned.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Sequence

import torch

HeadSaliency = Literal["reference", "exact"]


# --------------------------------------------------------------------------- checks


def check_sparsity(sparsity: float, n: int = 0, m: int = 0) -> None:
    """Validate a sparsity ratio or an N:M pattern (``n = m = 0`` means unstructured)."""
    if n or m:
        if not (0 < n < m):
            raise ValueError(f"N:M sparsity needs 0 < N < M, got {n}:{m}")
        return
    if not 0.0 <= sparsity < 1.0:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")


def _check_layer(W: torch.Tensor, H: torch.Tensor) -> None:
    if W.dim() != 2:
        raise ValueError(f"weight must be 2-D [rows, cols], got shape {tuple(W.shape)}")
    if H.shape != (W.shape[1], W.shape[1]):
        raise ValueError(f"Hessian shape {tuple(H.shape)} does not match the weight's {W.shape[1]} input columns")
    if not torch.isfinite(H).all():
        raise ValueError("Hessian contains NaN or Inf; the calibration activations overflowed (calibrate in fp32/bf16)")


def prepare_layer(W: torch.Tensor, H: torch.Tensor, percdamp: float) -> tuple[torch.Tensor, torch.Tensor]:
    """fp32 copies of ``W`` and the damped ``H``; dead inputs (``diag H = 0``) get 1 and zero weights.

    Damping adds ``percdamp · mean(diag H)`` to the diagonal so the Cholesky exists
    even when calibration saw fewer samples than columns.
    """
    _check_layer(W, H)
    if percdamp < 0:
        raise ValueError(f"percdamp must be non-negative, got {percdamp}")
    W = W.detach().to(torch.float32).clone()
    H = H.detach().to(device=W.device, dtype=torch.float32).clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    W[:, dead] = 0.0
    H.diagonal().add_(percdamp * torch.mean(torch.diag(H)))
    return W, H


def _cholesky(H: torch.Tensor) -> torch.Tensor:
    L, info = torch.linalg.cholesky_ex(H)
    if bool((info != 0).any()):
        raise ValueError(
            "the damped Hessian is not positive definite; raise percdamp (e.g. 0.01 → 0.1) "
            "or calibrate with more samples"
        )
    return L


def upper_cholesky_of_inverse(H: torch.Tensor) -> torch.Tensor:
    """Upper-triangular ``U`` with ``H⁻¹ = Uᵀ U``, without forming ``H⁻¹``.

    With ``J`` the index reversal, ``JHJ = L Lᵀ`` gives ``H = R Rᵀ`` for the upper
    ``R = J L J``, so ``H⁻¹ = R⁻ᵀ R⁻¹`` and ``U = R⁻¹``: one Cholesky and one
    triangular inverse (n³/3 each) instead of Cholesky, inverse and Cholesky again.
    """
    L = _cholesky(H.flip(0, 1))
    R = L.flip(0, 1)
    eye = torch.eye(H.shape[0], dtype=H.dtype, device=H.device)
    return torch.linalg.solve_triangular(R, eye, upper=True)


# ------------------------------------------------------------- unstructured and N:M


def obs_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Blocked OBS (SparseGPT) pruning to ``sparsity`` (or N:M when ``n, m > 0``).

    Columns are walked left to right in blocks of ``blocksize``. Unstructured: at the
    start of each block exactly ``round(sparsity · rows · block_cols)`` weights with the
    smallest saliency ``w² / U_jj²`` (weights as updated so far) are pruned. N:M: in
    every group of ``m`` consecutive columns of a row, the ``n`` least salient weights,
    chosen when the walk reaches the group. Each pruned column's error is propagated to
    the columns to its right: inside the block immediately, beyond it in one GEMM.

    Cost: one Cholesky and one triangular inverse (n³/3 each) plus ``rows·cols²`` FLOPs.
    """
    check_sparsity(sparsity, n, m)
    if blocksize < 1:
        raise ValueError(f"blocksize must be positive, got {blocksize}")
    rows, cols = W.shape
    if m:
        if cols % m:
            raise ValueError(f"{n}:{m} sparsity needs the input width ({cols}) to be a multiple of {m}")
        blocksize = max(m, blocksize - blocksize % m)  # groups never straddle a block
    out_dtype = W.dtype
    W, H = prepare_layer(W, H, percdamp)
    U = upper_cholesky_of_inverse(H)
    mask = torch.zeros_like(W, dtype=torch.bool)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        U1 = U[i1:i2, i1:i2]
        d1 = torch.diag(U1)
        Err1 = torch.zeros_like(W1)
        mask1 = torch.zeros_like(W1, dtype=torch.bool)
        if not m:
            k = round(sparsity * rows * count)
            if k:
                scores = (W1**2 / d1.unsqueeze(0) ** 2).flatten()
                mask1.view(-1)[torch.topk(scores, k, largest=False).indices] = True
        for i in range(count):
            if m and i % m == 0:
                scores = W1[:, i : i + m] ** 2 / d1[i : i + m].unsqueeze(0) ** 2
                mask1[:, i : i + m].scatter_(1, torch.topk(scores, n, dim=1, largest=False).indices, True)
            w = W1[:, i]
            err = torch.where(mask1[:, i], w, torch.zeros_like(w)) / d1[i]
            W1[:, i:].sub_(err.unsqueeze(1) * U1[i, i:].unsqueeze(0))
            Err1[:, i] = err
        W1[mask1] = 0.0  # exact zeros, not round-off residues
        W[:, i1:i2] = W1
        mask[:, i1:i2] = mask1
        W[:, i2:].sub_(Err1 @ U[i1:i2, i2:])
    return W.to(out_dtype), mask


# ------------------------------------------------------------------ structured (groups)


def column_groups(num_columns: int, group_size: int, offset: int = 0) -> list[torch.Tensor]:
    """Consecutive index groups (heads when ``group_size`` is the head dim, neurons when 1)."""
    if group_size < 1 or num_columns % group_size:
        raise ValueError(f"{num_columns} columns cannot be split into groups of {group_size}")
    return [torch.arange(offset + s, offset + s + group_size) for s in range(0, num_columns, group_size)]


@dataclass
class GroupOBS:
    """Removes whole column groups of one layer one at a time with exact OBS compensation.

    Holds ``W`` and the full inverse Hessian ``Hinv``. Removing group ``S`` applies
    ``δW = −W_S (Hinv_SS)⁻¹ Hinv_{S,:}`` and the Schur-complement downdate
    ``Hinv ← Hinv − Hinv_{:,S} (Hinv_SS)⁻¹ Hinv_{S,:}``, which is the inverse Hessian of
    the remaining columns: O(n²·g) per group instead of a fresh O(n³) inverse.
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
            raise ValueError(f"saliency must be 'reference' or 'exact', got {saliency!r}")
        W, H = prepare_layer(W, H, percdamp)
        Hinv = torch.cholesky_inverse(_cholesky(H))
        groups = [g.to(W.device) for g in groups]
        return cls(W=W, Hinv=Hinv, groups=groups, saliency=saliency)

    def saliencies(self, candidates: Sequence[int] | torch.Tensor) -> torch.Tensor:
        """OBS cost of removing each candidate group alone, given the groups already removed.

        ``candidates``: group indices, or their stacked column indices ``[G, g]`` (faster
        when called repeatedly).

        Single columns: ``Σ_rows w_q² / (2 Hinv_qq)``. Groups, ``reference`` (paper Eq. 7
        as implemented by its authors): ``½ Σ_k Σ_rows w_k² / C_kk²`` with ``C`` the
        Cholesky factor of ``Hinv_SS`` (conditional variances). ``exact``:
        ``½ Σ_rows w_Sᵀ (Hinv_SS)⁻¹ w_S``, the true cost of removing the set at once.
        """
        idx = candidates if isinstance(candidates, torch.Tensor) else torch.stack([self.groups[c] for c in candidates])
        w = self.W[:, idx].permute(1, 0, 2)  # [G, rows, g]
        block = self.Hinv[idx.unsqueeze(-1), idx.unsqueeze(-2)]  # [G, g, g]
        if idx.shape[1] == 1:
            return 0.5 * (w.squeeze(-1) ** 2).sum(-1) / block[:, 0, 0]
        if self.saliency == "exact":
            solved = torch.linalg.solve(block, w.transpose(1, 2))  # [G, g, rows]
            return 0.5 * (w.transpose(1, 2) * solved).sum((1, 2))
        chol_diag = torch.diagonal(_cholesky(block), dim1=-2, dim2=-1)  # [G, g]
        return 0.5 * ((w**2) / chol_diag.unsqueeze(1) ** 2).sum((1, 2))

    def remove(self, groups: int | Sequence[int]) -> None:
        """Remove one group (or several at once, as one set), compensating the remaining
        columns and downdating ``Hinv``; exact for the removed set either way."""
        S = self.groups[groups] if isinstance(groups, int) else torch.cat([self.groups[g] for g in groups])
        block_inv = torch.linalg.inv(self.Hinv[S][:, S])
        rows_S = self.Hinv[S, :]  # [g, n]
        self.W.sub_((self.W[:, S] @ block_inv) @ rows_S)
        self.Hinv.sub_(rows_S.T @ (block_inv @ rows_S))
        self.W[:, S] = 0.0
        # Removed columns are decoupled; a unit diagonal keeps later group blocks invertible.
        self.Hinv[S, :] = 0.0
        self.Hinv[:, S] = 0.0
        self.Hinv[S, S] = 1.0


def _rank_ascending(values: torch.Tensor) -> torch.Tensor:
    """Rank 1 for the smallest value (the least salient head)."""
    ranks = torch.empty_like(values, dtype=torch.float64)
    ranks[torch.argsort(values, stable=True)] = torch.arange(1, len(values) + 1, dtype=torch.float64, device=values.device)
    return ranks


def obs_prune_groups(
    solvers: Sequence[GroupOBS],
    candidates: Sequence[int],
    num_remove: int,
    rrf_k: int = 60,
    batch: int = 1,
) -> list[int]:
    """Remove ``num_remove`` of ``candidates`` from every solver in ``solvers`` at once.

    One solver: the least salient group each round; with ``batch`` > 1, the ``batch``
    least salient groups each round, removed as one set (exact OBS update for the set,
    saliencies refreshed between rounds): ``batch``× fewer O(n²) downdates, each a
    rank-``batch`` GEMM. Several solvers (MMDiT joint attention, where one head set
    feeds two output projections): Reciprocal Rank Fusion of the per-solver rankings,
    ``S_j = Σ 1 / (k + rank(j))`` with rank 1 the least salient; the highest fused score
    is removed from all solvers, each compensated with its own Hessian (always one at a
    time). Returns the removed group indices in removal order.
    """
    remaining = list(candidates)
    if not 0 <= num_remove <= len(remaining):
        raise ValueError(f"cannot remove {num_remove} of {len(remaining)} groups")
    if batch < 1:
        raise ValueError(f"batch must be at least 1, got {batch}")
    if num_remove == 0:
        return []
    columns = torch.stack([solvers[0].groups[c] for c in remaining])  # stacked once, rows dropped as we go
    removed: list[int] = []
    while len(removed) < num_remove:
        if len(solvers) == 1:
            take = min(batch, num_remove - len(removed))
            picks = torch.topk(solvers[0].saliencies(columns), take, largest=False).indices.tolist()
        else:
            fused = sum(1.0 / (rrf_k + _rank_ascending(s.saliencies(columns))) for s in solvers)
            picks = [int(torch.argmax(fused))]
        groups = [remaining[p] for p in picks]
        keep = torch.ones(len(remaining), dtype=torch.bool)
        keep[picks] = False
        remaining = [g for g, k in zip(remaining, keep.tolist()) if k]
        columns = columns[keep.to(columns.device)]
        for solver in solvers:
            solver.remove(groups)
        removed.extend(groups)
    return removed


def obs_prune_columns(
    W: torch.Tensor,
    H: torch.Tensor,
    num_remove: int,
    group_size: int = 1,
    percdamp: float = 0.01,
    saliency: HeadSaliency = "reference",
    batch: int = 1,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Structured OBS: remove ``num_remove`` input-column groups of ``group_size`` (neurons or heads).

    The pruned columns are zeroed (the caller deletes them physically) and the remaining
    columns carry the OBS compensation, so the result is the least-squares optimum over
    the kept columns. Cost: one O(n³) inverse, then per round O(n²·g·batch + rows·n·g·batch)
    for the downdate and weight update, with ``num_remove / batch`` rounds (see
    :func:`obs_prune_groups`). Returns ``(W_pruned, removed)``, removed group indices in order.
    """
    _check_layer(W, H)
    solver = GroupOBS.from_layer(W, H, column_groups(W.shape[1], group_size), percdamp, saliency)
    removed = obs_prune_groups([solver], range(len(solver.groups)), num_remove, batch=batch)
    return solver.W.to(W.dtype), torch.tensor(removed, dtype=torch.long)


def obs_prune_joint_heads(
    Wa: torch.Tensor,
    Ha: torch.Tensor,
    Wb: torch.Tensor,
    Hb: torch.Tensor,
    num_remove: int,
    head_dim: int,
    rrf_k: int = 60,
    percdamp: float = 0.01,
    saliency: HeadSaliency = "reference",
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Joint-attention head pruning (MMDiT): two output projections, one head set, RRF fusion.

    ``Wa``/``Ha`` is the image stream's ``to_out.0``, ``Wb``/``Hb`` the text stream's
    ``to_add_out``. Returns ``(Wa_pruned, Wb_pruned, removed_heads)``.
    """
    _check_layer(Wa, Ha)
    _check_layer(Wb, Hb)
    if Wa.shape[1] != Wb.shape[1]:
        raise ValueError(f"joint heads need equal input widths, got {Wa.shape[1]} and {Wb.shape[1]}")
    groups = column_groups(Wa.shape[1], head_dim)
    solvers = [GroupOBS.from_layer(W, H, groups, percdamp, saliency) for W, H in ((Wa, Ha), (Wb, Hb))]
    removed = obs_prune_groups(solvers, range(len(groups)), num_remove, rrf_k)
    return solvers[0].W.to(Wa.dtype), solvers[1].W.to(Wb.dtype), torch.tensor(removed, dtype=torch.long)
