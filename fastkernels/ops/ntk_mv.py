"""The ``fastkernels::ntk_mv`` op: structured empirical NTK times V, K never stored.

out = K V with K = sum_l (A1_l A2_l^T) * (B1_l B2_l^T), computed tile by tile: each R x M tile
of K is formed, multiplied by V and dropped, so the extra memory is two tiles whatever N is.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ntk_common import check_factors, check_finite, tile_kernel, tile_rows, weighted_factor_grads

__all__ = ["ntk_mv"]

OP = "fastkernels::ntk_mv"


@torch.library.custom_op(OP, mutates_args=())
def ntk_mv(
    a1: list[Tensor], b1: list[Tensor], a2: list[Tensor], b2: list[Tensor], v: Tensor
) -> Tensor:
    """K @ v for the structured NTK block K (see :func:`fastkernels.ops.ntk_gram`).

    Parameters
    ----------
    a1, b1 : list of Tensor, shapes (N, p_l), (N, q_l)
    a2, b2 : list of Tensor, shapes (M, p_l), (M, q_l)
    v : Tensor, shape (M, T)

    Returns
    -------
    Tensor, shape (N, T)
    """
    check_factors(OP, a1, b1, a2, b2, v)
    check_finite(OP, a1=a1, b1=b1, a2=a2, b2=b2, v=[v])
    n, m = a1[0].shape[0], a2[0].shape[0]
    out = v.new_empty((n, v.shape[1]))
    step = tile_rows(n, m)
    tile = a1[0].new_empty((step, m))
    scratch = a1[0].new_empty((step, m))
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        k = tile_kernel(a1, b1, a2, b2, r0, r1, tile[: r1 - r0], scratch[: r1 - r0])
        torch.mm(k, v, out=out[r0:r1])
    return out


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
