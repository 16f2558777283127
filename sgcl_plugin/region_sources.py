"""The region sources of :class:`~sgcl_plugin.saliency.SaliencyGenerator`, in one table.

A *region source* (or *mode*: the value of ``SaliencyGenerator(regions=...)``) turns a batch of feature maps into
saliency maps and scored boxes. Each row of :data:`REGION_SOURCES` names the function that does it, the class of
its own options, what it gives (the CLIs' help) and which feature maps a refresh reads for it by default. The
generator checks its mode against the table, builds the mode's options and calls the mode's function; the trainer's
and the viewer's ``--regions`` choices and help, the solo-learn config check and
:func:`~sgcl_plugin.features.refresh_features` read the table too.

Adding a mode touches two files: a module with its function ``(cut, options, fine, coarse) -> SaliencyResult``
(and, if it has options, a frozen :class:`~sgcl_plugin.spectral.SourceOptions` dataclass), and a row here. The
functions and options classes are named by ``"module:attribute"`` strings, imported on first use, so this module
imports nothing heavy (the CLIs read it to build their parsers) and no mode module needs the generator.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass
from functools import cache
from typing import TYPE_CHECKING, Any, Callable, Dict, Optional, Tuple, Union

if TYPE_CHECKING:
    from torch import Tensor

    from sgcl_plugin.regions import SaliencyResult
    from sgcl_plugin.spectral import CutOptions

__all__ = [
    "DEFAULT_REGION_SOURCE",
    "REGION_MODES",
    "REGION_SOURCES",
    "RegionFunction",
    "RegionSource",
    "check_region_source",
    "last_map_only",
    "reads_pair",
    "region_help",
]

RegionFunction = Callable[["CutOptions", Any, "Tensor", Optional["Tensor"]], "SaliencyResult"]
"""A source's function: ``(cut, options, fine, coarse) -> SaliencyResult`` for a batch of maps ``fine``
(B, C, h, w) and, when the refresh read a pair, the coarser map ``coarse`` of the same batch (else None)."""


@cache
def _import(path: str) -> Any:
    module, _, name = path.partition(":")
    return getattr(importlib.import_module(module), name)


def _resolve(ref: Any) -> Any:
    """``ref`` itself, or the attribute a ``"module:attribute"`` string names (imported once)."""
    return _import(ref) if isinstance(ref, str) else ref


@dataclass(frozen=True)
class RegionSource:
    """One region source (mode).

    Attributes:
        name: The value of ``SaliencyGenerator(regions=...)`` and of the CLIs' ``--regions``.
        summary: What its regions are, in a few words (the CLIs' help).
        compute: Its :data:`RegionFunction`, or ``"module:function"`` naming it.
        options: The class of its options (a frozen dataclass with a ``check_cut(cut, mode)`` method,
            :class:`~sgcl_plugin.spectral.SourceOptions`), ``"module:Class"`` naming it, or None for a source with
            none of its own.
        reads_pair: By default a refresh reads a pair of maps ``(fine, coarse)`` for it (the last map
            and the stage at half its stride: :func:`~sgcl_plugin.features.hierarchy_strides`); else
            the last map.
        last_map_only: It reads the backbone's last map, whatever stride the trainer's ``--saliency-stride`` or the
            viewer's ``--stride`` ask for (ContrastiveCrop's heat map).
    """

    name: str
    summary: str
    compute: Union[str, RegionFunction]
    options: Union[str, type, None] = None
    reads_pair: bool = False
    last_map_only: bool = False

    @property
    def function(self) -> RegionFunction:
        """The function of :attr:`compute` (imported on first use)."""
        return _resolve(self.compute)  # type: ignore[no-any-return]

    @property
    def options_class(self) -> Optional[type]:
        """The class of :attr:`options` (imported on first use), or None."""
        return None if self.options is None else _resolve(self.options)  # type: ignore[no-any-return]


REGION_SOURCES: Dict[str, RegionSource] = {
    source.name: source
    for source in (
        RegionSource(
            "paper", "Eq. 4-5 exactly: components of the Ncut mask at its mean", "sgcl_plugin.spectral:paper_source"
        ),
        RegionSource(
            "objects",
            "the parts of a k-way Ncut, scored by objectness",
            "sgcl_plugin.objects:objects_source",
            "sgcl_plugin.objects:ObjectsOptions",
        ),
        RegionSource(
            "hierarchy",
            "whole objects: k-way Ncut parts merged bottom-up and scored",
            "sgcl_plugin.hierarchy:hierarchy_source",
            "sgcl_plugin.hierarchy:HierarchyOptions",
            reads_pair=True,
        ),
        RegionSource(
            "heatmap",
            "ContrastiveCrop-style: one box around the heat map above a threshold",
            "sgcl_plugin.heatmap:heatmap_source",
            "sgcl_plugin.heatmap:HeatmapOptions",
            last_map_only=True,
        ),
    )  # fmt: skip
}
"""Every region source, by name (the paper's first, SGCL's Ncut modes, then the heat-map baseline)."""

REGION_MODES: Tuple[str, ...] = tuple(REGION_SOURCES)
"""The names of the built-in rows of :data:`REGION_SOURCES`."""

DEFAULT_REGION_SOURCE = "hierarchy"
"""The mode of ``SaliencyGenerator()`` and of every adapter and CLI (measured in docs/RESULTS.md)."""


def check_region_source(name: object) -> RegionSource:
    """The row of mode ``name``.

    Raises:
        ValueError: An unknown name (the message lists the known ones).
    """
    if not isinstance(name, str) or name not in REGION_SOURCES:
        raise ValueError(f"Unknown regions mode {name!r}; choose one of {tuple(REGION_SOURCES)}.")
    return REGION_SOURCES[name]


def reads_pair(name: str) -> bool:
    """Whether a refresh reads a pair of maps by default for source ``name``; False for a name outside the table
    (the trainer's true boxes)."""
    return name in REGION_SOURCES and REGION_SOURCES[name].reads_pair


def last_map_only(name: str) -> bool:
    """Whether source ``name`` reads the backbone's last map whatever stride is asked; False outside the table."""
    return name in REGION_SOURCES and REGION_SOURCES[name].last_map_only


def region_help() -> str:
    """One phrase per mode, ``"'hierarchy' (whole objects: ...), ..."``, the default first."""
    names = [DEFAULT_REGION_SOURCE] + [n for n in REGION_SOURCES if n != DEFAULT_REGION_SOURCE]
    return ", ".join(f"'{n}' ({REGION_SOURCES[n].summary})" for n in names)
