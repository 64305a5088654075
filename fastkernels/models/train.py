"""Mini-batch SGD with momentum for stacked ensembles, one learning rate per member."""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from tqdm.auto import tqdm

from .nets import StackedNet


def _per_member(value, E: int, like: torch.Tensor, name: str) -> torch.Tensor:
    t = torch.as_tensor(value, dtype=like.dtype, device=like.device)
    if t.dim() == 0:
        t = t.expand(E)
    if t.shape != (E,):
        raise ValueError(
            f"train_sgd: {name} must be a scalar or have shape ({E},), got {tuple(t.shape)}"
        )
    return t


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
    generator: torch.Generator | None = None,
    progress: bool = False,
    desc: str = "train",
) -> list[float]:
    """Train the stacked networks in place on the squared loss sum_k (out_k - y_k)^2.

    Each member e follows PyTorch's SGD: buf = momentum * buf + grad + weight_decay[e] * p,
    p -= lr[e] * buf, with the learning rate divided by 10 once ``lr_drop`` of the epochs of a
    phase have passed. Members share the mini-batch order but not their data when X is (E, N, d).

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
    generator : torch.Generator, optional
        Mini-batch order.
    progress : bool
        Show a tqdm bar over epochs.

    Returns
    -------
    list of float
        Mean training loss per epoch, averaged over members.
    """
    E = net.n_models
    phases = [list(params)] if params and isinstance(params[0], str) else [list(p) for p in params]
    epoch_list = [epochs] if isinstance(epochs, int) else list(epochs)
    if len(epoch_list) != len(phases):
        raise ValueError(f"train_sgd: {len(phases)} phases but {len(epoch_list)} epoch counts")
    N = X.shape[-2]
    like = next(net.parameters())
    lr_t = _per_member(lr, E, like, "lr")
    wd_t = _per_member(weight_decay, E, like, "weight_decay")
    lr_scale = lr_scale or {}
    history: list[float] = []
    bar = tqdm(total=sum(epoch_list), desc=desc, disable=not progress, leave=False, unit="epoch")
    for names, n_epochs in zip(phases, epoch_list):
        for p in net.parameters():
            p.requires_grad_(False)
        tensors = [getattr(net, n) for n in names]
        for t in tensors:
            t.requires_grad_(True)
        bufs = [torch.zeros_like(t) for t in tensors]
        scales = [_per_member(lr_scale.get(n, 1.0), E, like, f"lr_scale[{n!r}]") for n in names]
        shape = lambda t: (E,) + (1,) * (t.dim() - 1)  # noqa: E731
        drop_at = None if lr_drop is None else math.ceil(lr_drop * n_epochs - 1e-9)
        for epoch in range(n_epochs):
            factor = 0.1 if drop_at is not None and epoch >= drop_at else 1.0
            perm = torch.randperm(N, generator=generator).to(X.device)
            total = torch.zeros((), dtype=like.dtype, device=like.device)
            for start in range(0, N, batch_size):
                idx = perm[start : start + batch_size]
                xb = X[..., idx, :]
                yb = Y[..., idx, :]
                out = net(xb)
                # Sum over members so each member's gradient is its own loss's gradient.
                loss = (out - yb).pow(2).sum(dim=-1).mean(dim=-1).sum()
                grads = torch.autograd.grad(loss, tensors)
                with torch.no_grad():
                    for t, b, g, s in zip(tensors, bufs, grads, scales):
                        step = (lr_t * s).view(shape(t)) * factor
                        b.mul_(momentum).add_(g).addcmul_(wd_t.view(shape(t)), t)
                        t.sub_(step * b)
                total += loss.detach() * len(idx)
            history.append(float(total) / (N * E))
            bar.update(1)
            if progress:
                bar.set_postfix(loss=f"{history[-1]:.4g}")
        for t in tensors:
            t.requires_grad_(False)
    bar.close()
    return history
