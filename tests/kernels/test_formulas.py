"""Reference formulas against scikit-learn, Monte Carlo and exact identities (float64 oracles)."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import far_points, randn
from sklearn.gaussian_process.kernels import Matern as SkMatern
from sklearn.metrics.pairwise import linear_kernel, polynomial_kernel, rbf_kernel

from fastkernels.kernels import formulas as F

# (N, M, D): odd sizes that divide no block size, the 1 x 1 corner case, a single row.
SIZES = [(37, 53, 7), (1, 1, 7), (1, 6, 3)]

# One parameter set per kernel; used by the float32, diagonal and meta-device tests.
CASES = [
    ("rbf", {"gamma": 0.3}),
    ("laplace", {"gamma": 0.7}),
    ("matern", {"nu": 0.5, "gamma": 0.4}),
    ("matern", {"nu": 1.5, "gamma": 0.4}),
    ("matern", {"nu": 2.5, "gamma": 0.4}),
    ("polynomial", {"degree": 3, "gamma": 0.2, "coef0": 1.0}),
    ("linear", {}),
    ("arccos", {"order": 0}),
    ("arccos", {"order": 1}),
    ("nngp", {"arch": "2layer"}),
    ("nngp", {"arch": "3layer"}),
    ("nngp", {"arch": "3resnet"}),
    ("nngp", {"arch": "mlp", "depth": 4}),
    ("ntk", {"arch": "2layer", "trainable": "hidden"}),
    ("ntk", {"arch": "3layer", "trainable": "all"}),
    ("ntk", {"arch": "3resnet", "trainable": "hidden"}),
    ("ntk", {"arch": "3resnet", "trainable": "all"}),
    ("ntk", {"arch": "mlp", "depth": 4, "trainable": "hidden"}),
]
CASE_IDS = [f"{n}-{'-'.join(str(v) for v in p.values())}" for n, p in CASES]


def pair(n, m, d, seed=0):
    return randn(n, d, seed=seed), randn(m, d, seed=seed + 1000)


# -- scikit-learn oracles ----------------------------------------------------------------------


@pytest.mark.parametrize("n,m,d", SIZES)
@pytest.mark.parametrize("gamma", [0.05, 0.6])
def test_rbf_matches_sklearn(n, m, d, gamma):
    x1, x2 = pair(n, m, d)
    ref = rbf_kernel(x1.numpy(), x2.numpy(), gamma=gamma)
    torch.testing.assert_close(F.rbf(x1, x2, gamma), torch.from_numpy(ref), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n,m,d", SIZES)
@pytest.mark.parametrize("degree,gamma,coef0", [(1, 0.5, 0.0), (2, 0.2, 1.0), (3, 1 / 7, 2.5)])
def test_polynomial_matches_sklearn(n, m, d, degree, gamma, coef0):
    x1, x2 = pair(n, m, d)
    ref = polynomial_kernel(x1.numpy(), x2.numpy(), degree=degree, gamma=gamma, coef0=coef0)
    got = F.polynomial(x1, x2, degree, gamma, coef0)
    torch.testing.assert_close(got, torch.from_numpy(ref), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n,m,d", SIZES)
def test_linear_matches_sklearn(n, m, d):
    x1, x2 = pair(n, m, d)
    ref = linear_kernel(x1.numpy(), x2.numpy())
    torch.testing.assert_close(F.linear(x1, x2), torch.from_numpy(ref), rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n,m,d", SIZES)
@pytest.mark.parametrize("nu", [0.5, 1.5, 2.5])
@pytest.mark.parametrize("gamma", [0.2, 1.3])
def test_matern_matches_sklearn_matern(n, m, d, nu, gamma):
    # sklearn's Matern uses exact pairwise distances (cdist): an independent oracle for the
    # GEMM-based distance.
    x1, x2 = pair(n, m, d)
    ref = torch.from_numpy(SkMatern(length_scale=1 / gamma, nu=nu)(x1.numpy(), x2.numpy()))
    torch.testing.assert_close(F.matern(x1, x2, nu, gamma), ref, rtol=1e-10, atol=1e-10)
    self_ref = torch.from_numpy(SkMatern(length_scale=1 / gamma, nu=nu)(x1.numpy()))
    torch.testing.assert_close(F.matern(x1, x1, nu, gamma), self_ref, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("n,m,d", SIZES)
@pytest.mark.parametrize("gamma", [0.2, 1.3])
def test_laplace_is_euclidean_matern_half(n, m, d, gamma):
    # Not sklearn's laplacian_kernel, which uses the L1 distance.
    x1, x2 = pair(n, m, d)
    ref = torch.from_numpy(SkMatern(length_scale=1 / gamma, nu=0.5)(x1.numpy(), x2.numpy()))
    torch.testing.assert_close(F.laplace(x1, x2, gamma), ref, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(
        F.laplace(x1, x2, gamma), torch.exp(-gamma * torch.cdist(x1, x2)), rtol=1e-10, atol=1e-10
    )


# -- arc-cosine ----------------------------------------------------------------------------------


@pytest.mark.parametrize("order", [0, 1])
def test_arccos_matches_monte_carlo(order):
    # Cho & Saul: k_n(x, y) = 2 E_w[step(w.x) step(w.y) (w.x)^n (w.y)^n], w ~ N(0, I).
    d, samples = 7, 400_000
    x = randn(5, d, seed=3) * torch.tensor([0.5, 1.0, 2.0, 1.5, 0.8], dtype=torch.float64)[:, None]
    x[3] = x[0] * 1.3 + 0.2 * randn(d, seed=4)  # a nearly parallel pair
    x[4] = -x[1] + 0.4 * randn(d, seed=5)  # a nearly opposite pair
    z = x @ randn(samples, d, seed=6).T  # (5, samples)
    phi = (z > 0).to(z.dtype) * z**order
    mc = 2 * phi @ phi.T / samples
    # Standard error of the mean of the samples 2 phi_i phi_j.
    se = torch.sqrt((4 * (phi**2) @ (phi**2).T / samples - mc**2).clamp_min(0) / samples)
    exact = F.arccos(x, x, order)
    assert torch.all((mc - exact).abs() <= 4 * se + 1e-12), ((mc - exact) / se).abs().max()


def test_arccos_closed_forms():
    x = randn(4, 6, seed=1)
    x[1] = 2.5 * x[0]  # parallel: theta = 0
    x[2] = -0.5 * x[0]  # opposite: theta = pi
    k0, k1 = F.arccos(x, x, 0), F.arccos(x, x, 1)
    n = x.norm(dim=1)
    torch.testing.assert_close(k0[0, 1], torch.tensor(1.0, dtype=torch.float64))
    torch.testing.assert_close(k0[0, 2], torch.tensor(0.0, dtype=torch.float64), atol=1e-7, rtol=0)
    torch.testing.assert_close(k1[0, 1], n[0] * n[1])
    torch.testing.assert_close(k1[0, 2], torch.tensor(0.0, dtype=torch.float64), atol=1e-7, rtol=0)
    # Self-pairs: order 0 is exactly 1, order 1 exactly ||x||^2 up to one rounding.
    assert torch.equal(k0.diagonal(), torch.ones(4, dtype=torch.float64))
    torch.testing.assert_close(k1.diagonal(), n**2, rtol=1e-15, atol=0)


# -- structure shared by every kernel -----------------------------------------------------------


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_float32_close_to_float64(name, params):
    x1, x2 = pair(37, 53, 7, seed=11)
    f = F.FORMULAS[name]
    k64 = f(x1, x2, **params)
    k32 = f(x1.float(), x2.float(), **params)
    assert k32.dtype == torch.float32
    rel = (k32.double() - k64).abs().max() / k64.abs().max()
    assert rel < 1e-5, rel
    # The self-Gram too: its diagonal goes through the exact self-pair path in both dtypes.
    x32 = x1.float()
    s64, s32 = f(x1, x1, **params), f(x32, x32, **params)
    assert (s32.double() - s64).abs().max() / s64.abs().max() < 1e-5


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_kernel_diag_matches_gram_diagonal(name, params):
    x = randn(23, 5, seed=2)
    gram = F.FORMULAS[name](x, x, **params)
    assert gram.shape == (23, 23)
    diag = F.kernel_diag(name, x, **params)
    torch.testing.assert_close(diag, gram.diagonal(), rtol=1e-14, atol=0)


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_diag_offset_marks_self_pairs_of_a_row_block(name, params):
    x = randn(29, 4, seed=8)
    full = F.FORMULAS[name](x, x, **params)
    block = F.FORMULAS[name](x[10:17], x, diag_offset=10, **params)
    torch.testing.assert_close(block, full[10:17], rtol=1e-13, atol=1e-13)
    # The self-pair entries are bit-identical to the self-Gram's diagonal.
    assert torch.equal(block[:, 10:17].diagonal(), full.diagonal()[10:17])


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_runs_on_meta_tensors(name, params):
    # The formulas are future custom-op bodies: they must trace without reading values.
    x1 = torch.empty(5, 3, device="meta", dtype=torch.float32)
    x2 = torch.empty(4, 3, device="meta", dtype=torch.float32)
    out = F.FORMULAS[name](x1, x2, **params)
    assert out.shape == (5, 4) and out.device.type == "meta" and out.dtype == torch.float32


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_gram_is_positive_semidefinite(name, params):
    x = randn(40, 7, seed=9)
    eig = torch.linalg.eigvalsh(F.FORMULAS[name](x, x, **params))
    assert eig.min() >= -1e-8 * eig.max(), (eig.min(), eig.max())


@pytest.mark.parametrize("name,params", CASES, ids=CASE_IDS)
def test_zero_norm_rows_give_finite_values(name, params):
    x = randn(6, 4, seed=4)
    x[2] = 0.0
    y = randn(3, 4, seed=5)
    y[0] = 0.0
    for a, b in ((x, x), (x, y), (y, x)):
        assert torch.isfinite(F.FORMULAS[name](a, b, **params)).all()
    assert torch.isfinite(F.kernel_diag(name, x, **params)).all()


def test_zero_norm_rows_have_cosine_zero():
    x = randn(3, 4, seed=4)
    x[1] = 0.0
    k0, k1 = F.arccos(x, x, 0), F.arccos(x, x, 1)
    # Cosine 0 (theta = pi / 2) in the whole row and column, the self-pair included.
    assert torch.equal(k0[1], torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(k0[:, 1], torch.full((3,), 0.5, dtype=torch.float64))
    assert torch.equal(k1[1], torch.zeros(3, dtype=torch.float64))
    assert F.kernel_diag("arccos", x, order=0)[1] == 0.5


# -- distances -----------------------------------------------------------------------------------


def test_distances_clamped_and_exact_on_self_pairs():
    # Far from the origin, ||x||^2 + ||y||^2 - 2 <x, y> cancels badly and can go negative.
    x = randn(31, 5, seed=7) * 1e-3 + 100.0
    d2 = F.sq_dist(x, x)
    assert torch.all(d2 >= 0)
    assert torch.equal(d2.diagonal(), torch.zeros(31, dtype=torch.float64))
    # A copy is a different object: no self-pair rule, but the clamp still holds.
    assert torch.all(F.sq_dist(x, x.clone()) >= 0)
    assert torch.all(F.sq_dist(x.float(), x.float().clone()) >= 0)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_stationary_kernels_have_exact_unit_diagonal(dtype):
    x = randn(37, 7, seed=1, dtype=dtype) + 10.0
    one = torch.ones(37, dtype=dtype)
    assert torch.equal(F.rbf(x, x, 0.5).diagonal(), one)
    assert torch.equal(F.laplace(x, x, 0.5).diagonal(), one)
    for nu in F.MATERN_NUS:
        assert torch.equal(F.matern(x, x, nu, 0.5).diagonal(), one)


def test_matern_half_is_laplace():
    x1, x2 = pair(9, 11, 4)
    assert torch.equal(F.matern(x1, x2, 0.5, 0.8), F.laplace(x1, x2, 0.8))


@pytest.mark.parametrize(
    "name,kw", [("matern", {"nu": 1.0, "gamma": 1.0}), ("arccos", {"order": 2})]
)
def test_formula_rejects_unsupported_discrete_parameter(name, kw):
    x = randn(3, 2)
    with pytest.raises(ValueError, match=name):
        F.FORMULAS[name](x, x, **kw)


def test_sqrt_constants():
    # Guard against a typo in the Matern constants: nu = 1.5 / 2.5 at r = 1.
    x1 = torch.zeros(1, 1, dtype=torch.float64)
    x2 = torch.ones(1, 1, dtype=torch.float64)
    s3, s5 = math.sqrt(3), math.sqrt(5)
    assert F.matern(x1, x2, 1.5, 1.0).item() == pytest.approx((1 + s3) * math.exp(-s3), rel=1e-15)
    assert F.matern(x1, x2, 2.5, 1.0).item() == pytest.approx(
        (1 + s5 + 5 / 3) * math.exp(-s5), rel=1e-15
    )


# -- data far from the origin: the translation-invariant kernels are shifted -------------------

STATIONARY = [
    ("rbf", {"gamma": 1.0}),
    ("laplace", {"gamma": 1.0}),
    ("matern", {"nu": 1.5, "gamma": 1.0}),
    ("matern", {"nu": 2.5, "gamma": 1.0}),
]
STATIONARY_IDS = [f"{n}-{'-'.join(str(v) for v in p.values())}" for n, p in STATIONARY]


def direct_kernel(name, kw, a, b):
    """The float64 kernel of the points a, b from explicit differences (no norm expansion)."""
    r = torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist")
    t = kw["gamma"] * r
    if name == "rbf":
        return torch.exp(-kw["gamma"] * r * r)
    nu = kw.get("nu", 0.5)
    if nu == 0.5:
        return torch.exp(-t)
    if nu == 1.5:
        return (1 + math.sqrt(3) * t) * torch.exp(-math.sqrt(3) * t)
    return (1 + math.sqrt(5) * t + 5 / 3 * t * t) * torch.exp(-math.sqrt(5) * t)


@pytest.mark.parametrize("name,kw", STATIONARY, ids=STATIONARY_IDS)
@pytest.mark.parametrize("shift", [100.0, 1000.0])
@pytest.mark.parametrize("n,m", [(1, 1), (37, 53)])
def test_float32_stationary_kernels_far_from_origin(name, kw, shift, n, m):
    # Unshifted, ||x||^2 + ||y||^2 - 2 <x, y> in float32 was off by up to 0.8 (RBF, shift 1000).
    a, b = far_points(n, 5, shift, seed=20), far_points(m, 5, shift, seed=21)
    got = F.FORMULAS[name](a, b, **kw)
    assert got.dtype == torch.float32
    assert (got.double() - direct_kernel(name, kw, a, b)).abs().max() < 1e-5
    self_gram = F.FORMULAS[name](a, a, **kw)
    assert (self_gram.double() - direct_kernel(name, kw, a, a)).abs().max() < 1e-5
    assert torch.equal(self_gram.diagonal(), torch.ones(n))


@pytest.mark.parametrize("shift", [100.0, 1000.0])
def test_float32_sq_dist_far_from_origin(shift):
    a, b = far_points(37, 5, shift, seed=22), far_points(53, 5, shift, seed=23)
    want = torch.cdist(a.double(), b.double(), compute_mode="donot_use_mm_for_euclid_dist") ** 2
    assert (F.sq_dist(a, b).double() - want).abs().max() < 1e-6


def test_center_shifts_both_sides_by_the_mean_of_x2_and_keeps_identity():
    a, b = far_points(9, 4, 1000.0, seed=24), far_points(7, 4, 1000.0, seed=25)
    y1, y2 = F.center(a, b)
    c = b.double().mean(dim=0).float()
    assert torch.equal(y1, a - c) and torch.equal(y2, b - c)
    z1, z2 = F.center(a, a)
    assert z1 is z2
    # centre=False: the caller's inputs as given (here already shifted), no second shift.
    assert torch.equal(F.rbf(y1, y2, 0.5, centre=False), F.rbf(a, b, 0.5))


def test_non_stationary_kernels_are_not_shifted():
    # Functions of <x, y> change under a shift: far from the origin they must see the raw points.
    a, b = far_points(9, 4, 100.0, seed=26), far_points(7, 4, 100.0, seed=27)
    want = a.double() @ b.double().T
    assert ((F.linear(a, b).double() - want).abs().max() / want.abs().max()) < 1e-6
    poly = F.polynomial(a, b, 1, 0.5, 1.0).double()
    assert ((poly - (0.5 * want + 1.0)).abs().max() / want.abs().max()) < 1e-6
    assert "polynomial" not in F.TRANSLATION_INVARIANT and "arccos" not in F.TRANSLATION_INVARIANT


# -- near-duplicates across the two inputs: the Laplace kernel's d^2 from differences ----------

# Every distance kernel with gamma = 1; matern 0.5 is the Laplace kernel under its other name.
NEAR = STATIONARY + [("matern", {"nu": 0.5, "gamma": 1.0})]
NEAR_IDS = [f"{n}-{'-'.join(str(v) for v in p.values())}" for n, p in NEAR]


def duplicated_points(n, m, shift, noise, seed):
    """float32 x1 (n, 5), x2 (m, 5) of spread 0.1 around ``shift``; every other row of x2 is a
    copy of a row of x1 (at another position) plus ``noise`` times a standard normal."""
    a = 0.1 * randn(n, 5, seed=seed) + shift
    b = 0.1 * randn(m, 5, seed=seed + 1) + shift
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2))[: (m + 1) // 2]
    b[::2] = a[rows] + noise * randn(len(rows), 5, seed=seed + 3)
    return a.float(), b.float()


def test_laplace_of_duplicated_points_reproduction():
    # The defect as reported: 50 identical points in both inputs, at different positions. The
    # expansion's rounding error of d^2 went through sqrt: 1.7e-4 instead of < 1e-5.
    x = (randn(300, 5, seed=70) * 0.1 + 1000).float()
    a, b = x[:100], x[50:]
    for got in (F.laplace(a, b, 1.0), F.matern(a, b, 0.5, 1.0)):
        assert (got.double() - F.laplace(a.double(), b.double(), 1.0)).abs().max() < 1e-5
        assert torch.equal(got[50:].diagonal(), torch.ones(50))


@pytest.mark.parametrize("name,kw", NEAR, ids=NEAR_IDS)
@pytest.mark.parametrize("shift", [0.0, 100.0, 1000.0])
@pytest.mark.parametrize("noise", [0.0, 1e-6], ids=["exact", "near"])
def test_float32_duplicated_points_across_inputs(name, kw, shift, noise):
    a, b = duplicated_points(70, 60, shift, noise, seed=100)
    got = F.FORMULAS[name](a, b, **kw)
    assert (got.double() - direct_kernel(name, kw, a, b)).abs().max() < 1e-5
    # Within one tensor, copies at different rows are not self-pairs either.
    x = torch.cat([a, b])
    got = F.FORMULAS[name](x, x, **kw)
    assert (got.double() - direct_kernel(name, kw, x, x)).abs().max() < 1e-5
    assert torch.equal(got.diagonal(), torch.ones(len(x)))


def test_float64_laplace_of_duplicated_points():
    a, b = duplicated_points(70, 60, 1000.0, 1e-6, seed=110)
    a, b = a.double() + 1e-9 * randn(70, 5, seed=114), b.double()
    want = direct_kernel("laplace", {"gamma": 1.0}, a, b)
    assert (F.laplace(a, b, 1.0) - want).abs().max() < 1e-12


def test_laplace_gradient_through_recomputed_pairs_is_finite():
    # Recomputed entries are constants for autograd (subgradient 0, as the ops' backward at
    # coincident points); every other entry keeps the gradient of the kernel.
    a, b = duplicated_points(7, 6, 0.0, 0.0, seed=120)
    a, b = a.double().requires_grad_(), b.double()
    w = randn(7, 6, seed=124)
    dup = torch.cdist(a.detach(), b) < 1e-6
    assert dup.any()
    (got,) = torch.autograd.grad((F.laplace(a, b, 1.0) * w).sum(), a)
    assert torch.isfinite(got).all()
    w = torch.where(dup, torch.zeros_like(w), w)
    (got,) = torch.autograd.grad((F.laplace(a, b, 1.0) * w).sum(), a)
    (want,) = torch.autograd.grad((direct_kernel("laplace", {"gamma": 1.0}, a, b) * w).sum(), a)
    torch.testing.assert_close(got, want, rtol=1e-9, atol=1e-12)
