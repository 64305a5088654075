"""Direct kernel ridge solve by Cholesky factorisation, for N up to a few tens of thousands."""

from __future__ import annotations

import math
import time
import warnings

import torch

from ._common import SolverInfo, warn_unconverged


def cholesky(
    K: torch.Tensor,
    Y: torch.Tensor,
    ridge: float,
    *,
    dtype: torch.dtype | None = torch.float64,
    max_tries: int = 6,
    return_info: bool = False,
    tol: float = 1e-6,
) -> torch.Tensor | tuple[torch.Tensor, SolverInfo]:
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
    return_info : bool, default False
        Also return a :class:`SolverInfo` (0 iterations, the relative residual of the solve,
        the jitter used), the record the iterative solvers return.
    tol : float, default 1e-6
        With ``return_info``: the solve counts as converged only when the relative residual
        ``||(K + ridge I) C - Y|| / ||Y||`` of the system asked for (without any jitter) is at
        most ``tol`` (a jittered, singular or non-symmetric K fails this; a ConvergenceWarning
        says so).

    Returns
    -------
    torch.Tensor, shape (N, T), the dtype of ``Y``
        And the SolverInfo when ``return_info``.

    Raises
    ------
    ValueError
        Bad shapes, ridge < 0 or not finite, NaN/inf in K or Y.
    torch.linalg.LinAlgError
        K + ridge I not positive definite even after ``max_tries`` jitters (a kernel that is not
        positive semidefinite, or ridge = 0 on a badly singular Gram): raise the ridge.
    """
    t_start = time.perf_counter()
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
            C = torch.cholesky_solve(Y.to(A.dtype), L)
            if not return_info:
                return C.to(Y.dtype)
            # The residual of the system asked for, with the full (not the lower-triangle) K:
            # a non-symmetric K is solved as if symmetric and shows here.
            del L
            A.diagonal().sub_(jitter)
            b = Y.to(A.dtype)
            res = float(((A @ C - b).norm(dim=0) / b.norm(dim=0).clamp_min(1e-300)).max())
            if not math.isfinite(res):
                res = math.inf
            info = SolverInfo(
                solver="cholesky",
                converged=res <= tol,
                residuals=[res],
                true_residuals=[(0, res)],
                final_residual=res,
                tol=float(tol),
                time_s=time.perf_counter() - t_start,
                jitter=jitter,
                compute_dtype=str(A.dtype).replace("torch.", ""),
                stop_reason="direct",
                extra={"jitter": jitter, "dtype": str(A.dtype).replace("torch.", "")},
            )
            if not info.converged:
                why = "direct solve" + (f" with jitter {jitter:.3g}" if jitter else "")
                if not bool(torch.equal(work, work.mT)):
                    why += "; K is not symmetric (Cholesky reads its lower triangle)"
                info.stop_reason = f"direct: residual above tol ({why})"
                warn_unconverged(
                    "cholesky",
                    info,
                    why,
                    "Raise the ridge (a singular or indefinite K + ridge I), or check that K is "
                    "a symmetric positive semidefinite kernel matrix.",
                )
            return C.to(Y.dtype), info
        jitter = scale * 1e-10 * (10.0**attempt)
    raise torch.linalg.LinAlgError(
        f"cholesky: K + ridge I is not positive definite even with jitter {jitter:.3g} "
        f"(ridge = {ridge}); increase the ridge"
    )
