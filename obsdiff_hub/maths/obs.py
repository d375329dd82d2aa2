"""Optimal Brain Surgeon for unstructured and N:M sparsity (SPEC §1). Imports torch only.

Two implementations of one algorithm, held equal by the tests:

- :func:`obs_prune` is the paper's loop (Algorithm 1, SparseGPT's ``fasterprune``) for one layer,
  written to be read: the reference.
- :func:`obs_prune_shared` is what the engine runs: layers that read the same input (q/k/v, a
  GEGLU's halves) stacked into one walk over one factorisation, each keeping its own count, with
  the error propagation cut into cache-friendly steps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InputError
from .counts import block_removal_counts, check_sparsity, split_count
from .factor import (
    check_shapes,
    compute_dtype,
    damp_hessian,
    inverse_upper_factor,
    prepare_layer,
    reversed_cholesky,
)
from .selection import smallest, smallest_n_of_m


def walk_blocksize(blocksize: int, m: int) -> int:
    """The walk's block width: with N:M, a multiple of ``m``, so no group straddles two blocks."""
    if blocksize < 1:
        raise InputError(f"blocksize must be positive, got {blocksize}")
    return max(m, blocksize - blocksize % m) if m else blocksize


def obs_prune(
    W: torch.Tensor,
    H: torch.Tensor,
    sparsity: float = 0.5,
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    damping_fraction: float = 0.01,
    count: int | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Prune one layer the way the paper's Algorithm 1 does; returns ``(W_pruned, mask)``.

    With ``U`` the upper Cholesky factor of ``H⁻¹``, walk the columns left to right in blocks. At a
    block's start, choose its mask by the saliency ``w² / U_jj²`` (unstructured: the block's share of
    the layer's count, ``count`` if given, else ``round(sparsity · rows · width)``; N:M: the ``n``
    least salient of each group of ``m`` when the walk reaches it). Remove column ``j``'s pruned
    weights and move their error onto the columns to its right, ``δW = −(w_pruned / U_jj) U_{j,:}``;
    at the block's end, pass the block's errors on to all later columns in one product.
    """
    check_sparsity(sparsity, n, m)
    dtype, (rows, cols) = W.dtype, W.shape
    W, H = prepare_layer(W, H, damping_fraction)
    blocksize = walk_blocksize(blocksize, m)
    U = inverse_upper_factor(H)
    budget = (
        split_count(count, rows, cols, blocksize)
        if count is not None
        else block_removal_counts(rows, cols, sparsity, blocksize)
    )
    mask = torch.zeros_like(W, dtype=torch.bool)
    for block, i1 in enumerate(range(0, cols, blocksize)):
        i2 = min(i1 + blocksize, cols)
        W1, U1, M1 = W[:, i1:i2], U[i1:i2, i1:i2], mask[:, i1:i2]  # views: updates land in W and mask
        d = U1.diagonal()
        E1 = torch.zeros_like(W1)
        if not m:
            M1[:] = smallest((W1 / d) ** 2, budget[block])
        for j in range(i2 - i1):
            if m and j % m == 0:
                M1[:, j : j + m] = smallest_n_of_m((W1[:, j : j + m] / d[j : j + m]) ** 2, n, m)
            E1[:, j] = W1[:, j] * M1[:, j] / d[j]  # the pruned part of column j, over U_jj
            W1[:, j:] -= E1[:, j : j + 1] * U1[j, j:]
        W[:, i2:] -= E1 @ U[i1:i2, i2:]  # the lazy update of every later block
    W[mask] = 0.0  # exact zeros, not round-off residues
    return W.to(dtype), mask


def obs_prune_shared(
    weights: Sequence[torch.Tensor],
    H: torch.Tensor,
    sparsity: float | Sequence[float],
    n: int = 0,
    m: int = 0,
    blocksize: int = 128,
    damping_fraction: float = 0.01,
    counts: Sequence[int] | None = None,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`obs_prune` for layers that share one input Hessian ``H``, as one stacked walk.

    Each layer keeps its own exact count (``sparsity``: one ratio, or one per layer; unstructured,
    ``counts`` instead sets each layer's total, spread over its blocks by :func:`split_count`).
    The result equals :func:`obs_prune` layer by layer (masks identical, weights to round-off).

    What makes it fast (all of it in :class:`_Walk`): the layers' rows are stacked and walked in
    the transposed layout (column ``j`` is the contiguous row ``Wt[j]``). ``U = R⁻¹`` with
    ``H = R Rᵀ`` (:func:`reversed_cholesky`) is never formed: the errors ``E`` of finished blocks
    enter later blocks through ``Z = E U``, kept by block forward substitution; only the diagonal
    blocks ``U_bb = R_bb⁻¹`` are inverted. Cost: one Cholesky (n³/3) plus ``rows·cols²`` GEMM FLOPs,
    and no host synchronisation. Returns ``[(W_pruned, mask), ...]`` in the order of ``weights``.
    """
    if not weights:
        return []
    ratios = [float(sparsity)] * len(weights) if isinstance(sparsity, (int, float)) else [float(s) for s in sparsity]
    if len(ratios) != len(weights):
        raise InputError(f"{len(ratios)} sparsities for {len(weights)} layers")
    if counts is not None and (m or len(counts) != len(weights)):
        raise InputError("counts (one per layer) apply to unstructured pruning only")
    for ratio in ratios:
        check_sparsity(ratio, n, m)
    for W in weights:
        check_shapes(W, H)  # finiteness: checked on the Cholesky factor
    blocksize = walk_blocksize(blocksize, m)
    cols = weights[0].shape[1]
    if m and cols % m:
        raise InputError(f"{n}:{m} sparsity needs the input width ({cols}) to be a multiple of {m}")
    rows = [W.shape[0] for W in weights]
    budgets = (
        [split_count(c, r, cols, blocksize) for c, r in zip(counts, rows)]
        if counts is not None
        else [block_removal_counts(r, cols, ratio, blocksize) for r, ratio in zip(rows, ratios)]
    )
    walk = _Walk.start(weights, H, damping_fraction, blocksize)
    for index, i1 in enumerate(range(0, cols, blocksize)):
        block = walk.open_block(i1, min(i1 + blocksize, cols))
        if m:
            walk.prune_columns(block, n, m)
        else:
            walk.choose_mask(block, [budget[index] for budget in budgets])
            walk.prune_columns(block)
        walk.close_block(block)
    return walk.results(weights)


SUB_BLOCK = 16  # columns updated rank-1 before their errors go on in one GEMM


@dataclass
class _Block:
    """One block of the walk: columns ``i1:i2``, their diagonal block of ``U``, and views into the walk."""

    i1: int
    i2: int
    U: torch.Tensor  # U_bb = R_bb⁻¹
    values: torch.Tensor  # Wt[i1:i2], updated in place
    mask: torch.Tensor  # the walk's mask rows i1:i2
    earlier: torch.Tensor | None  # P_b = Σ_{k<b} R_kbᵀ Z_k: how finished blocks' errors reach this one
    errors: torch.Tensor | None = None  # E_b: each column's pruned part over U_jj, once pruned

    @property
    def d(self) -> torch.Tensor:
        return torch.diagonal(self.U)


@dataclass
class _Walk:
    """The state of the stacked walk (everything transposed: ``[cols, rows of all layers]``)."""

    R: torch.Tensor  # H = R Rᵀ, upper triangular
    Wt: torch.Tensor  # the weights being pruned
    Zt: torch.Tensor  # Z = E U for finished blocks
    mask: torch.Tensor  # True where pruned
    bounds: list[int]  # layer i owns rows bounds[i]:bounds[i+1]
    superblock: int  # P_b's part from earlier super-blocks is one GEMM per super-block
    cached: torch.Tensor | None = None  # that part, for the current super-block

    @classmethod
    def start(cls, weights: Sequence[torch.Tensor], H: torch.Tensor, damping_fraction: float, blocksize: int) -> _Walk:
        """Damp and factor ``H`` once; stack the layers' weights, dead inputs zeroed."""
        device, dtype = weights[0].device, compute_dtype(weights[0])
        Hr, dead = damp_hessian(H, damping_fraction, device, reversed=True, dtype=dtype)
        R = reversed_cholesky(Hr, already_reversed=True)
        del Hr
        Wt = torch.cat([W.detach().to(device=device, dtype=dtype).T for W in weights], dim=1)
        Wt[dead] = 0.0
        bounds = torch.tensor([0] + [W.shape[0] for W in weights]).cumsum(0).tolist()
        mask = torch.zeros_like(Wt, dtype=torch.bool)
        return cls(R, Wt, torch.empty_like(Wt), mask, bounds, 4 * blocksize)

    def earlier_errors(self, i1: int, i2: int) -> torch.Tensor | None:
        """``P_b = Σ_{k<b} R_kbᵀ Z_k`` for the block ``i1:i2``: the part from earlier super-blocks
        (one GEMM with 4× the rows per super-block, cached) plus that from this super-block's blocks."""
        start = i1 - i1 % self.superblock
        if i1 == start and start:
            stop = min(start + self.superblock, self.R.shape[0])
            self.cached = self.R[:start, start:stop].T @ self.Zt[:start]
        P = self.cached[i1 - start : i2 - start].clone() if start else None
        if i1 > start:
            local = self.R[start:i1, i1:i2].T @ self.Zt[start:i1]
            P = local if P is None else P.add_(local)
        return P

    def open_block(self, i1: int, i2: int) -> _Block:
        """The block with every finished block's errors applied: ``W_b −= Σ_{k<b} E_k U_kb``."""
        width = i2 - i1
        eye = torch.eye(width, device=self.R.device, dtype=self.R.dtype)
        U = torch.linalg.solve_triangular(self.R[i1:i2, i1:i2], eye, upper=True)
        block = _Block(i1, i2, U, self.Wt[i1:i2], self.mask[i1:i2], self.earlier_errors(i1, i2))
        if block.earlier is not None:
            block.values.addmm_(U.T, block.earlier)
        return block

    def choose_mask(self, block: _Block, counts: Sequence[int]) -> None:
        """Unstructured: each layer's ``counts[i]`` least salient weights of the block (``w² / U_jj²``)."""
        scores = (block.values / block.d.unsqueeze(1)) ** 2
        for (r1, r2), count in zip(zip(self.bounds, self.bounds[1:]), counts):
            block.mask[:, r1:r2] = smallest(scores[:, r1:r2], count)

    def prune_columns(self, block: _Block, n: int = 0, m: int = 0) -> None:
        """Prune the block column by column (N:M: choosing each group's mask on arrival), each
        pruned weight's error moved onto the columns to its right: rank-1 updates inside a sub-block
        of 16 columns, one GEMM from a sub-block to the rest of the block."""
        values, mask, U, d = block.values, block.mask, block.U, block.d
        width = block.i2 - block.i1
        errors = torch.empty_like(values)
        for s1 in range(0, width, SUB_BLOCK):
            s2 = min(s1 + SUB_BLOCK, width)
            for j in range(s1, s2):
                if m and j % m == 0:
                    group = (values[j : j + m] / d[j : j + m].unsqueeze(1)) ** 2
                    mask[j : j + m] = smallest_n_of_m(group.T, n, m).T
                torch.mul(values[j], mask[j] / d[j], out=errors[j])
                if j + 1 < s2:
                    values[j + 1 : s2].addr_(U[j, j + 1 : s2], errors[j], alpha=-1)
            if s2 < width:
                values[s2:].addmm_(U[s1:s2, s2:].T, errors[s1:s2], alpha=-1)
        values.masked_fill_(mask, 0.0)  # exact zeros, not round-off residues
        block.errors = errors

    def close_block(self, block: _Block) -> None:
        """Record the block's errors for later blocks: ``Z_b = (E_b − P_b) U_bb``."""
        errors = block.errors
        assert errors is not None, "prune_columns comes first"
        if block.earlier is not None:
            errors.sub_(block.earlier)
        torch.mm(block.U.T, errors, out=self.Zt[block.i1 : block.i2])

    def results(self, weights: Sequence[torch.Tensor]) -> list[tuple[torch.Tensor, torch.Tensor]]:
        """Each layer's pruned weight (in its own dtype) and mask, untransposed."""
        return [
            (self.Wt[:, r1:r2].T.to(W.dtype).contiguous(), self.mask[:, r1:r2].T.contiguous())
            for (r1, r2), W in zip(zip(self.bounds, self.bounds[1:]), weights)
        ]
