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


@pytest.fixture(autouse=True)
def _single_thread():
    # Many small ops on a few shared cores: intra-op threads mostly wait on each other. The
    # multi-threaded C++ path is exercised by the benchmarks.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)
