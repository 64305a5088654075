"""Fake learners registered under test-only type names, so sweeps run in milliseconds."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from fastkernels import learners as learners_mod

FAKE_MODULE = "_fastkernels_test_fake_learners"


class FakeNet:
    """Predicts the training mean; has a width; fails on request (``fail_n`` training samples)."""

    def __init__(self, width=8, lr=0.1, fail_n=0, random_state=0, device=None):
        self.width = width
        self.lr = lr
        self.fail_n = fail_n
        self.random_state = random_state
        self.device = device

    def fit(self, X, Y):
        if len(X) == self.fail_n:
            raise ValueError(f"FakeNet: lr {self.lr} rejected at N={len(X)}")
        self.mean_ = Y.mean(dim=0)
        self.hparams_ = {
            "width": self.width,
            "random_state": self.random_state,
            "device": str(self.device),
            "lr": torch.tensor(
                self.lr, dtype=torch.float64
            ),  # not plain JSON: the store must convert it
        }
        return self

    def predict(self, X):
        return self.mean_.expand(len(X), -1).clone()


class FakeKernel:
    """Predicts zeros; no width, no random_state, no device, no hparams_."""

    def __init__(self, ridge=1.0):
        self.ridge = ridge

    def fit(self, X, Y):
        self.k_ = Y.shape[1]
        return self

    def predict(self, X):
        return torch.zeros(len(X), self.k_, dtype=X.dtype)


@pytest.fixture
def fake_learners(monkeypatch):
    """Register ``fake_net`` and ``fake_kernel`` in the learner registry for one test."""
    mod = types.ModuleType(FAKE_MODULE)
    mod.FakeNet = FakeNet
    mod.FakeKernel = FakeKernel
    monkeypatch.setitem(sys.modules, FAKE_MODULE, mod)
    monkeypatch.setitem(learners_mod.LEARNERS, "fake_net", (FAKE_MODULE, "FakeNet"))
    monkeypatch.setitem(learners_mod.LEARNERS, "fake_kernel", (FAKE_MODULE, "FakeKernel"))
    return mod


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
