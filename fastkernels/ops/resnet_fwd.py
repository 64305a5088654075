"""The ``fastkernels::resnet_fwd`` op: forward of E stacked small ReLU networks in one call.

Returns the outputs and the two hidden activations the backward needs (``resnet_bwd``); with
autograd registered, a differentiable forward of the stacked networks whose backward is the
``resnet_bwd`` op. The architectures and the weights' shapes are those of
:mod:`fastkernels.ops._resnet_common`. The body is the torch reference (any device); CPU tensors
go to the C++ kernel ``csrc/resnet_fwd.cpp`` when the extension is built (one BLAS call per
layer and member, members in parallel) and CUDA tensors to Triton
(:data:`IMPLEMENTATIONS`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._resnet_common import check_batch, check_weights, forward_reference

__all__ = ["resnet_fwd", "resnet_fwd_reference"]

OP = "fastkernels::resnet_fwd"
IMPLEMENTATIONS = {"cpu": "csrc/resnet_fwd.cpp", "cuda": "resnet_fwd_triton"}


def check_fwd(op, x, W, b1, U, b2, A, arch):
    E, m, d, k = check_weights(op, W, b1, U, b2, A, arch)
    B = check_batch(op, "x", x, E, d, W)
    return E, B, m, d, k


def resnet_fwd_reference(x, W, b1, U, b2, A, arch):
    """The readable torch reference of :func:`resnet_fwd` (any device, float32 / float64)."""
    check_fwd(OP, x, W, b1, U, b2, A, arch)
    return forward_reference(x, W, b1, U, b2, A, arch)


@torch.library.custom_op(OP, mutates_args=())
def resnet_fwd(
    x: Tensor, W: Tensor, b1: Tensor, U: Tensor | None, b2: Tensor | None, A: Tensor, arch: str
) -> tuple[Tensor, Tensor, Tensor]:
    """Forward of E stacked networks on their own batches.

    Parameters
    ----------
    x : Tensor, shape (E, B, d), float32 or float64
        Each member's batch (an ``expand`` of one (B, d) batch shares it without a copy).
    W : Tensor, shape (E, m, d)
    b1 : Tensor, shape (E, m)
    U : Tensor, shape (E, m, m), or (E, m, k + 1) (the V of ``arch="bottleneck"``), or None
        (``"2layer"``)
    b2 : Tensor, shape (E, m), or None (``"2layer"``, ``"bottleneck"``)
    A : Tensor, shape (E, k, m)
    arch : {"3resnet", "3layer", "2layer", "bottleneck"}

    Returns
    -------
    out : Tensor, shape (E, B, k)
    h1 : Tensor, shape (E, B, m)
        relu(W x + b1).
    h2 : Tensor, shape (E, B, m), or (E, B, 0) for ``"2layer"``
        The second block's activation.
    """
    return resnet_fwd_reference(x, W, b1, U, b2, A, arch)


@resnet_fwd.register_fake
def _(x, W, b1, U, b2, A, arch):
    E, B, m, d, k = check_fwd(OP, x, W, b1, U, b2, A, arch)
    h2_width = 0 if arch == "2layer" else m
    return W.new_empty((E, B, k)), W.new_empty((E, B, m)), W.new_empty((E, B, h2_width))


def _setup_context(ctx, inputs, output):
    x, W, b1, U, b2, A, arch = inputs
    _, h1, h2 = output
    ctx.arch = arch
    ctx.has = (True, True, U is not None, b2 is not None, True)
    ctx.mark_non_differentiable(h1, h2)
    ctx.save_for_backward(x, W, U, A, h1, h2)


def _backward(ctx, grad_out, _grad_h1, _grad_h2):
    x, W, U, A, h1, h2 = ctx.saved_tensors
    # Which of W, b1, U, b2, A need a gradient (inputs 1..5 of the op).
    needs = [bool(n and h) for n, h in zip(ctx.needs_input_grad[1:6], ctx.has)]
    if ctx.needs_input_grad[0]:
        raise NotImplementedError(
            f"{OP}: the gradient with respect to x is not implemented (the ops train weights)"
        )
    grads = torch.ops.fastkernels.resnet_bwd(grad_out.contiguous(), x, W, U, A, h1, h2,
                                             ctx.arch, needs)  # fmt: skip
    return (None, *(g if n else None for g, n in zip(grads, needs)), None)


resnet_fwd.register_autograd(_backward, setup_context=_setup_context)
