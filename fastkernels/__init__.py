"""fastkernels: what can a network learn that a kernel cannot, with the same samples?

Targets from Allen-Zhu & Li (NeurIPS 2019), small residual networks trained by SGD, kernel
baselines (RBF, arc-cosine, analytic and empirical NTK) and sweeps over the sample count.
"""

__version__ = "0.1.0"

from . import concepts  # noqa: E402
from .concepts import ParityConcept, make_concept  # noqa: E402


def __getattr__(name):
    # The estimators on first use: they import scikit-learn (slow to import), which
    # `import fastkernels` for the targets or the ops does not need.
    if name in ("ResNetRegressor", "KernelRidge", "NTKRegressor", "make_learner"):
        from . import learners

        return getattr(learners, name)
    raise AttributeError(name)


__all__ = [
    "__version__",
    "concepts",
    "ParityConcept",
    "make_concept",
    "make_learner",
    "ResNetRegressor",
    "KernelRidge",
    "NTKRegressor",
]
