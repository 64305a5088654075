"""HardInstance: Theorem 2's lower-bound instance (PAPER.md 1.2)."""

import math

import pytest
import torch

from fastkernels.concepts import HardInstance
from fastkernels.concepts.hard import kernel_sample_bound, n_targets

SHAPES = [
    pytest.param(30, None, 4, id="default"),
    pytest.param(40, 10, 3, id="d1<d"),
    pytest.param(12, 5, 5, id="k=d1"),
    pytest.param(6, 6, 1, id="k=1"),
]


@pytest.mark.parametrize("d, d1, k", SHAPES)
def test_support(d, d1, k):
    d1_eff = d if d1 is None else d1
    for seed in range(20):
        c = HardInstance(d=d, d1=d1, k=k, seed=seed)
        S = c.support
        assert isinstance(S, list) and all(isinstance(i, int) for i in S)
        assert len(S) == k and len(set(S)) == k
        assert S == sorted(S) and 0 <= S[0] and S[-1] < d1_eff
        assert HardInstance(d=d, d1=d1, k=k, seed=seed).support == S
    assert c.params()["d1"] == d1_eff


def test_support_depends_on_seed():
    supports = {tuple(HardInstance(seed=s).support) for s in range(10)}
    assert len(supports) > 1


@pytest.mark.parametrize("d, d1, k", SHAPES)
@pytest.mark.parametrize("beta", [1.0, 0.5, 0.0])
def test_exact_formula(d, d1, k, beta):
    c = HardInstance(d=d, d1=d1, k=k, alpha=0.25, beta=beta, seed=7)
    X, _ = c.test_set(300)
    H = c.target(X)
    assert H.shape == (300, k)
    parity = torch.ones(300, dtype=torch.float64)
    for j in c.support:
        parity = parity * X[:, j]
    for r, i_r in enumerate(c.support):
        assert torch.equal(H[:, r], beta * X[:, i_r] + 0.25 * parity)
    F, GF = c.components(X)
    assert torch.equal(F, X[:, c.support])
    assert torch.equal(GF, parity[:, None].expand(-1, k))


@pytest.mark.parametrize("d, d1, k", SHAPES)
def test_inputs_are_balanced_bits(d, d1, k):
    c = HardInstance(d=d, d1=d1, k=k)
    n = 10_000
    for X, _ in (c.sample(n), c.test_set(n)):
        assert X.shape == (n, d) and X.dtype == torch.float64
        assert bool(((X == 1) | (X == -1)).all())
        assert float(X.mean(dim=0).abs().max()) < 5 / math.sqrt(n)


@pytest.mark.parametrize("d1, k", [(30, 4), (5, 5), (10, 3), (100, 5), (200, 1)])
def test_counts_match_math_comb(d1, k):
    c = HardInstance(d=d1 + 3, d1=d1, k=k)
    assert c.n_targets() == n_targets(d1, k) == math.comb(d1, k)
    assert c.kernel_sample_bound() == kernel_sample_bound(d1, k) == math.comb(d1, k) // 1000
    assert c.kernel_sample_bound() <= math.comb(d1, k) / 1000 < c.kernel_sample_bound() + 1


def test_default_instance_numbers():
    c = HardInstance()
    assert (c.d, c.d1, c.k) == (30, 30, 4)
    assert c.n_targets() == 27_405 and c.kernel_sample_bound() == 27
    assert c.kernel_error_bound == pytest.approx(0.3**2 / 16)
    assert c.threshold == pytest.approx(4 * 0.09)


@pytest.mark.parametrize(
    "kw, arg",
    [
        ({"d": 0}, "d"),
        ({"d1": 0}, "d1"),
        ({"d": 10, "d1": 11}, "d1"),
        ({"d1": 2.0}, "d1"),
        ({"k": 0}, "k"),
        ({"d": 10, "d1": 3, "k": 4}, "k"),
        ({"alpha": -1}, "alpha"),
        ({"beta": float("inf")}, "beta"),
        ({"noise": -1}, "noise"),
        ({"seed": 1.5}, "seed"),
    ],
)
def test_bad_parameters(kw, arg):
    with pytest.raises(ValueError, match=rf"HardInstance: {arg} must"):
        HardInstance(**kw)


def test_bad_count_arguments():
    with pytest.raises(ValueError, match="d1"):
        n_targets(0, 2)
    with pytest.raises(ValueError, match="k"):
        kernel_sample_bound(10, -1)
