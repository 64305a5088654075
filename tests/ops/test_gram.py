"""fastkernels::gram: every kernel x implementation against the float64 reference, scikit-learn,
opcheck, gradcheck, PSD, self-pairs and bad input."""

import numpy as np
import pytest
import torch
from helpers import far_points, randn, rel_err
from sklearn.metrics.pairwise import linear_kernel, polynomial_kernel, rbf_kernel

from fastkernels import ops
from fastkernels.kernels import Laplace
from fastkernels.ops._common import CPP_KERNELS

from .conftest import (
    CASE_IDS,
    CASES,
    IMPL_CASE_IDS,
    IMPL_CASES,
    IMPL_NEAR,
    IMPL_NEAR_IDS,
    IMPL_STATIONARY,
    IMPL_STATIONARY_IDS,
    IMPLS,
    STATIONARY,
    STATIONARY_IDS,
    duplicated_points,
)

# Odd sizes not divisible by any tile (C++ tiles are 128 x 512), 1 x 1, and several tiles.
SHAPES = [(1, 1, 1), (37, 53, 7), (300, 1100, 5)]


def run(impl, x1, x2, kernel, params, offset=None):
    if impl == "reference":
        return ops.gram_reference(x1, x2, kernel, params, offset)
    return torch.ops.fastkernels._gram_cpu(x1, x2, kernel, params, offset)


@pytest.mark.parametrize("impl,kernel,params", IMPL_CASES, ids=IMPL_CASE_IDS)
@pytest.mark.parametrize("n,m,d", SHAPES)
def test_matches_float64_reference(impl, kernel, params, n, m, d):
    x1, x2 = randn(n, d, seed=1), randn(m, d, seed=2)
    ref = ops.gram_reference(x1, x2, kernel, params)
    got64 = run(impl, x1, x2, kernel, params)
    assert got64.dtype == torch.float64 and got64.shape == (n, m)
    assert rel_err(got64, ref) < 1e-12
    # float32 inputs: compared with the float64 kernel of the same (rounded) points.
    a, b = x1.float(), x2.float()
    got32 = run(impl, a, b, kernel, params)
    assert got32.dtype == torch.float32
    assert rel_err(got32, ops.gram_reference(a.double(), b.double(), kernel, params)) < 1e-5


@pytest.mark.parametrize("impl,kernel,params", IMPL_CASES, ids=IMPL_CASE_IDS)
def test_self_pairs_of_a_self_gram_and_of_a_row_block(impl, kernel, params):
    x = randn(140, 4, seed=3)
    full = run(impl, x, x, kernel, params)  # the same tensor: diagonal self-pairs
    ref = ops.gram_reference(x, x, kernel, params)
    assert rel_err(full, ref) < 1e-12
    block = run(impl, x[130:140], x, kernel, params, 130)
    torch.testing.assert_close(block, full[130:140], rtol=1e-12, atol=1e-12)
    if kernel in ("rbf", "laplace", "matern"):
        ones = torch.ones(140, dtype=torch.float64)
        assert torch.equal(full.diagonal(), ones)
        assert torch.equal(block[:, 130:140].diagonal(), ones[:10])
        x32 = x.float()
        assert torch.equal(run(impl, x32, x32, kernel, params).diagonal(), ones.float())


def test_dispatcher_picks_cpp_and_matches():
    x1, x2 = randn(50, 6, seed=4), randn(70, 6, seed=5)
    out = torch.ops.fastkernels.gram(x1, x2, "rbf", [0.2], None)
    torch.testing.assert_close(out, ops.gram_reference(x1, x2, "rbf", [0.2]), rtol=1e-12, atol=0)
    # The public wrapper: x2=None is a self-Gram.
    assert torch.equal(ops.gram(x1, kernel="rbf", params=[0.2]).diagonal(), torch.ones(50).double())


def test_matches_scikit_learn():
    x1, x2 = randn(41, 9, seed=6), randn(33, 9, seed=7)
    a, b = x1.numpy(), x2.numpy()
    pairs = [
        ("rbf", [0.15], rbf_kernel(a, b, gamma=0.15)),
        ("polynomial", [3.0, 0.1, 0.5], polynomial_kernel(a, b, degree=3, gamma=0.1, coef0=0.5)),
        ("linear", [], linear_kernel(a, b)),
    ]
    for kernel, params, ref in pairs:
        for dt, tol in ((torch.float64, 1e-12), (torch.float32, 1e-5)):
            got = ops.gram(x1.to(dt), x2.to(dt), kernel, params).double().numpy()
            ref_dt = (
                ref
                if dt == torch.float64
                else ops.gram_reference(
                    x1.float().double(), x2.float().double(), kernel, params
                ).numpy()
            )
            assert np.abs(got - ref_dt).max() <= tol * np.abs(ref_dt).max(), kernel
    # Laplace here is Euclidean (scikit-learn's laplacian_kernel is L1): Matern nu = 1/2.
    from sklearn.gaussian_process.kernels import Matern

    for nu in (0.5, 1.5, 2.5):
        ref = Matern(length_scale=1 / 0.7, nu=nu)(a, b)
        got = ops.gram(x1, x2, "matern", [nu, 0.7]).numpy()
        np.testing.assert_allclose(got, ref, rtol=1e-10, atol=1e-12)


# The full opcheck (with its slow AOT-dispatch test) for one kernel per code path; the cheap
# checks for every kernel.
FULL_OPCHECK = {"rbf", "arccos-1", "ntk-1-0-1"}
CHEAP = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_opcheck(kernel, params, request):
    x1 = randn(9, 4, seed=8).requires_grad_()
    x2 = randn(11, 4, seed=9).requires_grad_()
    full = request.node.callspec.id in FULL_OPCHECK
    utils = None if full else CHEAP
    op = torch.ops.fastkernels.gram.default
    for offset in (None, 0):
        if utils is None:
            torch.library.opcheck(op, (x1, x2, kernel, params, offset))
        else:
            torch.library.opcheck(op, (x1, x2, kernel, params, offset), test_utils=utils)


@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_gradcheck(kernel, params):
    x1 = randn(6, 3, seed=10).requires_grad_()
    x2 = randn(5, 3, seed=11).requires_grad_()

    def f(a, b):
        return torch.ops.fastkernels.gram(a, b, kernel, params, None)

    assert torch.autograd.gradcheck(f, (x1, x2))
    # Self-pairs (row block of x2 at offset 1) are constant k(0): zero gradient there.
    y = randn(4, 3, seed=12).requires_grad_()

    def g(a, b):
        return torch.ops.fastkernels.gram(a, b, kernel, params, 1)

    assert torch.autograd.gradcheck(g, (y[1:3].detach().clone().requires_grad_(), y))


def test_laplace_gradient_is_finite_at_coincident_points():
    # sqrt'(0) is infinite; the documented subgradient at zero distance is 0.
    x = randn(5, 3, seed=13)
    x2 = torch.cat([x[:2], randn(3, 3, seed=14)]).requires_grad_()
    for params in ([1.0], [0.5, 1.0]):
        kernel = "laplace" if len(params) == 1 else "matern"
        x1 = x.clone().requires_grad_()
        torch.ops.fastkernels.gram(x1, x2, kernel, params, None).sum().backward()
        assert torch.isfinite(x1.grad).all() and torch.isfinite(x2.grad).all()


@pytest.mark.parametrize(
    "impl,kernel,params",
    [
        (impl, k, ps)
        for impl in IMPLS
        for k, ps in [
            ("arccos", [0.0]),
            ("arccos", [1.0]),
            ("ntk", [1.0, 0.0, 0.0]),
            ("ntk", [0.0, 3.0, 1.0]),
        ]
        if impl == "reference" or k in CPP_KERNELS
    ],
)
def test_positive_semidefinite(impl, kernel, params):
    x = randn(60, 5, seed=15)
    eig = torch.linalg.eigvalsh(run(impl, x, x, kernel, params))
    assert eig.min() >= -1e-10 * eig.max()


X = randn(4, 3)
G = torch.ops.fastkernels.gram


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: G(X[0], X, "rbf", [1.0], None), ValueError, r"gram: x1 must be 2-dimensional"),
        (lambda: G(X, randn(2, 5), "rbf", [1.0], None), ValueError, "same number of columns D"),
        (lambda: G(X, X.float(), "rbf", [1.0], None), TypeError, "x1 and x2 must have the same dt"),
        (lambda: G(X.int(), X.int(), "rbf", [1.0], None), TypeError, "x1 must be float32 or float"),
        (lambda: G(X, X.to("meta"), "rbf", [1.0], None), (ValueError, RuntimeError), "device"),
        (
            lambda: G(X.clone().fill_(float("inf")), X, "rbf", [1.0], None),
            ValueError,
            "gram: x1 must be finite",
        ),
        (lambda: G(X, X, "rbf", [0.0], None), ValueError, r"gram: params .*gamma.* > 0"),
        (lambda: G(X, X, "rbf", [-1.0], None), ValueError, "gamma"),
        (lambda: G(X, X, "rbf", [], None), ValueError, r"must be \[gamma\] \(1 values\)"),
        (lambda: G(X, X, "matern", [1.0, 1.0], None), ValueError, "nu must be one of"),
        (lambda: G(X, X, "polynomial", [2.5, 1.0, 0.0], None), ValueError, "degree must be a po"),
        (lambda: G(X, X, "arccos", [2.0], None), ValueError, "order must be 0 or 1"),
        (lambda: G(X, X, "ntk", [0.0, 0.0, 0.0], None), ValueError, "depth .* positive integer"),
        (lambda: G(X, X, "nngp", [0.0, -2.0], None), ValueError, "depth"),
        (lambda: G(X, X, "cosine", [], None), ValueError, "gram: kernel must be one of"),
        (lambda: G(torch.empty(0, 3).double(), X, "rbf", [1.0], None), ValueError, "non-empty"),
    ],
)
def test_bad_input_names_op_argument_and_expectation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")
def test_cpp_rejects_bad_input_itself():
    # Direct calls of the C++ op (bypassing the Python checks) fail with the same kind of message.
    cpp = torch.ops.fastkernels._gram_cpu
    with pytest.raises(ValueError, match="fastkernels::gram: x1 must be 2-dimensional"):
        cpp(X[0], X, "rbf", [1.0], None)
    with pytest.raises(TypeError, match="fastkernels::gram: x1 and x2 must have the same dtype"):
        cpp(X, X.float(), "rbf", [1.0], None)
    with pytest.raises(ValueError, match="gamma .*must be a finite number > 0"):
        cpp(X, X, "rbf", [0.0], None)
    with pytest.raises(ValueError, match="x2 must be finite"):
        cpp(X, X.clone().fill_(float("nan")), "rbf", [1.0], None)


# The analytic ReLU kernels in C++: every MLP depth 1..4 and the 3resnet, both trainable sets.
RELU_CASES = (
    [("nngp", [0.0, float(depth)]) for depth in (1, 2, 3, 4)]
    + [("nngp", [1.0, 0.0])]
    + [("ntk", [0.0, float(depth), float(t)]) for depth in (1, 2, 3, 4) for t in (0, 1)]
    + [("ntk", [1.0, 0.0, float(t)]) for t in (0, 1)]
)
RELU_IDS = [f"{k}-{'-'.join(f'{p:g}' for p in ps)}" for k, ps in RELU_CASES]


@pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("kernel,params", RELU_CASES, ids=RELU_IDS)
def test_cpp_relu_kernels_match_reference_on_many_tiles(kernel, params):
    # 600 x 1100: several 128 x 512 tiles both ways; a zero row (cosine 0 with everything) and
    # the self-pairs of a self-Gram (cosine exactly 1) in every diagonal tile.
    x1, x2 = randn(600, 9, seed=16), randn(1100, 9, seed=17)
    x1[5] = 0.0
    for a, b in ((x1, x2), (x1, x1)):
        ref = ops.gram_reference(a, b, kernel, params)
        assert rel_err(run("cpp", a, b, kernel, params), ref) < 1e-12
        a32 = a.float()
        b32 = a32 if b is a else b.float()
        ref32 = ops.gram_reference(a32.double(), b32.double(), kernel, params)
        assert rel_err(run("cpp", a32, b32, kernel, params), ref32) < 1e-5


@pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("kernel,params", [("nngp", [0.0, 1.0]), ("ntk", [0.0, 1.0, 0.0])])
def test_cpp_relu_kernels_over_every_angle(kernel, params):
    # Unit vectors at angles 0..pi from e1 (cosines over all of [-1, 1], both ends included):
    # the vectorised arc cosine of the C++ epilogue against torch.arccos in the reference.
    t = torch.linspace(0.0, torch.pi, 4001, dtype=torch.float64)
    x1 = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    x2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=torch.float64)
    ref = ops.gram_reference(x1, x2, kernel, params)
    assert rel_err(run("cpp", x1, x2, kernel, params), ref) < 1e-12


# -- float32 far from the origin: the translation-invariant kernels are evaluated shifted ------

# 1 x 1, odd sizes, and 6 x 2 C++ tiles of 128 x 512.
FAR_SIZES = [(1, 1), (37, 53), (700, 600)]


@pytest.mark.parametrize("impl,kernel,params", IMPL_STATIONARY, ids=IMPL_STATIONARY_IDS)
@pytest.mark.parametrize("shift", [100.0, 1000.0])
@pytest.mark.parametrize("n,m", FAR_SIZES)
def test_float32_far_from_origin(impl, kernel, params, shift, n, m):
    # Without the shift, float32 RBF entries were off by 0.016 (shift 100) and 0.8 (shift 1000).
    a, b = far_points(n, 5, shift, seed=30), far_points(m, 5, shift, seed=31)
    for x1, x2 in ((a, b), (a, a)):
        got = run(impl, x1, x2, kernel, params)
        ref = ops.gram_reference(x1.double(), x2.double(), kernel, params)
        assert got.dtype == torch.float32
        assert (got.double() - ref).abs().max() < 1e-5
    assert torch.equal(got.diagonal(), torch.ones(n))


@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
def test_gradcheck_far_from_origin(kernel, params):
    x1 = (randn(6, 3, seed=32) + 1000.0).requires_grad_()
    x2 = (randn(5, 3, seed=33) + 1000.0).requires_grad_()
    assert torch.autograd.gradcheck(
        lambda a, b: torch.ops.fastkernels.gram(a, b, kernel, params, None), (x1, x2)
    )
    assert torch.autograd.gradcheck(
        lambda a: torch.ops.fastkernels.gram(a, a, kernel, params, None), (x2,)
    )


@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
def test_float32_gradient_far_from_origin(kernel, params):
    # The backward shifts too: sum_j gd_ij (x1_i - x2_j) would cancel on the raw points.
    a, b = far_points(37, 5, 1000.0, seed=34), far_points(53, 5, 1000.0, seed=35)
    w = randn(37, 53, seed=36)
    grads = []
    for x1, x2 in ((a, b), (a.double(), b.double())):
        x1, x2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        (torch.ops.fastkernels.gram(x1, x2, kernel, params, None) * w.to(x1.dtype)).sum().backward()
        grads.append((x1.grad, x2.grad))
    for got, want in zip(grads[0], grads[1]):
        assert (got.double() - want).abs().max() < 1e-5 * want.abs().max()


# -- near-duplicates across the two inputs: Laplace d^2 from differences ------------------------


@pytest.mark.parametrize("impl,kernel,params,shift,noise", IMPL_NEAR, ids=IMPL_NEAR_IDS)
def test_float32_duplicated_points_across_inputs(impl, kernel, params, shift, noise):
    # Before the recomputation, Laplace entries of copies were off by up to 1.7e-4.
    a, b = duplicated_points(700, 600, shift, noise, seed=80)  # 6 x 2 C++ tiles
    ref = ops.gram_reference(a.double(), b.double(), kernel, params)
    assert (run(impl, a, b, kernel, params).double() - ref).abs().max() < 1e-5
    # Copies within one tensor, at different rows, are not self-pairs either; a row block of it
    # (diag_offset) keeps its self-pairs exact.
    x = torch.cat([a[:200], b])
    ref = ops.gram_reference(x.double(), x.double(), kernel, params)
    full = run(impl, x, x, kernel, params)
    assert (full.double() - ref).abs().max() < 1e-5
    assert torch.equal(full.diagonal(), torch.ones(len(x)))
    block = run(impl, x[150:450], x, kernel, params, 150)
    assert (block.double() - ref[150:450]).abs().max() < 1e-5
    assert torch.equal(block[:, 150:450].diagonal(), torch.ones(300))


def test_laplace_of_duplicated_points_reproduction():
    # The defect as reported, through the kernel object (the C++ op when it is built).
    x = (randn(300, 5, seed=81) * 0.1 + 1000).float()
    a, b = x[:100], x[50:]  # 50 identical points in both inputs, at different positions
    err = (Laplace(1.0)(a, b).double() - Laplace(1.0)(a.double(), b.double())).abs().max()
    assert err < 1e-5  # was 1.7e-4


@pytest.mark.parametrize("impl", IMPLS)
def test_float64_laplace_of_duplicated_points(impl):
    a, b = duplicated_points(300, 250, 1000.0, 0.0, seed=82, dtype=torch.float64)
    a = a + 1e-9 * randn(300, 5, seed=86)  # near-duplicates at 2e-9
    want = torch.exp(-torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist"))
    assert (run(impl, a, b, "laplace", [1.0]) - want).abs().max() < 1e-12


HUGE = torch.full((3, 4), 1e19)  # finite in float32, but its squared norms overflow


@pytest.mark.parametrize("impl", IMPLS + ["op"])
def test_overflowing_inputs_are_rejected(impl):
    small = randn(2, 4, seed=37).float()
    call = {
        "reference": ops.gram_reference,
        "cpp": torch.ops.fastkernels._gram_cpu,
        "op": torch.ops.fastkernels.gram,
    }[impl]
    for x1, x2, name in ((HUGE, HUGE, "x1"), (HUGE, small, "x1"), (small, HUGE, "x2")):
        for kernel, params in (("rbf", [1.0]), ("linear", [])):
            match = f"gram: {name} .*rescale the inputs or use float64"
            with pytest.raises(ValueError, match=match):
                call(x1, x2, kernel, params, None)
    # The same values are fine in float64.
    big = HUGE.double()
    assert torch.equal(call(big, big, "rbf", [1.0], None), torch.ones(3, 3).double())
