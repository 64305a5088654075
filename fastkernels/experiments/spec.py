"""Sweep specifications: a TOML file (or a named preset) turned into a list of trials.

A sweep is the cross product learners x N x width x alpha x beta x seeds on one concept. The file
format is::

    [sweep]
    name = "quick"              # required; names the default results folder
    n_train = [1000, 3000]      # required, positive integers
    seeds = [0, 1]              # required, non-negative integers
    widths = [256]              # optional; only for learners whose constructor takes `width`
    alphas = [0.3]              # optional; overrides the concept's alpha (>= 0)
    betas = [1.0]               # optional; overrides the concept's beta (>= 0)
    n_test = 10000              # optional, default 10000
    description = "..."         # optional free text shown in the report

    [concept]
    name = "parity"             # a key of fastkernels.concepts.CONCEPTS
    d = 30                      # other keys: constructor parameters of that concept

    [[learners]]
    label = "3resnet (hidden)"  # unique, used in reports
    type = "resnet"             # a key of fastkernels.learners.LEARNERS
    arch = "3resnet"            # other keys: constructor parameters of that learner type
                                # (strings, numbers, booleans, lists, inline tables such as
                                # kernel_params = {gamma = 0.5}); not width/random_state/device,
                                # which the runner sets

    [report]
    c = 4.0                     # optional: sample-complexity threshold c * alpha^2

Everything is checked while parsing, before any trial runs: a problem raises :class:`SpecError`
with one line naming the file, the table, the key and what was expected.
"""

from __future__ import annotations

import hashlib
import inspect
import itertools
import json
import math
import re
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 needs the tomli backport
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

__all__ = [
    "SpecError",
    "LearnerSpec",
    "SweepSpec",
    "Trial",
    "load_spec",
    "parse_spec",
    "load_toml",
    "preset_names",
    "list_presets",
    "expand",
    "trial_key",
    "canonical_json",
    "RUNNER_SET_PARAMS",
    "NON_RESULT_PARAMS",
    "resolved_params",
]

DEFAULT_N_TEST = 10_000
# Learner parameters the runner fills in per trial; a sweep file may not set them.
RUNNER_SET_PARAMS = ("width", "random_state", "device")
# Learner parameters that cannot change a result (what is printed while fitting): they are not
# part of a trial's configuration, so adding ``verbose = false`` to a sweep reruns nothing.
NON_RESULT_PARAMS = ("verbose", "progress")

_TOP_KEYS = ("sweep", "concept", "learners", "report")
_SWEEP_KEYS = ("name", "n_train", "seeds", "widths", "alphas", "betas", "n_test", "description")
_REPORT_KEYS = ("c",)
# Sweep names become folder names (fastkernels-results/<name>/), so keep them path-safe.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
# Presets are package data of fastkernels.experiments (pyproject: presets/*.toml), not a package.
_PRESET_PACKAGE = "fastkernels.experiments"


class SpecError(ValueError):
    """A sweep file or preset is invalid; the message is one line naming the key at fault."""


@dataclass(frozen=True)
class LearnerSpec:
    """One ``[[learners]]`` entry.

    Attributes
    ----------
    label : str
        Unique name of the learner in reports.
    type : str
        Registry key in :data:`fastkernels.learners.LEARNERS`.
    params : dict
        Constructor parameters from the file (never ``width``, ``random_state``, ``device``).
    takes_width, takes_random_state, takes_device : bool
        Whether the learner's constructor accepts these runner-set parameters.
    n_train : tuple of int or None
        The sample sizes this learner runs at (a subset of the sweep's); None: all of them.
    """

    label: str
    type: str
    params: dict = field(default_factory=dict)
    takes_width: bool = False
    takes_random_state: bool = False
    takes_device: bool = False
    n_train: tuple[int, ...] | None = None


@dataclass(frozen=True)
class SweepSpec:
    """A validated sweep.

    Attributes
    ----------
    name : str
        Sweep name (path-safe).
    n_train, seeds : tuple of int
        Training-set sizes and seeds.
    widths, alphas, betas : tuple or None
        Optional sweep axes; ``None`` when the file does not set them.
    n_test : int
        Test-set size.
    description : str
        Free text for the report.
    concept : str
        Concept registry name.
    concept_params : dict
        Concept constructor parameters from the file (never ``seed``; never ``alpha``/``beta``
        when the sweep sets them).
    learners : tuple of LearnerSpec
    c : float or None
        Sample-complexity constant from ``[report]``; ``None`` means the default k / 2.
    source : str
        Where the spec came from (a path or ``preset:<name>``), used in messages.
    """

    name: str
    n_train: tuple[int, ...]
    seeds: tuple[int, ...]
    concept: str
    concept_params: dict
    learners: tuple[LearnerSpec, ...]
    widths: tuple[int, ...] | None = None
    alphas: tuple[float, ...] | None = None
    betas: tuple[float, ...] | None = None
    n_test: int = DEFAULT_N_TEST
    description: str = ""
    c: float | None = None
    source: str = "<string>"

    def to_dict(self) -> dict:
        """A JSON-able description of the sweep, in the file's layout (for the results store)."""
        sweep: dict[str, Any] = {
            "name": self.name,
            "n_train": list(self.n_train),
            "seeds": list(self.seeds),
            "n_test": self.n_test,
            "description": self.description,
        }
        for key in ("widths", "alphas", "betas"):
            if getattr(self, key) is not None:
                sweep[key] = list(getattr(self, key))
        out: dict[str, Any] = {
            "sweep": sweep,
            "concept": {"name": self.concept, **self.concept_params},
            "learners": [
                {
                    "label": s.label,
                    "type": s.type,
                    **s.params,
                    **({"n_train": list(s.n_train)} if s.n_train is not None else {}),
                }
                for s in self.learners
            ],
        }
        if self.c is not None:
            out["report"] = {"c": self.c}
        return out


@dataclass(frozen=True)
class Trial:
    """One trial of a sweep: a learner fitted on one sample of one concept.

    Attributes
    ----------
    key : str
        sha256 hex digest of the canonical JSON of ``config``.
    config : dict
        Everything that defines the trial, JSON-able::

            {"concept": {"name": ..., "params": {..., "alpha", "beta", "seed"}},
             "learner": {"type": ..., "label": ..., "params": {..., "width"?}},
             "n_train": int, "n_test": int, "seed": int}

        The learner's ``params`` are its fully resolved configuration
        (:func:`resolved_params`): every constructor parameter, defaults included, except the
        ones the runner sets per trial and those that cannot change a result.
    config_hash : str
        sha256 hex digest of the learner's ``{"type", "params"}``: its configuration identity
        (reports group by it, so two configurations under one label are never pooled).
    label, learner_type : str
    n_train, seed : int
    width : int or None
        ``None`` for learners without a ``width`` parameter or when the sweep sets no widths.
    alpha, beta : float
        The concept's effective alpha and beta.
    """

    key: str
    config: dict
    label: str
    learner_type: str
    n_train: int
    width: int | None
    alpha: float
    beta: float
    seed: int
    config_hash: str = ""


# --------------------------------------------------------------------------------------------
# keys


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


# --------------------------------------------------------------------------------------------
# loading


def preset_names() -> list[str]:
    """Names of the bundled presets (``fastkernels/experiments/presets/*.toml``), sorted."""
    root = _preset_dir()
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def _preset_dir():
    return resources.files(_PRESET_PACKAGE).joinpath("presets")


def _preset_text(name: str) -> str:
    return _preset_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8")


def list_presets() -> list[tuple[str, str]]:
    """``(name, description)`` of every bundled preset, without validating learners."""
    out = []
    for name in preset_names():
        try:
            data = load_toml(_preset_text(name), f"preset:{name}")
            desc = str(data.get("sweep", {}).get("description", ""))
        except SpecError as exc:
            desc = f"(invalid: {exc})"
        out.append((name, " ".join(desc.split())))
    return out


def load_spec(ref: str | Path) -> SweepSpec:
    """Load a sweep from a TOML file path or a preset name.

    ``ref`` is read as a file when it names an existing path or ends in ``.toml``; otherwise it
    must be a preset name (see :func:`preset_names`).

    Raises
    ------
    SpecError
        Missing file, unknown preset, TOML syntax error or invalid content.
    """
    ref_s = str(ref)
    path = Path(ref_s)
    if path.exists() or ref_s.endswith(".toml") or "/" in ref_s:
        if not path.is_file():
            raise SpecError(f"{ref_s}: no such sweep file")
        try:
            text = path.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError) as exc:
            raise SpecError(f"{ref_s}: cannot read sweep file ({exc})") from None
        return parse_spec(text, source=ref_s)
    names = preset_names()
    if ref_s not in names:
        raise SpecError(f"{ref_s!r} is neither a preset ({', '.join(names)}) nor a .toml file")
    return parse_spec(_preset_text(ref_s), source=f"preset:{ref_s}")


def load_toml(text: str, source: str = "<string>") -> dict:
    """Parse TOML text (stdlib ``tomllib``; the ``tomli`` backport on Python 3.10).

    Raises
    ------
    SpecError
        Syntax error, as one line naming ``source``, line and column.
    """
    if tomllib is None:  # pragma: no cover - Python 3.10 without tomli
        raise SpecError("reading sweep files needs Python >= 3.11 or the 'tomli' package")
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise SpecError(f"{source}: invalid TOML: {_one_line(str(exc))}") from None


def parse_spec(text_or_data: str | dict, source: str = "<string>") -> SweepSpec:
    """Parse and validate a sweep from TOML text or an already-parsed dict.

    Parameters
    ----------
    text_or_data : str or dict
        TOML text, or the dict ``tomllib.loads`` would return.
    source : str
        Name used at the start of error messages (a path or ``preset:<name>``).

    Returns
    -------
    SweepSpec

    Raises
    ------
    SpecError
        One line naming ``source``, the table and the key, and what was expected.
    """
    data = load_toml(text_or_data, source) if isinstance(text_or_data, str) else text_or_data
    v = _Validator(source)
    if not isinstance(data, dict):
        raise v.error("", "", "expected a TOML document (a table)", data)
    v.no_unknown_keys(data, _TOP_KEYS, "top level")

    sweep = v.table(data, "sweep", required=True)
    v.no_unknown_keys(sweep, _SWEEP_KEYS, "[sweep]")
    name = v.string(sweep, "name", "[sweep]", required=True)
    if not _NAME_RE.match(name):
        raise v.error(
            "[sweep]", "name", "letters, digits, '.', '_' or '-' (it names a folder)", name
        )
    n_train = v.int_list(sweep, "n_train", "[sweep]", minimum=1, required=True)
    seeds = v.int_list(sweep, "seeds", "[sweep]", minimum=0, required=True)
    widths = v.int_list(sweep, "widths", "[sweep]", minimum=1)
    alphas = v.float_list(sweep, "alphas", "[sweep]")
    betas = v.float_list(sweep, "betas", "[sweep]")
    n_test = v.int_value(sweep, "n_test", "[sweep]", minimum=1, default=DEFAULT_N_TEST)
    description = v.string(sweep, "description", "[sweep]", default="")

    concept_tbl = v.table(data, "concept", required=True)
    concept, concept_params = _parse_concept(v, concept_tbl, alphas, betas)

    learners_raw = data.get("learners")
    if not isinstance(learners_raw, list) or not learners_raw:
        raise v.error("", "[[learners]]", "at least one [[learners]] table", learners_raw)
    learners = tuple(_parse_learner(v, i, entry) for i, entry in enumerate(learners_raw, 1))
    for i, lspec in enumerate(learners, 1):
        # A learner may run at a subset of the sweep's sizes (a network next to kernels that go
        # to 10^6 samples); anything outside the sweep's list is a typo.
        if lspec.n_train is not None and not set(lspec.n_train) <= set(n_train):
            raise v.error(
                f"[[learners]] #{i} ({lspec.label!r})",
                "n_train",
                f"a subset of [sweep] n_train {list(n_train)}",
                list(lspec.n_train),
            )
    for i, lspec in enumerate(learners, 1):
        # What the sample counts decide (a budget the solver cannot honour, more centres than
        # samples) fails here, before a store is created, not in the middle of the sweep.
        from .. import learners as learners_mod

        est = learners_mod.make_learner(lspec.type, **lspec.params)
        if hasattr(est, "check_fit_plan"):
            for n in lspec.n_train or n_train:
                try:
                    est.check_fit_plan(int(n))
                except (ValueError, TypeError) as exc:
                    raise SpecError(
                        f"{v.source}: [[learners]] #{i} ({lspec.label!r}) at n_train = {n}: "
                        f"{_one_line(str(exc))}"
                    ) from None
    seen: dict[str, int] = {}
    for i, spec in enumerate(learners, 1):
        if spec.label in seen:
            raise v.error(
                f"[[learners]] #{i}",
                "label",
                f"a unique label (#{seen[spec.label]} has it too)",
                spec.label,
            )
        seen[spec.label] = i

    c = None
    if "report" in data:
        report = v.table(data, "report")
        v.no_unknown_keys(report, _REPORT_KEYS, "[report]")
        if "c" in report:
            c = v.number(report, "c", "[report]", positive=True)

    return SweepSpec(
        name=name,
        n_train=n_train,
        seeds=seeds,
        widths=widths,
        alphas=alphas,
        betas=betas,
        n_test=n_test,
        description=description,
        concept=concept,
        concept_params=concept_params,
        learners=learners,
        c=c,
        source=source,
    )


def _parse_concept(v: _Validator, tbl: dict, alphas, betas) -> tuple[str, dict]:
    from ..concepts import CONCEPTS

    name = v.string(tbl, "name", "[concept]", required=True)
    if name not in CONCEPTS:
        raise v.error("[concept]", "name", f"one of {', '.join(sorted(CONCEPTS))}", name)
    accepted = _init_params(CONCEPTS[name])
    params = {k: val for k, val in tbl.items() if k != "name"}
    for key in params:
        if key == "seed":
            raise v.error("[concept]", "seed", "no seed here: [sweep] seeds sets it", params[key])
        if key == "alpha" and alphas is not None:
            raise v.error(
                "[concept]", "alpha", "no alpha here: [sweep] alphas sets it", params[key]
            )
        if key == "beta" and betas is not None:
            raise v.error("[concept]", "beta", "no beta here: [sweep] betas sets it", params[key])
        if key not in accepted:
            settable = [p for p in accepted if p != "seed"]
            raise v.error(
                "[concept]",
                key,
                f"a parameter of concept {name!r} ({', '.join(settable)})",
                params[key],
                unknown=True,
            )
        v.jsonable(params[key], "[concept]", key)
    for axis, values in (("alpha", alphas), ("beta", betas)):
        if values is not None and axis not in accepted:
            raise v.error("[sweep]", f"{axis}s", f"none: concept {name!r} has no {axis}", values)
    # Build each (alpha, beta) variant once so that bad values (k < 4, d too small, ...) are
    # reported now rather than halfway through a sweep.
    for alpha, beta in itertools.product(alphas or (None,), betas or (None,)):
        try:
            _concept_config(name, params, alpha, beta, seed=0)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{v.source}: [concept]: {_one_line(str(exc))}") from None
    return name, params


def _parse_learner(v: _Validator, i: int, entry) -> LearnerSpec:
    from .. import learners as learners_mod

    where = f"[[learners]] #{i}"
    if not isinstance(entry, dict):
        raise v.error("", where, "a table", entry)
    label = v.string(entry, "label", where, required=True)
    if not label.strip():
        raise v.error(where, "label", "a non-empty label", label)
    where = f"[[learners]] #{i} ({label!r})"
    type_name = v.string(entry, "type", where, required=True)
    if type_name not in learners_mod.LEARNERS:
        raise v.error(
            where, "type", f"one of {', '.join(sorted(learners_mod.LEARNERS))}", type_name
        )
    try:
        accepted = learners_mod.learner_params(type_name)
    except ImportError as exc:
        # The registry names a module that is not importable (not written yet, or a missing
        # optional dependency): report it as a spec problem so nothing runs.
        raise SpecError(
            f"{v.source}: {where}: learner type {type_name!r} cannot be imported "
            f"({type(exc).__name__}: {_one_line(str(exc))})"
        ) from None
    own_n = v.int_list(entry, "n_train", where, minimum=1)
    params = {k: val for k, val in entry.items() if k not in ("label", "type", "n_train")}
    for key, val in params.items():
        if key in RUNNER_SET_PARAMS:
            hint = "[sweep] widths sets it" if key == "width" else "the runner sets it"
            raise v.error(where, key, f"no {key} here: {hint}", val)
        if key not in accepted:
            settable = [p for p in accepted if p not in RUNNER_SET_PARAMS]
            raise v.error(
                where,
                key,
                f"a parameter of learner type {type_name!r} ({', '.join(settable)})",
                val,
                unknown=True,
            )
        v.jsonable(val, where, key)
    # Build the estimator once and let it check its own parameter values, so that a bad value
    # (lr <= 0, an unknown arch, ...) is reported now rather than halfway through a sweep.
    try:
        est = learners_mod.make_learner(type_name, **params)
        if hasattr(est, "check_params"):
            est.check_params()
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{v.source}: {where}: {_one_line(str(exc))}") from None
    return LearnerSpec(
        label=label,
        type=type_name,
        params=params,
        takes_width="width" in accepted,
        takes_random_state="random_state" in accepted,
        takes_device="device" in accepted,
        n_train=own_n,
    )


def _init_params(cls) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def _concept_config(name: str, params: dict, alpha, beta, seed: int) -> tuple[dict, float, float]:
    """The concept's config for one alpha/beta/seed, and its effective alpha and beta.

    The config's ``params`` are ``concept.params()``: every constructor argument, defaults
    included, so that the runner can rebuild the concept from them and the trial key changes if
    a default ever changes (a different target is a different trial).
    """
    from ..concepts import make_concept

    kwargs = dict(params)
    if alpha is not None:
        kwargs["alpha"] = alpha
    if beta is not None:
        kwargs["beta"] = beta
    concept = make_concept(name, **kwargs, seed=seed)
    full = dict(concept.params())
    full["seed"] = seed
    return {"name": name, "params": full}, float(concept.alpha), float(concept.beta)


# --------------------------------------------------------------------------------------------
# expansion


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
    from .. import learners as learners_mod

    est = learners_mod.make_learner(type_name, **params)
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
    return {k: _plain(v) for k, v in sorted(full.items()) if k not in skip}


def _plain(value):
    """JSON form of a resolved parameter value (see :func:`resolved_params`)."""
    import torch

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
        (a, b): _concept_config(spec.concept, spec.concept_params, a, b, seed=0)
        for a, b in itertools.product(spec.alphas or (None,), spec.betas or (None,))
    }
    trials: list[Trial] = []
    for lspec in spec.learners:
        widths = spec.widths if (lspec.takes_width and spec.widths) else (None,)
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


# --------------------------------------------------------------------------------------------
# validation helpers


def _one_line(s: str) -> str:
    return " ".join(s.split())


def _show(value) -> str:
    s = _one_line(repr(value))
    return s if len(s) <= 60 else s[:57] + "..."


class _Validator:
    """Typed accessors that raise one-line :class:`SpecError` naming source, table and key."""

    def __init__(self, source: str):
        self.source = source

    def error(self, table: str, key: str, expected: str, got, unknown: bool = False) -> SpecError:
        if unknown:
            return SpecError(f"{self.source}: {table}: unknown key {key!r}; expected {expected}")
        where = " ".join(p for p in (table, key) if p)
        return SpecError(f"{self.source}: {where}: expected {expected}, got {_show(got)}")

    def no_unknown_keys(self, tbl: dict, allowed, table: str) -> None:
        for key in tbl:
            if key not in allowed:
                raise SpecError(
                    f"{self.source}: {table}: unknown key {key!r}; expected one of "
                    f"{', '.join(allowed)}"
                )

    def table(self, data: dict, key: str, required: bool = False) -> dict:
        if key not in data:
            if required:
                raise SpecError(f"{self.source}: missing required table [{key}]")
            return {}
        val = data[key]
        if not isinstance(val, dict):
            raise self.error("", f"[{key}]", "a table", val)
        return val

    def _missing(self, table: str, key: str) -> SpecError:
        return SpecError(f"{self.source}: {table}: missing required key {key!r}")

    def string(self, tbl, key, table, required=False, default=None) -> str:
        if key not in tbl:
            if required:
                raise self._missing(table, key)
            return default
        val = tbl[key]
        if not isinstance(val, str) or (required and not val):
            raise self.error(table, key, "a non-empty string" if required else "a string", val)
        return val

    def int_value(self, tbl, key, table, minimum, default=None) -> int:
        if key not in tbl:
            return default
        val = tbl[key]
        if not _is_int(val) or val < minimum:
            raise self.error(table, key, _int_desc(minimum, plural=False), val)
        return int(val)

    def int_list(self, tbl, key, table, minimum, required=False):
        if key not in tbl:
            if required:
                raise self._missing(table, key)
            return None
        val = tbl[key]
        want = f"a non-empty list of {_int_desc(minimum, plural=True)}"
        if (
            not isinstance(val, list)
            or not val
            or not all(_is_int(x) and x >= minimum for x in val)
        ):
            raise self.error(table, key, want, val)
        if len(set(val)) != len(val):
            raise self.error(table, key, f"{want} without duplicates", val)
        return tuple(int(x) for x in val)

    def float_list(self, tbl, key, table):
        if key not in tbl:
            return None
        val = tbl[key]
        want = "a non-empty list of finite numbers >= 0"
        if not isinstance(val, list) or not val or not all(_is_real(x) and x >= 0 for x in val):
            raise self.error(table, key, want, val)
        out = tuple(float(x) for x in val)
        if len(set(out)) != len(out):
            raise self.error(table, key, f"{want} without duplicates", val)
        return out

    def number(self, tbl, key, table, positive=False) -> float:
        val = tbl[key]
        if not _is_real(val) or (positive and val <= 0):
            raise self.error(table, key, "a finite number > 0" if positive else "a number", val)
        return float(val)

    def jsonable(self, val, table, key) -> None:
        """Parameters end up in the trial config, so they must be plain JSON values."""
        if not _is_jsonable(val):
            raise self.error(
                table, key, "a string, number, boolean, or a list/inline table of those", val
            )


def _is_int(x) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def _is_real(x) -> bool:
    return (isinstance(x, (int, float)) and not isinstance(x, bool)) and math.isfinite(x)


def _int_desc(minimum: int, plural: bool) -> str:
    s = "s" if plural else ""
    if minimum == 1:
        return f"positive integer{s}"
    if minimum == 0:
        return f"non-negative integer{s}"
    return f"integer{s} >= {minimum}"


def _is_jsonable(x) -> bool:
    if isinstance(x, (str, bool, int)):
        return True
    if isinstance(x, float):
        return math.isfinite(x)
    if isinstance(x, list):
        return all(_is_jsonable(e) for e in x)
    if isinstance(x, dict):
        return all(isinstance(k, str) and _is_jsonable(e) for k, e in x.items())
    return False
