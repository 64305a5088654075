"""Gram matrix benchmarks: fastkernels::gram against torch, scikit-learn and a bare GEMM.

One group per workload; providers side by side. ``extra_info`` carries the FLOP (GEMM
2 N M D plus the epilogue, counted as 1 per entry) and the bytes (inputs + output) so that
reports can show GFLOP/s and GB/s.

    FASTKERNELS_BENCH_SIZE=full pytest bench/bench_gram.py --benchmark-only
"""

import pytest
import torch

from fastkernels import ops

from .conftest import SIZE, inputs

# (N, M, D): full is the performance target (20000 x 20000, D = 100).
WORKLOADS = {"small": [(600, 500, 16)], "full": [(20000, 20000, 100)]}[SIZE]
PROVIDERS = [
    "fastkernels",
    "torch-mm-exp",
    "torch-mm-exp-naive",
    "torch-cdist-exp",
    "sklearn",
    "bare-gemm",
]


def _torch_mm_exp_naive(x1, x2, gamma):
    # The textbook expression, as a user writes it: every step allocates an N x M temporary.
    sq = (x1 * x1).sum(1)[:, None] + (x2 * x2).sum(1)[None, :] - 2 * x1 @ x2.T
    return torch.exp(-gamma * sq.clamp_min(0))


def _torch_mm_exp(x1, x2, gamma):
    # ||x||^2 + ||y||^2 - 2 <x, y> with in-place ops: the best plain-torch expansion.
    k = x1 @ x2.T
    k.mul_(2 * gamma)
    k.sub_(gamma * (x1 * x1).sum(1, keepdim=True)).sub_(gamma * (x2 * x2).sum(1)[None, :])
    return k.clamp_max_(0).exp_()


def _torch_cdist_exp(x1, x2, gamma):
    return torch.cdist(x1, x2).square_().mul_(-gamma).exp_()


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("n,m,d", WORKLOADS, ids=[f"{n}x{m}xD{d}" for n, m, d in WORKLOADS])
def test_gram_rbf(benchmark, provider, n, m, d):
    x1, x2, _ = inputs(n, m, d)
    gamma = 1.0 / d
    benchmark.group = f"gram rbf {n}x{m} D={d} float32"
    benchmark.extra_info.update(
        flop=2 * n * m * d + n * m,
        bytes=4 * (n * d + m * d + n * m),
        cpp=ops.HAS_CPP,
        threads=torch.get_num_threads(),
    )
    if provider == "fastkernels":
        fn = lambda: torch.ops.fastkernels.gram(x1, x2, "rbf", [gamma], None)  # noqa: E731
    elif provider == "torch-mm-exp":
        fn = lambda: _torch_mm_exp(x1, x2, gamma)  # noqa: E731
    elif provider == "torch-mm-exp-naive":
        fn = lambda: _torch_mm_exp_naive(x1, x2, gamma)  # noqa: E731
    elif provider == "torch-cdist-exp":
        fn = lambda: _torch_cdist_exp(x1, x2, gamma)  # noqa: E731
    elif provider == "sklearn":
        from sklearn.metrics.pairwise import rbf_kernel

        a, b = x1.numpy(), x2.numpy()
        fn = lambda: rbf_kernel(a, b, gamma=gamma)  # noqa: E731
    else:  # the GEMM alone: the lower bound the fused Gram is measured against
        fn = lambda: x1 @ x2.T  # noqa: E731
    out = benchmark(fn)
    assert tuple(out.shape) == (n, m)
