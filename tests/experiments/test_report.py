"""Reports from a hand-made store: files written, statistics and sample complexity right."""

from __future__ import annotations

import math

import pytest

from fastkernels.experiments import ResultsStore, StoreError, summary_table, write_report
from fastkernels.experiments.report import analyse, plot_vs_n, status_counts
from fastkernels.experiments.trials import learner_config_hash

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"

# (label, width, N) -> test errors over seeds. parity k = 4, alpha = 0.5: k alpha^2 = 1,
# default c = k / 2 = 2, level c alpha^2 = 0.5.
ERRORS = {
    ("net", 4, 100): [1.2, 1.0, 0.8],
    ("net", 4, 200): [0.3, 0.4, 0.5],
    ("net", 8, 100): [0.3, 0.3, 0.3],
    ("net", 8, 200): [0.1],
    ("kern", None, 100): [2.0, 2.2],
    ("kern", None, 200): [1.5, 1.7],
}


def _row(
    i,
    label,
    width,
    n,
    seed,
    err,
    alpha=0.5,
    *,
    ltype=None,
    lparams=None,
    flags=(),
    status=None,
    fit_time_s=0.5,
    peak_rss_mib=10.0,
    zero_error=1.1,
):
    params = {"d": 8, "k": 4, "alpha": alpha, "beta": 1.0, "noise": 0.0, "seed": seed}
    ltype = ltype or ("fake_net" if width else "fake_kernel")
    lparams = dict(lparams or {}) | ({} if width is None else {"width": width})
    learner = {"type": ltype, "label": label, "params": lparams}
    return {
        "key": f"key{i}",
        "sweep": "s",
        "label": label,
        "learner_type": ltype,
        "concept": "parity",
        "n_train": n,
        "n_test": 50,
        "width": width,
        "alpha": alpha,
        "beta": 1.0,
        "k": 4,
        "seed": seed,
        "test_error": err,
        "train_error": err / 2,
        "threshold": 4 * alpha**2,
        "hparams": {},
        "wall_time_s": 0.1,
        "versions": {"fastkernels": "0.1.0", "torch": "2.x", "python": "3.11", "platform": "x"},
        "config": {"concept": {"name": "parity", "params": params}, "learner": learner},
        "finished_at": "2024-01-01T00:00:00+00:00",
        "config_hash": learner_config_hash(learner),
        "status": status if status is not None else {"kind": "other", "grid_edge": []},
        "flags": list(flags),
        "fit_time_s": fit_time_s,
        "peak_rss_mib": peak_rss_mib,
        "zero_error": zero_error,
        "device": "cpu",
    }


def _store(path, rows):
    with ResultsStore(path) as st:
        st.record_sweep("s", "A hand-made sweep.", {"sweep": {"name": "s"}})
        for row in rows:
            st.add(row)
    return path


@pytest.fixture
def store_path(tmp_path):
    path = tmp_path / "r.db"
    with ResultsStore(path) as st:
        st.record_sweep("s", "A hand-made sweep.", {"sweep": {"name": "s"}})
        i = 0
        for (label, width, n), errs in ERRORS.items():
            for seed, err in enumerate(errs):
                st.add(_row(i, label, width, n, seed, err))
                i += 1
        # a second setting (another alpha): its own figures and tables
        st.add(_row(i, "kern", None, 100, 0, 0.05, alpha=0.3))
    return path


def _series(st, label, width):
    """The one series of ``label`` at ``width`` in a setting (keys also carry the config hash)."""
    (found,) = [s for (lab, w, _), s in st.series.items() if (lab, w) == (label, width)]
    return found


def test_write_report(store_path, tmp_path):
    out = tmp_path / "out"
    report = write_report(store_path, out)
    assert report == out / "report.md"
    md = report.read_text()
    pngs = sorted(p.name for p in out.glob("*.png"))
    assert pngs == [
        "error_vs_n_a0.3_b1.png",
        "error_vs_n_a0.5_b1_w4.png",
        "error_vs_n_a0.5_b1_w8.png",
        "error_vs_width_a0.5_b1_n100.png",
        "error_vs_width_a0.5_b1_n200.png",
    ]
    for name in pngs:
        assert (out / name).read_bytes()[:8] == PNG_MAGIC
        assert f"]({name})" in md
    assert "A hand-made sweep." in md
    assert "k alpha^2 = 1 (k = 4)" in md
    assert "c alpha^2 = 0.5 with c = 2 (default k/2)" in md
    # learner x N table: mean ± sample std (n seeds)
    assert "| net | 4 | 1 ± 0.2 (3) | 0.4 ± 0.1 (3) |" in md
    assert "| net | 8 | 0.3 ± 0 (3) | 0.1 (1) |" in md
    assert "| kern | - | 2.1 ± 0.141 (2) | 1.6 ± 0.141 (2) |" in md
    # sample complexity: smallest N with mean < 0.5
    assert "| net | 4 | 200 |" in md
    assert "| net | 8 | 100 |" in md
    assert "| kern | - | not reached |" in md
    assert "fastkernels 0.1.0, torch 2.x" in md


def test_sample_complexity_c(store_path, tmp_path):
    # c = 8: level 2, so the kernel reaches it at N = 200 (mean 1.6) but not at 100 (mean 2.1)
    md = write_report(store_path, tmp_path / "o", c=8, plots=False).read_text()
    assert "| kern | - | 200 |" in md and "c = 8 (given)" in md
    # the sweep file's [report] c is the default when no c is given
    with ResultsStore(store_path) as st:
        st.record_sweep("s", "A hand-made sweep.", {"report": {"c": 8.0}})
    md = write_report(store_path, tmp_path / "o2", plots=False).read_text()
    assert "| kern | - | 200 |" in md and "c = 8 (from the sweep file)" in md
    assert not list((tmp_path / "o2").glob("*.png"))
    with pytest.raises(ValueError, match="c must be"):
        write_report(store_path, tmp_path / "o3", c=-1)


def test_analyse_and_summary(store_path):
    with ResultsStore(store_path) as st:
        rows = st.rows()
    first, second = analyse(rows)
    assert first.ns == [100, 200] and first.widths == [4, 8] and first.level == pytest.approx(0.5)
    assert second.alpha == 0.3 and second.widths == []
    mean, std, lo, hi, n = _series(first, "net", 4).stats(100)
    assert (mean, lo, hi, n) == (pytest.approx(1.0), 0.8, 1.2, 3) and std == pytest.approx(0.2)
    text = summary_table(store_path)
    lines = text.splitlines()
    assert any(line.split()[:3] == ["net", "[w=4]", "1"] and line.endswith("200") for line in lines)
    assert any(line.startswith("  kern") and line.endswith("not reached") for line in lines)


def test_empty_and_missing_store(tmp_path):
    ResultsStore(tmp_path / "e.db").close()
    md = write_report(tmp_path / "e.db", tmp_path / "o").read_text()
    assert "No finished trials." in md
    with pytest.raises(StoreError):
        write_report(tmp_path / "missing.db", tmp_path / "o")


def _variance(seed, alpha=0.5, n_test=50):
    """Label variance of the test set of a _row's concept."""
    from fastkernels.concepts import make_concept

    c = make_concept("parity", d=8, k=4, alpha=alpha, beta=1.0, noise=0.0, seed=seed)
    return c.label_variance(n_test)


def _rel(errs):
    """The summary's relative-error token for one error per seed 0, 1, ... (mean of ratios)."""
    from fastkernels.experiments.report import _g

    return f"({_g(sum(e / _variance(s) for s, e in enumerate(errs)) / len(errs))})"


def _line(md, start):
    """The one line of ``md`` that starts with ``start``."""
    found = [line for line in md.splitlines() if line.startswith(start)]
    assert len(found) == 1, (start, found)
    return found[0]


def test_configurations_under_one_label_are_not_pooled(tmp_path):
    # A sweep edited (ridge 1e-3 -> 100) and rerun into the same store under the same label.
    rows, i = [], 0
    for ridge, err in ((0.001, 0.2), (100.0, 2.0)):
        for seed in range(3):
            err_s = err + 0.1 * (seed - 1)
            rows.append(_row(i, "RBF ridge", None, 100, seed, err_s, lparams={"ridge": ridge}))
            i += 1
    # one label, two learner types with the same parameters: named by the type
    for ltype in ("fake_kernel", "other_kernel"):
        rows.append(_row(i, "K", None, 100, 0, 0.3, ltype=ltype, lparams={"ridge": 1.0}))
        i += 1
    path = _store(tmp_path / "r.db", rows)
    (st,) = analyse(_rows(path))
    assert len(st.series) == 4
    assert {s.display for s in st.series.values()} == {
        "RBF ridge [ridge=0.001]",
        "RBF ridge [ridge=100]",
        "K [type=fake_kernel]",
        "K [type=other_kernel]",
    }
    md = write_report(path, tmp_path / "o", plots=False).read_text()
    assert "| RBF ridge [ridge=0.001] | 0.2 ± 0.1 (3) |" in md
    assert "| RBF ridge [ridge=100] | 2 ± 0.1 (3) |" in md
    assert "(6)" not in md and "1.1 ±" not in md
    assert "| RBF ridge [ridge=0.001] | 100 |" in md
    assert "| RBF ridge [ridge=100] | not reached |" in md
    text = summary_table(path)
    assert _line(text, "  RBF ridge [ridge=0.001]").split()[-3:] == [
        "0.2", _rel([0.1, 0.2, 0.3]), "100"
    ]  # fmt: skip
    assert _line(text, "  RBF ridge [ridge=100]").split()[-4:] == [
        "2", _rel([1.9, 2.0, 2.1]), "not", "reached"
    ]  # fmt: skip
    fig = plot_vs_n(st)
    labels = fig.axes[0].get_legend_handles_labels()[1]
    assert "RBF ridge [ridge=0.001]" in labels and "RBF ridge [ridge=100]" in labels


def test_one_configuration_over_widths_is_one_learner(store_path):
    # the width is part of the configuration hash but has its own column: no [width=...] tag
    (first, _) = analyse(_rows(store_path))
    assert {s.display for s in first.series.values()} == {"net", "kern"}
    assert _series(first, "net", 4).config_hash != _series(first, "net", 8).config_hash


def _rows(path):
    with ResultsStore(path) as st:
        return st.rows()


UNCONVERGED = {
    "kind": "kernel",
    "grid_edge": [],
    "warnings": [],
    "solver": "cg",
    "iterations": 500,
    "final_residual": 0.0012,
    "converged": False,
    "n_centers": 100,
    "compute_dtype": "float32",
    "jitter": 0.0,
    "stop_reason": "max_iter",
}
EDGE = "ridge_grid: chose 1e-06, the smallest of [1e-06, 0.001, 1]"
AT_EDGE = {"kind": "kernel", "grid_edge": [EDGE], "warnings": [], "converged": True}
DIVERGED = {"kind": "network", "grid_edge": [], "warnings": [], "final_loss": "nan"}


@pytest.fixture
def flagged_path(tmp_path):
    """net: seed 2 diverged at N=100; kern: seed 0 unconverged at N=100, N=200 all at an edge."""
    rows, i = [], 0
    for n, errs in ((100, [1.0, 1.0, math.nan]), (200, [0.25, 0.25, 0.25])):
        for seed, err in enumerate(errs):
            bad = not math.isfinite(err)
            flags = ["diverged"] if bad else []
            rows.append(
                _row(i, "net", 8, n, seed, err, flags=flags, status=DIVERGED if bad else None)
            )
            i += 1
    for n, err in ((100, 0.375), (200, 0.125)):
        for seed in range(3):
            if n == 100:
                status, flags = (UNCONVERGED, ["unconverged"]) if seed == 0 else (None, [])
            else:
                status, flags = AT_EDGE, ["grid_edge"]
            rows.append(_row(i, "kern", None, n, seed, err, flags=flags, status=status))
            i += 1
    return _store(tmp_path / "f.db", rows)


def test_flagged_cells_are_marked(flagged_path, tmp_path):
    md = write_report(flagged_path, tmp_path / "o", plots=False).read_text()
    assert "| net | 8 | nan ± nan (3) [D1] | 0.25 ± 0 (3) |" in md
    assert "| kern | - | 0.375 ± 0 (3) [U1] | 0.125 ± 0 (3) [E3] |" in md
    legend, star_legend = [line for line in md.splitlines() if line.startswith("Marks:")]
    assert "U = unconverged kernel solve, D = diverged (non-finite loss" in legend
    assert "E = hyperparameter chosen at the edge of its grid" in legend
    assert "U on 1 cell (1 trial); D on 1 cell (1 trial); E on 1 cell (3 trials)" in legend
    assert "U on 1 entry (1 trial); D on 1 entry (1 trial)." in star_legend
    # N* rests on the cells up to it: kern reaches 0.5 at N=100 (its unconverged cell), net at
    # N=200, with the diverged cell at N=100 below it
    assert "| kern | - | 100 [U1] |" in md
    assert "| net | 8 | 200 [D1] |" in md
    # the Status section says why
    status = md[md.index("### Status") : md.index("## Versions")]
    assert "- net [w=8], N=100: [D1]" in status and "seed 2: final loss nan" in status
    assert "- kern, N=100: [U1]" in status
    assert "seed 0: solver cg, stopped: max_iter, 500 iterations" in status
    assert "- kern, N=200: [E3]" in status and status.count(EDGE) == 1
    assert "Status: 1 unconverged, 1 diverged, 3 at a grid edge (of 12 trials)." in md

    text = summary_table(flagged_path)
    assert _line(text, "  kern").split() == [
        "kern",
        "0.375",
        _rel([0.375] * 3),
        "[U1]",
        "0.125",
        _rel([0.125] * 3),
        "[E3]",
        "100",
        "[U1]",
    ]
    assert _line(text, "  net [w=8]").split()[2:] == [
        "nan", "[D1]", "0.25", _rel([0.25] * 3), "200", "[D1]"
    ]  # fmt: skip
    assert "U unconverged kernel solve" in text
    assert text.splitlines()[-1] == (
        "status: 1 unconverged, 1 diverged, 3 at a grid edge (of 12 trials)"
    )


def test_clean_store_has_no_marks(store_path, tmp_path):
    md = write_report(store_path, tmp_path / "o", plots=False).read_text()
    assert "[U" not in md and "[D" not in md and "[E" not in md and "Marks:" not in md
    clean = "Status: no trial in this table was unconverged, diverged or at a grid edge."
    assert md.count(clean) == 4  # test error and N* tables of both settings
    assert md.count("No trial was unconverged, diverged or at a grid edge.") == 2
    text = summary_table(store_path)
    assert text.splitlines()[-1] == (
        "status: 0 unconverged, 0 diverged, 0 at a grid edge (of 15 trials)"
    )


def test_status_counts(flagged_path, store_path):
    assert status_counts(_rows(flagged_path)) == {"unconverged": 1, "diverged": 1, "grid_edge": 3}
    assert list(status_counts(_rows(flagged_path))) == ["unconverged", "diverged", "grid_edge"]
    assert status_counts(_rows(store_path)) == {}
    assert status_counts([{"flags": ["grid_edge", "unconverged"]}]) == {
        "unconverged": 1,
        "grid_edge": 1,
    }


def test_cost_table(tmp_path):
    rows = [
        _row(0, "kern", None, 100, 0, 0.3, fit_time_s=1.0, peak_rss_mib=5.0),
        _row(1, "kern", None, 100, 1, 0.3, fit_time_s=10.0, peak_rss_mib=40.0),
        _row(2, "kern", None, 100, 2, 0.3, fit_time_s=2.0, peak_rss_mib=7.0),
        _row(3, "kern", None, 200, 0, 0.3, fit_time_s=math.nan, peak_rss_mib=math.nan),
        _row(4, "net", 8, 100, 0, 0.3, fit_time_s=0.25, peak_rss_mib=1500.0),
    ]
    md = write_report(_store(tmp_path / "c.db", rows), tmp_path / "o", plots=False).read_text()
    cost = md[md.index("### Cost") : md.index("### Status")]
    assert "| kern | - | 2 s / 40 MiB | - / - |" in cost
    assert "| net | 8 | 0.25 s / 1500 MiB |  |" in cost
    assert "median over seeds" in cost and "max over seeds" in cost


def test_svg_beside_every_png(store_path, tmp_path):
    out = tmp_path / "out"
    md = write_report(store_path, out).read_text()
    pngs = sorted(out.glob("*.png"))
    assert pngs and sorted(out.glob("*.svg")) == [p.with_suffix(".svg") for p in pngs]
    for png in pngs:
        svg = png.with_suffix(".svg")
        text = svg.read_text(encoding="utf-8")
        assert text.startswith("<?xml") and "<svg" in text
        assert f"]({svg.name})" in md
        # text is kept as text: the reference lines' labels are readable in the file
        assert "not learned: k·α² = " in text and "N* level: c·α² = " in text


def test_reference_lines(store_path):
    first, second = analyse(_rows(store_path))
    assert first.zero_level == pytest.approx(1.1)
    labels = plot_vs_n(first, 4).axes[0].get_legend_handles_labels()[1]
    assert labels[-3:] == [
        "zero predictor: 1.1",
        "not learned: k·α² = 1",
        "N* level: c·α² = 0.5 (c = 2)",
    ]
    assert labels[:2] == ["net", "kern"]
    # alpha = 0.3: k alpha^2 = 0.36, c = k/2 = 2, c alpha^2 = 0.18
    labels = plot_vs_n(second).axes[0].get_legend_handles_labels()[1]
    assert "not learned: k·α² = 0.36" in labels and "N* level: c·α² = 0.18 (c = 2)" in labels
    # no zero-predictor level recorded (old rows): no line
    for s in second.series.values():
        s.trials.clear()
    second.zero_errors = [math.nan]
    labels = plot_vs_n(second).axes[0].get_legend_handles_labels()[1]
    assert not any(label.startswith("zero predictor") for label in labels)


def test_relative_errors_beside_absolute(tmp_path):
    # The test error divided by the label variance of each trial's own test set, in a table of
    # its own and on a second axis of the plots; "-" where the concept cannot be rebuilt.
    rows = [_row(s, "net", 8, 100, s, 0.5 + 0.1 * s) for s in range(3)]
    unknown = _row(3, "kern", None, 100, 0, 0.7)
    unknown["concept"] = "gone"
    unknown["config"] = {**unknown["config"], "concept": {"name": "gone", "params": {}}}
    path = _store(tmp_path / "v.db", rows + [unknown])
    st, gone = analyse(_rows(path))
    assert math.isnan(gone.label_variance)
    ratios = [(0.5 + 0.1 * s) / _variance(s) for s in range(3)]
    net = _series(st, "net", 8)
    assert net.relative[100] == pytest.approx(ratios, rel=1e-12)
    assert math.isfinite(st.label_variance) and st.label_variance > 1.0
    md = write_report(path, tmp_path / "o", plots=False).read_text()
    from fastkernels.experiments.report import _g

    mean = sum(ratios) / 3
    sd = math.sqrt(sum((r - mean) ** 2 for r in ratios) / 2)
    assert "### Test error relative to the label variance" in md
    assert f"| net | 8 | {_g(mean)} ± {_g(sd)} (3) |" in md
    assert "| kern | - |" in md and "Label variance Var(y) = " in md
    fig = plot_vs_n(st, width=8)
    ax = fig.axes[0]
    second = [c for c in ax.get_children() if type(c).__name__ == "SecondaryAxis"]
    assert len(second) == 1 and "relative to label variance" in second[0].get_ylabel()
