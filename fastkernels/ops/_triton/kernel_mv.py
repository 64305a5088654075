"""Triton ``fastkernels::kernel_mv``: ``K(x1, x2) @ v`` with K never leaving registers.

Each program owns BLOCK_M rows of the output and BLOCK_T of its columns. It walks over x2 in
BLOCK_N-row tiles: per tile it forms the (BLOCK_M, BLOCK_N) tile of K exactly as
:mod:`.gram` does (``tl.dot`` over D, then the epilogue), and immediately accumulates
``K_tile @ v_tile`` with a second ``tl.dot``. Memory traffic is the inputs and the output only.
When T > BLOCK_T, the second grid axis splits the right-hand sides and each split recomputes its
K tiles (cheaper than spilling them for the T <= 64 the solvers use).

The Laplace kernel (Matern nu = 1/2) recomputes the entries of near-duplicate pairs from
differences inside the kernel, as :mod:`.gram` does (:func:`.gram._exact_near_pairs`). A
correction in the launcher would need the flagged pairs' indices on the host (a nonzero and a
stream synchronisation per call, which CUDA graph capture forbids) and a second pass over the
inputs; in the kernel, a tile without a near-duplicate pays one compare per entry, and only the
rare tiles with one run the extra loop over D.

The launcher :func:`kernel_mv_triton` takes CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from .._common import center_inputs, check_finite, check_points, check_tensors, resolve_offset
from ._common import (
    default_block_k,
    dot_block,
    epilogue_constants,
    input_precision,
    launch_device,
    params_tensor,
)
from .gram import _kernel_tile, near_constants

__all__ = ["kernel_mv_triton", "_kernel_mv_kernel"]

OP = "fastkernels::kernel_mv"


# Sizes are not specialised (Triton would compile again for every size that is 1 or a
# multiple of 16); strides still are, for vectorised loads.
@triton.jit(do_not_specialize=["N", "M", "D", "T", "diag_offset", "degree"])
def _kernel_mv_kernel(
    x1_ptr,
    x2_ptr,
    v_ptr,
    out_ptr,
    params_ptr,
    N,
    M,
    D,
    T,
    stride_x1n,
    stride_x1d,
    stride_x2m,
    stride_x2d,
    stride_vm,
    stride_vt,
    stride_on,
    stride_ot,
    diag_offset,
    degree,
    KERNEL: tl.constexpr,
    NU2: tl.constexpr,
    ORDER: tl.constexpr,
    ARCH: tl.constexpr,
    DEPTH: tl.constexpr,
    TRAINABLE: tl.constexpr,
    HAS_DIAG: tl.constexpr,
    EXACT_NEAR: tl.constexpr,
    NEAR_F: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    pid_m = tl.program_id(0)
    pid_t = tl.program_id(1)
    # int64 offsets: N * D (or N x the factors' total width) may exceed 2^31 elements.
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dt = x1_ptr.dtype.element_ty
    gamma = tl.load(params_ptr)
    coef0 = tl.load(params_ptr + 1)
    acc = tl.zeros((BLOCK_M, BLOCK_T), dtype=dt)
    for n0 in range(0, M, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        k = _kernel_tile(
            x1_ptr, x2_ptr, offs_m, offs_n, N, M, D,
            stride_x1n, stride_x1d, stride_x2m, stride_x2d, diag_offset, gamma, coef0, degree,
            KERNEL, NU2, ORDER, ARCH, DEPTH, TRAINABLE, HAS_DIAG, EXACT_NEAR, NEAR_F,
            INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        # Padded columns have finite kernel values (zero norms); v loads 0 there too, but an
        # explicit zero keeps the padding out of the sum whatever the epilogue gives.
        k = tl.where(offs_n[None, :] < M, k, 0.0)
        v = tl.load(
            v_ptr + offs_n[:, None] * stride_vm + offs_t[None, :] * stride_vt,
            mask=(offs_n[:, None] < M) & (offs_t[None, :] < T),
            other=0.0,
        )
        acc = tl.dot(k.to(dt), v, acc, input_precision=INPUT_PRECISION)
    tl.store(
        out_ptr + offs_m[:, None] * stride_on + offs_t[None, :] * stride_ot,
        acc.to(out_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < N) & (offs_t[None, :] < T),
    )


def kernel_mv_triton(
    x1: Tensor,
    x2: Tensor,
    v: Tensor,
    kernel: str,
    params,
    diag_offset: int | None = None,
    *,
    allow_tf32: bool | None = None,
    block_m: int = 32,
    block_n: int = 32,
    block_k: int | None = None,
    block_t: int = 32,
    num_warps: int = 4,
    num_stages: int = 2,
) -> Tensor:
    """Memory-free ``K(x1, x2) @ v`` with :func:`_kernel_mv_kernel`.

    Same inputs, validation and result as
    :func:`fastkernels.ops.kernel_mv.kernel_mv_reference`.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
        CUDA tensor, or CPU tensor under ``TRITON_INTERPRET=1``.
    x2 : Tensor, shape (M, D), same dtype and device
    v : Tensor, shape (M, T), same dtype and device
    kernel : str
        A name in :data:`fastkernels.ops.KERNEL_NAMES`.
    params : sequence of float
        The kernel's packed parameters (:mod:`fastkernels.ops._common`).
    diag_offset : int, optional
        Self-pair alignment, as for :func:`.gram.gram_triton`.
    allow_tf32 : bool, optional
        TF32 ``tl.dot`` (both products) for float32 inputs; default from
        ``FASTKERNELS_TRITON_TF32``, else IEEE float32.
    block_m, block_n, block_k, block_t : int
        Tile sizes (powers of two, >= 16); ``block_k`` defaults to 32 (float32) / 16
        (float64); ``block_k`` and ``block_t`` shrink to D and T.
    num_warps, num_stages : int
        Warps per program and software-pipelining stages.

    Notes
    -----
    The default tiles are those for which ptxas reports no register spills on sm_90 for every
    kernel variant (ahead-of-time compile; the K tile, the two dot operands and the output
    accumulator are live at once); they are not tuned on hardware.

    Returns
    -------
    Tensor, shape (N, T), dtype and device of the inputs
    """
    check_tensors(OP, x1, x2, v, diag_offset=diag_offset)
    const, gamma, coef0, degree = epilogue_constants(OP, kernel, params)
    check_points(OP, x1=x1, x2=x2)
    check_finite(OP, v=v)
    offset = resolve_offset(x1, x2, diag_offset)
    # Translation-invariant kernels run on shifted copies: the tile's n1 + n2 - 2 s cancels for
    # data far from the origin (see fastkernels.ops._common.center_inputs).
    x1, x2 = center_inputs(kernel, x1, x2)
    n, d = x1.shape
    m, t = v.shape
    out = x1.new_empty((n, t))
    bt = dot_block(t, block_t)
    grid = (triton.cdiv(n, block_m), triton.cdiv(t, bt))
    with launch_device(x1):
        _kernel_mv_kernel[grid](
            x1,
            x2,
            v,
            out,
            params_tensor(gamma, coef0, x1),
            n,
            m,
            d,
            t,
            x1.stride(0),
            x1.stride(1),
            x2.stride(0),
            x2.stride(1),
            v.stride(0),
            v.stride(1),
            out.stride(0),
            out.stride(1),
            0 if offset is None else offset,
            degree,
            **const,
            **near_constants(const, x1.dtype),
            HAS_DIAG=offset is not None,
            INPUT_PRECISION=input_precision(x1.dtype, allow_tf32),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=dot_block(d, block_k or default_block_k(x1.dtype)),
            BLOCK_T=bt,
            num_warps=num_warps,
            num_stages=num_stages,
        )
    return out
