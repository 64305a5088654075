"""Kernels that compose with PyTorch: sums, products and scalings; tensor hyperparameters with
gradients (a bandwidth learned by gradient); kernel objects under torch.compile(fullgraph=True)."""

import math

import pytest
import torch
from helpers import randn, rel_err

from fastkernels.kernels import RBF, Laplace, Linear, Matern, Polynomial, Product, Scaled, Sum
from fastkernels.ops import formulas as F
from fastkernels.solvers import KernelOperator

X1, X2 = randn(37, 4, seed=1), randn(23, 4, seed=2)

COMBOS = [
    ("sum", lambda: RBF(0.5) + Linear(), lambda a, b: F.rbf(a, b, 0.5) + a @ b.T),
    (
        "scaled-sum",
        lambda: 2.5 * Laplace(0.3) + Polynomial(2, 0.2, 1.0) * 0.5,
        lambda a, b: 2.5 * F.laplace(a, b, 0.3) + 0.5 * F.polynomial(a, b, 2, 0.2, 1.0),
    ),
    (
        "product",
        lambda: RBF(0.5) * Matern(1.5, 0.7),
        lambda a, b: F.rbf(a, b, 0.5) * F.matern(a, b, 1.5, 0.7),
    ),
]
IDS = [c[0] for c in COMBOS]


@pytest.mark.parametrize("_,make,ref", COMBOS, ids=IDS)
def test_combinations_match_their_formulas(_, make, ref):
    k = make()
    assert rel_err(k(X1, X2), ref(X1, X2)) < 1e-13
    assert rel_err(k(X1), ref(X1, X1)) < 1e-13
    assert rel_err(k.diag(X1), ref(X1, X1).diagonal()) < 1e-13


@pytest.mark.parametrize("_,make,ref", COMBOS, ids=IDS)
@pytest.mark.parametrize("block_size", [None, 1, 10])
def test_combination_products_equal_gram_times_v(_, make, ref, block_size):
    k, v = make(), randn(37, 3, seed=3)
    # Self-products in row blocks keep their self-pairs (exact diagonal) in every part.
    assert rel_err(k.mv(X1, X1, v, block_size=block_size), ref(X1, X1) @ v) < 1e-13
    assert rel_err(k.mv(X2, X1, v[:, 0], block_size=block_size), ref(X2, X1) @ v[:, 0]) < 1e-13


def test_combinations_are_kernels_the_solvers_take():
    k = RBF(0.3) + 0.1 * Linear()
    op = KernelOperator(k, X1)
    v = randn(37, 2, seed=4)
    assert rel_err(op.matvec(v), k(X1) @ v) < 1e-13
    assert rel_err(op.diag(), k.diag(X1)) < 1e-13
    assert isinstance(k, Sum) and isinstance(k.k2, Scaled)
    assert isinstance(RBF(1.0) * RBF(2.0), Product)
    assert repr(k) == "(RBF(gamma=0.3) + 0.1 * Linear())"


@pytest.mark.parametrize(
    "make,exc,match",
    [
        (lambda: RBF(1.0) + 1.0, TypeError, "unsupported operand"),
        (lambda: 0.0 * RBF(1.0), ValueError, "Scaled: c must be a finite number > 0, got 0.0"),
        (lambda: -1 * Linear(), ValueError, "Scaled: c must be a finite number > 0"),
        (lambda: math.inf * Linear(), ValueError, "Scaled: c must be a finite number > 0"),
        (lambda: Sum(RBF(1.0), "rbf"), TypeError, "Sum: k2 must be a fastkernels Kernel, got str"),
        (lambda: RBF(torch.ones(2)), ValueError, "RBF: gamma as a tensor must be a 0-d"),
        (lambda: RBF(torch.tensor(-1.0)), ValueError, "RBF: gamma must be a finite number > 0"),
        (
            lambda: (RBF(1.0) * Linear()).mv(X1, X1, X1[:, 0], backend="keops"),
            ValueError,
            "Product.mv: backend='keops' does not compute products of kernels",
        ),
        (
            lambda: (RBF(1.0) * Linear()).mv(X1, X1, X1[:3, 0]),
            ValueError,
            r"Product.mv: v must have 37 rows",
        ),
    ],
)
def test_bad_combinations_are_rejected(make, exc, match):
    with pytest.raises(exc, match=match):
        make()


# -- tensor hyperparameters ----------------------------------------------------------------------


@pytest.mark.parametrize("cls", [RBF, Laplace])
def test_tensor_bandwidth_equals_the_float_one_and_has_gradients(cls):
    gamma = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    v = randn(23, 2, seed=5)
    assert rel_err(cls(gamma)(X1, X2), cls(0.4)(X1, X2)) < 1e-14
    assert rel_err(cls(gamma).mv(X1, X2, v, block_size=5), cls(0.4).mv(X1, X2, v)) < 1e-13
    assert torch.autograd.gradcheck(lambda g: cls(g)(X1, X2), (gamma,))
    assert torch.autograd.gradcheck(lambda g: cls(g).mv(X1, X2, v, block_size=5), (gamma,))
    c = torch.tensor(1.7, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda g, c: (c * cls(g) + Linear())(X1, X2), (gamma, c))


def test_a_bandwidth_learned_by_gradient_reaches_the_grid_optimum():
    # Kernel ridge on a train split; the validation loss as a function of log(gamma), minimised
    # by gradient from a poor start, compared with a fine grid of the same validation loss.
    g = torch.Generator().manual_seed(0)
    x = torch.randn(240, 3, generator=g, dtype=torch.float64)
    y = torch.sin(2 * x[:, 0]) + x[:, 1] * x[:, 2]
    xt, yt, xv, yv = x[:160], y[:160], x[160:], y[160:]

    def val_loss(log_gamma):
        k = RBF(log_gamma.exp())
        alpha = torch.linalg.solve(k(xt) + 1e-2 * torch.eye(160, dtype=x.dtype), yt)
        return ((k(xv, xt) @ alpha - yv) ** 2).mean()

    log_gamma = torch.tensor(math.log(20.0), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.Adam([log_gamma], lr=0.1)
    start = val_loss(log_gamma).item()
    for _ in range(150):
        opt.zero_grad()
        loss = val_loss(log_gamma)
        loss.backward()
        opt.step()
    grid = torch.linspace(math.log(0.01), math.log(20.0), 400, dtype=torch.float64)
    losses = torch.stack([val_loss(t) for t in grid])
    best = grid[losses.argmin()]
    assert val_loss(log_gamma).item() < 0.5 * start
    assert val_loss(log_gamma).item() <= losses.min().item() * 1.01
    assert abs(log_gamma.item() - best.item()) < math.log(1.5)


# -- torch.compile -------------------------------------------------------------------------------


def test_kernel_objects_and_mv_compile_with_fullgraph():
    torch._dynamo.reset()
    k, s = RBF(0.5), RBF(0.5) + 2.0 * Linear()
    x1, x2, v = X1.float(), X2.float(), randn(23, 2, seed=6).float()

    def f(a, b, w):
        return k(a, b) @ w + k.mv(a, b, w) + s.mv(a, b, w)

    # aot_eager: Dynamo's graph capture (which fullgraph makes strict) and the ops' fake
    # implementations, without the minutes of an inductor build.
    compiled = torch.compile(f, fullgraph=True, backend="aot_eager")
    a, b, w = x1.double(), x2.double(), v.double()
    ref = 3 * F.rbf(a, b, 0.5) @ w + 2 * (a @ b.T) @ w
    assert rel_err(compiled(x1, x2, v), ref) < 1e-5
