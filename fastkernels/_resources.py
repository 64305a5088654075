"""Resource measurements recorded with results: wall time and peak resident memory of a call.

Peak memory is the process's peak resident set size (Linux ``VmHWM``), reset before the call
through ``/proc/self/clear_refs`` so that the figure is the call's own peak, not the process's
history. It counts everything the call touches (tensors, library workspaces, allocator slack),
which is what a memory budget has to bound. Elsewhere the peak is reported as NaN.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from typing import Any

__all__ = ["measure"]


def _status_mib(field: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field):
                return int(line.split()[1]) / 1024  # kB -> MiB
    return math.nan


def measure(fn: Callable[[], Any]) -> tuple[Any, float, float]:
    """Run ``fn()`` once and measure it.

    Returns
    -------
    result : Any
        What ``fn`` returned.
    seconds : float
        Wall time of the call.
    peak_mib : float
        Peak resident memory during the call above the resident memory at its start, in MiB
        (NaN where the peak cannot be reset and read, i.e. outside Linux). Host memory only:
        GPU memory is not counted.

    Notes
    -----
    Not re-entrant: a ``measure`` inside ``fn`` resets the process's peak, so the outer figure
    then covers only what follows the inner call's start.
    """
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets VmHWM (peak RSS) to the current RSS
        before = _status_mib("VmRSS:")
    except OSError:
        before = math.nan
    t0 = time.perf_counter()
    out = fn()
    seconds = time.perf_counter() - t0
    peak = math.nan
    if not math.isnan(before):
        # The kernel updates the RSS counters in batches: a call that allocates nothing can read
        # a hair below its start.
        peak = max(0.0, _status_mib("VmHWM:") - before)
    return out, seconds, peak
