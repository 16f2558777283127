"""Argument checks shared by the public entry points: one message per invariant."""

from __future__ import annotations

from typing import Any

from torch import Tensor

__all__ = ["check_not_meta"]


def check_not_meta(x: Any, name: str) -> None:
    """Raises a clear error for a ``meta`` tensor (shape only, no values), before a check needs its values.

    Raises:
        ValueError: ``x`` is a tensor on the ``meta`` device.
    """
    if isinstance(x, Tensor) and x.device.type == "meta":
        raise ValueError(f"{name} is a meta tensor (shape only, no values): pass real data.")
