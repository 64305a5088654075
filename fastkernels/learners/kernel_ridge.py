"""Kernel ridge regression with hyperparameters chosen on a validation split."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch

from .._validation import check_nonnegative_float, resolve_dtype
from ..solvers import cholesky
from .base import BaseRegressor, squared_error, validation_split

# Relative ridge grid: ridge = r * mean(diag K). Relative, so that one grid serves kernels whose
# scale differs by orders of magnitude (RBF ~ 1, a raw empirical NTK ~ width).
DEFAULT_RIDGE_GRID = (1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
# Bandwidth grid: multiples of the median heuristic (1 / median distance, squared for RBF).
DEFAULT_BANDWIDTH_GRID = (0.25, 0.5, 1.0, 2.0, 4.0)


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
    dtype : torch.dtype, default torch.float64
        Dtype of the Gram matrix and the solve.
    device : str or torch.device, optional
        Where to compute (default: the device of X).
    random_state : int, default 0
        Seed of the validation split.

    Attributes
    ----------
    kernel_ : Kernel
        The fitted kernel (with its chosen bandwidth).
    ridge_ : float
        The absolute ridge used in the final fit.
    dual_coef_ : torch.Tensor, shape (N, k)
    X_fit_ : torch.Tensor, shape (N, D)
    hparams_ : dict
        Chosen hyperparameters and their validation error.
    validation_errors_ : list of dict
        Every candidate tried with its validation error.
    """

    def __init__(
        self,
        kernel="rbf",
        kernel_params: dict | None = None,
        ridge="auto",
        ridge_grid: Sequence[float] = DEFAULT_RIDGE_GRID,
        bandwidth_grid: Sequence[float] = DEFAULT_BANDWIDTH_GRID,
        validation_fraction: float = 0.2,
        dtype=torch.float64,
        device=None,
        random_state: int = 0,
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

    def check_params(self):
        """Check the constructor arguments (raises ValueError/TypeError naming the bad one)."""
        where = "KernelRidge"
        if self.ridge != "auto":
            check_nonnegative_float(self.ridge, name="ridge", where=where)
        for name in ("ridge_grid", "bandwidth_grid"):
            grid = getattr(self, name)
            if len(grid) == 0 or any(not (isinstance(g, (int, float)) and g > 0) for g in grid):
                raise ValueError(
                    f"{where}: {name} must be a non-empty list of numbers > 0, got {grid!r}"
                )
        resolve_dtype(self.dtype, where=where)
        if isinstance(self.kernel, str):
            resolve_kernel(self.kernel, self.kernel_params, where)
        if not 0 < self.validation_fraction < 1:
            raise ValueError(
                f"{where}: validation_fraction must be in (0, 1), got {self.validation_fraction!r}"
            )

    def _candidate_kernels(self, base, X: torch.Tensor) -> list:
        attr = getattr(base, "bandwidth_param", None)
        if attr is None or getattr(base, attr) is not None:
            return [base]
        g0 = median_bandwidth(base.name, X)
        params = base.params()
        return [type(base)(**{**params, attr: g0 * m}) for m in self.bandwidth_grid]

    def fit(self, X, Y) -> KernelRidge:
        """Fit on X (N, D) and Y (N,) or (N, k); returns self."""
        self.check_params()
        base = resolve_kernel(self.kernel, self.kernel_params, "KernelRidge")
        dtype = resolve_dtype(self.dtype, where="KernelRidge")
        X, Y = self._check_fit_input(X, Y, dtype=dtype, device=self.device)
        candidates = self._candidate_kernels(base, X)
        search = self.ridge == "auto" or len(candidates) > 1
        self.validation_errors_ = []
        if search:
            kernel, ridge, val_error = self._search(candidates, X, Y)
        else:
            kernel, ridge, val_error = candidates[0], float(self.ridge), None
        K = kernel(X, X)
        self.dual_coef_ = cholesky(K, Y, ridge, dtype=dtype)
        self.kernel_, self.ridge_, self.X_fit_ = kernel, ridge, X
        self.hparams_ = {"kernel": kernel.name, **_jsonable(kernel.params()), "ridge": ridge}
        if val_error is not None:
            self.hparams_["val_error"] = val_error
        return self

    def _search(self, candidates, X, Y):
        idx_tr, idx_val = validation_split(len(X), self.validation_fraction, self.random_state)
        Xtr, Ytr, Xval, Yval = X[idx_tr], Y[idx_tr], X[idx_val], Y[idx_val]
        best = (math.inf, None, None)
        for kernel in candidates:
            K_tr = kernel(Xtr, Xtr)
            K_val = kernel(Xval, Xtr)
            scale = float(K_tr.diagonal().mean()) or 1.0
            ridges = (
                [scale * r for r in self.ridge_grid]
                if self.ridge == "auto"
                else [float(self.ridge)]
            )
            for ridge in ridges:
                C = cholesky(K_tr, Ytr, ridge, dtype=X.dtype)
                err = squared_error(K_val @ C, Yval)
                self.validation_errors_.append(
                    {**_jsonable(kernel.params()), "ridge": ridge, "val_error": err}
                )
                if err < best[0]:
                    best = (err, kernel, ridge)
        return best[1], best[2], best[0]

    def predict(self, X):
        """Predictions for X (n, D): shape (n, k), or (n,) when fitted on 1-D Y."""
        self._check_is_fitted("predict")
        X_t = self._check_predict_input(X, dtype=self.X_fit_.dtype, device=self.X_fit_.device)
        pred = self.kernel_.mv(X_t, self.X_fit_, self.dual_coef_)
        return self._format_output(pred, X)


def _jsonable(params: dict) -> dict:
    out = {}
    for k, v in params.items():
        out[k] = v if isinstance(v, (int, float, str, bool, type(None))) else repr(v)
    return out
