"""Triton kernels of the stacked-network ops (``resnet_fwd``, ``resnet_bwd``, ``resnet_sgd``).

One kernel does every product of the forward and backward: a batched matrix product over the
members (grid axis 2) with a fused epilogue, ``C[e] = relu?(mask?(A[e] @ B[e] + bias[e] +
D[e]))``. Operands are read through their strides, so a transposed operand costs nothing, and the
epilogue saves a pass over the output for each bias, ReLU, skip connection and ReLU-backward mask
(``mask``: keep C where M > 0). The launchers compose the formulas of
:mod:`fastkernels.ops._resnet_common` from it; they take CUDA tensors, or CPU tensors under
``TRITON_INTERPRET=1``.
"""

from __future__ import annotations

import torch
import triton
import triton.language as tl
from torch import Tensor

from ._common import default_block_k, dot_block, input_precision, launch_device

__all__ = ["stacked_mm", "forward_triton", "backward_triton"]


@triton.jit(do_not_specialize=["M", "N", "K"])
def _stacked_mm_kernel(
    a_ptr, b_ptr, c_ptr, bias_ptr, d_ptr, mask_ptr,
    M, N, K,
    sae, sam, sak,
    sbe, sbk, sbn,
    sce, scm, scn,
    sbias_e,
    sde, sdm, sdn,
    sme, smm, smn,
    HAS_BIAS: tl.constexpr,
    HAS_ADD: tl.constexpr,
    HAS_MASK: tl.constexpr,
    RELU: tl.constexpr,
    INPUT_PRECISION: tl.constexpr,
    BLOCK_M: tl.constexpr,
    BLOCK_N: tl.constexpr,
    BLOCK_K: tl.constexpr,
):  # fmt: skip
    pid_m = tl.program_id(0)
    pid_n = tl.program_id(1)
    e = tl.program_id(2).to(tl.int64)
    offs_m = (pid_m * BLOCK_M + tl.arange(0, BLOCK_M)).to(tl.int64)
    offs_n = (pid_n * BLOCK_N + tl.arange(0, BLOCK_N)).to(tl.int64)
    offs_k = tl.arange(0, BLOCK_K).to(tl.int64)
    dt = c_ptr.dtype.element_ty
    acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=dt)
    for k0 in range(0, K, BLOCK_K):
        kk = k0 + offs_k
        a = tl.load(
            a_ptr + e * sae + offs_m[:, None] * sam + kk[None, :] * sak,
            mask=(offs_m[:, None] < M) & (kk[None, :] < K),
            other=0.0,
        )
        b = tl.load(
            b_ptr + e * sbe + kk[:, None] * sbk + offs_n[None, :] * sbn,
            mask=(kk[:, None] < K) & (offs_n[None, :] < N),
            other=0.0,
        )
        acc = tl.dot(a, b, acc, input_precision=INPUT_PRECISION)
    inside = (offs_m[:, None] < M) & (offs_n[None, :] < N)
    if HAS_BIAS:
        bias = tl.load(bias_ptr + e * sbias_e + offs_n, mask=offs_n < N, other=0.0)
        acc += bias[None, :]
    if HAS_ADD:
        acc += tl.load(d_ptr + e * sde + offs_m[:, None] * sdm + offs_n[None, :] * sdn,
                       mask=inside, other=0.0)  # fmt: skip
    if HAS_MASK:
        keep = tl.load(mask_ptr + e * sme + offs_m[:, None] * smm + offs_n[None, :] * smn,
                       mask=inside, other=0.0)  # fmt: skip
        acc = tl.where(keep > 0, acc, 0.0)
    if RELU:
        acc = tl.maximum(acc, 0.0)
    tl.store(c_ptr + e * sce + offs_m[:, None] * scm + offs_n[None, :] * scn,
             acc.to(dt), mask=inside)  # fmt: skip


def stacked_mm(a: Tensor, b: Tensor, *, bias=None, add=None, mask=None, relu=False,
               out=None, block_m=None, block_n=None, block_k=None) -> Tensor:  # fmt: skip
    """``relu?(where(mask > 0, a @ b + bias[:, None] + add, 0))`` for a (E, M, K), b (E, K, N),
    bias (E, N), add and mask (E, M, N); any strides (a transposed view is free)."""
    E, M, K = a.shape
    N = b.shape[2]
    if out is None:
        out = torch.empty((E, M, N), dtype=a.dtype, device=a.device)
    if E == 0 or M == 0 or N == 0:
        return out
    bm = block_m or dot_block(M, 64)
    bn = block_n or dot_block(N, 64)
    bk = block_k or min(default_block_k(a.dtype), dot_block(K, 64))
    dummy = out
    bias_t, add_t, mask_t = (t if t is not None else dummy for t in (bias, add, mask))
    grid = (triton.cdiv(M, bm), triton.cdiv(N, bn), E)
    with launch_device(a):
        _stacked_mm_kernel[grid](
            a, b, out, bias_t, add_t, mask_t,
            M, N, K,
            *a.stride(), *b.stride(), *out.stride(),
            bias_t.stride(0),
            *(add_t.stride() if add is not None else (0, 0, 0)),
            *(mask_t.stride() if mask is not None else (0, 0, 0)),
            HAS_BIAS=bias is not None,
            HAS_ADD=add is not None,
            HAS_MASK=mask is not None,
            RELU=relu,
            INPUT_PRECISION=input_precision(a.dtype, None),
            BLOCK_M=bm,
            BLOCK_N=bn,
            BLOCK_K=bk,
        )  # fmt: skip
    return out


def _t(x: Tensor) -> Tensor:
    return x.transpose(-1, -2)


def forward_triton(x, W, b1, U, b2, A, arch, **blocks):
    """The stacked forward (``forward_reference``'s formulas) from :func:`stacked_mm`."""
    h1 = stacked_mm(x, _t(W), bias=b1, relu=True, **blocks)
    if arch == "2layer":
        return stacked_mm(h1, _t(A), **blocks), h1, h1.new_empty((*h1.shape[:2], 0))
    if arch == "bottleneck":
        in2 = torch.cat([stacked_mm(h1, _t(A), **blocks), torch.ones_like(h1[..., :1])], dim=-1)
        h2 = stacked_mm(in2, _t(U), relu=True, **blocks)
    else:
        h2 = stacked_mm(h1, _t(U), bias=b2, relu=True, **blocks)
    h = h2 if arch == "3layer" else h1 + h2
    return stacked_mm(h, _t(A), **blocks), h1, h2


def backward_triton(gout, x, W, U, A, h1, h2, arch, needs, **blocks):
    """[gW, gb1, gU, gb2, gA] (None where not needed or absent), ``backward_reference``'s
    formulas from :func:`stacked_mm` with the masks and skips in its epilogue."""
    need_w, need_b1, need_u, need_b2, need_a = (bool(n) for n in needs)
    need_first = need_w or need_b1
    grads: list[Tensor | None] = [None] * 5
    h = h1 if arch == "2layer" else h2 if arch == "3layer" else h1 + h2
    if need_a:
        grads[4] = stacked_mm(_t(gout), h, **blocks)
    need_in2 = arch == "bottleneck" and (need_first or need_a)
    if not (need_first or need_u or need_b2 or need_in2):
        return grads
    gh = stacked_mm(gout, A, **blocks)  # d / d h
    if arch == "2layer":
        gz1 = torch.where(h1 > 0, gh, 0.0) if need_first else None
    else:
        gz2 = torch.where(h2 > 0, gh, 0.0)
        gz1 = None
        if arch == "bottleneck":
            if need_u:
                in2 = torch.cat([stacked_mm(h1, _t(A), **blocks), torch.ones_like(h1[..., :1])], -1)
                grads[2] = stacked_mm(_t(gz2), in2, **blocks)
            gin2 = stacked_mm(gz2, U[..., :-1], **blocks)  # d / d (A h1)
            if need_a:
                grads[4] = stacked_mm(_t(gin2), h1, add=grads[4], **blocks)
            if need_first:
                gz1 = stacked_mm(gin2, A, add=gh, mask=h1, **blocks)
        else:
            if need_u:
                grads[2] = stacked_mm(_t(gz2), h1, **blocks)
            if need_b2:
                grads[3] = gz2.sum(dim=1)
            if need_first:
                skip = gh if arch == "3resnet" else None
                gz1 = stacked_mm(gz2, U, add=skip, mask=h1, **blocks)
    if need_first:
        if need_w:
            grads[0] = stacked_mm(_t(gz1), x, **blocks)
        if need_b1:
            grads[1] = gz1.sum(dim=1)
    return grads
