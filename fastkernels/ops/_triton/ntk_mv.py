"""Triton ``fastkernels::ntk_mv``: ``K @ v`` for the structured NTK, K never stored.

Each program owns BLOCK_M rows and BLOCK_T right-hand sides of the output and walks over the
second point set in BLOCK_N-row tiles: it forms the K tile as :mod:`.ntk_gram` does (factor Gram
tiles per layer, multiplied and summed) and accumulates ``K_tile @ v_tile`` with ``tl.dot``.

The launcher :func:`ntk_mv_triton` takes CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ._common import default_block_k, dot_block, input_precision, launch_device
from ._ntk import _ntk_tile, prepare_factors

__all__ = ["ntk_mv_triton", "_ntk_mv_kernel"]

OP = "fastkernels::ntk_mv"


# Sizes are not specialised (Triton would compile again for every size that is 1 or a
# multiple of 16); strides still are, for vectorised loads.
@triton.jit(do_not_specialize=["L", "N", "M", "T"])
def _ntk_mv_kernel(
    a1_ptr,
    b1_ptr,
    a2_ptr,
    b2_ptr,
    a_off_ptr,
    b_off_ptr,
    v_ptr,
    out_ptr,
    L,
    N,
    M,
    T,
    stride_a1,
    stride_b1,
    stride_a2,
    stride_b2,
    stride_vm,
    stride_vt,
    stride_on,
    stride_ot,
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
    dt = a1_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_T), dtype=dt)
    for n0 in range(0, M, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        k = _ntk_tile(
            a1_ptr, b1_ptr, a2_ptr, b2_ptr, a_off_ptr, b_off_ptr, L, offs_m, offs_n, N, M,
            stride_a1, stride_b1, stride_a2, stride_b2,
            INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )
        # Padded rows and columns load as zero factors, so their K entries are exactly 0.
        v = tl.load(
            v_ptr + offs_n[:, None] * stride_vm + offs_t[None, :] * stride_vt,
            mask=(offs_n[:, None] < M) & (offs_t[None, :] < T),
            other=0.0,
        )
        acc = tl.dot(k, v, acc, input_precision=INPUT_PRECISION)
    tl.store(
        out_ptr + offs_m[:, None] * stride_on + offs_t[None, :] * stride_ot,
        acc.to(out_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < N) & (offs_t[None, :] < T),
    )


def ntk_mv_triton(
    a1: list[Tensor],
    b1: list[Tensor],
    a2: list[Tensor],
    b2: list[Tensor],
    v: Tensor,
    *,
    allow_tf32: bool | None = None,
    block_m: int = 64,
    block_n: int = 64,
    block_k: int | None = None,
    block_t: int = 32,
    num_warps: int = 8,
    num_stages: int = 3,
) -> Tensor:
    """``K @ v`` for the structured NTK block K with :func:`_ntk_mv_kernel`.

    Same inputs, validation and result as :func:`fastkernels.ops.ntk_mv`.

    Parameters
    ----------
    a1, b1 : list of Tensor, shapes (N, p_l) and (N, q_l), float32 or float64
        CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
    a2, b2 : list of Tensor, shapes (M, p_l) and (M, q_l), same dtype and device
    v : Tensor, shape (M, T), same dtype and device
    allow_tf32 : bool, optional
        TF32 ``tl.dot`` for float32 inputs; default from ``FASTKERNELS_TRITON_TF32``, else
        IEEE float32.
    block_m, block_n, block_k, block_t : int
        Tile sizes (powers of two, >= 16); ``block_k`` and ``block_t`` shrink to the widest
        layer and to T.
    num_warps, num_stages : int
        Warps per program and software-pipelining stages.

    Notes
    -----
    The default tiles are those for which ptxas reports no register spills on sm_90
    (ahead-of-time compile); they are not tuned on hardware.

    Returns
    -------
    Tensor, shape (N, T), dtype and device of the inputs
    """
    pa1, pb1, pa2, pb2, a_off, b_off, width = prepare_factors(OP, a1, b1, a2, b2, v)
    n, (m, t) = pa1.shape[0], v.shape
    out = v.new_empty((n, t))
    bt = dot_block(t, block_t)
    grid = (triton.cdiv(n, block_m), triton.cdiv(t, bt))
    with launch_device(pa1):
        _ntk_mv_kernel[grid](
            pa1,
            pb1,
            pa2,
            pb2,
            a_off,
            b_off,
            v,
            out,
            len(a1),
            n,
            m,
            t,
            pa1.stride(0),
            pb1.stride(0),
            pa2.stride(0),
            pb2.stride(0),
            v.stride(0),
            v.stride(1),
            out.stride(0),
            out.stride(1),
            INPUT_PRECISION=input_precision(pa1.dtype, allow_tf32),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=dot_block(width, block_k or default_block_k(pa1.dtype)),
            BLOCK_T=bt,
            num_warps=num_warps,
            num_stages=num_stages,
        )
    return out
