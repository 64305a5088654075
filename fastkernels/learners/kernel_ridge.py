"""Kernel ridge regression with hyperparameters chosen on a validation split."""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Sequence

import torch

from .. import ops
from .._validation import (
    check_choice,
    check_nonnegative_float,
    check_positive_float,
    check_positive_int,
    resolve_dtype,
)
from ..solvers import (
    DEFAULT_MEMORY_BUDGET,
    KernelOperator,
    NystromPreconditioner,
    cg,
    cholesky,
    format_bytes,
    min_tile_bytes,
    nystrom_pcg,
    parse_bytes,
)
from .base import (
    BaseRegressor,
    GridEdgeWarning,
    grid_edge,
    grid_edge_message,
    squared_error,
    validation_split,
)

# Relative ridge grid: ridge = r * mean(diag K). Relative, so that one grid serves kernels whose
# scale differs by orders of magnitude (RBF ~ 1, a raw empirical NTK ~ width).
DEFAULT_RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Bandwidth grid: multiples of the median heuristic (1 / median distance, squared for RBF).
DEFAULT_BANDWIDTH_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)

SOLVERS = ("auto", "cholesky", "cg", "nystrom")
# "auto" solves directly up to this N (or 20 x the output count): a float64 Cholesky of
# N = 8000 takes a few seconds on 2 cores, is exact whatever the conditioning, and avoids the
# rounding floor of CG on a float32 Gram (an RBF with a wide bandwidth and a small ridge stalls
# there near 1e-3 relative residual).
AUTO_CHOLESKY_MAX_N = 8000
# Default rank of the CG preconditioner: 500 landmark columns cut the iterations of an RBF
# problem from ~100 to ~15 at N = 8000; more columns cost more setup than they save.
DEFAULT_CG_RANK = 500
# Default tolerance (true relative residual) of the iterative solvers. The float32 kernel
# products have a rounding floor near 1e-5; 1e-4 already puts predictions within ~1e-5 relative
# test error of the exact solution (measured on RBF problems, N = 4000-8000).
DEFAULT_TOL = 1e-4


# compute_dtype="auto" computes the kernel in float64 while the solver's kernel matrix has at
# most this many entries (a 512 MiB float64 dense Gram at N = 8192, or N M for Nystrom): there
# float64 costs seconds at most and needs no refinement; beyond, float32 entries with float64
# accumulation, residuals and refinement (the float64 products then run once per round only).
AUTO_FLOAT64_ENTRIES = 1 << 26
COMPUTE_DTYPES = ("auto", "float32", "float64")


def default_n_centers(n: int) -> int:
    """Nystrom centres by default: 2 sqrt(N), at least 1000 and at most 3000 (and N)."""
    return int(min(n, max(1000, min(3000, round(2 * math.sqrt(n))))))


def cholesky_bytes(n: int) -> int:
    """Bytes the direct solve holds: the float64 Gram, its shifted copy and the factor."""
    return 3 * 8 * n * n


def nystrom_bytes(m: int, n_outputs: int) -> int:
    """Bytes of the Nystrom solve's M x M float64 factors and CG state (see nystrom_pcg)."""
    return 6 * m * m * 8 + 8 * m * n_outputs * 8


def choose_solver(
    n: int,
    n_outputs: int,
    memory_budget: int,
    ridge: float,
    compute_itemsize: int = 4,
    n_centers: int | None = None,
) -> tuple[str, str]:
    """The solver ``solver="auto"`` picks, with the reason, from N, outputs and the budget.

    Only solvers that fit ``memory_budget`` are candidates, in this order:

    - ``"cholesky"`` for N <= max(8000, 20 T) (T outputs) when the float64 Gram and its factor
      (3 N^2 x 8 bytes) fit the budget, and for ridge = 0 (ridgeless interpolation, where CG is
      unreliable) whenever they fit;
    - ``"cg"`` (exact kernel ridge on the dense Gram, stored in the compute dtype, with a
      Nystrom preconditioner) while N^2 entries fit the budget next to the preconditioner, the
      tiles in flight and the runtime share (:meth:`KernelOperator.dense_fits`);
    - ``"nystrom"`` (FALKON, approximate) when its M x M factors and one tile fit;
    - ``"cg"`` without a stored Gram (every product recomputed, memory-free) when only a tile
      of kernel rows fits.

    Returns
    -------
    (name, reason) : tuple of str

    Raises
    ------
    ValueError
        Not even one tile of kernel rows fits the budget.
    """
    chol_bytes = cholesky_bytes(n)
    dense_bytes = compute_itemsize * n * n + compute_itemsize * n * DEFAULT_CG_RANK
    pre_bytes = 2 * n * min(n, DEFAULT_CG_RANK) * compute_itemsize
    budget = format_bytes(memory_budget)
    small_n = max(AUTO_CHOLESKY_MAX_N, 20 * n_outputs)
    if chol_bytes <= memory_budget and (n <= small_n or ridge == 0):
        why = "ridge = 0" if ridge == 0 and n > small_n else f"N = {n} <= {small_n}"
        return "cholesky", f"{why}; float64 Gram + factor {format_bytes(chol_bytes)} fit {budget}"
    if KernelOperator.dense_fits(n, n, compute_itemsize, memory_budget, pre_bytes):
        return "cg", (
            f"N = {n}: dense Gram {format_bytes(dense_bytes)} fits {budget}; exact kernel ridge "
            "by Nystrom-preconditioned CG"
        )
    m = default_n_centers(n) if n_centers is None else min(n_centers, n)
    small = nystrom_bytes(m, n_outputs)
    if small + min_tile_bytes(n, m, compute_itemsize) < memory_budget:
        return "nystrom", (
            f"N = {n}: dense Gram {format_bytes(dense_bytes)} with its tiles, preconditioner and "
            f"runtime share exceeds {budget}; Nystrom approximation ({m} centres) by "
            "FALKON-preconditioned CG"
        )
    if min_tile_bytes(n, n, max(compute_itemsize, 8)) <= memory_budget:
        return "cg", (
            f"N = {n}: neither the dense Gram nor {m} Nystrom centres' factors "
            f"({format_bytes(small)}) fit {budget}; exact kernel ridge by CG with every product "
            "recomputed (memory-free, slow)"
        )
    raise ValueError(
        f"KernelRidge: memory_budget {budget} cannot hold one tile of {min(n, 16)} x {n} kernel "
        f"entries ({format_bytes(min_tile_bytes(n, n, 8))}) for N = {n}; raise memory_budget"
    )


def median_bandwidth(kernel_name: str, X: torch.Tensor, max_points: int = 1000) -> float:
    """Median heuristic: 1 / median squared distance (RBF) or 1 / median distance (others)."""
    Xs = X[:max_points].to(torch.float64)
    d2 = torch.cdist(Xs, Xs).pow(2)
    iu = torch.triu_indices(len(Xs), len(Xs), offset=1)
    vals = d2[iu[0], iu[1]]
    vals = vals[vals > 0]
    if vals.numel() == 0:
        return 1.0
    med = float(vals.median())
    return 1.0 / med if kernel_name == "rbf" else 1.0 / math.sqrt(med)


def resolve_kernel(kernel, kernel_params: dict | None, where: str):
    """A Kernel object from a name + params or a Kernel instance."""
    from ..kernels import Kernel, make_kernel

    if isinstance(kernel, Kernel) or (callable(kernel) and hasattr(kernel, "mv")):
        if kernel_params:
            raise ValueError(f"{where}: kernel_params must be empty when kernel is a Kernel object")
        return kernel
    if not isinstance(kernel, str):
        raise TypeError(
            f"{where}: kernel must be a kernel name or a Kernel, got {type(kernel).__name__}"
        )
    if kernel_params is not None and not isinstance(kernel_params, dict):
        raise TypeError(
            f"{where}: kernel_params must be a dict, got {type(kernel_params).__name__}"
        )
    return make_kernel(kernel, **(kernel_params or {}))


class KernelRidge(BaseRegressor):
    """Kernel ridge regression, (K + ridge I) C = Y, for several outputs at once.

    With ``ridge="auto"`` (and, for kernels with a bandwidth, ``gamma`` left unset) the
    hyperparameters are chosen by the validation error on a random ``validation_fraction`` of the
    training set; the model is then refitted on the whole training set. The test set is never seen.

    Parameters
    ----------
    kernel : str or Kernel, default "rbf"
        A registered kernel name (``"rbf"``, ``"laplace"``, ``"matern"``, ``"polynomial"``,
        ``"linear"``, ``"arccos"``, ``"ntk"``, ``"nngp"``) or a :class:`fastkernels.kernels.Kernel`.
    kernel_params : dict, optional
        Constructor parameters of the named kernel (e.g. ``{"arch": "3resnet"}`` for ``"ntk"``).
        A bandwidth kernel whose ``gamma`` is not given gets it chosen on the validation split
        from ``bandwidth_grid`` times the median heuristic.
    ridge : float or "auto", default "auto"
        Absolute ridge (0 = ridgeless interpolation, solved with a tiny jitter), or ``"auto"``:
        chosen from ``ridge_grid`` times the mean diagonal of K.
    ridge_grid, bandwidth_grid : sequence of float
        Candidate relative ridges and bandwidth multipliers for the validation search.
    validation_fraction : float, default 0.2
        Share of the training set held out to choose hyperparameters.
    dtype : {"float64", "float32"} or torch.dtype, default "float64"
        Dtype of the Gram matrix and the solve (a string or the torch dtype).
    device : str or torch.device, optional
        Where to compute (default: the device of X).
    random_state : int, default 0
        Seed of the validation split, of the search subsample and of the Nystrom centres.
    solver : {"auto", "cholesky", "cg", "nystrom"}, default "auto"
        How the final fit is solved (see :mod:`fastkernels.solvers`). ``"cholesky"``: direct,
        exact, O(N^3). ``"cg"``: exact, conjugate gradients on the Gram (kept dense in
        ``compute_dtype`` when it fits ``memory_budget``, otherwise products through
        ``kernel.mv`` recomputed every iteration), Nystrom-preconditioned with ``n_centers``
        landmark columns. ``"nystrom"``: FALKON, the ridge solution restricted to ``n_centers``
        centres; K_nM streamed in tiles. ``"auto"`` chooses by N, the number of outputs and
        the budget (:func:`choose_solver`), records the choice and its reason in ``hparams_``
        / ``solver_info_`` and, when ``verbose``, prints it.
    n_centers : int or None, default None
        Nystrom centres; None: :func:`default_n_centers` (N). With ``solver="cg"`` asked for
        by name it is the rank of the CG preconditioner instead (default 500, also under
        ``"auto"``). More centres than samples is an error.
    memory_budget : int or str, default 4 GiB
        Bytes the solve may hold beyond the data (``"4GB"``, ``"512MiB"`` or an int). A budget
        that cannot hold one tile of kernel rows raises ValueError before any work.
    tol : float or None, default None
        True relative residual at which the iterative solvers stop (None: 1e-4).
    max_iter : int or None, default None
        Iteration cap of the iterative solvers (None: 1000 for CG, 200 for Nystrom). Stopping
        unconverged warns with a :class:`fastkernels.solvers.ConvergenceWarning`, a subclass of
        :class:`sklearn.exceptions.ConvergenceWarning` (and of RuntimeWarning).
    compute_dtype : {"auto", "float32", "float64"}, default "auto"
        Dtype of the kernel evaluations inside the iterative solvers. Their recurrences, the
        preconditioners' small factors and the products' accumulation run in float64 whatever
        it is, and with float32 entries the residual is measured with float64 kernel products
        and the solution refined until that residual is below ``tol`` (falling back to a
        float64 solve from there when float32 entries are too coarse for a small ridge).
        ``"auto"``: float64 when the solver's kernel matrix has at most 2^26 entries (N^2 for
        CG, N M for Nystrom), float32 beyond. Cholesky and ``predict`` use ``dtype``.
    search_size : int, default 4000
        The hyperparameter search (ridge and bandwidth grids) runs on a random subsample of at
        most this many training points, always by Cholesky on its validation split; the
        chosen absolute ridge and bandwidth are then used on all N points. Below this size the
        search sees the whole training set, as it always did.
    warm_start : bool, default False
        When the previous fit's training set is a prefix of the new one (nested subsets, as in
        a learning curve) and the kernel is unchanged, start the iterative solver from the
        previous solution (padded with zeros for CG; same centres and coefficients for
        Nystrom, the prefix being an i.i.d. sample too).
    verbose : bool, default False
        A tqdm bar per iterative solve (iteration, residual, ETA) and a line naming the solver
        ``"auto"`` picked (on stderr); False silences both (never the non-convergence warning).
    backend : {"auto", "fastkernels", "keops"}, default "auto"
        How the CG products K @ V are computed. ``"keops"`` (needs pykeops, the ``keops``
        extra; rbf, laplace, matern, polynomial, linear, arccos) runs them as KeOps reductions,
        memory-free (no dense Gram, whatever the budget), and requires ``solver="cg"``: the
        other solvers need the Gram or its tiles, which the ops compute, so asking for KeOps
        there is a ValueError rather than a silent no-op. The hyperparameter search (Gram +
        Cholesky on at most ``search_size`` points), the CG preconditioner's columns and
        ``predict`` use the ops whatever the backend.

    Attributes
    ----------
    kernel_ : Kernel
        The fitted kernel (with its chosen bandwidth).
    ridge_ : float
        The absolute ridge used in the final fit.
    dual_coef_ : torch.Tensor, shape (N, k), or (M, k) for ``"nystrom"``
        Coefficients on ``X_fit_`` (or on ``centers_``).
    X_fit_ : torch.Tensor, shape (N, D)
    centers_ : torch.Tensor, shape (M, D), or None
        The Nystrom centres (None for the exact solvers).
    hparams_ : dict
        Chosen hyperparameters and their validation error, the solver (``"solver"``) and, for
        Nystrom, ``"n_centers"``; ``"search_samples"`` when the search ran on a subsample.
        ``"ridge_rel"`` (float): the chosen ``ridge_grid`` multiplier, when the ridge was
        searched; ``"bandwidth_rel"`` (float): the chosen ``bandwidth_grid`` multiplier, when
        the bandwidth was searched. ``"grid_edge"`` (list of str, always present, empty when
        nothing was searched): one line per searched hyperparameter chosen at the smallest or
        largest value of its grid (see :func:`fastkernels.learners.base.grid_edge`); a non-empty
        list is also warned once as a :class:`~fastkernels.learners.base.GridEdgeWarning`.
    solver_info_ : dict
        What the final solve did (:class:`fastkernels.solvers.SolverInfo` as a dict):
        ``solver``, ``converged``, ``iterations``, ``residuals`` (history), ``final_residual``,
        ``time_s``, ``reason`` (why this solver), ``extra``.
    validation_errors_ : list of dict
        Every candidate tried with its validation error.
    n_iter_ : int
        Iterations of the final solve (``solver_info_["iterations"]``): CG or FALKON
        iterations, float64 continuation included; 0 for a direct (Cholesky) solve.
    n_features_in_ : int
        Number of features seen by ``fit``.
    feature_names_in_ : ndarray of str
        Column names of X, when ``fit`` got a DataFrame with string column names.
    n_outputs_ : int
        Number of outputs k.

    Notes
    -----
    X and Y may be NumPy arrays, lists, DataFrames (validated as scikit-learn's
    ``check_array`` does) or torch tensors (kept on their device). ``predict`` returns a NumPy
    array for input that is not a tensor and a tensor for tensor input.
    """

    _fitted_attribute = "dual_coef_"

    def __init__(
        self,
        kernel="rbf",
        kernel_params: dict | None = None,
        ridge="auto",
        ridge_grid: Sequence[float] = DEFAULT_RIDGE_GRID,
        bandwidth_grid: Sequence[float] = DEFAULT_BANDWIDTH_GRID,
        validation_fraction: float = 0.2,
        dtype="float64",
        device=None,
        random_state: int = 0,
        solver: str = "auto",
        n_centers: int | None = None,
        memory_budget=DEFAULT_MEMORY_BUDGET,
        tol: float | None = None,
        max_iter: int | None = None,
        compute_dtype="auto",
        search_size: int = 4000,
        warm_start: bool = False,
        verbose: bool = False,
        backend: str = "auto",
    ):
        self.kernel = kernel
        self.kernel_params = kernel_params
        self.ridge = ridge
        self.ridge_grid = ridge_grid
        self.bandwidth_grid = bandwidth_grid
        self.validation_fraction = validation_fraction
        self.dtype = dtype
        self.device = device
        self.random_state = random_state
        self.solver = solver
        self.n_centers = n_centers
        self.memory_budget = memory_budget
        self.tol = tol
        self.max_iter = max_iter
        self.compute_dtype = compute_dtype
        self.search_size = search_size
        self.warm_start = warm_start
        self.verbose = verbose
        self.backend = backend

    def check_params(self):
        """Check the constructor arguments (raises ValueError/TypeError naming the bad one)."""
        where = "KernelRidge"
        if self.ridge != "auto":
            check_nonnegative_float(self.ridge, name="ridge", where=where)
        for name in ("ridge_grid", "bandwidth_grid"):
            grid = getattr(self, name)
            if (
                isinstance(grid, (str, bytes))
                or len(grid) == 0
                or any(
                    isinstance(g, bool)
                    or not (isinstance(g, (int, float)) and math.isfinite(g) and g > 0)
                    for g in grid
                )
            ):
                raise ValueError(
                    f"{where}: {name} must be a non-empty list of finite numbers > 0, got {grid!r}"
                )
        resolve_dtype(self.dtype, where=where)
        if isinstance(self.kernel, str):
            resolve_kernel(self.kernel, self.kernel_params, where)
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"{where}: validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )
        check_choice(self.solver, SOLVERS, name="solver", where=where)
        ops.check_backend(self.backend, where)
        if self.backend == "keops":
            if self.solver != "cg":
                raise ValueError(
                    f"{where}: backend='keops' runs the CG products only; pass solver='cg' "
                    f"(got solver={self.solver!r})"
                )
            ops.check_keops_expressible(str(getattr(self.kernel, "name", self.kernel)), where)
        if self.n_centers is not None:
            check_positive_int(self.n_centers, name="n_centers", where=where)
        parse_bytes(self.memory_budget, where=where)
        if self.tol is not None:
            check_positive_float(self.tol, name="tol", where=where)
            if self.tol >= 1:
                raise ValueError(f"{where}: tol must be in (0, 1), got {self.tol!r}")
        if self.max_iter is not None:
            check_positive_int(self.max_iter, name="max_iter", where=where)
        if not (isinstance(self.compute_dtype, str) and self.compute_dtype == "auto"):
            resolve_dtype(self.compute_dtype, name="compute_dtype", where=where)
        check_positive_int(self.search_size, name="search_size", where=where)
        if self.search_size < 2:
            raise ValueError(f"{where}: search_size must be >= 2, got {self.search_size}")

    def _candidate_kernels(self, base, X: torch.Tensor) -> list:
        attr = getattr(base, "bandwidth_param", None)
        if attr is None or getattr(base, attr) is not None:
            return [base]
        g0 = median_bandwidth(base.name, X)
        params = base.params()
        return [type(base)(**{**params, attr: g0 * m}) for m in self.bandwidth_grid]

    def _compute_dtype(self, entries: int) -> torch.dtype:
        """The kernel dtype of an iterative solve whose kernel matrix has ``entries`` entries."""
        if isinstance(self.compute_dtype, str) and self.compute_dtype == "auto":
            return torch.float64 if entries <= AUTO_FLOAT64_ENTRIES else torch.float32
        return resolve_dtype(self.compute_dtype, name="compute_dtype", where="KernelRidge")

    def check_fit_plan(self, n: int, n_outputs: int = 1, ridge: float | None = None) -> dict:
        """The solver, compute dtype and centres a fit on ``n`` samples would use, or the error.

        Everything that can be decided from the parameters and the sizes is checked here, so
        that :meth:`fit` (and a sweep, for each of its sample counts) fails before any work:
        a budget the chosen solver cannot honour, ``n_centers`` > N, and the parameter checks
        of :meth:`check_params`.

        Parameters
        ----------
        n : int
            Training samples.
        n_outputs : int, default 1
        ridge : float, optional
            The absolute ridge, when known (it only matters when it is 0: ``"auto"`` then
            prefers Cholesky). Default: ``self.ridge`` (any grid value counts as positive).

        Returns
        -------
        dict
            ``solver``, ``reason``, ``compute_dtype`` (torch.dtype of the kernel entries of an
            iterative solve), ``n_centers`` (Nystrom centres or CG preconditioner rank).

        Raises
        ------
        ValueError
            The plan cannot run (the message names the parameter and the numbers).
        """
        where = "KernelRidge"
        self.check_params()
        budget = parse_bytes(self.memory_budget, where=where)
        if ridge is None:
            ridge = 1.0 if self.ridge == "auto" else float(self.ridge)
        solver, reason = self.solver, "requested"
        m = None
        too_many = self.n_centers is not None and self.n_centers > n

        def centres_error(what):
            return ValueError(
                f"{where}: n_centers = {self.n_centers} ({what}) is more than the N = {n} "
                "training samples; use at most N (or solver='cg' / 'cholesky' for exact kernel "
                "ridge)"
            )

        if solver == "cg" and too_many:
            raise centres_error("the CG preconditioner's rank")
        if solver == "auto":
            itemsize = torch.finfo(self._compute_dtype(n * n)).bits // 8
            solver, reason = choose_solver(
                n, n_outputs, budget, ridge, itemsize, n_centers=self.n_centers
            )
        if solver == "cholesky":
            need = cholesky_bytes(n)
            if need > budget:
                raise ValueError(
                    f"{where}: solver='cholesky' holds the float64 Gram and its factor "
                    f"({format_bytes(need)} for N = {n}), more than memory_budget "
                    f"{format_bytes(budget)}; raise memory_budget or use solver='auto'"
                )
            cdtype = resolve_dtype(self.dtype, where=where)
        elif solver == "nystrom":
            if too_many:
                raise centres_error("Nystrom centres")
            m = self.n_centers if self.n_centers is not None else default_n_centers(n)
            cdtype = self._compute_dtype(n * m)
            itemsize = torch.finfo(cdtype).bits // 8
            need = nystrom_bytes(m, n_outputs) + min_tile_bytes(n, m, itemsize)
            if need >= budget:
                raise ValueError(
                    f"{where}: memory_budget {format_bytes(budget)} cannot hold the {m} x {m} "
                    f"Nystrom factors and one tile of kernel rows ({format_bytes(need)}); "
                    "raise memory_budget or lower n_centers"
                )
        else:  # cg
            cdtype = self._compute_dtype(n * n)
            explicit = self.solver == "cg" and self.n_centers is not None
            m = min(n, self.n_centers if explicit else DEFAULT_CG_RANK)
            # The float64 residual products of a float32 solve need their own tile.
            need = min_tile_bytes(n, n, 8)
            if need > budget:
                raise ValueError(
                    f"{where}: memory_budget {format_bytes(budget)} cannot hold one tile of "
                    f"{min(n, 16)} x {n} kernel entries ({format_bytes(need)}); raise "
                    "memory_budget"
                )
        return {"solver": solver, "reason": reason, "compute_dtype": cdtype, "n_centers": m}

    def fit(self, X, Y) -> KernelRidge:
        """Fit on X (N, D) and Y (N,) or (N, k).

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (N, D)
        Y : array-like or torch.Tensor, shape (N,) or (N, k)

        Returns
        -------
        KernelRidge
            self, fitted.

        Raises
        ------
        ValueError
            Bad parameters or input (NaN/inf in X or Y, Y None, complex or empty data, a
            hyperparameter search on a single sample, ...), ``n_centers`` > N, or a
            ``memory_budget`` the solver cannot honour: all before any kernel is evaluated
            (see :meth:`check_fit_plan`).
        TypeError
            Sparse, boolean or non-numeric X or Y.
        torch.linalg.LinAlgError
            Cholesky with ridge = 0 on a kernel that is not strictly positive definite, even
            after the jitter retries (a warning names the jitter when a retry succeeds).

        Warns
        -----
        GridEdgeWarning
            The search chose the smallest or largest value of ``ridge_grid`` or
            ``bandwidth_grid`` (one warning naming each; also in ``hparams_["grid_edge"]``).
        """
        self.check_params()
        base = resolve_kernel(self.kernel, self.kernel_params, "KernelRidge")
        dtype = resolve_dtype(self.dtype, where="KernelRidge")
        previous = self._warm_state()
        X, Y = self._check_fit_input(X, Y, dtype=dtype, device=self.device)
        n = len(X)
        plan = self.check_fit_plan(n, Y.shape[1])  # before the search: fail fast
        search_X, search_Y, n_search = X, Y, None
        if n > self.search_size:
            g = torch.Generator().manual_seed(int(self.random_state) + 31_337)
            sub = torch.randperm(n, generator=g)[: self.search_size].to(X.device)
            search_X, search_Y, n_search = X[sub], Y[sub], self.search_size
        candidates = self._candidate_kernels(base, search_X)
        search = self.ridge == "auto" or len(candidates) > 1
        self.validation_errors_ = []
        ridge_rel = bandwidth_rel = None
        if search:
            kernel, ridge, val_error, i_kernel, ridge_rel = self._search(
                candidates, search_X, search_Y
            )
            if len(candidates) > 1:
                bandwidth_rel = float(self.bandwidth_grid[i_kernel])
        else:
            kernel, ridge, val_error = candidates[0], float(self.ridge), None
        edges = self._grid_edges(ridge_rel, bandwidth_rel)
        if ridge == 0 and self.solver == "auto":
            plan = self.check_fit_plan(n, Y.shape[1], ridge=ridge)
        budget = parse_bytes(self.memory_budget, where="KernelRidge")
        solver, reason, cdtype = plan["solver"], plan["reason"], plan["compute_dtype"]
        if self.solver == "auto" and self.verbose:
            print(f"KernelRidge: solver={solver!r} ({reason})", file=sys.stderr)
        self.centers_ = None
        if solver == "cholesky":
            K = kernel(X, X)
            self.dual_coef_, info = cholesky(
                K, Y, ridge, dtype=dtype, return_info=True, tol=self.tol or DEFAULT_TOL
            )
            del K
        elif solver == "cg":
            self.dual_coef_, info = self._fit_cg(kernel, X, Y, ridge, budget, cdtype, previous)
        else:
            self.dual_coef_, info = self._fit_nystrom(kernel, X, Y, ridge, budget, cdtype, previous)
        self.kernel_, self.ridge_, self.X_fit_ = kernel, ridge, X
        self.solver_info_ = {**info.to_dict(), "reason": reason}
        self.n_iter_ = int(info.iterations)
        self.hparams_ = {"kernel": kernel.name, **_jsonable(kernel.params()), "ridge": ridge}
        if val_error is not None:
            self.hparams_["val_error"] = val_error
        if n_search is not None and search:
            self.hparams_["search_samples"] = n_search
        if ridge_rel is not None:
            self.hparams_["ridge_rel"] = ridge_rel
        if bandwidth_rel is not None:
            self.hparams_["bandwidth_rel"] = bandwidth_rel
        self.hparams_["grid_edge"] = edges
        self.hparams_["solver"] = solver
        if solver == "nystrom":
            self.hparams_["n_centers"] = int(self.centers_.shape[0])
        if edges:
            # Whatever ``verbose`` says: a choice on the grid's edge is a result to question,
            # not progress output.
            warnings.warn(grid_edge_message("KernelRidge", edges), GridEdgeWarning, stacklevel=2)
        return self

    def _grid_edges(self, ridge_rel: float | None, bandwidth_rel: float | None) -> list[str]:
        """:func:`grid_edge` lines of the searched relative ridge and bandwidth (None: fixed)."""
        edges = []
        if ridge_rel is not None:
            edges.append(grid_edge("ridge_grid", self.ridge_grid, ridge_rel))
        if bandwidth_rel is not None:
            edges.append(grid_edge("bandwidth_grid", self.bandwidth_grid, bandwidth_rel))
        return [e for e in edges if e is not None]

    def _warm_state(self):
        """The previous fit's state, when warm_start asks for it and one exists."""
        if not self.warm_start or not hasattr(self, "dual_coef_"):
            return None
        return {
            "X": self.X_fit_,
            "coef": self.dual_coef_,
            "centers": getattr(self, "centers_", None),
            "kernel": self.kernel_,
            "solver": self.hparams_.get("solver"),
        }

    def _warm_start_for(self, previous, kernel, X, solver):
        """Whether ``previous`` seeds this fit: same kernel and solver, X_prev a prefix of X."""
        if previous is None or previous["solver"] != solver or previous["kernel"] != kernel:
            return False
        Xp = previous["X"]
        if Xp.shape[0] > X.shape[0] or Xp.shape[1] != X.shape[1] or Xp.dtype != X.dtype:
            return False
        return bool(torch.equal(Xp.to(X.device), X[: Xp.shape[0]]))

    def _fit_cg(self, kernel, X, Y, ridge, budget, cdtype, previous):
        n = len(X)
        itemsize = torch.finfo(cdtype).bits // 8
        # n_centers sets the preconditioner's rank only when CG was asked for by name: under
        # "auto" it is meant for the Nystrom solver, and thousands of landmark columns would
        # cost CG more setup (N M^2) than they save in iterations.
        explicit = self.solver == "cg" and self.n_centers is not None
        rank = min(n, self.n_centers if explicit else DEFAULT_CG_RANK)
        # The preconditioner's N x rank factors (two of them at its setup's peak) get at most
        # half the budget: a smaller budget lowers the rank rather than dropping it (plain CG
        # on a kernel matrix can need thousands of iterations).
        rank = max(0, min(rank, (budget // 2) // (2 * n * itemsize)))
        pre_bytes = 2 * n * rank * itemsize
        use_pre = rank >= 1
        reserved = pre_bytes if use_pre else 0
        # KeOps products are memory-free by design: never a dense Gram with that backend. The
        # operator's own accounting (tiles, runtime share) decides, so "dense" cannot fail.
        dense = self.backend != "keops" and KernelOperator.dense_fits(
            n, n, itemsize, budget, reserved
        )
        op = KernelOperator(
            kernel,
            X,
            dtype=cdtype,
            memory_budget=budget,
            cache="dense" if dense else "none",
            reserved_bytes=reserved,
            backend=self.backend,
        )
        pre = None
        if use_pre:
            g = torch.Generator().manual_seed(int(self.random_state))
            pre = NystromPreconditioner(op, ridge, rank, generator=g, dtype=cdtype)
        x0 = None
        if self._warm_start_for(previous, kernel, X, "cg"):
            x0 = torch.zeros_like(Y)
            x0[: len(previous["coef"])] = previous["coef"].to(Y.dtype)
        exact = None
        if cdtype != torch.float64:
            # Float64 products (memory-free) measure the residual and drive the refinement.
            exact = KernelOperator(
                kernel,
                X.to(torch.float64),
                dtype=torch.float64,
                memory_budget=budget,
                cache="none",
                reserved_bytes=0,
                backend="auto",
            )
        tol = self.tol or DEFAULT_TOL
        max_iter = self.max_iter or min(n, 1000)
        desc = f"KernelRidge cg (N={n})"

        def solve(A, pre, x0, desc, exact_op=None):
            return cg(
                A,
                Y,
                ridge,
                x0=x0,
                preconditioner=pre,
                tol=tol,
                max_iter=max_iter,
                verbose=self.verbose,
                desc=desc,
                exact_op=exact_op,
            )

        with warnings.catch_warnings(record=exact is not None) as caught:
            if exact is not None:
                # Recorded, and re-issued below unless the float64 fallback supersedes them.
                warnings.simplefilter("always")
            coef, info = solve(op, pre, x0, desc, exact_op=exact)
        fallback = None
        if exact is not None and not info.converged and info.iterations < max_iter:
            # Float32 entries cannot resolve this system (a tiny ridge): go on in float64 from
            # the best solution so far, with the float64 Gram when it fits, else memory-free.
            first = info
            dense64 = KernelOperator.dense_fits(n, n, 8, budget, 0)
            del op
            op64 = KernelOperator(
                kernel,
                X.to(torch.float64),
                dtype=torch.float64,
                memory_budget=budget,
                cache="dense" if dense64 else "none",
            )
            if pre is not None:
                g = torch.Generator().manual_seed(int(self.random_state))
                pre = NystromPreconditioner(op64, ridge, rank, generator=g, dtype=torch.float64)
            coef, info = solve(op64, pre, coef, desc + " float64")
            fallback = _continue_record(first, info)
        elif exact is not None:
            for w in caught:  # the float32 solve's own warnings, not superseded by a fallback
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        info.extra.update(
            {
                "dense_gram": dense,
                "preconditioner_rank": pre.rank if pre is not None else 0,
                "warm_start": x0 is not None,
                "memory_budget": budget,
                "fallback": fallback,
            }
        )
        return coef, info

    def _fit_nystrom(self, kernel, X, Y, ridge, budget, cdtype, previous):
        n = len(X)
        m = self.n_centers if self.n_centers is not None else default_n_centers(n)
        centers, x0 = None, None
        if self._warm_start_for(previous, kernel, X, "nystrom") and len(previous["coef"]) == m:
            centers, x0 = previous["centers"], previous["coef"]
        g = torch.Generator().manual_seed(int(self.random_state))
        kw = dict(
            tol=self.tol or DEFAULT_TOL,
            max_iter=self.max_iter or 200,
            memory_budget=budget,
            verbose=self.verbose,
        )
        with warnings.catch_warnings(record=cdtype != torch.float64) as caught:
            if cdtype != torch.float64:
                warnings.simplefilter("always")  # re-issued below unless superseded
            res = nystrom_pcg(
                kernel, X, Y, ridge, n_centers=m, centers=centers, x0=x0, dtype=cdtype,
                generator=g, **kw,
            )  # fmt: skip
        fallback = None
        first = res.info
        if cdtype != torch.float64 and not first.converged and first.iterations < kw["max_iter"]:
            # The float32 tiles cannot resolve this system (refinement stalled: a tiny ridge
            # against an ill-conditioned K_MM): go on with float64 tiles from where it stopped,
            # with the same centres.
            res = nystrom_pcg(
                kernel, X, Y, ridge, centers=res.centers, x0=res.coef, dtype=torch.float64, **kw
            )  # fmt: skip
            fallback = _continue_record(first, res.info)
        else:
            for w in caught or ():
                warnings.warn_explicit(w.message, w.category, w.filename, w.lineno)
        res.info.extra["warm_start"] = x0 is not None
        res.info.extra["fallback"] = fallback
        self.centers_ = res.centers
        return res.coef, res.info

    def _search(self, candidates, X, Y):
        """Validation search over ``candidates`` (kernels) and, for ``ridge="auto"``, the
        relative ridges.

        Returns
        -------
        (kernel, ridge, val_error, kernel_index, ridge_rel)
            The best kernel, its absolute ridge and validation error, the kernel's index in
            ``candidates`` and the chosen ``ridge_grid`` multiplier (None for a fixed ridge):
            the grid edges are judged on the multipliers, the absolute ridge being scaled per
            kernel.
        """
        idx_tr, idx_val = validation_split(
            len(X), self.validation_fraction, self.random_state, where="KernelRidge.fit"
        )
        Xtr, Ytr, Xval, Yval = X[idx_tr], Y[idx_tr], X[idx_val], Y[idx_val]
        best = (math.inf, None, None, 0, None)
        for i, kernel in enumerate(candidates):
            K_tr = kernel(Xtr, Xtr)
            K_val = kernel(Xval, Xtr)
            scale = float(K_tr.diagonal().mean()) or 1.0
            ridges = (
                [(scale * r, float(r)) for r in self.ridge_grid]
                if self.ridge == "auto"
                else [(float(self.ridge), None)]
            )
            for ridge, rel in ridges:
                C = cholesky(K_tr, Ytr, ridge, dtype=X.dtype)
                err = squared_error(K_val @ C, Yval)
                self.validation_errors_.append(
                    {**_jsonable(kernel.params()), "ridge": ridge, "val_error": err}
                )
                if err < best[0]:
                    best = (err, kernel, ridge, i, rel)
        return best[1], best[2], best[0], best[3], best[4]

    def predict(self, X):
        """Predictions for X (n, D).

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, D)

        Returns
        -------
        numpy.ndarray or torch.Tensor, shape (n, k), or (n,) when fitted on 1-D Y
            A tensor (on the fit's device, in ``dtype``) for tensor input, else a NumPy array.

        Raises
        ------
        sklearn.exceptions.NotFittedError
            Called before ``fit``.
        ValueError
            X is not (n, D) with the fitted D, is empty or holds NaN or inf.
        """
        self._check_is_fitted("predict")
        X_t = self._check_predict_input(X, dtype=self.X_fit_.dtype, device=self.X_fit_.device)
        support = self.X_fit_ if getattr(self, "centers_", None) is None else self.centers_
        pred = self.kernel_.mv(X_t, support, self.dual_coef_)
        return self._format_output(pred, X)


def _continue_record(first, info) -> str:
    """Fold a float32 solve's record into that of the float64 solve that continued it (one
    history, iterations and time in total); returns the fallback's description."""
    info.iterations += first.iterations
    info.residuals = first.residuals + info.residuals[1:]
    info.true_residuals = first.true_residuals + [
        (i + first.iterations, r) for i, r in info.true_residuals[1:]
    ]
    info.time_s += first.time_s
    info.compute_dtype = "float32+float64"
    return f"float64 after float32 refinement stopped at {first.final_residual:.2e}"


def _jsonable(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
    return out
