"""ALL19Target: the companion paper's smooth targets (PAPER.md 1.3)."""

import numpy as np
import pytest
import torch

from fastkernels.concepts import ALL19Target, make_concept


def _numpy_target(which, X):
    x = np.asarray(X, dtype=np.float64)
    if which == "sin":
        return (np.sin(3 * x[:, 0]) + np.sin(3 * x[:, 1]) + np.sin(3 * x[:, 2]) - 2) ** 2 * np.cos(
            7 * x[:, 3]
        )
    return (np.tanh(8 * x[:, 0]) + np.tanh(8 * x[:, 1]) + np.tanh(8 * x[:, 2]) - 2) ** 2 * np.tanh(
        8 * x[:, 3]
    )


@pytest.mark.parametrize("which", ["sin", "tanh"])
def test_formula_against_numpy(which):
    c = ALL19Target(which)
    rng = np.random.default_rng(0)
    X = rng.standard_normal((257, 4))
    Y = c.target(torch.from_numpy(X))
    assert Y.shape == (257, 1) and Y.dtype == torch.float64
    np.testing.assert_allclose(Y[:, 0].numpy(), _numpy_target(which, X), rtol=1e-12, atol=1e-12)
    Xs, Ys = c.test_set(100)
    np.testing.assert_allclose(Ys[:, 0].numpy(), _numpy_target(which, Xs.numpy()), rtol=1e-12)


@pytest.mark.parametrize("which", ["sin", "tanh"])
def test_shapes_and_components(which):
    c = ALL19Target(which, noise=0.1)
    assert (c.d, c.k, c.alpha, c.beta, c.threshold) == (4, 1, 0.0, 1.0, 0.0)
    X, Y = c.sample(33)
    assert X.shape == (33, 4) and Y.shape == (33, 1)
    F, GF = c.components(X)
    assert F.shape == GF.shape == (33, 1)
    assert torch.equal(GF, torch.zeros_like(GF))
    assert torch.equal(F, c.function(X)) and torch.equal(c.target(X), F)


@pytest.mark.parametrize("which", ["sin", "tanh"])
def test_inputs_on_unit_sphere(which):
    X, _ = ALL19Target(which).test_set(5_000)
    torch.testing.assert_close(X.norm(dim=1), torch.ones(5_000, dtype=torch.float64))
    assert float(X.mean(dim=0).abs().max()) < 5 / np.sqrt(4 * 5_000)


@pytest.mark.parametrize("which", ["sin", "tanh"])
def test_baseline_error_is_variance_of_test_labels(which):
    c = ALL19Target(which, seed=3)
    _, Y = c.test_set(4_000)
    assert c.baseline_error(4_000) == pytest.approx(float(np.var(Y.numpy())), rel=1e-12)
    assert c.baseline_error() > 0


def test_bad_parameters():
    with pytest.raises(ValueError, match="ALL19Target: which must"):
        ALL19Target("cos")
    with pytest.raises(ValueError, match="ALL19Target: noise must"):
        ALL19Target(noise=-1.0)
    with pytest.raises(ValueError, match="ALL19Target: seed must"):
        ALL19Target(seed=-2)
    with pytest.raises(ValueError, match=r"ALL19Target.baseline_error: n must"):
        ALL19Target().baseline_error(0)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        ALL19Target().target(torch.zeros(2, 3))
    # alpha and beta are fixed for this concept: not constructor parameters.
    with pytest.raises(ValueError, match="alpha"):
        make_concept("all19", alpha=0.3)
