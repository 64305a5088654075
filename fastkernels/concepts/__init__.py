"""Target generators: the paper's hierarchical concepts (PAPER.md section 1)."""

from .all19 import ALL19Target
from .base import Concept
from .hard import HardInstance
from .parity import ParityConcept
from .smooth import SmoothConcept

CONCEPTS: dict[str, type[Concept]] = {
    ParityConcept.name: ParityConcept,
    SmoothConcept.name: SmoothConcept,
    HardInstance.name: HardInstance,
    ALL19Target.name: ALL19Target,
}


def make_concept(name: str, **params) -> Concept:
    """Build a concept by registry name (``"parity"``, ``"smooth"``, ``"hard"``, ``"all19"``)
    with constructor ``params``.

    Raises
    ------
    ValueError
        Unknown name or unknown parameter, naming the accepted ones.
    """
    import inspect

    if name not in CONCEPTS:
        raise ValueError(f"unknown concept {name!r}; expected one of {sorted(CONCEPTS)}")
    cls = CONCEPTS[name]
    accepted = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(params) - set(accepted))
    if unknown:
        raise ValueError(f"concept {name!r}: unknown parameter(s) {unknown}; accepted: {accepted}")
    return cls(**params)


__all__ = [
    "Concept",
    "ParityConcept",
    "SmoothConcept",
    "HardInstance",
    "ALL19Target",
    "CONCEPTS",
    "make_concept",
]
