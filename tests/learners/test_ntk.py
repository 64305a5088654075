"""NTKRegressor: kernel ridge on the empirical NTK of a network at its init."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from fastkernels.learners import NTKRegressor
from fastkernels.models import StackedNet
from fastkernels.ntk import empirical_ntk

F64 = torch.float64


def data(n=19, d=4, k=2, n_test=7, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g, dtype=F64)
    Y = torch.tanh(X @ torch.randn(d, k, generator=g, dtype=F64))
    Xt = torch.randn(n_test, d, generator=g, dtype=F64)
    return X, Y, Xt


def reference_net(arch, d, width, k, block, seed):
    g = torch.Generator().manual_seed(seed)
    return StackedNet(arch, d, width, k, block=block, generator=g, dtype=F64)


@pytest.mark.parametrize(
    "arch,block,trainable",
    [
        ("3resnet", "full", "hidden"),
        ("3resnet", "full", "all"),
        ("3layer", "full", "last"),
        ("2layer", "full", "hidden"),
        ("3resnet", "bottleneck", "hidden"),
    ],
)
def test_predictions_equal_independent_kernel_ridge(arch, block, trainable):
    X, Y, Xt = data(seed=1)
    width, ridge, seed = 6, 0.05, 4
    model = NTKRegressor(
        arch=arch, width=width, trainable=trainable, block=block, ridge=ridge, random_state=seed
    ).fit(X, Y)
    net = reference_net(arch, 4, width, 2, block, seed)
    for n, t in net.named_parameters():
        assert torch.equal(getattr(model.net_, n), t), n
    # The kernel from the torch.func path; the solve in NumPy.
    K = empirical_ntk(net, X, trainable=trainable, path="generic").numpy()
    Kt = empirical_ntk(net, Xt, X, trainable=trainable, path="generic").numpy()
    expected = Kt @ np.linalg.solve(K + ridge * np.eye(len(K)), Y.numpy())
    pred = model.predict(Xt)
    assert isinstance(pred, torch.Tensor) and pred.shape == (7, 2) and pred.dtype == F64
    np.testing.assert_allclose(pred.numpy(), expected, rtol=1e-8, atol=1e-10)
    assert model.hparams_ == {
        "kernel": "empirical_ntk",
        "arch": arch,
        "width": width,
        "block": block,
        "trainable": trainable,
        "scaling": "standard",
        "ridge": ridge,
        "solver": "cholesky",  # what solver="auto" picked at this size
        "grid_edge": [],  # a fixed ridge: nothing searched
    }
    json.dumps(model.hparams_)


def test_ntk_scaling_and_one_d_target_numpy_io():
    X, Y, Xt = data(seed=2)
    model = NTKRegressor(arch="3layer", width=5, scaling="ntk", ridge=0.01, random_state=1)
    pred = model.fit(X.numpy(), Y[:, 0].numpy()).predict(Xt.numpy())
    assert isinstance(pred, np.ndarray) and pred.shape == (7,)
    net = reference_net("3layer", 4, 5, 1, "full", 1)
    K = empirical_ntk(net, X, scaling="ntk").numpy()
    Kt = empirical_ntk(net, Xt, X, scaling="ntk").numpy()
    expected = Kt @ np.linalg.solve(K + 0.01 * np.eye(len(K)), Y[:, 0].numpy())
    np.testing.assert_allclose(pred, expected, rtol=1e-8, atol=1e-10)
    assert model.hparams_["scaling"] == "ntk"


def test_auto_ridge_records_validation_error():
    X, Y, Xt = data(n=30, seed=3)
    model = NTKRegressor(width=6, random_state=2).fit(X, Y)
    errs = model.krr_.validation_errors_
    assert len(errs) == 7
    assert model.hparams_["val_error"] == min(e["val_error"] for e in errs)
    assert model.hparams_["ridge"] in {e["ridge"] for e in errs}
    # Relative grid: ridges are multiples of the mean training-kernel diagonal.
    assert model.predict(Xt).shape == (7, 2)
    assert np.isfinite(model.score(Xt, torch.tanh(Xt[:, :2])))


def test_determinism_and_seed_dependence():
    X, Y, Xt = data(seed=4)
    a = NTKRegressor(width=5, ridge=0.1, random_state=0).fit(X, Y).predict(Xt)
    b = NTKRegressor(width=5, ridge=0.1, random_state=0).fit(X, Y).predict(Xt)
    c = NTKRegressor(width=5, ridge=0.1, random_state=1).fit(X, Y).predict(Xt)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_get_params_and_repr():
    model = NTKRegressor(arch="2layer", width=8)
    assert model.get_params()["arch"] == "2layer"
    assert "arch='2layer'" in repr(model) and "width=8" in repr(model)
    with pytest.raises(ValueError, match="gamma"):
        model.set_params(gamma=1.0)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"arch": "4layer"}, "arch"),
        ({"width": 0}, "width"),
        ({"trainable": "first"}, "trainable"),
        ({"block": "narrow"}, "block"),
        ({"scaling": "mean-field"}, "scaling"),
        ({"block": "bottleneck", "trainable": "all"}, "bottleneck"),
        ({"block": "bottleneck", "arch": "3layer"}, "bottleneck"),
        ({"ridge": -1.0}, "ridge"),
    ],
)
def test_bad_params(params, match):
    X, Y, _ = data()
    with pytest.raises(ValueError, match=match):
        NTKRegressor(**{"width": 4, **params}).fit(X, Y)


def test_bad_input():
    X, Y, Xt = data()
    bad = X.clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match="X"):
        NTKRegressor(width=4).fit(bad, Y)
    with pytest.raises(ValueError, match="rows"):
        NTKRegressor(width=4).fit(X, Y[:3])
    with pytest.raises(ValueError, match="X"):
        NTKRegressor(width=4).fit(X[None], Y)
    model = NTKRegressor(width=4, ridge=0.1).fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        model.predict(Xt[:, :3])
    with pytest.raises(ValueError, match="X"):
        model.predict(torch.full((2, 4), float("inf"), dtype=F64))


def test_predict_before_fit_message():
    with pytest.raises(NotFittedError, match="NTKRegressor.predict: .*not fitted"):
        NTKRegressor().predict(torch.ones(2, 2))


def test_iterative_solver_matches_cholesky():
    X, Y, Xt = data(n=60, seed=2)
    common = {"arch": "3resnet", "width": 8, "ridge": 0.05, "verbose": False}
    ref = NTKRegressor(**common, solver="cholesky").fit(X, Y)
    model = NTKRegressor(**common, solver="cg", tol=1e-8, compute_dtype="float64").fit(X, Y)
    np.testing.assert_allclose(
        model.predict(Xt).numpy(), ref.predict(Xt).numpy(), rtol=1e-5, atol=1e-6
    )
    assert model.hparams_["solver"] == "cg" and model.solver_info_["converged"]
