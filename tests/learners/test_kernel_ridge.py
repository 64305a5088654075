"""KernelRidge against closed-form solves and scikit-learn; model selection; input checks."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from scipy.spatial.distance import cdist, pdist
from sklearn.base import clone
from sklearn.exceptions import NotFittedError
from sklearn.kernel_ridge import KernelRidge as SKKernelRidge
from sklearn.metrics import r2_score

from fastkernels.kernels import RBF, make_kernel
from fastkernels.learners import KernelRidge, learner_class, make_learner
from fastkernels.learners.base import validation_split
from fastkernels.learners.kernel_ridge import DEFAULT_BANDWIDTH_GRID, DEFAULT_RIDGE_GRID


def data(n=23, d=4, k=3, n_test=9, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    Y = np.sin(X @ rng.standard_normal((d, k))) + 0.1 * rng.standard_normal((n, k))
    Xt = rng.standard_normal((n_test, d))
    Yt = np.sin(Xt @ rng.standard_normal((d, k)))
    return X, Y, Xt, Yt


def rbf(a, b, gamma):
    return np.exp(-gamma * cdist(a, b, "sqeuclidean"))


def krr_predict(K, Kt, Y, ridge):
    C = np.linalg.solve(K + ridge * np.eye(len(K)), Y)
    return Kt @ C


# -- closed form and scikit-learn ------------------------------------------------------------


def test_fixed_rbf_equals_closed_form():
    X, Y, Xt, _ = data()
    model = KernelRidge(kernel="rbf", kernel_params={"gamma": 0.1}, ridge=0.3).fit(X, Y)
    expected = krr_predict(rbf(X, X, 0.1), rbf(Xt, X, 0.1), Y, 0.3)
    pred = model.predict(Xt)
    assert isinstance(pred, np.ndarray) and pred.shape == (9, 3) and pred.dtype == np.float64
    np.testing.assert_allclose(pred, expected, rtol=1e-8, atol=1e-10)
    assert model.ridge_ == 0.3 and model.validation_errors_ == []
    # "auto" records the solver it picked (a direct solve at this size).
    assert model.hparams_ == {
        "kernel": "rbf",
        "gamma": 0.1,
        "ridge": 0.3,
        "solver": "cholesky",
        "grid_edge": [],  # nothing was searched
    }
    assert model.n_features_in_ == 4 and model.n_outputs_ == 3
    np.testing.assert_allclose(
        model.dual_coef_.numpy(), np.linalg.solve(rbf(X, X, 0.1) + 0.3 * np.eye(23), Y), rtol=1e-8
    )


@pytest.mark.parametrize(
    "kernel,params",
    [
        ("rbf", {"gamma": 0.37}),
        ("polynomial", {"degree": 3, "gamma": 0.2, "coef0": 0.7}),
        ("polynomial", {"degree": 2, "gamma": 0.5, "coef0": 1.0}),
        ("linear", {}),
    ],
)
@pytest.mark.parametrize("one_d", [False, True], ids=["Y(N,k)", "y(N,)"])
def test_equals_sklearn(kernel, params, one_d):
    X, Y, Xt, _ = data(n=31, d=5, k=2, seed=1)
    if one_d:
        Y = Y[:, 0]
    ours = KernelRidge(kernel=kernel, kernel_params=params, ridge=0.3).fit(X, Y)
    ref = SKKernelRidge(alpha=0.3, kernel=kernel, **params).fit(X, Y)
    pred = ours.predict(Xt)
    assert pred.shape == ref.predict(Xt).shape
    np.testing.assert_allclose(pred, ref.predict(Xt), rtol=1e-8, atol=1e-9)


def test_one_sample_one_feature():
    X, Y = np.array([[0.7]]), np.array([[1.3]])
    model = KernelRidge(kernel="rbf", kernel_params={"gamma": 0.5}, ridge=0.2).fit(X, Y)
    Xt = np.array([[-0.4]])
    expected = np.exp(-0.5 * 1.1**2) * 1.3 / (1 + 0.2)
    np.testing.assert_allclose(model.predict(Xt), [[expected]], rtol=1e-12)


def test_ridgeless_interpolates():
    X, Y, _, _ = data(n=15, seed=2)
    model = KernelRidge(kernel="rbf", kernel_params={"gamma": 0.5}, ridge=0.0).fit(X, Y)
    np.testing.assert_allclose(model.predict(X), Y, rtol=1e-6, atol=1e-6)


def test_analytic_ntk_kernel_by_name_and_kernel_object():
    X, Y, Xt, _ = data(n=17, d=6, k=2, seed=3)
    model = KernelRidge(kernel="ntk", kernel_params={"arch": "3resnet"}, ridge=0.05).fit(X, Y)
    k = make_kernel("ntk", arch="3resnet")
    K = k(torch.from_numpy(X)).numpy()
    Kt = k(torch.from_numpy(Xt), torch.from_numpy(X)).numpy()
    np.testing.assert_allclose(model.predict(Xt), krr_predict(K, Kt, Y, 0.05), rtol=1e-8)
    obj = KernelRidge(kernel=RBF(gamma=0.2), ridge=0.1).fit(X, Y)
    name = KernelRidge(kernel="rbf", kernel_params={"gamma": 0.2}, ridge=0.1).fit(X, Y)
    np.testing.assert_allclose(obj.predict(Xt), name.predict(Xt), rtol=1e-12)


def test_float32_dtype_option():
    X, Y, Xt, _ = data(seed=4)
    m64 = KernelRidge(kernel_params={"gamma": 0.1}, ridge=0.3).fit(X, Y)
    m32 = KernelRidge(kernel_params={"gamma": 0.1}, ridge=0.3, dtype=torch.float32).fit(X, Y)
    p32 = m32.predict(Xt)
    assert p32.dtype == np.float32
    np.testing.assert_allclose(p32, m64.predict(Xt), rtol=1e-4, atol=1e-4)


# -- input / output types ----------------------------------------------------------------------


def test_numpy_in_numpy_out_tensor_in_tensor_out():
    X, Y, Xt, _ = data(seed=5)
    model = KernelRidge(kernel_params={"gamma": 0.1}, ridge=0.3)
    np_pred = model.fit(X, Y).predict(Xt)
    assert isinstance(np_pred, np.ndarray)
    t_pred = model.fit(torch.from_numpy(X), torch.from_numpy(Y)).predict(torch.from_numpy(Xt))
    assert isinstance(t_pred, torch.Tensor) and t_pred.dtype == torch.float64
    np.testing.assert_allclose(t_pred.numpy(), np_pred, rtol=1e-12)
    # 1-D y gives 1-D predictions, like scikit-learn; refitting on 2-D restores 2-D.
    assert model.fit(X, Y[:, 1]).predict(Xt).shape == (9,)
    assert model.fit(X, Y[:, 1:2]).predict(Xt).shape == (9, 1)
    # Lists and integer arrays are accepted.
    assert model.fit(X.tolist(), Y.tolist()).predict(Xt.tolist()).shape == (9, 3)
    Xi = np.arange(12).reshape(6, 2)
    assert model.fit(Xi, np.arange(6.0)).predict(Xi).shape == (6,)


def test_score_equals_r2_score_and_test_error():
    X, Y, Xt, Yt = data(seed=6)
    model = KernelRidge(kernel_params={"gamma": 0.2}, ridge=0.1).fit(X, Y)
    pred = model.predict(Xt)
    assert model.score(Xt, Yt) == pytest.approx(r2_score(Yt, pred), rel=1e-10)
    assert model.test_error(Xt, Yt) == pytest.approx(((pred - Yt) ** 2).sum(1).mean(), rel=1e-10)
    model.fit(X, Y[:, 0])
    pred = model.predict(Xt)
    assert model.score(Xt, Yt[:, 0]) == pytest.approx(r2_score(Yt[:, 0], pred), rel=1e-10)
    t = torch.from_numpy
    assert model.score(t(Xt), t(Yt[:, 0])) == pytest.approx(r2_score(Yt[:, 0], pred), rel=1e-10)


# -- model selection ---------------------------------------------------------------------------


def test_validation_split_properties():
    tr, val = validation_split(23, 0.2, 5)
    assert len(val) == 5 and len(tr) == 18
    assert sorted(torch.cat([tr, val]).tolist()) == list(range(23))
    tr2, val2 = validation_split(23, 0.2, 5)
    assert torch.equal(tr, tr2) and torch.equal(val, val2)
    assert not torch.equal(val, validation_split(23, 0.2, 6)[1])
    assert len(validation_split(2, 0.01, 0)[1]) == 1 and len(validation_split(2, 0.99, 0)[0]) == 1
    with pytest.raises(ValueError, match="validation_fraction"):
        validation_split(10, 1.0, 0)


def test_auto_ridge_minimises_validation_error():
    X, Y, Xt, _ = data(n=40, seed=7)
    gamma = 0.15
    model = KernelRidge(kernel_params={"gamma": gamma}, ridge="auto", random_state=3).fit(X, Y)
    # Recompute every candidate from the training data alone.
    tr, val = (i.numpy() for i in validation_split(40, 0.2, 3))
    K_tr, K_val = rbf(X[tr], X[tr], gamma), rbf(X[val], X[tr], gamma)
    scale = np.mean(np.diag(K_tr))
    errors = []
    for r in DEFAULT_RIDGE_GRID:
        pred = krr_predict(K_tr, K_val, Y[tr], scale * r)
        errors.append(((pred - Y[val]) ** 2).sum(1).mean())
    got = model.validation_errors_
    assert [e["ridge"] for e in got] == pytest.approx([scale * r for r in DEFAULT_RIDGE_GRID])
    np.testing.assert_allclose([e["val_error"] for e in got], errors, rtol=1e-8)
    best = int(np.argmin(errors))
    assert model.ridge_ == pytest.approx(scale * DEFAULT_RIDGE_GRID[best])
    assert model.hparams_["val_error"] == pytest.approx(errors[best], rel=1e-8)
    assert model.hparams_["val_error"] == min(e["val_error"] for e in got)
    # The final model is refitted on the whole training set with the chosen ridge.
    expected = krr_predict(rbf(X, X, gamma), rbf(Xt, X, gamma), Y, model.ridge_)
    np.testing.assert_allclose(model.predict(Xt), expected, rtol=1e-8, atol=1e-10)
    json.dumps(model.hparams_)
    json.dumps(model.validation_errors_)


def test_custom_ridge_grid_and_fraction():
    X, Y, _, _ = data(n=30, seed=8)
    model = KernelRidge(
        kernel_params={"gamma": 0.1}, ridge_grid=[1e-3, 1.0], validation_fraction=0.3
    ).fit(X, Y)
    assert len(model.validation_errors_) == 2
    assert model.ridge_ in {e["ridge"] for e in model.validation_errors_}


def test_bandwidth_search_when_gamma_is_none():
    X, Y, Xt, _ = data(n=35, seed=9)
    model = KernelRidge(kernel="rbf", ridge=0.1, random_state=1).fit(X, Y)
    g0 = 1.0 / np.median(pdist(X, "sqeuclidean"))
    got = model.validation_errors_
    assert [e["gamma"] for e in got] == pytest.approx([g0 * m for m in DEFAULT_BANDWIDTH_GRID])
    assert all(e["ridge"] == 0.1 for e in got)
    best = min(got, key=lambda e: e["val_error"])
    assert model.kernel_.gamma == pytest.approx(best["gamma"])
    assert model.hparams_["gamma"] == pytest.approx(best["gamma"])
    expected = krr_predict(rbf(X, X, model.kernel_.gamma), rbf(Xt, X, model.kernel_.gamma), Y, 0.1)
    np.testing.assert_allclose(model.predict(Xt), expected, rtol=1e-8, atol=1e-10)
    # Both searched at once: every (gamma, ridge) pair.
    both = KernelRidge(kernel="rbf", ridge="auto").fit(X, Y)
    assert len(both.validation_errors_) == len(DEFAULT_BANDWIDTH_GRID) * len(DEFAULT_RIDGE_GRID)
    assert both.hparams_["val_error"] == min(e["val_error"] for e in both.validation_errors_)


# -- parameters ----------------------------------------------------------------------------------


def test_get_set_params_repr_clone():
    model = KernelRidge(kernel="polynomial", kernel_params={"degree": 2}, ridge=0.5)
    params = model.get_params()
    assert params["kernel"] == "polynomial" and params["ridge"] == 0.5
    assert set(params) == {
        "kernel", "kernel_params", "ridge", "ridge_grid", "bandwidth_grid",
        "validation_fraction", "dtype", "device", "random_state",
        "solver", "n_centers", "memory_budget", "tol", "max_iter", "compute_dtype",
        "search_size", "warm_start", "verbose", "backend",
    }  # fmt: skip
    assert model.set_params(ridge=0.1, random_state=3) is model
    assert model.ridge == 0.1 and model.random_state == 3
    with pytest.raises(ValueError, match="alpha"):
        model.set_params(alpha=1.0)
    r = repr(model)
    assert r.startswith("KernelRidge(") and "ridge=0.1" in r and "polynomial" in r
    assert "validation_fraction" not in r
    c = clone(model)
    assert c is not model and c.get_params() == model.get_params()
    assert learner_class("kernel_ridge") is KernelRidge
    assert make_learner("kernel_ridge", ridge=0.2).ridge == 0.2
    with pytest.raises(ValueError, match="alpha"):
        make_learner("kernel_ridge", alpha=0.2)


def test_init_stores_only():
    # scikit-learn convention: no validation in __init__, errors at fit.
    model = KernelRidge(ridge=-1.0)
    assert model.ridge == -1.0
    with pytest.raises(ValueError, match="ridge"):
        model.fit(*data()[:2])


# -- bad input ---------------------------------------------------------------------------------


def _fit_kwargs():
    return {"kernel_params": {"gamma": 0.1}, "ridge": 0.1}


def _with_entry(a, value):
    """``a`` as an object array with one entry replaced by a non-number."""
    out = a.astype(object)
    out[0, 0] = value
    return out


@pytest.mark.parametrize(
    "make_xy,exc,match",
    [
        (lambda X, Y: (np.where(X > 1.5, np.nan, X), Y), ValueError, "X"),
        (lambda X, Y: (np.where(X > 1.5, np.inf, X), Y), ValueError, "X"),
        (lambda X, Y: (X, np.where(Y > 0.5, np.nan, Y)), ValueError, "Y"),
        (lambda X, Y: (X, np.where(Y > 0.5, -np.inf, Y)), ValueError, "Y"),
        (lambda X, Y: (X, Y[:5]), ValueError, "rows"),
        (lambda X, Y: (X[:0], Y[:0]), ValueError, "X"),
        (lambda X, Y: (X[None], Y), ValueError, "X"),
        (lambda X, Y: (X, Y[None]), ValueError, "Y"),
        (lambda X, Y: (X[:, 0], Y), ValueError, "X"),
        (lambda X, Y: (_with_entry(X, "a"), Y), TypeError, "X"),
        (lambda X, Y: (_with_entry(X, {"foo": 1}), Y), TypeError, "X"),
        (lambda X, Y: (X > 0, Y), TypeError, "X"),
        (lambda X, Y: (X.astype(str), Y), TypeError, "X"),
        (lambda X, Y: (X, _with_entry(Y, "a")), TypeError, "Y"),
        (lambda X, Y: (X + 1j, Y), ValueError, "Complex"),
        (lambda X, Y: (X, None), ValueError, "requires y"),
        (lambda X, Y: (X[:, :0], Y), ValueError, "0 feature"),
    ],
)
def test_bad_fit_input(make_xy, exc, match):
    X, Y, _, _ = data()
    with pytest.raises(exc, match=match):
        KernelRidge(**_fit_kwargs()).fit(*make_xy(X, Y))


@pytest.mark.parametrize(
    "params,exc,match",
    [
        ({"ridge": -0.1}, ValueError, "ridge"),
        ({"ridge": float("nan")}, ValueError, "ridge"),
        ({"ridge": "best"}, ValueError, "ridge"),
        ({"kernel": "gaussian"}, ValueError, "kernel"),
        ({"kernel": 3}, TypeError, "kernel"),
        ({"kernel_params": {"sigma": 1.0}}, ValueError, "sigma"),
        ({"kernel_params": {"gamma": -1.0}}, ValueError, "gamma"),
        ({"kernel_params": [1.0]}, TypeError, "kernel_params"),
        ({"kernel": RBF(gamma=1.0), "kernel_params": {"gamma": 1.0}}, ValueError, "kernel_params"),
        ({"ridge_grid": []}, ValueError, "ridge_grid"),
        ({"ridge_grid": [1.0, -1.0]}, ValueError, "ridge_grid"),
        ({"bandwidth_grid": [0.0]}, ValueError, "bandwidth_grid"),
        ({"validation_fraction": 1.0}, ValueError, "validation_fraction"),
        ({"dtype": torch.int64}, ValueError, "dtype"),
    ],
)
def test_bad_params(params, exc, match):
    X, Y, _, _ = data()
    with pytest.raises(exc, match=match):
        KernelRidge(**params).fit(X, Y)


def test_bad_predict_input():
    X, Y, Xt, _ = data()
    model = KernelRidge(**_fit_kwargs()).fit(X, Y)
    with pytest.raises(ValueError, match="features"):
        model.predict(Xt[:, :3])
    with pytest.raises(ValueError, match="X"):
        model.predict(np.full((2, 4), np.nan))
    with pytest.raises(ValueError, match="X"):
        model.predict(Xt[0])
    with pytest.raises(ValueError, match="X"):
        model.predict(Xt[:0])


def test_object_arrays_of_numbers_are_numbers():
    # scikit-learn's convention (check_array): an object array holding numbers is numeric data.
    X, Y, Xt, _ = data()
    ref = KernelRidge(**_fit_kwargs()).fit(X, Y).predict(Xt)
    model = KernelRidge(**_fit_kwargs()).fit(X.astype(object), Y.astype(object))
    np.testing.assert_array_equal(model.predict(Xt.astype(object)), ref)


def test_predict_before_fit_message():
    with pytest.raises(NotFittedError, match="KernelRidge.predict: .*not fitted"):
        KernelRidge().predict(np.ones((2, 2)))


@pytest.mark.parametrize("method", ["score", "test_error"])
def test_score_rejects_mismatched_y(method):
    X, Y, Xt, Yt = data(k=2)
    model = KernelRidge(**_fit_kwargs()).fit(X, Y)
    wrong = Yt.T.reshape(-1, 1) if method == "score" else Yt[:, :1]
    with pytest.raises(ValueError, match="Y"):
        getattr(model, method)(Xt, wrong)


# -- solvers -----------------------------------------------------------------------------------


def _rbf_problem(n=240, seed=11):
    X, Y, Xt, Yt = data(n=n, d=3, k=2, n_test=50, seed=seed)
    return X, Y, Xt, Yt


@pytest.mark.parametrize("solver", ["cg", "nystrom"])
def test_iterative_solvers_match_cholesky(solver):
    X, Y, Xt, _ = _rbf_problem()
    common = {"kernel_params": {"gamma": 0.3}, "ridge": 0.05, "verbose": False}
    ref = KernelRidge(solver="cholesky", **common).fit(X, Y)
    # Nystrom with every point as a centre is exact kernel ridge.
    extra = {"n_centers": 240} if solver == "nystrom" else {}
    model = KernelRidge(solver=solver, tol=1e-6, compute_dtype="float64", **extra, **common)
    model.fit(X, Y)
    np.testing.assert_allclose(model.predict(Xt), ref.predict(Xt), rtol=1e-5, atol=1e-5)
    info = model.solver_info_
    assert info["solver"] == solver and info["converged"] and info["iterations"] > 0
    assert len(info["residuals"]) == info["iterations"] + 1 and info["reason"] == "requested"
    assert model.hparams_["solver"] == solver
    json.dumps(model.solver_info_)
    json.dumps(model.hparams_)
    if solver == "nystrom":
        assert model.centers_.shape == (240, 3) and model.hparams_["n_centers"] == 240
    else:
        assert model.centers_ is None and info["extra"]["preconditioner_rank"] > 0


def test_auto_choice_rules():
    from fastkernels.learners.kernel_ridge import choose_solver

    gb = 4 * 1024**3
    assert choose_solver(1000, 1, gb, 0.1)[0] == "cholesky"
    assert choose_solver(3000, 200, gb, 0.1)[0] == "cholesky"  # many outputs favour direct
    assert choose_solver(20_000, 1, gb, 0.1)[0] == "cg"
    assert choose_solver(10_000, 1, gb, 0.0)[0] == "cholesky"  # ridgeless: direct while it fits
    name, reason = choose_solver(10**6, 15, gb, 0.1)
    assert name == "nystrom" and "exceeds" in reason
    assert choose_solver(20_000, 1, 10**8, 0.1)[0] == "nystrom"  # the budget decides


def test_auto_says_what_it_picked(capsys):
    X, Y, _, _ = _rbf_problem(n=120)
    # A budget below the Cholesky's 3 x 8 N^2 bytes but above the float32 Gram: CG.
    model = KernelRidge(
        kernel_params={"gamma": 0.3}, ridge=0.1, memory_budget=300_000, compute_dtype="float32"
    )
    model.fit(X, Y)  # verbose=False by default: silent
    assert model.hparams_["solver"] == "cg" and "fits" in model.solver_info_["reason"]
    assert capsys.readouterr() == ("", "")
    model.set_params(verbose=True).fit(X, Y)
    assert "solver='cg'" in capsys.readouterr().err


def test_unconverged_fit_warns_and_keeps_history():
    X, Y, _, _ = _rbf_problem()
    model = KernelRidge(
        kernel_params={"gamma": 0.05}, ridge=1e-9, solver="cg", n_centers=2, max_iter=3,
        tol=1e-10, verbose=False, compute_dtype="float64",
    )  # fmt: skip
    with pytest.warns(RuntimeWarning, match="NOT CONVERGED"):
        model.fit(X, Y)
    assert model.solver_info_["converged"] is False
    info = model.solver_info_
    assert info["final_residual"] > 1e-10 and len(info["residuals"]) == 4


def test_search_on_subsample_with_nystrom():
    X, Y, Xt, Yt = _rbf_problem(n=300)
    model = KernelRidge(
        kernel="rbf", solver="nystrom", n_centers=60, search_size=120, verbose=False
    ).fit(X, Y)
    assert model.hparams_["search_samples"] == 120 and model.hparams_["n_centers"] == 60
    assert len(model.validation_errors_) == len(DEFAULT_BANDWIDTH_GRID) * len(DEFAULT_RIDGE_GRID)
    assert np.isfinite(model.test_error(Xt, Yt))


def test_warm_start_on_nested_subsets():
    X, Y, _, _ = _rbf_problem(n=300)
    common = {"kernel_params": {"gamma": 0.3}, "ridge": 0.05, "verbose": False, "tol": 1e-8}
    common["compute_dtype"] = "float64"  # a float32 Gram cannot reach tol 1e-8
    for solver, extra in (("cg", {}), ("nystrom", {"n_centers": 50})):
        model = KernelRidge(solver=solver, warm_start=True, **extra, **common).fit(X[:200], Y[:200])
        model.fit(X, Y)
        warm = model.solver_info_
        cold = KernelRidge(solver=solver, **extra, **common).fit(X, Y).solver_info_
        assert warm["extra"]["warm_start"] and not cold["extra"]["warm_start"]
        assert warm["iterations"] < cold["iterations"]
        # Not a prefix: no warm start.
        model.fit(X[::-1].copy(), Y[::-1].copy())
        assert not model.solver_info_["extra"]["warm_start"]


@pytest.mark.parametrize(
    "params,match",
    [
        ({"solver": "lu"}, "solver"),
        ({"solver": "nystrom", "n_centers": 500}, "more than the N"),
        ({"solver": "cg", "n_centers": 500}, "more than the N"),
        ({"n_centers": 0}, "n_centers"),
        ({"memory_budget": "tiny"}, "memory_budget"),
        ({"memory_budget": 0}, "memory_budget"),
        ({"solver": "cg", "memory_budget": 500}, "cannot hold one tile"),
        ({"solver": "nystrom", "memory_budget": 500}, "memory_budget"),
        ({"tol": 0.0}, "tol"),
        ({"tol": 1.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"compute_dtype": "float16"}, "compute_dtype"),
        ({"search_size": 1}, "search_size"),
    ],
)
def test_bad_solver_params(params, match):
    X, Y, _, _ = data()
    with pytest.raises(ValueError, match=match):
        KernelRidge(kernel_params={"gamma": 0.1}, ridge=0.1, verbose=False, **params).fit(X, Y)


def test_ridgeless_not_positive_definite_is_a_documented_fallback():
    # Linear kernel, N > D, ridge 0: K is singular. Cholesky adds jitter and says so.
    X, Y, _, _ = data(n=30, d=3)
    with pytest.warns(RuntimeWarning, match="jitter"):
        model = KernelRidge(kernel="linear", ridge=0.0, verbose=False).fit(X, Y)
    assert np.isfinite(model.predict(X)).all()
    # A kernel that is not PSD at all (negative ridge is refused; an indefinite "kernel" fails
    # with a clear LinAlgError naming the ridge, not a crash).
    with pytest.raises(ValueError, match="ridge"):
        KernelRidge(kernel="linear", ridge=-1.0).fit(X, Y)


# -- backend="keops" ----------------------------------------------------------------------------


def test_keops_backend_cg_matches_cholesky(monkeypatch):
    import importlib.util

    if importlib.util.find_spec("pykeops") is None:
        pytest.skip("pykeops is not installed (the keops extra)")
    from fastkernels import ops

    calls = []
    real = ops.keops_kernel_mv

    def spy(*args):
        calls.append(args[0].shape)
        return real(*args)

    monkeypatch.setattr(ops, "keops_kernel_mv", spy)
    # D = 5 and 3 outputs in float64: a formula tests/ops/test_kernel_mv.py compiles too.
    X, Y, Xt, _ = data(n=301, d=5, k=3, n_test=37)
    common = dict(kernel_params={"gamma": 0.3}, ridge=1e-2, verbose=False)
    exact = KernelRidge(solver="cholesky", **common).fit(X, Y)
    model = KernelRidge(
        solver="cg", backend="keops", compute_dtype="float64", tol=1e-10, n_centers=30, **common
    ).fit(X, Y)
    assert model.get_params()["backend"] == "keops"
    assert model.solver_info_["converged"] and not model.solver_info_["extra"]["dense_gram"]
    # Every CG product (and residual check) went through KeOps, none through a stored Gram.
    assert len(calls) >= model.solver_info_["iterations"] > 1
    np.testing.assert_allclose(model.predict(Xt), exact.predict(Xt), rtol=1e-7, atol=1e-9)


@pytest.mark.parametrize(
    "params,match",
    [
        ({"backend": "KeOps"}, "backend must be one of"),
        ({"backend": "keops"}, r"backend='keops' runs the CG products only; pass solver='cg'"),
        ({"backend": "keops", "solver": "nystrom"}, "pass solver='cg'"),
        ({"backend": "keops", "solver": "cg", "kernel": "ntk"}, "'ntk' is not expressible"),
    ],
)
def test_bad_backend_params(params, match):
    X, Y, _, _ = data()
    kw = {"kernel_params": {"gamma": 0.1}} if params.get("kernel") is None else {}
    with pytest.raises(ValueError, match=match):
        KernelRidge(ridge=0.1, verbose=False, **kw, **params).fit(X, Y)
