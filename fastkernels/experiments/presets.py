"""The bundled presets: sweep files shipped as package data (``presets/*.toml``).

:func:`fastkernels.experiments.spec.load_spec` loads one by name; :func:`list_presets` shows
what each is for without validating it.
"""

from __future__ import annotations

from importlib import resources

from ._validate import SpecError, load_toml

__all__ = ["preset_names", "list_presets", "preset_text"]

# Presets are package data of fastkernels.experiments (pyproject: presets/*.toml), not a package.
_PRESET_PACKAGE = "fastkernels.experiments"


def preset_names() -> list[str]:
    """Names of the bundled presets (``fastkernels/experiments/presets/*.toml``), sorted."""
    root = _preset_dir()
    if not root.is_dir():
        return []
    return sorted(p.name[: -len(".toml")] for p in root.iterdir() if p.name.endswith(".toml"))


def _preset_dir():
    return resources.files(_PRESET_PACKAGE).joinpath("presets")


def preset_text(name: str) -> str:
    """The TOML text of preset ``name`` (one of :func:`preset_names`)."""
    return _preset_dir().joinpath(f"{name}.toml").read_text(encoding="utf-8")


def list_presets() -> list[tuple[str, str]]:
    """``(name, description)`` of every bundled preset, without validating learners."""
    out = []
    for name in preset_names():
        try:
            data = load_toml(preset_text(name), f"preset:{name}")
            desc = str(data.get("sweep", {}).get("description", ""))
        except SpecError as exc:
            desc = f"(invalid: {exc})"
        out.append((name, " ".join(desc.split())))
    return out
