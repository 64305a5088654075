"""fastkernels::ntk_gram on every implementation (conftest) against a float64 product of the
factors: sizes, tiles, exact symmetry, PSD, bad input; opcheck, gradcheck, and the empirical
NTK's use of the symmetric path."""

import importlib

import pytest
import torch
from helpers import F32, F64, rel_err
from torch.library import opcheck

from fastkernels.ops import _ntk_common
from fastkernels.ops.ntk_gram import ntk_gram

from .conftest import LAYERS, NTK_SIZES, assert_rejected, check_ntk, factors, ntk_reference, over

# Row tiles of at most 40 entries in the reference (and the Python backward): several tiles on
# small inputs.
pytestmark = pytest.mark.usefixtures("small_tiles")


def test_tiles_are_smaller_than_the_matrix():
    assert _ntk_common.tile_rows(37, 53) < 37


@over("ntk_gram", "n,m,widths", NTK_SIZES)
def test_matches_float64_reference(impl, n, m, widths):
    check_ntk(impl, n, m, widths)


# The reference in float64 at its own sizes: its tiling of the copies' general path differs from
# the symmetric one, by more than the bounds in cancelling float32 entries (and at 530 rows).
@over(
    "ntk_gram",
    "n,dtype",
    {"reference": ([1, 37, 300], [F64]), "cpp": ([1, 37, 530], [F64, F32])},
)
def test_symmetric_input_gives_an_exactly_symmetric_result(impl, n, dtype):
    # The reference and C++ compute the tiles from the diagonal on and mirror them.
    a, b = factors(n, LAYERS, dtype=dtype, seed=13)
    got = impl(a, b, a, b)
    assert torch.equal(got, got.mT)
    assert rel_err(got, ntk_reference(a, b, a, b)) < impl.tol(dtype)
    # Views of the same memory (as b.flatten(1) gives on each side) count as the same input.
    assert torch.equal(impl(a, b, a, [t.view(t.shape) for t in b]), got)
    # Equal values in other memory: the general path, the same numbers up to rounding.
    copies = impl(a, b, [t.clone() for t in a], [t.clone() for t in b])
    torch.testing.assert_close(copies, got, rtol=impl.tol(dtype, "copies"), atol=0)


@over("ntk_gram", "", {"reference cpp": [()]})
def test_non_contiguous_factors(impl):
    a1, b1 = factors(300, LAYERS, seed=14)
    a2, b2 = factors(270, LAYERS, seed=15)
    # Transposed storage and a column slice: the op makes its own contiguous copies.
    at1 = [t.T.contiguous().T for t in a1]
    bt2 = [torch.cat([t, t], dim=1)[:, : t.shape[1]] for t in b2]
    assert not at1[0].is_contiguous() and not bt2[0].is_contiguous()
    assert rel_err(impl(at1, b1, a2, bt2), ntk_reference(a1, b1, a2, b2)) < impl.tol(F64)
    sym = impl(at1, b1, at1, b1)
    assert torch.equal(sym, sym.mT) and rel_err(sym, ntk_reference(a1, b1, a1, b1)) < impl.tol(F64)


@over("ntk_gram", "", {"reference cpp triton": [()]})
def test_positive_semidefinite_on_the_same_points(impl):
    a, b = factors(30, LAYERS, seed=6)
    k = impl(a, b, a, b)
    assert torch.linalg.eigvalsh(k).min() >= -impl.tol(F64, "psd") * k.diagonal().max()


def test_gradcheck_and_opcheck():
    a1, b1 = factors(5, LAYERS, seed=4)
    a2, b2 = factors(4, LAYERS, seed=5)
    L = len(LAYERS)

    def f(*ts):  # the four factor lists from one flat tuple
        return ntk_gram(*(list(ts[i : i + L]) for i in range(0, 4 * L, L)))

    leaves = [t.clone().requires_grad_(True) for t in (*a1, *b1, *a2, *b2)]
    assert torch.autograd.gradcheck(f, leaves)
    opcheck(torch.ops.fastkernels.ntk_gram.default, (a1, b1, a2, b2))
    # Symmetric inputs: opcheck (schema, fake, autograd registration) and gradcheck of the
    # Python backward around the (C++ or reference) forward.
    opcheck(torch.ops.fastkernels.ntk_gram.default, (a1, b1, a1, b1))
    assert torch.autograd.gradcheck(lambda *ts: f(*ts, *ts), leaves[: 2 * L])


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


A1, B1 = factors(5, LAYERS[:3])
A2, B2 = factors(4, LAYERS[:3])
INF = [B2[0].clone().fill_(float("inf"))] + B2[1:]
BAD = [
    ((A1, B1[:2], A2, B2), ValueError, "ntk_gram: a1, b1, a2, b2 must have one factor per layer"),
    (([A1[0][:, :3]] + A1[1:], B1, A2, B2), ValueError, "ntk_gram: layer 0: a1 and a2 widths dif"),
    ((A1, B1, A2, [B2[0][:, :2]] + B2[1:]), ValueError, "ntk_gram: layer 0: b1 and b2 widths dif"),
    ((A1, [B1[0], B1[1][:4], B1[2]], A2, B2), ValueError, r"ntk_gram: b1\[1\] has 4 rows"),
    (([A1[0].int()] + A1[1:], B1, A2, B2), TypeError, r"ntk_gram: a1\[0\] must be float32 or fl"),
    ((A1, B1, [A2[0][0]] + A2[1:], B2), ValueError, r"ntk_gram: a2\[0\] must be a non-empty 2-D"),
    (([A1[0] * float("nan")] + A1[1:], B1, A2, B2), ValueError, r"a1\[0\] contains NaN"),
    ((A1, B1, A2, INF), ValueError, r"ntk_gram: b2\[0\] contains NaN or inf"),
    (([], [], [], []), ValueError, "non-empty list"),
]
# C++ names the dtype in its own spelling.
MIXED = (A1, B1, A2, [B2[0].float()] + B2[1:]), TypeError, r"ntk_gram: b2\[0\] has dtype {}"


@over(
    "ntk_gram",
    "args,exc,match",
    {
        "reference cpp triton cuda": BAD,
        "cpp": [MIXED[:2] + (MIXED[2].format("Float"),)],
        "reference triton cuda": [MIXED[:2] + (MIXED[2].format("torch.float32"),)],
    },
)
def test_bad_input_names_op_argument_and_expectation(impl, args, exc, match):
    assert_rejected(impl, args, exc, match)
