"""kernel_mv(backend="keops") (fastkernels.ops._keops): every KeOps kernel against the float64
reference, self-pairs, the Kernel / KernelOperator plumbing, bad input and the missing extra.

KeOps compiles one formula per (kernel family, dtype, D, T), 10-20 s each on a cold cache: every
test here uses D = 5, T = 3 in float64 and a 1-D right-hand side (T = 1) in float32, so the
file compiles 7 formulas (the KernelRidge case in tests/learners reuses one of them). The error
tests need no pykeops.
"""

import importlib.util
import os
import sys

import pytest
import torch
from helpers import far_points, randn, rel_err

from fastkernels import ops
from fastkernels.kernels import NNGP, NTK, RBF, Matern
from fastkernels.ops import _keops
from fastkernels.solvers import KernelOperator

from .conftest import CASE_IDS, CASES

D, T = 5, 3
# The op tests' cases for the kernels KeOps expresses (the same parameters, the same ids).
KEOPS_CASES = [case for case in CASES if case[0] in _keops.KEOPS_KERNELS]
KEOPS_IDS = [cid for case, cid in zip(CASES, CASE_IDS) if case[0] in _keops.KEOPS_KERNELS]
# KeOps' CPU reduction has no tiles; its CUDA blocks are 192 rows: 1 x 1, odd sizes, and several
# blocks in both directions.
SIZES = [(1, 1), (37, 53), (1001, 777)]


@pytest.fixture
def keops():
    if importlib.util.find_spec("pykeops") is None:
        pytest.skip("pykeops is not installed (the keops extra)")
    # Through fastkernels, not importorskip: the first import fixes KeOps' flags and cache.
    return _keops.pykeops_torch()


def keops_mv(x1, x2, v, kernel, params, diag_offset=None):
    return ops.kernel_mv(x1, x2, v, kernel, params, diag_offset=diag_offset, backend="keops")


@pytest.mark.parametrize("kernel,params", KEOPS_CASES, ids=KEOPS_IDS)
@pytest.mark.parametrize("n,m", SIZES)
def test_matches_float64_reference(keops, kernel, params, n, m):
    x1, x2, v = randn(n, D, seed=1), randn(m, D, seed=2), randn(m, T, seed=3)
    got = keops_mv(x1, x2, v, kernel, params)
    assert got.shape == (n, T) and got.dtype == torch.float64
    # Measured at most 2.4e-15: KeOps sums the M terms in float64 here.
    assert rel_err(got, ops.gram_reference(x1, x2, kernel, params) @ v) < 1e-12


@pytest.mark.parametrize("kernel,params", [("rbf", [0.3]), ("matern", [1.5, 0.5])])
@pytest.mark.parametrize("n,m", SIZES)
def test_float32_within_1e5_of_float64(keops, kernel, params, n, m):
    # A 1-D right-hand side (T = 1) also covers the wrapper's vector case.
    a, b, w = randn(n, D, seed=1).float(), randn(m, D, seed=2).float(), randn(m, seed=3).float()
    got = keops_mv(a, b, w, kernel, params)
    assert got.shape == (n,) and got.dtype == torch.float32
    ref = ops.gram_reference(a.double(), b.double(), kernel, params) @ w.double()
    # Normwise over the output (a sum of M signed terms has no per-entry relative guarantee).
    # KeOps accumulates in float32: measured at most 4.5e-7 on these sizes.
    assert rel_err(got, ref) < 1e-5


@pytest.mark.parametrize(
    "kernel,params",
    [c for c in KEOPS_CASES if c[0] in ("rbf", "laplace", "matern")],
    ids=[i for c, i in zip(KEOPS_CASES, KEOPS_IDS) if c[0] in ("rbf", "laplace", "matern")],
)
@pytest.mark.parametrize("shift", [100.0, 1000.0])
@pytest.mark.parametrize("n,m", [(1, 1), (37, 53)])
def test_float32_far_from_origin(keops, kernel, params, shift, n, m):
    # SqDist takes differences first, so float32 points of spread 0.1 far from the origin need
    # no shift; float32 with T = 1 (D = 5) reuses the formulas compiled above.
    a, b = far_points(n, D, shift, seed=20), far_points(m, D, shift, seed=21)
    for x1, x2 in ((a, b), (a, a)):
        w = randn(x2.shape[0], seed=22)
        got = keops_mv(x1, x2, w.float(), kernel, params)
        k = ops.gram_reference(x1.double(), x2.double(), kernel, params)
        # Relative to the scale of the row sums |K| |w|.
        assert (got.double() - k @ w).abs().max() < 1e-5 * (k.abs() @ w.abs()).max()


@pytest.mark.parametrize("kernel,params", KEOPS_CASES, ids=KEOPS_IDS)
def test_self_pairs_exact(keops, kernel, params):
    # One-hot right-hand sides pick column j of K: K[j, j] is the self-pair.
    x = randn(20, D, seed=4)
    v = torch.zeros(20, T, dtype=torch.float64)
    v[7] = torch.tensor([1.0, 2.0, 3.0])
    full = ops.gram_reference(x, x, kernel, params) @ v
    out = keops_mv(x, x, v, kernel, params)
    torch.testing.assert_close(out, full, rtol=1e-13, atol=1e-13)
    # A row block of x itself with its diag_offset: the self-pair is row 2 of the block.
    rows = keops_mv(x[5:12], x, v, kernel, params, 5)
    torch.testing.assert_close(rows, full[5:12], rtol=1e-13, atol=1e-13)
    if kernel in ("rbf", "laplace", "matern") or params == [0.0]:
        # Distances (KeOps: sum (x - y)^2) and angles (Kahan) are exactly 0 for equal points.
        assert torch.equal(out[7], v[7]) and torch.equal(rows[2], v[7])


@pytest.mark.parametrize("order", [0.0, 1.0])
def test_arccos_zero_norm_rows(keops, order):
    # Cosine 0 with everything (order 0: 1/2; order 1: 0), never NaN; both sides zero included.
    x1, x2, v = randn(6, D, seed=5), randn(8, D, seed=6), randn(8, T, seed=7)
    x1[2] = 0.0
    x2[[1, 4]] = 0.0
    got = keops_mv(x1, x2, v, "arccos", [order])
    ref = ops.gram_reference(x1, x2, "arccos", [order]) @ v
    torch.testing.assert_close(got, ref, rtol=1e-13, atol=1e-13)


def test_backends_agree(keops):
    x, v = randn(40, D, seed=8), randn(40, T, seed=9)
    out = keops_mv(x, x, v, "rbf", [0.3])
    for backend in ("auto", "fastkernels"):
        ref = ops.kernel_mv(x, x, v, "rbf", [0.3], backend=backend)
        torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-12)


def test_kernel_mv_and_operator_use_keops(keops, monkeypatch):
    calls = []
    real = ops.keops_kernel_mv

    def spy(*args):
        calls.append(args[0].shape[0])
        return real(*args)

    monkeypatch.setattr(ops, "keops_kernel_mv", spy)
    k, x, v = RBF(gamma=0.3), randn(50, D, seed=10), randn(50, T, seed=11)
    ref = k.mv(x, x, v)
    torch.testing.assert_close(k.mv(x, x, v, backend="keops"), ref, rtol=1e-12, atol=1e-12)
    blocked = k.mv(x, x, v, block_size=16, backend="keops")  # row blocks with diag_offset
    torch.testing.assert_close(blocked, ref, rtol=1e-12, atol=1e-12)
    assert calls == [50, 16, 16, 16, 2]
    op = KernelOperator(k, x, backend="keops", cache="none")
    torch.testing.assert_close(op.matvec(v), ref, rtol=1e-12, atol=1e-12)
    assert len(calls) == 6


def test_no_flush_to_zero_by_default(keops):
    # The reason -ffast-math is not a default (see fastkernels.ops._keops).
    if "fast-math" in os.environ.get("CXXFLAGS", ""):
        pytest.skip("CXXFLAGS asks for -ffast-math")
    x = randn(3, D, seed=12)
    keops_mv(x, x, randn(3, T, seed=13), "rbf", [0.3])
    assert (torch.tensor([1e-310], dtype=torch.float64) * 1.0).item() != 0.0


def test_build_folder_in_user_cache(monkeypatch, tmp_path):
    monkeypatch.setenv("FASTKERNELS_KEOPS_CACHE", str(tmp_path / "kc"))
    assert _keops.build_folder("9.9").parent == tmp_path / "kc" / "keops-9.9"
    monkeypatch.delenv("FASTKERNELS_KEOPS_CACHE")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert _keops.cache_root() == tmp_path / "xdg" / "fastkernels" / "keops"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert _keops.cache_root() == tmp_path / "home" / ".cache" / "fastkernels" / "keops"


def test_build_folder_is_set_on_first_use(keops):
    import pykeops

    assert os.path.samefile(pykeops.get_build_folder(), _keops.build_folder())


# -- errors (no pykeops needed) ---------------------------------------------------------------

X, V = randn(4, 3, seed=14), randn(4, 2, seed=15)
HUGE = torch.full((4, 3), 1e19)
BAD = [
    (lambda op: op(X, X[:, :2], V, "rbf", [1.0]), "mismatched D"),
    (lambda op: op(X, X, V[:3], "rbf", [1.0]), "v rows"),
    (lambda op: op(X.int(), X, V, "rbf", [1.0]), "integer dtype"),
    (lambda op: op(X, X.float(), V, "rbf", [1.0]), "mixed dtypes"),
    (lambda op: op(X, X, V, "rbf", [-1.0]), "gamma <= 0"),
    (lambda op: op(X, X, V, "matern", [1.0, 1.0]), "bad nu"),
    (lambda op: op(X, X, V, "rbf", [1.0, 2.0]), "params length"),
    (lambda op: op(X, X, V, "nope", [1.0]), "unknown kernel"),
    (lambda op: op(X[:0], X, V, "rbf", [1.0]), "empty"),
    (lambda op: op(X * float("nan"), X, V, "rbf", [1.0]), "NaN"),
    # Finite in float32, but the squared norms overflow: rejected naming the argument.
    (lambda op: op(HUGE, HUGE, V.float(), "rbf", [1.0]), "overflow x1"),
    (lambda op: op(X.float(), HUGE[:4], V.float(), "linear", []), "overflow x2"),
]


@pytest.mark.parametrize("call", [c for c, _ in BAD], ids=[i for _, i in BAD])
def test_bad_input_as_the_op(call):
    # Same checks as the op's Python body (the reference), same exception type, same message
    # up to the name of the backend.
    with pytest.raises((TypeError, ValueError)) as want:
        call(ops.kernel_mv_reference)
    with pytest.raises(want.type) as got:
        call(lambda *a: _keops.kernel_mv(*a))
    assert str(got.value) == str(want.value).replace("fastkernels::kernel_mv", _keops.OP)


def test_unknown_backend():
    with pytest.raises(ValueError, match=r"backend must be one of \('auto', 'fastkernels'"):
        ops.kernel_mv(X, X, V, "rbf", [1.0], backend="cuda")
    with pytest.raises(ValueError, match="RBF.mv: backend must be one of"):
        RBF(gamma=1.0).mv(X, X, V, backend="KeOps")


def test_kernel_not_expressible():
    with pytest.raises(ValueError, match=r"'ntk' is not expressible .*supports \('rbf', 'lap"):
        ops.kernel_mv(X, X, V, "ntk", [0.0, 2.0, 0.0], backend="keops")
    with pytest.raises(ValueError, match="KernelOperator: kernel 'nngp' is not expressible"):
        KernelOperator(NNGP(arch="2layer"), X, backend="keops")


def test_operator_backend_errors():
    with pytest.raises(ValueError, match="cannot be combined with cache='dense'"):
        KernelOperator(RBF(gamma=1.0), X, backend="keops", cache="dense")
    with pytest.raises(ValueError, match="KernelOperator: kernel 'ntk' is not expressible"):
        KernelOperator(NTK(arch="2layer"), X, backend="keops")
    with pytest.raises(ValueError, match="KernelOperator: backend must be one of"):
        KernelOperator(Matern(gamma=1.0), X, backend="triton")


def test_requires_grad_is_rejected():
    x = X.clone().requires_grad_()
    with pytest.raises(ValueError, match="forward-only.*backend='auto'"):
        ops.kernel_mv(x, x, V, "rbf", [1.0], backend="keops")


def test_missing_pykeops_names_the_extra(monkeypatch):
    # As if pykeops were not installed (and not imported yet by fastkernels).
    monkeypatch.setattr(_keops, "_state", {})
    for name in ("pykeops", "pykeops.torch"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match=r"pip install fastkernels\[keops\]"):
        ops.kernel_mv(X, X, V, "rbf", [1.0], backend="keops")
    with pytest.raises(ImportError, match=r"pip install fastkernels\[keops\]"):
        KernelOperator(RBF(gamma=1.0), X, backend="keops")
