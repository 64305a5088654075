"""fastkernels::ntk_gram and fastkernels::ntk_mv against a float64 reference."""

from __future__ import annotations

import pytest
import torch
from torch.library import opcheck

from fastkernels.ops import _ntk_common
from fastkernels.ops.ntk_gram import ntk_gram
from fastkernels.ops.ntk_mv import ntk_mv

WIDTHS = [(4, 6), (1, 3), (9, 2)]  # (p_l, q_l) per layer


def factors(n, widths=WIDTHS, dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = [torch.randn(n, p, generator=g, dtype=dtype) for p, _ in widths]
    b = [torch.randn(n, q, generator=g, dtype=dtype) for _, q in widths]
    return a, b


def reference(a1, b1, a2, b2):
    a1, b1, a2, b2 = ([t.double() for t in lst] for lst in (a1, b1, a2, b2))
    return sum((x @ y.T) * (u @ w.T) for x, u, y, w in zip(a1, b1, a2, b2))


@pytest.fixture
def small_tiles(monkeypatch):
    # Force several row tiles on small inputs so that the tiling is exercised.
    monkeypatch.setattr(_ntk_common, "TILE_ELEMENTS", 40)


@pytest.mark.parametrize("n,m", [(1, 1), (7, 5), (37, 53)])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
@pytest.mark.parametrize("tiled", [False, True])
def test_matches_reference(n, m, dtype, tiled, request):
    if tiled:
        request.getfixturevalue("small_tiles")
    a1, b1 = factors(n, dtype=dtype, seed=1)
    a2, b2 = factors(m, dtype=dtype, seed=2)
    want = reference(a1, b1, a2, b2)
    tol = dict(rtol=1e-12, atol=1e-12) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-5)
    K = ntk_gram(a1, b1, a2, b2)
    assert K.dtype == dtype and K.shape == (n, m)
    torch.testing.assert_close(K.double(), want, **tol)
    v = torch.randn(m, 3, dtype=dtype, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(ntk_mv(a1, b1, a2, b2, v).double(), want @ v.double(), **tol)


def test_tiles_are_smaller_than_the_matrix(small_tiles):
    assert _ntk_common.tile_rows(37, 53) < 37


def test_gradcheck_and_opcheck(small_tiles):
    a1, b1 = factors(5, seed=4)
    a2, b2 = factors(4, seed=5)
    v = torch.randn(4, 2, dtype=torch.float64)
    leaves = [t.clone().requires_grad_(True) for t in (*a1, *b1, *a2, *b2)]
    L = len(a1)

    def split(ts):
        return [list(ts[i * L : (i + 1) * L]) for i in range(4)]

    assert torch.autograd.gradcheck(lambda *ts: ntk_gram(*split(ts)), leaves)
    vl = v.clone().requires_grad_(True)
    assert torch.autograd.gradcheck(lambda *ts: ntk_mv(*split(ts[:-1]), ts[-1]), (*leaves, vl))
    opcheck(torch.ops.fastkernels.ntk_gram.default, (a1, b1, a2, b2))
    opcheck(torch.ops.fastkernels.ntk_mv.default, (a1, b1, a2, b2, v))


def test_psd_on_same_points():
    a, b = factors(30, seed=6)
    K = ntk_gram(a, b, a, b)
    assert torch.linalg.eigvalsh(K).min() > -1e-9 * K.diagonal().max()


def test_bad_input():
    a1, b1 = factors(5)
    a2, b2 = factors(4)
    with pytest.raises(ValueError, match="ntk_gram: a1, b1, a2, b2 must have one factor per layer"):
        ntk_gram(a1, b1[:2], a2, b2)
    with pytest.raises(ValueError, match="layer 0: a1 and a2 widths differ"):
        ntk_gram([a1[0][:, :3]] + a1[1:], b1, a2, b2)
    with pytest.raises(ValueError, match=r"b1\[1\] has 4 rows"):
        ntk_gram(a1, [b1[0], b1[1][:4], b1[2]], a2, b2)
    with pytest.raises(TypeError, match="float32 or float64"):
        ntk_gram([a1[0].int()] + a1[1:], b1, a2, b2)
    with pytest.raises(TypeError, match="dtype"):
        ntk_gram([a1[0].float()] + a1[1:], b1, a2, b2)
    bad = a1[0].clone()
    bad[0, 0] = float("nan")
    with pytest.raises(ValueError, match=r"a1\[0\] contains NaN"):
        ntk_gram([bad] + a1[1:], b1, a2, b2)
    with pytest.raises(ValueError, match="ntk_mv: v must be"):
        ntk_mv(a1, b1, a2, b2, torch.randn(5, 2, dtype=torch.float64))
    with pytest.raises(ValueError, match="non-empty list"):
        ntk_gram([], [], [], [])
