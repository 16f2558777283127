"""The region sources of :class:`~sgcl_plugin.saliency.SaliencyGenerator`, in one table.

Each row says what a mode gives and which feature maps a refresh reads for it by default. The
generator checks its ``regions`` against the table; the trainer's and the viewer's ``--regions``
choices and help, the solo-learn config check and :func:`~sgcl_plugin.features.refresh_features`
read it too. Adding a mode is a row here and its branch in ``SaliencyGenerator.__call__``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, Tuple

__all__ = [
    "DEFAULT_REGION_SOURCE",
    "REGION_MODES",
    "REGION_SOURCES",
    "RegionSource",
    "check_region_source",
    "reads_pair",
    "region_help",
]


@dataclass(frozen=True)
class RegionSource:
    """One region mode.

    Attributes:
        name: The value of ``SaliencyGenerator(regions=...)`` and of the CLIs' ``--regions``.
        summary: What its regions are, in a few words (the CLIs' help).
        reads_pair: By default a refresh reads a pair of maps ``(fine, coarse)`` for it (the last map
            and the stage at half its stride: :func:`~sgcl_plugin.features.hierarchy_strides`); else
            the last map.
    """

    name: str
    summary: str
    reads_pair: bool = False


REGION_SOURCES: Dict[str, RegionSource] = {
    source.name: source
    for source in (
        RegionSource("paper", "Eq. 4-5 exactly: components of the Ncut mask at its mean"),
        RegionSource("objects", "the parts of a k-way Ncut, scored by objectness"),
        RegionSource("hierarchy", "whole objects: k-way Ncut parts merged bottom-up and scored", reads_pair=True),
    )
}
"""Every region mode, by name (the paper's first)."""

REGION_MODES: Tuple[str, ...] = tuple(REGION_SOURCES)
"""The names of :data:`REGION_SOURCES`."""

DEFAULT_REGION_SOURCE = "hierarchy"
"""The mode of ``SaliencyGenerator()`` and of every adapter and CLI (measured in docs/RESULTS.md)."""


def check_region_source(name: object) -> RegionSource:
    """The row of mode ``name``.

    Raises:
        ValueError: An unknown name (the message lists the known ones).
    """
    if not isinstance(name, str) or name not in REGION_SOURCES:
        raise ValueError(f"Unknown regions mode {name!r}; choose one of {REGION_MODES}.")
    return REGION_SOURCES[name]


def reads_pair(name: str) -> bool:
    """Whether a refresh reads a pair of maps by default for source ``name``; False for a name outside the table
    (the trainer's heat map and true boxes)."""
    return name in REGION_SOURCES and REGION_SOURCES[name].reads_pair


def region_help() -> str:
    """One phrase per mode, ``"'hierarchy' (whole objects: ...), ..."``, the default first."""
    names = [DEFAULT_REGION_SOURCE] + [n for n in REGION_MODES if n != DEFAULT_REGION_SOURCE]
    return ", ".join(f"'{n}' ({REGION_SOURCES[n].summary})" for n in names)
