"""The heat-map region source, in the style of ContrastiveCrop: one box per image around the hot cells of a map.

The heat map is the sum over channels of the feature map, min-max scaled per image; the single region is the
tightest box around the cells above ``threshold`` (ContrastiveCrop's default 0.1), with score 1. A flat heat map
(no cell above the threshold) gives the whole image (``fallback``). No graph, no cut: the baseline that ablations
swap in for SGCL's Ncut (``SaliencyGenerator(regions="heatmap")``, the trainer's ``--regions heatmap``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import torch
from torch import Tensor

from sgcl_plugin.checks import check_feature_map, check_interval
from sgcl_plugin.regions import Regions, SaliencyResult
from sgcl_plugin.spectral import CutOptions, SourceOptions, normalize_maps

__all__ = ["HeatmapOptions", "heat_maps", "heatmap_source"]


@dataclass(frozen=True)
class HeatmapOptions(SourceOptions):
    """The heat-map source's options.

    Attributes:
        threshold: Fraction of the heat map's range above which a cell belongs to the box.

    Raises:
        ValueError: ``threshold`` outside [0, 1).
    """

    threshold: float = 0.1

    def __post_init__(self) -> None:
        check_interval("threshold", self.threshold, 0, 1, high_open=True)


@torch.no_grad()
def heat_maps(features: Tensor) -> Tensor:
    """(B, h*w): the channel sum of each (B, C, h, w) map, min-max scaled to [0, 1] (a flat map gives zeros)."""
    check_feature_map(features)
    return normalize_maps(features.float().sum(1).flatten(1))


@torch.no_grad()
def heatmap_source(cut: CutOptions, options: HeatmapOptions, fine: Tensor, coarse: Optional[Tensor]) -> SaliencyResult:
    """The ``"heatmap"`` region source on the first map (``coarse`` is not read; ``cut`` neither: no graph).

    Returns:
        ``maps`` the heat maps (B, h, w), ``fiedler`` the same values flattened (B, h*w), one region per image.
    """
    y = heat_maps(fine)
    maps = y.reshape(fine.shape[0], *fine.shape[2:])
    h, w = maps.shape[1:]
    regions = []
    for m in maps.cpu():
        rows, cols = torch.nonzero(m > options.threshold, as_tuple=True)
        if rows.numel() == 0:
            box, fallback, area = [0.0, 0.0, 1.0, 1.0], True, h * w
        else:
            c0, c1, r0, r1 = int(cols.min()), int(cols.max()) + 1, int(rows.min()), int(rows.max()) + 1
            box = [c0 / w, r0 / h, c1 / w, r1 / h]
            fallback, area = False, int(rows.numel())
        regions.append(
            Regions(
                boxes=torch.tensor([box], dtype=torch.float32),
                scores=torch.ones(1),
                areas=torch.tensor([area]),
                fallback=fallback,
            )
        )
    return SaliencyResult(maps=maps, regions=regions, fiedler=y)
