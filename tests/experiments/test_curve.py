"""Learning curves over nested subsets with warm starts; the kernels-scale preset parses."""

from __future__ import annotations

import pytest
import torch

from fastkernels.concepts import make_concept
from fastkernels.experiments import expand, load_spec
from fastkernels.experiments.curve import learning_curve, preset_curves
from fastkernels.learners import KernelRidge

pytestmark = pytest.mark.usefixtures("single_thread")


def _parity(n):
    c = make_concept("parity", d=10, k=4, alpha=0.3, seed=0)
    X, Y = c.sample(n)
    Xt, Yt = c.test_set(200)
    return X, Y, Xt, Yt


@pytest.mark.parametrize("solver,extra", [("cg", {}), ("nystrom", {"n_centers": 60})])
def test_curve_points_equal_independent_fits_and_warm_start(solver, extra):
    X, Y, Xt, Yt = _parity(400)
    params = dict(kernel="rbf", kernel_params={"gamma": 0.05}, ridge=0.1, solver=solver,
                  tol=1e-7, compute_dtype="float64", verbose=False, **extra)  # fmt: skip
    seen = []
    points = learning_curve(
        KernelRidge(**params), X, Y, [400, 100, 200], Xt, Yt, callback=seen.append
    )
    assert [p["n_train"] for p in points] == [100, 200, 400] and seen == points
    assert [p["solver_info"]["warm_start"] for p in points] == [False, True, True]
    for p in points:
        n = p["n_train"]
        ref = KernelRidge(**params).fit(X[:n], Y[:n])
        if solver == "cg":  # exact: the warm start changes iterations, not the answer
            assert p["test_error"] == pytest.approx(ref.test_error(Xt, Yt), rel=1e-5)
        assert p["solver_info"]["converged"]
        assert p["hparams"]["solver"] == solver and p["fit_time_s"] > 0
    # Prefixes of concept.sample(max N) are the runner's training sets.
    assert torch.equal(make_concept("parity", d=10, k=4, alpha=0.3, seed=0).sample(100)[0], X[:100])


def test_curve_rejects_bad_sizes():
    X, Y, Xt, Yt = _parity(50)
    with pytest.raises(ValueError, match="n_train"):
        learning_curve(KernelRidge(verbose=False), X, Y, [10, 60], Xt, Yt)


def test_kernels_scale_preset():
    spec = load_spec("kernels-scale")
    assert spec.n_train[0] == 1000 and spec.n_train[-1] == 10**6
    assert spec.concept_params["k"] == 15 and spec.concept_params["d"] == 30
    labels = {t.label for t in expand(spec)}
    assert {"RBF ridge", "NTK ridge (3resnet, analytic)"} <= labels


def test_preset_curves_small(tmp_path):
    toml = tmp_path / "tiny.toml"
    toml.write_text(
        '[sweep]\nname = "tiny"\nn_train = [60, 120]\nseeds = [0]\nn_test = 50\n'
        '[concept]\nname = "parity"\nd = 10\nk = 4\nalpha = 0.3\n'
        '[[learners]]\nlabel = "rbf"\ntype = "kernel_ridge"\nkernel = "rbf"\nridge = 0.1\n'
        "verbose = false\n"
    )
    rows = preset_curves(str(toml))
    assert [(r["label"], r["n_train"]) for r in rows] == [("rbf", 60), ("rbf", 120)]
