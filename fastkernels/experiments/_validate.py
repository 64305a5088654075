"""Reading and checking raw sweep data: TOML syntax, then typed access to each table's keys.

Every problem is a :class:`SpecError` whose message is one line naming the source (a path or
``preset:<name>``), the table, the key and what was expected. :mod:`.spec` builds a sweep with
these checks; :mod:`.presets` reads the presets' descriptions with :func:`load_toml`.
"""

from __future__ import annotations

import math

try:  # Python >= 3.11
    import tomllib
except ModuleNotFoundError:  # pragma: no cover - Python 3.10 needs the tomli backport
    try:
        import tomli as tomllib
    except ModuleNotFoundError:
        tomllib = None

__all__ = ["SpecError", "load_toml", "Validator", "one_line"]


class SpecError(ValueError):
    """A sweep file or preset is invalid; the message is one line naming the key at fault."""


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
        raise SpecError(f"{source}: invalid TOML: {one_line(str(exc))}") from None


def one_line(s: str) -> str:
    """``s`` with every run of whitespace (newlines included) collapsed to one space."""
    return " ".join(s.split())


def _show(value) -> str:
    s = one_line(repr(value))
    return s if len(s) <= 60 else s[:57] + "..."


class Validator:
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
