"""Empirical NTK: the structured path vs torch.func (the generic path and an oracle here)."""

from __future__ import annotations

import math
import pickle

import pytest
import torch
from helpers import F64, gen, member_forward, member_state, randn
from torch import nn
from torch.func import functional_call, jacrev, vmap

from fastkernels.models import StackedNet, train_sgd
from fastkernels.ntk import EmpiricalNTK, empirical_ntk, ntk_factors, ntk_from_factors

MODES = ("trace", "full", "diagonal")
# (arch, block, trainable) combinations the structured path supports.
STRUCTURED = [
    (arch, "full", t) for arch in ("3resnet", "3layer", "2layer") for t in ("hidden", "last", "all")
] + [("3resnet", "bottleneck", "hidden")]
STRUCTURED_IDS = ["-".join(c) for c in STRUCTURED]


def make_net(arch="3resnet", block="full", d=4, m=6, k=3, E=2, seed=0):
    net = StackedNet(arch, d, m, k, n_models=E, block=block, generator=gen(seed), dtype=F64)
    if block == "bottleneck":
        # Non-zero increments so that W0 + W and V0 + V are both exercised.
        with torch.no_grad():
            net.W.copy_(0.2 * randn(*net.W.shape, seed=seed + 50))
            net.V.copy_(0.2 * randn(*net.V.shape, seed=seed + 51))
    return net


# -- the oracle ---------------------------------------------------------------------------------


def contract(J1: dict, J2: dict, mode: str, weights: dict | None = None) -> torch.Tensor:
    """sum over parameters of w_p J1_p J2_p^T; J: name -> (N, k, *shape)."""
    out = 0
    for n in J1:
        a, b = J1[n].flatten(2), J2[n].flatten(2)
        w = 1.0 if weights is None else weights[n]
        if mode == "trace":
            out = out + w * torch.einsum("irp,jrp->ij", a, b)
        elif mode == "diagonal":
            out = out + w * torch.einsum("irp,jrp->ijr", a, b)
        else:
            out = out + w * torch.einsum("irp,jsp->ijrs", a, b)
    return out


def oracle_stacked(net, x1, x2, mode, trainable, member=0, weights=None):
    state = member_state(net, member)
    names = net.parameter_names(trainable)
    theta = {n: state[n] for n in names}
    rest = {n: t for n, t in state.items() if n not in names}

    def f(th, x):
        return member_forward({**rest, **th}, net.arch, net.block, x[None])[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))
    return contract(jac(theta, x1), jac(theta, x2), mode, weights)


def oracle_module(model, x1, x2, mode, names=None):
    params = {n: p.detach() for n, p in model.named_parameters()}
    names = list(params) if names is None else names
    theta = {n: params[n] for n in names}
    rest = {n: p for n, p in params.items() if n not in names}

    def f(th, x):
        return functional_call(model, {**rest, **th}, (x[None],))[0]

    jac = vmap(jacrev(f), in_dims=(None, 0))
    return contract(jac(theta, x1), jac(theta, x2), mode)


def close(a, b, tol=1e-10):
    scale = float(b.abs().max()) or 1.0
    torch.testing.assert_close(a, b, rtol=tol, atol=tol * scale)


def init_variances(net: StackedNet) -> dict:
    out = {}
    for layer in net.layers:
        out[layer.weight] = layer.var_weight
        if layer.bias is not None:
            out[layer.bias] = layer.var_bias
    return out


# -- structured == generic == oracle ----------------------------------------------------------


@pytest.mark.parametrize("arch,block,trainable", STRUCTURED, ids=STRUCTURED_IDS)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("same", [False, True], ids=["x1!=x2", "x1==x2"])
def test_structured_equals_generic_and_oracle(arch, block, trainable, mode, same):
    net = make_net(arch, block, d=4, m=6, k=3)
    x1 = randn(5, 4, seed=1)
    x2 = x1 if same else randn(3, 4, seed=2)
    fast = empirical_ntk(net, x1, None if same else x2, mode=mode, trainable=trainable)
    slow = empirical_ntk(
        net, x1, None if same else x2, mode=mode, trainable=trainable, path="generic"
    )
    ref = oracle_stacked(net, x1, x2, mode, trainable)
    n, m_ = len(x1), len(x2)
    expected_shape = {"trace": (n, m_), "diagonal": (n, m_, 3), "full": (n, m_, 3, 3)}[mode]
    assert fast.shape == expected_shape and fast.dtype == F64
    close(fast, ref)
    close(slow, ref)
    if mode == "full":
        # trace and diagonal are views of the full kernel.
        diag = torch.diagonal(fast, dim1=2, dim2=3)
        close(empirical_ntk(net, x1, x2, mode="diagonal", trainable=trainable), diag)
        close(empirical_ntk(net, x1, x2, mode="trace", trainable=trainable), diag.sum(-1))


@pytest.mark.parametrize("arch,block,trainable", STRUCTURED, ids=STRUCTURED_IDS)
def test_one_by_one(arch, block, trainable):
    net = make_net(arch, block, d=1, m=3, k=1, E=1, seed=3)
    x1, x2 = randn(1, 1, seed=4), randn(1, 1, seed=5)
    for mode in MODES:
        fast = empirical_ntk(net, x1, x2, mode=mode, trainable=trainable)
        close(fast, oracle_stacked(net, x1, x2, mode, trainable))
        close(empirical_ntk(net, x1, x2, mode=mode, trainable=trainable, path="generic"), fast)


@pytest.mark.parametrize("trainable", ["last", "all"])
def test_bottleneck_with_readout_uses_generic_path(trainable):
    # A is read twice (out1 = A h1 and the readout): only the generic path covers it.
    net = make_net("3resnet", "bottleneck", d=3, m=5, k=2, seed=6)
    x1, x2 = randn(4, 3, seed=7), randn(3, 3, seed=8)
    with pytest.raises(ValueError, match="structured"):
        empirical_ntk(net, x1, x2, trainable=trainable, path="structured")
    with pytest.raises(ValueError, match="bottleneck"):
        ntk_factors(net, x1, trainable)
    for mode in MODES:
        auto = empirical_ntk(net, x1, x2, mode=mode, trainable=trainable)
        close(auto, oracle_stacked(net, x1, x2, mode, trainable))


@pytest.mark.parametrize("path", ["structured", "generic"])
def test_member_selects_ensemble_member(path):
    net = make_net("3layer", d=3, m=5, k=2, E=3, seed=9)
    x1, x2 = randn(4, 3, seed=10), randn(2, 3, seed=11)
    for member in range(3):
        got = empirical_ntk(net, x1, x2, member=member, trainable="all", path=path)
        close(got, oracle_stacked(net, x1, x2, "trace", "all", member=member))
    assert not torch.allclose(
        empirical_ntk(net, x1, x2, member=0, path=path),
        empirical_ntk(net, x1, x2, member=1, path=path),
    )


def test_numpy_and_float32_inputs_follow_model_dtype():
    net = make_net("2layer", d=3, m=4, k=2)
    x = randn(3, 3, seed=12)
    got = empirical_ntk(net, x.numpy())
    assert got.dtype == F64
    close(got, empirical_ntk(net, x))
    close(empirical_ntk(net, x.float()), empirical_ntk(net, x.float().double()))


# -- the generic path on an arbitrary module ---------------------------------------------------


def _module():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)).double()


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("same", [False, True], ids=["x1!=x2", "x1==x2"])
def test_generic_module_equals_oracle(mode, same):
    model = _module()
    x1 = randn(6, 5, seed=13)
    x2 = x1 if same else randn(4, 5, seed=14)
    got = empirical_ntk(model, x1, None if same else x2, mode=mode, chunk_size=4)
    close(got, oracle_module(model, x1, x2, mode))


def test_generic_module_param_subset_and_chunks():
    model = _module()
    x1, x2 = randn(7, 5, seed=15), randn(3, 5, seed=16)
    names = ["0.weight", "2.bias"]
    ref = oracle_module(model, x1, x2, "full", names)
    for chunk in (1, 3, 64):
        close(empirical_ntk(model, x1, x2, mode="full", params=names, chunk_size=chunk), ref)


def test_generic_module_one_by_one():
    model = nn.Sequential(nn.Linear(1, 2), nn.Tanh(), nn.Linear(2, 1)).double()
    x1, x2 = randn(1, 1, seed=17), randn(1, 1, seed=18)
    got = empirical_ntk(model, x1, x2)
    assert got.shape == (1, 1)
    close(got, oracle_module(model, x1, x2, "trace"))


# -- scaling="ntk" ----------------------------------------------------------------------------


@pytest.mark.parametrize("arch,block,trainable", STRUCTURED, ids=STRUCTURED_IDS)
def test_ntk_scaling_weights_each_layer_by_its_init_variance(arch, block, trainable):
    net = make_net(arch, block, d=4, m=6, k=2, seed=19)
    x1, x2 = randn(4, 4, seed=20), randn(3, 4, seed=21)
    weights = init_variances(net)
    assert weights["W"] == 1 / 4 and weights["A"] == 1 / 6
    for mode in MODES:
        got = empirical_ntk(net, x1, x2, mode=mode, trainable=trainable, scaling="ntk")
        close(got, oracle_stacked(net, x1, x2, mode, trainable, weights=weights))


def test_ntk_scaling_generic_path_refused_on_stackednet():
    net = make_net("2layer")
    with pytest.raises(ValueError, match="scaling"):
        empirical_ntk(net, randn(2, 4), scaling="ntk", path="generic")


# -- ntk_factors / ntk_from_factors ------------------------------------------------------------


def test_factor_shapes():
    d, m, k = 4, 6, 3
    net = make_net("3resnet", d=d, m=m, k=k)
    x = randn(5, d, seed=22)
    f = ntk_factors(net, x, "all")
    assert [a.shape for a, _ in f] == [(5, d + 1), (5, m + 1), (5, m)]
    assert [b.shape for _, b in f] == [(5, k, m), (5, k, m), (5, k, k)]
    # The readout's output sensitivity is the identity.
    torch.testing.assert_close(f[2][1], torch.eye(k, dtype=F64).expand(5, k, k))
    with pytest.raises(ValueError, match="mode"):
        ntk_from_factors(f, f, mode="sum")
    with pytest.raises(ValueError, match="scaling"):
        ntk_factors(net, x, "all", scaling="mean-field")


# -- EmpiricalNTK ------------------------------------------------------------------------------


@pytest.mark.parametrize("arch,block,trainable", STRUCTURED[:3] + STRUCTURED[-1:])
@pytest.mark.parametrize("scaling", ["standard", "ntk"])
def test_kernel_object_mv_diag_call(arch, block, trainable, scaling):
    net = make_net(arch, block, d=4, m=5, k=2, seed=23)
    kern = EmpiricalNTK(net, trainable, scaling, block_size=3)
    x1, x2 = randn(7, 4, seed=24), randn(5, 4, seed=25)
    K = empirical_ntk(net, x1, x2, trainable=trainable, scaling=scaling)
    close(kern(x1, x2), K)
    v1, v2 = randn(5, seed=26), randn(5, 3, seed=27)
    out1, out2 = kern.mv(x1, x2, v1), kern.mv(x1, x2, v2)
    assert out1.shape == (7,) and out2.shape == (7, 3)
    close(out1, K @ v1)
    close(out2, K @ v2)
    Kxx = empirical_ntk(net, x1, trainable=trainable, scaling=scaling)
    close(kern.diag(x1), torch.diagonal(Kxx))
    close(kern(x1, x1), Kxx)
    # Block size larger than N, and exactly one row per block; square products (x1 is x2) in
    # one block (the symmetric op path) and in several.
    v1sq = randn(7, 3, seed=30)
    for bs in (1, 3, 100):
        kb = EmpiricalNTK(net, trainable, scaling, block_size=bs)
        close(kb.mv(x1, x2, v2), K @ v2)
        close(kb.mv(x1, x1, v1sq), Kxx @ v1sq)
    assert kern.params() == {
        "arch": arch,
        "width": 5,
        "block": block,
        "trainable": trainable,
        "scaling": scaling,
    }


def test_kernel_object_reuses_right_factors_only_while_valid():
    net = make_net("3resnet", d=4, m=6, k=2, seed=31)
    kern = EmpiricalNTK(net, "hidden")
    x1, x2 = randn(5, 4, seed=32), randn(3, 4, seed=33)
    calls = []
    factors = kern.factors
    kern.factors = lambda x: calls.append(len(x)) or factors(x)
    K = kern(x1, x2)
    close(kern(x1, x2), K)
    assert calls == [3, 5, 5]  # x2's factors once, x1's for each call
    x2.mul_(2.0)  # same object, new values: recomputed
    close(kern(x1, x2), empirical_ntk(net, x1, x2, trainable="hidden"))
    x3 = x2.clone()  # equal values, another tensor: recomputed (identity, not equality)
    calls.clear()
    kern(x1, x3)
    assert calls == [3, 5]
    with torch.no_grad():
        net.W.add_(0.1)  # the network changed: recomputed
    calls.clear()
    close(kern(x1, x3), empirical_ntk(net, x1, x3, trainable="hidden"))
    assert calls == [3, 5]
    net.W.data = net.W.data.clone()  # new storage, version unchanged: recomputed
    calls.clear()
    kern(x1, x3)
    assert calls == [3, 5]
    kern.scaling = "ntk"  # another kernel of the same network: recomputed
    calls.clear()
    close(kern(x1, x3), empirical_ntk(net, x1, x3, trainable="hidden", scaling="ntk"))
    assert calls == [3, 5]
    # The memo goes with its tensor, pickles empty, and clear_cache drops it.
    assert kern._memo is not None
    del x3
    assert kern._memo is None
    kern(x1, x2)
    spy = kern.__dict__.pop("factors")  # the counting wrapper does not pickle
    state = pickle.loads(pickle.dumps(kern))
    assert state._memo is None and kern._memo is not None
    kern.factors = spy
    kern.clear_cache()
    assert kern._memo is None
    with torch.inference_mode():
        xi = randn(3, 4, seed=37)
    calls.clear()
    kern(x1, xi)
    kern(x1, xi)
    assert calls == [3, 5, 3, 5]  # inference tensors have no version counter: never kept


def test_kernel_object_evaluates_in_input_dtype():
    net = make_net("3resnet", d=4, m=6, k=2, seed=34)  # float64 network
    kern = EmpiricalNTK(net, "hidden")
    x1, x2 = randn(5, 4, seed=35), randn(3, 4, seed=36)
    K64 = kern(x1, x2)
    K32 = kern(x1.float(), x2.float())
    assert K32.dtype == torch.float32 and K64.dtype == torch.float64
    close(K32.double(), K64, tol=1e-5)


@pytest.mark.parametrize("arch", ["3resnet", "3layer", "2layer"])
@pytest.mark.parametrize("trainable", ["hidden", "all"])
def test_trace_gram_is_psd(arch, trainable):
    net = make_net(arch, d=3, m=8, k=2, seed=28)
    x = randn(15, 3, seed=29)
    K = empirical_ntk(net, x, trainable=trainable)
    torch.testing.assert_close(K, K.T, rtol=1e-12, atol=1e-12)
    eig = torch.linalg.eigvalsh(K)
    assert float(eig.min()) > -1e-10 * float(eig.max())


# -- bad input ---------------------------------------------------------------------------------


def test_bad_inputs_stackednet():
    net = make_net("3resnet", d=4)
    x = randn(3, 4)
    with pytest.raises(ValueError, match="x1"):
        empirical_ntk(net, randn(3, 5))
    with pytest.raises(ValueError, match="x2"):
        empirical_ntk(net, x, randn(2, 3))
    with pytest.raises(ValueError, match="x1"):
        empirical_ntk(net, randn(2, 3, 4))
    with pytest.raises(ValueError, match="x1"):
        empirical_ntk(net, torch.full((2, 4), float("nan"), dtype=F64))
    with pytest.raises(ValueError, match="x2"):
        empirical_ntk(net, x, torch.full((2, 4), float("inf"), dtype=F64))
    with pytest.raises(ValueError, match="x1"):
        empirical_ntk(net, torch.empty(0, 4, dtype=F64))
    with pytest.raises(ValueError, match="mode"):
        empirical_ntk(net, x, mode="sum")
    with pytest.raises(ValueError, match="path"):
        empirical_ntk(net, x, path="fast")
    with pytest.raises(ValueError, match="trainable"):
        empirical_ntk(net, x, trainable="everything")
    with pytest.raises(ValueError, match="scaling"):
        empirical_ntk(net, x, scaling="mean-field")


def test_bad_inputs_generic_module():
    model = _module()
    x = randn(3, 5)
    with pytest.raises(ValueError, match="params"):
        empirical_ntk(model, x, params=["0.weight", "3.weight"])
    with pytest.raises(ValueError, match="features"):
        empirical_ntk(model, x, randn(2, 4))
    with pytest.raises(ValueError, match="mode"):
        empirical_ntk(model, x, mode="sum")
    # Linear + Tanh layers are covered by the structured (hooks) path; a LayerNorm's affine
    # parameters are not, so requesting that path must fail loudly.
    ln = torch.nn.Sequential(torch.nn.Linear(5, 4), torch.nn.LayerNorm(4), torch.nn.Linear(4, 2))
    ln = ln.to(torch.float64)
    with pytest.raises(ValueError, match="structured path does not apply"):
        empirical_ntk(ln, x, path="structured")


@pytest.mark.parametrize("scaling", ["ntk", "bogus"])
def test_generic_module_rejects_scaling(scaling):
    with pytest.raises(ValueError, match="scaling"):
        empirical_ntk(_module(), randn(3, 5), scaling=scaling)


@pytest.mark.parametrize("member", [2, -1])
def test_bad_member(member):
    net = make_net("2layer", E=2)
    with pytest.raises(ValueError, match="member"):
        empirical_ntk(net, randn(3, 4), member=member, path="generic")


def test_ntk_after_training_or_with_frozen_parameters():
    net = make_net("3resnet", d=3, m=5, k=2, seed=30)
    X, Y = randn(6, 3, seed=31), randn(6, 2, seed=32)
    train_sgd(net, X, Y, params=["W", "b1"], lr=0.1, epochs=1, batch_size=3, generator=gen(0))
    got = empirical_ntk(net, X, trainable="hidden")
    close(got, oracle_stacked(net, X, X, "trace", "hidden"))


# -- width -> infinity: the analytic NTK --------------------------------------------------------


def _relative_error(arch: str, width: int, seeds, x1, x2, k: int) -> float:
    from fastkernels.kernels import make_kernel

    limit = make_kernel("ntk", arch=arch)(x1, x2)
    errs = []
    for seed in seeds:
        net = StackedNet(arch, x1.shape[1], width, k, generator=gen(seed), dtype=F64)
        emp = empirical_ntk(net, x1, x2, trainable="hidden", scaling="ntk") / k
        errs.append(float((emp - limit).norm() / limit.norm()))
    return sum(errs) / len(errs)


@pytest.mark.parametrize("arch", ["2layer", "3layer", "3resnet"])
def test_empirical_ntk_converges_to_analytic(arch):
    d, k = 6, 2
    x = randn(6, d, seed=40)
    x = x / x.norm(dim=1, keepdim=True) * math.sqrt(d)
    x1, x2 = x[:4], x[2:]  # overlapping rows: diagonal and off-diagonal pairs
    seeds = range(3)
    errs = {m: _relative_error(arch, m, seeds, x1, x2, k) for m in (64, 256, 1024)}
    # Fluctuations shrink like 1 / sqrt(width): a factor 4 from 64 to 1024.
    assert errs[1024] < errs[64] / 2, errs
    assert errs[1024] < 0.1, errs
