"""Analytic infinite-width NNGP / NTK against Monte Carlo over wide random ReLU networks.

The networks are written here in plain torch with the library's conventions: W ~ N(0, 1/d),
U ~ N(0, 1/m), readout A ~ N(0, 1/m), no biases (they vanish in the limit). The empirical NTK
comes from torch.autograd per-sample gradients, each weight tensor's inner product scaled by its
init variance (1/d for W, 1/m for U and A): the NTK parameterisation of the analytic formulas.

Tolerances come from sampling error, not from trial and error: over R independent inits the
mean has standard error sd / sqrt(R) (sd estimated from the same inits), and we allow 4 of them
plus the finite-width bias, which is O(1/m); with 16384 inits at m = 64 its coefficient was
measured below 0.7 (relative to max |K|) for the 2layer, 3layer and 3resnet kernels, so 2 / m is
a safe bound. The check has power: plausible slips in the 3resnet formulas (dropping the cross
terms of the NNGP, m2 computed from Sigma_1, the "1 +" of the NTK) exceed this tolerance 4-15x.
"""

from __future__ import annotations

import math

import pytest
import torch
from helpers import randn

from fastkernels.kernels import formulas as F

D_IN = 10
# Per-init noise ~ 1/sqrt(m) and cost ~ m^2, so at a given precision many inits of a moderate
# width are cheaper than a few very wide ones; the O(1/m) bias stays well under the noise.
WIDTH = 256
INITS = 384
CHUNK = 32  # inits computed together as a batch of independent networks
OUTPUTS = 256  # readout rows for the NNGP estimate (see _mc_kernels)


def sphere_points(d=D_IN, seed=0):
    """Five points on the sphere of radius sqrt(d), with a close pair and a nearly opposite pair."""
    x = randn(5, d, seed=seed)
    x[3] = x[0] + 0.3 * randn(d, seed=seed + 1)
    x[4] = -x[1] + 0.5 * randn(d, seed=seed + 2)
    return x / x.norm(dim=1, keepdim=True) * math.sqrt(d)


# -- the networks ----------------------------------------------------------------------------------


def init_nets(arch, depth, batch, generator, *, d=D_IN, m=WIDTH, k=OUTPUTS):
    """``batch`` independent networks: W (B, m, d), list of U (B, m, m), A (B, k, m); float32."""
    W = torch.randn(batch, m, d, generator=generator) / math.sqrt(d)
    n_u = 1 if arch == "3resnet" else F.resolve_arch(arch, depth)[1] - 1
    Us = [torch.randn(batch, m, m, generator=generator) / math.sqrt(m) for _ in range(n_u)]
    A = torch.randn(batch, k, m, generator=generator) / math.sqrt(m)
    return W, Us, A


def forward(arch, W, Us, A, x):
    """Outputs (B, n, k) of the batched networks on inputs x (n, d)."""
    h = torch.relu(x @ W.mT)  # h1 = relu(W x)
    if arch == "3resnet":
        return (h + torch.relu(h @ Us[0].mT)) @ A.mT  # A (h1 + relu(U h1))
    for U in Us:
        h = torch.relu(h @ U.mT)  # h_{l+1} = relu(U_l h_l)
    return h @ A.mT


def empirical_ntk(arch, W, Us, a, x, d, m):
    """Per-init empirical NTK (B, n, n) of the scalar output a . h, hidden and readout parts."""
    W = W.detach().requires_grad_()
    Us = [U.detach().requires_grad_() for U in Us]
    a = a.detach().requires_grad_()
    out = forward(arch, W, Us, a, x)[..., 0]  # (B, n)
    params = [W, *Us, a]
    # The inits are independent networks, so d(sum_b out[b, i]) / d(params[b]) is the gradient of
    # out[b, i] alone: one backward pass per input gives the per-sample gradients of every init.
    grads = [torch.autograd.grad(out[:, i].sum(), params, retain_graph=True) for i in range(len(x))]
    scales = [1 / d] + [1 / m] * len(Us) + [1 / m]
    terms = []
    for t, scale in enumerate(scales):
        G = torch.stack([g[t].flatten(1) for g in grads], dim=1)  # (B, n, P_t)
        terms.append(scale * (G @ G.mT))
    hidden = sum(terms[:-1])
    return hidden, terms[-1]


def _mc_kernels(arch, depth, seed):
    """Per-init samples (R, n, n) of the NNGP, hidden NTK and readout NTK term."""
    x = sphere_points()
    xf = x.float()
    g = torch.Generator().manual_seed(seed)
    nngp, hidden, readout = [], [], []
    for _ in range(INITS // CHUNK):
        W, Us, A = init_nets(arch, depth, CHUNK, g)
        out = forward(arch, W, Us, A, xf)  # (B, n, k)
        # The k readout rows are k scalar-output networks sharing the hidden layers; averaging
        # out(x) out(x') over them within an init removes most of the readout's sampling noise,
        # and the inits (not the rows) are the independent samples for the error bar.
        nngp.append(out @ out.mT / out.shape[-1])
        h, r = empirical_ntk(arch, W, Us, A[:, :1], xf, D_IN, WIDTH)
        hidden.append(h)
        readout.append(r)
    return x, [torch.cat(s).double() for s in (nngp, hidden, readout)]


def assert_mc_close(samples, exact, what):
    """|mean - exact| <= 4 standard errors + finite-width bias bound, entrywise."""
    mean, sd = samples.mean(0), samples.std(0)
    tol = 4 * sd / math.sqrt(samples.shape[0]) + 2.0 / WIDTH * exact.abs().max()
    err = (mean - exact).abs()
    assert torch.all(err <= tol), (
        f"{what}: max |MC - analytic| / tol = {(err / tol).max():.2f}\n"
        f"MC mean:\n{mean}\nanalytic:\n{exact}\nstd err:\n{sd / math.sqrt(samples.shape[0])}"
    )


NETS = [("2layer", None), ("3layer", None), ("3resnet", None), ("mlp", 3)]


@pytest.mark.parametrize("arch,depth", NETS, ids=[a if d is None else f"{a}{d}" for a, d in NETS])
def test_nngp_and_ntk_match_wide_networks(arch, depth):
    x, (nngp, hidden, readout) = _mc_kernels(arch, depth, seed=1)
    assert_mc_close(nngp, F.relu_nngp(x, x, arch, depth), f"{arch} NNGP")
    assert_mc_close(hidden, F.relu_ntk(x, x, arch, depth, "hidden"), f"{arch} NTK hidden")
    assert_mc_close(hidden + readout, F.relu_ntk(x, x, arch, depth, "all"), f"{arch} NTK all")


# -- the Gaussian moments behind the recursions ---------------------------------------------------


@pytest.mark.parametrize("s11,s22,rho", [(1.0, 1.0, 0.3), (2.0, 0.5, -0.7), (0.3, 3.0, 0.95)])
def test_relu_expectations_match_monte_carlo(s11, s22, rho):
    samples = 1_000_000
    g1, g2 = randn(2, samples, seed=12)
    u = math.sqrt(s11) * g1
    v = math.sqrt(s22) * (rho * g1 + math.sqrt(1 - rho**2) * g2)
    s12 = rho * math.sqrt(s11 * s22)
    cov = (torch.tensor([s], dtype=torch.float64) for s in (s12, s11, s22))
    lam, dlam = F.relu_expectations(*cov)
    for exact, vals in ((lam, torch.relu(u) * torch.relu(v)), (dlam, ((u > 0) & (v > 0)).double())):
        se = vals.std() / math.sqrt(samples)
        assert abs(vals.mean() - exact.item()) <= 4 * se


def test_relu_mean():
    # m1 = E relu(z), z ~ N(0, s), enters the 3resnet NNGP's cross terms.
    z = 1.7 * randn(1_000_000, seed=13)
    se = torch.relu(z).std() / 1000
    assert abs(torch.relu(z).mean() - math.sqrt(1.7**2 / (2 * math.pi))) <= 4 * se


# -- exact identities ------------------------------------------------------------------------------


def test_two_layer_kernels_are_arccos_kernels():
    # Lambda is half the order-1 arc-cosine kernel, Lambda' half the order-0 one.
    x1, x2 = randn(9, 6, seed=1), randn(7, 6, seed=2)
    d = x1.shape[1]
    torch.testing.assert_close(F.relu_nngp(x1, x2, "2layer"), F.arccos(x1, x2, 1) / (2 * d))
    torch.testing.assert_close(
        F.relu_ntk(x1, x2, "2layer"), (x1 @ x2.T / d) * F.arccos(x1, x2, 0) / 2
    )


def test_named_architectures_are_mlps():
    x1, x2 = randn(8, 5, seed=3), randn(6, 5, seed=4)
    for name, depth in (("2layer", 1), ("3layer", 2)):
        for given in (None, depth):
            assert torch.equal(F.relu_nngp(x1, x2, name, given), F.relu_nngp(x1, x2, "mlp", depth))
            assert torch.equal(F.relu_ntk(x1, x2, name, given), F.relu_ntk(x1, x2, "mlp", depth))


@pytest.mark.parametrize("arch,depth", [("2layer", None), ("3resnet", None), ("mlp", 4)])
def test_trainable_all_adds_the_nngp(arch, depth):
    x1, x2 = randn(8, 5, seed=3), randn(6, 5, seed=4)
    torch.testing.assert_close(
        F.relu_ntk(x1, x2, arch, depth, "all"),
        F.relu_ntk(x1, x2, arch, depth, "hidden") + F.relu_nngp(x1, x2, arch, depth),
    )


def test_three_layer_recursion_by_hand():
    x1, x2 = randn(4, 3, seed=5), randn(5, 3, seed=6)
    d = 3
    s1 = x1 @ x2.T / d
    n1, n2 = (x1 * x1).sum(1, keepdim=True) / d, (x2 * x2).sum(1, keepdim=True).T / d
    lam1, dlam1 = F.relu_expectations(s1, n1, n2)
    lam2, dlam2 = F.relu_expectations(lam1, n1 / 2, n2 / 2)
    torch.testing.assert_close(F.relu_nngp(x1, x2, "3layer"), lam2)
    # Theta_2 = Sigma_2 + Sigma_1 Lambda'(Sigma_1); NTK_hidden = Theta_2 Lambda'(Sigma_2).
    torch.testing.assert_close(F.relu_ntk(x1, x2, "3layer"), (lam1 + s1 * dlam1) * dlam2)


def test_diagonal_halves_per_layer():
    # Sigma_{l+1}(x, x) = Sigma_l(x, x) / 2, so the MLP NNGP diagonal is ||x||^2 / (d 2^L).
    x = randn(7, 4, seed=7)
    for depth in (1, 2, 5):
        torch.testing.assert_close(
            F.relu_nngp(x, x, "mlp", depth).diagonal(),
            (x * x).sum(1) / 4 / 2**depth,
            rtol=1e-14,
            atol=0,
        )


@pytest.mark.parametrize("kind", ["nngp", "ntk"])
@pytest.mark.parametrize(
    "arch,depth", [("2layer", None), ("3layer", None), ("3resnet", None), ("mlp", 5)]
)
def test_analytic_grams_are_psd(kind, arch, depth):
    x = randn(60, 7, seed=8)
    params = {"arch": arch, "depth": depth}
    if kind == "ntk":
        params["trainable"] = "hidden"
    eig = torch.linalg.eigvalsh(F.FORMULAS[kind](x, x, **params))
    assert eig.min() >= -1e-8 * eig.max()
