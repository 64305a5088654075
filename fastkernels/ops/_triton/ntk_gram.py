"""Triton ``fastkernels::ntk_gram``: ``K = sum_l (A1_l A2_l^T) * (B1_l B2_l^T)`` in one kernel.

One program per (BLOCK_M, BLOCK_N) tile of K (grouped order as in :mod:`.gram`): for each layer
it accumulates the two factor Gram tiles with ``tl.dot``, multiplies them and adds the product
to the tile, which is stored once. No per-layer N x M matrix exists at any time.

The launcher :func:`ntk_gram_triton` takes CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import triton
import triton.language as tl
from torch import Tensor

from ._common import (
    _grouped_tile,
    default_block_k,
    dot_block,
    input_precision,
    launch_device,
)
from ._ntk import _ntk_tile, prepare_factors

__all__ = ["ntk_gram_triton", "_ntk_gram_kernel"]

OP = "fastkernels::ntk_gram"


# Sizes are not specialised (Triton would compile again for every size that is 1 or a
# multiple of 16); strides still are, for vectorised loads.
@triton.jit(do_not_specialize=["L", "N", "M"])
def _ntk_gram_kernel(
    a1_ptr,
    b1_ptr,
    a2_ptr,
    b2_ptr,
    a_off_ptr,
    b_off_ptr,
    out_ptr,
    L,
    N,
    M,
    stride_a1,
    stride_b1,
    stride_a2,
    stride_b2,
    stride_on,
    stride_om,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), N, M, BLOCK_M, BLOCK_N, GROUP_M)

    # int64 offsets: N * D (or N x the factors' total width) may exceed 2^31 elements.
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    k = _ntk_tile(
        a1_ptr, b1_ptr, a2_ptr, b2_ptr, a_off_ptr, b_off_ptr, L, offs_m, offs_n, N, M,
        stride_a1, stride_b1, stride_a2, stride_b2,
        INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )
    # int64 row offsets: N * M may exceed 2^31 entries.
    tl.store(
        out_ptr + offs_m[:, None].to(tl.int64) * stride_on + offs_n[None, :] * stride_om,
        k.to(out_ptr.dtype.element_ty),
        mask=(offs_m[:, None] < N) & (offs_n[None, :] < M),
    )


def ntk_gram_triton(
    a1: list[Tensor],
    b1: list[Tensor],
    a2: list[Tensor],
    b2: list[Tensor],
    *,
    allow_tf32: bool | None = None,
    block_m: int = 64,
    block_n: int = 64,
    block_k: int | None = None,
    group_m: int = 8,
    num_warps: int = 8,
    num_stages: int = 3,
) -> Tensor:
    """NTK block ``K = sum_l (a1[l] a2[l]^T) * (b1[l] b2[l]^T)`` with :func:`_ntk_gram_kernel`.

    Same inputs, validation and result as :func:`fastkernels.ops.ntk_gram`.

    Parameters
    ----------
    a1, b1 : list of Tensor, shapes (N, p_l) and (N, q_l), float32 or float64
        CUDA tensors, or CPU tensors under ``TRITON_INTERPRET=1``.
    a2, b2 : list of Tensor, shapes (M, p_l) and (M, q_l), same dtype and device
    allow_tf32 : bool, optional
        TF32 ``tl.dot`` for float32 factors; default from ``FASTKERNELS_TRITON_TF32``, else
        IEEE float32.
    block_m, block_n, block_k : int
        Tile sizes (powers of two, >= 16); ``block_k`` shrinks to the widest layer.
    group_m : int
        Tile rows per program group.
    num_warps, num_stages : int
        Warps per program and software-pipelining stages.

    Notes
    -----
    The default tiles are those for which ptxas reports no register spills on sm_90
    (ahead-of-time compile); they are not tuned on hardware.

    Returns
    -------
    Tensor, shape (N, M), the factors' dtype and device
    """
    pa1, pb1, pa2, pb2, a_off, b_off, width = prepare_factors(OP, a1, b1, a2, b2)
    n, m = pa1.shape[0], pa2.shape[0]
    out = pa1.new_empty((n, m))
    grid = (triton.cdiv(n, block_m) * triton.cdiv(m, block_n),)
    with launch_device(pa1):
        _ntk_gram_kernel[grid](
            pa1,
            pb1,
            pa2,
            pb2,
            a_off,
            b_off,
            out,
            len(a1),
            n,
            m,
            pa1.stride(0),
            pb1.stride(0),
            pa2.stride(0),
            pb2.stride(0),
            out.stride(0),
            out.stride(1),
            INPUT_PRECISION=input_precision(pa1.dtype, allow_tf32),
            BLOCK_M=block_m,
            BLOCK_N=block_n,
            BLOCK_K=dot_block(width, block_k or default_block_k(pa1.dtype)),
            GROUP_M=group_m,
            num_warps=num_warps,
            num_stages=num_stages,
        )
    return out
