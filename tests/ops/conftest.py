"""Shared cases of the op tests: every kernel with representative parameters, near-duplicate
inputs, the float64 NTK product and the Triton-interpreter mark; every test on one thread."""

import os

import pytest
import torch
from helpers import randn

from fastkernels import ops
from fastkernels.ops._common import CPP_KERNELS

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
CASE_IDS = [f"{k}{'-' + '-'.join(f'{p:g}' for p in ps) if ps else ''}" for k, ps in CASES]

# Implementations callable on CPU tensors: the reference always, C++ when it was built.
IMPLS = ["reference"] + (["cpp"] if ops.HAS_CPP else [])
# Every (implementation, kernel) pair that exists: the C++ path covers CPP_KERNELS only, so no
# parametrisation is generated (and skipped) for the others.
IMPL_CASES = [
    (impl, k, ps) for impl in IMPLS for k, ps in CASES if impl == "reference" or k in CPP_KERNELS
]
IMPL_CASE_IDS = [
    f"{impl}-{cid}"
    for impl in IMPLS
    for (k, _), cid in zip(CASES, CASE_IDS)
    if impl == "reference" or k in CPP_KERNELS
]

# The translation-invariant kernels (evaluated on shifted points), alone and per implementation.
STATIONARY = [(k, ps) for k, ps in CASES if k in ("rbf", "laplace", "matern")]
STATIONARY_IDS = [cid for (k, _), cid in zip(CASES, CASE_IDS) if k in ("rbf", "laplace", "matern")]
IMPL_STATIONARY = [(impl, k, ps) for impl in IMPLS for k, ps in STATIONARY]
IMPL_STATIONARY_IDS = [f"{impl}-{cid}" for impl in IMPLS for cid in STATIONARY_IDS]


# Near-duplicates across the two inputs: the Laplace kernel (Matern 1/2) recomputes their d^2
# from differences; before, the expansion's rounding error went through sqrt (1.7e-4 in float32).
def duplicated_points(n, m, shift, noise, seed, dtype=torch.float32):
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
NEAR_IDS = [f"{k}-{ps[0]:g}-shift{s:g}-{'near' if e else 'exact'}" for k, ps, s, e in NEAR]
IMPL_NEAR = [(impl, *case) for impl in IMPLS for case in NEAR]
IMPL_NEAR_IDS = [f"{impl}-{cid}" for impl in IMPLS for cid in NEAR_IDS]


def ntk_reference(a1, b1, a2, b2):
    """sum_l (a1_l a2_l^T) * (b1_l b2_l^T) in float64: the NTK Gram of the factors."""
    a1, b1, a2, b2 = ([t.double() for t in lst] for lst in (a1, b1, a2, b2))
    return sum((x @ y.T) * (u @ w.T) for x, u, y, w in zip(a1, b1, a2, b2))


_NO_INTERPRETER = pytest.mark.skipif(
    os.environ.get("TRITON_INTERPRET") != "1",
    reason="Triton interpreter tests need TRITON_INTERPRET=1 at process start",
)


def on_interpreter(fn):
    """Mark a test ``interpreter`` and skip it unless the Triton interpreter is on."""
    return pytest.mark.interpreter(_NO_INTERPRETER(fn))


@pytest.fixture(autouse=True)
def _single_thread(single_thread):
    pass
