"""fastkernels::kernel_mv: every kernel x implementation against the float64 reference, opcheck,
gradcheck, self-pairs, bad input, and the memory bound (K is never stored)."""

import gc
import importlib
import resource
import sys

import pytest
import torch
from helpers import far_points, randn, rel_err

from fastkernels import ops

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

# C++ tiles are 256 x 512: odd sizes, 1 x 1, and several tiles in both directions.
SHAPES = [(1, 1, 1, 1), (37, 53, 7, 3), (600, 1100, 5, 1), (300, 1100, 4, 16)]


def run(impl, x1, x2, v, kernel, params, offset=None):
    if impl == "reference":
        return ops.kernel_mv_reference(x1, x2, v, kernel, params, offset)
    return torch.ops.fastkernels._kernel_mv_cpu(x1, x2, v, kernel, params, offset)


@pytest.mark.parametrize("impl,kernel,params", IMPL_CASES, ids=IMPL_CASE_IDS)
@pytest.mark.parametrize("n,m,d,t", SHAPES)
def test_matches_float64_dense_product(impl, kernel, params, n, m, d, t):
    x1, x2, v = randn(n, d, seed=1), randn(m, d, seed=2), randn(m, t, seed=3)
    ref = ops.gram_reference(x1, x2, kernel, params) @ v
    got = run(impl, x1, x2, v, kernel, params)
    assert got.shape == (n, t) and got.dtype == torch.float64
    assert rel_err(got, ref) < 1e-12
    a, b, w = x1.float(), x2.float(), v.float()
    ref32 = ops.gram_reference(a.double(), b.double(), kernel, params) @ w.double()
    got32 = run(impl, a, b, w, kernel, params)
    assert got32.dtype == torch.float32
    # Normwise over the output: a sum of M signed terms has no per-entry relative guarantee.
    assert rel_err(got32, ref32) < 1e-5


@pytest.mark.parametrize("impl,kernel,params", IMPL_CASES, ids=IMPL_CASE_IDS)
def test_self_pairs_survive_tiling(impl, kernel, params):
    # K(x, x) @ I reproduces the self-Gram, diagonal included, across tile boundaries.
    x = randn(530, 3, seed=4)
    eye = torch.eye(530, dtype=torch.float64)
    out = run(impl, x, x, eye, kernel, params)
    full = ops.gram_reference(x, x, kernel, params)
    torch.testing.assert_close(out, full, rtol=1e-12, atol=1e-12)
    if kernel in ("rbf", "laplace", "matern"):
        assert torch.equal(out.diagonal(), torch.ones(530, dtype=torch.float64))
    rows = run(impl, x[300:310], x, eye, kernel, params, 300)
    torch.testing.assert_close(rows, full[300:310], rtol=1e-12, atol=1e-12)


def test_wrapper_accepts_vectors_and_self_products():
    x, v = randn(40, 3, seed=5), randn(40, seed=6)
    out = ops.kernel_mv(x, x, v, "rbf", [0.5])
    assert out.shape == (40,)
    torch.testing.assert_close(out, ops.gram(x, None, "rbf", [0.5]) @ v, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize(
    "kernel,params", [("rbf", [0.3]), ("matern", [1.5, 0.5]), ("arccos", [1.0]), ("ntk", [1, 0, 0])]
)
def test_opcheck(kernel, params):
    x1 = randn(9, 4, seed=7).requires_grad_()
    x2 = randn(11, 4, seed=8).requires_grad_()
    v = randn(11, 2, seed=9).requires_grad_()
    op = torch.ops.fastkernels.kernel_mv.default
    torch.library.opcheck(op, (x1, x2, v, kernel, params, None))


@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_gradcheck(kernel, params):
    x1 = randn(6, 3, seed=10).requires_grad_()
    x2 = randn(5, 3, seed=11).requires_grad_()
    v = randn(5, 2, seed=12).requires_grad_()

    def f(a, b, w):
        return torch.ops.fastkernels.kernel_mv(a, b, w, kernel, params, None)

    assert torch.autograd.gradcheck(f, (x1, x2, v))

    def g(a, w):  # a self-product: x1 is x2, exact self-pairs
        return torch.ops.fastkernels.kernel_mv(a, a, w, kernel, params, 0)

    assert torch.autograd.gradcheck(g, (x2, v))


def test_backward_matches_dense_autograd_on_many_blocks(monkeypatch):
    # The backward accumulates over row blocks; force many blocks and compare with the Gram's.
    # The module, not the wrapper function of the same name that fastkernels.ops exports.
    mod = importlib.import_module("fastkernels.ops.kernel_mv")
    monkeypatch.setattr(mod, "BLOCK_ENTRIES", 64)
    x1 = randn(23, 3, seed=13).requires_grad_()
    x2 = randn(17, 3, seed=14).requires_grad_()
    v = randn(17, 2, seed=15).requires_grad_()
    torch.ops.fastkernels.kernel_mv(x1, x2, v, "rbf", [0.4], None).square().sum().backward()
    grads = [t.grad.clone() for t in (x1, x2, v)]
    for t in (x1, x2, v):
        t.grad = None
    (torch.ops.fastkernels.gram(x1, x2, "rbf", [0.4], None) @ v).square().sum().backward()
    for a, t in zip(grads, (x1, x2, v)):
        torch.testing.assert_close(a, t.grad, rtol=1e-12, atol=1e-12)


X = randn(4, 3)
V = randn(4, 1)
MV = torch.ops.fastkernels.kernel_mv


@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: MV(X, X, V[:, 0], "rbf", [1.0], None), ValueError, r"kernel_mv: v must be 2-d"),
        (lambda: MV(X, X, V[:3], "rbf", [1.0], None), ValueError, r"v must have 4 rows"),
        (lambda: MV(X, X, V.float(), "rbf", [1.0], None), TypeError, "x1 and v must have the same"),
        (lambda: MV(X, X[:, :2], V, "rbf", [1.0], None), ValueError, "same number of columns D"),
        (lambda: MV(X.long(), X.long(), V, "rbf", [1.0], None), TypeError, "float32 or float64"),
        (
            lambda: MV(X, X, V.clone().fill_(float("nan")), "rbf", [1.0], None),
            ValueError,
            "kernel_mv: v must be finite",
        ),
        (lambda: MV(X, X, V, "laplace", [0.0], None), ValueError, "kernel_mv: params .*gamma"),
        (lambda: MV(X, X, V, "ntk", [0.0, 0.0, 0.0], None), ValueError, "depth"),
        (lambda: MV(X, X, V, "gauss", [1.0], None), ValueError, "kernel_mv: kernel must be one"),
        (lambda: MV(X, X, V.to("meta"), "rbf", [1.0], None), (ValueError, RuntimeError), "dev"),
    ],
)
def test_bad_input_names_op_argument_and_expectation(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


@pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")
@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS from getrusage (Linux, KiB)")
def test_cpp_kernel_mv_memory_is_bounded_by_tiles():
    # What is measured: the process's peak resident set size (ru_maxrss) before and after one
    # 20000 x 20000 K @ v in float32. Storing K would take 1.6 GB; the C++ path holds one
    # 256 x 512 tile per thread plus O(N + M) vectors. The peak only grows, so earlier tests can
    # hide growth (the test is then weaker, never falsely failing); it runs in its own process
    # nowhere, which is why the bound is loose (64 MB) rather than the tile size.
    n, d = 20000, 10
    x1, x2 = torch.randn(n, d), torch.randn(n, d)
    v = torch.randn(n, 1)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = torch.ops.fastkernels._kernel_mv_cpu(x1, x2, v, "rbf", [0.1], None)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out.shape == (n, 1)
    grew_mb = (after - before) / 1024
    assert grew_mb < 64, f"peak RSS grew by {grew_mb:.0f} MB (a stored K would be 1600 MB)"


# -- float32 far from the origin: the translation-invariant kernels are evaluated shifted ------

# 1 x 1, odd sizes, and 3 x 2 C++ tiles of 256 x 512 (with one and with several columns of v).
FAR_SHAPES = [(1, 1, 1), (37, 53, 3), (700, 600, 1), (700, 600, 4)]


@pytest.mark.parametrize("impl,kernel,params", IMPL_STATIONARY, ids=IMPL_STATIONARY_IDS)
@pytest.mark.parametrize("shift", [100.0, 1000.0])
@pytest.mark.parametrize("n,m,t", FAR_SHAPES)
def test_float32_far_from_origin(impl, kernel, params, shift, n, m, t):
    a, b = far_points(n, 5, shift, seed=40), far_points(m, 5, shift, seed=41)
    for x1, x2 in ((a, b), (a, a)):
        v = randn(x2.shape[0], t, seed=42)
        got = run(impl, x1, x2, v.float(), kernel, params)
        k = ops.gram_reference(x1.double(), x2.double(), kernel, params)
        # Relative to the scale of the row sums |K| |v|: K v is a sum of M signed terms.
        scale = (k.abs() @ v.abs()).max()
        assert got.dtype == torch.float32
        assert (got.double() - k @ v).abs().max() < 1e-5 * scale


@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
def test_gradcheck_far_from_origin(kernel, params):
    x1 = (randn(6, 3, seed=43) + 1000.0).requires_grad_()
    x2 = (randn(5, 3, seed=44) + 1000.0).requires_grad_()
    v = randn(5, 2, seed=45).requires_grad_()

    def f(a, b, w):
        return torch.ops.fastkernels.kernel_mv(a, b, w, kernel, params, None)

    assert torch.autograd.gradcheck(f, (x1, x2, v))
    assert torch.autograd.gradcheck(lambda a, w: f(a, a, w), (x2, v))


@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
def test_float32_gradient_far_from_origin(kernel, params, monkeypatch):
    # Several row blocks of the backward, all with the same shift.
    monkeypatch.setattr(importlib.import_module("fastkernels.ops.kernel_mv"), "BLOCK_ENTRIES", 500)
    a, b = far_points(37, 5, 1000.0, seed=46), far_points(53, 5, 1000.0, seed=47)
    v, g = randn(53, 2, seed=48), randn(37, 2, seed=49)
    grads = []
    for x1, x2 in ((a, b), (a.double(), b.double())):
        x1, x2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        out = torch.ops.fastkernels.kernel_mv(x1, x2, v.to(x1.dtype), kernel, params, None)
        (out * g.to(x1.dtype)).sum().backward()
        grads.append((x1.grad, x2.grad))
    for got, want in zip(grads[0], grads[1]):
        assert (got.double() - want).abs().max() < 1e-5 * want.abs().max()


# -- near-duplicates across the two inputs: Laplace d^2 from differences ------------------------


@pytest.mark.parametrize("impl,kernel,params,shift,noise", IMPL_NEAR, ids=IMPL_NEAR_IDS)
def test_float32_duplicated_points_across_inputs(impl, kernel, params, shift, noise):
    # v picks the columns of the copies (even rows of x2, in both C++ column tiles of 512), so
    # K v is those columns of K: an absolute bound (a general v would bury a wrong entry in a sum
    # of 600 terms). Many right-hand sides, and one.
    a, b = duplicated_points(700, 600, shift, noise, seed=90)  # 3 x 2 C++ tiles
    k = ops.gram_reference(a.double(), b.double(), kernel, params)
    eye = torch.eye(600, dtype=torch.float64)
    for v in (eye[:, ::2], eye[:, 300:301]):
        got = run(impl, a, b, v.float(), kernel, params)
        assert (got.double() - k @ v).abs().max() < 1e-5
    # Copies within one tensor, at different rows: the self product with a row block.
    x = torch.cat([a[:200], b])
    k = ops.gram_reference(x[150:450].double(), x.double(), kernel, params, 150)
    v = torch.eye(800, dtype=torch.float64)[:, [200, 500, 798]]
    got = run(impl, x[150:450], x, v.float(), kernel, params, 150)
    assert (got.double() - k @ v).abs().max() < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_laplace_of_duplicated_points_reproduction(impl):
    x = (randn(300, 5, seed=92) * 0.1 + 1000).float()
    a, b = x[:100], x[50:]  # 50 identical points in both inputs, at different positions
    v = torch.eye(250, dtype=torch.float64)[:, :50]  # the duplicated columns
    want = ops.gram_reference(a.double(), b.double(), "laplace", [1.0]) @ v
    assert (run(impl, a, b, v.float(), "laplace", [1.0]).double() - want).abs().max() < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_float64_laplace_of_duplicated_points(impl):
    a, b = duplicated_points(300, 250, 1000.0, 0.0, seed=94, dtype=torch.float64)
    a = a + 1e-9 * randn(300, 5, seed=98)  # near-duplicates at 2e-9
    want = torch.exp(-torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist"))
    v = torch.eye(250, dtype=torch.float64)[:, ::2]
    assert (run(impl, a, b, v, "laplace", [1.0]) - want @ v).abs().max() < 1e-12


HUGE = torch.full((3, 4), 1e19)  # finite in float32, but its squared norms overflow


@pytest.mark.parametrize("impl", IMPLS + ["op"])
def test_overflowing_inputs_are_rejected(impl):
    small = randn(2, 4, seed=50).float()
    call = {
        "reference": ops.kernel_mv_reference,
        "cpp": torch.ops.fastkernels._kernel_mv_cpu,
        "op": torch.ops.fastkernels.kernel_mv,
    }[impl]
    for x1, x2, name in ((HUGE, HUGE, "x1"), (HUGE, small, "x1"), (small, HUGE, "x2")):
        v = torch.ones(x2.shape[0], 1)
        for kernel, params in (("rbf", [1.0]), ("linear", [])):
            match = f"kernel_mv: {name} .*rescale the inputs or use float64"
            with pytest.raises(ValueError, match=match):
                call(x1, x2, v, kernel, params, None)
    big = HUGE.double()
    out = call(big, big, torch.ones(3, 1).double(), "rbf", [1.0], None)
    assert torch.equal(out, torch.full((3, 1), 3.0).double())
