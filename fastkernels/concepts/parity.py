"""The paper's experiment instances on Boolean inputs (PAPER.md 1.1)."""

from __future__ import annotations

import torch

from .._validation import check_positive_int
from .base import Concept


class ParityConcept(Concept):
    """H(x) = beta F(x) + alpha G(F(x)) on x uniform in {-1, +1}^d.

    F_r(x) = x_{2r-1} x_{2r} for r = 1..k (products of disjoint pairs) and
    G_i(y) = (-1)^i y_1 y_2 y_3 y_4 for i = 1..k, so alpha G_i(F(x)) = (-1)^i alpha x_1 ... x_8,
    a degree-8 parity with alternating signs (output 1 has sign -1).

    Parameters
    ----------
    d : int
        Input dimension, at least 2 k (the final paper instance has d = 30).
    k : int
        Output dimension, at least 4 (15 in the final version, 8 in the earlier one).
    alpha, beta, noise, seed
        See :class:`Concept`.
    """

    name = "parity"

    def __init__(
        self,
        d: int = 30,
        k: int = 15,
        alpha: float = 0.3,
        beta: float = 1.0,
        noise: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(alpha=alpha, beta=beta, noise=noise, seed=seed)
        where = "ParityConcept"
        self.d = check_positive_int(d, name="d", where=where)
        self.k = check_positive_int(k, name="k", where=where)
        if self.k < 4:
            raise ValueError(f"{where}: k must be >= 4 (G reads y_1..y_4), got {k}")
        if self.d < 2 * self.k:
            raise ValueError(
                f"{where}: d must be >= 2 k = {2 * self.k} (F uses disjoint pairs), got {d}"
            )

    @classmethod
    def final(cls, **kwargs) -> ParityConcept:
        """The final version's instance: d = 30, k = 15, alpha = 0.3 (threshold 1.35)."""
        return cls(**{"d": 30, "k": 15, **kwargs})

    @classmethod
    def earlier(cls, **kwargs) -> ParityConcept:
        """The earlier version's instance: d = 30, k = 8, alpha = 0.3 (threshold 0.72)."""
        return cls(**{"d": 30, "k": 8, **kwargs})

    def sample_x(self, n: int, generator: torch.Generator) -> torch.Tensor:
        bits = torch.randint(0, 2, (n, self.d), generator=generator)
        return (2 * bits - 1).to(torch.float64)

    def signs(self) -> torch.Tensor:
        """(-1)^i for i = 1..k, shape (k,)."""
        i = torch.arange(1, self.k + 1)
        return torch.where(i % 2 == 0, 1.0, -1.0).to(torch.float64)

    def components(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        F = X[:, 0 : 2 * self.k : 2] * X[:, 1 : 2 * self.k : 2]
        GF = F[:, :4].prod(dim=1, keepdim=True) * self.signs()
        return F, GF

    def params(self) -> dict:
        return {
            "d": self.d,
            "k": self.k,
            "alpha": self.alpha,
            "beta": self.beta,
            "noise": self.noise,
            "seed": self.seed,
        }
