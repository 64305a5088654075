"""Memory-free K @ v benchmarks: fastkernels::kernel_mv against pykeops and blocked torch.

Providers: ``fastkernels`` (the custom op: C++ on CPU), ``fastkernels-keops`` (our
``kernel_mv(backend="keops")``: validation, then a KeOps reduction), ``torch-blocked``, and
``pykeops`` (a raw LazyTensor reduction). Both KeOps providers skip without pykeops.

One group per workload (N x M, D, right-hand sides T); ``extra_info`` carries FLOP (GEMM
2 N M D, the epilogue ~1 per entry, the product 2 N M T) and bytes (inputs + output: K itself
never goes to memory).

    FASTKERNELS_BENCH_SIZE=full pytest bench/bench_kernel_mv.py --benchmark-only
"""

import pytest
import torch

from fastkernels import ops

from .conftest import SIZE, inputs, pykeops_or_skip

WORKLOADS = {
    "small": [(700, 600, 10, 1), (700, 600, 10, 4)],
    "full": [
        (20000, 20000, 10, 1),
        (20000, 20000, 100, 1),
        (20000, 20000, 10, 16),
        (20000, 20000, 100, 16),
    ],
}[SIZE]
PROVIDERS = ["fastkernels", "fastkernels-keops", "torch-blocked", "pykeops"]
# Rows per block of the dense torch provider (about 4M kernel entries per block at M = 20000).
TORCH_BLOCK = 200


def _torch_blocked(x1, x2, v, gamma):
    out = x1.new_empty((x1.shape[0], v.shape[1]))
    n2 = (x2 * x2).sum(1)[None, :]
    for i0 in range(0, x1.shape[0], TORCH_BLOCK):
        xb = x1[i0 : i0 + TORCH_BLOCK]
        k = xb @ x2.T
        k.mul_(2 * gamma).sub_(gamma * (xb * xb).sum(1, keepdim=True)).sub_(gamma * n2)
        out[i0 : i0 + TORCH_BLOCK] = k.clamp_max_(0).exp_() @ v
    return out


def _pykeops_fn(x1, x2, v, gamma):
    pkt = pykeops_or_skip()
    xi = pkt.LazyTensor(x1[:, None, :])
    xj = pkt.LazyTensor(x2[None, :, :])
    vj = pkt.LazyTensor(v[None, :, :])
    k = (-gamma * ((xi - xj) ** 2).sum(-1)).exp()
    return lambda: (k * vj).sum(dim=1)


IDS = [f"{n}x{m}xD{d}xT{t}" for n, m, d, t in WORKLOADS]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("n,m,d,t", WORKLOADS, ids=IDS)
def test_kernel_mv_rbf(benchmark, provider, n, m, d, t):
    x1, x2, v = inputs(n, m, d, t)
    gamma = 1.0 / d
    benchmark.group = f"kernel_mv rbf {n}x{m} D={d} T={t} float32"
    benchmark.extra_info.update(
        flop=2 * n * m * d + n * m + 2 * n * m * t,
        bytes=4 * (n * d + m * d + m * t + n * t),
        cpp=ops.HAS_CPP,
        threads=torch.get_num_threads(),
    )
    if provider == "fastkernels":
        fn = lambda: torch.ops.fastkernels.kernel_mv(x1, x2, v, "rbf", [gamma], None)  # noqa: E731
    elif provider == "fastkernels-keops":
        pykeops_or_skip()  # the skip and compiler flags of the raw pykeops provider
        fn = lambda: ops.kernel_mv(x1, x2, v, "rbf", [gamma], backend="keops")  # noqa: E731
        fn()  # the first call compiles the formula (cached in the user's cache folder)
    elif provider == "torch-blocked":
        fn = lambda: _torch_blocked(x1, x2, v, gamma)  # noqa: E731
    else:
        fn = _pykeops_fn(x1, x2, v, gamma)
        fn()  # the first call compiles the formula (cached in the user's cache folder)
    out = benchmark(fn)
    assert tuple(out.shape) == (n, t)
