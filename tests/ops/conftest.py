"""Shared cases of the op tests: every kernel with representative parameters, and random inputs."""

import pytest
import torch

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


def randn(*shape, seed=0, dtype=torch.float64):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype)


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


@pytest.fixture(autouse=True)
def _single_thread():
    # Many small ops on a few shared cores: intra-op threads mostly wait on each other. The
    # multi-threaded C++ path is exercised by the benchmarks.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
