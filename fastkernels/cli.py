"""The ``fastkernels`` command: run sweeps, write reports, show the environment.

Subcommands::

    fastkernels run PRESET|FILE.toml [--store PATH] [--out DIR] [--device cpu|cuda]
                    [--executor local|ray] [--ray-address ADDR] [--cpus-per-trial N]
                    [--no-report] [--quiet]
    fastkernels report STORE [--out DIR] [--c C]
    fastkernels info
    fastkernels presets

Expected errors (a bad sweep file, a foreign results store, a learner or concept rejecting its
parameters, a missing file, CUDA requested without CUDA, an unreachable Ray cluster or one
without the CPUs or GPU a trial requests) print one line
``fastkernels: error: ...`` to stderr and exit with status 2. Anything else is a bug and keeps its
traceback.
"""

from __future__ import annotations

import argparse
import contextlib
import importlib
import io
import platform
import sys
from pathlib import Path

__all__ = ["main", "build_parser", "EXIT_ERROR"]

PROG = "fastkernels"
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130
DEFAULT_RESULTS_DIR = "fastkernels-results"
OPTIONAL_BACKENDS = (
    ("fastkernels._C", "C++ CPU extension"),
    ("triton", "Triton (CUDA kernels)"),
    ("pykeops", "KeOps"),
    ("ray", "Ray executor"),
)


class _CLIError(Exception):
    """An error of the command line itself (not of the library), reported in one line."""


def build_parser() -> argparse.ArgumentParser:
    """The argparse parser of the ``fastkernels`` command."""
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="What can a network learn that a kernel cannot, with the same samples?",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)

    p = sub.add_parser("run", help="run a sweep (preset name or TOML file), then report")
    p.add_argument("spec", metavar="PRESET|FILE.toml", help="a preset name or a sweep TOML file")
    p.add_argument(
        "--store",
        metavar="PATH",
        help=f"results database (default {DEFAULT_RESULTS_DIR}/<sweep name>/results.db)",
    )
    p.add_argument("--out", metavar="DIR", help="report folder (default: the store's folder)")
    p.add_argument("--device", default="cpu", help="cpu or cuda (default cpu)")
    p.add_argument(
        "--executor",
        choices=("local", "ray"),
        default="local",
        help="local: one trial after another on this machine; ray: one Ray task per trial",
    )
    p.add_argument(
        "--ray-address",
        metavar="ADDR",
        default=None,
        help="the Ray cluster for --executor ray: HOST:PORT of its head, ray://HOST:PORT or "
        "auto (default: $RAY_ADDRESS, else a local Ray instance for this run)",
    )
    p.add_argument(
        "--cpus-per-trial",
        metavar="N",
        type=int,
        default=None,
        help="CPUs each trial requests from Ray and torch threads it runs with "
        "(--executor ray; default 1)",
    )
    p.add_argument("--no-report", action="store_true", help="do not write the report")
    p.add_argument(
        "--quiet",
        action="store_true",
        help="no progress bar or summary; print only the report path",
    )
    p.set_defaults(func=_cmd_run)

    p = sub.add_parser("report", help="write report.md and plots for a results store")
    p.add_argument("store", metavar="STORE", help="a results database written by `run`")
    p.add_argument("--out", metavar="DIR", help="report folder (default: the store's folder)")
    p.add_argument(
        "--c",
        type=float,
        default=None,
        help="sample-complexity level c * alpha^2 (default: the sweep's, else k/2)",
    )
    p.set_defaults(func=_cmd_report)

    p = sub.add_parser("info", help="versions, threads, CUDA and optional backends")
    p.set_defaults(func=_cmd_info)

    p = sub.add_parser("presets", help="list the bundled sweep presets")
    p.set_defaults(func=_cmd_presets)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``fastkernels`` command; returns the exit status.

    Parameters
    ----------
    argv : list of str, optional
        Arguments without the program name (default ``sys.argv[1:]``).

    Returns
    -------
    int
        0 on success, 2 on an expected error (one line on stderr), 130 when interrupted.
    """
    args = build_parser().parse_args(argv)
    from .experiments import SpecError, StoreError, TrialError

    try:
        return args.func(args) or 0
    except TrialError as exc:
        # A learner or concept rejecting its input is a user error; anything else in a trial is
        # a bug whose traceback matters.
        if isinstance(exc.__cause__, (ValueError, TypeError)):
            return _fail(exc)
        raise
    except (SpecError, StoreError, _CLIError, ValueError, ImportError, OSError) as exc:
        return _fail(exc)
    except KeyboardInterrupt:
        print(
            f"{PROG}: interrupted; finished trials are stored, run again to resume", file=sys.stderr
        )
        return EXIT_INTERRUPTED


def _fail(exc: BaseException) -> int:
    msg = " ".join(str(exc).split()) or type(exc).__name__
    if isinstance(exc, OSError) and exc.filename is not None and exc.strerror:
        msg = f"{exc.filename}: {exc.strerror}"
    print(f"{PROG}: error: {msg}", file=sys.stderr)
    return EXIT_ERROR


# --------------------------------------------------------------------------------------------
# commands


def _cmd_run(args) -> int:
    from .experiments import load_spec, run_sweep, summary_table, write_report
    from .experiments.report import status_line
    from .experiments.runner import check_device, import_ray

    spec = load_spec(args.spec)
    # Check everything that can fail cheaply before the store is created or a trial runs.
    if args.executor == "ray":
        import_ray()
    elif args.ray_address is not None or args.cpus_per_trial is not None:
        opt = "--ray-address" if args.ray_address is not None else "--cpus-per-trial"
        raise _CLIError(f"{opt} applies to --executor ray")
    if args.cpus_per_trial is not None and args.cpus_per_trial < 1:
        raise _CLIError(f"--cpus-per-trial must be a positive integer, got {args.cpus_per_trial}")
    device = check_device(args.device, require_available=args.executor == "local")
    store = Path(args.store) if args.store else Path(DEFAULT_RESULTS_DIR) / spec.name / "results.db"
    out = Path(args.out) if args.out else store.parent

    result = run_sweep(
        spec,
        store,
        device=device,
        executor=args.executor,
        progress=not args.quiet,
        ray_address=args.ray_address,
        cpus_per_trial=args.cpus_per_trial,
    )
    if not args.quiet:
        others = (
            f", {result.by_others} by other processes sharing the store" if result.by_others else ""
        )
        print(
            f"{spec.name}: ran {result.ran} trials in this process{others}, {result.skipped} "
            f"already stored ({result.total} in the sweep); store: {store}"
        )
        if result.unused:
            print(
                f"{spec.name}: {result.unused} stored trials under this sweep's name are not in "
                "it now (an earlier version of it); the report shows them as configurations of "
                "their own"
            )
    if result.flagged or not args.quiet:
        # The status of the numbers is part of the result: said even with --quiet (on stderr
        # then, where it does not disturb a script reading the report path).
        print(
            f"{spec.name}: {status_line(result.flagged, result.total)}"
            + ("; marked in the report" if result.flagged else ""),
            file=sys.stderr if args.quiet else sys.stdout,
        )
    if args.no_report:
        return 0
    report = write_report(store, out, c=spec.c)
    if not args.quiet:
        print()
        print(summary_table(store, c=spec.c))
        print()
    print(f"report: {report}")
    return 0


def _cmd_report(args) -> int:
    from .experiments import StoreError, summary_table, write_report

    store = Path(args.store)
    if not store.is_file():
        raise StoreError(f"{store}: no such results store")
    if args.c is not None and not (args.c > 0 and args.c != float("inf")):
        raise _CLIError(f"--c must be a finite number > 0, got {args.c}")
    out = Path(args.out) if args.out else store.parent
    report = write_report(store, out, c=args.c)
    print(summary_table(store, c=args.c))
    print()
    print(f"report: {report}")
    return 0


def _cmd_info(args) -> int:
    import numpy
    import torch

    from . import __version__
    from .learners import LEARNERS

    print(f"fastkernels  {__version__}")
    print(f"python       {platform.python_version()} ({platform.platform()})")
    print(f"torch        {torch.__version__} (CPU threads: {torch.get_num_threads()})")
    print(f"numpy        {numpy.__version__}")
    if torch.cuda.is_available():
        names = [torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]
        print(f"CUDA         available, {len(names)} device(s): {', '.join(names)}")
    else:
        why = "torch built without CUDA" if torch.version.cuda is None else "no GPU visible"
        print(f"CUDA         not available ({why})")
    print("optional backends:")
    for module, what in OPTIONAL_BACKENDS:
        print(f"  {module:<16} {_probe(module):<40} {what}")
    from .ops import HAS_CPP, HAS_TRITON

    # What the dispatcher runs for the ops (gram, kernel_mv, ntk_gram, ntk_mv) per device.
    cpu = "C++ (fastkernels._C)" if HAS_CPP else "reference (C++ extension not built)"
    cuda = "Triton (fastkernels.ops._triton)" if HAS_TRITON else "reference (triton not importable)"
    print("op implementations:")
    print(f"  {'CPU tensors':<16} {cpu}")
    print(f"  {'CUDA tensors':<16} {cuda}")
    print("learners:")
    for type_name, cls in LEARNERS.items():
        print(f"  {type_name:<16} {cls.__module__}.{cls.__qualname__}")
    return 0


def _probe(module: str) -> str:
    """'present <version>' or 'absent (<why>)' for an optional module, importing it quietly."""
    sink = io.StringIO()
    try:
        # Some backends (pykeops) print diagnostics on import; keep `info` readable.
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            mod = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name and module.startswith(exc.name):
            return "absent (not installed)" if "." not in module else "absent (not built)"
        return f"absent (import failed: {exc})"
    except Exception as exc:  # a broken install is reported, not raised
        return f"absent (import failed: {type(exc).__name__}: {' '.join(str(exc).split())})"
    version = getattr(mod, "__version__", None)
    return f"present {version}" if version else "present"


def _cmd_presets(args) -> int:
    from .experiments import list_presets

    presets = list_presets()
    if not presets:
        print("(no presets)")
        return 0
    width = max(len(name) for name, _ in presets)
    for name, desc in presets:
        print(f"{name:<{width}}  {desc}")
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
