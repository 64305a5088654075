"""The ``fastkernels::resnet_bwd`` op: backward of E stacked small ReLU networks in one call.

The weight gradients of ``sum(grad_out * out)`` for the forward of ``resnet_fwd``, from its
saved activations (h1, h2), hand-derived (:func:`fastkernels.ops._resnet_common.
backward_reference`). The body is the torch reference (any device); CPU tensors go to the C++
kernel ``csrc/resnet_bwd.cpp`` when the extension is built and CUDA tensors to Triton
(:data:`IMPLEMENTATIONS`).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._resnet_common import backward_reference, check_batch, check_weights

__all__ = ["resnet_bwd", "resnet_bwd_reference"]

OP = "fastkernels::resnet_bwd"
IMPLEMENTATIONS = {"cpu": "csrc/resnet_bwd.cpp", "cuda": "resnet_bwd_triton"}


def check_bwd(op, grad_out, x, W, U, A, h1, h2, arch, needs):
    # b1 and b2 are not inputs of the backward; stand-ins with their shapes pass the checks.
    b1 = W.new_empty(W.shape[:2]) if isinstance(W, Tensor) and W.dim() == 3 else None
    b2 = b1 if arch in ("3resnet", "3layer") else None
    E, m, d, k = check_weights(op, W, b1, U, b2, A, arch)
    B = check_batch(op, "x", x, E, d, W)
    check_batch(op, "grad_out", grad_out, E, k, W)
    check_batch(op, "h1", h1, E, m, W)
    if grad_out.shape[1] != B or h1.shape[1] != B:
        raise ValueError(f"{op}: grad_out and h1 must have B = {B} rows per member")
    if arch != "2layer":
        check_batch(op, "h2", h2, E, m, W)
        if h2.shape[1] != B:
            raise ValueError(f"{op}: h2 must have B = {B} rows per member")
    if len(needs) != 5 or not all(isinstance(n, bool) for n in needs):
        raise ValueError(
            f"{op}: needs must be 5 bools (gradients of W, b1, U, b2, A), got {list(needs)!r}"
        )
    return E, B, m, d, k


def _empty(like: Tensor) -> Tensor:
    return like.new_empty((0,))


def resnet_bwd_reference(grad_out, x, W, U, A, h1, h2, arch, needs):
    """The readable torch reference of :func:`resnet_bwd` (any device, float32 / float64)."""
    check_bwd(OP, grad_out, x, W, U, A, h1, h2, arch, needs)
    grads = backward_reference(grad_out, x, W, U, A, h1, h2, arch, needs)
    return tuple(_empty(W) if g is None else g for g in grads)


@torch.library.custom_op(OP, mutates_args=())
def resnet_bwd(
    grad_out: Tensor,
    x: Tensor,
    W: Tensor,
    U: Tensor | None,
    A: Tensor,
    h1: Tensor,
    h2: Tensor,
    arch: str,
    needs: list[bool],
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """Gradients of the stacked networks' weights.

    Parameters
    ----------
    grad_out : Tensor, shape (E, B, k)
        d loss / d out.
    x, W, U, A : Tensor
        The inputs of ``resnet_fwd`` (shapes there).
    h1, h2 : Tensor, shapes (E, B, m), (E, B, m) or (E, B, 0) for ``"2layer"``
        The activations ``resnet_fwd`` returned.
    arch : {"3resnet", "3layer", "2layer", "bottleneck"}
    needs : list of 5 bool
        Which gradients to compute: W, b1, U (V), b2, A.

    Returns
    -------
    tuple of 5 Tensor
        gW (E, m, d), gb1 (E, m), gU (E, m, m) or gV (E, m, k + 1), gb2 (E, m), gA (E, k, m);
        an empty tensor (0,) where ``needs`` is False or the arch lacks the parameter.
    """
    return resnet_bwd_reference(grad_out, x, W, U, A, h1, h2, arch, needs)


@resnet_bwd.register_fake
def _(grad_out, x, W, U, A, h1, h2, arch, needs):
    E, B, m, d, k = check_bwd(OP, grad_out, x, W, U, A, h1, h2, arch, needs)
    shapes = [
        (E, m, d),
        (E, m),
        None if arch == "2layer" else tuple(U.shape),
        (E, m) if arch in ("3resnet", "3layer") else None,
        (E, k, m),
    ]
    return tuple(
        W.new_empty(s) if n and s is not None else W.new_empty((0,)) for s, n in zip(shapes, needs)
    )
