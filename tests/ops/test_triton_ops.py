"""Triton kernels of gram / kernel_mv / ntk_gram / ntk_mv against the float64 reference.

Two groups:

- ``interpreter``: the launchers on CPU tensors under ``TRITON_INTERPRET=1`` (a separate run,
  ``TRITON_INTERPRET=1 python -m pytest -q -m interpreter``; the variable must be set before
  the kernels are defined, i.e. at process start). Tiles of 32 x 32 x 16 (T tiles of 16) so
  that the small sizes below still span several tiles in every dimension.
- ``cuda``: the ops registered for CUDA tensors (compiled Triton), skipped without a GPU.

Tolerances (max abs error relative to the largest reference entry): float64 1e-12; float32
1e-5 against the float64 kernel of the same float32-rounded points (IEEE float32 ``tl.dot``);
TF32 (opt-in, CUDA only: the interpreter does not emulate TF32 rounding) 1e-2 on unit-variance
inputs with gamma = 1/D.
"""

from __future__ import annotations

import pytest
import torch

triton = pytest.importorskip("triton")

import numpy as np  # noqa: E402
import triton.language as tl  # noqa: E402
from helpers import far_points, randn, rel_err  # noqa: E402

from fastkernels import ops  # noqa: E402
from fastkernels.kernels import formulas as F  # noqa: E402
from fastkernels.ops import _ntk_common  # noqa: E402
from fastkernels.ops._triton import (  # noqa: E402
    gram_triton,
    kernel_mv_triton,
    ntk_gram_triton,
    ntk_mv_triton,
)
from fastkernels.ops._triton._common import KERNEL_CODES, _acos, input_precision  # noqa: E402

from .conftest import (  # noqa: E402
    CASE_IDS,
    CASES,
    NEAR,
    NEAR_IDS,
    STATIONARY,
    STATIONARY_IDS,
    duplicated_points,
    ntk_reference,
    on_interpreter,
)

_NO_GPU = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def on_cuda(fn):
    """Mark a test ``cuda`` and skip it without a CUDA device."""
    return pytest.mark.cuda(_NO_GPU(fn))


# Small tiles: several tiles (and several D slices / T slices) at interpreter-friendly sizes.
TILES = dict(block_m=32, block_n=32, block_k=16)
TILES_T = dict(TILES, block_t=16)
# (N, M, D): 1 x 1; odd sizes over 2 x 2 tiles; 3 x 2 tiles with 3 D slices.
SHAPES = [(1, 1, 1), (37, 53, 7), (70, 45, 37)]
DISTANCE = ("rbf", "laplace", "matern")


def factors(n, widths, dtype=torch.float64, seed=0):
    a = [randn(n, p, seed=seed + i, dtype=dtype) for i, (p, _) in enumerate(widths)]
    b = [randn(n, q, seed=seed + 50 + i, dtype=dtype) for i, (_, q) in enumerate(widths)]
    return a, b


# ---------------------------------------------------------------------------------------------
# Interpreter: the launchers on CPU tensors
# ---------------------------------------------------------------------------------------------


@on_interpreter
@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("n,m,d", SHAPES)
def test_gram_matches_float64_reference(kernel, params, n, m, d):
    x1, x2 = randn(n, d, seed=1), randn(m, d, seed=2)
    ref = ops.gram_reference(x1, x2, kernel, params)
    got = gram_triton(x1, x2, kernel, params, **TILES)
    assert got.dtype == torch.float64 and got.shape == (n, m)
    assert rel_err(got, ref) < 1e-12
    a, b = x1.float(), x2.float()
    got32 = gram_triton(a, b, kernel, params, **TILES)
    assert got32.dtype == torch.float32
    assert rel_err(got32, ops.gram_reference(a.double(), b.double(), kernel, params)) < 1e-5


@on_interpreter
@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
@pytest.mark.parametrize("n,m,d", SHAPES)
def test_kernel_mv_matches_float64_reference(kernel, params, n, m, d):
    t = 1 if n == 1 else 3 + d // 2  # 1, 6 and 21 right-hand sides (2 T tiles of 16)
    x1, x2, v = randn(n, d, seed=3), randn(m, d, seed=4), randn(m, t, seed=5)
    ref = ops.kernel_mv_reference(x1, x2, v, kernel, params)
    got = kernel_mv_triton(x1, x2, v, kernel, params, **TILES_T)
    assert got.dtype == torch.float64 and got.shape == (n, t)
    assert rel_err(got, ref) < 1e-12
    a, b, w = x1.float(), x2.float(), v.float()
    got32 = kernel_mv_triton(a, b, w, kernel, params, **TILES_T)
    ref32 = ops.kernel_mv_reference(a.double(), b.double(), w.double(), kernel, params)
    assert got32.dtype == torch.float32 and rel_err(got32, ref32) < 1e-5


@on_interpreter
@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_self_pairs_of_a_self_gram_and_of_row_blocks(kernel, params):
    x = randn(70, 4, seed=6)
    full = gram_triton(x, x, kernel, params, **TILES)  # the same tensor: diagonal self-pairs
    assert rel_err(full, ops.gram_reference(x, x, kernel, params)) < 1e-12
    # Rows 50..69 of x against x: self-pairs on the diagonal shifted by 50, across tiles.
    block = gram_triton(x[50:70], x, kernel, params, 50, **TILES)
    torch.testing.assert_close(block, full[50:70], rtol=1e-12, atol=1e-12)
    # The transposed block (what kernel_mv's backward asks for): a negative offset.
    back = gram_triton(x, x[50:70], kernel, params, -50, **TILES)
    torch.testing.assert_close(back, full[:, 50:70], rtol=1e-12, atol=1e-12)
    v = randn(70, 2, seed=7)
    mv = kernel_mv_triton(x[50:70], x, v, kernel, params, 50, **TILES_T)
    ref = ops.kernel_mv_reference(x[50:70], x, v, kernel, params, 50)
    assert rel_err(mv, ref) < 1e-12
    if kernel in DISTANCE:
        ones = torch.ones(70, dtype=torch.float64)
        assert torch.equal(full.diagonal(), ones)
        assert torch.equal(block[:, 50:70].diagonal(), ones[:20])
        x32 = x.float()
        assert torch.equal(gram_triton(x32, x32, kernel, params, **TILES).diagonal(), ones.float())


@on_interpreter
@pytest.mark.parametrize(
    "kernel,params",
    [(k, p) for k, p in CASES if k in ("arccos", "nngp", "ntk")],
    ids=[i for (k, _), i in zip(CASES, CASE_IDS) if k in ("arccos", "nngp", "ntk")],
)
def test_zero_norm_rows_follow_the_reference(kernel, params):
    # The cosine of a zero-norm row is defined as 0 (over the self-pair rule): finite values.
    x1, x2 = randn(9, 5, seed=8), randn(11, 5, seed=9)
    x1[3] = 0.0
    x2[4] = 0.0
    got = gram_triton(x1, x2, kernel, params, **TILES)
    assert torch.isfinite(got).all()
    assert rel_err(got, ops.gram_reference(x1, x2, kernel, params)) < 1e-12
    self_got = gram_triton(x1, x1, kernel, params, **TILES)
    assert rel_err(self_got, ops.gram_reference(x1, x1, kernel, params)) < 1e-12


@on_interpreter
def test_strided_inputs():
    x1 = randn(5, 40, seed=10).T  # (40, 5), column-major
    x2 = randn(33, 10, seed=11)[:, ::2]  # (33, 5), column stride 2
    v = randn(2, 33, seed=12).T
    torch.testing.assert_close(
        gram_triton(x1, x2, "rbf", [0.2], **TILES),
        ops.gram_reference(x1, x2, "rbf", [0.2]),
        rtol=1e-12,
        atol=1e-12,
    )
    torch.testing.assert_close(
        kernel_mv_triton(x1, x2, v, "matern", [2.5, 0.3], **TILES_T),
        ops.kernel_mv_reference(x1, x2, v, "matern", [2.5, 0.3]),
        rtol=1e-12,
        atol=1e-12,
    )


@on_interpreter
def test_default_tiles_run():
    # The launchers' default (GPU) tile sizes, on one small case each.
    x1, x2, v = randn(70, 9, seed=13), randn(65, 9, seed=14), randn(65, 2, seed=15)
    ref = ops.gram_reference(x1, x2, "polynomial", [2.0, 0.5, 1.0])
    assert rel_err(gram_triton(x1, x2, "polynomial", [2.0, 0.5, 1.0]), ref) < 1e-12
    ref = ops.kernel_mv_reference(x1, x2, v, "ntk", [0.0, 3.0, 1.0])
    assert rel_err(kernel_mv_triton(x1, x2, v, "ntk", [0.0, 3.0, 1.0]), ref) < 1e-12


# Per-layer (p_l, q_l): one layer of width 1; three layers of mixed widths (some over 16).
NTK_WIDTHS = [[(1, 1)], [(5, 40), (17, 3), (33, 2)]]


@on_interpreter
@pytest.mark.parametrize("widths", NTK_WIDTHS, ids=["1-layer", "3-layers"])
@pytest.mark.parametrize("n,m", [(1, 1), (37, 53), (70, 45)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_ntk_ops_match_float64_reference(widths, n, m, dtype):
    a1, b1 = factors(n, widths, dtype, seed=20)
    a2, b2 = factors(m, widths, dtype, seed=30)
    v = randn(m, 3, seed=40, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    want = ntk_reference(a1, b1, a2, b2)
    got = ntk_gram_triton(a1, b1, a2, b2, **TILES)
    assert got.dtype == dtype and got.shape == (n, m)
    assert rel_err(got, want) < tol
    got_mv = ntk_mv_triton(a1, b1, a2, b2, v, **TILES_T)
    assert got_mv.dtype == dtype and got_mv.shape == (n, 3)
    assert rel_err(got_mv, want @ v.double()) < tol


# float32 points of spread 0.1 around 100 and 1000: the launchers shift the distance kernels'
# inputs (unshifted, RBF entries were off by up to 0.8 at 1000).


@on_interpreter
@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
@pytest.mark.parametrize("shift", [100.0, 1000.0])
@pytest.mark.parametrize("n,m", [(1, 1), (37, 53)])
def test_float32_far_from_origin(kernel, params, shift, n, m):
    a, b = far_points(n, 5, shift, seed=60), far_points(m, 5, shift, seed=61)
    for x1, x2 in ((a, b), (a, a)):
        ref = ops.gram_reference(x1.double(), x2.double(), kernel, params)
        got = gram_triton(x1, x2, kernel, params, **TILES)
        assert got.dtype == torch.float32 and (got.double() - ref).abs().max() < 1e-5
        v = randn(x2.shape[0], 3, seed=62)
        got_mv = kernel_mv_triton(x1, x2, v.float(), kernel, params, **TILES_T)
        # Relative to the scale of the row sums |K| |v|.
        scale = (ref.abs() @ v.abs()).max()
        assert (got_mv.double() - ref @ v).abs().max() < 1e-5 * scale


@on_interpreter
@pytest.mark.parametrize("kernel,params,shift,noise", NEAR, ids=NEAR_IDS)
def test_float32_duplicated_points_across_inputs(kernel, params, shift, noise):
    a, b = duplicated_points(70, 45, shift, noise, seed=66)  # 3 x 2 tiles
    ref = ops.gram_reference(a.double(), b.double(), kernel, params)
    got = gram_triton(a, b, kernel, params, **TILES)
    assert (got.double() - ref).abs().max() < 1e-5
    # K v with v picking columns of duplicated points: K v is those columns of K.
    v = torch.eye(45, dtype=torch.float64)[:, [0, 20, 44]]
    got_mv = kernel_mv_triton(a, b, v.float(), kernel, params, **TILES_T)
    assert (got_mv.double() - ref @ v).abs().max() < 1e-5
    # Copies within one tensor, at different rows, are not self-pairs either.
    x = torch.cat([a, b])
    ref = ops.gram_reference(x.double(), x.double(), kernel, params)
    got = gram_triton(x, x, kernel, params, **TILES)
    assert (got.double() - ref).abs().max() < 1e-5
    assert torch.equal(got.diagonal(), torch.ones(len(x)))


@on_interpreter
def test_laplace_of_duplicated_points_reproduction():
    x = (randn(300, 5, seed=70) * 0.1 + 1000).float()
    a, b = x[:100], x[50:]  # 50 identical points in both inputs, at different positions
    ref = ops.gram_reference(a.double(), b.double(), "laplace", [1.0])
    assert (gram_triton(a, b, "laplace", [1.0], **TILES).double() - ref).abs().max() < 1e-5
    v = torch.eye(250, dtype=torch.float64)[:, :50]  # the duplicated columns
    got = kernel_mv_triton(a, b, v.float(), "laplace", [1.0], **TILES_T)
    assert (got.double() - ref @ v).abs().max() < 1e-5


@on_interpreter
def test_float64_laplace_of_duplicated_points():
    a, b = duplicated_points(40, 35, 1000.0, 0.0, seed=72, dtype=torch.float64)
    a = a + 1e-9 * randn(40, 5, seed=71)  # near-duplicates at 2e-9
    want = torch.exp(-torch.cdist(a, b, compute_mode="donot_use_mm_for_euclid_dist"))
    assert (gram_triton(a, b, "laplace", [1.0], **TILES) - want).abs().max() < 1e-12
    v = torch.eye(35, dtype=torch.float64)[:, ::2]
    got = kernel_mv_triton(a, b, v, "laplace", [1.0], **TILES_T)
    assert (got - want @ v).abs().max() < 1e-12


@on_interpreter
def test_overflowing_inputs_are_rejected():
    huge = torch.full((3, 4), 1e19)  # finite in float32, but its squared norms overflow
    small = randn(2, 4, seed=63).float()
    for x1, x2, name in ((huge, huge, "x1"), (small, huge, "x2")):
        v = torch.ones(x2.shape[0], 1)
        with pytest.raises(ValueError, match=f"gram: {name} .*rescale the inputs or use float64"):
            gram_triton(x1, x2, "rbf", [1.0], **TILES)
        with pytest.raises(ValueError, match=f"kernel_mv: {name} .*rescale the inputs"):
            kernel_mv_triton(x1, x2, v, "linear", [], **TILES_T)


BAD_GRAM = [
    (lambda f: f(randn(3, 2), randn(4, 3), "rbf", [1.0]), ValueError),
    (lambda f: f(randn(3, 2), randn(4, 2), "rbf", [0.0]), ValueError),
    (lambda f: f(randn(3, 2), randn(4, 2), "matern", [1.0, 1.0]), ValueError),
    (lambda f: f(randn(3, 2), randn(4, 2), "cosine", []), ValueError),
    (lambda f: f(randn(3, 2), randn(4, 2).float(), "rbf", [1.0]), TypeError),
    (lambda f: f(randn(3, 2).long(), randn(4, 2).long(), "rbf", [1.0]), TypeError),
    (lambda f: f(randn(3, 2), randn(4, 2) * float("nan"), "rbf", [1.0]), ValueError),
    (lambda f: f(randn(3, 2), randn(4, 2), "rbf", [1.0], 1.5), TypeError),
]


@on_interpreter
@pytest.mark.parametrize("call,exc", BAD_GRAM)
def test_bad_input_is_rejected_like_the_reference(call, exc):
    v = randn(4, 1)
    pairs = [
        (ops.gram_reference, gram_triton),
        (
            lambda x1, x2, *a: ops.kernel_mv_reference(x1, x2, v, *a),
            lambda x1, x2, *a: kernel_mv_triton(x1, x2, v, *a),
        ),
    ]
    for reference, launcher in pairs:
        with pytest.raises(exc) as want:
            call(reference)
        with pytest.raises(exc) as got:
            call(launcher)
        assert str(got.value) == str(want.value)


@on_interpreter
def test_bad_factors_are_rejected_like_the_reference():
    # The launchers run the reference's checks (_ntk_common) under the op's name.
    a, b = factors(4, [(2, 3)])
    a2, b2 = factors(5, [(2, 4)])
    nan = [b[0] * float("nan")]
    cases = [
        ("ntk_gram", ntk_gram_triton, (a, b, a2, b2)),  # q_0 differs between the sides
        ("ntk_gram", ntk_gram_triton, (a, nan, a, b)),
        ("ntk_mv", ntk_mv_triton, (a, b, a, b, randn(3, 1))),  # v has 3 rows, not 4
        ("ntk_mv", ntk_mv_triton, (a, nan, a, b, randn(4, 1))),
    ]
    for op, launcher, args in cases:
        name = f"fastkernels::{op}"
        with pytest.raises(ValueError) as want:
            _ntk_common.check_factors(name, *args)
            _ntk_common.check_finite(name, a1=args[0], b1=args[1], a2=args[2], b2=args[3])
        with pytest.raises(ValueError) as got:
            launcher(*args)
        assert str(got.value) == str(want.value)


@on_interpreter
def test_tf32_is_opt_in_and_float32_only(monkeypatch):
    monkeypatch.delenv("FASTKERNELS_TRITON_TF32", raising=False)
    assert input_precision(torch.float32, None) == "ieee"
    assert input_precision(torch.float32, True) == "tf32"
    assert input_precision(torch.float64, True) == "ieee"
    monkeypatch.setenv("FASTKERNELS_TRITON_TF32", "1")
    assert input_precision(torch.float32, None) == "tf32"
    assert input_precision(torch.float32, False) == "ieee"


@triton.jit
def _acos_kernel(x_ptr, out_ptr, n, BLOCK: tl.constexpr):
    offs = tl.program_id(0) * BLOCK + tl.arange(0, BLOCK)
    mask = offs < n
    tl.store(out_ptr + offs, _acos(tl.load(x_ptr + offs, mask=mask, other=0.0)), mask=mask)


@on_interpreter
def test_acos_matches_numpy_on_the_whole_interval():
    tiny = torch.logspace(-16, 0, 200, dtype=torch.float64)
    c64 = torch.cat([torch.linspace(-1, 1, 4001, dtype=torch.float64), 1 - tiny, tiny - 1])
    for dtype, tol in ((torch.float64, 5e-16), (torch.float32, 2e-7)):
        c = c64.to(dtype)
        out = torch.empty_like(c)
        _acos_kernel[(triton.cdiv(c.numel(), 1024),)](c, out, c.numel(), BLOCK=1024)
        ref = torch.from_numpy(np.arccos(c.double().numpy()))
        assert ((out.double() - ref).abs() / ref.clamp_min(1e-300)).max().item() < tol
        assert out[c == 1].eq(0).all() and out[c == -1].double().sub(torch.pi).abs().max() < tol * 4


@on_interpreter
def test_registered_for_cuda_tensors():
    assert ops.HAS_TRITON
    for op in ("gram", "kernel_mv", "ntk_gram", "ntk_mv"):
        assert torch._C._dispatch_has_kernel_for_dispatch_key(f"fastkernels::{op}", "CUDA")


@on_interpreter
def test_info_reports_the_cuda_implementation(capsys):
    from fastkernels.cli import main

    assert main(["info"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if "CUDA tensors" in x)
    assert "Triton" in line


@on_interpreter
def test_formulas_cover_every_kernel():
    # The Triton epilogue implements every kernel of the reference registry.
    assert set(KERNEL_CODES) == set(F.FORMULAS) == set(ops.KERNEL_NAMES)


# ---------------------------------------------------------------------------------------------
# CUDA: the registered ops (compiled Triton) against the float64 reference on the CPU
# ---------------------------------------------------------------------------------------------

# Every kernel in float32; one case per kernel family in float64 (each (kernel, dtype) is a
# separate Triton compile, which dominates the run time on a fresh machine). Sizes: odd, several
# 64 x 64 tiles, and D = 100 (several D slices); sizes and D share one compile.
CUDA_SHAPES = [(37, 53, 7), (300, 1100, 5), (513, 257, 100)]
FP64_KERNELS = [
    "rbf-0.3",
    "matern-2.5-0.5",
    "polynomial-3-0.2-1",
    "arccos-1",
    "nngp-1-0",
    "ntk-0-2-0",
]
CUDA_CASES, CUDA_IDS = [], []
for _dtype in (torch.float32, torch.float64):
    for (_k, _p), _id in zip(CASES, CASE_IDS):
        if _dtype == torch.float32 or _id in FP64_KERNELS:
            CUDA_CASES.append((_k, _p, _dtype))
            CUDA_IDS.append(f"{_id}-{str(_dtype)[6:]}")


def _cuda_check(kernel, params, n, m, d, dtype, tol):
    x1, x2 = randn(n, d, seed=1), randn(m, d, seed=2)
    a, b = x1.to(dtype), x2.to(dtype)
    ref = ops.gram_reference(a.double(), b.double(), kernel, params)
    got = torch.ops.fastkernels.gram(a.cuda(), b.cuda(), kernel, params, None)
    assert got.is_cuda and got.dtype == dtype and got.shape == (n, m)
    assert rel_err(got.cpu(), ref) < tol
    t = 1 if n == 1 else 5
    v = randn(m, t, seed=3).to(dtype)
    ref_mv = ops.kernel_mv_reference(a.double(), b.double(), v.double(), kernel, params)
    got_mv = torch.ops.fastkernels.kernel_mv(a.cuda(), b.cuda(), v.cuda(), kernel, params, None)
    assert got_mv.is_cuda and rel_err(got_mv.cpu(), ref_mv) < tol


@on_cuda
@pytest.mark.parametrize("kernel,params,dtype", CUDA_CASES, ids=CUDA_IDS)
def test_cuda_ops_match_float64_reference(kernel, params, dtype):
    for n, m, d in CUDA_SHAPES:
        _cuda_check(kernel, params, n, m, d, dtype, 1e-12 if dtype == torch.float64 else 1e-5)


@on_cuda
@pytest.mark.parametrize("kernel,params", [("rbf", [0.3]), ("ntk", [1.0, 0.0, 1.0])])
def test_cuda_one_by_one(kernel, params):
    _cuda_check(kernel, params, 1, 1, 1, torch.float32, 1e-5)


@on_cuda
@pytest.mark.parametrize("kernel,params", CASES, ids=CASE_IDS)
def test_cuda_self_pairs(kernel, params):
    x = randn(300, 6, seed=6)
    for dtype, tol in ((torch.float32, 1e-5), (torch.float64, 1e-12)):
        if dtype == torch.float64 and kernel not in ("rbf", "arccos"):
            continue
        xd = x.to(dtype).cuda()
        full = ops.gram(xd, kernel=kernel, params=params)
        ref = ops.gram_reference(x.to(dtype).double(), x.to(dtype).double(), kernel, params)
        assert rel_err(full.cpu(), ref) < tol
        block = torch.ops.fastkernels.gram(xd[200:300], xd, kernel, params, 200)
        torch.testing.assert_close(block, full[200:300], rtol=tol, atol=tol)
        if kernel in DISTANCE:
            assert torch.equal(full.diagonal().cpu(), torch.ones(300, dtype=dtype))
            assert torch.equal(block[:, 200:].diagonal().cpu(), torch.ones(100, dtype=dtype))


@on_cuda
@pytest.mark.parametrize("kernel,params", STATIONARY, ids=STATIONARY_IDS)
def test_cuda_float32_far_from_origin(kernel, params):
    # Several 64 x 64 tiles; the registered ops shift as the interpreter test checks.
    for shift in (100.0, 1000.0):
        a = (0.1 * randn(700, 5, seed=64) + shift).float()
        b = (0.1 * randn(600, 5, seed=65) + shift).float()
        v = randn(600, 3, seed=66)
        ref = ops.gram_reference(a.double(), b.double(), kernel, params)
        got = torch.ops.fastkernels.gram(a.cuda(), b.cuda(), kernel, params, None)
        assert (got.cpu().double() - ref).abs().max() < 1e-5
        got_mv = torch.ops.fastkernels.kernel_mv(
            a.cuda(), b.cuda(), v.float().cuda(), kernel, params, None
        )
        scale = (ref.abs() @ v.abs()).max()
        assert (got_mv.cpu().double() - ref @ v).abs().max() < 1e-5 * scale
    huge = torch.full((3, 4), 1e19, device="cuda")
    with pytest.raises(ValueError, match="gram: x1 .*rescale the inputs or use float64"):
        torch.ops.fastkernels.gram(huge, huge, kernel, params, None)


@on_cuda
@pytest.mark.parametrize("kernel,params", [("rbf", [1 / 16]), ("linear", []), ("ntk", [0, 2, 0])])
def test_cuda_tf32_tolerance(kernel, params, monkeypatch):
    monkeypatch.setenv("FASTKERNELS_TRITON_TF32", "1")
    _cuda_check(kernel, params, 300, 1100, 16, torch.float32, 1e-2)


@on_cuda
@pytest.mark.parametrize("n,m", [(1, 1), (300, 1100)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
def test_cuda_ntk_ops_match_float64_reference(n, m, dtype):
    widths = [(101, 64), (65, 64)]
    a1, b1 = factors(n, widths, dtype, seed=20)
    a2, b2 = factors(m, widths, dtype, seed=30)
    v = randn(m, 16, seed=40, dtype=dtype)
    tol = 1e-12 if dtype == torch.float64 else 1e-5
    want = ntk_reference(a1, b1, a2, b2)
    gpu = [[t.cuda() for t in lst] for lst in (a1, b1, a2, b2)]
    got = torch.ops.fastkernels.ntk_gram(*gpu)
    assert got.is_cuda and rel_err(got.cpu(), want) < tol
    got_mv = torch.ops.fastkernels.ntk_mv(*gpu, v.cuda())
    assert got_mv.is_cuda and rel_err(got_mv.cpu(), want @ v.double()) < tol


@on_cuda
def test_cuda_autograd_and_opcheck():
    x1 = randn(6, 3, seed=50).cuda().requires_grad_(True)
    x2 = randn(5, 3, seed=51).cuda().requires_grad_(True)
    v = randn(5, 2, seed=52).cuda().requires_grad_(True)
    for kernel, params in (("rbf", [0.3]), ("arccos", [1.0]), ("ntk", [1.0, 0.0, 0.0])):
        torch.autograd.gradcheck(
            lambda a, b, k=kernel, p=params: torch.ops.fastkernels.gram(a, b, k, p, None),
            (x1, x2),
        )
        torch.autograd.gradcheck(
            lambda a, b, w, k=kernel, p=params: torch.ops.fastkernels.kernel_mv(
                a, b, w, k, p, None
            ),
            (x1, x2, v),
        )
    xs = (x1.detach(), x2.detach(), "matern", [1.5, 0.4], None)
    torch.library.opcheck(torch.ops.fastkernels.gram.default, xs)
