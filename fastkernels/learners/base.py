"""Shared estimator machinery: parameter handling, input checks, validation split, scores."""

from __future__ import annotations

import inspect
import math
from collections.abc import Sequence

import numpy as np
import torch

from .._validation import as_float_tensor, check_xy


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


def validation_split(n: int, fraction: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random (train, validation) index split of ``range(n)``; validation gets ``fraction``.

    At least one sample lands on each side; raises if ``n < 2``.
    """
    if not 0 < fraction < 1:
        raise ValueError(f"validation_fraction must be in (0, 1), got {fraction}")
    if n < 2:
        raise ValueError(f"a validation split needs at least 2 samples, got {n}")
    g = torch.Generator().manual_seed(int(seed) + 7_777)
    perm = torch.randperm(n, generator=g)
    n_val = min(n - 1, max(1, round(fraction * n)))
    return perm[n_val:], perm[:n_val]


class BaseRegressor:
    """scikit-learn style parameter handling and scoring for fastkernels estimators."""

    def get_params(self, deep: bool = True) -> dict:
        names = [p for p in inspect.signature(type(self).__init__).parameters if p != "self"]
        return {name: getattr(self, name) for name in names}

    def set_params(self, **params) -> BaseRegressor:
        valid = self.get_params()
        for key, value in params.items():
            if key not in valid:
                raise ValueError(
                    f"{type(self).__name__}.set_params: unknown parameter {key!r}; "
                    f"accepted: {sorted(valid)}"
                )
            setattr(self, key, value)
        return self

    def __repr__(self) -> str:
        init = inspect.signature(type(self).__init__).parameters
        changed = [
            f"{k}={v!r}"
            for k, v in self.get_params().items()
            if init[k].default is inspect.Parameter.empty or v != init[k].default
        ]
        return f"{type(self).__name__}({', '.join(changed)})"

    # -- input handling -----------------------------------------------------------------------
    def _check_fit_input(self, X, Y, *, dtype=None, device=None):
        where = f"{type(self).__name__}.fit"
        X_t, Y_t = check_xy(X, Y, where=where, dtype=dtype, device=device)
        self.n_features_in_ = X_t.shape[1]
        self.n_outputs_ = Y_t.shape[1]
        self._y_1d_ = np.ndim(Y) == 1 if not isinstance(Y, torch.Tensor) else Y.dim() == 1
        self._numpy_io_ = not isinstance(X, torch.Tensor)
        return X_t, Y_t

    def _check_is_fitted(self, where: str):
        if not hasattr(self, "n_features_in_"):
            raise RuntimeError(
                f"{type(self).__name__}.{where}: this estimator is not fitted yet; call fit first"
            )

    def _check_predict_input(self, X, *, dtype=None, device=None) -> torch.Tensor:
        self._check_is_fitted("predict")
        where = f"{type(self).__name__}.predict"
        X_t = as_float_tensor(X, name="X", where=where, ndim=2, dtype=dtype, device=device)
        if X_t.shape[1] != self.n_features_in_:
            raise ValueError(
                f"{where}: X has {X_t.shape[1]} features, but this estimator was fitted with "
                f"{self.n_features_in_}"
            )
        return X_t

    def _format_output(self, pred: torch.Tensor, X):
        if self._y_1d_:
            pred = pred[:, 0]
        if not isinstance(X, torch.Tensor):
            return pred.detach().cpu().numpy()
        return pred

    # -- scores -------------------------------------------------------------------------------
    def _prediction_and_target(self, X, Y, where: str) -> tuple[torch.Tensor, torch.Tensor]:
        pred = torch.as_tensor(self.predict(X)).detach().to("cpu", torch.float64)
        pred = pred[:, None] if pred.dim() == 1 else pred
        Y_t = as_float_tensor(
            Y, name="Y", where=f"{type(self).__name__}.{where}", ndim=(1, 2), dtype=torch.float64
        ).cpu()
        Y_t = Y_t[:, None] if Y_t.dim() == 1 else Y_t
        if Y_t.shape != pred.shape:
            raise ValueError(
                f"{type(self).__name__}.{where}: Y must have shape {tuple(pred.shape)} "
                f"(or ({pred.shape[0]},) for one output), got {tuple(Y_t.shape)}"
            )
        return pred, Y_t

    def score(self, X, Y) -> float:
        """Coefficient of determination R^2, averaged uniformly over outputs (as scikit-learn)."""
        pred, Y_t = self._prediction_and_target(X, Y, "score")
        ss_res = (Y_t - pred).pow(2).sum(dim=0)
        ss_tot = (Y_t - Y_t.mean(dim=0)).pow(2).sum(dim=0)
        r2 = torch.where(
            ss_tot > 0, 1 - ss_res / ss_tot.clamp_min(1e-300), torch.zeros_like(ss_res)
        )
        return float(r2.mean())

    def test_error(self, X, Y) -> float:
        """The paper's error: mean over samples of the squared error summed over outputs."""
        pred, Y_t = self._prediction_and_target(X, Y, "test_error")
        return squared_error(pred, Y_t)
