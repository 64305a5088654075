"""ResNetRegressor: training recipes, hyperparameter search, determinism, input checks."""

from __future__ import annotations

import itertools
import json
import math

import numpy as np
import pytest
import torch
from sklearn.exceptions import NotFittedError

from fastkernels.learners import ResNetRegressor, make_learner
from fastkernels.learners.base import squared_error
from fastkernels.learners.resnet import PAPER_GRID
from fastkernels.models import StackedNet

D, K = 5, 2
W_TRUE = torch.randn(D, K, generator=torch.Generator().manual_seed(123)) / math.sqrt(D)
FAST = {"width": 32, "epochs": 30, "batch_size": 10}


def linear_data(n=80, seed=0):
    """An easy target: a fixed linear map of Gaussian inputs."""
    g = torch.Generator().manual_seed(seed)
    X = torch.randn(n, D, generator=g)
    return X, X @ W_TRUE


def init_error(model: ResNetRegressor, X, Y) -> float:
    """Training error of the untrained network the fit started from (same seed, same init)."""
    net = StackedNet(
        model.arch, D, model.width, K, block=model.hparams_["block"],
        generator=torch.Generator().manual_seed(model.random_state),
    )  # fmt: skip
    with torch.no_grad():
        return squared_error(net(X)[0], Y)


# -- training reduces the loss ---------------------------------------------------------------


@pytest.mark.parametrize("arch", ["3resnet", "3layer", "2layer"])
@pytest.mark.parametrize("trainable", ["hidden", "last", "all"])
def test_paper_recipe_fits_easy_target(arch, trainable):
    X, Y = linear_data()
    lr = 0.01 if trainable == "last" else 0.05  # the readout's curvature grows with width
    model = ResNetRegressor(arch=arch, trainable=trainable, lr=lr, **FAST).fit(X, Y)
    hist = model.loss_history_
    assert len(hist) == 30 and all(math.isfinite(h) for h in hist)
    assert hist[-1] < hist[0] / 10, hist
    assert model.score(X, Y) > 0.9
    assert model.test_error(X, Y) < 0.1 * init_error(model, X, Y)
    assert model.net_.n_models == 1
    assert model.hparams_["selection"] == "fixed"


@pytest.mark.parametrize("arch", ["3resnet", "3layer", "2layer"])
def test_online_recipe_fits_easy_target(arch):
    X, Y = linear_data(n=400, seed=1)
    model = ResNetRegressor(arch=arch, width=32, recipe="online").fit(X, Y)
    hp = model.hparams_
    assert hp["block"] == ("bottleneck" if arch == "3resnet" else "full")
    assert (hp["batch_size"], hp["epochs"], hp["momentum"], hp["weight_decay"]) == (1, 1, 0.0, 0.0)
    assert len(model.loss_history_) == 1
    if arch == "3resnet":
        # Increments start at zero and moved; the random W0, V0 did not.
        ref = StackedNet(
            "3resnet", D, 32, K, block="bottleneck", generator=torch.Generator().manual_seed(0)
        )
        assert torch.equal(model.net_.W0, ref.W0) and torch.equal(model.net_.V0, ref.V0)
        assert torch.count_nonzero(model.net_.W) > 0 and torch.count_nonzero(model.net_.V) > 0
    assert model.test_error(X, Y) < init_error(model, X, Y) / 5
    assert model.score(X, Y) > 0.7


@pytest.mark.parametrize("arch", ["3resnet", "3layer"])
def test_layerwise_recipe_fits_easy_target(arch):
    X, Y = linear_data(seed=2)
    model = ResNetRegressor(arch=arch, recipe="layerwise", **FAST).fit(X, Y)
    hist = model.loss_history_
    assert len(hist) == 30
    assert hist[-1] < hist[0] / 10
    assert model.score(X, Y) > 0.9
    ref = StackedNet(arch, D, 32, K, generator=torch.Generator().manual_seed(0))
    assert torch.equal(model.net_.A, ref.A)  # readout never trained
    assert not torch.equal(model.net_.W, ref.W) and not torch.equal(model.net_.U, ref.U)


def test_trainable_last_moves_only_the_readout():
    X, Y = linear_data(seed=3)
    model = ResNetRegressor(arch="3resnet", trainable="last", lr=0.01, **FAST).fit(X, Y)
    ref = StackedNet("3resnet", D, 32, K, generator=torch.Generator().manual_seed(0))
    for n in ("W", "b1", "U", "b2"):
        assert torch.equal(getattr(model.net_, n), getattr(ref, n)), n
    assert not torch.equal(model.net_.A, ref.A)


def test_default_recipe_trains_every_layer_and_paper_recipe_fixes_the_readout():
    X, Y = linear_data(seed=5)
    default = ResNetRegressor(**FAST).fit(X, Y)
    hp = default.hparams_
    assert hp["recipe"] == "joint" and hp["trainable"] == "all"
    assert hp["weight_decay"] == 0.05 and hp["decay_params"] == ["W"]
    same = ResNetRegressor(
        recipe="paper", trainable="all", weight_decay=0.05, decay_params=["W"], **FAST
    ).fit(X, Y)
    torch.testing.assert_close(default.predict(X), same.predict(X), rtol=0, atol=0)
    paper = ResNetRegressor(recipe="paper", **FAST).fit(X, Y)
    assert paper.hparams_["trainable"] == "hidden"
    ref = StackedNet("3resnet", D, 32, K, generator=torch.Generator().manual_seed(0))
    assert torch.equal(paper.net_.A, ref.A) and not torch.equal(default.net_.A, ref.A)


def test_init_scales_loss_and_decay_params():
    X, Y = linear_data(seed=6)
    # The init factors reach the network: untrained tensors keep their scaled init.
    last = ResNetRegressor(trainable="last", lr=0.01, second_init=0.0, bias_init=2.0, **FAST)
    last.fit(X, Y)
    ref = StackedNet("3resnet", D, 32, K, generator=torch.Generator().manual_seed(0))
    assert bool(last.net_.U.eq(0).all())
    torch.testing.assert_close(last.net_.b1, 2.0 * ref.b1)
    assert last.hparams_["second_init"] == 0.0 and last.hparams_["bias_init"] == 2.0
    # Weight decay on every trained parameter is the default; on some of them it is not.
    kw = dict(dtype="float64", weight_decay=0.05, trainable="all", recipe="paper", **FAST)
    base = ResNetRegressor(**kw).fit(X, Y)
    every = ResNetRegressor(decay_params=["W", "b1", "U", "b2", "A"], **kw).fit(X, Y)
    named = ResNetRegressor(decay_params="all", **{**kw, "recipe": "joint"}).fit(X, Y)
    torch.testing.assert_close(named.predict(X), base.predict(X), rtol=0, atol=0)
    torch.testing.assert_close(every.predict(X), base.predict(X), rtol=0, atol=0)
    some = ResNetRegressor(decay_params=["U"], **kw).fit(X, Y)
    assert some.hparams_["decay_params"] == ["U"] and "decay_params" not in base.hparams_
    assert not torch.allclose(some.predict(X), base.predict(X))
    # The loss averaged over the outputs is the summed loss at lr / k and weight decay k * wd.
    mean = ResNetRegressor(loss="mean", **kw).fit(X, Y)
    k = Y.shape[1]
    scaled = ResNetRegressor(
        **{**kw, "lr": 0.05 / k, "weight_decay": 0.05 * k, "lr_readout": (1 / 32) / k}
    ).fit(X, Y)
    torch.testing.assert_close(mean.predict(X), scaled.predict(X), rtol=1e-9, atol=1e-9)
    assert mean.hparams_["loss"] == "mean" and mean.hparams_["lr"] == 0.05


def test_lr_second():
    X, Y = linear_data(seed=4)
    base = ResNetRegressor(lr=0.05, **FAST).fit(X, Y).predict(X)
    same = ResNetRegressor(lr=0.05, lr_second=0.05, **FAST).fit(X, Y)
    torch.testing.assert_close(same.predict(X), base)
    assert same.hparams_["lr_second"] == 0.05
    other = ResNetRegressor(lr=0.05, lr_second=0.005, **FAST).fit(X, Y).predict(X)
    assert not torch.allclose(other, base)
    # With an lr grid, every member's second block still steps at lr_second.
    grid = ResNetRegressor(lr_second=0.005, param_grid={"lr": [0.05]}, **FAST).fit(X, Y)
    torch.testing.assert_close(grid.predict(X), other)
    with pytest.raises(ValueError, match="lr_second"):
        ResNetRegressor(lr_second=-1.0, **FAST).fit(X, Y)


def test_readout_step_is_capped_and_last_layer_training_converges():
    # SGD on the readout at the hidden layers' default step (0.05) diverges at width 256; the
    # default readout step min(lr, 1 / width) must train it.
    X, Y = linear_data(n=200, seed=13)
    model = ResNetRegressor(trainable="last", width=256, epochs=20).fit(X, Y)
    assert model.hparams_["lr_readout"] == pytest.approx(1 / 256)
    hist = model.loss_history_
    assert all(math.isfinite(h) for h in hist) and hist[-1] < 0.5 * hist[0]


# -- hyperparameter search ---------------------------------------------------------------------


GRID = {"lr": [0.002, 0.05], "weight_decay": [0.0, 1e-2]}


def test_validation_search_picks_lowest_validation_error():
    X, Y = linear_data(seed=5)
    model = ResNetRegressor(param_grid=GRID, **FAST).fit(X, Y)
    res = model.search_results_
    assert len(res) == 4
    assert {(r["lr"], r["weight_decay"]) for r in res} == set(
        itertools.product(GRID["lr"], GRID["weight_decay"])
    )
    best = min(res, key=lambda r: r["error"])
    hp = model.hparams_
    assert (hp["lr"], hp["weight_decay"]) == (best["lr"], best["weight_decay"])
    assert hp["val_error"] == best["error"] and hp["selection"] == "validation"
    assert model.net_.n_models == 1
    # The winner is refitted on the whole training set: the same as fitting it directly.
    direct = ResNetRegressor(lr=best["lr"], weight_decay=best["weight_decay"], **FAST).fit(X, Y)
    torch.testing.assert_close(model.predict(X), direct.predict(X), rtol=0, atol=0)
    assert model.loss_history_ == direct.loss_history_
    json.dumps(hp)
    json.dumps(res)


def test_test_selection_needs_and_uses_selection_data():
    X, Y = linear_data(seed=6)
    Xs, Ys = linear_data(n=40, seed=7)
    model = ResNetRegressor(param_grid=GRID, selection="test", **FAST)
    with pytest.raises(ValueError, match="X_select"):
        model.fit(X, Y)
    model.fit(X, Y, X_select=Xs, Y_select=Ys)
    res = model.search_results_
    assert len(res) == 4
    best = min(res, key=lambda r: r["error"])
    hp = model.hparams_
    assert (hp["lr"], hp["weight_decay"]) == (best["lr"], best["weight_decay"])
    assert hp["selection"] == "test" and hp["selection_error"] == best["error"]
    # The kept member is the one that was scored: its error on the selection data matches.
    assert model.test_error(Xs, Ys) == pytest.approx(best["error"], rel=1e-5)
    assert model.net_.n_models == 1


def test_paper_grid_keys():
    assert set(PAPER_GRID) == {"lr", "weight_decay"}
    X, Y = linear_data(n=20, seed=8)
    model = ResNetRegressor(param_grid="paper", width=4, epochs=1, batch_size=10).fit(X, Y)
    assert len(model.search_results_) == len(PAPER_GRID["lr"]) * len(PAPER_GRID["weight_decay"])


def test_diverged_grid_point_is_not_selected():
    X, Y = linear_data(seed=9)
    model = ResNetRegressor(
        arch="2layer", width=16, epochs=10, batch_size=10, param_grid={"lr": [100.0, 0.01]}
    ).fit(X, Y)
    assert model.hparams_["lr"] == 0.01
    assert torch.isfinite(model.predict(X)).all()


# -- determinism, I/O, parameters ----------------------------------------------------------------


def test_same_random_state_same_predictions():
    X, Y = linear_data(seed=10)
    a = ResNetRegressor(random_state=3, **FAST).fit(X, Y).predict(X)
    b = ResNetRegressor(random_state=3, **FAST).fit(X, Y).predict(X)
    c = ResNetRegressor(random_state=4, **FAST).fit(X, Y).predict(X)
    assert torch.equal(a, b)
    assert not torch.allclose(a, c)


def test_hparams_contents():
    X, Y = linear_data(n=30, seed=11)
    model = ResNetRegressor(arch="3layer", trainable="all", width=8, epochs=3, batch_size=7)
    hp = dict(model.fit(X, Y).hparams_)
    final_loss = hp.pop("final_loss")
    assert isinstance(final_loss, float) and math.isfinite(final_loss) and final_loss > 0
    assert hp == {
        "arch": "3layer",
        "width": 8,
        "trainable": "all",
        "recipe": "joint",
        "block": "full",
        "decay_params": ["W"],
        "epochs": 3,
        "batch_size": 7,
        "momentum": 0.9,
        "lr": 0.05,
        "weight_decay": 0.05,
        "selection": "fixed",
        "lr_readout": 0.05,
        "grid_edge": [],
        "diverged": False,
    }
    assert model.search_results_ == []
    json.dumps(hp)


def test_io_types_and_one_d_target():
    X, Y = linear_data(n=30, seed=12)
    model = ResNetRegressor(width=8, epochs=2, batch_size=10)
    pred = model.fit(X.numpy(), Y[:, 0].numpy()).predict(X.numpy())
    assert isinstance(pred, np.ndarray) and pred.shape == (30,) and pred.dtype == np.float32
    t = model.fit(X, Y).predict(X)
    assert isinstance(t, torch.Tensor) and t.shape == (30, 2) and t.dtype == torch.float32
    t64 = ResNetRegressor(width=8, epochs=2, batch_size=10, dtype=torch.float64).fit(X, Y)
    assert t64.predict(X).dtype == torch.float64


def test_score_equals_r2():
    from sklearn.metrics import r2_score

    X, Y = linear_data(n=40, seed=13)
    model = ResNetRegressor(width=8, epochs=5, batch_size=10, dtype=torch.float64).fit(X, Y)
    pred = model.predict(X.numpy())
    assert model.score(X.numpy(), Y.numpy()) == pytest.approx(r2_score(Y.numpy(), pred), rel=1e-9)


def test_get_set_params_repr():
    model = ResNetRegressor(arch="2layer", width=16)
    params = model.get_params()
    assert params["arch"] == "2layer" and params["lr"] is None and params["recipe"] == "joint"
    assert model.set_params(lr=0.1) is model and model.lr == 0.1
    with pytest.raises(ValueError, match="learning_rate"):
        model.set_params(learning_rate=0.1)
    r = repr(model)
    assert r == "ResNetRegressor(arch='2layer', lr=0.1, width=16)"  # scikit-learn's repr
    assert make_learner("resnet", width=3).width == 3
    with pytest.raises(ValueError, match="depth"):
        make_learner("resnet", depth=3)


# -- bad hyperparameters and input -------------------------------------------------------------


@pytest.mark.parametrize(
    "params,match",
    [
        ({"lr": 0.0}, "lr"),
        ({"lr": -0.1}, "lr"),
        ({"lr": float("nan")}, "lr"),
        ({"width": 0}, "width"),
        ({"width": 2.5}, "width"),
        ({"arch": "resnet50"}, "arch"),
        ({"trainable": "first"}, "trainable"),
        ({"recipe": "adam"}, "recipe"),
        ({"selection": "train"}, "selection"),
        ({"block": "wide"}, "block"),
        ({"block": "bottleneck", "arch": "3layer"}, "bottleneck"),
        ({"lr_drop": 1.5}, "lr_drop"),
        ({"lr_drop": 0.0}, "lr_drop"),
        ({"momentum": -0.5}, "momentum"),
        ({"weight_decay": -1e-3}, "weight_decay"),
        ({"batch_size": 0}, "batch_size"),
        ({"epochs": 0}, "epochs"),
        ({"lr_second": 0.0}, "lr_second"),
        ({"recipe": "layerwise", "arch": "2layer"}, "layerwise"),
        ({"recipe": "layerwise", "trainable": "all"}, "layerwise"),
        ({"param_grid": {"momentum": [0.9]}}, "param_grid"),
        ({"param_grid": "best"}, "param_grid"),
        ({"param_grid": {"lr": []}}, "param_grid"),
        ({"param_grid": {"lr": [0.1, 0.0]}}, "param_grid"),
        ({"param_grid": {"weight_decay": [-1.0]}}, "param_grid"),
        ({"second_init": -1.0}, "second_init must be a finite number >= 0"),
        ({"readout_init": float("inf")}, "readout_init must be a finite number >= 0"),
        ({"bias_init": True}, "bias_init must be a finite number >= 0"),
        ({"loss": "avg"}, "loss must be one of"),
        ({"decay_params": ["Q"]}, "decay_params must be 'all' or a list of trained parameter"),
        ({"decay_params": "W"}, "decay_params must be 'all' or a list"),
        ({"decay_params": ["A"], "trainable": "hidden"}, "decay_params must be 'all' or a list"),
    ],
)
def test_bad_hyperparameters(params, match):
    X, Y = linear_data(n=10)
    with pytest.raises(ValueError, match=match):
        ResNetRegressor(**{"width": 4, "epochs": 1, **params}).fit(X, Y)


def test_bad_input():
    X, Y = linear_data(n=20)
    small = {"width": 4, "epochs": 1}
    bad = X.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match="X"):
        ResNetRegressor(**small).fit(bad, Y)
    with pytest.raises(ValueError, match="Y"):
        ResNetRegressor(**small).fit(X, Y.masked_fill(Y > 0.5, float("inf")))
    with pytest.raises(ValueError, match="rows"):
        ResNetRegressor(**small).fit(X, Y[:5])
    with pytest.raises(ValueError, match="X"):
        ResNetRegressor(**small).fit(X[:0], Y[:0])
    with pytest.raises(ValueError, match="X"):
        ResNetRegressor(**small).fit(X[None], Y)
    with pytest.raises(TypeError, match="X"):
        ResNetRegressor(**small).fit(np.array([["a"] * D] * 20, dtype=object), Y)
    model = ResNetRegressor(**small).fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        model.predict(X[:, :3])
    with pytest.raises(ValueError, match="X"):
        model.predict(bad)


def test_predict_before_fit_message():
    with pytest.raises(NotFittedError, match="ResNetRegressor.predict: .*not fitted"):
        ResNetRegressor().predict(torch.ones(2, D))


@pytest.mark.parametrize("which", ["rows", "outputs"])
def test_mismatched_selection_target(which):
    X, Y = linear_data(n=40, seed=14)
    Xs, Ys = linear_data(n=20, seed=15)
    Ys = Ys[:10] if which == "rows" else Ys[:, :1]
    model = ResNetRegressor(
        width=4, epochs=1, batch_size=10, param_grid={"lr": [0.01, 0.02]}, selection="test"
    )
    with pytest.raises(ValueError, match="Y_select"):
        model.fit(X, Y, X_select=Xs, Y_select=Ys)


# -- several seeds fitted as one ensemble (fit_together) -------------------------------------


def _seed_data(seed, n=40, d=5, k=2):
    g = torch.Generator().manual_seed(100 + seed)
    X = torch.randn(n, d, generator=g, dtype=torch.float64)
    return X, torch.randn(n, k, generator=g, dtype=torch.float64)


@pytest.mark.parametrize(
    "kw",
    [
        {},
        {"param_grid": {"lr": [0.01, 0.05], "weight_decay": [0.0, 1e-3]}},
        {"param_grid": {"lr": [0.01, 0.05]}, "selection": "test"},
        {"recipe": "layerwise", "arch": "3layer"},
        {"trainable": "all", "block": "bottleneck"},
    ],
    ids=["fixed", "validation-grid", "test-grid", "layerwise", "bottleneck-all"],
)
def test_fit_together_equals_separate_fits(kw):
    from fastkernels.learners.resnet import fit_together

    base = dict(width=6, epochs=4, batch_size=8, dtype="float64", **kw)
    data = [_seed_data(s) for s in range(3)]
    sel = [_seed_data(10 + s, n=15) for s in range(3)]
    args = [d + s if kw.get("selection") == "test" else d for d, s in zip(data, sel)]
    alone = [ResNetRegressor(random_state=s, **base).fit(*a) for s, a in enumerate(args)]
    joint = fit_together([ResNetRegressor(random_state=s, **base) for s in range(3)], args)
    for a, j, (X, _) in zip(alone, joint, data):
        assert j.hparams_ == pytest.approx(a.hparams_, rel=1e-12)
        assert j.loss_history_ == pytest.approx(a.loss_history_, rel=1e-12)
        torch.testing.assert_close(j.predict(X), a.predict(X), rtol=1e-12, atol=1e-12)
        assert j.search_results_ == a.search_results_ and j.n_iter_ == a.n_iter_


def test_fit_together_refuses_different_configurations():
    from fastkernels.learners.resnet import fit_together

    ests = [ResNetRegressor(width=4), ResNetRegressor(width=5, random_state=1)]
    with pytest.raises(ValueError, match="same parameters except random_state"):
        fit_together(ests, [_seed_data(0), _seed_data(1)])
    with pytest.raises(ValueError, match="one dataset per estimator"):
        fit_together(ests[:1], [_seed_data(0), _seed_data(1)])
    same = [ResNetRegressor(width=4), ResNetRegressor(width=4, random_state=1)]
    with pytest.raises(ValueError, match="the same shape"):
        fit_together(same, [_seed_data(0), _seed_data(1, n=30)])


def test_fit_together_limit_counts_grid_members():
    one = ResNetRegressor(width=1024)
    grid = ResNetRegressor(width=1024, param_grid="paper")
    assert one.fit_together_limit(30, 8) >= 100  # 8 MiB per member: hundreds fit in 2 GiB
    assert grid.fit_together_limit(30, 8) == max(1, one.fit_together_limit(30, 8) // 45)
    assert ResNetRegressor(width=16384).fit_together_limit(30, 8) == 1
