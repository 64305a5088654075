"""Run the trials of a sweep and store each result as it finishes.

:func:`run_trial` is a pure function of a trial config (plus the device), so it can run in this
process or in a Ray worker. :func:`run_sweep` skips the keys already in the store, runs the rest
and writes one row per finished trial; a failed trial writes nothing and stops the sweep after the
rows before it are safely committed.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from .._resources import measure
from .spec import SweepSpec, Trial, expand
from .store import ResultsStore, _jsonable

__all__ = ["TrialError", "SweepResult", "run_trial", "run_sweep", "check_device", "versions"]

EXECUTORS = ("local", "ray")


class TrialError(RuntimeError):
    """A trial failed; the message names its label, N and seed, ``__cause__`` is the error.

    Attributes
    ----------
    trial : Trial
        The trial that failed.
    """

    def __init__(self, trial: Trial, exc: BaseException):
        self.trial = trial
        where = f"N={trial.n_train}, seed={trial.seed}"
        if trial.width is not None:
            where += f", width={trial.width}"
        msg = " ".join(str(exc).split()) or "(no message)"
        super().__init__(f"trial {trial.label!r} ({where}) failed: {type(exc).__name__}: {msg}")


@dataclass(frozen=True)
class SweepResult:
    """What :func:`run_sweep` did: ``total`` trials, ``skipped`` (already stored), ``ran``."""

    total: int
    skipped: int
    ran: int


def versions() -> dict[str, str]:
    """Versions recorded with every row: fastkernels, torch, python, platform."""
    from .. import __version__

    return {
        "fastkernels": __version__,
        "torch": torch.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
    }


def check_device(device: str, require_available: bool = True) -> str:
    """Validate a device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).

    Parameters
    ----------
    device : str
        The requested device.
    require_available : bool, default True
        Check that CUDA is usable in this process (off for Ray, whose workers hold the GPUs).

    Returns
    -------
    str
        The normalised device string.

    Raises
    ------
    ValueError
        Unknown device, or CUDA requested where it is not available.
    """
    try:
        dev = torch.device(device)
    except (RuntimeError, TypeError):
        raise ValueError(f"unknown device {device!r}; expected 'cpu' or 'cuda'") from None
    if dev.type not in ("cpu", "cuda"):
        raise ValueError(f"unsupported device {device!r}; expected 'cpu' or 'cuda'")
    if dev.type == "cuda" and require_available and not torch.cuda.is_available():
        why = "torch was built without CUDA" if torch.version.cuda is None else "no GPU is visible"
        raise ValueError(f"device {device!r} requested but CUDA is not available ({why})")
    return str(dev)


def _squared_error(pred, Y: torch.Tensor, where: str) -> float:
    """Mean over samples of the squared error summed over the k outputs (PAPER.md 1)."""
    pred = torch.as_tensor(pred).detach().to(device="cpu", dtype=torch.float64)
    if pred.dim() == 1 and Y.shape[1] == 1:
        pred = pred[:, None]
    if pred.shape != Y.shape:
        raise ValueError(
            f"{where}: predict returned shape {tuple(pred.shape)}, expected {tuple(Y.shape)}"
        )
    return float((pred - Y).pow(2).sum(dim=1).mean())


def run_trial(config: dict, device: str = "cpu") -> dict:
    """Run one trial: sample the concept, fit the learner, measure train and test error.

    Parameters
    ----------
    config : dict
        A trial config as built by :func:`fastkernels.experiments.spec.expand`.
    device : str, default "cpu"
        Passed to the learner as ``device`` when its constructor accepts it; otherwise the data
        are moved there (so the learner computes where its inputs live).

    Returns
    -------
    dict
        ``test_error``, ``train_error`` (float; mean over samples of the squared error summed over
        the k outputs), ``threshold`` (k alpha^2), ``k``, ``hparams`` (dict, from
        ``est.hparams_``, plus ``fit_time_s`` and ``fit_peak_rss_mib``: the fit's wall time
        and its peak resident memory above the resident memory at its start, i.e. with the data
        already in memory), ``wall_time_s`` (the whole trial, data generation included),
        ``versions`` (dict) and ``finished_at`` (ISO 8601, UTC).
    """
    from ..concepts import make_concept
    from ..learners import learner_params, make_learner

    t0 = time.perf_counter()
    seed = int(config["seed"])
    concept = make_concept(config["concept"]["name"], **config["concept"]["params"])
    X, Y = concept.sample(int(config["n_train"]))
    Xt, Yt = concept.test_set(int(config["n_test"]))

    ltype = config["learner"]["type"]
    params = dict(config["learner"]["params"])
    accepted = learner_params(ltype)
    if "random_state" in accepted:
        params["random_state"] = seed
    if "verbose" in accepted and "verbose" not in params:
        # The sweep's own progress bar reports progress; per-fit bars and messages would
        # interleave with it.
        params["verbose"] = False
    if "device" in accepted:
        params["device"] = device
        Xf, Yf, Xtf = X, Y, Xt
    else:
        Xf, Yf, Xtf = X.to(device), Y.to(device), Xt.to(device)
    # Learners without random_state still draw from torch's global generator: seed it so the
    # trial is reproducible from its config alone.
    torch.manual_seed(seed)
    est = make_learner(ltype, **params)
    if params.get("selection") == "test":
        # The paper's practice, reproduced on request: hyperparameters chosen by test error.
        # The learner records selection="test" in its hparams, so the row says so.
        Ytf = Yt.to(Xtf.device)
        _, fit_s, fit_peak = measure(lambda: est.fit(Xf, Yf, Xtf, Ytf))
    else:
        _, fit_s, fit_peak = measure(lambda: est.fit(Xf, Yf))
    label = config["learner"].get("label", ltype)
    test_error = _squared_error(est.predict(Xtf), Yt, f"{label}.predict")
    train_error = _squared_error(est.predict(Xf), Y, f"{label}.predict")
    hparams = dict(getattr(est, "hparams_", None) or {})
    info = getattr(est, "solver_info_", None)
    if info:
        # The solve's status travels with the result: a number from an unconverged solve must
        # say so wherever the row goes.
        hparams["solver_status"] = {
            key: info.get(key)
            for key in ("converged", "iterations", "final_residual", "compute_dtype",
                        "jitter", "stop_reason")
        }  # fmt: skip
    # What the fit cost, kept with its result (peak: resident memory above the data's).
    hparams["fit_time_s"] = round(fit_s, 3)
    if not math.isnan(fit_peak):
        hparams["fit_peak_rss_mib"] = round(fit_peak, 1)
    return {
        "test_error": test_error,
        "train_error": train_error,
        "threshold": float(concept.threshold),
        "k": int(concept.k),
        "hparams": _jsonable(hparams),
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _row(trial: Trial, sweep: str, result: dict) -> dict:
    cfg = trial.config
    return {
        "key": trial.key,
        "sweep": sweep,
        "label": trial.label,
        "learner_type": trial.learner_type,
        "concept": cfg["concept"]["name"],
        "n_train": trial.n_train,
        "n_test": cfg["n_test"],
        "width": trial.width,
        "alpha": trial.alpha,
        "beta": trial.beta,
        "k": result["k"],
        "seed": trial.seed,
        "test_error": result["test_error"],
        "train_error": result["train_error"],
        "threshold": result["threshold"],
        "hparams": result["hparams"],
        "wall_time_s": result["wall_time_s"],
        "versions": result["versions"],
        "config": cfg,
        "finished_at": result["finished_at"],
    }


def _describe(trial: Trial) -> str:
    s = f"{trial.label} N={trial.n_train} seed={trial.seed}"
    return s if trial.width is None else s + f" w={trial.width}"


def run_sweep(
    spec: SweepSpec,
    store: ResultsStore | str | Path,
    device: str = "cpu",
    executor: str = "local",
    progress: bool = True,
    ray_address: str | None = None,
) -> SweepResult:
    """Run every trial of ``spec`` that is not yet in ``store``, storing each as it finishes.

    Parameters
    ----------
    spec : SweepSpec
        The sweep (see :func:`fastkernels.experiments.spec.load_spec`).
    store : ResultsStore or path
        Results store; a path is opened (created if needed) and closed again.
    device : {"cpu", "cuda", "cuda:<i>"}
        Where trials compute.
    executor : {"local", "ray"}
        ``"local"`` runs trials in order in this process; ``"ray"`` submits one Ray task per
        trial (``num_gpus=1`` for CUDA) and stores results as they complete.
    progress : bool, default True
        Show a tqdm bar (stderr) with ETA and the current trial.
    ray_address : str, optional
        Passed to ``ray.init(address=...)`` when Ray is not initialised yet.

    Returns
    -------
    SweepResult

    Raises
    ------
    TrialError
        A trial failed (message names label, N, seed); rows finished before it are stored.
    ImportError
        ``executor="ray"`` without Ray installed (raised before anything runs).
    ValueError
        Unknown executor or unusable device.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    ray = _import_ray() if executor == "ray" else None
    device = check_device(device, require_available=executor == "local")
    trials = expand(spec)

    own_store = not isinstance(store, ResultsStore)
    st = ResultsStore(store) if own_store else store
    try:
        st.record_sweep(spec.name, spec.description, spec.to_dict())
        done = st.finished_keys()
        todo = [t for t in trials if t.key not in done]
        skipped = len(trials) - len(todo)
        if skipped and progress:
            print(
                f"{spec.name}: {skipped} of {len(trials)} trials already stored, skipped",
                file=sys.stderr,
            )
        if todo:
            from tqdm import tqdm

            with tqdm(
                total=len(todo), desc=spec.name, unit="trial", disable=not progress, file=sys.stderr
            ) as bar:
                if ray is None:
                    _run_local(spec, todo, st, device, bar)
                else:
                    _run_ray(ray, spec, todo, st, device, bar, ray_address)
        return SweepResult(total=len(trials), skipped=skipped, ran=len(todo))
    finally:
        if own_store:
            st.close()


def _run_local(spec, todo, store, device, bar) -> None:
    for trial in todo:
        bar.set_postfix_str(_describe(trial), refresh=True)
        try:
            result = run_trial(trial.config, device)
        except Exception as exc:
            raise TrialError(trial, exc) from exc
        store.add(_row(trial, spec.name, result))
        bar.update(1)


def _import_ray():
    try:
        import ray
    except ImportError:
        raise ImportError(
            "executor 'ray' needs the 'ray' package, which is not installed "
            "(pip install 'fastkernels[ray]'), or use executor 'local'"
        ) from None
    return ray


def _run_ray(ray, spec, todo, store, device, bar, address) -> None:  # pragma: no cover - no ray
    if not todo:
        return
    if not ray.is_initialized():
        ray.init(address=address)
    gpus = 1 if device.startswith("cuda") else 0
    remote = ray.remote(num_gpus=gpus)(run_trial)
    pending = {remote.remote(t.config, device): t for t in todo}
    while pending:
        ready, _ = ray.wait(list(pending), num_returns=1)
        ref = ready[0]
        trial = pending.pop(ref)
        try:
            result = ray.get(ref)
        except Exception as exc:
            _store_finished(ray, pending, spec, store)
            # Ray's task error also inherits from the original exception class; its `cause`
            # is the original exception, whose message is the readable one.
            cause = getattr(exc, "cause", None)
            raise TrialError(trial, cause if isinstance(cause, BaseException) else exc) from exc
        store.add(_row(trial, spec.name, result))
        bar.set_postfix_str(f"done: {_describe(trial)}", refresh=False)
        bar.update(1)


def _store_finished(ray, pending, spec, store) -> None:  # pragma: no cover - no ray
    """After a failure: keep the results that already finished, cancel the rest."""
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
    for ref in ready:
        try:
            store.add(_row(pending[ref], spec.name, ray.get(ref)))
        except Exception:  # noqa: S110 - the first failure is the one reported
            pass
    for ref in pending:
        if ref not in ready:
            ray.cancel(ref)
