"""Turn a results store into ``report.md``, PNG and SVG plots and a short terminal summary.

Rows are grouped into *settings*: one concept with fixed parameters (alpha and beta included,
seed excluded). Within a setting, a *series* is one learner configuration at one width: the
key is (label, width, configuration hash), so a sweep edited and rerun into the same store
under the same label (say ridge 1e-3, then 100) gives two series, never one pooled over both.
Configurations that share a label are named by the parameters in which they differ, e.g.
``RBF ridge [ridge=100]``. For each series and N the statistics are over seeds.

Every cell (series and N) that holds a trial flagged by the runner is marked with counts:
``U`` unconverged kernel solve, ``D`` diverged (non-finite loss or predictions), ``E``
hyperparameter chosen at the edge of its grid; e.g. ``0.52 ± 0.01 (3) [U1 E3]``.

Errors are reported on two scales: the absolute test error (the papers' figures plot this one)
and the error relative to the label variance Var(y) = E ||y - E y||^2 of the trial's test set
(1 = no better than the best constant predictor), which makes concepts of different label
scales comparable (the ALL19 targets on the unit sphere have Var(y) of about 31, the k = 8
parity 8.72). The variance is recomputed from the trial's concept and test-set size, so reports
of older stores have it too.

Plots are drawn with matplotlib's object-oriented API on the Agg canvas (no pyplot, no global
backend switch), so reports work headless and do not disturb an interactive session.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import re
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .store import FLAGS, ResultsStore

__all__ = [
    "status_line",
    "write_report",
    "summary_table",
    "status_counts",
    "analyse",
    "plot_vs_n",
    "plot_vs_width",
    "Setting",
    "Series",
    "MARKS",
]

# Flag -> the letter that marks it in table cells.
MARKS = {"unconverged": "U", "diverged": "D", "grid_edge": "E"}
_FLAG_WORDS = {
    "unconverged": "unconverged kernel solve",
    "diverged": "diverged (non-finite loss or predictions)",
    "grid_edge": "hyperparameter chosen at the edge of its grid",
}
_CLEAN = "no trial in this table was unconverged, diverged or at a grid edge"


@dataclass
class Series:
    """Test errors of one learner configuration at one width, by N.

    Attributes
    ----------
    label : str
        The learner's label in the sweep file.
    width : int or None
        Network width (None for learners without one).
    errors : dict
        ``errors[N]`` lists one test error per seed.
    config_hash : str
        sha256 of the learner's resolved configuration (width included).
    tag : str
        What tells this configuration apart from others with the same label in the setting
        (e.g. ``"ridge=100"``); empty when the label has one configuration.
    configuration : str
        The configuration without the width (canonical JSON of type and parameters): series
        of one configuration at several widths share it.
    trials : dict
        ``trials[N]`` lists the store rows behind ``errors[N]`` (status, flags, cost).
    relative : dict
        ``relative[N]`` lists each seed's test error divided by its test set's label variance
        (NaN where the concept cannot be rebuilt).
    """

    label: str
    width: int | None
    errors: dict[int, list[float]] = field(default_factory=dict)
    config_hash: str = ""
    tag: str = ""
    configuration: str = ""
    trials: dict[int, list[dict]] = field(default_factory=dict)
    relative: dict[int, list[float]] = field(default_factory=dict)

    @property
    def display(self) -> str:
        """The label, with the distinguishing parameters when the label is shared."""
        return self.label if not self.tag else f"{self.label} [{self.tag}]"

    @property
    def name(self) -> str:
        """:attr:`display` with the width, for places without a width column."""
        return self.display if self.width is None else f"{self.display} [w={self.width}]"

    def stats(self, n: int) -> tuple[float, float, float, float, int]:
        """(mean, std, min, max, number of seeds) at N = ``n``; std uses ddof = 1 (0 for 1 seed)."""
        e = np.asarray(self.errors.get(n, []), dtype=float)
        if e.size == 0:
            return (math.nan,) * 4 + (0,)
        std = float(e.std(ddof=1)) if e.size > 1 else 0.0
        return float(e.mean()), std, float(e.min()), float(e.max()), int(e.size)

    def relative_stats(self, n: int) -> tuple[float, float, int]:
        """(mean, std, number of seeds) of the relative error at N = ``n`` (NaN: unknown)."""
        e = np.asarray(self.relative.get(n, []), dtype=float)
        if e.size == 0:
            return math.nan, math.nan, 0
        return float(e.mean()), float(e.std(ddof=1)) if e.size > 1 else 0.0, int(e.size)

    def sample_complexity(self, level: float) -> int | None:
        """Smallest N whose mean test error is below ``level`` (None: not reached)."""
        for n in sorted(self.errors):
            mean = self.stats(n)[0]
            if mean < level:  # NaN compares False: a diverged mean never counts as learned
                return n
        return None

    def flag_counts(self, n: int) -> dict[str, int]:
        """Flag -> number of trials at N = ``n`` carrying it (only flags that occur)."""
        return status_counts(self.trials.get(n, []))

    def cost(self, n: int) -> tuple[float, float]:
        """(median fit time in s, max peak memory in MiB) over seeds at N = ``n``; NaN: unknown."""
        rows = self.trials.get(n, [])
        times = [t for t in (_float(r.get("fit_time_s")) for r in rows) if math.isfinite(t)]
        peaks = [p for p in (_float(r.get("peak_rss_mib")) for r in rows) if math.isfinite(p)]
        return (
            float(np.median(times)) if times else math.nan,
            max(peaks) if peaks else math.nan,
        )


@dataclass
class Setting:
    """One concept configuration and its series.

    Attributes
    ----------
    concept : str
        Concept name.
    params : dict
        Concept parameters without the seed (alpha and beta included when the concept has them).
    alpha, beta : float
    k : int
    threshold : float
        k alpha^2, the "not learned" line.
    c : float
        Sample-complexity constant; the level is ``c * alpha^2``.
    c_source : str
        Where ``c`` came from ("given", "from the sweep file", "default k/2").
    series : dict
        ``(label, width, config_hash) -> Series``, in order of first appearance; indexing with
        ``(label, width)`` works when one configuration of the label has that width.
    zero_errors : list of float
        The zero predictor's test error of every trial (NaN where not recorded).
    label_variances : list of float
        The label variance of every trial's test set (NaN where unknown).
    """

    concept: str
    params: dict
    alpha: float
    beta: float
    k: int
    threshold: float
    c: float = 0.0
    c_source: str = ""
    series: dict[tuple[str, int | None, str], Series] = field(default_factory=dict)
    zero_errors: list[float] = field(default_factory=list)
    label_variances: list[float] = field(default_factory=list)

    @property
    def label_variance(self) -> float:
        """Mean label variance of the setting's test sets (NaN: unknown): the scale of the
        relative-error axis of its plots."""
        v = [x for x in self.label_variances if math.isfinite(x) and x > 0]
        return float(np.mean(v)) if v else math.nan

    @property
    def level(self) -> float:
        return self.c * self.alpha**2

    @property
    def zero_level(self) -> float:
        """Mean test error of the zero predictor over the setting's trials (NaN: unknown)."""
        z = [v for v in self.zero_errors if math.isfinite(v)]
        return float(np.mean(z)) if z else math.nan

    @property
    def title(self) -> str:
        shown = {k: v for k, v in self.params.items() if k not in ("alpha", "beta")}
        inner = ", ".join(f"{k}={_fmt_param(v)}" for k, v in shown.items())
        return f"{self.concept}({inner}), alpha={_g(self.alpha)}, beta={_g(self.beta)}"

    @property
    def ns(self) -> list[int]:
        return sorted({n for s in self.series.values() for n in s.errors})

    @property
    def widths(self) -> list[int]:
        return sorted({s.width for s in self.series.values() if s.width is not None})

    @property
    def rows(self) -> list[dict]:
        """Every store row of the setting."""
        return [r for s in self.series.values() for rs in s.trials.values() for r in rs]


def status_counts(rows: list[dict]) -> dict[str, int]:
    """Flag -> number of rows carrying it, for the flags that occur.

    Parameters
    ----------
    rows : list of dict
        Rows as returned by :meth:`ResultsStore.rows` (their ``flags`` lists).

    Returns
    -------
    dict
        In the order of :data:`~fastkernels.experiments.store.FLAGS` (unknown flags after).
    """
    counts: dict[str, int] = dict.fromkeys(FLAGS, 0)
    for row in rows:
        for f in dict.fromkeys(row.get("flags") or ()):
            counts[f] = counts.get(f, 0) + 1
    return {f: cnt for f, cnt in counts.items() if cnt}


def analyse(rows: list[dict], c: float | None = None, sweep_c: dict | None = None) -> list[Setting]:
    """Group store rows into settings and series.

    Parameters
    ----------
    rows : list of dict
        Rows as returned by :meth:`ResultsStore.rows`.
    c : float, optional
        Sample-complexity constant for every setting; default: the sweep file's ``[report] c``
        (``sweep_c[sweep name]``) or else k / 2.
    sweep_c : dict, optional
        Sweep name -> ``c`` from its file (``None`` when unset).

    Returns
    -------
    list of Setting
        In order of first appearance in ``rows``; series in order of first appearance, with
        :attr:`Series.tag` naming what differs between configurations sharing a label.

    Raises
    ------
    ValueError
        ``c`` is not a finite number > 0.
    """
    if c is not None and not (isinstance(c, (int, float)) and math.isfinite(c) and c > 0):
        raise ValueError(f"report: c must be a finite number > 0, got {c!r}")
    sweep_c = sweep_c or {}
    settings: dict[str, Setting] = {}
    sweeps_of: dict[str, list[str]] = defaultdict(list)
    for row in rows:
        cparams = dict(row["config"]["concept"]["params"])
        cparams.pop("seed", None)
        skey = json.dumps([row["concept"], cparams], sort_keys=True)
        st = settings.get(skey)
        if st is None:
            st = settings[skey] = Setting(
                concept=row["concept"],
                params=cparams,
                alpha=float(row["alpha"]),
                beta=float(row["beta"]),
                k=int(row["k"]),
                threshold=float(row["threshold"]),
            )
        if row["sweep"] not in sweeps_of[skey]:
            sweeps_of[skey].append(row["sweep"])
        chash = str(row.get("config_hash") or "")
        key = (row["label"], row["width"], chash)
        series = st.series.get(key)
        if series is None:
            series = st.series[key] = Series(
                label=row["label"],
                width=row["width"],
                config_hash=chash,
                configuration=_configuration(row),
            )
        n = int(row["n_train"])
        series.errors.setdefault(n, []).append(float(row["test_error"]))
        series.trials.setdefault(n, []).append(row)
        st.zero_errors.append(_float(row.get("zero_error")))
        variance = label_variance(row)
        st.label_variances.append(variance)
        series.relative.setdefault(n, []).append(
            float(row["test_error"]) / variance if variance > 0 else math.nan
        )
    for skey, st in settings.items():
        _name_configurations(st)
        from_file = [sweep_c[s] for s in sweeps_of[skey] if sweep_c.get(s) is not None]
        if c is not None:
            st.c, st.c_source = float(c), "given"
        elif from_file:
            st.c, st.c_source = float(from_file[0]), "from the sweep file"
        else:
            st.c, st.c_source = st.k / 2, "default k/2"
    return list(settings.values())


_VARIANCES: dict[str, float] = {}


def label_variance(row: dict) -> float:
    """Var(y) of the test set a store row was scored on (NaN when its concept cannot be rebuilt,
    e.g. one registered only in the process that ran the sweep). Cached per concept and size."""
    try:
        concept = row["config"]["concept"]
        n_test = int(row["n_test"])
        key = json.dumps([concept, n_test], sort_keys=True)
    except (KeyError, TypeError, ValueError):
        return math.nan
    if key not in _VARIANCES:
        from ..concepts import make_concept

        try:
            value = make_concept(concept["name"], **concept["params"]).label_variance(n_test)
        except (KeyError, TypeError, ValueError):
            value = math.nan
        _VARIANCES[key] = value
    return _VARIANCES[key]


def _configuration(row: dict) -> str:
    """Canonical JSON of the learner's type and resolved parameters without the width.

    The width has its own column, so one configuration swept over widths stays one learner.
    Rows without a recorded learner configuration fall back to their configuration hash.
    """
    learner = (row.get("config") or {}).get("learner")
    if not isinstance(learner, dict) or not isinstance(learner.get("params"), dict):
        return json.dumps({"config_hash": row.get("config_hash") or ""})
    params = {k: v for k, v in learner["params"].items() if k != "width"}
    ltype = learner.get("type", row.get("learner_type"))
    return json.dumps({"type": ltype, "params": params}, sort_keys=True)


def _name_configurations(st: Setting) -> None:
    """Set :attr:`Series.tag` for labels that have several configurations in the setting.

    A tag lists ``key=value`` for the parameters whose values differ among the configurations
    of the same learner type, preceded by ``type=...`` when the types differ. Tags that still
    coincide (values equal once shortened, no recorded parameters) get a hash prefix.
    """
    configs_of: dict[str, list[str]] = defaultdict(list)
    for s in st.series.values():
        if s.configuration not in configs_of[s.label]:
            configs_of[s.label].append(s.configuration)
    for label, configs in configs_of.items():
        if len(configs) < 2:
            continue
        decoded = [json.loads(cfg) for cfg in configs]
        types = [d.get("type") for d in decoded]
        tags = []
        for d in decoded:
            parts = [f"type={d['type']}"] if len(set(map(str, types))) > 1 else []
            same_type = [e.get("params", {}) for e in decoded if e.get("type") == d.get("type")]
            params = d.get("params", {})
            keys = list(dict.fromkeys(k for p in same_type for k in p))
            for k in keys:
                values = [json.dumps(p.get(k, _DEFAULT), sort_keys=True) for p in same_type]
                if len(set(values)) > 1:
                    parts.append(f"{k}={_short_value(params.get(k, _DEFAULT))}")
            tags.append(", ".join(parts))
        hashes = {
            cfg: next(s.config_hash for s in st.series.values() if s.configuration == cfg)
            for cfg in configs
        }
        for i, cfg in enumerate(configs):
            if not tags[i] or tags.count(tags[i]) > 1:
                tags[i] = ", ".join(filter(None, [tags[i], f"config {hashes[cfg][:8]}"]))
        tag_of = dict(zip(configs, tags))
        for s in st.series.values():
            if s.label == label:
                s.tag = tag_of[s.configuration]


# A parameter absent from one configuration (an older store that recorded only the parameters
# its sweep file set): it had the learner's default of the time.
_DEFAULT = "default"


def _short_value(v, limit: int = 24) -> str:
    if isinstance(v, bool) or v is None:
        text = json.dumps(v)
    elif isinstance(v, float):
        text = f"{v:.4g}"
    elif isinstance(v, str):
        text = v
    else:
        text = json.dumps(v, separators=(",", ":"))
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _load(store_path) -> tuple[list[dict], list[dict]]:
    with ResultsStore(store_path, create=False) as store:
        return store.rows(), store.sweeps()


def _sweep_c(sweeps: list[dict]) -> dict:
    return {s["name"]: s["spec"].get("report", {}).get("c") for s in sweeps}


# --------------------------------------------------------------------------------------------
# status marks


def _marks(counts: dict[str, int]) -> str:
    """``"[U1 E3]"`` from flag counts; empty when nothing is flagged."""
    inner = " ".join(f"{MARKS.get(f, f)}{cnt}" for f, cnt in counts.items() if cnt)
    return f"[{inner}]" if inner else ""


def _with_marks(text: str, counts: dict[str, int]) -> str:
    m = _marks(counts)
    return f"{text} {m}" if m else text


def _add_counts(total: dict[str, int], counts: dict[str, int]) -> dict[str, int]:
    """The sum of two flag counts, in the order of :data:`FLAGS` (unknown flags after)."""
    out = dict.fromkeys(FLAGS, 0) | total
    for f, cnt in counts.items():
        out[f] = out.get(f, 0) + cnt
    return {f: cnt for f, cnt in out.items() if cnt}


def _n_star_counts(s: Series, n_star: int | None) -> dict[str, int]:
    """Flag counts of the cells an N* rests on.

    N* is a minimum over N: the cell at N* reached the level and every smaller N did not, so
    a flagged cell at or below N* may have moved it; "not reached" rests on every cell.
    """
    total: dict[str, int] = {}
    for n in sorted(s.errors):
        if n_star is not None and n > n_star:
            break
        total = _add_counts(total, s.flag_counts(n))
    return total


def _legend_line(cells: list[dict[str, int]], noun: str = "cell") -> str:
    """What the marks mean and how many cells/trials carry each, for the line under a table."""
    n_cells: dict[str, int] = defaultdict(int)
    n_trials: dict[str, int] = defaultdict(int)
    for counts in cells:
        for f, cnt in counts.items():
            if cnt:
                n_cells[f] += 1
                n_trials[f] += cnt
    if not n_cells:
        return f"Status: {_CLEAN}."
    meaning = ", ".join(f"{MARKS[f]} = {_FLAG_WORDS[f]}" for f in FLAGS)
    found = "; ".join(
        f"{MARKS.get(f, f)} on {n_cells[f]} {_plural(noun, n_cells[f])} "
        f"({n_trials[f]} {_plural('trial', n_trials[f])})"
        for f in list(FLAGS) + sorted(set(n_cells) - set(FLAGS))
        if n_cells.get(f)
    )
    return (
        f"Marks: {meaning}; the number counts the trials of the {noun}. "
        f"Here: {found}. See Status below."
    )


def _plural(word: str, n: int) -> str:
    if n == 1:
        return word
    return word[:-1] + "ies" if word.endswith("y") else word + "s"


def status_line(counts: dict[str, int], total: int) -> str:
    """``status: 1 unconverged, 0 diverged, 4 at a grid edge (of 20 trials)``.

    Parameters
    ----------
    counts : dict
        Flag -> number of trials (:func:`status_counts`).
    total : int
        Number of trials counted.
    """
    return (
        f"status: {counts.get('unconverged', 0)} unconverged, {counts.get('diverged', 0)} "
        f"diverged, {counts.get('grid_edge', 0)} at a grid edge (of {total} trials)"
    )


def _status_line(rows: list[dict]) -> str:
    return status_line(status_counts(rows), len(rows))


def _why_unconverged(status: dict) -> str:
    if not status:
        return "no solver status recorded"
    parts = [f"solver {status.get('solver') or '?'}"]
    if status.get("stop_reason"):
        parts.append(f"stopped: {status['stop_reason']}")
    if status.get("iterations") is not None:
        parts.append(f"{status['iterations']} iterations")
    if status.get("final_residual") is not None:
        parts.append(f"relative residual {_short_value(status['final_residual'])}")
    if status.get("compute_dtype"):
        parts.append(str(status["compute_dtype"]))
    return ", ".join(parts)


def _why_diverged(row: dict) -> str:
    status = row.get("status") or {}
    if "final_loss" in status:
        return f"final loss {_short_value(status['final_loss'])}"
    return f"test error {_g(row.get('test_error'))}"


def _by_seed(rows: list[dict], describe) -> str:
    """``"seeds 0, 2: why; seed 1: other why"``: identical descriptions share one entry."""
    seeds_of: dict[str, list[str]] = defaultdict(list)
    for r in rows:
        seeds_of[describe(r)].append(str(r.get("seed", "?")))
    return "; ".join(
        f"{_plural('seed', len(seeds))} {', '.join(seeds)}: {why}"
        for why, seeds in seeds_of.items()
    )


def _n_table(series: list[Series], ns: list[int], has_w: bool, cell) -> list[list[str]]:
    """Table body: one row per series, ``cell(series, n)`` per N (empty where it has no trial)."""
    return [_lead(s, has_w) + [cell(s, n) if n in s.errors else "" for n in ns] for s in series]


def _error_cell(s: Series, n: int) -> str:
    mean, std, _, _, cnt = s.stats(n)
    text = f"{_g(mean)} ± {_g(std)} ({cnt})" if cnt > 1 else f"{_g(mean)} (1)"
    return _with_marks(text, s.flag_counts(n))


def _relative_cell(s: Series, n: int) -> str:
    mean, std, cnt = s.relative_stats(n)
    if not math.isfinite(mean) and cnt and all(math.isfinite(e) for e in s.errors[n]):
        return "-"  # the label variance is unknown
    text = f"{_g(mean)} ± {_g(std)} ({cnt})" if cnt > 1 else f"{_g(mean)} (1)"
    return _with_marks(text, s.flag_counts(n))


def _cost_cell(s: Series, n: int) -> str:
    t, mem = s.cost(n)
    t_text = "-" if math.isnan(t) else f"{_short_num(t)} s"
    m_text = "-" if math.isnan(mem) else f"{_short_num(mem)} MiB"
    return f"{t_text} / {m_text}"


def _fit_status_cell(rows: list[dict]) -> str:
    """``"cholesky: 2/2 converged, residual <= 3e-13"`` or ``"0/2 diverged, loss <= 0.05"``."""
    statuses = [r.get("status") or {} for r in rows]
    kinds = {st.get("kind") for st in statuses}
    if kinds == {"kernel"}:
        solvers = ", ".join(dict.fromkeys(str(st.get("solver")) for st in statuses))
        conv = sum(1 for st in statuses if st.get("converged") is True)
        res = [_float(st.get("final_residual")) for st in statuses]
        worst = max(res) if res else math.nan
        text = f"{solvers}: {conv}/{len(rows)} converged"
        return text + (f", residual <= {_short_value(worst)}" if math.isfinite(worst) else "")
    if kinds == {"network"}:
        div = sum(1 for st in statuses if st.get("diverged"))
        losses = [_float(st.get("final_loss")) for st in statuses]
        text = f"{div}/{len(rows)} diverged"
        if any(math.isnan(x) for x in losses):
            return text + ", a final loss is nan"
        return text + (f", loss <= {_short_value(max(losses))}" if losses else "")
    return "-"


def _status_section(st: Setting) -> list[str]:
    out = ["### Status", ""]
    lines = []
    for s in st.series.values():
        for n in sorted(s.trials):
            rows = s.trials[n]
            counts = s.flag_counts(n)
            if not counts:
                continue
            lines.append(f"- {_md_escape(s.name)}, N={n}: {_marks(counts)}")
            flagged = {f: [r for r in rows if f in (r.get("flags") or ())] for f in counts}
            if flagged.get("unconverged"):
                why = _by_seed(
                    flagged["unconverged"], lambda r: _why_unconverged(r.get("status") or {})
                )
                lines.append(f"  - unconverged: {why}")
            if flagged.get("diverged"):
                lines.append(f"  - diverged: {_by_seed(flagged['diverged'], _why_diverged)}")
            if flagged.get("grid_edge"):
                edges = [
                    e
                    for r in flagged["grid_edge"]
                    for e in (r.get("status") or {}).get("grid_edge", [])
                ]
                what = "; ".join(dict.fromkeys(edges)) or "no grid recorded"
                lines.append(f"  - grid edge: {what}")
            for f in counts:
                if f not in MARKS:
                    lines.append(f"  - {f}: {len(flagged[f])} {_plural('trial', len(flagged[f]))}")
    if not lines:
        lines.append("No trial was unconverged, diverged or at a grid edge.")
    return out + lines


# --------------------------------------------------------------------------------------------
# text


def summary_table(store_path, c: float | None = None) -> str:
    """A plain-text summary for the terminal: mean test error per learner and N, and N*.

    N* is the smallest N whose mean test error is below c alpha^2. Cells holding flagged
    trials carry marks such as ``[U1 E3]`` (see :data:`MARKS`); the last line counts the
    flagged trials of the store.

    Parameters
    ----------
    store_path : str or Path
        An existing fastkernels results store.
    c : float, optional
        Sample-complexity constant (see :func:`write_report`).

    Returns
    -------
    str
    """
    rows, sweeps = _load(store_path)
    return _summary_text(analyse(rows, c, _sweep_c(sweeps)), rows)


def _summary_text(settings: list[Setting], rows: list[dict]) -> str:
    if not settings:
        return "(no finished trials)"
    blocks = []
    for st in settings:
        ns = st.ns
        head = (
            f"{st.title}\n  not learned: k alpha^2 = {_g(st.threshold)};"
            f" N* = smallest N with mean test error < {_g(st.level)}"
            f" (c = {_g(st.c)}, {st.c_source})"
        )
        if math.isfinite(st.label_variance):
            head += (
                f"\n  mean test error (in brackets: relative to the label variance"
                f" {_g(st.label_variance)})"
            )
        names = [s.name for s in st.series.values()]
        wname = max([len("learner")] + [len(n) for n in names])
        cols = [f"N={n}" for n in ns] + ["N*"]
        cells = []
        for s in st.series.values():
            vals = [
                _with_marks(_summary_cell(s, n), s.flag_counts(n)) if n in s.errors else "-"
                for n in ns
            ]
            n_star = s.sample_complexity(st.level)
            text = str(n_star) if n_star is not None else "not reached"
            vals.append(_with_marks(text, _n_star_counts(s, n_star)))
            cells.append((s.name, vals))
        widths = [max(len(col), *(len(v[i]) for _, v in cells)) for i, col in enumerate(cols)]
        lines = [
            head,
            "  "
            + "  ".join(
                [f"{'learner':<{wname}}"] + [f"{col:>{w}}" for col, w in zip(cols, widths)]
            ),
        ]
        for name, vals in cells:
            lines.append(
                "  " + "  ".join([f"{name:<{wname}}"] + [f"{v:>{w}}" for v, w in zip(vals, widths)])
            )
        blocks.append("\n".join(lines))
    tail = []
    if status_counts(rows):
        meaning = ", ".join(f"{MARKS[f]} {_FLAG_WORDS[f]}" for f in FLAGS)
        tail.append(f"marks: {meaning}; the number counts the cell's trials (see report.md)")
    tail.append(_status_line(rows))
    return "\n\n".join(blocks) + "\n\n" + "\n".join(tail)


def _summary_cell(s: Series, n: int) -> str:
    rel = s.relative_stats(n)[0]
    return _g(s.stats(n)[0]) + (f" ({_g(rel)})" if math.isfinite(rel) else "")


def _table(head: list[str], body: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(head) + " |", "|" + "|".join(["---"] * len(head)) + "|"] + [
        "| " + " | ".join(cells) + " |" for cells in body
    ]


def _lead(s: Series, has_w: bool) -> list[str]:
    """The learner (and width) cells that start a series' table row."""
    return [_md_escape(s.display)] + ([_w(s.width)] if has_w else [])


def _markdown(settings, figures, rows, sweeps, store_path) -> str:
    out = []
    names = sorted({r["sweep"] for r in rows}) or [s["name"] for s in sweeps]
    out.append(f"# fastkernels report: {', '.join(names) if names else '(empty store)'}")
    out.append("")
    for s in sweeps:
        if s["name"] in names and s["description"].strip():
            out.append(f"**{s['name']}**: {' '.join(s['description'].split())}")
            out.append("")
    now = _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")
    out.append(f"Store: `{store_path}`, {len(rows)} finished trials; generated {now}.")
    out.append("")
    out.append(
        "Test error = mean over test samples of the squared error summed over the k outputs. "
        "An error above k alpha^2 means alpha G(F) was not learned at all. "
        "Cells: mean ± std over seeds (sample std), number of seeds in brackets; "
        "a learner label with several configurations is split into one row per configuration, "
        "named by the parameters that differ. "
        "Plots show each seed's result as a faint point and the mean over seeds as a line."
    )
    if rows:
        out.append("")
        out.append(_status_line(rows).capitalize() + ".")
    if not settings:
        out.append("")
        out.append("No finished trials.")
    for i, st in enumerate(settings):
        has_w = bool(st.widths)
        out += ["", f"## {st.title}", ""]
        line = (
            f"Not-learned line k alpha^2 = {_g(st.threshold)} (k = {st.k}). "
            f"Sample-complexity level c alpha^2 = {_g(st.level)} with c = {_g(st.c)} "
            f"({st.c_source})."
        )
        if math.isfinite(st.zero_level):
            line += f" Zero predictor: test error {_g(st.zero_level)} (mean over trials)."
        if math.isfinite(st.label_variance):
            line += (
                f" Label variance Var(y) = {_g(st.label_variance)} (mean over the test sets):"
                " the best constant predictor's error, the unit of the relative errors."
            )
        out.append(line)
        out.append("")
        for kind, path in figures.get(i, []):
            svg = path.with_suffix(".svg").name
            out.append(f"![{kind}]({path.name})")
            out.append("")
            out.append(f"Vector version: [{svg}]({svg})")
            out.append("")

        ns = st.ns
        series = list(st.series.values())

        lead_head = ["learner"] + (["width"] if has_w else [])

        out.append("### Test error")
        out.append("")
        body = _n_table(series, ns, has_w, _error_cell)
        cell_counts = [s.flag_counts(n) for s in series for n in ns if n in s.errors]
        out += _table(lead_head + [f"N={n}" for n in ns], body)
        out += ["", _legend_line(cell_counts)]

        out += ["", "### Test error relative to the label variance", ""]
        out.append(
            "Each seed's test error divided by the label variance of its test set "
            "(1: no better than the best constant predictor); mean ± std over seeds. "
            "The paper's figures plot the absolute error of the table above."
        )
        out.append("")
        body = _n_table(series, ns, has_w, _relative_cell)
        out += _table(lead_head + [f"N={n}" for n in ns], body)

        out += ["", "### Sample complexity", ""]
        out.append(
            f"Smallest N whose mean test error is below c alpha^2 = {_g(st.level)} "
            f"(c = {_g(st.c)}, {st.c_source}), among N in {{{', '.join(map(str, ns))}}}."
        )
        out.append("")
        body, star_counts = [], []
        for s in series:
            n_star = s.sample_complexity(st.level)
            counts = _n_star_counts(s, n_star)
            text = str(n_star) if n_star is not None else "not reached"
            body.append(_lead(s, has_w) + [_with_marks(text, counts)])
            star_counts.append(counts)
        out += _table(lead_head + ["smallest N"], body)
        legend = _legend_line(star_counts, noun="entry")
        if any(star_counts):
            legend += (
                " An N* carries the marks of the cells it rests on: N up to N* (every N when"
                " not reached), since a flagged cell below N* may have hidden an earlier N*."
            )
        out += ["", legend]

        out += ["", "### Cost", ""]
        devices = defaultdict(int)
        for r in st.rows:
            devices[r.get("device") or "unknown device"] += 1
        where = ", ".join(f"{d} ({cnt} trials)" for d, cnt in devices.items())
        out.append(
            "Each cell: fit wall time in seconds (median over seeds) / peak resident memory of "
            "the fit above its start in MiB (max over seeds; each trial runs in its own "
            f"process); `-`: not recorded. Device: {where}."
        )
        out.append("")
        body = _n_table(series, ns, has_w, _cost_cell)
        out += _table(lead_head + [f"N={n}" for n in ns], body)

        out += ["", "### Fit status", ""]
        out.append(
            "Each cell, over the cell's trials: kernel learners: the solver, how many solves "
            "converged and the largest final true relative residual; networks: how many "
            "diverged and the largest final training loss."
        )
        out.append("")
        body = _n_table(series, ns, has_w, lambda s, n: _fit_status_cell(s.trials[n]))
        out += _table(lead_head + [f"N={n}" for n in ns], body)

        out += [""] + _status_section(st)
    out += ["", "## Versions", ""]
    counts: dict[str, int] = defaultdict(int)
    for r in rows:
        counts[json.dumps(r["versions"], sort_keys=True)] += 1
    for v, cnt in sorted(counts.items()):
        d = json.loads(v)
        desc = ", ".join(
            f"{k} {d[k]}" for k in ("fastkernels", "torch", "python", "platform") if k in d
        )
        out.append(f"- {desc} ({cnt} trials)")
    return "\n".join(out) + "\n"


# --------------------------------------------------------------------------------------------
# plots


def _new_axes():
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(8.4, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _draw(ax, xs: list, errors: list[list[float]], label: str, style: dict) -> list[float]:
    """Each seed's error as a faint point, the mean over seeds as a line with markers.

    Returns the finite values drawn (for the axis scale). Non-finite errors (diverged fits)
    cannot be placed on a log axis; the Status section lists them.
    """
    px, py, mx, my = [], [], [], []
    for x, errs in zip(xs, errors):
        finite = [e for e in errs if math.isfinite(e)]
        px += [x] * len(finite)
        py += finite
        mean = float(np.mean(errs)) if errs else math.nan
        if math.isfinite(mean):
            mx.append(x)
            my.append(mean)
    if not py:
        return []
    color = style["color"]
    ax.scatter(px, py, s=14, color=color, alpha=0.35, edgecolors="none", zorder=2)
    if mx:
        ax.plot(mx, my, marker="o", ms=4, lw=1.4, label=label, zorder=3, **style)
    else:  # no finite mean: the points still need a legend entry
        ax.scatter([], [], s=14, color=color, label=label)
    return py + my


def _reference_lines(ax, st: Setting) -> list[float]:
    """Zero-predictor, not-learned (k alpha^2) and N* (c alpha^2) levels, labelled with values."""
    lines = (
        (st.zero_level, ":", 0.5, 1.3, f"zero predictor: {_g(st.zero_level)}"),
        (st.threshold, "--", 0.2, 1.2, f"not learned: k·α² = {_g(st.threshold)}"),
        (st.level, "-.", 0.2, 1.0, f"N* level: c·α² = {_g(st.level)} (c = {_g(st.c)})"),
    )
    drawn = []
    for level, ls, grey, lw, label in lines:
        if math.isfinite(level) and level > 0:
            ax.axhline(level, ls=ls, color=str(grey), lw=lw, label=label)
            drawn.append(level)
    return drawn


def _finish(ax, st: Setting, values: list[float], xlabel: str, xticks: list[int]) -> None:
    values = values + _reference_lines(ax, st)
    # Log axes need positive values; fall back to linear for an exact zero error.
    if values and min(values) > 0:
        ax.set_yscale("log")
        # Plain numbers (0.3, 2) read better in print than 3 x 10^-1.
        ax.yaxis.set_major_formatter(_plain_log_formatter())
        ax.yaxis.set_minor_formatter(_plain_log_formatter(labelOnlyBase=False))
    ax.set_xscale("log")
    if 0 < len(xticks) <= 12:
        # Label the swept values themselves; log-axis default ticks rarely hit them.
        from matplotlib.ticker import NullLocator

        ax.set_xticks(xticks, [str(x) for x in xticks])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test error")
    var = st.label_variance
    if math.isfinite(var) and var > 0:
        # The same curves on the relative scale: a second axis, error / Var(y).
        second = ax.secondary_yaxis(
            "right", functions=(lambda y, v=var: y / v, lambda r, v=var: r * v)
        )
        second.set_ylabel(f"relative to label variance {_g(var)}")
        if ax.get_yscale() == "log":
            second.yaxis.set_major_formatter(_plain_log_formatter())
            second.yaxis.set_minor_formatter(_plain_log_formatter(labelOnlyBase=False))
    ax.grid(True, which="both", alpha=0.25)
    # Beside the axes (inside, it would hide the points of some series), as a figure legend
    # that the constrained layout keeps clear of the second axis' labels.
    handles, labels = ax.get_legend_handles_labels()
    ax.figure.legend(handles, labels, fontsize=8, loc="outside right upper", frameon=False)


def _plain_log_formatter(**kw):
    """Matplotlib's log-axis tick choice, with labels written as plain numbers."""
    from matplotlib.ticker import LogFormatterSciNotation

    class PlainLogFormatter(LogFormatterSciNotation):
        def __call__(self, x, pos=None):
            return f"{x:g}" if super().__call__(x, pos) else ""

    return PlainLogFormatter(**kw)


def _save(fig, png: Path) -> None:
    """Write ``png`` and an SVG with the same stem (text kept as text, no timestamp)."""
    import matplotlib

    fig.savefig(png, dpi=110)
    with matplotlib.rc_context({"svg.fonttype": "none"}):
        fig.savefig(png.with_suffix(".svg"), format="svg", metadata={"Date": None})


def _style(j: int) -> dict:
    """Colour C0..C9, then a new line style per round of ten, so many series stay apart."""
    return {"color": f"C{j % 10}", "ls": ("-", "--", "-.", ":")[(j // 10) % 4]}


def _styles(st: Setting) -> dict[tuple[str, str], dict]:
    """One style per learner configuration, the same in every figure of a setting."""
    configs = list(dict.fromkeys((s.label, s.configuration) for s in st.series.values()))
    return {cfg: _style(j) for j, cfg in enumerate(configs)}


def plot_vs_n(st: Setting, width: int | None = None):
    """Test error against N for the series at ``width`` and those without a width.

    Parameters
    ----------
    st : Setting
    width : int, optional
        Network width shown (learners without a width appear in every width's figure).

    Returns
    -------
    matplotlib.figure.Figure
        On an Agg canvas; its axes' legend names the series and the reference lines.
    """
    fig, ax = _new_axes()
    ns = st.ns
    styles = _styles(st)
    values: list[float] = []
    for s in st.series.values():
        if s.width not in (width, None):
            continue
        xs = [n for n in ns if n in s.errors]
        style = styles[(s.label, s.configuration)]
        values += _draw(ax, xs, [s.errors[n] for n in xs], s.display, style)
    title = st.title + ("" if width is None else f", width={width}")
    ax.set_title(_wrap(title), fontsize=9)
    _finish(ax, st, values, "N (training samples)", ns)
    return fig


def plot_vs_width(st: Setting, n: int):
    """Test error against width at N = ``n``; learners without a width as horizontal lines.

    Returns
    -------
    matplotlib.figure.Figure
    """
    fig, ax = _new_axes()
    widths = st.widths
    styles = _styles(st)
    values: list[float] = []
    for group in _width_groups(st, n):
        xs = sorted(s.width for s in group)
        by_w = {s.width: s.errors[n] for s in group}
        first = group[0]
        style = styles[(first.label, first.configuration)]
        values += _draw(ax, xs, [by_w[w] for w in xs], first.display, style)
    for s in st.series.values():
        # Width-free learners (kernels) are one number per N: a horizontal reference line.
        if s.width is None and n in s.errors:
            mean = s.stats(n)[0]
            if math.isfinite(mean):
                color = styles[(s.label, s.configuration)]["color"]
                ax.axhline(mean, color=color, ls=":", lw=1.4, label=f"{s.display} (no width)")
                values.append(mean)
    ax.set_title(_wrap(f"{st.title}, N={n}"), fontsize=9)
    _finish(ax, st, values, "width m", widths)
    return fig


def _width_groups(st: Setting, n: int) -> list[list[Series]]:
    """Series of one configuration at two or more widths with results at N = ``n``."""
    groups: dict[tuple[str, str], list[Series]] = {}
    for s in st.series.values():
        if s.width is not None and n in s.errors:
            groups.setdefault((s.label, s.configuration), []).append(s)
    return [g for g in groups.values() if len(g) > 1]


# --------------------------------------------------------------------------------------------
# entry point


def write_report(store_path, out_dir, c: float | None = None, plots: bool = True) -> Path:
    """Write ``report.md`` and plots (PNG, with an SVG of the same stem) for a results store.

    Parameters
    ----------
    store_path : str or Path
        An existing fastkernels results store.
    out_dir : str or Path
        Output folder (created if needed).
    c : float, optional
        Sample-complexity constant: the table reports the smallest N with mean test error
        below ``c * alpha^2``. Default: the sweep file's ``[report] c``, else k / 2.
    plots : bool, default True
        Draw the figures (``False``: tables only, much faster).

    Returns
    -------
    Path
        The path of ``report.md``.

    Raises
    ------
    StoreError
        ``store_path`` is missing or not a fastkernels store.
    ValueError
        ``c`` is not a finite number > 0.
    """
    rows, sweeps = _load(store_path)
    settings = analyse(rows, c, _sweep_c(sweeps))
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    figures: dict[int, list[tuple[str, Path]]] = defaultdict(list)
    used: set[str] = set()
    for i, st in enumerate(settings if plots else []):
        base = f"a{_g(st.alpha)}_b{_g(st.beta)}"
        for w in st.widths or [None]:
            path = out / _unique(f"error_vs_n_{base}" + ("" if w is None else f"_w{w}"), used)
            _save(plot_vs_n(st, w), path)
            figures[i].append(("test error vs N", path))
        for n in st.ns:
            if _width_groups(st, n):
                path = out / _unique(f"error_vs_width_{base}_n{n}", used)
                _save(plot_vs_width(st, n), path)
                figures[i].append(("test error vs width", path))
    md = _markdown(settings, figures, rows, sweeps, store_path)
    report = out / "report.md"
    report.write_text(md, encoding="utf-8")
    return report


# --------------------------------------------------------------------------------------------
# formatting helpers


def _float(x) -> float:
    """A number from a row field; missing or non-numeric values (old rows) are NaN."""
    try:
        return float(x)
    except (TypeError, ValueError):
        return math.nan


def _g(x) -> str:
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    return f"{x:.3g}"


def _short_num(x: float) -> str:
    """3 significant digits, but whole numbers from 1000 up (no exponent for 1234 MiB)."""
    return f"{x:.0f}" if abs(x) >= 1000 else f"{x:.3g}"


def _w(width) -> str:
    return "-" if width is None else str(width)


def _fmt_param(v) -> str:
    return _g(v) if isinstance(v, float) else str(v)


def _md_escape(s: str) -> str:
    return s.replace("|", "\\|")


def _wrap(s: str, width: int = 90) -> str:
    import textwrap

    return "\n".join(textwrap.wrap(s, width)) or s


def _unique(stem: str, used: set[str]) -> str:
    stem = re.sub(r"[^A-Za-z0-9._-]+", "_", stem)
    name, i = f"{stem}.png", 2
    while name in used:
        name, i = f"{stem}_{i}.png", i + 1
    used.add(name)
    return name
