"""scikit-learn style estimators: networks trained by SGD and kernel ridge baselines.

Every estimator is a scikit-learn estimator (:class:`sklearn.base.BaseEstimator`,
:class:`sklearn.base.RegressorMixin`): ``__init__`` only stores its arguments, ``fit(X, Y)``
returns ``self``, fitted state ends in ``_``, ``predict(X)`` returns an (n, k) array, or (n,) after
a fit on 1-D Y (a NumPy array for NumPy, list or DataFrame input, a tensor for tensor input),
``predict`` before ``fit`` raises :class:`sklearn.exceptions.NotFittedError` and ``score(X, y)``
is the coefficient of determination R^2. ``n_iter_`` counts the final fit's solver
iterations (kernel learners, 0 for a direct solve) or SGD epochs (networks). ``hparams_`` holds the
hyperparameters chosen during ``fit`` (JSON-serialisable), which sweeps record, with the fit's
own status: ``hparams_["grid_edge"]`` lists searched hyperparameters that landed on an edge of
their grid (also warned as :class:`GridEdgeWarning`) and a network whose training diverged
records ``hparams_["diverged"]`` and warns :class:`DivergenceWarning`.
"""

from __future__ import annotations

import inspect

from .base import DivergenceWarning, GridEdgeWarning
from .kernel_ridge import KernelRidge
from .ntk import NTKRegressor
from .resnet import ResNetRegressor

# type name in sweep files -> estimator class; a plugin (or a test) may register more
LEARNERS: dict[str, type] = {
    "resnet": ResNetRegressor,
    "kernel_ridge": KernelRidge,
    "ntk": NTKRegressor,
}


def learner_class(type_name: str) -> type:
    """The estimator class registered as ``type_name`` ("resnet", "kernel_ridge", "ntk").

    Raises
    ------
    ValueError
        Unknown type (the message lists the registered ones).
    """
    if type_name not in LEARNERS:
        raise ValueError(f"unknown learner type {type_name!r}; expected one of {sorted(LEARNERS)}")
    return LEARNERS[type_name]


def learner_params(type_name: str) -> list[str]:
    """Constructor parameter names accepted by the learner type."""
    cls = learner_class(type_name)
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def make_learner(type_name: str, **params):
    """Build an estimator of registered type ``type_name`` with constructor ``params``.

    Raises
    ------
    ValueError
        Unknown type or parameter (the message lists the accepted ones).
    """
    accepted = learner_params(type_name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(
            f"learner type {type_name!r}: unknown parameter(s) {unknown}; accepted: {accepted}"
        )
    return learner_class(type_name)(**params)


__all__ = [
    "LEARNERS",
    "learner_class",
    "learner_params",
    "make_learner",
    "ResNetRegressor",
    "KernelRidge",
    "NTKRegressor",
    "GridEdgeWarning",
    "DivergenceWarning",
]
