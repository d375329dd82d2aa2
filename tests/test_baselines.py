import pytest
import torch
from layer_problems import make_problem, recon_error

from obsdiff_hub.baselines import (
    dsnot_prune,
    l1_prune_columns,
    magnitude_prune,
    wanda_prune,
)
from obsdiff_hub.solvers import obs_prune


@pytest.mark.parametrize("sparsity", [0.5, 0.7])
def test_reconstruction_orders_obs_wanda_magnitude(sparsity):
    W, X, H = make_problem(64, 128, 1024, seed=21)
    errors = {}
    for name, fn in [("obs", obs_prune), ("wanda", wanda_prune), ("magnitude", magnitude_prune)]:
        W_hat, mask = fn(W.float(), H.float(), sparsity)
        assert abs(int(mask.sum()) - sparsity * W.numel()) <= W.shape[0]  # per-row or per-layer rounding
        errors[name] = recon_error(W, W_hat, X)
    print(f"sparsity {sparsity}: {errors}")
    assert errors["obs"] < errors["wanda"] < errors["magnitude"]


def test_wanda_per_row_and_magnitude_global_counts():
    W, _, H = make_problem(8, 20, 100, seed=2)
    _, mask = wanda_prune(W, H, 0.3)
    assert (mask.sum(1) == round(0.3 * 20)).all()
    _, mask = magnitude_prune(W, None, 0.3)
    assert int(mask.sum()) == round(0.3 * 160)
    assert float(W.abs()[mask].max()) <= float(W.abs()[~mask].min())


@pytest.mark.parametrize("fn", [magnitude_prune, wanda_prune, dsnot_prune])
def test_baselines_n_m(fn):
    W, _, H = make_problem(8, 32, 100, seed=3)
    W_hat, mask = fn(W, H, 0.0, 2, 4)
    assert (mask.view(8, 8, 4).sum(-1) == 2).all()
    assert torch.equal(W_hat == 0, mask)


def test_dsnot_keeps_per_row_sparsity_and_improves_on_wanda():
    W, X, H = make_problem(32, 64, 512, seed=4)
    wanda, _ = wanda_prune(W, H, 0.5)
    dsnot, mask = dsnot_prune(W, H, 0.5)
    assert (mask.sum(1) == 32).all()
    assert recon_error(W, dsnot, X) < recon_error(W, wanda, X)


def test_l1_columns_removes_smallest_groups():
    W = torch.arange(1, 25, dtype=torch.float32).view(3, 8)
    W[:, 4:6] *= 0.01
    out, removed = l1_prune_columns(W, None, 1, group_size=2)
    assert removed.tolist() == [2]
    assert (out[:, 4:6] == 0).all() and torch.equal(out[:, :4], W[:, :4])
