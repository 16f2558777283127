"""Argument checks shared by the public entry points: one function, and one message, per invariant.

A leaf of the package's import graph (torch and the standard library only): every module may use it.
"""

from __future__ import annotations

import math
import numbers
from typing import Any, NoReturn, Optional, Sequence, Tuple

import torch
from torch import Tensor

__all__ = [
    "WrongTypeError",
    "check_feature_map",
    "check_feature_shape",
    "check_index",
    "check_int",
    "check_interval",
    "check_not_meta",
    "check_number",
    "check_range",
    "refuse_non_finite",
]


class WrongTypeError(TypeError, ValueError):
    """An argument of the wrong type (a float or a bool for an integer, a string for a number).

    A :class:`TypeError`, and a :class:`ValueError` too: the checks raised ``ValueError`` for every bad value
    before, and callers that catch it keep working (numpy's ``AxisError`` is both kinds for the same reason).
    """


def check_int(name: str, value: Any, minimum: Optional[int] = None) -> int:
    """``value`` as an ``int`` when it is an integer (Python or numpy; not a bool, not a float) of at least
    ``minimum``.

    Raises:
        WrongTypeError: not an integer; ValueError: below ``minimum``. Both say
            ``"<name> must be an integer >= <minimum>, got <value>."`` (or ``"an integer"``).

    Examples:
        >>> check_int("batch_size", 8, 1)
        8
    """
    integer = isinstance(value, numbers.Integral) and not isinstance(value, bool)
    if not integer or (minimum is not None and value < minimum):
        need = "an integer" if minimum is None else f"an integer >= {minimum}"
        error = ValueError if integer else WrongTypeError
        raise error(f"{name} must be {need}, got {value!r}.")
    return int(value)


def check_index(what: str, index: Any, size: int) -> int:
    """``index`` (an integer; negative ones count from the end) as a position in ``range(size)`` of a
    sequence of ``size`` items.

    Raises:
        WrongTypeError: ``"<what> index must be an integer, got <index>."``
        IndexError: ``"Index <index> is outside the <what> of <size> items."``
    """
    i = check_int(f"{what} index", index)
    if not -size <= i < size:
        raise IndexError(f"Index {i} is outside the {what} of {size} items.")
    return i % size


def _is_real(value: Any) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def check_number(name: str, value: Any, minimum: Optional[float] = None, strict: bool = False) -> float:
    """``value`` as a ``float`` when it is a finite real number (Python or numpy; not a bool) of at least
    ``minimum`` (above it with ``strict``).

    Raises:
        WrongTypeError: not a real number; ValueError: NaN, infinite or below ``minimum``. Both say
            ``"<name> must be a finite number [>= | >] <minimum>, got <value>."``

    Examples:
        >>> check_number("temperature", 0.1, 0, strict=True)
        0.1
    """
    bound = "" if minimum is None else f" {'>' if strict else '>='} {minimum:g}"
    ok = _is_real(value) and math.isfinite(value)
    if ok and minimum is not None:
        ok = value > minimum if strict else value >= minimum
    if not ok:
        error = ValueError if _is_real(value) else WrongTypeError
        raise error(f"{name} must be a finite number{bound}, got {value!r}.")
    return float(value)


def check_interval(
    name: str, value: Any, low: float = 0.0, high: float = 1.0, low_open: bool = False, high_open: bool = False
) -> float:
    """``value`` as a ``float`` when it is a real number (Python or numpy; not a bool, not NaN) in the interval
    from ``low`` to ``high`` (each end included unless it is open).

    Raises:
        WrongTypeError: not a real number; ValueError: NaN or outside the interval. Both say
            ``"<name> must be a number in [<low>, <high>), got <value>."`` (brackets as the ends are).

    Examples:
        >>> check_interval("alpha", 0.5)
        0.5
        >>> check_interval("min_fraction", 0.0, 0, 1, high_open=True)
        0.0
    """
    ok = _is_real(value) and not math.isnan(value)
    if ok:
        ok = (low < value if low_open else low <= value) and (value < high if high_open else value <= high)
    if not ok:
        interval = f"{'(' if low_open else '['}{low:g}, {high:g}{')' if high_open else ']'}"
        error = ValueError if _is_real(value) else WrongTypeError
        raise error(f"{name} must be a number in {interval}, got {value!r}.")
    return float(value)


def check_range(name: str, value: Sequence[float], high: Optional[float] = None) -> Tuple[float, float]:
    """``value`` as a pair of floats ``(low, high)`` when both are finite and ``0 < low <= high`` (and
    ``high`` at most the bound ``high`` when given).

    Raises:
        ValueError: ``"<name> must be a pair (low, high), got <value>."`` (not two numbers) or
            ``"<name> must satisfy 0 < low <= high [<= <bound>], got <value>."``

    Examples:
        >>> check_range("scale", (0.08, 1))
        (0.08, 1.0)
    """
    try:
        lo, hi = (float(v) for v in value)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be a pair (low, high), got {value!r}.") from err
    if not (math.isfinite(lo) and math.isfinite(hi)) or lo <= 0 or hi < lo or (high is not None and hi > high):
        bound = "" if high is None else f" <= {high:g}"
        raise ValueError(f"{name} must satisfy 0 < low <= high{bound}, got {value!r}.")
    return lo, hi


def check_not_meta(x: Any, name: str) -> None:
    """Raises a clear error for a ``meta`` tensor (shape only, no values), before a check needs its values.

    Raises:
        ValueError: ``x`` is a tensor on the ``meta`` device.
    """
    if isinstance(x, Tensor) and x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape only, no values): pass real data.")


def check_feature_shape(features: Any) -> Tensor:
    """``features`` when it is a tensor of shape (B, C, h, w) with at least 2 cells (``h * w >= 2``): the
    shape a saliency cut needs. Its values are not read (a meta tensor passes).

    Raises:
        TypeError: not a tensor.
        ValueError: not 4-D (3-D tokens are pointed to ``tokens_to_map``), or fewer than 2 cells.
    """
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}.")
    if features.ndim != 4:
        hint = (
            " For ViT tokens of shape (B, h*w, C), use sgcl_plugin.tokens_to_map(tokens, h, w)."
            if features.ndim == 3
            else ""
        )
        raise ValueError(
            f"features must have shape (B, C, h, w), got {features.ndim} dims {tuple(features.shape)}.{hint}"
        )
    h, w = features.shape[-2:]
    if h * w < 2:
        raise ValueError(
            f"The feature map has a {h}x{w} grid: a cut needs at least 2 cells. The image is "
            "smaller than (or equal to) the backbone's stride; use a larger saliency_size."
        )
    return features


def check_feature_map(features: Tensor, values: bool = True) -> None:
    """Raises a clear error unless ``features`` is a finite (B, C, h, w) floating point map with at least
    2 cells (:func:`check_feature_shape`), real data (not meta) and a non-empty batch and channel axis.

    ``values=False`` checks everything but finiteness (for a caller that finds NaN/Inf on its own
    pass over the values: :func:`sgcl_plugin.affinity.unit_features`, then :func:`refuse_non_finite`).

    Raises:
        TypeError: not a tensor, or not floating point.
        ValueError: a bad shape, a meta tensor, an empty axis, NaN or Inf values.
    """
    check_feature_shape(features)
    if features.device.type == "meta":
        raise ValueError("features is a meta tensor (shape only, no values): run the backbone on real data.")
    B, C = features.shape[:2]
    if B == 0 or C == 0:
        raise ValueError(f"features must have a non-empty batch and channel axis, got {tuple(features.shape)}.")
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating point tensor, got {features.dtype}.")
    # One cheap reduction first (NaN and Inf propagate through a float64 sum); the element-wise
    # check only runs to name the culprits.
    if values and not torch.isfinite(features.sum(dim=(1, 2, 3), dtype=torch.float64)).all():
        refuse_non_finite(features)


def refuse_non_finite(features: Tensor) -> NoReturn:
    """Raises the error for a feature map with NaN or Inf values, naming the images of the batch that hold them.

    Raises:
        ValueError: always.
    """
    bad = ~torch.isfinite(features).flatten(1).all(dim=1)
    raise ValueError(
        f"features contain NaN or Inf values (images {bad.nonzero().flatten().tolist()} of the "
        "batch); check the backbone (diverged training? fp16 overflow?)."
    )
