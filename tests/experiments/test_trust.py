"""The cases that made sweeps untrustworthy, end to end: an edited sweep is never pooled with
its earlier version, settings that cannot change results rerun nothing, and unconverged,
diverged and grid-edge trials are marked in the row, the report and the summary."""

from __future__ import annotations

import re

import pytest

from fastkernels.cli import main
from fastkernels.experiments import (
    ResultsStore,
    expand,
    parse_spec,
    run_sweep,
    summary_table,
    write_report,
)
from fastkernels.experiments._validate import load_toml

pytestmark = pytest.mark.usefixtures("fake_learners")


def _cells(report: str, label: str) -> list[str]:
    """The filled N cells of the first row of ``label`` (the test-error table) in report.md."""
    for line in report.splitlines():
        if line.startswith(f"| {label} |"):
            cells = [c.strip() for c in line.strip("|").split("|")][1:]
            return [c for c in cells if "(" in c]  # "mean ± std (seeds)"; not width, not empty
    raise AssertionError(f"no row {label!r} in\n{report}")


def test_edited_sweep_is_never_pooled(base_toml, tmp_path):
    path = tmp_path / "r.db"
    first = run_sweep(parse_spec(base_toml, "s.toml"), path, progress=False)
    assert (first.ran, first.unused) == (12, 0)
    data = load_toml(base_toml)
    data["learners"][1]["ridge"] = 100.0  # same label, another learner
    edited = parse_spec(data, "s.toml")
    second = run_sweep(edited, path, progress=False)
    # the kernel's 4 trials are new; the old 4 are no longer part of the sweep, and said so
    assert (second.ran, second.skipped, second.unused) == (4, 8, 4)
    report = write_report(path, tmp_path / "out", plots=False).read_text()
    for name in ("kern [ridge=1]", "kern [ridge=100]"):
        cells = _cells(report, name)
        assert [c.endswith("(2)") for c in cells] == [True, True], cells  # 2 seeds, not 4
    summary = summary_table(path)
    assert "kern [ridge=1]" in summary and "kern [ridge=100]" in summary
    # a second sweep file under another name, same label, its own configuration: its own row
    data["sweep"]["name"] = "other"
    data["learners"][1]["ridge"] = 7.0
    run_sweep(parse_spec(data, "o.toml"), path, progress=False)
    report = write_report(path, tmp_path / "out", plots=False).read_text()
    assert _cells(report, "kern [ridge=7]")[0].endswith("(2)")
    assert _cells(report, "kern [ridge=1]")[0].endswith("(2)")


def test_settings_that_cannot_change_results_rerun_nothing(base_toml, tmp_path):
    path = tmp_path / "r.db"
    run_sweep(parse_spec(base_toml, "s.toml"), path, progress=False, isolation="none")
    data = load_toml(base_toml)
    data["learners"][0]["verbose"] = False  # the runner's default anyway
    data["learners"][0]["fail_n"] = 0  # a default spelled out
    again = run_sweep(parse_spec(data, "s.toml"), path, progress=False, isolation="none")
    assert (again.ran, again.skipped, again.unused) == (0, 12, 0)
    with ResultsStore(path) as st:
        assert len(st) == 12


def test_diverged_trials_are_marked_in_row_report_and_summary(base_toml, tmp_path):
    data = load_toml(base_toml)
    data["learners"][0]["diverge"] = True
    spec = parse_spec(data, "s.toml")
    path = tmp_path / "r.db"
    result = run_sweep(spec, path, progress=False)
    assert result.flagged == {"diverged": 8}
    with ResultsStore(path) as st:
        rows = st.rows()
    net = [r for r in rows if r["label"] == "net"]
    assert all(r["flags"] == ["diverged"] and r["status"]["diverged"] for r in net)
    assert all(r["flags"] == [] for r in rows if r["label"] == "kern")
    report = write_report(path, tmp_path / "out", plots=False).read_text()
    assert all("[D2]" in c for c in _cells(report, "net"))
    summary = summary_table(path)
    assert "[D2]" in summary and "0 unconverged, 8 diverged, 0 at a grid edge (of 12" in summary


def test_grid_edge_and_unconverged_marks(base_toml, tmp_path):
    data = load_toml(base_toml)
    data["learners"][1].update(converged=False, edge=True)
    path = tmp_path / "r.db"
    result = run_sweep(parse_spec(data, "s.toml"), path, progress=False)
    assert result.flagged == {"unconverged": 4, "grid_edge": 4}
    report = write_report(path, tmp_path / "out", plots=False).read_text()
    cells = _cells(report, "kern")
    assert len(cells) == 2 and all("[U2 E2]" in c for c in cells), cells
    assert "U = unconverged" in report and "max_iter" in report  # the stop reason is shown


def test_unconverged_kernel_solve_through_the_command_line(tmp_path, capsys):
    # The case as a user met it: CG with max_iter = 2 stored a test error far from the exact
    # solve's, and nothing said so. Now the row, the report and the summary do.
    spec = tmp_path / "cg.toml"
    spec.write_text(
        """
[sweep]
name = "cg2"
n_train = [600]
seeds = [0, 1]
n_test = 200

[concept]
name = "parity"
d = 8
k = 4
alpha = 0.5

[[learners]]
label = "RBF cg"
type = "kernel_ridge"
kernel = "rbf"
kernel_params = { gamma = 0.1 }
ridge = 1e-3
solver = "cg"
max_iter = 2
"""
    )
    store = tmp_path / "r.db"
    assert main(["run", str(spec), "--store", str(store), "--out", str(tmp_path / "o")]) == 0
    out = capsys.readouterr().out
    assert "status: 2 unconverged, 0 diverged, 0 at a grid edge (of 2 trials)" in out
    assert re.search(r"RBF cg .*\[U2\]", out), out
    with ResultsStore(store) as st:
        rows = st.rows()
    for row in rows:
        assert row["flags"] == ["unconverged"]
        st_ = row["status"]
        assert st_["converged"] is False and st_["iterations"] == 2 and st_["solver"] == "cg"
        assert st_["final_residual"] > 1e-4 and "max_iter" in st_["stop_reason"]
    report = (tmp_path / "o" / "report.md").read_text()
    assert "[U2]" in _cells(report, "RBF cg")[0]
    assert main(["report", str(store), "--out", str(tmp_path / "o2")]) == 0
    assert "2 unconverged" in capsys.readouterr().out
    assert len(expand(parse_spec(spec.read_text()))) == 2


def test_fit_status_table_says_every_cell_status(base_toml, tmp_path):
    data = load_toml(base_toml)
    data["learners"][0]["diverge"] = True
    data["learners"][1]["converged"] = True
    path = tmp_path / "r.db"
    run_sweep(parse_spec(data, "s.toml"), path, progress=False, isolation="none")
    report = write_report(path, tmp_path / "out", plots=False).read_text()
    table = report[report.index("### Fit status") : report.index("### Status")]
    kern = next(line for line in table.splitlines() if line.startswith("| kern |"))
    assert kern.count("cg: 2/2 converged, residual <= 0.0001") == 2, kern
    net = next(line for line in table.splitlines() if line.startswith("| net |"))
    assert net.count("2/2 diverged, a final loss is nan") == 2, net
