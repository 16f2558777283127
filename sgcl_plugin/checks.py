"""Argument checks shared by the public entry points: one function, and one message, per invariant."""

from __future__ import annotations

import math
import numbers
from typing import Any, Optional, Sequence, Tuple

from torch import Tensor

__all__ = ["check_int", "check_not_meta", "check_number", "check_range"]


def check_int(name: str, value: Any, minimum: Optional[int] = None) -> int:
    """``value`` as an ``int`` when it is an integer (Python or numpy; not a bool, not a float) of at least
    ``minimum``.

    Raises:
        ValueError: ``"<name> must be an integer >= <minimum>, got <value>."`` (or ``"an integer"``).

    Examples:
        >>> check_int("batch_size", 8, 1)
        8
    """
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or (minimum is not None and value < minimum):
        need = "an integer" if minimum is None else f"an integer >= {minimum}"
        raise ValueError(f"{name} must be {need}, got {value!r}.")
    return int(value)


def check_number(name: str, value: Any, minimum: Optional[float] = None, strict: bool = False) -> float:
    """``value`` as a ``float`` when it is a finite real number (Python or numpy; not a bool) of at least
    ``minimum`` (above it with ``strict``).

    Raises:
        ValueError: ``"<name> must be a finite number [>= | >] <minimum>, got <value>."``
    """
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
    ok = isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        raise ValueError(f"{name} must be a finite number{bound}, got {value!r}.")
    return float(value)


def check_range(name: str, value: Sequence[float]) -> Tuple[float, float]:
    """``value`` as a pair of floats ``(low, high)`` when both are finite and ``0 < low <= high``.

    Raises:
        ValueError: ``"<name> must be a pair (low, high), got <value>."`` (not two numbers) or
            ``"<name> must satisfy 0 < low <= high, got <value>."``

    Examples:
        >>> check_range("scale", (0.08, 1))
        (0.08, 1.0)
    """
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}.") from err
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi < lo:
        raise ValueError(f"{name} must satisfy 0 < low <= high, got {value!r}.")
    return lo, hi


def check_not_meta(x: Any, name: str) -> None:
    """Raises a clear error for a ``meta`` tensor (shape only, no values), before a check needs its values.

    Raises:
        ValueError: ``x`` is a tensor on the ``meta`` device.
    """
    if isinstance(x, Tensor) and x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape only, no values): pass real data.")
