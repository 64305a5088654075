"""fastkernels::resnet_bwd (reference and C++) against autograd of a per-member float64
forward: every architecture and subset of gradients, 1 x 1 and odd sizes, thread counts;
opcheck; bad input."""

import itertools

import pytest
import torch
from helpers import F32, F64, randn, rel_err
from torch.library import opcheck

from .conftest import assert_rejected, only, over, tol
from .resnet_cases import ARCHS, SIZES, SMALL, member_out, weights

ARCH_NAMES = [a for a, _, _ in ARCHS]
NEEDS = [list(n) for n in itertools.product([False, True], repeat=5) if any(n)]


def autograd_grads(arch, w, x, gout):
    """[gW, gb1, gU, gb2, gA] of sum(gout * out) by autograd of the per-member forward."""
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in w]
    out = torch.stack([member_out(arch, *leaves, x, e) for e in range(x.shape[0])])
    present = [t for t in leaves if t is not None]
    grads = iter(torch.autograd.grad((out * gout).sum(), present))
    return [None if t is None else next(grads) for t in leaves]


def run(impl, arch, w, x, gout, needs, dtype):
    W, b1, U, b2, A = (None if t is None else t.to(dtype) for t in w)
    _, h1, h2 = torch.ops.fastkernels.resnet_fwd(x.to(dtype), W, b1, U, b2, A, arch)
    return impl(gout.to(dtype), x.to(dtype), W, U, A, h1, h2, arch, needs)


@over(
    "resnet_bwd",
    "arch,E,B,d,m,k,dtype",
    {
        "reference cpp": (ARCH_NAMES, SIZES, [F64, F32]),
        "triton": (ARCH_NAMES, SMALL, [F64, F32]),
        "cuda": (ARCH_NAMES, SIZES, [F64, F32]),
    },
)
def test_matches_autograd(impl, arch, E, B, d, m, k, dtype):
    w = weights(arch, E, d, m, k, seed=11)
    x, gout = randn(E, B, d, seed=12), randn(E, B, k, seed=13)
    got = run(impl, arch, w, x, gout, [True] * 5, dtype)
    want = autograd_grads(arch, w, x, gout)
    for name, g, t in zip("W b1 U b2 A".split(), got, want):
        if t is None:
            assert g.shape == (0,), name
        else:
            assert g.shape == t.shape and g.dtype == dtype, name
            assert rel_err(g, t) < tol(impl.name, dtype), name


@over(
    "resnet_bwd",
    "arch,needs",
    {
        "reference cpp": (ARCH_NAMES, [(n,) for n in NEEDS]),
        "triton": (
            ARCH_NAMES,
            [
                (n,)
                for n in NEEDS
                if n in ([True] * 5, [False] * 4 + [True], [True, False, True, False, False])
            ],
        ),
    },
)
def test_needs_computes_exactly_the_requested(impl, arch, needs):
    w = weights(arch, 2, 4, 6, 3, seed=14)
    x, gout = randn(2, 5, 4, seed=15), randn(2, 5, 3, seed=16)
    got = run(impl, arch, w, x, gout, needs, F64)
    want = autograd_grads(arch, w, x, gout)
    for need, g, t in zip(needs, got, want):
        if need and t is not None:
            assert rel_err(g, t) < tol(impl.name, F64)
        else:
            assert g.shape == (0,)


@only("cpp")
@pytest.mark.parametrize("arch", ARCH_NAMES)
@pytest.mark.parametrize("E,threads", [(1, 2), (1, 3), (3, 2), (4, 2), (9, 3)])
def test_cpp_threads(arch, E, threads):
    torch.set_num_threads(threads)  # the autouse fixture restores the count
    w = weights(arch, E, 30, 256, 8, seed=17)
    x, gout = randn(E, 50, 30, seed=18), randn(E, 50, 8, seed=19)
    W, b1, U, b2, A = (None if t is None else t.float() for t in w)
    _, h1, h2 = torch.ops.fastkernels.resnet_fwd(x.float(), W, b1, U, b2, A, arch)
    got = torch.ops.fastkernels.resnet_bwd(gout.float(), x.float(), W, U, A, h1, h2, arch,
                                           [True] * 5)  # fmt: skip
    for g, t in zip(got, autograd_grads(arch, w, x, gout)):
        if t is not None:
            assert rel_err(g, t) < tol("cpp", F32)


def test_opcheck():
    for arch in ARCH_NAMES:
        w = weights(arch, 2, 3, 5, 2, seed=20)
        x = randn(2, 4, 3, seed=21)
        _, h1, h2 = torch.ops.fastkernels.resnet_fwd(x, *w, arch)
        args = (randn(2, 4, 2, seed=22), x, w[0], w[2], w[4], h1, h2, arch, [True] * 5)
        opcheck(torch.ops.fastkernels.resnet_bwd.default, args)


_W = weights("3resnet", 2, 3, 4, 2)
_X, _G = randn(2, 5, 3), randn(2, 5, 2)
_, _H1, _H2 = torch.ops.fastkernels.resnet_fwd(_X, *_W, "3resnet")
_ARGS = (_G, _X, _W[0], _W[2], _W[4], _H1, _H2, "3resnet", [True] * 5)


def _with(i, value):
    return _ARGS[:i] + (value,) + _ARGS[i + 1 :]


BAD = [
    (_with(7, "4layer"), ValueError, r"resnet_bwd: arch must be one of"),
    (_with(0, _G[:, :, :1]), ValueError, r"resnet_bwd: grad_out must be an \(E, B, 2\)"),
    (_with(0, _G[:, :4]), ValueError, r"resnet_bwd: grad_out and h1 must have B = 5"),
    (_with(5, _H1[..., :3]), ValueError, r"resnet_bwd: h1 must be an \(E, B, 4\)"),
    (_with(3, _W[2][..., :2]), ValueError, r"resnet_bwd: U must have"),
    (_with(1, _X.float()), TypeError, r"resnet_bwd: x has dtype"),
    (_with(8, [True] * 4), ValueError, r"resnet_bwd: needs must be 5 bools"),
]


@over("resnet_bwd", "args,exc,match", {"reference cpp triton cuda": BAD})
def test_bad_input_names_op_argument_and_expectation(impl, args, exc, match):
    assert_rejected(impl, args, exc, match)
