"""Benchmark sizes: FASTKERNELS_BENCH_SIZE=small (default; CI runs it once with
--benchmark-disable as a smoke test) or full (the workloads of the performance targets)."""

import os

import pytest
import torch

SIZE = os.environ.get("FASTKERNELS_BENCH_SIZE", "small")
if SIZE not in ("small", "full"):
    raise pytest.UsageError(f"FASTKERNELS_BENCH_SIZE must be 'small' or 'full', got {SIZE!r}")


def inputs(n, m, d, t=None, seed=0):
    """float32 points (and right-hand sides) with unit-scale squared distances ~ 2 D."""
    g = torch.Generator().manual_seed(seed)
    x1 = torch.randn(n, d, generator=g)
    x2 = torch.randn(m, d, generator=g)
    v = None if t is None else torch.randn(m, t, generator=g)
    return x1, x2, v


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
