"""Helpers shared by the test folders: ``from helpers import randn, rel_err``.

tests/ is on sys.path in every run under it: pytest puts it there to import tests/conftest.py
(a conftest in a folder without ``__init__.py``) before it imports any test module.
"""

import torch

F32, F64 = torch.float32, torch.float64


def gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def randn(*shape, seed=0, dtype=F64):
    """Standard normal numbers from their own generator: the same numbers for the same seed."""
    return torch.randn(*shape, generator=gen(seed), dtype=dtype)


def rel_err(got, ref):
    """Max abs error relative to the largest reference entry (normwise over the output: a sum of
    signed terms has no per-entry relative guarantee)."""
    return ((got.double() - ref).abs().max() / ref.abs().max().clamp_min(1e-300)).item()


def far_points(n, d, shift, seed):
    """float32 points of spread 0.1 around ``shift`` (shift / spread up to 1e4)."""
    return (0.1 * randn(n, d, seed=seed) + shift).float()


def member_state(net, e: int) -> dict:
    """Member ``e`` of a StackedNet: its (un-stacked) parameters and buffers, by name."""
    items = list(net.named_parameters()) + list(net.named_buffers())
    return {n: t[e].detach().clone() for n, t in items}


def member_forward(p: dict, arch: str, block: str, x: torch.Tensor) -> torch.Tensor:
    """One member's output (B, k) from a dict of its (un-stacked) tensors, written from
    PAPER.md 2.1."""
    relu = torch.relu
    A = p["A"]
    W = p["W0"] + p["W"] if block == "bottleneck" else p["W"]
    h1 = relu(x @ W.T + p["b1"])
    if arch == "2layer":
        return h1 @ A.T
    if block == "bottleneck":
        inp = torch.cat([h1 @ A.T, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
        h2 = relu(inp @ (p["V0"] + p["V"]).T)
        return (h1 + h2) @ A.T
    h2 = relu(h1 @ p["U"].T + p["b2"])
    return h2 @ A.T if arch == "3layer" else (h1 + h2) @ A.T


def cli_exit_2(args, capsys, *words) -> str:
    """Run ``fastkernels`` with ``args``; assert exit status 2 and one line of error on stderr
    that contains every one of ``words``; return the line."""
    from fastkernels.cli import main

    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("fastkernels: error: ") and "\n" not in err, err
    for w in words:
        assert w in err, err
    return err
