"""The ``fastkernels::ntk_mv`` op: structured empirical NTK times V, K never stored.

out = K V with K = sum_l (A1_l A2_l^T) * (B1_l B2_l^T), computed tile by tile: each R x M tile
of K is formed, multiplied by V and dropped, so the extra memory is three tiles whatever N is.
The body is the torch reference (any device); CPU tensors go to the C++ kernel
``csrc/ntk_mv.cpp`` when the extension is built and CUDA tensors to Triton
(:data:`IMPLEMENTATIONS`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ntk_common import (
    buffers,
    check_factors,
    check_finite,
    same_factors,
    symmetric_tile_rows,
    tile_kernel,
    tile_rows,
    view,
    weighted_factor_grads,
)

__all__ = ["ntk_mv", "ntk_mv_reference"]

OP = "fastkernels::ntk_mv"
# The device implementations registered on this op's name (the body below serves every
# other device): C++ by TORCH_LIBRARY_IMPL when fastkernels._C loads, and the Triton
# launcher of this name in fastkernels.ops._triton when triton imports.
IMPLEMENTATIONS = {"cpu": "csrc/ntk_mv.cpp", "cuda": "ntk_mv_triton"}


def ntk_mv_reference(
    a1: list[Tensor], b1: list[Tensor], a2: list[Tensor], b2: list[Tensor], v: Tensor
) -> Tensor:
    """The readable torch reference of :func:`ntk_mv` (any device, float32 / float64).

    Same parameters and result as :func:`ntk_mv`; validates its input the same way.
    """
    check_factors(OP, a1, b1, a2, b2, v)
    sym = same_factors(a1, b1, a2, b2)
    check_finite(OP, a1=a1, b1=b1)
    if not sym:
        check_finite(OP, a2=a2, b2=b2)
    check_finite(OP, v=v)
    n, m = a1[0].shape[0], a2[0].shape[0]
    out = v.new_zeros((n, v.shape[1]))
    step = symmetric_tile_rows(n) if sym else tile_rows(n, m)
    k_buf, p, q = buffers(out, step, m, 3)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        # Symmetric: the tile's columns from the diagonal on; the part right of the diagonal
        # block also stands for its transpose below it, which multiplies v[r0:r1].
        c0 = r0 if sym else 0
        shape = (r1 - r0, m - c0)
        k = view(k_buf, *shape)
        tile_kernel(a1, b1, a2, b2, r0, r1, k, view(p, *shape), view(q, *shape), c0)
        out[r0:r1] += k @ v[c0:]
        if sym:
            out[r1:] += k[:, r1 - r0 :].mT @ v[r0:r1]
    return out


@torch.library.custom_op(OP, mutates_args=())
def ntk_mv(
    a1: list[Tensor], b1: list[Tensor], a2: list[Tensor], b2: list[Tensor], v: Tensor
) -> Tensor:
    """K @ v for the structured NTK block K (see :func:`fastkernels.ops.ntk_gram`).

    Parameters
    ----------
    a1, b1 : list of Tensor, shapes (N, p_l), (N, q_l)
    a2, b2 : list of Tensor, shapes (M, p_l), (M, q_l)
        When they are the same memory as a1, b1 (same points), K is symmetric and only its
        tiles on and above the diagonal are formed.
    v : Tensor, shape (M, T)

    Returns
    -------
    Tensor, shape (N, T)
    """
    return ntk_mv_reference(a1, b1, a2, b2, v)


@ntk_mv.register_fake
def _(a1, b1, a2, b2, v):
    check_factors(OP, a1, b1, a2, b2, v)
    return v.new_empty((a1[0].shape[0], v.shape[1]))


def _setup_context(ctx, inputs, output):
    a1, b1, a2, b2, v = inputs
    ctx.n_layers = len(a1)
    ctx.save_for_backward(*a1, *b1, *a2, *b2, v)


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    L = ctx.n_layers
    a1, b1, a2, b2 = (list(saved[i * L : (i + 1) * L]) for i in range(4))
    v = saved[4 * L]
    # d/dv: K^T grad, i.e. the same op with the two point sets swapped.
    grad_v = ntk_mv(a2, b2, a1, b1, grad)
    grads = weighted_factor_grads(a1, b1, a2, b2, lambda r0, r1: grad[r0:r1] @ v.T)
    return (*grads, grad_v)


ntk_mv.register_autograd(_backward, setup_context=_setup_context)
