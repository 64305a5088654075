"""Shared pieces of the stacked-network ops ``resnet_fwd``, ``resnet_bwd`` and ``resnet_sgd``.

The ops see E independent small ReLU networks (the members of a
:class:`fastkernels.models.StackedNet`) through their *effective* weights, stacked on a leading
axis E (sigma = ReLU, width m, k outputs):

- ``"3resnet"``:    h1 = sigma(W x + b1), h2 = sigma(U h1 + b2), out = A (h1 + h2);
- ``"3layer"``:     h1 as above, h2 = sigma(U h1 + b2), out = A h2;
- ``"2layer"``:     out = A h1 (no U, b2);
- ``"bottleneck"``: h2 = sigma(V [A h1; 1]), out = A (h1 + h2), V of shape (m, k + 1) in the
  place of U and no b2 (the 3resnet's theory block; the network's W and V are increments on
  fixed W0, V0, which the ops add: ``resnet_sgd`` takes the bases, the others the sums).

The reference formulas below are the oracle of the C++ kernels (``csrc/resnet_common.h``): the
same forward, the hand-derived backward, on the stacked tensors with batched matrix products.
"""

from __future__ import annotations

import torch
from torch import Tensor

ARCHS = ("3resnet", "3layer", "2layer", "bottleneck")
# The parameters of each architecture, in the order the ops take them.
PARAMS = {
    "3resnet": ("W", "b1", "U", "b2", "A"),
    "3layer": ("W", "b1", "U", "b2", "A"),
    "2layer": ("W", "b1", "A"),
    "bottleneck": ("W", "b1", "V", "A"),
}
# The gradients ``resnet_bwd`` returns, in order (``U`` stands for V with the bottleneck).
GRADS = ("W", "b1", "U", "b2", "A")
_FLOAT = (torch.float32, torch.float64)


def check_arch(op: str, arch) -> str:
    if arch not in ARCHS:
        raise ValueError(f"{op}: arch must be one of {ARCHS}, got {arch!r}")
    return arch


def _check_tensor(op: str, name: str, t, shape: tuple, like: Tensor | None) -> None:
    if t is None:
        raise ValueError(f"{op}: {name.split()[0]} must be given for this arch")
    if not isinstance(t, Tensor):
        raise TypeError(f"{op}: {name} must be a torch.Tensor, got {type(t).__name__}")
    if t.dtype not in _FLOAT:
        raise TypeError(f"{op}: {name} must be float32 or float64, got {t.dtype}")
    if like is not None and t.dtype != like.dtype:
        raise TypeError(f"{op}: {name} has dtype {t.dtype}, W has {like.dtype}")
    if like is not None and t.device != like.device:
        raise ValueError(f"{op}: {name} is on {t.device}, W on {like.device}")
    if tuple(t.shape) != tuple(shape):
        want = "(" + ", ".join(str(s) for s in shape) + ")"
        raise ValueError(f"{op}: {name} must have shape {want}, got {tuple(t.shape)}")


def check_weights(op: str, W, b1, U, b2, A, arch: str) -> tuple[int, int, int, int]:
    """Check the stacked weights of ``arch``; returns (E, m, d, k). No data is read."""
    check_arch(op, arch)
    if not isinstance(W, Tensor) or W.dim() != 3 or W.numel() == 0:
        got = tuple(W.shape) if isinstance(W, Tensor) else type(W).__name__
        raise ValueError(f"{op}: W must be a non-empty (E, m, d) tensor, got {got}")
    E, m, d = W.shape
    _check_tensor(op, "W", W, (E, m, d), None)
    if not isinstance(A, Tensor) or A.dim() != 3:
        got = tuple(A.shape) if isinstance(A, Tensor) else type(A).__name__
        raise ValueError(f"{op}: A must be an (E, k, m) tensor, got {got}")
    k = A.shape[1]
    if k == 0:
        raise ValueError(f"{op}: A must have k >= 1 rows per member, got {tuple(A.shape)}")
    _check_tensor(op, "A", A, (E, k, m), W)
    _check_tensor(op, "b1", b1, (E, m), W)
    if arch == "2layer":
        for name, t in (("U", U), ("b2", b2)):
            if t is not None:
                raise ValueError(f"{op}: arch='2layer' has no {name}; pass None")
    elif arch == "bottleneck":
        _check_tensor(op, "U (the bottleneck's V)", U, (E, m, k + 1), W)
        if b2 is not None:
            raise ValueError(f"{op}: arch='bottleneck' has no b2; pass None")
    else:
        _check_tensor(op, "U", U, (E, m, m), W)
        _check_tensor(op, "b2", b2, (E, m), W)
    return E, m, d, k


def check_batch(op: str, name: str, x, E: int, cols: int, like: Tensor) -> int:
    """Check a stacked batch x of shape (E, B, cols) with B >= 1; returns B."""
    if (
        not isinstance(x, Tensor)
        or x.dim() != 3
        or x.shape[0] != E
        or x.shape[2] != cols
        or x.shape[1] == 0
    ):
        got = tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__
        raise ValueError(
            f"{op}: {name} must be an (E, B, {cols}) tensor with E = {E} and B >= 1, got {got}"
        )
    _check_tensor(op, name, x, tuple(x.shape), like)
    return x.shape[1]


def _t(a: Tensor) -> Tensor:
    return a.transpose(-1, -2)


def forward_reference(x, W, b1, U, b2, A, arch: str) -> tuple[Tensor, Tensor, Tensor]:
    """Stacked forward: out (E, B, k), h1 (E, B, m), h2 (E, B, m) (or (E, B, 0) for 2layer)."""
    h1 = torch.relu(torch.baddbmm(b1[:, None, :], x, _t(W)))
    if arch == "2layer":
        return h1 @ _t(A), h1, h1.new_empty((*h1.shape[:2], 0))
    if arch == "bottleneck":
        in2 = torch.cat([h1 @ _t(A), torch.ones_like(h1[..., :1])], dim=-1)
        h2 = torch.relu(in2 @ _t(U))
    else:
        h2 = torch.relu(torch.baddbmm(b2[:, None, :], h1, _t(U)))
    h = h2 if arch == "3layer" else h1 + h2
    return h @ _t(A), h1, h2


def backward_reference(gout, x, W, U, A, h1, h2, arch: str, needs) -> list[Tensor | None]:
    """Gradients [gW, gb1, gU, gb2, gA] of sum(gout * out); None where ``needs`` is False or the
    arch has no such parameter (gU is gV for the bottleneck).

    Written out by hand (the chain rule through each ReLU is a mask h > 0, since h = relu(z) is
    positive exactly where z is) rather than by autograd, so that it states what the C++ kernel
    computes.
    """
    need_w, need_b1, need_u, need_b2, need_a = (bool(n) for n in needs)
    need_first = need_w or need_b1
    grads: list[Tensor | None] = [None] * 5
    if arch == "2layer":
        h = h1
    elif arch == "3layer":
        h = h2
    else:
        h = h1 + h2
    if need_a:
        grads[4] = _t(gout) @ h
    need_in2 = arch == "bottleneck" and (need_first or need_a)
    if not (need_first or need_u or need_b2 or need_in2):
        return grads
    gh = gout @ A  # d / d h
    if arch != "2layer":
        gz2 = gh * (h2 > 0)
        if arch == "bottleneck":
            in2 = torch.cat([h1 @ _t(A), torch.ones_like(h1[..., :1])], dim=-1)
            if need_u:
                grads[2] = _t(gz2) @ in2
            gin2 = (gz2 @ U)[..., :-1]  # d / d (A h1)
            if need_a:
                grads[4] = grads[4] + _t(gin2) @ h1
            gh = gh + gin2 @ A  # d / d h1: the skip plus the path through A h1
        else:
            if need_u:
                grads[2] = _t(gz2) @ h1
            if need_b2:
                grads[3] = gz2.sum(dim=1)
            gh = (gh if arch == "3resnet" else 0) + gz2 @ U
    if need_first:
        gz1 = gh * (h1 > 0)
        if need_w:
            grads[0] = _t(gz1) @ x
        if need_b1:
            grads[1] = gz1.sum(dim=1)
    return grads
