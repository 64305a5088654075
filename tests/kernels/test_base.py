"""Kernel objects, the registry and input validation at the boundary."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from helpers import randn
from sklearn.metrics.pairwise import polynomial_kernel, rbf_kernel

from fastkernels.kernels import (
    KERNELS,
    NNGP,
    NTK,
    RBF,
    ArcCosine,
    Kernel,
    Laplace,
    Linear,
    Matern,
    Polynomial,
    formulas,
    kernel_params,
    make_kernel,
)

# One fully specified instance per family (several for the analytic kernels).
INSTANCES = [
    RBF(gamma=0.4),
    Laplace(gamma=0.9),
    Matern(nu=2.5, gamma=0.6),
    Polynomial(degree=2, coef0=0.5),
    Linear(),
    ArcCosine(order=0),
    ArcCosine(order=1),
    NNGP("3resnet"),
    NNGP("mlp", depth=3),
    NTK("3layer"),
    NTK("3resnet", trainable="all"),
]
IDS = [repr(k) for k in INSTANCES]


# -- registry ----------------------------------------------------------------------------------


def test_registry_names_and_classes():
    assert set(KERNELS) == {
        "rbf", "laplace", "matern", "polynomial", "linear", "arccos", "nngp", "ntk"
    }  # fmt: skip
    for name, cls in KERNELS.items():
        assert issubclass(cls, Kernel) and cls.name == name
        assert name in formulas.FORMULAS


def test_bandwidth_param():
    assert {n for n, c in KERNELS.items() if c.bandwidth_param == "gamma"} == {
        "rbf", "laplace", "matern"
    }  # fmt: skip
    assert all(c.bandwidth_param in ("gamma", None) for c in KERNELS.values())


def test_make_kernel_builds_each_family():
    assert make_kernel("rbf", gamma=0.5) == RBF(0.5)
    assert make_kernel("matern", nu=0.5) == Matern(nu=0.5, gamma=None)
    assert make_kernel("polynomial").params() == {"degree": 3, "gamma": None, "coef0": 1.0}
    assert make_kernel("ntk", arch="mlp", depth=4, trainable="all") == NTK("mlp", 4, "all")
    assert make_kernel("linear") == Linear()
    assert kernel_params("ntk") == ["arch", "depth", "trainable"]


def test_make_kernel_rejects_unknown_name_and_params():
    with pytest.raises(ValueError, match=r"unknown kernel 'gauss'; expected one of \[.*'rbf'"):
        make_kernel("gauss")
    with pytest.raises(ValueError, match=r"kernel 'rbf': unknown parameter\(s\) \['sigma'\]; "
                       r"accepted: \['gamma'\]"):  # fmt: skip
        make_kernel("rbf", sigma=1.0)
    with pytest.raises(ValueError, match="ArcCosine: order must be 0 or 1, got 2"):
        make_kernel("arccos", order=2)


@pytest.mark.parametrize("k", INSTANCES, ids=IDS)
def test_params_roundtrip_repr_and_with_params(k):
    assert type(k)(**k.params()) == k
    assert repr(k).startswith(type(k).__name__ + "(")
    assert eval(repr(k), {type(k).__name__: type(k)}) == k
    assert k.with_params() == k and k.with_params() is not k


def test_with_params_replaces_and_validates():
    assert RBF(None).with_params(gamma=2.0) == RBF(2.0)
    with pytest.raises(ValueError, match=r"RBF: unknown parameter\(s\) \['nu'\]"):
        RBF(1.0).with_params(nu=1.5)
    with pytest.raises(ValueError, match="RBF: gamma must be a finite number > 0"):
        RBF(1.0).with_params(gamma=0.0)


# -- values ------------------------------------------------------------------------------------


def test_call_matches_sklearn_and_formulas():
    x1, x2 = randn(37, 7, seed=1), randn(53, 7, seed=2)
    ref = rbf_kernel(x1.numpy(), x2.numpy(), gamma=0.4)
    torch.testing.assert_close(RBF(0.4)(x1, x2), torch.from_numpy(ref), rtol=1e-10, atol=1e-10)
    # gamma=None means 1/D, resolved at call time as in scikit-learn.
    ref = polynomial_kernel(x1.numpy(), x2.numpy(), degree=2, coef0=0.5)
    got = Polynomial(degree=2, coef0=0.5)(x1, x2)
    torch.testing.assert_close(got, torch.from_numpy(ref), rtol=1e-10, atol=1e-10)
    # The kernel object routes through the ntk op (C++ epilogue on CPU): the formula to rounding.
    torch.testing.assert_close(
        NTK("3resnet")(x1, x2), formulas.relu_ntk(x1, x2, "3resnet"), rtol=1e-12, atol=1e-14
    )


@pytest.mark.parametrize("k", INSTANCES, ids=IDS)
def test_self_gram_and_diag(k):
    x = randn(19, 5, seed=3)
    gram = k(x)
    assert gram.shape == (19, 19) and gram.dtype == torch.float64
    assert torch.equal(gram, k(x, x))
    torch.testing.assert_close(k.diag(x), gram.diagonal(), rtol=1e-14, atol=0)
    assert k.diag(x.float()).dtype == torch.float32


def test_numpy_input_is_accepted():
    x = np.random.default_rng(0).standard_normal((4, 3))
    assert torch.equal(RBF(1.0)(x), RBF(1.0)(torch.from_numpy(x)))


@pytest.mark.parametrize("k", INSTANCES, ids=IDS)
@pytest.mark.parametrize("n,m,block", [(1, 1, None), (37, 53, 8), (300, 41, 64)])
def test_mv_matches_dense_product(k, n, m, block):
    x1, x2 = randn(n, 7, seed=4), randn(m, 7, seed=5)
    v, vt = randn(m, seed=6), randn(m, 3, seed=7)
    dense = k(x1, x2)
    out = k.mv(x1, x2, v, block_size=block)
    assert out.shape == (n,)
    torch.testing.assert_close(out, dense @ v, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(
        k.mv(x1, x2, vt, block_size=block), dense @ vt, rtol=1e-12, atol=1e-12
    )


@pytest.mark.parametrize("k", INSTANCES, ids=IDS)
def test_mv_of_self_keeps_exact_self_pairs(k):
    # x1 is x2: every row block marks its own shifted diagonal, so K @ I reproduces K and the
    # stationary kernels keep their exact k(0) = 1 (other diagonals depend on GEMM rounding).
    x = randn(45, 4, seed=8)
    eye = torch.eye(45, dtype=torch.float64)
    blocked = k.mv(x, x, eye, block_size=7)
    torch.testing.assert_close(blocked, k(x), rtol=1e-13, atol=1e-13)
    if k.bandwidth_param == "gamma":
        assert torch.equal(blocked.diagonal(), torch.ones(45, dtype=torch.float64))


def test_mv_float32_and_default_blocks():
    k = Matern(nu=1.5, gamma=0.3)
    x1, x2 = randn(70, 6, seed=9), randn(90, 6, seed=10)
    v = randn(90, 2, seed=11)
    ref = k(x1, x2) @ v
    torch.testing.assert_close(k.mv(x1, x2, v), ref, rtol=1e-12, atol=1e-12)
    out32 = k.mv(x1.float(), x2.float(), v.float(), block_size=16)
    assert out32.dtype == torch.float32
    assert (out32.double() - ref).abs().max() / ref.abs().max() < 1e-5


def test_rbf_exact_unit_diagonal():
    x = randn(37, 7, seed=12)
    assert torch.equal(RBF(0.7)(x).diagonal(), torch.ones(37, dtype=torch.float64))
    assert torch.equal(RBF(0.7).diag(x), torch.ones(37, dtype=torch.float64))


# -- bad input ---------------------------------------------------------------------------------

X = randn(4, 3)

BAD_CALLS = [
    (lambda: RBF(1.0)(X[0]), ValueError, r"RBF: x1 must be 2-dimensional, got shape \(3,\)"),
    (lambda: RBF(1.0)(X, randn(2, 3, 1)), ValueError, "RBF: x2 must be 2-dimensional"),
    (
        lambda: RBF(1.0)(X, randn(2, 5)),
        ValueError,
        "RBF: x1 and x2 must have the same number "
        r"of columns D, got x1 \(4, 3\) and x2 \(2, 5\)",
    ),  # fmt: skip
    (lambda: RBF(1.0)(X.int()), TypeError, "RBF: x1 must be float32 or float64, got torch.int32"),
    (lambda: Linear()(X.half()), TypeError, "Linear: x1 must be float32 or float64, got torch.fl"),
    (lambda: RBF(1.0)(X, X.float()), TypeError, "RBF: x1 and x2 must have the same dtype"),
    (lambda: RBF(1.0)(X, X.to("meta")), ValueError, "RBF: x1 and x2 must be on the same device"),
    (
        lambda: RBF(1.0)(torch.full((2, 3), float("nan"))),
        ValueError,
        "RBF: x1 must be finite, but contains NaN or inf",
    ),  # fmt: skip
    (
        lambda: NTK()(X, torch.full((2, 3), float("inf"), dtype=torch.float64)),
        ValueError,
        "NTK: x2 must be finite",
    ),  # fmt: skip
    (lambda: RBF(1.0)(torch.empty(0, 3)), ValueError, "RBF: x1 must be non-empty"),
    (lambda: RBF(1.0)(X[:, :0]), ValueError, "RBF: x1 must be non-empty"),
    (lambda: RBF(1.0)([[1.0, 2.0]]), TypeError, "RBF: x1 must be a torch.Tensor, got list"),
    (lambda: RBF(1.0)(np.ones((2, 2), dtype=int)), TypeError, "RBF: x1 must be float32 or float64"),
    (lambda: ArcCosine().diag(X[0]), ValueError, "ArcCosine.diag: x must be 2-dimensional"),
    (lambda: RBF(None)(X), ValueError, r"RBF: gamma is not set \(None\); pass gamma > 0"),
    (lambda: Laplace()(X), ValueError, "Laplace: gamma is not set"),
    (lambda: Matern(gamma=None).mv(X, X, X[:, 0]), ValueError, "Matern: gamma is not set"),
    (
        lambda: RBF(1.0).mv(X, X, X[:3, 0]),
        ValueError,
        r"RBF.mv: v must have 4 rows \(one per row of x2\), got shape \(3,\)",
    ),  # fmt: skip
    (lambda: RBF(1.0).mv(X, X, randn(4, 1, 1)), ValueError, "RBF.mv: v must be 1 or 2-dim"),
    (lambda: RBF(1.0).mv(X, X, X[:, 0].float()), TypeError, "RBF.mv: x1 and v must have the same"),
    (
        lambda: RBF(1.0).mv(X, X, X[:, 0], block_size=0),
        ValueError,
        "RBF.mv: block_size must be a positive integer, got 0",
    ),  # fmt: skip
]


@pytest.mark.parametrize("call,exc,match", BAD_CALLS, ids=[b[2][:40] for b in BAD_CALLS])
def test_bad_input_rejected(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


BAD_PARAMS = [
    (lambda: RBF(0.0), "RBF: gamma must be a finite number > 0, got 0.0"),
    (lambda: RBF(-1), "RBF: gamma must be a finite number > 0, got -1"),
    (lambda: Laplace(float("inf")), "Laplace: gamma must be a finite number > 0, got inf"),
    (lambda: Matern(nu=1.0), r"Matern: nu must be one of \(0.5, 1.5, 2.5\), got 1.0"),
    (lambda: Matern(nu=True), "Matern: nu must be one of"),
    (lambda: Matern(gamma=-2.0), "Matern: gamma must be a finite number > 0"),
    (lambda: Polynomial(degree=0), "Polynomial: degree must be a positive integer, got 0"),
    (lambda: Polynomial(degree=2.5), "Polynomial: degree must be a positive integer, got 2.5"),
    (lambda: Polynomial(gamma=0.0), "Polynomial: gamma must be a finite number > 0"),
    (lambda: Polynomial(coef0=float("nan")), "Polynomial: coef0 must be a finite number"),
    (lambda: ArcCosine(order=2), "ArcCosine: order must be 0 or 1, got 2"),
    (lambda: NNGP(arch="4layer"), "NNGP: arch must be one of '2layer', '3layer', '3resnet', 'mlp'"),
    (lambda: NNGP(arch="mlp"), "NNGP: arch 'mlp' needs depth"),
    (lambda: NNGP(arch="mlp", depth=0), "NNGP: depth must be a positive integer, got 0"),
    (lambda: NTK(arch="mlp", depth=1.5), "NTK: depth must be a positive integer, got 1.5"),
    (lambda: NTK(arch="3resnet", depth=2), "NTK: arch '3resnet' has a fixed depth: depth must be"),
    (lambda: NTK(arch="2layer", depth=2), "NTK: arch '2layer' has depth 1; got depth=2"),
    (lambda: NTK(trainable="last"), "NTK: trainable must be one of 'hidden', 'all', got 'last'"),
]


@pytest.mark.parametrize("call,match", BAD_PARAMS, ids=[b[1][:40] for b in BAD_PARAMS])
def test_bad_parameters_rejected(call, match):
    with pytest.raises(ValueError, match=match):
        call()


def test_named_depths_accepted():
    assert NNGP("3layer", depth=2).params() == {"arch": "3layer", "depth": 2}
    x = randn(5, 3)
    assert torch.equal(NNGP("3layer", depth=2)(x), NNGP("mlp", depth=2)(x))
