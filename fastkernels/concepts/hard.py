"""The lower-bound instance of Theorem 2 (PAPER.md 1.2)."""

from __future__ import annotations

import math

import torch

from .._validation import check_positive_int
from .base import _STREAM_PARAMS, Concept, stream_generator


def n_targets(d1: int, k: int) -> int:
    """Number of targets of the hard family, C(d1, k): one per hidden set S of k coordinates.

    Theorems 2 and 3 (PAPER.md 1.2) are statements about this whole family.
    """
    d1 = check_positive_int(d1, name="d1", where="n_targets")
    k = check_positive_int(k, name="k", where="n_targets")
    return math.comb(d1, k)


def kernel_sample_bound(d1: int, k: int) -> int:
    """The kernel lower-bound sample size floor(C(d1, k) / 1000) of Theorems 2 and 3.

    Theorem 2: any kernel method (any Mercer kernel, any weights, NTK included) trained on
    N <= C(d1, k) / 1000 samples has test error > alpha^2 / 16 on 99% of the C(d1, k) targets.
    Theorem 3: the same holds for linear regression over any D-dimensional feature map with
    D <= C(d1, k) / 1000. The value returned is the largest integer N (or D) the theorems cover;
    0 means they say nothing at this size.
    """
    return n_targets(d1, k) // 1000


class HardInstance(Concept):
    """Theorem 2's instance: H_r(x) = beta x_{i_r} + alpha prod_{j in S} x_j, r = 1..k.

    x is uniform on {-1, +1}^d. The theorem needs only the first ``d1`` coordinates uniform (the
    other d - d1 may follow any distribution); here they are uniform too, and a subclass may
    override :meth:`sample_tail` to change them. The hidden set S = {i_1 < ... < i_k} of k distinct
    coordinates among the first d1 (0-based indices) is drawn from the params stream, so
    F(x) = (x_{i_1}, ..., x_{i_k}) and G_r(y) = y_1 ... y_k for every r: alpha G(F(x)) is the
    degree-k parity of S on every output. The paper has beta = 1.

    Theorem 2 (PAPER.md 1.2): any kernel method (any Mercer kernel, any weights, NTK included)
    with N <= C(d1, k) / 1000 samples has error > alpha^2 / 16 on 99% of the C(d1, k) targets,
    while the ResNet needs about k^2 d / alpha^8 samples. Theorem 3: the same bound holds for linear
    regression over any D-dimensional feature map with D <= C(d1, k) / 1000. See
    :meth:`n_targets`, :meth:`kernel_sample_bound` and :attr:`kernel_error_bound`.

    Parameters
    ----------
    d : int
        Input dimension.
    d1 : int, optional
        Number of leading uniform coordinates S is drawn from, 1 <= d1 <= d (default: d).
    k : int
        Size of S and output dimension, 1 <= k <= d1.
    alpha, beta, noise, seed
        See :class:`Concept`.

    Attributes
    ----------
    support : list of int
        The sorted hidden set S (0-based column indices of X).
    """

    name = "hard"

    def __init__(
        self,
        d: int = 30,
        d1: int | None = None,
        k: int = 4,
        alpha: float = 0.3,
        beta: float = 1.0,
        noise: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(alpha=alpha, beta=beta, noise=noise, seed=seed)
        where = "HardInstance"
        self.d = check_positive_int(d, name="d", where=where)
        if d1 is None:
            d1 = self.d
        self.d1 = check_positive_int(d1, name="d1", where=where)
        if self.d1 > self.d:
            raise ValueError(f"{where}: d1 must be <= d = {self.d}, got {d1}")
        self.k = check_positive_int(k, name="k", where=where)
        if self.k > self.d1:
            raise ValueError(f"{where}: k must be <= d1 = {self.d1}, got {k}")
        g = stream_generator(self.seed, _STREAM_PARAMS)
        self.support: list[int] = sorted(torch.randperm(self.d1, generator=g)[: self.k].tolist())

    def n_targets(self) -> int:
        """C(d1, k), the number of targets in this instance's family (Theorems 2 and 3)."""
        return n_targets(self.d1, self.k)

    def kernel_sample_bound(self) -> int:
        """floor(C(d1, k) / 1000): the largest N (Theorem 2) or feature dimension D (Theorem 3)
        below which kernel methods have error > alpha^2 / 16 on 99% of the targets."""
        return kernel_sample_bound(self.d1, self.k)

    @property
    def kernel_error_bound(self) -> float:
        """alpha^2 / 16, Theorem 2's error floor for kernels below :meth:`kernel_sample_bound`."""
        return self.alpha**2 / 16

    def sample_tail(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """The last d - d1 coordinates, (n, d - d1) float64; uniform on {-1, +1} here."""
        bits = torch.randint(0, 2, (n, self.d - self.d1), generator=generator)
        return (2 * bits - 1).to(torch.float64)

    def sample_x(self, n: int, generator: torch.Generator) -> torch.Tensor:
        bits = torch.randint(0, 2, (n, self.d1), generator=generator)
        head = (2 * bits - 1).to(torch.float64)
        if self.d1 == self.d:
            return head
        return torch.cat([head, self.sample_tail(n, generator)], dim=1)

    def components(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        F = X[:, self.support]
        GF = F.prod(dim=1, keepdim=True).expand(-1, self.k).contiguous()
        return F, GF

    def params(self) -> dict:
        return {
            "d": self.d,
            "d1": self.d1,
            "k": self.k,
            "alpha": self.alpha,
            "beta": self.beta,
            "noise": self.noise,
            "seed": self.seed,
        }
