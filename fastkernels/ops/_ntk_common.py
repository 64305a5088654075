"""Shared pieces of the ``ntk_gram`` and ``ntk_mv`` ops: checks, tiling, autograd formulas.

Both ops evaluate the structured empirical NTK

    K = sum_l (A1_l A2_l^T) * (B1_l B2_l^T)        (* = Hadamard product)

from per-layer factors: A_l (rows, p_l) are layer inputs (with a ones column for a bias) and
B_l (rows, q_l) output sensitivities (the k outputs' signals side by side for the trace NTK).
They work on row tiles of K so that no per-layer N x M matrix is ever allocated: the extra memory
is a few tiles of ``tile_rows`` x M. When both sides are the same points (:func:`same_factors`),
K is symmetric: the reference and the C++ kernels compute only the tiles from the diagonal on
(about half the work) and mirror them, so the result is exactly symmetric. The Triton kernels
(CUDA) compute every tile; their result is symmetric to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

_FLOAT = (torch.float32, torch.float64)

# Rows of K per tile: the tile holds two R x M buffers; 2^23 elements (32 MB in float32) keeps
# them in a range where the GEMMs still run at full speed.
TILE_ELEMENTS = 1 << 23


def tile_rows(n: int, m: int) -> int:
    """Rows per tile for an n x m result."""
    return max(1, min(n, TILE_ELEMENTS // max(m, 1)))


def check_factors(op: str, a1, b1, a2, b2, v=None) -> None:
    """Structural checks of factor lists (no data read, so they also run on fake tensors)."""
    lists = {"a1": a1, "b1": b1, "a2": a2, "b2": b2}
    for name, lst in lists.items():
        if not isinstance(lst, (list, tuple)) or len(lst) == 0:
            raise ValueError(f"{op}: {name} must be a non-empty list of tensors, got {lst!r:.60}")
    n_layers = len(a1)
    for name, lst in lists.items():
        if len(lst) != n_layers:
            raise ValueError(
                f"{op}: a1, b1, a2, b2 must have one factor per layer; a1 has {n_layers}, "
                f"{name} has {len(lst)}"
            )
    ref = a1[0]
    if not isinstance(ref, Tensor):
        raise TypeError(f"{op}: a1[0] must be a torch.Tensor, got {type(ref).__name__}")
    n, m = ref.shape[0] if ref.dim() == 2 else -1, None
    for name, lst in lists.items():
        for i, t in enumerate(lst):
            where = f"{name}[{i}]"
            if not isinstance(t, Tensor):
                raise TypeError(f"{op}: {where} must be a torch.Tensor, got {type(t).__name__}")
            if t.dtype not in _FLOAT:
                raise TypeError(f"{op}: {where} must be float32 or float64, got {t.dtype}")
            if t.dtype != ref.dtype:
                raise TypeError(f"{op}: {where} has dtype {t.dtype}, a1[0] has {ref.dtype}")
            if t.device != ref.device:
                raise ValueError(f"{op}: {where} is on {t.device}, a1[0] on {ref.device}")
            if t.dim() != 2 or t.numel() == 0:
                raise ValueError(
                    f"{op}: {where} must be a non-empty 2-D tensor, got {tuple(t.shape)}"
                )
    for lst, name in ((a1, "a1"), (b1, "b1")):
        for i, t in enumerate(lst):
            if t.shape[0] != n:
                raise ValueError(f"{op}: {name}[{i}] has {t.shape[0]} rows, a1[0] has {n}")
    m = a2[0].shape[0]
    for lst, name in ((a2, "a2"), (b2, "b2")):
        for i, t in enumerate(lst):
            if t.shape[0] != m:
                raise ValueError(f"{op}: {name}[{i}] has {t.shape[0]} rows, a2[0] has {m}")
    for i in range(n_layers):
        if a1[i].shape[1] != a2[i].shape[1]:
            raise ValueError(
                f"{op}: layer {i}: a1 and a2 widths differ ({a1[i].shape[1]} vs {a2[i].shape[1]})"
            )
        if b1[i].shape[1] != b2[i].shape[1]:
            raise ValueError(
                f"{op}: layer {i}: b1 and b2 widths differ ({b1[i].shape[1]} vs {b2[i].shape[1]})"
            )
    if v is not None:
        if not isinstance(v, Tensor):
            raise TypeError(f"{op}: v must be a torch.Tensor, got {type(v).__name__}")
        if v.dtype != ref.dtype or v.device != ref.device:
            raise TypeError(f"{op}: v must have the dtype and device of the factors")
        if v.dim() != 2 or v.shape[0] != m or v.shape[1] == 0:
            raise ValueError(f"{op}: v must be ({m}, T) with T >= 1, got {tuple(v.shape)}")


def check_finite(op: str, **inputs) -> None:
    """NaN / inf in a factor list (named ``name[i]``) or a single tensor (named ``name``)."""
    for name, val in inputs.items():
        if isinstance(val, (list, tuple)):
            for i, t in enumerate(val):
                if not bool(torch.isfinite(t).all()):
                    raise ValueError(f"{op}: {name}[{i}] contains NaN or inf")
        elif not bool(torch.isfinite(val).all()):
            raise ValueError(f"{op}: {name} contains NaN or inf")


def same_factors(a1, b1, a2, b2) -> bool:
    """Whether both sides are the same points: every a2[l] / b2[l] is a1[l] / b1[l] or a view of
    the same memory with the same shape and strides. K is then symmetric."""

    def same(x: Tensor, y: Tensor) -> bool:
        return x is y or (
            x.device == y.device
            and x.data_ptr() == y.data_ptr()
            and x.shape == y.shape
            and x.stride() == y.stride()
            and x.dtype == y.dtype
            and x.is_neg() == y.is_neg()  # a lazy negation shares the memory, not the values
            and x.is_conj() == y.is_conj()
        )

    return all(same(x, y) for x, y in zip(a1, a2)) and all(same(x, y) for x, y in zip(b1, b2))


def symmetric_tile_rows(n: int) -> int:
    """Rows per tile of a symmetric n x n result.

    Tile [r0, r1) computes the columns r0: only, so the work is (k + 1) / (2k) of the full
    product for k tiles: at least 8 tiles (56%) unless tiles would drop below 256 rows.
    """
    return max(1, min(tile_rows(n, n), max(256, -(-n // 8))))


def tile_kernel(a1, b1, a2, b2, r0: int, r1: int, out: Tensor, p: Tensor, q: Tensor, c0: int = 0):
    """K[r0:r1, c0:] into ``out`` (R x C) using ``p`` and ``q`` (R x C) for the factor Grams."""
    for layer, (fa1, fb1, fa2, fb2) in enumerate(zip(a1, b1, a2, b2)):
        torch.mm(fa1[r0:r1], fa2[c0:].T, out=out if layer == 0 else p)
        torch.mm(fb1[r0:r1], fb2[c0:].T, out=q)
        # Two buffers reused for every layer: the per-layer product never materialises at full
        # size, and the first layer's A-Gram is written into the result directly.
        if layer == 0:
            out.mul_(q)
        else:
            out.addcmul_(p, q)
    return out


def buffers(like: Tensor, rows: int, cols: int, count: int) -> list[Tensor]:
    """``count`` flat scratch buffers of rows x cols numbers (views of any R x C <= that)."""
    return [like.new_empty(rows * cols) for _ in range(count)]


def view(buf: Tensor, rows: int, cols: int) -> Tensor:
    """The leading rows x cols of a flat buffer as a contiguous matrix."""
    return buf[: rows * cols].view(rows, cols)


def mirror_upper(out: Tensor, r0: int, r1: int) -> None:
    """Complete rows r0:r1 of a symmetric result whose columns r0: were computed.

    The rows' diagonal block gets its upper triangle mirrored (a GEMM need not round (i, j) and
    (j, i) alike) and the columns r0:r1 below it get the transposed off-diagonal part, so that
    the result is exactly symmetric.
    """
    d = out[r0:r1, r0:r1]
    d.copy_(d.triu() + d.triu(1).mT)
    out[r1:, r0:r1] = out[r0:r1, r1:].mT


def weighted_factor_grads(a1, b1, a2, b2, weight_tile) -> tuple[list, list, list, list]:
    """Gradients of sum_ij W_ij K_ij w.r.t. the factors, W given tile by tile.

    ``weight_tile(r0, r1)`` returns W[r0:r1] (R x M). With W = grad_out for ``ntk_gram`` and
    W = grad_out v^T for ``ntk_mv``:
    dA1 = (W * B1 B2^T) A2, dB1 = (W * A1 A2^T) B2, dA2 = (W * B1 B2^T)^T A1,
    dB2 = (W * A1 A2^T)^T B1, per layer, accumulated over row tiles.
    """
    n, m = a1[0].shape[0], a2[0].shape[0]
    ga1 = [torch.zeros_like(t) for t in a1]
    gb1 = [torch.zeros_like(t) for t in b1]
    ga2 = [torch.zeros_like(t) for t in a2]
    gb2 = [torch.zeros_like(t) for t in b2]
    step = tile_rows(n, m)
    for r0 in range(0, n, step):
        r1 = min(n, r0 + step)
        w = weight_tile(r0, r1)
        for i in range(len(a1)):
            wb = w * (b1[i][r0:r1] @ b2[i].T)
            ga1[i][r0:r1] += wb @ a2[i]
            ga2[i] += wb.T @ a1[i][r0:r1]
            wa = w * (a1[i][r0:r1] @ a2[i].T)
            gb1[i][r0:r1] += wa @ b2[i]
            gb2[i] += wa.T @ b1[i][r0:r1]
    return ga1, gb1, ga2, gb2
