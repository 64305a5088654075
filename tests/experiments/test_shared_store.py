"""Runs that share a store share the work; a store that cannot be used stops before any trial.

Store problems (corrupt pages, read-only file or folder, empty file) are one line and exit
status 2 before any trial runs, leaving the file as it was; a store that fails while a sweep
runs keeps the computed result in a file that the next run imports. Two processes on one store
compute each trial once; a claim whose process died is taken over.
"""

from __future__ import annotations

import contextlib
import os
import re
import socket
import subprocess
import sys
import time

import pytest
from helpers import cli_exit_2

from fastkernels.cli import main
from fastkernels.experiments import ResultsStore, StoreError, expand, parse_spec, run_sweep
from fastkernels.experiments import store as store_mod
from fastkernels.experiments.store import Owner

pytestmark = pytest.mark.usefixtures("fake_learners")


def _cli(args, cwd):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen(
        [sys.executable, "-m", "fastkernels", *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def test_two_processes_compute_each_trial_once(tmp_path, kernel_toml):
    spec_path = tmp_path / "shared.toml"
    spec_path.write_text(kernel_toml)
    store = tmp_path / "S.db"
    args = ["run", str(spec_path), "--store", str(store), "--no-report"]
    procs = [_cli(args, tmp_path) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [e for _, e in outs]
    total = len(expand(parse_spec(kernel_toml)))
    ran = []
    for out, _ in outs:
        m = re.search(r"ran (\d+) trials in this process", out)
        assert m, out
        ran.append(int(m.group(1)))
    # Each trial computed by exactly one of the two processes, and each says how many it ran.
    assert sum(ran) == total, outs
    with ResultsStore(store) as st:
        assert len(st) == total and st.claims() == []
        keys = [r["key"] for r in st.rows()]
    assert sorted(keys) == sorted(t.key for t in expand(parse_spec(kernel_toml)))


def _dead_owner() -> Owner:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    start = store_mod._process_start(proc.pid)
    proc.wait()
    return Owner(socket.gethostname(), proc.pid, start or "gone")


def test_claims(tmp_path):
    me = Owner.this_process()
    with ResultsStore(tmp_path / "r.db") as st:
        assert st.claim("a", me) == "claimed" and st.claim("a", me) == "claimed"
        # another live process on this machine (our parent) holds "b": busy
        parent = Owner(socket.gethostname(), os.getppid(), store_mod._process_start(os.getppid()))
        assert st.claim("b", parent) == "claimed"
        assert st.claim("b", me) == "busy"
        # a claim whose process died is taken over
        assert st.claim("c", _dead_owner()) == "claimed"
        assert st.claim("c", me) == "claimed"
        # a pid reused by another process is not the claim's owner (start times differ)
        impostor = Owner(socket.gethostname(), os.getppid(), "123")
        assert st.claim("d", impostor) == "claimed" and st.claim("d", me) == "claimed"
        # another machine: alive while its heartbeat is fresh
        remote = Owner("elsewhere.example", 4242, "1")
        assert st.claim("e", remote) == "claimed"
        assert st.claim("e", me, ttl=60) == "busy"
        assert st.claim("e", me, ttl=0) == "claimed"
        st.release("a", me)
        assert {c["key"] for c in st.claims()} == {"b", "c", "d", "e"}
        # a stored trial is done, whoever claims it
        from test_store import make_row

        assert st.add(make_row("c"), me)
        assert st.claim("c", parent) == "done" and "c" not in {c["key"] for c in st.claims()}


def test_run_waits_for_a_live_claim_and_takes_over_a_dead_one(base_toml, tmp_path):
    spec = parse_spec(base_toml, "s.toml")
    trials = expand(spec)
    path = tmp_path / "r.db"
    with ResultsStore(path) as st:
        st.claim(trials[0].key, _dead_owner())
    result = run_sweep(spec, path, progress=False, isolation="none")
    assert (result.ran, result.by_others) == (len(trials), 0)
    # a trial held by a live process is waited for, then counted as computed by others
    data_path = tmp_path / "r2.db"
    parent = Owner(socket.gethostname(), os.getppid(), store_mod._process_start(os.getppid()))
    with ResultsStore(data_path) as st:
        st.claim(trials[0].key, parent)
    calls = []

    def finish_it(self, waiting):
        # the "other process" stores its result while this one waits
        calls.append(len(waiting))
        row = ResultsStore(path, create=False).rows()[0]
        with ResultsStore(data_path) as other:
            other.add(row, parent)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr("fastkernels.experiments.runner._RunContext.wait", finish_it)
        result = run_sweep(spec, data_path, progress=False, isolation="none")
    assert calls == [1] and (result.ran, result.by_others) == (len(trials) - 1, 1)


def test_unwritable_store_mid_run_keeps_the_result(base_toml, tmp_path, monkeypatch):
    spec = parse_spec(base_toml, "s.toml")
    path = tmp_path / "r.db"
    real_add = ResultsStore.add
    calls = {"n": 0}

    def failing_add(self, row, owner=None):
        calls["n"] += 1
        if calls["n"] == 3:
            raise StoreError(f"{self.path}: disk full (database or disk is full)")
        return real_add(self, row, owner)

    monkeypatch.setattr(ResultsStore, "add", failing_add)
    with pytest.raises(StoreError) as info:
        run_sweep(spec, path, progress=False, isolation="none")
    msg = str(info.value)
    assert "disk full" in msg and "kept in" in msg and "\n" not in msg
    kept = [p for p in tmp_path.iterdir() if ".unsaved-" in p.name]
    assert len(kept) == 1 and str(kept[0]) in msg
    monkeypatch.setattr(ResultsStore, "add", real_add)
    result = run_sweep(spec, path, progress=False, isolation="none")
    assert result.imported == 1 and result.skipped == 3 and result.ran == 12 - 3
    assert not kept[0].exists()
    with ResultsStore(path) as st:
        assert sorted(r["key"] for r in st.rows()) == sorted(t.key for t in expand(spec))
        assert st.claims() == []


def test_each_trial_peak_memory_is_its_own(base_toml, tmp_path):
    # Every trial holds 64 MiB for a moment; in a process per trial each peak shows it (in one
    # long-lived process, memory kept by the allocator hides later trials' peaks).
    data = base_toml.replace("lr = 0.2", "lr = 0.2\nalloc_mib = 64")
    spec = parse_spec(data, "s.toml")
    path = tmp_path / "r.db"
    run_sweep(spec, path, progress=False)
    with ResultsStore(path) as st:
        rows = [r for r in st.rows() if r["label"] == "net"]
    assert len(rows) == 8
    if all(r["peak_rss_mib"] != r["peak_rss_mib"] for r in rows):
        pytest.skip("peak memory is not measurable on this platform")
    assert all(r["peak_rss_mib"] >= 60 for r in rows), [r["peak_rss_mib"] for r in rows]
    assert all(r["fit_time_s"] >= 0 for r in rows)


# -- the store's error contract, through the command line ---------------------------------


def _populated_store(path, base_toml):
    run_sweep(parse_spec(base_toml, "s.toml"), path, progress=False, isolation="none")


def test_corrupt_store_exit_2_before_any_trial(base_toml, tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(base_toml.replace('"t"', '"t2"'))  # a new sweep: all its trials would run
    store = tmp_path / "r.db"
    _populated_store(store, base_toml)
    data = bytearray(store.read_bytes())
    assert len(data) >= 4 * 4096
    data[2 * 4096 : 3 * 4096] = os.urandom(4096)  # one page of the database
    store.write_bytes(bytes(data))
    for args in (["run", str(spec), "--store", str(store)], ["report", str(store)]):
        cli_exit_2(args, capsys, str(store), "corrupt")
        assert store.read_bytes() == bytes(data)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.db", "s.toml"]


def test_empty_store_exit_2(base_toml, tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(base_toml)
    store = tmp_path / "r.db"
    store.touch()
    for args in (["run", str(spec), "--store", str(store)], ["report", str(store)]):
        cli_exit_2(args, capsys, str(store), "empty file (0 bytes)")
    assert store.stat().st_size == 0


@contextlib.contextmanager
def _read_only(path):
    """Make ``path`` (file or folder) unwritable, for root too (immutable attribute)."""
    if os.geteuid() != 0:
        mode = path.stat().st_mode
        path.chmod(0o555 if path.is_dir() else 0o444)
        try:
            yield
        finally:
            path.chmod(mode)
        return
    if subprocess.run(["chattr", "+i", str(path)], capture_output=True).returncode != 0:
        pytest.skip("running as root on a file system without the immutable attribute")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", str(path)], check=True)


@pytest.mark.parametrize("what", ["file", "folder"])
def test_read_only_store_exit_2_before_any_trial(base_toml, tmp_path, capsys, what):
    spec = tmp_path / "s.toml"
    spec.write_text(base_toml.replace('"t"', '"t2"'))
    folder = tmp_path / "store"
    store = folder / "r.db"
    _populated_store(store, base_toml)
    before = store.read_bytes()
    with _read_only(store if what == "file" else folder):
        cli_exit_2(
            ["run", str(spec), "--store", str(store), "--no-report"], capsys, str(store), "writ"
        )
        # a report only reads: it works on a read-only store
        assert main(["report", str(store), "--out", str(tmp_path / "rep")]) == 0
    assert store.read_bytes() == before
    assert sorted(p.name for p in folder.iterdir()) == ["r.db"]


def test_new_store_in_read_only_folder_exit_2(base_toml, tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(base_toml)
    folder = tmp_path / "ro"
    folder.mkdir()
    with _read_only(folder):
        cli_exit_2(["run", str(spec), "--store", str(folder / "r.db")], capsys, "cannot create")
    assert list(folder.iterdir()) == []


def test_locked_store_is_one_line(base_toml, tmp_path, monkeypatch):
    import sqlite3

    path = tmp_path / "r.db"
    ResultsStore(path).close()
    monkeypatch.setattr(store_mod, "LOCK_TIMEOUT_S", 0.2)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        t0 = time.monotonic()
        with pytest.raises(StoreError, match="locked by another process") as info:
            ResultsStore(path)
        assert "\n" not in str(info.value) and time.monotonic() - t0 < 30
    finally:
        holder.execute("ROLLBACK")
        holder.close()
