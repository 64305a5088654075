"""The `fastkernels` command: subcommands, and one-line errors with exit status 2."""

from __future__ import annotations

import importlib.util
import os
import sqlite3
import subprocess
import sys

import pytest
import torch

from fastkernels import learners as learners_mod
from fastkernels.cli import main
from fastkernels.experiments import ResultsStore


@pytest.fixture
def fake(monkeypatch):
    # tests/ is on sys.path (a test folder without __init__.py), also in the trial processes,
    # which unpickle the registered class by module and name.
    from cli_fake import CliFake

    monkeypatch.setitem(learners_mod.LEARNERS, "cli_fake", CliFake)


SPEC = """
[sweep]
name = "clitest"
n_train = [20, 30]
seeds = [0, 1]
n_test = 40
description = "CLI test sweep"

[concept]
name = "parity"
d = 8
k = 4
alpha = 0.5

[[learners]]
label = "zero"
type = "cli_fake"
{extra}
"""


def _spec(tmp_path, extra=""):
    path = tmp_path / "s.toml"
    path.write_text(SPEC.format(extra=extra))
    return path


def _one_line_error(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("fastkernels: error: ")
    assert "Traceback" not in err
    return lines[0]


def test_run_then_report(fake, tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    spec = _spec(tmp_path)
    assert main(["run", str(spec), "--quiet"]) == 0
    out = capsys.readouterr().out
    # defaults: fastkernels-results/<sweep name>/ under the working directory
    assert out.strip() == "report: fastkernels-results/clitest/report.md"
    store = tmp_path / "fastkernels-results" / "clitest" / "results.db"
    with ResultsStore(store) as st:
        assert len(st) == 4
    # a second run skips everything and prints the summary table
    assert main(["run", str(spec), "--no-report"]) == 0
    captured = capsys.readouterr()
    assert "ran 0 trials in this process, 4 already stored" in captured.out
    assert "status: 0 unconverged, 0 diverged, 0 at a grid edge (of 4 trials)" in captured.out

    assert main(["report", str(store), "--out", str(tmp_path / "rep"), "--c", "3"]) == 0
    out = capsys.readouterr().out
    assert "zero" in out and "not reached" in out and "c = 3" in out
    assert (tmp_path / "rep" / "report.md").is_file()
    assert list((tmp_path / "rep").glob("*.png"))


def test_trial_value_error_is_one_line_and_writes_no_row(fake, tmp_path, capsys):
    spec = _spec(tmp_path, "bad_n = 30")
    store = tmp_path / "r.db"
    assert main(["run", str(spec), "--store", str(store), "--quiet"]) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert "'zero'" in line and "N=30" in line and "seed=0" in line and "ridge must be >= 0" in line
    with ResultsStore(store) as st:
        rows = st.rows()
    assert len(rows) == 2 and {r["n_train"] for r in rows} == {20}  # only the finished trials
    assert not (tmp_path / "report.md").exists()


@pytest.mark.parametrize(
    "args, words",
    [
        (["run", "{tmp}/missing.toml"], "no such sweep file"),
        (["run", "no-such-preset"], "neither a preset"),
        (["run", "{spec_bad}"], "[sweep]: unknown key 'colour'"),
        (["run", "{spec}", "--store", "{text}"], "not a fastkernels results store"),
        (["run", "{spec}", "--store", "{tmp}/st.db", "--device", "tpu"], "device"),
        (["report", "{tmp}/missing.db"], "no such results store"),
        (["report", "{text}"], "not a fastkernels results store"),
        (["report", "{tmp}/st.db", "--c", "-1"], "--c must be"),
    ],
)
def test_errors_exit_2_one_line(fake, tmp_path, capsys, args, words):
    spec = _spec(tmp_path)
    bad = tmp_path / "bad.toml"
    bad.write_text(SPEC.format(extra="").replace("[sweep]", '[sweep]\ncolour = "red"'))
    text = tmp_path / "notes.txt"
    text.write_text("not a database\n")
    ResultsStore(tmp_path / "st.db").close()
    subst = {
        "{tmp}": str(tmp_path),
        "{spec_bad}": str(bad),
        "{spec}": str(spec),
        "{text}": str(text),
    }
    argv = []
    for a in args:
        for k, v in subst.items():
            a = a.replace(k, v)
        argv.append(a)
    assert main(argv) == 2
    line = _one_line_error(capsys.readouterr().err)
    assert words in line
    assert text.read_text() == "not a database\n"
    with ResultsStore(tmp_path / "st.db") as st:
        assert len(st) == 0


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is available here")
def test_cuda_without_cuda(fake, tmp_path, capsys):
    assert (
        main(["run", str(_spec(tmp_path)), "--store", str(tmp_path / "r.db"), "--device", "cuda"])
        == 2
    )
    assert "CUDA is not available" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "r.db").exists()


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_without_ray(fake, tmp_path, capsys):
    assert (
        main(["run", str(_spec(tmp_path)), "--store", str(tmp_path / "r.db"), "--executor", "ray"])
        == 2
    )
    assert "'ray' package" in _one_line_error(capsys.readouterr().err)
    assert not (tmp_path / "r.db").exists()


def test_info(capsys):
    assert main(["info"]) == 0
    out = capsys.readouterr().out
    assert f"torch        {torch.__version__}" in out and "numpy" in out and "CUDA" in out
    for module in ("fastkernels._C", "triton", "pykeops", "ray"):
        line = next(line for line in out.splitlines() if line.strip().startswith(module))
        present = importlib.util.find_spec(module) is not None
        assert ("present" in line) if present else ("absent" in line)


def test_presets(capsys):
    assert main(["presets"]) == 0
    out = capsys.readouterr().out
    names = [line.split()[0] for line in out.splitlines()]
    assert {"quick", "paper-fig2a", "paper-fig2b", "all19"} <= set(names)


def test_python_dash_m_error_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[sweep]\nname = 3\n")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.run(
        [sys.executable, "-m", "fastkernels", "run", str(bad), "--store", str(tmp_path / "r.db")],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        env=env,
        timeout=120,
    )
    assert proc.returncode == 2
    line = _one_line_error(proc.stderr)
    assert f"{bad}: [sweep] name: expected a non-empty string, got 3" in line
    assert not (tmp_path / "r.db").exists()
    assert not (tmp_path / "fastkernels-results").exists()


def test_no_subcommand_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as info:
        main([])
    assert info.value.code == 2
    assert "usage: fastkernels" in capsys.readouterr().err


def test_store_is_sqlite(fake, tmp_path):
    # the default location is relative to the working directory, next to the report
    store = tmp_path / "x" / "r.db"
    assert main(["run", str(_spec(tmp_path)), "--store", str(store), "--quiet", "--no-report"]) == 0
    with sqlite3.connect(store) as conn:
        assert conn.execute("SELECT count(*) FROM trials").fetchone()[0] == 4
    assert not (store.parent / "report.md").exists()
