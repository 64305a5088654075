"""Shared estimator machinery: parameter handling, input checks, validation split, scores."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

import numpy as np
import torch
from sklearn.base import BaseEstimator, RegressorMixin
from sklearn.metrics import r2_score
from sklearn.utils import check_array
from sklearn.utils.validation import check_is_fitted, validate_data

from .._validation import as_float_tensor


class GridEdgeWarning(UserWarning):
    """A hyperparameter search chose a value at the edge of its grid.

    The validation error was still falling there, so the optimum may lie outside the grid:
    extend the grid past that edge to find out.
    """


class DivergenceWarning(RuntimeWarning):
    """Training produced a non-finite loss; the model's predictions are not usable."""


def grid_edge(name: str, grid: Sequence[float], chosen: float, rel_tol: float = 1e-6) -> str | None:
    """Describe a choice at the edge of its search grid, or None for an interior one.

    Parameters
    ----------
    name : str
        How the message names the grid (e.g. ``"ridge_grid"``).
    grid : sequence of float
        The candidate values.
    chosen : float
        The value the search chose.
    rel_tol : float, default 1e-6
        Relative tolerance of the comparison: ``chosen`` may have gone through a scale and
        back (a relative ridge times the kernel's mean diagonal), which rounds its last bits.

    Returns
    -------
    str or None
        ``"<name>: chose <value>, the smallest (or largest) of [<sorted grid>]"`` when the grid
        has at least two distinct values and ``chosen`` is its minimum or maximum; else None (a
        one-value grid has no edge to search past).
    """
    values = sorted(float(v) for v in grid)
    distinct = [v for i, v in enumerate(values) if i == 0 or not _close(v, values[i - 1], rel_tol)]
    if len(distinct) < 2:
        return None
    chosen = float(chosen)
    if _close(chosen, distinct[0], rel_tol):
        edge = "smallest"
    elif _close(chosen, distinct[-1], rel_tol):
        edge = "largest"
    else:
        return None
    listed = ", ".join(f"{v:g}" for v in distinct)
    return f"{name}: chose {chosen:g}, the {edge} of [{listed}]"


def grid_edge_message(owner: str, edges: Sequence[str]) -> str:
    """The one :class:`GridEdgeWarning` message of a fit from its :func:`grid_edge` lines."""
    return (
        f"{owner}: the hyperparameter search chose a value at the edge of its grid ("
        + "; ".join(edges)
        + "); the validation error may still fall beyond the grid, so extend it past that edge"
    )


def _close(a: float, b: float, rel_tol: float) -> bool:
    return math.isclose(a, b, rel_tol=rel_tol, abs_tol=0.0)


def squared_error(pred: torch.Tensor, Y: torch.Tensor) -> float:
    """The paper's test error: mean over samples of ||pred - Y||^2 summed over the k outputs."""
    diff = pred.to(torch.float64) - Y.to(torch.float64)
    if diff.dim() == 1:
        return float(diff.pow(2).mean())
    return float(diff.pow(2).sum(dim=1).mean())


def validation_split(
    n: int, fraction: float, seed: int, where: str = "validation_split"
) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train, validation) index split of ``range(n)``; validation gets ``fraction``.

    At least one sample lands on each side; raises ValueError (prefixed by ``where``) if
    ``n < 2``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"{where}: validation_fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(
            f"{where}: choosing hyperparameters on a validation split needs at least 2 "
            f"samples, got n_samples = {n}; fix the hyperparameters (no search) to fit on fewer"
        )
    g = torch.Generator().manual_seed(int(seed) + 7_777)
    perm = torch.randperm(n, generator=g)
    n_val = min(n - 1, max(1, round(fraction * n)))
    return perm[n_val:], perm[:n_val]


class BaseRegressor(RegressorMixin, BaseEstimator):
    """scikit-learn estimator machinery shared by the fastkernels regressors.

    Derives from :class:`sklearn.base.RegressorMixin` and :class:`sklearn.base.BaseEstimator`
    (``get_params``, ``set_params``, ``clone``, the repr and the estimator tags come from
    there), so the estimators work in :class:`~sklearn.pipeline.Pipeline`,
    :class:`~sklearn.model_selection.GridSearchCV`, ``cross_val_score`` and pass
    :func:`~sklearn.utils.estimator_checks.check_estimator`.

    Input goes through :func:`sklearn.utils.validation.validate_data` (NumPy arrays, lists,
    DataFrames: ``check_array`` semantics and messages, prefixed with the caller) or, for
    ``torch.Tensor`` input, through the library's own tensor checks (the tensor stays on its
    device). ``predict`` returns a NumPy array for any input that is not a tensor and a tensor
    for tensor input.
    """

    # The fitted attribute whose presence means "fitted" (set last by fit).
    _fitted_attribute = "n_features_in_"

    def __sklearn_tags__(self):
        tags = super().__sklearn_tags__()
        tags.target_tags.single_output = True
        tags.target_tags.multi_output = True  # Y of shape (N, k) fits the k outputs at once
        tags.input_tags.allow_nan = False
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, self._fitted_attribute)

    # -- input handling -----------------------------------------------------------------------
    def _check_fit_input(self, X, Y, *, dtype, device=None):
        """Validated training pair: X (N, D) and Y (N, k) tensors of ``dtype`` on ``device``.

        Sets ``n_features_in_`` (and ``feature_names_in_`` for a DataFrame with string column
        names), ``n_outputs_`` and whether Y was 1-D (predictions then are too).
        """
        where = f"{type(self).__name__}.fit"
        if Y is None:
            raise ValueError(
                f"{where}: this estimator requires y to be passed, but the target y is None "
                "(pass Y of shape (N,) or (N, k))"
            )
        X_t = self._validate_X(X, where=where, reset=True, dtype=dtype, device=device)
        Y_t = self._validate_Y(Y, where=where, dtype=X_t.dtype, device=X_t.device)
        y_1d = Y_t.dim() == 1
        Y_t = Y_t[:, None] if y_1d else Y_t
        if Y_t.shape[0] != X_t.shape[0]:
            raise ValueError(
                f"{where}: X and Y must have the same number of rows, got {X_t.shape[0]} "
                f"and {Y_t.shape[0]}"
            )
        self.n_outputs_ = Y_t.shape[1]
        self._y_1d_ = y_1d
        return X_t, Y_t

    def _validate_X(self, X, *, where: str, reset: bool, dtype, device=None) -> torch.Tensor:
        """X as an (n, D) tensor of ``dtype`` on ``device``.

        ``reset=True`` (fit) records ``n_features_in_`` (and ``feature_names_in_``); otherwise
        (predict) X must have the fitted number of features.
        """
        if isinstance(X, torch.Tensor):
            X_t = _check_tensor(X, name="X", where=where, ndim=(2,), dtype=dtype, device=device)
            # The values are checked: only the feature count (and names) here.
            _call_validation(
                validate_data, "X", where, self, X_t, reset=reset, skip_check_array=True
            )
            return X_t
        _check_numeric_container(X, name="X", where=where)
        arr = _call_validation(
            validate_data, "X", where, self, X, reset=reset, **_CHECK_ARRAY, ensure_2d=True
        )
        return _numpy_to_tensor(arr, dtype=dtype, device=device)

    def _validate_Y(self, Y, *, where: str, dtype, device=None) -> torch.Tensor:
        """Y as an (N,) or (N, k) tensor of ``dtype`` on ``device``."""
        if isinstance(Y, torch.Tensor):
            return _check_tensor(Y, name="Y", where=where, ndim=(1, 2), dtype=dtype, device=device)
        _check_numeric_container(Y, name="Y", where=where)
        # check_array rejects more than 2 dimensions (allow_nd=False).
        arr = _call_validation(
            check_array,
            "Y",
            where,
            Y,
            **_CHECK_ARRAY,
            ensure_2d=False,
            input_name="Y",
            estimator=self,
        )
        return _numpy_to_tensor(arr, dtype=dtype, device=device)

    def _check_is_fitted(self, where: str) -> None:
        """Raise :class:`sklearn.exceptions.NotFittedError` unless ``fit`` has completed."""
        check_is_fitted(
            self,
            msg=f"{type(self).__name__}.{where}: this estimator is not fitted yet; call fit "
            "with appropriate arguments first",
        )

    def _check_predict_input(self, X, *, dtype, device=None) -> torch.Tensor:
        self._check_is_fitted("predict")
        where = f"{type(self).__name__}.predict"
        return self._validate_X(X, where=where, reset=False, dtype=dtype, device=device)

    def _format_output(self, pred: torch.Tensor, X):
        if self._y_1d_:
            pred = pred[:, 0]
        if not isinstance(X, torch.Tensor):
            return pred.detach().cpu().numpy()
        return pred

    # -- scores -------------------------------------------------------------------------------
    def _prediction_and_target(self, X, Y, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        """Predictions for X and the target Y, both (n, k) float64 CPU tensors."""
        pred = torch.as_tensor(self.predict(X)).detach().to("cpu", torch.float64)
        pred = pred[:, None] if pred.dim() == 1 else pred
        caller = f"{type(self).__name__}.{where}"
        Y_t = self._validate_Y(Y, where=caller, dtype=torch.float64, device="cpu")
        Y_t = Y_t[:, None] if Y_t.dim() == 1 else Y_t
        if Y_t.shape != pred.shape:
            raise ValueError(
                f"{caller}: Y must have shape {tuple(pred.shape)} "
                f"(or ({pred.shape[0]},) for one output), got {tuple(Y_t.shape)}"
            )
        return pred, Y_t

    def score(self, X, y, sample_weight=None) -> float:
        """Coefficient of determination R^2 of ``predict(X)``, as scikit-learn computes it.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, D)
        y : array-like or torch.Tensor, shape (n,) or (n, k)
            The target (named ``y`` as scikit-learn's scorers pass it).
        sample_weight : array-like of shape (n,), optional

        Returns
        -------
        float
            :func:`sklearn.metrics.r2_score`, averaged uniformly over the k outputs.
        """
        pred, Y_t = self._prediction_and_target(X, y, "score")
        if isinstance(sample_weight, torch.Tensor):
            sample_weight = sample_weight.detach().cpu().numpy()
        return float(r2_score(Y_t.numpy(), pred.numpy(), sample_weight=sample_weight))

    def test_error(self, X, Y) -> float:
        """The paper's error: mean over samples of the squared error summed over outputs.

        Parameters
        ----------
        X : array-like or torch.Tensor, shape (n, D)
        Y : array-like or torch.Tensor, shape (n,) or (n, k)

        Returns
        -------
        float
        """
        pred, Y_t = self._prediction_and_target(X, Y, "test_error")
        return squared_error(pred, Y_t)


# check_array arguments of every X and Y: dense, float32/float64 kept (anything else -> float64,
# which the estimator's dtype then decides), finite, at least one sample and one feature.
_CHECK_ARRAY = dict(
    accept_sparse=False,
    dtype=(np.float64, np.float32),
    ensure_all_finite=True,
    ensure_min_samples=1,
    ensure_min_features=1,
)


def _call_validation(fn, name: str, where: str, *args, **kwargs):
    """``fn(*args, **kwargs)`` with its ValueError / TypeError prefixed by the caller (and by
    ``name`` when scikit-learn's message does not say which argument it is about)."""
    try:
        return fn(*args, **kwargs)
    except (ValueError, TypeError) as exc:
        msg = str(exc)
        if not re.search(rf"\b{name}\b", msg):
            msg = f"{name}: {msg}"
        raise type(exc)(f"{where}: {msg}") from None


def _check_numeric_container(a, *, name: str, where: str) -> None:
    """Reject what ``check_array`` would silently convert or misreport: booleans, strings and
    object arrays holding non-numbers (all TypeError, as for tensors)."""
    dtype = getattr(a, "dtype", None)
    if not isinstance(dtype, np.dtype):
        return
    if dtype.kind in "bUSV":
        raise TypeError(f"{where}: {name} must hold real numbers, got dtype {dtype}")
    if dtype.kind == "O":
        try:
            np.asarray(a, dtype=np.float64)
        except (TypeError, ValueError) as exc:
            raise TypeError(
                f"{where}: {name} must hold real numbers; its object array does not convert "
                f"to float: {exc}"
            ) from None


def _check_tensor(t: torch.Tensor, *, name: str, where: str, ndim, dtype, device) -> torch.Tensor:
    """The library's tensor checks (rank, emptiness, finiteness, dtype) plus sparse and complex
    tensors, rejected as ``check_array`` rejects sparse and complex arrays."""
    if t.layout != torch.strided:
        raise TypeError(
            f"{where}: {name} is a sparse tensor ({t.layout}), but dense data is required; "
            "use .to_dense()"
        )
    if t.is_complex():
        raise ValueError(f"{where}: {name}: Complex data not supported; pass real values")
    return as_float_tensor(t, name=name, where=where, ndim=ndim, dtype=dtype, device=device)


def _numpy_to_tensor(arr: np.ndarray, *, dtype, device) -> torch.Tensor:
    # A read-only array (a memmap) is copied: torch tensors are always writable.
    return torch.from_numpy(np.require(arr, requirements=("C", "W"))).to(dtype=dtype, device=device)
