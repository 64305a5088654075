"""Fake learners registered under test-only type names, so sweeps run in milliseconds."""

from __future__ import annotations

# tests/experiments is on sys.path (a conftest folder without __init__.py), here and in the
# runner's trial processes, which unpickle the registered classes by module and name.
import fake_learners as fake_learners_mod
import pytest

from fastkernels import learners as learners_mod


@pytest.fixture
def fake_learners(monkeypatch):
    """Register ``fake_net`` and ``fake_kernel`` in the learner registry for one test."""
    monkeypatch.setitem(learners_mod.LEARNERS, "fake_net", fake_learners_mod.FakeNet)
    monkeypatch.setitem(learners_mod.LEARNERS, "fake_kernel", fake_learners_mod.FakeKernel)
    return fake_learners_mod


BASE_TOML = """
[sweep]
name = "t"
description = "a test sweep"
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
type = "fake_net"
lr = 0.2

[[learners]]
label = "kern"
type = "fake_kernel"
"""


@pytest.fixture
def base_toml():
    return BASE_TOML


# A real kernel sweep of 12 small trials (N = 100-300), for tests that run the command line in
# separate processes (kill and resume, concurrent runs).
KERNEL_TOML = """
[sweep]
name = "tiny"
n_train = [100, 200, 300]
seeds = [0, 1, 2, 3]
n_test = 500

[concept]
name = "parity"
d = 12
k = 4
alpha = 0.3

[[learners]]
label = "RBF ridge"
type = "kernel_ridge"
kernel = "rbf"
"""


@pytest.fixture
def kernel_toml():
    return KERNEL_TOML
