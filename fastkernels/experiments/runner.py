"""Run the trials of a sweep and store each result as it finishes.

:func:`run_trial` is a pure function of a trial config (plus the device), so it can run in this
process, in a fresh worker process or in a Ray worker. :func:`run_sweep` skips the keys already
in the store, claims each remaining trial before running it (so processes sharing a store share
the work), and writes one row per finished trial with the fit's status (solver convergence,
divergence, grid-edge selections) and cost; a failed trial writes nothing and stops the sweep
after the rows before it are safely committed.

Executors: ``"local"`` runs the trials one after another, each in a fresh process forked from a
preloaded server; ``"ray"`` runs them as Ray tasks on a Ray cluster (a local one by default),
each requesting :data:`RAY_CPUS_PER_TRIAL` CPUs (and one GPU for ``device="cuda"``); see
:func:`run_sweep` for what the workers are sent and what happens when one dies.
"""

from __future__ import annotations

import datetime as _dt
import importlib
import logging
import math
import multiprocessing
import os
import platform
import site
import socket
import sys
import threading
import time
import warnings
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from .._resources import measure
from .report import status_counts
from .spec import SweepSpec, Trial
from .store import (
    CLAIM_TTL_S,
    Owner,
    ResultsStore,
    StoreError,
    _jsonable,
    _process_start,
    process_alive,
    spill,
)
from .trials import expand

__all__ = [
    "TrialError",
    "TrialProcessDied",
    "SweepResult",
    "run_trial",
    "run_sweep",
    "fit_status",
    "check_device",
    "versions",
]

EXECUTORS = ("local", "ray")
# What one trial requests from Ray: the sweep files have no resource field, so every trial asks
# for this many CPUs (and runs this many torch threads) unless run_sweep's cpus_per_trial (the
# CLI's --cpus-per-trial) says otherwise; device="cuda" adds one GPU.
RAY_CPUS_PER_TRIAL = 1
# Ray re-runs a task whose worker process died (killed, node lost) or whose trial process died
# (TrialProcessDied) up to this many times before the sweep stops with the error.
RAY_MAX_RETRIES = 2
# How long to wait for a TCP connection to --ray-address before calling it unreachable.
RAY_CONNECT_TIMEOUT_S = 10.0


class TrialProcessDied(RuntimeError):
    """The process running a trial died (killed by a signal, e.g. by the system when out of
    memory): a failure of the machine, not of the trial's code, which the Ray executor retries."""


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
    """What :func:`run_sweep` did.

    Attributes
    ----------
    total : int
        Trials in the sweep.
    skipped : int
        Already stored when the run started.
    ran : int
        Computed by this process.
    by_others : int
        Computed meanwhile by other processes sharing the store (this run waited for them).
    unused : int
        Stored trials under this sweep's name that the sweep no longer has (an earlier version
        of it); the report shows them as configurations of their own.
    imported : int
        Results recovered from files an earlier run could not write to the store.
    flagged : dict
        Flag -> number of the sweep's stored trials with it (``unconverged``, ``diverged``,
        ``grid_edge``); only flags that occur.
    """

    total: int
    skipped: int
    ran: int
    by_others: int = 0
    unused: int = 0
    imported: int = 0
    flagged: dict = field(default_factory=dict)


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
        A trial config as built by :func:`fastkernels.experiments.trials.expand`.
    device : str, default "cpu"
        Passed to the learner as ``device`` when its constructor accepts it; otherwise the data
        are moved there (so the learner computes where its inputs live).

    Returns
    -------
    dict
        ``test_error``, ``train_error`` (float; mean over samples of the squared error summed over
        the k outputs), ``zero_error`` (the same for the zero predictor), ``threshold``
        (k alpha^2), ``k``, ``hparams`` (dict, from ``est.hparams_``), ``status`` and ``flags``
        (see :func:`fit_status`), ``fit_time_s`` (the fit's wall time), ``peak_rss_mib`` (the
        fit's peak resident memory above the resident memory at its start, i.e. with the data
        already in memory; NaN where it cannot be measured), ``wall_time_s`` (the whole trial,
        data generation included), ``versions`` (dict) and ``finished_at`` (ISO 8601, UTC).

    Notes
    -----
    Warnings raised while fitting are recorded in ``status["warnings"]`` (they belong to the
    row) instead of being printed into the sweep's progress bar.
    """
    return run_trials([config], device)[0]


def run_trials(configs: list[dict], device: str = "cpu") -> list[dict]:
    """Run trials that differ only in their seed; one result per config, as :func:`run_trial`.

    A learner class with a ``fit_together(estimators, datasets)`` function (the networks) fits
    the trials' estimators together, as one stacked ensemble; each still gets its own data,
    init, order, selection and status. Otherwise the trials run one after the other. With
    several trials fitted together, ``fit_time_s`` is the joint fit's wall time divided by the
    number of trials and ``peak_rss_mib`` the joint fit's peak; ``status["fitted_with"]`` says
    how many trials shared the fit.
    """
    from ..learners import LEARNERS

    if not configs:
        return []
    together = getattr(LEARNERS.get(configs[0]["learner"]["type"]), "fit_together", None)
    if len(configs) == 1 or together is None:
        return [_run_prepared([_prepare_trial(c, device)])[0] for c in configs]
    return _run_prepared([_prepare_trial(c, device) for c in configs], together)


@dataclass
class _Prepared:
    """A trial ready to fit: its data (on the fit's device) and its estimator."""

    config: dict
    t0: float
    concept: Any
    X: torch.Tensor
    Y: torch.Tensor
    Yt: torch.Tensor
    Xf: torch.Tensor
    Yf: torch.Tensor
    Xtf: torch.Tensor
    select: bool
    est: Any


def _prepare_trial(config: dict, device: str) -> _Prepared:
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
    select = params.get("selection") == "test"
    return _Prepared(config, t0, concept, X, Y, Yt, Xf, Yf, Xtf, select, est)


def _fit_args(p: _Prepared) -> tuple:
    # selection="test": the paper's practice, reproduced on request: hyperparameters chosen by
    # test error. The learner records selection="test" in its hparams, so the row says so.
    return (p.Xf, p.Yf, p.Xtf, p.Yt.to(p.Xtf.device)) if p.select else (p.Xf, p.Yf)


def _run_prepared(trials: list[_Prepared], together=None) -> list[dict]:
    """Fit (jointly with ``together``, else the single trial) and evaluate every trial."""
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if together is None:
            (p,) = trials
            _, fit_s, fit_peak = measure(lambda: p.est.fit(*_fit_args(p)))
        else:
            _, fit_s, fit_peak = measure(
                lambda: together([p.est for p in trials], [_fit_args(p) for p in trials])
            )
            fit_s /= len(trials)
        results = []
        for p in trials:
            label = p.config["learner"].get("label", p.config["learner"]["type"])
            with warnings.catch_warnings(record=True) as own:
                warnings.simplefilter("always")
                test_error = _squared_error(p.est.predict(p.Xtf), p.Yt, f"{label}.predict")
                train_error = _squared_error(p.est.predict(p.Xf), p.Y, f"{label}.predict")
            results.append((p, test_error, train_error, own))
    out = []
    for p, test_error, train_error, own in results:
        # A joint fit's warnings name no trial: each trial keeps those of its own estimator
        # (fit_messages_) and of its own predictions.
        fit_msgs = getattr(p.est, "fit_messages_", None) if together is not None else None
        raw = (caught if fit_msgs is None else []) + own
        messages = list(fit_msgs or []) + [str(w.message) for w in raw]
        messages = list(dict.fromkeys(" ".join(m.split()) for m in messages))
        hparams = dict(getattr(p.est, "hparams_", None) or {})
        status, flags = fit_status(p.est, test_error, train_error, messages)
        if together is not None:
            status["fitted_with"] = len(trials)
        concept = p.concept
        out.append(
            {
                "test_error": test_error,
                "train_error": train_error,
                "zero_error": float(p.Yt.to(torch.float64).pow(2).sum(dim=1).mean()),
                "threshold": float(concept.threshold),
                "k": int(concept.k),
                "hparams": _jsonable(hparams),
                "status": _jsonable(status),
                "flags": flags,
                "fit_time_s": fit_s,
                "peak_rss_mib": fit_peak,
                "wall_time_s": time.perf_counter() - p.t0,
                "versions": versions(),
                "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
            }
        )
    return out


def fit_status(est, test_error: float, train_error: float, messages=()) -> tuple[dict, list]:
    """What a fit says about its own trustworthiness, and the flags that follow from it.

    Parameters
    ----------
    est : estimator
        A fitted learner.
    test_error, train_error : float
        Its errors (non-finite: the predictions are unusable).
    messages : sequence of str
        Warnings raised by the fit (kept, at most 10).

    Returns
    -------
    status : dict
        ``kind`` ("kernel", "network" or "other"), ``grid_edge`` (list of str: hyperparameters
        chosen at the edge of their grid), ``warnings``; for kernel learners (those with
        ``solver_info_``) ``solver``, ``iterations``, ``final_residual`` (the true relative
        residual), ``converged``, ``n_centers``, ``compute_dtype``, ``jitter``, ``stop_reason``;
        for networks (those with ``loss_history_``) ``final_loss`` and ``diverged``.
    flags : list of str
        Among :data:`~fastkernels.experiments.store.FLAGS`: ``"unconverged"`` (a kernel solve
        that did not reach its tolerance), ``"diverged"`` (a network whose training loss or any
        learner whose predictions are not finite), ``"grid_edge"``.
    """
    hp = getattr(est, "hparams_", None) or {}
    status: dict = {"kind": "other", "grid_edge": [str(e) for e in hp.get("grid_edge") or []]}
    info = getattr(est, "solver_info_", None)
    if info:
        status["kind"] = "kernel"
        status.update(
            solver=info.get("solver") or hp.get("solver"),
            iterations=info.get("iterations"),
            final_residual=info.get("final_residual"),
            converged=bool(info.get("converged")),
            n_centers=hp.get("n_centers"),
            compute_dtype=info.get("compute_dtype"),
            jitter=info.get("jitter"),
            stop_reason=info.get("stop_reason"),
        )
    elif hasattr(est, "loss_history_") or "final_loss" in hp:
        status["kind"] = "network"
        history = getattr(est, "loss_history_", None) or [math.nan]
        final = float(hp.get("final_loss", history[-1]))
        status.update(final_loss=final, diverged=bool(hp.get("diverged", not math.isfinite(final))))
    status["warnings"] = list(messages)[:10]
    flags = []
    if status.get("converged") is False:
        flags.append("unconverged")
    if status.get("diverged") or not (math.isfinite(test_error) and math.isfinite(train_error)):
        flags.append("diverged")
    if status["grid_edge"]:
        flags.append("grid_edge")
    return status, flags


def _row(trial: Trial, sweep: str, result: dict, device: str) -> dict:
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
        "config_hash": trial.config_hash,
        "status": result["status"],
        "flags": result["flags"],
        "fit_time_s": result["fit_time_s"],
        "peak_rss_mib": result["peak_rss_mib"],
        "zero_error": result["zero_error"],
        "device": device,
    }


def _describe(trial: Trial, seeds: str | None = None) -> str:
    """The trial in a few words (``seeds``: the seeds of its job, in place of its own)."""
    s = f"{trial.label} N={trial.n_train} " + (f"seed={trial.seed}" if seeds is None else seeds)
    return s if trial.width is None else s + f" w={trial.width}"


def run_sweep(
    spec: SweepSpec,
    store: ResultsStore | str | Path,
    device: str = "cpu",
    executor: str = "local",
    progress: bool = True,
    ray_address: str | None = None,
    isolation: str = "process",
    poll_s: float = 1.0,
    cpus_per_trial: int | None = None,
) -> SweepResult:
    """Run every trial of ``spec`` that is not yet in ``store``, storing each as it finishes.

    Each trial is claimed in the store before it runs, so several processes (on one machine or
    on several sharing the file) can run the same sweep on one store and compute each trial
    once; a process waits for the trials others are computing, and takes over those whose
    process died.

    Parameters
    ----------
    spec : SweepSpec
        The sweep (see :func:`fastkernels.experiments.spec.load_spec`).
    store : ResultsStore or path
        Results store; a path is opened (created if needed) and closed again.
    device : {"cpu", "cuda", "cuda:<i>"}
        Where trials compute.
    executor : {"local", "ray"}
        ``"local"`` runs trials in order from this process; ``"ray"`` runs one Ray task per
        trial (``num_cpus=cpus_per_trial``, plus ``num_gpus=1`` for CUDA) and stores results as
        they complete. See Notes.
    progress : bool, default True
        Show a tqdm bar (stderr) with ETA and the current trial.
    ray_address : str, optional
        The Ray cluster (``"host:port"`` of its head, ``"ray://host:port"``, ``"auto"``) when Ray
        is not initialised in this process yet; default ``$RAY_ADDRESS``, else (or
        ``"local"``) a local Ray instance started for the sweep and stopped after it.
    isolation : {"process", "none"}, default "process"
        ``"process"``: each local trial runs in a fresh worker process (forked from a server
        that has imported torch, so it starts in well under a second), so that its peak memory
        is its own and not hidden by memory an earlier trial left to the allocator, and a trial
        killed by the system stops the sweep with a clear error. ``"none"``: in this process.
    poll_s : float, default 1.0
        How often to look at the trials other processes are computing.
    cpus_per_trial : int, optional
        Executor ``"ray"`` only: the CPUs each trial requests from Ray and the torch threads it
        runs with (default :data:`RAY_CPUS_PER_TRIAL`, i.e. 1).

    Returns
    -------
    SweepResult

    Notes
    -----
    With ``executor="ray"``, before the store is opened: the cluster is reached or the local
    instance started (a one-line ``ConnectionError`` if not), and a node must have the CPUs and
    GPU a trial requests (else ``ValueError``). The job's ``runtime_env`` sets ``PYTHONPATH`` to
    the code folders of this process's ``sys.path`` (the checkout, the folder of a learner
    registered at run time), so that the workers import what the local trial processes would
    (Ray itself passes on only the working directory). On a cluster, a probe task then finds
    out whether the workers import this process's ``fastkernels``; where they find none, or
    another copy, the job is started again with the package shipped in ``py_modules``, so that
    remote workers run this process's code. (Where the caller has initialised Ray, the
    ``PYTHONPATH`` goes with each task, and a package missing on the workers is a
    ``ValueError``: a ``runtime_env`` uploads folders only when the job starts.)

    On a CPU a Ray worker runs each of its trials in a fresh process forked from a preloaded
    server (as ``isolation="process"`` does locally), so the recorded peak memory is the trial's
    own; with CUDA each trial gets a fresh Ray worker (``max_calls=1``). A trial whose Ray worker
    or trial process dies (killed, out of memory, node lost) is re-run by Ray up to
    :data:`RAY_MAX_RETRIES` times; this process holds the trial's claim meanwhile, so no other
    process sharing the store takes it over, and the store keeps one row per trial. Only when
    the retries are exhausted does the sweep stop with a :class:`TrialError`; a new run then
    picks up the trial like any unfinished one. At most twice as many trials as the cluster can
    run at once are claimed and submitted at a time, the rest stay free for other processes
    sharing the store.

    Raises
    ------
    StoreError
        The store is unusable (foreign, corrupt, read-only, locked): raised before any trial
        runs. A write that fails later keeps the trial's result in a file next to the store
        (or in the temporary folder), named in the message and imported by the next run.
    TrialError
        A trial failed (message names label, N, seed); rows finished before it are stored.
    ImportError
        ``executor="ray"`` without Ray installed (raised before anything runs).
    ConnectionError
        ``executor="ray"``: the Ray cluster cannot be reached or started (before any trial).
    ValueError
        Unknown executor, isolation or unusable device; with Ray, a resource request no node of
        the cluster can meet (before any trial).
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    if isolation not in ISOLATIONS:
        raise ValueError(f"unknown isolation {isolation!r}; expected one of {ISOLATIONS}")
    if cpus_per_trial is not None and executor != "ray":
        raise ValueError("cpus_per_trial applies to executor 'ray' only")
    cpus = RAY_CPUS_PER_TRIAL if cpus_per_trial is None else cpus_per_trial
    if isinstance(cpus, bool) or not isinstance(cpus, int) or cpus < 1:
        raise ValueError(f"cpus_per_trial must be a positive integer, got {cpus_per_trial!r}")
    ray = import_ray() if executor == "ray" else None
    device = check_device(device, require_available=executor == "local")
    if ray is not None and device.startswith("cuda:"):
        raise ValueError(
            f"device {device!r} with executor 'ray': Ray assigns each trial its GPU; use 'cuda'"
        )
    trials = expand(spec)

    # Ray is reached (or started) and checked before the store is touched: an unreachable
    # cluster or a request it cannot meet leaves nothing behind.
    session = _RaySession(ray, ray_address, device, cpus) if ray is not None else None
    try:
        return _run_sweep(spec, store, trials, device, progress, session, isolation, poll_s)
    finally:
        if session is not None:
            session.close()


def _run_sweep(spec, store, trials, device, progress, session, isolation, poll_s) -> SweepResult:
    own_store = not isinstance(store, ResultsStore)
    st = ResultsStore(store) if own_store else store
    try:
        imported = st.import_spills()
        st.record_sweep(spec.name, spec.description, spec.to_dict())
        keys = {t.key for t in trials}
        done = st.finished_keys()
        unused = sum(1 for r in st.rows(sweep=spec.name) if r["key"] not in keys)
        todo = [t for t in trials if t.key not in done]
        skipped = len(trials) - len(todo)
        if progress and (skipped or unused or imported):
            parts = []
            if imported:
                parts.append(f"{imported} unsaved results recovered")
            if skipped:
                parts.append(f"{skipped} of {len(trials)} trials already stored, skipped")
            if unused:
                parts.append(
                    f"{unused} stored trials of an earlier version of {spec.name!r} are not in "
                    "it now (reported as separate configurations)"
                )
            print(f"{spec.name}: {'; '.join(parts)}", file=sys.stderr)
        ran = by_others = 0
        if todo:
            from tqdm import tqdm

            owner = Owner.this_process()
            beat = _Heartbeat(st.path, owner)
            beat.start()
            try:
                with tqdm(
                    total=len(todo),
                    desc=spec.name,
                    unit="trial",
                    disable=not progress,
                    file=sys.stderr,
                ) as bar:
                    ctx = _RunContext(spec, st, device, bar, owner, poll_s)
                    if session is None:
                        _run_local(ctx, todo, isolation)
                    else:
                        _run_ray(session, ctx, todo)
                    ran, by_others = ctx.ran, ctx.by_others
            finally:
                beat.stop()
        flagged = status_counts([row for row in st.rows() if row["key"] in keys])
        return SweepResult(
            total=len(trials),
            skipped=skipped,
            ran=ran,
            by_others=by_others,
            unused=unused,
            imported=imported,
            flagged=flagged,
        )
    finally:
        if own_store:
            st.close()


ISOLATIONS = ("process", "none")


@dataclass
class _RunContext:
    """What the executors share: the store, this process's claims and the counts."""

    spec: SweepSpec
    store: ResultsStore
    device: str
    bar: Any
    owner: Owner
    poll_s: float
    ran: int = 0
    by_others: int = 0

    def claim(self, trial: Trial) -> str:
        state = self.store.claim(trial.key, self.owner)
        if state == "done":
            self.by_others += 1
            self.bar.update(1)
        return state

    def claim_job(self, job: list[Trial]) -> tuple[list[Trial], list[Trial]]:
        """Claim each trial of a job: (the claimed ones, those busy in other processes)."""
        states = [self.claim(trial) for trial in job]
        return (
            [t for t, s in zip(job, states) if s == "claimed"],
            [t for t, s in zip(job, states) if s == "busy"],
        )

    def finished(self, trial: Trial, result: dict) -> None:
        """Store a result; if the store refuses it, keep it in a file and stop the sweep."""
        row = _row(trial, self.spec.name, result, self.device)
        try:
            self.store.add(row, self.owner)
        except StoreError as exc:
            self.release(trial)
            try:
                kept = spill(self.store.path, [row])
            except OSError as err:
                raise StoreError(
                    f"{exc}; the result of {_describe(trial)} could not be kept either ({err})"
                ) from None
            raise StoreError(
                f"{exc}; the result of {_describe(trial)} is kept in {kept} and is added to "
                "the store by the next run"
            ) from None
        self.ran += 1
        self.bar.update(1)

    def release(self, trial: Trial) -> None:
        try:
            self.store.release(trial.key, self.owner)
        except StoreError:  # the claim expires with this process anyway
            pass

    def wait(self, waiting: list[Trial]) -> None:
        self.bar.set_postfix_str(
            f"waiting for {len(waiting)} trials computed by other processes", refresh=True
        )
        time.sleep(self.poll_s)


def _seedless(config: dict) -> str:
    """A trial's config without its seed: trials equal in it differ only in their seed."""
    from .trials import canonical_json

    c = {**config, "seed": None}
    c["concept"] = {**config["concept"], "params": {**config["concept"]["params"], "seed": None}}
    return canonical_json(c)


def jobs(trials: list[Trial]) -> list[list[Trial]]:
    """The units of work: trials of a learner that fits seeds together (a ``fit_together`` on
    its class, the networks) that differ only in their seed form one job, up to the learner's
    ``fit_together_limit`` per job; every other trial is a job of its own. Order: that of each
    job's first trial."""
    from ..learners import LEARNERS, make_learner

    out: list[list[Trial]] = []
    open_jobs: dict[str, list[Trial]] = {}
    limits: dict[str, int] = {}
    for t in trials:
        cls = LEARNERS.get(t.learner_type)
        if getattr(cls, "fit_together", None) is None:
            out.append([t])
            continue
        key = _seedless(t.config)
        if key not in limits:
            limits[key] = 1
            limit = getattr(cls, "fit_together_limit", None)
            if limit is not None:
                try:
                    est = make_learner(t.learner_type, **t.config["learner"]["params"])
                    concept = t.config["concept"]["params"]
                    limits[key] = est.fit_together_limit(
                        int(concept.get("d", 1)), int(concept.get("k", 1))
                    )
                except Exception:  # noqa: BLE001 - the trial reports its own error when run
                    limits[key] = 1
        job = open_jobs.get(key)
        if job is None or len(job) >= limits[key]:
            job = open_jobs[key] = []
            out.append(job)
        job.append(t)
    return out


def _run_local(ctx: _RunContext, todo: list[Trial], isolation: str) -> None:
    worker = _TrialProcess() if isolation == "process" else None
    try:
        pending = list(todo)
        while pending:
            waiting = []
            for job in jobs(pending):
                claimed, busy = ctx.claim_job(job)
                waiting.extend(busy)
                if not claimed:
                    continue
                ctx.bar.set_postfix_str(_describe_job(claimed), refresh=True)
                configs = [t.config for t in claimed]
                try:
                    if worker is None:
                        results = run_trials(configs, ctx.device)
                    else:
                        results = worker.run(configs, ctx.device)
                except BaseException as exc:
                    for trial in claimed:
                        ctx.release(trial)
                    if isinstance(exc, Exception):
                        raise TrialError(claimed[0], exc) from exc
                    raise
                for trial, result in zip(claimed, results):
                    ctx.finished(trial, result)
            pending = waiting
            if pending:
                ctx.wait(pending)
    finally:
        if worker is not None:
            worker.close()


def _describe_job(job: list[Trial]) -> str:
    if len(job) == 1:
        return _describe(job[0])
    return _describe(job[0], "seeds=" + ",".join(str(t.seed) for t in job))


_OWN_ENTRY = object()


class _TrialProcess:
    """Runs trials one at a time, each in a fresh process forked from a preloaded server.

    A fresh process per trial makes the peak memory of ``measure`` the trial's own: in a
    long-lived process, memory an earlier trial freed stays with the allocator, is reused, and
    a later trial's peak reads as zero.
    """

    def __init__(self):
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            # Imported once by the server; every trial process is a fork of it.
            ctx.set_forkserver_preload(list(_PRELOAD))
        me = os.getpid()
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=ctx,
            max_tasks_per_child=1,
            initializer=_worker_init,
            initargs=(me, _process_start(me)),
        )

    def run(self, config, device: str, entry=_OWN_ENTRY, threads: int | None = None):
        """Run one trial (a config: its result) or one job (a list of configs differing only
        in seed: their results, :func:`run_trials`) in a fresh process; ``entry``: the
        learner's registry entry (default: this process's), ``threads``: torch threads of the
        trial (default: torch's)."""
        from concurrent.futures.process import BrokenProcessPool

        if entry is _OWN_ENTRY:
            from ..learners import LEARNERS

            first = config[0] if isinstance(config, list) else config
            entry = LEARNERS.get(first["learner"]["type"])
        try:
            return self._pool.submit(_worker_trial, config, device, entry, threads).result()
        except BrokenProcessPool:
            raise TrialProcessDied(
                "the trial's worker process died (killed by a signal, e.g. by the system when "
                "out of memory)"
            ) from None

    def close(self) -> None:
        # Interrupted or not, no trial process may outlive the sweep.
        for proc in list(getattr(self._pool, "_processes", {}).values()):
            if proc.is_alive():
                proc.kill()
        self._pool.shutdown(wait=True, cancel_futures=True)


# Everything a fit imports on first use (seconds and over 100 MiB with torch._dynamo and the
# optional backends), so that neither is charged to each trial's fit time and peak memory.
_PRELOAD = (
    "torch._dynamo",  # the first call of a custom op imports it (and sympy)
    "fastkernels.experiments.runner",
    "fastkernels.concepts",
    "fastkernels.ops",  # with the KeOps module; Triton only where CUDA is available
    "fastkernels.kernels",
    "fastkernels.solvers",
    "fastkernels.models",
    "fastkernels.ntk",
    "fastkernels.learners",
)


def _worker_init(parent_pid: int, parent_start: str | None) -> None:
    """In a trial process: exit as soon as the sweep process that asked for it is gone.

    A trial process is a child of the fork server, not of the sweep, and it holds the pipe
    that tells the server its client is alive: without this watch a SIGKILLed sweep would leave
    the server and its trial process running for good.
    """

    def watch():
        while process_alive(parent_pid, parent_start):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="fastkernels-parent-watch", daemon=True).start()


def _worker_trial(config, device: str, entry, threads: int | None = None):
    """One trial (a config) or one job (a list of configs, :func:`run_trials`)."""
    configs = config if isinstance(config, list) else [config]
    if entry is not None:
        # The parent's registry entry (a learner registered at run time, e.g. by a plugin).
        from ..learners import LEARNERS

        LEARNERS[configs[0]["learner"]["type"]] = entry
    if threads is not None:
        torch.set_num_threads(threads)
    results = run_trials(configs, device)
    return results if isinstance(config, list) else results[0]


class _Heartbeat:
    """Refreshes this process's claims while it runs (:meth:`ResultsStore.heartbeat`), from a
    thread with its own connection.

    On one machine a claim lives as long as its process; across machines (a store on a shared
    file system) it lives while its heartbeat is fresher than the claim TTL.
    """

    def __init__(self, path: Path, owner: Owner, every_s: float = CLAIM_TTL_S / 5):
        self._path, self._owner, self._every = path, owner, every_s
        self._stop = threading.Event()
        self._thread = threading.Thread(
            target=self._loop, name="fastkernels-heartbeat", daemon=True
        )

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)

    def _loop(self) -> None:
        store = None  # its own connection: SQLite connections stay in their thread
        try:
            while not self._stop.wait(self._every):
                try:
                    store = store or ResultsStore(self._path)
                    store.heartbeat(self._owner)
                except StoreError:  # a busy store: the next beat will do
                    pass
        finally:
            if store is not None:
                store.close()


def import_ray():
    """The ``ray`` module, or an ImportError that says how to install it."""
    try:
        import ray
    except ImportError:
        raise ImportError(
            "executor 'ray' needs the 'ray' package, which is not installed "
            "(pip install 'fastkernels[ray]'), or use executor 'local'"
        ) from None
    return ray


class _RaySession:
    """This sweep's use of a Ray cluster: connection, resource checks, runtime_env, the task.

    Everything that can fail before a trial runs fails in the constructor, as one line.
    """

    def __init__(self, ray, address: str | None, device: str, cpus: int):
        self.ray, self.device, self.cpus = ray, device, cpus
        self.gpus = 1 if device.startswith("cuda") else 0
        self.started = False
        # None: the tasks inherit the job's runtime_env.
        self.runtime_env: dict | None = None
        if ray.is_initialized():
            # Connected by the caller: the job's runtime_env is theirs; the code folders go
            # with each task, and a package missing on the workers is an error (a runtime_env
            # can upload a folder only when the job starts).
            self.where = "the Ray cluster this process is connected to"
            self._check_resources()
            self.runtime_env = _code_env()
            found = _probe_fastkernels(ray, self.runtime_env, self.where)
            if found != _package_file():
                raise ValueError(
                    f"the workers of {self.where} import {found or 'no fastkernels'}, not "
                    f"{_package_file()}; start Ray with runtime_env={{'py_modules': "
                    f"[{os.path.dirname(_package_file())!r}]}}, or let the sweep connect "
                    "(ray_address, --ray-address) and ship it"
                )
        else:
            # "local" when nothing names a cluster: ray.init() would otherwise connect to the
            # last cluster `ray start` ran on this machine, and wait for minutes where that
            # one is gone. `auto` asks for it.
            address = address or os.environ.get("RAY_ADDRESS") or "local"
            local = address == "local"
            self.where = "the local Ray instance" if local else f"Ray at {address!r}"
            # The job's runtime_env, so that the workers Ray starts ahead of the first task
            # serve the sweep (see _with_package).
            env = _code_env()
            _ray_connect(ray, address, self.where, env)
            self.started = True
            try:
                self._check_resources()
                # A local instance's workers are children of this process with its
                # environment: they import what it imports. A cluster's may not.
                if not local and _probe_fastkernels(ray, None, self.where) != _package_file():
                    ray.shutdown()
                    self.started = False
                    _ray_connect(ray, address, self.where, _with_package(env))
                    self.started = True
            except BaseException:
                self.close()
                raise
        opts: dict[str, Any] = {
            "num_cpus": cpus,
            "num_gpus": self.gpus,
            "max_retries": RAY_MAX_RETRIES,
        }
        if self.runtime_env is not None:
            opts["runtime_env"] = self.runtime_env
        if self.gpus:
            # A fresh Ray worker per trial: Ray gives it its GPU (CUDA_VISIBLE_DEVICES) before
            # CUDA starts, and the trial's memory, host and GPU, is its own.
            self._remote = ray.remote(max_calls=1, **opts)(_ray_trial_in_worker)
        else:
            self._remote = ray.remote(retry_exceptions=[TrialProcessDied], **opts)(
                _ray_trial_in_process
            )

    def _nodes(self) -> list[dict]:
        return [n.get("Resources") or {} for n in self.ray.nodes() if n.get("Alive")]

    def _check_resources(self) -> None:
        nodes = self._nodes()
        if self.gpus and not any(r.get("GPU", 0) >= self.gpus for r in nodes):
            total = sum(r.get("GPU", 0) for r in nodes)
            raise ValueError(
                f"device 'cuda' asks for {self.gpus} GPU per trial, but no node of {self.where} "
                f"has one ({total:g} GPUs in the cluster)"
            )
        if not any(r.get("CPU", 0) >= self.cpus and r.get("GPU", 0) >= self.gpus for r in nodes):
            most = max((r.get("CPU", 0) for r in nodes), default=0)
            raise ValueError(
                f"each trial asks for {self.cpus} CPUs (cpus per trial), but the largest node of "
                f"{self.where} has {most:g}"
            )

    def capacity(self) -> int:
        """Trials the cluster can run at once (at least 1)."""
        n = 0
        for r in self._nodes():
            fit = int(r.get("CPU", 0) // self.cpus)
            if self.gpus:
                fit = min(fit, int(r.get("GPU", 0) // self.gpus))
            n += fit
        return max(n, 1)

    def submit(self, job: list[Trial]):
        """One task for the job (trials differing only in seed, :func:`jobs`); its result is
        the list of the trials' results."""
        from ..learners import LEARNERS

        # The registry entry travels with the task (as to local trial processes), so learners
        # registered at run time (plugins, tests) exist in the workers too.
        entry = LEARNERS.get(job[0].learner_type)
        return self._remote.remote([t.config for t in job], self.device, entry, self.cpus)

    def close(self) -> None:
        if self.started:
            self.started = False
            self.ray.shutdown()


def _ray_connect(ray, address: str | None, where: str, runtime_env: dict | None) -> None:
    """``ray.init``, with an unreachable address as a one-line ConnectionError.

    Ray itself keeps retrying an address where nothing answers (for minutes), so the head is
    first reached with a plain TCP connection.
    """
    if address != "local":
        _check_reachable(address)
    kwargs: dict[str, Any] = {"logging_level": logging.WARNING}
    if runtime_env is not None:
        kwargs["runtime_env"] = runtime_env
    if address == "local":
        # A Ray instance for this sweep alone: no dashboard (seconds of start-up and a web
        # server nobody asked for), and workers at normal priority. Ray starts its workers at
        # nice 15 so that its daemons stay responsive; here the trials are the work, and at
        # nice 15 a trial sharing a core with any normal-priority process gets a few percent of
        # it, where the local executor's trials get their fair share.
        kwargs["include_dashboard"] = False
        kwargs["_system_config"] = {"worker_niceness": 0}
    try:
        ray.init(address=address, **kwargs)
    except Exception as exc:
        msg = " ".join(str(exc).split())
        msg = msg if len(msg) <= 300 else msg[:297] + "..."
        what = "start" if address in (None, "local") else "connect to"
        raise ConnectionError(f"cannot {what} {where}: {type(exc).__name__}: {msg}") from None


def _check_reachable(address: str) -> None:
    target = address
    if address == "auto":
        # The cluster `ray start` last ran on this machine (Ray's own lookup; private, hence
        # best effort: without it ray.init does the lookup, unchecked).
        try:
            from ray._private.services import canonicalize_bootstrap_address
        except ImportError:
            return
        try:
            target = canonicalize_bootstrap_address("auto")
        except Exception as exc:
            msg = " ".join(str(exc).split())
            raise ConnectionError(f"Ray address 'auto': {msg}") from None
        if not target:
            return
    rest = target.split("://", 1)[1] if "://" in target else target
    host, _, port = rest.rpartition(":")
    default_port = 10001 if address.startswith("ray://") else 6379
    if not host:
        host, port = rest, str(default_port)
    try:
        port_n = int(port)
    except ValueError:
        raise ConnectionError(
            f"Ray address {address!r}: expected host:port, ray://host:port or 'auto'"
        ) from None
    try:
        socket.create_connection((host.strip("[]"), port_n), timeout=RAY_CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        why = exc.strerror or str(exc) or type(exc).__name__
        via = "" if target == address else f" ({target})"
        raise ConnectionError(
            f"cannot reach a Ray cluster at {address!r}{via}: {why}; is its head running "
            "(`ray start --head`)?"
        ) from None


def _code_paths() -> list[str]:
    """Folders of this process's ``sys.path`` that are not part of the Python installation
    (stdlib, site-packages): the checkout, test folders, a plugin's folder."""
    installed = {sys.prefix, sys.base_prefix, sys.exec_prefix, sys.base_exec_prefix}
    installed = {os.path.abspath(p) for p in installed}
    site_dirs = {os.path.abspath(p) for p in site.getsitepackages()}
    if site.ENABLE_USER_SITE:
        site_dirs.add(os.path.abspath(site.getusersitepackages()))
    out: list[str] = []
    for entry in sys.path:
        if not entry or not os.path.isdir(entry):
            continue
        path = os.path.abspath(entry)
        inside = any(path == p or path.startswith(p + os.sep) for p in installed)
        if not inside and path not in site_dirs and path not in out:
            out.append(path)
    return out


def _code_env() -> dict:
    """A runtime_env whose ``PYTHONPATH`` starts with :func:`_code_paths`."""
    return {"env_vars": {"PYTHONPATH": os.pathsep.join([*_code_paths(), "${PYTHONPATH}"])}}


def _package_file() -> str:
    """This process's ``fastkernels/__init__.py``."""
    return os.path.realpath(os.path.join(os.path.dirname(__file__), os.pardir, "__init__.py"))


def _with_package(env: dict) -> dict:
    """``env`` plus this process's ``fastkernels`` folder as ``py_modules``.

    ``PYTHONPATH`` (:func:`_code_env`) carries this process's code folders, like the local
    executor's trial processes, which get its ``sys.path``: on this machine, or on nodes that
    share its file system, the workers import the same modules, and registry entries pickled by
    reference (learners registered at run time) resolve; paths a node lacks are skipped by
    Python. The package itself is shipped (uploaded once per cluster, first on the workers'
    path) only where a probe task finds that the workers would import no ``fastkernels`` or
    another copy of it: shipping it always would replace, on nodes that have it installed,
    their own build of the C++ extension by this machine's.
    """
    return {
        **env,
        "py_modules": [os.path.dirname(_package_file())],
        "excludes": ["__pycache__", "*.pyc"],
    }


def _probe_fastkernels(ray, env: dict | None, where: str, timeout_s: float = 120.0) -> str | None:
    """Where a worker (with runtime_env ``env``; None: the job's) finds ``fastkernels``'s
    ``__init__.py`` (None: nowhere)."""

    # Defined here, so that it is pickled by value: a worker without fastkernels can run it.
    # It finds the package without importing it (which would cost seconds of torch imports).
    def probe():
        import importlib.util
        import os

        spec = importlib.util.find_spec("fastkernels")
        return None if spec is None or not spec.origin else os.path.realpath(spec.origin)

    task = ray.remote(num_cpus=0, max_retries=1)(probe)
    ref = (task if env is None else task.options(runtime_env=env)).remote()
    try:
        return ray.get(ref, timeout=timeout_s)
    except ray.exceptions.GetTimeoutError:
        ray.cancel(ref, force=True)
        raise ConnectionError(
            f"{where} did not run a probe task within {timeout_s:g} s (no worker started)"
        ) from None


# The trial process server of this Ray worker (one per worker process, created on first use).
_RAY_TRIALS: _TrialProcess | None = None


def _ray_trial_in_process(config, device: str, entry, threads: int):
    """Ray task (CPU trials): run the trial in a fresh process forked from this worker's
    preloaded server, so that its peak memory is its own and the worker, reused by Ray, pays
    the imports once."""
    global _RAY_TRIALS
    if _RAY_TRIALS is None:
        _RAY_TRIALS = _TrialProcess()
    try:
        return _RAY_TRIALS.run(config, device, entry=entry, threads=threads)
    except TrialProcessDied:
        _RAY_TRIALS.close()  # the pool is broken; the next trial gets a new one
        _RAY_TRIALS = None
        raise


def _ray_trial_in_worker(config, device: str, entry, threads: int):
    """Ray task (CUDA trials, one fresh worker each): the trial in the worker itself."""
    for module in _PRELOAD:  # imported before the fit is measured, as in the trial processes
        importlib.import_module(module)
    return _worker_trial(config, device, entry, threads)


def _run_ray(session: _RaySession, ctx: _RunContext, todo: list[Trial]) -> None:
    ray = session.ray
    waiting = list(todo)
    pending: dict = {}  # task -> its job (the trials it runs)
    try:
        while waiting or pending:
            # Claim and submit only what keeps the cluster busy: the rest stays free for other
            # processes sharing the store.
            room = 2 * session.capacity() - len(pending)
            still = []
            for job in jobs(waiting):
                if room <= 0:
                    still.extend(job)
                    continue
                claimed, busy = ctx.claim_job(job)
                still.extend(busy)
                if claimed:
                    pending[session.submit(claimed)] = claimed
                    room -= 1
            waiting = still
            if not pending:
                if waiting:
                    ctx.wait(waiting)
                continue
            ctx.bar.set_postfix_str(f"{len(pending)} jobs submitted to Ray", refresh=False)
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=ctx.poll_s)
            for ref in ready:
                job = pending.pop(ref)
                try:
                    results = ray.get(ref)
                except Exception as exc:
                    _store_finished(ray, pending, ctx)
                    for trial in job:
                        ctx.release(trial)
                    # Ray's task error also inherits from the original exception class; its
                    # `cause` is the original exception, whose message is the readable one.
                    cause = getattr(exc, "cause", None)
                    raise TrialError(
                        job[0], cause if isinstance(cause, BaseException) else exc
                    ) from exc
                for trial, result in zip(job, results):
                    ctx.finished(trial, result)
    finally:
        for ref, job in pending.items():
            # force: the worker process goes, and with it the trial process it forked.
            ray.cancel(ref, force=True)
            for trial in job:
                ctx.release(trial)


def _store_finished(ray, pending, ctx) -> None:
    """After a failure: keep the results that already finished (the rest is cancelled)."""
    if not pending:
        return
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
    for ref in ready:
        job = pending.pop(ref)
        try:
            for trial, result in zip(job, ray.get(ref)):
                ctx.finished(trial, result)
        except Exception:  # noqa: S110 - the first failure is the one reported
            for trial in job:
                ctx.release(trial)
