"""Triton launchers of ``fastkernels::resnet_fwd``, ``resnet_bwd`` and ``resnet_sgd``.

They validate their input as the references do and compose the products of
:func:`._stacked.stacked_mm`; ``resnet_sgd_triton`` runs the reference's loop over the steps
with these forward and backward passes (the update is a few elementwise torch ops per
parameter). CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

from ..resnet_bwd import OP as BWD_OP
from ..resnet_bwd import _empty, check_bwd
from ..resnet_fwd import OP as FWD_OP
from ..resnet_fwd import check_fwd
from ..resnet_sgd import resnet_sgd_reference
from ._stacked import backward_triton, forward_triton

__all__ = ["resnet_fwd_triton", "resnet_bwd_triton", "resnet_sgd_triton"]


def resnet_fwd_triton(x, W, b1, U, b2, A, arch, **blocks):
    check_fwd(FWD_OP, x, W, b1, U, b2, A, arch)
    return forward_triton(x, W, b1, U, b2, A, arch, **blocks)


def resnet_bwd_triton(grad_out, x, W, U, A, h1, h2, arch, needs, **blocks):
    check_bwd(BWD_OP, grad_out, x, W, U, A, h1, h2, arch, needs)
    grads = backward_triton(grad_out, x, W, U, A, h1, h2, arch, needs, **blocks)
    return tuple(_empty(W) if g is None else g for g in grads)


def resnet_sgd_triton(X, Y, perms, factors, params, bufs, bases, trained, lr, weight_decay,
                      momentum, batch_size, arch, **blocks):  # fmt: skip
    def forward(*args):
        return forward_triton(*args, **blocks)

    def backward(*args):
        return backward_triton(*args, **blocks)

    return resnet_sgd_reference(X, Y, perms, factors, params, bufs, bases, trained, lr,
                                weight_decay, momentum, batch_size, arch,
                                forward=forward, backward=backward)  # fmt: skip
