"""Reports from a hand-made store: files written, statistics and sample complexity right."""

from __future__ import annotations

import pytest

from fastkernels.experiments import ResultsStore, StoreError, summary_table, write_report
from fastkernels.experiments.report import analyse

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


def _row(i, label, width, n, seed, err, alpha=0.5):
    params = {"d": 8, "k": 4, "alpha": alpha, "beta": 1.0, "noise": 0.0, "seed": seed}
    return {
        "key": f"key{i}",
        "sweep": "s",
        "label": label,
        "learner_type": "fake_net" if width else "fake_kernel",
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
        "config": {"concept": {"name": "parity", "params": params}},
        "finished_at": "2024-01-01T00:00:00+00:00",
    }


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
    mean, std, lo, hi, n = first.series[("net", 4)].stats(100)
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
