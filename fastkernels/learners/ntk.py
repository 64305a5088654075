"""Kernel ridge with the finite-width empirical NTK of a network at initialisation."""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import torch

from .._validation import check_choice, check_positive_int, resolve_dtype
from ..models import ARCHS, BLOCKS, TRAINABLE, StackedNet
from ..ntk.empirical import SCALINGS
from ..ntk.kernel import EmpiricalNTK
from ..solvers import DEFAULT_MEMORY_BUDGET
from .base import BaseRegressor, GridEdgeWarning, grid_edge_message
from .kernel_ridge import DEFAULT_RIDGE_GRID, KernelRidge


class NTKRegressor(BaseRegressor):
    """Kernel ridge regression with the empirical NTK of a randomly initialised network.

    The network (3resnet, 3layer or 2layer, initialised as in :class:`ResNetRegressor`) is never
    trained: its tangent kernel with respect to the ``trainable`` parameters, summed over the k
    outputs ("trace" mode), is the kernel, and the k outputs are fitted by kernel ridge with the
    ridge chosen on a validation split. This is the paper's "(NTK)" learner: what training the
    linearised network (without its initial output) converges to.

    Parameters
    ----------
    arch : {"3resnet", "3layer", "2layer"}, default "3resnet"
    width : int, default 256
    trainable : {"hidden", "last", "all"}, default "hidden"
    block : {"full", "bottleneck"}, default "full"
    scaling : {"standard", "ntk"}, default "standard"
        ``"standard"``: raw gradient inner products of the network as the paper trains it.
        ``"ntk"``: per-layer init-variance weighting (converges to the analytic NTK).
    ridge : float or "auto", default "auto"
    ridge_grid : sequence of float
        Relative ridge candidates (times the mean kernel diagonal).
    validation_fraction : float, default 0.2
    dtype : torch.dtype, default torch.float64
    device : optional
    random_state : int, default 0
        Seed of the network's init and of the validation split.
    solver, n_centers, memory_budget, tol, max_iter, compute_dtype, search_size, verbose
        Passed to :class:`KernelRidge` (same meaning): the solver ("auto", "cholesky", "cg",
        "nystrom"), Nystrom centres / CG preconditioner rank, memory budget, iteration
        control, dtype of the kernel evaluations inside the iterative solvers, size of the
        hyperparameter-search subsample, progress output.

    Attributes
    ----------
    net_ : StackedNet
    kernel_ : EmpiricalNTK
    krr_ : KernelRidge
        The fitted kernel ridge model.
    solver_info_ : dict
        ``krr_.solver_info_``: solver, iterations, residual history, converged flag.
    hparams_ : dict
        The kernel ridge fit's ``hparams_`` (kernel, ridge, solver, ...), including
        ``"grid_edge"`` (list of str) and, when the ridge was searched, ``"ridge_rel"``.
    """

    def __init__(
        self,
        arch: str = "3resnet",
        width: int = 256,
        trainable: str = "hidden",
        block: str = "full",
        scaling: str = "standard",
        ridge="auto",
        ridge_grid: Sequence[float] = DEFAULT_RIDGE_GRID,
        validation_fraction: float = 0.2,
        dtype=torch.float64,
        device=None,
        random_state: int = 0,
        solver: str = "auto",
        n_centers: int | None = None,
        memory_budget=DEFAULT_MEMORY_BUDGET,
        tol: float | None = None,
        max_iter: int | None = None,
        compute_dtype="auto",
        search_size: int = 4000,
        verbose: bool = True,
    ):
        self.arch = arch
        self.width = width
        self.trainable = trainable
        self.block = block
        self.scaling = scaling
        self.ridge = ridge
        self.ridge_grid = ridge_grid
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
        self.verbose = verbose

    def _solver_params(self) -> dict:
        return {
            "solver": self.solver,
            "n_centers": self.n_centers,
            "memory_budget": self.memory_budget,
            "tol": self.tol,
            "max_iter": self.max_iter,
            "compute_dtype": self.compute_dtype,
            "search_size": self.search_size,
            "verbose": self.verbose,
        }

    def check_params(self):
        """Check the constructor arguments (raises ValueError naming the bad one)."""
        where = "NTKRegressor"
        check_choice(self.arch, ARCHS, name="arch", where=where)
        check_positive_int(self.width, name="width", where=where)
        check_choice(self.trainable, TRAINABLE, name="trainable", where=where)
        check_choice(self.block, BLOCKS, name="block", where=where)
        check_choice(self.scaling, SCALINGS, name="scaling", where=where)
        if self.block == "bottleneck" and self.trainable != "hidden":
            raise ValueError(f"{where}: block='bottleneck' supports trainable='hidden' only")
        resolve_dtype(self.dtype, where=where)
        KernelRidge(
            kernel="linear",
            ridge=self.ridge,
            ridge_grid=self.ridge_grid,
            validation_fraction=self.validation_fraction,
            **self._solver_params(),
        ).check_params()

    def check_fit_plan(self, n: int, n_outputs: int = 1) -> dict:
        """The kernel ridge solve's plan for ``n`` samples, or the error it would raise
        (see :meth:`KernelRidge.check_fit_plan`)."""
        self.check_params()
        return KernelRidge(
            kernel="linear",
            ridge=self.ridge,
            ridge_grid=self.ridge_grid,
            validation_fraction=self.validation_fraction,
            **self._solver_params(),
        ).check_fit_plan(n, n_outputs)

    def fit(self, X, Y) -> NTKRegressor:
        """Fit on X (N, d), Y (N,) or (N, k); returns self.

        Warns
        -----
        GridEdgeWarning
            The ridge search chose the smallest or largest value of ``ridge_grid`` (also in
            ``hparams_["grid_edge"]``).
        """
        self.check_params()
        dtype = resolve_dtype(self.dtype, where="NTKRegressor")
        X, Y = self._check_fit_input(X, Y, dtype=dtype, device=self.device)
        g = torch.Generator().manual_seed(int(self.random_state))
        self.net_ = StackedNet(
            self.arch,
            X.shape[1],
            self.width,
            Y.shape[1],
            block=self.block,
            generator=g,
            dtype=dtype,
            device=X.device,
        )
        self.kernel_ = EmpiricalNTK(self.net_, self.trainable, self.scaling)
        with warnings.catch_warnings():
            # Re-issued below under this estimator's name and pointing at its caller: the inner
            # KernelRidge is an implementation detail the user never built. Other warnings (an
            # unconverged solve) pass through unchanged.
            warnings.simplefilter("ignore", GridEdgeWarning)
            self.krr_ = KernelRidge(
                kernel=self.kernel_,
                ridge=self.ridge,
                ridge_grid=self.ridge_grid,
                validation_fraction=self.validation_fraction,
                dtype=dtype,
                device=X.device,
                random_state=self.random_state,
                **self._solver_params(),
            ).fit(X, Y)
        self.hparams_ = {**self.krr_.hparams_}
        self.solver_info_ = self.krr_.solver_info_
        # The kernel kept the centres' factors for the solve; a fitted model does not need them.
        self.kernel_.clear_cache()
        if self.hparams_["grid_edge"]:
            warnings.warn(
                grid_edge_message("NTKRegressor", self.hparams_["grid_edge"]),
                GridEdgeWarning,
                stacklevel=2,
            )
        return self

    def predict(self, X):
        """Predictions for X (n, d): shape (n, k), or (n,) when fitted on 1-D Y."""
        self._check_is_fitted("predict")
        X_t = self._check_predict_input(X, dtype=self.net_.A.dtype, device=self.net_.A.device)
        pred = self.krr_.predict(X_t)
        self.kernel_.clear_cache()
        if pred.dim() == 1:
            pred = pred[:, None]
        return self._format_output(pred, X)
