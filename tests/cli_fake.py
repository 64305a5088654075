"""A fake learner for the command-line tests, importable by name (the runner's trial processes
import learners by module name)."""

from __future__ import annotations

import torch


class CliFake:
    """Predicts zeros; ``fit`` rejects ``ridge < 0`` like a real estimator, at N = ``bad_n``."""

    def __init__(self, ridge=1.0, bad_n=0, random_state=0):
        self.ridge = ridge
        self.bad_n = bad_n
        self.random_state = random_state

    def fit(self, X, Y):
        if len(X) == self.bad_n:
            raise ValueError(f"CliFake: ridge must be >= 0,\ngot {self.ridge}")
        self.k_ = Y.shape[1]
        self.hparams_ = {"ridge": self.ridge}
        return self

    def predict(self, X):
        return torch.zeros(len(X), self.k_)
