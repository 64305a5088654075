"""The ``fastkernels::kernel_mv`` op: ``K(x1, x2) @ v`` without storing the N x M matrix K.

Implementations: the reference (the op body: row blocks of the Gram from
:mod:`fastkernels.kernels.formulas`, at most :data:`BLOCK_ENTRIES` kernel entries at a time);
C++ for CPU tensors (``csrc/kernel_mv.cpp``: one tile of K per thread, multiplied by its slice of
v while it is in cache); Triton for CUDA tensors (:mod:`fastkernels.ops._triton.kernel_mv`).
The wrapper :func:`fastkernels.ops.kernel_mv` also offers ``backend="keops"`` (a KeOps
reduction, forward only, outside this op). The backward is memory-free too:
``dL/dv = K^T g`` is another ``kernel_mv`` with the roles of x1 and x2 swapped, and ``dL/dx1``,
``dL/dx2`` are accumulated over row blocks with ``dL/dK = g v^T`` formed one block at a time.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import formulas as F
from ._common import (
    center_inputs,
    check_finite,
    check_points,
    check_tensors,
    gram_vjp_terms,
    resolve_offset,
    unpack_params,
)

__all__ = ["kernel_mv", "kernel_mv_reference", "BLOCK_ENTRIES"]

OP = "fastkernels::kernel_mv"
# The device implementations registered on this op's name (the body below serves every
# other device): C++ by TORCH_LIBRARY_IMPL when fastkernels._C loads, and the Triton
# launcher of this name in fastkernels.ops._triton when triton imports.
IMPLEMENTATIONS = {"cpu": "csrc/kernel_mv.cpp", "cuda": "kernel_mv_triton"}

# Kernel entries per row block of the reference and of the backward (8 MiB in float32); the
# backward holds a few such blocks (s, dL/dK, derivatives) at once.
BLOCK_ENTRIES = 1 << 21


def _row_block(n: int, m: int) -> int:
    return max(1, min(n, BLOCK_ENTRIES // m))


def kernel_mv_reference(
    x1: Tensor,
    x2: Tensor,
    v: Tensor,
    kernel: str,
    params: list[float],
    diag_offset: int | None = None,
) -> Tensor:
    """The readable torch reference of :func:`kernel_mv` (any device, float32 / float64).

    Same parameters and result as :func:`kernel_mv`; row blocks of K hold at most
    :data:`BLOCK_ENTRIES` entries.
    """
    check_tensors(OP, x1, x2, v, diag_offset=diag_offset)
    kw = unpack_params(OP, kernel, params)
    check_points(OP, x1=x1, x2=x2)
    check_finite(OP, v=v)
    offset = resolve_offset(x1, x2, diag_offset)
    formula = F.FORMULAS[kernel]
    if kernel in F.TRANSLATION_INVARIANT:
        # Shift once here rather than in every row block (formulas.center): one common point
        # for all blocks, and O((N + M) D) extra work instead of O(M D) per block.
        x1, x2 = F.center(x1, x2)
        kw = {**kw, "centre": False}
    n, m = x1.shape[0], x2.shape[0]
    b = _row_block(n, m)
    out = x1.new_empty((n, v.shape[1]))
    for i0 in range(0, n, b):
        i1 = min(n, i0 + b)
        # A row block keeps its self-pairs on the diagonal shifted by its first row.
        off = None if offset is None else offset + i0
        out[i0:i1] = formula(x1[i0:i1], x2, diag_offset=off, **kw) @ v
    return out


@torch.library.custom_op(OP, mutates_args=())
def kernel_mv(
    x1: Tensor,
    x2: Tensor,
    v: Tensor,
    kernel: str,
    params: list[float],
    diag_offset: int | None,
) -> Tensor:
    """Memory-free kernel product ``K(x1, x2) @ v``.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    v : Tensor, shape (M, T), same dtype and device
    kernel : str
        A kernel name, as for :func:`~fastkernels.ops.gram.gram`.
    params : list of float
        The kernel's packed parameters (table in :mod:`fastkernels.ops._common`).
    diag_offset : int or None
        Self-pair alignment, as for :func:`~fastkernels.ops.gram.gram`.

    Returns
    -------
    Tensor, shape (N, T), dtype and device of the inputs

    Raises
    ------
    TypeError, ValueError
        Bad input; the message names the op, the argument and what was expected. Also
        ValueError for finite entries of x1 / x2 so large that squared norms overflow the dtype
        (``|x| > sqrt(finfo.max / (16 D))``: rescale the inputs or use float64).

    Notes
    -----
    The translation-invariant kernels are evaluated on shifted inputs, as in
    :func:`~fastkernels.ops.gram.gram`.
    """
    return kernel_mv_reference(x1, x2, v, kernel, params, diag_offset)


@kernel_mv.register_fake
def _(x1, x2, v, kernel, params, diag_offset):
    check_tensors(OP, x1, x2, v, diag_offset=diag_offset)
    unpack_params(OP, kernel, params)
    return x1.new_empty((x1.shape[0], v.shape[1]))


def _setup_context(ctx, inputs, output):
    x1, x2, v, kernel, params, diag_offset = inputs
    ctx.save_for_backward(x1, x2, v)
    ctx.kernel, ctx.params = kernel, list(params)
    ctx.offset = resolve_offset(x1, x2, diag_offset)


def _backward(ctx, grad):
    x1, x2, v = ctx.saved_tensors
    kernel, params, offset = ctx.kernel, ctx.params, ctx.offset
    need1, need2, needv = ctx.needs_input_grad[:3]
    gv = g1 = g2 = None
    if needv:
        # K^T g = K(x2, x1) g: row j of x2 is row j - offset of x1.
        back = None if offset is None else -offset
        gv = torch.ops.fastkernels.kernel_mv(x2, x1, grad, kernel, params, back)
    if need1 or need2:
        kw = unpack_params(OP, kernel, params)
        # Shifted inputs for the translation-invariant kernels (see gram_vjp_terms): one common
        # shift for every row block. The gradients are those of the original points.
        x1, x2 = center_inputs(kernel, x1, x2)
        n, m = x1.shape[0], x2.shape[0]
        b = _row_block(n, m)
        g1 = torch.empty_like(x1) if need1 else None
        g2 = torch.zeros_like(x2) if need2 else None
        for i0 in range(0, n, b):
            i1 = min(n, i0 + b)
            xb = x1[i0:i1]
            w = grad[i0:i1] @ v.mT  # dL/dK of this row block only
            off = None if offset is None else offset + i0
            gs, gn1, gn2 = gram_vjp_terms(xb, x2, kernel, kw, off, w)
            if need1:
                g1[i0:i1] = gs @ x2 + 2.0 * gn1[:, None] * xb
            if need2:
                g2 = g2 + gs.mT @ xb + 2.0 * gn2[:, None] * x2
    return g1, g2, gv, None, None, None


kernel_mv.register_autograd(_backward, setup_context=_setup_context)
