import pytest
import torch
from layer_problems import make_problem, recon_error

from obsdiff_hub.maths.baselines import (
    dsnot_prune,
    l1_remove_groups,
    magnitude_prune,
    wanda_prune,
)
from obsdiff_hub.maths.group_obs import GroupSelection, column_groups
from obsdiff_hub.maths.obs import obs_prune


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


def test_l1_removes_smallest_groups_over_all_layers_without_compensation():
    W = torch.arange(1, 25, dtype=torch.float32).view(3, 8)
    W[:, 4:6] *= 0.01
    V = torch.ones(2, 8)
    V[:, 0:2] = 0.001  # small in V alone, but W's group 0 is large: the sum over both layers decides
    (out_w, out_v), removed = l1_remove_groups(
        [W, V], [None, None], column_groups(8, 2), [GroupSelection((0, 1, 2, 3), 1)]
    )
    assert removed == [[2]]
    keep = [0, 1, 2, 3, 6, 7]
    assert (out_w[:, 4:6] == 0).all() and torch.equal(out_w[:, keep], W[:, keep])
    assert (out_v[:, 4:6] == 0).all() and torch.equal(out_v[:, keep], V[:, keep])
