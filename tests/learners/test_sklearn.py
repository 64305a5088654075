"""The estimators inside scikit-learn: check_estimator, model selection, pipelines, clone, pickle,
and the conventions that come with them (NotFittedError, n_iter_, warnings, input containers)."""

from __future__ import annotations

import pickle
import warnings

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from sklearn.base import clone
from sklearn.exceptions import ConvergenceWarning as SklearnConvergenceWarning
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold, cross_val_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from sklearn.utils.estimator_checks import parametrize_with_checks

from fastkernels.learners import GridEdgeWarning, KernelRidge, NTKRegressor, ResNetRegressor
from fastkernels.solvers import ConvergenceWarning

# -- check_estimator -----------------------------------------------------------------------------

# Cheap settings: the checks fit each estimator some 80 times on up to a few hundred samples.
CHECKED = [
    KernelRidge(),  # "auto": a direct (Cholesky) solve at these sizes, ridge and bandwidth searched
    KernelRidge(solver="cg"),
    NTKRegressor(width=8),
    ResNetRegressor(width=8, epochs=10, batch_size=25),
]

_DIRECT_N_ITER = (
    "n_iter_ counts solver iterations and is 0 for the direct (Cholesky) solve that "
    "solver='auto' picks at these sizes (scikit-learn declares the same for its Ridge)"
)
# Every declared exception with its one-line reason; anything else that fails is a bug.
EXPECTED_FAILED_CHECKS = {
    "KernelRidge()": {"check_non_transformer_estimators_n_iter": _DIRECT_N_ITER},
    "KernelRidge(solver='cg')": {},
    "NTKRegressor(width=8)": {"check_non_transformer_estimators_n_iter": _DIRECT_N_ITER},
    "ResNetRegressor(batch_size=25, epochs=10, width=8)": {
        "check_regressor_multioutput": (
            "predictions keep the network's dtype, float32 by default (dtype='float64' gives "
            "float64, see test_resnet_float64_multioutput_predictions)"
        ),
    },
}


def _expected_failed_checks(estimator) -> dict:
    return EXPECTED_FAILED_CHECKS[repr(estimator)]


@parametrize_with_checks(CHECKED, expected_failed_checks=_expected_failed_checks, xfail_strict=True)
def test_check_estimator(estimator, check):
    with warnings.catch_warnings():
        # The checks fit on data whose best ridge or bandwidth often lies on a grid edge.
        warnings.simplefilter("ignore", UserWarning)
        check(estimator)


def test_resnet_float64_multioutput_predictions():
    X, Y = _data(n=40, k=3)
    model = ResNetRegressor(width=8, epochs=3, batch_size=20, dtype="float64").fit(X, Y)
    assert model.predict(X).dtype == np.float64 and model.predict(X).shape == (40, 3)


# -- helpers -------------------------------------------------------------------------------------


def _data(n=60, d=4, k=1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    W = rng.standard_normal((d, k))
    Y = np.sin(X @ W) + 0.05 * rng.standard_normal((n, k))
    return X, (Y[:, 0] if k == 1 else Y)


def _cheap(name):
    return {
        "kernel_ridge": KernelRidge(kernel_params={"gamma": 0.2}, ridge=0.05),
        "ntk": NTKRegressor(width=8, ridge=0.05),
        "resnet": ResNetRegressor(width=8, epochs=4, batch_size=20),
    }[name]


ALL = ["kernel_ridge", "ntk", "resnet"]


# -- model selection and pipelines ---------------------------------------------------------------


def test_grid_search_over_kernel_ridge():
    X, y = _data(n=90)
    grid = {"ridge": [1e-3, 1e-1, 10.0], "kernel_params": [{"gamma": 0.05}, {"gamma": 0.5}]}
    search = GridSearchCV(KernelRidge(), grid, cv=3).fit(X, y)
    assert len(search.cv_results_["params"]) == 6
    # Every cross-validated score is the mean of the folds' R^2, as computed by hand.
    cv = KFold(3)
    for params, score in zip(search.cv_results_["params"], search.cv_results_["mean_test_score"]):
        folds = [
            KernelRidge(**params).fit(X[tr], y[tr]).score(X[te], y[te]) for tr, te in cv.split(X)
        ]
        assert score == pytest.approx(np.mean(folds), rel=1e-12)
    best = KernelRidge(**search.best_params_).fit(X, y)
    np.testing.assert_array_equal(search.predict(X), best.predict(X))
    assert search.best_params_["ridge"] < 10.0  # the heavy ridge underfits this target


def test_grid_search_over_ntk_width_and_resnet_lr():
    X, y = _data(n=40)
    ntk = GridSearchCV(NTKRegressor(ridge=0.01), {"width": [4, 8]}, cv=2).fit(X, y)
    assert ntk.best_estimator_.net_.width == ntk.best_params_["width"]
    net = GridSearchCV(
        ResNetRegressor(width=8, epochs=3, batch_size=10), {"lr": [0.01, 0.05]}, cv=2
    ).fit(X, y)
    assert net.best_estimator_.hparams_["lr"] == net.best_params_["lr"]


@pytest.mark.parametrize("name", ALL)
def test_pipeline_with_standard_scaler(name):
    X, y = _data()
    X = 3.0 * X + 10.0  # something for the scaler to do
    pipe = make_pipeline(StandardScaler(), _cheap(name)).fit(X, y)
    Xs = StandardScaler().fit(X).transform(X)
    direct = _cheap(name).fit(Xs, y)
    np.testing.assert_allclose(pipe.predict(X), direct.predict(Xs), rtol=1e-6, atol=1e-7)
    assert pipe.score(X, y) == pytest.approx(direct.score(Xs, y), rel=1e-6)


@pytest.mark.parametrize("name", ALL)
def test_cross_val_score(name):
    X, y = _data()
    scores = cross_val_score(_cheap(name), X, y, cv=3)
    folds = [_cheap(name).fit(X[tr], y[tr]).score(X[te], y[te]) for tr, te in KFold(3).split(X)]
    np.testing.assert_allclose(scores, folds, rtol=1e-12)
    mse = cross_val_score(_cheap(name), X, y, cv=3, scoring="neg_mean_squared_error")
    assert np.all(mse < 0)


# -- clone and pickle ----------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_clone_and_pickle_round_trips(name):
    X, y = _data()
    Xt, _ = _data(n=15, seed=1)
    model = _cheap(name).fit(X, y)
    pred = model.predict(Xt)
    restored = pickle.loads(pickle.dumps(model))
    np.testing.assert_array_equal(restored.predict(Xt), pred)
    t = torch.from_numpy(Xt)
    assert torch.equal(restored.predict(t), model.predict(t))
    fresh = clone(model)
    assert fresh.get_params() == model.get_params()
    with pytest.raises(NotFittedError):
        fresh.predict(Xt)
    np.testing.assert_array_equal(fresh.fit(X, y).predict(Xt), pred)  # seeded: the same fit
    unfitted = pickle.loads(pickle.dumps(_cheap(name)))
    assert unfitted.get_params() == _cheap(name).get_params()


def test_clone_keeps_torch_dtype_and_string_dtype_defaults():
    assert KernelRidge().dtype == "float64" and NTKRegressor().dtype == "float64"
    assert ResNetRegressor().dtype == "float32"
    model = KernelRidge(dtype=torch.float32)
    assert clone(model).dtype is torch.float32
    X, y = _data(n=20)
    a = KernelRidge(kernel_params={"gamma": 0.2}, ridge=0.1, dtype=torch.float32).fit(X, y)
    b = KernelRidge(kernel_params={"gamma": 0.2}, ridge=0.1, dtype="float32").fit(X, y)
    assert a.predict(X).dtype == np.float32
    np.testing.assert_array_equal(a.predict(X), b.predict(X))


# -- conventions ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ALL)
def test_not_fitted_error(name):
    model = _cheap(name)
    with pytest.raises(NotFittedError, match=f"{type(model).__name__}.predict: .*not fitted"):
        model.predict(np.ones((2, 4)))
    with pytest.raises(NotFittedError):
        model.score(np.ones((2, 4)), np.ones(2))


@pytest.mark.parametrize("name", ["kernel_ridge", "ntk"])
def test_verbose_is_off_by_default(name, capsys):
    X, y = _data(n=30)
    model = _cheap(name).set_params(solver="cg", tol=1e-8)
    assert model.verbose is False
    model.fit(X, y)
    assert capsys.readouterr() == ("", "")


def test_n_iter():
    X, y = _data(n=80)
    direct = KernelRidge(kernel_params={"gamma": 0.2}, ridge=0.05).fit(X, y)
    assert direct.hparams_["solver"] == "cholesky" and direct.n_iter_ == 0
    cg = KernelRidge(kernel_params={"gamma": 0.2}, ridge=0.05, solver="cg", n_centers=5).fit(X, y)
    assert cg.n_iter_ == cg.solver_info_["iterations"] >= 1
    ny = KernelRidge(kernel_params={"gamma": 0.2}, ridge=0.05, solver="nystrom", n_centers=20)
    assert ny.fit(X, y).n_iter_ == ny.solver_info_["iterations"] >= 1
    ntk = NTKRegressor(width=8, ridge=0.05, solver="cg", n_centers=5).fit(X, y)
    assert ntk.n_iter_ == ntk.krr_.n_iter_ == ntk.solver_info_["iterations"] >= 1
    net = ResNetRegressor(width=8, epochs=7, batch_size=20).fit(X, y)
    assert net.n_iter_ == 7 == len(net.loss_history_)
    layerwise = ResNetRegressor(width=8, epochs=5, batch_size=20, recipe="layerwise").fit(X, y)
    assert layerwise.n_iter_ == 5  # both phases
    searched = ResNetRegressor(width=8, epochs=3, batch_size=20, param_grid={"lr": [0.01, 0.02]})
    with pytest.warns(GridEdgeWarning):  # two grid points: both are edges
        searched.fit(X, y)
    assert searched.n_iter_ == 3  # the refit of the chosen point


def test_convergence_warning_is_scikit_learns():
    assert issubclass(ConvergenceWarning, SklearnConvergenceWarning)
    assert issubclass(ConvergenceWarning, RuntimeWarning)
    X, y = _data(n=80)
    model = KernelRidge(
        kernel_params={"gamma": 0.2}, ridge=1e-8, solver="cg", n_centers=1, max_iter=2, tol=1e-12
    )
    with warnings.catch_warnings():
        # A user's filter for scikit-learn's warning catches the library's.
        warnings.simplefilter("error", SklearnConvergenceWarning)
        with pytest.raises(ConvergenceWarning, match="NOT CONVERGED"):
            model.fit(X, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        warnings.simplefilter("ignore", SklearnConvergenceWarning)
        model.fit(X, y)  # silenced by that filter alone
    assert not model.solver_info_["converged"]


# -- input containers and messages --------------------------------------------------------------


class _ArrayLike:
    """A container that is no ndarray and converts only through ``__array__``."""

    def __init__(self, data):
        self._data = np.asarray(data)

    def __array__(self, dtype=None, copy=None):
        return self._data if dtype is None else self._data.astype(dtype)

    def __len__(self):
        return len(self._data)

    @property
    def shape(self):
        return self._data.shape


@pytest.mark.parametrize("name", ALL)
def test_non_array_containers(name):
    X, y = _data(n=30)
    ref = _cheap(name).fit(X, y).predict(X)
    for wrap in (lambda a: a.tolist(), _ArrayLike):
        model = _cheap(name).fit(wrap(X), wrap(y))
        pred = model.predict(wrap(X))
        assert isinstance(pred, np.ndarray)
        np.testing.assert_array_equal(pred, ref)


@pytest.mark.parametrize("name", ALL)
def test_read_only_and_fortran_input(name):
    X, y = _data(n=30)
    ref = _cheap(name).fit(X, y).predict(X)
    Xr, yr = X.copy(), y.copy()
    Xr.flags.writeable = yr.flags.writeable = False
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # torch's "not writable" warning would fail here
        np.testing.assert_array_equal(_cheap(name).fit(Xr, yr).predict(Xr), ref)
    np.testing.assert_array_equal(_cheap(name).fit(np.asfortranarray(X), y).predict(X), ref)


@pytest.mark.parametrize("name", ALL)
def test_tensor_in_tensor_out_numpy_in_numpy_out(name):
    X, y = _data(n=30)
    model = _cheap(name).fit(torch.from_numpy(X), torch.from_numpy(y))
    t = model.predict(torch.from_numpy(X))
    a = model.predict(X)
    assert isinstance(t, torch.Tensor) and isinstance(a, np.ndarray)
    np.testing.assert_array_equal(t.numpy(), a)


@pytest.mark.parametrize(
    "X,exc,match",
    [
        (sp.csr_matrix(np.ones((10, 4))), TypeError, "KernelRidge.fit: Sparse data .* for X"),
        (torch.ones(10, 4).to_sparse(), TypeError, "KernelRidge.fit: X is a sparse tensor"),
        (np.ones((10, 4)) + 1j, ValueError, "KernelRidge.fit: X: Complex data"),
        (torch.ones(10, 4, dtype=torch.complex64), ValueError, "KernelRidge.fit: X: Complex"),
        (np.ones(10), ValueError, "KernelRidge.fit: X: Expected 2D array"),
        (np.ones((0, 4)), ValueError, "KernelRidge.fit: X: Found array with 0 sample"),
        (np.ones((10, 0)), ValueError, r"KernelRidge.fit: X: .*0 feature\(s\) \(shape=\(10, 0\)\)"),
        (np.full((10, 4), np.nan), ValueError, "KernelRidge.fit: Input X contains NaN"),
        (torch.ones(10, 4, dtype=torch.bool), TypeError, "X must have a real numeric dtype"),
        (np.ones((10, 4), dtype=bool), TypeError, "X must hold real numbers"),
    ],
)
def test_bad_X_messages_name_caller_and_argument(X, exc, match):
    y = np.ones(10) if X.shape[0] else np.ones(0)
    with pytest.raises(exc, match=match):
        KernelRidge(ridge=0.1).fit(X, y)


def test_bad_Y_and_predict_messages():
    X, y = _data(n=20)
    with pytest.raises(ValueError, match="KernelRidge.fit: this estimator requires y"):
        KernelRidge(ridge=0.1).fit(X, None)
    with pytest.raises(ValueError, match="KernelRidge.fit: Input Y contains infinity"):
        KernelRidge(ridge=0.1).fit(X, np.full(20, np.inf))
    with pytest.raises(ValueError, match="KernelRidge.fit: Y: Found array with dim 3"):
        KernelRidge(ridge=0.1).fit(X, np.ones((20, 1, 1)))
    with pytest.raises(ValueError, match="n_samples = 1"):
        KernelRidge().fit(X[:1], y[:1])  # the ridge search needs a validation split
    # Fixed hyperparameters fit one sample.
    one = KernelRidge(kernel_params={"gamma": 0.2}, ridge=0.1).fit(X[:1], y[:1])
    assert one.predict(X).shape == (20,)
    model = KernelRidge(kernel_params={"gamma": 0.2}, ridge=0.1).fit(X, y)
    msg = "KernelRidge.predict: X has 3 features, but KernelRidge is expecting 4 features"
    with pytest.raises(ValueError, match=msg):
        model.predict(X[:, :3])
    with pytest.raises(ValueError, match=msg):
        model.predict(torch.from_numpy(X[:, :3]))
    with pytest.raises(ValueError, match="KernelRidge.predict: X: Expected 2D array"):
        model.predict(X[0])


def test_dataframe_input_records_feature_names():
    pd = pytest.importorskip("pandas")
    X, y = _data(n=30)
    df = pd.DataFrame(X, columns=["a", "b", "c", "d"])
    model = _cheap("kernel_ridge").fit(df, pd.Series(y))
    assert list(model.feature_names_in_) == ["a", "b", "c", "d"]
    np.testing.assert_array_equal(model.predict(df), _cheap("kernel_ridge").fit(X, y).predict(X))
