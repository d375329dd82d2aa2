"""Beyond the paper: asymmetric calibration (fit the dense network's output) and sparsity allocation."""

import itertools

import pytest
import torch
from layer_problems import make_problem

from obsdiff_hub.maths.allocation import allocate_counts, weight_saliencies
from obsdiff_hub.maths.counts import split_count
from obsdiff_hub.maths.factor import asymmetric_target
from obsdiff_hub.maths.group_obs import GroupSelection, column_groups, obs_remove_groups
from obsdiff_hub.maths.hessian import CrossTermAccumulator, HessianAccumulator
from obsdiff_hub.maths.obs import obs_prune


def drifted_problem(rows=10, cols=32, samples=600, seed=0):
    """Dense inputs X and the drifted X̂ an already-pruned network feeds the same layer."""
    W, X, _ = make_problem(rows, cols, samples, seed=seed)
    g = torch.Generator().manual_seed(seed + 1)
    X_hat = X + 0.3 * X.std() * torch.randn(X.shape, generator=g, dtype=torch.float64) + 0.2 * X.roll(1, 0)
    H = 2 * X_hat @ X_hat.T / samples
    G = 2 * (X - X_hat) @ X_hat.T / samples
    return W, X, X_hat, H, G


def asymmetric_error(W, W_hat, X, X_hat):
    return float((W.double() @ X - W_hat.double() @ X_hat).pow(2).sum())


def test_the_cross_term_accumulator_matches_its_definition():
    W, X, X_hat, H, G = drifted_problem()
    h, g = HessianAccumulator(32), CrossTermAccumulator(32)
    for chunk in range(0, 600, 150):  # rows are samples, as hooks see them
        dense, pruned = X[:, chunk : chunk + 150].T.float(), X_hat[:, chunk : chunk + 150].T.float()
        h.add(pruned)
        g.add(dense, pruned)
    torch.testing.assert_close(h.hessian().double(), H, rtol=1e-4, atol=1e-4)
    torch.testing.assert_close(g.cross_term().double(), G, rtol=1e-4, atol=1e-4)


def test_wide_cross_terms_accumulate_in_row_panels_exactly():
    """Widths over one 1024-row panel: every panel of G lands in its rows (fp64 reference)."""
    g = torch.Generator().manual_seed(3)
    X = torch.randn(64, 2100, generator=g, dtype=torch.float64)
    X_hat = X + 0.1 * torch.randn(64, 2100, generator=g, dtype=torch.float64)
    acc = CrossTermAccumulator(2100)
    acc.add(X[:40].float(), X_hat[:40].float(), 0.5)
    acc.add(X[40:].float(), X_hat[40:].float(), 2.0)
    weights = torch.cat([torch.full((40,), 0.5), torch.full((24,), 2.0)]).double()
    expected = 2 * (X - X_hat).T @ (weights[:, None] * X_hat) / float(weights.sum())
    torch.testing.assert_close(acc.cross_term().double(), expected, rtol=1e-4, atol=1e-5)


def test_the_asymmetric_target_is_the_least_squares_fit_of_the_dense_output():
    W, X, X_hat, H, G = drifted_problem()
    target = asymmetric_target(W, H, G, damping_fraction=0.0).double()
    optimum = torch.linalg.lstsq(X_hat.T, (W @ X).T).solution.T  # argmin ‖W X − Ŵ X̂‖ over every Ŵ
    torch.testing.assert_close(target, optimum, rtol=1e-4, atol=1e-4)


@pytest.mark.parametrize("group_size,count", [(1, 12), (8, 2)])
def test_structured_asymmetric_removal_is_the_exact_optimum_over_the_kept_columns(group_size, count):
    W, X, X_hat, H, G = drifted_problem()
    groups = column_groups(32, group_size)
    target = asymmetric_target(W, H, G, damping_fraction=0.0)
    (got,), (removed,) = obs_remove_groups(
        [target], [H], groups, [GroupSelection(tuple(range(len(groups))), count)], damping_fraction=0.0
    )
    keep = torch.ones(32, dtype=torch.bool)
    for g in removed:
        keep[groups[g]] = False
    optimum = torch.zeros_like(W)
    optimum[:, keep] = torch.linalg.lstsq(X_hat[keep].T, (W @ X).T).solution.T  # ‖W X − Ŵ X̂‖ over kept weights, fp64
    torch.testing.assert_close(got.double(), optimum, rtol=1e-4, atol=1e-4)
    (symmetric,), _ = obs_remove_groups(
        [W], [H], groups, [GroupSelection(tuple(range(len(groups))), count)], damping_fraction=0.0
    )
    assert asymmetric_error(W, got, X, X_hat) < asymmetric_error(W, symmetric, X, X_hat)


@pytest.mark.parametrize("sparsity,n,m", [(0.5, 0, 0), (0.7, 0, 0), (0.0, 2, 4)])
def test_unstructured_and_n_m_asymmetric_fit_the_dense_output_better(sparsity, n, m):
    W, X, X_hat, H, G = drifted_problem(rows=16, cols=64, samples=800, seed=3)
    asym, mask = obs_prune(asymmetric_target(W, H, G).float(), H.float(), sparsity, n, m, blocksize=16)
    sym, _ = obs_prune(W.float(), H.float(), sparsity, n, m, blocksize=16)
    if m:
        assert (mask.view(16, -1, m).sum(-1) == n).all()
    assert asymmetric_error(W, asym, X, X_hat) < 0.9 * asymmetric_error(W, sym, X, X_hat)


def test_allocation_keeps_the_total_exactly_and_every_layer_in_bounds_and_is_optimal():
    g = torch.Generator().manual_seed(0)
    scores = [torch.rand(n, generator=g) ** p for n, p in ((8, 1.0), (6, 3.0), (10, 0.5))]
    lower, upper = [2, 1, 3], [6, 5, 8]
    for total in range(sum(lower), sum(upper) + 1):
        counts = allocate_counts(scores, total, lower, upper)
        assert sum(counts) == total and all(lo <= c <= hi for c, lo, hi in zip(counts, lower, upper))
        cost = sum(float(torch.sort(s).values[:c].sum()) for s, c in zip(scores, counts))
        best = min(
            sum(float(torch.sort(s).values[:c].sum()) for s, c in zip(scores, split))
            for split in itertools.product(*(range(lo, hi + 1) for lo, hi in zip(lower, upper)))
            if sum(split) == total
        )
        assert cost == pytest.approx(best, abs=1e-12)
    with pytest.raises(ValueError, match="the bounds allow"):
        allocate_counts(scores, sum(upper) + 1, lower, upper)


def test_exact_counts_reach_the_walk_block_by_block():
    assert sum(split_count(1000, 10, 300, 128)) == 1000
    assert split_count(3, 2, 8, 4) == [2, 1] or split_count(3, 2, 8, 4) == [1, 2]
    W, _, H = make_problem(12, 70, 300, seed=5)
    ((pruned, mask),) = [
        r
        for r in __import__("obsdiff_hub.maths.obs", fromlist=["x"]).obs_prune_shared(
            [W.float()], H.float(), 0.0, counts=[333], blocksize=32
        )
    ]
    assert int(mask.sum()) == 333 and torch.equal(pruned == 0, mask)
    saliency = weight_saliencies(W, H)
    assert saliency.shape == W.shape and float(saliency.sum()) > 0


# ------------------------------------------------------------------------------- in the engine

import copy  # noqa: E402

import obsdiff_hub as oh  # noqa: E402
from obsdiff_hub import tiny  # noqa: E402


def _prune(config, seed=0):
    torch.manual_seed(seed)
    model = tiny.tiny_sd3_transformer().eval()
    dense = copy.deepcopy(model)
    batches = [tiny.example_inputs(model, 2, seed=i) for i in range(3)]
    result = oh.prune(model, config, calibration=tiny.toy_calibration(batches, 3), steps=3)
    return dense, result, batches


def test_with_one_package_the_dense_target_is_the_symmetric_one():
    """Nothing is pruned before the only package, so X = X̂ and the cross term is exactly zero."""
    _, symmetric, _ = _prune(dict(sparsity=0.5, packages=1))
    _, asymmetric, _ = _prune(dict(sparsity=0.5, packages=1, calibration_target="dense"))
    a, b = symmetric.model.state_dict(), asymmetric.model.state_dict()
    assert all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("granularity", ["unstructured", "structured"])
def test_later_packages_fit_the_dense_network_better(granularity):
    config = dict(granularity=granularity, sparsity=0.5, packages=4)
    dense, symmetric, batches = _prune(config)
    _, asymmetric, _ = _prune({**config, "calibration_target": "dense"})
    assert (
        asymmetric.report.package_plan["hessian_bytes_total"]
        == 2 * symmetric.report.package_plan["hessian_bytes_total"]
    )

    def output_error(model):
        with torch.no_grad():
            return sum(
                float((tiny.run_denoiser(model, b, t) - tiny.run_denoiser(dense, b, t)).pow(2).sum())
                for b in batches
                for t in (999.0, 500.0, 1.0)
            )

    assert output_error(asymmetric.model) < output_error(symmetric.model)


def test_error_allocation_keeps_the_total_and_the_bounds_and_is_not_uniform():
    dense, result, _ = _prune(dict(sparsity=0.5, packages=2, allocation="error", allocation_spread=0.2))
    _, uniform, _ = _prune(dict(sparsity=0.5, packages=2))
    layers = [f"{r.name}.weight" for r in uniform.report.layers]
    zeros = {k: int((result.model.state_dict()[k] == 0).sum()) for k in layers}
    uniform_zeros = {k: int((uniform.model.state_dict()[k] == 0).sum()) for k in layers}
    assert sum(zeros.values()) == sum(uniform_zeros.values())
    for k in layers:
        n = result.model.state_dict()[k].numel()
        assert round(0.3 * n) <= zeros[k] <= round(0.7 * n), k
    assert len({round(zeros[k] / result.model.state_dict()[k].numel(), 3) for k in layers}) > 3


def test_structured_allocation_keeps_the_plans_parameter_count():
    _, uniform, _ = _prune(dict(granularity="structured", sparsity=0.3, packages=1))
    _, allocated, _ = _prune(
        dict(granularity="structured", sparsity=0.3, packages=1, allocation="error", allocation_spread=0.3)
    )
    assert allocated.report.params_after == uniform.report.params_after
    before = {r.module: r.before for r in allocated.report.structure}
    after, uniform_after = allocated.structure(), uniform.structure()
    assert after != uniform_after  # somewhere more, somewhere less
    for key, count in after.items():
        assert 1 <= count <= before.get(key, count), key


def test_the_card_says_which_target_and_allocation_were_used():
    from obsdiff_hub.zoo.cards import calibration_rows
    from obsdiff_hub.zoo.recipes import load_recipe

    config = dict(sparsity=0.5, packages=2, calibration_target="dense", allocation="error", allocation_spread=0.2)
    _, result, _ = _prune(config)
    recipe = load_recipe("tiny-sd3-unstructured-50").with_changes({f"prune.{k}": v for k, v in config.items()})
    rows = dict(calibration_rows(recipe, result.report))
    assert rows["layer targets"] == "the dense network's outputs (asymmetric, `calibration_target: dense`)"
    assert rows["sparsity allocation"] == "error-driven per package, ratio ± 0.2, same total"
