"""Triton ``fastkernels::kernel_normal_mv``: ``K^T (K v)`` in two launches of one kernel.

Design. The CPU op keeps a row panel of K in cache and applies both products to it. A Triton
program cannot hold a row panel of K (BLOCK rows x all M centres) in registers, so a single-pass
version would evaluate each K tile twice anyway (once for ``u = K v``, once for ``K^T u``) and
add its share of ``K^T u`` to the (M, T) output with float64 atomics from every row panel:
N / BLOCK x M x T contended atomics, and a result that depends on their order. Instead:

1. ``u = K(x1, x2) v`` (N x T): programs over row blocks of x1, each reducing over all M;
2. ``K^T u = K(x2, x1) u`` (M x T): every kernel here is symmetric, ``k(x, y) = k(y, x)``, so
   this is the same kernel with the roles of the inputs swapped. Programs over row blocks of x2
   and over *splits* of the N rows of x1 (so that M / BLOCK_M row blocks still fill the GPU);
   each split writes its own float64 partial sum and torch adds the splits in a fixed order.

The price is evaluating K twice (once per launch), where the CPU pass evaluates each panel once
and uses it for both products; a single-pass Triton kernel would pay the same (its row panel
does not fit in registers) plus the atomics. What this buys: no atomics, a deterministic
result, and enough programs in both launches. Extra memory: u (N x T, smaller than x1) and the
splits' partial sums (S x M x T).

Each tile's product runs in ``tl.dot`` (in the inputs' dtype, or float64 when v is float64),
and the sum over tiles accumulates in float64 registers: stage 2 sums over up to 10^6 rows.
(This is why the stages do not reuse :func:`.kernel_mv.kernel_mv_triton`: it accumulates in the
inputs' dtype and has no splits of the reduction.)

The launcher :func:`kernel_normal_mv_triton` takes CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import center_inputs, check_finite, check_points, resolve_offset
from ..kernel_normal_mv import check_inputs
from ._common import (
    default_block_k,
    dot_block,
    epilogue_constants,
    input_precision,
    launch_device,
    params_tensor,
)
from .gram import _kernel_tile, near_constants

__all__ = ["kernel_normal_mv_triton", "_kernel_normal_mv_kernel"]

OP = "fastkernels::kernel_normal_mv"

# Stage 2 aims at about this many programs (row blocks of x2 x splits of x1): several waves on
# the largest GPUs, while each split still walks many tiles (its partial sum is M x T float64).
_TARGET_PROGRAMS = 1024


@triton.jit(do_not_specialize=["N", "M", "D", "T", "rows_per_split", "diag_offset", "degree"])
def _kernel_normal_mv_kernel(
    a_ptr,
    b_ptr,
    w_ptr,
    out_ptr,
    params_ptr,
    N,
    M,
    D,
    T,
    rows_per_split,
    stride_an,
    stride_ad,
    stride_bm,
    stride_bd,
    stride_wm,
    stride_wt,
    stride_os,
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
    DOT_F64: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
    BLOCK_T: tl.constexpr,
):
    """``out[s, i, t] = sum_j k(a_i, b_j) w[j, t]`` over split s of the rows j of b (float64)."""
    pid_m = tl.program_id(0)
    pid_t = tl.program_id(1)
    pid_s = tl.program_id(2)
    # int64 offsets: N * D may exceed 2^31 elements.
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_t = pid_t * BLOCK_T + tl.arange(0, BLOCK_T)
    dt = a_ptr.dtype.element_ty
    gamma = tl.load(params_ptr)
    coef0 = tl.load(params_ptr + 1)
    acc = tl.zeros((BLOCK_M, BLOCK_T), dtype=tl.float64)
    # rows_per_split is a multiple of BLOCK_N: no tile straddles two splits.
    j0 = pid_s * rows_per_split
    j1 = tl.minimum(j0 + rows_per_split, M)
    for n0 in range(j0, j1, BLOCK_N):
        offs_n = (n0 + tl.arange(0, BLOCK_N)).to(tl.int64)
        k = _kernel_tile(
            a_ptr, b_ptr, offs_m, offs_n, N, M, D,
            stride_an, stride_ad, stride_bm, stride_bd, diag_offset, gamma, coef0, degree,
            KERNEL, NU2, ORDER, ARCH, DEPTH, TRAINABLE, HAS_DIAG, EXACT_NEAR, NEAR_F,
            INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )  # fmt: skip
        # Padded columns have finite kernel values (zero norms); w loads 0 there too, but an
        # explicit zero keeps the padding out of the sum whatever the epilogue gives.
        k = tl.where(offs_n[None, :] < M, k, 0.0)
        w = tl.load(
            w_ptr + offs_n[:, None] * stride_wm + offs_t[None, :] * stride_wt,
            mask=(offs_n[:, None] < M) & (offs_t[None, :] < T),
            other=0.0,
        )
        if DOT_F64:
            part = tl.dot(k.to(tl.float64), w.to(tl.float64))
        else:
            part = tl.dot(k.to(dt), w.to(dt), input_precision=INPUT_PRECISION)
        # One tile's product in the dot's dtype; the sum over tiles in float64.
        acc += part.to(tl.float64)
    tl.store(
        out_ptr + pid_s * stride_os + offs_m[:, None] * stride_on + offs_t[None, :] * stride_ot,
        acc,
        mask=(offs_m[:, None] < N) & (offs_t[None, :] < T),
    )


def _launch(a, b, w, splits, rows_per_split, offset, consts, tiles):
    """float64 ``(splits, len(a), T)`` partial sums of ``K(a, b) @ w`` (see the kernel)."""
    const, gamma, coef0, degree, precision, block_m, block_n, block_k, block_t, warps, stages = (
        consts + tiles
    )
    n, d = a.shape
    m, t = w.shape
    out = torch.empty((splits, n, t), dtype=torch.float64, device=a.device)
    bt = dot_block(t, block_t)
    grid = (triton.cdiv(n, block_m), triton.cdiv(t, bt), splits)
    _kernel_normal_mv_kernel[grid](
        a,
        b,
        w,
        out,
        params_tensor(gamma, coef0, a),
        n,
        m,
        d,
        t,
        rows_per_split,
        a.stride(0),
        a.stride(1),
        b.stride(0),
        b.stride(1),
        w.stride(0),
        w.stride(1),
        out.stride(0),
        out.stride(1),
        out.stride(2),
        0 if offset is None else offset,
        degree,
        **const,
        **near_constants(const, a.dtype),
        HAS_DIAG=offset is not None,
        INPUT_PRECISION=precision,
        DOT_F64=w.dtype == torch.float64,
        BLOCK_M=block_m,
        BLOCK_N=block_n,
        BLOCK_K=dot_block(d, block_k or default_block_k(a.dtype)),
        BLOCK_T=bt,
        num_warps=warps,
        num_stages=stages,
    )
    return out


def kernel_normal_mv_triton(
    x1: Tensor,
    x2: Tensor,
    v: Tensor,
    kernel: str,
    params,
    *,
    allow_tf32: bool | None = None,
    split_rows: int | None = None,
    block_m: int = 32,
    block_n: int = 32,
    block_k: int | None = None,
    block_t: int = 32,
    num_warps: int = 4,
    num_stages: int = 2,
) -> Tensor:
    """``K^T (K v)`` with :func:`_kernel_normal_mv_kernel` (two launches, module docstring).

    Same inputs, validation, dtype rules and result as
    :func:`fastkernels.ops.kernel_normal_mv.kernel_normal_mv_reference`.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
        CUDA tensor, or CPU tensor under ``TRITON_INTERPRET=1``.
    x2 : Tensor, shape (M, D), same dtype and device
    v : Tensor, shape (M, T), dtype of x1 or float64, same device
    kernel : str
        A name in :data:`fastkernels.ops.KERNEL_NAMES`.
    params : sequence of float
        The kernel's packed parameters (:mod:`fastkernels.ops._common`).
    allow_tf32 : bool, optional
        TF32 ``tl.dot`` for float32 inputs with float32 v (the GEMM of K and both products);
        default from ``FASTKERNELS_TRITON_TF32``, else IEEE float32.
    split_rows : int, optional
        Rows of x1 per split of the second launch (rounded up to a multiple of ``block_n``);
        default: enough splits for about 1024 programs.
    block_m, block_n, block_k, block_t : int
        Tile sizes (powers of two, >= 16); ``block_k`` defaults to 32 (float32) / 16
        (float64); ``block_k`` and ``block_t`` shrink to D and T.
    num_warps, num_stages : int
        Warps per program and software-pipelining stages.

    Notes
    -----
    The default tiles are those of :func:`.kernel_mv.kernel_mv_triton` (the same K tile and
    one product per tile, plus a float64 accumulator); they are not tuned on hardware.

    Returns
    -------
    Tensor, shape (M, T), dtype of v, device of the inputs
    """
    check_inputs(OP, x1, x2, v)
    const, gamma, coef0, degree = epilogue_constants(OP, kernel, params)
    check_points(OP, x1=x1, x2=x2)
    check_finite(OP, v=v)
    offset = resolve_offset(x1, x2, None)
    # Translation-invariant kernels run on shifted copies: the tile's n1 + n2 - 2 s cancels for
    # data far from the origin (see fastkernels.ops._common.center_inputs).
    x1, x2 = center_inputs(kernel, x1, x2)
    n, m = x1.shape[0], x2.shape[0]
    # With float64 v the products run in float64 on the K tile (as the reference's K.double()).
    wide = v.dtype == torch.float64 and x1.dtype != torch.float64
    precision = "ieee" if wide else input_precision(x1.dtype, allow_tf32)
    consts = (const, gamma, coef0, degree, precision)
    tiles = (block_m, block_n, block_k, block_t, num_warps, num_stages)
    if split_rows is None:
        splits = max(1, min(triton.cdiv(n, block_n), _TARGET_PROGRAMS // triton.cdiv(m, block_m)))
        split_rows = triton.cdiv(n, splits)
    rows_per_split = triton.cdiv(max(1, split_rows), block_n) * block_n
    splits = triton.cdiv(n, rows_per_split)
    with launch_device(x1):
        # Stage 1: u = K(x1, x2) v, one split (the reduction runs over the M centres).
        u = _launch(x1, x2, v, 1, triton.cdiv(m, block_n) * block_n, offset, consts, tiles)[0]
        u = u if v.dtype == torch.float64 else u.to(x1.dtype)
        # Stage 2: K^T u = K(x2, x1) u; row j of x1 is row j of x2 for a self-product.
        back = None if offset is None else -offset
        part = _launch(x2, x1, u, splits, rows_per_split, back, consts, tiles)
    # The splits' float64 partial sums, added in a fixed order (deterministic).
    return part.sum(dim=0).to(v.dtype)
