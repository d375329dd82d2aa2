"""Closer to the layer optimum than the greedy pass: the mask-fixed least-squares re-fit, and ADMM
over masks and weights. Imports torch only.

The layer problem (SPEC §1) for layers that read one input: minimise
``f(Ŵ) = ½ tr((Ŵ − W) H (Ŵ − W)ᵀ)`` over ``Ŵ`` in the sparsity set ``S`` (an exact count of zeros
per layer, or ``n`` zeros in every group of ``m`` consecutive inputs of a row). OBS-Diff's solver
(SparseGPT's) walks the columns once, fixing each column's mask and compensating only the
columns to its right, so its result is neither the best weights for its own mask nor the best
mask. Two refinements, both started from that result:

- :func:`refit` keeps the mask and solves the kept weights to the optimum. For a fixed mask the
  rows are independent quadratic problems ``w_K H_KK = (W H)_K``; preconditioned conjugate
  gradients (Jacobi preconditioner) solves all rows at once.
- :func:`admm_masks` alternates, in the scaled problem (``D⁻¹ H D⁻¹`` with unit diagonal, so a
  weight's magnitude is its diagonal saliency), a ridge step
  ``B = (W H − V + ρ Z)(H + ρ I)⁻¹`` with a projection ``Z = proj_S(B + V/ρ)`` and a dual step
  ``V += ρ (B − Z)``, growing ρ on a fixed schedule until the mask settles (ALPS, Meng et al. 2024;
  Boža 2024). A few steps suffice from the OBS start. The final mask is then re-fitted exactly, and the
  result is kept only where it beats the starting point on the layer's own objective.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Sequence

import torch

from ..errors import InputError
from .factor import damp_hessian
from .selection import smallest, smallest_n_of_m


@dataclass(frozen=True)
class AdmmSettings:
    """``iterations``: ADMM steps at most; ``rho``: the first penalty, relative to the unit
    diagonal of the scaled Hessian, multiplied by ``rho_growth`` every ``rho_every`` steps;
    ``refit_iterations`` / ``refit_tolerance``: conjugate-gradient steps at most, and the relative
    residual at which the re-fit stops; ``step_dtype``: the dtype of the ADMM steps' one product
    (bf16 was 3× faster than fp32 on this project's CPU, which has AVX-512 bf16, and moved the layer
    error by under 0.2%; GPUs are unmeasured; the factorisation, projection and re-fit stay fp32).
    The defaults are the schedule measured best within 10× the OBS solve at real shapes
    (BENCHMARKS.md, "ADMM at real scale"); layer groups under ``thorough_below`` weights run
    :data:`THOROUGH` instead (see :meth:`for_size`)."""

    iterations: int = 10
    rho: float = 0.2
    rho_growth: float = 3.0
    rho_every: int = 5
    refit_iterations: int = 2
    refit_tolerance: float = 1e-6
    step_dtype: torch.dtype = torch.bfloat16
    thorough_below: int = 1 << 19

    def for_size(self, weights: int) -> AdmmSettings:
        """The schedule for a group of layers holding ``weights`` weights: below ``thorough_below`` the long
        schedule (:data:`THOROUGH`), which costs a second or less there (0.9 s at 640×640 on 2 CPU cores) and
        beats the short one on small trained models (BENCHMARKS.md, "ADMM at real scale"); this one otherwise."""
        return THOROUGH if weights < self.thorough_below else self


THOROUGH = AdmmSettings(
    iterations=60, rho=0.1, rho_growth=1.2, rho_every=4, refit_iterations=100, step_dtype=torch.float32
)


def layer_error(W: torch.Tensor, W_new: torch.Tensor, H: torch.Tensor) -> torch.Tensor:
    """``tr((Ŵ − W) H (Ŵ − W)ᵀ)`` per row (the layer objective, times two)."""
    delta = W_new - W
    return ((delta @ H) * delta).sum(1)


def refit(
    W: torch.Tensor,
    H: torch.Tensor,
    mask: torch.Tensor,
    start: torch.Tensor | None = None,
    iterations: int = 100,
    tolerance: float = 1e-6,
) -> torch.Tensor:
    """The kept weights solved to the optimum of ``tr((Ŵ − W) H (Ŵ − W)ᵀ)`` with the pruned ones
    (``mask`` True) at zero: ``Ŵ_K H_KK = (W H)_K`` per row, by Jacobi-preconditioned conjugate
    gradients over all rows at once. ``H`` must be positive definite on every kept set (damped).
    ``start``: the initial guess (default: ``W`` masked). Computes in ``W``'s dtype, at least fp32."""
    dtype = torch.promote_types(W.dtype, torch.float32)
    W, H = W.to(dtype), H.to(device=W.device, dtype=dtype)
    kept = (~mask.to(W.device)).to(dtype)
    X = (start.to(dtype) if start is not None else W) * kept
    inverse_diag = 1.0 / torch.diagonal(H)
    R = ((W - X) @ H) * kept  # the negative gradient on the kept weights
    Z = R * inverse_diag
    P = Z.clone()
    rz = (R * Z).sum(1)
    tiny = torch.finfo(dtype).tiny
    scale = ((W @ H) * kept).norm(dim=1).clamp_min(tiny)
    for step in range(iterations):
        Q = (P @ H) * kept
        curvature = (P * Q).sum(1)
        alpha = torch.where(curvature > 0, rz / curvature.clamp_min(tiny), torch.zeros_like(rz))
        X.addcmul_(alpha.unsqueeze(1), P)
        R.addcmul_(alpha.unsqueeze(1), Q, value=-1)
        if (step + 1) % 8 == 0 and bool((R.norm(dim=1) <= tolerance * scale).all()):
            break
        Z = R * inverse_diag
        rz_new = (R * Z).sum(1)
        beta = torch.where(rz > 0, rz_new / rz.clamp_min(tiny), torch.zeros_like(rz))
        P = Z + beta.unsqueeze(1) * P
        rz = rz_new
    return X * kept


def project(
    values: torch.Tensor, bounds: Sequence[int], counts: Sequence[int], n: int = 0, m: int = 0
) -> torch.Tensor:
    """The sparsity pattern closest to ``values`` (the mask, True where pruned): per layer (rows
    ``bounds[i]:bounds[i+1]``) its ``counts[i]`` smallest magnitudes, or with ``m`` the ``n`` smallest of
    every group of ``m`` consecutive columns of each row."""
    magnitude = values.abs()
    if m:
        return smallest_n_of_m(magnitude, n, m)
    mask = torch.zeros_like(values, dtype=torch.bool)
    for (r1, r2), count in zip(zip(bounds, bounds[1:]), counts):
        mask[r1:r2] = smallest(magnitude[r1:r2], count)
    return mask


def refine(
    weights: Sequence[torch.Tensor],
    H: torch.Tensor,
    starts: Sequence[torch.Tensor],
    masks: Sequence[torch.Tensor],
    *,
    search: bool = True,
    n: int = 0,
    m: int = 0,
    damping_fraction: float = 0.01,
    settings: AdmmSettings = AdmmSettings(),
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """Refine layers that share ``H``, each from its pruned start (``starts`` with their ``masks``).
    ``search``: ADMM looks for a better mask first (:func:`admm_masks`); otherwise the start's mask
    is kept and only the weights are re-fitted (``solver: obs+lsq``). Per layer the better of the
    result and its start on ``tr((Ŵ − W) H (Ŵ − W)ᵀ)`` (undamped ``H``) is returned, so no layer gets
    worse. Each layer keeps its start's zero count (unstructured) or N:M pattern.
    Returns ``[(Ŵ, mask), ...]`` like the solvers."""
    if not weights:
        return []
    if len(starts) != len(weights) or len(masks) != len(weights):
        raise InputError(f"{len(weights)} layers but {len(starts)} starting points and {len(masks)} masks")
    device = weights[0].device
    W = torch.cat([w.detach().to(device=device, dtype=torch.float32) for w in weights])
    start = torch.cat([s.detach().to(device=device, dtype=torch.float32) for s in starts])
    start_mask = torch.cat([mask.to(device) for mask in masks])
    bounds = torch.tensor([0] + [w.shape[0] for w in weights]).cumsum(0).tolist()
    H = H.detach().to(device=device, dtype=torch.float32)
    Hd, dead = damp_hessian(H, damping_fraction, device)
    W[:, dead] = 0.0  # inputs that never carry signal: their weights are zeros, pruned first
    if search:
        settings = settings.for_size(W.numel())
        counts = [int(start_mask[r1:r2].sum()) for r1, r2 in zip(bounds, bounds[1:])]
        mask, guess = admm_masks(W, Hd, start, start_mask, bounds, counts, n, m, settings)
    else:
        mask, guess = start_mask, start
    refined = refit(W, Hd, mask, start=guess, iterations=settings.refit_iterations, tolerance=settings.refit_tolerance)
    out = []
    for (r1, r2), w, s, k in zip(zip(bounds, bounds[1:]), weights, starts, masks):
        error = float(layer_error(W[r1:r2], refined[r1:r2], H).sum())
        better = error <= float(layer_error(W[r1:r2], start[r1:r2], H).sum())
        out.append((refined[r1:r2].to(w.dtype), mask[r1:r2]) if better else (s.to(w.dtype), k.to(device)))
    return out


def admm_masks(
    W: torch.Tensor,
    Hd: torch.Tensor,
    start: torch.Tensor,
    start_mask: torch.Tensor,
    bounds: Sequence[int],
    counts: Sequence[int],
    n: int,
    m: int,
    settings: AdmmSettings,
) -> tuple[torch.Tensor, torch.Tensor]:
    """ADMM from ``start`` (pruned by ``start_mask``) on the scaled problem (unit-diagonal ``D⁻¹ Hd D⁻¹``): the
    mask it settles on (True where pruned) and its weights, unscaled (a starting guess for the re-fit).

    ρ is held for ``rho_every`` steps, then multiplied by ``rho_growth``; the run stops early once the mask
    held still for a whole ρ. Each ρ costs one Cholesky inverse of ``Hs + ρI`` (about 3 fp32 steps at
    1280×5120, where one eigendecomposition serving every ρ costs about 25), each step one product with it."""
    d = torch.sqrt(torch.diagonal(Hd))
    Hs = Hd / d.unsqueeze(0) / d.unsqueeze(1)
    dtype = settings.step_dtype
    target = ((W * d).to(dtype) @ Hs.to(dtype)).to(W.dtype)  # W H in the scaled variables, as precise as a step
    Z = start * d
    V = torch.zeros_like(Z)
    rho = settings.rho
    mask = checked = start_mask
    for step in range(settings.iterations):
        if step and step % settings.rho_every == 0:
            if bool((mask == checked).all()):
                break  # the mask held still for a whole ρ: larger ρ only pins it
            checked, rho = mask, rho * settings.rho_growth
        if step % settings.rho_every == 0:
            inverse = ridge_inverse(Hs, rho).to(dtype)
        B = ((target - V + rho * Z).to(dtype) @ inverse).to(W.dtype)
        U = B + V / rho
        mask = project(U, bounds, counts, n, m)
        Z = U.masked_fill_(mask, 0.0)
        V.add_(B.sub_(Z), alpha=rho)
    return mask, Z / d


def ridge_inverse(Hs: torch.Tensor, rho: float) -> torch.Tensor:
    """``(Hs + ρI)⁻¹`` from its Cholesky factor (``Hs`` symmetric positive definite, so the factor exists)."""
    shifted = Hs.clone()
    shifted.diagonal().add_(rho)
    return torch.cholesky_inverse(torch.linalg.cholesky(shifted))
