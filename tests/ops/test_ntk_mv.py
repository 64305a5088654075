"""fastkernels::ntk_mv on every implementation (conftest) against a float64 product of the
factors: sizes, tiles, the symmetric path with several threads, bad input; opcheck, gradcheck."""

import pytest
import torch
from helpers import F64, randn, rel_err
from torch.library import opcheck

from fastkernels.ops.ntk_mv import ntk_mv

from .conftest import LAYERS, NTK_SIZES, assert_rejected, check_ntk, factors, ntk_reference, over

# Row tiles of at most 40 entries in the reference (and the Python backward).
pytestmark = pytest.mark.usefixtures("small_tiles")
# (N, M, widths, T): one and several right-hand sides (several T tiles on CUDA).
SIZES = {
    "reference cpp": (NTK_SIZES["reference cpp"], [1, 5]),
    "triton": (NTK_SIZES["triton"], [3]),
    "cuda": (NTK_SIZES["cuda"], [16]),
}


@over("ntk_mv", "n,m,widths,t", SIZES)
def test_matches_float64_reference(impl, n, m, widths, t):
    check_ntk(impl, n, m, widths, t)


@over(
    "ntk_mv",
    "n,t,threads",
    {
        "reference": [(1, 3, 1), (37, 3, 1), (300, 3, 1)],
        "cpp": [(530, t, threads) for threads in (1, 2, 3) for t in (1, 4, 64)],
    },
)
def test_symmetric_input(impl, n, t, threads):
    # Symmetric factors: tiles on and above the diagonal (C++: one accumulator per thread
    # chunk). With narrow factors and many right-hand sides the accumulators would outweigh the
    # factors, and C++ takes the general path instead: both must give the same product.
    torch.set_num_threads(threads)  # the autouse fixture restores the count
    a, b = factors(n, LAYERS, seed=19)
    v = randn(n, t, seed=20)
    got = impl(a, b, a, b, v)
    assert rel_err(got, ntk_reference(a, b, a, b) @ v) < impl.tol(F64)
    assert torch.equal(impl(a, b, a, b, v), got)  # deterministic


def test_gradcheck_and_opcheck():
    a1, b1 = factors(5, LAYERS, seed=4)
    a2, b2 = factors(4, LAYERS, seed=5)
    v = randn(4, 2, seed=6)
    L = len(LAYERS)

    def f(*ts):  # the four factor lists and v from one flat tuple
        return ntk_mv(*(list(ts[i : i + L]) for i in range(0, 4 * L, L)), ts[-1])

    leaves = [t.clone().requires_grad_(True) for t in (*a1, *b1, *a2, *b2, v)]
    assert torch.autograd.gradcheck(f, leaves)
    opcheck(torch.ops.fastkernels.ntk_mv.default, (a1, b1, a2, b2, v))
    opcheck(torch.ops.fastkernels.ntk_mv.default, (a1, b1, a1, b1, randn(5, 2, seed=7)))


A1, B1 = factors(5, LAYERS[:3])
A2, B2 = factors(4, LAYERS[:3])
VV = randn(4, 2)
BAD = [
    ((A1, B1, A2, B2, VV[:3]), ValueError, r"ntk_mv: v must be \(4, T\)"),
    ((A1, B1, A2, B2, VV.float()), TypeError, "ntk_mv: v must have the dtype"),
    ((A1, B1, A2, B2, VV * float("nan")), ValueError, r"ntk_mv: v contains NaN or inf"),
    ((A1, B1, A1, B1, VV), ValueError, r"ntk_mv: v must be \(5, T\)"),
    ((A1, [B1[0] * float("nan")] + B1[1:], A1, B1, randn(5, 1)), ValueError, "ntk_mv: b1"),
]


@over("ntk_mv", "args,exc,match", {"reference cpp triton cuda": BAD})
def test_bad_input_names_op_argument_and_expectation(impl, args, exc, match):
    assert_rejected(impl, args, exc, match)
