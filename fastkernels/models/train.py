"""Mini-batch SGD with momentum for stacked ensembles, one learning rate per member.

Training runs in the ``fastkernels::resnet_sgd`` op: a whole chunk of epochs (forward, backward
and update of every member) per call, in C++ on CPU, so Python is off the per-step path.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from ..ops import RESNET_PARAMS
from .nets import StackedNet

# Epochs per op call: few enough that a progress bar moves and the mini-batch orders of a call
# (EPOCHS_PER_CALL x E x N indices with per-member orders) stay small.
EPOCHS_PER_CALL = 10


def _per_member(value, E: int, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=torch.float64).to(like.device)
    if t.dim() == 0:
        t = t.expand(E)
    if t.shape != (E,):
        raise ValueError(
            f"train_sgd: {name} must be a scalar or have shape ({E},), got {tuple(t.shape)}"
        )
    return t


def _op_arch(net: StackedNet) -> str:
    """The ``arch`` name of the resnet ops for ``net``."""
    return "bottleneck" if net.block == "bottleneck" else net.arch


def train_sgd(
    net: StackedNet,
    X: torch.Tensor,
    Y: torch.Tensor,
    *,
    params: Sequence[str] | Sequence[Sequence[str]],
    lr,
    weight_decay=0.0,
    momentum: float = 0.9,
    batch_size: int = 50,
    epochs: int | Sequence[int] = 800,
    lr_drop: float | None = 0.5,
    lr_scale: dict[str, float] | None = None,
    decay_scale: dict[str, float] | None = None,
    loss: str = "sum",
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str = "train",
    per_member: bool = False,
) -> list[float] | torch.Tensor:
    """Train the stacked networks in place on the squared loss sum_k (out_k - y_k)^2
    (or its mean over the k outputs).

    Each member e follows PyTorch's SGD (``torch.optim.SGD``, dampening 0, no Nesterov):
    buf = momentum * buf + grad + weight_decay[e] * p, p -= lr[e] * buf, with the learning rate
    divided by 10 once ``lr_drop`` of the epochs of a phase have passed. Members may have their
    own data (X of shape (E, N, d)) and mini-batch order (a list of generators). The epochs run
    in the ``fastkernels::resnet_sgd`` op.

    Parameters
    ----------
    net : StackedNet
        The ensemble to train (E members).
    X : torch.Tensor, shape (N, d) or (E, N, d)
    Y : torch.Tensor, shape (N, k) or (E, N, k)
    params : list of str, or list of lists of str
        Names of the trained parameters; a list of lists trains phase after phase (layer-wise
        training), each list for the matching entry of ``epochs``.
    lr, weight_decay : float or tensor of shape (E,)
        Per-member learning rate and weight decay.
    momentum : float
    batch_size : int
    epochs : int or list of int
        Epochs (per phase).
    lr_drop : float or None
        Fraction of a phase's epochs after which lr is divided by 10; None keeps it constant.
    lr_scale : dict, optional
        Extra per-parameter learning-rate factor, a float or a tensor of shape (E,) (e.g. a
        separate step size for V, or a capped step for the readout).
    decay_scale : dict, optional
        Extra per-parameter weight-decay factor, a float or a tensor of shape (E,) (0 exempts
        a parameter from weight decay).
    loss : {"sum", "mean"}, default "sum"
        The per-sample loss: the squared error summed over the k outputs, or averaged over them.
        The returned losses are the summed one either way (the test error's scale).
    generator : torch.Generator or list of torch.Generator, optional
        Mini-batch order: one order for all members, or one generator per contiguous group of
        E / len(generator) members (members that stand for separate runs, e.g. seeds trained
        together, keep their own orders).
    progress : bool
        Show a tqdm bar over epochs.
    desc : str
        The progress bar's label.
    per_member : bool, default False
        Return each member's losses rather than their mean.

    Returns
    -------
    list of float, or Tensor of shape (epochs, E), float64 with ``per_member``
        Mean training loss per epoch (over the epoch's batches, weighted by their sizes),
        averaged over members.
    """
    E = net.n_models
    phases = [list(params)] if params and isinstance(params[0], str) else [list(p) for p in params]
    epoch_list = [epochs] if isinstance(epochs, int) else list(epochs)
    if len(epoch_list) != len(phases):
        raise ValueError(f"train_sgd: {len(phases)} phases but {len(epoch_list)} epoch counts")
    arch = _op_arch(net)
    order = RESNET_PARAMS[arch]
    for names in phases:
        for n in names:
            if n not in order:
                raise ValueError(f"train_sgd: {n!r} is not a parameter of this net {order}")
    gens = list(generator) if isinstance(generator, (list, tuple)) else None
    if gens is not None and (not gens or E % len(gens) != 0):
        raise ValueError(
            f"train_sgd: generator must be one generator or a list whose length divides "
            f"E = {E}, got {len(gens)}"
        )
    like = net.A
    N = X.shape[-2]
    lr_t = _per_member(lr, E, like, "lr")
    wd_t = _per_member(weight_decay, E, like, "weight_decay")
    if loss not in ("sum", "mean"):
        raise ValueError(f"train_sgd: loss must be 'sum' or 'mean', got {loss!r}")
    if loss == "mean":
        # The mean over the k outputs has gradients 1 / k of the sum's. SGD with momentum on it
        # is SGD on the sum with lr / k and weight decay k * wd (the momentum buffer k times
        # smaller): the same trajectory from the same op.
        k = Y.shape[-1]
        lr_t, wd_t = lr_t / k, wd_t * k
    lr_scale = lr_scale or {}
    decay_scale = decay_scale or {}
    tensors = [getattr(net, n).data for n in order]
    bases = [net.W0, net.V0] if arch == "bottleneck" else []
    history: list[torch.Tensor] = []
    bar = tqdm(total=sum(epoch_list), desc=desc, disable=not progress, leave=False, unit="epoch")
    for names, n_epochs in zip(phases, epoch_list):
        trained = [order.index(n) for n in names]
        bufs = [torch.zeros_like(tensors[i]) for i in trained]
        lr_rows = torch.stack(
            [lr_t * _per_member(lr_scale.get(n, 1.0), E, like, f"lr_scale[{n!r}]") for n in names]
        ) if names else lr_t.new_zeros((0, E))  # fmt: skip
        wd_rows = torch.stack(
            [wd_t * _per_member(decay_scale.get(n, 1.0), E, like, f"decay_scale[{n!r}]")
             for n in names]
        ) if names else wd_t.new_zeros((0, E))  # fmt: skip
        drop_at = None if lr_drop is None else math.ceil(lr_drop * n_epochs - 1e-9)
        for first in range(0, n_epochs, EPOCHS_PER_CALL):
            epochs_now = range(first, min(n_epochs, first + EPOCHS_PER_CALL))
            # The orders come from the generator(s) epoch by epoch, as an eager loop draws them.
            if gens is None:
                perms = torch.stack([torch.randperm(N, generator=generator) for _ in epochs_now])
            else:
                # Contiguous groups of E / len(gens) members share a generator's order.
                perms = torch.stack(
                    [torch.stack([torch.randperm(N, generator=g) for g in gens])
                     for _ in epochs_now]
                ).repeat_interleave(E // len(gens), dim=1)  # fmt: skip
            factors = torch.tensor(
                [0.1 if drop_at is not None and t >= drop_at else 1.0 for t in epochs_now],
                dtype=torch.float64,
            )
            # Below autograd: the parameters are trained outside it, and the dispatcher then
            # skips the Python autograd and version-counter kernels of a mutating custom op
            # (0.2-0.3 ms a call, 5% of an epoch of one width-256 network).
            with torch._C._AutoDispatchBelowADInplaceOrView():
                losses = torch.ops.fastkernels.resnet_sgd(
                    X, Y, perms.to(X.device), factors.to(X.device), tensors, bufs, bases,
                    trained, lr_rows, wd_rows, float(momentum), int(batch_size), arch,
                )  # fmt: skip
            history.append(losses.cpu())
            bar.update(len(epochs_now))
            if progress:
                bar.set_postfix(loss=f"{float(losses[-1].mean()):.4g}")
    bar.close()
    table = torch.cat(history) if history else torch.zeros((0, E), dtype=torch.float64)
    return table if per_member else table.mean(dim=1).tolist()
