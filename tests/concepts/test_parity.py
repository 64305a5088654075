"""ParityConcept: the paper's Boolean instances (PAPER.md 1.1), checked against the formulas."""

import math

import pytest
import torch

from fastkernels.concepts import ParityConcept

INSTANCES = [
    pytest.param(ParityConcept.final, 15, 1.35, id="final-k15"),
    pytest.param(ParityConcept.earlier, 8, 0.72, id="earlier-k8"),
]


def _random_pm1(n, d, seed):
    g = torch.Generator().manual_seed(seed)
    return (2 * torch.randint(0, 2, (n, d), generator=g) - 1).to(torch.float64)


@pytest.mark.parametrize("make, k, threshold", INSTANCES)
def test_shape_and_threshold(make, k, threshold):
    c = make()
    assert (c.d, c.k, c.alpha, c.beta) == (30, k, 0.3, 1.0)
    assert c.threshold == pytest.approx(threshold, rel=1e-12)


@pytest.mark.parametrize("make, k, threshold", INSTANCES)
def test_components_exact_formula(make, k, threshold):
    c = make()
    X = _random_pm1(500, 30, seed=1)
    F, GF = c.components(X)
    assert F.shape == GF.shape == (500, k)
    for r in range(1, k + 1):
        assert torch.equal(F[:, r - 1], X[:, 2 * r - 2] * X[:, 2 * r - 1])
    parity8 = X[:, :8].prod(dim=1)
    for i in range(1, k + 1):
        assert torch.equal(c.alpha * GF[:, i - 1], (-1) ** i * c.alpha * parity8)
    # Output index 0 (i = 1) carries sign -1.
    assert torch.equal(GF[:, 0], -parity8)
    assert set(F.unique().tolist()) == {-1.0, 1.0}


@pytest.mark.parametrize("make, k, threshold", INSTANCES)
def test_components_formula_real_inputs(make, k, threshold):
    # The formulas are polynomials: they hold for any real input, not only for +-1 bits.
    c = make()
    X = torch.randn(300, 30, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    F, GF = c.components(X)
    ref_F = torch.stack([X[:, 2 * r] * X[:, 2 * r + 1] for r in range(k)], dim=1)
    sign = torch.tensor([(-1.0) ** i for i in range(1, k + 1)], dtype=torch.float64)
    torch.testing.assert_close(F, ref_F, rtol=1e-13, atol=0)
    torch.testing.assert_close(
        GF, X[:, :8].prod(dim=1, keepdim=True) * sign, rtol=1e-12, atol=1e-15
    )


@pytest.mark.parametrize("make, k, threshold", INSTANCES)
@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
def test_target_is_beta_F_plus_alpha_G(make, k, threshold, beta):
    c = make(beta=beta)
    X = _random_pm1(400, 30, seed=3)
    H = c.target(X)
    F = torch.stack([X[:, 2 * r - 2] * X[:, 2 * r - 1] for r in range(1, k + 1)], dim=1)
    parity8 = X[:, :8].prod(dim=1)
    GF = torch.stack([(-1) ** i * parity8 for i in range(1, k + 1)], dim=1)
    assert torch.equal(H, beta * F + 0.3 * GF)
    if beta == 0.0:
        assert torch.equal(H.abs(), torch.full_like(H, 0.3))


@pytest.mark.parametrize("make, k, threshold", INSTANCES)
def test_inputs_are_balanced_bits(make, k, threshold):
    c = make()
    n = 20_000
    X, _ = c.sample(n)
    Xt, _ = c.test_set(n)
    for Z in (X, Xt):
        assert Z.dtype == torch.float64 and Z.shape == (n, 30)
        assert bool(((Z == 1) | (Z == -1)).all())
        # Each column mean has std 1 / sqrt(n); 5 sigma per column.
        assert Z.mean(dim=0).abs().max() < 5 / math.sqrt(n)


def test_bad_parameters():
    with pytest.raises(ValueError, match="ParityConcept: k"):
        ParityConcept(k=3)
    with pytest.raises(ValueError, match="ParityConcept: d"):
        ParityConcept(d=20, k=15)
    with pytest.raises(ValueError, match="ParityConcept: d"):
        ParityConcept(d=0)
    with pytest.raises(ValueError, match="ParityConcept: alpha"):
        ParityConcept(alpha=-0.1)


def test_label_variance_is_k_times_beta2_plus_alpha2():
    # F_r and G_r are distinct parities: uncorrelated, mean 0, variance 1 each, so
    # Var(y) = k (beta^2 + alpha^2); the test-set estimate is within sampling error of it.
    from fastkernels.concepts import make_concept

    c = make_concept("parity", d=30, k=8, alpha=0.3, beta=0.5, seed=3)
    exact = 8 * (0.5**2 + 0.3**2)
    assert abs(c.label_variance(20000) - exact) < 0.03 * exact
    _, Y = c.test_set(500)
    assert c.label_variance(500) == float((Y - Y.mean(0)).square().sum(1).mean())
    with pytest.raises(ValueError, match="label_variance"):
        c.label_variance(0)
