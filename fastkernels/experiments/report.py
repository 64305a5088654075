"""Turn a results store into ``report.md``, PNG plots and a short terminal summary.

Rows are grouped into *settings*: one concept with fixed parameters (alpha and beta included,
seed excluded). Within a setting, a *series* is one learner label at one width (``None`` for
learners without a width). For each series and N the statistics are over seeds.

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

from .store import ResultsStore

__all__ = ["write_report", "summary_table", "analyse", "Setting", "Series"]

NOT_LEARNED_LABEL = "not learned (k alpha^2)"


@dataclass
class Series:
    """Test errors of one learner label at one width, by N: ``errors[N]`` lists one per seed."""

    label: str
    width: int | None
    errors: dict[int, list[float]] = field(default_factory=dict)

    @property
    def name(self) -> str:
        return self.label if self.width is None else f"{self.label} [w={self.width}]"

    def stats(self, n: int) -> tuple[float, float, float, float, int]:
        """(mean, std, min, max, number of seeds) at N = ``n``; std uses ddof = 1 (0 for 1 seed)."""
        e = np.asarray(self.errors.get(n, []), dtype=float)
        if e.size == 0:
            return (math.nan,) * 4 + (0,)
        std = float(e.std(ddof=1)) if e.size > 1 else 0.0
        return float(e.mean()), std, float(e.min()), float(e.max()), int(e.size)

    def sample_complexity(self, level: float) -> int | None:
        """Smallest N whose mean test error is below ``level`` (None: not reached)."""
        for n in sorted(self.errors):
            mean = self.stats(n)[0]
            if mean < level:  # NaN compares False: a diverged mean never counts as learned
                return n
        return None


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
        Where ``c`` came from ("argument", "sweep file", "default k/2").
    series : dict
        ``(label, width) -> Series``.
    """

    concept: str
    params: dict
    alpha: float
    beta: float
    k: int
    threshold: float
    c: float = 0.0
    c_source: str = ""
    series: dict[tuple[str, int | None], Series] = field(default_factory=dict)

    @property
    def level(self) -> float:
        return self.c * self.alpha**2

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
        return sorted({w for (_, w) in self.series if w is not None})


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
        In order of first appearance in ``rows``; series in order of first appearance.
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
        series = st.series.setdefault(
            (row["label"], row["width"]), Series(label=row["label"], width=row["width"])
        )
        series.errors.setdefault(int(row["n_train"]), []).append(float(row["test_error"]))
    for skey, st in settings.items():
        from_file = [sweep_c[s] for s in sweeps_of[skey] if sweep_c.get(s) is not None]
        if c is not None:
            st.c, st.c_source = float(c), "given"
        elif from_file:
            st.c, st.c_source = float(from_file[0]), "from the sweep file"
        else:
            st.c, st.c_source = st.k / 2, "default k/2"
    return list(settings.values())


def _load(store_path) -> tuple[list[dict], list[dict]]:
    with ResultsStore(store_path, create=False) as store:
        return store.rows(), store.sweeps()


def _sweep_c(sweeps: list[dict]) -> dict:
    return {s["name"]: s["spec"].get("report", {}).get("c") for s in sweeps}


# --------------------------------------------------------------------------------------------
# text


def summary_table(store_path, c: float | None = None) -> str:
    """A plain-text summary for the terminal: mean test error per learner and N, and N*.

    N* is the smallest N whose mean test error is below c alpha^2.
    """
    rows, sweeps = _load(store_path)
    return _summary_text(analyse(rows, c, _sweep_c(sweeps)))


def _summary_text(settings: list[Setting]) -> str:
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
        names = [s.name for s in st.series.values()]
        wname = max([len("learner")] + [len(n) for n in names])
        cols = [f"N={n}" for n in ns] + ["N*"]
        cells = []
        for s in st.series.values():
            vals = [_g(s.stats(n)[0]) if n in s.errors else "-" for n in ns]
            n_star = s.sample_complexity(st.level)
            vals.append(str(n_star) if n_star is not None else "not reached")
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
    return "\n\n".join(blocks)


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
        "plot error bars span min to max over seeds."
    )
    if not settings:
        out.append("")
        out.append("No finished trials.")
    for i, st in enumerate(settings):
        has_w = bool(st.widths)
        out += ["", f"## {st.title}", ""]
        out.append(
            f"Not-learned line k alpha^2 = {_g(st.threshold)} (k = {st.k}). "
            f"Sample-complexity level c alpha^2 = {_g(st.level)} with c = {_g(st.c)} "
            f"({st.c_source})."
        )
        out.append("")
        for kind, path in figures.get(i, []):
            out.append(f"![{kind}]({path.name})")
            out.append("")
        out.append("### Test error")
        out.append("")
        ns = st.ns
        head = ["learner"] + (["width"] if has_w else []) + [f"N={n}" for n in ns]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] * len(head)) + "|")
        for s in st.series.values():
            cells = [_md_escape(s.label)] + ([_w(s.width)] if has_w else [])
            for n in ns:
                if n not in s.errors:
                    cells.append("")
                    continue
                mean, std, _, _, cnt = s.stats(n)
                cells.append(f"{_g(mean)} ± {_g(std)} ({cnt})" if cnt > 1 else f"{_g(mean)} (1)")
            out.append("| " + " | ".join(cells) + " |")
        out += ["", "### Sample complexity", ""]
        out.append(
            f"Smallest N whose mean test error is below c alpha^2 = {_g(st.level)} "
            f"(c = {_g(st.c)}, {st.c_source}), among N in {{{', '.join(map(str, ns))}}}."
        )
        out.append("")
        head = ["learner"] + (["width"] if has_w else []) + ["smallest N"]
        out.append("| " + " | ".join(head) + " |")
        out.append("|" + "|".join(["---"] * len(head)) + "|")
        for s in st.series.values():
            n_star = s.sample_complexity(st.level)
            cells = [_md_escape(s.label)] + ([_w(s.width)] if has_w else [])
            cells.append(str(n_star) if n_star is not None else "not reached")
            out.append("| " + " | ".join(cells) + " |")
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

    fig = Figure(figsize=(7.0, 4.6), layout="constrained")
    FigureCanvasAgg(fig)
    return fig, fig.add_subplot()


def _errorbar(ax, xs, series: Series, ns, **kw):
    pts = [(x, *series.stats(n)[:4]) for x, n in zip(xs, ns) if n in series.errors]
    pts = [p for p in pts if math.isfinite(p[1])]
    if not pts:
        return None
    x, mean, _, lo, hi = (np.array(v, dtype=float) for v in zip(*pts))
    return ax.errorbar(
        x, mean, yerr=[mean - lo, hi - mean], marker="o", ms=4, capsize=3, lw=1.4, **kw
    )


def _finish(
    ax, fig, path: Path, st: Setting, values: list[float], xlabel: str, xticks: list[int]
) -> None:
    if st.threshold > 0:
        ax.axhline(st.threshold, ls="--", color="0.3", lw=1.2, label=NOT_LEARNED_LABEL)
        values = values + [st.threshold]
    # Log axes need positive values; fall back to linear for an exact zero error.
    if values and min(values) > 0:
        ax.set_yscale("log")
    ax.set_xscale("log")
    if 0 < len(xticks) <= 12:
        # Label the swept values themselves; log-axis default ticks rarely hit them.
        from matplotlib.ticker import NullLocator

        ax.set_xticks(xticks, [str(x) for x in xticks])
        ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlabel(xlabel)
    ax.set_ylabel("test error")
    ax.grid(True, which="both", alpha=0.25)
    ax.legend(fontsize=8, loc="best")
    fig.savefig(path, dpi=110)


def _style(j: int) -> dict:
    """Colour C0..C9, then a new line style per round of ten, so many series stay apart."""
    return {"color": f"C{j % 10}", "ls": ("-", "--", "-.", ":")[(j // 10) % 4]}


def _label_styles(st: Setting) -> dict[str, dict]:
    """One style per learner label, the same in every figure of a setting."""
    labels = list(dict.fromkeys(label for label, _ in st.series))
    return {label: _style(j) for j, label in enumerate(labels)}


def _plot_vs_n(st: Setting, width: int | None, path: Path) -> None:
    fig, ax = _new_axes()
    ns = st.ns
    styles = _label_styles(st)
    values: list[float] = []
    for s in st.series.values():
        if s.width not in (width, None):
            continue
        if _errorbar(ax, ns, s, ns, label=s.label, **styles[s.label]) is not None:
            values += [v for errs in s.errors.values() for v in errs]
    title = st.title + ("" if width is None else f", width={width}")
    ax.set_title(_wrap(title), fontsize=9)
    _finish(ax, fig, path, st, [v for v in values if math.isfinite(v)], "N (training samples)", ns)


def _plot_vs_width(st: Setting, n: int, path: Path) -> None:
    fig, ax = _new_axes()
    widths = st.widths
    values: list[float] = []
    j = 0
    for label in _width_labels(st, n):
        xs = [w for w in widths if n in st.series.get((label, w), Series(label, w)).errors]
        merged = Series(label, None, {w: st.series[(label, w)].errors[n] for w in xs})
        if _errorbar(ax, xs, merged, xs, label=label, **_style(j)) is not None:
            values += [v for w in xs for v in merged.errors[w]]
        j += 1
    for s in st.series.values():
        # Width-free learners (kernels) are one number per N: a horizontal reference line.
        if s.width is None and n in s.errors:
            mean = s.stats(n)[0]
            if math.isfinite(mean):
                style = _style(j)
                ax.axhline(
                    mean, color=style["color"], ls=":", lw=1.4, label=f"{s.label} (no width)"
                )
                values.append(mean)
                j += 1
    ax.set_title(_wrap(f"{st.title}, N={n}"), fontsize=9)
    _finish(ax, fig, path, st, [v for v in values if math.isfinite(v)], "width m", widths)


def _width_labels(st: Setting, n: int) -> list[str]:
    """Labels that have results at two or more widths for N = ``n`` (worth a width plot)."""
    by_label: dict[str, int] = defaultdict(int)
    for (label, w), s in st.series.items():
        if w is not None and n in s.errors:
            by_label[label] += 1
    return [label for label, cnt in by_label.items() if cnt > 1]


# --------------------------------------------------------------------------------------------
# entry point


def write_report(store_path, out_dir, c: float | None = None, plots: bool = True) -> Path:
    """Write ``report.md`` and PNG plots for a results store.

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
        Draw the PNG figures (``False``: tables only, much faster).

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
            _plot_vs_n(st, w, path)
            figures[i].append(("test error vs N", path))
        for n in st.ns:
            if _width_labels(st, n):
                path = out / _unique(f"error_vs_width_{base}_n{n}", used)
                _plot_vs_width(st, n, path)
                figures[i].append(("test error vs width", path))
    md = _markdown(settings, figures, rows, sweeps, store_path)
    report = out / "report.md"
    report.write_text(md, encoding="utf-8")
    return report


# --------------------------------------------------------------------------------------------
# formatting helpers


def _g(x) -> str:
    if x is None:
        return "-"
    x = float(x)
    if math.isnan(x):
        return "nan"
    return f"{x:.3g}"


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
