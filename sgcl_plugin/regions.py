"""Scored regions of saliency maps: mask at the mean, connected components, boxes (SGCL Eq. 4-5), box IoU; what a
region source returns (:class:`SaliencyResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
from scipy import ndimage
from torch import Tensor

from sgcl_plugin.checks import check_int

__all__ = ["Regions", "SaliencyResult", "border_mask", "box_iou", "extract_regions"]


@dataclass
class Regions:
    """The scored regions of one saliency map.

    Attributes:
        boxes: (K, 4) float32, normalized ``x0, y0, x1, y1`` in [0, 1] image coordinates; cell
            (r, c) of an h x w map covers ``[c/w, (c+1)/w] x [r/h, (r+1)/h]``.
        scores: (K,) float32 in (0, 1], sorted in descending order (Eq. 5).
        areas: (K,) int64, size of each region in map cells.
        fallback: True when no component survived ``min_area`` and the whole image was used.
    """

    boxes: Tensor
    scores: Tensor
    areas: Tensor
    fallback: bool = False

    def __len__(self) -> int:
        return int(self.scores.shape[0])


@dataclass
class SaliencyResult:
    """Saliency of a batch of feature maps: what every region source returns.

    Attributes:
        maps: (B, h, w) float32 in [0, 1], higher = more foreground.
        regions: One :class:`Regions` per image (boxes, scores, areas).
        fiedler: (B, h*w) the oriented Fiedler vectors before scaling (the heat map source: its map, scaled).
    """

    maps: Tensor
    regions: List[Regions]
    fiedler: Tensor

    @property
    def boxes(self) -> List[Tensor]:
        return [r.boxes for r in self.regions]

    @property
    def scores(self) -> List[Tensor]:
        return [r.scores for r in self.regions]

    def padded(self, max_regions: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Fixed-size tables of the top ``max_regions`` regions per image.

        Returns:
            boxes (B, R, 4), scores (B, R) (0 in padding) and counts (B,) int64.
        """
        B = len(self.regions)
        boxes = torch.zeros(B, max_regions, 4)
        scores = torch.zeros(B, max_regions)
        counts = torch.zeros(B, dtype=torch.int64)
        for i, r in enumerate(self.regions):
            k = min(len(r), max_regions)
            boxes[i, :k], scores[i, :k], counts[i] = r.boxes[:k], r.scores[:k], k
        return boxes, scores, counts


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU matrix (n, m) of normalized xyxy boxes (n, 4) and (m, 4)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)

    def area(x: Tensor) -> Tensor:
        return (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)

    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-12)


def border_mask(h: int, w: int, device: Optional[torch.device] = None) -> Tensor:
    """(h * w,) bool: the cells of an h x w grid that touch the image border."""
    m = torch.zeros(h, w, dtype=torch.bool, device=device)
    m[0], m[-1], m[:, 0], m[:, -1] = True, True, True, True
    return m.flatten()


def _structure(connectivity: int) -> np.ndarray:
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
    plane = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    # A 3-D structure whose outer planes are empty: the batch axis never connects two images.
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = plane
    return structure


def extract_regions(
    maps: Tensor,
    min_area: int = 4,
    connectivity: int = 8,
) -> List[Regions]:
    """Cuts saliency maps into scored regions (SGCL Eq. 4-5).

    For each map S: mask ``S > mean(S)``; regions are the connected components of the mask with at
    least ``min_area`` cells; the score of region B_i is ``max(S[B_i]) / max(S)``; its box is the
    tightest enclosing rectangle in normalized image coordinates.

    The scores are Eq. 5 read literally on the values given: pass the oriented Fiedler vector
    itself (as :class:`~sgcl_plugin.saliency.SaliencyGenerator` does), not a rescaled picture of
    it, since a min-max rescaling raises every score (0.42 becomes 0.61, say). A Fiedler vector has
    both signs, so a component above the mean may lie wholly on the background side of the cut
    (``max(S[B_i]) <= 0``): its score would be <= 0 and it is dropped. An image with no surviving
    region (a flat map, ``max(S) <= 0``, or only specks) gets the whole image as one region with
    score 1.0 and ``fallback=True``.

    Args:
        maps: Saliency maps (B, h, w), higher = more salient, any real values: the oriented
            Fiedler vectors (``SaliencyResult.fiedler`` reshaped), or maps in [0, 1].
        min_area: Smallest region kept, in cells.
        connectivity: 8 (default) or 4.

    Returns:
        One :class:`Regions` per map, regions sorted by descending score (ties: larger area first).

    Examples:
        >>> maps = torch.zeros(1, 4, 4); maps[0, :2, :2] = 1.0
        >>> extract_regions(maps)[0].boxes
        tensor([[0.0000, 0.0000, 0.5000, 0.5000]])
    """
    if not isinstance(maps, Tensor) or maps.ndim != 3:
        shape = tuple(maps.shape) if isinstance(maps, Tensor) else type(maps).__name__
        raise ValueError(f"maps must be a tensor of shape (B, h, w), got {shape}.")
    check_int("min_area", min_area, 1)
    if maps.device.type == "meta":
        raise ValueError("maps is a meta tensor (shape only, no values).")
    if maps.shape[0] == 0:
        return []
    if maps.shape[1] == 0 or maps.shape[2] == 0:
        raise ValueError(f"maps have an empty grid, shape {tuple(maps.shape)}.")
    if maps.is_complex():  # a cast to float64 would drop the imaginary part without a word
        raise TypeError(f"maps must be real, got {maps.dtype}.")
    S = maps.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(S).all():
        raise ValueError("maps contain NaN or Inf values.")
    B, h, w = S.shape
    mask = S > S.mean(axis=(1, 2), keepdims=True)
    labels, n = ndimage.label(mask, structure=_structure(connectivity))
    out: List[Regions] = []
    if n:
        index = np.arange(1, n + 1)
        areas = ndimage.sum_labels(np.ones_like(S), labels, index).astype(np.int64)
        peaks = ndimage.maximum(S, labels, index)
        slices = ndimage.find_objects(labels)
    smax = S.reshape(B, -1).max(axis=1)
    per_image: List[List[int]] = [[] for _ in range(B)]
    for k in range(n):
        b = slices[k][0].start
        # Eq. 5 needs a positive max(S); a region whose peak is not positive would score <= 0.
        if areas[k] >= min_area and smax[b] > 0 and peaks[k] > 0:
            per_image[b].append(k)
    for b in range(B):
        ks = per_image[b]
        if not ks:
            out.append(
                Regions(
                    boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]]),
                    scores=torch.ones(1),
                    areas=torch.tensor([h * w]),
                    fallback=True,
                )
            )
            continue
        ks.sort(key=lambda k: (-peaks[k], -areas[k]))
        boxes = [
            (slices[k][2].start / w, slices[k][1].start / h, slices[k][2].stop / w, slices[k][1].stop / h) for k in ks
        ]
        scores = [peaks[k] / smax[b] for k in ks]  # Eq. 5, in (0, 1]
        out.append(
            Regions(
                boxes=torch.tensor(boxes, dtype=torch.float32),
                scores=torch.tensor(scores, dtype=torch.float32),
                areas=torch.tensor([areas[k] for k in ks], dtype=torch.int64),
            )
        )
    return out
