"""Preconditioned conjugate gradients for (A + ridge I) X = B with several right-hand sides."""

from __future__ import annotations

import time

import torch

from ._common import (
    Progress,
    SolverInfo,
    check_rhs,
    check_ridge,
    cholesky_factor,
    masked_ratio,
    warn_unconverged,
)
from .operators import as_operator

__all__ = ["cg", "NystromPreconditioner"]


def cg(
    A,
    B: torch.Tensor,
    ridge: float = 0.0,
    *,
    x0: torch.Tensor | None = None,
    preconditioner=None,
    tol: float = 1e-6,
    max_iter: int | None = None,
    check_every: int = 10,
    verbose: bool = True,
    desc: str = "cg",
    stall_below: float | None = None,
    stall_gain: float = 0.9,
    exact_op=None,
) -> tuple[torch.Tensor, SolverInfo]:
    """Solve (A + ridge I) X = B by (preconditioned) conjugate gradients, all columns at once.

    Each column runs its own CG recurrence (its own step sizes) but all columns share one
    product with A per iteration, so T outputs cost one pass over A, not T. The recurrences run
    in float64 whatever dtype A computes in (a float32 A only rounds the products).

    Parameters
    ----------
    A : Tensor, shape (N, N), or linear operator
        Symmetric positive semidefinite; a tensor or anything with ``shape`` and
        ``matvec(V: (N, T)) -> (N, T)`` (e.g. :class:`~fastkernels.solvers.KernelOperator`,
        memory-free, or with a cached dense Gram).
    B : Tensor, shape (N, T) or (N,), float32 or float64
        Right-hand sides; NaN/inf are rejected.
    ridge : float, default 0
        Added to the diagonal of A (absolute, as scikit-learn's ``alpha``).
    x0 : Tensor, shape (N, T) or (N,), optional
        Warm start (default zeros).
    preconditioner : callable, optional
        ``P(R: (N, T) float64) -> (N, T)``, an approximation of (A + ridge I)^{-1}, symmetric
        positive definite (e.g. :class:`NystromPreconditioner`).
    tol : float, default 1e-6
        Stop when every column's *true* relative residual ``||B - (A + ridge I) X|| / ||B||`` is
        at most ``tol``.
    max_iter : int, optional
        Default ``min(N, 1000)`` (CG converges in at most N steps in exact arithmetic).
    check_every : int, default 10
        Recompute the true residual every ``check_every`` iterations (one extra product) and
        restart the recurrence from it; also done whenever the recurrence claims convergence,
        so convergence is only ever declared on a true residual.
    verbose : bool, default True
        A tqdm bar with iteration, residual and ETA.
    desc : str
        Label of the bar and of warnings.
    stall_below : float, optional
        Stagnation may stop the solve only once the best true residual is at most this (default
        10 sqrt(eps) of A's dtype: the rounding floor of its products). Far above it a slow
        stretch is an ordinary CG plateau. Pass 1.0 to allow stopping anywhere (a well
        preconditioned system has no long plateaus).
    stall_gain : float, default 0.9
        A check counts as progress when its true residual is below ``stall_gain`` times the
        best so far (0.9: a 10% gain; 0.5: a 2x gain); three checks without progress stop
        the solve near the floor (where a residual that creeps down by rounding-level steps
        would otherwise run to ``max_iter``).
    exact_op : Tensor or linear operator, optional
        A more accurate version of ``A`` (e.g. the kernel in float64 where ``A`` stores it in
        float32). The solve becomes iterative refinement: CG with ``A`` solves for a
        correction to the residual measured with ``exact_op``, until that exact residual is at
        most ``tol``. Convergence, ``final_residual`` and ``true_residuals`` then refer to the
        exact system; each refinement round costs one ``exact_op`` product. A round that does
        not halve the exact residual stops the solve (``A`` is then too inaccurate for this
        system: its error times the condition number is near 1).

    Returns
    -------
    X : Tensor, shape of ``B``, dtype of ``B``
    info : SolverInfo
        Iterations, residual history (``info.residuals``), ``converged``.

    Warns
    -----
    ConvergenceWarning (a RuntimeWarning)
        Stopped at ``max_iter`` or on stagnation with a true residual above ``tol``; the message
        gives the final relative residual. Never silent.

    Raises
    ------
    ValueError
        Shapes disagree, NaN/inf in B or x0, ridge < 0 or not finite, tol not in (0, 1).
    """
    t_start = time.perf_counter()
    where = desc
    if exact_op is not None:
        return _refine(
            A,
            exact_op,
            B,
            ridge,
            x0=x0,
            preconditioner=preconditioner,
            tol=tol,
            max_iter=max_iter,
            check_every=check_every,
            verbose=verbose,
            desc=desc,
            stall_below=stall_below,
            stall_gain=stall_gain,
        )
    op = as_operator(A, where)
    n = op.shape[0]
    if op.shape[0] != op.shape[1]:
        raise ValueError(f"{where}: A must be square, got shape {tuple(op.shape)}")
    ridge = check_ridge(ridge, where)
    one_d = B.dim() == 1 if isinstance(B, torch.Tensor) else False
    Bm = check_rhs(B, n, where, "B")
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"{where}: tol must be in (0, 1), got {tol!r}")
    if not (isinstance(stall_gain, (int, float)) and 0 < stall_gain <= 1):
        raise ValueError(f"{where}: stall_gain must be in (0, 1], got {stall_gain!r}")
    if stall_below is not None and not (isinstance(stall_below, (int, float)) and stall_below > 0):
        raise ValueError(f"{where}: stall_below must be a number > 0, got {stall_below!r}")
    max_iter = min(n, 1000) if max_iter is None else int(max_iter)
    if max_iter < 1:
        raise ValueError(f"{where}: max_iter must be >= 1, got {max_iter}")
    work = torch.float64
    b = Bm.to(work)
    bnorm = b.norm(dim=0)
    safe = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))

    def apply(V):
        out = op.matvec(V).to(work)
        return out + ridge * V if ridge else out

    def true_residual(X):
        return b - apply(X)

    X, R = _start(x0, b, n, where, work, true_residual)
    info = SolverInfo(
        solver="cg",
        tol=float(tol),
        compute_dtype=_dtype_name(getattr(op, "dtype", work)),
        exact_check=getattr(op, "dtype", work) == work,
    )
    res_cols = R.norm(dim=0) / safe
    res = float(res_cols.max())
    info.residuals.append(res)
    info.true_residuals.append((0, res))
    info.final_residual = res
    if res <= tol:
        info.converged = True
        info.time_s = time.perf_counter() - t_start
        return _shape_like(X, B, one_d), info

    if stall_below is None:
        # Rounding floor of the products: a float32 Gram cannot give residuals much below
        # sqrt(eps).
        stall_below = 10 * torch.finfo(getattr(op, "dtype", work)).eps ** 0.5
    precond = preconditioner if preconditioner is not None else (lambda r: r)
    Z = precond(R).to(work)
    P = Z.clone()
    rz = (R * Z).sum(0)
    active = res_cols > tol  # columns still iterating; confirmed ones are frozen
    bar = Progress(desc, max_iter, tol, verbose)
    res0, best, stall, why = res, res, 0, f"max_iter = {max_iter} reached"
    X_best = X.clone()
    it = 0
    try:
        while it < max_iter:
            it += 1
            Q = apply(P)
            alpha = masked_ratio(rz, (P * Q).sum(0), active)
            X += alpha * P
            R -= alpha * Q
            res_cols = R.norm(dim=0) / safe
            check = it % check_every == 0 or bool((res_cols[active] <= tol).all()) or it == max_iter
            if check:
                # Residual replacement: the recurrence drifts from b - A x in finite precision.
                drifted = res_cols.clone()
                R = true_residual(X)
                res_cols = R.norm(dim=0) / safe
                if bool((res_cols > 2 * drifted).any()):
                    # The recurrence had lost touch with the true residual (inexact products,
                    # e.g. a float32 Gram): restart the search direction from the true residual
                    # rather than carry directions that are no longer conjugate.
                    rz = None
                info.true_residuals.append((it, float(res_cols.max())))
                active = res_cols > tol
            res = float(res_cols.max())
            info.residuals.append(res)
            bar.update(it, res, res0)
            if not bool(active.any()):
                break
            if check:
                # Keep the best iterate by true residual. Inexact products (a float32 Gram of an
                # ill-conditioned kernel) put a floor under the attainable residual, beyond which
                # CG drifts upwards: near that floor, 3 checks without a new best stop it; a 100x
                # blow-up stops it anywhere. Far above the floor a slow or non-monotone stretch
                # is an ordinary CG plateau (the residual norm is not what CG minimises).
                progress = res < stall_gain * best
                if res < best:
                    best = res
                    X_best = X.clone()
                elif res > 100 * best:
                    why = f"diverged from {best:.2e} to {res:.2e} (inexact products?)"
                    break
                if progress:
                    stall = 0
                elif best <= stall_below:
                    stall += 1
                    if stall >= 3:
                        why = (
                            f"stagnated at {best:.2e} for {stall * check_every} iterations: "
                            f"the floor set by the {info.compute_dtype} products"
                        )
                        break
            Z = precond(R).to(work)
            rz_new = (R * Z).sum(0)
            if rz is None:
                P = Z.clone()
            else:
                beta = masked_ratio(rz_new, rz, active)
                P = Z + beta * P
            rz = rz_new
    finally:
        bar.close()
    info.iterations = it
    if not info.true_residuals or info.true_residuals[-1][0] != it:
        res = float((true_residual(X).norm(dim=0) / safe).max())
        info.true_residuals.append((it, res))
        info.residuals[-1] = res
    final = info.true_residuals[-1][1]
    if final > best:
        # An earlier iterate was better: return it (its true residual was measured).
        X, final = X_best, best
    info.final_residual = final
    info.converged = info.final_residual <= tol
    info.stop_reason = "converged" if info.converged else why
    info.time_s = time.perf_counter() - t_start
    if not info.converged:
        warn_unconverged(where, info, why)
    return _shape_like(X, B, one_d), info


def _refine(A, exact_op, B, ridge, *, x0, tol, max_iter, desc, verbose, **cg_kw):
    """Iterative refinement: CG on ``A`` for corrections, residuals from ``exact_op``."""
    import warnings

    from ._common import ConvergenceWarning

    t_start = time.perf_counter()
    where = desc
    op, ex = as_operator(A, where), as_operator(exact_op, where)
    n = op.shape[0]
    if tuple(ex.shape) != tuple(op.shape):
        raise ValueError(
            f"{where}: exact_op has shape {tuple(ex.shape)}, A has shape {tuple(op.shape)}"
        )
    ridge = check_ridge(ridge, where)
    one_d = B.dim() == 1 if isinstance(B, torch.Tensor) else False
    b = check_rhs(B, n, where, "B").to(torch.float64)
    if not (isinstance(tol, (int, float)) and 0 < tol < 1):
        raise ValueError(f"{where}: tol must be in (0, 1), got {tol!r}")
    max_iter = min(n, 1000) if max_iter is None else int(max_iter)
    if max_iter < 1:
        raise ValueError(f"{where}: max_iter must be >= 1, got {max_iter}")
    bnorm = b.norm(dim=0)
    safe = torch.where(bnorm > 0, bnorm, torch.ones_like(bnorm))

    def exact_residual(X):
        out = ex.matvec(X).to(torch.float64)
        return b - (out + ridge * X if ridge else out)

    X, R = _start(x0, b, n, where, torch.float64, exact_residual)
    info = SolverInfo(
        solver="cg",
        tol=float(tol),
        compute_dtype=_dtype_name(getattr(op, "dtype", torch.float64)),
        exact_check=True,
    )
    res = float((R.norm(dim=0) / safe).max())
    info.residuals.append(res)
    info.true_residuals.append((0, res))
    X_best, best, why = X.clone(), res, f"max_iter = {max_iter} reached"
    # Inside a round, three checks without a new best end the round at any level: the exact
    # residual then decides whether another round (or nothing) helps, and a plateau of the
    # inexact products costs no more than 3 check intervals.
    if cg_kw.get("stall_below") is None:
        cg_kw["stall_below"] = 1.0
    rounds, it = 0, 0
    while res > tol and it < max_iter:
        rounds += 1
        # The correction d solves A d = R; its own relative residual must leave the exact one
        # below tol, with a margin for the difference between A and the exact operator: 0.8 in
        # the first round (where that difference is usually far below tol, and every iteration
        # is a pass over the data), 0.5 once a round has shown it is not.
        inner_tol = min(0.5, (0.8 if rounds == 1 else 0.5) * tol / res)
        with warnings.catch_warnings():
            # An inner solve stopped at A's floor is expected; the exact residual decides.
            warnings.simplefilter("ignore", ConvergenceWarning)
            D, sub = cg(
                op,
                R,
                ridge,
                tol=inner_tol,
                max_iter=max_iter - it,
                verbose=verbose,
                desc=desc,
                **cg_kw,
            )
        it += sub.iterations
        info.residuals.extend(r * res for r in sub.residuals[1:])
        X = X + D.to(torch.float64)
        R = exact_residual(X)
        new = float((R.norm(dim=0) / safe).max())
        info.true_residuals.append((it, new))
        if info.residuals:
            info.residuals[-1] = new
        if new < best:
            X_best, best = X.clone(), new
        if new <= tol:
            res = new
            break
        if new > 0.5 * res:
            why = (
                f"refinement stalled at {best:.2e} after {rounds} rounds: the "
                f"{info.compute_dtype} products differ from the exact ones by more than this "
                "system's conditioning allows (a small ridge); solve in float64"
            )
            res = new
            break
        res = new
    info.iterations = it
    info.final_residual = best
    info.converged = best <= tol
    info.stop_reason = "converged" if info.converged else why
    info.time_s = time.perf_counter() - t_start
    info.extra["refinement_rounds"] = rounds
    if not info.converged:
        warn_unconverged(where, info, why)
    return _shape_like(X_best, B, one_d), info


def _start(x0, b, n: int, where: str, dtype, residual):
    """``(X, R)`` at the starting point: zeros and ``b``, or ``x0`` (checked against the shape of
    ``b``, in ``dtype``) and ``residual(x0)``."""
    if x0 is None:
        return torch.zeros_like(b), b.clone()
    X = check_rhs(x0, n, where, "x0").to(dtype).clone()
    if X.shape != b.shape:
        raise ValueError(
            f"{where}: x0 must have the shape of B {tuple(b.shape)}, got {tuple(x0.shape)}"
        )
    return X, residual(X)


def _dtype_name(dtype) -> str:
    return str(dtype).replace("torch.", "")


def _shape_like(X: torch.Tensor, B: torch.Tensor, one_d: bool) -> torch.Tensor:
    X = X.to(B.dtype)
    return X[:, 0] if one_d else X


class NystromPreconditioner:
    """Randomised Nystrom preconditioner of K + ridge I (Frangella, Tropp & Udell, 2023).

    From M landmark columns C = K[:, S] (uniformly sampled without replacement), the Nystrom
    approximation C K_SS^+ C^T = U diag(lam) U^T (U: N x r orthonormal, r <= M) gives

        P^{-1} = (lam_r + ridge) U (diag(lam) + ridge)^{-1} U^T + (I - U U^T),

    which maps the top r eigendirections of K + ridge I to eigenvalue ~1 and leaves the rest,
    so CG needs iterations that depend on lam_r / ridge instead of lam_1 / ridge.

    Parameters
    ----------
    A : Tensor, shape (N, N), or operator with ``columns(idx)``
        The kernel matrix (e.g. a :class:`~fastkernels.solvers.KernelOperator`).
    ridge : float
        The ridge of the system it preconditions (>= 0).
    rank : int
        Number of landmark columns M (clipped to N).
    generator : torch.Generator, optional
        Draws the landmarks.
    dtype : torch.dtype, optional
        Dtype U is stored and applied in (default: A's); the M x M algebra runs in float64.

    Attributes
    ----------
    U : Tensor, shape (N, r)
    lam : Tensor, shape (r,), float64
    rank : int
        r, after dropping numerically zero eigenvalues.
    """

    def __init__(self, A, ridge: float, rank: int, *, generator=None, dtype=None):
        where = "NystromPreconditioner"
        op = as_operator(A, where)
        n = op.shape[0]
        ridge = check_ridge(ridge, where)
        if rank < 1:
            raise ValueError(f"{where}: rank must be >= 1, got {rank}")
        m = min(int(rank), n)
        idx = torch.randperm(n, generator=generator)[:m].to(getattr(op, "device", "cpu"))
        C = op.columns(idx) if hasattr(op, "columns") else op.matvec(_unit_columns(n, idx))
        dtype = C.dtype if dtype is None else dtype
        W = C[idx].to(torch.float64)
        W = 0.5 * (W + W.mT)
        # A relative shift keeps the Cholesky of the landmark block defined for (near-)duplicate
        # landmarks; it only makes the approximation slightly smaller, never indefinite.
        shift = 1e-7 * float(W.diagonal().mean()) * m
        W.diagonal().add_(shift)
        try:
            L, _ = cholesky_factor(W, where, warn=False)
            # B = C L^{-T}, so that B B^T = C W^{-1} C^T.
            Bt = torch.linalg.solve_triangular(L.to(dtype), C.mT.to(dtype), upper=False)
        except torch.linalg.LinAlgError:
            # A landmark block that rounding left indefinite (near-duplicate landmarks, an
            # inexact kernel): its pseudo-inverse square root from the eigendecomposition, with
            # the eigenvalues at rounding level dropped. Never an error: a preconditioner only
            # has to be positive definite, not exact.
            w, Q = _eigh(W)
            keep = w > float(w.max()) * torch.finfo(dtype).eps * m
            Bt = ((Q[:, keep] / w[keep].sqrt()).mT.to(dtype)) @ C.mT.to(dtype)  # (r, n)
        G = (Bt @ Bt.mT).to(torch.float64)  # B^T B, (m, m)
        s, V = _eigh(0.5 * (G + G.mT))
        # Eigenvalues below the rounding level of B (float32: ~1e-7 relative) carry no
        # direction information; dropping them keeps U orthonormal.
        eps = torch.finfo(dtype).eps * 10
        keep = s > float(s.max()) * eps
        s, V = s[keep], V[:, keep]
        if s.numel() == 0:
            raise ValueError(f"{where}: the landmark block is numerically zero; check the kernel")
        # U = B V s^{-1/2}: orthonormal columns spanning the Nystrom approximation.
        self.U = (Bt.mT @ (V / s.sqrt()).to(dtype)).contiguous()
        self.lam = s
        self.rank = int(s.numel())
        self.ridge = ridge
        lam_min = float(s.min())
        self._scale = ((lam_min + ridge) / (s + ridge)).to(self.U.dtype) - 1.0
        if ridge == 0:
            # Ridgeless: keep the scaling finite (lam_r / lam_i <= 1).
            self._scale = (lam_min / s).to(self.U.dtype) - 1.0
        self.indices = idx

    @property
    def nbytes(self) -> int:
        return self.U.numel() * self.U.element_size()

    def __call__(self, R: torch.Tensor) -> torch.Tensor:
        """P^{-1} R for R (N, T); result in R's dtype."""
        UtR = self.U.mT @ R.to(self.U.dtype)  # (r, T)
        return R + (self.U @ (self._scale[:, None] * UtR)).to(R.dtype)


def _unit_columns(n: int, idx: torch.Tensor) -> torch.Tensor:
    E = torch.zeros((n, len(idx)), dtype=torch.float64)
    E[idx, torch.arange(len(idx))] = 1.0
    return E


def _eigh(G: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    # LAPACK's symmetric eigensolver scales poorly with threads at these sizes (M <= a few
    # thousand) and collapses when the cores are shared: measured 0.06 s on one thread against
    # 0.2-5 s on two busy cores for M = 500. One thread is never much slower.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return torch.linalg.eigh(G)
    finally:
        torch.set_num_threads(n)
