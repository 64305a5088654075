"""Custom ops of fastkernels (namespace ``fastkernels``), one file per op.

Each op is a ``torch.library.custom_op`` whose body is the readable torch reference; faster
implementations are registered per device on the same op name, so callers just call
``torch.ops.fastkernels.<op>`` (or the thin wrappers here) and the dispatcher picks:

- CPU tensors: the C++ kernels of ``fastkernels._C`` (``csrc/``) when the extension was built
  (``gram`` / ``kernel_mv`` / ``kernel_normal_mv`` for the kernels in :data:`CPP_KERNELS`;
  ``ntk_gram`` / ``ntk_mv`` always); otherwise the reference;
- CUDA tensors: the Triton kernels of :mod:`fastkernels.ops._triton` when ``triton`` imports;
  otherwise the reference;
- any other device: the reference.

``HAS_CPP`` says whether the extension loaded and ``HAS_TRITON`` whether the Triton kernels are
registered (``fastkernels info`` reports both).
"""

from __future__ import annotations

import torch
from torch import Tensor

from . import formulas
from ._common import CPP_KERNELS, KERNEL_NAMES, pack_params, unpack_params

# KeOps backend: the module is light (pykeops itself is imported on first KeOps use only).
from ._keops import BACKENDS, KEOPS_KERNELS, check_backend
from ._keops import check_expressible as check_keops_expressible
from ._keops import kernel_mv as keops_kernel_mv
from ._keops import pykeops_torch as require_keops
from .gram import gram as _gram_op
from .gram import gram_reference
from .kernel_mv import kernel_mv as _kernel_mv_op
from .kernel_mv import kernel_mv_reference
from .kernel_normal_mv import kernel_normal_mv as _kernel_normal_mv_op
from .kernel_normal_mv import kernel_normal_mv_reference
from .ntk_gram import ntk_gram, ntk_gram_reference
from .ntk_mv import ntk_mv, ntk_mv_reference

__all__ = [
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
    "pack_params",
    "unpack_params",
    "KERNEL_NAMES",
    "CPP_KERNELS",
    "HAS_CPP",
    "HAS_TRITON",
    "formulas",
    "BACKENDS",
    "KEOPS_KERNELS",
    "check_backend",
    "check_keops_expressible",
    "keops_kernel_mv",
    "require_keops",
]


def _load_extension() -> bool:
    try:
        from .. import _C  # noqa: F401  (registers fastkernels::_gram_cpu, _ntk_gram_cpu, ...)
    except ImportError:
        return False
    return True


HAS_CPP = _load_extension()

if HAS_CPP:

    @_gram_op.register_kernel("cpu")
    def _gram_cpu(x1, x2, kernel, params, diag_offset):
        if kernel in CPP_KERNELS:
            return torch.ops.fastkernels._gram_cpu(x1, x2, kernel, params, diag_offset)
        return gram_reference(x1, x2, kernel, params, diag_offset)

    @_kernel_mv_op.register_kernel("cpu")
    def _kernel_mv_cpu(x1, x2, v, kernel, params, diag_offset):
        if kernel in CPP_KERNELS:
            return torch.ops.fastkernels._kernel_mv_cpu(x1, x2, v, kernel, params, diag_offset)
        return kernel_mv_reference(x1, x2, v, kernel, params, diag_offset)

    # An extension built before csrc/kernel_normal_mv.cpp existed lacks the op: keep the
    # reference rather than fail at call time.
    if hasattr(torch.ops.fastkernels, "_kernel_normal_mv_cpu"):

        @_kernel_normal_mv_op.register_kernel("cpu")
        def _kernel_normal_mv_cpu(x1, x2, v, kernel, params):
            if kernel in CPP_KERNELS:
                return torch.ops.fastkernels._kernel_normal_mv_cpu(x1, x2, v, kernel, params)
            return kernel_normal_mv_reference(x1, x2, v, kernel, params)

    @ntk_gram.register_kernel("cpu")
    def _ntk_gram_cpu(a1, b1, a2, b2):
        return torch.ops.fastkernels._ntk_gram_cpu(a1, b1, a2, b2)

    @ntk_mv.register_kernel("cpu")
    def _ntk_mv_cpu(a1, b1, a2, b2, v):
        return torch.ops.fastkernels._ntk_mv_cpu(a1, b1, a2, b2, v)


def _load_triton() -> bool:
    """Import the Triton kernels and register them for CUDA tensors; False without triton."""
    try:
        from . import _triton  # imports triton; no GPU or driver needed
    except Exception:  # not installed, or a broken install failing at import: keep the reference
        return False

    @_gram_op.register_kernel("cuda")
    def _gram_cuda(x1, x2, kernel, params, diag_offset):
        return _triton.gram_triton(x1, x2, kernel, params, diag_offset)

    @_kernel_mv_op.register_kernel("cuda")
    def _kernel_mv_cuda(x1, x2, v, kernel, params, diag_offset):
        return _triton.kernel_mv_triton(x1, x2, v, kernel, params, diag_offset)

    @_kernel_normal_mv_op.register_kernel("cuda")
    def _kernel_normal_mv_cuda(x1, x2, v, kernel, params):
        return _triton.kernel_normal_mv_triton(x1, x2, v, kernel, params)

    @ntk_gram.register_kernel("cuda")
    def _ntk_gram_cuda(a1, b1, a2, b2):
        return _triton.ntk_gram_triton(a1, b1, a2, b2)

    @ntk_mv.register_kernel("cuda")
    def _ntk_mv_cuda(a1, b1, a2, b2, v):
        return _triton.ntk_mv_triton(a1, b1, a2, b2, v)

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
        ``"auto"`` and ``"fastkernels"``: the custom op (the dispatcher picks C++ / reference).
        ``"keops"``: a KeOps reduction (:mod:`fastkernels.ops._keops`; needs pykeops, the
        ``keops`` extra) for the kernels it expresses (rbf, laplace, matern, polynomial,
        linear, arccos); forward-only; the first call per formula compiles it (10-20 s, then
        cached in the user's cache folder).

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
    check_backend(backend, "fastkernels.ops.kernel_mv")
    if x1 is x2 and diag_offset is None:
        diag_offset = 0
    vec = isinstance(v, Tensor) and v.dim() == 1
    vv = v[:, None] if vec else v
    params = [float(p) for p in params]
    if backend == "keops":
        out = keops_kernel_mv(x1, x2, vv, kernel, params, diag_offset)
    else:
        out = torch.ops.fastkernels.kernel_mv(x1, x2, vv, kernel, params, diag_offset)
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
