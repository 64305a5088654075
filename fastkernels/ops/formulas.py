"""Kernel formulas as readable torch reference code (the bodies of the ``gram`` custom ops).

Every kernel here is an elementwise function of three quantities: the inner products
``s = x1 @ x2.T`` (one GEMM), the squared row norms ``n1 = ||x1_i||^2`` and the squared column
norms ``n2 = ||x2_j||^2``. Each public kernel function therefore has the same two stages

    1. prologue  :func:`gram_terms`           -> s (N, M), n1 (N, 1), n2 (1, M), same mask
    2. epilogue  ``_<kernel>_epilogue(...)``  -> the (N, M) Gram, elementwise

so that a tiled implementation (C++, Triton) can compute one GEMM tile and apply the epilogue in
registers. The same epilogues evaluated on (n, n, n) give the diagonal k(x_i, x_i) without forming
the Gram (:func:`kernel_diag`).

All functions work on any device, in float32 or float64, and do no input validation beyond
dispatching on their discrete parameters: checks live at the boundary (:mod:`.base`).

Conventions
-----------
- ``x1`` is (N, D), ``x2`` is (M, D), same floating dtype and device; the result is (N, M) in
  that dtype.
- Squared distances come from ``n1 + n2 - 2 s``, clamped at 0 (cancellation can make it slightly
  negative). Entries that pair a point with itself (``x1 is x2`` on the diagonal, or the shifted
  diagonal given by ``diag_offset``) get a distance of exactly 0 and a cosine of exactly 1, so
  that e.g. ``rbf(x, x)`` has an exact unit diagonal.
- The Laplace kernel (Matern nu = 1/2) is not smooth in the squared distance at 0: the rounding
  error of ``n1 + n2 - 2 s`` (a few ulp of ``n1 + n2``) becomes an error of its square root in
  the kernel. Its near-duplicate pairs get their squared distance recomputed from differences
  (:func:`_exact_near_pairs`); every other entry keeps the expansion.
- The expansion loses every digit of a small distance between points far from the origin
  (float32 points at 1000 with spread 0.1), so the translation-invariant kernels
  (:data:`TRANSLATION_INVARIANT`) first shift both inputs by one common point, the mean of the
  rows of ``x2`` (:func:`center`): the kernel is unchanged and the norms become those of the
  data's spread. Kernels of inner products and norms (polynomial, arc-cosine, NNGP / NTK) are
  not invariant and are never shifted.
- Cosines ``s / sqrt(n1 n2)`` are clamped to [-1, 1] before ``arccos``. If either norm is 0 the
  cosine is defined as 0 (this takes precedence over the self-pair rule); the kernel value then
  follows from the norms and is never NaN.

The analytic NNGP / NTK follow the NTK parameterisation of the ReLU networks described in
:func:`relu_nngp` (biases vanish in the infinite-width limit and are ignored).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

__all__ = [
    "gram_terms",
    "center",
    "sq_dist",
    "rbf",
    "laplace",
    "matern",
    "polynomial",
    "linear",
    "arccos",
    "relu_nngp",
    "relu_ntk",
    "relu_expectations",
    "resolve_arch",
    "kernel_diag",
    "FORMULAS",
    "MATERN_NUS",
    "ARCHS",
    "TRAINABLE",
    "TRANSLATION_INVARIANT",
]

MATERN_NUS = (0.5, 1.5, 2.5)
ARCHS = ("2layer", "3layer", "3resnet", "mlp")
TRAINABLE = ("hidden", "all")
# Kernels whose value depends on x1_i - x2_j only: they may be evaluated on shifted inputs.
TRANSLATION_INVARIANT = frozenset({"rbf", "laplace", "matern"})

_SQRT3 = math.sqrt(3.0)
_SQRT5 = math.sqrt(5.0)


# ---------------------------------------------------------------------------------------------
# Prologue: one GEMM and the norms
# ---------------------------------------------------------------------------------------------


def gram_terms(
    x1: Tensor, x2: Tensor, *, diag_offset: int | None = None
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """The shared prologue of every kernel: inner products, squared norms, self-pair mask.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device as ``x1``
    diag_offset : int, optional
        Row ``i`` of ``x1`` is the same point as row ``i + diag_offset`` of ``x2`` (used when
        ``x1`` is a row block of ``x2``, e.g. by :meth:`Kernel.mv`). Default: 0 if ``x1 is x2``,
        otherwise no row of ``x1`` is assumed to appear in ``x2``.

    Returns
    -------
    s : Tensor, shape (N, M)
        ``x1 @ x2.T``.
    n1 : Tensor, shape (N, 1)
        Squared norms of the rows of ``x1``.
    n2 : Tensor, shape (1, M)
        Squared norms of the rows of ``x2``.
    same : Tensor of bool, shape (N, M), or None
        True where the entry pairs a point with itself; None when there is no such entry.
    """
    if diag_offset is None and x1 is x2:
        diag_offset = 0
    s = x1 @ x2.mT
    n1 = (x1 * x1).sum(dim=1, keepdim=True)
    # Reuse the row norms for a self-Gram so that both sides of a self-pair see the same bits.
    n2 = n1.mT if x1 is x2 else (x2 * x2).sum(dim=1, keepdim=True).mT
    same = None
    if diag_offset is not None:
        rows = torch.arange(x1.shape[0], device=x1.device)[:, None] + diag_offset
        cols = torch.arange(x2.shape[0], device=x1.device)[None, :]
        same = rows == cols
    return s, n1, n2, same


def center(x1: Tensor, x2: Tensor) -> tuple[Tensor, Tensor]:
    """Both point sets shifted by one common point ``c``, the mean of the rows of ``x2``.

    Distances are unchanged, but ``||x||^2 + ||y||^2 - 2 <x, y>`` of the shifted points no longer
    cancels: far from the origin the norms dwarf the distance, and their rounding error (a few
    ulp of ``||x||^2``) becomes the error of the distance. ``c`` is accumulated in float64 and
    rounded to the inputs' dtype; for coordinates within a factor 2 of those of ``c`` the
    subtraction is exact (Sterbenz), so the shifted points are exactly the same points, moved.
    Only for the kernels of :data:`TRANSLATION_INVARIANT`.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device

    Returns
    -------
    x1 - c, x2 - c : Tensor, shapes (N, D) and (M, D), dtype of the inputs
        The same tensor object twice when ``x1 is x2`` (self-pairs and shared norms rely on
        that identity).
    """
    # Any c leaves the kernel unchanged, so c is a constant for autograd: detached, the gradient
    # of a formula that is differentiated directly needs no path through the mean.
    c = x2.detach().mean(dim=0, keepdim=True, dtype=torch.float64).to(x2.dtype)
    y1 = x1 - c
    return (y1, y1) if x1 is x2 else (y1, x2 - c)


def _centred_terms(x1: Tensor, x2: Tensor, diag_offset: int | None, centre: bool):
    # The prologue of the translation-invariant kernels (their self-pairs are resolved by
    # gram_terms from the identity that center keeps).
    if centre:
        x1, x2 = center(x1, x2)
    return gram_terms(x1, x2, diag_offset=diag_offset)


def _sq_dist(s: Tensor, n1: Tensor, n2: Tensor, same: Tensor | None) -> Tensor:
    # Cancellation in n1 + n2 - 2 s can give tiny negative values: clamp, and make self-pairs
    # exactly 0 so that stationary kernels have an exact k(0) on the diagonal.
    d2 = (n1 + n2 - 2.0 * s).clamp_min(0.0)
    if same is not None:
        d2 = torch.where(same, torch.zeros_like(d2), d2)
    return d2


def _cosine(s: Tensor, n1: Tensor, n2: Tensor, same: Tensor | None) -> Tensor:
    denom = torch.sqrt(n1) * torch.sqrt(n2)
    nonzero = denom > 0
    # Divide by a safe denominator so that neither the value nor its gradient becomes NaN at
    # zero-norm rows; their cosine is then defined as 0.
    c = (s / torch.where(nonzero, denom, torch.ones_like(denom))).clamp(-1.0, 1.0)
    if same is not None:
        # arccos has infinite slope at 1: a rounding error of 1e-16 in the cosine of a point with
        # itself would give an angle of 1e-8 (3e-4 in float32). Self-pairs are exactly aligned.
        c = torch.where(same, torch.ones_like(c), c)
    return torch.where(nonzero, c, torch.zeros_like(c))


def sq_dist(
    x1: Tensor, x2: Tensor, *, diag_offset: int | None = None, centre: bool = True
) -> Tensor:
    """Squared Euclidean distances from ``||x||^2 + ||y||^2 - 2 <x, y>`` of shifted inputs.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    diag_offset : int, optional
        See :func:`gram_terms`.
    centre : bool
        Shift both inputs by a common point first (:func:`center`); False when the caller has
        already shifted them.

    Returns
    -------
    Tensor, shape (N, M)
        Non-negative; exactly 0 on self-pairs.
    """
    return _sq_dist(*_centred_terms(x1, x2, diag_offset, centre))


# ---------------------------------------------------------------------------------------------
# Epilogues: elementwise in (s, n1, n2, same); shapes broadcast, so (N,) inputs give a diagonal
# ---------------------------------------------------------------------------------------------


def _rbf_epilogue(s, n1, n2, same, *, gamma):
    return torch.exp(-gamma * _sq_dist(s, n1, n2, same))


def _matern_epilogue(s, n1, n2, same, *, nu, gamma):
    return _matern_of_sq_dist(_sq_dist(s, n1, n2, same), nu=nu, gamma=gamma)


def _matern_of_sq_dist(d2, *, nu, gamma):
    r = gamma * torch.sqrt(d2)
    if nu == 0.5:
        return torch.exp(-r)
    if nu == 1.5:
        return (1.0 + _SQRT3 * r) * torch.exp(-_SQRT3 * r)
    if nu == 2.5:
        return (1.0 + _SQRT5 * r + (5.0 / 3.0) * r * r) * torch.exp(-_SQRT5 * r)
    raise ValueError(f"matern: nu must be one of {MATERN_NUS}, got {nu!r}")


def _laplace_epilogue(s, n1, n2, same, *, gamma):
    return _matern_epilogue(s, n1, n2, same, nu=0.5, gamma=gamma)


# tau = _NEAR_FACTOR * eps * (n1 + n2): see _exact_near_pairs and csrc/kernel_common.h.
_NEAR_FACTOR = 65536.0
# Flagged pairs whose differences are formed at once (elements of the (pairs, D) temporary).
_NEAR_CHUNK = 1 << 22


def _exact_near_pairs(x1, x2, d2, n1, n2, same):
    """``d2`` with its near-duplicate entries recomputed as ``sum_k (x1_ik - x2_jk)^2``.

    ``d2 = n1 + n2 - 2 s`` has an absolute rounding error of a few ``eps (n1 + n2)`` even on
    centred inputs; ``sqrt`` has an infinite slope at 0, so the Laplace kernel of two copies of
    one point (in x1 and in x2, not a self-pair) would be off by ``gamma sqrt(eps (n1 + n2))``
    (1.7e-4 in float32 for points of spread 0.1 in 5 dimensions). Entries with
    ``d2 < tau = _NEAR_FACTOR eps (n1 + n2)`` are recomputed from the (centred) points: the
    difference of two nearby floats is exact. Measured, the error of ``d2`` stays below
    ``5 eps (n1 + n2)``; an entry left alone has a computed ``d2 >= tau``, so its kernel error is
    at most ``gamma 5 eps (n1 + n2) / sqrt(tau) = 5 sqrt(eps / _NEAR_FACTOR) gamma
    sqrt(n1 + n2)`` (``6.7e-6 gamma sqrt(n1 + n2)`` in float32). Flagged entries are few (in
    float32 ``tau = (n1 + n2) / 128``: near-duplicates, and the closest pairs of
    low-dimensional data), so only their differences are formed, from the indices of the
    flagged entries (in chunks), never an (N, M, D) tensor.

    The recomputed entries are constants for autograd: their gradient is 0, the subgradient the
    ops' backward uses at coincident points (``fastkernels.ops._common``). Through the
    expansion it would be rounding noise divided by ``sqrt(d2)``, or NaN at ``d2 = 0``.
    """
    if d2.device.type == "meta":  # no data: nothing to flag
        return d2
    tau = (_NEAR_FACTOR * torch.finfo(d2.dtype).eps) * (n1 + n2)
    flag = d2 < tau
    if same is not None:
        flag = flag & ~same  # already exactly 0
    i, j = torch.nonzero(flag, as_tuple=True)
    if i.numel() == 0:
        return d2
    exact = torch.empty(i.shape, dtype=d2.dtype, device=d2.device)
    step = max(1, _NEAR_CHUNK // x1.shape[1])
    with torch.no_grad():
        for p0 in range(0, i.numel(), step):
            ii, jj = i[p0 : p0 + step], j[p0 : p0 + step]
            exact[p0 : p0 + step] = (x1[ii] - x2[jj]).square().sum(dim=1)
    return d2.index_put((i, j), exact)


def _distance_kernel(x1, x2, diag_offset, centre, *, nu, gamma):
    # The Matern family (nu = 1/2 is the Laplace kernel) on the centred inputs, which the
    # near-duplicate fix of the Laplace kernel reads.
    if centre:
        x1, x2 = center(x1, x2)
    s, n1, n2, same = gram_terms(x1, x2, diag_offset=diag_offset)
    d2 = _sq_dist(s, n1, n2, same)
    if nu == 0.5:
        d2 = _exact_near_pairs(x1, x2, d2, n1, n2, same)
    return _matern_of_sq_dist(d2, nu=nu, gamma=gamma)


def _polynomial_epilogue(s, n1, n2, same, *, degree, gamma, coef0):
    return (gamma * s + coef0) ** degree


def _linear_epilogue(s, n1, n2, same):
    return s


def _arccos_epilogue(s, n1, n2, same, *, order):
    c = _cosine(s, n1, n2, same)
    theta = torch.arccos(c)
    if order == 0:
        return (math.pi - theta) / math.pi
    if order == 1:
        # sin(theta) from the cosine: sqrt((1 - c)(1 + c)) keeps precision near c = -1.
        sin = torch.sqrt(((1.0 - c) * (1.0 + c)).clamp_min(0.0))
        return torch.sqrt(n1) * torch.sqrt(n2) * (sin + (math.pi - theta) * c) / math.pi
    raise ValueError(f"arccos: order must be 0 or 1, got {order!r}")


def relu_expectations(
    s12: Tensor, s11: Tensor, s22: Tensor, same: Tensor | None = None
) -> tuple[Tensor, Tensor]:
    """ReLU moments of a centred Gaussian pair (u, v) with covariance [[s11, s12], [s12, s22]].

    With ``theta = arccos(s12 / sqrt(s11 s22))``:

    - ``Lambda = E[relu(u) relu(v)]
      = sqrt(s11 s22) / (2 pi) (sin theta + (pi - theta) cos theta)``
    - ``Lambda' = E[relu'(u) relu'(v)] = (pi - theta) / (2 pi)``

    Parameters
    ----------
    s12 : Tensor, shape (N, M) or (N,)
        Covariances.
    s11 : Tensor, shape broadcastable to ``s12`` (e.g. (N, 1))
        Variances of u.
    s22 : Tensor, shape broadcastable to ``s12`` (e.g. (1, M))
        Variances of v.
    same : Tensor of bool, broadcastable to ``s12``, optional
        Entries where u and v are the same variable (cosine exactly 1).

    Returns
    -------
    lam, dlam : Tensor, shape of ``s12`` broadcast, same dtype
        Lambda and Lambda'. Where a variance is 0, Lambda = 0 and Lambda' = 1/4 (cosine 0).
    """
    # Lambda is half the order-1 arc-cosine kernel and Lambda' half the order-0 one.
    lam = 0.5 * _arccos_epilogue(s12, s11, s22, same, order=1)
    dlam = 0.5 * _arccos_epilogue(s12, s11, s22, same, order=0)
    return lam, dlam


def resolve_arch(arch: str, depth: int | None) -> tuple[str, int | None]:
    """Map an architecture name to ``("mlp", L)`` (L hidden layers) or ``("3resnet", None)``.

    ``"2layer"`` is ``mlp`` with depth 1 and ``"3layer"`` is ``mlp`` with depth 2 (``depth`` may
    repeat that value); ``"mlp"`` needs a positive integer ``depth``; ``"3resnet"`` takes
    ``depth=None``.

    Raises
    ------
    ValueError
        Unknown architecture, or a depth that contradicts / is missing for it.
    """
    fixed = {"2layer": 1, "3layer": 2}
    if arch in fixed:
        if depth is not None and depth != fixed[arch]:
            raise ValueError(
                f"arch {arch!r} has depth {fixed[arch]}; got depth={depth!r} "
                "(pass depth=None, or use arch='mlp')"
            )
        return "mlp", fixed[arch]
    if arch == "mlp":
        if isinstance(depth, bool) or not isinstance(depth, int) or depth < 1:
            raise ValueError(
                f"arch 'mlp' needs depth = number of hidden layers, a positive integer; "
                f"got depth={depth!r}"
            )
        return "mlp", depth
    if arch == "3resnet":
        if depth is not None:
            raise ValueError(f"arch '3resnet' has a fixed depth: depth must be None, got {depth!r}")
        return "3resnet", None
    raise ValueError(f"arch must be one of {ARCHS}, got {arch!r}")


def _relu_kernels(s, n1, n2, same, *, arch, depth, ntk, trainable="hidden"):
    """NNGP (``ntk=False``) or NTK of the ReLU nets, from Sigma_1 = (s, n1, n2) = inputs / d."""
    kind, depth = resolve_arch(arch, depth)
    if trainable not in TRAINABLE:
        raise ValueError(f"relu_ntk: trainable must be one of {TRAINABLE}, got {trainable!r}")
    if kind == "mlp":
        sig, d1, d2 = s, n1, n2  # Sigma_l and its two diagonals, starting at l = 1
        tangent = s  # Theta_1 = Sigma_1 (the NTK of z_1; not an angle)
        for _ in range(depth - 1):
            lam, dlam = relu_expectations(sig, d1, d2, same)
            tangent = lam + tangent * dlam  # Theta_{l+1} = Sigma_{l+1} + Theta_l Lambda'(Sigma_l)
            # Lambda at theta = 0 is exactly s / 2: the variances halve at every ReLU layer.
            sig, d1, d2 = lam, 0.5 * d1, 0.5 * d2
        nngp, dlam = relu_expectations(sig, d1, d2, same)  # output covariance Sigma_{L+1}
        if not ntk:
            return nngp
        hidden = tangent * dlam  # the readout multiplies Theta_L by Lambda'(Sigma_L)
    else:
        lam1, dlam1 = relu_expectations(s, n1, n2, same)
        lam2, dlam2 = relu_expectations(lam1, 0.5 * n1, 0.5 * n2, same)  # Sigma_2 = Lambda_1
        # h1_i and h2_i become independent as m -> inf, but are not centred: the cross terms
        # E[h1_i(x) h2_i(x')] are products of the means E relu(z) = sqrt(var / (2 pi)), with
        # var = Sigma_1(x, x) for h1 and Sigma_2(x, x) = Sigma_1(x, x) / 2 for h2.
        m1a, m1b = torch.sqrt(n1 / (2 * math.pi)), torch.sqrt(n2 / (2 * math.pi))
        m2a, m2b = torch.sqrt(n1 / (4 * math.pi)), torch.sqrt(n2 / (4 * math.pi))
        nngp = lam1 + lam2 + m1a * m2b + m2a * m1b
        if not ntk:
            return nngp
        # U's gradient is Lambda_1 * Lambda_2'; W's gradient reaches the output directly through
        # the skip (Lambda_1') and through the second block (Lambda_1' * Lambda_2').
        hidden = lam1 * dlam2 + s * dlam1 * (1.0 + dlam2)
    # With no readout bias, the readout's own contribution is exactly the NNGP.
    return hidden + nngp if trainable == "all" else hidden


def _nngp_epilogue(s, n1, n2, same, *, arch, depth=None):
    return _relu_kernels(s, n1, n2, same, arch=arch, depth=depth, ntk=False)


def _ntk_epilogue(s, n1, n2, same, *, arch, depth=None, trainable="hidden"):
    return _relu_kernels(s, n1, n2, same, arch=arch, depth=depth, ntk=True, trainable=trainable)


# ---------------------------------------------------------------------------------------------
# Public kernels: f(x1, x2, **params) -> (N, M)
# ---------------------------------------------------------------------------------------------


def rbf(
    x1: Tensor,
    x2: Tensor,
    gamma: float,
    *,
    diag_offset: int | None = None,
    centre: bool = True,
) -> Tensor:
    """Gaussian kernel ``exp(-gamma ||x - y||^2)`` (scikit-learn's ``rbf_kernel`` convention).

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    gamma : float
        Inverse squared length scale, > 0.
    diag_offset : int, optional
        Self-pair alignment, see :func:`gram_terms`.
    centre : bool
        Evaluate on inputs shifted by a common point (:func:`center`), which keeps float32
        accurate for data far from the origin; False when the caller has already shifted them.

    Returns
    -------
    Tensor, shape (N, M), dtype of the inputs
        Values in (0, 1]; exactly 1 on self-pairs.
    """
    return _rbf_epilogue(*_centred_terms(x1, x2, diag_offset, centre), gamma=gamma)


def laplace(
    x1: Tensor,
    x2: Tensor,
    gamma: float,
    *,
    diag_offset: int | None = None,
    centre: bool = True,
) -> Tensor:
    """Laplace kernel ``exp(-gamma ||x - y||_2)`` with the Euclidean distance (Matern nu = 1/2).

    Note: scikit-learn's ``laplacian_kernel`` uses the L1 distance instead; this one equals
    ``sklearn.gaussian_process.kernels.Matern(length_scale=1/gamma, nu=0.5)``.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    gamma : float
        Inverse length scale, > 0.
    diag_offset : int, optional
        Self-pair alignment, see :func:`gram_terms`.
    centre : bool
        Evaluate on inputs shifted by a common point (:func:`center`), which keeps float32
        accurate for data far from the origin; False when the caller has already shifted them.

    Returns
    -------
    Tensor, shape (N, M), dtype of the inputs
    """
    return _distance_kernel(x1, x2, diag_offset, centre, nu=0.5, gamma=gamma)


def matern(
    x1: Tensor,
    x2: Tensor,
    nu: float,
    gamma: float,
    *,
    diag_offset: int | None = None,
    centre: bool = True,
) -> Tensor:
    """Matern kernel of smoothness ``nu`` in {0.5, 1.5, 2.5} and inverse length scale ``gamma``.

    With ``r = gamma ||x - y||``:
    nu = 0.5: ``exp(-r)``; nu = 1.5: ``(1 + sqrt3 r) exp(-sqrt3 r)``;
    nu = 2.5: ``(1 + sqrt5 r + 5/3 r^2) exp(-sqrt5 r)``. Equals scikit-learn's
    ``Matern(length_scale=1/gamma, nu=nu)``.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    nu : float
        0.5, 1.5 or 2.5.
    gamma : float
        Inverse length scale, > 0.
    diag_offset : int, optional
        Self-pair alignment, see :func:`gram_terms`.
    centre : bool
        Evaluate on inputs shifted by a common point (:func:`center`), which keeps float32
        accurate for data far from the origin; False when the caller has already shifted them.

    Returns
    -------
    Tensor, shape (N, M), dtype of the inputs
    """
    return _distance_kernel(x1, x2, diag_offset, centre, nu=nu, gamma=gamma)


def polynomial(
    x1: Tensor,
    x2: Tensor,
    degree: int,
    gamma: float,
    coef0: float,
    *,
    diag_offset: int | None = None,
) -> Tensor:
    """Polynomial kernel ``(gamma <x, y> + coef0) ** degree`` (scikit-learn's convention).

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    degree : int
        Positive integer.
    gamma : float
        Scale of the inner product (scikit-learn's default 1/D is resolved by
        :class:`~fastkernels.kernels.Polynomial`, not here).
    coef0 : float
        Additive constant.
    diag_offset : int, optional
        Accepted for a uniform signature; inner-product kernels need no self-pair fix.

    Returns
    -------
    Tensor, shape (N, M), dtype of the inputs
    """
    return _polynomial_epilogue(
        *gram_terms(x1, x2, diag_offset=diag_offset), degree=degree, gamma=gamma, coef0=coef0
    )


def linear(x1: Tensor, x2: Tensor, *, diag_offset: int | None = None) -> Tensor:
    """Linear kernel ``<x, y>``.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    diag_offset : int, optional
        Accepted for a uniform signature; unused.

    Returns
    -------
    Tensor, shape (N, M), dtype of the inputs
    """
    return x1 @ x2.mT


def arccos(x1: Tensor, x2: Tensor, order: int, *, diag_offset: int | None = None) -> Tensor:
    """Arc-cosine kernel of Cho & Saul (2009), order 0 or 1.

    ``k_n(x, y) = (1/pi) ||x||^n ||y||^n J_n(theta)`` with ``theta`` the angle between x and y,
    ``J_0 = pi - theta`` and ``J_1 = sin theta + (pi - theta) cos theta``. Equivalently
    ``k_n(x, y) = 2 E_w[step(w.x) step(w.y) (w.x)^n (w.y)^n]`` for ``w ~ N(0, I)``: the kernel of an
    infinitely wide one-hidden-layer network with step (n = 0) or ReLU (n = 1) units.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    order : int
        0 or 1.
    diag_offset : int, optional
        Self-pair alignment, see :func:`gram_terms`.

    Returns
    -------
    Tensor, shape (N, M), dtype of the inputs
        A zero-norm row has cosine 0 with everything: order 0 gives 1/2 there, order 1 gives 0.
    """
    return _arccos_epilogue(*gram_terms(x1, x2, diag_offset=diag_offset), order=order)


def relu_nngp(
    x1: Tensor, x2: Tensor, arch: str, depth: int | None = None, *, diag_offset: int | None = None
) -> Tensor:
    """Infinite-width NNGP kernel (output covariance at init) of a ReLU network.

    Networks (x in R^d, width m -> inf, ReLU sigma; W ~ N(0, 1/d), every other weight matrix
    U_l and the readout A ~ N(0, 1/m); biases ~ N(0, 1/m) vanish in the limit):

    - ``"mlp"`` with ``depth = L`` hidden layers: ``z_1 = W x``, ``h_l = relu(z_l)``,
      ``z_{l+1} = U_l h_l``, ``out = A h_L``. ``"2layer"`` is L = 1, ``"3layer"`` is L = 2.
    - ``"3resnet"``: ``h1 = relu(W x)``, ``h2 = relu(U h1)``, ``out = A (h1 + h2)``.

    MLP: ``Sigma_1 = <x, x'> / d``, ``Sigma_{l+1} = Lambda(Sigma_l)``, NNGP = ``Sigma_{L+1}``.
    3resnet: ``Lambda_1 + Lambda_2 + m1(x) m2(x') + m2(x) m1(x')`` with
    ``Lambda_1 = Lambda(Sigma_1)``, ``Lambda_2 = Lambda(Lambda_1)``,
    ``m1(x) = sqrt(Sigma_1(x,x) / 2pi)`` and ``m2(x) = sqrt(Sigma_2(x,x) / 2pi)``
    (see :func:`relu_expectations` for Lambda).

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    arch : str
        ``"2layer"``, ``"3layer"``, ``"3resnet"`` or ``"mlp"``.
    depth : int, optional
        Number of hidden layers, required for ``"mlp"`` (see :func:`resolve_arch`).
    diag_offset : int, optional
        Self-pair alignment, see :func:`gram_terms`.

    Returns
    -------
    Tensor, shape (N, M), dtype of the inputs
    """
    d = x1.shape[1]
    s, n1, n2, same = gram_terms(x1, x2, diag_offset=diag_offset)
    return _nngp_epilogue(s / d, n1 / d, n2 / d, same, arch=arch, depth=depth)


def relu_ntk(
    x1: Tensor,
    x2: Tensor,
    arch: str,
    depth: int | None = None,
    trainable: str = "hidden",
    *,
    diag_offset: int | None = None,
) -> Tensor:
    """Infinite-width NTK of a ReLU network at init, in the NTK parameterisation.

    Same networks as :func:`relu_nngp`. Each parameter's gradient inner product is scaled by its
    init variance (1/d for W, 1/m for U_l and A), so the empirical NTK of a finite, standard-
    parameterised network with those scalings converges to this as the width grows.

    MLP: ``Theta_1 = Sigma_1``, ``Theta_{l+1} = Sigma_{l+1} + Theta_l * Lambda'(Sigma_l)``;
    ``NTK_hidden = Theta_L * Lambda'(Sigma_L)`` (weights W, U_1..U_{L-1}).
    3resnet: ``NTK_hidden = Lambda_1 Lambda_2' + Sigma_1 Lambda_1' (1 + Lambda_2')`` (W and U).
    ``trainable="all"`` adds the readout A's term, which is the NNGP.

    Parameters
    ----------
    x1 : Tensor, shape (N, D), float32 or float64
    x2 : Tensor, shape (M, D), same dtype and device
    arch : str
        ``"2layer"``, ``"3layer"``, ``"3resnet"`` or ``"mlp"``.
    depth : int, optional
        Number of hidden layers, required for ``"mlp"``.
    trainable : str
        ``"hidden"`` (default: readout A fixed, the paper's setting) or ``"all"``.
    diag_offset : int, optional
        Self-pair alignment, see :func:`gram_terms`.

    Returns
    -------
    Tensor, shape (N, M), dtype of the inputs
    """
    d = x1.shape[1]
    s, n1, n2, same = gram_terms(x1, x2, diag_offset=diag_offset)
    return _ntk_epilogue(s / d, n1 / d, n2 / d, same, arch=arch, depth=depth, trainable=trainable)


FORMULAS = {
    "rbf": rbf,
    "laplace": laplace,
    "matern": matern,
    "polynomial": polynomial,
    "linear": linear,
    "arccos": arccos,
    "nngp": relu_nngp,
    "ntk": relu_ntk,
}

_EPILOGUES = {
    "rbf": _rbf_epilogue,
    "laplace": _laplace_epilogue,
    "matern": _matern_epilogue,
    "polynomial": _polynomial_epilogue,
    "linear": _linear_epilogue,
    "arccos": _arccos_epilogue,
    "nngp": _nngp_epilogue,
    "ntk": _ntk_epilogue,
}

# Kernels whose inputs enter as Sigma_1 = <x, x'> / d.
_SCALED_BY_DIM = ("nngp", "ntk")


def kernel_diag(name: str, x: Tensor, **params) -> Tensor:
    """The diagonal ``k(x_i, x_i)`` of a registry kernel, without forming the Gram.

    Parameters
    ----------
    name : str
        A key of :data:`FORMULAS` (``"rbf"``, ..., ``"ntk"``).
    x : Tensor, shape (N, D), float32 or float64
    **params
        The kernel's parameters, as for ``FORMULAS[name]``.

    Returns
    -------
    Tensor, shape (N,), dtype of ``x``
        Equal to ``FORMULAS[name](x, x, **params).diagonal()`` up to rounding.
    """
    if name not in _EPILOGUES:
        raise ValueError(
            f"kernel_diag: unknown kernel {name!r}; expected one of {list(_EPILOGUES)}"
        )
    # No shift for the translation-invariant kernels: every entry is a self-pair, whose distance
    # is set to exactly 0, so the cancellation in n + n - 2 n never reaches the result.
    n = (x * x).sum(dim=1)
    if name in _SCALED_BY_DIM:
        n = n / x.shape[1]
    # The epilogues are elementwise: feeding (n, n, n) with every entry a self-pair gives k(x, x).
    same = torch.ones_like(n, dtype=torch.bool)
    return _EPILOGUES[name](n, n, n, same, **params)
