"""Triton ``fastkernels::gram``: one program per (BLOCK_M, BLOCK_N) tile of K.

Each program accumulates its tile of ``x1 x2^T`` with ``tl.dot`` over BLOCK_K slices of D
(together with the squared row and column norms of the slices it loads), applies the kernel's
epilogue in registers and stores the tile: K is written once and nothing else is allocated.
Programs are ordered in groups of GROUP_M tile rows (as in Triton's matmul tutorial) so that
consecutive programs share x2 tiles in L2.

The Laplace kernel (Matern nu = 1/2) is not smooth in d^2 at 0: tiles holding a near-duplicate
pair recompute those entries from differences (:func:`_exact_near_pairs`, shared with
:mod:`.kernel_mv`).

The launcher :func:`gram_triton` takes torch tensors on any device Triton can run on: CUDA
tensors, and CPU tensors under ``TRITON_INTERPRET=1`` (how the tests run it). Nothing queries a
driver at import.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._common import center_inputs, check_points, check_tensors, resolve_offset
from ._common import (
    KERNEL_CODES,
    _epilogue,
    _grouped_tile,
    _tile_terms,
    default_block_k,
    dot_block,
    epilogue_constants,
    input_precision,
    launch_device,
    params_tensor,
)

__all__ = ["gram_triton", "_gram_kernel", "near_constants", "_exact_near_pairs", "_kernel_tile"]

OP = "fastkernels::gram"

# tau = f (n1 + n2) with f = 2^16 eps: the threshold of the reference
# (fastkernels.kernels.formulas._exact_near_pairs) and of the C++ ops (csrc/kernel_common.h),
# which explain the choice. A power of two, so exact as the float32 constant Triton makes of it
# whatever the tile dtype.
_NEAR_FACTOR = 65536.0


def near_constants(const: dict, dtype: torch.dtype) -> dict:
    """The constexprs of :func:`_exact_near_pairs` for the epilogue constants ``const``.

    Returns
    -------
    dict
        ``EXACT_NEAR``: the kernel is Laplace (laplace, or matern with nu = 1/2);
        ``NEAR_F``: ``tau / (n1 + n2)`` in ``dtype``.
    """
    laplace = const["KERNEL"] == KERNEL_CODES["laplace"] or (
        const["KERNEL"] == KERNEL_CODES["matern"] and const["NU2"] == 1
    )
    return {"EXACT_NEAR": laplace, "NEAR_F": _NEAR_FACTOR * torch.finfo(dtype).eps}


@triton.jit
def _exact_near_pairs(
    k,
    s,
    n1,
    n2,
    same,
    x1_ptr,
    x2_ptr,
    offs_m,
    offs_n,
    N,
    M,
    D,
    stride_x1n,
    stride_x1d,
    stride_x2m,
    stride_x2d,
    gamma,
    HAS_DIAG: tl.constexpr,
    NEAR_F: tl.constexpr,
):
    """The Laplace tile ``k`` with its near-duplicate entries recomputed from differences.

    ``d^2 = n1 + n2 - 2 s`` has an absolute rounding error of a few ``eps (n1 + n2)``, which
    ``sqrt`` (infinite slope at 0) turns into ``gamma sqrt(eps (n1 + n2))`` for two copies of
    one point: 1.7e-4 in float32. Entries with ``d^2 < NEAR_F (n1 + n2)`` (self-pairs aside:
    they are exact already) get ``d^2 = sum_k (x1_ik - x2_jk)^2`` from the centred points (the
    difference of two nearby floats is exact). Near-duplicates are rare, so the D loop runs
    only in the tiles that hold one; the others pay one compare per entry and a tile reduction.
    """
    nn = n1[:, None] + n2[None, :]
    flag = (nn - 2.0 * s) < nn * NEAR_F
    flag = flag & (offs_m[:, None] < N) & (offs_n[None, :] < M)
    if HAS_DIAG:
        flag = flag & (same == 0)
    if tl.max(flag.to(tl.int32)) > 0:
        acc = tl.zeros_like(s)
        for kk in range(0, D):
            a = tl.load(x1_ptr + offs_m * stride_x1n + kk * stride_x1d, mask=offs_m < N, other=0.0)
            b = tl.load(x2_ptr + offs_n * stride_x2m + kk * stride_x2d, mask=offs_n < M, other=0.0)
            e = a[:, None] - b[None, :]
            acc += e * e
        k = tl.where(flag, tl.exp(-gamma * tl.sqrt(acc)), k)
    return k


@triton.jit
def _kernel_tile(
    x1_ptr,
    x2_ptr,
    offs_m,
    offs_n,
    N,
    M,
    D,
    stride_x1n,
    stride_x1d,
    stride_x2m,
    stride_x2d,
    diag_offset,
    gamma,
    coef0,
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
):
    """``k(x1_i, x2_j)`` on one (BLOCK_M, BLOCK_N) tile: the dot products and norms, the
    kernel's epilogue and, for Laplace, the near-duplicate pairs from exact differences. The
    one tile evaluation of the gram, kernel_mv and kernel_normal_mv kernels."""
    s, n1, n2 = _tile_terms(
        x1_ptr,
        x2_ptr,
        offs_m,
        offs_n,
        N,
        M,
        D,
        stride_x1n,
        stride_x1d,
        stride_x2m,
        stride_x2d,
        INPUT_PRECISION,
        BLOCK_M,
        BLOCK_N,
        BLOCK_K,
    )
    same = (offs_m[:, None] + diag_offset) == offs_n[None, :]
    k = _epilogue(
        s, n1, n2, same, D, gamma, coef0, degree,
        KERNEL, NU2, ORDER, ARCH, DEPTH, TRAINABLE, HAS_DIAG,
    )  # fmt: skip
    if EXACT_NEAR:
        k = _exact_near_pairs(
            k, s, n1, n2, same, x1_ptr, x2_ptr, offs_m, offs_n, N, M, D,
            stride_x1n, stride_x1d, stride_x2m, stride_x2d, gamma, HAS_DIAG, NEAR_F,
        )  # fmt: skip
    return k


# Sizes are not specialised (Triton would compile again for every size that is 1 or a
# multiple of 16); strides still are, for vectorised loads.
@triton.jit(do_not_specialize=["N", "M", "D", "diag_offset", "degree"])
def _gram_kernel(
    x1_ptr,
    x2_ptr,
    out_ptr,
    params_ptr,
    N,
    M,
    D,
    stride_x1n,
    stride_x1d,
    stride_x2m,
    stride_x2d,
    stride_on,
    stride_om,
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
    GROUP_M: tl.constexpr,
):
    pid_m, pid_n = _grouped_tile(tl.program_id(0), N, M, BLOCK_M, BLOCK_N, GROUP_M)

    # int64 offsets: N * D (or N x the factors' total width) may exceed 2^31 elements.
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    gamma = tl.load(params_ptr)
    coef0 = tl.load(params_ptr + 1)
    k = _kernel_tile(
        x1_ptr, x2_ptr, offs_m, offs_n, N, M, D,
        stride_x1n, stride_x1d, stride_x2m, stride_x2d, diag_offset, gamma, coef0, degree,
        KERNEL, NU2, ORDER, ARCH, DEPTH, TRAINABLE, HAS_DIAG, EXACT_NEAR, NEAR_F,
        INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
    )  # fmt: skip
    mask = (offs_m[:, None] < N) & (offs_n[None, :] < M)
    # int64 row offsets: N * M may exceed 2^31 entries.
    tl.store(
        out_ptr + offs_m[:, None].to(tl.int64) * stride_on + offs_n[None, :] * stride_om,
        k.to(out_ptr.dtype.element_ty),
        mask=mask,
    )


def gram_triton(
    x1: Tensor,
    x2: Tensor,
    kernel: str,
    params,
    diag_offset: int | None = None,
    *,
    allow_tf32: bool | None = None,
    block_m: int = 64,
    block_n: int = 64,
    block_k: int | None = None,
    group_m: int = 8,
    num_warps: int = 8,
    num_stages: int = 3,
) -> Tensor:
    """Gram matrix ``K[i, j] = k(x1_i, x2_j)`` with :func:`_gram_kernel`.

    Same inputs, validation and result as :func:`fastkernels.ops.gram.gram_reference`.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
        CUDA tensor, or CPU tensor under ``TRITON_INTERPRET=1``.
    x2 : Tensor, shape (M, D), same dtype and device
    kernel : str
        A name in :data:`fastkernels.ops.KERNEL_NAMES`.
    params : sequence of float
        The kernel's packed parameters (:mod:`fastkernels.ops._common`).
    diag_offset : int, optional
        Row ``i`` of ``x1`` is row ``i + diag_offset`` of ``x2``; None: no self-pairs unless
        ``x1 is x2``.
    allow_tf32 : bool, optional
        TF32 ``tl.dot`` for float32 inputs (tolerance in :mod:`._common`); default from
        ``FASTKERNELS_TRITON_TF32``, else IEEE float32.
    block_m, block_n, block_k : int
        Tile sizes (powers of two, >= 16); ``block_k`` defaults to 32 (float32) / 16 (float64)
        and shrinks for small D.
    group_m : int
        Tile rows per program group (L2 reuse of x2 tiles).
    num_warps, num_stages : int
        Warps per program and software-pipelining stages of the D loop.

    Notes
    -----
    The default tiles are those for which ptxas reports no register spills on sm_90 for every
    kernel variant (ahead-of-time compile); they are not tuned on hardware.

    Returns
    -------
    Tensor, shape (N, M), dtype and device of the inputs
    """
    check_tensors(OP, x1, x2, diag_offset=diag_offset)
    const, gamma, coef0, degree = epilogue_constants(OP, kernel, params)
    check_points(OP, x1=x1, x2=x2)
    offset = resolve_offset(x1, x2, diag_offset)
    # Translation-invariant kernels run on shifted copies: the tile's n1 + n2 - 2 s cancels for
    # data far from the origin (see fastkernels.ops._common.center_inputs).
    x1, x2 = center_inputs(kernel, x1, x2)
    n, d = x1.shape
    m = x2.shape[0]
    out = x1.new_empty((n, m))
    grid = (triton.cdiv(n, block_m) * triton.cdiv(m, block_n),)
    with launch_device(x1):
        _gram_kernel[grid](
            x1,
            x2,
            out,
            params_tensor(gamma, coef0, x1),
            n,
            m,
            d,
            x1.stride(0),
            x1.stride(1),
            x2.stride(0),
            x2.stride(1),
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
            GROUP_M=group_m,
            num_warps=num_warps,
            num_stages=num_stages,
        )
    return out
