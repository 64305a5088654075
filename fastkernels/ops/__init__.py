"""Custom ops of fastkernels (namespace ``fastkernels``), one file per op.

Each op is a ``torch.library.custom_op`` whose body is the readable torch reference; faster
implementations are registered per device on the same op name, so callers just call
``torch.ops.fastkernels.<op>`` (or the thin wrappers here) and the dispatcher picks:

- CPU tensors: the C++ kernels of ``fastkernels._C`` (``csrc/``) when the extension was built,
  for the kernels it implements (:data:`CPP_KERNELS`); otherwise the reference;
- any other device: the reference.

``HAS_CPP`` says whether the extension loaded (``fastkernels info`` reports it too).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._common import CPP_KERNELS, KERNEL_NAMES, pack_params, unpack_params
from .gram import gram as _gram_op
from .gram import gram_reference
from .kernel_mv import kernel_mv as _kernel_mv_op
from .kernel_mv import kernel_mv_reference
from .ntk_gram import ntk_gram
from .ntk_mv import ntk_mv

__all__ = [
    "gram",
    "kernel_mv",
    "ntk_gram",
    "ntk_mv",
    "gram_reference",
    "kernel_mv_reference",
    "pack_params",
    "unpack_params",
    "KERNEL_NAMES",
    "CPP_KERNELS",
    "HAS_CPP",
]


def _load_extension() -> bool:
    try:
        from .. import _C  # noqa: F401  (registers fastkernels::_gram_cpu / _kernel_mv_cpu)
    except ImportError:
        return False
    return True


HAS_CPP = _load_extension()

if HAS_CPP:

    @_gram_op.register_kernel("cpu")
    def _gram_cpu(x1, x2, kernel, params, diag_offset):
        if kernel in CPP_KERNELS:
            return torch.ops.fastkernels._gram_cpu(x1, x2, kernel, params, diag_offset)
        return gram_reference(x1, x2, kernel, params, diag_offset)

    @_kernel_mv_op.register_kernel("cpu")
    def _kernel_mv_cpu(x1, x2, v, kernel, params, diag_offset):
        if kernel in CPP_KERNELS:
            return torch.ops.fastkernels._kernel_mv_cpu(x1, x2, v, kernel, params, diag_offset)
        return kernel_mv_reference(x1, x2, v, kernel, params, diag_offset)


def gram(
    x1: Tensor,
    x2: Tensor | None = None,
    kernel: str = "rbf",
    params=(1.0,),
    *,
    diag_offset: int | None = None,
) -> Tensor:
    """``K[i, j] = k(x1_i, x2_j)`` through ``torch.ops.fastkernels.gram``.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device, optional
        Defaults to ``x1`` (a self-Gram with exact self-pairs on the diagonal).
    kernel : str
        A name in :data:`KERNEL_NAMES`.
    params : sequence of float
        Packed parameters (see :func:`pack_params`).
    diag_offset : int, optional
        Row ``i`` of ``x1`` is row ``i + diag_offset`` of ``x2``; default 0 for a self-Gram,
        else no self-pairs.

    Returns
    -------
    Tensor, shape (N, M), dtype and device of the inputs
    """
    if x2 is None or x2 is x1:
        x2 = x1
        diag_offset = 0 if diag_offset is None else diag_offset
    return torch.ops.fastkernels.gram(x1, x2, kernel, [float(p) for p in params], diag_offset)


def kernel_mv(
    x1: Tensor,
    x2: Tensor,
    v: Tensor,
    kernel: str = "rbf",
    params=(1.0,),
    *,
    diag_offset: int | None = None,
) -> Tensor:
    """``K(x1, x2) @ v`` through ``torch.ops.fastkernels.kernel_mv``; K is never stored.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    v : Tensor, shape (M,) or (M, T), same dtype and device
    kernel : str
        A name in :data:`KERNEL_NAMES`.
    params : sequence of float
        Packed parameters (see :func:`pack_params`).
    diag_offset : int, optional
        As for :func:`gram` (default 0 when ``x1 is x2``).

    Returns
    -------
    Tensor, shape (N,) or (N, T) following ``v``, dtype and device of the inputs
    """
    if x1 is x2 and diag_offset is None:
        diag_offset = 0
    vec = isinstance(v, Tensor) and v.dim() == 1
    vv = v[:, None] if vec else v
    out = torch.ops.fastkernels.kernel_mv(
        x1, x2, vv, kernel, [float(p) for p in params], diag_offset
    )
    return out[:, 0] if vec else out
