"""Kernel ridge regression, one workload, providers side by side.

RBF kernel ridge (gamma = 1 / D, absolute ridge 0.1 as scikit-learn's ``alpha``) on
X ~ N(0, I_D), y = sin(<w, x> / sqrt(D)) + 0.1 noise, test MSE on 2000 fresh points:

- ``fastkernels-auto`` / ``-cholesky`` / ``-cg`` / ``-nystrom``: :class:`KernelRidge` with that
  solver (auto picks exact CG on the dense float32 Gram at N = 20000);
- ``sklearn``: ``sklearn.kernel_ridge.KernelRidge`` (float64 Gram + LAPACK solve) in a child
  process on as many BLAS threads as torch uses here; skipped, saying so, when its BLAS crashes
  on that many (scipy's bundled OpenBLAS segfaults at N = 20000 on 2 threads);
- ``sklearn-1thread`` / ``fastkernels-auto-1thread``: both on one thread, the setting both can
  run (a baseline on fewer threads than ours is no baseline);
- ``torch-cholesky``: float64 Gram by the library's kernel, then ``torch.linalg.cholesky``;
- ``fastkernels-keops``: :class:`KernelRidge` with ``solver="cg", backend="keops"`` (our
  preconditioned CG, every product a KeOps reduction);
- ``pykeops``: ``KernelSolve`` (KeOps' own unpreconditioned conjugate gradients on the symbolic
  Gram, stopped at the same relative residual as ours), in a child process skipped after
  ``PYKEOPS_LIMIT_S`` seconds: it has no iteration cap.

The two KeOps providers are skipped without pykeops.

``extra_info``: N, D, iterations, test MSE, and its relative difference to the exact float64
Cholesky solution (computed once per session, untimed).

Sizes: ``FASTKERNELS_BENCH_SIZE=small`` (default; N = 2000, the CI smoke test with
``--benchmark-disable``) or ``full`` (N = 20000, D = 100: the issue's anchors)::

    FASTKERNELS_BENCH_SIZE=full pytest bench/bench_krr.py --benchmark-columns=min,mean \
        --benchmark-group-by=group --benchmark-sort=name
"""

from __future__ import annotations

import importlib.util
import os
import warnings

import pytest
import torch

from fastkernels.kernels import RBF
from fastkernels.learners import KernelRidge
from fastkernels.learners.kernel_ridge import DEFAULT_TOL

from .conftest import pykeops_or_skip

SIZES = {"small": (2000, 100), "full": (20000, 100)}
SIZE = os.environ.get("FASTKERNELS_BENCH_SIZE", "small")
if SIZE not in SIZES:
    raise ValueError(f"FASTKERNELS_BENCH_SIZE must be one of {sorted(SIZES)}, got {SIZE!r}")
N, D = SIZES[SIZE]
N_TEST, RIDGE = 2000, 0.1
GAMMA = 1.0 / D
PROVIDERS = [
    "fastkernels-auto",
    "fastkernels-auto-1thread",
    "fastkernels-cholesky",
    "fastkernels-cg",
    "fastkernels-nystrom",
    "sklearn",
    "sklearn-1thread",
    "torch-cholesky",
    "fastkernels-keops",
    "pykeops",
]


def _data():
    g = torch.Generator().manual_seed(0)
    X = torch.randn(N + N_TEST, D, generator=g, dtype=torch.float64)
    w = torch.randn(D, 1, generator=g, dtype=torch.float64)
    Y = torch.sin(X @ w / D**0.5) + 0.1 * torch.randn(N + N_TEST, 1, generator=g, dtype=X.dtype)
    return X[:N], Y[:N], X[N:], torch.sin(X[N:] @ w / D**0.5)


DATA = _data()
_REFERENCE: dict[str, float] = {}
_INNER: dict[str, float] = {}


def _mse(pred, Yt) -> float:
    pred = torch.as_tensor(pred, dtype=torch.float64).reshape(Yt.shape)
    return float((pred - Yt).pow(2).mean())


def _reference_mse() -> float:
    """Test MSE of the exact float64 Cholesky solution (once per session, untimed)."""
    if "mse" not in _REFERENCE:
        X, Y, Xt, Yt = DATA
        k = RBF(gamma=GAMMA)
        K = k(X)
        K.diagonal().add_(RIDGE)
        C = torch.cholesky_solve(Y, torch.linalg.cholesky(K))
        del K
        _REFERENCE["mse"] = _mse(k.mv(Xt, X, C), Yt)
    return _REFERENCE["mse"]


def _fastkernels(solver: str):
    X, Y, Xt, _ = DATA
    kwargs = {"n_centers": min(2000, N // 4)} if solver == "nystrom" else {}
    model = KernelRidge(
        kernel="rbf",
        kernel_params={"gamma": GAMMA},
        ridge=RIDGE,
        solver=solver,
        verbose=False,
        **kwargs,
    ).fit(X, Y)
    _record_status(model.solver_info_)
    return model.predict(Xt), model.solver_info_["iterations"]


def _record_status(info: dict) -> None:
    """The solve's status, shown next to its time (extra_info["status"])."""
    word = "converged" if info["converged"] else "NOT CONVERGED"
    _INNER["status"] = f"{word} ({info['solver']}, residual {info['final_residual']:.1e})"


def _sklearn(threads: int):
    # scikit-learn runs in a child process whose BLAS (scipy's and numpy's bundled OpenBLAS)
    # gets ``threads`` threads. A child killed by a signal (the OpenBLAS segfault at N = 20000
    # on 2 threads) is a skip that says so: the comparison is then sklearn-1thread against
    # fastkernels-auto-1thread. The time includes the child's start and imports (1-2 s); the
    # child's own fit + predict time is extra_info["inner_s"].
    import subprocess
    import sys
    import tempfile

    import numpy as np

    X, Y, Xt, _ = DATA
    code = (
        "import sys, time, numpy as np\n"
        "from sklearn.kernel_ridge import KernelRidge\n"
        "d = np.load(sys.argv[1])\n"
        "t = time.perf_counter()\n"
        f"m = KernelRidge(alpha={RIDGE!r}, kernel='rbf', gamma={GAMMA!r}).fit(d['X'], d['Y'])\n"
        "p = m.predict(d['Xt'])\n"
        "np.save(sys.argv[2], p)\n"
        "print(time.perf_counter() - t)\n"
    )
    env = {**os.environ, **{k: str(threads) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}}
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = f"{tmp}/in.npz", f"{tmp}/out.npy"
        np.savez(inp, X=X.numpy(), Y=Y.numpy(), Xt=Xt.numpy())
        cmd = [sys.executable, "-c", code, inp, out]
        res = subprocess.run(cmd, capture_output=True, text=True, env=env)
        if res.returncode < 0:
            pytest.skip(
                f"scikit-learn's BLAS crashed on {threads} threads (signal {-res.returncode}); "
                "compare sklearn-1thread with fastkernels-auto-1thread"
            )
        if res.returncode != 0:
            raise RuntimeError(f"scikit-learn child failed ({res.returncode}): {res.stderr[-500:]}")
        _INNER["s"] = float(res.stdout.strip().splitlines()[-1])
        _INNER["threads"] = threads
        return np.load(out), 0


def _one_thread(fn):
    def run():
        n = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            return fn()
        finally:
            torch.set_num_threads(n)

    return run


def _torch_cholesky():
    X, Y, Xt, _ = DATA
    k = RBF(gamma=GAMMA)
    K = k(X)
    K.diagonal().add_(RIDGE)
    C = torch.cholesky_solve(Y, torch.linalg.cholesky(K))
    return k.mv(Xt, X, C), 0


def _fastkernels_keops():
    # Our Nystrom-preconditioned CG with every product through the KeOps backend.
    X, Y, Xt, _ = DATA
    model = KernelRidge(
        kernel="rbf",
        kernel_params={"gamma": GAMMA},
        ridge=RIDGE,
        solver="cg",
        backend="keops",
        verbose=False,
    ).fit(X, Y)
    _record_status(model.solver_info_)
    return model.predict(Xt), model.solver_info_["iterations"]


# KeOps' KernelSolve has no iteration cap: it runs in a child process stopped after this long.
PYKEOPS_LIMIT_S = 300.0


def _pykeops():
    # KeOps' CG (unpreconditioned, no iteration cap) stops when the residual's RMS is below
    # eps. Its default 1e-6 is absolute and below what float32 products can reach here, so it
    # would never stop; eps = DEFAULT_TOL * RMS(y) is the relative residual our solvers stop at.
    # It runs in a child process with a time limit (skipped, with the limit, when it does not
    # finish), so that a full benchmark run ends; the time includes the child's start (1-2 s).
    import subprocess
    import sys
    import tempfile

    import numpy as np

    pykeops_or_skip()  # the skip, and the compiler flags the child inherits
    X, Y, Xt, _ = DATA
    code = (
        "import sys, numpy as np, torch\n"
        "from pykeops.torch import KernelSolve\n"
        "d = np.load(sys.argv[1])\n"
        "x, y = torch.from_numpy(d['X']).float(), torch.from_numpy(d['Y']).float()\n"
        f"solve = KernelSolve('Exp(-g * SqDist(x, y)) * b', ['x = Vi({D})', 'y = Vj({D})', "
        "'b = Vj(1)', 'g = Pm(1)'], 'b', axis=1)\n"
        f"eps = {DEFAULT_TOL!r} * float(y.pow(2).mean().sqrt())\n"
        f"g = torch.tensor([{GAMMA!r}], dtype=torch.float32)\n"
        f"C = solve(x, x, y, g, alpha={RIDGE!r}, eps=eps)\n"
        "np.save(sys.argv[2], C.double().numpy())\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        inp, out = f"{tmp}/in.npz", f"{tmp}/out.npy"
        np.savez(inp, X=X.numpy(), Y=Y.numpy())
        try:
            res = subprocess.run(
                [sys.executable, "-c", code, inp, out],
                capture_output=True,
                text=True,
                timeout=PYKEOPS_LIMIT_S,
            )
        except subprocess.TimeoutExpired:
            pytest.skip(
                f"pykeops KernelSolve did not reach relative residual {DEFAULT_TOL} within "
                f"{PYKEOPS_LIMIT_S:.0f} s (unpreconditioned CG, no iteration cap)"
            )
        if res.returncode != 0:
            raise RuntimeError(f"pykeops child failed ({res.returncode}): {res.stderr[-500:]}")
        C = torch.from_numpy(np.load(out))
    return RBF(gamma=GAMMA).mv(Xt, X, C), 0


RUNNERS = {
    "fastkernels-auto": lambda: _fastkernels("auto"),
    "fastkernels-cholesky": lambda: _fastkernels("cholesky"),
    "fastkernels-cg": lambda: _fastkernels("cg"),
    "fastkernels-nystrom": lambda: _fastkernels("nystrom"),
    "fastkernels-auto-1thread": _one_thread(lambda: _fastkernels("auto")),
    "sklearn": lambda: _sklearn(torch.get_num_threads()),
    "sklearn-1thread": lambda: _sklearn(1),
    "torch-cholesky": _torch_cholesky,
    "fastkernels-keops": _fastkernels_keops,
    "pykeops": _pykeops,
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_krr(benchmark, provider):
    if provider.startswith("sklearn") and importlib.util.find_spec("sklearn") is None:
        pytest.skip("scikit-learn is not installed")
    if provider in ("pykeops", "fastkernels-keops") and importlib.util.find_spec("pykeops") is None:
        pytest.skip("pykeops is not installed")
    if provider == "fastkernels-cholesky" and SIZE == "full":
        # Same algorithm as torch-cholesky at this size; kept out of the full run's 2 minutes.
        pytest.skip("fastkernels-cholesky equals torch-cholesky at full size")
    benchmark.group = f"krr rbf N={N} D={D}"
    out = {}
    if provider == "sklearn" and torch.get_num_threads() > 1:
        # Probe, untimed: a BLAS that crashes on these threads is a skip before any timing (a
        # skip inside the timed call would leave an empty benchmark behind).
        _sklearn(torch.get_num_threads())

    def run():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out["pred"], out["iterations"] = RUNNERS[provider]()

    # One round: a full-size solve takes seconds to tens of seconds.
    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    mse = _mse(out["pred"], DATA[3])
    ref = _reference_mse()
    rel = abs(mse - ref) / ref
    benchmark.extra_info.update(
        {
            "N": N,
            "D": D,
            "iterations": out["iterations"],
            "test_mse": mse,
            "rel_mse_vs_cholesky": rel,
        }
    )
    if provider.startswith("sklearn"):
        benchmark.extra_info["inner_s"] = _INNER["s"]
    benchmark.extra_info["threads"] = (
        _INNER["threads"] if provider.startswith("sklearn")
        else 1 if provider.endswith("1thread") else torch.get_num_threads()
    )  # fmt: skip
    status = _INNER.pop("status", None)
    if status is not None:
        benchmark.extra_info["status"] = status
        assert status.startswith("converged"), f"{provider}: {status}"
    if provider != "fastkernels-nystrom":  # Nystrom is an approximation by design
        assert rel < 1e-3, f"{provider}: test MSE {mse:.6g} vs exact {ref:.6g} (rel {rel:.2e})"


# -- Nystrom at scale ------------------------------------------------------------------------
# KernelRidge(kernel=RBF(0.5), ridge=1e-3, solver="nystrom", n_centers=M) on n points of
# N(0, I_d / d) (unit expected norm: the kernel's values spread over (0, 1)) with
# y = sin(3 <w, x>) + 0.1 noise, in float32 tiles under the default 4 GiB budget:
#
# - ``fit``: the whole fit (centres, preconditioner, float64 right-hand side, iterations with
#   the fused kernel_normal_mv pass, float64 residual checks); extra_info has the status,
#   iterations, residual, cached bytes and the peak resident memory above the data;
# - ``pass-fused`` / ``pass-two-gemm``: one K_nM^T (K_nM V) pass over all n rows without a
#   cache (V: M x 1), by the fused op in float64 accumulation, and by the former Gram tiles +
#   two float32 GEMMs per tile.
#
# Sizes: small (CI smoke test) n = 20000, M = 300; full n = 10^6, d = 30, M = 3000.
SCALE_SIZES = {"small": (20_000, 30, 300), "full": (1_000_000, 30, 3000)}
SCALE_N, SCALE_D, SCALE_M = SCALE_SIZES[SIZE]
SCALE_RIDGE, SCALE_GAMMA = 1e-3, 0.5


def _scale_data():
    g = torch.Generator().manual_seed(1)
    X = torch.randn(SCALE_N, SCALE_D, generator=g) / SCALE_D**0.5
    w = torch.randn(SCALE_D, 1, generator=g)
    Y = torch.sin(3 * X @ w) + 0.1 * torch.randn(SCALE_N, 1, generator=g)
    return X.double(), Y.double()


@pytest.mark.parametrize("provider", ["fit", "pass-fused", "pass-two-gemm"])
def test_nystrom_scale(benchmark, provider):
    from fastkernels._resources import measure
    from fastkernels.solvers import KernelOperator

    X, Y = _scale_data()
    benchmark.group = f"nystrom rbf n={SCALE_N} d={SCALE_D} M={SCALE_M}"
    k = RBF(gamma=SCALE_GAMMA)
    out = {}
    if provider == "fit":

        def run():
            model = KernelRidge(kernel=k, ridge=SCALE_RIDGE, solver="nystrom",
                                n_centers=SCALE_M, verbose=False)  # fmt: skip
            out["model"], _, out["peak_mib"] = measure(lambda: model.fit(X, Y))

    else:
        g = torch.Generator().manual_seed(0)
        Z = X[torch.randperm(SCALE_N, generator=g)[:SCALE_M]]
        X32, Z32 = X.float(), Z.float()
        fused = provider == "pass-fused"
        op = KernelOperator(k, X32, Z32, dtype=torch.float32, cache="none", fused=fused)
        V = torch.randn(SCALE_M, 1, generator=g, dtype=torch.float64)
        V = V if fused else V.float()  # the former pass ran in float32

        def run():
            out["r"] = op.normal_mv(V)

    benchmark.pedantic(run, rounds=1, iterations=1, warmup_rounds=0)
    benchmark.extra_info.update({"n": SCALE_N, "d": SCALE_D, "M": SCALE_M})
    if provider == "fit":
        info = out["model"].solver_info_
        status = "converged" if info["converged"] else "NOT CONVERGED"
        benchmark.extra_info.update(
            {
                "status": status,
                "iterations": info["iterations"],
                "final_residual": info["final_residual"],
                "compute_dtype": info["compute_dtype"],
                "cached_bytes": info["extra"]["cached_bytes"],
                "peak_rss_above_data_mib": round(out["peak_mib"], 1),
            }
        )
        assert info["converged"], f"nystrom fit: {status} ({info['stop_reason']})"
