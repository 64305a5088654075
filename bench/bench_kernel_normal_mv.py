"""Normal-equations product K^T (K v) benchmarks: the fused fastkernels::kernel_normal_mv against
Gram tiles multiplied twice.

Providers: ``fastkernels`` (the custom op: C++ on CPU, one pass with each row panel of K used
for both products while in cache), ``two-gemm`` (the pattern it replaces in the Nystrom solver:
a Gram tile of 2048 rows from ``fastkernels::gram``, then ``tile.T @ (tile @ v)``), ``torch-tiles``
(the same two GEMMs on tiles from the best plain-torch RBF expression, separating the fusion from
the Gram op's speed) and ``torch-reference`` (the op's reference: formula row blocks, float64
accumulation).

One group per workload (N x M, D, right-hand sides T); the full sizes are the Nystrom inner
product at 200000 rows and 3000 centres. ``extra_info`` carries FLOP (GEMM 2 N M D, the epilogue
~1 per entry, the two products 4 N M T) and the fused op's bytes (inputs + output: K itself
never goes to memory).

    FASTKERNELS_BENCH_SIZE=full pytest bench/bench_kernel_normal_mv.py --benchmark-only
"""

import pytest
import torch

from fastkernels import ops

from .conftest import SIZE, inputs

WORKLOADS = {
    "small": [(3000, 400, 10, 1), (3000, 400, 10, 16)],
    "full": [(200000, 3000, 30, 1), (200000, 3000, 30, 16)],
}[SIZE]
PROVIDERS = ["fastkernels", "two-gemm", "torch-tiles", "torch-reference"]
# Rows per Gram tile of the two-GEMM providers (24 MB float32 tiles at M = 3000).
TILE_ROWS = 2048


def _torch_rbf(x1, x2, gamma):
    # ||x||^2 + ||y||^2 - 2 <x, y> with in-place ops (bench_gram's best plain-torch expansion).
    k = x1 @ x2.T
    k.mul_(2 * gamma)
    k.sub_(gamma * (x1 * x1).sum(1, keepdim=True)).sub_(gamma * (x2 * x2).sum(1)[None, :])
    return k.clamp_max_(0).exp_()


def _two_gemm(x1, x2, v, tile):
    # Each tile's products in float32, the sum over tiles in float64 (as the op's rule).
    out = torch.zeros(v.shape, dtype=torch.float64, device=v.device)
    for i0 in range(0, x1.shape[0], TILE_ROWS):
        k = tile(x1[i0 : i0 + TILE_ROWS], x2)
        out += k.T @ (k @ v)
    return out.to(v.dtype)


IDS = [f"{n}x{m}xD{d}xT{t}" for n, m, d, t in WORKLOADS]


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("n,m,d,t", WORKLOADS, ids=IDS)
def test_kernel_normal_mv_rbf(benchmark, provider, n, m, d, t):
    x1, x2, v = inputs(n, m, d, t)
    gamma = 0.5 / d
    benchmark.group = f"kernel_normal_mv rbf {n}x{m} D={d} T={t} float32"
    benchmark.extra_info.update(
        flop=2 * n * m * d + n * m + 4 * n * m * t,
        bytes=4 * (n * d + m * d + 2 * m * t),
        cpp=ops.HAS_CPP,
        threads=torch.get_num_threads(),
    )
    if provider == "fastkernels":
        fn = lambda: torch.ops.fastkernels.kernel_normal_mv(x1, x2, v, "rbf", [gamma])  # noqa: E731
    elif provider == "two-gemm":

        def gram_tile(a, b):
            return torch.ops.fastkernels.gram(a, b, "rbf", [gamma], None)

        fn = lambda: _two_gemm(x1, x2, v, gram_tile)  # noqa: E731
    elif provider == "torch-tiles":
        fn = lambda: _two_gemm(x1, x2, v, lambda a, b: _torch_rbf(a, b, gamma))  # noqa: E731
    else:
        fn = lambda: ops.kernel_normal_mv_reference(x1, x2, v, "rbf", [gamma])  # noqa: E731
    out = benchmark(fn)
    assert tuple(out.shape) == (m, t) and out.dtype == v.dtype
