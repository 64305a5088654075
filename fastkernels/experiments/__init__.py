"""Sweeps: spec files and presets, the trial runner, the SQLite results store and reports.

A sweep is learners x N x width x alpha x beta x seeds on one concept (:mod:`.spec`; bundled
presets in :mod:`.presets`). Each trial has a stable key, the sha256 of its config
(:mod:`.trials`); :func:`run_sweep` stores one row per finished trial in a
:class:`ResultsStore`, so an interrupted sweep resumes where it stopped; :func:`write_report`
turns a store into ``report.md`` and plots.
"""

from ._validate import SpecError
from .presets import list_presets, preset_names
from .report import summary_table, write_report
from .runner import SweepResult, TrialError, run_sweep, run_trial, run_trials
from .spec import LearnerSpec, SweepSpec, Trial, load_spec, parse_spec
from .store import ResultsStore, StoreError
from .trials import expand, trial_key

__all__ = [
    "SpecError",
    "StoreError",
    "TrialError",
    "LearnerSpec",
    "SweepSpec",
    "Trial",
    "SweepResult",
    "ResultsStore",
    "load_spec",
    "parse_spec",
    "preset_names",
    "list_presets",
    "expand",
    "trial_key",
    "run_trial",
    "run_trials",
    "run_sweep",
    "write_report",
    "summary_table",
]
