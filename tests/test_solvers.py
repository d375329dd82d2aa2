import pytest
import torch
from layer_problems import make_problem, recon_error

from obsdiff_hub.solvers import (
    obs_prune,
    obs_prune_columns,
    obs_prune_joint_heads,
    upper_cholesky_of_inverse,
)


def damped(H: torch.Tensor, percdamp: float) -> torch.Tensor:
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    return H + percdamp * torch.diag(H).mean() * torch.eye(len(H), dtype=H.dtype)


def reference_obs(W, H, sparsity, n, m, blocksize, percdamp):
    """Column-by-column OBS with an explicit inverse of the remaining columns' Hessian.

    Deliberately slow and independent of the Cholesky trick: for column j the remaining
    problem is over columns j.., whose inverse Hessian is inv(H[j:, j:]); pruning w_j
    moves the rest of its row by -(w_j / Hinv_00) · Hinv_{0,:}.
    """
    W = W.double().clone()
    W[:, torch.diag(H) == 0] = 0.0  # dead inputs carry no signal
    H = damped(H.double(), percdamp)
    rows, cols = W.shape
    inv_diag = torch.tensor([torch.linalg.inv(H[j:, j:])[0, 0] for j in range(cols)], dtype=torch.float64)
    mask = torch.zeros(rows, cols, dtype=torch.bool)
    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        if not m:
            scores = W[:, i1:i2] ** 2 / inv_diag[i1:i2]
            k = round(sparsity * rows * (i2 - i1))
            flat = torch.zeros(scores.numel(), dtype=torch.bool)
            flat[torch.argsort(scores.flatten())[:k]] = True
            mask[:, i1:i2] = flat.view(rows, i2 - i1)
        for j in range(i1, i2):
            if m and (j - i1) % m == 0:
                scores = W[:, j : j + m] ** 2 / inv_diag[j : j + m]
                for r in range(rows):
                    mask[r, j + torch.argsort(scores[r])[:n]] = True
            Hinv = torch.linalg.inv(H[j:, j:])
            err = torch.where(mask[:, j], W[:, j], torch.zeros(rows, dtype=torch.float64)) / Hinv[0, 0]
            W[:, j:] -= err.unsqueeze(1) * Hinv[0].unsqueeze(0)
            W[mask[:, j], j] = 0.0
    return W, mask


def rel(a, b):
    return float((a.double() - b.double()).norm() / b.double().norm())


def test_upper_cholesky_of_inverse():
    _, _, H = make_problem(4, 40, 200, seed=3)
    U = upper_cholesky_of_inverse(damped(H, 0.01).float())
    assert torch.equal(U, torch.triu(U))
    torch.testing.assert_close((U.T @ U).double(), torch.linalg.inv(damped(H, 0.01)), rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("sparsity,n,m", [(0.5, 0, 0), (0.7, 0, 0), (0.0, 2, 4), (0.0, 4, 8)])
def test_obs_prune_matches_slow_reference(sparsity, n, m):
    W, _, H = make_problem(12, 48, 300, seed=1)
    got, mask = obs_prune(W.float(), H.float(), sparsity, n, m, blocksize=16, percdamp=0.01)
    want, want_mask = reference_obs(W, H, sparsity, n, m, blocksize=16, percdamp=0.01)
    assert torch.equal(mask, want_mask)
    assert rel(got, want) < 1e-5


def test_unstructured_exact_count_per_block_and_zeros_where_masked():
    W, _, H = make_problem(10, 70, 200, seed=2)
    got, mask = obs_prune(W.float(), H.float(), 0.37, blocksize=32)
    for i1 in range(0, 70, 32):
        bc = min(32, 70 - i1)
        assert int(mask[:, i1 : i1 + bc].sum()) == round(0.37 * 10 * bc)
    assert torch.equal(got == 0, mask)


@pytest.mark.parametrize("n,m", [(2, 4), (4, 8)])
def test_n_m_every_group_exact(n, m):
    W, _, H = make_problem(9, 64, 200, seed=4)
    got, mask = obs_prune(W.float(), H.float(), 0.0, n, m, blocksize=20)  # 20 is rounded down to a multiple of m
    assert (mask.view(9, 64 // m, m).sum(-1) == n).all()
    assert torch.equal(got == 0, mask)


def test_dead_columns_are_zeroed_and_dtype_kept():
    W, _, H = make_problem(6, 32, 100, seed=5, dead=3)
    got, _ = obs_prune(W.to(torch.bfloat16), H.float(), 0.5, blocksize=8)
    assert got.dtype == torch.bfloat16
    assert (got[:, :3] == 0).all()


def lstsq_optimum(W, X, H, keep, percdamp):
    """argmin over Ŵ supported on `keep` of tr((W−Ŵ) H_damped (W−Ŵ)ᵀ), via lstsq on X."""
    samples = X.shape[1]
    lam = percdamp * torch.diag(H).mean()
    # H_damped = 2/s · X_aug X_augᵀ with X_aug = [X, sqrt(lam·s/2) I]
    X_aug = torch.cat([X, (lam * samples / 2).sqrt() * torch.eye(len(X), dtype=X.dtype)], dim=1)
    sol = torch.linalg.lstsq(X_aug[keep].T, (W @ X_aug).T).solution.T
    out = torch.zeros_like(W)
    out[:, keep] = sol
    return out


@pytest.mark.parametrize(
    "group_size,num_remove,saliency,batch",
    [(1, 20, "reference", 1), (1, 20, "reference", 8), (8, 3, "reference", 1), (8, 3, "exact", 1), (8, 3, "reference", 2)],
)
def test_structured_equals_least_squares_optimum(group_size, num_remove, saliency, batch):
    W, X, H = make_problem(10, 64, 400, seed=6)
    got, removed = obs_prune_columns(W, H, num_remove, group_size, percdamp=0.01, saliency=saliency, batch=batch)
    assert len(set(removed.tolist())) == num_remove
    cols = torch.cat([torch.arange(g * group_size, (g + 1) * group_size) for g in removed.tolist()])
    keep = torch.ones(64, dtype=torch.bool)
    keep[cols] = False
    assert (got[:, ~keep] == 0).all()
    assert rel(got, lstsq_optimum(W, X, H, keep, 0.01)) < 1e-4


def test_structured_picks_least_salient_single_column_first():
    W, X, H = make_problem(5, 16, 200, seed=7)
    Hd = damped(H, 0.01)
    Hinv = torch.linalg.inv(Hd)
    expected_first = int(torch.argmin((W**2).sum(0) / torch.diag(Hinv)))
    _, removed = obs_prune_columns(W, H, 1)
    assert int(removed[0]) == expected_first


def test_exact_group_saliency_never_reconstructs_worse_on_first_pick():
    W, X, H = make_problem(16, 64, 400, seed=8)
    exact, _ = obs_prune_columns(W, H, 1, 8, saliency="exact")
    ref, _ = obs_prune_columns(W, H, 1, 8, saliency="reference")
    assert recon_error(W, exact, X) <= recon_error(W, ref, X) * (1 + 1e-9)


def test_joint_heads_rrf_and_both_streams_optimal():
    Wa, X, Ha = make_problem(12, 64, 400, seed=9)
    Wb, Xb, Hb = make_problem(7, 64, 400, seed=10)
    got_a, got_b, removed = obs_prune_joint_heads(Wa, Ha, Wb, Hb, 3, head_dim=8)
    assert len(set(removed.tolist())) == 3
    keep = torch.ones(64, dtype=torch.bool)
    for h in removed.tolist():
        keep[h * 8 : (h + 1) * 8] = False
    assert rel(got_a, lstsq_optimum(Wa, X, Ha, keep, 0.01)) < 1e-4
    assert rel(got_b, lstsq_optimum(Wb, Xb, Hb, keep, 0.01)) < 1e-4


def test_joint_heads_first_pick_is_rrf_argmax():
    from obsdiff_hub.solvers import GroupOBS, column_groups

    Wa, _, Ha = make_problem(12, 64, 400, seed=11)
    Wb, _, Hb = make_problem(7, 64, 400, seed=12)
    groups = column_groups(64, 8)
    sa = GroupOBS.from_layer(Wa, Ha, groups).saliencies(range(8))
    sb = GroupOBS.from_layer(Wb, Hb, groups).saliencies(range(8))
    rank_a = torch.argsort(torch.argsort(sa)) + 1
    rank_b = torch.argsort(torch.argsort(sb)) + 1
    fused = 1 / (60 + rank_a.double()) + 1 / (60 + rank_b.double())
    _, _, removed = obs_prune_joint_heads(Wa, Ha, Wb, Hb, 1, head_dim=8)
    assert int(removed[0]) == int(torch.argmax(fused))


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(sparsity=1.0), "sparsity must be in"),
        (dict(sparsity=-0.1), "sparsity must be in"),
        (dict(sparsity=0.0, n=4, m=4), "0 < N < M"),
        (dict(sparsity=0.0, n=2, m=3), "multiple of 3"),
    ],
)
def test_bad_sparsity(kwargs, match):
    W, _, H = make_problem(4, 16, 50)
    with pytest.raises(ValueError, match=match):
        obs_prune(W, H, **kwargs)


def test_bad_shapes_and_nan():
    W, _, H = make_problem(4, 16, 50)
    with pytest.raises(ValueError, match="does not match"):
        obs_prune(W, H[:8, :8], 0.5)
    H_nan = H.clone()
    H_nan[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        obs_prune(W, H_nan, 0.5)
    with pytest.raises(ValueError, match="groups of 5"):
        obs_prune_columns(W, H, 1, group_size=5)
    with pytest.raises(ValueError, match="cannot remove"):
        obs_prune_columns(W, H, 17)
