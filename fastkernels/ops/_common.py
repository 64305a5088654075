"""Shared pieces of the kernel ops: the flat parameter packing, input checks and the backward.

Parameter packing
-----------------
The ops take the kernel as a name and its parameters as a flat ``list[float]`` so that one
schema serves every kernel (and C++ / Triton read them without Python objects):

==============  =====================================  ==========================================
kernel          params                                 meaning
==============  =====================================  ==========================================
``rbf``         ``[gamma]``                            ``exp(-gamma ||x - y||^2)``, gamma > 0
``laplace``     ``[gamma]``                            ``exp(-gamma ||x - y||)``, gamma > 0
``matern``      ``[nu, gamma]``                        nu in {0.5, 1.5, 2.5}, gamma > 0
``polynomial``  ``[degree, gamma, coef0]``             ``(gamma <x, y> + coef0) ** degree``
``linear``      ``[]``                                 ``<x, y>``
``arccos``      ``[order]``                            order 0 or 1
``nngp``        ``[arch_code, depth]``                 arch_code 0: ReLU MLP with ``depth``
                                                       hidden layers; 1: 3resnet (depth 0)
``ntk``         ``[arch_code, depth, trainable_code]`` as nngp; trainable_code 0: "hidden",
                                                       1: "all"
==============  =====================================  ==========================================

:func:`pack_params` builds the list from keyword parameters (``"2layer"`` / ``"3layer"`` become
``mlp`` with depth 1 / 2); :func:`unpack_params` validates a list and returns the keyword
arguments of the reference formula in :mod:`fastkernels.kernels.formulas`.

Self-pairs
----------
``diag_offset`` (``int`` or None) says that row ``i`` of ``x1`` is the same point as row
``i + diag_offset`` of ``x2``: those entries get an exact zero distance / unit cosine. None
means no self-pairs unless ``x1`` and ``x2`` are the same tensor object (then 0).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from . import formulas as F

__all__ = [
    "KERNEL_NAMES",
    "LAYOUT",
    "pack_params",
    "unpack_params",
    "check_tensors",
    "check_finite",
    "check_points",
    "center_inputs",
    "resolve_offset",
    "gram_vjp_terms",
]

KERNEL_NAMES = ("rbf", "laplace", "matern", "polynomial", "linear", "arccos", "nngp", "ntk")
_ARCH_CODES = {"mlp": 0, "3resnet": 1}
_TRAINABLE_CODES = {"hidden": 0, "all": 1}
# The parameter layout of every kernel, defined here once: unpack_params validates by it, the
# Triton launchers unpack through unpack_params, and the C++ parser (csrc/kernel_common.h), which
# repeats the layouts and messages, is checked against it in tests/ops/test_params.py.
LAYOUT = {
    "rbf": "[gamma]",
    "laplace": "[gamma]",
    "matern": "[nu, gamma]",
    "polynomial": "[degree, gamma, coef0]",
    "linear": "[]",
    "arccos": "[order]",
    "nngp": "[arch_code, depth]",
    "ntk": "[arch_code, depth, trainable_code]",
}
_FLOAT_DTYPES = (torch.float32, torch.float64)


def pack_params(kernel: str, **params) -> list[float]:
    """The flat parameter list of ``kernel`` from the keyword parameters of its formula.

    Parameters
    ----------
    kernel : str
        One of :data:`KERNEL_NAMES`.
    **params
        The keyword arguments of ``formulas.FORMULAS[kernel]`` (e.g. ``gamma=0.5``; for ``nngp``
        / ``ntk``: ``arch``, ``depth`` and for ``ntk`` ``trainable``).

    Returns
    -------
    list of float
        The packing of the module docstring.
    """
    if kernel in ("rbf", "laplace"):
        return [float(params["gamma"])]
    if kernel == "matern":
        return [float(params["nu"]), float(params["gamma"])]
    if kernel == "polynomial":
        return [float(params["degree"]), float(params["gamma"]), float(params["coef0"])]
    if kernel == "linear":
        return []
    if kernel == "arccos":
        return [float(params["order"])]
    if kernel in ("nngp", "ntk"):
        arch, depth = F.resolve_arch(params["arch"], params.get("depth"))
        out = [float(_ARCH_CODES[arch]), float(depth or 0)]
        if kernel == "ntk":
            out.append(float(_TRAINABLE_CODES[params.get("trainable", "hidden")]))
        return out
    raise ValueError(f"pack_params: unknown kernel {kernel!r}; expected one of {KERNEL_NAMES}")


def _is_int(x: float) -> bool:
    return math.isfinite(x) and float(x).is_integer()


def unpack_params(op: str, kernel: str, params) -> dict:
    """Validate a flat parameter list and return the reference formula's keyword arguments.

    Parameters
    ----------
    op : str
        Op name for error messages (``"fastkernels::gram"``).
    kernel : str
        Kernel name.
    params : sequence of float
        The packed parameters.

    Returns
    -------
    dict
        Keyword arguments of ``formulas.FORMULAS[kernel]``.

    Raises
    ------
    ValueError
        Unknown kernel, wrong number of parameters or an invalid value; the message names the
        op, the argument and the expected layout.
    """
    if kernel not in KERNEL_NAMES:
        raise ValueError(f"{op}: kernel must be one of {KERNEL_NAMES}, got {kernel!r}")
    p = [float(a) for a in params]
    layout = LAYOUT[kernel]
    want = 0 if layout == "[]" else layout.count(",") + 1
    if len(p) != want:
        raise ValueError(
            f"{op}: params for kernel {kernel!r} must be {layout} ({want} values), got {p}"
        )

    def bad(what: str):
        return ValueError(f"{op}: params for kernel {kernel!r} ({layout}): {what}, got {p}")

    if kernel in ("rbf", "laplace", "matern"):
        gamma = p[-1]
        if not (math.isfinite(gamma) and gamma > 0):
            raise bad("gamma (bandwidth) must be a finite number > 0")
        if kernel == "matern":
            if p[0] not in F.MATERN_NUS:
                raise bad(f"nu must be one of {F.MATERN_NUS}")
            return {"nu": p[0], "gamma": gamma}
        return {"gamma": gamma}
    if kernel == "polynomial":
        degree, gamma, coef0 = p
        if not (_is_int(degree) and degree >= 1):
            raise bad("degree must be a positive integer")
        if not (math.isfinite(gamma) and gamma > 0):
            raise bad("gamma must be a finite number > 0")
        if not math.isfinite(coef0):
            raise bad("coef0 must be finite")
        return {"degree": int(degree), "gamma": gamma, "coef0": coef0}
    if kernel == "linear":
        return {}
    if kernel == "arccos":
        if p[0] not in (0.0, 1.0):
            raise bad("order must be 0 or 1")
        return {"order": int(p[0])}
    arch_code, depth = p[0], p[1]
    if arch_code not in (0.0, 1.0):
        raise bad("arch_code must be 0 (mlp) or 1 (3resnet)")
    out: dict = {}
    if arch_code == 0.0:
        if not (_is_int(depth) and depth >= 1):
            raise bad("depth (hidden layers of the mlp) must be a positive integer")
        out.update(arch="mlp", depth=int(depth))
    else:
        if depth != 0.0:
            raise bad("depth must be 0 for the 3resnet (its depth is fixed)")
        out.update(arch="3resnet", depth=None)
    if kernel == "ntk":
        if p[2] not in (0.0, 1.0):
            raise bad("trainable_code must be 0 (hidden) or 1 (all)")
        out["trainable"] = "all" if p[2] == 1.0 else "hidden"
    return out


def check_tensors(op: str, x1, x2, v=None, diag_offset=None) -> None:
    """Structural checks (no data is read, so this also runs on fake / meta tensors).

    Raises
    ------
    TypeError
        Not a tensor, integer / half dtype, or mixed dtypes.
    ValueError
        Wrong rank, mismatched D or right-hand-side rows, empty input, mixed devices.
    """
    named = [("x1", x1), ("x2", x2)] + ([("v", v)] if v is not None else [])
    for name, a in named:
        if not isinstance(a, Tensor):
            raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(a).__name__}")
        if a.dtype not in _FLOAT_DTYPES:
            raise TypeError(f"{op}: {name} must be float32 or float64, got {a.dtype}")
        if a.dim() != 2:
            want = "(M, T)" if name == "v" else ("(N, D)" if name == "x1" else "(M, D)")
            raise ValueError(
                f"{op}: {name} must be 2-dimensional {want}, got shape {tuple(a.shape)}"
            )
        if a.numel() == 0:
            raise ValueError(f"{op}: {name} must be non-empty, got shape {tuple(a.shape)}")
    for name, a in named[1:]:
        if a.dtype != x1.dtype:
            raise TypeError(
                f"{op}: x1 and {name} must have the same dtype, got {x1.dtype} and {a.dtype}"
            )
        if a.device != x1.device:
            raise ValueError(
                f"{op}: x1 and {name} must be on the same device, got {x1.device} and {a.device}"
            )
    if x1.shape[1] != x2.shape[1]:
        raise ValueError(
            f"{op}: x1 and x2 must have the same number of columns D, "
            f"got x1 {tuple(x1.shape)} and x2 {tuple(x2.shape)}"
        )
    if v is not None and v.shape[0] != x2.shape[0]:
        raise ValueError(
            f"{op}: v must have {x2.shape[0]} rows (one per row of x2), got shape {tuple(v.shape)}"
        )
    if diag_offset is not None and not isinstance(diag_offset, int):
        raise TypeError(f"{op}: diag_offset must be an int or None, got {diag_offset!r}")


def check_finite(op: str, **tensors: Tensor) -> None:
    """Reject NaN / inf: they would silently poison every entry of a Gram row and any solve."""
    for name, a in tensors.items():
        if not bool(torch.isfinite(a).all()):
            raise ValueError(f"{op}: {name} must be finite, but contains NaN or inf")


# The range check leaves a margin of 16 over max|x|^2 * D: the common shift of the
# translation-invariant kernels (center_inputs) at most doubles |x|, and a squared distance
# ||x||^2 + ||y||^2 - 2 <x, y> sums four terms of that size (inf - inf would be a NaN entry).
_RANGE_MARGIN = 16.0


def check_points(op: str, **points: Tensor) -> None:
    """Reject point sets (``x1``, ``x2``) that are not finite or whose squared norms overflow.

    Finite inputs can still give NaN kernel values: float32 entries near 1e19 have squared norms
    past the float32 maximum, and ``inf - inf`` in the squared distance is NaN. One aminmax pass
    per tensor answers both questions (aminmax propagates NaN), with one host sync in all.

    Parameters
    ----------
    op : str
        Op name for the messages.
    **points : Tensor, shape (rows, D), float32 or float64
        The inputs by argument name; a tensor passed twice (``x1 is x2``) is read once.

    Raises
    ------
    ValueError
        NaN / inf (the message of :func:`check_finite`), or an entry larger in absolute value
        than ``sqrt(finfo(dtype).max / (16 D))``; the message names the argument and says to
        rescale the inputs or use float64.
    """
    named: list[tuple[str, Tensor]] = []
    for name, a in points.items():
        if not any(a is b for _, b in named):
            named.append((name, a))
    with torch.no_grad():
        ends = torch.stack([e.double() for _, a in named for e in torch.aminmax(a)]).tolist()
    for k, (name, a) in enumerate(named):
        lo, hi = ends[2 * k], ends[2 * k + 1]
        if not (math.isfinite(lo) and math.isfinite(hi)):
            raise ValueError(f"{op}: {name} must be finite, but contains NaN or inf")
        amax, d = max(abs(lo), abs(hi)), a.shape[1]
        limit = math.sqrt(torch.finfo(a.dtype).max / (_RANGE_MARGIN * d))
        if amax > limit:
            dtype = str(a.dtype).removeprefix("torch.")
            raise ValueError(
                f"{op}: {name} has entries up to {amax:.3g} in absolute value, too large for "
                f"{dtype}: its squared norms over D = {d} columns would overflow (largest usable "
                f"|entry| {limit:.3g}); rescale the inputs or use float64"
            )


def center_inputs(kernel: str, x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    """``formulas.center(x1, x2)`` for the translation-invariant kernels, else the inputs as is.

    Every implementation shifts these kernels' inputs (one common point, the mean of x2's rows)
    before it forms ``||x||^2 + ||y||^2 - 2 <x, y>``, which cancels for data far from the origin;
    the other kernels are functions of the inner products themselves and must not be shifted.
    ``x1 is x2`` is preserved.
    """
    if kernel in F.TRANSLATION_INVARIANT:
        return F.center(x1, x2)
    return x1, x2


def resolve_offset(x1: Tensor, x2: Tensor, diag_offset: int | None) -> int | None:
    """``diag_offset``, or 0 when it is None and ``x1`` is ``x2`` (a self-Gram)."""
    if diag_offset is None and x1 is x2:
        return 0
    return diag_offset


# ---------------------------------------------------------------------------------------------
# Backward: dL/dK -> dL/ds, dL/dn1, dL/dn2 -> dL/dx1, dL/dx2
# ---------------------------------------------------------------------------------------------

_SQRT3 = math.sqrt(3.0)
_SQRT5 = math.sqrt(5.0)


def _distance_derivative(kernel: str, kw: dict, d2: Tensor) -> Tensor:
    """dk/d(d2) of the stationary kernels, written out so that it is finite at d2 = 0.

    Autograd through ``sqrt(d2)`` would give 0 * inf = NaN at coincident points. Matern 3/2 and
    5/2 have a finite limit there (used as is). Laplace (Matern 1/2) is not differentiable at
    coincident points; we use the subgradient 0 (the symmetric choice: k(x, y) is minimised in
    neither direction), so gradients stay finite.
    """
    gamma = kw["gamma"]
    if kernel == "rbf":
        return -gamma * torch.exp(-gamma * d2)
    nu = kw.get("nu", 0.5)
    dist = torch.sqrt(d2)
    if nu == 0.5:
        safe = torch.where(d2 > 0, dist, torch.ones_like(dist))
        out = -gamma * torch.exp(-gamma * dist) / (2.0 * safe)
        return torch.where(d2 > 0, out, torch.zeros_like(out))
    r = gamma * dist
    if nu == 1.5:
        return -1.5 * gamma * gamma * torch.exp(-_SQRT3 * r)
    return -(5.0 / 6.0) * gamma * gamma * (1.0 + _SQRT5 * r) * torch.exp(-_SQRT5 * r)


def gram_vjp_terms(
    x1: Tensor, x2: Tensor, kernel: str, kw: dict, offset: int | None, w: Tensor
) -> tuple[Tensor, Tensor, Tensor]:
    """The vector-Jacobian product of one Gram block, reduced to its three inputs.

    Every kernel is ``k(s, n1, n2)`` with ``s = x1 x2^T``, ``n1 = ||x1_i||^2``,
    ``n2 = ||x2_j||^2``, so for ``w = dL/dK``::

        dL/dx1 = gs @ x2 + 2 gn1[:, None] * x1,    dL/dx2 = gs^T @ x1 + 2 gn2[:, None] * x2.

    For the translation-invariant kernels pass the shifted inputs (:func:`center_inputs`), here
    and in the two products above: both the distance and the sum ``gs @ x2 + 2 gn1 x1`` (which
    is ``sum_j 2 gd_ij (x1_i - x2_j)``) cancel for data far from the origin. The gradient with
    respect to the shifted points is the gradient with respect to the original ones.

    Parameters
    ----------
    x1 : Tensor, shape (n, D)
    x2 : Tensor, shape (M, D)
    kernel : str
    kw : dict
        The formula's keyword arguments (:func:`unpack_params`).
    offset : int or None
        Resolved self-pair offset of this block.
    w : Tensor, shape (n, M)
        dL/dK of this block.

    Returns
    -------
    gs : Tensor, shape (n, M)
    gn1 : Tensor, shape (n,)
    gn2 : Tensor, shape (M,)
    """
    s, n1, n2, same = F.gram_terms(x1, x2, diag_offset=offset)
    if kernel in ("rbf", "laplace", "matern"):
        raw = n1 + n2 - 2.0 * s
        d2 = raw.clamp_min(0.0)
        gd = w * _distance_derivative(kernel, kw, d2)
        # The clamp is flat below 0, and self-pairs are constant k(0) by definition.
        keep = raw >= 0
        if same is not None:
            keep = keep & ~same
        gd = torch.where(keep, gd, torch.zeros_like(gd))
        return -2.0 * gd, gd.sum(dim=1), gd.sum(dim=0)
    if kernel == "linear":
        return w, w.new_zeros(w.shape[0]), w.new_zeros(w.shape[1])
    epilogue = F._EPILOGUES[kernel]
    scale = 1.0 / x1.shape[1] if kernel in F._SCALED_BY_DIM else 1.0

    def f(s_, n1_, n2_):
        return epilogue(s_ * scale, n1_ * scale, n2_ * scale, same, **kw)

    _, vjp = torch.func.vjp(f, s, n1, n2)
    gs, gn1, gn2 = vjp(w)
    return gs, gn1[:, 0], gn2[0, :]
