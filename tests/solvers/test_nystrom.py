"""FALKON-style Nystrom PCG: against the dense normal equations, exactness at M = N, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import F64, randn

from fastkernels.kernels import NTK, RBF
from fastkernels.solvers import ConvergenceWarning, nystrom_pcg


def problem(n=301, d=4, t=3, seed=0):
    X = randn(n, d, seed=seed)
    Y = torch.sin(X @ randn(d, t, seed=seed + 1))
    return X, Y


def normal_equations(k, X, Z, Y, ridge):
    Knm, Kmm = k(X, Z), k(Z, Z)
    return torch.linalg.solve(Knm.T @ Knm + ridge * Kmm, Knm.T @ Y)


@pytest.mark.parametrize("kernel", [RBF(gamma=0.3), NTK(arch="3resnet")], ids=["rbf", "ntk"])
def test_equals_dense_normal_equations(kernel):
    X, Y = problem()
    res = nystrom_pcg(
        kernel, X, Y, 0.05, n_centers=37, tol=1e-10, dtype=F64, verbose=False,
        generator=torch.Generator().manual_seed(1), memory_budget=200_000,
    )  # fmt: skip
    assert res.coef.shape == (37, 3) and res.centers.shape == (37, 4)
    assert torch.equal(res.centers, X[res.center_indices])
    ref = normal_equations(kernel, X, res.centers, Y, 0.05)
    torch.testing.assert_close(res.coef, ref, rtol=1e-6, atol=1e-6 * float(ref.abs().max()))
    assert res.info.converged and res.info.iterations < 60
    # The budget forced several tiles, some cached: the passes still add up exactly.
    assert 0 < res.info.extra["cached_bytes"] < 301 * 37 * 8


def test_all_points_as_centres_is_exact_kernel_ridge():
    X, Y = problem(n=80)
    k = RBF(gamma=0.5)
    res = nystrom_pcg(k, X, Y, 0.1, centers=X, tol=1e-10, dtype=F64, verbose=False)
    exact = torch.linalg.solve(k(X) + 0.1 * torch.eye(80, dtype=F64), Y)
    Xt = randn(9, 4, seed=5)
    torch.testing.assert_close(k(Xt, X) @ res.coef, k(Xt, X) @ exact, rtol=1e-6, atol=1e-6)
    assert res.center_indices is None


def test_float32_tiles_and_one_d_target():
    X, Y = problem()
    res = nystrom_pcg(RBF(gamma=0.3), X, Y[:, 0], 0.05, n_centers=40, tol=1e-4, verbose=False)
    assert res.coef.shape == (40,) and res.coef.dtype == F64
    ref = normal_equations(RBF(gamma=0.3), X, res.centers, Y[:, :1], 0.05)[:, 0]
    pred, pref = RBF(gamma=0.3)(X, res.centers) @ res.coef, RBF(gamma=0.3)(X, res.centers) @ ref
    assert float((pred - pref).norm() / pref.norm()) < 1e-3


def test_warm_start_from_solution():
    X, Y = problem()
    k = RBF(gamma=0.3)
    cold = nystrom_pcg(k, X, Y, 0.05, n_centers=30, tol=1e-8, dtype=F64, verbose=False)
    warm = nystrom_pcg(
        k, X, Y, 0.05, centers=cold.centers, x0=cold.coef, tol=1e-8, dtype=F64, verbose=False
    )
    assert warm.info.iterations <= 1 < cold.info.iterations
    torch.testing.assert_close(warm.coef, cold.coef, rtol=1e-6, atol=1e-7)


def test_unconverged_warns():
    X, Y = problem()
    with pytest.warns(ConvergenceWarning, match="nystrom_pcg: NOT CONVERGED"):
        res = nystrom_pcg(RBF(gamma=0.3), X, Y, 1e-9, n_centers=100, tol=1e-12, max_iter=2,
                          dtype=F64, verbose=False)  # fmt: skip
    assert not res.info.converged and len(res.info.residuals) == 3


def test_stagnation_stops_early_with_the_best_iterate():
    # A tolerance below what float64 products can reach: three checks without a 2x gain stop
    # the solve long before max_iter, loudly, with the best iterate.
    X, Y = problem()
    with pytest.warns(ConvergenceWarning, match="stagnated"):
        res = nystrom_pcg(RBF(gamma=0.3), X, Y, 1e-9, n_centers=100, tol=1e-15, max_iter=400,
                          dtype=F64, verbose=False)  # fmt: skip
    info = res.info
    assert not info.converged and info.iterations < 400 and info.solver == "nystrom"
    assert info.final_residual == min(r for _, r in info.true_residuals)
    assert "stagnated" in info.stop_reason


def test_float32_tiles_refine_to_the_float64_system():
    # float32 tiles with a tiny ridge: the residual is measured with float64 products and the
    # solution refined, so the solve reaches 1e-6 on the float64 system (the float32 products
    # alone stalled near 1e-3) and equals the float64 normal equations.
    X, Y = problem()
    k = RBF(gamma=0.3)
    res = nystrom_pcg(k, X, Y, 1e-6, n_centers=100, tol=1e-7, max_iter=400,
                      dtype=torch.float32, verbose=False)  # fmt: skip
    info = res.info
    assert info.converged and info.final_residual <= 1e-7 and info.exact_check
    assert info.compute_dtype == "float32" and info.extra["refinement_rounds"] >= 1
    Z = res.centers
    ref = normal_equations(k, X, Z, Y, 1e-6)
    Knm = k(X, Z)
    # Compare predictions on the training points (the coefficients of an ill-conditioned K_MM
    # are not identifiable to many digits, the fitted function is).
    err = (Knm @ res.coef - Knm @ ref).abs().max() / (Knm @ ref).abs().max()
    assert err < 1e-4


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"n_centers": 400}, "more than the N"),
        ({"n_centers": 0}, "n_centers"),
        ({"ridge": -1.0}, "ridge"),
        ({"Y": "nan"}, "NaN"),
        ({"memory_budget": 10_000}, "memory_budget"),
        ({"memory_budget": 50_000}, "too small for one tile"),
        ({"centers": "wrong-d"}, "centers"),
        ({"tol": 1.5}, "tol"),
    ],
)
def test_bad_input(kwargs, match):
    X, Y = problem()
    if kwargs.pop("Y", None) == "nan":
        Y = Y.clone()
        Y[0, 0] = float("nan")
    if kwargs.get("centers") == "wrong-d":
        kwargs["centers"] = X[:5, :2]
    kwargs.setdefault("n_centers", 30)
    ridge = kwargs.pop("ridge", 0.1)
    with pytest.raises(ValueError, match=match), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        nystrom_pcg(RBF(gamma=0.3), X, Y, ridge, verbose=False, **kwargs)
