"""Results store: recognises its own files, refuses and never touches foreign ones."""

from __future__ import annotations

import math
import os
import sqlite3

import pytest

from fastkernels.experiments import ResultsStore, StoreError
from fastkernels.experiments.store import APPLICATION_ID, COLUMNS, SCHEMA_VERSION


def make_row(key="k1", **over):
    row = {
        "key": key,
        "sweep": "s",
        "label": "net",
        "learner_type": "fake_net",
        "concept": "parity",
        "n_train": 100,
        "n_test": 50,
        "width": 8,
        "alpha": 0.5,
        "beta": 1.0,
        "k": 4,
        "seed": 0,
        "test_error": 0.25,
        "train_error": 0.125,
        "threshold": 1.0,
        "hparams": {"lr": 0.1},
        "wall_time_s": 0.01,
        "versions": {"fastkernels": "0.1.0"},
        "config": {"seed": 0, "learner": {"type": "fake_net", "params": {"lr": 0.1}}},
        "finished_at": "2024-01-01T00:00:00+00:00",
        "config_hash": "h1",
        "status": {"kind": "network", "final_loss": 0.1, "diverged": False},
        "flags": [],
        "fit_time_s": 0.005,
        "peak_rss_mib": 12.5,
        "zero_error": 1.25,
        "device": "cpu",
    }
    row.update(over)
    return row


def test_new_store_roundtrip(tmp_path):
    path = tmp_path / "sub" / "r.db"
    with ResultsStore(path) as st:
        assert len(st) == 0 and st.finished_keys() == set()
        assert st.add(make_row("a"))
        assert st.add(make_row("b", width=None, test_error=float("nan"), hparams={}))
        assert not st.add(make_row("a", test_error=9.0))  # the first result wins
        assert st.meta()["schema_version"] == str(SCHEMA_VERSION)
    with ResultsStore(path, create=False) as st:
        assert st.finished_keys() == {"a", "b"} and len(st) == 2
        rows = st.rows()
    assert [r["key"] for r in rows] == ["a", "b"]
    assert set(rows[0]) == {c for c, _ in COLUMNS}
    assert rows[0]["test_error"] == 0.25 and rows[0]["hparams"] == {"lr": 0.1}
    assert rows[1]["width"] is None and math.isnan(rows[1]["test_error"])
    assert rows[0]["flags"] == [] and rows[0]["fit_time_s"] == 0.005
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA application_id").fetchone()[0] == APPLICATION_ID


def test_add_rejects_wrong_columns(tmp_path):
    with ResultsStore(tmp_path / "r.db") as st:
        row = make_row()
        del row["seed"]
        with pytest.raises(ValueError, match="missing columns"):
            st.add(row)
        assert len(st) == 0


def test_empty_file_is_refused_untouched(tmp_path):
    # a store is created complete under a temporary name, so an empty file was never one
    path = tmp_path / "r.db"
    path.touch()
    for create in (True, False):
        with pytest.raises(StoreError, match=r"empty file \(0 bytes\)"):
            ResultsStore(path, create=create)
    assert path.stat().st_size == 0 and os.listdir(tmp_path) == ["r.db"]


def test_flags_status_and_nan_roundtrip(tmp_path):
    with ResultsStore(tmp_path / "r.db") as st:
        st.add(make_row("a", flags=["unconverged", "grid_edge"], peak_rss_mib=float("nan")))
        with pytest.raises(ValueError, match="unknown flags"):
            st.add(make_row("b", flags=["slow"]))
        (row,) = st.rows()
    assert row["flags"] == ["unconverged", "grid_edge"] and math.isnan(row["peak_rss_mib"])
    assert row["status"]["kind"] == "network" and row["config_hash"] == "h1"


def _foreign_sqlite(path):
    conn = sqlite3.connect(path)
    conn.execute("CREATE TABLE trials (key TEXT)")
    conn.execute("INSERT INTO trials VALUES ('x')")
    conn.commit()
    conn.close()


@pytest.mark.parametrize(
    "kind, words",
    [
        ("text", "not an SQLite database"),
        ("random", "not an SQLite database"),
        ("sqlite", "application_id 0"),
        ("sqlite-header-only", "truncated"),
    ],
)
def test_foreign_files_refused_untouched(tmp_path, kind, words):
    path = tmp_path / "x.db"
    if kind == "text":
        path.write_text("key,test_error\nabc,0.1\n")
    elif kind == "random":
        path.write_bytes(os.urandom(4096))
    elif kind == "sqlite":
        _foreign_sqlite(path)
    else:
        path.write_bytes(b"SQLite format 3\x00" + b"\x00" * 20)
    before = path.read_bytes()
    mtime = path.stat().st_mtime_ns
    listing = sorted(os.listdir(tmp_path))
    for create in (True, False):
        with pytest.raises(StoreError) as info:
            ResultsStore(path, create=create)
        msg = str(info.value)
        assert "\n" not in msg and str(path) in msg and words in msg
    assert path.read_bytes() == before and path.stat().st_mtime_ns == mtime
    assert sorted(os.listdir(tmp_path)) == listing  # no journal or side file left behind


def test_missing_store_without_create(tmp_path):
    with pytest.raises(StoreError, match="no such results store"):
        ResultsStore(tmp_path / "nope.db", create=False)
    assert not (tmp_path / "nope.db").exists()
    with pytest.raises(StoreError, match="is a directory"):
        ResultsStore(tmp_path)


def test_newer_schema_refused(tmp_path):
    path = tmp_path / "r.db"
    ResultsStore(path).close()
    with sqlite3.connect(path) as conn:
        conn.execute(
            "UPDATE meta SET value = ? WHERE key = 'schema_version'", (str(SCHEMA_VERSION + 1),)
        )
    with pytest.raises(StoreError, match="newer"):
        ResultsStore(path)


def test_same_application_id_without_meta_refused(tmp_path):
    path = tmp_path / "r.db"
    conn = sqlite3.connect(path)
    conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
    conn.execute("CREATE TABLE other (x)")
    conn.commit()
    conn.close()
    with pytest.raises(StoreError, match="no schema version"):
        ResultsStore(path)


def test_record_sweep(tmp_path):
    with ResultsStore(tmp_path / "r.db") as st:
        st.record_sweep("s", "first", {"report": {"c": 2.0}})
        st.record_sweep("s", "second", {"report": {"c": 3.0}})
        (sw,) = st.sweeps()
    assert sw["name"] == "s" and sw["description"] == "second" and sw["spec"]["report"]["c"] == 3.0


def test_new_store_without_hard_links(tmp_path, monkeypatch):
    # Built under a temporary name and moved into place; on a file system without hard links
    # the move is a rename, and nothing but the store is left behind.
    def no_link(*args):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(os, "link", no_link)
    with ResultsStore(tmp_path / "r.db") as st:
        assert st.add(make_row("a"))
    assert os.listdir(tmp_path) == ["r.db"]
    with ResultsStore(tmp_path / "r.db", create=False) as st:
        assert st.finished_keys() == {"a"}
