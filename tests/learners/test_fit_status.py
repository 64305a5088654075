"""Learners report their own fit status: grid-edge selections and diverged training."""

from __future__ import annotations

import math
import warnings

import pytest
import torch

from fastkernels.learners import (
    DivergenceWarning,
    GridEdgeWarning,
    KernelRidge,
    NTKRegressor,
    ResNetRegressor,
)
from fastkernels.learners.base import grid_edge, squared_error

F64 = torch.float64
# Small, fast networks: N = 64, d = 8, width 16, 3 epochs (a few hundredths of a second each).
NET = {"width": 16, "epochs": 3, "recipe": "paper"}  # the selection logic on its recipe


def wiggly_1d(n=60):
    """sin(4x) on an even grid of [-3, 3]: a wide RBF underfits it, a narrow one fits it."""
    X = torch.linspace(-3, 3, n, dtype=F64)[:, None]
    return X, torch.sin(4 * X[:, 0])


def noisy_2d(n=60, noise=0.3, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, 2, generator=g, dtype=F64)
    return X, torch.sin(2 * X[:, 0]) + noise * torch.randn(n, generator=g, dtype=F64)


def net_data(n=64, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, d, generator=g)
    return X, X[:, :2].sum(dim=1, keepdim=True)


def caught(fn):
    """(result, warnings) of ``fn()``, every warning recorded (none swallowed by the registry)."""
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        out = fn()
    return out, record


def of(record, category):
    return [w for w in record if issubclass(w.category, category)]


# -- the helper -------------------------------------------------------------------------------


def test_grid_edge_helper():
    grid = [1e-2, 1e-6, 1.0]  # unsorted: the edges are the min and the max
    assert grid_edge("ridge_grid", grid, 1e-6) == (
        "ridge_grid: chose 1e-06, the smallest of [1e-06, 0.01, 1]"
    )
    assert grid_edge("ridge_grid", grid, 1.0) == (
        "ridge_grid: chose 1, the largest of [1e-06, 0.01, 1]"
    )
    assert grid_edge("ridge_grid", grid, 1e-2) is None
    # Through a scale and back the last bits may differ: the edge is still found.
    assert grid_edge("g", grid, 1e-6 * (1 + 1e-12)).startswith("g: chose 1e-06, the smallest")
    assert grid_edge("g", grid, 1e-6 * 1.01) is None
    # No edge to search past: one value, or repeated values.
    assert grid_edge("g", [0.5], 0.5) is None
    assert grid_edge("g", [0.5, 0.5], 0.5) is None
    assert grid_edge("g", [2, 1], 2) == "g: chose 2, the largest of [1, 2]"


# -- KernelRidge ------------------------------------------------------------------------------


def test_kernel_ridge_smallest_ridge_on_noiseless_target_warns():
    X, Y = wiggly_1d()
    model, record = caught(
        lambda: KernelRidge(
            kernel_params={"gamma": 9.0}, ridge_grid=(1e-2, 1e-6, 1.0), verbose=True
        ).fit(X, Y)
    )
    hp = model.hparams_
    assert hp["ridge_rel"] == 1e-6 and model.ridge_ == pytest.approx(1e-6)  # RBF: diag K = 1
    assert "bandwidth_rel" not in hp  # the bandwidth was given, not searched
    assert hp["grid_edge"] == ["ridge_grid: chose 1e-06, the smallest of [1e-06, 0.01, 1]"]
    (w,) = of(record, GridEdgeWarning)  # one warning, whatever verbose says
    msg = str(w.message)
    assert msg.startswith("KernelRidge:") and hp["grid_edge"][0] in msg
    assert "beyond the grid" in msg
    assert w.filename == __file__  # points at the caller of fit


def test_kernel_ridge_largest_ridge_on_pure_noise():
    g = torch.Generator().manual_seed(3)
    X = torch.randn(60, 2, generator=g, dtype=F64)
    Y = torch.randn(60, generator=g, dtype=F64)
    with pytest.warns(GridEdgeWarning, match=r"^KernelRidge: .*ridge_grid: chose 100, the largest"):
        model = KernelRidge(
            kernel_params={"gamma": 0.5}, ridge_grid=(1e-4, 1e-2, 100.0), verbose=False
        ).fit(X, Y)
    assert model.hparams_["ridge_rel"] == 100.0
    assert model.hparams_["grid_edge"] == [
        "ridge_grid: chose 100, the largest of [0.0001, 0.01, 100]"
    ]


def test_kernel_ridge_bandwidth_edge_with_fixed_ridge():
    X, Y = wiggly_1d()
    with pytest.warns(GridEdgeWarning, match="bandwidth_grid: chose 30, the largest") as rec:
        model = KernelRidge(ridge=1e-3, bandwidth_grid=(0.03, 1.0, 30.0), verbose=False).fit(X, Y)
    hp = model.hparams_
    assert hp["bandwidth_rel"] == 30.0 and "ridge_rel" not in hp
    assert hp["grid_edge"] == ["bandwidth_grid: chose 30, the largest of [0.03, 1, 30]"]
    assert "ridge_grid" not in str(rec[0].message)  # the ridge was fixed: not judged
    errs = [e["val_error"] for e in model.validation_errors_]
    assert errs[2] == min(errs) and errs[2] < errs[1] / 10


def test_kernel_ridge_interior_choices_do_not_warn():
    X, Y = noisy_2d()
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridEdgeWarning)
        # Ridge: 1e-8 interpolates the noise, 1e3 flattens the signal.
        model = KernelRidge(
            kernel_params={"gamma": 0.5}, ridge_grid=(1e-8, 1e-1, 1e3), verbose=False
        ).fit(X, Y)
        assert model.hparams_["ridge_rel"] == 1e-1 and model.hparams_["grid_edge"] == []
        # Bandwidth: 0.03 x median is too wide for sin(4x), 30000 x too narrow.
        X1, Y1 = wiggly_1d()
        model = KernelRidge(ridge=1e-3, bandwidth_grid=(0.03, 30.0, 30000.0), verbose=False).fit(
            X1, Y1
        )
        assert model.hparams_["bandwidth_rel"] == 30.0 and model.hparams_["grid_edge"] == []


def test_kernel_ridge_no_search_or_one_value_grid_has_no_edge():
    X, Y = noisy_2d(n=30)
    with warnings.catch_warnings():
        warnings.simplefilter("error", GridEdgeWarning)
        fixed = KernelRidge(kernel_params={"gamma": 0.5}, ridge=0.1, verbose=False).fit(X, Y)
        one = KernelRidge(ridge_grid=(1e-3,), bandwidth_grid=(2.0,), verbose=False).fit(X, Y)
    assert fixed.hparams_["grid_edge"] == []
    assert "ridge_rel" not in fixed.hparams_ and "bandwidth_rel" not in fixed.hparams_
    assert one.hparams_["grid_edge"] == [] and one.hparams_["ridge_rel"] == 1e-3
    assert "bandwidth_rel" not in one.hparams_  # one candidate bandwidth: nothing searched


def test_ntk_records_and_warns_under_its_own_name():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(60, 3, generator=g, dtype=F64)
    Y = X[:, 0] - 0.5 * X[:, 1]  # linear: the NTK fits it, a ridge of 1e3 x diag flattens it
    model, record = caught(
        lambda: NTKRegressor(width=16, ridge_grid=(1e-3, 1e3), verbose=False).fit(X, Y)
    )
    assert model.hparams_["ridge_rel"] == 1e-3
    assert model.hparams_["grid_edge"] == ["ridge_grid: chose 0.001, the smallest of [0.001, 1000]"]
    (w,) = of(record, GridEdgeWarning)  # the inner KernelRidge's is not issued twice
    assert str(w.message).startswith("NTKRegressor:") and w.filename == __file__


# -- ResNetRegressor --------------------------------------------------------------------------


def test_resnet_huge_lr_diverges_and_says_so():
    X, Y = net_data()
    with pytest.warns(DivergenceWarning) as rec:
        model = ResNetRegressor(lr=1e6, **NET).fit(X, Y)
    hp = model.hparams_
    assert hp["diverged"] is True and model.diverged_ is True
    assert isinstance(hp["final_loss"], float) and not math.isfinite(hp["final_loss"])
    assert repr(hp["final_loss"]) == repr(model.loss_history_[-1])  # nan == nan is False
    assert hp["grid_edge"] == []
    first_bad = next(i + 1 for i, h in enumerate(model.loss_history_) if not math.isfinite(h))
    (w,) = [w for w in rec if issubclass(w.category, DivergenceWarning)]
    msg = str(w.message)
    assert msg.startswith("ResNetRegressor:") and f"epoch {first_bad} of 3" in msg
    assert "lr=1e+06" in msg and "weight_decay=0.005" in msg
    assert "predictions are not finite" in msg
    assert not torch.isfinite(model.predict(X)).any()  # a result, not an exception


def test_resnet_normal_fit_is_not_diverged():
    X, Y = net_data()
    with warnings.catch_warnings():
        warnings.simplefilter("error", DivergenceWarning)
        warnings.simplefilter("error", GridEdgeWarning)
        model = ResNetRegressor(**NET).fit(X, Y)
    hp = model.hparams_
    assert hp["diverged"] is False and model.diverged_ is False
    assert hp["final_loss"] == model.loss_history_[-1] and math.isfinite(hp["final_loss"])
    assert hp["grid_edge"] == []


def test_resnet_search_ignores_a_diverged_loser():
    X, Y = net_data()
    grid = {"lr": [0.01, 0.05, 1e6]}
    for selection in ("validation", "test"):
        with warnings.catch_warnings():
            warnings.simplefilter("error", DivergenceWarning)
            warnings.simplefilter("error", GridEdgeWarning)
            model = ResNetRegressor(param_grid=grid, selection=selection, **NET).fit(X, Y, X, Y)
        hp = model.hparams_
        assert math.isnan(model.search_results_[2]["error"])  # the 1e6 member diverged
        assert hp["lr"] == 0.05 and hp["grid_edge"] == []  # interior winner
        assert hp["diverged"] is False and math.isfinite(hp["final_loss"])
    # selection="test": the history averages the members, so the loss is the winner's own.
    assert hp["final_loss"] == pytest.approx(squared_error(model.predict(X), Y), rel=1e-6)


def test_resnet_search_edges_of_both_axes():
    X, Y = net_data()
    grid = {"lr": [0.05, 1e6], "weight_decay": [1e-4, 5e-3]}  # two values: every choice an edge
    model, record = caught(lambda: ResNetRegressor(param_grid=grid, **NET).fit(X, Y))
    hp = model.hparams_
    assert hp["lr"] == 0.05 and not of(record, DivergenceWarning)
    edge = "smallest" if hp["weight_decay"] == 1e-4 else "largest"
    assert hp["grid_edge"] == [
        "lr: chose 0.05, the smallest of [0.05, 1e+06]",
        f"weight_decay: chose {hp['weight_decay']:g}, the {edge} of [0.0001, 0.005]",
    ]
    (w,) = of(record, GridEdgeWarning)
    msg = str(w.message)
    assert msg.startswith("ResNetRegressor:") and all(e in msg for e in hp["grid_edge"])
    assert w.filename == __file__


def test_resnet_search_where_every_member_diverges_warns():
    X, Y = net_data()
    model, record = caught(lambda: ResNetRegressor(param_grid={"lr": [1e5, 1e6]}, **NET).fit(X, Y))
    assert model.hparams_["diverged"] is True
    assert model.hparams_["grid_edge"] == ["lr: chose 100000, the smallest of [100000, 1e+06]"]
    (w,) = of(record, DivergenceWarning)
    assert "lr=100000" in str(w.message)
