"""Runner: trial semantics, resume, failures leave only complete rows."""

from __future__ import annotations

import importlib.util
import math

import pytest
import torch

from fastkernels.concepts import make_concept
from fastkernels.experiments import (
    ResultsStore,
    TrialError,
    expand,
    parse_spec,
    run_sweep,
    run_trial,
)
from fastkernels.experiments._validate import load_toml

pytestmark = pytest.mark.usefixtures("fake_learners")


def test_run_trial_errors_and_runner_params(base_toml):
    spec = parse_spec(base_toml, "s.toml")
    net = next(t for t in expand(spec) if t.label == "net" and t.seed == 1)
    res = run_trial(net.config, "cpu")
    # the runner passes random_state = seed and the device; hparams_ become plain JSON, with
    # the fit's measured time and peak memory beside them
    fit_s, peak = res["fit_time_s"], res["peak_rss_mib"]
    assert res["hparams"] == {"width": net.width, "random_state": 1, "device": "cpu", "lr": 0.2}
    assert 0 <= fit_s < res["wall_time_s"] and (math.isnan(peak) or peak >= 0)
    # a network's status: its final loss, not diverged, nothing at a grid edge
    assert res["status"]["kind"] == "network" and res["status"]["final_loss"] == 0.5
    assert res["status"]["diverged"] is False and res["flags"] == []
    assert res["k"] == 4 and res["threshold"] == pytest.approx(4 * 0.5**2)
    assert res["wall_time_s"] > 0 and {"fastkernels", "torch", "python", "platform"} <= set(
        res["versions"]
    )

    kern = next(t for t in expand(spec) if t.label == "kern" and t.seed == 1)
    res = run_trial(kern.config, "cpu")
    assert res["hparams"] == {} and res["status"]["kind"] == "other" and res["flags"] == []
    # FakeKernel predicts 0: the error is E ||H(x)||^2 summed over the k outputs (no 1/2)
    concept = make_concept("parity", d=8, k=4, alpha=0.5, seed=1)
    _, Yt = concept.test_set(50)
    X, Y = concept.sample(20)
    assert res["test_error"] == pytest.approx(float(Yt.pow(2).sum(1).mean()))
    assert res["zero_error"] == pytest.approx(res["test_error"])
    assert res["train_error"] == pytest.approx(float(Y.pow(2).sum(1).mean()))
    # parity outputs are +-1 +- alpha: each squared-sum is k (1 + alpha^2) +- cross terms
    assert 2.0 < res["test_error"] < 8.0


def test_run_sweep_resumes(base_toml, tmp_path, capsys):
    spec = parse_spec(base_toml, "s.toml")
    path = tmp_path / "r.db"
    result = run_sweep(spec, path, progress=True)
    assert (result.total, result.skipped, result.ran) == (12, 0, 12)
    err = capsys.readouterr().err
    assert "trial" in err and "kern N=40 seed=1" in err  # tqdm postfix names the trial
    with ResultsStore(path) as st:
        rows = st.rows()
        assert sorted(r["key"] for r in rows) == sorted(t.key for t in expand(spec))
        assert {r["sweep"] for r in rows} == {"t"}
        result = run_sweep(spec, st, progress=False)
        assert (result.total, result.skipped, result.ran) == (12, 12, 0)
        assert len(st) == 12
        assert st.sweeps()[0]["description"] == "a test sweep"
    # adding a seed runs only the new trials
    data = load_toml(base_toml)
    data["sweep"]["seeds"] = [0, 1, 2]
    result = run_sweep(parse_spec(data, "s.toml"), path, progress=False)
    assert (result.total, result.skipped, result.ran) == (18, 12, 6)


def test_failing_trial_stores_previous_rows_only(base_toml, tmp_path):
    data = load_toml(base_toml)
    data["learners"][0]["fail_n"] = 40  # the net fails at N = 40, after its N = 20 trials
    spec = parse_spec(data, "s.toml")
    path = tmp_path / "r.db"
    with pytest.raises(TrialError) as info:
        run_sweep(spec, path, progress=False)
    msg = str(info.value)
    assert "'net'" in msg and "N=40" in msg and "seed=0" in msg and "width=4" in msg
    assert "ValueError" in msg and "\n" not in msg
    assert isinstance(info.value.__cause__, ValueError)
    with ResultsStore(path) as st:
        rows = st.rows()
    assert len(rows) == 4 and {r["n_train"] for r in rows} == {20}
    assert {r["key"] for r in rows} == {t.key for t in expand(spec)[:4]}


@pytest.mark.skipif(importlib.util.find_spec("ray") is not None, reason="ray is installed")
def test_ray_missing_is_a_clear_error(base_toml, tmp_path):
    spec = parse_spec(base_toml, "s.toml")
    with pytest.raises(ImportError, match="executor 'ray' needs the 'ray' package"):
        run_sweep(spec, tmp_path / "r.db", executor="ray", progress=False)
    assert not (tmp_path / "r.db").exists()  # raised before anything was created


def test_bad_executor_and_device(base_toml, tmp_path):
    spec = parse_spec(base_toml, "s.toml")
    with pytest.raises(ValueError, match="unknown executor"):
        run_sweep(spec, tmp_path / "r.db", executor="dask")
    with pytest.raises(ValueError, match="unknown device|unsupported device"):
        run_sweep(spec, tmp_path / "r.db", device="tpu9")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="CUDA is not available"):
            run_sweep(spec, tmp_path / "r.db", device="cuda")
    assert not (tmp_path / "r.db").exists()


def test_kernel_ridge_rows_carry_the_solver_status():
    # A kernel ridge trial's row says how its solve ended, next to the numbers it produced.
    config = {
        "seed": 0,
        "n_train": 600,  # beyond the exact preconditioner's rank: CG needs iterations
        "n_test": 20,
        "concept": {"name": "parity", "params": {"d": 8, "k": 4, "alpha": 0.5, "seed": 0}},
        "learner": {
            "type": "kernel_ridge",
            "label": "krr",
            "params": {
                "kernel": "rbf",
                "kernel_params": {"gamma": 0.1},
                "ridge": 1e-3,
                "solver": "cg",
            },
        },
    }
    res = run_trial(config, "cpu")
    status = res["status"]
    assert status["kind"] == "kernel" and status["solver"] == "cg"
    assert status["converged"] is True and status["stop_reason"] == "converged"
    assert status["iterations"] >= 1 and status["final_residual"] <= 1e-4
    assert status["compute_dtype"] == "float64" and status["n_centers"] is None
    assert status["grid_edge"] == [] and res["flags"] == []
    # two iterations cannot reach the tolerance: the row is marked, not only warned about
    config["learner"]["params"]["max_iter"] = 2
    res = run_trial(config, "cpu")
    assert res["status"]["converged"] is False and res["flags"] == ["unconverged"]
    assert any("not converged" in w.lower() for w in res["status"]["warnings"])


RESNET_TOML = """
[sweep]
name = "seeds"
n_train = [40]
seeds = [0, 1, 2]
widths = [8]
n_test = 30

[concept]
name = "parity"
d = 8
k = 4
alpha = 0.5

[[learners]]
label = "net"
type = "resnet"
epochs = 3
batch_size = 10
dtype = "float64"
param_grid = { lr = [0.01, 0.05] }

[[learners]]
label = "kern"
type = "fake_kernel"
"""


def test_jobs_group_the_seeds_of_a_network_configuration():
    from fastkernels.experiments.runner import jobs

    trials = expand(parse_spec(RESNET_TOML, "s.toml"))
    got = [[(t.label, t.seed) for t in job] for job in jobs(trials)]
    assert got == [[("net", 0), ("net", 1), ("net", 2)], [("kern", 0)], [("kern", 1)],
                   [("kern", 2)]]  # fmt: skip


def test_seeds_fitted_together_equal_trials_run_alone(tmp_path):
    from fastkernels.experiments import run_trials

    trials = [t for t in expand(parse_spec(RESNET_TOML, "s.toml")) if t.label == "net"]
    together = run_trials([t.config for t in trials])
    for t, joint in zip(trials, together):
        alone = run_trial(t.config)
        assert joint["status"]["fitted_with"] == 3 and "fitted_with" not in alone["status"]
        for key in ("test_error", "train_error", "hparams", "flags"):
            assert joint[key] == pytest.approx(alone[key], rel=1e-12), key
    # A sweep stores one row per seed, each with its own result; a resumed sweep fits the
    # seeds still missing (here one, alone) and gets the same numbers.
    data = load_toml(RESNET_TOML)
    data["sweep"]["seeds"] = [0, 2]
    with ResultsStore(tmp_path / "r.db") as st:
        run_sweep(parse_spec(data, "s.toml"), st, progress=False, isolation="none")
        result = run_sweep(parse_spec(RESNET_TOML, "s.toml"), st, progress=False)
        assert (result.skipped, result.ran) == (4, 2)
        rows = {r["seed"]: r for r in st.rows() if r["label"] == "net"}
        assert sorted(rows) == [0, 1, 2]
        assert [rows[s]["status"].get("fitted_with") for s in (0, 1, 2)] == [2, None, 2]
        for t, joint in zip(trials, together):
            assert rows[t.seed]["test_error"] == pytest.approx(joint["test_error"], rel=1e-12)
