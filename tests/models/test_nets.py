"""StackedNet: shapes, init, independence of members, parameter sets, hand-written forward."""

from __future__ import annotations

import math

import pytest
import torch
from helpers import F64, gen, member_forward, member_state, randn

from fastkernels.models import ARCHS, BLOCKS, TRAINABLE, StackedNet

CONFIGS = [(a, "full") for a in ARCHS] + [("3resnet", "bottleneck")]
CONFIG_IDS = [f"{a}-{b}" for a, b in CONFIGS]


def make(arch="3resnet", block="full", d=5, m=7, k=3, E=2, seed=0, randomize_increments=False):
    net = StackedNet(arch, d, m, k, n_models=E, block=block, generator=gen(seed), dtype=F64)
    if randomize_increments and block == "bottleneck":
        # Increments start at zero; give them values so the forward formula is fully exercised.
        with torch.no_grad():
            net.W.copy_(0.3 * randn(*net.W.shape, seed=seed + 100))
            net.V.copy_(0.3 * randn(*net.V.shape, seed=seed + 101))
    return net


def manual_forward(net: StackedNet, e: int, x: torch.Tensor) -> torch.Tensor:
    """Member e's output (B, k), written out from PAPER.md 2.1."""
    return member_forward(member_state(net, e), net.arch, net.block, x)


# -- shapes and forward -----------------------------------------------------------------------


@pytest.mark.parametrize("arch,block", CONFIGS, ids=CONFIG_IDS)
@pytest.mark.parametrize("B", [1, 5])
def test_forward_shapes_shared_and_per_member_input(arch, block, B):
    d, m, k, E = 5, 7, 3, 2
    net = make(arch, block, d, m, k, E, randomize_increments=True)
    x = randn(B, d, seed=1)
    out = net(x)
    assert out.shape == (E, B, k) and out.dtype == F64
    xs = randn(E, B, d, seed=2)
    out_e = net(xs)
    assert out_e.shape == (E, B, k)
    for e in range(E):
        torch.testing.assert_close(out[e], manual_forward(net, e, x), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(out_e[e], manual_forward(net, e, xs[e]), rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("arch,block", CONFIGS, ids=CONFIG_IDS)
def test_forward_taps_match_layers(arch, block):
    net = make(arch, block, randomize_increments=True)
    x = randn(4, 5, seed=3)
    out, taps = net.forward_taps(x)
    torch.testing.assert_close(out, net(x))
    assert [t.layer.weight for t in taps] == [layer.weight for layer in net.layers]
    for t in taps:
        assert t.input.shape[:2] == (2, 4) and t.preact.shape[:2] == (2, 4)
    # The first tap's input is x itself.
    torch.testing.assert_close(taps[0].input, x.expand(2, 4, 5))


def test_one_by_one_network():
    net = StackedNet("3resnet", 1, 1, 1, n_models=1, generator=gen(0), dtype=F64)
    x = randn(1, 1, seed=1)
    out = net(x)
    assert out.shape == (1, 1, 1)
    torch.testing.assert_close(out[0], manual_forward(net, 0, x))


def test_float32_default_dtype():
    net = StackedNet("2layer", 3, 4, 2, generator=gen(0))
    assert net.A.dtype == torch.float32
    assert net(torch.randn(2, 3)).dtype == torch.float32


# -- init -------------------------------------------------------------------------------------


def _check_normal(t: torch.Tensor, var: float, name: str):
    n = t.numel()
    t = t.detach()
    mean, sample_var = float(t.mean()), float(t.var())
    # 5 standard errors: the mean has s.e. sqrt(var / n), the variance sqrt(2 / n) var.
    assert abs(mean) < 5 * math.sqrt(var / n), (name, mean)
    assert abs(sample_var / var - 1) < 5 * math.sqrt(2 / n), (name, sample_var, var)


@pytest.mark.parametrize("arch", ARCHS)
def test_init_variances(arch):
    d, m, k, E = 40, 300, 4, 3
    net = StackedNet(arch, d, m, k, n_models=E, generator=gen(11), dtype=F64)
    _check_normal(net.W, 1 / d, "W")
    _check_normal(net.b1, 1 / m, "b1")
    _check_normal(net.A, 1 / m, "A")
    if arch != "2layer":
        _check_normal(net.U, 1 / m, "U")
        _check_normal(net.b2, 1 / m, "b2")
    else:
        assert not hasattr(net, "U")


def test_init_variances_bottleneck():
    d, m, k, E = 40, 300, 4, 3
    net = StackedNet(
        "3resnet", d, m, k, n_models=E, block="bottleneck", generator=gen(5), dtype=F64
    )
    _check_normal(net.W0, 1 / d, "W0")
    _check_normal(net.V0, 1 / m, "V0")
    _check_normal(net.A, 1 / m, "A")
    _check_normal(net.b1, 1 / m, "b1")
    assert net.V0.shape == (E, m, k + 1)
    # Increments start at zero and are the parameters; W0, V0 are buffers.
    assert torch.count_nonzero(net.W) == 0 and torch.count_nonzero(net.V) == 0
    params = dict(net.named_parameters())
    buffers = dict(net.named_buffers())
    assert set(params) == {"W", "b1", "V", "A"}
    assert set(buffers) == {"W0", "V0"}


@pytest.mark.parametrize("block", BLOCKS)
def test_init_scales_multiply_the_same_draws(block):
    # second_init, bias_init and readout_init scale U (V0), the biases and A; the draws, and so
    # every other tensor, are those of the default init; 0 starts a tensor at zero.
    args = dict(arch="3resnet", in_features=5, width=7, out_features=3, n_models=2, block=block)
    base = StackedNet(**args, generator=gen(3), dtype=F64)
    scaled = StackedNet(
        **args, generator=gen(3), dtype=F64, second_init=0.5, bias_init=0.0, readout_init=3.0
    )
    second = "V0" if block == "bottleneck" else "U"
    factor = {second: 0.5, "b1": 0.0, "b2": 0.0, "A": 3.0}
    tensors = dict(base.named_parameters()) | dict(base.named_buffers())
    other = dict(scaled.named_parameters()) | dict(scaled.named_buffers())
    assert set(tensors) == set(other)
    for name, t in tensors.items():
        f = factor.get(name, 1.0)
        torch.testing.assert_close(other[name], t * f, rtol=1e-15, atol=0, msg=name)
    assert bool(scaled.b1.eq(0).all()) and scaled.A.abs().sum() > 0


def test_output_at_init_is_order_one():
    d, m, k = 20, 512, 2
    net = StackedNet("3resnet", d, m, k, n_models=4, generator=gen(1), dtype=F64)
    x = randn(200, d, seed=2)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)
    var = float(net(x).detach().var())
    assert 0.05 < var < 20


@pytest.mark.parametrize("arch,block", CONFIGS, ids=CONFIG_IDS)
def test_members_independent(arch, block):
    net = make(arch, block, E=3)
    for name, t in list(net.named_parameters()) + list(net.named_buffers()):
        if torch.count_nonzero(t) == 0:
            continue  # zero increments
        for e in range(1, 3):
            assert not torch.allclose(t[0], t[e]), name
    x = randn(4, 5, seed=3)
    out = net(x)
    assert not torch.allclose(out[0], out[1])


def test_same_generator_same_init_and_different_seed_differs():
    a = make(seed=3)
    b = make(seed=3)
    c = make(seed=4)
    for (n, p), (_, q), (_, r) in zip(
        a.named_parameters(), b.named_parameters(), c.named_parameters()
    ):
        assert torch.equal(p, q), n
        assert not torch.equal(p, r), n


# -- parameter sets ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "arch,block,expected",
    [
        ("3resnet", "full", {"hidden": ["W", "b1", "U", "b2"], "last": ["A"]}),
        ("3layer", "full", {"hidden": ["W", "b1", "U", "b2"], "last": ["A"]}),
        ("2layer", "full", {"hidden": ["W", "b1"], "last": ["A"]}),
        ("3resnet", "bottleneck", {"hidden": ["W", "b1", "V"], "last": ["A"]}),
    ],
)
def test_parameter_names(arch, block, expected):
    net = make(arch, block)
    assert net.parameter_names("hidden") == expected["hidden"]
    assert net.parameter_names("last") == expected["last"]
    assert net.parameter_names("all") == expected["hidden"] + expected["last"]
    names = dict(net.named_parameters())
    for t in TRAINABLE:
        assert all(n in names for n in net.parameter_names(t))


def test_module_constants():
    assert ARCHS == ("3resnet", "3layer", "2layer")
    assert BLOCKS == ("full", "bottleneck")
    assert TRAINABLE == ("hidden", "last", "all")


def test_bottleneck_increment_moves_the_output():
    net = make("3resnet", "bottleneck")
    x = randn(3, 5, seed=9)
    before = net(x).clone()
    # At zero increments the forward uses W0, V0 only.
    torch.testing.assert_close(before[0], manual_forward(net, 0, x))
    with torch.no_grad():
        net.V[0].add_(0.5)
    after = net(x)
    assert not torch.allclose(before[0], after[0])
    torch.testing.assert_close(before[1], after[1])  # other member untouched


def test_extra_repr():
    r = repr(make("3layer"))
    assert "3layer" in r and "width=7" in r and "n_models=2" in r


# -- bad arguments ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs,match",
    [
        ({"arch": "4resnet"}, "arch"),
        ({"block": "tiny"}, "block"),
        ({"arch": "3layer", "block": "bottleneck"}, "bottleneck"),
        ({"arch": "2layer", "block": "bottleneck"}, "bottleneck"),
        ({"width": 0}, "width"),
        ({"width": -3}, "width"),
        ({"width": 2.5}, "width"),
        ({"in_features": 0}, "in_features"),
        ({"out_features": 0}, "out_features"),
        ({"n_models": 0}, "n_models"),
        ({"n_models": True}, "n_models"),
        ({"second_init": -1.0}, "second_init must be a finite number >= 0"),
        ({"bias_init": float("nan")}, "bias_init must be a finite number >= 0"),
        ({"readout_init": True}, "readout_init must be a finite number >= 0"),
    ],
)
def test_bad_constructor_args(kwargs, match):
    args = {"arch": "3resnet", "in_features": 3, "width": 4, "out_features": 2}
    with pytest.raises(ValueError, match=match):
        StackedNet(**{**args, **kwargs})


def test_bad_trainable():
    with pytest.raises(ValueError, match="trainable"):
        make().parameter_names("some")


@pytest.mark.parametrize("shape", [(4, 6), (2, 4, 4), (4,), (1, 2, 4, 5)])
def test_bad_x_shape(shape):
    net = make(d=5)
    with pytest.raises(ValueError, match="x must be"):
        net(torch.randn(*shape, dtype=F64))


def test_bad_x_ensemble_axis():
    net = make(d=5, E=2)
    with pytest.raises(ValueError, match="x"):
        net(torch.randn(3, 4, 5, dtype=F64))


def test_member_copies_one_member():
    net = StackedNet(
        "3resnet",
        5,
        7,
        2,
        n_models=3,
        block="bottleneck",
        generator=torch.Generator().manual_seed(0),
        dtype=torch.float64,
    )
    x = torch.randn(4, 5, dtype=torch.float64)
    one = net.member(1)
    assert one.n_models == 1
    torch.testing.assert_close(one(x)[0], net(x)[1])
    with pytest.raises(ValueError, match="member"):
        net.member(3)
