"""fastkernels::ntk_gram and fastkernels::ntk_mv (reference and C++ kernels) against a float64
product of the factors: sizes, tiling, symmetry, opcheck, gradcheck and bad input."""

from __future__ import annotations

import importlib

import pytest
import torch
from helpers import rel_err
from torch.library import opcheck

from fastkernels import ops
from fastkernels.ops import _ntk_common
from fastkernels.ops.ntk_gram import ntk_gram, ntk_gram_reference
from fastkernels.ops.ntk_mv import ntk_mv, ntk_mv_reference

from .conftest import ntk_reference as reference

WIDTHS = [(4, 6), (1, 3), (9, 2)]  # (p_l, q_l) per layer


def factors(n, widths=WIDTHS, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(n, p, generator=g, dtype=dtype) for p, _ in widths]
    b = [torch.randn(n, q, generator=g, dtype=dtype) for _, q in widths]
    return a, b


@pytest.fixture
def small_tiles(monkeypatch):
    # Force several row tiles on small inputs so that the tiling is exercised.
    monkeypatch.setattr(_ntk_common, "TILE_ELEMENTS", 40)


@pytest.mark.parametrize("n,m", [(1, 1), (7, 5), (37, 53)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tiled", [False, True])
def test_matches_reference(n, m, dtype, tiled, request):
    if tiled:
        request.getfixturevalue("small_tiles")
    a1, b1 = factors(n, dtype=dtype, seed=1)
    a2, b2 = factors(m, dtype=dtype, seed=2)
    want = reference(a1, b1, a2, b2)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    K = ntk_gram(a1, b1, a2, b2)
    assert K.dtype == dtype and K.shape == (n, m)
    torch.testing.assert_close(K.double(), want, **tol)
    v = torch.randn(m, 3, dtype=dtype, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ntk_mv(a1, b1, a2, b2, v).double(), want @ v.double(), **tol)


def test_tiles_are_smaller_than_the_matrix(small_tiles):
    assert _ntk_common.tile_rows(37, 53) < 37


def test_gradcheck_and_opcheck(small_tiles):
    a1, b1 = factors(5, seed=4)
    a2, b2 = factors(4, seed=5)
    v = torch.randn(4, 2, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (*a1, *b1, *a2, *b2)]
    L = len(a1)

    def split(ts):
        return [list(ts[i * L : (i + 1) * L]) for i in range(4)]

    assert torch.autograd.gradcheck(lambda *ts: ntk_gram(*split(ts)), leaves)
    vl = v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *ts: ntk_mv(*split(ts[:-1]), ts[-1]), (*leaves, vl))
    opcheck(torch.ops.fastkernels.ntk_gram.default, (a1, b1, a2, b2))
    opcheck(torch.ops.fastkernels.ntk_mv.default, (a1, b1, a2, b2, v))


def test_psd_on_same_points():
    a, b = factors(30, seed=6)
    K = ntk_gram(a, b, a, b)
    assert torch.linalg.eigvalsh(K).min() > -1e-9 * K.diagonal().max()


def test_bad_input():
    a1, b1 = factors(5)
    a2, b2 = factors(4)
    with pytest.raises(ValueError, match="ntk_gram: a1, b1, a2, b2 must have one factor per layer"):
        ntk_gram(a1, b1[:2], a2, b2)
    with pytest.raises(ValueError, match="layer 0: a1 and a2 widths differ"):
        ntk_gram([a1[0][:, :3]] + a1[1:], b1, a2, b2)
    with pytest.raises(ValueError, match=r"b1\[1\] has 4 rows"):
        ntk_gram(a1, [b1[0], b1[1][:4], b1[2]], a2, b2)
    with pytest.raises(TypeError, match="float32 or float64"):
        ntk_gram([a1[0].int()] + a1[1:], b1, a2, b2)
    with pytest.raises(TypeError, match="dtype"):
        ntk_gram([a1[0].float()] + a1[1:], b1, a2, b2)
    bad = a1[0].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"a1\[0\] contains NaN"):
        ntk_gram([bad] + a1[1:], b1, a2, b2)
    with pytest.raises(ValueError, match="ntk_mv: v must be"):
        ntk_mv(a1, b1, a2, b2, torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-empty list"):
        ntk_gram([], [], [], [])


# ---------------------------------------------------------------------------------------------
# The C++ kernels (csrc/ntk_gram.cpp, csrc/ntk_mv.cpp): 256 x 256 output tiles
# ---------------------------------------------------------------------------------------------

needs_cpp = pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")
CPP_GRAM = getattr(torch.ops.fastkernels, "_ntk_gram_cpu", None)
CPP_MV = getattr(torch.ops.fastkernels, "_ntk_mv_cpu", None)
# Several layers of different widths (a 1-wide factor included), as in a network's factors.
LAYERS = [(5, 3), (1, 7), (11, 2), (4, 4)]
# 1 x 1, odd sizes inside one tile, and several tiles in both directions (not multiples of 256).
CPP_SIZES = [(1, 1), (37, 53), (300, 530), (601, 257)]


@needs_cpp
@pytest.mark.parametrize("n,m", CPP_SIZES)
def test_cpp_gram_matches_float64_reference(n, m):
    a1, b1 = factors(n, LAYERS, seed=11)
    a2, b2 = factors(m, LAYERS, seed=12)
    want = reference(a1, b1, a2, b2)
    got = CPP_GRAM(a1, b1, a2, b2)
    assert got.dtype == torch.float64 and got.shape == (n, m)
    assert rel_err(got, want) < 1e-12
    # float32 factors: against the float64 product of the same rounded numbers.
    f32 = [[t.float() for t in lst] for lst in (a1, b1, a2, b2)]
    got32 = CPP_GRAM(*f32)
    assert got32.dtype == torch.float32
    assert rel_err(got32, reference(*f32)) < 1e-5


@needs_cpp
@pytest.mark.parametrize("n", [1, 37, 530])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_cpp_gram_symmetric_input_gives_an_exactly_symmetric_result(n, dtype):
    a, b = factors(n, LAYERS, dtype=dtype, seed=13)
    want = reference(a, b, a, b)
    got = CPP_GRAM(a, b, a, b)
    assert torch.equal(got, got.mT)
    assert rel_err(got, want) < (1e-12 if dtype == torch.float64 else 1e-5)
    # Views of the same memory (as b.flatten(1) gives on each side) count as the same input.
    views = [t.view(t.shape) for t in b]
    assert torch.equal(CPP_GRAM(a, b, a, views), got)
    # Equal values in other memory: the general path, the same numbers up to rounding.
    copies = CPP_GRAM(a, b, [t.clone() for t in a], [t.clone() for t in b])
    torch.testing.assert_close(copies, got, rtol=1e-12 if dtype == torch.float64 else 1e-5, atol=0)


@needs_cpp
def test_cpp_gram_accepts_non_contiguous_factors():
    a1, b1 = factors(300, LAYERS, seed=14)
    a2, b2 = factors(270, LAYERS, seed=15)
    # Transposed storage and a column slice: the op makes its own contiguous copies.
    at1 = [t.T.contiguous().T for t in a1]
    bt2 = [torch.cat([t, t], dim=1)[:, : t.shape[1]] for t in b2]
    assert not at1[0].is_contiguous() and not bt2[0].is_contiguous()
    want = reference(a1, b1, a2, b2)
    assert rel_err(CPP_GRAM(at1, b1, a2, bt2), want) < 1e-12
    sym = CPP_GRAM(at1, b1, at1, b1)
    assert torch.equal(sym, sym.mT) and rel_err(sym, reference(a1, b1, a1, b1)) < 1e-12


@needs_cpp
@pytest.mark.parametrize("n,m", CPP_SIZES)
@pytest.mark.parametrize("t", [1, 5])
def test_cpp_mv_matches_float64_reference(n, m, t):
    a1, b1 = factors(n, LAYERS, seed=16)
    a2, b2 = factors(m, LAYERS, seed=17)
    v = torch.randn(m, t, dtype=torch.float64, generator=torch.Generator().manual_seed(18))
    want = reference(a1, b1, a2, b2) @ v
    got = CPP_MV(a1, b1, a2, b2, v)
    assert got.dtype == torch.float64 and got.shape == (n, t)
    assert rel_err(got, want) < 1e-12
    f32 = [[x.float() for x in lst] for lst in (a1, b1, a2, b2)]
    # Normwise over the output: a sum of M signed terms has no per-entry relative guarantee.
    assert rel_err(CPP_MV(*f32, v.float()), reference(*f32) @ v.float().double()) < 1e-5


@needs_cpp
@pytest.mark.parametrize("threads", [1, 2, 3])
@pytest.mark.parametrize("t", [1, 4, 64])
def test_cpp_mv_symmetric_input(threads, t):
    # Symmetric factors: tiles on and above the diagonal, one accumulator per thread chunk. With
    # narrow factors and many right-hand sides the accumulators would outweigh the factors, and
    # the op takes the general path instead: both must give the same product.
    torch.set_num_threads(threads)
    a, b = factors(530, LAYERS, seed=19)
    v = torch.randn(530, t, dtype=torch.float64, generator=torch.Generator().manual_seed(20))
    want = reference(a, b, a, b) @ v
    got = CPP_MV(a, b, a, b, v)
    assert rel_err(got, want) < 1e-12
    assert torch.equal(CPP_MV(a, b, a, b, v), got)  # deterministic


@needs_cpp
def test_public_ops_use_cpp_and_keep_autograd():
    a1, b1 = factors(7, seed=21)
    a2, b2 = factors(6, seed=22)
    v = torch.randn(6, 2, dtype=torch.float64)
    assert torch.equal(ntk_gram(a1, b1, a2, b2), CPP_GRAM(a1, b1, a2, b2))
    assert torch.equal(ntk_mv(a1, b1, a2, b2, v), CPP_MV(a1, b1, a2, b2, v))
    # Symmetric inputs through the public ops: opcheck (schema, fake, autograd registration) and
    # gradcheck of the Python backward around the C++ forward.
    opcheck(torch.ops.fastkernels.ntk_gram.default, (a1, b1, a1, b1))
    opcheck(torch.ops.fastkernels.ntk_mv.default, (a1, b1, a1, b1, torch.randn(7, 2).double()))
    leaves = [t.clone().requires_grad_(True) for t in (*a1, *b1)]
    L = len(a1)
    assert torch.autograd.gradcheck(
        lambda *ts: ntk_gram(list(ts[:L]), list(ts[L:]), list(ts[:L]), list(ts[L:])), leaves
    )


@needs_cpp
def test_empirical_ntk_passes_the_same_factors_on_both_sides(monkeypatch):
    # The trace NTK of x with itself must reach ntk_gram with the very same factor tensors, so
    # that the symmetric half-work path is taken.
    from fastkernels.models import StackedNet
    from fastkernels.ntk import empirical_ntk

    # The module, not the op of the same name that fastkernels.ops exports.
    ntk_gram_module = importlib.import_module("fastkernels.ops.ntk_gram")
    seen = []
    real = ntk_gram_module.ntk_gram

    def spy(a1, b1, a2, b2):
        seen.append(_ntk_common.same_factors(a1, b1, a2, b2))
        return real(a1, b1, a2, b2)

    monkeypatch.setattr(ntk_gram_module, "ntk_gram", spy)
    net = StackedNet("3resnet", 4, 8, 2, generator=torch.Generator().manual_seed(23))
    x = torch.randn(9, 4, generator=torch.Generator().manual_seed(24))
    K = empirical_ntk(net, x, mode="trace")
    assert seen == [True] and torch.equal(K, K.mT)
    empirical_ntk(net, x, x.clone(), mode="trace")
    assert seen == [True, False]


@pytest.mark.parametrize("n", [1, 37, 300])
def test_reference_uses_symmetry_and_stays_exact(n, small_tiles):
    # The Python reference also computes half of a symmetric result (row tiles from the
    # diagonal on) and mirrors it.
    a, b = factors(n, LAYERS, seed=25)
    want = reference(a, b, a, b)
    got = ntk_gram_reference(a, b, a, b)
    assert torch.equal(got, got.mT) and rel_err(got, want) < 1e-12
    v = torch.randn(n, 3, dtype=torch.float64, generator=torch.Generator().manual_seed(26))
    assert rel_err(ntk_mv_reference(a, b, a, b, v), want @ v) < 1e-12


A1, B1 = factors(5)
A2, B2 = factors(4)
VV = torch.randn(4, 2, dtype=torch.float64)


@needs_cpp
@pytest.mark.parametrize(
    "call,exc,match",
    [
        (lambda: CPP_GRAM(A1, B1[:2], A2, B2), ValueError, "ntk_gram: a1, b1, a2, b2 must have"),
        (
            lambda: CPP_GRAM([A1[0][:, :3]] + A1[1:], B1, A2, B2),
            ValueError,
            "ntk_gram: layer 0: a1 and a2 widths differ",
        ),
        (
            lambda: CPP_GRAM(A1, [B1[0], B1[1][:4], B1[2]], A2, B2),
            ValueError,
            r"ntk_gram: b1\[1\] has 4 rows",
        ),
        (
            lambda: CPP_GRAM([A1[0].int()] + A1[1:], B1, A2, B2),
            TypeError,
            r"ntk_gram: a1\[0\] must be float32 or float64",
        ),
        (
            lambda: CPP_GRAM(A1, B1, A2, [B2[0].float()] + B2[1:]),
            TypeError,
            r"ntk_gram: b2\[0\] has dtype Float",
        ),
        (
            lambda: CPP_GRAM(A1, B1, [A2[0][0]] + A2[1:], B2),
            ValueError,
            r"ntk_gram: a2\[0\] must be a non-empty 2-D tensor",
        ),
        (
            lambda: CPP_GRAM(A1, B1, A2, [B2[0].clone().fill_(float("inf"))] + B2[1:]),
            ValueError,
            r"ntk_gram: b2\[0\] contains NaN or inf",
        ),
        (lambda: CPP_MV(A1, B1, A2, B2, VV[:3]), ValueError, r"ntk_mv: v must be \(4, T\)"),
        (lambda: CPP_MV(A1, B1, A2, B2, VV.float()), TypeError, "ntk_mv: v must have the dtype"),
        (
            lambda: CPP_MV(A1, B1, A2, B2, VV.clone().fill_(float("nan"))),
            ValueError,
            r"ntk_mv: v contains NaN or inf",
        ),
        (
            lambda: CPP_MV(A1, B1, A1, B1, VV),
            ValueError,
            r"ntk_mv: v must be \(5, T\)",
        ),
    ],
)
def test_cpp_bad_input_names_op_and_argument(call, exc, match):
    with pytest.raises(exc, match=match):
        call()
