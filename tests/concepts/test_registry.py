"""Registry, params round trip and the seeded-stream contract shared by every concept."""

import inspect
import json
import math

import pytest
import torch

import fastkernels.concepts as concepts
from fastkernels.concepts import CONCEPTS, Concept, make_concept

# Small instances so that every check stays fast.
SMALL = {
    "parity": {"d": 10, "k": 4},
    "smooth": {"d": 6, "k": 3, "p_F": 4, "p_G": 4},
    "hard": {"d": 12, "d1": 8, "k": 3},
    "all19": {"which": "tanh"},
}


def test_registry_contents():
    assert set(CONCEPTS) == {"parity", "smooth", "hard", "all19"} == set(SMALL)
    for name, cls in CONCEPTS.items():
        assert issubclass(cls, Concept) and cls.name == name
        assert cls.__name__ in concepts.__all__ and getattr(concepts, cls.__name__) is cls


@pytest.mark.parametrize("name", sorted(SMALL))
@pytest.mark.parametrize("small", [False, True], ids=["defaults", "small"])
def test_params_round_trip(name, small):
    c = make_concept(name, **(SMALL[name] if small else {}))
    p = c.params()
    signature = [q for q in inspect.signature(type(c).__init__).parameters if q != "self"]
    assert list(p) == signature
    assert json.loads(json.dumps(p)) == p  # JSON-serialisable, no tuples
    again = make_concept(name, **json.loads(json.dumps(p)))
    assert again.params() == p
    X, Y = c.test_set(50)
    assert torch.equal(again.target(X), Y)
    assert repr(c).startswith(type(c).__name__ + "(")


def test_make_concept_rejects_unknown_names_and_parameters():
    with pytest.raises(ValueError, match="unknown concept 'nope'"):
        make_concept("nope")
    with pytest.raises(ValueError, match=r"unknown parameter\(s\) \['width'\]"):
        make_concept("smooth", width=3)
    with pytest.raises(ValueError, match="unknown parameter"):
        make_concept("hard", d2=3)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_same_seed_same_data(name):
    a = make_concept(name, **SMALL[name], seed=4)
    b = make_concept(name, **SMALL[name], seed=4)
    for (Xa, Ya), (Xb, Yb) in [(a.sample(64), b.sample(64)), (a.test_set(64), b.test_set(64))]:
        assert torch.equal(Xa, Xb) and torch.equal(Ya, Yb)
        assert Xa.dtype == Ya.dtype == torch.float64
        assert Xa.shape == (64, a.d) and Ya.shape == (64, a.k)
    assert torch.equal(a.sample(64, seed=9)[0], b.sample(64, seed=9)[0])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_different_seeds_and_streams_differ(name):
    a = make_concept(name, **SMALL[name], seed=0)
    b = make_concept(name, **SMALL[name], seed=1)
    assert not torch.equal(a.sample(64)[0], b.sample(64)[0])
    assert not torch.equal(a.test_set(64)[0], b.test_set(64)[0])
    assert not torch.equal(a.sample(64)[0], a.test_set(64)[0])
    assert not torch.equal(a.sample(64)[0], a.sample(64, seed=1)[0])


@pytest.mark.parametrize("name", sorted(SMALL))
def test_noise_only_on_training_labels(name):
    sigma = 0.5
    clean = make_concept(name, **SMALL[name], seed=2)
    noisy = make_concept(name, **SMALL[name], seed=2, noise=sigma)
    n = 4_000
    X, Y = noisy.sample(n)
    Xc, Yc = clean.sample(n)
    assert torch.equal(X, Xc) and torch.equal(Yc, clean.target(Xc))
    Xt, Yt = noisy.test_set(200)
    assert torch.equal(Yt, noisy.target(Xt))
    assert torch.equal(Yt, clean.test_set(200)[1])
    resid = (Y - noisy.target(X)).flatten()
    m = resid.numel()
    # Sample mean has std sigma / sqrt(m); sample std has std about sigma / sqrt(2 m).
    assert abs(float(resid.mean())) < 5 * sigma / math.sqrt(m)
    assert abs(float(resid.std()) - sigma) < 5 * sigma / math.sqrt(2 * m)


@pytest.mark.parametrize("name", sorted(SMALL))
def test_target_rejects_wrong_shape(name):
    c = make_concept(name, **SMALL[name])
    with pytest.raises(ValueError, match=rf"\(n, {c.d}\)"):
        c.target(torch.zeros(3, c.d + 1, dtype=torch.float64))
