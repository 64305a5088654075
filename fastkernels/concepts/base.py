"""Base class of the target generators (PAPER.md section 1).

A concept is a fixed function H: R^d -> R^k plus an input distribution. Everything random about it
(its hidden parameters, training samples, the test set) comes from ``seed`` through separate
generator streams, so that the same seed always gives the same target, the same training sample for
a given ``n`` and the same test set, and training and test samples are independent.
"""

from __future__ import annotations

import torch

from .._validation import (
    check_nonnegative_float,
    check_positive_int,
)

# Stream offsets: one independent generator per purpose, derived from the concept seed.
_STREAM_PARAMS, _STREAM_TRAIN, _STREAM_TEST = 0, 1, 2


def stream_generator(seed: int, stream: int) -> torch.Generator:
    """A CPU generator for ``(seed, stream)``; distinct pairs give unrelated streams."""
    g = torch.Generator()
    g.manual_seed((int(seed) * 1_000_003 + int(stream) * 7_919 + 12_345) % (2**63 - 1))
    return g


class Concept:
    """A target H(x) = beta * F(x) + alpha * G(F(x)) with its input distribution.

    Subclasses set ``d`` (input dimension) and ``k`` (output dimension) and implement
    :meth:`sample_x` and :meth:`components`.

    Parameters
    ----------
    alpha : float
        Weight of the composite signal G(F), >= 0.
    beta : float
        Weight of the first-level signal F, >= 0 (the paper has beta = 1).
    noise : float
        Standard deviation of Gaussian label noise added to training labels (0 = realisable).
    seed : int
        Seed of every random stream of the concept.
    """

    name = "concept"

    def __init__(self, *, alpha: float, beta: float = 1.0, noise: float = 0.0, seed: int = 0):
        where = type(self).__name__
        self.alpha = check_nonnegative_float(alpha, name="alpha", where=where)
        self.beta = check_nonnegative_float(beta, name="beta", where=where)
        self.noise = check_nonnegative_float(noise, name="noise", where=where)
        if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
            raise ValueError(f"{where}: seed must be a non-negative integer, got {seed!r}")
        self.seed = seed

    # -- to implement -------------------------------------------------------------------------
    d: int
    k: int

    def sample_x(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """Draw ``n`` inputs, shape (n, d), float64."""
        raise NotImplementedError

    def components(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return (F(X), G(F(X))), each (n, k) float64."""
        raise NotImplementedError

    # -- shared -------------------------------------------------------------------------------
    @property
    def threshold(self) -> float:
        """The "not learned" line k * alpha^2: the error of a predictor that misses alpha G(F)."""
        return self.k * self.alpha**2

    def target(self, X: torch.Tensor) -> torch.Tensor:
        """Noise-free target H(X) = beta F(X) + alpha G(F(X)), shape (n, k), float64."""
        X = torch.as_tensor(X, dtype=torch.float64)
        if X.dim() != 2 or X.shape[1] != self.d:
            raise ValueError(
                f"{type(self).__name__}.target: X must have shape (n, {self.d}), "
                f"got {tuple(X.shape)}"
            )
        F, GF = self.components(X)
        return self.beta * F + self.alpha * GF

    def sample(self, n: int, seed: int | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """A training sample (X, Y) of size ``n``, float64, labels with the concept's noise.

        ``seed`` selects the training stream (default: the concept's seed). Training samples never
        overlap the test stream.
        """
        n = check_positive_int(n, name="n", where=f"{type(self).__name__}.sample")
        g = stream_generator(self.seed if seed is None else seed, _STREAM_TRAIN)
        X = self.sample_x(n, g)
        Y = self.target(X)
        if self.noise > 0:
            Y = Y + self.noise * torch.randn(Y.shape, generator=g, dtype=Y.dtype)
        return X, Y

    def test_set(self, n: int = 10_000) -> tuple[torch.Tensor, torch.Tensor]:
        """The fixed test set of this concept seed: (X, H(X)) with noise-free labels, float64."""
        n = check_positive_int(n, name="n", where=f"{type(self).__name__}.test_set")
        g = stream_generator(self.seed, _STREAM_TEST)
        X = self.sample_x(n, g)
        return X, self.target(X)

    def label_variance(self, n: int = 10_000) -> float:
        """Var(y) = E ||y - E y||^2 (summed over the k outputs) on the test set of size ``n``.

        The test error of the best constant predictor, and the scale on which errors of
        different concepts compare: an error relative to it of 1 means nothing was learned.
        """
        n = check_positive_int(n, name="n", where=f"{type(self).__name__}.label_variance")
        _, Y = self.test_set(n)
        return float((Y - Y.mean(dim=0)).square().sum(dim=1).mean())

    def params(self) -> dict:
        """The constructor arguments, for configs and results stores."""
        raise NotImplementedError

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self.params().items())
        return f"{type(self).__name__}({args})"
