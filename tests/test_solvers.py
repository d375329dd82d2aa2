import pytest
import torch
from layer_problems import make_problem, recon_error

from obsdiff_hub.maths.factor import reversed_cholesky
from obsdiff_hub.maths.group_obs import GroupOBS, GroupSelection, column_groups, obs_remove_groups, rrf_pick
from obsdiff_hub.maths.obs import obs_prune, obs_prune_shared


def damped(H: torch.Tensor, damping_fraction: float) -> torch.Tensor:
    H = H.clone()
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    return H + damping_fraction * torch.diag(H).mean() * torch.eye(len(H), dtype=H.dtype)


def reference_obs(W, H, sparsity, n, m, blocksize, damping_fraction):
    """Column-by-column OBS with an explicit inverse of the remaining columns' Hessian.

    Deliberately slow and independent of the Cholesky trick: for column j the remaining
    problem is over columns j.., whose inverse Hessian is inv(H[j:, j:]); pruning w_j
    moves the rest of its row by -(w_j / Hinv_00) · Hinv_{0,:}.
    """
    W = W.double().clone()
    W[:, torch.diag(H) == 0] = 0.0  # dead inputs carry no signal
    H = damped(H.double(), damping_fraction)
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


def test_reversed_cholesky_gives_the_upper_factor_of_the_inverse():
    _, _, H = make_problem(4, 40, 200, seed=3)
    Hd = damped(H, 0.01)
    R = reversed_cholesky(Hd.float()).double()
    assert torch.equal(R, torch.triu(R))
    torch.testing.assert_close(R @ R.T, Hd, rtol=1e-5, atol=1e-5)
    U = torch.linalg.inv(R)  # the walk never forms it; its diagonal blocks are inv(R_bb)
    torch.testing.assert_close(U.T @ U, torch.linalg.inv(Hd), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(U[8:16, 8:16], torch.linalg.inv(R[8:16, 8:16]), rtol=1e-6, atol=1e-8)


@pytest.mark.parametrize("sparsity,n,m", [(0.5, 0, 0), (0.0, 2, 4)])
def test_shared_hessian_equals_one_layer_at_a_time_with_each_layers_own_count(sparsity, n, m):
    """q, k and v share one factorisation and one stacked walk; each keeps its own exact count."""
    _, _, H = make_problem(4, 48, 300, seed=13)
    layers = [make_problem(rows, 48, 10, seed=14 + i)[0].float() for i, rows in enumerate((12, 7, 12))]
    ratios = [sparsity, 0.3 if not m else 0.0, sparsity]
    shared = obs_prune_shared(layers, H.float(), ratios, n, m, blocksize=16)
    for W, ratio, (got, mask) in zip(layers, ratios, shared):
        want, want_mask = obs_prune(W, H.float(), ratio, n, m, blocksize=16)
        assert torch.equal(mask, want_mask)
        assert rel(got, want) < 1e-5
        if not m:
            for i1 in range(0, 48, 16):
                assert int(mask[:, i1 : i1 + 16].sum()) == round(ratio * W.shape[0] * 16)


@pytest.mark.parametrize("sparsity,n,m", [(0.5, 0, 0), (0.7, 0, 0), (0.0, 2, 4), (0.0, 4, 8)])
def test_obs_prune_matches_slow_reference(sparsity, n, m):
    W, _, H = make_problem(12, 48, 300, seed=1)
    got, mask = obs_prune(W.float(), H.float(), sparsity, n, m, blocksize=16, damping_fraction=0.01)
    want, want_mask = reference_obs(W, H, sparsity, n, m, blocksize=16, damping_fraction=0.01)
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


def lstsq_optimum(W, X, H, keep, damping_fraction):
    """argmin over Ŵ supported on `keep` of tr((W−Ŵ) H_damped (W−Ŵ)ᵀ), via lstsq on X."""
    samples = X.shape[1]
    lam = damping_fraction * torch.diag(H).mean()
    # H_damped = 2/s · X_aug X_augᵀ with X_aug = [X, sqrt(lam·s/2) I]
    X_aug = torch.cat([X, (lam * samples / 2).sqrt() * torch.eye(len(X), dtype=X.dtype)], dim=1)
    sol = torch.linalg.lstsq(X_aug[keep].T, (W @ X_aug).T).solution.T
    out = torch.zeros_like(W)
    out[:, keep] = sol
    return out


@pytest.mark.parametrize(
    "group_size,num_remove,saliency,batch",
    [
        (1, 20, "reference", 1),
        (1, 20, "reference", 8),
        (8, 3, "reference", 1),
        (8, 3, "exact", 1),
        (8, 3, "reference", 2),
    ],
)
def test_structured_equals_least_squares_optimum(group_size, num_remove, saliency, batch):
    W, X, H = make_problem(10, 64, 400, seed=6)
    groups = column_groups(64, group_size)
    (got,), (removed,) = obs_remove_groups(
        [W], [H], groups, [GroupSelection(tuple(range(len(groups))), num_remove, batch)], saliency=saliency
    )
    assert len(set(removed)) == num_remove
    cols = torch.cat([torch.arange(g * group_size, (g + 1) * group_size) for g in removed])
    keep = torch.ones(64, dtype=torch.bool)
    keep[cols] = False
    assert (got[:, ~keep] == 0).all()
    assert rel(got, lstsq_optimum(W, X, H, keep, 0.01)) < 1e-4


def test_structured_picks_least_salient_single_column_first():
    W, X, H = make_problem(5, 16, 200, seed=7)
    Hd = damped(H, 0.01)
    Hinv = torch.linalg.inv(Hd)
    expected_first = int(torch.argmin((W**2).sum(0) / torch.diag(Hinv)))
    _, (removed,) = obs_remove_groups([W], [H], column_groups(16, 1), [GroupSelection(tuple(range(16)), 1)])
    assert removed == [expected_first]


def test_exact_group_saliency_never_reconstructs_worse_on_first_pick():
    W, X, H = make_problem(16, 64, 400, seed=8)
    heads = [GroupSelection(tuple(range(8)), 1)]
    (exact,), _ = obs_remove_groups([W], [H], column_groups(64, 8), heads, saliency="exact")
    (ref,), _ = obs_remove_groups([W], [H], column_groups(64, 8), heads, saliency="reference")
    assert recon_error(W, exact, X) <= recon_error(W, ref, X) * (1 + 1e-9)


def test_joint_heads_rrf_and_both_streams_optimal():
    Wa, X, Ha = make_problem(12, 64, 400, seed=9)
    Wb, Xb, Hb = make_problem(7, 64, 400, seed=10)
    (got_a, got_b), (removed,) = obs_remove_groups(
        [Wa, Wb], [Ha, Hb], column_groups(64, 8), [GroupSelection(tuple(range(8)), 3)]
    )
    assert len(set(removed)) == 3
    keep = torch.ones(64, dtype=torch.bool)
    for h in removed:
        keep[h * 8 : (h + 1) * 8] = False
    assert rel(got_a, lstsq_optimum(Wa, X, Ha, keep, 0.01)) < 1e-4
    assert rel(got_b, lstsq_optimum(Wb, Xb, Hb, keep, 0.01)) < 1e-4


def test_joint_heads_first_pick_is_rrf_argmax():
    Wa, _, Ha = make_problem(12, 64, 400, seed=11)
    Wb, _, Hb = make_problem(7, 64, 400, seed=12)
    groups = column_groups(64, 8)
    columns = torch.stack(groups)
    sa = GroupOBS.from_layer(Wa, Ha, groups).saliencies(columns)
    sb = GroupOBS.from_layer(Wb, Hb, groups).saliencies(columns)
    rank_a = torch.argsort(torch.argsort(sa)) + 1
    rank_b = torch.argsort(torch.argsort(sb)) + 1
    fused = 1 / (60 + rank_a.double()) + 1 / (60 + rank_b.double())
    _, (removed,) = obs_remove_groups([Wa, Wb], [Ha, Hb], groups, [GroupSelection(tuple(range(8)), 1)])
    assert removed == [int(torch.argmax(fused))]


def test_rrf_ties_go_to_the_head_less_salient_in_the_image_stream():
    """The reference fuses ranks into a dict filled in the image stream's ascending saliency
    order and sorts it stably: among equal fused scores, the head that comes first there wins."""

    def reference(sa, sb, k=60):
        scores = {}
        for ranking in (torch.argsort(sa, stable=True), torch.argsort(sb, stable=True)):
            for rank, head in enumerate(ranking.tolist(), 1):
                scores[head] = scores.get(head, 0.0) + 1 / (k + rank)
        return sorted(scores.items(), key=lambda item: -item[1])[0][0]

    # heads 1 and 3 tie exactly at the top: ranks (1, 3) and (3, 1) in the two streams
    sa = torch.tensor([2.0, 1.0, 6.0, 3.0, 9.0])  # image stream: 1 < 0 < 3 < 2 < 4
    sb = torch.tensor([2.0, 4.0, 7.0, 0.5, 9.0])  # text stream:  3 < 0 < 1 < 2 < 4
    assert reference(sa, sb) == 1 and rrf_pick([sa, sb], 60) == 1
    # the tie the other way round: now head 3 is the less salient one in the image stream
    assert reference(sb, sa) == 3 and rrf_pick([sb, sa], 60) == 3
    # lowest index would have said 1 in both cases; the old behaviour is what this test rules out
    ties = 0
    for seed in range(400):
        g = torch.Generator().manual_seed(seed)
        a, b = torch.rand(24, generator=g), torch.rand(24, generator=g)
        ties += int(rrf_pick([a, b], 60) == reference(a, b))
    assert ties == 400


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
        column_groups(16, 5)
    with pytest.raises(ValueError, match="cannot remove"):
        GroupSelection(tuple(range(16)), 17)
    with pytest.raises(ValueError, match="2 sparsities for 1 layers"):
        obs_prune_shared([W], H, [0.5, 0.5])


@pytest.mark.parametrize(
    "rows,cols,sparsity,n,m,blocksize",
    [
        (24, 300, 0.5, 0, 0, 128),  # several blocks and a partial one, a super-block boundary
        (20, 600, 0.7, 0, 0, 64),  # > 4 blocks: the super-block cache of earlier errors
        (16, 64, 0.0, 2, 4, 16),
        (16, 96, 0.0, 4, 8, 20),  # the block width rounds down to a multiple of m
    ],
)
def test_the_fast_walk_equals_the_papers_loop(rows, cols, sparsity, n, m, blocksize):
    """obs_prune_shared (stacked, transposed, cached) against obs_prune (Algorithm 1 as written), in fp64:
    masks identical, weights to round-off."""
    W, _, H = make_problem(rows, cols, 2 * cols, seed=cols)
    want, want_mask = obs_prune(W, H, sparsity, n, m, blocksize=blocksize)
    ((got, mask),) = obs_prune_shared([W], H, sparsity, n, m, blocksize=blocksize)
    assert torch.equal(mask, want_mask)
    assert rel(got, want) < 1e-9


def test_the_fast_walk_equals_the_papers_loop_for_stacked_layers_with_allocated_counts():
    """q/k/v stacked in one walk, each with its own allocated count, equal each layer's own reference run."""
    _, _, H = make_problem(4, 200, 400, seed=21)
    layers = [make_problem(rows, 200, 10, seed=22 + i)[0] for i, rows in enumerate((12, 7, 12))]
    counts = [900, 333, 1500]
    shared = obs_prune_shared(layers, H, 0.0, counts=counts, blocksize=64)
    for W, count, (got, mask) in zip(layers, counts, shared):
        want, want_mask = obs_prune(W, H, blocksize=64, count=count)
        assert torch.equal(mask, want_mask) and int(mask.sum()) == count
        assert rel(got, want) < 1e-9


def test_the_fast_walk_equals_the_papers_loop_in_fp32():
    W, _, H = make_problem(32, 256, 512, seed=5)
    want, want_mask = obs_prune(W.float(), H.float(), 0.5, blocksize=64)
    ((got, mask),) = obs_prune_shared([W.float()], H.float(), 0.5, blocksize=64)
    assert got.dtype == torch.float32
    assert torch.equal(mask, want_mask)
    assert rel(got, want) < 1e-5
