"""Kernel ridge solvers."""

from .cholesky import cholesky

__all__ = ["cholesky"]
