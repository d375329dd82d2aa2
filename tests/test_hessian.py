import math

import pytest
import torch

from obsdiff_hub.maths.hessian import HessianAccumulator, timestep_weights


def test_log_decrease_matches_formula_and_ends():
    T, lo, hi = 25, 0.8, 1.2
    w = timestep_weights("log_decrease", T, lo, hi)
    for i in range(T):
        t = i + 1
        assert w[i].item() == pytest.approx(lo + (hi - lo) / math.log(T) * math.log(T - t + 1), abs=1e-12)
    assert w[0].item() == pytest.approx(hi) and w[-1].item() == pytest.approx(lo)


@pytest.mark.parametrize(
    "strategy,sign", [("linear_increase", 1), ("log_increase", 1), ("linear_decrease", -1), ("log_decrease", -1)]
)
def test_monotone_as_named(strategy, sign):
    w = timestep_weights(strategy, 10)
    assert (sign * torch.diff(w) > 0).all()
    assert w.min().item() == pytest.approx(0.8) and w.max().item() == pytest.approx(1.2)


def test_log_increase_mirrors_log_decrease_and_uniform_is_flat():
    assert torch.equal(timestep_weights("log_increase", 7), timestep_weights("log_decrease", 7).flip(0))
    assert torch.equal(timestep_weights("uniform", 5), torch.ones(5, dtype=torch.float64))


def test_bad_weighting_inputs():
    with pytest.raises(ValueError, match="unknown weighting strategy"):
        timestep_weights("cosine", 5)
    with pytest.raises(ValueError, match="num_steps"):
        timestep_weights("uniform", 0)


def test_accumulator_weighted_normalised_and_dtype_independent():
    torch.manual_seed(0)
    xs = [torch.randn(3, 5, 8), torch.randn(7, 8), torch.randn(2, 2, 2, 8)]
    alphas = [1.2, 1.0, 0.8]
    acc = HessianAccumulator(8)
    for x, a in zip(xs, alphas):
        acc.add(x, weight=a)
    expected = sum(2 * a * x.reshape(-1, 8).double().T @ x.reshape(-1, 8).double() for x, a in zip(xs, alphas))
    expected /= sum(a * x.reshape(-1, 8).shape[0] for x, a in zip(xs, alphas))
    torch.testing.assert_close(acc.hessian().double(), expected, rtol=1e-5, atol=1e-6)
    half = HessianAccumulator(8)
    half.add(xs[1].to(torch.bfloat16))
    xb = xs[1].to(torch.bfloat16).float()
    torch.testing.assert_close(half.hessian(), 2 * xb.T @ xb / 7, rtol=1e-5, atol=1e-6)
    assert half.hessian().dtype == torch.float32


def test_merge_equals_single_accumulator():
    torch.manual_seed(1)
    a, b, both = HessianAccumulator(6), HessianAccumulator(6), HessianAccumulator(6)
    x1, x2 = torch.randn(10, 6), torch.randn(4, 6)
    a.add(x1, 1.1)
    b.add(x2, 0.9)
    both.add(x1, 1.1)
    both.add(x2, 0.9)
    a.merge(b)
    torch.testing.assert_close(a.hessian(), both.hessian())
    assert a.num_samples == 14


def test_accumulator_errors():
    acc = HessianAccumulator(4)
    with pytest.raises(ValueError, match="no calibration inputs"):
        acc.hessian()
    with pytest.raises(ValueError, match="does not match"):
        acc.add(torch.randn(3, 5))


def test_wide_inputs_accumulate_the_lower_panels_and_read_back_symmetric():
    """d >= 2048 takes the lower-panel path (half the FLOPs); H must equal the full fp64 product."""
    torch.manual_seed(2)
    d = 2304  # two full panels and a partial one
    xs = [torch.randn(40, d), torch.randn(3, 7, d)]
    acc = HessianAccumulator(d)
    for x, a in zip(xs, (1.1, 0.9)):
        acc.add(x, a)
    H = acc.hessian()
    assert torch.equal(H, H.T)
    expected = sum(2 * a * x.reshape(-1, d).double().T @ x.reshape(-1, d).double() for x, a in zip(xs, (1.1, 0.9)))
    expected /= 1.1 * 40 + 0.9 * 21
    torch.testing.assert_close(H.double(), expected, rtol=1e-5, atol=1e-5)


def test_low_precision_inputs_are_rounded_as_tensor_cores_read_them():
    from obsdiff_hub.maths.hessian import round_inputs

    torch.manual_seed(3)
    x = torch.randn(1000)
    tf32 = round_inputs(x, "tf32")
    assert ((tf32.view(torch.int32) & 0x1FFF) == 0).all()  # 13 low mantissa bits cleared: 10 remain
    assert float(((tf32 - x).abs() / x.abs()).max()) <= 2.0**-11  # round to nearest: half an ulp
    assert torch.equal(round_inputs(x, "bf16"), x.bfloat16().float())
    assert round_inputs(x, "fp32") is x
    exact, tf = HessianAccumulator(16), HessianAccumulator(16, precision="tf32")
    inputs = torch.randn(500, 16)
    exact.add(inputs)
    tf.add(inputs)
    relative = float((tf.hessian() - exact.hessian()).norm() / exact.hessian().norm())
    assert 0 < relative < 1e-3
