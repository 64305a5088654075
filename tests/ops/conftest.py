"""Shared parts of the op tests: the implementation axis, the tolerance table, the kernel cases,
near-duplicate inputs and NTK factors; every test on one thread.

Implementations
---------------
The tests of each op (``test_<op>.py``) are parametrised with :func:`over` on the op's
implementations, each a callable taking the op's positional arguments as CPU tensors (a missing
trailing ``diag_offset`` is None) and returning a CPU tensor:

- ``reference``: ``fastkernels.ops.<op>_reference``;
- ``cpp``: the public op ``torch.ops.fastkernels.<op>`` on CPU tensors (the C++ kernels),
  skipped unless ``ops.HAS_CPP``;
- ``triton``: the launcher ``fastkernels.ops._triton.<op>_triton`` on CPU tensors with the small
  tiles of :data:`TILES`, marked ``interpreter`` and skipped unless ``TRITON_INTERPRET=1`` (a
  separate run, ``TRITON_INTERPRET=1 python -m pytest -q -m interpreter tests/ops``: the
  variable must be set at process start, before the kernels are defined);
- ``cuda``: the public op on CUDA tensors (compiled Triton), marked ``cuda``, skipped without a
  GPU;
- ``keops`` (kernel_mv only): ``ops.kernel_mv(..., backend="keops")``, skipped without pykeops.
"""

import functools
import importlib.util
import os
import re

import pytest
import torch
from helpers import F32, F64, randn, rel_err

from fastkernels import ops
from fastkernels.ops import _keops, _ntk_common

TF32 = "tf32"  # float32 inputs with FASTKERNELS_TRITON_TF32=1 (CUDA only: not interpreted)
IMPLS = ("reference", "cpp", "triton", "cuda", "keops")
ALL = "reference cpp triton cuda"  # those of every op (kernel_mv: also keops)

# -- the tolerance table ---------------------------------------------------------------------
# Bounds by implementation and input dtype, per kind of check:
# - match: rel_err (max abs error over the max abs reference entry: a sum of signed terms has
#   no per-entry guarantee) against the float64 reference of the same (rounded) inputs;
# - entries: assert_close(rtol=atol=bound), entry by entry: row blocks and self-pairs against
#   the full result, strided inputs, one path against another;
# - copies: rtol (atol 0) of the NTK Gram of copies of the factors (the general path) against the
#   symmetric one;
# - abs: max abs error of entries of size at most 1 (kernel values; K v with v picking columns
#   of K), or relative to max(|K| |v|) for a general v;
# - psd: the smallest eigenvalue of a self-Gram is at least -bound times its largest diagonal entry;
# - near: rel_err of K^T K v on near-duplicate points (float32 points, float64 v);
# - moderate / accumulate: kernel_normal_mv's float32 rel_err at 20000 rows and over 10^6 rows;
# - threads: rel_err between thread counts (kernel_normal_mv);
# - acos: relative error of the Triton arc cosine; sklearn: rtol against scikit-learn's Matern.
_BOUNDS = {
    # (check, dtype): reference  cpp     triton  cuda    keops
    ("match", F64): (1e-12, 1e-12, 1e-12, 1e-12, 1e-12),
    ("match", F32): (1e-5, 1e-5, 1e-5, 1e-5, 1e-5),
    ("match", TF32): (None, None, None, 1e-2, None),
    ("entries", F64): (1e-13, 1e-13, 1e-13, 1e-12, 1e-13),
    ("entries", F32): (1e-5, 1e-5, 1e-5, 1e-5, None),
    ("copies", F64): (1e-12, 1e-12, None, None, None),
    ("copies", F32): (None, 1e-5, None, None, None),
    ("abs", F64): (1e-12, 1e-12, 1e-12, None, None),
    ("abs", F32): (1e-5, 1e-5, 1e-5, 1e-5, 1e-5),
    ("psd", F64): (1e-10, 1e-10, 1e-10, None, None),
    ("near", F32): (1.5e-7, 1.5e-7, 1.5e-7, None, None),
    ("moderate", F32): (1e-6, 1e-6, None, None, None),
    ("accumulate", F32): (2e-7, 2e-7, None, None, None),
    ("threads", F64): (None, 1e-13, None, None, None),
    ("acos", F64): (None, None, 5e-16, None, None),
    ("acos", F32): (None, None, 2e-7, None, None),
    ("sklearn", F64): (None, 1e-10, None, None, None),
}
TOL = {
    (impl, dtype, check): bound
    for (check, dtype), row in _BOUNDS.items()
    for impl, bound in zip(IMPLS, row)
    if bound is not None
}


def tol(impl: str, dtype, check: str = "match") -> float:
    return TOL[impl, dtype, check]


# -- kernel cases ----------------------------------------------------------------------------


def fmt(value) -> str:
    """Test-id text of a parameter value ("" for tensors, exception types and empty lists)."""
    if isinstance(value, str):
        return value
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (int, float)):
        return f"{value:g}"
    if isinstance(value, list) and value and all(isinstance(v, tuple) for v in value):
        return f"{len(value)}layers"  # NTK factor widths
    if isinstance(value, (list, tuple)) and not any(isinstance(v, torch.Tensor) for v in value):
        return "-".join(filter(None, map(fmt, value)))
    return ""


# (kernel, packed params); ids name the kernel and its discrete parameter.
CASES = [
    ("rbf", [0.3]),
    ("laplace", [0.4]),
    ("matern", [0.5, 0.5]),
    ("matern", [1.5, 0.5]),
    ("matern", [2.5, 0.5]),
    ("polynomial", [3.0, 0.2, 1.0]),
    ("linear", []),
    ("arccos", [0.0]),
    ("arccos", [1.0]),
    ("nngp", [0.0, 3.0]),
    ("nngp", [1.0, 0.0]),
    ("ntk", [0.0, 2.0, 0.0]),
    ("ntk", [1.0, 0.0, 1.0]),
]
CASE_IDS = [fmt(case) for case in CASES]
# The translation-invariant kernels (shifted before evaluation) and the angular ones.
DISTANCE = ("rbf", "laplace", "matern")
STATIONARY = [case for case in CASES if case[0] in DISTANCE]
STATIONARY_IDS = [fmt(case) for case in STATIONARY]
ANGULAR = [case for case in CASES if case[0] in ("arccos", "nngp", "ntk")]


def cross(*axes):
    """Every combination of one row of each axis, concatenated (rows are tuples)."""
    rows = [()]
    for axis in axes:
        rows = [r + (a if isinstance(a, tuple) else (a,)) for r in rows for a in axis]
    return rows


def crossed(cases, sizes: dict) -> dict:
    """Rows for :func:`over`: the cases crossed with each implementation's sizes."""
    return {names: cross(cases, rows) for names, rows in sizes.items()}


# -- the implementation axis -----------------------------------------------------------------

# Small tiles for the launchers on CPU tensors: several tiles (D slices, T slices, kernel_normal_mv
# splits of 32 rows) at interpreter-friendly sizes.
_TILES = dict(block_m=32, block_n=32, block_k=16)
TILES = {
    "gram": _TILES,
    "kernel_mv": dict(_TILES, block_t=16),
    "kernel_normal_mv": dict(_TILES, block_t=16, split_rows=32),
    "ntk_gram": _TILES,
    "ntk_mv": dict(_TILES, block_t=16),
    # The stacked-network products: 16 x 16 x 16 tiles (several along every axis).
    "resnet_fwd": dict(block_m=16, block_n=16, block_k=16),
    "resnet_bwd": dict(block_m=16, block_n=16, block_k=16),
    "resnet_sgd": dict(block_m=16, block_n=16, block_k=16),
}
# Positional arguments of each op (gram and kernel_mv end with an optional diag_offset).
ARITY = {
    "gram": 5,
    "kernel_mv": 6,
    "kernel_normal_mv": 5,
    "ntk_gram": 4,
    "ntk_mv": 5,
    "resnet_fwd": 7,
    "resnet_bwd": 9,
    "resnet_sgd": 13,
}


def _missing(module):
    return importlib.util.find_spec(module) is None


MARKS = {
    "reference": [],
    "cpp": [pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")],
    "triton": [
        pytest.mark.interpreter,
        pytest.mark.skipif(
            os.environ.get("TRITON_INTERPRET") != "1" or _missing("triton"),
            reason="Triton interpreter tests need triton and TRITON_INTERPRET=1 at process start",
        ),
    ],
    "cuda": [
        pytest.mark.cuda,
        pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device"),
    ],
    "keops": [pytest.mark.skipif(_missing("pykeops"), reason="pykeops (the keops extra)")],
}


def only(impl: str):
    """Decorator of a test specific to one implementation: its marks and skip condition."""

    def mark(fn):
        for m in MARKS[impl]:
            fn = m(fn)
        return fn

    return mark


on_interpreter = only("triton")


class Impl:
    """Implementation ``name`` of ``op``: ``impl(*args)`` on CPU tensors returns a CPU tensor."""

    def __init__(self, op: str, name: str):
        self.op, self.name = op, name
        # Other names of the op in its error messages: KeOps names its backend, and the wrapper
        # (ops.kernel_mv) checks the parameters under its own name.
        self.aliases = (_keops.OP, "fastkernels.ops.kernel_mv") if name == "keops" else ()

    def __repr__(self):
        return self.name

    def tol(self, dtype, check="match") -> float:
        return tol(self.name, dtype, check)

    @functools.cached_property
    def fn(self):
        op, name = self.op, self.name
        if name == "reference":
            return getattr(ops, f"{op}_reference")
        if name == "cpp":
            return getattr(torch.ops.fastkernels, op)
        if name == "triton":
            from fastkernels.ops import _triton

            return functools.partial(getattr(_triton, f"{op}_triton"), **TILES[op])
        if name == "keops":
            return lambda x1, x2, v, kernel, params, offset: ops.kernel_mv(
                x1, x2, v, kernel, params, diag_offset=offset, backend="keops"
            )
        public = getattr(torch.ops.fastkernels, op)

        def on_cuda(*args):
            moved = {}  # one CUDA copy per CPU tensor: x1 is x2 stays a self-product

            def to_cuda(arg):
                if isinstance(arg, list) and arg and isinstance(arg[0], torch.Tensor):
                    return [to_cuda(t) for t in arg]
                if isinstance(arg, torch.Tensor) and arg.device.type == "cpu":
                    return moved.setdefault(id(arg), arg.cuda())
                return arg

            out = public(*map(to_cuda, args))
            if isinstance(out, tuple):  # the stacked-network ops return several tensors
                assert all(o.is_cuda for o in out)
                return tuple(o.cpu() for o in out)
            assert out.is_cuda
            return out.cpu()

        return on_cuda

    def __call__(self, *args):
        return self.fn(*args, *(None,) * (ARITY[self.op] - len(args)))


def over(op: str, argnames: str, rows: dict):
    """``@pytest.mark.parametrize("impl,<argnames>", ...)``: each implementation of ``op`` named
    in a key of ``rows`` (space-separated names) with each of that key's rows (tuples, or single
    values; a tuple of lists stands for the rows of :func:`cross`)."""
    params = [
        pytest.param(
            Impl(op, name), *row, marks=MARKS[name], id="-".join(filter(None, [name, fmt(row)]))
        )
        for names, values in rows.items()
        for name in names.split()
        for row in (cross(*values) if isinstance(values, tuple) else cross(values))
    ]
    return pytest.mark.parametrize(",".join(["impl", *filter(None, [argnames])]), params)


def assert_rejected(impl: Impl, args, exc, match):
    """``impl(*args)`` raises ``exc`` with a message matching ``match`` (read with the op's own
    name); the launchers and KeOps run the reference's checks: the reference's very message."""
    with pytest.raises(exc) as got:
        impl(*args)
    message = str(got.value)
    for alias in impl.aliases:
        message = message.replace(alias, f"fastkernels::{impl.op}")
    assert re.search(match, message), message
    if impl.name in ("triton", "keops"):
        with pytest.raises(exc) as want:
            Impl(impl.op, "reference")(*args)
        assert type(got.value) is type(want.value) and message == str(want.value)


# -- inputs ----------------------------------------------------------------------------------


# Near-duplicates across the two inputs: the Laplace kernel (Matern 1/2) recomputes their d^2
# from differences; before, the expansion's rounding error went through sqrt (1.7e-4 in float32).
def duplicated_points(n, m, shift, noise, seed, dtype=F32):
    """x1 (n, 5), x2 (m, 5) of spread 0.1 around ``shift``; every other row of x2 is a copy of a
    row of x1 (at another position) plus ``noise`` times a standard normal."""
    a = 0.1 * randn(n, 5, seed=seed) + shift
    b = 0.1 * randn(m, 5, seed=seed + 1) + shift
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(seed + 2))[: (m + 1) // 2]
    b[::2] = a[rows] + noise * randn(len(rows), 5, seed=seed + 3)
    return a.to(dtype), b.to(dtype)


# (kernel, params, shift, noise) of the near-duplicate tests.
NEAR = [
    # Laplace: every shift, exact and near (x + 1e-6) copies; Matern 1/2 is the same kernel.
    *[("laplace", [1.0], shift, noise) for shift in (0.0, 100.0, 1000.0) for noise in (0.0, 1e-6)],
    ("matern", [0.5, 1.0], 0.0, 1e-6),
    # Smooth in d^2 at 0: within 1e-5 without the recomputation.
    ("rbf", [1.0], 0.0, 1e-6),
    ("matern", [1.5, 1.0], 0.0, 1e-6),
    ("matern", [2.5, 1.0], 0.0, 1e-6),
]
# Their (N, M, row block of a self product): several tiles (C++: up to 6 x 2).
NEAR_SIZES = {"reference cpp": [(700, 600, 150, 450)], "triton": [(70, 45, 20, 60)]}


def assert_float32_gradients_match_float64(loss, a, b):
    """The gradients of ``loss(x1, x2)`` (a scalar) with respect to both inputs, from float32
    points a, b, against those from the same points in float64 (normwise)."""
    grads = []
    for x1, x2 in ((a, b), (a.double(), b.double())):
        x1, x2 = x1.clone().requires_grad_(), x2.clone().requires_grad_()
        loss(x1, x2).backward()
        grads.append((x1.grad, x2.grad))
    for got, want in zip(*grads):
        assert rel_err(got, want) < tol("cpp", F32)


def factors(n, widths, dtype=F64, seed=0):
    """NTK factors of n points: a[l] (n, p_l) and b[l] (n, q_l) for widths [(p_l, q_l), ...]."""
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(n, p, generator=g, dtype=dtype) for p, _ in widths]
    b = [torch.randn(n, q, generator=g, dtype=dtype) for _, q in widths]
    return a, b


# Several layers of different widths (a 1-wide factor included), as in a network's factors.
LAYERS = [(5, 3), (1, 7), (11, 2), (4, 4)]
# (N, M, widths) of the NTK ops: 1 x 1, odd sizes, and several tiles in both directions (C++:
# 256 x 256, not multiples); the launchers: one layer of width 1, three of mixed widths (some
# over their 16-wide D slices); CUDA: widths over its 64-wide slices.
NTK_SIZES = {
    "reference cpp": cross([(1, 1), (7, 5), (37, 53), (300, 530), (601, 257)], [LAYERS]),
    "triton": cross([(1, 1), (37, 53), (70, 45)], [[(1, 1)], [(5, 40), (17, 3), (33, 2)]]),
    "cuda": cross([(1, 1), (300, 1100)], [[(101, 64), (65, 64)]]),
}


def ntk_reference(a1, b1, a2, b2):
    """sum_l (a1_l a2_l^T) * (b1_l b2_l^T) in float64: the NTK Gram of the factors."""
    a1, b1, a2, b2 = ([t.double() for t in lst] for lst in (a1, b1, a2, b2))
    return sum((x @ y.T) * (u @ w.T) for x, u, y, w in zip(a1, b1, a2, b2))


def check_ntk(impl, n, m, widths, t=None):
    """``impl`` of ntk_gram (or of ntk_mv, with a v of t columns) on factors of n and m points, in
    float64 and rounded to float32, against the float64 product of the same numbers: normwise
    (rel_err; a sum of signed terms has no per-entry guarantee) and, at the small sizes
    (M <= 53), entry by entry too."""
    a1, b1 = factors(n, widths, seed=20)
    a2, b2 = factors(m, widths, seed=30)
    v = [] if t is None else [randn(m, t, seed=40)]
    for dtype in (F64, F32):
        args = [[x.to(dtype) for x in lst] for lst in (a1, b1, a2, b2, v)]
        want = ntk_reference(*args[:4])
        for w in args[4]:
            want = want @ w.double()
        got, bound = impl(*args[:4], *args[4]), impl.tol(dtype)
        assert got.dtype == dtype and got.shape == (n, m if t is None else t)
        assert rel_err(got, want) < bound
        if m <= 53:
            torch.testing.assert_close(got.double(), want, rtol=bound, atol=bound)


@pytest.fixture
def small_tiles(monkeypatch):
    """Row tiles of the NTK reference (and the Python backward) at most 40 entries: several
    tiles on small inputs."""
    monkeypatch.setattr(_ntk_common, "TILE_ELEMENTS", 40)


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    pass
