"""fastkernels::resnet_sgd: the C++ kernel against the torch reference (float64, every
architecture and trained set, shared and per-member data and orders, short last batches, one
batch bigger than N, thread counts), float32 against float64, the returned losses; opcheck;
bad input refused before any parameter changes. (Against torch.optim.SGD on an eager network:
tests/models/test_train.py.)"""

import pytest
import torch
from helpers import F64, gen, randn, rel_err
from torch.library import opcheck

from fastkernels.ops._resnet_common import PARAMS

from .conftest import assert_rejected, only, over, tol
from .resnet_cases import ARCHS, weights

ARCH_NAMES = [a for a, _, _ in ARCHS]
TRAINED = {"hidden": lambda names: [i for i, n in enumerate(names) if n != "A"],
           "last": lambda names: [names.index("A")],
           "all": lambda names: list(range(len(names))),
           "b1-only": lambda names: [1]}  # fmt: skip


def problem(arch, E=3, N=23, d=4, m=7, k=2, T=3, trained="hidden", per_member=False,
            dtype=F64, seed=0, batch_size=5):  # fmt: skip
    """The op's arguments: random weights (and bases), data, orders and step sizes."""
    scale = min(0.3, 1.0 / m**0.5)  # outputs of order one at any width: a stable training
    W, b1, U, b2, A = weights(arch, E, d, m, k, seed=seed, scale=scale)
    by_name = {"W": W, "b1": b1, "U": U, "V": U, "b2": b2, "A": A}
    names = PARAMS[arch]
    params = [by_name[n].to(dtype).contiguous() for n in names]
    bases = []
    if arch == "bottleneck":
        bases = [randn(E, m, d, seed=seed + 1, dtype=dtype) * scale,
                 randn(E, m, k + 1, seed=seed + 2, dtype=dtype) * scale]  # fmt: skip
        params[0] = params[0] * 0.1  # increments
    idx = TRAINED[trained](names)
    bufs = [randn(*params[i].shape, seed=seed + 3 + i, dtype=dtype) * 0.01 for i in idx]
    X = randn(*((E,) if per_member else ()), N, d, seed=seed + 10, dtype=dtype)
    Y = randn(*((E,) if per_member else ()), N, k, seed=seed + 11, dtype=dtype)
    g = gen(seed + 12)
    perms = torch.stack(
        [
            torch.stack([torch.randperm(N, generator=g) for _ in range(E)])
            if per_member
            else torch.randperm(N, generator=g)
            for _ in range(T)
        ]
    )
    factors = torch.tensor([1.0, 1.0, 0.1, 0.1][:T] + [0.1] * max(0, T - 4), dtype=F64)
    lr = 0.01 * (1 + torch.rand(len(idx), E, generator=g, dtype=F64))
    wd = torch.tensor([0.0, 1e-2, 5e-3, 1e-3, 2e-2][:E] + [1e-3] * max(0, E - 5), dtype=F64)
    return [X, Y, perms, factors, params, bufs, bases, idx, lr, wd, 0.9, batch_size, arch]


def copy(args):
    return [[t.clone() for t in a] if isinstance(a, list) and a and torch.is_tensor(a[0])
            else a.clone() if torch.is_tensor(a) else a for a in args]  # fmt: skip


CASES = [(a, t, pm) for a in ARCH_NAMES for t in TRAINED for pm in (False, True)]


@only("cpp")
@pytest.mark.parametrize("arch,trained,per_member", CASES)
def test_cpp_matches_reference(arch, trained, per_member):
    from fastkernels.ops import resnet_sgd_reference

    args = problem(arch, trained=trained, per_member=per_member)
    ref = copy(args)
    losses = torch.ops.fastkernels.resnet_sgd(*args)
    want = resnet_sgd_reference(*ref)
    assert torch.isfinite(want).all()
    assert losses.shape == (3, 3) and losses.dtype == F64
    assert rel_err(losses, want) < 1e-12
    for got, exp in zip(args[4] + args[5], ref[4] + ref[5]):  # params and momentum buffers
        assert rel_err(got, exp) < 1e-12
    untrained = [i for i in range(len(args[4])) if i not in args[7]]
    fresh = problem(arch, trained=trained, per_member=per_member)[4]
    for i in untrained:
        assert torch.equal(args[4][i], fresh[i])


@over("resnet_sgd", "arch", {"cpp triton": ARCH_NAMES})
def test_weight_decay_per_parameter(impl, arch):
    # weight_decay of shape (len(trained), E): each trained parameter its own (0 exempts it).
    from fastkernels.ops import resnet_sgd_reference

    args = problem(arch, trained="all")
    g = gen(5)
    rows = 0.02 * torch.rand(len(args[7]), 3, generator=g, dtype=F64)
    rows[1] = 0.0
    args[9] = rows
    ref = copy(args)
    got = impl(*args)
    want = resnet_sgd_reference(*ref)
    assert rel_err(got, want) < tol(impl.name, F64)
    for a, b in zip(args[4] + args[5], ref[4] + ref[5]):
        assert rel_err(a, b) < tol(impl.name, F64)


def test_weight_decay_rows_equal_to_one_row():
    # A (len(trained), E) weight decay whose rows all equal w is the (E,) weight decay w.
    from fastkernels.ops import resnet_sgd_reference

    for run in (torch.ops.fastkernels.resnet_sgd, resnet_sgd_reference):
        flat = problem("3resnet", trained="all")
        rows = copy(flat)
        rows[9] = flat[9].expand(len(flat[7]), 3).clone()
        assert torch.equal(run(*flat), run(*rows))
        for a, b in zip(flat[4], rows[4]):
            assert torch.equal(a, b)
        # A decay of zero on one parameter changes that parameter's path and no other's.
        zero = copy(flat)
        zero[9] = rows[9].clone()
        zero[9][0] = 0.0
        run(*zero)
        assert not torch.equal(zero[4][0], flat[4][0])


@over("resnet_sgd", "N,batch_size", {"reference cpp": [(1, 1), (1, 7), (10, 3), (10, 10),
                                                       (10, 64)],
                                      "triton": [(1, 7), (10, 3)]})  # fmt: skip
def test_batch_edges(impl, N, batch_size):
    # One row, the last batch shorter, one batch the size of N, a batch bigger than N.
    args = problem("3resnet", N=N, batch_size=batch_size, T=2)
    ref = copy(args)
    from fastkernels.ops import resnet_sgd_reference

    got = impl(*args)
    want = resnet_sgd_reference(*ref)
    assert rel_err(got, want) < tol(impl.name, F64)
    for a, b in zip(args[4], ref[4]):
        assert rel_err(a, b) < tol(impl.name, F64)


def test_losses_are_the_epochs_mean_batch_losses():
    # One epoch, one batch of everything, no momentum: the loss is the forward's at the start.
    from fastkernels.ops import resnet_fwd_reference

    args = problem("3layer", N=6, batch_size=6, T=1)
    W, b1, U, b2, A = (t.clone() for t in args[4])
    X, Y = args[0], args[1]
    out = resnet_fwd_reference(X.expand(3, 6, 4), W, b1, U, b2, A, "3layer")[0]
    want = (out - Y).pow(2).sum(-1).mean(-1)
    assert rel_err(torch.ops.fastkernels.resnet_sgd(*args)[0], want) < 1e-13


@over("resnet_sgd", "arch", {"reference cpp triton": ARCH_NAMES})
def test_float32_follows_float64(impl, arch):
    args64 = problem(arch, T=2, trained="all")
    args32 = copy(args64)
    args32[0], args32[1] = args32[0].float(), args32[1].float()
    args32[4] = [t.float() for t in args32[4]]
    args32[5] = [t.float() for t in args32[5]]
    args32[6] = [t.float() for t in args32[6]]
    l32, l64 = impl(*args32), impl(*args64)
    assert torch.isfinite(l64).all()
    assert rel_err(l32, l64) < 1e-5
    for a, b in zip(args32[4], args64[4]):
        assert rel_err(a, b) < 1e-5


@only("cpp")
@pytest.mark.parametrize("arch", ARCH_NAMES)
@pytest.mark.parametrize("E,threads", [(1, 2), (2, 2), (3, 2), (5, 3)])
def test_cpp_threads(arch, E, threads):
    # E < threads: each GEMM and update split across threads; else members across threads.
    from fastkernels.ops import resnet_sgd_reference

    args = problem(arch, E=E, N=120, d=30, m=256, k=8, T=2, trained="all", batch_size=50)
    ref = copy(args)
    torch.set_num_threads(threads)  # the autouse fixture restores the count
    got = torch.ops.fastkernels.resnet_sgd(*args)
    want = resnet_sgd_reference(*ref)
    assert torch.isfinite(want).all()
    assert rel_err(got, want) < 1e-12
    for a, b in zip(args[4], ref[4]):
        assert rel_err(a, b) < 1e-12


def test_opcheck():
    for arch in ARCH_NAMES:
        opcheck(torch.ops.fastkernels.resnet_sgd.default, problem(arch, T=1, N=8))


def _bad(i, value, **kw):
    args = problem("3resnet", **kw)
    args[i] = value(args) if callable(value) else value
    return args


BAD = [
    (lambda: _bad(12, "4layer"), ValueError, "resnet_sgd: arch must be one of"),
    (lambda: _bad(4, lambda a: a[4][:4]), ValueError, "resnet_sgd: params must be"),
    (lambda: _bad(0, lambda a: a[0][:, :3]), ValueError, r"resnet_sgd: X must be \(N, 4\)"),
    (lambda: _bad(1, lambda a: a[1][:5]), ValueError, "resnet_sgd: X and Y must have the same"),
    (lambda: _bad(2, lambda a: a[2][:, :5]), ValueError, "resnet_sgd: perms must be"),
    (lambda: _bad(3, lambda a: a[3][:1]), ValueError, "resnet_sgd: factors must be"),
    (lambda: _bad(7, [0, 0]), ValueError, "resnet_sgd: trained must be distinct"),
    (lambda: _bad(5, lambda a: a[5][:1]), ValueError, "resnet_sgd: bufs must have one"),
    (lambda: _bad(8, lambda a: a[8][:, :2]), ValueError, "resnet_sgd: lr must be"),
    (lambda: _bad(9, lambda a: a[9].float()), ValueError, "resnet_sgd: weight_decay must be"),
    (lambda: _bad(9, lambda a: a[9][:2]), ValueError, "resnet_sgd: weight_decay must be"),
    (lambda: _bad(9, lambda a: a[9].expand(2, 3)), ValueError, "resnet_sgd: weight_decay must be"),
    (lambda: _bad(10, -0.5), ValueError, "resnet_sgd: momentum must be"),
    (lambda: _bad(11, 0), ValueError, "resnet_sgd: batch_size must be"),
    (lambda: _bad(0, lambda a: a[0] * float("nan")), ValueError, "resnet_sgd: X must be finite"),
    (lambda: _bad(6, lambda a: [a[4][0]]), ValueError, "resnet_sgd: bases must be"),
]


@over("resnet_sgd", "make,exc,match", {"reference cpp triton cuda": BAD})
def test_bad_input_refused_before_any_update(impl, make, exc, match):
    args = make()
    before = [t.clone() for t in args[4]] if isinstance(args[4], list) else []
    assert_rejected(impl, args, exc, match)
    for a, b in zip(args[4] if isinstance(args[4], list) else [], before):
        assert torch.equal(a, b)


@over("resnet_sgd", "bad", {"reference cpp triton": [-1, 23]})
def test_perm_out_of_range_refused(impl, bad):
    args = problem("3resnet")
    args[2] = args[2].clone()
    args[2][1, 4] = bad
    before = [t.clone() for t in args[4]]
    assert_rejected(impl, args, ValueError, r"resnet_sgd: perms must hold row indices in \[0, 23\)")
    for a, b in zip(args[4], before):
        assert torch.equal(a, b)
