"""SmoothConcept: Concept 1 with smooth activations (PAPER.md section 1)."""

import json
import math

import pytest
import torch

from fastkernels.concepts import SmoothConcept
from fastkernels.concepts.smooth import _NORM_SAMPLES, ACTIVATIONS

CONFIGS = [
    pytest.param({}, id="default"),
    pytest.param({"d": 3, "k": 1, "p_F": 2, "p_G": 3, "activations": ["poly3"]}, id="small-poly3"),
    pytest.param({"d": 7, "k": 4, "activations": ["sin", "exp"], "c": 2.5, "seed": 5}, id="c2.5"),
]

_REF_ACT = {
    "exp": lambda z: math.exp(z) - 1,
    "sin": math.sin,
    "tanh": math.tanh,
    "poly2": lambda z: z**2,
    "poly3": lambda z: z**3,
}


@pytest.mark.parametrize("kw", CONFIGS)
def test_hidden_parameters(kw):
    c = SmoothConcept(**kw)
    assert c.a_F.shape == c.act_F.shape == (c.k, c.p_F)
    assert c.a_G.shape == c.act_G.shape == (c.k, c.p_G)
    assert c.w_F.shape == (c.k, c.p_F, c.d) and c.v_G.shape == (c.k, c.p_G, c.k)
    half = torch.tensor(1 / math.sqrt(2), dtype=torch.float64)
    for w in (c.w_F, c.v_G):
        torch.testing.assert_close(w.norm(dim=-1), half.expand(w.shape[:2]), rtol=0, atol=1e-15)
    for a in (c.a_F, c.a_G):
        assert bool((a.abs() <= 1).all())
    for act in (c.act_F, c.act_G):
        assert int(act.min()) >= 0 and int(act.max()) < len(c.activations)


@pytest.mark.parametrize("kw", CONFIGS)
def test_normalisation(kw):
    # E||F||^2 = 1 and E||G(F)||^2 = k on a fresh sample. Both the construction estimate
    # (_NORM_SAMPLES points) and this one have sampling error: 5 sigma of their difference.
    c = SmoothConcept(**kw)
    n = 20_000
    X, _ = c.sample(n)
    F, GF = c.components(X)
    for values, expected in ((F, 1.0), (GF, float(c.k))):
        s = values.square().sum(dim=1)
        se = float(s.std()) * math.sqrt(1 / n + 1 / _NORM_SAMPLES)
        assert abs(float(s.mean()) - expected) < 5 * se


@pytest.mark.parametrize("kw", CONFIGS)
def test_inputs_uniform_on_sphere(kw):
    c = SmoothConcept(**kw)
    n = 10_000
    for X, _ in (c.sample(n), c.test_set(n)):
        assert X.shape == (n, c.d) and X.dtype == torch.float64
        torch.testing.assert_close(X.norm(dim=1), torch.ones(n, dtype=torch.float64))
        # E x = 0 and Var x_j = 1 / d: 5 sigma per coordinate.
        assert float(X.mean(dim=0).abs().max()) < 5 / math.sqrt(c.d * n)


@pytest.mark.parametrize("kw", CONFIGS)
def test_components_match_direct_formula(kw):
    c = SmoothConcept(**kw, beta=0.7)
    X, _ = c.test_set(20)
    F, GF = c.components(X)
    for n in range(3):
        x = X[n].tolist()
        f = []
        for r in range(c.k):
            total = 0.0
            for i in range(c.p_F):
                z = c.c * sum(wj * xj for wj, xj in zip(c.w_F[r, i].tolist(), x, strict=True))
                total += float(c.a_F[r, i]) * _REF_ACT[c.activations[int(c.act_F[r, i])]](z)
            f.append(c.F_scale * total)
        g = []
        for r in range(c.k):
            total = 0.0
            for i in range(c.p_G):
                z = c.c * sum(vj * fj for vj, fj in zip(c.v_G[r, i].tolist(), f, strict=True))
                total += float(c.a_G[r, i]) * _REF_ACT[c.activations[int(c.act_G[r, i])]](z)
            g.append(c.G_scale * total)
        ref_F = torch.tensor(f, dtype=torch.float64)
        ref_G = torch.tensor(g, dtype=torch.float64)
        torch.testing.assert_close(F[n], ref_F, rtol=1e-12, atol=1e-13)
        torch.testing.assert_close(GF[n], ref_G, rtol=1e-12, atol=1e-13)
        H = c.target(X[n : n + 1])[0]
        torch.testing.assert_close(H, 0.7 * ref_F + c.alpha * ref_G, rtol=1e-12, atol=1e-13)


def test_activation_table():
    z = torch.linspace(-2, 2, 9, dtype=torch.float64)
    for name, ref in _REF_ACT.items():
        expected = torch.tensor([ref(v) for v in z.tolist()], dtype=torch.float64)
        torch.testing.assert_close(ACTIVATIONS[name](z), expected)


def test_seed_changes_the_target():
    a, b = SmoothConcept(seed=0), SmoothConcept(seed=1)
    assert not torch.equal(a.w_F, b.w_F)
    X, _ = a.test_set(50)
    assert not torch.allclose(a.target(X), b.target(X))
    c = SmoothConcept(seed=0)
    assert torch.equal(a.target(X), c.target(X)) and a.F_scale == c.F_scale


def test_params_are_the_constructor_arguments():
    c = SmoothConcept(d=5, k=2, activations=("sin", "poly3"), c=2, seed=3)
    p = c.params()
    assert p["activations"] == ["sin", "poly3"] and isinstance(p["c"], float)
    assert json.loads(json.dumps(p)) == p
    again = SmoothConcept(**p)
    X, _ = c.test_set(10)
    assert torch.equal(again.target(X), c.target(X))


@pytest.mark.parametrize(
    "kw, arg",
    [
        ({"d": 0}, "d"),
        ({"d": 2.5}, "d"),
        ({"k": 0}, "k"),
        ({"k": True}, "k"),
        ({"p_F": 0}, "p_F"),
        ({"p_G": -1}, "p_G"),
        ({"activations": ["relu"]}, "activations"),
        ({"activations": []}, "activations"),
        ({"activations": "sin"}, "activations"),
        ({"activations": ["sin", 3]}, "activations"),
        ({"c": 0}, "c"),
        ({"c": -1.0}, "c"),
        ({"c": float("nan")}, "c"),
        ({"alpha": -0.3}, "alpha"),
        ({"beta": -1}, "beta"),
        ({"noise": -0.1}, "noise"),
        ({"seed": -1}, "seed"),
    ],
)
def test_bad_parameters(kw, arg):
    with pytest.raises(ValueError, match=rf"SmoothConcept: {arg} must"):
        SmoothConcept(**kw)


def test_overflowing_activation_is_rejected():
    with pytest.raises(ValueError, match=r"SmoothConcept: E\|\|F\|\|\^2 .* reduce c"):
        SmoothConcept(activations=["exp"], c=1e4)


def test_wrong_input_shape():
    c = SmoothConcept(d=4, k=2)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        c.target(torch.zeros(3, 5, dtype=torch.float64))
    with pytest.raises(ValueError, match=r"SmoothConcept.G: .*\(n, 2\)"):
        c.G(torch.zeros(3, 4, dtype=torch.float64))
