"""Full precision for the saliency stage, whatever autocast the caller runs under.

Inside ``torch.autocast`` (a ``bf16-mixed`` / ``16-mixed`` Lightning step, solo-learn's configs, a
user's ``with torch.autocast(...)``) matrix products return half precision: the affinity matrix comes
out in bfloat16 (maps drift by ~1e-3), the Krylov solver mixes dtypes and fails, and ``torch.linalg.qr``
has no bfloat16 CUDA kernel. Every public entry point of the saliency stage runs in float32 (or the
float64 it was given) with autocast switched off for its own work.
"""

from __future__ import annotations

import contextlib
import functools
from typing import Any, Callable, Iterator, TypeVar

import torch

__all__ = ["autocast_off", "full_precision"]

F = TypeVar("F", bound=Callable[..., Any])


@contextlib.contextmanager
def autocast_off() -> Iterator[None]:
    """Switches autocast off on the CPU and, where present, CUDA for the body (a no-op outside autocast)."""
    with contextlib.ExitStack() as stack:
        if torch.is_autocast_enabled("cpu"):
            stack.enter_context(torch.autocast("cpu", enabled=False))
        if torch.cuda.is_available() and torch.is_autocast_enabled("cuda"):
            stack.enter_context(torch.autocast("cuda", enabled=False))
        yield


def full_precision(fn: F) -> F:
    """Decorator: runs ``fn`` under :func:`autocast_off`."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with autocast_off():
            return fn(*args, **kwargs)

    return wrapper  # type: ignore[return-value]
