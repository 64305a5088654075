"""Conjugate gradients and the kernel operator: against dense solves, convergence reporting."""

from __future__ import annotations

import warnings

import pytest
import torch
from helpers import F64, randn

from fastkernels.kernels import RBF
from fastkernels.solvers import (
    ConvergenceWarning,
    DenseOperator,
    KernelOperator,
    NystromPreconditioner,
    cg,
    cholesky,
)


def problem(n=157, d=5, t=3, gamma=0.2, seed=0):
    X = randn(n, d, seed=seed)
    Y = torch.sin(X @ randn(d, t, seed=seed + 1))
    k = RBF(gamma=gamma)
    return k, X, Y


def exact(K, Y, ridge):
    return torch.linalg.solve(K + ridge * torch.eye(len(K), dtype=K.dtype), Y)


@pytest.mark.parametrize("n,t", [(1, 1), (37, 1), (157, 3)])
def test_dense_cg_equals_solve(n, t):
    k, X, Y = problem(n=n, t=t)
    K = k(X)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        C, info = cg(K, Y, 0.5, tol=1e-10, verbose=False)
    torch.testing.assert_close(C, exact(K, Y, 0.5), rtol=1e-8, atol=1e-9)
    assert C.shape == (n, t) and C.dtype == F64
    assert info.converged and info.final_residual <= 1e-10
    assert len(info.residuals) == info.iterations + 1
    assert info.true_residuals[-1][0] == info.iterations


def test_one_d_rhs_and_float32_rhs():
    k, X, Y = problem(n=40, t=1)
    K = k(X)
    c, _ = cg(K, Y[:, 0], 0.3, tol=1e-10, verbose=False)
    assert c.shape == (40,)
    c32, _ = cg(K, Y[:, 0].float(), 0.3, tol=1e-6, verbose=False)
    assert c32.dtype == torch.float32
    torch.testing.assert_close(c32.double(), exact(K, Y, 0.3)[:, 0], rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("cache", ["dense", "none"])
def test_kernel_operator_cg_float32_products(cache):
    k, X, Y = problem()
    op = KernelOperator(k, X, dtype=torch.float32, cache=cache)
    C, info = cg(op, Y, 0.1, tol=1e-4, verbose=False)
    ref = exact(k(X), Y, 0.1)
    assert info.converged
    # float32 products, float64 recurrences: the solution is good to the tolerance.
    assert float((C - ref).norm() / ref.norm()) < 1e-3


def test_kernel_operator_products_match_dense():
    k, X, _ = problem(n=101)
    Z = X[::7]
    V = randn(len(Z), 2, seed=3)
    W = randn(101, 2, seed=4)
    K = k(X, Z)
    # A budget that holds only a few rows of tiles: several tiles, some cached, some not.
    op = KernelOperator(k, X, Z, memory_budget=20_000)
    assert op.block_rows < 101
    for _ in range(2):  # the second pass reuses cached tiles
        torch.testing.assert_close(op.normal_mv(V), K.T @ (K @ V), rtol=1e-12, atol=1e-12)
    assert 0 < op.cached_bytes < op.dense_bytes
    torch.testing.assert_close(op.matvec(V), K @ V, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(op.rmatvec(W), K.T @ W, rtol=1e-12, atol=1e-12)
    sq = KernelOperator(k, X, memory_budget=60_000)
    Ksq = k(X)
    torch.testing.assert_close(sq.columns(torch.tensor([0, 5, 99])), Ksq[:, [0, 5, 99]])
    dense = KernelOperator(k, X, cache="dense").K
    torch.testing.assert_close(dense, Ksq, rtol=1e-13, atol=1e-13)
    assert torch.equal(dense.diagonal(), torch.ones(101, dtype=F64))  # exact self-pairs
    torch.testing.assert_close(DenseOperator(Ksq).matvec(W), Ksq @ W)


def test_kernel_operator_rmatvec_fills_cache_within_budget():
    k, X, _ = problem(n=101)
    Z = X[::7]
    budget = 20_000
    op = KernelOperator(k, X, Z, memory_budget=budget)
    assert op.cached_bytes == 0
    op.rmatvec(randn(101, 2, seed=5))  # the first pass over the data caches what fits
    assert 0 < op.cached_bytes <= op.cache_bytes
    # the cache leaves the runtime share (10%) and the tiles in flight out of the budget
    tile = op.block_rows * op.shape[1] * op.itemsize * 4
    assert op.cache_bytes + tile + 0.10 * budget <= budget + 1


def test_dense_fits_agrees_with_the_operator():
    # Whatever dense_fits says, building the operator with cache="dense" does accordingly:
    # KernelRidge asks it first, so its CG never fails on the budget.
    k, X, _ = problem(n=160)
    for n in range(40, 161, 3):
        for reserved in (0, 20_000):
            budget = 100_000
            fits = KernelOperator.dense_fits(n, n, 8, budget, reserved)
            if fits:
                KernelOperator(
                    k, X[:n], memory_budget=budget, cache="dense", reserved_bytes=reserved
                )
            else:
                with pytest.raises(ValueError, match="memory_budget"):
                    KernelOperator(
                        k, X[:n], memory_budget=budget, cache="dense", reserved_bytes=reserved
                    )
    assert KernelOperator.dense_fits(40, 40, 8, 100_000)
    assert not KernelOperator.dense_fits(160, 160, 8, 100_000)


def test_preconditioner_cuts_iterations():
    k, X, Y = problem(n=400, d=3, gamma=0.5)
    op = KernelOperator(k, X, cache="dense")
    with pytest.warns(ConvergenceWarning):  # plain CG needs more than 400 iterations here
        _, plain = cg(op, Y, 1e-3, tol=1e-8, verbose=False, max_iter=400)
    P = NystromPreconditioner(op, 1e-3, 100, generator=torch.Generator().manual_seed(0))
    C, pre = cg(op, Y, 1e-3, preconditioner=P, tol=1e-8, verbose=False)
    assert pre.converged and pre.iterations < plain.iterations / 2
    torch.testing.assert_close(C, exact(op.K, Y, 1e-3), rtol=1e-5, atol=1e-5)
    assert P.U.shape == (400, P.rank) and P.rank <= 100


def test_warm_start():
    k, X, Y = problem()
    K = k(X)
    sol = exact(K, Y, 0.2)
    C, info = cg(K, Y, 0.2, x0=sol, tol=1e-8, verbose=False)
    assert info.iterations == 0 and info.converged
    _, cold = cg(K, Y, 0.2, tol=1e-8, verbose=False)
    _, warm = cg(K, Y, 0.2, x0=sol + 1e-4 * randn(*sol.shape, seed=9), tol=1e-8, verbose=False)
    assert warm.iterations < cold.iterations


def test_unconverged_warns_with_history():
    # Tiny ridge on a smooth kernel: condition number ~1e12, 5 iterations cannot converge.
    k, X, Y = problem(n=200, d=2, gamma=0.1)
    with pytest.warns(ConvergenceWarning, match="NOT CONVERGED.*relative residual"):
        _, info = cg(k(X), Y, 1e-10, tol=1e-8, max_iter=5, verbose=False)
    assert not info.converged and info.iterations == 5
    assert len(info.residuals) == 6 and info.final_residual > 1e-8
    assert issubclass(ConvergenceWarning, RuntimeWarning)


class RoundedProducts:
    """K @ V with V rounded to float32 and summed in float32: products with a rounding floor
    (what the solvers' own float32 operators avoid by accumulating in float64)."""

    def __init__(self, K):
        self.K, self.shape, self.dtype = K.float(), tuple(K.shape), torch.float32

    def matvec(self, V):
        return (self.K @ V.float()).double()


def test_stagnation_stops_with_warning():
    # float32 products cannot reach 1e-12: CG must stop on stagnation, loudly, not run on.
    k, X, Y = problem(n=300, d=3)
    op = RoundedProducts(k(X))
    with pytest.warns(RuntimeWarning, match="stagnated|max_iter"):
        _, info = cg(op, Y, 1e-2, tol=1e-13, max_iter=300, verbose=False)
    assert not info.converged and info.iterations < 300


def test_progress_bar(capsys):
    k, X, Y = problem(n=60)
    cg(k(X), Y, 0.1, tol=1e-8, verbose=True, desc="mycg")
    assert "mycg" in capsys.readouterr().err
    cg(k(X), Y, 0.1, tol=1e-8, verbose=False, desc="quiet")
    assert "quiet" not in capsys.readouterr().err


def test_cholesky_info():
    k, X, Y = problem(n=30)
    C, info = cholesky(k(X), Y, 0.1, return_info=True)
    assert info.solver == "cholesky" and info.converged and info.final_residual < 1e-10
    torch.testing.assert_close(C, exact(k(X), Y, 0.1))
    assert info.to_dict()["true_residuals"] == [[0, info.final_residual]]


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"ridge": -1.0}, "ridge"),
        ({"ridge": float("nan")}, "ridge"),
        ({"tol": 0.0}, "tol"),
        ({"tol": 2.0}, "tol"),
        ({"max_iter": 0}, "max_iter"),
        ({"B": "nan"}, "NaN"),
        ({"B": "rows"}, "B"),
        ({"A": "rect"}, "square"),
        ({"x0": "nan"}, "NaN"),
    ],
)
def test_bad_input(kwargs, match):
    k, X, Y = problem(n=20)
    A, B, x0 = k(X), Y, None
    if kwargs.pop("B", None) == "nan":
        B = Y.clone()
        B[3, 1] = float("nan")
    if "B" in match:
        B = Y[:5]
    if kwargs.pop("A", None) == "rect":
        A = A[:, :10]
    if kwargs.pop("x0", None) == "nan":
        x0 = torch.full_like(Y, float("nan"))
    ridge = kwargs.pop("ridge", 0.1)
    with pytest.raises(ValueError, match=match):
        cg(A, B, ridge, x0=x0, verbose=False, **kwargs)


def test_not_an_operator():
    with pytest.raises(TypeError, match="operator"):
        cg([[1.0]], torch.ones(1, 1), verbose=False)


def test_budget_too_small_for_one_tile():
    k, X, _ = problem(n=500)
    with pytest.raises(ValueError, match="too small for one tile"):
        KernelOperator(k, X, memory_budget=1000)
    with pytest.raises(ValueError, match="does not fit"):
        KernelOperator(k, X, memory_budget=600_000, cache="dense")
    with pytest.raises(ValueError, match="memory_budget"):
        KernelOperator(k, X, memory_budget="lots")


def test_float32_gram_at_its_rounding_floor_returns_best_iterate():
    # A wide-bandwidth RBF with a small ridge on parity data: the float32 Gram cannot give a
    # residual below ~1e-3, past which CG used to drift upwards without bound. It must stop,
    # warn, return its best iterate, and still predict like the exact solve.
    import warnings

    from fastkernels.concepts import ParityConcept
    from fastkernels.kernels import RBF

    X, Y = ParityConcept.earlier(seed=0).sample(3000)
    k = RBF(gamma=1 / 240)
    op = RoundedProducts(k(X.float()))
    P = NystromPreconditioner(op.K, 0.01, 500, generator=torch.Generator().manual_seed(0))
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        C, info = cg(op, Y, 0.01, preconditioner=P, tol=1e-6, max_iter=300, verbose=False)
    assert not info.converged
    assert any(issubclass(w.category, ConvergenceWarning) for w in record)
    assert info.iterations < 300  # stopped on stagnation, not by running out of iterations
    assert info.final_residual == min(r for _, r in info.true_residuals)
    assert info.final_residual < 1e-2
    K64 = k(X.double())
    C64 = exact(K64, Y, 0.01)
    rel = (K64 @ C - K64 @ C64).norm() / (K64 @ C64).norm()
    assert rel < 1e-3


def test_float32_gram_accumulated_in_float64_has_no_float32_floor():
    # The same system on the solver's own float32 Gram: its products read float32 entries and
    # compute in float64, so CG goes far below the float32 floor above, to the float64 solution
    # of the float32 entries (within float32 entry rounding of the float64 system).
    from fastkernels.concepts import ParityConcept
    from fastkernels.kernels import RBF

    X, Y = ParityConcept.earlier(seed=0).sample(3000)
    k = RBF(gamma=1 / 240)
    op = KernelOperator(k, X, cache="dense", dtype=torch.float32)
    P = NystromPreconditioner(op, 0.01, 500, generator=torch.Generator().manual_seed(0))
    C, info = cg(op, Y, 0.01, preconditioner=P, tol=1e-8, max_iter=300, verbose=False)
    assert info.converged and info.final_residual <= 1e-8
    K32 = op.K.double()
    C32 = exact(K32, Y, 0.01)
    assert float((K32 @ C - K32 @ C32).norm() / (K32 @ C32).norm()) < 1e-7


def _stall_run(**kwargs):
    # float32 products of an ill-conditioned RBF system: CG reaches the rounding floor long
    # before tol and max_iter.
    k, X, Y = problem(n=300, d=3, gamma=0.5)
    op = RoundedProducts(k(X))
    with pytest.warns(ConvergenceWarning) as rec:
        _, info = cg(op, Y, 1e-2, tol=1e-12, max_iter=600, verbose=False, **kwargs)
    return info, str(rec[0].message)


def test_stall_rule_stops_at_the_rounding_floor_only_where_allowed():
    info, msg = _stall_run()
    assert "stagnated" in msg and info.iterations < 600
    # never allowed to stall (floor below anything reachable): runs on, until max_iter or the
    # divergence guard (the float32 products drift upwards past the floor)
    info_never, msg_never = _stall_run(stall_below=1e-30)
    assert "stagnated" not in msg_never and info_never.iterations > info.iterations
    # a 2x gain asked of every check stops no later than "any new best"
    info_gain, msg_gain = _stall_run(stall_gain=0.5, stall_below=1.0)
    assert "stagnated" in msg_gain and info_gain.iterations <= info.iterations
    # the best iterate is returned: nothing better was ever measured
    for i in (info, info_never, info_gain):
        assert i.final_residual == min(r for _, r in i.true_residuals)
    with pytest.raises(ValueError, match="stall_gain"):
        cg(op_dense(), randn(5, 1), 0.1, stall_gain=1.5, verbose=False)


def op_dense():
    A = randn(5, 5, seed=9)
    return A @ A.T + torch.eye(5, dtype=F64)


def test_nystrom_preconditioner_survives_an_indefinite_landmark_block():
    # A landmark block that rounding made indefinite (here: one eigenvalue -1e-3, beyond any
    # jitter the Cholesky retries add) falls back to its eigendecomposition instead of raising;
    # the preconditioned solve of the (PSD part of the) system still converges.
    g = torch.Generator().manual_seed(0)
    n = 40
    Q, _ = torch.linalg.qr(torch.randn(n, n, generator=g, dtype=torch.float64))
    lam = torch.logspace(0, -6, n, dtype=torch.float64)
    lam[-1] = -1e-3
    K = (Q * lam) @ Q.T
    with pytest.raises(torch.linalg.LinAlgError):
        torch.linalg.cholesky(K[:n, :n] + 1e-4 * torch.eye(n, dtype=torch.float64))
    P = NystromPreconditioner(K, 0.1, n, generator=g)
    assert P.rank < n  # the negative direction is dropped
    B = torch.randn(n, 2, generator=g, dtype=torch.float64)
    Kpsd = (Q * lam.clamp_min(0)) @ Q.T
    X, info = cg(Kpsd, B, 0.1, preconditioner=P, tol=1e-10, verbose=False)
    assert info.converged
    torch.testing.assert_close(X, torch.linalg.solve(Kpsd + 0.1 * torch.eye(n, dtype=X.dtype), B))
