"""The C++ kernels with several threads: the same results as one thread, autograd included.

The other ops tests pin one thread (see conftest); these run the OpenMP paths, where worker
threads do not inherit the calling thread's dispatch state, with inputs that require grad and
sizes of several tiles.
"""

from __future__ import annotations

import pytest
import torch
from helpers import randn

from fastkernels import ops

pytestmark = pytest.mark.skipif(not ops.HAS_CPP, reason="the C++ extension is not built")


def _run(fn, inputs, threads):
    torch.set_num_threads(threads)
    leaves = [t.detach().clone().requires_grad_(True) for t in inputs]
    out = fn(*leaves)
    grads = torch.autograd.grad((out * torch.cos(out)).sum(), leaves)
    return out.detach(), grads


def _factors(n, widths, seed):
    return [randn(n, p, seed=seed + i) for i, p in enumerate(widths)]


def _mats(*shapes, seed):
    return lambda: [randn(*shape, seed=seed + i) for i, shape in enumerate(shapes)]


X_PAIR = ((600, 9), (530, 9))
FACTORS = ((600, 7), (600, 5), (530, 7), (530, 5))
CASES = {
    "gram-rbf": (lambda x1, x2: ops.gram(x1, x2, "rbf", [0.05]), _mats(*X_PAIR, seed=1)),
    "gram-ntk": (lambda x1, x2: ops.gram(x1, x2, "ntk", [1, 0, 0]), _mats(*X_PAIR, seed=3)),
    "kernel_mv-rbf": (
        lambda x1, x2, v: ops.kernel_mv(x1, x2, v, "rbf", [0.05]),
        _mats(*X_PAIR, (530, 3), seed=5),
    ),
    "ntk_gram": (
        lambda a1, b1, a2, b2: ops.ntk_gram([a1], [b1], [a2], [b2]),
        _mats(*FACTORS, seed=8),
    ),
    "ntk_mv": (
        lambda a1, b1, a2, b2, v: ops.ntk_mv([a1], [b1], [a2], [b2], v),
        _mats(*FACTORS, (530, 2), seed=12),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_threads_agree_with_one_thread_including_autograd(case):
    fn, make = CASES[case]
    inputs = make()
    out1, g1 = _run(fn, inputs, 1)
    for threads in (2, 3):
        out, g = _run(fn, inputs, threads)
        torch.testing.assert_close(out, out1, rtol=1e-12, atol=1e-12)
        for a, b in zip(g, g1):
            torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("threads", [2, 3])
def test_symmetric_ntk_gram_with_threads_is_exactly_symmetric(threads):
    torch.set_num_threads(threads)
    a = _factors(700, (9, 33), seed=20)
    b = _factors(700, (17, 4), seed=30)
    K = ops.ntk_gram(a, b, a, b)
    assert torch.equal(K, K.T)
    ref = ops.ntk_gram_reference(a, b, [t.clone() for t in a], [t.clone() for t in b])
    torch.testing.assert_close(K, ref, rtol=1e-12, atol=1e-12)
