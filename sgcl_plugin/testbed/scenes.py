"""Composed scenes: colourised Fashion-MNIST objects pasted on real textures, with exact boxes and masks."""

from __future__ import annotations

import colorsys
import gzip
import struct
from functools import lru_cache
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from scipy import ndimage
from torch import Tensor
from torch.utils.data import Dataset

from sgcl_plugin.checks import check_int, check_interval, check_number, check_range

__all__ = [
    "BACKGROUND_NAMES",
    "DEBIAN_FASHION_MNIST",
    "FASHION_MNIST_CLASSES",
    "ComposedScenes",
    "load_fashion_mnist",
    "masks_to_boxes",
    "object_crops",
    "read_idx",
]


DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
"""Where Debian's ``dataset-fashion-mnist`` package puts the IDX files."""

FASHION_MNIST_CLASSES: Tuple[str, ...] = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)
"""Fashion-MNIST class names, indexed by label."""

BACKGROUND_NAMES: Tuple[str, ...] = ("brick", "grass", "gravel", "coffee", "chelsea", "astronaut", "rocket")
"""The scikit-image photos and textures that scene backgrounds are cropped from."""

_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}
_IDX_DTYPES = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Union[str, Path]) -> np.ndarray:
    """Reads an IDX file (plain or ``.gz``), the format of MNIST and Fashion-MNIST.

    Args:
        path: File path.

    Returns:
        The array, with the shape and dtype stored in the file's header.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise ValueError(f"{path} is not an IDX file (bad magic number).")
    ndim = data[3]
    shape = struct.unpack(f">{ndim}i", data[4 : 4 + 4 * ndim])
    dtype: np.dtype = np.dtype(_IDX_DTYPES[data[2]])  # type: ignore[call-overload]
    arr = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim, count=int(np.prod(shape)))
    return arr.reshape(shape).astype(dtype.newbyteorder("="))


def _idx_pair(folder: Path, split: str) -> Optional[Tuple[Path, Path]]:
    images, labels = (folder / name for name in _FILES[split])
    return (images, labels) if images.is_file() and labels.is_file() else None


@lru_cache(maxsize=4)
def _load_cached(split: str, root: Optional[str]) -> Tuple[np.ndarray, np.ndarray]:
    folders = ([Path(root), Path(root) / "FashionMNIST" / "raw"] if root else []) + [DEBIAN_FASHION_MNIST]
    for folder in folders:
        pair = _idx_pair(folder, split)
        if pair is not None:
            return read_idx(pair[0]), read_idx(pair[1]).astype(np.int64)
    download_root = root or str(Path.home() / ".cache" / "sgcl_plugin")
    try:
        from torchvision.datasets import FashionMNIST

        ds = FashionMNIST(download_root, train=split == "train", download=True)
    except Exception as err:
        raise RuntimeError(
            f"Fashion-MNIST ({split}) not found: no IDX files under {[str(f) for f in folders]}, and torchvision "
            f"could not download it into {download_root} ({type(err).__name__}: {err}). Install Debian's "
            "package (apt-get install dataset-fashion-mnist) or pass root= to a folder holding the .gz files."
        ) from err
    return ds.data.numpy().astype(np.uint8), ds.targets.numpy().astype(np.int64)


def load_fashion_mnist(split: str = "train", root: Optional[Union[str, Path]] = None) -> Tuple[np.ndarray, np.ndarray]:
    """Fashion-MNIST images and labels, read offline where possible.

    Looks for the IDX ``.gz`` files in ``root`` (or its torchvision layout ``FashionMNIST/raw``),
    then in ``/usr/share/datasets/fashion-mnist/`` (Debian's ``dataset-fashion-mnist``), and
    finally downloads them with ``torchvision.datasets.FashionMNIST(root, download=True)`` (into
    ``~/.cache/sgcl_plugin`` when ``root`` is None). Results are cached per process; treat the
    arrays as read-only.

    Args:
        split: ``"train"`` (60,000 items) or ``"test"`` (10,000 items).
        root: Optional folder with the files, or where torchvision may download them.

    Returns:
        ``(images, labels)``: uint8 (n, 28, 28) and int64 (n,) in [0, 9].

    Raises:
        ValueError: An unknown split.
        RuntimeError: The files are absent and the download failed.
    """
    if split not in _FILES:
        raise ValueError(f"split must be 'train' or 'test', got {split!r}.")
    return _load_cached(split, None if root is None else str(root))


def _load_background(name: str) -> np.ndarray:
    try:
        import skimage.data as skdata
    except ImportError as err:
        raise ImportError("Composed scenes need scikit-image for their backgrounds: pip install scikit-image") from err
    arr = np.asarray(getattr(skdata, name)())
    if arr.ndim == 2:
        arr = np.repeat(arr[:, :, None], 3, axis=2)
    return np.ascontiguousarray(arr[:, :, :3].astype(np.uint8))


class ComposedScenes(Dataset):
    """Multi-object scenes with exact ground truth: Fashion-MNIST items on real texture/photo crops.

    Item ``i`` is generated from ``(seed, i)`` alone by its own ``numpy`` Generator, so it is the
    same in every process and every epoch. Its background is a random square crop (half to all of
    the shorter side, maybe mirrored) of one of scikit-image's textures (brick, grass, gravel) or
    photos (coffee, chelsea, astronaut, rocket), resized to ``image_size``. Then 2-6 objects of the
    chosen Fashion-MNIST split are pasted, each resized to a random fraction ``object_scale`` of
    the image side, at a random place, coloured with a random hue whose brightness follows the
    item's grey level. An object's pixels are those whose resized grey level exceeds
    ``threshold`` (holes filled); later objects cover earlier ones, and a placement is rejected if
    it would leave an earlier object with less than ``min_visible`` of its pixels (partial overlap,
    never full occlusion). Masks are exactly the visible painted pixels, and boxes are their tight
    bounding boxes.

    Args:
        num_images: Number of scenes.
        image_size: Side of the square RGB images.
        min_objects: Fewest objects per scene.
        max_objects: Most objects per scene.
        seed: Seed of the whole dataset.
        split: Fashion-MNIST split the objects come from (``"train"`` for pretraining, ``"test"``
            for evaluation).
        object_scale: Range of an object's side as a fraction of ``image_size``.
        threshold: Grey level (0-255, after resizing) above which a pixel belongs to the object.
        min_visible: Smallest fraction of an object's pixels that later objects may leave visible.
        image_only: Items are just the PIL image (no masks built), e.g. for a saliency refresh.
        root: Fashion-MNIST folder (see :func:`load_fashion_mnist`).
        class_groups: Structured co-occurrence, as in real scenes (people with bicycles, cups on tables):
            each scene draws one group (uniformly) and all its objects from that group's classes, e.g.
            ``((0, 5), (1, 6), (2, 7), (3, 8), (4, 9))``. ``None`` (default): any class anywhere.

    Items are dicts ``{"image": PIL RGB image, "boxes": float32 (k, 4) normalized x0, y0, x1, y1
    (pixel (r, c) covers [c/W, (c+1)/W] x [r/H, (r+1)/H]), "labels": int64 (k,), "masks": bool
    (k, H, W), "index": int}``.

    Examples:
        >>> scenes = ComposedScenes(1000, split="train", seed=0)
        >>> item = scenes[0]
        >>> item["image"].size, item["boxes"].shape, item["masks"].shape
        ((224, 224), torch.Size([2, 4]), torch.Size([2, 224, 224]))
        >>> scenes.get_image(1).size  # only the image, without building masks
        (224, 224)
    """

    _backgrounds: ClassVar[Dict[str, np.ndarray]] = {}

    def __init__(
        self,
        num_images: int,
        image_size: int = 224,
        min_objects: int = 2,
        max_objects: int = 6,
        seed: int = 0,
        split: str = "train",
        object_scale: Tuple[float, float] = (0.15, 0.45),
        threshold: int = 24,
        min_visible: float = 0.5,
        image_only: bool = False,
        root: Optional[Union[str, Path]] = None,
        class_groups: Optional[Sequence[Sequence[int]]] = None,
    ) -> None:
        check_int("num_images", num_images, 0)
        check_int("image_size", image_size, 16)
        check_int("min_objects", min_objects, 1)
        check_int("max_objects (at least min_objects)", max_objects, min_objects)
        lo, hi = check_range("object_scale", object_scale, high=1)
        check_interval("min_visible", min_visible, 0, 1, high_open=True)
        self.num_images = int(num_images)
        self.image_size = int(image_size)
        self.min_objects = int(min_objects)
        self.max_objects = int(max_objects)
        self.seed = int(seed)
        self.split = split
        self.object_scale = (lo, hi)
        self.threshold = int(threshold)
        self.min_visible = float(min_visible)
        self.image_only = bool(image_only)
        self.objects, self.object_labels = load_fashion_mnist(split, root)
        self.class_groups: Optional[Tuple[Tuple[int, ...], ...]] = None
        self._by_class: Dict[int, np.ndarray] = {}
        if class_groups is not None:
            groups = tuple(tuple(int(c) for c in g) for g in class_groups)
            known = set(np.unique(self.object_labels).tolist())
            if not groups or any(not g or not set(g) <= known for g in groups):
                raise ValueError(
                    f"class_groups must be non-empty groups of labels in {sorted(known)}, got {class_groups!r}."
                )
            self.class_groups = groups
            used = sorted({c for g in groups for c in g})
            self._by_class = {c: np.flatnonzero(self.object_labels == c) for c in used}

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(num_images={self.num_images}, image_size={self.image_size}, "
            f"objects={self.min_objects}-{self.max_objects}, seed={self.seed}, split={self.split!r}, "
            f"object_scale={self.object_scale})"
        )

    def __len__(self) -> int:
        return self.num_images

    @classmethod
    def background_sources(cls) -> Dict[str, np.ndarray]:
        """The background photos and textures (RGB uint8), loaded once and shared by all instances."""
        if len(cls._backgrounds) < len(BACKGROUND_NAMES):
            for name in BACKGROUND_NAMES:
                if name not in cls._backgrounds:
                    cls._backgrounds[name] = _load_background(name)
        return cls._backgrounds

    def _rng(self, index: int) -> np.random.Generator:
        return np.random.default_rng([self.seed, index])

    def _background(self, rng: np.random.Generator) -> np.ndarray:
        sources = self.background_sources()
        src = sources[BACKGROUND_NAMES[int(rng.integers(len(BACKGROUND_NAMES)))]]
        H, W = src.shape[:2]
        side = max(16, int(round(rng.uniform(0.5, 1.0) * min(H, W))))
        y, x = int(rng.integers(0, H - side + 1)), int(rng.integers(0, W - side + 1))
        crop = src[y : y + side, x : x + side]
        if rng.random() < 0.5:
            crop = crop[:, ::-1]
        img = Image.fromarray(np.ascontiguousarray(crop)).resize((self.image_size,) * 2, Image.Resampling.BILINEAR)
        return np.asarray(img, dtype=np.float32)

    def _object(
        self, rng: np.random.Generator, group: Optional[Tuple[int, ...]] = None
    ) -> Tuple[int, np.ndarray, np.ndarray]:
        """A random object (of a class of ``group`` if given): its label, (s, s, 3) float colours, (s, s) mask."""
        while True:
            if group is None:
                i = int(rng.integers(len(self.objects)))
            else:
                pool = self._by_class[group[int(rng.integers(len(group)))]]
                i = int(pool[int(rng.integers(len(pool)))])
            side = max(8, int(round(rng.uniform(*self.object_scale) * self.image_size)))
            grey = Image.fromarray(self.objects[i]).resize((side, side), Image.Resampling.BILINEAR)
            g = np.asarray(grey, dtype=np.float32)
            mask = ndimage.binary_fill_holes(g > self.threshold)
            if mask.sum() >= 4:
                break
        hue, sat = rng.random(), rng.uniform(0.55, 1.0)
        rgb = np.array(colorsys.hsv_to_rgb(hue, sat, 1.0), dtype=np.float32) * 255.0
        value = 0.3 + 0.7 * g / 255.0  # object intensity from the grey level
        return int(self.object_labels[i]), value[:, :, None] * rgb, mask

    def compose(self, index: int) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Builds scene ``index``.

        Args:
            index: Scene index in ``[0, len(self))``.

        Returns:
            ``(image, masks, labels)``: uint8 (H, W, 3), bool (k, H, W) visible object pixels,
            int64 (k,) Fashion-MNIST labels, objects in pasting order.
        """
        if not 0 <= index < self.num_images:
            raise IndexError(f"Scene index {index} out of range for {self.num_images} scenes.")
        rng = self._rng(index)
        S = self.image_size
        canvas = self._background(rng)
        k = int(rng.integers(self.min_objects, self.max_objects + 1))
        group = None if self.class_groups is None else self.class_groups[int(rng.integers(len(self.class_groups)))]
        masks: List[np.ndarray] = []
        full_areas: List[int] = []
        labels: List[int] = []
        failures = 0
        while len(masks) < k and not (failures >= 20 and len(masks) >= self.min_objects):
            label, colours, local = self._object(rng, group)
            placed = None
            for _ in range(50):
                s = local.shape[0]
                y, x = int(rng.integers(0, S - s + 1)), int(rng.integers(0, S - s + 1))
                new = np.zeros((S, S), dtype=bool)
                new[y : y + s, x : x + s] = local
                if all((m & ~new).sum() >= self.min_visible * a for m, a in zip(masks, full_areas)):
                    placed = (y, x, new)
                    break
            if placed is None:  # too crowded for this object: draw another (smaller, maybe) one
                failures += 1
                continue
            y, x, new = placed
            s = local.shape[0]
            window = canvas[y : y + s, x : x + s]
            window[local] = colours[local]
            masks = [m & ~new for m in masks]
            masks.append(new)
            full_areas.append(int(local.sum()))
            labels.append(label)
        image = np.rint(canvas).clip(0, 255).astype(np.uint8)
        return image, np.stack(masks), np.asarray(labels, dtype=np.int64)

    def get_image(self, index: int) -> Image.Image:
        """Only the RGB image of scene ``index`` (no tensors built)."""
        return Image.fromarray(self.compose(index)[0])

    def __getitem__(self, index: int) -> Union[Image.Image, Dict[str, Any]]:
        index = int(index)
        if index < 0:
            index += self.num_images
        if self.image_only:
            return self.get_image(index)
        image, masks, labels = self.compose(index)
        return {
            "image": Image.fromarray(image),
            "boxes": masks_to_boxes(torch.from_numpy(masks)),
            "labels": torch.from_numpy(labels),
            "masks": torch.from_numpy(masks),
            "index": index,
        }


def masks_to_boxes(masks: Tensor) -> Tensor:
    """Tight boxes of boolean masks (k, H, W) in normalized ``x0, y0, x1, y1`` (pixel-edge) coordinates.

    Pixel (r, c) covers ``[c/W, (c+1)/W] x [r/H, (r+1)/H]``, the convention of
    :class:`~sgcl_plugin.regions.Regions`. An empty mask gets an all-zero box.

    Args:
        masks: Boolean masks (k, H, W).

    Returns:
        float32 (k, 4).
    """
    k, H, W = masks.shape
    boxes = torch.zeros(k, 4, dtype=torch.float32)
    rows, cols = masks.any(dim=2), masks.any(dim=1)
    for i in range(k):
        r, c = rows[i].nonzero().flatten(), cols[i].nonzero().flatten()
        if r.numel():
            boxes[i] = torch.tensor([c[0].item() / W, r[0].item() / H, (c[-1].item() + 1) / W, (r[-1].item() + 1) / H])
    return boxes


def _isolated(image: np.ndarray, mask: np.ndarray, window: Tuple[int, int, int, int]) -> Image.Image:
    """The window (x0, y0, x1, y1, may reach outside) of ``image`` with every pixel off ``mask`` grey."""
    x0, y0, x1, y1 = window
    H, W = mask.shape
    out = np.full((y1 - y0, x1 - x0, 3), 127, dtype=np.uint8)
    ya, yb, xa, xb = max(y0, 0), min(y1, H), max(x0, 0), min(x1, W)
    if ya < yb and xa < xb:
        keep = mask[ya:yb, xa:xb]
        out[ya - y0 : yb - y0, xa - x0 : xb - x0][keep] = image[ya:yb, xa:xb][keep]
    return Image.fromarray(out)


def object_crops(
    scenes: ComposedScenes,
    size: int,
    context: float = 0.25,
    max_crops: Optional[int] = None,
    isolate: bool = False,
) -> Tuple[Tensor, Tensor]:
    """Every object of some composed scenes, cut out by its true box, as a classification set.

    The in-domain counterpart of evaluating on isolated objects: each crop is the object's box grown
    to a square with ``context`` of its side added around it (so other objects and the textured
    background show, as in a scene), cut from the scene (zero outside the image) and resized.

    Args:
        scenes: The scenes (``image_only=False``).
        size: Side of the returned crops in pixels.
        context: Margin added around the square box, as a fraction of its side.
        max_crops: Stop after this many crops (``None``: all objects of all scenes).
        isolate: Show the object alone: every pixel outside its visible mask (background, other
            objects, outside the image) is mid-grey, so a probe reads the object and nothing else.

    Returns:
        ``(crops, labels)``: float (n, 3, size, size) in [0, 1] and int64 (n,) Fashion-MNIST labels.

    Example:
        >>> x, y = object_crops(ComposedScenes(100, image_size=160, split="test"), size=64)
        >>> x.shape[1:], len(x) == len(y)
        (torch.Size([3, 64, 64]), True)
    """
    check_int("size", size, 1)
    check_number("context", context, 0)
    if len(scenes) == 0:
        raise ValueError("object_crops: the scenes are empty.")
    crops: List[Tensor] = []
    labels: List[int] = []
    S = scenes.image_size
    for i in range(len(scenes)):
        image, masks, object_labels = scenes.compose(i)
        pil = Image.fromarray(image)
        boxes = masks_to_boxes(torch.from_numpy(masks)).tolist()
        for mask, box, label in zip(masks, boxes, object_labels.tolist()):
            x0, y0, x1, y1 = (v * S for v in box)
            if x1 <= x0 or y1 <= y0:
                continue
            half = max(x1 - x0, y1 - y0) * (1 + context) / 2
            cx, cy = (x0 + x1) / 2, (y0 + y1) / 2
            window = (round(cx - half), round(cy - half), round(cx + half), round(cy + half))
            source = _isolated(image, mask, window) if isolate else pil.crop(window)
            crop = source.resize((size, size), Image.Resampling.BILINEAR)
            crops.append(torch.from_numpy(np.asarray(crop).copy()).permute(2, 0, 1))
            labels.append(int(label))
        if max_crops is not None and len(crops) >= max_crops:
            break
    n = len(crops) if max_crops is None else min(len(crops), max_crops)
    return torch.stack(crops[:n]).float().div(255), torch.tensor(labels[:n], dtype=torch.int64)
