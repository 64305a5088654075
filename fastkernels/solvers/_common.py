"""Pieces shared by the solvers: result record, memory budgets, input checks, progress bars."""

from __future__ import annotations

import math
import re
import sys
import time
import warnings
from dataclasses import asdict, dataclass, field

import torch
from sklearn.exceptions import ConvergenceWarning as _SklearnConvergenceWarning

__all__ = [
    "ConvergenceWarning",
    "SolverInfo",
    "parse_bytes",
    "format_bytes",
    "DEFAULT_MEMORY_BUDGET",
    "check_rhs",
    "check_ridge",
    "cholesky_factor",
]

# 4 GiB: enough for the dense float32 Gram of ~30000 samples, small enough for a laptop.
DEFAULT_MEMORY_BUDGET = 4 * 1024**3

_UNITS = {"": 1, "b": 1, "kb": 1e3, "mb": 1e6, "gb": 1e9, "tb": 1e12}
_UNITS.update({"kib": 1024, "mib": 1024**2, "gib": 1024**3, "tib": 1024**4})


class ConvergenceWarning(_SklearnConvergenceWarning, RuntimeWarning):
    """An iterative solver stopped before its residual reached the tolerance.

    A subclass of :class:`sklearn.exceptions.ConvergenceWarning`, so that filters written for
    scikit-learn's warning (``warnings.simplefilter("ignore", ConvergenceWarning)`` with the
    scikit-learn class) catch it too, and of :class:`RuntimeWarning`, as it always was.
    """


@dataclass
class SolverInfo:
    """What a solve did, kept on fitted estimators as ``solver_info_``.

    Attributes
    ----------
    solver : str
        ``"cholesky"``, ``"cg"`` or ``"nystrom"``.
    converged : bool
        Whether the final *true* relative residual (recomputed from the iterate, not the CG
        recurrence) is at most ``tol`` for every right-hand side.
    iterations : int
        Iterations run (0 for a direct solve).
    residuals : list of float
        Relative residual after each iteration (entry 0: the starting point), the largest over
        the right-hand sides. Every ``check_every`` iterations and at the end the entry is the
        true residual, and the recurrence restarts from it (residual replacement), so drift of
        the recurrence never goes unnoticed.
    true_residuals : list of (int, float)
        ``(iteration, true relative residual)`` at each check.
    final_residual : float
        The true relative residual of the returned solution. Iterative solvers return their
        best iterate by true residual, so this is the smallest entry of ``true_residuals``,
        not necessarily the last.
    tol : float
        The tolerance asked for.
    time_s : float
        Wall time of the solve, setup (Gram, preconditioner) included.
    jitter : float
        Diagonal jitter the solve added to a matrix it factorised (Cholesky: to K + ridge I, so
        a non-zero value means the system solved differs from the one asked for; Nystrom: to
        K_MM inside the preconditioner only, which changes the speed, never the solution).
    compute_dtype : str
        Dtype the kernel entries were computed in (``"float32"`` or ``"float64"``). With
        float32 entries and ``exact_check`` the final residual is still measured against the
        float64 kernel.
    exact_check : bool
        Whether ``final_residual`` was measured with float64 kernel products (always for a
        float64 solve).
    stop_reason : str
        Why the solve stopped: ``"converged"``, ``"max_iter"``, ``"stagnated: ..."``,
        ``"diverged: ..."``, ``"direct"`` (Cholesky), with the cause when it is known.
    extra : dict
        Solver-specific facts (centres, preconditioner rank, cached bytes, ...).
    """

    solver: str
    converged: bool = True
    iterations: int = 0
    residuals: list = field(default_factory=list)
    true_residuals: list = field(default_factory=list)
    final_residual: float = 0.0
    tol: float = 0.0
    time_s: float = 0.0
    jitter: float = 0.0
    compute_dtype: str = "float64"
    exact_check: bool = True
    stop_reason: str = ""
    extra: dict = field(default_factory=dict)

    @property
    def status(self) -> str:
        """One word for reports: ``"converged"`` or ``"NOT CONVERGED"``."""
        return "converged" if self.converged else "NOT CONVERGED"

    def to_dict(self) -> dict:
        """A JSON-able dict of the record."""
        d = asdict(self)
        d["true_residuals"] = [[int(i), float(r)] for i, r in self.true_residuals]
        return d


def parse_bytes(value, *, name: str = "memory_budget", where: str) -> int:
    """A byte count from an int/float or a string such as ``"4GB"``, ``"512 MiB"``.

    Raises
    ------
    ValueError
        Not a positive size.
    """
    if isinstance(value, str):
        m = re.fullmatch(r"\s*([0-9]*\.?[0-9]+(?:[eE][+-]?[0-9]+)?)\s*([A-Za-z]*)\s*", value)
        if m is None or m.group(2).lower() not in _UNITS:
            raise ValueError(
                f"{where}: {name} must be a number of bytes or a size such as '4GB' or "
                f"'512MiB', got {value!r}"
            )
        out = float(m.group(1)) * _UNITS[m.group(2).lower()]
    elif isinstance(value, (int, float)) and not isinstance(value, bool):
        out = float(value)
    else:
        raise ValueError(
            f"{where}: {name} must be a number of bytes or a size string, got {value!r}"
        )
    if not math.isfinite(out) or out <= 0:
        raise ValueError(f"{where}: {name} must be > 0 bytes, got {value!r}")
    return int(out)


def format_bytes(n: float) -> str:
    """``1.6 GB`` style (decimal units)."""
    for unit, size in (("TB", 1e12), ("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= size:
            return f"{n / size:.3g} {unit}"
    return f"{int(n)} B"


def check_ridge(ridge, where: str) -> float:
    if isinstance(ridge, bool) or not isinstance(ridge, (int, float)):
        raise ValueError(f"{where}: ridge must be a finite number >= 0, got {ridge!r}")
    ridge = float(ridge)
    if not math.isfinite(ridge) or ridge < 0:
        raise ValueError(f"{where}: ridge must be a finite number >= 0, got {ridge}")
    return ridge


def check_rhs(Y: torch.Tensor, n: int, where: str, name: str = "Y") -> torch.Tensor:
    """Y as an (N, T) float tensor with N = ``n``; rejects NaN/inf (they poison every iterate)."""
    if not isinstance(Y, torch.Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(Y).__name__}")
    if not Y.is_floating_point():
        raise TypeError(f"{where}: {name} must be float32 or float64, got {Y.dtype}")
    if Y.dim() == 1:
        Y = Y[:, None]
    if Y.dim() != 2 or Y.shape[0] != n or Y.shape[1] == 0:
        raise ValueError(f"{where}: {name} must be (N, T) with N = {n}, got {tuple(Y.shape)}")
    if not bool(torch.isfinite(Y).all()):
        raise ValueError(f"{where}: {name} contains NaN or inf")
    return Y


def cholesky_factor(
    A: torch.Tensor, where: str, *, max_tries: int = 6, warn: bool = True
) -> tuple[torch.Tensor, float]:
    """Lower Cholesky factor of a symmetric matrix, adding diagonal jitter when it fails.

    Jitter starts at 1e-10 times the mean |diagonal| and grows tenfold per try; a
    RuntimeWarning states the jitter that succeeded.

    Returns
    -------
    L : Tensor, shape (M, M), dtype of ``A``
    jitter : float
        0.0 when none was needed.

    Raises
    ------
    torch.linalg.LinAlgError
        Still not positive definite after ``max_tries`` jitters.
    """
    scale = float(A.diagonal().abs().mean()) or 1.0
    jitter = 0.0
    for attempt in range(max_tries + 1):
        work = A if jitter == 0 else A + jitter * torch.eye(len(A), dtype=A.dtype, device=A.device)
        L, info = torch.linalg.cholesky_ex(work)
        if int(info) == 0:
            if jitter > 0 and warn:
                warnings.warn(
                    f"{where}: matrix of size {len(A)} was not numerically positive definite; "
                    f"added jitter {jitter:.3g} to the diagonal",
                    RuntimeWarning,
                    stacklevel=3,
                )
            return L, jitter
        jitter = scale * 1e-10 * (10.0**attempt)
    raise torch.linalg.LinAlgError(
        f"{where}: matrix of size {len(A)} is not positive definite even with jitter "
        f"{jitter:.3g}; increase the ridge"
    )


class Progress:
    """A tqdm bar per solve: iteration, residual, and an ETA from the observed convergence rate.

    The bar's total starts at ``max_iter`` and is re-estimated after every iteration by
    extrapolating the geometric decrease of the residual down to ``tol``, so that tqdm's ETA
    reflects when the solve will converge rather than when it would hit ``max_iter``.
    """

    def __init__(self, desc: str, max_iter: int, tol: float, verbose: bool):
        self.max_iter, self.tol = max_iter, tol
        self.bar = None
        if verbose:
            from tqdm import tqdm

            self.bar = tqdm(
                total=max_iter,
                desc=desc,
                unit="it",
                leave=False,
                file=sys.stderr,
                dynamic_ncols=True,
            )
        self.t0 = time.perf_counter()

    def update(self, it: int, res: float, res0: float) -> None:
        if self.bar is None:
            return
        if it >= 2 and 0 < res < res0:
            rate = math.log(res0 / res) / it  # per iteration, in log units
            left = math.log(max(res / self.tol, 1.0)) / rate if rate > 0 else self.max_iter
            self.bar.total = int(min(self.max_iter, it + math.ceil(left)))
        self.bar.set_postfix_str(f"residual {res:.2e} (tol {self.tol:.0e})", refresh=False)
        self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def warn_unconverged(where: str, info: SolverInfo, why: str, advice: str | None = None) -> None:
    if advice is None:
        advice = (
            "Raise max_iter or the ridge (or n_centers for Nystrom), or loosen tol; the residual "
            "history is in solver_info_ / info.residuals."
        )
    warnings.warn(
        f"{where}: NOT CONVERGED after {info.iterations} iterations ({why}): relative residual "
        f"{info.final_residual:.3g} > tol {info.tol:.3g}; the solution may be inaccurate. "
        + advice,
        ConvergenceWarning,
        stacklevel=3,
    )


def masked_ratio(num: torch.Tensor, den: torch.Tensor, active: torch.Tensor) -> torch.Tensor:
    """Per-column ``num / den`` where ``active`` and ``den > 0``, else 0.

    The CG step sizes alpha = r.z / p.Ap and beta = r'.z' / r.z of several right-hand sides at
    once: a converged (inactive) column, or one whose curvature vanished in finite precision,
    takes a zero step instead of a division by zero.
    """
    ok = active & (den > 0)
    return torch.where(ok, num / torch.where(ok, den, torch.ones_like(den)), torch.zeros_like(den))
