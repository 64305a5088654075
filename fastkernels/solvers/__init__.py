"""Kernel ridge solvers: direct, conjugate gradients, and Nystrom-preconditioned CG.

All three solve several right-hand sides (the k outputs) at once and report what they did in a
:class:`SolverInfo` (iterations, residual history, converged flag):

- :func:`cholesky`: (K + ridge I) C = Y by a float64 Cholesky factorisation, jitter retry with a
  warning. N up to a few thousand (O(N^3) time, O(N^2) memory).
- :func:`cg`: conjugate gradients on any linear operator (a tensor, a
  :class:`KernelOperator` that is memory-free through ``kernel.mv`` or caches the dense Gram
  within a memory budget), optionally preconditioned (:class:`NystromPreconditioner`), warm
  start, true residual checks. Exact kernel ridge for N in the tens of thousands.
- :func:`nystrom_pcg`: FALKON-style Nystrom kernel ridge with M centres; K_nM streamed in row
  tiles every iteration, never stored beyond the memory budget; N in the millions.

Non-convergence raises a :class:`ConvergenceWarning` (a RuntimeWarning) with the final residual.
"""

from ._common import (
    DEFAULT_MEMORY_BUDGET,
    ConvergenceWarning,
    SolverInfo,
    format_bytes,
    parse_bytes,
)
from .cg import NystromPreconditioner, cg
from .cholesky import cholesky
from .nystrom import NystromResult, nystrom_pcg
from .operators import (
    DenseOperator,
    KernelOperator,
    LinearOperator,
    as_operator,
    min_tile_bytes,
)

__all__ = [
    "cholesky",
    "cg",
    "nystrom_pcg",
    "NystromPreconditioner",
    "NystromResult",
    "KernelOperator",
    "format_bytes",
    "min_tile_bytes",
    "DenseOperator",
    "LinearOperator",
    "as_operator",
    "SolverInfo",
    "ConvergenceWarning",
    "DEFAULT_MEMORY_BUDGET",
    "parse_bytes",
]
