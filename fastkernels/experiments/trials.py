"""A sweep expanded into trials, and the keys that identify them.

A trial's key is the sha256 of the canonical JSON of its config (:func:`trial_key`), and the
config holds the learner's fully resolved parameters (:func:`resolved_params`), so equal
configurations share a key whatever the sweep file spells out, and the results store skips
them; :func:`learner_config_hash` identifies a learner's configuration across sizes and seeds.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math

import torch

from ..learners import make_learner
from .spec import SweepSpec, Trial, concept_config

__all__ = [
    "NON_RESULT_PARAMS",
    "canonical_json",
    "trial_key",
    "resolved_params",
    "learner_config_hash",
    "expand",
]

# Learner parameters that cannot change a result (what is printed while fitting): they are not
# part of a trial's configuration, so adding ``verbose = false`` to a sweep reruns nothing.
NON_RESULT_PARAMS = ("verbose", "progress")
# Parameters a sweep file cannot set (Python objects), left out at their default None so that the
# configurations stored before they existed keep their keys.
_OBJECT_PARAMS = ("model",)


def canonical_json(obj) -> str:
    """Compact JSON with sorted keys, ASCII only and no NaN: identical text for equal configs.

    Python's float repr is the shortest round-tripping form on every supported version, so the
    text (and any hash of it) does not depend on the process or the Python version.
    """
    return json.dumps(
        obj, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False
    )


def trial_key(config: dict) -> str:
    """The stable key of a trial config: sha256 hex digest of :func:`canonical_json`."""
    return hashlib.sha256(canonical_json(config).encode("ascii")).hexdigest()


def resolved_params(type_name: str, params: dict) -> dict:
    """A learner's fully resolved configuration: every constructor parameter with its value.

    Defaults are filled in (so that a sweep which spells out a default and one that leaves it
    out are the same configuration, and a changed default is a different one); the parameters
    the runner sets per trial (``random_state``, ``device``) and those that cannot change a
    result (:data:`NON_RESULT_PARAMS`) are left out. Values are plain JSON: tuples become lists,
    torch dtypes their names (``"float32"``), which the learners accept back.

    Parameters
    ----------
    type_name : str
        Registry key of the learner.
    params : dict
        Constructor parameters from the sweep (``width`` included when the sweep sets it).

    Returns
    -------
    dict
    """
    est = make_learner(type_name, **params)
    if hasattr(est, "get_params"):
        full = dict(est.get_params(deep=False))
    else:
        sig = inspect.signature(type(est).__init__).parameters
        full = {
            name: p.default
            for name, p in sig.items()
            if name != "self" and p.default is not inspect.Parameter.empty
        }
        full.update(params)
    skip = {"random_state", "device", *NON_RESULT_PARAMS}
    skip.update(k for k in _OBJECT_PARAMS if full.get(k) is None)
    return {k: _plain(v) for k, v in sorted(full.items()) if k not in skip}


def _plain(value):
    """JSON form of a resolved parameter value (see :func:`resolved_params`)."""
    if isinstance(value, torch.dtype):
        return str(value).removeprefix("torch.")
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _plain(v) for k, v in value.items()}
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"learner parameter value {value!r} is not a finite number")
        return value
    # An object default (a kernel instance, ...) has no stable JSON form: its repr stands in.
    return repr(value)


def learner_config_hash(learner: dict) -> str:
    """sha256 hex digest of ``{"type", "params"}`` of a trial config's learner."""
    ident = {"type": learner["type"], "params": learner["params"]}
    return hashlib.sha256(canonical_json(ident).encode("ascii")).hexdigest()


def expand(spec: SweepSpec) -> list[Trial]:
    """All trials of ``spec``, in the order learners x N x width x alpha x beta x seeds.

    Learners without a ``width`` parameter are not multiplied by ``widths`` (their width is
    ``None``); the same holds for every learner when the sweep sets no widths.

    Returns
    -------
    list of Trial
        Keys are unique within the list.
    """
    # Concept params per (alpha, beta), seed 0; the seed is substituted per trial below.
    concept_cfg = {
        (a, b): concept_config(spec.concept, spec.concept_params, a, b, seed=0)
        for a, b in itertools.product(spec.alphas or (None,), spec.betas or (None,))
    }
    trials: list[Trial] = []
    for lspec in spec.learners:
        widths = (
            (lspec.widths or spec.widths) if (lspec.takes_width and spec.widths) else (None,)
        )
        resolved = {
            w: resolved_params(lspec.type, {**lspec.params, **({} if w is None else {"width": w})})
            for w in widths
        }
        for n, w, a, b, seed in itertools.product(
            lspec.n_train or spec.n_train,
            widths,
            spec.alphas or (None,),
            spec.betas or (None,),
            spec.seeds,
        ):
            cc, alpha, beta = concept_cfg[(a, b)]
            cparams = {**cc["params"], "seed": seed}
            lparams = resolved[w]
            config = {
                "concept": {"name": spec.concept, "params": cparams},
                "learner": {"type": lspec.type, "label": lspec.label, "params": lparams},
                "n_train": n,
                "n_test": spec.n_test,
                "seed": seed,
            }
            trials.append(
                Trial(
                    key=trial_key(config),
                    config=config,
                    label=lspec.label,
                    learner_type=lspec.type,
                    n_train=n,
                    width=w,
                    alpha=alpha,
                    beta=beta,
                    seed=seed,
                    config_hash=learner_config_hash(config["learner"]),
                )
            )
    return trials
