"""The one type checker for option values: Detector options (:mod:`flowkit.config`), a
component's options against its factory's annotations (:mod:`flowkit.registry`) and a suite's
fields (:mod:`flowkit.bench.suite`) all go through :func:`check_type` and name what they expect
with :func:`describe`.

Example:
    >>> check_type(3, float)
    (True, 3.0)
    >>> check_type(True, int)
    (False, True)
    >>> describe(list[int])
    'a list of integers, e.g. [1, 2]'
"""

from __future__ import annotations

import types
import typing
from typing import Any

__all__ = ["check_type", "describe", "is_integer", "is_number"]

_NAMES: dict[Any, str] = {
    int: "an integer",
    float: "a number",
    bool: "true or false",
    str: "a string",
}


def is_integer(value: Any) -> bool:
    """A Python or numpy integer, not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, int) or (
        type(value).__module__ == "numpy" and "int" in type(value).__name__
    )


def is_number(value: Any) -> bool:
    """A Python or numpy real number, not a bool."""
    if isinstance(value, bool):
        return False
    return isinstance(value, (int, float)) or (
        type(value).__module__ == "numpy"
        and any(kind in type(value).__name__ for kind in ("int", "float"))
    )


def _union_members(hint: Any) -> list[Any] | None:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return None


def check_type(value: Any, hint: Any, *, text_from_numbers: bool = False) -> tuple[bool, Any]:
    """``(ok, value)``: ``value`` checked against a type ``hint`` (``int``, ``float``,
    ``bool``, ``str``, ``list[...]``, ``X | None``), with the lossless conversions applied
    (an integer where a number is expected becomes a float). ``text_from_numbers``: a number
    where text is expected is taken as its text (a ``NAME:key=7`` spec cannot tell ``7`` the
    name from ``7`` the number). Any other hint accepts the value as it is."""
    members = _union_members(hint)
    if members is not None:
        if value is None:
            return True, None
        for member in members:
            ok, out = check_type(value, member, text_from_numbers=text_from_numbers)
            if ok:
                return True, out
        return False, value
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        if not isinstance(value, list):
            return False, value
        checked = [check_type(v, item, text_from_numbers=text_from_numbers) for v in value]
        return all(ok for ok, _ in checked), [v for _, v in checked]
    if hint is bool:
        return isinstance(value, bool), value
    if hint is int:
        return is_integer(value), value
    if hint is float:
        ok = is_number(value)
        return ok, float(value) if ok else value
    if hint is str:
        if text_from_numbers and is_number(value):
            return True, str(value)
        return isinstance(value, str), value
    return True, value


def describe(hint: Any) -> str:
    """What ``hint`` expects, in words: ``an integer``, ``a list of strings, e.g. ['a', 'b']``."""
    members = _union_members(hint)
    if members is not None:
        return " or ".join(describe(m) for m in members)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (Any,)
        example = [1, 2] if item is int else ["a", "b"]
        noun = {int: "integers", float: "numbers", str: "strings", bool: "booleans"}.get(item)
        return f"a list of {noun or 'values'}, e.g. {example}"
    return _NAMES.get(hint, getattr(hint, "__name__", str(hint)))
