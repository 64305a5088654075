"""Kernel families as data (registry name + parameters) and their formulas.

``formulas`` (:mod:`fastkernels.ops.formulas`, the ground floor the ops compute from) holds the
readable torch reference of every kernel (``f(x1, x2, **params)`` -> (N, M) Gram), including
the analytic infinite-width NNGP / NTK of the paper's ReLU networks; ``base`` wraps them as
validated :class:`Kernel` objects with ``__call__``, ``diag`` and a memory-free ``mv``, which
add, multiply and scale (``RBF(0.5) + 0.1 * Linear()``: :class:`Sum`, :class:`Product`,
:class:`Scaled`) and take 0-d tensors as hyperparameters, differentiably.
:func:`make_kernel` builds one from its registry name, e.g. from a sweep file.
"""

from __future__ import annotations

import inspect

from ..ops import formulas
from .base import (
    NNGP,
    NTK,
    RBF,
    ArcCosine,
    Kernel,
    Laplace,
    Linear,
    Matern,
    Polynomial,
    Product,
    Scaled,
    Sum,
)

KERNELS: dict[str, type[Kernel]] = {
    cls.name: cls for cls in (RBF, Laplace, Matern, Polynomial, Linear, ArcCosine, NNGP, NTK)
}


def kernel_params(name: str) -> list[str]:
    """Constructor parameter names accepted by the kernel registered as ``name``.

    Raises
    ------
    ValueError
        Unknown kernel name (the message lists the registered ones).
    """
    if name not in KERNELS:
        raise ValueError(f"unknown kernel {name!r}; expected one of {sorted(KERNELS)}")
    return [p for p in inspect.signature(KERNELS[name].__init__).parameters if p != "self"]


def make_kernel(name: str, **params) -> Kernel:
    """Build a kernel from its registry name and constructor parameters.

    Parameters
    ----------
    name : str
        One of ``"rbf"``, ``"laplace"``, ``"matern"``, ``"polynomial"``, ``"linear"``,
        ``"arccos"``, ``"nngp"``, ``"ntk"``.
    **params
        Constructor parameters of that kernel class (e.g. ``gamma=0.5``).

    Returns
    -------
    Kernel

    Raises
    ------
    ValueError
        Unknown name or parameter (the message lists the accepted ones), or an invalid value.
    TypeError
        A parameter of the wrong type where the class says so.
    """
    accepted = kernel_params(name)
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"kernel {name!r}: unknown parameter(s) {unknown}; accepted: {accepted}")
    return KERNELS[name](**params)


__all__ = [
    "formulas",
    "Kernel",
    "RBF",
    "Laplace",
    "Matern",
    "Polynomial",
    "Linear",
    "ArcCosine",
    "NNGP",
    "NTK",
    "Sum",
    "Product",
    "Scaled",
    "KERNELS",
    "kernel_params",
    "make_kernel",
]
