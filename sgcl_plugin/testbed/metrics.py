"""Region metrics against ground truth: the same-object pair rate of training pairs (and box IoU, from regions)."""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from sgcl_plugin import SaliencyBank, SaliencyCropTransform
from sgcl_plugin.regions import box_iou

__all__ = ["box_iou", "crop_object_shares", "same_object_pair_rate", "shown_object"]

SHOW_SHARE = 0.3
"""A crop *shows* an object that covers at least this share of its pixels and more than any other."""


def crop_object_shares(masks: Tensor, crops: Tensor) -> Tensor:
    """(n, k) share of each crop's pixels covered by each object.

    Args:
        masks: (k, H, W) boolean object masks (pixel (r, c) covers [c/W, (c+1)/W] x [r/H, (r+1)/H]).
        crops: (n, 4) normalized xyxy crops, rounded to whole pixels as ``crop_and_resize`` cuts them.
    """
    k, H, W = masks.shape
    integral = torch.zeros(k, H + 1, W + 1, dtype=torch.float64)
    integral[:, 1:, 1:] = masks.double().cumsum(1).cumsum(2)
    px = (crops.double() * torch.tensor([W, H, W, H], dtype=torch.float64)).round().long()
    x0, y0 = px[:, 0].clamp(0, W - 1), px[:, 1].clamp(0, H - 1)
    x1, y1 = torch.maximum(px[:, 2], x0 + 1).clamp(max=W), torch.maximum(px[:, 3], y0 + 1).clamp(max=H)
    inside = integral[:, y1, x1] - integral[:, y0, x1] - integral[:, y1, x0] + integral[:, y0, x0]
    return (inside / ((x1 - x0) * (y1 - y0)).double()).T


def shown_object(shares: Tensor, share: float = SHOW_SHARE) -> Tensor:
    """(n,) index of the object each crop shows, or -1: the object with the largest share, if >= ``share``."""
    if shares.shape[1] == 0:
        return torch.full((shares.shape[0],), -1, dtype=torch.int64)
    value, index = shares.max(dim=1)
    return torch.where(value >= share, index, torch.full_like(index, -1))


def same_object_pair_rate(
    bank: SaliencyBank,
    masks: Sequence[Tensor],
    pairs: int = 16,
    indices: Optional[Sequence[int]] = None,
    seed: int = 0,
    box_jitter: float = 0.0,
    share: float = SHOW_SHARE,
    scale: Sequence[float] = (0.08, 1.0),
) -> Tuple[float, List[float]]:
    """The share of positive pairs whose two crops show the same ground-truth object.

    Pairs are drawn exactly as training draws them: :meth:`SaliencyCropTransform.sample_boxes
    <sgcl_plugin.bank_crops.SaliencyCropTransform.sample_boxes>` on ``bank`` (a score-weighted region,
    two rule-R crops in it; before a refresh, two random-resized crops of the whole image), with
    the global RNG seeded by ``seed`` and restored afterwards.

    Args:
        bank: The regions (an empty row gives random BYOL crops).
        masks: Per image, (k, H, W) boolean masks of its objects (the image's own pixel grid).
        pairs: Pairs drawn per image.
        indices: The bank rows to use (default: all; ``masks[j]`` belongs to ``indices[j]``).
        seed: Seed of the draws.
        box_jitter: ``SaliencyCropTransform``'s box jitter.
        share: See :func:`shown_object`.
        scale: ``SaliencyCropTransform``'s crop scale.

    Returns:
        ``(rate, per_image)``: the mean share in [0, 1] and each image's share.
    """
    rows = list(range(len(bank))) if indices is None else [int(i) for i in indices]
    if len(rows) != len(masks):
        raise ValueError(f"Got masks for {len(masks)} images but {len(rows)} bank rows.")
    transform = SaliencyCropTransform(bank, num_regions=pairs, augment=False, box_jitter=box_jitter, scale=scale)
    per_image: List[float] = []
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for row, m in zip(rows, masks):
            b1, b2, _, _ = transform.sample_boxes(row, tuple(m.shape[1:]))
            a = shown_object(crop_object_shares(m, b1), share)
            b = shown_object(crop_object_shares(m, b2), share)
            per_image.append(float(((a == b) & (a >= 0)).double().mean()))
    return (sum(per_image) / len(per_image) if per_image else 0.0), per_image
