"""Random layer problems with correlated, unevenly scaled inputs, like real activations."""

import torch


def make_problem(rows: int, cols: int, samples: int, seed: int = 0, dead: int = 0):
    """Return ``(W, X, H)`` with ``X`` of shape [cols, samples] and ``H = 2 X Xᵀ / samples``."""
    g = torch.Generator().manual_seed(seed)
    mixing = torch.randn(cols, cols, generator=g) / cols**0.5 + torch.eye(cols)
    scales = torch.exp(torch.randn(cols, generator=g))
    X = (mixing @ torch.randn(cols, samples, generator=g)) * scales.unsqueeze(1)
    X = X.double()
    if dead:
        X[:dead] = 0.0
    W = torch.randn(rows, cols, generator=g, dtype=torch.float64)
    H = 2 * X @ X.T / samples
    return W, X, H


def recon_error(W, W_hat, X) -> float:
    return float(((W.double() - W_hat.double()) @ X).pow(2).sum())
