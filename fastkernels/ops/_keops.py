"""KeOps backend of :func:`fastkernels.ops.kernel_mv`: ``K(x1, x2) @ v`` as a KeOps reduction.

KeOps (``pykeops``, the ``keops`` extra) compiles a symbolic formula ``sum_j k(x_i, y_j) v_j``
into a C++ (or CUDA) reduction that never stores K. It is not a dispatcher kernel of the custom
op: it is chosen by policy, ``kernel_mv(..., backend="keops")`` or
``KernelOperator(..., backend="keops")``, for the kernels it can express
(:data:`KEOPS_KERNELS`). The analytic NNGP / NTK recursions are not expressed here; asking for
them raises ValueError.

Formulas
--------
One compiled formula per (kernel family, dtype, D, T, and for ``polynomial`` the degree): the
continuous parameters (``gamma``, ``coef0``, ...) are KeOps parameters (``Pm``), so a bandwidth
sweep does not recompile. Each new formula compiles once (10-20 s with g++) and is then loaded
from the build folder.

==============  ===========================================================================
kernel          formula (``r = ||x - y||`` computed as ``sqrt(sum (x - y)^2)``)
==============  ===========================================================================
``rbf``         ``exp(-gamma r^2)``
``laplace``     one formula for the Matern family: ``(1 + r (a1 + a2 r)) exp(-a3 r)``;
``matern``      nu = 1/2: (0, 0, gamma); 3/2: (sqrt3 g, 0, sqrt3 g); 5/2: (sqrt5 g, 5/3 g^2,
                sqrt5 g)
``polynomial``  ``(gamma <x, y> + coef0) ** degree`` (degree in the formula, by repeated
                multiplication)
``linear``      the polynomial formula of degree 1 with gamma = 1, coef0 = 0
``arccos``      one formula for orders 0 and 1, with the angle from Kahan's formula
                ``theta = 2 atan2(||x^ - y^||, ||x^ + y^||)`` on the unit vectors x^, y^
==============  ===========================================================================

Self-pairs and accuracy
-----------------------
KeOps computes distances as ``sum (x - y)^2``, not from ``||x||^2 + ||y||^2 - 2 <x, y>``, so
there is no cancellation and a point paired with itself has a distance of exactly 0 whatever
``diag_offset`` says: ``rbf(x, x)`` and the Matern kernels are exactly 1 there, as in the
op. Kahan's angle is exactly 0 for two equal points (the op forces cosine 1 on self-pairs
instead, because ``arccos`` of a rounded cosine near 1 is inaccurate) and accurate elsewhere.
``diag_offset`` is therefore validated but not needed: it promises that some pairs are equal
points, and KeOps gets those pairs exact from the points themselves. (If the promise is false,
the op treats the pair as a self-pair and KeOps does not.) Zero-norm rows have cosine 0 with
everything, as in the op.

The sums over j run in the input dtype (KeOps' default accumulator): float32 results are
within about 1e-6 of the float64 product, normwise over the output (measured in
``tests/ops/test_kernel_mv.py``), like the op's float32 C++ path.

Gradients are not provided: this backend is forward-only (it serves memory-free products for
the solvers); inputs that require grad raise, use ``backend="auto"`` to differentiate.

Build folder and compiler flags
-------------------------------
On first use the KeOps build folder (compiled formulas) is set, with ``pykeops.set_build_folder``,
to ``<root>/keops-<version>/<system>_<host>_<kernel release>_p<python>``, where ``<root>`` is
``$FASTKERNELS_KEOPS_CACHE`` if set, else ``$XDG_CACHE_HOME/fastkernels/keops``, else
``~/.cache/fastkernels/keops``. The version, host and Python parts keep binaries apart that are
not interchangeable (a KeOps upgrade; ``-march=native`` code on another CPU; another Python).
If pykeops is not imported yet and ``KEOPS_CACHE_FOLDER`` is unset, it is imported with
``KEOPS_CACHE_FOLDER=<root>/keops-<version>``, so that nothing goes to KeOps' own
``~/.cache/keops<version>``. The build folder is process-wide in pykeops, so formulas a program
compiles through pykeops directly afterwards land there too (and if the program imported
pykeops first, ``set_build_folder`` records the folder in KeOps' own cache folder, which KeOps
only reads when asked to).

KeOps reads ``CXXFLAGS`` once, when pykeops is imported. If ``CXXFLAGS`` is set, it is used as
is. If not, and pykeops is not imported yet, fastkernels imports it with
:data:`DEFAULT_CXXFLAGS` (the variable is restored right after the import, so nothing else in the
process sees it): ``-march=native`` (the host's vector units, safe because the build folder is
per host) and the value-changing parts of ``-ffast-math`` that let GCC vectorise ``exp``
(no errno, finite math, reassociation, reciprocals, no signed zeros). Measured here, RBF K v at
20000 x 20000, D = 100: 12.6 s per product with ``-march=native`` alone, 2.5 s with these flags,
2.0 s with ``-ffast-math``. ``-ffast-math`` itself (and ``-funsafe-math-optimizations``, which
implies the same) is *not* used: with GCC < 13 it links ``crtfastmath.o`` into every compiled
formula, and loading one switches on flush-to-zero / denormals-are-zero for the whole process
(after the first formula, ``torch.tensor([1e-310], dtype=torch.float64) * 1`` gives 0),
silently changing unrelated float code; the individual flags do not link it (checked). Set
``CXXFLAGS="-march=native -ffast-math"`` yourself to opt in to the last 20%. Formulas compiled
with other flags are cached separately (the flags are part of
KeOps' hash).
"""

from __future__ import annotations

import functools
import importlib.metadata
import math
import os
import platform
import sys
import threading
from pathlib import Path

import torch
from torch import Tensor

from ._common import check_finite, check_points, check_tensors, unpack_params

__all__ = [
    "BACKENDS",
    "KEOPS_KERNELS",
    "DEFAULT_CXXFLAGS",
    "CACHE_ENV",
    "kernel_mv",
    "check_backend",
    "check_expressible",
    "cache_root",
    "build_folder",
    "pykeops_torch",
]

OP = "fastkernels::kernel_mv (backend='keops')"
BACKENDS = ("auto", "fastkernels", "keops")
KEOPS_KERNELS = ("rbf", "laplace", "matern", "polynomial", "linear", "arccos")
DEFAULT_CXXFLAGS = (
    "-march=native -fno-math-errno -fno-trapping-math -ffinite-math-only -fno-signed-zeros "
    "-fassociative-math -freciprocal-math"
)
CACHE_ENV = "FASTKERNELS_KEOPS_CACHE"

_SQRT3 = math.sqrt(3.0)
_SQRT5 = math.sqrt(5.0)
# r = ||x - y|| without the norm expansion: exact 0 for equal points, no cancellation.
_R = "Sqrt(SqDist(x, y))"
_MATERN = f"(IntCst(1) + {_R} * (a1 + a2 * {_R})) * Exp(-a3 * {_R}) * b"
# Kahan's angle between the unit vectors x and y: exact 0 for equal points, accurate near 0 and
# pi where arccos of a rounded cosine is not. A zero-norm row (nx * ny = 0) has cosine 0 with
# everything: theta = pi / 2 (h).
_THETA = "IfElse(-nx * ny, h, IntCst(2) * Atan2(Norm2(x - y), Norm2(x + y)))"
# Orders 0 and 1 in one formula (weights w0, w1) so that they share one compilation.
_ARCCOS = "(w0 * (pi - T) + w1 * nx * ny * (Sin(T) + (pi - T) * Cos(T))) / pi * b".replace(
    "T", _THETA
)

_lock = threading.Lock()
_state: dict = {}


def check_backend(backend, where: str) -> str:
    """``backend`` if it is one of :data:`BACKENDS`, else ValueError naming ``where``."""
    if backend not in BACKENDS:
        raise ValueError(f"{where}: backend must be one of {BACKENDS}, got {backend!r}")
    return backend


def check_expressible(kernel: str, where: str) -> None:
    """ValueError unless ``kernel`` is one of :data:`KEOPS_KERNELS` (no pykeops import)."""
    if kernel not in KEOPS_KERNELS:
        raise ValueError(
            f"{where}: kernel {kernel!r} is not expressible as a KeOps formula; "
            f"backend='keops' supports {KEOPS_KERNELS}. Use backend='auto' for {kernel!r}."
        )


def cache_root() -> Path:
    """The root of fastkernels' KeOps build cache (see the module docstring)."""
    env = os.environ.get(CACHE_ENV)
    if env:
        return Path(env).expanduser()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "fastkernels" / "keops"


def build_folder(version: str | None = None) -> Path:
    """The KeOps build folder fastkernels uses: :func:`cache_root` / KeOps version / host."""
    if version is None:
        version = importlib.metadata.version("pykeops")
    system, host, release = platform.uname()[:3]
    name = f"{system}_{host}_{release}_p{platform.python_version()}"
    return cache_root() / f"keops-{version}" / name


def _missing(exc: BaseException) -> ImportError:
    return ImportError(
        f"{OP}: pykeops is not installed ({type(exc).__name__}: {exc}); install the keops extra, "
        "pip install fastkernels[keops], or use backend='auto'"
    )


def pykeops_torch():
    """``pykeops.torch``, imported and configured on first use (thread-safe).

    The first call imports pykeops with the compiler flags and cache location of the module
    docstring and points KeOps' build folder at :func:`build_folder`.

    Raises
    ------
    ImportError
        pykeops is not installed; the message names ``pip install fastkernels[keops]``.
    """
    mod = _state.get("pkt")
    if mod is not None:
        return mod
    with _lock:
        if "pkt" in _state:
            return _state["pkt"]
        try:
            version = importlib.metadata.version("pykeops")
        except importlib.metadata.PackageNotFoundError as exc:
            raise _missing(exc) from None
        folder = build_folder(version)
        env = {}
        if "pykeops" not in sys.modules:
            # KeOps reads CXXFLAGS and its cache folder once, at import: set them for the import
            # only, and only where the user has not.
            if "CXXFLAGS" not in os.environ:
                env["CXXFLAGS"] = DEFAULT_CXXFLAGS
            if "KEOPS_CACHE_FOLDER" not in os.environ:
                env["KEOPS_CACHE_FOLDER"] = str(folder.parent)
        os.environ.update(env)
        try:
            import pykeops
            import pykeops.torch as pkt
        except ImportError as exc:
            raise _missing(exc) from None
        finally:
            for key in env:
                os.environ.pop(key, None)
        folder.mkdir(parents=True, exist_ok=True)
        if os.path.abspath(pykeops.get_build_folder() or "") != str(folder.absolute()):
            pykeops.set_build_folder(str(folder))
        _state["pkt"] = pkt
        return pkt


@functools.lru_cache(maxsize=64)
def _genred(formula: str, aliases: tuple[str, ...]):
    # Genred objects are cheap; each compiles its formula per dtype on first call.
    return pykeops_torch().Genred(formula, list(aliases), reduction_op="Sum", axis=1)


def _reduction(x1: Tensor, x2: Tensor, v: Tensor, kernel: str, kw: dict):
    """(formula, aliases, args) of ``sum_j k(x1_i, x2_j) v_j`` for one kernel."""
    d, t = x1.shape[1], v.shape[1]

    def pm(*values):
        return [torch.tensor([float(a)], dtype=x1.dtype, device=x1.device) for a in values]

    xyb = [f"x = Vi({d})", f"y = Vj({d})", f"b = Vj({t})"]
    if kernel == "rbf":
        return "Exp(-g * SqDist(x, y)) * b", xyb + ["g = Pm(1)"], [x1, x2, v, *pm(kw["gamma"])]
    if kernel in ("laplace", "matern"):
        nu, g = kw.get("nu", 0.5), kw["gamma"]
        if nu == 0.5:
            coef = (0.0, 0.0, g)
        elif nu == 1.5:
            coef = (_SQRT3 * g, 0.0, _SQRT3 * g)
        else:
            coef = (_SQRT5 * g, 5.0 / 3.0 * g * g, _SQRT5 * g)
        aliases = xyb + ["a1 = Pm(1)", "a2 = Pm(1)", "a3 = Pm(1)"]
        return _MATERN, aliases, [x1, x2, v, *pm(*coef)]
    if kernel in ("polynomial", "linear"):
        if kernel == "linear":
            degree, gamma, coef0 = 1, 1.0, 0.0
        else:
            degree, gamma, coef0 = kw["degree"], kw["gamma"], kw["coef0"]
        base = "(g * (x | y) + c)"
        formula = (base if degree == 1 else f"Pow({base}, {degree})") + " * b"
        return formula, xyb + ["g = Pm(1)", "c = Pm(1)"], [x1, x2, v, *pm(gamma, coef0)]
    # arccos: unit vectors (zero for zero-norm rows) and norms once here, O((N + M) D).
    n1 = torch.linalg.vector_norm(x1, dim=1, keepdim=True)
    u1 = torch.where(n1 > 0, x1 / torch.where(n1 > 0, n1, 1.0), 0.0)
    if x2 is x1:
        n2, u2 = n1, u1
    else:
        n2 = torch.linalg.vector_norm(x2, dim=1, keepdim=True)
        u2 = torch.where(n2 > 0, x2 / torch.where(n2 > 0, n2, 1.0), 0.0)
    order = kw["order"]
    aliases = xyb + ["nx = Vi(1)", "ny = Vj(1)", "h = Pm(1)", "pi = Pm(1)", "w0 = Pm(1)"]
    aliases.append("w1 = Pm(1)")
    args = [u1, u2, v, n1, n2, *pm(math.pi / 2, math.pi, 1.0 - order, float(order))]
    return _ARCCOS, aliases, args


def kernel_mv(
    x1: Tensor,
    x2: Tensor,
    v: Tensor,
    kernel: str,
    params,
    diag_offset: int | None = None,
) -> Tensor:
    """``K(x1, x2) @ v`` by a KeOps reduction; same inputs, checks and result as the op.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    v : Tensor, shape (M, T), same dtype and device
    kernel : str
        One of :data:`KEOPS_KERNELS`.
    params : sequence of float
        The kernel's packed parameters (table in :mod:`fastkernels.ops._common`).
    diag_offset : int or None
        Validated as for the op; KeOps gets self-pairs exact without it (module docstring).

    Returns
    -------
    Tensor, shape (N, T), dtype and device of the inputs

    Raises
    ------
    TypeError, ValueError
        Bad input, exactly as the op (the message names this backend); ValueError for a kernel
        KeOps cannot express (``nngp``, ``ntk``) or inputs that require grad.
    ImportError
        pykeops is not installed (``pip install fastkernels[keops]``).
    """
    check_tensors(OP, x1, x2, v, diag_offset=diag_offset)
    kw = unpack_params(OP, kernel, params)
    check_expressible(kernel, OP)
    # No shift needed (SqDist has no cancellation); the range check keeps the op's contract.
    check_points(OP, x1=x1, x2=x2)
    check_finite(OP, v=v)
    if torch.is_grad_enabled() and any(a.requires_grad for a in (x1, x2, v)):
        raise ValueError(
            f"{OP}: this backend is forward-only and an input requires grad; use "
            "backend='auto' to differentiate, or call it under torch.no_grad()"
        )
    same = x1 is x2
    x1 = x1.contiguous()
    x2 = x1 if same else x2.contiguous()
    formula, aliases, args = _reduction(x1, x2, v.contiguous(), kernel, kw)
    return _genred(formula, tuple(aliases))(*args, backend="auto")
