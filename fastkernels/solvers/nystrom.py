"""FALKON-style Nystrom kernel ridge: M centres, Cholesky preconditioner, K_nM never stored."""

from __future__ import annotations

import time
from dataclasses import dataclass

import torch

from ._common import (
    DEFAULT_MEMORY_BUDGET,
    SolverInfo,
    check_rhs,
    check_ridge,
    cholesky_factor,
    format_bytes,
    parse_bytes,
)
from .cg import cg
from .operators import KernelOperator

__all__ = ["nystrom_pcg", "NystromResult"]

# Multiple of sqrt(M) eps(tile dtype) mean(diag K_MM) added to K_MM inside the preconditioner
# (see nystrom_pcg): the rounding of the tiles' entries, with room for kernels that lose a few
# bits in their evaluation.
JITTER_FACTOR = 4.0


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
    check_every: int = 20,
    memory_budget=DEFAULT_MEMORY_BUDGET,
    dtype: torch.dtype | None = torch.float32,
    generator: torch.Generator | None = None,
    operator: KernelOperator | None = None,
    verbose: bool = True,
    exact_check: bool = True,
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
        Stop when the true relative residual of the preconditioned system,
        ``||g - B^T H B u|| / ||g||`` with ``g = B^T K_nM^T Y``, is <= tol. The system is
        solved by :func:`~fastkernels.solvers.cg` (true-residual checks, best iterate kept);
        three checks without a 2x gain stop it at any level (the tiles' rounding floor).
    max_iter : int, default 200
    check_every : int, default 20
        Recompute the true residual (one extra pass) this often; see :func:`cg`. The products
        are accumulated in float64, so the recurrence drifts slowly and a rare check suffices
        (convergence is still only declared on a true residual).
    memory_budget : int or str, default 4 GiB
        Bytes for everything the solve holds above the data: the M x M factors (six float64
        M x M matrices at the setup's peak), the tiles in flight, a cache of K_nM tiles and 10%
        left to library workspaces (see :class:`KernelOperator`).
    dtype : torch.dtype or None, default torch.float32
        Dtype the kernel tiles are evaluated in (None: X's). The M x M algebra and the CG
        recurrences run in float64.
    generator : torch.Generator, optional
        Draws the centres.
    operator : KernelOperator, optional
        A prebuilt K(X, centres) operator to reuse (its cached tiles carry over).
    verbose : bool, default True
        tqdm bar with iteration, residual, ETA.
    exact_check : bool, default True
        With tiles below float64: measure the residual with float64 kernel products (one
        float64 pass over the data for the right-hand side and one per refinement round) and
        refine the solution until that residual is below ``tol`` (see :func:`cg`'s
        ``exact_op``), so that ``converged`` and ``final_residual`` refer to the float64 system.
        False: the residual of the system of the rounded tiles (no float64 pass).

    Returns
    -------
    NystromResult
        ``coef`` (M, T) in Y's dtype (or (M,) for 1-D Y): the best iterate by true residual;
        ``centers``; ``center_indices`` (rows of X, or None for given centres); ``info``
        (``info.extra``: ``n_centers``, ``jitter``, ``tile_rows``, ``cached_bytes``,
        ``memory_budget``).

    Warns
    -----
    ConvergenceWarning
        Stopped above ``tol`` (max_iter, stagnation or divergence), with the final residual.

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
    x0m = None
    if x0 is not None:  # checked before any work on the data
        ok = isinstance(x0, torch.Tensor) and x0.dim() in (1, 2)
        x0m = (x0[:, None] if x0.dim() == 1 else x0) if ok else None
        if x0m is None or x0m.shape != (m, t) or not bool(torch.isfinite(x0m).all()):
            raise ValueError(f"{where}: x0 must be a finite ({m}, {t}) tensor, got {_shape(x0)}")
    # Float64 M x M matrices at the setup's peak (K_MM, a symmetrised or jittered copy, the two
    # Cholesky factors and a factorisation's workspace) plus the CG state: reserved from the
    # budget before the operator sizes its tiles and cache.
    small = 6 * m * m * 8 + 8 * m * t * 8
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
    Kmm = (Kmm + Kmm.mT).mul_(0.5)
    # The preconditioner's factor T comes from K_MM + jitter I. The jitter only changes the
    # preconditioner, never H. The products are accumulated in float64, so the operator is the
    # exact K~^T K~ of the tiles' rounded entries K~ = K + E; E (entries ~eps of the tile dtype)
    # adds to H an eigenvalue floor of about ||E||^2 ~ N M eps^2 mean(k)^2 in every direction,
    # which the preconditioner's (N / M) jitter^2 must cover: jitter ~ sqrt(M) eps mean(k).
    # Anything larger (the former sqrt(eps) ||K_MM||, 0.1 and more for float32 tiles) makes the
    # preconditioner miss every direction of K_MM below it, and CG stalls on them.
    eps = torch.finfo(operator.dtype).eps
    mean_diag = float(Kmm.diagonal().abs().mean()) or 1.0
    jit = max(m * torch.finfo(work).eps, JITTER_FACTOR * m**0.5 * eps) * mean_diag
    Kj = Kmm.clone()
    Kj.diagonal().add_(jit)
    Lt, j1 = cholesky_factor(Kj, where)
    del Kj
    Tm = Lt.mT  # upper: K_MM + jit I = T^T T
    Amat = (Tm @ Tm.mT).mul_(n / m)
    Amat.diagonal().add_(ridge)
    Amat = (Amat + Amat.mT).mul_(0.5)
    La, j2 = cholesky_factor(Amat, where)
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

    exact = None
    if exact_check and operator.dtype != work:
        # Float64 kernel products for the residual: the same kernel and points, no cache (its
        # budget is the operator's; with the fused op it holds no tiles at all).
        op64 = KernelOperator(
            kernel, X, Z, dtype=work, memory_budget=budget, cache="none", reserved_bytes=small
        )

        def W64(u):
            v = apply_B(u)
            return apply_Bt(op64.normal_mv(v) + ridge * (Kmm @ v))

        exact = _SmallOperator(W64, m, work)
        g = apply_Bt(op64.rmatvec(Ym.to(work)))  # B^T K_nM^T Y in float64: one pass
    else:
        g = apply_Bt(operator.rmatvec(Ym.to(work)))  # B^T K_nM^T Y: one pass over the data
    u0 = None
    if x0m is not None:
        u0 = Am @ (Tm @ x0m.to(work))  # u = B^{-1} beta0
    # The preconditioned system B^T H B u = g is solved by the library's one CG loop (true
    # residual checks, best iterate, divergence). Its stall rule differs from exact CG's: the
    # FALKON system has no long plateaus, so three checks without a 2x gain mean the tiles'
    # rounding (amplified in directions K_MM barely sees, with a tiny ridge) is reached, at any
    # level, and every further iteration would cost a pass over the data for nothing.
    u, info = cg(
        _SmallOperator(W, m, operator.dtype),
        g,
        0.0,
        x0=u0,
        tol=tol,
        max_iter=max_iter,
        check_every=check_every,
        verbose=verbose,
        desc=where,
        stall_below=1.0,
        stall_gain=0.5,
        exact_op=exact,
    )
    info.solver = "nystrom"
    info.jitter = jit + j1
    info.compute_dtype = str(operator.dtype).replace("torch.", "")
    info.exact_check = exact is not None or operator.dtype == work
    coef = apply_B(u).to(Ym.dtype)
    info.time_s = time.perf_counter() - t_start
    info.extra = {
        **info.extra,
        "n_centers": m,
        "jitter": jit + j1,
        "tile_rows": operator.block_rows,
        "cached_bytes": operator.cached_bytes,
        "memory_budget": budget,
    }
    return NystromResult(
        coef=coef[:, 0] if one_d else coef, centers=Z, center_indices=idx, info=info
    )


class _SmallOperator:
    """The M x M preconditioned Nystrom system as a linear operator for :func:`cg`.

    ``dtype`` is that of the kernel tiles behind each product (it sets the rounding floor).
    """

    def __init__(self, apply, m: int, dtype: torch.dtype):
        self.apply, self.shape, self.dtype = apply, (m, m), dtype

    def matvec(self, V: torch.Tensor) -> torch.Tensor:
        return self.apply(V)


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
