"""The ``fastkernels::resnet_sgd`` op: epochs of mini-batch SGD of E stacked networks in one call.

Python leaves the per-step path: one call runs T epochs of forward, backward and the SGD update
(momentum, one learning rate and weight decay per member and parameter) for every member, in place,
and returns each member's mean training loss per epoch. Members are independent networks; they
may have their own data (X of shape (E, N, d)) and their own mini-batch order (perms of shape
(T, E, N)), so that a sweep can train the seeds and the learning-rate x weight-decay grid of a
configuration as one ensemble and get, member by member, what separate trainings would give.

The update is PyTorch's SGD (``torch.optim.SGD`` with ``dampening=0``, ``nesterov=False``):
``buf = momentum * buf + grad + weight_decay * p``, ``p -= lr * factor * buf``, with the loss of a
member ``mean over the batch of sum_k (out_k - y_k)^2``.

The body is the torch reference (any device: batched matrix products, a Python loop over the
steps); CPU tensors go to the C++ kernel ``csrc/resnet_sgd.cpp`` when the extension is built
(members in parallel, each with its own workspace, BLAS calls on preallocated buffers) and CUDA
tensors to Triton (:data:`IMPLEMENTATIONS`: each step's products are Triton kernels; the loop
over the steps stays in Python there).
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._resnet_common import (
    GRADS,
    PARAMS,
    backward_reference,
    check_arch,
    check_weights,
    forward_reference,
)

__all__ = ["resnet_sgd", "resnet_sgd_reference"]

OP = "fastkernels::resnet_sgd"
IMPLEMENTATIONS = {"cpu": "csrc/resnet_sgd.cpp", "cuda": "resnet_sgd_triton"}


def _unpack(arch: str, params) -> dict:
    """The parameter list of ``arch`` as W, b1, U, b2, A (U is V for the bottleneck)."""
    p = dict(zip(PARAMS[arch], params))
    return {"W": p["W"], "b1": p["b1"], "U": p.get("U", p.get("V")), "b2": p.get("b2"), "A": p["A"]}


def check_sgd(op, X, Y, perms, factors, params, bufs, bases, trained, lr, weight_decay,
              momentum, batch_size, arch):  # fmt: skip
    """Structural checks (no data read); returns (E, N, T)."""
    check_arch(op, arch)
    names = PARAMS[arch]
    if len(params) != len(names):
        raise ValueError(
            f"{op}: params must be the {len(names)} tensors {names} of arch={arch!r}, "
            f"got {len(params)}"
        )
    p = _unpack(arch, params)
    E, m, d, k = check_weights(op, p["W"], p["b1"], p["U"], p["b2"], p["A"], arch)
    W = p["W"]
    n_bases = 2 if arch == "bottleneck" else 0
    if len(bases) != n_bases:
        raise ValueError(
            f"{op}: bases must be [W0, V0] for arch='bottleneck' and [] otherwise, "
            f"got {len(bases)} tensors"
        )
    for name, base, t in zip(("W0", "V0"), bases, (W, p["U"])):
        if not isinstance(base, Tensor) or base.shape != t.shape or base.dtype != t.dtype:
            raise ValueError(f"{op}: {name} must match its increment's shape and dtype")
        if base.device != W.device:
            raise ValueError(f"{op}: {name} is on {base.device}, W on {W.device}")
    for name, t, cols in (("X", X, d), ("Y", Y, k)):
        if not isinstance(t, Tensor) or t.dim() not in (2, 3) or t.shape[-1] != cols:
            got = tuple(t.shape) if isinstance(t, Tensor) else type(t).__name__
            raise ValueError(f"{op}: {name} must be (N, {cols}) or (E, N, {cols}), got {got}")
        if t.dim() == 3 and t.shape[0] != E:
            raise ValueError(f"{op}: {name} of shape (E, N, {cols}) needs E = {E}, got {t.shape}")
        if t.dtype != W.dtype or t.device != W.device:
            raise TypeError(f"{op}: {name} must have W's dtype and device ({W.dtype}, {W.device})")
    N = X.shape[-2]
    if N == 0 or Y.shape[-2] != N:
        raise ValueError(f"{op}: X and Y must have the same N >= 1 rows, got {X.shape}, {Y.shape}")
    if not isinstance(perms, Tensor) or perms.dtype != torch.int64 or perms.dim() not in (2, 3):
        raise ValueError(f"{op}: perms must be an int64 tensor (T, N) or (T, E, N)")
    if perms.shape[-1] != N or (perms.dim() == 3 and perms.shape[1] != E):
        raise ValueError(f"{op}: perms must be (T, {N}) or (T, {E}, {N}), got {tuple(perms.shape)}")
    T = perms.shape[0]
    if not isinstance(factors, Tensor) or factors.dtype != torch.float64 or factors.shape != (T,):
        raise ValueError(f"{op}: factors must be a float64 tensor of shape ({T},)")
    if len(set(trained)) != len(trained) or any(not 0 <= i < len(names) for i in trained):
        raise ValueError(
            f"{op}: trained must be distinct indices into params (0..{len(names) - 1}), "
            f"got {list(trained)}"
        )
    if len(bufs) != len(trained):
        raise ValueError(f"{op}: bufs must have one tensor per trained parameter ({len(trained)})")
    for i, b in zip(trained, bufs):
        t = params[i]
        if not isinstance(b, Tensor) or b.shape != t.shape or b.dtype != t.dtype:
            raise ValueError(f"{op}: the buffer of {names[i]} must match it in shape and dtype")
    if not isinstance(lr, Tensor) or lr.dtype != torch.float64 or lr.shape != (len(trained), E):
        raise ValueError(f"{op}: lr must be a float64 tensor of shape {(len(trained), E)}")
    if (
        not isinstance(weight_decay, Tensor)
        or weight_decay.dtype != torch.float64
        or weight_decay.shape not in ((E,), (len(trained), E))
    ):
        raise ValueError(
            f"{op}: weight_decay must be a float64 tensor of shape {(E,)} or {(len(trained), E)}"
        )
    for name, t in (
        ("perms", perms),
        ("factors", factors),
        ("lr", lr),
        ("weight_decay", weight_decay),
    ):
        if t.device != W.device:
            raise ValueError(f"{op}: {name} is on {t.device}, W on {W.device}")
    if not isinstance(momentum, float) or not 0.0 <= momentum < float("inf"):
        raise ValueError(f"{op}: momentum must be a finite float >= 0, got {momentum!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"{op}: batch_size must be an int >= 1, got {batch_size!r}")
    return E, N, T


def resnet_sgd_reference(X, Y, perms, factors, params, bufs, bases, trained, lr, weight_decay,
                         momentum, batch_size, arch, forward=forward_reference,
                         backward=backward_reference):  # fmt: skip
    """The readable torch reference of :func:`resnet_sgd` (any device, float32 / float64).

    ``forward`` and ``backward`` (the formulas of :mod:`._resnet_common` by default) let the
    Triton launcher run the same loop on its own products."""
    E, N, T = check_sgd(OP, X, Y, perms, factors, params, bufs, bases, trained, lr,
                        weight_decay, momentum, batch_size, arch)  # fmt: skip
    for name, t in (("X", X), ("Y", Y)):
        if not bool(torch.isfinite(t).all()):
            raise ValueError(f"{OP}: {name} must be finite, but contains NaN or inf")
    if int(perms.min()) < 0 or int(perms.max()) >= N:
        raise ValueError(f"{OP}: perms must hold row indices in [0, {N})")
    names = PARAMS[arch]
    # Gradient slot of each parameter among resnet_bwd's outputs (V stands in U's slot).
    slot = {n: GRADS.index("U" if n == "V" else n) for n in names}
    needs = [False] * 5
    for i in trained:
        needs[slot[names[i]]] = True
    Xe = X if X.dim() == 3 else X.expand(E, *X.shape)
    Ye = Y if Y.dim() == 3 else Y.expand(E, *Y.shape)
    members = torch.arange(E, device=X.device)[:, None]
    losses = torch.zeros((T, E), dtype=torch.float64, device=X.device)
    step_shape = lambda t: (E,) + (1,) * (t.dim() - 1)  # noqa: E731
    # The parameters are updated in place, so their names stay bound to the current values.
    p = _unpack(arch, params)
    for t in range(T):
        perm = perms[t] if perms.dim() == 3 else perms[t].expand(E, N)
        for start in range(0, N, batch_size):
            idx = perm[:, start : start + batch_size]  # (E, B)
            xb, yb = Xe[members, idx], Ye[members, idx]
            W, U = p["W"], p["U"]
            if arch == "bottleneck":  # the trained W, V are increments on W0, V0
                W, U = bases[0] + W, bases[1] + U
            out, h1, h2 = forward(xb, W, p["b1"], U, p["b2"], p["A"], arch)
            diff = out - yb
            losses[t] += diff.pow(2).sum(dim=(1, 2)).double()  # batch loss times its size
            gout = diff * (2.0 / idx.shape[1])
            grads = backward(gout, xb, W, U, p["A"], h1, h2, arch, needs)
            with torch.no_grad():
                for j, (i, buf) in enumerate(zip(trained, bufs)):
                    param = params[i]
                    g = grads[slot[names[i]]]
                    wd = weight_decay if weight_decay.dim() == 1 else weight_decay[j]
                    wd = wd.to(param.dtype).view(step_shape(param))
                    buf.mul_(momentum).add_(g).addcmul_(wd, param)
                    step = (lr[j] * factors[t]).to(param.dtype).view(step_shape(param))
                    param.sub_(step * buf)
    return losses / N


@torch.library.custom_op(OP, mutates_args=("params", "bufs"))
def resnet_sgd(
    X: Tensor,
    Y: Tensor,
    perms: Tensor,
    factors: Tensor,
    params: list[Tensor],
    bufs: list[Tensor],
    bases: list[Tensor],
    trained: list[int],
    lr: Tensor,
    weight_decay: Tensor,
    momentum: float,
    batch_size: int,
    arch: str,
) -> Tensor:
    """Train E stacked networks for T epochs of mini-batch SGD, in place.

    Parameters
    ----------
    X : Tensor, shape (N, d) (shared) or (E, N, d), float32 or float64
    Y : Tensor, shape (N, k) or (E, N, k), dtype of X
    perms : Tensor, shape (T, N) (one order for all members) or (T, E, N), int64
        Epoch t visits the rows ``perms[t]`` in batches of ``batch_size`` (the last one may be
        shorter).
    factors : Tensor, shape (T,), float64
        Learning-rate factor of each epoch (the schedule, e.g. 0.1 after the drop).
    params : list of Tensor
        The parameters of ``arch`` in the order of
        :data:`fastkernels.ops._resnet_common.PARAMS` (W (E, m, d), b1 (E, m), U (E, m, m),
        b2 (E, m), A (E, k, m); the bottleneck has V (E, m, k + 1) and no b2); updated in place.
    bufs : list of Tensor
        Momentum buffers of the trained parameters (their shapes), updated in place.
    bases : list of Tensor
        [W0, V0] for ``arch="bottleneck"`` (its W and V are increments on them), else [].
    trained : list of int
        Indices into ``params`` of the trained parameters, aligned with ``bufs``.
    lr : Tensor, shape (len(trained), E), float64
        Learning rate of each trained parameter and member.
    weight_decay : Tensor, shape (E,) or (len(trained), E), float64
        Weight decay of each member, or of each trained parameter and member.
    momentum : float
    batch_size : int
    arch : {"3resnet", "3layer", "2layer", "bottleneck"}

    Returns
    -------
    Tensor, shape (T, E), float64
        Each member's mean training loss over each epoch (batch losses weighted by their
        sizes), as the epoch saw it (the weights changing along the way).
    """
    return resnet_sgd_reference(X, Y, perms, factors, params, bufs, bases, trained, lr,
                                weight_decay, momentum, batch_size, arch)  # fmt: skip


@resnet_sgd.register_fake
def _(X, Y, perms, factors, params, bufs, bases, trained, lr, weight_decay, momentum,
      batch_size, arch):  # fmt: skip
    E, N, T = check_sgd(OP, X, Y, perms, factors, params, bufs, bases, trained, lr,
                        weight_decay, momentum, batch_size, arch)  # fmt: skip
    return X.new_empty((T, E), dtype=torch.float64)
