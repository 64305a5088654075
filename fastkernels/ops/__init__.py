"""Custom ops of fastkernels (namespace ``fastkernels``), one file per op.

Each op is a ``torch.library.custom_op`` whose body is the readable torch reference; faster
implementations are registered per device on the same op name, so callers just call
``torch.ops.fastkernels.<op>`` (or the thin wrappers here) and the dispatcher picks:

- CPU tensors: the C++ kernels of ``fastkernels._C`` (``csrc/<op>.cpp``, registered by C++ on
  the same op names for the CPU dispatch key) when the extension was built; otherwise the
  reference;
- CUDA tensors: the Triton kernels of :mod:`fastkernels.ops._triton` when ``triton`` imports;
  otherwise the reference;
- any other device: the reference.

``HAS_CPP`` says whether the extension loaded and ``HAS_TRITON`` whether the Triton kernels are
registered (``fastkernels info`` reports both).
"""

from __future__ import annotations

import os
import sys
import warnings

import torch
from torch import Tensor

from . import formulas
from ._common import KERNEL_NAMES, pack_params, unpack_params

# KeOps backend: the module is light (pykeops itself is imported on first KeOps use only).
from ._keops import BACKENDS, KEOPS_KERNELS, check_backend
from ._keops import check_expressible as check_keops_expressible
from ._keops import kernel_mv as keops_kernel_mv
from ._keops import pykeops_torch as require_keops
from ._resnet_common import PARAMS as RESNET_PARAMS
from .gram import gram_reference
from .kernel_mv import kernel_mv_reference
from .kernel_normal_mv import kernel_normal_mv_reference
from .ntk_gram import ntk_gram, ntk_gram_reference
from .ntk_mv import ntk_mv, ntk_mv_reference
from .resnet_bwd import resnet_bwd, resnet_bwd_reference
from .resnet_fwd import resnet_fwd, resnet_fwd_reference
from .resnet_sgd import resnet_sgd, resnet_sgd_reference

# The op names; each has its file (fastkernels/ops/<name>.py) with IMPLEMENTATIONS.
OPS = (
    "gram",
    "kernel_mv",
    "kernel_normal_mv",
    "ntk_gram",
    "ntk_mv",
    "resnet_fwd",
    "resnet_bwd",
    "resnet_sgd",
)

__all__ = [
    "OPS",
    "gram",
    "kernel_mv",
    "kernel_normal_mv",
    "ntk_gram",
    "ntk_mv",
    "gram_reference",
    "kernel_mv_reference",
    "kernel_normal_mv_reference",
    "ntk_gram_reference",
    "ntk_mv_reference",
    "resnet_fwd",
    "resnet_bwd",
    "resnet_sgd",
    "resnet_fwd_reference",
    "resnet_bwd_reference",
    "resnet_sgd_reference",
    "RESNET_PARAMS",
    "pack_params",
    "unpack_params",
    "KERNEL_NAMES",
    "HAS_CPP",
    "ExtensionWarning",
    "HAS_TRITON",
    "formulas",
    "BACKENDS",
    "KEOPS_KERNELS",
    "check_backend",
    "check_keops_expressible",
    "keops_kernel_mv",
    "KernelProduct",
    "kernel_product",
    "require_keops",
]


def _load_extension() -> bool:
    """Load ``fastkernels._C``: its ``TORCH_LIBRARY_IMPL(fastkernels, CPU, m)`` blocks register
    the C++ kernels on the op names defined above (``csrc/<op>.cpp``); False without it."""
    try:
        from .. import _C  # noqa: F401
    except ImportError:
        return False
    # An extension that loaded but registered nothing (e.g. built from other sources) is no C++.
    return all(
        torch._C._dispatch_has_kernel_for_dispatch_key(f"fastkernels::{op}", "CPU") for op in OPS
    )


class ExtensionWarning(UserWarning):
    """The C++ extension is missing: CPU ops run their torch reference, several times slower."""


HAS_CPP = _load_extension()
if not HAS_CPP and os.environ.get("FASTKERNELS_NO_EXT", "0").lower() in ("", "0", "false", "no"):
    # Once per process, at import: an isolated build (plain `pip install -e .`) has no torch to
    # compile against and installs the package without the extension, silently otherwise.
    warnings.warn(
        "fastkernels: the C++ extension (fastkernels._C) is not built, so the ops run their "
        "torch reference on CPU, several times slower. Build it with "
        "`pip install --no-build-isolation -e .` in an environment that has torch, setuptools "
        "and a C++ compiler (FASTKERNELS_REQUIRE_EXT=1 makes a failed build an error; "
        "FASTKERNELS_NO_EXT=1 silences this warning).",
        ExtensionWarning,
        stacklevel=2,
    )


def _load_triton() -> bool:
    """Import the Triton kernels and register them for CUDA tensors; False without triton."""
    try:
        from . import _triton  # imports triton; no GPU or driver needed
    except Exception:  # not installed, or a broken install failing at import: keep the reference
        return False

    for name in OPS:
        module = sys.modules[f"{__name__}.{name}"]
        launcher = getattr(_triton, module.IMPLEMENTATIONS["cuda"])
        getattr(module, name).register_kernel("cuda")(launcher)
    return True


# Importing triton costs a quarter of a second: a process that can hold CUDA tensors registers
# the kernels now; one that cannot (no CUDA device) only when HAS_TRITON is first asked for
# (module __getattr__ below), e.g. by the interpreter tests or `fastkernels info`.
if torch.cuda.is_available():
    HAS_TRITON = _load_triton()


def __getattr__(name: str):
    if name == "HAS_TRITON":
        value = _load_triton()
        globals()["HAS_TRITON"] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def gram(
    x1: Tensor,
    x2: Tensor | None = None,
    kernel: str = "rbf",
    params=(1.0,),
    *,
    diag_offset: int | None = None,
) -> Tensor:
    """``K[i, j] = k(x1_i, x2_j)`` through ``torch.ops.fastkernels.gram``.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device, optional
        Defaults to ``x1`` (a self-Gram with exact self-pairs on the diagonal).
    kernel : str
        A name in :data:`KERNEL_NAMES`.
    params : sequence of float
        Packed parameters (see :func:`pack_params`).
    diag_offset : int, optional
        Row ``i`` of ``x1`` is row ``i + diag_offset`` of ``x2``; default 0 for a self-Gram,
        else no self-pairs.

    Returns
    -------
    Tensor, shape (N, M), dtype and device of the inputs
    """
    if x2 is None or x2 is x1:
        x2 = x1
        diag_offset = 0 if diag_offset is None else diag_offset
    return torch.ops.fastkernels.gram(x1, x2, kernel, [float(p) for p in params], diag_offset)


class KernelProduct:
    """``K(x1, x2) @ v`` of one kernel and its parameters on a backend chosen once.

    Built by :func:`kernel_product`, which validates the kernel, its parameters and the backend;
    a call goes straight to the ``kernel_mv`` custom op (the dispatcher picks C++, Triton or the
    reference by device) or to the KeOps reduction, so that a solver's hundreds of products
    repeat none of those choices. Each call still checks its tensors, once, in the op.
    :meth:`gram` and :meth:`normal_mv` give the solvers' other products of the same kernel.

    Attributes
    ----------
    kernel : str
    params : list of float
    backend : {"fastkernels", "keops"}
        The resolved backend (``"auto"`` resolves to ``"fastkernels"``).
    """

    __slots__ = ("kernel", "params", "backend", "_fn")

    def __init__(self, kernel: str, params: list[float], backend: str, fn):
        self.kernel, self.params, self.backend, self._fn = kernel, params, backend, fn

    def __call__(self, x1: Tensor, x2: Tensor, v: Tensor, diag_offset: int | None = None):
        """``K(x1, x2) @ v`` for x1 (N, D), x2 (M, D), v (M, T); result (N, T).

        ``diag_offset`` as for :func:`gram` (None with ``x1 is x2`` means 0, in the op).
        """
        return self._fn(x1, x2, v, self.kernel, self.params, diag_offset)

    def gram(self, x1: Tensor, x2: Tensor, diag_offset: int | None = None) -> Tensor:
        """The Gram block ``K(x1, x2)`` (N, M) of the same kernel (the ``gram`` op, any backend:
        KeOps forms no matrices)."""
        return torch.ops.fastkernels.gram(x1, x2, self.kernel, self.params, diag_offset)

    def normal_mv(self, x1: Tensor, x2: Tensor, v: Tensor) -> Tensor:
        """``K^T (K v)`` with ``K = K(x1, x2)``, v (M, T) (the ``kernel_normal_mv`` op)."""
        return torch.ops.fastkernels.kernel_normal_mv(x1, x2, v, self.kernel, self.params)

    def __repr__(self) -> str:
        return f"KernelProduct({self.kernel!r}, {self.params!r}, backend={self.backend!r})"


def kernel_product(
    kernel: str, params=(1.0,), backend: str = "auto", *, where: str = "fastkernels.ops"
) -> KernelProduct:
    """Choose the backend of ``K(x1, x2) @ v`` once: the one place a backend name is resolved.

    Parameters
    ----------
    kernel : str
        A name in :data:`KERNEL_NAMES`.
    params : sequence of float
        Packed parameters (see :func:`pack_params`).
    backend : {"auto", "fastkernels", "keops"}, default "auto"
        ``"auto"`` and ``"fastkernels"``: the custom op. ``"keops"``: a KeOps reduction
        (:mod:`fastkernels.ops._keops`; needs pykeops, the ``keops`` extra) for the kernels it
        expresses (:data:`KEOPS_KERNELS`); forward-only; the first call per formula compiles
        it (10-20 s, then cached in the user's cache folder).
    where : str
        Caller named in error messages.

    Returns
    -------
    KernelProduct

    Raises
    ------
    ValueError
        An unknown kernel or ``backend``, invalid parameters, or a kernel KeOps cannot express
        with ``backend="keops"``.
    ImportError
        ``backend="keops"`` without pykeops installed.
    """
    check_backend(backend, where)
    params = [float(p) for p in params]
    unpack_params(where, kernel, params)
    if backend == "keops":
        check_keops_expressible(kernel, where)
        require_keops()  # ImportError now, not at the first product of a solve
        return KernelProduct(kernel, params, "keops", keops_kernel_mv)
    return KernelProduct(kernel, params, "fastkernels", torch.ops.fastkernels.kernel_mv)


def kernel_mv(
    x1: Tensor,
    x2: Tensor,
    v: Tensor,
    kernel: str = "rbf",
    params=(1.0,),
    *,
    diag_offset: int | None = None,
    backend: str = "auto",
) -> Tensor:
    """``K(x1, x2) @ v`` through ``torch.ops.fastkernels.kernel_mv`` or KeOps; K is never stored.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    v : Tensor, shape (M,) or (M, T), same dtype and device
    kernel : str
        A name in :data:`KERNEL_NAMES`.
    params : sequence of float
        Packed parameters (see :func:`pack_params`).
    diag_offset : int, optional
        As for :func:`gram` (default 0 when ``x1 is x2``).
    backend : {"auto", "fastkernels", "keops"}, default "auto"
        As for :func:`kernel_product`.

    Returns
    -------
    Tensor, shape (N,) or (N, T) following ``v``, dtype and device of the inputs

    Raises
    ------
    TypeError, ValueError
        Bad input (the op's checks, for every backend), an unknown ``backend``, or a kernel
        KeOps cannot express with ``backend="keops"``.
    ImportError
        ``backend="keops"`` without pykeops installed.
    """
    product = kernel_product(kernel, params, backend, where="fastkernels.ops.kernel_mv")
    vec = isinstance(v, Tensor) and v.dim() == 1
    out = product(x1, x2, v[:, None] if vec else v, diag_offset)
    return out[:, 0] if vec else out


def kernel_normal_mv(
    x1: Tensor, x2: Tensor, v: Tensor, kernel: str = "rbf", params=(1.0,)
) -> Tensor:
    """``K^T (K v)`` with ``K = k(x1, x2)`` through ``torch.ops.fastkernels.kernel_normal_mv``.

    One pass over the rows of x1; K is never stored (the Nystrom solvers' normal product).

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
        The data rows.
    x2 : Tensor, shape (M, D), same dtype and device
        The centres.
    v : Tensor, shape (M,) or (M, T), dtype of x1 or float64, same device
    kernel : str
        A name in :data:`KERNEL_NAMES`.
    params : sequence of float
        Packed parameters (see :func:`pack_params`).

    Returns
    -------
    Tensor, shape (M,) or (M, T) following ``v``, dtype of v
        Summed over the rows of x1 in float64 (see :mod:`fastkernels.ops.kernel_normal_mv`).
    """
    vec = isinstance(v, Tensor) and v.dim() == 1
    vv = v[:, None] if vec else v
    out = torch.ops.fastkernels.kernel_normal_mv(x1, x2, vv, kernel, [float(p) for p in params])
    return out[:, 0] if vec else out
