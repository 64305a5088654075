"""fastkernels::resnet_fwd (reference and C++) against a per-member float64 forward: every
architecture, 1 x 1 and odd sizes, a shared (expanded) batch, thread counts; autograd through
resnet_bwd (gradcheck), opcheck; bad input."""

import pytest
import torch
from helpers import F32, F64, randn, rel_err
from torch.library import opcheck

from fastkernels.ops.resnet_fwd import resnet_fwd

from .conftest import assert_rejected, only, over, tol
from .resnet_cases import ARCH_IDS, ARCHS, SIZES, SMALL, member_out, weights

ARCH_NAMES = [a for a, _, _ in ARCHS]


@over(
    "resnet_fwd",
    "arch,E,B,d,m,k,dtype",
    {
        "reference cpp": (ARCH_NAMES, SIZES, [F64, F32]),
        "triton": (ARCH_NAMES, SMALL, [F64, F32]),
        "cuda": (ARCH_NAMES, SIZES, [F64, F32]),
    },
)
def test_matches_member_forward(impl, arch, E, B, d, m, k, dtype):
    w = weights(arch, E, d, m, k, seed=1)
    x = randn(E, B, d, seed=2)
    out, h1, h2 = impl(x.to(dtype), *(None if t is None else t.to(dtype) for t in w), arch)
    assert out.shape == (E, B, k) and out.dtype == dtype
    assert h1.shape == (E, B, m) and h2.shape == (E, B, 0 if arch == "2layer" else m)
    for e in range(E):
        want = member_out(arch, *w, x, e)
        assert rel_err(out[e], want) < tol(impl.name, dtype)
    W, b1 = w[0], w[1]
    assert rel_err(h1, torch.relu(x @ W.mT + b1[:, None])) < tol(impl.name, dtype)


@over("resnet_fwd", "arch", {"reference cpp triton": ARCH_NAMES})
def test_shared_batch_expanded(impl, arch):
    w = weights(arch, 3, 6, 9, 2, seed=3)
    x = randn(5, 6, seed=4)
    got = impl(x.expand(3, 5, 6), *w, arch)
    want = impl(x.expand(3, 5, 6).contiguous(), *w, arch)
    for g, t in zip(got, want):
        assert torch.equal(g, t)


@only("cpp")
@pytest.mark.parametrize("E", [1, 3, 4])
@pytest.mark.parametrize("threads", [1, 2, 3])
def test_cpp_threads(E, threads):
    # Members split across threads, or (few members) each GEMM split into column blocks.
    torch.set_num_threads(threads)  # the autouse fixture restores the count
    w = weights("3resnet", E, 30, 256, 8, dtype=F32, seed=5)
    x = randn(E, 50, 30, seed=6, dtype=F32)
    out = torch.ops.fastkernels.resnet_fwd(x, *w, "3resnet")[0]
    w64 = [t.double() for t in w]
    for e in range(E):
        assert rel_err(out[e], member_out("3resnet", *w64, x.double(), e)) < tol("cpp", F32)


@pytest.mark.parametrize("arch", ARCH_NAMES, ids=ARCH_IDS)
def test_gradcheck_and_opcheck(arch):
    w = weights(arch, 2, 3, 5, 2, seed=7)
    x = randn(2, 4, 3, seed=8)
    leaves = [None if t is None else t.clone().requires_grad_(True) for t in w]

    def f(*ts):
        it = iter(ts)
        args = [None if t is None else next(it) for t in leaves]
        return resnet_fwd(x, *args, arch)[0]

    assert torch.autograd.gradcheck(f, [t for t in leaves if t is not None])
    opcheck(torch.ops.fastkernels.resnet_fwd.default, (x, *w, arch))


def test_gradient_of_x_is_refused():
    w = weights("3resnet", 1, 3, 4, 2)
    x = randn(1, 2, 3).requires_grad_(True)
    out = resnet_fwd(x, *w, "3resnet")[0]
    with pytest.raises(NotImplementedError, match="gradient with respect to x"):
        out.sum().backward()


_W = weights("3resnet", 2, 3, 4, 2)
_X = randn(2, 5, 3)
BAD = [
    ((_X, *_W, "resnet"), ValueError, r"resnet_fwd: arch must be one of"),
    ((_X[:1], *_W, "3resnet"), ValueError, r"resnet_fwd: x must be an \(E, B, 3\)"),
    ((_X[..., :2], *_W, "3resnet"), ValueError, r"resnet_fwd: x must be an \(E, B, 3\)"),
    ((_X, _W[0], _W[1][:, :3], *_W[2:], "3resnet"), ValueError, r"resnet_fwd: b1 must have"),
    ((_X, *_W[:2], _W[2][..., :3], *_W[3:], "3resnet"), ValueError, r"resnet_fwd: U must have"),
    ((_X, *_W[:4], _W[4][:, :, :3], "3resnet"), ValueError, r"resnet_fwd: A must"),
    ((_X.float(), *_W, "3resnet"), TypeError, r"resnet_fwd: x has dtype"),
    ((_X, *_W, "2layer"), ValueError, r"resnet_fwd: arch='2layer' has no U"),
    ((_X, *_W[:3], None, _W[4], "3layer"), ValueError, r"resnet_fwd: b2"),
    ((_X, _W[0].int(), *_W[1:], "3resnet"), TypeError, r"resnet_fwd: W must be float32"),
]


@over("resnet_fwd", "args,exc,match", {"reference cpp triton cuda": BAD})
def test_bad_input_names_op_argument_and_expectation(impl, args, exc, match):
    assert_rejected(impl, args, exc, match)
