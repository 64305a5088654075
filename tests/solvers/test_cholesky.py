"""Direct kernel ridge solve: against torch.linalg.solve, the jitter path, bad input."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import F64, randn

from fastkernels.solvers import cholesky


def spd(n: int, seed: int = 0, rank: int | None = None) -> torch.Tensor:
    X = randn(n, rank or n + 3, seed=seed)
    return X @ X.T


@pytest.mark.parametrize("n,t", [(1, 1), (7, 1), (13, 3), (37, 5)])
@pytest.mark.parametrize("ridge", [0.0, 1e-3, 0.7])
def test_equals_linalg_solve(n, t, ridge):
    K, Y = spd(n, seed=n), randn(n, t, seed=100 + n)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a well-posed system needs no jitter
        C = cholesky(K, Y, ridge)
    expected = torch.linalg.solve(K + ridge * torch.eye(n, dtype=F64), Y)
    assert C.shape == (n, t) and C.dtype == F64
    torch.testing.assert_close(C, expected, rtol=1e-10, atol=1e-10 * float(expected.abs().max()))


def test_float32_input_factorised_in_float64():
    K, Y = spd(9, seed=1), randn(9, 2, seed=2)
    C = cholesky(K.float(), Y.float(), 0.5)
    assert C.dtype == torch.float32
    expected = torch.linalg.solve(K.float().double() + 0.5 * torch.eye(9, dtype=F64), Y.double())
    torch.testing.assert_close(C.double(), expected, rtol=1e-6, atol=1e-6)
    # dtype=None keeps float32 throughout.
    C32 = cholesky(K.float(), Y.float(), 0.5, dtype=None)
    torch.testing.assert_close(C32.double(), expected, rtol=1e-3, atol=1e-3)


def test_singular_psd_triggers_jitter_with_warning():
    n = 8
    K = torch.ones(n, n, dtype=F64)  # rank 1: the second pivot is exactly 0
    Y = K @ randn(n, 2, seed=4)  # in the range of K: a consistent system
    with pytest.warns(RuntimeWarning, match="jitter"):
        C = cholesky(K, Y, 0.0)
    assert torch.isfinite(C).all()
    residual = (K @ C - Y).norm() / Y.norm()
    assert float(residual) < 1e-6


def test_singular_low_rank_gram():
    n = 10
    X = randn(n, 3, seed=5)
    K = X @ X.T
    Y = K @ randn(n, 1, seed=6)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # jitter may or may not be needed
        C = cholesky(K, Y, 0.0)
    assert float((K @ C - Y).norm() / Y.norm()) < 1e-6


def test_indefinite_raises_after_retries():
    K = -torch.eye(4, dtype=F64)
    with pytest.raises(torch.linalg.LinAlgError, match="ridge"):
        cholesky(K, randn(4, 1), 0.0, max_tries=2)


@pytest.mark.parametrize(
    "K,Y,ridge,match",
    [
        (torch.eye(3, dtype=F64), torch.ones(3, 1, dtype=F64), -1.0, "ridge"),
        (torch.ones(3, 4, dtype=F64), torch.ones(3, 1, dtype=F64), 0.1, "K"),
        (torch.ones(3, dtype=F64), torch.ones(3, 1, dtype=F64), 0.1, "K"),
        (torch.eye(3, dtype=F64), torch.ones(4, 1, dtype=F64), 0.1, "Y"),
        (torch.eye(3, dtype=F64), torch.ones(3, dtype=F64), 0.1, "Y"),
    ],
)
def test_bad_input(K, Y, ridge, match):
    with pytest.raises(ValueError, match=match):
        cholesky(K, Y, ridge)


def _nonfinite(where: str):
    K, Y, ridge = torch.eye(3, dtype=F64), torch.ones(3, 1, dtype=F64), 0.1
    if where == "K":
        K = K.clone()
        K[0, 1] = float("nan")  # upper triangle: never read by the factorisation
    elif where == "Y":
        Y = Y.clone()
        Y[0, 0] = float("nan")
    elif where == "ridge-nan":
        ridge = float("nan")
    else:
        ridge = float("inf")
    return K, Y, ridge


@pytest.mark.parametrize("where", ["K", "Y", "ridge-nan", "ridge-inf"])
def test_non_finite_input_rejected(where):
    K, Y, ridge = _nonfinite(where)
    with pytest.raises(ValueError, match=where.split("-")[0]):
        cholesky(K, Y, ridge)
