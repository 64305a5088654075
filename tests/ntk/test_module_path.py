"""The hooks-based structured NTK of arbitrary nn.Modules and its fallback."""

from __future__ import annotations

import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from fastkernels.ntk import empirical_ntk
from fastkernels.ntk.empirical import NotStructured, module_factors


class Residual(nn.Module):
    """x -> W2 relu(W1 x) + x -> readout, with a skip and a GELU: a residual MLP."""

    def __init__(self, d=6, m=9, k=3):
        super().__init__()
        self.inp = nn.Linear(d, m)
        self.block = nn.Sequential(nn.Linear(m, m), nn.GELU(), nn.Linear(m, m, bias=False))
        self.out = nn.Linear(m, k)

    def forward(self, x):
        h = torch.relu(self.inp(x))
        h = h + self.block(h)
        return self.out(torch.tanh(h))


def oracle(model, names, x1, x2, mode):
    """Independent Jacobian contraction with torch.func (per-sample Jacobians)."""
    params = {n: p.detach() for n, p in model.named_parameters() if n in names}

    def f(p, x):
        return functional_call(model, p, (x[None],), strict=False)[0]

    def jac(x):
        J = vmap(jacrev(f), in_dims=(None, 0))(params, x)
        return torch.cat([j.flatten(2) for j in J.values()], dim=2)

    J1, J2 = jac(x1), jac(x2)
    eq = {"trace": "irp,jrp->ij", "diagonal": "irp,jrp->ijr", "full": "irp,jsp->ijrs"}[mode]
    return torch.einsum(eq, J1, J2)


def models():
    torch.manual_seed(0)
    return [
        ("sequential-tanh", nn.Sequential(nn.Linear(6, 7), nn.Tanh(), nn.Linear(7, 3))),
        ("residual", Residual()),
        ("one-output", nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 1))),
    ]


@pytest.mark.parametrize("name,model", models(), ids=[m[0] for m in models()])
@pytest.mark.parametrize("mode", ["trace", "diagonal", "full"])
@pytest.mark.parametrize("subset", ["all", "hidden"])
def test_structured_equals_jacobian_oracle(name, model, mode, subset):
    model = model.to(torch.float64)
    names = [n for n, _ in model.named_parameters()]
    if subset == "hidden":  # drop the last layer's parameters, as trainable="hidden" does
        last = names[-1].rsplit(".", 1)[0]
        names = [n for n in names if not n.startswith(last + ".")]
    g = torch.Generator().manual_seed(1)
    x1 = torch.randn(7, 6, generator=g, dtype=torch.float64)
    x2 = torch.randn(5, 6, generator=g, dtype=torch.float64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the structured path must apply: no fallback warning
        got = empirical_ntk(model, x1, x2, mode=mode, params=names, path="structured")
        auto = empirical_ntk(model, x1, x2, mode=mode, params=names)
    want = oracle(model, names, x1, x2, mode)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(auto, want, rtol=1e-10, atol=1e-12)


def test_frozen_parameters_are_excluded_by_default():
    model = nn.Sequential(nn.Linear(4, 5), nn.ReLU(), nn.Linear(5, 2)).to(torch.float64)
    model[2].requires_grad_(False)
    x = torch.randn(6, 4, dtype=torch.float64)
    got = empirical_ntk(model, x)
    want = oracle(model, ["0.weight", "0.bias"], x, x, "trace")
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


class Shared(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.out = nn.Linear(4, 1)

    def forward(self, x):
        return self.out(torch.tanh(self.lin(torch.tanh(self.lin(x)))))


def test_unsupported_models_fall_back_with_one_warning_or_error():
    x = torch.randn(5, 4, dtype=torch.float64)
    cases = [
        (Shared().to(torch.float64), "ran 2 times"),
        (
            nn.Sequential(nn.Linear(4, 3), nn.LayerNorm(3), nn.Linear(3, 1)).to(torch.float64),
            "not weights or biases of nn.Linear",
        ),
    ]
    for model, reason in cases:
        with pytest.warns(UserWarning, match=reason) as record:
            got = empirical_ntk(model, x)
        assert len([w for w in record if "falling back" in str(w.message)]) == 1
        names = [n for n, _ in model.named_parameters()]
        torch.testing.assert_close(got, oracle(model, names, x, x, "trace"))
        with pytest.raises(ValueError, match=reason):
            empirical_ntk(model, x, path="structured")
        with pytest.raises(NotStructured):
            module_factors(model, x)


def test_batchnorm_in_training_mode_is_rejected():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.Linear(3, 1)).to(torch.float64)
    x = torch.randn(5, 4, dtype=torch.float64)
    for path in ("auto", "structured", "generic"):
        with pytest.raises(ValueError, match="training mode"):
            empirical_ntk(model, x, path=path)


def test_batchnorm_in_eval_mode_is_structured():
    model = nn.Sequential(nn.Linear(4, 3), nn.BatchNorm1d(3), nn.ReLU(), nn.Linear(3, 2))
    model = model.to(torch.float64).eval()
    names = ["0.weight", "0.bias", "3.weight", "3.bias"]
    x = torch.randn(6, 4, dtype=torch.float64)
    got = empirical_ntk(model, x, params=names, path="structured")
    torch.testing.assert_close(got, oracle(model, names, x, x, "trace"), rtol=1e-10, atol=1e-12)


def test_wrong_feature_size_is_a_clear_error():
    model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 1)).to(torch.float64)
    with pytest.raises(ValueError, match="x1 of shape"):
        empirical_ntk(model, torch.randn(5, 7, dtype=torch.float64))
