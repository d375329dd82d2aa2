"""The damped layer Hessian and its factors: what every OBS solve starts from. Imports torch only.

``H`` is singular whenever a layer saw fewer calibration samples than it has inputs, or an input
that never carries signal (``diag H = 0``). SparseGPT's remedy, which the paper keeps: set dead
inputs' diagonal to 1 (their weights are zeroed) and add ``damping_fraction · mean(diag H)`` to the
diagonal, so the Cholesky factor exists.
"""

from __future__ import annotations

import torch

from ..errors import InputError


def compute_dtype(W: torch.Tensor) -> torch.dtype:
    """The dtype a solve runs in: ``W``'s, at least fp32 (half-precision weights solve in fp32)."""
    return torch.promote_types(W.dtype, torch.float32)


def check_shapes(W: torch.Tensor, H: torch.Tensor) -> None:
    if W.dim() != 2:
        raise InputError(f"weight must be 2-D [rows, cols], got shape {tuple(W.shape)}")
    if H.shape != (W.shape[1], W.shape[1]):
        raise InputError(f"Hessian shape {tuple(H.shape)} does not match the weight's {W.shape[1]} input columns")


def check_finite(H: torch.Tensor) -> None:
    """One fp64 reduction instead of an elementwise pass: any NaN or Inf makes the sum non-finite."""
    if not bool(torch.isfinite(H.sum(dtype=torch.float64))):
        raise InputError(
            "a layer's Hessian contains NaN or Inf: the calibration activations overflowed (calibrate with the "
            "`dtype` float32 or bfloat16), or the damping made it overflow (lower `damping_fraction`)"
        )


def damp_hessian(
    H: torch.Tensor,
    damping_fraction: float,
    device: torch.device | None = None,
    reversed: bool = False,
    dtype: torch.dtype = torch.float32,
) -> tuple[torch.Tensor, torch.Tensor]:
    """A copy of ``H`` in ``dtype`` with dead inputs (``diag H = 0``) set to 1 and
    ``damping_fraction · mean(diag H)`` added to the diagonal.
    ``reversed``: the copy is index-reversed (``J H J``, what :func:`reversed_cholesky` factors),
    made in the same pass. Returns ``(H_damped, dead)`` (``dead`` in the original order); the
    caller zeroes the dead inputs' weights."""
    if damping_fraction < 0:
        raise InputError(f"damping_fraction must be non-negative, got {damping_fraction}")
    H = H.detach().to(device=device or H.device, dtype=dtype)
    H = H.flip(0, 1) if reversed else H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    H.diagonal().add_(damping_fraction * torch.mean(torch.diag(H)))
    return H, dead.flip(0) if reversed else dead


def prepare_layer(W: torch.Tensor, H: torch.Tensor, damping_fraction: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Copies of ``W`` (dead inputs zeroed) and the damped ``H``, in the solve's dtype on ``W``'s device."""
    check_shapes(W, H)
    check_finite(H)
    dtype = compute_dtype(W)
    H, dead = damp_hessian(H, damping_fraction, W.device, dtype=dtype)
    W = W.detach().to(dtype).clone()
    W[:, dead] = 0.0
    return W, H


def cholesky(H: torch.Tensor) -> torch.Tensor:
    """Lower Cholesky factor. A NaN or Inf anywhere in the lower triangle reaches the factor's
    diagonal, so finiteness is checked there (cheap) and ``H`` is scanned only on failure."""
    L, info = torch.linalg.cholesky_ex(H)
    if bool((info != 0).any()) or not bool(torch.isfinite(torch.diagonal(L, dim1=-2, dim2=-1)).all()):
        check_finite(H)
        raise InputError(
            "the damped Hessian is not positive definite; raise damping_fraction (e.g. 0.01 → 0.1) "
            "or calibrate with more samples"
        )
    return L


def inverse_upper_factor(H: torch.Tensor) -> torch.Tensor:
    """``U`` upper-triangular with ``H⁻¹ = Uᵀ U``: the factor SparseGPT's walk reads its updates from."""
    return torch.linalg.cholesky(torch.cholesky_inverse(cholesky(H)), upper=True)


def reversed_cholesky(H: torch.Tensor, already_reversed: bool = False) -> torch.Tensor:
    """Upper-triangular ``R`` with ``H = R Rᵀ``, from one Cholesky of the index-reversed ``H``
    (``JHJ = L Lᵀ`` gives ``R = J L J``); pass ``JHJ`` itself with ``already_reversed``.

    Then ``H⁻¹ = R⁻ᵀ R⁻¹``: ``U = R⁻¹`` is :func:`inverse_upper_factor`'s ``U`` without inverting
    ``H``, and ``U``'s diagonal blocks are the inverses of ``R``'s.
    """
    return cholesky(H if already_reversed else H.flip(0, 1)).flip(0, 1)


def asymmetric_target(
    W: torch.Tensor, H: torch.Tensor, G: torch.Tensor, damping_fraction: float = 0.01
) -> torch.Tensor:
    """The weight whose OBS pruning solves the asymmetric problem ``min ‖W X − Ŵ X̂‖²``.

    ``H`` is the Hessian of the drifted inputs ``X̂`` and ``G = 2 (X − X̂)ᵀ X̂`` (same
    normalisation) the cross term with the dense inputs ``X``. The unconstrained optimum is
    ``W* = W X X̂ᵀ (X̂ X̂ᵀ)⁻¹ = W + W G H⁻¹``, and ``‖W X − Ŵ X̂‖² = ‖(W* − Ŵ) X̂‖² + const``: pruning
    ``W*`` with the same ``H`` (any sparsity constraint, unstructured, N:M or groups) is the
    exact asymmetric solution. Cost: one Cholesky and two triangular solves, rows·n² each.
    """
    check_shapes(W, H)
    dtype = compute_dtype(W)
    Hd, _ = damp_hessian(H, damping_fraction, W.device, dtype=dtype)
    L = cholesky(Hd)
    WG = W.detach().to(dtype) @ G.to(device=W.device, dtype=dtype)
    # (W G) H⁻¹ = (H⁻¹ (W G)ᵀ)ᵀ with H = L Lᵀ symmetric
    correction = torch.cholesky_solve(WG.T.contiguous(), L).T
    return W.detach().to(dtype) + correction
