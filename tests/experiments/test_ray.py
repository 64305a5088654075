"""The Ray executor on a real local Ray instance (2 CPUs), a worker killed mid-trial included.

Skipped where ray is not installed (``pip install 'fastkernels[ray]'``); CI installs it. The
tests run in file order: the first two need Ray not yet initialised in this process (one line
for an unreachable address; the sweep that starts its own local instance, as the command line
does), the others share one ``ray.init(num_cpus=2)`` (the ``ray_cluster`` fixture).

Who re-runs a killed trial: Ray. A trial's task is retried by Ray when its worker process dies
(a system failure) or when the process the worker forked for the trial dies
(:class:`~fastkernels.experiments.runner.TrialProcessDied`, in the task's ``retry_exceptions``);
the sweep's process holds the trial's claim meanwhile, so the claims logic never sees it, and
the store gets the trial's row once.
"""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest
import torch
from fake_learners import FakeNet
from helpers import cli_exit_2

import fastkernels
from fastkernels import learners as learners_mod
from fastkernels.experiments import ResultsStore, expand, parse_spec, run_sweep, runner

ray = pytest.importorskip("ray")

pytestmark = [
    pytest.mark.ray,
    pytest.mark.usefixtures("fake_learners"),
    pytest.mark.skipif(not hasattr(signal, "SIGKILL"), reason="needs POSIX signals"),
]


class HeldNet(FakeNet):
    """:class:`FakeNet` whose trials at N=40, seed 1 hold their first attempt (for 60 s) once
    ``<hold_dir>/armed`` exists, after writing their pid to ``<hold_dir>/w<width>.pid``; later
    attempts run through. Records in ``hparams_`` the folder its ``fastkernels`` came from, its
    process id and its torch threads."""

    def __init__(self, width=8, lr=0.1, hold_dir="", random_state=0, device=None, verbose=True):
        super().__init__(width=width, lr=lr, random_state=random_state, device=device)
        self.verbose = verbose
        self.hold_dir = hold_dir

    def fit(self, X, Y):
        if self.hold_dir and len(X) == 40 and self.random_state == 1:
            if os.path.exists(os.path.join(self.hold_dir, "armed")):
                pid_file = os.path.join(self.hold_dir, f"w{self.width}.pid")
                try:
                    fd = os.open(pid_file, os.O_CREAT | os.O_EXCL | os.O_WRONLY)
                except FileExistsError:  # a retry: run through
                    pass
                else:
                    os.write(fd, f"{os.getpid()}\n".encode())
                    os.close(fd)
                    time.sleep(60)  # killed meanwhile
        super().fit(X, Y)
        self.hparams_["fastkernels"] = os.path.dirname(os.path.realpath(fastkernels.__file__))
        self.hparams_["pid"] = os.getpid()
        self.hparams_["threads"] = torch.get_num_threads()
        return self


SWEEP = """
[sweep]
name = "raytest"
n_train = [20, 40]
seeds = [0, 1]
widths = [4, 8]
n_test = 50

[concept]
name = "parity"
d = 8
k = 4
alpha = 0.5

[[learners]]
label = "net"
type = "held_net"
hold_dir = "{hold}"

[[learners]]
label = "kern"
type = "fake_kernel"
"""

# What must agree between executors (times, memory and dates may not).
SAME = ("key", "label", "n_train", "seed", "width", "test_error", "train_error", "zero_error")
SAME += ("threshold", "k", "hparams", "status", "flags", "config", "device")


@pytest.fixture
def held(monkeypatch, tmp_path):
    monkeypatch.setitem(learners_mod.LEARNERS, "held_net", HeldNet)
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    hold = tmp_path / "hold"
    hold.mkdir()
    return hold, parse_spec(SWEEP.format(hold=hold), "raytest.toml")


def _rows(path) -> tuple[dict, list, set]:
    """The rows of a store by key (what must agree), the trial processes, the threads used."""
    with ResultsStore(path) as st:
        assert st.claims() == []
        rows = st.rows()
    assert len({r["key"] for r in rows}) == len(rows)
    pids = [r["hparams"].pop("pid") for r in rows if r["label"] == "net"]
    threads = {r["hparams"].pop("threads") for r in rows if r["label"] == "net"}
    return {r["key"]: {k: r[k] for k in SAME} for r in rows}, pids, threads


def _parent(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[1])


def _gone(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "Z"
    except OSError:
        return True


def _wait_pid(path, deadline) -> int:
    while True:
        try:
            text = path.read_text()
            if text.endswith("\n"):
                return int(text)
        except FileNotFoundError:
            pass
        assert time.monotonic() < deadline, f"no {path.name} in time"
        time.sleep(0.05)


def test_unreachable_address_is_one_line_before_anything(held, tmp_path, capsys):
    assert not ray.is_initialized()
    with socket.socket() as s:  # a port where nothing listens
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    store = tmp_path / "r.db"
    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP.format(hold=held[0]))
    args = ["run", str(spec), "--store", str(store), "--executor", "ray"]
    t0 = time.monotonic()
    cli_exit_2([*args, "--ray-address", f"127.0.0.1:{port}"], capsys, f"127.0.0.1:{port}")
    assert time.monotonic() - t0 < 30 and not store.exists() and not ray.is_initialized()


@pytest.mark.skipif(not os.path.isdir("/proc"), reason="finds the Ray worker through /proc")
def test_killed_worker_is_retried_and_each_trial_stored_once(held, tmp_path):
    hold, spec = held
    assert not ray.is_initialized()
    run_sweep(spec, tmp_path / "local.db", progress=False)
    expected, _, _ = _rows(tmp_path / "local.db")
    assert sorted(expected) == sorted(t.key for t in expand(spec))

    (hold / "armed").touch()
    out: dict = {}

    def sweep():
        try:
            # No address: run_sweep starts a local Ray instance and stops it, as the CLI does.
            out["result"] = run_sweep(
                spec, tmp_path / "ray.db", executor="ray", progress=False, poll_s=0.2
            )
        except BaseException as exc:  # reported by the assertions below
            out["error"] = exc

    thread = threading.Thread(target=sweep, daemon=True)
    thread.start()
    deadline = time.monotonic() + 90
    # Width 4: SIGKILL the Ray worker running the trial (the trial process's parent is the
    # worker's fork server, whose parent is the worker); Ray retries the task elsewhere and the
    # orphaned trial process exits.
    trial_pid = _wait_pid(hold / "w4.pid", deadline)
    worker_pid = _parent(_parent(trial_pid))
    os.kill(worker_pid, signal.SIGKILL)
    # Width 8: SIGKILL the trial process (as the OOM killer would); the task fails with
    # TrialProcessDied, which Ray retries.
    os.kill(_wait_pid(hold / "w8.pid", deadline), signal.SIGKILL)
    thread.join(timeout=max(1.0, deadline - time.monotonic()))
    assert not thread.is_alive(), "the Ray sweep did not finish in 90 s"
    assert "error" not in out, repr(out.get("error"))
    result = out["result"]
    assert (result.total, result.ran, result.by_others) == (12, 12, 0)
    assert not ray.is_initialized()  # the instance it started is stopped
    got, pids, threads = _rows(tmp_path / "ray.db")
    assert got == expected
    # Each trial in a process of its own, with the one torch thread its one CPU allows.
    assert len(set(pids)) == len(pids) == 8 and threads == {1}
    while not (_gone(worker_pid) and _gone(trial_pid)):
        assert time.monotonic() < deadline + 10, "a killed worker's trial process lives on"
        time.sleep(0.1)


@pytest.fixture(scope="module")
def ray_head():
    """The address of a Ray head with 2 CPUs (``ray start --head --block``, stopped after the
    module's tests), which the sweeps below connect to as to a cluster."""
    # Its own short temp dir (Unix socket paths have a length limit): `ray start` records the
    # head there, not in /tmp/ray, where a plain ray.init() would find it after it is gone.
    folder = tempfile.mkdtemp(prefix="fkray")
    cmd = [sys.executable, "-m", "ray.scripts.scripts", "start", "--head", "--block"]
    cmd += ["--num-cpus=2", "--num-gpus=0", "--port=0", "--include-dashboard=false"]
    cmd += ["--disable-usage-stats", f"--temp-dir={folder}"]
    head = subprocess.Popen(
        cmd, cwd=folder, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        address, seen = None, []
        for line in head.stdout:
            seen.append(line)
            found = re.search(r"ray start --address='([^']+)'", line)
            address = address or (found and found.group(1))
            if address and "--block" in line:
                break
        assert address, "".join(seen[-20:])
        # The rest of its output is not needed; keep the pipe from filling up.
        threading.Thread(target=head.stdout.read, daemon=True).start()
        yield address
    finally:
        head.terminate()  # `ray start --block` stops the processes it started
        try:
            head.wait(timeout=60)
        except subprocess.TimeoutExpired:  # pragma: no cover
            head.kill()
            head.wait()
        shutil.rmtree(folder, ignore_errors=True)


def test_requests_the_cluster_cannot_meet_are_one_line(held, ray_head, tmp_path, capsys):
    spec = tmp_path / "s.toml"
    spec.write_text(SWEEP.format(hold=held[0]))
    store = tmp_path / "r.db"
    args = ["run", str(spec), "--store", str(store), "--executor", "ray", "--ray-address", ray_head]
    cli_exit_2([*args, "--device", "cuda"], capsys, "GPU", "no node", ray_head)
    cli_exit_2([*args, "--cpus-per-trial", "3"], capsys, "3 CPUs", "has 2", ray_head)
    cli_exit_2([*args, "--device", "cuda:1"], capsys, "use 'cuda'")
    local = ["run", str(spec), "--store", str(store)]
    cli_exit_2([*local, "--cpus-per-trial", "2"], capsys, "applies to --executor ray")
    assert not store.exists() and not ray.is_initialized()


def test_package_is_shipped_to_workers_without_it(held, ray_head, tmp_path, monkeypatch):
    mine = runner._package_file()
    found = []

    def probe(*args):
        found.append(real_probe(*args))
        return None  # as on a cluster whose workers lack the package

    real_probe = runner._probe_fastkernels
    monkeypatch.setattr(runner, "_probe_fastkernels", probe)
    spec = parse_spec(SWEEP.format(hold=held[0]).replace("[20, 40]", "[20]"), "small.toml")
    result = run_sweep(
        spec,
        tmp_path / "r.db",
        executor="ray",
        progress=False,
        poll_s=0.2,
        ray_address=ray_head,
        cpus_per_trial=2,
    )
    assert result.ran == 6 and not ray.is_initialized()
    # The probe (pickled by value) ran on a worker, which found this very package through the
    # code folders on its PYTHONPATH; the trials ran the copy shipped in the runtime_env.
    assert found == [mine]
    rows, _, threads = _rows(tmp_path / "r.db")
    used = {r["hparams"]["fastkernels"] for r in rows.values() if r["label"] == "net"}
    assert len(used) == 1 and used != {os.path.dirname(mine)}, used
    assert threads == {2}
