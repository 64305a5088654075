"""FALKON-style Nystrom kernel ridge: M centres, Cholesky preconditioner, K_nM never stored."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ._common import (
    DEFAULT_MEMORY_BUDGET,
    Progress,
    SolverInfo,
    check_rhs,
    check_ridge,
    cholesky_factor,
    format_bytes,
    masked_ratio,
    parse_bytes,
    warn_unconverged,
)
from .operators import KernelOperator

__all__ = ["nystrom_pcg", "NystromResult"]


@dataclass
class NystromResult:
    """Output of :func:`nystrom_pcg`.

    Attributes
    ----------
    coef : Tensor, shape (M, T)
        Coefficients on the centres: predictions are ``kernel(x, centers) @ coef``.
    centers : Tensor, shape (M, D)
    center_indices : Tensor of int64, shape (M,) or None
        Rows of X used as centres (None when centres were given).
    info : SolverInfo
    """

    coef: torch.Tensor
    centers: torch.Tensor
    center_indices: torch.Tensor | None
    info: SolverInfo


def nystrom_pcg(
    kernel,
    X: torch.Tensor,
    Y: torch.Tensor,
    ridge: float,
    *,
    n_centers: int = 1000,
    centers: torch.Tensor | None = None,
    x0: torch.Tensor | None = None,
    tol: float = 1e-6,
    max_iter: int = 200,
    check_every: int = 10,
    memory_budget=DEFAULT_MEMORY_BUDGET,
    dtype: torch.dtype | None = torch.float32,
    generator: torch.Generator | None = None,
    operator: KernelOperator | None = None,
    verbose: bool = True,
) -> NystromResult:
    """Nystrom kernel ridge by preconditioned CG (FALKON, Rudi, Carratino & Rosasco 2017).

    Restricting the ridge solution to the span of M centres z_j gives, with K_nM = k(X, Z) and
    K_MM = k(Z, Z), the normal equations

        (K_nM^T K_nM + ridge K_MM) beta = K_nM^T Y,

    the minimiser of ``||K_nM beta - Y||^2 + ridge beta^T K_MM beta`` (the same absolute
    ``ridge`` as in (K + ridge I) c = Y; with M = N and Z = X the solution is exact kernel
    ridge). With K_MM = T^T T and A^T A = (N / M) T T^T + ridge I, the FALKON preconditioner
    B = T^{-1} A^{-1} makes B^T H B close to the identity (K_nM^T K_nM ~ (N / M) K_MM^2 for
    uniformly sampled centres), so CG on B^T H B u = B^T K_nM^T Y converges in a few tens of
    iterations. Each iteration is one pass over the data: K_nM is evaluated in row tiles and
    each tile is used for both K_nM v and K_nM^T (K_nM v), then dropped (or kept, as far as
    ``memory_budget`` allows, for the next passes).

    Parameters
    ----------
    kernel : Kernel or kernel-like
        ``kernel(a, b)`` -> Gram block, ``kernel.mv(a, b, v)``.
    X : Tensor, shape (N, D)
    Y : Tensor, shape (N, T) or (N,), float32 or float64
        NaN/inf are rejected.
    ridge : float
        >= 0. With ridge = 0 the system is still defined (K_nM^T K_nM is PSD) but may be
        singular; prefer a positive ridge.
    n_centers : int, default 1000
        M, used when ``centers`` is None: M rows of X drawn uniformly without replacement.
        Must be <= N.
    centers : Tensor, shape (M, D), optional
        Given centres (e.g. reused across a learning curve).
    x0 : Tensor, shape (M, T), optional
        Warm start for beta.
    tol : float, default 1e-6
        Stop when the true relative residual of the preconditioned system is <= tol.
    max_iter : int, default 200
    check_every : int, default 10
        Recompute the true residual (one extra pass) this often; see :func:`cg`.
    memory_budget : int or str, default 4 GiB
        Bytes for the M x M factors, the tiles in flight and a cache of K_nM tiles.
    dtype : torch.dtype or None, default torch.float32
        Dtype the kernel tiles are evaluated in (None: X's). The M x M algebra and the CG
        recurrences run in float64.
    generator : torch.Generator, optional
        Draws the centres.
    operator : KernelOperator, optional
        A prebuilt K(X, centres) operator to reuse (its cached tiles carry over).
    verbose : bool, default True
        tqdm bar with iteration, residual, ETA.

    Returns
    -------
    NystromResult
        ``coef`` (M, T) in Y's dtype (or (M,) for 1-D Y), ``centers``, ``info``.

    Raises
    ------
    ValueError
        n_centers > N or < 1, shape mismatch, NaN/inf in Y, or a memory budget that cannot hold
        the M x M factors plus one tile.
    """
    t_start = time.perf_counter()
    where = "nystrom_pcg"
    if not isinstance(X, torch.Tensor) or X.dim() != 2 or X.shape[0] == 0:
        raise ValueError(f"{where}: X must be a non-empty (N, D) tensor, got {_shape(X)}")
    n = X.shape[0]
    one_d = isinstance(Y, torch.Tensor) and Y.dim() == 1
    Ym = check_rhs(Y, n, where)
    ridge = check_ridge(ridge, where)
    budget = parse_bytes(memory_budget, where=where)
    idx = None
    if centers is None:
        if isinstance(n_centers, bool) or not isinstance(n_centers, int) or n_centers < 1:
            raise ValueError(f"{where}: n_centers must be a positive integer, got {n_centers!r}")
        if n_centers > n:
            raise ValueError(
                f"{where}: n_centers = {n_centers} is more than the N = {n} samples; use at most "
                "N centres (M = N is exact kernel ridge, better solved by cg or cholesky)"
            )
        idx = torch.randperm(n, generator=generator)[:n_centers].to(X.device)
        Z = X[idx]
    else:
        if (
            not isinstance(centers, torch.Tensor)
            or centers.dim() != 2
            or centers.shape[1] != X.shape[1]
        ):
            raise ValueError(f"{where}: centers must be (M, {X.shape[1]}), got {_shape(centers)}")
        if centers.shape[0] > n:
            raise ValueError(
                f"{where}: {centers.shape[0]} centres is more than the N = {n} samples"
            )
        Z = centers.to(X.dtype)
    m, t = Z.shape[0], Ym.shape[1]
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"{where}: tol must be in (0, 1), got {tol!r}")
    # Float64 M x M matrices held at once: K_MM, T, A (and a transient copy) plus the CG state.
    small = 4 * m * m * 8 + 8 * m * t * 8
    if small >= budget:
        raise ValueError(
            f"{where}: memory_budget {format_bytes(budget)} cannot hold the {m} x {m} "
            f"preconditioner factors ({format_bytes(small)}); raise memory_budget or lower "
            "n_centers"
        )
    if operator is None:
        operator = KernelOperator(
            kernel, X, Z, dtype=dtype, memory_budget=budget, cache="auto", reserved_bytes=small
        )
    elif operator.shape != (n, m):
        raise ValueError(f"{where}: operator has shape {operator.shape}, expected {(n, m)}")
    work = torch.float64
    # K_MM in float64 whatever the tiles' dtype: it is small, and its exactness is what keeps
    # the system H (and so the solution) exact.
    Kmm = kernel(Z.to(work), Z.to(work)).to(work)
    Kmm = 0.5 * (Kmm + Kmm.mT)
    # The preconditioner's factor T comes from K_MM + jitter I. The jitter only changes the
    # preconditioner, never H, so it is chosen for stability: B = T^{-1} A^{-1} scales
    # directions of K_MM with tiny eigenvalues by up to 1 / sqrt(jitter (N/M jitter + ridge)),
    # and that gain multiplies the rounding error of the tiles' products K_nM v (relative eps of
    # the tile dtype). A jitter of sqrt(eps) * ||K_MM|| keeps the amplified rounding below the
    # signal; FALKON's M * eps * mean diagonal is too small for float32 tiles with a tiny ridge
    # (measured: the residual grew to 1e4 on an RBF problem with ridge 1e-4, M = 150).
    eps = torch.finfo(operator.dtype).eps
    kmm_norm = _spectral_norm(Kmm)
    jit = max(m * torch.finfo(work).eps * float(Kmm.diagonal().mean()), eps**0.5 * kmm_norm)
    Lt, j1 = cholesky_factor(Kmm + jit * torch.eye(m, dtype=work, device=X.device), where)
    Tm = Lt.mT  # upper: K_MM + jit I = T^T T
    Amat = (n / m) * (Tm @ Tm.mT)
    Amat.diagonal().add_(ridge)
    La, j2 = cholesky_factor(0.5 * (Amat + Amat.mT), where)
    Am = La.mT  # upper: A^T A
    del Amat

    def tri(Mx, V, *, transpose=False):
        # Solves with the upper factors: Mx^{-1} V or Mx^{-T} V.
        return torch.linalg.solve_triangular(Mx.mT if transpose else Mx, V, upper=not transpose)

    def apply_B(u):  # beta = T^{-1} A^{-1} u
        return tri(Tm, tri(Am, u))

    def apply_Bt(w):  # A^{-T} T^{-T} w
        return tri(Am, tri(Tm, w, transpose=True), transpose=True)

    def W(u):
        v = apply_B(u)
        return apply_Bt(operator.normal_mv(v) + ridge * (Kmm @ v))

    info = SolverInfo(solver="nystrom", tol=float(tol))
    bar = Progress(f"nystrom (M={m})", max_iter, tol, verbose)
    try:
        g = apply_Bt(operator.rmatvec(Ym.to(work)))  # B^T K_nM^T Y: one pass
        gnorm = g.norm(dim=0)
        safe = torch.where(gnorm > 0, gnorm, torch.ones_like(gnorm))
        if x0 is not None:
            x0m = x0[:, None] if x0.dim() == 1 else x0
            if x0m.shape != (m, t) or not bool(torch.isfinite(x0m).all()):
                raise ValueError(
                    f"{where}: x0 must be a finite ({m}, {t}) tensor, got {_shape(x0)}"
                )
            u = Am @ (Tm @ x0m.to(work))  # u = B^{-1} beta0
            R = g - W(u)
        else:
            u = torch.zeros((m, t), dtype=work, device=X.device)
            R = g.clone()
        res_cols = R.norm(dim=0) / safe
        res = float(res_cols.max())
        res0 = res
        info.residuals.append(res)
        info.true_residuals.append((0, res))
        P = R.clone()
        rr = (R * R).sum(0)
        active = res_cols > tol
        best, stall, why, it = res, 0, f"max_iter = {max_iter} reached", 0
        while bool(active.any()) and it < max_iter:
            it += 1
            Q = W(P)
            alpha = masked_ratio(rr, (P * Q).sum(0), active)
            u += alpha * P
            R -= alpha * Q
            res_cols = R.norm(dim=0) / safe
            check = it % check_every == 0 or bool((res_cols[active] <= tol).all()) or it == max_iter
            if check:
                R = g - W(u)
                res_cols = R.norm(dim=0) / safe
                info.true_residuals.append((it, float(res_cols.max())))
                active = res_cols > tol
            res = float(res_cols.max())
            info.residuals.append(res)
            bar.update(it, res, res0)
            if not bool(active.any()):
                break
            if check:
                # Stagnation: three checks without a 2x gain. Unlike plain CG, the preconditioned
                # system has no long plateaus; a stall means the tiles' rounding (amplified in
                # directions K_MM barely sees, with a tiny ridge) is reached, and every further
                # iteration would cost a pass over the data for nothing.
                if res < 0.5 * best:
                    best, stall = res, 0
                else:
                    stall += 1
                    if stall >= 3:
                        why = (
                            f"stagnated at {res:.2e}: rounding floor of {operator.dtype} tiles; "
                            "compute_dtype float64 or a larger ridge go further"
                        )
                        break
            rr_new = (R * R).sum(0)
            beta = masked_ratio(rr_new, rr, active)
            P = R + beta * P
            rr = rr_new
        if info.true_residuals[-1][0] != it:
            R = g - W(u)
            res = float((R.norm(dim=0) / safe).max())
            info.true_residuals.append((it, res))
            info.residuals[-1] = res
    finally:
        bar.close()
    coef = apply_B(u).to(Ym.dtype)
    info.iterations = it
    info.final_residual = info.true_residuals[-1][1]
    info.converged = info.final_residual <= tol
    info.time_s = time.perf_counter() - t_start
    info.extra = {
        "n_centers": m,
        "jitter": jit + j1,
        "tile_rows": operator.block_rows,
        "cached_bytes": operator.cached_bytes,
        "memory_budget": budget,
    }
    if not info.converged:
        warn_unconverged(where, info, why)
    return NystromResult(
        coef=coef[:, 0] if one_d else coef, centers=Z, center_indices=idx, info=info
    )


def _shape(x) -> str:
    return f"shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__


def _spectral_norm(S: torch.Tensor, steps: int = 30) -> float:
    """Largest eigenvalue of a symmetric PSD matrix by power iteration (to a few percent).

    An SVD would do, but LAPACK's takes seconds for M = 500 on busy cores; 30 products cost
    30 M^2 flops and the jitter it scales needs no more than a few digits.
    """
    g = torch.Generator(device=S.device).manual_seed(0)
    v = torch.randn(S.shape[0], 1, generator=g, dtype=S.dtype, device=S.device)
    lam = 0.0
    for _ in range(steps):
        w = S @ v
        lam = float(w.norm())
        if lam == 0:
            return 0.0
        v = w / lam
    return lam
