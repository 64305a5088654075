"""Fake learners for the experiment tests: sweeps of them run in milliseconds.

A real module (not built inside a fixture), so that the runner's trial processes, forked from
a server that imports modules by name, can import it too.
"""

from __future__ import annotations

import math

import torch


class FakeNet:
    """Predicts the training mean; has a width; fails on request (``fail_n`` training samples).

    ``diverge=True`` makes it behave like a network whose loss blew up (NaN predictions);
    ``alloc_mib`` makes its fit hold that much memory for a moment.
    """

    def __init__(
        self,
        width=8,
        lr=0.1,
        fail_n=0,
        diverge=False,
        alloc_mib=0,
        random_state=0,
        device=None,
        verbose=True,
    ):
        self.width = width
        self.lr = lr
        self.fail_n = fail_n
        self.diverge = diverge
        self.alloc_mib = alloc_mib
        self.random_state = random_state
        self.device = device
        self.verbose = verbose

    def fit(self, X, Y):
        if len(X) == self.fail_n:
            raise ValueError(f"FakeNet: lr {self.lr} rejected at N={len(X)}")
        if self.alloc_mib:
            block = torch.ones(int(self.alloc_mib) << 17, dtype=torch.float64)  # touched pages
            del block
        self.mean_ = Y.mean(dim=0) * (math.nan if self.diverge else 1.0)
        self.loss_history_ = [math.nan if self.diverge else 0.5]
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
    """Predicts zeros; no width, no random_state, no device, no hparams_.

    ``converged=False`` reports an iterative solve that stopped short of its tolerance, and
    ``edge=True`` a ridge chosen at the edge of its grid.
    """

    def __init__(self, ridge=1.0, converged=None, edge=False):
        self.ridge = ridge
        self.converged = converged
        self.edge = edge

    def fit(self, X, Y):
        self.k_ = Y.shape[1]
        if self.converged is not None:
            self.solver_info_ = {
                "solver": "cg",
                "converged": self.converged,
                "iterations": 2,
                "final_residual": 1e-4 if self.converged else 0.3,
                "compute_dtype": "float64",
                "jitter": 0.0,
                "stop_reason": "converged" if self.converged else "max_iter",
            }
        if self.edge:
            self.hparams_ = {"ridge": self.ridge, "grid_edge": ["ridge_grid: chose 1, the largest"]}
        return self

    def predict(self, X):
        return torch.zeros(len(X), self.k_, dtype=X.dtype)
