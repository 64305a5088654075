"""Sweep specifications: a TOML file (or a named preset) read and validated into a SweepSpec.

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
    n_train = [1000]            # optional: run this learner at a subset of the sweep's sizes
    widths = [1024]             # optional: ... and of its widths

    [report]
    c = 4.0                     # optional: sample-complexity threshold c * alpha^2

Everything is checked while parsing, before any trial runs: a problem raises :class:`SpecError`
with one line naming the file, the table, the key and what was expected (the typed checks are in
:mod:`._validate`, the bundled presets in :mod:`.presets`). :func:`.trials.expand` turns a
:class:`SweepSpec` into its trials.
"""

from __future__ import annotations

import inspect
import itertools
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..concepts import CONCEPTS, make_concept
from ..learners import LEARNERS, learner_params, make_learner
from ._validate import SpecError, Validator, load_toml, one_line
from .presets import preset_names, preset_text

__all__ = [
    "LearnerSpec",
    "SweepSpec",
    "Trial",
    "load_spec",
    "parse_spec",
    "RUNNER_SET_PARAMS",
]

DEFAULT_N_TEST = 10_000
# Learner parameters the runner fills in per trial; a sweep file may not set them.
RUNNER_SET_PARAMS = ("width", "random_state", "device")

_TOP_KEYS = ("sweep", "concept", "learners", "report")
_SWEEP_KEYS = ("name", "n_train", "seeds", "widths", "alphas", "betas", "n_test", "description")
_REPORT_KEYS = ("c",)
# Sweep names become folder names (fastkernels-results/<name>/), so keep them path-safe.
_NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


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
    widths : tuple of int or None
        The widths this learner runs at (a subset of the sweep's); None: all of them.
    """

    label: str
    type: str
    params: dict = field(default_factory=dict)
    takes_width: bool = False
    takes_random_state: bool = False
    takes_device: bool = False
    n_train: tuple[int, ...] | None = None
    widths: tuple[int, ...] | None = None


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
                    **({"widths": list(s.widths)} if s.widths is not None else {}),
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
        (:func:`fastkernels.experiments.trials.resolved_params`): every constructor parameter,
        defaults included, except the ones the runner sets per trial and those that cannot
        change a result.
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


def load_spec(ref: str | Path) -> SweepSpec:
    """Load a sweep from a TOML file path or a preset name.

    ``ref`` is read as a file when it names an existing path or ends in ``.toml``; otherwise it
    must be a preset name (see :func:`fastkernels.experiments.presets.preset_names`).

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
    return parse_spec(preset_text(ref_s), source=f"preset:{ref_s}")


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
    v = Validator(source)
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
        # Likewise widths: an expensive width for one learner of an ablation, not for all.
        if lspec.widths is not None and not (
            lspec.takes_width and widths is not None and set(lspec.widths) <= set(widths)
        ):
            raise v.error(
                f"[[learners]] #{i} ({lspec.label!r})",
                "widths",
                f"a subset of [sweep] widths {list(widths or [])} (for a learner with a width)",
                list(lspec.widths),
            )
    for i, lspec in enumerate(learners, 1):
        # What the sample counts decide (a budget the solver cannot honour, more centres than
        # samples) fails here, before a store is created, not in the middle of the sweep.
        est = make_learner(lspec.type, **lspec.params)
        if hasattr(est, "check_fit_plan"):
            for n in lspec.n_train or n_train:
                try:
                    est.check_fit_plan(int(n))
                except (ValueError, TypeError) as exc:
                    raise SpecError(
                        f"{v.source}: [[learners]] #{i} ({lspec.label!r}) at n_train = {n}: "
                        f"{one_line(str(exc))}"
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


def _parse_concept(v: Validator, tbl: dict, alphas, betas) -> tuple[str, dict]:
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
            concept_config(name, params, alpha, beta, seed=0)
        except (ValueError, TypeError) as exc:
            raise SpecError(f"{v.source}: [concept]: {one_line(str(exc))}") from None
    return name, params


def _parse_learner(v: Validator, i: int, entry) -> LearnerSpec:
    where = f"[[learners]] #{i}"
    if not isinstance(entry, dict):
        raise v.error("", where, "a table", entry)
    label = v.string(entry, "label", where, required=True)
    if not label.strip():
        raise v.error(where, "label", "a non-empty label", label)
    where = f"[[learners]] #{i} ({label!r})"
    type_name = v.string(entry, "type", where, required=True)
    if type_name not in LEARNERS:
        raise v.error(where, "type", f"one of {', '.join(sorted(LEARNERS))}", type_name)
    accepted = learner_params(type_name)
    own_n = v.int_list(entry, "n_train", where, minimum=1)
    own_widths = v.int_list(entry, "widths", where, minimum=1)
    params = {
        k: val for k, val in entry.items() if k not in ("label", "type", "n_train", "widths")
    }
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
        est = make_learner(type_name, **params)
        if hasattr(est, "check_params"):
            est.check_params()
    except (ValueError, TypeError) as exc:
        raise SpecError(f"{v.source}: {where}: {one_line(str(exc))}") from None
    return LearnerSpec(
        label=label,
        type=type_name,
        params=params,
        takes_width="width" in accepted,
        takes_random_state="random_state" in accepted,
        takes_device="device" in accepted,
        n_train=own_n,
        widths=own_widths,
    )


def _init_params(cls) -> list[str]:
    return [p for p in inspect.signature(cls.__init__).parameters if p != "self"]


def concept_config(name: str, params: dict, alpha, beta, seed: int) -> tuple[dict, float, float]:
    """The concept's config for one alpha/beta/seed, and its effective alpha and beta.

    The config's ``params`` are ``concept.params()``: every constructor argument, defaults
    included, so that the runner can rebuild the concept from them and the trial key changes if
    a default ever changes (a different target is a different trial).

    Parameters
    ----------
    name : str
        Concept registry name.
    params : dict
        Concept parameters from the sweep file.
    alpha, beta : float or None
        Values set by the sweep's ``alphas``/``betas``; ``None`` keeps ``params``'s (or the
        default).
    seed : int
        The concept's seed.

    Returns
    -------
    config : dict
        ``{"name": name, "params": {...}}``, JSON-able.
    alpha, beta : float
        The concept's effective alpha and beta.

    Raises
    ------
    ValueError, TypeError
        The concept rejects its parameters.
    """
    kwargs = dict(params)
    if alpha is not None:
        kwargs["alpha"] = alpha
    if beta is not None:
        kwargs["beta"] = beta
    concept = make_concept(name, **kwargs, seed=seed)
    full = dict(concept.params())
    full["seed"] = seed
    return {"name": name, "params": full}, float(concept.alpha), float(concept.beta)
