"""The ``fastkernels::gram`` op: the N x M kernel matrix ``K[i, j] = k(x1_i, x2_j)``.

Implementations (:data:`IMPLEMENTATIONS`): the reference (the op body below:
:mod:`fastkernels.ops.formulas`, any device, the test oracle); C++ for CPU tensors
(``csrc/gram.cpp``); Triton for CUDA tensors (:mod:`fastkernels.ops._triton.gram`). Autograd is
the same for every implementation (:func:`~fastkernels.ops._common.gram_vjp_terms`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import formulas as F
from ._common import (
    center_inputs,
    check_points,
    check_tensors,
    gram_vjp_terms,
    resolve_offset,
    unpack_params,
)

__all__ = ["gram", "gram_reference"]

OP = "fastkernels::gram"
# The device implementations registered on this op's name (the body below serves every
# other device): C++ by TORCH_LIBRARY_IMPL when fastkernels._C loads, and the Triton
# launcher of this name in fastkernels.ops._triton when triton imports.
IMPLEMENTATIONS = {"cpu": "csrc/gram.cpp", "cuda": "gram_triton"}


def gram_reference(
    x1: Tensor, x2: Tensor, kernel: str, params: list[float], diag_offset: int | None = None
) -> Tensor:
    """The readable torch reference of :func:`gram` (any device, float32 / float64).

    Same parameters and result as :func:`gram`; validates its input the same way.
    """
    check_tensors(OP, x1, x2, diag_offset=diag_offset)
    kw = unpack_params(OP, kernel, params)
    check_points(OP, x1=x1, x2=x2)
    # The translation-invariant formulas shift their inputs themselves (formulas.center).
    return F.FORMULAS[kernel](x1, x2, diag_offset=resolve_offset(x1, x2, diag_offset), **kw)


@torch.library.custom_op(OP, mutates_args=())
def gram(
    x1: Tensor, x2: Tensor, kernel: str, params: list[float], diag_offset: int | None
) -> Tensor:
    """Gram matrix ``K[i, j] = k(x1_i, x2_j)`` of a registry kernel.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    kernel : str
        ``"rbf"``, ``"laplace"``, ``"matern"``, ``"polynomial"``, ``"linear"``, ``"arccos"``,
        ``"nngp"`` or ``"ntk"``.
    params : list of float
        The kernel's packed parameters (table in :mod:`fastkernels.ops._common`).
    diag_offset : int or None
        Row ``i`` of ``x1`` is row ``i + diag_offset`` of ``x2`` (exact self-pairs); None: none,
        unless ``x1`` and ``x2`` are the same tensor.

    Returns
    -------
    Tensor, shape (N, M), dtype and device of the inputs

    Raises
    ------
    TypeError, ValueError
        Bad input; the message names the op, the argument and what was expected. Also
        ValueError for finite entries so large that squared norms overflow the dtype
        (``|x| > sqrt(finfo.max / (16 D))``: rescale the inputs or use float64).

    Notes
    -----
    The translation-invariant kernels (rbf, laplace, matern) are evaluated on inputs shifted by
    the mean of x2's rows, in every implementation and in the backward: float32 keeps ~1e-7
    accuracy for data far from the origin, where ``||x||^2 + ||y||^2 - 2 <x, y>`` would cancel.
    """
    return gram_reference(x1, x2, kernel, params, diag_offset)


@gram.register_fake
def _(x1, x2, kernel, params, diag_offset):
    check_tensors(OP, x1, x2, diag_offset=diag_offset)
    unpack_params(OP, kernel, params)
    return x1.new_empty((x1.shape[0], x2.shape[0]))


def _setup_context(ctx, inputs, output):
    x1, x2, kernel, params, diag_offset = inputs
    ctx.save_for_backward(x1, x2)
    ctx.kernel, ctx.params = kernel, list(params)
    ctx.offset = resolve_offset(x1, x2, diag_offset)


def gram_backward(x1, x2, kernel, params, offset, grad, needs=(True, True)):
    """dL/dx1 (N, D) and dL/dx2 (M, D) from dL/dK (N, M); None where not needed."""
    kw = unpack_params(OP, kernel, params)
    # Shifted inputs for the translation-invariant kernels: the distances and the products
    # below cancel otherwise; their gradients are the same for the shifted points.
    x1, x2 = center_inputs(kernel, x1, x2)
    gs, gn1, gn2 = gram_vjp_terms(x1, x2, kernel, kw, offset, grad)
    g1 = gs @ x2 + 2.0 * gn1[:, None] * x1 if needs[0] else None
    g2 = gs.mT @ x1 + 2.0 * gn2[:, None] * x2 if needs[1] else None
    return g1, g2


def _backward(ctx, grad):
    x1, x2 = ctx.saved_tensors
    g1, g2 = gram_backward(
        x1, x2, ctx.kernel, ctx.params, ctx.offset, grad, ctx.needs_input_grad[:2]
    )
    return g1, g2, None, None, None


gram.register_autograd(_backward, setup_context=_setup_context)
