"""Saliency-guided crops (SGCL Step 2): the crop step, the bank-fed crop transform and the crop dataset.

:class:`RegionCrops` draws score-weighted regions (:func:`sample_regions`), two crops in each and
BYOL's two views of them; :class:`SaliencyCropTransform` feeds it the regions the bank holds for a
dataset index, and :class:`SaliencyCropDataset` wraps a dataset so that it does. Where the crops lie
(rule R inside a region box, BYOL's random-resized crops, the box jitter) is :mod:`sgcl_plugin.boxes`;
the view augmentations are :mod:`sgcl_plugin.views`.

Before the first refresh an image has no regions and each view pair is two independent BYOL
random-resized crops of the whole image, with score 1.0 (or, with ``before_refresh="regions"``, two
rule-R crops inside a random region, as the paper's Algorithm 1). All samplers take an optional
``torch.Generator``; the default is torch's global RNG, which the DataLoader seeds differently in
every worker.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, NamedTuple, Optional, Sequence, Tuple, Union

import torch
from torch import Tensor
from torch.utils.data import Dataset

from sgcl_plugin.bank import SaliencyBank
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
from sgcl_plugin.items import DatasetImages, ImageItem, check_map_style, split_item
from sgcl_plugin.views import ViewTransform, byol_view_transforms, check_view_transform

__all__ = ["CropSample", "RegionCrops", "SaliencyCropDataset", "SaliencyCropTransform", "sample_regions"]

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
    ``v2.Compose``; :class:`SaliencyCropTransform` is this step fed from a bank by dataset index. Its
    arguments are the crop options, declared, documented and checked here only.

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
        >>> sample = crops(pil_image, boxes, scores)  # boxes: (K, 4) normalized xyxy, or tv_tensors.BoundingBoxes
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


def _read_regions(bank: SaliencyBank, index: int) -> Tuple[Tensor, Tensor, str]:
    """The regions ``bank`` holds for image ``index``: ``(boxes, scores, what)``, ``what`` naming them in errors.

    The crop step's one read of a bank (:class:`SaliencyCropTransform` and :class:`SaliencyCropDataset`
    alike), made at every call so that a refresh reaches running DataLoader workers.

    Raises:
        IndexError: ``index`` is outside the bank.
    """
    boxes, scores = bank[index]
    return boxes, scores, f"bank[{index}] boxes"


class SaliencyCropTransform:
    """SGCL's crop transform: a :class:`RegionCrops` fed, by dataset index, the regions the bank holds.

    ``transform(image, index)`` reads ``bank[index]`` at every call (so refreshes are seen by running
    DataLoader workers) and returns :meth:`RegionCrops.crop` of them. The crop options are the
    :class:`RegionCrops`' own, by position or keyword, with its defaults; the transform reads them, and
    every other public attribute of :attr:`crops`, through (``transform.size`` is ``transform.crops.size``).

    Args:
        bank: The :class:`~sgcl_plugin.bank.SaliencyBank` of the dataset.
        *args: :class:`RegionCrops`' arguments by position (``num_regions``, ``size``, ...).
        crops: A :class:`RegionCrops` to use as it is, instead of ``args`` / ``options``.
        **options: :class:`RegionCrops`' arguments by keyword (``num_regions``, ``size``,
            ``view_transforms``, ``augment``, ``scale``, ``ratio``, ``before_refresh``, ``box_jitter``).

    Attributes:
        bank: The bank the regions are read from.
        crops: The crop step.

    Raises:
        TypeError: ``bank`` is not a ``SaliencyBank``; ``crops`` is not a ``RegionCrops``, or comes with options.
        ValueError: a bad crop option (as :class:`RegionCrops`).

    Examples:
        >>> transform = SaliencyCropTransform(bank, num_regions=4, size=96)
        >>> sample = transform(pil_image, index=17)
        >>> sample.views1.shape, sample.scores.shape
        (torch.Size([4, 3, 96, 96]), torch.Size([4]))
    """

    def __init__(self, bank: SaliencyBank, *args: Any, crops: Optional[RegionCrops] = None, **options: Any) -> None:
        if not isinstance(bank, SaliencyBank):
            raise TypeError(f"bank must be a SaliencyBank, got {type(bank).__name__}.")
        self.bank = bank
        bank.read_by_crops()  # a refresh without this bank then warns: its regions would reach no crop
        self.crops = _crop_step(crops, args, options)

    def __getattr__(self, name: str) -> Any:
        """The public attributes and methods of :attr:`crops` (its options, ``crop``, ``region_boxes``)."""
        missing = AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if name.startswith("_") or name == "crops":  # no crops yet: while unpickling, or before __init__ set it
            raise missing
        try:
            return getattr(self.crops, name)
        except AttributeError:
            raise missing from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.crops._options_repr()})"

    def sample_boxes(self, index: int, image_size: Sequence[int]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The crop geometry of one call: ``(boxes1, boxes2, scores, regions)`` for image ``index``.

        Raises:
            IndexError: ``index`` is outside the bank.
            ValueError: the bank entry holds boxes outside [0, 1], empty boxes or bad scores.
        """
        boxes, scores, what = _read_regions(self.bank, index)
        return self.crops.region_boxes(boxes, scores, image_size, what)

    def __call__(self, image: Any, index: int) -> CropSample:
        """Makes the t view pairs of ``image`` (PIL, HWC array or CHW tensor), dataset index ``index``."""
        return self.crops.crop(image, *_read_regions(self.bank, index))


def _crop_step(crops: Optional[RegionCrops], args: Tuple[Any, ...], options: Dict[str, Any]) -> RegionCrops:
    """A :class:`SaliencyCropTransform`'s crop step: ``crops`` as given, or a :class:`RegionCrops` of the options."""
    if crops is None:
        return RegionCrops(*args, **options)
    if args or options:
        raise TypeError(
            "Pass either crops= (a RegionCrops) or the crop options (num_regions=, size=, ...), not both: "
            "a RegionCrops has its options already."
        )
    if not isinstance(crops, RegionCrops):
        raise TypeError(f"crops must be a RegionCrops, got {type(crops).__name__}.")
    return crops


def _transform_signature() -> inspect.Signature:
    """``SaliencyCropTransform(bank, <RegionCrops' options>, *, crops=None)``, as ``help`` and ``inspect`` show it:
    built from :class:`RegionCrops`' own signature, where the options are declared."""
    own = inspect.signature(SaliencyCropTransform.__init__).parameters
    options = list(inspect.signature(RegionCrops.__init__).parameters.values())[1:]  # without self
    return inspect.Signature([own["self"], own["bank"], *options, own["crops"]], return_annotation=None)


SaliencyCropTransform.__init__.__signature__ = _transform_signature()  # type: ignore[attr-defined]

CropStep = Union[SaliencyCropTransform, RegionCrops]
"""What a :class:`SaliencyCropDataset` crops with: a bank-fed transform, or a crop step and a bank."""


# -------------------------------------------------------------------------------------- dataset


class SaliencyCropDataset(Dataset):
    """Wraps a map-style dataset so that its crop transform sees each item's dataset index.

    Items are read by :func:`~sgcl_plugin.items.split_item` (images, ``(image, target, ...)``
    tuples, solo-learn's ``(index, image, target)``, dicts with ``"image"``). ``dataset[i]`` is
    :meth:`format` of the crops: by default a dict with ``views1`` and ``views2`` (t, 3, size,
    size), ``scores`` (t,), ``index`` (i) and ``target`` (-1 when there is none), which the default
    collate batches into (B, t, ...) tensors. Works with DataLoader workers, including
    ``persistent_workers=True``: the bank lives in shared memory, so refreshes made by the main
    process reach the running workers. The lightly and solo-learn adapters subclass it and only
    change :meth:`format` / :meth:`format_fallback` to their host's item layout.

    Args:
        dataset: Any map-style dataset (``__len__`` and ``__getitem__``).
        transform: The crop step: a :class:`SaliencyCropTransform` (its bank is used) or a stateless
            :class:`RegionCrops` with ``bank``; the bank must have ``len(dataset)`` rows. May be None
            and attached later (:meth:`attach`).
        fallback_transform: Used while no crop transform is attached: ``dataset[i]`` is then
            :meth:`format_fallback` of ``fallback_transform(image)``.
        bank: The bank to look regions up in, for a :class:`RegionCrops` transform.

    Attributes:
        images: The wrapped dataset's images by index (what a refresh reads).

    Examples:
        >>> bank = SaliencyBank(len(train_set))
        >>> data = SaliencyCropDataset(train_set, SaliencyCropTransform(bank))
        >>> loader = DataLoader(data, batch_size=64, num_workers=8, persistent_workers=True)
        >>> batch = next(iter(loader))  # batch["views1"]: (64, 4, 3, 96, 96)
    """

    def __init__(
        self,
        dataset: Any,
        transform: Optional[CropStep] = None,
        fallback_transform: Optional[Callable[[Any], Any]] = None,
        bank: Optional[SaliencyBank] = None,
    ) -> None:
        check_map_style(dataset, type(self).__name__)
        if fallback_transform is not None and not callable(fallback_transform):
            raise TypeError("fallback_transform must be callable.")
        self.dataset = dataset
        self.fallback_transform = fallback_transform
        self.transform: Optional[CropStep] = None
        self._crops: Optional[RegionCrops] = None
        self._bank: Optional[SaliencyBank] = None
        if transform is not None:
            self.attach(transform, bank)

    def attach(self, transform: CropStep, bank: Optional[SaliencyBank] = None) -> None:
        """Sets the crop step and the bank the dataset looks regions up in (default: the transform's own,
        for a :class:`SaliencyCropTransform`); the bank must have one row per image."""
        if isinstance(transform, SaliencyCropTransform):
            crops, own_bank = transform.crops, transform.bank
        elif isinstance(transform, RegionCrops):
            crops, own_bank = transform, None
        else:
            raise TypeError(
                f"transform must be a SaliencyCropTransform or RegionCrops, got {type(transform).__name__}."
            )
        bank = bank if bank is not None else own_bank
        if not isinstance(bank, SaliencyBank):
            raise TypeError(f"A RegionCrops transform needs the dataset's bank: pass bank=, got {type(bank).__name__}.")
        if len(bank) != len(self):
            raise ValueError(
                f"The bank holds {len(bank)} images but the dataset has {len(self)}: create it with "
                "SaliencyBank(len(dataset))."
            )
        self.transform, self._crops, self._bank = transform, crops, bank

    @property
    def bank(self) -> Optional[SaliencyBank]:
        """The bank the dataset looks each image's regions up in (None before a transform is attached)."""
        return self._bank

    @property
    def images(self) -> DatasetImages:
        return DatasetImages(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        item = split_item(self.dataset[index], index)
        if self.transform is None:
            if self.fallback_transform is None:
                raise RuntimeError(
                    f"{type(self).__name__} has no SaliencyCropTransform yet: pass one, or attach(transform) "
                    "before the DataLoader starts its workers."
                )
            return self.format_fallback(index, item, self.fallback_transform(item.image))
        assert self._crops is not None and self._bank is not None
        return self.format(index, item, self._crops.crop(item.image, *_read_regions(self._bank, index)))

    def format(self, index: int, item: ImageItem, sample: CropSample) -> Any:
        """The item handed to the DataLoader; override it for another host's layout."""
        return {
            "views1": sample.views1,
            "views2": sample.views2,
            "scores": sample.scores,
            "index": index,
            "target": item.target,
        }

    def format_fallback(self, index: int, item: ImageItem, views: Any) -> Any:
        """The item while no crop transform is attached (``views`` from ``fallback_transform``)."""
        return {"views": views, "index": index, "target": item.target}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.dataset).__name__} of {len(self)} images, {self.transform!r})"
