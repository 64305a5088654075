"""Run the trials of a sweep and store each result as it finishes.

:func:`run_trial` is a pure function of a trial config (plus the device), so it can run in this
process, in a fresh worker process or in a Ray worker. :func:`run_sweep` skips the keys already
in the store, claims each remaining trial before running it (so processes sharing a store share
the work), and writes one row per finished trial with the fit's status (solver convergence,
divergence, grid-edge selections) and cost; a failed trial writes nothing and stops the sweep
after the rows before it are safely committed.
"""

from __future__ import annotations

import datetime as _dt
import math
import platform
import sys
import time
import warnings
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
    "SweepResult",
    "run_trial",
    "run_sweep",
    "fit_status",
    "check_device",
    "versions",
]

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
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        if params.get("selection") == "test":
            # The paper's practice, reproduced on request: hyperparameters chosen by test
            # error. The learner records selection="test" in its hparams, so the row says so.
            Ytf = Yt.to(Xtf.device)
            _, fit_s, fit_peak = measure(lambda: est.fit(Xf, Yf, Xtf, Ytf))
        else:
            _, fit_s, fit_peak = measure(lambda: est.fit(Xf, Yf))
        label = config["learner"].get("label", ltype)
        test_error = _squared_error(est.predict(Xtf), Yt, f"{label}.predict")
        train_error = _squared_error(est.predict(Xf), Y, f"{label}.predict")
    messages = list(dict.fromkeys(" ".join(str(w.message).split()) for w in caught))
    hparams = dict(getattr(est, "hparams_", None) or {})
    status, flags = fit_status(est, test_error, train_error, messages)
    return {
        "test_error": test_error,
        "train_error": train_error,
        "zero_error": float(Yt.to(torch.float64).pow(2).sum(dim=1).mean()),
        "threshold": float(concept.threshold),
        "k": int(concept.k),
        "hparams": _jsonable(hparams),
        "status": _jsonable(status),
        "flags": flags,
        "fit_time_s": fit_s,
        "peak_rss_mib": fit_peak,
        "wall_time_s": time.perf_counter() - t0,
        "versions": versions(),
        "finished_at": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
    }


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
    isolation: str = "process",
    poll_s: float = 1.0,
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
        ``"local"`` runs trials in order from this process; ``"ray"`` submits one Ray task per
        trial (``num_gpus=1`` for CUDA) and stores results as they complete.
    progress : bool, default True
        Show a tqdm bar (stderr) with ETA and the current trial.
    ray_address : str, optional
        Passed to ``ray.init(address=...)`` when Ray is not initialised yet.
    isolation : {"process", "none"}, default "process"
        ``"process"``: each local trial runs in a fresh worker process (forked from a server
        that has imported torch, so it starts in well under a second), so that its peak memory
        is its own and not hidden by memory an earlier trial left to the allocator, and a trial
        killed by the system stops the sweep with a clear error. ``"none"``: in this process.
    poll_s : float, default 1.0
        How often to look at the trials other processes are computing.

    Returns
    -------
    SweepResult

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
    ValueError
        Unknown executor, isolation or unusable device.
    """
    if executor not in EXECUTORS:
        raise ValueError(f"unknown executor {executor!r}; expected one of {', '.join(EXECUTORS)}")
    if isolation not in ISOLATIONS:
        raise ValueError(f"unknown isolation {isolation!r}; expected one of {ISOLATIONS}")
    ray = import_ray() if executor == "ray" else None
    device = check_device(device, require_available=executor == "local")
    trials = expand(spec)

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
                    if ray is None:
                        _run_local(ctx, todo, isolation)
                    else:
                        _run_ray(ray, ctx, todo, ray_address)
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


def _run_local(ctx: _RunContext, todo: list[Trial], isolation: str) -> None:
    worker = _TrialProcess() if isolation == "process" else None
    try:
        pending = list(todo)
        while pending:
            waiting = []
            for trial in pending:
                state = ctx.claim(trial)
                if state == "busy":
                    waiting.append(trial)
                if state != "claimed":
                    continue
                ctx.bar.set_postfix_str(_describe(trial), refresh=True)
                try:
                    if worker is None:
                        result = run_trial(trial.config, ctx.device)
                    else:
                        result = worker.run(trial.config, ctx.device)
                except BaseException as exc:
                    ctx.release(trial)
                    if isinstance(exc, Exception):
                        raise TrialError(trial, exc) from exc
                    raise
                ctx.finished(trial, result)
            pending = waiting
            if pending:
                ctx.wait(pending)
    finally:
        if worker is not None:
            worker.close()


class _TrialProcess:
    """Runs trials one at a time, each in a fresh process forked from a preloaded server.

    A fresh process per trial makes the peak memory of ``measure`` the trial's own: in a
    long-lived process, memory an earlier trial freed stays with the allocator, is reused, and
    a later trial's peak reads as zero.
    """

    def __init__(self):
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor

        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("forkserver" if "forkserver" in methods else "spawn")
        if "forkserver" in methods:
            # Imported once by the server; every trial process is a fork of it.
            ctx.set_forkserver_preload(list(_PRELOAD))
        import os

        me = os.getpid()
        self._pool = ProcessPoolExecutor(
            max_workers=1,
            mp_context=ctx,
            max_tasks_per_child=1,
            initializer=_worker_init,
            initargs=(me, _process_start(me)),
        )

    def run(self, config: dict, device: str) -> dict:
        from concurrent.futures.process import BrokenProcessPool

        from ..learners import LEARNERS

        entry = LEARNERS.get(config["learner"]["type"])
        try:
            return self._pool.submit(_worker_trial, config, device, entry).result()
        except BrokenProcessPool:
            raise RuntimeError(
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
    import os
    import threading

    def watch():
        while process_alive(parent_pid, parent_start):
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="fastkernels-parent-watch", daemon=True).start()


def _worker_trial(config: dict, device: str, entry) -> dict:
    if entry is not None:
        # The parent's registry entry (a learner registered at run time, e.g. by a plugin).
        from ..learners import LEARNERS

        LEARNERS[config["learner"]["type"]] = entry
    return run_trial(config, device)


class _Heartbeat:
    """Refreshes this process's claims while it runs (:meth:`ResultsStore.heartbeat`), from a
    thread with its own connection.

    On one machine a claim lives as long as its process; across machines (a store on a shared
    file system) it lives while its heartbeat is fresher than the claim TTL.
    """

    def __init__(self, path: Path, owner: Owner, every_s: float = CLAIM_TTL_S / 5):
        import threading

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


def _run_ray(ray, ctx: _RunContext, todo, address) -> None:  # pragma: no cover - no ray
    if not ray.is_initialized():
        ray.init(address=address)
    gpus = 1 if ctx.device.startswith("cuda") else 0
    remote = ray.remote(num_gpus=gpus)(run_trial)
    waiting = list(todo)
    pending: dict = {}
    try:
        while waiting or pending:
            still = []
            for trial in waiting:
                state = ctx.claim(trial)
                if state == "claimed":
                    pending[remote.remote(trial.config, ctx.device)] = trial
                elif state == "busy":
                    still.append(trial)
            waiting = still
            if not pending:
                ctx.wait(waiting)
                continue
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=ctx.poll_s)
            for ref in ready:
                trial = pending.pop(ref)
                try:
                    result = ray.get(ref)
                except Exception as exc:
                    _store_finished(ray, pending, ctx)
                    # Ray's task error also inherits from the original exception class; its
                    # `cause` is the original exception, whose message is the readable one.
                    cause = getattr(exc, "cause", None)
                    raise TrialError(
                        trial, cause if isinstance(cause, BaseException) else exc
                    ) from exc
                ctx.finished(trial, result)
                ctx.bar.set_postfix_str(f"done: {_describe(trial)}", refresh=False)
    finally:
        for ref, trial in pending.items():
            ray.cancel(ref)
            ctx.release(trial)


def _store_finished(ray, pending, ctx) -> None:  # pragma: no cover - no ray
    """After a failure: keep the results that already finished (the rest is cancelled)."""
    ready, _ = ray.wait(list(pending), num_returns=len(pending), timeout=0)
    for ref in ready:
        trial = pending.pop(ref)
        try:
            ctx.finished(trial, ray.get(ref))
        except Exception:  # noqa: S110 - the first failure is the one reported
            ctx.release(trial)
