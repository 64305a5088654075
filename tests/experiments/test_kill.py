"""A sweep killed with SIGKILL at a random moment resumes to exactly one row per trial."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time

import pytest

from fastkernels.experiments import ResultsStore, expand, load_spec


def _count(path) -> int:
    """Rows committed so far, read without taking part in the writer's transactions."""
    if not path.exists():
        return 0
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=0.05)
        try:
            return conn.execute("SELECT count(*) FROM trials").fetchone()[0]
        finally:
            conn.close()
    except sqlite3.Error:  # not created yet, or locked for a moment by the writer
        return 0


def _processes_mentioning(path) -> list[str]:
    """Command lines of live processes that name ``path`` (Linux /proc; empty elsewhere)."""
    found = []
    for pid in os.listdir("/proc") if os.path.isdir("/proc") else []:
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                cmd = f.read().replace(b"\0", b" ").decode(errors="replace")
            with open(f"/proc/{pid}/stat", "rb") as f:
                zombie = f.read().rsplit(b")", 1)[1].split()[0] == b"Z"
        except OSError:
            continue
        if str(path) in cmd and not zombie:
            found.append(f"{pid}: {cmd[:120]}")
    return found


@pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals")
def test_sigkill_then_resume(tmp_path, kernel_toml):
    spec_path = tmp_path / "tiny.toml"
    spec_path.write_text(kernel_toml)
    store = tmp_path / "S.db"
    cmd = [
        sys.executable,
        "-m",
        "fastkernels",
        "run",
        str(spec_path),
        "--store",
        str(store),
        "--quiet",
        "--no-report",
    ]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}

    proc = subprocess.Popen(
        cmd, cwd=tmp_path, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        deadline = time.monotonic() + 60
        while _count(store) < 1:
            assert proc.poll() is None, proc.stderr.read().decode()
            assert time.monotonic() < deadline, "no row after 60 s"
            time.sleep(0.005)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        proc.stderr.close()
    expected = sorted(t.key for t in expand(load_spec(spec_path)))
    assert proc.returncode == -signal.SIGKILL
    # Nothing of the killed run keeps computing: its trial process and the fork server it came
    # from exit (their command lines carry the run's folder, from its sys.path).
    deadline = time.monotonic() + 20
    while _processes_mentioning(tmp_path):
        assert time.monotonic() < deadline, _processes_mentioning(tmp_path)
        time.sleep(0.2)
    with ResultsStore(store) as st:  # rolls back a hot journal left by the kill, if any
        n_killed = len(st)
    assert 1 <= n_killed < len(expected), "the kill should land mid-sweep"

    done = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    conn = sqlite3.connect(store)
    try:
        counts = dict(conn.execute("SELECT key, count(*) FROM trials GROUP BY key"))
        assert conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
        assert (
            conn.execute("SELECT count(*) FROM trials WHERE test_error IS NULL").fetchone()[0] == 0
        )
    finally:
        conn.close()
    assert sorted(counts) == expected
    assert set(counts.values()) == {1}
