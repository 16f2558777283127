"""The composed scenes' ground truth as the trainer reads it: every object's true box as a region (``--regions gt``,
the upper bound of the paper's Table 7) and the objects' masks (for the same-object pair rate)."""

from __future__ import annotations

from typing import Any, Dict, List, cast

import torch
from torch import Tensor

from sgcl_plugin import SaliencyBank
from sgcl_plugin.testbed.scenes import ComposedScenes

__all__ = ["scene_masks", "write_true_boxes"]


def write_true_boxes(bank: SaliencyBank, scenes: ComposedScenes) -> None:
    """Fills ``bank`` with every scene's true object boxes (the first ``bank.max_regions``), each scored 1.

    Args:
        bank: One row per scene (``len(bank) == len(scenes)``); its rows are overwritten.
        scenes: The composed scenes the bank's rows belong to.
    """
    R = bank.max_regions
    boxes, scores = torch.zeros(len(scenes), R, 4), torch.zeros(len(scenes), R)
    counts = torch.zeros(len(scenes), dtype=torch.int64)
    for i in range(len(scenes)):
        b = cast(Dict[str, Any], scenes[i])["boxes"][:R]  # a dict: the scenes are not image_only
        boxes[i, : len(b)], scores[i, : len(b)], counts[i] = b, 1.0, len(b)
    bank.write(boxes, scores, counts, torch.zeros(len(scenes), dtype=torch.bool))


def scene_masks(scenes: ComposedScenes, limit: int) -> List[Tensor]:
    """The (k, H, W) boolean object masks of the first ``limit`` scenes (fewer if there are fewer scenes)."""
    return [torch.from_numpy(scenes.compose(i)[1]) for i in range(min(limit, len(scenes)))]
