"""Inputs of the stacked-network op tests (test_resnet_fwd / _bwd / _sgd): random stacked
weights of every architecture and the per-member float64 forward they are checked against."""

import torch
from helpers import F64, gen, member_forward

# (op arch, StackedNet arch, block)
ARCHS = [
    ("3resnet", "3resnet", "full"),
    ("3layer", "3layer", "full"),
    ("2layer", "2layer", "full"),
    ("bottleneck", "3resnet", "bottleneck"),
]
ARCH_IDS = [a for a, _, _ in ARCHS]
# (E, B, d, m, k): 1 x 1 everywhere, odd sizes, and the benchmark's shape (d 30, m 256, k 8,
# batch 50: the GEMMs split across threads there).
SIZES = [(1, 1, 1, 1, 1), (3, 7, 5, 13, 3), (2, 50, 30, 256, 8), (5, 9, 17, 33, 1)]
# For the Triton interpreter: 1 x 1 and sizes over its 16-wide tiles in every direction.
SMALL = [(1, 1, 1, 1, 1), (2, 19, 5, 33, 3)]


def weights(arch: str, E, d, m, k, dtype=F64, seed=0, scale=0.4):
    """Random (non-zero) weights W, b1, U, b2, A of the op arch (None where it has none)."""
    g = gen(seed)

    def r(*shape):
        return (torch.randn(*shape, generator=g, dtype=F64) * scale).to(dtype)

    W, b1, A = r(E, m, d), r(E, m), r(E, k, m)
    U = None if arch == "2layer" else r(E, m, k + 1) if arch == "bottleneck" else r(E, m, m)
    b2 = r(E, m) if arch in ("3resnet", "3layer") else None
    return W, b1, U, b2, A


def member_out(arch, W, b1, U, b2, A, x, e):
    """Member e's output (B, k) from the hand-written forward of tests/helpers.py."""
    p = {"W": W[e], "b1": b1[e], "A": A[e]}
    net_arch, block = {a: (n, b) for a, n, b in ARCHS}[arch]
    if arch == "bottleneck":
        p.update(W0=torch.zeros_like(W[e]), V0=torch.zeros_like(U[e]), V=U[e])
    elif U is not None:
        p.update(U=U[e], b2=b2[e])
    return member_forward(p, net_arch, block, x[e])
