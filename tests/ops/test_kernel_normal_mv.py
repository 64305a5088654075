"""fastkernels::kernel_normal_mv: K^T (K v) on every implementation (conftest) against the dense
float64 product, dtype rules, float64 accumulation, self products, float32 far from the origin,
near-duplicates and bad input; opcheck, gradcheck (v only) and the memory bound."""

import gc
import resource
import sys

import pytest
import torch
from helpers import F32, F64, randn, rel_err

from fastkernels import ops

from .conftest import (
    ALL,
    CASE_IDS,
    CASES,
    NEAR,
    assert_rejected,
    cross,
    crossed,
    duplicated_points,
    on_interpreter,
    only,
    over,
    tol,
)

OP = torch.ops.fastkernels.kernel_normal_mv
# (N, M, D, T). C++ row panels hold 3 MiB of K, 16 to 256 rows: 1 x 1; odd sizes in one panel;
# three panels (256 rows each at M = 1100); M past the panel budget (16-row panels) with T = 16.
# The launchers' small tiles (32 rows of x1 per split of the second launch): several tiles in
# every dimension, several T tiles of 16 at T = 21, several splits. CUDA: several 32-row tiles
# and splits, for four kernels (each (kernel, dtype) pair is a Triton compile).
SHAPES = {
    "reference cpp": [(1, 1, 1, 1), (37, 53, 7, 3), (600, 1100, 5, 1), (40, 50000, 3, 16)],
    "triton": [(1, 1, 1, 1), (37, 53, 7, 3), (70, 45, 37, 21)],
}
CUDA_CASES = [("rbf", [0.3]), ("matern", [2.5, 0.5]), ("arccos", [1.0]), ("ntk", [0.0, 2.0, 0.0])]


def dense(x1, x2, v, kernel, params):
    """K^T (K v) from the stored float64 Gram of the (possibly float32-rounded) points."""
    k = ops.gram_reference(x1.double(), x2.double(), kernel, params)
    return k.T @ (k @ v.double())


@over(
    "kernel_normal_mv",
    "kernel,params,n,m,d,t",
    {**crossed(CASES, SHAPES), "cuda": cross(CUDA_CASES, [(5000, 300, 7, 5)])},
)
def test_matches_float64_dense_product(impl, kernel, params, n, m, d, t):
    x1, x2, v = randn(n, d, seed=1), randn(m, d, seed=2), randn(m, t, seed=3)
    # float64; float32 everywhere (float32 result, within float32 rounding of the rounded
    # points' product); float32 points with float64 v (float64 products on the float32 K).
    for xd, vd in ((F64, F64), (F32, F32), (F32, F64)):
        a, b, w = x1.to(xd), x2.to(xd), v.to(vd)
        got = impl(a, b, w, kernel, params)
        assert got.shape == (m, t) and got.dtype == vd
        assert rel_err(got, dense(a, b, w, kernel, params)) < impl.tol(xd)


@over("kernel_normal_mv", "", {"reference cpp": [()]})
def test_float32_is_accurate_to_1e6_at_moderate_size(impl):
    # Unit-scale data, gamma = 0.5 / D: the solvers' regime. The float32 rounding of K itself
    # (~1e-7 per entry) averages out over the sums; the accumulation must not add more.
    x1, x2, v = randn(20000, 10, seed=4), randn(300, 10, seed=5), randn(300, 2, seed=6)
    a, b = x1.float(), x2.float()
    for w in (v.float(), v):
        got = impl(a, b, w, "rbf", [0.05])
        assert got.dtype == w.dtype
        assert rel_err(got, dense(a, b, w, "rbf", [0.05])) < impl.tol(F32, "moderate")


@over("kernel_normal_mv", "", {"reference cpp": [()]})
def test_sum_over_many_rows_accumulates_in_float64(impl):
    # 10^6 rows of positive terms. Measured on these inputs: 4e-8 with float64 accumulation;
    # 2e-6 with float32 sums over 256-row panels added in float32; 3e-4 for one float32 K^T u.
    x1, x2 = randn(1_000_000, 2, seed=7).float(), randn(4, 2, seed=8).float()
    v = randn(4, 1, seed=9).abs().float() + 0.5
    got = impl(x1, x2, v, "rbf", [0.5])
    assert rel_err(got, dense(x1, x2, v, "rbf", [0.5])) < impl.tol(F32, "accumulate")


@over(
    "kernel_normal_mv", "kernel,params,n", crossed(CASES, {"reference cpp": [530], "triton": [70]})
)
def test_self_product_keeps_exact_self_pairs(impl, kernel, params, n):
    # x1 is x2: K is the self-Gram with its exact diagonal, across panel / tile boundaries.
    x, v = randn(n, 3, seed=10), randn(n, 2, seed=11)
    k = ops.gram_reference(x, x, kernel, params)
    assert rel_err(impl(x, x, v, kernel, params), k.T @ (k @ v)) < impl.tol(F64)


@on_interpreter
@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_triton_default_tiles(kernel, params):
    # The launcher's own (GPU) tiles and split choice.
    from fastkernels.ops._triton import kernel_normal_mv_triton

    x, v = randn(70, 4, seed=33), randn(70, 2, seed=34)
    k = ops.gram_reference(x, x, kernel, params)
    assert rel_err(kernel_normal_mv_triton(x, x, v, kernel, params), k.T @ (k @ v)) < (
        tol("triton", F64)
    )


FAR = [("rbf", [0.5]), ("matern", [1.5, 0.5])]


@over(
    "kernel_normal_mv",
    "kernel,params,n,m",
    {"reference cpp": cross(FAR, [(900, 300)]), "triton": cross(FAR[:1], [(90, 40)])},
)
def test_float32_far_from_origin(impl, kernel, params, n, m):
    # Points at 1000 with unit spread: ||x||^2 + ||y||^2 - 2 <x, y> would cancel to noise in
    # float32 without the common shift (the float32 ulp of ||x||^2 ~ 5e6 is 0.5).
    x1 = (randn(n, 4, seed=12) + 1000.0).float()
    x2 = (randn(m, 4, seed=13) + 1000.0).float()
    v = randn(m, 2, seed=14)
    ref = dense(x1, x2, v, kernel, params)
    assert rel_err(impl(x1, x2, v.float(), kernel, params), ref) < impl.tol(F32)
    assert rel_err(impl(x1, x2, v, kernel, params), ref) < impl.tol(F32)


@only("cpp")
def test_cpp_result_does_not_depend_on_threads():
    x1, x2, v = randn(2000, 6, seed=15), randn(700, 6, seed=16), randn(700, 3, seed=17)
    one = OP(x1, x2, v, "laplace", [0.3])
    torch.set_num_threads(2)  # the autouse fixture restores the count
    two = OP(x1, x2, v, "laplace", [0.3])
    assert rel_err(two, one) < tol("cpp", F64, "threads")


def test_op_dispatches_and_wrapper_accepts_vectors():
    x1, x2, v = randn(50, 3, seed=18), randn(20, 3, seed=19), randn(20, seed=20)
    out = ops.kernel_normal_mv(x1, x2, v, "rbf", [0.5])
    assert out.shape == (20,)
    k = ops.gram_reference(x1, x2, "rbf", [0.5])
    e = tol("cpp", F64, "entries")
    torch.testing.assert_close(out, k.T @ (k @ v), rtol=e, atol=e)
    same = OP(x1.float(), x2.float(), v[:, None], "polynomial", [2.0, 0.5, 1.0])
    assert same.dtype == F64 and same.shape == (20, 1)


@pytest.mark.parametrize(
    "kernel,params", [("rbf", [0.3]), ("matern", [1.5, 0.5]), ("arccos", [1.0]), ("ntk", [1, 0, 0])]
)
@pytest.mark.parametrize("dtype", [F64, F32], ids=["float64", "float32"])
def test_opcheck(kernel, params, dtype):
    x1, x2 = randn(9, 4, seed=21).to(dtype), randn(11, 4, seed=22).to(dtype)
    v = randn(11, 2, seed=23).requires_grad_()  # float64 v: also the mixed case for float32
    torch.library.opcheck(OP.default, (x1, x2, v, kernel, params))


@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_gradcheck_with_respect_to_v(kernel, params):
    x1, x2 = randn(6, 3, seed=24), randn(5, 3, seed=25)
    v = randn(5, 2, seed=26).requires_grad_()
    assert torch.autograd.gradcheck(lambda w: OP(x1, x2, w, kernel, params), (v,))
    assert torch.autograd.gradcheck(lambda w: OP(x2, x2, w, kernel, params), (v,))


def test_gradient_with_respect_to_points_is_refused():
    x1, x2, v = randn(6, 3, seed=27).requires_grad_(), randn(5, 3, seed=28), randn(5, 1, seed=29)
    out = OP(x1, x2, v, "rbf", [0.5])
    with pytest.raises(NotImplementedError, match="kernel_normal_mv: gradients with respect to x1"):
        out.sum().backward()


X = randn(4, 3)
V = randn(4, 1)
NAN = V.clone().fill_(float("nan"))
BAD = [
    ((X, X, V[:, 0], "rbf", [1.0]), ValueError, r"kernel_normal_mv: v must be 2-dimensional"),
    ((X, X, V[:3], "rbf", [1.0]), ValueError, r"kernel_normal_mv: v must have 4 rows"),
    ((X, X[:, :2], V, "rbf", [1.0]), ValueError, r"same number of columns D"),
    ((X.float(), X.float(), V.float()[:, :0], "rbf", [1.0]), ValueError, "v must be non-empty"),
    ((X, X, V.float(), "rbf", [1.0]), TypeError, r"kernel_normal_mv: v must have the dtype of x1"),
    ((X, X.float(), V, "rbf", [1.0]), TypeError, "x1 and x2 must have the same dtype"),
    ((X.long(), X.long(), V, "rbf", [1.0]), TypeError, "float32 or float64"),
    ((X, X, NAN, "rbf", [1.0]), ValueError, r"kernel_normal_mv: v must be finite"),
    ((X * float("nan"), X, V, "rbf", [1.0]), ValueError, r"kernel_normal_mv: x1 must be finite"),
    ((X, X, V, "laplace", [0.0]), ValueError, r"kernel_normal_mv: params .*gamma"),
    ((X, X, V, "ntk", [0.0, 0.0, 0.0]), ValueError, "depth"),
    ((X, X, V, "gauss", [1.0]), ValueError, r"kernel_normal_mv: kernel must be one"),
    ((X, X, V.to("meta"), "rbf", [1.0]), (ValueError, RuntimeError), "dev"),
]


@over("kernel_normal_mv", "args,exc,match", {ALL: BAD})
def test_bad_input_names_op_argument_and_expectation(impl, args, exc, match):
    assert_rejected(impl, args, exc, match)


@only("cpp")
@pytest.mark.skipif(sys.platform != "linux", reason="peak RSS from getrusage (Linux, KiB)")
def test_cpp_memory_is_bounded_by_panels():
    # What is measured: the process's peak resident set size (ru_maxrss) before and after one
    # K^T K v with a 20000 x 10000 float32 K (800 MB if stored); the C++ path holds one 3 MiB
    # panel per thread plus O(M T) accumulators. The peak only grows, so earlier
    # tests can hide growth (a weaker test, never a false failure): hence the loose bound.
    x1, x2 = torch.randn(20000, 5), torch.randn(10000, 5)
    v = torch.randn(10000, 1)
    gc.collect()
    before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    out = OP(x1, x2, v, "rbf", [0.1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out.shape == (10000, 1)
    grew_mb = (after - before) / 1024
    assert grew_mb < 64, f"peak RSS grew by {grew_mb:.0f} MB (a stored K would be 800 MB)"


@over(
    "kernel_normal_mv",
    "kernel,params,shift,noise,n,m",
    {"reference cpp": cross(NEAR, [(700, 600)]), "triton": cross(NEAR[:2] + NEAR[5:7], [(90, 70)])},
)
def test_near_duplicates_across_inputs(impl, kernel, params, shift, noise, n, m):
    # Copies of a point in x1 and in x2 (not self-pairs): the Laplace kernel's sqrt turns the
    # rounding of d^2 into 1e-4 errors unless those pairs are evaluated from differences.
    x1, x2 = duplicated_points(n, m, shift, noise, seed=130)
    # v picks columns that hold the duplicated rows: their kernel entries (near 1) are the ones
    # a cancelling d^2 would spoil.
    v = torch.eye(m, dtype=F64)[:, ::2][:, :8]
    want = dense(x1, x2, v, kernel, params)
    assert rel_err(impl(x1, x2, v, kernel, params), want) < impl.tol(F32, "near")
