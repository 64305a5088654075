"""train_sgd against torch.optim.SGD run member by member on a hand-written forward."""

from __future__ import annotations

import copy

import pytest
import torch
from helpers import F64, gen, member_forward, member_state, randn

from fastkernels.models import StackedNet, train_sgd

CONFIGS = [("3resnet", "full"), ("3layer", "full"), ("2layer", "full"), ("3resnet", "bottleneck")]
CONFIG_IDS = [f"{a}-{b}" for a, b in CONFIGS]


def reference_sgd(
    net, X, Y, names, lr, wd, *, momentum, batch_size, epochs, drop_at, seed, lr_scale=None,
    decay_scale=None, loss_mean=False,
):  # fmt: skip
    """Each member trained alone by torch.optim.SGD; returns per-member states and losses."""
    E = net.n_models
    lr_scale = lr_scale or {}
    decay_scale = decay_scale or {}
    states, histories = [], []
    for e in range(E):
        p = member_state(net, e)
        groups = []
        for n in names:
            p[n].requires_grad_(True)
            groups.append(
                {
                    "params": [p[n]],
                    "scale": lr_scale.get(n, 1.0),
                    "weight_decay": float(wd[e]) * decay_scale.get(n, 1.0),
                }
            )
        opt = torch.optim.SGD(groups, lr=float(lr[e]), momentum=momentum, weight_decay=float(wd[e]))
        g = gen(seed)
        Xe = X[e] if X.dim() == 3 else X
        Ye = Y[e] if Y.dim() == 3 else Y
        N = Xe.shape[0]
        hist = []
        for epoch in range(epochs):
            factor = 0.1 if drop_at is not None and epoch >= drop_at else 1.0
            for group in opt.param_groups:
                group["lr"] = float(lr[e]) * factor * group["scale"]
            perm = torch.randperm(N, generator=g)
            total = 0.0
            for start in range(0, N, batch_size):
                idx = perm[start : start + batch_size]
                opt.zero_grad()
                out = member_forward(p, net.arch, net.block, Xe[idx])
                loss = (out - Ye[idx]).pow(2).sum(-1).mean()
                (loss / Ye.shape[-1] if loss_mean else loss).backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            hist.append(total / N)
        states.append({n: t.detach() for n, t in p.items()})
        histories.append(hist)
    return states, histories


def assert_member_matches(net, e, state, tol=1e-10):
    for n, t in list(net.named_parameters()) + list(net.named_buffers()):
        torch.testing.assert_close(t[e], state[n], rtol=tol, atol=tol, msg=f"member {e} {n}")


# -- one run against torch.optim.SGD ----------------------------------------------------------


@pytest.mark.parametrize("arch,block", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("trainable", ["hidden", "last", "all"])
def test_matches_torch_sgd_per_member(arch, block, trainable):
    d, m, k, E, N = 4, 6, 2, 3, 7
    net = StackedNet(arch, d, m, k, n_models=E, block=block, generator=gen(1), dtype=F64)
    X, Y = randn(N, d, seed=2), randn(N, k, seed=3)
    names = net.parameter_names(trainable)
    lr = torch.tensor([0.05, 0.01, 0.2], dtype=F64)
    wd = torch.tensor([0.0, 1e-2, 5e-3], dtype=F64)
    ref = copy.deepcopy(net)
    hist = train_sgd(
        net, X, Y, params=names, lr=lr, weight_decay=wd, momentum=0.9, batch_size=3,
        epochs=4, lr_drop=0.5, generator=gen(7),
    )  # fmt: skip
    states, ref_hist = reference_sgd(
        ref, X, Y, names, lr, wd, momentum=0.9, batch_size=3, epochs=4, drop_at=2, seed=7
    )
    for e in range(E):
        assert_member_matches(net, e, states[e])
    assert len(hist) == 4
    expected = torch.tensor(ref_hist, dtype=F64).mean(0)
    torch.testing.assert_close(torch.tensor(hist, dtype=F64), expected, rtol=1e-10, atol=0)


def test_one_step_full_batch():
    # One step, one batch: SGD with weight decay is p - lr (grad + wd p).
    d, m, k, E, N = 3, 5, 2, 2, 4
    net = StackedNet("3resnet", d, m, k, n_models=E, generator=gen(4), dtype=F64)
    X, Y = randn(N, d, seed=5), randn(N, k, seed=6)
    names = ["W", "b1", "U", "b2"]
    lr, wd = [0.3, 0.07], [0.1, 0.0]
    expected = []
    for e in range(E):
        p = member_state(net, e)
        for n in names:
            p[n].requires_grad_(True)
        loss = (member_forward(p, "3resnet", "full", X) - Y).pow(2).sum(-1).mean()
        grads = torch.autograd.grad(loss, [p[n] for n in names])
        expected.append(
            {n: p[n].detach() - lr[e] * (g + wd[e] * p[n].detach()) for n, g in zip(names, grads)}
        )
    train_sgd(
        net, X, Y, params=names, lr=torch.tensor(lr, dtype=F64),
        weight_decay=torch.tensor(wd, dtype=F64), batch_size=N, epochs=1, lr_drop=None,
        generator=gen(0),
    )  # fmt: skip
    for e in range(E):
        for n in names:
            torch.testing.assert_close(getattr(net, n)[e], expected[e][n], rtol=1e-12, atol=1e-12)


def test_per_member_data_and_lr_scale():
    d, m, k, E, N = 3, 5, 2, 2, 6
    net = StackedNet("3layer", d, m, k, n_models=E, generator=gen(8), dtype=F64)
    X, Y = randn(E, N, d, seed=9), randn(E, N, k, seed=10)
    names = net.parameter_names("all")
    ref = copy.deepcopy(net)
    scale = {"U": 0.5, "A": 3.0}
    train_sgd(
        net, X, Y, params=names, lr=0.05, weight_decay=1e-3, momentum=0.8, batch_size=4,
        epochs=3, lr_drop=None, lr_scale=scale, generator=gen(2),
    )  # fmt: skip
    states, _ = reference_sgd(
        ref, X, Y, names, [0.05] * E, [1e-3] * E, momentum=0.8, batch_size=4, epochs=3,
        drop_at=None, seed=2, lr_scale=scale,
    )  # fmt: skip
    for e in range(E):
        assert_member_matches(net, e, states[e])


def test_decay_scale_and_mean_loss():
    # Weight decay per parameter (0 exempts one) and the loss averaged over the k outputs,
    # against torch.optim.SGD with per-group weight decay on the averaged loss.
    d, m, k, E, N = 3, 5, 3, 2, 7
    for loss in ("sum", "mean"):
        net = StackedNet("3resnet", d, m, k, n_models=E, generator=gen(11), dtype=F64)
        X, Y = randn(N, d, seed=12), randn(N, k, seed=13)
        names = net.parameter_names("all")
        ref = copy.deepcopy(net)
        decay = {"W": 1.0, "b1": 0.0, "U": 2.5, "b2": 0.0, "A": 0.5}
        lr, wd = torch.tensor([0.1, 0.03], dtype=F64), torch.tensor([2e-2, 5e-2], dtype=F64)
        hist = train_sgd(
            net, X, Y, params=names, lr=lr, weight_decay=wd, momentum=0.9, batch_size=3,
            epochs=3, lr_drop=0.5, decay_scale=decay, loss=loss, generator=gen(4),
        )  # fmt: skip
        states, ref_hist = reference_sgd(
            ref, X, Y, names, lr, wd, momentum=0.9, batch_size=3, epochs=3, drop_at=2, seed=4,
            decay_scale=decay, loss_mean=loss == "mean",
        )  # fmt: skip
        for e in range(E):
            assert_member_matches(net, e, states[e], tol=1e-9)
        expected = torch.tensor(ref_hist, dtype=F64).mean(0)
        torch.testing.assert_close(torch.tensor(hist, dtype=F64), expected, rtol=1e-9, atol=0)


def test_bad_loss_and_decay_scale():
    net = StackedNet("2layer", 3, 4, 2, n_models=2, generator=gen(0), dtype=F64)
    X, Y = randn(5, 3, seed=1), randn(5, 2, seed=2)
    with pytest.raises(ValueError, match="loss must be 'sum' or 'mean'"):
        train_sgd(net, X, Y, params=["W"], lr=0.1, epochs=1, loss="avg")
    with pytest.raises(ValueError, match=r"decay_scale\['W'\] must be a scalar or have shape"):
        train_sgd(net, X, Y, params=["W"], lr=0.1, epochs=1, decay_scale={"W": [1.0, 2.0, 3.0]})


# -- independence, frozen parameters, phases, lr drop ------------------------------------------


def _single(net: StackedNet, e: int) -> StackedNet:
    one = StackedNet(
        net.arch, net.in_features, net.width, net.out_features, n_models=1, block=net.block,
        dtype=F64,
    )  # fmt: skip
    with torch.no_grad():
        for n, t in list(net.named_parameters()) + list(net.named_buffers()):
            getattr(one, n).copy_(t[e : e + 1])
    return one


def test_member_trained_alone_equals_member_of_ensemble():
    d, m, k, E, N = 4, 6, 3, 3, 9
    net = StackedNet("3resnet", d, m, k, n_models=E, generator=gen(12), dtype=F64)
    alone = _single(net, 0)
    X, Y = randn(N, d, seed=13), randn(N, k, seed=14)
    kw = dict(params=["W", "b1", "U", "b2"], momentum=0.9, batch_size=4, epochs=3, lr_drop=0.5)
    train_sgd(
        net, X, Y, lr=torch.tensor([0.02, 1.0, 0.5], dtype=F64),
        weight_decay=torch.tensor([1e-3, 0.1, 0.0], dtype=F64),
        generator=gen(15), **kw,
    )  # fmt: skip
    train_sgd(alone, X, Y, lr=0.02, weight_decay=1e-3, generator=gen(15), **kw)
    for n, t in alone.named_parameters():
        torch.testing.assert_close(getattr(net, n)[:1], t, rtol=1e-12, atol=1e-12)
    # The large-lr members went elsewhere.
    assert not torch.allclose(net.W[0], net.W[1])


@pytest.mark.parametrize("trainable", ["hidden", "last"])
def test_frozen_parameters_do_not_change(trainable):
    net = StackedNet("3resnet", 3, 5, 2, n_models=2, block="full", generator=gen(3), dtype=F64)
    before = {n: t.detach().clone() for n, t in net.named_parameters()}
    names = net.parameter_names(trainable)
    train_sgd(
        net, randn(8, 3, seed=1), randn(8, 2, seed=2), params=names, lr=0.1,
        weight_decay=0.01, batch_size=3, epochs=2, generator=gen(0),
    )  # fmt: skip
    for n, t in net.named_parameters():
        if n in names:
            assert not torch.equal(t, before[n]), n
        else:
            assert torch.equal(t, before[n]), n


def test_bottleneck_buffers_never_change():
    net = StackedNet(
        "3resnet", 3, 5, 2, n_models=2, block="bottleneck", generator=gen(3), dtype=F64
    )
    W0, V0 = net.W0.clone(), net.V0.clone()
    train_sgd(
        net, randn(6, 3, seed=1), randn(6, 2, seed=2), params=["W", "V"], lr=0.1,
        batch_size=2, epochs=2, generator=gen(0),
    )  # fmt: skip
    assert torch.equal(net.W0, W0) and torch.equal(net.V0, V0)
    assert torch.count_nonzero(net.W) > 0 and torch.count_nonzero(net.V) > 0


def test_layerwise_phases_equal_two_calls():
    net = StackedNet("3resnet", 4, 6, 2, n_models=2, generator=gen(21), dtype=F64)
    two = copy.deepcopy(net)
    init = {n: t.detach().clone() for n, t in net.named_parameters()}
    X, Y = randn(7, 4, seed=22), randn(7, 2, seed=23)
    kw = dict(lr=0.05, weight_decay=1e-3, batch_size=3, lr_drop=0.5)
    g = gen(24)
    hist = train_sgd(net, X, Y, params=[["W", "b1"], ["U", "b2"]], epochs=[2, 3], generator=g, **kw)
    assert len(hist) == 5
    g2 = gen(24)
    h1 = train_sgd(two, X, Y, params=["W", "b1"], epochs=2, generator=g2, **kw)
    after_first = {n: t.detach().clone() for n, t in two.named_parameters()}
    # Phase 1 trained W, b1 only.
    assert torch.equal(after_first["U"], init["U"]) and torch.equal(after_first["b2"], init["b2"])
    assert not torch.equal(after_first["W"], init["W"])
    h2 = train_sgd(two, X, Y, params=["U", "b2"], epochs=3, generator=g2, **kw)
    for n, t in net.named_parameters():
        torch.testing.assert_close(t, getattr(two, n), rtol=1e-12, atol=1e-12)
    # Phase 2 left W, b1 where phase 1 put them; A never moved.
    assert torch.equal(net.W, after_first["W"]) and torch.equal(net.b1, after_first["b1"])
    assert torch.equal(net.A, init["A"])
    torch.testing.assert_close(torch.tensor(hist, dtype=F64), torch.tensor(h1 + h2, dtype=F64))


@pytest.mark.parametrize("epochs,lr_drop,drop_at", [(4, 0.5, 2), (4, 0.25, 1), (4, 0.75, 3)])
def test_lr_drop_epoch(epochs, lr_drop, drop_at):
    # Without momentum a run is the concatenation of a run at lr for drop_at epochs and one at
    # lr / 10 for the rest, continuing the same mini-batch generator.
    net = StackedNet("2layer", 3, 5, 1, n_models=1, generator=gen(30), dtype=F64)
    split = copy.deepcopy(net)
    X, Y = randn(6, 3, seed=31), randn(6, 1, seed=32)
    kw = dict(params=["W", "b1"], momentum=0.0, batch_size=2)
    train_sgd(net, X, Y, lr=0.3, epochs=epochs, lr_drop=lr_drop, generator=gen(33), **kw)
    g = gen(33)
    train_sgd(split, X, Y, lr=0.3, epochs=drop_at, lr_drop=None, generator=g, **kw)
    train_sgd(split, X, Y, lr=0.03, epochs=epochs - drop_at, lr_drop=None, generator=g, **kw)
    torch.testing.assert_close(net.W, split.W, rtol=1e-12, atol=1e-12)
    # And a drop one epoch off gives something else.
    wrong = StackedNet("2layer", 3, 5, 1, n_models=1, generator=gen(30), dtype=F64)
    g = gen(33)
    train_sgd(wrong, X, Y, lr=0.3, epochs=drop_at + 1, lr_drop=None, generator=g, **kw)
    train_sgd(wrong, X, Y, lr=0.03, epochs=epochs - drop_at - 1, lr_drop=None, generator=g, **kw)
    assert not torch.allclose(net.W, wrong.W)


def test_no_drop_with_lr_drop_none_or_one():
    X, Y = randn(6, 3, seed=31), randn(6, 1, seed=32)
    kw = dict(params=["W", "b1"], lr=0.1, epochs=3, batch_size=2, generator=None)
    a = StackedNet("2layer", 3, 5, 1, generator=gen(30), dtype=F64)
    b = copy.deepcopy(a)
    train_sgd(a, X, Y, lr_drop=None, **{**kw, "generator": gen(1)})
    train_sgd(b, X, Y, lr_drop=1.0, **{**kw, "generator": gen(1)})
    torch.testing.assert_close(a.W, b.W, rtol=1e-12, atol=1e-12)


def test_lr_drop_not_before_fraction_has_passed():
    X, Y = randn(6, 3, seed=31), randn(6, 1, seed=32)
    kw = dict(params=["W", "b1"], lr=0.1, epochs=1, batch_size=2)
    a = StackedNet("2layer", 3, 5, 1, generator=gen(30), dtype=F64)
    b = copy.deepcopy(a)
    train_sgd(a, X, Y, lr_drop=0.5, generator=gen(1), **kw)
    train_sgd(b, X, Y, lr_drop=None, generator=gen(1), **kw)
    torch.testing.assert_close(a.W, b.W, rtol=1e-12, atol=1e-12)


def test_loss_decreases_on_easy_target():
    d, N = 5, 64
    X = randn(N, d, seed=40)
    Y = X @ randn(d, 1, seed=41) * 0.5
    net = StackedNet("3resnet", d, 32, 1, n_models=2, generator=gen(42), dtype=F64)
    hist = train_sgd(
        net, X, Y, params=net.parameter_names("hidden"), lr=0.05, weight_decay=0.0,
        batch_size=16, epochs=30, lr_drop=None, generator=gen(43),
    )  # fmt: skip
    assert hist[-1] < hist[0] / 10


# -- bad arguments ----------------------------------------------------------------------------


def test_bad_per_member_shapes():
    net = StackedNet("2layer", 3, 4, 1, n_models=2, generator=gen(0), dtype=F64)
    X, Y = randn(4, 3), randn(4, 1)
    with pytest.raises(ValueError, match="lr"):
        train_sgd(net, X, Y, params=["W"], lr=[0.1, 0.2, 0.3], epochs=1)
    with pytest.raises(ValueError, match="weight_decay"):
        train_sgd(net, X, Y, params=["W"], lr=0.1, weight_decay=[0.1, 0.2, 0.3], epochs=1)


def test_phase_epoch_mismatch():
    net = StackedNet("3layer", 3, 4, 1, n_models=1, generator=gen(0), dtype=F64)
    with pytest.raises(ValueError, match="phases"):
        train_sgd(net, randn(4, 3), randn(4, 1), params=[["W"], ["U"]], lr=0.1, epochs=[1, 2, 3])


# -- the fused op against eager training, float32 at the benchmark's size -------------------


@pytest.mark.parametrize("arch,block", CONFIGS, ids=CONFIG_IDS)
def test_float32_loss_curve_equals_eager_loop_after_ten_epochs(arch, block):
    # The benchmark's network (d 30, width 256, k 8, N 1000, batch 50) trained 10 epochs in
    # float32 by train_sgd (the fused op) and by torch.optim.SGD on an eager network, same init
    # and order: the loss curves agree to 1e-3 relative, epoch by epoch.
    net = StackedNet(arch, 30, 256, 8, n_models=1, block=block, generator=gen(31))
    X = randn(1000, 30, seed=32, dtype=torch.float32)
    Y = randn(1000, 8, seed=33, dtype=torch.float32)
    names = net.parameter_names("hidden")
    ref = copy.deepcopy(net)
    hist = train_sgd(
        net, X, Y, params=names, lr=0.01, weight_decay=1e-4, batch_size=50, epochs=10,
        lr_drop=0.5, generator=gen(34),
    )  # fmt: skip
    _, ref_hist = reference_sgd(
        ref, X, Y, names, [0.01], [1e-4], momentum=0.9, batch_size=50, epochs=10, drop_at=5,
        seed=34,
    )  # fmt: skip
    got, want = torch.tensor(hist, dtype=F64), torch.tensor(ref_hist[0], dtype=F64)
    assert want[-1] < 0.9 * want[0]  # it trains
    assert ((got - want).abs() / want).max() < 1e-3


def test_per_member_generators_equal_separate_runs():
    # Seeds trained together: each member its own data and order equals its run alone.
    d, m, k, E, N = 4, 6, 2, 3, 11
    net = StackedNet("3resnet", d, m, k, n_models=E, generator=gen(40), dtype=F64)
    X, Y = randn(E, N, d, seed=41), randn(E, N, k, seed=42)
    kw = dict(params=["W", "b1", "U", "b2"], momentum=0.9, batch_size=4, epochs=3, lr_drop=0.5)
    alone = [_single(net, e) for e in range(E)]
    losses = train_sgd(
        net,
        X,
        Y,
        lr=0.05,
        weight_decay=1e-3,
        generator=[gen(50 + e) for e in range(E)],
        per_member=True,
        **kw,
    )
    assert losses.shape == (3, E)
    for e in range(E):
        h = train_sgd(alone[e], X[e], Y[e], lr=0.05, weight_decay=1e-3, generator=gen(50 + e),
                      **kw)  # fmt: skip
        torch.testing.assert_close(losses[:, e], torch.tensor(h, dtype=F64), rtol=1e-12, atol=0)
        for n, t in alone[e].named_parameters():
            torch.testing.assert_close(getattr(net, n)[e : e + 1], t, rtol=1e-12, atol=1e-12)


def test_bad_generator_count():
    net = StackedNet("2layer", 2, 3, 1, n_models=2, dtype=F64)
    with pytest.raises(ValueError, match="a list whose length divides E = 2, got 3"):
        train_sgd(net, randn(4, 2), randn(4, 1), params=["W"], lr=0.1, epochs=1,
                  generator=[gen(0)] * 3)  # fmt: skip
