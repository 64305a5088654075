"""Concept 1 with smooth activations (PAPER.md section 1)."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

from .._validation import check_positive_float, check_positive_int
from .base import _STREAM_PARAMS, Concept, stream_generator

# Activations sigma(z) applied as sigma(c z). Each is smooth; "exp" is shifted so sigma(0) = 0.
ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "exp": torch.expm1,
    "sin": torch.sin,
    "tanh": torch.tanh,
    "poly2": lambda z: z * z,
    "poly3": lambda z: z * z * z,
}

# Size of the seeded sample, drawn once from the params stream, that fixes the scales of F and G.
_NORM_SAMPLES = 20_000


def sphere(n: int, d: int, generator: torch.Generator) -> torch.Tensor:
    """``n`` points uniform on the unit sphere S^{d-1} (normalised Gaussians), (n, d) float64."""
    g = torch.randn(n, d, generator=generator, dtype=torch.float64)
    return g / g.norm(dim=1, keepdim=True)


class SmoothConcept(Concept):
    """Concept 1 of PAPER.md section 1: H(x) = beta F(x) + alpha G(F(x)) with smooth activations.

    x is uniform on the unit sphere S^{d-1} (a normalised Gaussian g / ||g||). Up to the two scale
    factors below,

        F_r(x) = sum_{i < p_F} a_{F,r,i} phi_{r,i}(c <w_{r,i}, x>),   r = 1..k,
        G_r(h) = sum_{i < p_G} a_{G,r,i} psi_{r,i}(c <v_{r,i}, h>),   r = 1..k,

    with every a uniform in [-1, 1], every w (in R^d) and v (in R^k) a uniformly random direction
    of norm exactly 1/sqrt(2), and every phi, psi drawn uniformly from ``activations``:
    ``"exp"``: exp(z) - 1, ``"sin"``: sin z, ``"tanh"``: tanh z, ``"poly2"``: z^2, ``"poly3"``: z^3
    (each applied to c <., .>).

    Normalisation. The theory normalises ||F(x)|| = 1; here F is multiplied by one scalar
    ``F_scale`` so that E ||F(x)||^2 = 1, and G by one scalar ``G_scale`` so that
    E ||G(F(x))||^2 = k (G is applied to the normalised F). The second choice keeps the meaning of
    the "not learned" line k alpha^2: a predictor that ignores alpha G(F) pays about
    E ||alpha G(F(x))||^2 = k alpha^2 (that is, alpha^2 per output, as for the parity instances,
    whose G_r(F(x)) = +-1). Both expectations include the means of F and G, which need not be zero.
    The scales are estimated once, at construction, from ``20000`` inputs drawn from the params
    stream right after the hidden parameters, so they are part of the seeded target.

    Parameters
    ----------
    d : int
        Input dimension.
    k : int
        Output dimension (and width of the intermediate representation F).
    p_F, p_G : int
        Number of neurons per output of F and of G.
    activations : sequence of str
        Names the phi and psi are drawn from (``"exp"``, ``"sin"``, ``"tanh"``, ``"poly2"``,
        ``"poly3"``).
    c : float
        Input scale of every activation, > 0.
    alpha, beta, noise, seed
        See :class:`Concept`.

    Attributes
    ----------
    a_F : torch.Tensor
        (k, p_F) float64, output weights of F, in [-1, 1].
    w_F : torch.Tensor
        (k, p_F, d) float64, input directions of F, each of norm 1/sqrt(2).
    act_F : torch.Tensor
        (k, p_F) int64, index into ``activations`` of each phi_{r,i}.
    a_G, v_G, act_G : torch.Tensor
        The same for G: (k, p_G), (k, p_G, k), (k, p_G).
    F_scale, G_scale : float
        The normalisation factors described above.
    """

    name = "smooth"

    def __init__(
        self,
        d: int = 20,
        k: int = 5,
        p_F: int = 8,
        p_G: int = 8,
        activations=("exp", "sin", "tanh", "poly2"),
        c: float = 1.0,
        alpha: float = 0.3,
        beta: float = 1.0,
        noise: float = 0.0,
        seed: int = 0,
    ):
        super().__init__(alpha=alpha, beta=beta, noise=noise, seed=seed)
        where = "SmoothConcept"
        self.d = check_positive_int(d, name="d", where=where)
        self.k = check_positive_int(k, name="k", where=where)
        self.p_F = check_positive_int(p_F, name="p_F", where=where)
        self.p_G = check_positive_int(p_G, name="p_G", where=where)
        self.activations = _check_activations(activations, where=where)
        self.c = check_positive_float(c, name="c", where=where)

        # Fixed draw order (part of the seeded target): F's a, w, phi; then G's; then the sample
        # that sets the scales.
        g = stream_generator(self.seed, _STREAM_PARAMS)
        self.a_F, self.w_F, self.act_F = self._draw_layer(self.p_F, self.d, g)
        self.a_G, self.v_G, self.act_G = self._draw_layer(self.p_G, self.k, g)
        self.F_scale = 1.0
        self.G_scale = 1.0
        X = sphere(_NORM_SAMPLES, self.d, g)
        F = self.F(X)
        self.F_scale = _scale(F, 1.0, where=where, what="F")
        F = F * self.F_scale
        self.G_scale = _scale(self.G(F), float(self.k), where=where, what="G(F)")

    def _draw_layer(
        self, p: int, fan_in: int, g: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        a = 2 * torch.rand(self.k, p, generator=g, dtype=torch.float64) - 1
        w = torch.randn(self.k, p, fan_in, generator=g, dtype=torch.float64)
        w = w / (w.norm(dim=-1, keepdim=True) * math.sqrt(2.0))
        act = torch.randint(0, len(self.activations), (self.k, p), generator=g)
        return a, w, act

    def _layer(
        self, X: torch.Tensor, a: torch.Tensor, w: torch.Tensor, act: torch.Tensor
    ) -> torch.Tensor:
        Z = self.c * torch.einsum("nd,rid->nri", X, w)
        out = torch.empty_like(Z)
        for j, name in enumerate(self.activations):
            mask = act == j
            out[:, mask] = ACTIVATIONS[name](Z[:, mask])
        return (out * a).sum(dim=-1)

    def _check_input(self, X, dim: int, method: str) -> torch.Tensor:
        X = torch.as_tensor(X, dtype=torch.float64)
        if X.dim() != 2 or X.shape[1] != dim:
            raise ValueError(
                f"SmoothConcept.{method}: input must have shape (n, {dim}), got {tuple(X.shape)}"
            )
        return X

    def F(self, X: torch.Tensor) -> torch.Tensor:
        """The normalised first level F(X): (n, d) -> (n, k), float64."""
        X = self._check_input(X, self.d, "F")
        return self.F_scale * self._layer(X, self.a_F, self.w_F, self.act_F)

    def G(self, h: torch.Tensor) -> torch.Tensor:
        """The scaled second level G(h): (n, k) -> (n, k), float64."""
        h = self._check_input(h, self.k, "G")
        return self.G_scale * self._layer(h, self.a_G, self.v_G, self.act_G)

    def sample_x(self, n: int, generator: torch.Generator) -> torch.Tensor:
        return sphere(n, self.d, generator)

    def components(self, X: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        F = self.F(X)
        return F, self.G(F)

    def params(self) -> dict:
        return {
            "d": self.d,
            "k": self.k,
            "p_F": self.p_F,
            "p_G": self.p_G,
            "activations": list(self.activations),
            "c": self.c,
            "alpha": self.alpha,
            "beta": self.beta,
            "noise": self.noise,
            "seed": self.seed,
        }


def _check_activations(activations, *, where: str) -> tuple[str, ...]:
    known = sorted(ACTIVATIONS)
    if isinstance(activations, str) or not isinstance(activations, (list, tuple)):
        raise ValueError(
            f"{where}: activations must be a non-empty list or tuple of names from {known}, "
            f"got {activations!r}"
        )
    if len(activations) == 0:
        raise ValueError(f"{where}: activations must be non-empty (names from {known}), got []")
    unknown = [a for a in activations if not isinstance(a, str) or a not in ACTIVATIONS]
    if unknown:
        raise ValueError(
            f"{where}: activations must be names from {known}, got unknown {unknown!r}"
        )
    return tuple(activations)


def _scale(values: torch.Tensor, target: float, *, where: str, what: str) -> float:
    """The factor s with mean(||s * values||^2) = target, rejecting degenerate values."""
    m = float(values.square().sum(dim=1).mean())
    if not math.isfinite(m) or m <= 0.0:
        raise ValueError(
            f"{where}: E||{what}||^2 is {m!r} for these parameters (overflow or a zero map); "
            "expected a finite positive value: reduce c or change the activations"
        )
    return math.sqrt(target / m)
