"""Saliency-guided crops (SGCL Step 2): the crop step, from an image and its regions to view pairs.

:class:`RegionCrops` draws score-weighted regions (:func:`sample_regions`), two crops in each and
BYOL's two views of them. It reads no bank: :mod:`sgcl_plugin.bank_crops` feeds it the regions a
:class:`~sgcl_plugin.bank.SaliencyBank` holds for a dataset index (the crop transform and the crop
dataset). Where the crops lie (rule R inside a region box, BYOL's random-resized crops, the box
jitter) is :mod:`sgcl_plugin.boxes`; the view augmentations are :mod:`sgcl_plugin.views`.

Before the first refresh an image has no regions and each view pair is two independent BYOL
random-resized crops of the whole image, with score 1.0 (or, with ``before_refresh="regions"``, two
rule-R crops inside a random region, as the paper's Algorithm 1). All samplers take an optional
``torch.Generator``; the default is torch's global RNG, which the DataLoader seeds differently in
every worker.
"""

from __future__ import annotations

from typing import Any, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor

from sgcl_plugin.boxes import (
    check_boxes,
    check_crop_size,
    crop_and_resize,
    jitter_boxes,
    random_resized_crop_boxes,
    sample_crops_in_boxes,
)
from sgcl_plugin.checks import check_int, check_number, check_range
from sgcl_plugin.images import to_image_tensor
from sgcl_plugin.views import ViewTransform, byol_view_transforms, check_view_transform

__all__ = ["CropSample", "RegionCrops", "sample_regions"]

BEFORE_REFRESH = ("crops", "regions")


# ------------------------------------------------------------------------------------- sampling


def sample_regions(scores: Tensor, num_regions: int, generator: Optional[torch.Generator] = None) -> Tensor:
    """Draws ``num_regions`` region indices with replacement, with probability proportional to score.

    Args:
        scores: (K,) non-negative region scores, not all zero.
        num_regions: How many indices to draw (t).
        generator: Random source; torch's global RNG when omitted.

    Returns:
        (t,) int64 indices into ``scores``.

    Raises:
        ValueError: ``scores`` is not 1-D, is empty, holds NaN/Inf or negative values, or sums to
            zero; ``num_regions < 1``.

    Examples:
        >>> sample_regions(torch.tensor([1.0, 0.5, 0.0]), 4, torch.Generator().manual_seed(0))
        tensor([1, 1, 0, 1])
    """
    num_regions = check_int("num_regions", num_regions, 1)
    if not isinstance(scores, Tensor) or scores.ndim != 1:
        shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be a 1-D tensor (K,), got {shape}.")
    if scores.numel() == 0:
        raise ValueError("Cannot sample regions from an empty score vector (K = 0).")
    weights = scores.detach().to("cpu", torch.float64)
    if not torch.isfinite(weights).all():
        raise ValueError(f"scores contain NaN or Inf values: {scores.tolist()}.")
    if (weights < 0).any():
        raise ValueError(f"scores must be non-negative, got {scores.tolist()}.")
    if not (weights > 0).any():
        raise ValueError("All region scores are zero: there is nothing to sample in proportion to.")
    return torch.multinomial(weights, num_regions, replacement=True, generator=generator)


# ------------------------------------------------------------------------------------ transform


class CropSample(NamedTuple):
    """The t view pairs of one image.

    Attributes:
        views1: (t, 3, size, size) first views (normalized unless ``augment=False``).
        views2: (t, 3, size, size) second views.
        scores: (t,) score of the region each pair came from (1.0 before the first refresh).
        boxes1: (t, 4) crop boxes of the first views, normalized xyxy.
        boxes2: (t, 4) crop boxes of the second views.
        regions: (t,) index of the bank region of each pair; -1 before the first refresh.
    """

    views1: Tensor
    views2: Tensor
    scores: Tensor
    boxes1: Tensor
    boxes2: Tensor
    regions: Tensor


class RegionCrops:
    """SGCL's crop step, stateless: score-weighted regions, two rule-R crops in each, BYOL's two views.

    For an image and its regions (boxes and scores): draw ``num_regions`` regions with replacement and
    probability proportional to their scores; for each, two independent rule-R crops inside its box
    (:func:`~sgcl_plugin.boxes.sample_crops_in_boxes`), cut out and resized to ``size`` (bilinear,
    antialiased), then the view-1 / view-2 augmentations. An image without regions (before the first
    refresh) gets pairs of independent BYOL random-resized crops of the whole image, with score 1.0
    and region -1.

    It reads no bank: in the torchvision-v2 style it takes ``(image, boxes, scores)`` and fits in a
    ``v2.Compose``; :class:`~sgcl_plugin.bank_crops.SaliencyCropTransform` is this step fed from a bank by
    dataset index. Its arguments are the crop options, declared, documented and checked here only.

    Args:
        num_regions: Pairs per image (t; paper: 4).
        size: Side of the crops (paper: 96).
        view_transforms: ``None`` or ``"byol"`` for :func:`~sgcl_plugin.views.byol_view_transforms`, or
            a pair of callables on (3, size, size) float tensors in [0, 1].
        augment: False returns the resized crops in [0, 1] without view augmentation, for a batched
            GPU path (:class:`~sgcl_plugin.views.BatchViewAugment`); then ``view_transforms`` must be
            left unset.
        scale: Crop area range, as a fraction of the region box (of the image before a refresh).
        ratio: Crop aspect ratio range.
        before_refresh: What an image without regions gets: ``"crops"`` (default) two independent
            random-resized crops of the whole image per pair, as BYOL; ``"regions"``, Algorithm 1
            of the paper read literally: t random regions (random-resized crop boxes) with score
            1, and two rule-R crops inside each.
        box_jitter: Box jitter of the augmentation T (Eq. 6) before the rule-R crops: each edge of
            the sampled region box moves by up to this fraction of the box side, independently for
            the two views (:func:`~sgcl_plugin.boxes.jitter_boxes`). 0 (default) turns it off; see
            docs/RESULTS.md for what it does to the pairs.

    Examples:
        >>> crops = RegionCrops(num_regions=4, size=96)
        >>> boxes, scores = torch.tensor([[0.1, 0.2, 0.6, 0.9], [0.5, 0.0, 1.0, 0.5]]), torch.tensor([1.0, 0.4])
        >>> sample = crops(dataset[0], boxes, scores)  # boxes: (K, 4) normalized xyxy, or tv_tensors.BoundingBoxes
        >>> sample.views1.shape, sample.scores.shape
        (torch.Size([4, 3, 96, 96]), torch.Size([4]))
    """

    def __init__(
        self,
        num_regions: int = 4,
        size: int = 96,
        view_transforms: Optional[Union[str, Sequence[ViewTransform]]] = None,
        augment: bool = True,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
        before_refresh: str = "crops",
        box_jitter: float = 0.0,
    ) -> None:
        self.num_regions = check_int("num_regions", num_regions, 1)
        self.size = check_crop_size(size)
        self.scale = check_range("scale", scale)
        self.ratio = check_range("ratio", ratio)
        if before_refresh not in BEFORE_REFRESH:
            raise ValueError(f"before_refresh must be one of {BEFORE_REFRESH}, got {before_refresh!r}.")
        self.before_refresh = before_refresh
        self.box_jitter = check_number("box_jitter", box_jitter, 0)
        self.augment = bool(augment)
        self.view_transforms = _view_pair(view_transforms, self.augment, self.size)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self._options_repr()})"

    def _options_repr(self) -> str:
        return (
            f"num_regions={self.num_regions}, size={self.size}, augment={self.augment}, scale={self.scale}, "
            f"ratio={self.ratio}, before_refresh={self.before_refresh!r}, box_jitter={self.box_jitter}"
        )

    def region_boxes(
        self, boxes: Tensor, scores: Tensor, image_size: Sequence[int], what: str = "boxes"
    ) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The crop geometry of one image with regions ``boxes`` (K, 4, normalized xyxy) and ``scores`` (K,):
        ``(boxes1, boxes2, scores, regions)``, K = 0 meaning no regions yet (``before_refresh``).

        Raises:
            ValueError: boxes outside [0, 1], empty boxes or bad scores.
        """
        t = self.num_regions
        if boxes.shape[0] == 0:
            if self.before_refresh == "crops":
                crops = random_resized_crop_boxes(2 * t, image_size, self.scale, self.ratio)
                return crops[:t], crops[t:], torch.ones(t), torch.full((t,), -1, dtype=torch.int64)
            # Algorithm 1: t random regions of score 1, then rule-R pairs inside them.
            chosen = random_resized_crop_boxes(t, image_size, self.scale, self.ratio)
            scores_t, regions = torch.ones(t), torch.full((t,), -1, dtype=torch.int64)
        else:
            check_boxes(boxes, what=what)
            if not isinstance(scores, Tensor) or scores.ndim != 1 or scores.shape[0] != boxes.shape[0]:
                shape = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
                raise ValueError(
                    f"{boxes.shape[0]} {what} but scores of shape {shape}: give one score per box (K,), or None."
                )
            if scores.numel() and bool((scores > 1).any()):
                raise ValueError(
                    f"Region scores lie in (0, 1] (the best region has 1), got max {scores.max().item():.4g}."
                )
            regions = sample_regions(scores, t)
            chosen, scores_t = boxes[regions], scores[regions].float()
        chosen = chosen.repeat(2, 1)
        if self.box_jitter > 0:  # each view's T jitters the box on its own
            chosen = jitter_boxes(chosen, self.box_jitter, image_size)
        crops = sample_crops_in_boxes(chosen, image_size, self.scale, self.ratio)
        return crops[:t], crops[t:], scores_t, regions

    def crop(self, image: Any, boxes: Tensor, scores: Tensor, what: str = "boxes") -> CropSample:
        """The t view pairs of ``image`` (PIL, HWC array or CHW tensor) from its regions ``boxes`` / ``scores``."""
        img = to_image_tensor(image)
        boxes1, boxes2, scores_t, regions = self.region_boxes(boxes, scores, tuple(img.shape[-2:]), what)
        views1 = crop_and_resize(img, boxes1, self.size)
        views2 = crop_and_resize(img, boxes2, self.size)
        if self.view_transforms is not None:
            first, second = self.view_transforms
            views1 = torch.stack([first(v) for v in views1])
            views2 = torch.stack([second(v) for v in views2])
        return CropSample(views1, views2, scores_t, boxes1, boxes2, regions)

    def __call__(self, *inputs: Any) -> CropSample:
        """``crops(image, boxes, scores)`` or ``crops((image, boxes, scores))`` (what ``v2.Compose`` passes).

        ``boxes`` are normalized xyxy (K, 4) or torchvision ``tv_tensors.BoundingBoxes`` of any format
        (converted with their ``canvas_size``); ``scores`` (K,) may be None (all 1).
        """
        if len(inputs) == 1 and isinstance(inputs[0], (tuple, list)):
            inputs = tuple(inputs[0])
        if len(inputs) not in (2, 3):
            raise TypeError(f"RegionCrops takes (image, boxes[, scores]), got {len(inputs)} inputs.")
        image, boxes = inputs[0], inputs[1]
        scores = inputs[2] if len(inputs) == 3 else None
        boxes = _normalized_boxes(boxes)
        scores = torch.ones(boxes.shape[0]) if scores is None else torch.as_tensor(scores, dtype=torch.float32)
        return self.crop(image, boxes, scores)


def _view_pair(
    view_transforms: Optional[Union[str, Sequence[ViewTransform]]], augment: bool, size: int
) -> Optional[Tuple[ViewTransform, ViewTransform]]:
    """RegionCrops' ``(view1, view2)`` augmentations, checked; None with ``augment=False``."""
    if not augment:
        if view_transforms is not None:
            raise ValueError("augment=False returns un-augmented crops: leave view_transforms unset.")
        return None
    if view_transforms is None or (isinstance(view_transforms, str) and view_transforms == "byol"):
        return byol_view_transforms(size)
    if isinstance(view_transforms, str):
        raise ValueError(f"Unknown view_transforms {view_transforms!r}: use 'byol' or a pair of callables.")
    if callable(view_transforms) and not isinstance(view_transforms, (tuple, list)):
        raise TypeError(
            f"view_transforms takes a pair (view1, view2) of callables, got one {type(view_transforms).__name__}: "
            "pass (t, t) to use it for both views. Each gets a (3, size, size) float tensor in [0, 1] and must "
            "normalize itself."
        )
    pair = tuple(view_transforms)
    if len(pair) != 2 or not all(callable(t) for t in pair):
        raise ValueError("view_transforms must be 'byol' or a pair (view1, view2) of callables.")
    for view, name in zip(pair, ("view 1 transform", "view 2 transform")):
        check_view_transform(view, size, getattr(view, "name", name))
    return pair  # type: ignore[return-value]


def _normalized_boxes(boxes: Any) -> Tensor:
    """(K, 4) normalized xyxy from a tensor of them or from torchvision ``BoundingBoxes`` (pixels, any format)."""
    canvas = getattr(boxes, "canvas_size", None)
    if canvas is not None:
        from torchvision.transforms.v2 import functional as TF
        from torchvision.tv_tensors import BoundingBoxFormat

        xyxy = TF.convert_bounding_box_format(boxes, new_format=BoundingBoxFormat.XYXY).as_subclass(Tensor).float()
        h, w = canvas
        return (xyxy / torch.tensor([w, h, w, h], dtype=torch.float32)).clamp(0, 1)
    out = torch.as_tensor(boxes, dtype=torch.float32)
    if out.numel() == 0:
        return out.reshape(0, 4)
    if out.ndim != 2 or out.shape[1] != 4:
        raise ValueError(f"boxes must be (K, 4) normalized x0, y0, x1, y1, got shape {tuple(out.shape)}.")
    return out
