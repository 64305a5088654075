"""fastkernels::gram on every implementation (conftest): the float64 reference, self-pairs, float32
far from the origin, near-duplicates, zero-norm rows, PSD and bad input; scikit-learn, opcheck,
gradcheck; the C++ ReLU kernels; the Triton-specific unit tests."""

import numpy as np
import pytest
import torch
from helpers import F32, F64, far_points, randn, rel_err
from sklearn.metrics.pairwise import linear_kernel, polynomial_kernel, rbf_kernel

from fastkernels import ops
from fastkernels.kernels import Laplace

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
    crossed,
    duplicated_points,
    fmt,
    on_interpreter,
    only,
    over,
    tol,
)

G = torch.ops.fastkernels.gram
# (N, M, D): 1 x 1, odd sizes, and several tiles: C++ tiles are 128 x 512, the launchers' small
# ones 32 x 32 x 16 (3 D slices at D = 37), CUDA's 64 x 64 (several D slices at D = 100).
SHAPES = {
    "reference cpp": [(1, 1, 1), (37, 53, 7), (300, 1100, 5)],
    "triton": [(1, 1, 1), (37, 53, 7), (70, 45, 37)],
    "cuda": [(1, 1, 1), (37, 53, 7), (300, 1100, 5), (513, 257, 100)],
}


@over("gram", "kernel,params,n,m,d", crossed(CASES, SHAPES))
def test_matches_float64_reference(impl, kernel, params, n, m, d):
    x1, x2 = randn(n, d, seed=1), randn(m, d, seed=2)
    for dtype in (F64, F32):
        a, b = x1.to(dtype), x2.to(dtype)
        got = impl(a, b, kernel, params)
        assert got.dtype == dtype and got.shape == (n, m)
        # float32: against the float64 kernel of the same (rounded) points.
        ref = ops.gram_reference(a.double(), b.double(), kernel, params)
        assert rel_err(got, ref) < impl.tol(dtype)
        if kernel in DISTANCE and dtype == F64:  # positive entries: relative one by one too
            torch.testing.assert_close(got.double(), ref, rtol=impl.tol(dtype), atol=0)


@only("cuda")
@pytest.mark.parametrize("kernel,params", [("rbf", [1 / 16]), ("linear", []), ("ntk", [0, 2, 0])])
def test_cuda_tf32_is_opt_in_within_its_tolerance(kernel, params, monkeypatch):
    # Unit-variance inputs with gamma = 1/D; the interpreter does not emulate TF32 rounding.
    monkeypatch.setenv("FASTKERNELS_TRITON_TF32", "1")
    x1, x2 = randn(300, 16, seed=1).float(), randn(1100, 16, seed=2).float()
    ref = ops.gram_reference(x1.double(), x2.double(), kernel, params)
    assert rel_err(Impl("gram", "cuda")(x1, x2, kernel, params), ref) < tol("cuda", TF32)


# (N, first row of the block): self-pairs across tiles in every implementation.
SELF = {"reference cpp": [(140, 130)], "triton": [(70, 50)], "cuda": [(300, 200)]}


@over("gram", "kernel,params,n,r0", crossed(CASES, SELF))
def test_self_pairs_of_a_self_gram_and_of_row_blocks(impl, kernel, params, n, r0):
    x = randn(n, 4, seed=3)
    for dtype in (F64, F32):
        xd, e = x.to(dtype), impl.tol(dtype, "entries")
        full = impl(xd, xd, kernel, params)  # the same tensor: diagonal self-pairs
        ref = ops.gram_reference(xd.double(), xd.double(), kernel, params)
        assert rel_err(full, ref) < impl.tol(dtype)
        # Rows r0.. of x against x: self-pairs on the diagonal shifted by r0.
        block = impl(xd[r0:], xd, kernel, params, r0)
        torch.testing.assert_close(block, full[r0:], rtol=e, atol=e)
        # The transposed block (what kernel_mv's backward asks for): a negative offset.
        back = impl(xd, xd[r0:], kernel, params, -r0)
        torch.testing.assert_close(back, full[:, r0:], rtol=e, atol=e)
        if kernel in DISTANCE:
            assert torch.equal(full.diagonal(), torch.ones(n, dtype=dtype))
            assert torch.equal(block[:, r0:].diagonal(), torch.ones(n - r0, dtype=dtype))


@over("gram", "kernel,params", {"cpp triton cuda": ANGULAR})
def test_zero_norm_rows_follow_the_reference(impl, kernel, params):
    # The cosine of a zero-norm row is defined as 0 (over the self-pair rule): finite values.
    x1, x2 = randn(9, 5, seed=8), randn(11, 5, seed=9)
    x1[3] = 0.0
    x2[4] = 0.0
    for b in (x2, x1):
        ref = ops.gram_reference(x1, b, kernel, params)
        assert rel_err(impl(x1, b, kernel, params), ref) < impl.tol(F64)


@over("gram", "", {"cpp triton cuda": [()]})
def test_strided_inputs(impl):
    x1 = randn(5, 40, seed=10).T  # (40, 5), column-major
    x2 = randn(33, 10, seed=11)[:, ::2]  # (33, 5), column stride 2
    e = impl.tol(F64, "entries")
    ref = ops.gram_reference(x1, x2, "rbf", [0.2])
    torch.testing.assert_close(impl(x1, x2, "rbf", [0.2]), ref, rtol=e, atol=e)


PSD = [("arccos", [0.0]), ("arccos", [1.0]), ("ntk", [1.0, 0.0, 0.0]), ("ntk", [0.0, 3.0, 1.0])]


@over("gram", "kernel,params", {"reference cpp": PSD})
def test_positive_semidefinite(impl, kernel, params):
    x = randn(60, 5, seed=15)
    k = impl(x, x, kernel, params)
    assert torch.linalg.eigvalsh(k).min() >= -impl.tol(F64, "psd") * k.diagonal().max()


def test_wrapper_without_x2_is_a_self_gram():
    x = randn(50, 6, seed=4)
    assert torch.equal(ops.gram(x, kernel="rbf", params=[0.2]).diagonal(), torch.ones(50).double())


def test_matches_scikit_learn():
    x1, x2 = randn(41, 9, seed=6), randn(33, 9, seed=7)
    a, b = x1.numpy(), x2.numpy()
    pairs = [
        ("rbf", [0.15], rbf_kernel(a, b, gamma=0.15)),
        ("polynomial", [3.0, 0.1, 0.5], polynomial_kernel(a, b, degree=3, gamma=0.1, coef0=0.5)),
        ("linear", [], linear_kernel(a, b)),
    ]
    for kernel, params, ref in pairs:
        for dt in (F64, F32):
            got = ops.gram(x1.to(dt), x2.to(dt), kernel, params).double().numpy()
            a32, b32 = x1.float().double(), x2.float().double()
            want = ref if dt == F64 else ops.gram_reference(a32, b32, kernel, params).numpy()
            assert np.abs(got - want).max() <= tol("cpp", dt) * np.abs(want).max(), kernel
    # Laplace here is Euclidean (scikit-learn's laplacian_kernel is L1): Matern nu = 1/2.
    from sklearn.gaussian_process.kernels import Matern

    for nu in (0.5, 1.5, 2.5):
        ref = Matern(length_scale=1 / 0.7, nu=nu)(a, b)
        got = ops.gram(x1, x2, "matern", [nu, 0.7]).numpy()
        np.testing.assert_allclose(got, ref, rtol=tol("cpp", F64, "sklearn"), atol=tol("cpp", F64))


# The full opcheck (with its slow AOT-dispatch test) for one kernel per code path; the cheap
# checks for every kernel.
FULL_OPCHECK = {"rbf-0.3", "arccos-1", "ntk-1-0-1"}
CHEAP = ("test_schema", "test_autograd_registration", "test_faketensor")


@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_opcheck(kernel, params, request):
    x1 = randn(9, 4, seed=8).requires_grad_()
    x2 = randn(11, 4, seed=9).requires_grad_()
    utils = None if request.node.callspec.id in FULL_OPCHECK else CHEAP
    for offset in (None, 0):
        kw = {} if utils is None else {"test_utils": utils}
        torch.library.opcheck(G.default, (x1, x2, kernel, params, offset), **kw)


@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_gradcheck(kernel, params):
    x1 = randn(6, 3, seed=10).requires_grad_()
    x2 = randn(5, 3, seed=11).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: G(a, b, kernel, params, None), (x1, x2))
    # Self-pairs (row block of x2 at offset 1) are constant k(0): zero gradient there.
    y = randn(4, 3, seed=12).requires_grad_()
    y12 = y[1:3].detach().clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: G(a, b, kernel, params, 1), (y12, y))


def test_laplace_gradient_is_finite_at_coincident_points():
    # sqrt'(0) is infinite; the documented subgradient at zero distance is 0.
    x = randn(5, 3, seed=13)
    x2 = torch.cat([x[:2], randn(3, 3, seed=14)]).requires_grad_()
    for kernel, params in (("laplace", [1.0]), ("matern", [0.5, 1.0])):
        x1 = x.clone().requires_grad_()
        G(x1, x2, kernel, params, None).sum().backward()
        assert torch.isfinite(x1.grad).all() and torch.isfinite(x2.grad).all()


@only("cuda")
def test_cuda_autograd_and_opcheck():
    x1 = randn(6, 3, seed=50).cuda().requires_grad_(True)
    x2 = randn(5, 3, seed=51).cuda().requires_grad_(True)
    for kernel, params in (("rbf", [0.3]), ("arccos", [1.0]), ("ntk", [1.0, 0.0, 0.0])):
        torch.autograd.gradcheck(lambda a, b, k=kernel, p=params: G(a, b, k, p, None), (x1, x2))
    torch.library.opcheck(G.default, (x1.detach(), x2.detach(), "matern", [1.5, 0.4], None))


# The analytic ReLU kernels in C++: every MLP depth 1..4 and the 3resnet, both trainable sets.
RELU_CASES = (
    [("nngp", [0.0, float(depth)]) for depth in (1, 2, 3, 4)]
    + [("nngp", [1.0, 0.0])]
    + [("ntk", [0.0, float(depth), float(t)]) for depth in (1, 2, 3, 4) for t in (0, 1)]
    + [("ntk", [1.0, 0.0, float(t)]) for t in (0, 1)]
)


@only("cpp")
@pytest.mark.parametrize("kernel,params", RELU_CASES, ids=[fmt(case) for case in RELU_CASES])
def test_cpp_relu_kernels_match_reference_on_many_tiles(kernel, params):
    # 600 x 1100: several 128 x 512 tiles both ways; a zero row (cosine 0 with everything) and
    # the self-pairs of a self-Gram (cosine exactly 1) in every diagonal tile.
    x1, x2 = randn(600, 9, seed=16), randn(1100, 9, seed=17)
    x1[5] = 0.0
    for dtype in (F64, F32):
        a = x1.to(dtype)
        for b in (x2.to(dtype), a):
            ref = ops.gram_reference(a.double(), b.double(), kernel, params)
            assert rel_err(G(a, b, kernel, params, None), ref) < tol("cpp", dtype)


@only("cpp")
@pytest.mark.parametrize("kernel,params", [("nngp", [0.0, 1.0]), ("ntk", [0.0, 1.0, 0.0])])
def test_cpp_relu_kernels_over_every_angle(kernel, params):
    # Unit vectors at angles 0..pi from e1 (cosines over all of [-1, 1], both ends included):
    # the vectorised arc cosine of the C++ epilogue against torch.arccos in the reference.
    t = torch.linspace(0.0, torch.pi, 4001, dtype=F64)
    x1 = torch.stack([torch.cos(t), torch.sin(t)], dim=1)
    x2 = torch.tensor([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]], dtype=F64)
    ref = ops.gram_reference(x1, x2, kernel, params)
    assert rel_err(G(x1, x2, kernel, params, None), ref) < tol("cpp", F64)


# -- float32 far from the origin: the translation-invariant kernels are evaluated shifted ------

# 1 x 1, odd sizes, and several tiles (C++: 6 x 2 of 128 x 512).
FAR = {"reference cpp cuda": [(1, 1), (37, 53), (700, 600)], "triton": [(1, 1), (37, 53)]}


@over("gram", "kernel,params,n,m", crossed(STATIONARY, FAR))
@pytest.mark.parametrize("shift", [100.0, 1000.0])
def test_float32_far_from_origin(impl, kernel, params, n, m, shift):
    # Without the shift, float32 RBF entries were off by 0.016 (shift 100) and 0.8 (shift 1000).
    a, b = far_points(n, 5, shift, seed=30), far_points(m, 5, shift, seed=31)
    for x1, x2 in ((a, b), (a, a)):
        got = impl(x1, x2, kernel, params)
        ref = ops.gram_reference(x1.double(), x2.double(), kernel, params)
        assert got.dtype == F32 and (got.double() - ref).abs().max() < impl.tol(F32, "abs")
    assert torch.equal(got.diagonal(), torch.ones(n))


@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
def test_gradcheck_far_from_origin(kernel, params):
    x1 = (randn(6, 3, seed=32) + 1000.0).requires_grad_()
    x2 = (randn(5, 3, seed=33) + 1000.0).requires_grad_()
    assert torch.autograd.gradcheck(lambda a, b: G(a, b, kernel, params, None), (x1, x2))
    assert torch.autograd.gradcheck(lambda a: G(a, a, kernel, params, None), (x2,))


@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
def test_float32_gradient_far_from_origin(kernel, params):
    # The backward shifts too: sum_j gd_ij (x1_i - x2_j) would cancel on the raw points.
    a, b = far_points(37, 5, 1000.0, seed=34), far_points(53, 5, 1000.0, seed=35)
    w = randn(37, 53, seed=36)
    assert_float32_gradients_match_float64(
        lambda x1, x2: (G(x1, x2, kernel, params, None) * w.to(x1.dtype)).sum(), a, b
    )


# -- near-duplicates across the two inputs: Laplace d^2 from differences ------------------------


@over("gram", "kernel,params,shift,noise,n,m,r0,r1", crossed(NEAR, NEAR_SIZES))
def test_float32_duplicated_points_across_inputs(impl, kernel, params, shift, noise, n, m, r0, r1):
    # Before the recomputation, Laplace entries of copies were off by up to 1.7e-4.
    a, b = duplicated_points(n, m, shift, noise, seed=80)
    bound = impl.tol(F32, "abs")
    ref = ops.gram_reference(a.double(), b.double(), kernel, params)
    assert (impl(a, b, kernel, params).double() - ref).abs().max() < bound
    # Copies within one tensor, at different rows, are not self-pairs either; a row block of it
    # (diag_offset) keeps its self-pairs exact.
    x = torch.cat([a[:200], b])
    ref = ops.gram_reference(x.double(), x.double(), kernel, params)
    full = impl(x, x, kernel, params)
    assert (full.double() - ref).abs().max() < bound
    assert torch.equal(full.diagonal(), torch.ones(len(x)))
    block = impl(x[r0:r1], x, kernel, params, r0)
    assert (block.double() - ref[r0:r1]).abs().max() < bound
    assert torch.equal(block[:, r0:r1].diagonal(), torch.ones(r1 - r0))


@over("gram", "", {ALL: [()]})
def test_laplace_of_duplicated_points_reproduction(impl):
    # The defect as reported: 50 identical points in both inputs, at different positions.
    x = (randn(300, 5, seed=81) * 0.1 + 1000).float()
    a, b = x[:100], x[50:]
    want = Laplace(1.0)(a.double(), b.double())
    assert (impl(a, b, "laplace", [1.0]).double() - want).abs().max() < impl.tol(F32, "abs")


@over("gram", "n,m", {"reference cpp": [(300, 250)], "triton": [(40, 35)]})
def test_float64_laplace_of_duplicated_points(impl, n, m):
    a, b = duplicated_points(n, m, 1000.0, 0.0, seed=82, dtype=F64)
    a = a + 1e-9 * randn(n, 5, seed=86)  # near-duplicates at 2e-9
    want = torch.exp(-torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist"))
    assert (impl(a, b, "laplace", [1.0]) - want).abs().max() < impl.tol(F64, "abs")


# -- bad input --------------------------------------------------------------------------------

X = randn(4, 3)
HUGE = torch.full((3, 4), 1e19)  # finite in float32, but its squared norms overflow
SMALL = randn(2, 4, seed=37).float()
BAD = [
    ((X[0], X, "rbf", [1.0]), ValueError, r"fastkernels::gram: x1 must be 2-dimensional"),
    ((X, randn(2, 5), "rbf", [1.0]), ValueError, "same number of columns D"),
    ((X, X.float(), "rbf", [1.0]), TypeError, "fastkernels::gram: x1 and x2 must have the same dt"),
    ((X.int(), X.int(), "rbf", [1.0]), TypeError, "x1 must be float32 or float"),
    ((X, X.to("meta"), "rbf", [1.0]), (ValueError, RuntimeError), "device"),
    ((X.clone().fill_(float("inf")), X, "rbf", [1.0]), ValueError, "gram: x1 must be finite"),
    ((X, X * float("nan"), "rbf", [1.0]), ValueError, "gram: x2 must be finite"),
    ((X, X, "rbf", [0.0]), ValueError, r"gram: params .*gamma .*must be a finite number > 0"),
    ((X, X, "rbf", [-1.0]), ValueError, "gamma"),
    ((X, X, "rbf", []), ValueError, r"must be \[gamma\] \(1 values\)"),
    ((X, X, "matern", [1.0, 1.0]), ValueError, "nu must be one of"),
    ((X, X, "polynomial", [2.5, 1.0, 0.0]), ValueError, "degree must be a po"),
    ((X, X, "arccos", [2.0]), ValueError, "order must be 0 or 1"),
    ((X, X, "ntk", [0.0, 0.0, 0.0]), ValueError, "depth .* positive integer"),
    ((X, X, "nngp", [0.0, -2.0]), ValueError, "depth"),
    ((X, X, "cosine", []), ValueError, "gram: kernel must be one of"),
    ((torch.empty(0, 3).double(), X, "rbf", [1.0]), ValueError, "non-empty"),
    *[
        ((x1, x2, kernel, params), ValueError, f"gram: {name} .*rescale the inputs or use float64")
        for x1, x2, name in ((HUGE, HUGE, "x1"), (HUGE, SMALL, "x1"), (SMALL, HUGE, "x2"))
        for kernel, params in (("rbf", [1.0]), ("linear", []))
    ],
]
# The public op's schema refuses a float offset before any kernel runs (a RuntimeError).
BAD_OFFSET = ((X, X, "rbf", [1.0], 1.5), TypeError, "gram: diag_offset must be an int or None")


@over("gram", "args,exc,match", {ALL: BAD, "reference triton": [BAD_OFFSET]})
def test_bad_input_names_op_argument_and_expectation(impl, args, exc, match):
    assert_rejected(impl, args, exc, match)


@over("gram", "", {ALL: [()]})
def test_float64_takes_what_overflows_in_float32(impl):
    big = HUGE.double()
    assert torch.equal(impl(big, big, "rbf", [1.0]), torch.ones(3, 3).double())


# -- Triton-specific --------------------------------------------------------------------------


@on_interpreter
def test_triton_default_tiles_run():
    # The launcher's default (GPU) tile sizes, on one small case.
    from fastkernels.ops._triton import gram_triton

    x1, x2 = randn(70, 9, seed=13), randn(65, 9, seed=14)
    ref = ops.gram_reference(x1, x2, "polynomial", [2.0, 0.5, 1.0])
    assert rel_err(gram_triton(x1, x2, "polynomial", [2.0, 0.5, 1.0]), ref) < tol("triton", F64)


@on_interpreter
def test_triton_tf32_is_opt_in_and_float32_only(monkeypatch):
    from fastkernels.ops._triton._common import input_precision

    monkeypatch.delenv("FASTKERNELS_TRITON_TF32", raising=False)
    assert input_precision(F32, None) == "ieee"
    assert input_precision(F32, True) == "tf32"
    assert input_precision(F64, True) == "ieee"
    monkeypatch.setenv("FASTKERNELS_TRITON_TF32", "1")
    assert input_precision(F32, None) == "tf32"
    assert input_precision(F32, False) == "ieee"


@on_interpreter
def test_triton_acos_matches_numpy_on_the_whole_interval():
    # Module globals: the interpreter resolves a kernel's names there (triton is imported only
    # in interpreter runs).
    global _acos, tl
    import triton
    import triton.language as tl

    from fastkernels.ops._triton._common import _acos

    @triton.jit
    def acos_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
        offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
        mask = offs < n
        tl.store(out_ptr + offs, _acos(tl.load(x_ptr + offs, mask=mask, other=0.0)), mask=mask)

    tiny = torch.logspace(-16, 0, 200, dtype=F64)
    c64 = torch.cat([torch.linspace(-1, 1, 4001, dtype=F64), 1 - tiny, tiny - 1])
    for dtype in (F64, F32):
        c, bound = c64.to(dtype), tol("triton", dtype, "acos")
        out = torch.empty_like(c)
        acos_kernel[(triton.cdiv(c.numel(), 1024),)](c, out, c.numel(), BLOCK=1024)
        ref = torch.from_numpy(np.arccos(c.double().numpy()))
        assert ((out.double() - ref).abs() / ref.clamp_min(1e-300)).max().item() < bound
        assert out[c == 1].eq(0).all()
        assert out[c == -1].double().sub(torch.pi).abs().max() < bound * 4


@on_interpreter
def test_triton_is_registered_for_cuda_tensors():
    assert ops.HAS_TRITON
    for op in ("gram", "kernel_mv", "kernel_normal_mv", "ntk_gram", "ntk_mv"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastkernels::{op}", "CUDA")


@on_interpreter
def test_info_reports_the_cuda_implementation(capsys):
    from fastkernels.cli import main

    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "CUDA tensors" in x)
    assert "Triton" in line


@on_interpreter
def test_triton_formulas_cover_every_kernel():
    # The Triton epilogue implements every kernel of the reference registry.
    from fastkernels.kernels import formulas as F
    from fastkernels.ops._triton._common import KERNEL_CODES

    assert set(KERNEL_CODES) == set(F.FORMULAS) == set(ops.KERNEL_NAMES)
