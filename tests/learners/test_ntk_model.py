"""NTKRegressor(model=...): kernel ridge with the empirical NTK of a network the user built."""

from __future__ import annotations

import pickle

import numpy as np
import pytest
import torch
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV
from torch import nn

from fastkernels.learners import NTKRegressor
from fastkernels.learners.ntk import ModuleNTK
from fastkernels.models import StackedNet
from fastkernels.ntk import empirical_ntk

F64 = torch.float64


def data(n=19, d=4, k=2, n_test=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    Y = torch.tanh(X @ torch.randn(d, k, generator=g, dtype=F64))
    Xt = torch.randn(n_test, d, generator=g, dtype=F64)
    return X, Y, Xt


def sequential(d=4, width=6, k=2, seed=0, dtype=F64):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(d, width), nn.Tanh(), nn.Linear(width, k)).to(dtype)


def reference(model, X, Y, Xt, ridge, params=None):
    """Kernel ridge with the torch.func Jacobian NTK of ``model``, solved in NumPy."""
    K = empirical_ntk(model, X, params=params, path="generic").numpy()
    Kt = empirical_ntk(model, Xt, X, params=params, path="generic").numpy()
    return Kt @ np.linalg.solve(K + ridge * np.eye(len(K)), Y.numpy())


class Residual(nn.Module):
    """x -> B relu(A x) + C x: two paths summed, all through nn.Linear layers."""

    def __init__(self, d=4, width=5, k=3):
        super().__init__()
        torch.manual_seed(3)
        self.a = nn.Linear(d, width)
        self.b = nn.Linear(width, k, bias=False)
        self.c = nn.Linear(d, k)

    def forward(self, x):
        return self.b(torch.relu(self.a(x))) + self.c(x)


class Scaled(nn.Module):
    """A parameter outside any nn.Linear: the per-layer factors do not cover it."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(4)
        self.lin = nn.Linear(4, 2)
        self.scale = nn.Parameter(torch.tensor([1.5, -0.5]))

    def forward(self, x):
        return torch.tanh(self.lin(x)) * self.scale


def test_sequential_equals_independent_kernel_ridge():
    X, Y, Xt = data(seed=1)
    model = sequential()
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    est = NTKRegressor(model=model, ridge=0.05).fit(X, Y)
    pred = est.predict(Xt)
    assert isinstance(pred, torch.Tensor) and pred.shape == (7, 2) and pred.dtype == F64
    np.testing.assert_allclose(
        pred.numpy(), reference(model, X, Y, Xt, 0.05), rtol=1e-8, atol=1e-10
    )
    assert est.hparams_ == {
        "kernel": "empirical_ntk",
        "model": "Sequential",
        "n_parameters": 4 * 6 + 6 + 6 * 2 + 2,
        "path": "structured",
        "ridge": 0.05,
        "solver": "cholesky",
        "grid_edge": [],
    }
    assert isinstance(est.kernel_, ModuleNTK)
    # The fit works on a copy: the user's module is untouched and later changes do not leak in.
    assert est.net_ is not model
    for n, p in model.named_parameters():
        assert torch.equal(p, before[n])
    with torch.no_grad():
        model[0].weight.add_(1.0)
    assert torch.equal(est.predict(Xt), pred)


def test_numpy_io_one_d_target_and_auto_ridge():
    X, Y, Xt = data(n=30, seed=2)
    model = sequential(k=1, seed=5)
    est = NTKRegressor(model=model).fit(X.numpy(), Y[:, 0].numpy())
    pred = est.predict(Xt.numpy())
    assert isinstance(pred, np.ndarray) and pred.shape == (7,)
    expected = reference(model, X, Y[:, :1], Xt, est.krr_.ridge_)  # the searched ridge
    np.testing.assert_allclose(pred, expected[:, 0], rtol=1e-7, atol=1e-9)
    assert est.hparams_["ridge_rel"] in est.ridge_grid


def test_frozen_parameters_are_left_out():
    X, Y, Xt = data(seed=3)
    model = sequential(seed=6)
    model[0].requires_grad_(False)  # only the readout layer: a random-features kernel
    est = NTKRegressor(model=model, ridge=0.1).fit(X, Y)
    expected = reference(model, X, Y, Xt, 0.1, params=["2.weight", "2.bias"])
    np.testing.assert_allclose(est.predict(Xt).numpy(), expected, rtol=1e-8, atol=1e-10)
    assert est.hparams_["n_parameters"] == 6 * 2 + 2


def test_residual_module_structured_path():
    X, Y, Xt = data(k=3, seed=4)
    Y = torch.cat([Y, Y[:, :1]], dim=1)
    model = Residual().to(F64)
    est = NTKRegressor(model=model, ridge=0.02).fit(X, Y)
    assert est.hparams_["path"] == "structured"
    np.testing.assert_allclose(
        est.predict(Xt).numpy(), reference(model, X, Y, Xt, 0.02), rtol=1e-8, atol=1e-10
    )


def test_other_modules_fall_back_to_jacobians_with_one_warning():
    X, Y, Xt = data(seed=5)
    model = Scaled().to(F64)
    with pytest.warns(UserWarning, match="falls back to per-sample Jacobians") as record:
        est = NTKRegressor(model=model, ridge=0.05).fit(X, Y)
    assert len(record) == 1
    assert est.hparams_["path"] == "generic"
    np.testing.assert_allclose(
        est.predict(Xt).numpy(), reference(model, X, Y, Xt, 0.05), rtol=1e-8, atol=1e-10
    )


def test_stacked_net_model_equals_the_built_network():
    X, Y, Xt = data(seed=6)
    g = torch.Generator().manual_seed(4)
    net = StackedNet("3layer", 4, 6, 2, generator=g, dtype=F64)
    given = NTKRegressor(model=net, trainable="all", scaling="ntk", ridge=0.05).fit(X, Y)
    built = NTKRegressor(
        arch="3layer", width=6, trainable="all", scaling="ntk", ridge=0.05, random_state=4
    ).fit(X, Y)
    assert torch.equal(given.predict(Xt), built.predict(Xt))


def test_float32_model_is_converted_on_a_copy():
    X, Y, Xt = data(seed=7)
    model = sequential(dtype=torch.float32)
    est = NTKRegressor(model=model, ridge=0.05).fit(X, Y)
    assert model[0].weight.dtype == torch.float32 and est.net_[0].weight.dtype == F64
    expected = reference(est.net_, X, Y, Xt, 0.05)
    np.testing.assert_allclose(est.predict(Xt).numpy(), expected, rtol=1e-8, atol=1e-10)


def test_iterative_solver_matches_cholesky():
    X, Y, Xt = data(n=60, seed=8)
    model = sequential(width=8, seed=9)
    ref = NTKRegressor(model=model, ridge=0.05, solver="cholesky").fit(X, Y)
    cg = NTKRegressor(model=model, ridge=0.05, solver="cg", tol=1e-8, compute_dtype="float64")
    cg.fit(X, Y)
    assert cg.n_iter_ >= 1 and cg.solver_info_["converged"]
    np.testing.assert_allclose(
        cg.predict(Xt).numpy(), ref.predict(Xt).numpy(), rtol=1e-5, atol=1e-6
    )


def test_clone_pickle_and_grid_search():
    X, Y, Xt = data(n=30, seed=9)
    model = sequential(seed=10)
    est = NTKRegressor(model=model, ridge=0.05).fit(X, Y)
    restored = pickle.loads(pickle.dumps(est))
    assert torch.equal(restored.predict(Xt), est.predict(Xt))
    fresh = clone(est)
    assert fresh.model is not model  # clone copies parameters that are not estimators
    assert torch.equal(fresh.fit(X, Y).predict(Xt), est.predict(Xt))
    search = GridSearchCV(NTKRegressor(model=model), {"ridge": [1e-3, 1e-1]}, cv=3)
    search.fit(X.numpy(), Y.numpy())
    assert search.best_params_["ridge"] in (1e-3, 1e-1)


@pytest.mark.parametrize(
    "params,exc,match",
    [
        ({"width": 8}, ValueError, "width"),
        ({"arch": "2layer"}, ValueError, "arch"),
        ({"trainable": "all"}, ValueError, "requires_grad"),
        ({"scaling": "ntk"}, ValueError, "scaling='ntk' needs a StackedNet"),
        ({"model": "mlp"}, TypeError, "model must be a torch.nn.Module"),
        ({"model": nn.Sequential(nn.Linear(3, 2))}, ValueError, "model does not accept X"),
        (
            {"model": nn.Sequential(nn.Linear(4, 2).requires_grad_(False))},
            ValueError,
            "requires_grad",
        ),
        (
            {"model": nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 2))},
            ValueError,
            "BatchNorm",
        ),
    ],
)
def test_bad_model_params(params, exc, match):
    X, Y, _ = data()
    params = {"model": sequential(), **params}
    with pytest.raises(exc, match=match):
        NTKRegressor(ridge=0.1, **params).fit(X, Y)


def test_wrong_feature_count_at_predict():
    X, Y, Xt = data()
    est = NTKRegressor(model=sequential(), ridge=0.1).fit(X, Y)
    with pytest.raises(ValueError, match="NTKRegressor.predict: X has 3 features, but"):
        est.predict(Xt[:, :3])
