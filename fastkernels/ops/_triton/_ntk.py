"""Shared pieces of the Triton NTK ops: factor packing and the fused tile of K.

``K = sum_l (A1_l A2_l^T) * (B1_l B2_l^T)``. The per-layer factors are concatenated column-wise
into four contiguous buffers (A1: N x sum p_l, B1: N x sum q_l, A2 / B2 likewise with M rows)
plus two int32 offset tables ``a_off`` / ``b_off`` of length L + 1, so one kernel launch reads
any number of layers of any widths. The concatenation copies the factors once (O((N + M)
sum of widths), the size of the inputs); the tile loop never forms a per-layer N x M matrix.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from .._ntk_common import check_factors, check_finite, same_factors
from ._common import small_tensor

__all__ = ["pack_factors"]


def _offsets(factors: list[Tensor]) -> Tensor:
    # int32 column offsets [0, p_0, p_0 + p_1, ...], cached per widths and device.
    widths = [t.shape[1] for t in factors]
    offs = tuple(sum(widths[:i]) for i in range(len(widths) + 1))
    return small_tensor(offs, torch.int32, factors[0].device)


def pack_factors(a: list[Tensor], b: list[Tensor]) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Concatenate one point set's factors: (A (rows, sum p), B (rows, sum q), a_off, b_off)."""
    return torch.cat(a, dim=1), torch.cat(b, dim=1), _offsets(a), _offsets(b)


def prepare_factors(op: str, a1, b1, a2, b2, v: Tensor | None = None):
    """The launchers' shared preamble: the reference's checks, then both sides packed.

    Returns ``(pa1, pb1, pa2, pb2, a_off, b_off, width)``; ``width`` is the widest layer (it
    sizes BLOCK_K). The same points on both sides (a trace NTK of x with itself) are packed once.
    """
    check_factors(op, a1, b1, a2, b2, v)
    finite = {"a1": a1, "b1": b1, "a2": a2, "b2": b2}
    check_finite(op, **finite, **({} if v is None else {"v": v}))
    pa1, pb1, a_off, b_off = pack_factors(a1, b1)
    same = same_factors(a1, b1, a2, b2)
    pa2, pb2 = (pa1, pb1) if same else pack_factors(a2, b2)[:2]
    width = max(t.shape[1] for t in a1 + b1)
    return pa1, pb1, pa2, pb2, a_off, b_off, width


@triton.jit
def _factor_gram(
    x1_ptr,
    x2_ptr,
    c0,
    c1,
    offs_m,
    offs_n,
    N,
    M,
    stride_x1,
    stride_x2,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """x1[offs_m, c0:c1] x2[offs_n, c0:c1]^T, (BM, BN), for row-major buffers (unit columns)."""
    g = tl.zeros((BLOCK_M, BLOCK_N), dtype=x1_ptr.dtype.element_ty)
    row_ok = offs_m[:, None] < N
    col_ok = offs_n[None, :] < M
    for k0 in range(c0, c1, BLOCK_K):
        offs_k = k0 + tl.arange(0, BLOCK_K)
        a = tl.load(
            x1_ptr + offs_m[:, None] * stride_x1 + offs_k[None, :],
            mask=row_ok & (offs_k[None, :] < c1),
            other=0.0,
        )
        b = tl.load(
            x2_ptr + offs_k[:, None] + offs_n[None, :] * stride_x2,
            mask=(offs_k[:, None] < c1) & col_ok,
            other=0.0,
        )
        g = tl.dot(a, b, g, input_precision=INPUT_PRECISION)
    return g


@triton.jit
def _ntk_tile(
    a1_ptr,
    b1_ptr,
    a2_ptr,
    b2_ptr,
    a_off_ptr,
    b_off_ptr,
    L,
    offs_m,
    offs_n,
    N,
    M,
    stride_a1,
    stride_b1,
    stride_a2,
    stride_b2,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):
    """The (BM, BN) tile of K: both factor Grams of each layer, multiplied, summed over l."""
    k = tl.zeros((BLOCK_M, BLOCK_N), dtype=a1_ptr.dtype.element_ty)
    for layer in range(L):
        pa0 = tl.load(a_off_ptr + layer)
        pa1 = tl.load(a_off_ptr + layer + 1)
        pb0 = tl.load(b_off_ptr + layer)
        pb1 = tl.load(b_off_ptr + layer + 1)
        ga = _factor_gram(
            a1_ptr, a2_ptr, pa0, pa1, offs_m, offs_n, N, M, stride_a1, stride_a2,
            INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )
        gb = _factor_gram(
            b1_ptr, b2_ptr, pb0, pb1, offs_m, offs_n, N, M, stride_b1, stride_b2,
            INPUT_PRECISION, BLOCK_M, BLOCK_N, BLOCK_K,
        )
        k += ga * gb
    return k
