"""Kernel objects: a kernel family as data (registry name + parameters) over :mod:`.formulas`.

A :class:`Kernel` validates its parameters when constructed and its inputs when called, then
hands plain tensors to the ``fastkernels::gram`` / ``fastkernels::kernel_mv`` custom ops
(:mod:`fastkernels.ops`), whose reference body is the formula of its family (C++ on CPU when the
extension is built). ``k(x1, x2)`` gives a Gram block, ``k.diag(x)`` its diagonal without
forming it, ``k.mv(x1, x2, v)`` the product K @ v without ever storing the N x M matrix.
"""

from __future__ import annotations

import math
from numbers import Real

import numpy as np
import torch
from torch import Tensor

from .. import ops
from .._validation import check_choice, check_positive_float, check_positive_int
from ..ops import formulas as F

__all__ = [
    "Kernel",
    "Sum",
    "Product",
    "Scaled",
    "check_scalar",
    "RBF",
    "Laplace",
    "Matern",
    "Polynomial",
    "Linear",
    "ArcCosine",
    "NNGP",
    "NTK",
]

_FLOAT_DTYPES = (torch.float32, torch.float64)
# Entries of one row block of a Gram formed in Python (tensor hyperparameters, products of
# kernels): 4 Mi entries, 32 MiB in float64.
_BLOCK_ENTRIES = 1 << 22


class Kernel:
    """Base class of the kernel families.

    Subclasses set ``name`` (the registry / custom-op kernel name), ``bandwidth_param`` (the
    name of the parameter a model-selection loop may sweep, or None) and implement
    :meth:`params`; they store validated parameters only.

    Notes
    -----
    Inputs ``x1`` (N, D) and ``x2`` (M, D) must be float32 or float64 torch tensors (NumPy
    floating arrays are converted) of the same dtype and device, non-empty and finite. Results
    have the dtype and device of the inputs. Passing the same tensor object twice (or
    ``x2=None``) marks the diagonal as self-pairs: exact zero distance and unit cosine there.
    """

    name: str = "kernel"
    bandwidth_param: str | None = None

    # -- to implement ---------------------------------------------------------------------------
    def params(self) -> dict:
        """The constructor parameters, as a new dict (``type(k)(**k.params())`` rebuilds ``k``)."""
        raise NotImplementedError

    def _formula_params(self, dim: int) -> dict:
        """Parameters passed to the formula for inputs of dimension ``dim``."""
        return self.params()

    def op_params(self, dim: int) -> list[float]:
        """The packed ``params`` of the ``gram`` / ``kernel_mv`` ops for inputs of dimension
        ``dim`` (layout in :func:`fastkernels.ops.pack_params`)."""
        return ops.pack_params(self.name, **self._formula_params(dim))

    # -- shared ---------------------------------------------------------------------------------
    def with_params(self, **params) -> Kernel:
        """A new kernel of the same family with some parameters replaced (e.g. ``gamma``).

        Raises
        ------
        ValueError
            Unknown parameter name (the message lists the accepted ones) or invalid value.
        """
        current = self.params()
        unknown = sorted(set(params) - set(current))
        if unknown:
            raise ValueError(
                f"{type(self).__name__}: unknown parameter(s) {unknown}; accepted: {list(current)}"
            )
        return type(self)(**{**current, **params})

    def __call__(self, x1, x2=None) -> Tensor:
        """The Gram matrix ``K[i, j] = k(x1_i, x2_j)``.

        Parameters
        ----------
        x1 : Tensor, shape (N, D), float32 or float64
        x2 : Tensor, shape (M, D), same dtype and device, optional
            Defaults to ``x1`` (self-Gram, exact diagonal).

        Returns
        -------
        Tensor, shape (N, M), dtype and device of the inputs
        """
        x1, x2 = self._check_inputs(x1, x2, where=f"{type(self).__name__}")
        # The same tensor twice marks the diagonal as self-pairs (exact k(0)).
        offset = 0 if x1 is x2 else None
        d = x1.shape[1]
        if self._learnable():
            return F.FORMULAS[self.name](x1, x2, diag_offset=offset, **self._formula_params(d))
        return torch.ops.fastkernels.gram(x1, x2, self.name, self.op_params(d), offset)

    def diag(self, x) -> Tensor:
        """The diagonal ``k(x_i, x_i)`` without forming the Gram.

        Parameters
        ----------
        x : Tensor, shape (N, D), float32 or float64

        Returns
        -------
        Tensor, shape (N,), dtype and device of ``x``
        """
        where = f"{type(self).__name__}.diag"
        x = _check_tensor(x, name="x", where=where, ndim=(2,))
        _check_finite(x, "x", where)
        return F.kernel_diag(self.name, x, **self._formula_params(x.shape[1]))

    def mv(self, x1, x2, v, block_size: int | None = None, backend: str = "auto") -> Tensor:
        """The product ``K(x1, x2) @ v`` in row blocks; the N x M Gram is never stored.

        Parameters
        ----------
        x1 : Tensor, shape (N, D), float32 or float64
        x2 : Tensor, shape (M, D), same dtype and device
        v : Tensor, shape (M,) or (M, T), same dtype and device
        block_size : int, optional
            Rows of ``x1`` per op call (default: all). The op bounds its own memory by tiles
            of K, so this only splits the work.
        backend : {"auto", "fastkernels", "keops"}, default "auto"
            As for :func:`fastkernels.ops.kernel_product`: ``"auto"`` / ``"fastkernels"``, the
            ``kernel_mv`` custom op; ``"keops"``, a KeOps reduction (forward-only).

        Returns
        -------
        Tensor, shape (N,) or (N, T) following ``v``, dtype and device of the inputs
        """
        where = f"{type(self).__name__}.mv"
        x1, x2, v = self._check_product(x1, x2, v, where)
        n = x1.shape[0]
        # The op tiles K itself (one tile per thread in C++); block_size only splits the rows
        # into several op calls, e.g. to bound the reference's memory on other devices.
        if block_size is None:
            block_size = n
        else:
            block_size = check_positive_int(block_size, name="block_size", where=where)
        if self._learnable():
            # Tensor hyperparameters: the torch formula, differentiable in them, by row blocks.
            kw = self._formula_params(x1.shape[1])
            block_size = min(block_size, max(1, _BLOCK_ENTRIES // x2.shape[0]))

            def product(a, b, w, offset=None):
                return F.FORMULAS[self.name](a, b, diag_offset=offset, **kw) @ w
        else:
            params = self.op_params(x1.shape[1])
            product = ops.kernel_product(self.name, params, backend, where=where)
        vv = v[:, None] if v.dim() == 1 else v
        same = x1 is x2
        if block_size >= n:
            out = product(x1, x2, vv)
        else:
            # A row block of x2 itself: its self-pairs sit on the diagonal shifted by i0.
            out = torch.cat(
                [
                    product(x1[i0 : i0 + block_size], x2, vv, i0 if same else None)
                    for i0 in range(0, n, block_size)
                ]
            )
        return out[:, 0] if v.dim() == 1 else out

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"

    # -- algebra --------------------------------------------------------------------------------
    def __add__(self, other) -> Kernel:
        if not isinstance(other, Kernel):
            return NotImplemented
        return Sum(self, other)

    def __mul__(self, other) -> Kernel:
        if isinstance(other, Kernel):
            return Product(self, other)
        return Scaled(other, self)

    __rmul__ = __mul__

    def _learnable(self) -> bool:
        """Whether a hyperparameter is a tensor (evaluated by the formulas, differentiably)."""
        return any(isinstance(p, Tensor) for p in self.params().values())

    def __eq__(self, other) -> bool:
        return type(self) is type(other) and self.params() == other.params()

    def __hash__(self) -> int:
        return hash((type(self).__name__, tuple(sorted(self.params().items()))))

    # -- validation -----------------------------------------------------------------------------
    def _check_product(self, x1, x2, v, where: str) -> tuple[Tensor, Tensor, Tensor]:
        """The inputs of ``mv``: points as for ``__call__``, ``v`` (M,) or (M, T) like them."""
        x1, x2 = self._check_inputs(x1, x2, where=where)
        v = _check_tensor(v, name="v", where=where, ndim=(1, 2))
        if v.shape[0] != x2.shape[0]:
            raise ValueError(
                f"{where}: v must have {x2.shape[0]} rows (one per row of x2), "
                f"got shape {tuple(v.shape)}"
            )
        _check_same_kind(x1, v, "x1", "v", where)
        _check_finite(v, "v", where)
        return x1, x2, v

    def _check_inputs(self, x1, x2, *, where: str) -> tuple[Tensor, Tensor]:
        # Cheap structural checks on both inputs first, the O(N D) finiteness scan last.
        x1_t = _check_tensor(x1, name="x1", where=where, ndim=(2,))
        if x2 is None or x2 is x1:
            _check_finite(x1_t, "x1", where)
            return x1_t, x1_t
        x2_t = _check_tensor(x2, name="x2", where=where, ndim=(2,))
        if x1_t.shape[1] != x2_t.shape[1]:
            raise ValueError(
                f"{where}: x1 and x2 must have the same number of columns D, "
                f"got x1 {tuple(x1_t.shape)} and x2 {tuple(x2_t.shape)}"
            )
        _check_same_kind(x1_t, x2_t, "x1", "x2", where)
        _check_finite(x1_t, "x1", where)
        _check_finite(x2_t, "x2", where)
        return x1_t, x2_t


def _check_tensor(a, *, name: str, where: str, ndim: tuple[int, ...]) -> Tensor:
    if isinstance(a, np.ndarray):
        if not np.issubdtype(a.dtype, np.floating):
            raise TypeError(f"{where}: {name} must be float32 or float64, got numpy {a.dtype}")
        a = torch.from_numpy(a)
    if not isinstance(a, Tensor):
        raise TypeError(f"{where}: {name} must be a torch.Tensor, got {type(a).__name__}")
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{where}: {name} must be float32 or float64, got {a.dtype}")
    if a.dim() not in ndim:
        want = " or ".join(str(r) for r in ndim)
        raise ValueError(f"{where}: {name} must be {want}-dimensional, got shape {tuple(a.shape)}")
    if a.numel() == 0:
        raise ValueError(f"{where}: {name} must be non-empty, got shape {tuple(a.shape)}")
    return a


def _check_finite(a: Tensor, name: str, where: str) -> None:
    # NaN / inf would silently poison every entry of a Gram row and any solve built on it. A
    # compiled graph skips this data-dependent check (it would break the graph): the ops check
    # their inputs themselves when the graph runs; the formulas of tensor hyperparameters do not.
    if torch.compiler.is_compiling():
        return
    if not bool(torch.isfinite(a).all()):
        raise ValueError(f"{where}: {name} must be finite, but contains NaN or inf")


def _check_same_kind(a: Tensor, b: Tensor, na: str, nb: str, where: str) -> None:
    if a.dtype != b.dtype:
        raise TypeError(
            f"{where}: {na} and {nb} must have the same dtype, got {a.dtype} and {b.dtype}"
        )
    if a.device != b.device:
        raise ValueError(
            f"{where}: {na} and {nb} must be on the same device, got {a.device} and {b.device}"
        )


def check_scalar(value, *, name: str, where: str):
    """A finite number > 0 as a float, or a 0-d floating tensor > 0 kept as it is (a learnable
    hyperparameter, which may require grad)."""
    if isinstance(value, Tensor):
        if value.dim() != 0 or value.dtype not in _FLOAT_DTYPES:
            raise ValueError(
                f"{where}: {name} as a tensor must be a 0-d float32 or float64 tensor, got "
                f"shape {tuple(value.shape)} and {value.dtype}"
            )
        check_positive_float(float(value.detach()), name=name, where=where)
        return value
    return check_positive_float(value, name=name, where=where)


def _check_gamma(gamma, where: str, *, allow_none: bool) -> float | None:
    if gamma is None and allow_none:
        return None
    return check_scalar(gamma, name="gamma", where=where)


class _BandwidthKernel(Kernel):
    """A stationary kernel with inverse length scale ``gamma`` that may be left unset (None)."""

    bandwidth_param = "gamma"

    def _formula_params(self, dim: int) -> dict:
        if self.gamma is None:
            raise ValueError(
                f"{type(self).__name__}: gamma is not set (None); pass gamma > 0, e.g. "
                f"{type(self).__name__}(gamma=1.0), or let KernelRidge select it"
            )
        return self.params()


class RBF(_BandwidthKernel):
    """Gaussian kernel ``exp(-gamma ||x - y||^2)`` (scikit-learn's ``rbf_kernel``).

    Parameters
    ----------
    gamma : float or None
        Inverse squared length scale, > 0. None leaves it to be chosen (e.g. by KernelRidge on a
        validation split); calling the kernel before then raises ValueError.
    """

    name = "rbf"

    def __init__(self, gamma: float | None = None):
        self.gamma = _check_gamma(gamma, "RBF", allow_none=True)

    def params(self) -> dict:
        return {"gamma": self.gamma}


class Laplace(_BandwidthKernel):
    """Laplace kernel ``exp(-gamma ||x - y||_2)``, Euclidean distance (= Matern nu = 1/2).

    Parameters
    ----------
    gamma : float or None
        Inverse length scale, > 0; None leaves it to be chosen (see :class:`RBF`).
    """

    name = "laplace"

    def __init__(self, gamma: float | None = None):
        self.gamma = _check_gamma(gamma, "Laplace", allow_none=True)

    def params(self) -> dict:
        return {"gamma": self.gamma}


class Matern(_BandwidthKernel):
    """Matern kernel with ``nu`` in {0.5, 1.5, 2.5} and inverse length scale ``gamma``.

    Equals scikit-learn's ``Matern(length_scale=1/gamma, nu=nu)``.

    Parameters
    ----------
    nu : float
        Smoothness: 0.5, 1.5 or 2.5.
    gamma : float or None
        Inverse length scale, > 0; None leaves it to be chosen (see :class:`RBF`).
    """

    name = "matern"

    def __init__(self, nu: float = 1.5, gamma: float | None = None):
        if isinstance(nu, bool) or nu not in F.MATERN_NUS:
            raise ValueError(f"Matern: nu must be one of {F.MATERN_NUS}, got {nu!r}")
        self.nu = float(nu)
        self.gamma = _check_gamma(gamma, "Matern", allow_none=True)

    def params(self) -> dict:
        return {"nu": self.nu, "gamma": self.gamma}


class Polynomial(Kernel):
    """Polynomial kernel ``(gamma <x, y> + coef0) ** degree`` (scikit-learn's convention).

    Parameters
    ----------
    degree : int
        Positive integer.
    gamma : float or None
        Scale of the inner product, > 0; None means 1/D at call time (as scikit-learn).
    coef0 : float
        Additive constant (finite).
    """

    name = "polynomial"

    def __init__(self, degree: int = 3, gamma: float | None = None, coef0: float = 1.0):
        self.degree = check_positive_int(degree, name="degree", where="Polynomial")
        self.gamma = _check_gamma(gamma, "Polynomial", allow_none=True)
        if isinstance(coef0, bool) or not isinstance(coef0, Real) or not math.isfinite(coef0):
            raise ValueError(f"Polynomial: coef0 must be a finite number, got {coef0!r}")
        self.coef0 = float(coef0)

    def params(self) -> dict:
        return {"degree": self.degree, "gamma": self.gamma, "coef0": self.coef0}

    def _formula_params(self, dim: int) -> dict:
        gamma = 1.0 / dim if self.gamma is None else self.gamma
        return {"degree": self.degree, "gamma": gamma, "coef0": self.coef0}


class Linear(Kernel):
    """Linear kernel ``<x, y>``."""

    name = "linear"

    def __init__(self):
        pass

    def params(self) -> dict:
        return {}


class ArcCosine(Kernel):
    """Arc-cosine kernel of Cho & Saul (2009), order 0 (step units) or 1 (ReLU units).

    ``k_n(x, y) = (1/pi) ||x||^n ||y||^n J_n(theta)``, ``J_0 = pi - theta``,
    ``J_1 = sin theta + (pi - theta) cos theta``.

    Parameters
    ----------
    order : int
        0 or 1.
    """

    name = "arccos"

    def __init__(self, order: int = 1):
        if isinstance(order, bool) or order not in (0, 1):
            raise ValueError(f"ArcCosine: order must be 0 or 1, got {order!r}")
        self.order = int(order)

    def params(self) -> dict:
        return {"order": self.order}


def _check_arch(arch, depth, where: str) -> tuple[str, int | None]:
    check_choice(arch, F.ARCHS, name="arch", where=where)
    if depth is not None:
        depth = check_positive_int(depth, name="depth", where=where)
    try:
        F.resolve_arch(arch, depth)
    except ValueError as exc:
        raise ValueError(f"{where}: {exc}") from None
    return arch, depth


class NNGP(Kernel):
    """Infinite-width NNGP kernel of a ReLU network (see :func:`.formulas.relu_nngp`).

    Parameters
    ----------
    arch : str
        ``"3resnet"`` (h1 = relu(W x), h2 = relu(U h1), out = A (h1 + h2)), ``"2layer"``,
        ``"3layer"`` or ``"mlp"`` (plain ReLU net with ``depth`` hidden layers).
    depth : int or None
        Hidden layers; required for ``"mlp"``, None for ``"3resnet"``, None or the implied value
        (1, 2) for ``"2layer"``, ``"3layer"``.
    """

    name = "nngp"

    def __init__(self, arch: str = "3resnet", depth: int | None = None):
        self.arch, self.depth = _check_arch(arch, depth, "NNGP")

    def params(self) -> dict:
        return {"arch": self.arch, "depth": self.depth}


class NTK(Kernel):
    """Infinite-width NTK of a ReLU network, NTK parameterisation (:func:`.formulas.relu_ntk`).

    Parameters
    ----------
    arch : str
        As for :class:`NNGP`.
    depth : int or None
        As for :class:`NNGP`.
    trainable : str
        ``"hidden"`` (W and U; readout fixed, the paper's default) or ``"all"`` (adds the
        readout's term, which equals the NNGP).
    """

    name = "ntk"

    def __init__(self, arch: str = "3resnet", depth: int | None = None, trainable: str = "hidden"):
        self.arch, self.depth = _check_arch(arch, depth, "NTK")
        self.trainable = check_choice(trainable, F.TRAINABLE, name="trainable", where="NTK")

    def params(self) -> dict:
        return {"arch": self.arch, "depth": self.depth, "trainable": self.trainable}


# -- sums, products and scalings of kernels ------------------------------------------------------


class _Pair(Kernel):
    """Two kernels combined entrywise (``k1 + k2``, ``k1 * k2``); each part is computed by its
    own op calls, so the solvers take a combination like any other kernel."""

    bandwidth_param = None

    def __init__(self, k1: Kernel, k2: Kernel):
        for name, k in (("k1", k1), ("k2", k2)):
            if not isinstance(k, Kernel):
                raise TypeError(
                    f"{type(self).__name__}: {name} must be a fastkernels Kernel, "
                    f"got {type(k).__name__}"
                )
        self.k1, self.k2 = k1, k2

    def params(self) -> dict:
        return {"k1": self.k1, "k2": self.k2}

    def _learnable(self) -> bool:
        return self.k1._learnable() or self.k2._learnable()

    def __call__(self, x1, x2=None) -> Tensor:
        # Each part checks the inputs (its messages name it); no third scan here.
        return self._combine(self.k1(x1, x2), self.k2(x1, x2))

    def diag(self, x) -> Tensor:
        return self._combine(self.k1.diag(x), self.k2.diag(x))

    def __repr__(self) -> str:
        return f"({self.k1!r} {self._symbol} {self.k2!r})"


class Sum(_Pair):
    """``k1(x, y) + k2(x, y)``; ``mv`` adds the parts' memory-free products."""

    name, _symbol = "sum", "+"

    @staticmethod
    def _combine(a: Tensor, b: Tensor) -> Tensor:
        return a + b

    def mv(self, x1, x2, v, block_size: int | None = None, backend: str = "auto") -> Tensor:
        out = self.k1.mv(x1, x2, v, block_size, backend)
        return out + self.k2.mv(x1, x2, v, block_size, backend)


class Product(_Pair):
    """``k1(x, y) * k2(x, y)`` (positive semi-definite by the Schur product theorem); ``mv``
    forms row blocks of both Grams, a Hadamard product not splitting over the parts."""

    name, _symbol = "product", "*"

    @staticmethod
    def _combine(a: Tensor, b: Tensor) -> Tensor:
        return a * b

    def mv(self, x1, x2, v, block_size: int | None = None, backend: str = "auto") -> Tensor:
        where = "Product.mv"
        ops.check_backend(backend, where)
        if backend == "keops":
            raise ValueError(f"{where}: backend='keops' does not compute products of kernels")
        x1, x2, v = self._check_product(x1, x2, v, where)
        rows = block_size or max(1, _BLOCK_ENTRIES // x2.shape[0])
        vv = v[:, None] if v.dim() == 1 else v
        if x1 is x2 and rows >= x1.shape[0]:
            out = self(x1, x1) @ vv
        else:
            blocks = []
            for i0 in range(0, x1.shape[0], rows):
                xi = x1[i0 : i0 + rows]
                blk = self._combine(self.k1(xi, x2), self.k2(xi, x2))
                if x1 is x2:
                    # The block's self-pairs sit on a shifted diagonal that a Gram of two
                    # different tensors cannot see: they come from the parts' exact diagonals.
                    idx = torch.arange(xi.shape[0], device=blk.device)
                    blk[idx, idx + i0] = self.diag(xi)
                blocks.append(blk @ vv)
            out = torch.cat(blocks)
        return out[:, 0] if v.dim() == 1 else out


class Scaled(Kernel):
    """``c * k(x, y)`` for a constant ``c > 0``: a float, or a 0-d tensor that may require grad.

    One evaluation of ``k`` (one op call for a registry kernel) and one multiplication.
    """

    name = "scaled"
    bandwidth_param = None

    def __init__(self, c, k: Kernel):
        if not isinstance(k, Kernel):
            raise TypeError(f"Scaled: k must be a fastkernels Kernel, got {type(k).__name__}")
        self.c = check_scalar(c, name="c", where="Scaled")
        self.k = k

    def params(self) -> dict:
        return {"c": self.c, "k": self.k}

    def _learnable(self) -> bool:
        return isinstance(self.c, Tensor) or self.k._learnable()

    def __call__(self, x1, x2=None) -> Tensor:
        return self.c * self.k(x1, x2)

    def diag(self, x) -> Tensor:
        return self.c * self.k.diag(x)

    def mv(self, x1, x2, v, block_size: int | None = None, backend: str = "auto") -> Tensor:
        return self.c * self.k.mv(x1, x2, v, block_size, backend)

    def __repr__(self) -> str:
        return f"{self.c!r} * {self.k!r}"
