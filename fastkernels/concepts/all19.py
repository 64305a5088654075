"""The smooth targets of the companion paper, Allen-Zhu, Li, Liang 2019 (PAPER.md 1.3)."""

from __future__ import annotations

import torch

from .._validation import check_choice, check_positive_int
from .base import Concept
from .smooth import sphere

_WHICH = ("sin", "tanh")


class ALL19Target(Concept):
    """One of the two targets of Allen-Zhu, Li, Liang (2019) on x in R^4, k = 1 output.

    ``which="sin"``:  y = (sin 3x1 + sin 3x2 + sin 3x3 - 2)^2 * cos 7x4
    ``which="tanh"``: y = (tanh 8x1 + tanh 8x2 + tanh 8x3 - 2)^2 * tanh 8x4

    Input distribution: the companion paper's "normalised Gaussian" is taken as x = g / ||g|| with
    g ~ N(0, I_4), i.e. x uniform on the unit sphere S^3 (as in :class:`SmoothConcept`), not
    g / sqrt(4).

    These targets are not of the form beta F + alpha G(F). The concept therefore has alpha = 0 and
    beta = 1, and :meth:`components` returns (H(x), zeros): the whole target plays the role of F.
    Consequently :attr:`threshold` (k alpha^2) is 0 and carries no meaning here; the reference
    error for this concept is the error of the best constant predictor, Var(y) =
    E ||y - E y||^2, given by :meth:`baseline_error` (the curves of PAPER.md 1.3 are read against
    it).

    Parameters
    ----------
    which : {"sin", "tanh"}
        Which of the two targets.
    noise, seed
        See :class:`Concept`.
    """

    name = "all19"
    d = 4
    k = 1

    def __init__(self, which: str = "sin", noise: float = 0.0, seed: int = 0):
        super().__init__(alpha=0.0, beta=1.0, noise=noise, seed=seed)
        self.which = check_choice(which, _WHICH, name="which", where="ALL19Target")

    def sample_x(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return sphere(n, self.d, generator)

    def function(self, X: torch.Tensor) -> torch.Tensor:
        """The target y(X): (n, 4) -> (n, 1), float64."""
        X = torch.as_tensor(X, dtype=torch.float64)
        if X.dim() != 2 or X.shape[1] != self.d:
            raise ValueError(
                f"ALL19Target.function: X must have shape (n, {self.d}), got {tuple(X.shape)}"
            )
        if self.which == "sin":
            inner = torch.sin(3 * X[:, :3]).sum(dim=1) - 2
            y = inner.square() * torch.cos(7 * X[:, 3])
        else:
            inner = torch.tanh(8 * X[:, :3]).sum(dim=1) - 2
            y = inner.square() * torch.tanh(8 * X[:, 3])
        return y[:, None]

    def components(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(H(X), zeros), each (n, 1) float64: the target is not split into F and G(F)."""
        H = self.function(X)
        return H, torch.zeros_like(H)

    def baseline_error(self, n: int = 10_000) -> float:
        """Var(y) = E ||y - E y||^2, estimated on the first ``n`` points of the fixed test set.

        The error of the best constant predictor: the reference line for this concept, whose
        :attr:`threshold` is 0.
        """
        check_positive_int(n, name="n", where="ALL19Target.baseline_error")
        return self.label_variance(n)

    def params(self) -> dict:
        return {"which": self.which, "noise": self.noise, "seed": self.seed}
