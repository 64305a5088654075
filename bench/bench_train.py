"""SGD training of the 3resnet: fastkernels' stacked ensembles against eager PyTorch and vmap.

One timed call is one epoch (N = 1000 samples, batch 50: 20 SGD steps with momentum 0.9 and
weight decay) of E members, width m, d = 30, k = 8, hidden layers trained. Providers:

- ``fastkernels``: :func:`fastkernels.models.train_sgd` on one :class:`StackedNet` of E members;
- ``eager-loop``: E plain ``nn.Module`` networks trained one after another, each with
  ``torch.optim.SGD`` (``F.linear`` layers, ``zero_grad(set_to_none=True)``), as a user writes it;
- ``vmap``: ``torch.func.stack_module_state`` + ``vmap(grad(...))`` over the E members and the same
  update written on the stacked tensors.

``extra_info`` carries the FLOP of an epoch (forward 2 B (d m + m m + m k) per step and member,
backward twice that) so that reports can show GFLOP/s, and ``steps`` for steps per second.

    FASTKERNELS_BENCH_SIZE=full pytest bench/bench_train.py --benchmark-only
"""

import pytest
import torch
import torch.nn.functional as Fn
from torch import nn

from fastkernels.models import StackedNet, train_sgd

from .conftest import DEVICE, SIZE

D, K, N, BATCH = 30, 8, 1000, 50
LR, WD, MOMENTUM = 0.01, 1e-4, 0.9
WORKLOADS = {
    "small": [(64, 1), (64, 4)],
    # On a GPU also E = 256 width-256 members (the GPU target: 20x a loop of eager networks).
    "full": [(m, e) for m in (256, 1024) for e in (1, 8, 32, 128)]
    + ([(256, 256)] if DEVICE == "cuda" else []),
}[SIZE]
PROVIDERS = ["fastkernels", "eager-loop", "vmap"]


class ResNet3(nn.Module):
    """One 3resnet: out = A (h1 + h2), h1 = relu(W x + b1), h2 = relu(U h1 + b2); A fixed."""

    def __init__(self, W, b1, U, b2, A):
        super().__init__()
        self.W, self.b1 = nn.Parameter(W.clone()), nn.Parameter(b1.clone())
        self.U, self.b2 = nn.Parameter(U.clone()), nn.Parameter(b2.clone())
        self.register_buffer("A", A.clone())

    def forward(self, x):
        h1 = torch.relu(Fn.linear(x, self.W, self.b1))
        h2 = torch.relu(Fn.linear(h1, self.U, self.b2))
        return Fn.linear(h1 + h2, self.A)


def _data(e, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(N, D, generator=g).to(DEVICE)
    y = torch.randn(N, K, generator=g).to(DEVICE)
    return x, y


def _eager_nets(stacked: StackedNet):
    nets = [
        ResNet3(*(getattr(stacked, n)[i] for n in ("W", "b1", "U", "b2", "A")))
        for i in range(stacked.n_models)
    ]
    opts = [
        torch.optim.SGD(n.parameters(), lr=LR, momentum=MOMENTUM, weight_decay=WD) for n in nets
    ]
    return nets, opts


def _eager_epoch(nets, opts, x, y, perm):
    for net, opt in zip(nets, opts):
        for s in range(0, N, BATCH):
            idx = perm[s : s + BATCH]
            loss = (net(x[idx]) - y[idx]).pow(2).sum(-1).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()


def _vmap_state(nets):
    params, buffers = torch.func.stack_module_state(nets)
    bufs = {k: torch.zeros_like(v) for k, v in params.items()}
    base = ResNet3(*(torch.empty_like(t[0]) for t in (*params.values(), buffers["A"])))
    base = base.to("meta")

    def loss(p, b, xb, yb):
        out = torch.func.functional_call(base, (p, b), (xb,))
        return (out - yb).pow(2).sum(-1).mean()

    grad = torch.vmap(torch.func.grad(loss), in_dims=(0, 0, None, None))
    return params, buffers, bufs, grad


def _vmap_epoch(state, x, y, perm):
    params, buffers, bufs, grad = state
    for s in range(0, N, BATCH):
        idx = perm[s : s + BATCH]
        grads = grad(params, buffers, x[idx], y[idx])
        with torch.no_grad():
            for name, p in params.items():
                bufs[name].mul_(MOMENTUM).add_(grads[name]).add_(p, alpha=WD)
                p.sub_(bufs[name], alpha=LR)


@pytest.mark.parametrize("provider", PROVIDERS)
@pytest.mark.parametrize("m,e", WORKLOADS, ids=[f"m{m}-E{e}" for m, e in WORKLOADS])
def test_train_3resnet_epoch(benchmark, provider, m, e):
    x, y = _data(e)
    net = StackedNet("3resnet", D, m, K, n_models=e, generator=torch.Generator().manual_seed(1))
    net = net.to(DEVICE)
    steps = e * (N // BATCH)
    benchmark.group = f"train 3resnet epoch m={m} E={e} batch {BATCH} float32"
    benchmark.extra_info.update(
        flop=3 * 2 * N * e * (D * m + m * m + m * K), steps=steps, threads=torch.get_num_threads()
    )
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(2)).to(DEVICE)
    if provider == "fastkernels":
        params = net.parameter_names("hidden")

        def fn():
            train_sgd(
                net, x, y, params=params, lr=LR, weight_decay=WD, momentum=MOMENTUM,
                batch_size=BATCH, epochs=1, lr_drop=None,
            )  # fmt: skip
    elif provider == "eager-loop":
        nets, opts = _eager_nets(net)

        def fn():
            _eager_epoch(nets, opts, x, y, perm)
    else:
        state = _vmap_state(_eager_nets(net)[0])

        def fn():
            _vmap_epoch(state, x, y, perm)

    benchmark(fn)
