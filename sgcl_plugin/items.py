"""Dataset items: one parser for what datasets return, the images of a dataset, and one batch layout.

Every part of SGCL that reads a user's dataset (the crop dataset, the refresh, the lightly and
solo-learn adapters) goes through :func:`split_item`, so an item means the same everywhere:

- an image (PIL image, HWC array or CHW tensor);
- a tuple/list ``(image, target[, filename])`` (torchvision datasets, lightly's ``LightlyDataset``);
- solo-learn's ``(index, image, target)`` (its ``dataset_with_index`` items; the index is checked);
- a dict with ``"image"`` and optionally ``"label"`` / ``"target"`` and ``"filename"``.

:func:`flatten_pairs` turns a batch of per-image region pairs (B, t, ...) into the B * t rows a
pair loss takes, with the dataset index of each row's image.
"""

from __future__ import annotations

import numbers
from typing import Any, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor
from torch.utils.data import Dataset, IterableDataset

__all__ = ["DatasetImages", "ImageItem", "PairRows", "check_map_style", "flatten_pairs", "repeat_rows", "split_item"]


class ImageItem(NamedTuple):
    """What :func:`split_item` reads from a dataset item.

    Attributes:
        image: The image (PIL image, array or tensor), untouched.
        target: The label; -1 when the item has none.
        filename: The item's file name; ``str(index)`` when it has none (lightly names items so).
    """

    image: Any
    target: Any
    filename: str


def _is_index(value: Any, index: int) -> bool:
    return isinstance(value, numbers.Integral) and not isinstance(value, bool) and int(value) == index


def split_item(item: Any, index: int) -> ImageItem:
    """The image, target and file name of dataset item ``index`` (formats in the module docstring).

    Raises:
        ValueError: an empty tuple, a dict without ``"image"``, or an item that already holds
            several views (its dataset applies a multi-view transform: build it without one).
    """
    if isinstance(item, (tuple, list)) and len(item) >= 3 and _is_index(item[0], index):
        item = tuple(item[1:])  # solo-learn's (index, image, target)
    filename = str(index)
    if isinstance(item, (tuple, list)):
        if not item:
            raise ValueError(f"Dataset item {index} is an empty tuple: expected (image, target[, filename]).")
        image, target = item[0], item[1] if len(item) > 1 else -1
        if len(item) > 2 and isinstance(item[2], str):
            filename = item[2]
    elif isinstance(item, dict):
        if "image" not in item:
            raise ValueError(f"Dataset item {index} is a dict without an 'image' key (keys: {sorted(item)}).")
        image, target = item["image"], item.get("label", item.get("target", -1))
        filename = str(item.get("filename", filename))
    else:
        image, target = item, -1
    if isinstance(image, (tuple, list)):
        raise ValueError(
            f"Dataset item {index} already holds {len(image)} views: its dataset applies a multi-view transform. "
            "Build it without a transform (e.g. LightlyDataset(..., transform=None)); SGCL makes the views."
        )
    if _two_views(image, target):
        raise ValueError(
            f"Dataset item {index} is (image, image), {_describe(image)} and {_describe(target)}: a pair of views (its "
            "dataset applies a two-view or multi-crop transform), not (image, target). Build it without that "
            "transform; SGCL makes the views."
        )
    return ImageItem(image, -1 if target is None else target, filename)


def _two_views(a: Any, b: Any) -> bool:
    """Whether ``(a, b)`` are two views of an image rather than an image and its target.

    Two views are two PIL images of one size or of one mode, two arrays / tensors of one shape with 2 or more axes,
    or two images of one dtype with as many channels (3-axis arrays / tensors, channels first or last) but of
    different sizes: a multi-crop transform's large and small views, (3, 224, 224) and (3, 96, 96). A mask of
    another mode, rank or channel count is a target.
    """
    from PIL import Image

    if isinstance(a, Image.Image) and isinstance(b, Image.Image):
        return a.size == b.size or a.mode == b.mode
    shape_a, shape_b = getattr(a, "shape", None), getattr(b, "shape", None)
    if shape_a is None or shape_b is None or len(shape_a) < 2:
        return False
    shape_a, shape_b = tuple(shape_a), tuple(shape_b)
    if shape_a == shape_b:
        return True
    if len(shape_a) != 3 or len(shape_b) != 3 or getattr(a, "dtype", None) != getattr(b, "dtype", None):
        return False
    return any(shape_a[axis] == shape_b[axis] and shape_a[axis] in (1, 3, 4) for axis in (0, -1))


def _describe(image: Any) -> str:
    """An image in an error message: ``PIL RGB 224 x 224`` or ``Tensor (3, 224, 224)``."""
    size = getattr(image, "size", None)
    if isinstance(size, tuple) and hasattr(image, "mode"):
        return f"PIL {image.mode} {size[0]} x {size[1]}"
    return f"{type(image).__name__} {tuple(getattr(image, 'shape', ()))}"


def check_map_style(dataset: Any, who: str) -> None:
    """Raises a TypeError unless ``dataset`` is map-style: SGCL finds an image's regions by its index."""
    if isinstance(dataset, IterableDataset) or not (hasattr(dataset, "__len__") and hasattr(dataset, "__getitem__")):
        raise TypeError(
            f"{who} needs a map-style dataset (__len__ and __getitem__), got {type(dataset).__name__}: SGCL looks "
            "up each image's saliency regions by its dataset index, which a stream has not."
        )


class DatasetImages(Dataset):
    """The images of a dataset by index, without targets: what a saliency refresh reads.

    Args:
        dataset: Any map-style dataset whose items :func:`split_item` reads; an index-aware crop
            dataset (anything with an ``images`` attribute, e.g.
            :class:`~sgcl_plugin.bank_crops.SaliencyCropDataset`) is replaced by its images.
    """

    dataset: Any

    def __init__(self, dataset: Any) -> None:
        while isinstance(getattr(dataset, "images", None), DatasetImages):
            dataset = dataset.images.dataset
        if isinstance(dataset, DatasetImages):
            dataset = dataset.dataset
        check_map_style(dataset, "The saliency refresh")
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        return split_item(self.dataset[index], int(index)).image

    def __repr__(self) -> str:
        return f"DatasetImages({type(self.dataset).__name__} of {len(self)} images)"


class PairRows(NamedTuple):
    """A batch of region pairs as B * t rows, image-major (rows ``i * t`` to ``i * t + t - 1``: image i).

    Attributes:
        views1: (B * t, 3, s, s) first views.
        views2: (B * t, 3, s, s) second views.
        scores: (B * t,) region scores, float.
        image_ids: (B * t,) dataset index of each row's image.
        targets: (B * t,) labels (-1 without), or None when the batch has none.
        num_regions: t.
    """

    views1: Tensor
    views2: Tensor
    scores: Tensor
    image_ids: Tensor
    targets: Optional[Tensor]
    num_regions: int


def flatten_pairs(
    views: Sequence[Tensor],
    scores: Any,
    indexes: Any,
    targets: Any = None,
    crop_size: Optional[int] = None,
) -> PairRows:
    """Checks a batch of region pairs and flattens it to one row per pair.

    Args:
        views: ``(views1, views2)``, each (B, t, 3, s, s), or (B, 3, s, s) for t = 1.
        scores: (B, t) (or (B,) for t = 1) region scores.
        indexes: (B,) dataset index of each image.
        targets: (B,) labels, or None.
        crop_size: The side every crop must have, or None.

    Raises:
        ValueError: not two views, views of different shapes or of another size than ``crop_size``,
            scores or indexes that do not match the views.
    """
    if isinstance(views, Tensor) or not isinstance(views, (list, tuple)) or len(views) != 2:
        count = 1 if isinstance(views, Tensor) else len(views) if isinstance(views, (list, tuple)) else "?"
        raise ValueError(f"SGCL needs exactly two views per region pair, got {count}.")
    v1, v2 = views
    if not isinstance(v1, Tensor) or not isinstance(v2, Tensor) or v1.shape != v2.shape:
        shapes = [tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__ for v in views]
        raise ValueError(f"The two views must be tensors of one shape, got {shapes}.")
    indexes = torch.as_tensor(indexes)
    if indexes.ndim != 1 or indexes.is_floating_point():
        raise ValueError(f"indexes must be (B,) integer dataset indices, got {tuple(indexes.shape)} {indexes.dtype}.")
    B = indexes.shape[0]
    if v1.ndim == 4:
        v1, v2 = v1[:, None], v2[:, None]
    if v1.ndim != 5 or v1.shape[0] != B or v1.shape[2] != 3:
        raise ValueError(f"Views must be (B, t, 3, s, s) or (B, 3, s, s) with B = {B}, got {tuple(views[0].shape)}.")
    t, h, w = v1.shape[1], v1.shape[-2], v1.shape[-1]
    if h != w or (crop_size is not None and h != crop_size):
        raise ValueError(
            f"Region crops are {h}x{w} px but {crop_size}x{crop_size} are expected: every region crop must have "
            "the configured crop size."
        )
    if not isinstance(scores, Tensor) or scores.shape[0] != B or scores.reshape(-1).shape[0] != B * t:
        got = tuple(scores.shape) if isinstance(scores, Tensor) else type(scores).__name__
        raise ValueError(f"scores must be (B, t) = ({B}, {t}), one per region pair, got {got}.")
    rows: Optional[Tensor] = None
    if targets is not None:
        rows = torch.as_tensor(targets).to(indexes.device).repeat_interleave(t)
    return PairRows(
        v1.flatten(0, 1),
        v2.flatten(0, 1),
        scores.reshape(-1).float(),
        indexes.repeat_interleave(t),
        rows,
        t,
    )


def repeat_rows(values: Sequence[Any], t: int) -> Tuple[Any, ...]:
    """Each value repeated ``t`` times in a row (per-image values to per-pair rows)."""
    return tuple(v for v in values for _ in range(t))
