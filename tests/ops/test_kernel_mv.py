"""fastkernels::kernel_mv on every implementation (conftest), KeOps included: the float64 dense
product, self-pairs, zero-norm rows, float32 far from the origin, near-duplicates and bad input;
opcheck, gradcheck, the memory bound (K is never stored) and the KeOps plumbing and errors.

KeOps compiles one formula per (kernel family, dtype, D, T), 10-20 s each on a cold cache: every
KeOps case here uses D = 5, T = 3 in float64 and T = 1 in float32 (distance kernels only), so
the file compiles 7 formulas (the KernelRidge case in tests/learners reuses one of them). The
KeOps error tests need no pykeops.
"""

import gc
import importlib
import os
import resource
import sys

import pytest
import torch
from helpers import F32, F64, far_points, randn, rel_err

from fastkernels import ops
from fastkernels.kernels import NNGP, NTK, RBF, Matern
from fastkernels.ops import _keops
from fastkernels.solvers import KernelOperator

from .conftest import (
    ALL,
    ANGULAR,
    CASE_IDS,
    CASES,
    DISTANCE,
    NEAR,
    NEAR_SIZES,
    STATIONARY,
    STATIONARY_IDS,
    TF32,
    Impl,
    assert_float32_gradients_match_float64,
    assert_rejected,
    cross,
    crossed,
    duplicated_points,
    on_interpreter,
    only,
    over,
    tol,
)

MV = torch.ops.fastkernels.kernel_mv
KEOPS_CASES = [case for case in CASES if case[0] in ops.KEOPS_KERNELS]
# (N, M, D, T). C++ tiles are 256 x 512; the launchers' 32 x 32 x 16 (T tiles of 16); CUDA's
# 64 x 64; KeOps' CPU reduction has none (its CUDA blocks are 192 rows). 1 x 1, odd sizes, and
# several tiles in every direction.
SHAPES = {
    "reference cpp": [(1, 1, 1, 1), (37, 53, 7, 3), (600, 1100, 5, 1), (300, 1100, 4, 16)],
    "triton": [(1, 1, 1, 1), (37, 53, 7, 6), (70, 45, 37, 21)],
    "cuda": [(1, 1, 1, 1), (37, 53, 7, 5), (300, 1100, 5, 5), (513, 257, 100, 5)],
}
KEOPS_SHAPES = [(1, 1, 5, 3), (37, 53, 5, 3), (1001, 777, 5, 3)]


@over(
    "kernel_mv",
    "kernel,params,n,m,d,t",
    {**crossed(CASES, SHAPES), "keops": cross(KEOPS_CASES, KEOPS_SHAPES)},
)
def test_matches_float64_dense_product(impl, kernel, params, n, m, d, t):
    x1, x2, v = randn(n, d, seed=1), randn(m, d, seed=2), randn(m, t, seed=3)
    for dtype in (F64, F32):
        a, b, w = x1.to(dtype), x2.to(dtype), v.to(dtype)
        if impl.name == "keops" and dtype == F32:
            # float32 formulas for the distance kernels only, with a vector v (T = 1).
            if kernel not in DISTANCE:
                break
            w = w[:, 0]
        got = impl(a, b, w, kernel, params)
        assert got.dtype == dtype and got.shape == (n, *w.shape[1:])
        # float32: against the float64 product of the same (rounded) numbers.
        ref = ops.gram_reference(a.double(), b.double(), kernel, params) @ w.double()
        assert rel_err(got, ref) < impl.tol(dtype)


@only("cuda")
@pytest.mark.parametrize("kernel,params", [("rbf", [1 / 16]), ("linear", []), ("ntk", [0, 2, 0])])
def test_cuda_tf32_is_opt_in_within_its_tolerance(kernel, params, monkeypatch):
    monkeypatch.setenv("FASTKERNELS_TRITON_TF32", "1")
    x1, x2 = randn(300, 16, seed=1).float(), randn(1100, 16, seed=2).float()
    v = randn(1100, 5, seed=3).float()
    ref = ops.gram_reference(x1.double(), x2.double(), kernel, params) @ v.double()
    assert rel_err(Impl("kernel_mv", "cuda")(x1, x2, v, kernel, params), ref) < tol("cuda", TF32)


# (N, row block r0:r1, every step-th column of K): across tiles; KeOps: 3 columns (T = 3).
SELF = {"reference cpp cuda": [(530, 300, 310, 1)], "triton": [(70, 50, 70, 10)]}


@over(
    "kernel_mv",
    "kernel,params,n,r0,r1,step",
    {**crossed(CASES, SELF), "keops": cross(KEOPS_CASES, [(20, 5, 12, 7)])},
)
def test_self_pairs_survive_tiling(impl, kernel, params, n, r0, r1, step):
    # One-hot right-hand sides pick columns j of the self-Gram K(x, x): K[j, j] is a self-pair.
    x = randn(n, 5, seed=4)
    cols = torch.arange(0, n, step)
    v = torch.eye(n, dtype=F64)[:, cols]
    full = ops.gram_reference(x, x, kernel, params) @ v
    e = impl.tol(F64, "entries")
    out = impl(x, x, v, kernel, params)
    torch.testing.assert_close(out, full, rtol=e, atol=e)
    # A row block of x itself with its diag_offset.
    rows = impl(x[r0:r1], x, v, kernel, params, r0)
    torch.testing.assert_close(rows, full[r0:r1], rtol=e, atol=e)
    if kernel in DISTANCE or (kernel, params) == ("arccos", [0.0]):
        # Exactly 1 (KeOps: its distances and Kahan angles are exactly 0 for equal points).
        inside = cols[(cols >= r0) & (cols < r1)]
        assert torch.equal(out[cols, torch.arange(len(cols))], torch.ones(len(cols), dtype=F64))
        assert torch.equal(rows[inside - r0, inside // step], torch.ones(len(inside), dtype=F64))


@over(
    "kernel_mv",
    "kernel,params",
    {ALL: ANGULAR, "keops": [case for case in ANGULAR if case[0] == "arccos"]},
)
def test_zero_norm_rows(impl, kernel, params):
    # Cosine 0 with everything, never NaN; zero rows on both sides.
    x1, x2, v = randn(6, 5, seed=5), randn(8, 5, seed=6), randn(8, 3, seed=7)
    x1[2] = 0.0
    x2[[1, 4]] = 0.0
    e = impl.tol(F64, "entries")
    ref = ops.gram_reference(x1, x2, kernel, params) @ v
    torch.testing.assert_close(impl(x1, x2, v, kernel, params), ref, rtol=e, atol=e)


@over("kernel_mv", "", {"cpp triton cuda": [()]})
def test_strided_inputs(impl):
    x1 = randn(5, 40, seed=10).T  # (40, 5), column-major
    x2 = randn(33, 10, seed=11)[:, ::2]  # (33, 5), column stride 2
    v = randn(2, 33, seed=12).T
    e = impl.tol(F64, "entries")
    ref = ops.kernel_mv_reference(x1, x2, v, "matern", [2.5, 0.3])
    torch.testing.assert_close(impl(x1, x2, v, "matern", [2.5, 0.3]), ref, rtol=e, atol=e)


def test_wrapper_accepts_vectors_and_self_products():
    x, v = randn(40, 3, seed=5), randn(40, seed=6)
    out = ops.kernel_mv(x, x, v, "rbf", [0.5])
    assert out.shape == (40,)
    e = tol("cpp", F64, "entries")
    torch.testing.assert_close(out, ops.gram(x, None, "rbf", [0.5]) @ v, rtol=e, atol=e)


@pytest.mark.parametrize(
    "kernel,params", [("rbf", [0.3]), ("matern", [1.5, 0.5]), ("arccos", [1.0]), ("ntk", [1, 0, 0])]
)
def test_opcheck(kernel, params):
    x1 = randn(9, 4, seed=7).requires_grad_()
    x2 = randn(11, 4, seed=8).requires_grad_()
    v = randn(11, 2, seed=9).requires_grad_()
    torch.library.opcheck(MV.default, (x1, x2, v, kernel, params, None))


@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_gradcheck(kernel, params):
    x1 = randn(6, 3, seed=10).requires_grad_()
    x2 = randn(5, 3, seed=11).requires_grad_()
    v = randn(5, 2, seed=12).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b, w: MV(a, b, w, kernel, params, None), (x1, x2, v))
    # A self-product: x1 is x2, exact self-pairs.
    assert torch.autograd.gradcheck(lambda a, w: MV(a, a, w, kernel, params, 0), (x2, v))


def test_backward_matches_dense_autograd_on_many_blocks(monkeypatch):
    # The backward accumulates over row blocks; force many blocks and compare with the Gram's.
    # The module, not the wrapper function of the same name that fastkernels.ops exports.
    monkeypatch.setattr(importlib.import_module("fastkernels.ops.kernel_mv"), "BLOCK_ENTRIES", 64)
    x1 = randn(23, 3, seed=13).requires_grad_()
    x2 = randn(17, 3, seed=14).requires_grad_()
    v = randn(17, 2, seed=15).requires_grad_()
    MV(x1, x2, v, "rbf", [0.4], None).square().sum().backward()
    grads = [t.grad.clone() for t in (x1, x2, v)]
    for t in (x1, x2, v):
        t.grad = None
    (torch.ops.fastkernels.gram(x1, x2, "rbf", [0.4], None) @ v).square().sum().backward()
    e = tol("cpp", F64, "entries")
    for a, t in zip(grads, (x1, x2, v)):
        torch.testing.assert_close(a, t.grad, rtol=e, atol=e)


@only("cuda")
def test_cuda_gradcheck():
    x1 = randn(6, 3, seed=50).cuda().requires_grad_(True)
    x2 = randn(5, 3, seed=51).cuda().requires_grad_(True)
    v = randn(5, 2, seed=52).cuda().requires_grad_(True)
    for kernel, params in (("rbf", [0.3]), ("arccos", [1.0]), ("ntk", [1.0, 0.0, 0.0])):
        torch.autograd.gradcheck(
            lambda a, b, w, k=kernel, p=params: MV(a, b, w, k, p, None), (x1, x2, v)
        )


@only("cpp")
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
    out = MV(x1, x2, v, "rbf", [0.1], None)
    after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert out.shape == (n, 1)
    grew_mb = (after - before) / 1024
    assert grew_mb < 64, f"peak RSS grew by {grew_mb:.0f} MB (a stored K would be 1600 MB)"


# -- float32 far from the origin: the translation-invariant kernels are evaluated shifted ------

# (N, M, T): 1 x 1, odd sizes, and several tiles (C++: 3 x 2 of 256 x 512, one and several
# columns of v). KeOps' SqDist takes differences first: no shift needed, T = 1.
FAR = {
    "reference cpp": [(1, 1, 1), (37, 53, 3), (700, 600, 1), (700, 600, 4)],
    "triton": [(1, 1, 3), (37, 53, 3)],
    "cuda": [(1, 1, 3), (37, 53, 3), (700, 600, 3)],
    "keops": [(1, 1, 1), (37, 53, 1)],
}


@over("kernel_mv", "kernel,params,n,m,t", crossed(STATIONARY, FAR))
@pytest.mark.parametrize("shift", [100.0, 1000.0])
def test_float32_far_from_origin(impl, kernel, params, n, m, t, shift):
    a, b = far_points(n, 5, shift, seed=40), far_points(m, 5, shift, seed=41)
    for x1, x2 in ((a, b), (a, a)):
        v = randn(x2.shape[0], t, seed=42)
        got = impl(x1, x2, v.float(), kernel, params)
        k = ops.gram_reference(x1.double(), x2.double(), kernel, params)
        # Relative to the scale of the row sums |K| |v|: K v is a sum of M signed terms.
        scale = (k.abs() @ v.abs()).max()
        assert got.dtype == F32
        assert (got.double() - k @ v).abs().max() < impl.tol(F32, "abs") * scale


@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
def test_gradcheck_far_from_origin(kernel, params):
    x1 = (randn(6, 3, seed=43) + 1000.0).requires_grad_()
    x2 = (randn(5, 3, seed=44) + 1000.0).requires_grad_()
    v = randn(5, 2, seed=45).requires_grad_()

    def f(a, b, w):
        return MV(a, b, w, kernel, params, None)

    assert torch.autograd.gradcheck(f, (x1, x2, v))
    assert torch.autograd.gradcheck(lambda a, w: f(a, a, w), (x2, v))


@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
def test_float32_gradient_far_from_origin(kernel, params, monkeypatch):
    # Several row blocks of the backward, all with the same shift.
    monkeypatch.setattr(importlib.import_module("fastkernels.ops.kernel_mv"), "BLOCK_ENTRIES", 500)
    a, b = far_points(37, 5, 1000.0, seed=46), far_points(53, 5, 1000.0, seed=47)
    v, g = randn(53, 2, seed=48), randn(37, 2, seed=49)
    assert_float32_gradients_match_float64(
        lambda x1, x2: (MV(x1, x2, v.to(x1.dtype), kernel, params, None) * g.to(x1.dtype)).sum(),
        a,
        b,
    )


# -- near-duplicates across the two inputs: Laplace d^2 from differences ------------------------


@over("kernel_mv", "kernel,params,shift,noise,n,m,r0,r1", crossed(NEAR, NEAR_SIZES))
def test_float32_duplicated_points_across_inputs(impl, kernel, params, shift, noise, n, m, r0, r1):
    # v picks the columns of the copies (even rows of x2, in every column tile), so K v is those
    # columns of K: an absolute bound (a general v would bury a wrong entry in a sum of M
    # terms). Many right-hand sides, and one.
    a, b = duplicated_points(n, m, shift, noise, seed=90)
    bound = impl.tol(F32, "abs")
    k = ops.gram_reference(a.double(), b.double(), kernel, params)
    eye = torch.eye(m, dtype=F64)
    for v in (eye[:, ::2], eye[:, m // 2 : m // 2 + 1]):
        assert (impl(a, b, v.float(), kernel, params).double() - k @ v).abs().max() < bound
    # Copies within one tensor, at different rows: the self product with a row block.
    x = torch.cat([a[:200], b])
    k = ops.gram_reference(x[r0:r1].double(), x.double(), kernel, params, r0)
    c = len(x) - m  # the first row of b in x
    v = torch.eye(len(x), dtype=F64)[:, [c, (c + len(x)) // 2, len(x) - 2]]
    got = impl(x[r0:r1], x, v.float(), kernel, params, r0)
    assert (got.double() - k @ v).abs().max() < bound


@over("kernel_mv", "", {ALL: [()]})
def test_laplace_of_duplicated_points_reproduction(impl):
    x = (randn(300, 5, seed=92) * 0.1 + 1000).float()
    a, b = x[:100], x[50:]  # 50 identical points in both inputs, at different positions
    v = torch.eye(250, dtype=F64)[:, :50]  # the duplicated columns
    want = ops.gram_reference(a.double(), b.double(), "laplace", [1.0]) @ v
    got = impl(a, b, v.float(), "laplace", [1.0])
    assert (got.double() - want).abs().max() < impl.tol(F32, "abs")


@over("kernel_mv", "n,m", {"reference cpp": [(300, 250)], "triton": [(40, 35)]})
def test_float64_laplace_of_duplicated_points(impl, n, m):
    a, b = duplicated_points(n, m, 1000.0, 0.0, seed=94, dtype=F64)
    a = a + 1e-9 * randn(n, 5, seed=98)  # near-duplicates at 2e-9
    want = torch.exp(-torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist"))
    v = torch.eye(m, dtype=F64)[:, ::2]
    assert (impl(a, b, v, "laplace", [1.0]) - want @ v).abs().max() < impl.tol(F64, "abs")


# -- bad input (KeOps: the same checks, no pykeops needed) -------------------------------------

X, V = randn(4, 3), randn(4, 1)
NAN = float("nan")
HUGE = torch.full((3, 4), 1e19)  # finite in float32, but its squared norms overflow
SMALL = randn(2, 4, seed=50).float()
OVERFLOW = "kernel_mv: {} .*rescale the inputs or use float64"
BAD = [
    ((X, X, V[:3], "rbf", [1.0]), ValueError, r"kernel_mv: v must have 4 rows"),
    ((X, X, V.float(), "rbf", [1.0]), TypeError, "x1 and v must have the same"),
    ((X, X[:, :2], V, "rbf", [1.0]), ValueError, "same number of columns D"),
    ((X, X.float(), V, "rbf", [1.0]), TypeError, "x1 and x2 must have the same dtype"),
    ((X.long(), X.long(), V, "rbf", [1.0]), TypeError, "float32 or float64"),
    ((X, X, V * NAN, "rbf", [1.0]), ValueError, "kernel_mv: v must be finite"),
    ((X * NAN, X, V, "rbf", [1.0]), ValueError, "kernel_mv: x1 must be finite"),
    ((X, X * NAN, V, "rbf", [1.0]), ValueError, "kernel_mv: x2 must be finite"),
    ((X, X, V, "laplace", [0.0]), ValueError, "kernel_mv: params .*gamma"),
    ((X, X, V, "matern", [1.0, 1.0]), ValueError, "nu must be one of"),
    ((X, X, V, "rbf", [1.0, 2.0]), ValueError, r"must be \[gamma\] \(1 values\)"),
    ((X, X, V, "gauss", [1.0]), ValueError, "kernel_mv: kernel must be one"),
    ((X[:0], X, V, "rbf", [1.0]), ValueError, "non-empty"),
    ((X, X, V.to("meta"), "rbf", [1.0]), (ValueError, RuntimeError), "dev"),
    *[
        ((x1, x2, torch.ones(len(x2), 1), kernel, params), ValueError, OVERFLOW.format(name))
        for x1, x2, name in ((HUGE, HUGE, "x1"), (HUGE, SMALL, "x1"), (SMALL, HUGE, "x2"))
        for kernel, params in (("rbf", [1.0]), ("linear", []))
    ],
]
# The wrapper (the KeOps path) takes a vector v; KeOps cannot express ntk.
BAD_NOT_KEOPS = [
    ((X, X, V[:, 0], "rbf", [1.0]), ValueError, r"kernel_mv: v must be 2-d"),
    ((X, X, V, "ntk", [0.0, 0.0, 0.0]), ValueError, "depth"),
]
# The public op's schema refuses a float offset before any kernel runs (a RuntimeError).
BAD_OFFSET = ((X, X, V, "rbf", [1.0], 1.5), TypeError, "kernel_mv: diag_offset must be an int or")


@over(
    "kernel_mv",
    "args,exc,match",
    {f"{ALL} keops": BAD, ALL: BAD_NOT_KEOPS, "reference triton keops": [BAD_OFFSET]},
)
def test_bad_input_names_op_argument_and_expectation(impl, args, exc, match):
    assert_rejected(impl, args, exc, match)


@over("kernel_mv", "", {ALL: [()]})
def test_float64_takes_what_overflows_in_float32(impl):
    big = HUGE.double()
    out = impl(big, big, torch.ones(3, 1).double(), "rbf", [1.0])
    assert torch.equal(out, torch.full((3, 1), 3.0).double())


# -- Triton-specific --------------------------------------------------------------------------


@on_interpreter
def test_triton_default_tiles_run():
    # The launcher's default (GPU) tile sizes, on one small case.
    from fastkernels.ops._triton import kernel_mv_triton

    x1, x2, v = randn(70, 9, seed=13), randn(65, 9, seed=14), randn(65, 2, seed=15)
    ref = ops.kernel_mv_reference(x1, x2, v, "ntk", [0.0, 3.0, 1.0])
    assert rel_err(kernel_mv_triton(x1, x2, v, "ntk", [0.0, 3.0, 1.0]), ref) < tol("triton", F64)


# -- KeOps: the backend's plumbing and errors ---------------------------------------------------

KX, KV = randn(4, 3, seed=14), randn(4, 2, seed=15)
keops_mv = Impl("kernel_mv", "keops")


@only("keops")
def test_keops_backends_agree():
    x, v = randn(40, 5, seed=8), randn(40, 3, seed=9)
    out = keops_mv(x, x, v, "rbf", [0.3])
    e = tol("keops", F64)
    for backend in ("auto", "fastkernels"):
        ref = ops.kernel_mv(x, x, v, "rbf", [0.3], backend=backend)
        torch.testing.assert_close(out, ref, rtol=e, atol=e)


@only("keops")
def test_kernel_mv_and_operator_use_keops(monkeypatch):
    calls = []
    real = ops.keops_kernel_mv

    def spy(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(ops, "keops_kernel_mv", spy)
    k, x, v = RBF(gamma=0.3), randn(50, 5, seed=10), randn(50, 3, seed=11)
    ref = k.mv(x, x, v)
    e = tol("keops", F64)
    torch.testing.assert_close(k.mv(x, x, v, backend="keops"), ref, rtol=e, atol=e)
    blocked = k.mv(x, x, v, block_size=16, backend="keops")  # row blocks with diag_offset
    torch.testing.assert_close(blocked, ref, rtol=e, atol=e)
    assert calls == [50, 16, 16, 16, 2]
    op = KernelOperator(k, x, backend="keops", cache="none")
    torch.testing.assert_close(op.matvec(v), ref, rtol=e, atol=e)
    assert len(calls) == 6


@only("keops")
def test_keops_no_flush_to_zero_by_default():
    # The reason -ffast-math is not a default (see fastkernels.ops._keops).
    if "fast-math" in os.environ.get("CXXFLAGS", ""):
        pytest.skip("CXXFLAGS asks for -ffast-math")
    x = randn(3, 5, seed=12)
    keops_mv(x, x, randn(3, 3, seed=13), "rbf", [0.3])
    assert (torch.tensor([1e-310], dtype=F64) * 1.0).item() != 0.0


def test_keops_build_folder_in_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTKERNELS_KEOPS_CACHE", str(tmp_path / "kc"))
    assert _keops.build_folder("9.9").parent == tmp_path / "kc" / "keops-9.9"
    monkeypatch.delenv("FASTKERNELS_KEOPS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _keops.cache_root() == tmp_path / "xdg" / "fastkernels" / "keops"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _keops.cache_root() == tmp_path / "home" / ".cache" / "fastkernels" / "keops"


@only("keops")
def test_keops_build_folder_is_set_on_first_use():
    # Through fastkernels, not importorskip: the first import fixes KeOps' flags and cache.
    _keops.pykeops_torch()
    import pykeops

    assert os.path.samefile(pykeops.get_build_folder(), _keops.build_folder())


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'fastkernels'"):
        ops.kernel_mv(KX, KX, KV, "rbf", [1.0], backend="cuda")
    with pytest.raises(ValueError, match="RBF.mv: backend must be one of"):
        RBF(gamma=1.0).mv(KX, KX, KV, backend="KeOps")


def test_kernel_not_expressible_in_keops():
    with pytest.raises(ValueError, match=r"'ntk' is not expressible .*supports \('rbf', 'lap"):
        keops_mv(KX, KX, KV, "ntk", [0.0, 2.0, 0.0])
    with pytest.raises(ValueError, match="KernelOperator: kernel 'nngp' is not expressible"):
        KernelOperator(NNGP(arch="2layer"), KX, backend="keops")


def test_operator_backend_errors():
    with pytest.raises(ValueError, match="cannot be combined with cache='dense'"):
        KernelOperator(RBF(gamma=1.0), KX, backend="keops", cache="dense")
    with pytest.raises(ValueError, match="KernelOperator: kernel 'ntk' is not expressible"):
        KernelOperator(NTK(arch="2layer"), KX, backend="keops")
    with pytest.raises(ValueError, match="KernelOperator: backend must be one of"):
        KernelOperator(Matern(gamma=1.0), KX, backend="triton")


def test_keops_rejects_requires_grad():
    x = KX.clone().requires_grad_()
    with pytest.raises(ValueError, match="forward-only.*backend='auto'"):
        keops_mv(x, x, KV, "rbf", [1.0])


def test_missing_pykeops_names_the_extra(monkeypatch):
    # As if pykeops were not installed (and not imported yet by fastkernels).
    monkeypatch.setattr(_keops, "_state", {})
    for name in ("pykeops", "pykeops.torch"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install fastkernels\[keops\]"):
        keops_mv(KX, KX, KV, "rbf", [1.0])
    with pytest.raises(ImportError, match=r"pip install fastkernels\[keops\]"):
        KernelOperator(RBF(gamma=1.0), KX, backend="keops")
