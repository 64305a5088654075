"""Learning curves over N that reuse work across N: nested subsets and warm-started solves.

``learning_curve(est, X, Y, n_train, X_test, Y_test)`` fits ``est`` on the prefixes
``X[:n]`` for increasing n. The prefixes of an i.i.d. sample are i.i.d. samples (the concepts'
``sample(n)`` is exactly the prefix of ``sample(n_max)``, so each point equals the runner's trial
for that n), and with ``warm_start`` the kernel ridge solvers start from the previous solution:

- CG starts from the previous dual coefficients padded with zeros: the residual is then zero on
  the old rows and the prediction error on the new rows;
- Nystrom keeps its centres (a uniform sample of the prefix, hence of the data) and starts from
  the previous coefficients;
- the hyperparameter search runs on at most ``search_size`` points at every N, so its cost is
  bounded.

With N on a geometric grid the solves cost O(sum of N) = O(largest N), and the warm starts cut
the iterations of the larger solves, so the whole curve costs little more than its largest
point. Run from the command line::

    python -m fastkernels.experiments.curve kernels-scale --out curve.json
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Sequence

import torch

from ..concepts import make_concept
from ..learners import make_learner
from ..learners.base import squared_error
from .spec import load_spec
from .trials import expand

__all__ = ["learning_curve", "preset_curves", "main"]


def learning_curve(
    estimator,
    X: torch.Tensor,
    Y: torch.Tensor,
    n_train: Sequence[int],
    X_test: torch.Tensor,
    Y_test: torch.Tensor,
    *,
    warm_start: bool = True,
    callback=None,
) -> list[dict]:
    """Fit ``estimator`` on nested prefixes ``X[:n]`` for each n (ascending) and test each fit.

    Parameters
    ----------
    estimator : KernelRidge-like
        Has ``fit``, ``predict`` and (for warm starts) a ``warm_start`` parameter; it is
        refitted in place (``warm_start`` is set to the value given here).
    X : Tensor, shape (N_max, D)
        Training inputs; the rows must be in i.i.d. order (prefixes are the subsets).
    Y : Tensor, shape (N_max, k)
    n_train : sequence of int
        Sizes, each in [1, N_max]; fitted in ascending order.
    X_test : Tensor, shape (n_test, D)
    Y_test : Tensor, shape (n_test, k)
    warm_start : bool, default True
    callback : callable, optional
        Called with each point's dict as soon as it is measured.

    Returns
    -------
    list of dict
        One per n: ``n_train``, ``test_error`` and ``train_error`` (mean over samples of the
        squared error summed over outputs), ``fit_time_s``, ``hparams``, ``solver_info``
        (without the residual history's bulk: ``iterations``, ``converged``,
        ``final_residual``, ``warm_start``).

    Raises
    ------
    ValueError
        A size outside [1, N_max].
    """
    sizes = sorted(set(int(n) for n in n_train))
    if not sizes or sizes[0] < 1 or sizes[-1] > len(X):
        raise ValueError(f"learning_curve: n_train must lie in [1, {len(X)}], got {list(n_train)}")
    if hasattr(estimator, "set_params") and "warm_start" in estimator.get_params():
        estimator.set_params(warm_start=warm_start)
    out = []
    for n in sizes:
        t0 = time.perf_counter()
        estimator.fit(X[:n], Y[:n])
        fit_time = time.perf_counter() - t0
        info = getattr(estimator, "solver_info_", {}) or {}
        point = {
            "n_train": n,
            "test_error": squared_error(_as_2d(estimator.predict(X_test)), _as_2d(Y_test)),
            "train_error": squared_error(_as_2d(estimator.predict(X[:n])), _as_2d(Y[:n])),
            "fit_time_s": fit_time,
            "hparams": dict(getattr(estimator, "hparams_", {}) or {}),
            "solver_info": {
                "solver": info.get("solver"),
                "iterations": info.get("iterations"),
                "converged": info.get("converged"),
                "final_residual": info.get("final_residual"),
                "warm_start": (info.get("extra") or {}).get("warm_start", False),
            },
        }
        out.append(point)
        if callback is not None:
            callback(point)
    return out


def _as_2d(a) -> torch.Tensor:
    t = torch.as_tensor(a).detach().to("cpu", torch.float64)
    return t[:, None] if t.dim() == 1 else t


def preset_curves(
    preset: str,
    *,
    types: Sequence[str] = ("kernel_ridge",),
    seeds: Sequence[int] | None = None,
    n_max: int | None = None,
    callback=None,
) -> list[dict]:
    """Learning curves of a sweep's kernel learners over its N grid, one pass per seed.

    Each learner of the given ``types`` gets one :func:`learning_curve` over the sweep's
    ``n_train`` (capped at ``n_max``) on ``concept.sample(max N)``, whose prefixes are the
    runner's training sets, and the concept's test set of ``n_test`` points.

    Returns
    -------
    list of dict
        The curve points with ``label`` and ``seed`` added.
    """
    spec = load_spec(preset)
    sizes = [n for n in spec.n_train if n_max is None or n <= n_max]
    rows = []
    trials = {(t.label, t.seed): t for t in expand(spec)}
    for lspec in spec.learners:
        if lspec.type not in types:
            continue
        for seed in seeds if seeds is not None else spec.seeds:
            cfg = trials[(lspec.label, seed)].config
            concept = make_concept(cfg["concept"]["name"], **cfg["concept"]["params"])
            X, Y = concept.sample(max(sizes))
            Xt, Yt = concept.test_set(spec.n_test)
            params = dict(lspec.params)
            if lspec.takes_random_state:
                params["random_state"] = seed
            est = make_learner(lspec.type, **params)

            def tag(point, label=lspec.label, seed=seed):
                point.update(label=label, seed=seed)
                if callback is not None:
                    callback(point)

            rows.extend(learning_curve(est, X, Y, sizes, Xt, Yt, callback=tag))
    return rows


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m fastkernels.experiments.curve PRESET [--n-max N] [--seeds 0 1] [--out F]``."""
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("preset", help="preset name or sweep .toml file")
    p.add_argument("--n-max", type=int, default=None, help="largest N to fit")
    p.add_argument("--seeds", type=int, nargs="*", default=None)
    p.add_argument("--out", default=None, help="write the points as JSON here")
    args = p.parse_args(argv)

    def show(point):
        si = point["solver_info"]
        print(
            f"{point['label']:<34} seed={point['seed']} N={point['n_train']:>8} "
            f"test={point['test_error']:.4f} train={point['train_error']:.4f} "
            f"fit={point['fit_time_s']:.1f}s solver={si['solver']} it={si['iterations']} "
            f"warm={si['warm_start']}",
            file=sys.stderr,
            flush=True,
        )

    rows = preset_curves(args.preset, seeds=args.seeds, n_max=args.n_max, callback=show)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(rows, f, indent=1)
    return 0


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
