"""Input checks shared by every public entry point.

Each check raises before any work is done, with a message that names the caller, the argument
and what was expected, so that bad input never reaches a solve or a results store.
"""

from __future__ import annotations

import math
from numbers import Integral, Real

import numpy as np
import torch

__all__ = [
    "as_float_tensor",
    "check_xy",
    "check_positive_int",
    "check_positive_float",
    "check_nonnegative_float",
    "check_choice",
    "resolve_dtype",
]


def resolve_dtype(value, *, name: str = "dtype", where: str) -> torch.dtype:
    """torch.float32 / torch.float64, also from the strings "float32" / "float64" (TOML files)."""
    table = {"float32": torch.float32, "float64": torch.float64}
    if isinstance(value, str) and value in table:
        return table[value]
    if value in (torch.float32, torch.float64):
        return value
    raise ValueError(
        f"{where}: {name} must be torch.float32, torch.float64, 'float32' or 'float64', "
        f"got {value!r}"
    )


def as_float_tensor(
    a, *, name: str, where: str, ndim: int | tuple[int, ...] = 2, dtype=None, device=None
) -> torch.Tensor:
    """Convert ``a`` to a floating tensor and check rank, emptiness and finiteness.

    Parameters
    ----------
    a : array-like or torch.Tensor
        The input.
    name : str
        Argument name used in error messages (``"X"``).
    where : str
        Caller used in error messages (``"KernelRidge.fit"``).
    ndim : int or tuple of int
        Accepted ranks.
    dtype : torch.dtype, optional
        Target dtype; default keeps float32/float64 tensors and maps other input to float32
        (float64 for float64 numpy arrays).
    device : torch.device, optional
        Target device.

    Returns
    -------
    torch.Tensor
        Floating tensor with one of the accepted ranks, non-empty and finite.
    """
    if isinstance(a, torch.Tensor):
        t = a
    else:
        try:
            arr = np.asarray(a)
        except Exception as exc:  # pragma: no cover - numpy raises many types
            raise TypeError(f"{where}: {name} must be array-like, got {type(a).__name__}") from exc
        if arr.dtype == object:
            raise TypeError(f"{where}: {name} must be a numeric array, got dtype object")
        t = torch.from_numpy(np.ascontiguousarray(arr))
    if t.dtype == torch.bool or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise TypeError(f"{where}: {name} must have a real numeric dtype, got {t.dtype}")
    ranks = (ndim,) if isinstance(ndim, int) else tuple(ndim)
    if t.dim() not in ranks:
        want = " or ".join(str(r) for r in ranks)
        raise ValueError(f"{where}: {name} must be {want}-dimensional, got shape {tuple(t.shape)}")
    if t.numel() == 0:
        raise ValueError(f"{where}: {name} is empty (shape {tuple(t.shape)})")
    if dtype is None:
        dtype = t.dtype if t.dtype in (torch.float32, torch.float64) else torch.float32
    t = t.to(dtype=dtype, device=device)
    if not bool(torch.isfinite(t).all()):
        raise ValueError(f"{where}: {name} contains NaN or inf")
    return t


_INT_DTYPES = (torch.int8, torch.int16, torch.int32, torch.int64, torch.uint8)


def check_xy(X, Y, *, where: str, dtype=None, device=None) -> tuple[torch.Tensor, torch.Tensor]:
    """Check a training pair: ``X`` is (N, D), ``Y`` is (N,) or (N, K) with the same N.

    Returns ``Y`` as (N, K) and a flag-free pair of tensors of the same dtype.
    """
    X = as_float_tensor(X, name="X", where=where, ndim=2, dtype=dtype, device=device)
    Y = as_float_tensor(Y, name="Y", where=where, ndim=(1, 2), dtype=X.dtype, device=X.device)
    if Y.dim() == 1:
        Y = Y[:, None]
    if Y.shape[0] != X.shape[0]:
        raise ValueError(
            f"{where}: X and Y must have the same number of rows, got {X.shape[0]} and {Y.shape[0]}"
        )
    return X, Y


def check_positive_int(value, *, name: str, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, Integral) or value <= 0:
        raise ValueError(f"{where}: {name} must be a positive integer, got {value!r}")
    return int(value)


def check_positive_float(value, *, name: str, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or value <= 0
    ):
        raise ValueError(f"{where}: {name} must be a finite number > 0, got {value!r}")
    return float(value)


def check_nonnegative_float(value, *, name: str, where: str) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, Real)
        or not math.isfinite(value)
        or value < 0
    ):
        raise ValueError(f"{where}: {name} must be a finite number >= 0, got {value!r}")
    return float(value)


def check_choice(value, choices, *, name: str, where: str):
    if value not in choices:
        opts = ", ".join(repr(c) for c in choices)
        raise ValueError(f"{where}: {name} must be one of {opts}, got {value!r}")
    return value
