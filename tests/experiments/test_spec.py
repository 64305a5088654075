"""Sweep specs: parsing, validation errors (one line, key named), expansion and trial keys."""

from __future__ import annotations

import copy
import datetime
import json
import os
import subprocess
import sys

import pytest
import torch

from fastkernels.experiments import SpecError, expand, load_spec, parse_spec, trial_key
from fastkernels.experiments._validate import load_toml
from fastkernels.experiments.presets import list_presets, preset_names
from fastkernels.experiments.trials import learner_config_hash, resolved_params
from fastkernels.learners import make_learner

pytestmark = pytest.mark.usefixtures("fake_learners")

SRC = "sweep.toml"


def _data(base_toml):
    return load_toml(base_toml)


def test_good_spec(base_toml, tmp_path):
    path = tmp_path / "s.toml"
    path.write_text(base_toml)
    spec = load_spec(path)
    assert spec.name == "t" and spec.n_train == (20, 40) and spec.seeds == (0, 1)
    assert spec.widths == (4, 8) and spec.alphas is None and spec.n_test == 50
    assert spec.description == "a test sweep" and spec.c is None
    assert [s.label for s in spec.learners] == ["net", "kern"]
    net, kern = spec.learners
    assert net.params == {"lr": 0.2} and net.takes_width and net.takes_random_state
    assert not kern.takes_width and not kern.takes_device
    assert spec.concept == "parity" and spec.concept_params == {"d": 8, "k": 4, "alpha": 0.5}
    assert spec.source == str(path)
    # to_dict round-trips through the parser
    again = parse_spec(spec.to_dict(), source="dict")
    assert expand(again) == expand(spec)


def test_expand_cross_product(base_toml):
    spec = parse_spec(base_toml, SRC)
    trials = expand(spec)
    # net: 2 N x 2 widths x 2 seeds; kern has no width: 2 N x 2 seeds
    assert len(trials) == 8 + 4
    assert len({t.key for t in trials}) == len(trials)
    net = [t for t in trials if t.label == "net"]
    kern = [t for t in trials if t.label == "kern"]
    assert {(t.n_train, t.width, t.seed) for t in net} == {
        (n, w, s) for n in (20, 40) for w in (4, 8) for s in (0, 1)
    }
    assert all(t.width is None for t in kern)
    t = net[0]
    assert (t.n_train, t.width, t.seed) == (20, 4, 0)  # learners x N x width x ... x seeds order
    assert net[1].seed == 1 and net[2].width == 8
    cfg = t.config
    assert cfg["concept"] == {
        "name": "parity",
        "params": {"d": 8, "k": 4, "alpha": 0.5, "beta": 1.0, "noise": 0.0, "seed": 0},
    }
    # the learner's fully resolved configuration: every constructor parameter with its value,
    # except what the runner sets per trial (random_state, device) and what cannot change a
    # result (verbose)
    assert cfg["learner"] == {
        "type": "fake_net",
        "label": "net",
        "params": {"lr": 0.2, "width": 4, "fail_n": 0, "diverge": False, "alloc_mib": 0},
    }
    assert t.config_hash == learner_config_hash(cfg["learner"]) and len(t.config_hash) == 64
    assert len({x.config_hash for x in net}) == 2  # one configuration per width
    assert (cfg["n_train"], cfg["n_test"], cfg["seed"]) == (20, 50, 0)
    assert kern[0].config["learner"]["params"] == {
        "ridge": 1.0,
        "converged": None,
        "edge": False,
    }
    json.dumps(cfg, allow_nan=False)  # JSON-able
    assert t.key == trial_key(cfg)


def test_configuration_identity(base_toml):
    """Spelling out a default or a setting that cannot change results is the same
    configuration (same keys, nothing rerun); a changed value is another one."""
    base = {t.key: t.config_hash for t in expand(parse_spec(base_toml, SRC))}
    data = _data(base_toml)
    data["learners"][0].update(verbose=False, fail_n=0)
    data["learners"][1]["ridge"] = 1.0
    assert {t.key: t.config_hash for t in expand(parse_spec(data, SRC))} == base
    data["learners"][1]["ridge"] = 100.0
    changed = expand(parse_spec(data, SRC))
    kern = [t for t in changed if t.label == "kern"]
    assert all(t.key not in base for t in kern) and len({t.config_hash for t in kern}) == 1
    assert all(t.key in base for t in changed if t.label == "net")


def test_resolved_params_are_plain_json():
    params = resolved_params("kernel_ridge", {"kernel": "rbf", "dtype": torch.float32})
    assert params["dtype"] == "float32" and params["ridge_grid"][0] == 1e-6
    assert "verbose" not in params and "random_state" not in params and "device" not in params
    json.dumps(params, allow_nan=False)
    # the runner builds the learner back from them
    assert make_learner("kernel_ridge", **params).get_params()["dtype"] == "float32"


def test_expand_alphas_betas(base_toml):
    data = _data(base_toml)
    del data["concept"]["alpha"]
    data["sweep"].update(alphas=[0.1, 0.3], betas=[1, 0.5])
    trials = expand(parse_spec(data, SRC))
    assert len(trials) == 12 * 4
    assert {(t.alpha, t.beta) for t in trials} == {(a, b) for a in (0.1, 0.3) for b in (1.0, 0.5)}
    t = trials[0]
    assert t.config["concept"]["params"]["alpha"] == t.alpha


def test_key_depends_on_seed_only_through_config(base_toml):
    trials = expand(parse_spec(base_toml, SRC))
    a, b = trials[0], trials[1]
    assert a.config["seed"] != b.config["seed"] and a.key != b.key
    cfg = copy.deepcopy(a.config)
    # insertion order does not matter, values do
    reordered = dict(reversed(list(cfg.items())))
    assert trial_key(reordered) == a.key
    cfg["seed"] = 1
    assert trial_key(cfg) != a.key


GOLDEN_CONFIG = {
    "concept": {
        "name": "parity",
        "params": {"alpha": 0.3, "beta": 1.0, "d": 12, "k": 4, "noise": 0.0, "seed": 3},
    },
    "learner": {"type": "kernel_ridge", "label": "RBF ridge", "params": {"kernel": "rbf"}},
    "n_train": 100,
    "n_test": 500,
    "seed": 3,
}


def test_key_stable_across_processes():
    here = trial_key(GOLDEN_CONFIG)
    code = (
        "import json, sys; from fastkernels.experiments.trials import trial_key; "
        "print(trial_key(json.loads(sys.argv[1])))"
    )
    # A different hash seed and the reversed key order must not change the key.
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    arg = json.dumps(dict(reversed(list(GOLDEN_CONFIG.items()))))
    out = subprocess.run(
        [sys.executable, "-c", code, arg], capture_output=True, text=True, env=env, check=True
    )
    assert out.stdout.strip() == here
    # Pinned: a change here silently orphans every stored result.
    assert here == GOLDEN_KEY


GOLDEN_KEY = "41017b6f51430f2ddf02c89c83ac156dd7836892e94ea34aca690e4dbe3b5171"


# ---- bad input: (mutation of the parsed base file, words the one-line message must contain)
def _set(table, key, value):
    def f(d):
        d[table][key] = value

    return f


def _del(table, key):
    def f(d):
        del d[table][key]

    return f


def _learner(i, key, value):
    def f(d):
        d["learners"][i][key] = value

    return f


def _seq(*fs):
    def f(d):
        for g in fs:
            g(d)

    return f


BAD = {
    "unknown top-level table": (lambda d: d.update(extra={}), ["top level", "'extra'"]),
    "unknown sweep key": (_set("sweep", "n_trian", [1]), ["[sweep]", "'n_trian'"]),
    "unknown report key": (lambda d: d.update(report={"cc": 1}), ["[report]", "'cc'"]),
    "report c zero": (lambda d: d.update(report={"c": 0}), ["[report] c", "> 0"]),
    "missing n_train": (_del("sweep", "n_train"), ["[sweep]", "'n_train'", "missing"]),
    "missing name": (_del("sweep", "name"), ["[sweep]", "'name'"]),
    "bad name": (_set("sweep", "name", "a/b"), ["[sweep] name"]),
    "n_train zero": (_set("sweep", "n_train", [0, 10]), ["[sweep] n_train", "positive"]),
    "n_train negative": (_set("sweep", "n_train", [-5]), ["[sweep] n_train", "positive"]),
    "n_train empty": (_set("sweep", "n_train", []), ["[sweep] n_train", "non-empty"]),
    "n_train float": (_set("sweep", "n_train", [10.5]), ["[sweep] n_train"]),
    "n_train bool": (_set("sweep", "n_train", [True]), ["[sweep] n_train"]),
    "n_train scalar": (_set("sweep", "n_train", 100), ["[sweep] n_train", "list"]),
    "n_train duplicate": (_set("sweep", "n_train", [10, 10]), ["[sweep] n_train", "duplicates"]),
    "seeds empty": (_set("sweep", "seeds", []), ["[sweep] seeds"]),
    "seeds negative": (_set("sweep", "seeds", [0, -1]), ["[sweep] seeds", "non-negative"]),
    "widths zero": (_set("sweep", "widths", [0]), ["[sweep] widths", "positive"]),
    "widths empty": (_set("sweep", "widths", []), ["[sweep] widths"]),
    "n_test zero": (_set("sweep", "n_test", 0), ["[sweep] n_test", "positive"]),
    "alpha negative": (
        _seq(_del("concept", "alpha"), _set("sweep", "alphas", [0.3, -0.1])),
        ["[sweep] alphas", ">= 0"],
    ),
    "beta negative": (_set("sweep", "betas", [-1.0]), ["[sweep] betas", ">= 0"]),
    "alphas empty": (_seq(_del("concept", "alpha"), _set("sweep", "alphas", [])), ["alphas"]),
    "missing concept": (lambda d: d.pop("concept"), ["[concept]", "missing"]),
    "unknown concept": (_set("concept", "name", "nope"), ["[concept] name", "parity"]),
    "unknown concept param": (_set("concept", "dd", 3), ["[concept]", "'dd'", "d, k"]),
    "concept seed": (_set("concept", "seed", 3), ["[concept] seed", "seeds"]),
    "concept alpha with alphas": (_set("sweep", "alphas", [0.1]), ["[concept] alpha"]),
    "concept beta with betas": (
        _seq(_set("sweep", "betas", [0.1]), _set("concept", "beta", 1.0)),
        ["[concept] beta"],
    ),
    "invalid concept value": (_set("concept", "k", 2), ["[concept]", "k must be >= 4"]),
    "alphas on a concept without alpha": (
        _seq(
            _set("concept", "name", "all19"),
            _del("concept", "d"),
            _del("concept", "k"),
            _del("concept", "alpha"),
            _set("sweep", "alphas", [0.1]),
        ),
        ["[sweep] alphas", "all19"],
    ),
    "no learners": (lambda d: d.update(learners=[]), ["[[learners]]"]),
    "learners not tables": (lambda d: d.update(learners=[1]), ["[[learners]] #1"]),
    "unknown learner type": (_learner(0, "type", "nope"), ["#1", "type", "fake_net"]),
    "missing learner type": (lambda d: d["learners"][1].pop("type"), ["#2", "'type'"]),
    "missing label": (lambda d: d["learners"][0].pop("label"), ["#1", "'label'"]),
    "unknown learner param": (_learner(0, "lrr", 1), ["#1 ('net')", "'lrr'", "lr"]),
    "learner sets width": (_learner(0, "width", 3), ["#1 ('net') width", "widths"]),
    "learner sets random_state": (_learner(0, "random_state", 3), ["random_state", "runner"]),
    "learner sets device": (_learner(1, "device", "cpu"), ["#2", "device"]),
    "duplicate labels": (_learner(1, "label", "net"), ["#2", "label", "unique"]),
    "non-JSON learner value": (
        _learner(1, "ridge", datetime.date(2020, 1, 1)),
        ["#2 ('kern') ridge"],
    ),
    "NaN learner value": (_learner(1, "ridge", float("nan")), ["#2 ('kern') ridge"]),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_spec(case, base_toml):
    mutate, words = BAD[case]
    data = _data(base_toml)
    mutate(data)
    with pytest.raises(SpecError) as info:
        parse_spec(data, SRC)
    msg = str(info.value)
    assert "\n" not in msg
    assert msg.startswith(f"{SRC}: ")
    for w in words:
        assert w in msg, (case, msg)


def test_bad_files(tmp_path, base_toml):
    with pytest.raises(SpecError, match="no such sweep file"):
        load_spec(tmp_path / "missing.toml")
    with pytest.raises(SpecError, match="neither a preset"):
        load_spec("no-such-preset")
    bad = tmp_path / "bad.toml"
    bad.write_text(base_toml + "\n[sweep\n")
    with pytest.raises(SpecError) as info:
        load_spec(bad)
    assert str(info.value).startswith(f"{bad}: invalid TOML") and "\n" not in str(info.value)


def test_presets_listed():
    names = preset_names()
    for expected in ("quick", "paper-fig2a", "paper-fig2a-ablation", "paper-fig2b", "all19"):
        assert expected in names
    described = dict(list_presets())
    assert all(described[n] and not described[n].startswith("(invalid") for n in names)


@pytest.mark.parametrize(
    "name", ["quick", "paper-fig2a", "paper-fig2a-ablation", "paper-fig2b", "all19"]
)
def test_presets_parse(name):
    spec = load_spec(name)
    assert spec.name == name and spec.source == f"preset:{name}"
    assert len({t.key for t in expand(spec)}) == len(expand(spec))


def test_ablation_preset_rows():
    # Three seeds per row at the paper's N = 1000; every [grid] row has a [test-selected] twin
    # with the same configuration otherwise; width 1024 only where a row asks for it.
    spec = load_spec("paper-fig2a-ablation")
    assert spec.n_train == (1000,) and len(spec.seeds) >= 3
    labels = [s.label for s in spec.learners]
    by_label = {s.label: s for s in spec.learners}
    for label in labels:
        if label.endswith(" [grid]"):
            twin = by_label[label.replace(" [grid]", " [test-selected]")]
            assert twin.params == {**by_label[label].params, "selection": "test"}
    widths = {t.width for t in expand(spec) if t.label.startswith("paper, width 1024")}
    assert widths == {1024}
    assert {t.width for t in expand(spec) if t.label == "paper [grid]"} == {256}


def test_learner_may_run_at_a_subset_of_widths():
    from fastkernels.experiments import SpecError, expand, parse_spec

    text = """
[sweep]
name = "s"
n_train = [100]
seeds = [0]
widths = [4, 8, 16]
[concept]
name = "parity"
d = 12
k = 4
[[learners]]
label = "wide only"
type = "resnet"
widths = [16]
[[learners]]
label = "all"
type = "resnet"
[[learners]]
label = "kernel"
type = "kernel_ridge"
"""
    spec = parse_spec(text)
    by_label = {}
    for t in expand(spec):
        by_label.setdefault(t.label, []).append(t.width)
    assert by_label == {"wide only": [16], "all": [4, 8, 16], "kernel": [None]}
    assert spec.to_dict()["learners"][0]["widths"] == [16]
    assert parse_spec(spec_text := text).learners[0].widths == (16,)
    with pytest.raises(SpecError, match="widths: expected a subset of"):
        parse_spec(spec_text.replace("widths = [16]", "widths = [32]"))
    with pytest.raises(SpecError, match="widths: expected a subset of"):
        parse_spec(spec_text.replace('label = "kernel"', 'label = "kernel"\nwidths = [4]'))


def test_learner_may_run_at_a_subset_of_sizes():
    from fastkernels.experiments import expand, parse_spec

    text = """
[sweep]
name = "s"
n_train = [100, 200, 300]
seeds = [0]
[concept]
name = "parity"
d = 12
k = 4
[[learners]]
label = "small only"
type = "kernel_ridge"
n_train = [100, 300]
[[learners]]
label = "all"
type = "kernel_ridge"
"""
    trials = expand(parse_spec(text))
    by_label = {}
    for t in trials:
        by_label.setdefault(t.label, []).append(t.n_train)
    assert sorted(by_label["small only"]) == [100, 300]
    assert sorted(by_label["all"]) == [100, 200, 300]
    import pytest

    from fastkernels.experiments import SpecError

    with pytest.raises(SpecError, match="n_train: expected a subset of"):
        parse_spec(text.replace("n_train = [100, 300]", "n_train = [100, 400]"))
