"""Benchmark sizes: FASTKERNELS_BENCH_SIZE=small (default; CI runs it once with
--benchmark-disable as a smoke test) or full (the workloads of the performance targets).

Device: FASTKERNELS_BENCH_DEVICE=cpu (default) or cuda. On cuda, :func:`inputs` returns CUDA
tensors (so ``fastkernels`` runs the Triton kernels and the torch providers run on the GPU),
every timed call ends with ``torch.cuda.synchronize()`` (kernel launches are asynchronous; without
it the launch would be timed, not the work), and the NumPy-only providers are skipped.
"""

import os

import pytest
import torch

SIZE = os.environ.get("FASTKERNELS_BENCH_SIZE", "small")
if SIZE not in ("small", "full"):
    raise pytest.UsageError(f"FASTKERNELS_BENCH_SIZE must be 'small' or 'full', got {SIZE!r}")
DEVICE = os.environ.get("FASTKERNELS_BENCH_DEVICE", "cpu")
if DEVICE not in ("cpu", "cuda"):
    raise pytest.UsageError(f"FASTKERNELS_BENCH_DEVICE must be 'cpu' or 'cuda', got {DEVICE!r}")
if DEVICE == "cuda" and not torch.cuda.is_available():
    raise pytest.UsageError("FASTKERNELS_BENCH_DEVICE=cuda, but torch sees no CUDA device")
# Providers that take NumPy arrays (CPU only): skipped on the cuda device.
CPU_ONLY_PROVIDERS = frozenset({"sklearn"})


def inputs(n, m, d, t=None, seed=0):
    """float32 points (and right-hand sides) with unit-scale squared distances ~ 2 D.

    Drawn on the CPU (the same numbers on every device), then moved to :data:`DEVICE`.
    """
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, d, generator=g).to(DEVICE)
    x2 = torch.randn(m, d, generator=g).to(DEVICE)
    v = None if t is None else torch.randn(m, t, generator=g).to(DEVICE)
    return x1, x2, v


def _synchronized(fn):
    def run(*args, **kwargs):
        out = fn(*args, **kwargs)
        torch.cuda.synchronize()
        return out

    return run


@pytest.fixture
def benchmark(benchmark):
    """pytest-benchmark's ``benchmark``; on the cuda device every timed call synchronizes."""
    if DEVICE == "cuda":
        from pytest_benchmark.fixture import BenchmarkFixture

        class SynchronizedBenchmark(BenchmarkFixture):
            def __call__(self, function_to_benchmark, *args, **kwargs):
                return super().__call__(_synchronized(function_to_benchmark), *args, **kwargs)

            def pedantic(self, target, *args, **kwargs):
                return super().pedantic(_synchronized(target), *args, **kwargs)

        # The plugin insists on its own fixture object: same object, subclass behaviour.
        benchmark.__class__ = SynchronizedBenchmark
    return benchmark


def pytest_collection_modifyitems(config, items):
    if DEVICE != "cuda":
        return
    here = os.path.dirname(__file__)
    skip = pytest.mark.skip(reason="NumPy provider: CPU only (FASTKERNELS_BENCH_DEVICE=cuda)")
    for item in items:
        params = getattr(getattr(item, "callspec", None), "params", {})
        if str(item.path).startswith(here) and params.get("provider") in CPU_ONLY_PROVIDERS:
            item.add_marker(skip)


def pykeops_or_skip():
    """pykeops.torch, or a clean skip when KeOps is not installed / cannot compile here.

    KeOps compiles its CPU formulas with g++ and the CXXFLAGS of the environment; the benchmark
    gives it its best configuration on this machine (-march=native -ffast-math) unless CXXFLAGS
    is already set.
    """
    os.environ.setdefault("CXXFLAGS", "-march=native -ffast-math")
    try:
        import pykeops.torch as pkt
    except Exception as exc:  # ImportError, or a broken install failing at import
        pytest.skip(f"pykeops unavailable: {type(exc).__name__}: {exc}")
    return pkt


def pytest_terminal_summary(terminalreporter, exitstatus, config):
    """A rate table beside pytest-benchmark's times: GFLOP/s (and steps/s where a benchmark
    records ``steps``) at the median time, for every benchmark whose ``extra_info`` has
    ``flop``, with each provider's speed-up over the others of its group."""
    session = getattr(config, "_benchmarksession", None)
    rows = [
        b for b in getattr(session, "benchmarks", []) or []
        if b.extra_info.get("flop") and getattr(b, "stats", None) is not None
    ]  # fmt: skip
    if not rows:
        return
    tr = terminalreporter
    tr.section("rates at the median time")
    groups: dict[str, list] = {}
    for b in rows:
        groups.setdefault(b.group or "", []).append(b)
    for group, members in groups.items():
        tr.write_line(group)
        best = min(b.stats.median for b in members)
        for b in sorted(members, key=lambda b: b.stats.median):
            median = b.stats.median
            line = (
                f"  {b.name:<60} {median * 1e3:10.3f} ms  "
                f"{b.extra_info['flop'] / median / 1e9:8.1f} GFLOP/s"
            )
            if b.extra_info.get("steps"):
                line += f"  {b.extra_info['steps'] / median:10.0f} steps/s"
            line += f"  {median / best:6.2f}x the fastest"
            tr.write_line(line)
