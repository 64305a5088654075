"""The ``fastkernels::kernel_normal_mv`` op: ``K^T (K v)`` with ``K = k(x1, x2)``, K never stored.

This is the inner product of Nystrom (Falkon-style) kernel ridge solvers: x1 holds the N data
rows, x2 the M centres, and the normal equations need ``K_nM^T K_nM v`` for N in the millions
and M in the thousands. One pass over the rows of x1 suffices: for each row block of K,
``u = K_block v`` and then ``K_block^T u`` is added to the result.

Implementations: the reference (the op body: row blocks of the Gram from
:mod:`fastkernels.kernels.formulas`, at most :data:`BLOCK_ENTRIES` kernel entries at a time);
C++ for CPU tensors (``csrc/kernel_normal_mv.cpp``: one row panel of K per thread, a few MiB,
both products done while it is in cache); Triton for CUDA tensors
(:mod:`fastkernels.ops._triton.kernel_normal_mv`: two launches, ``u = K v`` then ``K^T u``).

Dtypes
------
x1 and x2 share a dtype (float32 or float64); v has that dtype or float64, and the result has
v's dtype. K is evaluated in the inputs' dtype and ``u = K v`` in v's dtype (with float64 v
and float32 inputs: float64 products on the float32 K). Whatever the dtypes, ``K^T u``
accumulates in float64: its sum runs over all N rows, too many for float32. (The C++ and Triton
kernels form each panel's or tile's share of ``K^T u`` in v's dtype, over at most a few hundred
rows, and add it into a float64 accumulator.)

Autograd: with respect to v only (``d/dv = K^T K g``, itself a ``kernel_normal_mv``, since
``K^T K`` is symmetric). Gradients with respect to x1 or x2 raise ``NotImplementedError``:
compose :func:`~fastkernels.ops.kernel_mv.kernel_mv` twice for those.
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import formulas as F
from ._common import check_finite, check_points, check_tensors, resolve_offset, unpack_params

__all__ = ["kernel_normal_mv", "kernel_normal_mv_reference", "check_inputs", "BLOCK_ENTRIES"]

OP = "fastkernels::kernel_normal_mv"
# The device implementations registered on this op's name (the body below serves every
# other device): C++ by TORCH_LIBRARY_IMPL when fastkernels._C loads, and the Triton
# launcher of this name in fastkernels.ops._triton when triton imports.
IMPLEMENTATIONS = {"cpu": "csrc/kernel_normal_mv.cpp", "cuda": "kernel_normal_mv_triton"}

# Kernel entries per row block of the reference (8 MiB in float32), as in kernel_mv.
BLOCK_ENTRIES = 1 << 21


def check_inputs(op: str, x1, x2, v) -> None:
    """Structural checks of ``(x1, x2, v)`` (no data is read: runs on fake / meta tensors too).

    As :func:`~fastkernels.ops._common.check_tensors`, except that v may be float64 whatever
    the dtype of x1 and x2.

    Raises
    ------
    TypeError
        Not a tensor, integer / half dtype, x1 and x2 of different dtypes, or v neither of
        x1's dtype nor float64.
    ValueError
        Wrong rank, mismatched D, v without one row per row of x2, empty input, mixed devices.
    """
    check_tensors(op, x1, x2)
    if not isinstance(v, Tensor):
        raise TypeError(f"{op}: v must be a torch.Tensor, got {type(v).__name__}")
    if v.dtype not in (x1.dtype, torch.float64):
        raise TypeError(f"{op}: v must have the dtype of x1 ({x1.dtype}) or float64, got {v.dtype}")
    if v.dim() != 2:
        raise ValueError(f"{op}: v must be 2-dimensional (M, T), got shape {tuple(v.shape)}")
    if v.numel() == 0:
        raise ValueError(f"{op}: v must be non-empty, got shape {tuple(v.shape)}")
    if v.device != x1.device:
        raise ValueError(
            f"{op}: x1 and v must be on the same device, got {x1.device} and {v.device}"
        )
    if v.shape[0] != x2.shape[0]:
        raise ValueError(
            f"{op}: v must have {x2.shape[0]} rows (one per row of x2), got shape {tuple(v.shape)}"
        )


def kernel_normal_mv_reference(
    x1: Tensor, x2: Tensor, v: Tensor, kernel: str, params: list[float]
) -> Tensor:
    """The readable torch reference of :func:`kernel_normal_mv` (any device).

    Same parameters, dtype rules and result as :func:`kernel_normal_mv`; row blocks of K hold at
    most :data:`BLOCK_ENTRIES` entries.
    """
    check_inputs(OP, x1, x2, v)
    kw = unpack_params(OP, kernel, params)
    check_points(OP, x1=x1, x2=x2)
    check_finite(OP, v=v)
    offset = resolve_offset(x1, x2, None)
    formula = F.FORMULAS[kernel]
    if kernel in F.TRANSLATION_INVARIANT:
        # Shift once for all row blocks (formulas.center), as the C++ and Triton paths do.
        x1, x2 = F.center(x1, x2)
        kw = {**kw, "centre": False}
    n, m = x1.shape[0], x2.shape[0]
    b = max(1, min(n, BLOCK_ENTRIES // m))
    acc = torch.zeros(v.shape, dtype=torch.float64, device=v.device)
    for i0 in range(0, n, b):
        i1 = min(n, i0 + b)
        # A row block keeps its self-pairs on the diagonal shifted by its first row.
        off = None if offset is None else offset + i0
        k = formula(x1[i0:i1], x2, diag_offset=off, **kw)  # (b, M), the inputs' dtype
        u = k.to(v.dtype) @ v  # (b, T), v's dtype
        # In float64: a row block of a small M holds up to BLOCK_ENTRIES rows.
        acc += k.mT.double() @ u.double()
    return acc.to(v.dtype)


@torch.library.custom_op(OP, mutates_args=())
def kernel_normal_mv(x1: Tensor, x2: Tensor, v: Tensor, kernel: str, params: list[float]) -> Tensor:
    """Memory-free normal-equations product ``K^T (K v)`` with ``K = k(x1, x2)`` (N x M).

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
        The data rows.
    x2 : Tensor, shape (M, D), same dtype and device
        The centres. When ``x2 is x1``, K is a self-Gram with exact self-pairs on its diagonal.
    v : Tensor, shape (M, T), dtype of x1 or float64, same device
    kernel : str
        A kernel name, as for :func:`~fastkernels.ops.gram.gram`.
    params : list of float
        The kernel's packed parameters (table in :mod:`fastkernels.ops._common`).

    Returns
    -------
    Tensor, shape (M, T), dtype of v, device of the inputs
        ``K^T K v``, summed over the rows of x1 in float64 (module docstring).

    Raises
    ------
    TypeError, ValueError
        Bad input; the message names the op, the argument and what was expected: wrong rank,
        mismatched D or rows of v, dtypes, devices, empty input, NaN / inf in x1, x2 or v,
        entries of x1 / x2 so large that squared norms overflow, invalid kernel parameters.

    Notes
    -----
    The translation-invariant kernels are evaluated on shifted inputs, as in
    :func:`~fastkernels.ops.gram.gram`.
    """
    return kernel_normal_mv_reference(x1, x2, v, kernel, params)


@kernel_normal_mv.register_fake
def _(x1, x2, v, kernel, params):
    check_inputs(OP, x1, x2, v)
    unpack_params(OP, kernel, params)
    return v.new_empty(v.shape)


def _setup_context(ctx, inputs, output):
    x1, x2, v, kernel, params = inputs
    ctx.save_for_backward(x1, x2)
    ctx.kernel, ctx.params = kernel, list(params)
    ctx.same = x1 is x2


def _backward(ctx, grad):
    x1, x2 = ctx.saved_tensors
    if ctx.needs_input_grad[0] or ctx.needs_input_grad[1]:
        raise NotImplementedError(
            f"{OP}: gradients with respect to x1 and x2 are not implemented (only v); "
            "compose fastkernels::kernel_mv twice to differentiate through the points"
        )
    gv = None
    if ctx.needs_input_grad[2]:
        # K^T K is symmetric: the vector-Jacobian product is the op itself applied to grad.
        # Saved tensors are fresh objects: pass x1 twice to keep a self-product's self-pairs.
        gv = torch.ops.fastkernels.kernel_normal_mv(
            x1, x1 if ctx.same else x2, grad, ctx.kernel, ctx.params
        )
    return None, None, gv, None, None


kernel_normal_mv.register_autograd(_backward, setup_context=_setup_context)
