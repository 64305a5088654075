"""The kernel parameter layout is defined once (``ops._common.LAYOUT`` and ``unpack_params``);
the C++ parser (``csrc/kernel_common.h: parse_spec``) repeats it and is checked against it here:
every wrong length and every rejected value, derived from the definition, must be refused by
both with the same message (the values printed after ", got" differ in format only)."""

import math

import pytest
import torch
from helpers import randn, rel_err

from fastkernels import ops
from fastkernels.ops._common import LAYOUT, unpack_params

OP = "fastkernels::gram"
# One list per kernel of the definition, every check of unpack_params once (or more).
INVALID = {
    "rbf": [[0.0], [-1.0], [math.inf], [math.nan]],
    "laplace": [[0.0]],
    "matern": [[1.0, 0.5], [0.5, 0.0], [2.5, -1.0]],
    "polynomial": [[0.0, 1.0, 0.0], [2.5, 1.0, 0.0], [2.0, 0.0, 0.0], [2.0, 1.0, math.inf]],
    "linear": [],
    "arccos": [[2.0], [0.5]],
    "nngp": [[2.0, 1.0], [0.0, 0.0], [0.0, 1.5], [1.0, 1.0]],
    "ntk": [[0.0, 1.0, 2.0], [1.0, 0.0, 0.5], [0.0, -1.0, 0.0]],
}


def _arity(kernel):
    n = 0 if LAYOUT[kernel] == "[]" else LAYOUT[kernel].count(",") + 1
    return [[0.5] * (n + 1)] + ([[0.5] * (n - 1)] if n else [])


CASES = [("unknown", [])] + [(k, ps) for k in LAYOUT for ps in _arity(k) + INVALID[k]]


def _phrase(exc: Exception) -> str:
    """The message between the op name and the offending values."""
    return str(exc).split(": ", 1)[1].rsplit(", got", 1)[0]


def test_every_kernel_of_the_definition_has_invalid_cases():
    assert set(INVALID) == set(LAYOUT) == set(ops.KERNEL_NAMES)


@pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("kernel,params", CASES, ids=[f"{k}-{ps}" for k, ps in CASES])
def test_cpp_refuses_what_the_definition_refuses_with_its_message(kernel, params):
    x = randn(3, 2)
    with pytest.raises(ValueError) as ref:
        unpack_params(OP, kernel, params)
    with pytest.raises(ValueError) as cpp:
        torch.ops.fastkernels.gram(x, x, kernel, params, None)
    assert str(cpp.value).startswith(f"{OP}: ")
    assert _phrase(cpp.value) == _phrase(ref.value)


@pytest.mark.skipif(not ops.HAS_CPP, reason="C++ extension not built")
@pytest.mark.parametrize("kernel", sorted(LAYOUT))
def test_cpp_accepts_the_layout_of_the_definition(kernel):
    # Valid parameters of every layout (the op tests compare the values themselves).
    valid = {
        "matern": [1.5, 0.5],
        "polynomial": [2.0, 0.5, 1.0],
        "nngp": [0.0, 2.0],
        "ntk": [1.0, 0.0, 1.0],
        "arccos": [1.0],
        "linear": [],
    }.get(kernel, [0.5])
    unpack_params(OP, kernel, valid)
    x1, x2 = randn(3, 2, seed=1), randn(4, 2, seed=2)
    got = torch.ops.fastkernels.gram(x1, x2, kernel, valid, None)
    assert rel_err(got, ops.gram_reference(x1, x2, kernel, valid)) < 1e-12
