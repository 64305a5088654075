"""The ``fastkernels::ntk_gram`` op: a structured empirical NTK block from per-layer factors.

K = sum_l (A1_l A2_l^T) * (B1_l B2_l^T), N x M, computed tile by tile (see
:mod:`fastkernels.ops._ntk_common`): the Hadamard products and the layer sum ride on the GEMMs
and no per-layer N x M intermediate is allocated. The body is the torch reference (any device);
CPU tensors go to the C++ kernel ``csrc/ntk_gram.cpp`` when the extension is built and CUDA
tensors to Triton (:data:`IMPLEMENTATIONS`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._ntk_common import (
    buffers,
    check_factors,
    check_finite,
    mirror_upper,
    same_factors,
    symmetric_tile_rows,
    tile_kernel,
    tile_rows,
    view,
    weighted_factor_grads,
)

__all__ = ["ntk_gram", "ntk_gram_reference"]

OP = "fastkernels::ntk_gram"
# The device implementations registered on this op's name (the body below serves every
# other device): C++ by TORCH_LIBRARY_IMPL when fastkernels._C loads, and the Triton
# launcher of this name in fastkernels.ops._triton when triton imports.
IMPLEMENTATIONS = {"cpu": "csrc/ntk_gram.cpp", "cuda": "ntk_gram_triton"}


def ntk_gram_reference(a1: list[Tensor], b1: list[Tensor], a2: list[Tensor], b2: list[Tensor]):
    """The readable torch reference of :func:`ntk_gram` (any device, float32 / float64).

    Same parameters and result as :func:`ntk_gram`; validates its input the same way.
    """
    check_factors(OP, a1, b1, a2, b2)
    sym = same_factors(a1, b1, a2, b2)
    check_finite(OP, a1=a1, b1=b1)
    if not sym:
        check_finite(OP, a2=a2, b2=b2)
    n, m = a1[0].shape[0], a2[0].shape[0]
    out = a1[0].new_empty((n, m))
    step = symmetric_tile_rows(n) if sym else tile_rows(n, m)
    p, q = buffers(out, step, m, 2)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        # Symmetric: columns from the diagonal on, then mirrored (about half the GEMM work).
        c0 = r0 if sym else 0
        shape = (r1 - r0, m - c0)
        tile_kernel(a1, b1, a2, b2, r0, r1, out[r0:r1, c0:], view(p, *shape), view(q, *shape), c0)
        if sym:
            mirror_upper(out, r0, r1)
    return out


@torch.library.custom_op(OP, mutates_args=())
def ntk_gram(a1: list[Tensor], b1: list[Tensor], a2: list[Tensor], b2: list[Tensor]) -> Tensor:
    """NTK block K = sum_l (a1[l] a2[l]^T) * (b1[l] b2[l]^T).

    Parameters
    ----------
    a1, b1 : list of Tensor, shapes (N, p_l) and (N, q_l)
        Per-layer inputs and output sensitivities of the first set of points.
    a2, b2 : list of Tensor, shapes (M, p_l) and (M, q_l)
        The same for the second set. When every a2[l] / b2[l] is the same tensor as a1[l] /
        b1[l] (or a view of the same memory with the same shape and strides), K is symmetric and
        only half of it is computed on CPU (exactly symmetric result; CUDA: all of it).

    Returns
    -------
    Tensor, shape (N, M), the factors' dtype and device.
    """
    return ntk_gram_reference(a1, b1, a2, b2)


@ntk_gram.register_fake
def _(a1, b1, a2, b2):
    check_factors(OP, a1, b1, a2, b2)
    return a1[0].new_empty((a1[0].shape[0], a2[0].shape[0]))


def _setup_context(ctx, inputs, output):
    a1, b1, a2, b2 = inputs
    ctx.n_layers = len(a1)
    ctx.save_for_backward(*a1, *b1, *a2, *b2)


def _backward(ctx, grad):
    saved = ctx.saved_tensors
    L = ctx.n_layers
    a1, b1, a2, b2 = (list(saved[i * L : (i + 1) * L]) for i in range(4))
    return weighted_factor_grads(a1, b1, a2, b2, lambda r0, r1: grad[r0:r1])


ntk_gram.register_autograd(_backward, setup_context=_setup_context)
