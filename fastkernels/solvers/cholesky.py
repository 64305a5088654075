"""Direct kernel ridge solve by Cholesky factorisation, for N up to a few tens of thousands."""

from __future__ import annotations

import math
import warnings

import torch


def cholesky(
    K: torch.Tensor,
    Y: torch.Tensor,
    ridge: float,
    *,
    dtype: torch.dtype | None = torch.float64,
    max_tries: int = 6,
) -> torch.Tensor:
    """Solve (K + ridge I) C = Y for C.

    Parameters
    ----------
    K : torch.Tensor, shape (N, N)
        Symmetric positive semidefinite kernel matrix (float32 or float64).
    Y : torch.Tensor, shape (N, T)
        Right-hand sides, one column per output.
    ridge : float
        Regulariser >= 0 added to the diagonal.
    dtype : torch.dtype or None
        Dtype of the factorisation (float64 by default: Gram matrices of smooth kernels are
        ill-conditioned and a float32 factorisation loses most digits of the solution).
        ``None`` keeps the dtype of ``K``.
    max_tries : int
        When the factorisation fails (K + ridge I numerically indefinite), jitter is added to the
        diagonal, starting at 1e-10 times the mean diagonal and growing tenfold per try; a
        warning states the jitter that succeeded.

    Returns
    -------
    torch.Tensor, shape (N, T), the dtype of ``Y``.
    """
    if K.dim() != 2 or K.shape[0] != K.shape[1]:
        raise ValueError(f"cholesky: K must be square (N, N), got {tuple(K.shape)}")
    if Y.dim() != 2 or Y.shape[0] != K.shape[0]:
        raise ValueError(f"cholesky: Y must be (N, T) with N = {K.shape[0]}, got {tuple(Y.shape)}")
    if not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"cholesky: ridge must be a finite number >= 0, got {ridge}")
    if not bool(torch.isfinite(K).all()):
        raise ValueError("cholesky: K contains NaN or inf")
    if not bool(torch.isfinite(Y).all()):
        raise ValueError("cholesky: Y contains NaN or inf")
    work = K.to(dtype) if dtype is not None else K
    n = work.shape[0]
    scale = float(work.diagonal().abs().mean()) or 1.0
    jitter = 0.0
    for attempt in range(max_tries + 1):
        A = work.clone()
        A.diagonal().add_(ridge + jitter)
        L, info = torch.linalg.cholesky_ex(A)
        if int(info) == 0:
            if jitter > 0:
                warnings.warn(
                    f"cholesky: K + ridge I was not numerically positive definite (N = {n}); "
                    f"added jitter {jitter:.3g} to the diagonal",
                    RuntimeWarning,
                    stacklevel=2,
                )
            return torch.cholesky_solve(Y.to(A.dtype), L).to(Y.dtype)
        jitter = scale * 1e-10 * (10.0**attempt)
    raise torch.linalg.LinAlgError(
        f"cholesky: K + ridge I is not positive definite even with jitter {jitter:.3g} "
        f"(ridge = {ridge}); increase the ridge"
    )
