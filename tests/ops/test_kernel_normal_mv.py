"""fastkernels::kernel_normal_mv: K^T (K v) for every kernel x implementation against the dense
float64 product, dtype rules, float64 accumulation, opcheck, gradcheck (v only), bad input, the
memory bound, and the Triton launcher under the interpreter (``-m interpreter``)."""

import gc
import resource
import sys

import pytest
import torch
from helpers import randn, rel_err

from fastkernels import ops

from .conftest import (
    CASE_IDS,
    CASES,
    IMPL_CASE_IDS,
    IMPL_CASES,
    IMPLS,
    NEAR,
    duplicated_points,
    on_interpreter,
)

OP = torch.ops.fastkernels.kernel_normal_mv
# (N, M, D, T). C++ row panels hold 3 MiB of K, 16 to 256 rows: 1 x 1; odd sizes in one panel;
# three panels (256 rows each at M = 1100); M past the panel budget (16-row panels) with T = 16.
SHAPES = [(1, 1, 1, 1), (37, 53, 7, 3), (600, 1100, 5, 1), (40, 50000, 3, 16)]


def run(impl, x1, x2, v, kernel, params):
    if impl == "reference":
        return ops.kernel_normal_mv_reference(x1, x2, v, kernel, params)
    return torch.ops.fastkernels._kernel_normal_mv_cpu(x1, x2, v, kernel, params)


def dense(x1, x2, v, kernel, params):
    """K^T (K v) from the stored float64 Gram of the (possibly float32-rounded) points."""
    k = ops.gram_reference(x1.double(), x2.double(), kernel, params)
    return k.T @ (k @ v.double())


@pytest.mark.parametrize("impl,kernel,params", IMPL_CASES, ids=IMPL_CASE_IDS)
@pytest.mark.parametrize("n,m,d,t", SHAPES)
def test_matches_float64_dense_product(impl, kernel, params, n, m, d, t):
    x1, x2, v = randn(n, d, seed=1), randn(m, d, seed=2), randn(m, t, seed=3)
    got = run(impl, x1, x2, v, kernel, params)
    assert got.shape == (m, t) and got.dtype == torch.float64
    assert rel_err(got, dense(x1, x2, v, kernel, params)) < 1e-12
    a, b = x1.float(), x2.float()
    # float32 everywhere: float32 result, within float32 rounding of the rounded points' product.
    got32 = run(impl, a, b, v.float(), kernel, params)
    assert got32.dtype == torch.float32
    assert rel_err(got32, dense(a, b, v.float(), kernel, params)) < 1e-5
    # float32 points with float64 v: float64 result (products in float64 on the float32 K).
    mixed = run(impl, a, b, v, kernel, params)
    assert mixed.dtype == torch.float64
    assert rel_err(mixed, dense(a, b, v, kernel, params)) < 1e-5


@pytest.mark.parametrize("impl", IMPLS)
def test_float32_is_accurate_to_1e6_at_moderate_size(impl):
    # Unit-scale data, gamma = 0.5 / D: the solvers' regime. The float32 rounding of K itself
    # (~1e-7 per entry) averages out over the sums; the accumulation must not add more.
    x1, x2, v = randn(20000, 10, seed=4), randn(300, 10, seed=5), randn(300, 2, seed=6)
    a, b = x1.float(), x2.float()
    for w in (v.float(), v):
        got = run(impl, a, b, w, "rbf", [0.05])
        assert got.dtype == w.dtype
        assert rel_err(got, dense(a, b, w, "rbf", [0.05])) < 1e-6


@pytest.mark.parametrize("impl", IMPLS)
def test_sum_over_many_rows_accumulates_in_float64(impl):
    # 10^6 rows of positive terms. Measured on these inputs: 4e-8 with float64 accumulation;
    # 2e-6 with float32 sums over 256-row panels added in float32; 3e-4 for one float32 K^T u.
    x1, x2 = randn(1_000_000, 2, seed=7).float(), randn(4, 2, seed=8).float()
    v = randn(4, 1, seed=9).abs().float() + 0.5
    got = run(impl, x1, x2, v, "rbf", [0.5])
    assert rel_err(got, dense(x1, x2, v, "rbf", [0.5])) < 2e-7


@pytest.mark.parametrize("impl,kernel,params", IMPL_CASES, ids=IMPL_CASE_IDS)
def test_self_product_keeps_exact_self_pairs(impl, kernel, params):
    # x1 is x2: K is the self-Gram with its exact diagonal, across panel boundaries.
    x, v = randn(530, 3, seed=10), randn(530, 2, seed=11)
    k = ops.gram_reference(x, x, kernel, params)
    got = run(impl, x, x, v, kernel, params)
    assert rel_err(got, k.T @ (k @ v)) < 1e-12


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel,params", [("rbf", [0.5]), ("matern", [1.5, 0.5])])
def test_float32_far_from_origin(impl, kernel, params):
    # Points at 1000 with unit spread: ||x||^2 + ||y||^2 - 2 <x, y> would cancel to noise in
    # float32 without the common shift (the float32 ulp of ||x||^2 ~ 5e6 is 0.5).
    x1 = (randn(900, 4, seed=12) + 1000.0).float()
    x2 = (randn(300, 4, seed=13) + 1000.0).float()
    v = randn(300, 2, seed=14)
    ref = dense(x1, x2, v, kernel, params)
    assert rel_err(run(impl, x1, x2, v.float(), kernel, params), ref) < 1e-5
    assert rel_err(run(impl, x1, x2, v, kernel, params), ref) < 1e-5


@pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")
def test_cpp_result_does_not_depend_on_threads():
    x1, x2, v = randn(2000, 6, seed=15), randn(700, 6, seed=16), randn(700, 3, seed=17)
    one = run("cpp", x1, x2, v, "laplace", [0.3])
    torch.set_num_threads(2)  # the autouse fixture restores the count
    two = run("cpp", x1, x2, v, "laplace", [0.3])
    assert rel_err(two, one) < 1e-13


def test_op_dispatches_and_wrapper_accepts_vectors():
    x1, x2, v = randn(50, 3, seed=18), randn(20, 3, seed=19), randn(20, seed=20)
    out = ops.kernel_normal_mv(x1, x2, v, "rbf", [0.5])
    assert out.shape == (20,)
    k = ops.gram_reference(x1, x2, "rbf", [0.5])
    torch.testing.assert_close(out, k.T @ (k @ v), rtol=1e-12, atol=1e-12)
    same = OP(x1.float(), x2.float(), v[:, None], "polynomial", [2.0, 0.5, 1.0])
    assert same.dtype == torch.float64 and same.shape == (20, 1)


@pytest.mark.parametrize(
    "kernel,params", [("rbf", [0.3]), ("matern", [1.5, 0.5]), ("arccos", [1.0]), ("ntk", [1, 0, 0])]
)
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
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


@pytest.mark.parametrize("impl", ["op", "reference", "cpp"][: 2 + ops.HAS_CPP])
@pytest.mark.parametrize("args,exc,match", BAD)
def test_bad_input_names_op_argument_and_expectation(impl, args, exc, match):
    if impl == "cpp" and args[2].device.type == "meta":
        pytest.skip("the private CPU op is reached through the dispatcher for CPU tensors only")
    fn = {
        "op": OP,
        "reference": ops.kernel_normal_mv_reference,
        "cpp": torch.ops.fastkernels._kernel_normal_mv_cpu if ops.HAS_CPP else None,
    }[impl]
    with pytest.raises(exc, match=match):
        fn(*args)


@pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")
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
    out = torch.ops.fastkernels._kernel_normal_mv_cpu(x1, x2, v, "rbf", [0.1])
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out.shape == (10000, 1)
    grew_mb = (after - before) / 1024
    assert grew_mb < 64, f"peak RSS grew by {grew_mb:.0f} MB (a stored K would be 800 MB)"


# ---------------------------------------------------------------------------------------------
# Triton launcher on CPU tensors: TRITON_INTERPRET=1 python -m pytest -q -m interpreter ...
# ---------------------------------------------------------------------------------------------


def triton_launcher():
    pytest.importorskip("triton")
    from fastkernels.ops._triton.kernel_normal_mv import kernel_normal_mv_triton

    return kernel_normal_mv_triton


# Small tiles, and 32 rows of x1 per split of the second launch: several tiles in every
# dimension (and several T tiles of 16 at T = 21) and several splits at these sizes.
TILES = dict(block_m=32, block_n=32, block_k=16, block_t=16, split_rows=32)
TRITON_SHAPES = [(1, 1, 1, 1), (37, 53, 7, 3), (70, 45, 37, 21)]


@on_interpreter
@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("n,m,d,t", TRITON_SHAPES)
def test_triton_matches_float64_dense_product(kernel, params, n, m, d, t):
    launch = triton_launcher()
    x1, x2, v = randn(n, d, seed=30), randn(m, d, seed=31), randn(m, t, seed=32)
    got = launch(x1, x2, v, kernel, params, **TILES)
    assert got.shape == (m, t) and got.dtype == torch.float64
    assert rel_err(got, dense(x1, x2, v, kernel, params)) < 1e-12
    a, b = x1.float(), x2.float()
    got32 = launch(a, b, v.float(), kernel, params, **TILES)
    assert got32.dtype == torch.float32
    assert rel_err(got32, dense(a, b, v.float(), kernel, params)) < 1e-5
    mixed = launch(a, b, v, kernel, params, **TILES)
    assert mixed.dtype == torch.float64
    assert rel_err(mixed, dense(a, b, v, kernel, params)) < 1e-5


@on_interpreter
@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_triton_self_product_and_default_tiles(kernel, params):
    launch = triton_launcher()
    x, v = randn(70, 4, seed=33), randn(70, 2, seed=34)
    k = ops.gram_reference(x, x, kernel, params)
    assert rel_err(launch(x, x, v, kernel, params, **TILES), k.T @ (k @ v)) < 1e-12
    # The launcher's own (GPU) tiles and split choice.
    assert rel_err(launch(x, x, v, kernel, params), k.T @ (k @ v)) < 1e-12


@on_interpreter
def test_triton_float32_far_from_origin():
    launch = triton_launcher()
    x1 = (randn(90, 4, seed=35) + 1000.0).float()
    x2 = (randn(40, 4, seed=36) + 1000.0).float()
    v = randn(40, 2, seed=37)
    ref = dense(x1, x2, v, "rbf", [0.5])
    assert rel_err(launch(x1, x2, v.float(), "rbf", [0.5], **TILES), ref) < 1e-5


@on_interpreter
@pytest.mark.parametrize("args,exc,match", BAD[:-1])  # the meta-device case needs no launcher
def test_triton_rejects_bad_input_like_the_reference(args, exc, match):
    launch = triton_launcher()
    with pytest.raises(exc) as want:
        ops.kernel_normal_mv_reference(*args)
    with pytest.raises(exc) as got:
        launch(*args)
    assert str(got.value) == str(want.value)


@on_interpreter
def test_triton_is_registered_for_cuda_tensors():
    assert ops.HAS_TRITON
    assert torch._C._dispatch_has_kernel_for_dispatch_key("fastkernels::kernel_normal_mv", "CUDA")


# ---------------------------------------------------------------------------------------------
# CUDA: the registered op (compiled Triton), skipped without a GPU
# ---------------------------------------------------------------------------------------------


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize(
    "kernel,params", [("rbf", [0.3]), ("matern", [2.5, 0.5]), ("arccos", [1.0]), ("ntk", [0, 2, 0])]
)
def test_cuda_matches_float64_dense_product(kernel, params):
    # Several 32-row tiles and splits; float64, float32 and float32 points with float64 v.
    x1, x2, v = randn(5000, 7, seed=40), randn(300, 7, seed=41), randn(300, 5, seed=42)
    for xd, vd, tol in (
        (torch.float64, torch.float64, 1e-12),
        (torch.float32, torch.float32, 1e-5),
        (torch.float32, torch.float64, 1e-5),
    ):
        a, b, w = x1.to(xd), x2.to(xd), v.to(vd)
        got = OP(a.cuda(), b.cuda(), w.cuda(), kernel, params)
        assert got.is_cuda and got.dtype == vd
        assert rel_err(got.cpu(), dense(a, b, w, kernel, params)) < tol


def near_case(shift, noise, kernel, params, n=700, m=600):
    x1, x2 = duplicated_points(n, m, shift, noise, seed=130)
    # v picks columns that hold the duplicated rows: their kernel entries (near 1) are the ones
    # a cancelling d^2 would spoil.
    v = torch.eye(m, dtype=torch.float64)[:, ::2][:, :8]
    return x1, x2, v, dense(x1, x2, v, kernel, params)


@pytest.mark.parametrize("impl", IMPLS)
@pytest.mark.parametrize("kernel,params,shift,noise", NEAR)
def test_near_duplicates_across_inputs(impl, kernel, params, shift, noise):
    # Copies of a point in x1 and in x2 (not self-pairs): the Laplace kernel's sqrt turns the
    # rounding of d^2 into 1e-4 errors unless those pairs are evaluated from differences.
    x1, x2, v, want = near_case(shift, noise, kernel, params)
    assert rel_err(run(impl, x1, x2, v, kernel, params), want) < 1.5e-7


@on_interpreter
@pytest.mark.parametrize("kernel,params,shift,noise", NEAR[:2] + NEAR[5:7])
def test_triton_near_duplicates_across_inputs(kernel, params, shift, noise):
    launch = triton_launcher()
    x1, x2, v, want = near_case(shift, noise, kernel, params, n=90, m=70)
    assert rel_err(launch(x1, x2, v, kernel, params, **TILES), want) < 1.5e-7
