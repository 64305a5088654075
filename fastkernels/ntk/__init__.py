"""Empirical neural tangent kernels (structured fast path and torch.func generic path)."""

from .empirical import empirical_ntk, ntk_factors, ntk_from_factors
from .kernel import EmpiricalNTK

__all__ = ["EmpiricalNTK", "empirical_ntk", "ntk_factors", "ntk_from_factors"]
