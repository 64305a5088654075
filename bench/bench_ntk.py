"""Empirical NTK: structured factors + fused ntk_gram against torch.func, time and peak memory.

Groups (one workload each; providers side by side in one run):

- ``ntk_trace``: the trace NTK of a 3resnet (hidden weights) between N x N points:
  fastkernels (per-layer factors, then ``fastkernels::ntk_gram``) against torch.func
  vmap(jacrev) contraction (per-sample Jacobians J, then J J^T).
- ``ntk_mv``: K @ V for 16 right-hand sides: fastkernels (factors, then ``fastkernels::ntk_mv``)
  against torch.func NTK-vector products (u = J^T v by vjp, then J u by jvp; no Jacobian).
- ``ntk_gram_large``: the fused op on given factors against the torch.mm calls it needs for the
  factor Gram matrices (A A^T and B B^T per layer), the lower bound of any unfused version.

Peak memory above the inputs (resident set, reset before each measurement through
/proc/self/clear_refs) is recorded in extra_info["peak_mb"]; FLOP in extra_info["flop"].
Sizes: FASTKERNELS_BENCH_SIZE=small (default, CI smoke run) or full (the issue's workloads:
d = 100, width 512, 2000 x 2000; ntk_gram 20000 x 20000).
"""

from __future__ import annotations

import os

import pytest
import torch
from torch.func import functional_call, jacrev, jvp, vjp, vmap

from fastkernels._resources import measure
from fastkernels.models import StackedNet
from fastkernels.ntk import empirical_ntk
from fastkernels.ntk.empirical import ntk_factors
from fastkernels.ops.ntk_gram import ntk_gram
from fastkernels.ops.ntk_mv import ntk_mv

SIZE = os.environ.get("FASTKERNELS_BENCH_SIZE", "small")
# (N, d, width, k) for ntk_trace; (N, width, k) for ntk_gram_large
TRACE = {"small": (200, 20, 64, 1), "full": (2000, 100, 512, 1)}[SIZE]
LARGE = {"small": (1500, 64, 1), "full": (20000, 512, 1)}[SIZE]


def _peak_rss_mb(fn) -> tuple[object, float]:
    """Run fn once; return its result and the peak resident memory above the start, in MiB."""
    out, _, peak = measure(fn)
    return out, peak


def _net():
    n, d, m, k = TRACE
    g = torch.Generator().manual_seed(0)
    net = StackedNet("3resnet", d, m, k, generator=g)
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(1))
    return net, x


def _functional(net):
    names = net.parameter_names("hidden")
    params = {n: getattr(net, n).detach()[0:1] for n in names}
    rest = {
        n: t.detach()[0:1]
        for n, t in list(net.named_parameters()) + list(net.named_buffers())
        if n not in params
    }

    def f(p, x):  # one sample -> (k,)
        return functional_call(net, {**rest, **p}, (x[None],))[0, 0]

    return f, params


def ours(net, x):
    return empirical_ntk(net, x, mode="trace", trainable="hidden")


def func_jacobian(net, x):
    f, params = _functional(net)
    J = vmap(jacrev(f), in_dims=(None, 0))(params, x)
    J = torch.cat([j.flatten(2) for j in J.values()], dim=2)  # (N, k, P)
    return torch.einsum("irp,jrp->ij", J, J)


def func_ntk_vp(net, x, V):
    """K @ V with torch.func NTK-vector products: u = J^T v (vjp), then J u (jvp), per column.

    The Jacobian is never formed; memory is one forward/backward per column in flight.
    """
    names = net.parameter_names("hidden")
    params = {n: getattr(net, n).detach()[0:1] for n in names}
    rest = {
        n: t.detach()[0:1]
        for n, t in list(net.named_parameters()) + list(net.named_buffers())
        if n not in params
    }

    def batched(p):  # the whole batch at once: parameter gradients are summed, never per sample
        return functional_call(net, {**rest, **p}, (x,))[0]  # (N, k)

    _, pullback = vjp(batched, params)

    def column(v):  # v: (N, k) -> (N, k)
        (u,) = pullback(v)
        return jvp(batched, (params,), (u,))[1]

    return vmap(column, in_dims=1, out_dims=1)(V)  # V: (N, T, k) -> (N, T, k)


def ours_mv(net, x, V):
    f = ntk_factors(net, x)
    a, b = [fa for fa, _ in f], [fb.flatten(1) for _, fb in f]
    return ntk_mv(a, b, a, b, V[:, :, 0])


PROVIDERS = {"fastkernels": ours, "torch.func jacrev": func_jacobian}


@pytest.mark.parametrize("provider", list(PROVIDERS))
def test_ntk_trace(benchmark, provider):
    n, d, m, k = TRACE
    net, x = _net()
    fn = PROVIDERS[provider]
    ref = ours(net, x) if provider != "fastkernels" else None
    K, peak = _peak_rss_mb(lambda: fn(net, x))
    if ref is not None:
        torch.testing.assert_close(K, ref, rtol=1e-4, atol=1e-4 * float(ref.abs().max()))
    benchmark.group = f"ntk_trace 3resnet N={n} d={d} width={m} k={k}"
    n_params = m * d + m + m * m + m
    benchmark.extra_info.update(peak_mb=peak, n=n, d=d, width=m, k=k, params=n_params)
    benchmark.pedantic(fn, args=(net, x), rounds=3 if SIZE == "small" else 1, iterations=1)


@pytest.mark.parametrize("provider", ["fastkernels ntk_mv", "torch.func vjp+jvp"])
def test_ntk_mv(benchmark, provider):
    n, d, m, k = TRACE
    net, x = _net()
    V = torch.randn(n, 16, k, generator=torch.Generator().manual_seed(3))
    fn = ours_mv if provider.startswith("fastkernels") else func_ntk_vp
    out, peak = _peak_rss_mb(lambda: fn(net, x, V))
    want = ours(net, x) @ V[:, :, 0]
    got = out if out.dim() == 2 else out[:, :, 0]
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-4 * float(want.abs().max()))
    benchmark.group = f"ntk_mv 3resnet N={n} d={d} width={m} k={k} T=16"
    benchmark.extra_info.update(peak_mb=peak, n=n, d=d, width=m, k=k, t=16)
    benchmark.pedantic(fn, args=(net, x, V), rounds=3 if SIZE == "small" else 1, iterations=1)


def _large_factors():
    n, m, k = LARGE
    g = torch.Generator().manual_seed(2)
    d = 100
    a = [torch.randn(n, d + 1, generator=g), torch.randn(n, m + 1, generator=g)]
    b = [torch.randn(n, k * m, generator=g), torch.randn(n, k * m, generator=g)]
    return a, b


def _factor_grams(a, b):
    # The GEMMs any implementation needs: each layer's two Gram matrices, one at a time.
    for fa, fb in zip(a, b):
        ga = torch.mm(fa, fa.T)
        gb = torch.mm(fb, fb.T)
        del ga, gb


@pytest.mark.parametrize(
    "provider",
    ["fastkernels ntk_gram", "fastkernels ntk_gram (no symmetry)", "torch.mm factor grams"],
)
def test_ntk_gram_large(benchmark, provider):
    n, m, k = LARGE
    a, b = _large_factors()
    if provider == "fastkernels ntk_gram":
        # The same points on both sides (a training Gram): half the tiles, mirrored.
        fn = lambda: ntk_gram(a, b, a, b)  # noqa: E731
    elif provider.startswith("fastkernels"):
        # Copies on the right: the op cannot see that the points are the same, so every tile
        # is computed, as for a test-vs-train block of this size.
        a2, b2 = [t.clone() for t in a], [t.clone() for t in b]
        fn = lambda: ntk_gram(a, b, a2, b2)  # noqa: E731
    else:
        fn = lambda: _factor_grams(a, b)  # noqa: E731
    _, peak = _peak_rss_mb(fn)
    flop = 2 * n * n * sum(t.shape[1] for t in a + b)
    benchmark.group = f"ntk_gram {n}x{n} width={m} k={k}"
    benchmark.extra_info.update(peak_mb=peak, flop=flop, n=n)
    benchmark.pedantic(fn, rounds=3 if SIZE == "small" else 1, iterations=1)


def test_factors_are_small():
    # The structured path's memory is O(N x widths): check it on the trace workload.
    net, x = _net()
    f = ntk_factors(net, x)
    floats = sum(a.numel() + b.numel() for a, b in f)
    assert floats < 10 * x.shape[0] * (net.width + 1) * (net.out_features + 1) * 2
