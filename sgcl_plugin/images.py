"""Images in, tensors out: the one decoder of images, the one RGB conversion and the one folder listing.

:func:`to_image_tensor` reads every image the library is given (the refresh, the crops, the viewer,
image folders); :class:`SaliencyInput` is the refresh's default resize and normalization;
:func:`to_rgb_image` turns a decoded file into 8-bit RGB the way :func:`to_image_tensor` reads it; and
:func:`list_image_files` is the rule for which files of a folder are images
(:class:`~sgcl_plugin.image_folder.ImageFiles` and the ``sgcl-saliency`` viewer both use it).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, List, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from sgcl_plugin.checks import check_not_meta
from sgcl_plugin.items import split_item

__all__ = [
    "IMAGENET_MEAN",
    "IMAGENET_STD",
    "IMAGE_EXTENSIONS",
    "SaliencyInput",
    "list_image_files",
    "to_image_tensor",
    "to_rgb_image",
]

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

IMAGE_EXTENSIONS: Tuple[str, ...] = (".jpg", ".jpeg", ".png", ".bmp", ".webp", ".tif", ".tiff")
"""File name endings (any case) that :func:`list_image_files` lists."""

_WIDE_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")
"""PIL's 16-bit, 32-bit integer and float modes: ``convert("RGB")`` would clip their values at 255."""


def to_image_tensor(image: Any) -> Tensor:
    """A (3, H, W) float tensor in [0, 1] from a PIL image, a (H, W[, C]) array or a (C, H, W) tensor.

    Dataset items (tuples, dicts) are read by :func:`~sgcl_plugin.items.split_item` first.
    """
    if isinstance(image, (tuple, list, dict)):
        image = split_item(image, -1).image
    if isinstance(image, Tensor):
        check_not_meta(image, "The image")
        t = image
        if t.ndim == 2:
            t = t[None]
        if t.ndim != 3:
            raise ValueError(f"Image tensors must be (C, H, W) or (H, W), got {tuple(t.shape)}.")
        t = _to_unit_range(t)
    else:
        sixteen = False
        if isinstance(image, Image.Image):
            # 16-bit and float modes keep their values (convert("RGB") would clip them to 255); PIL's 32-bit
            # integer mode "I" holds 16-bit PNGs: scaled by 65535 like them, whatever its largest value.
            sixteen = image.mode in _WIDE_MODES and image.mode != "F"
            image = np.asarray(image) if image.mode in _WIDE_MODES else np.asarray(image.convert("RGB"))
        if not isinstance(image, np.ndarray):
            raise TypeError(f"Cannot read an image from a {type(image).__name__}.")
        arr = image[:, :, None] if image.ndim == 2 else image
        if arr.ndim != 3:
            raise ValueError(f"Image arrays must be (H, W) or (H, W, C), got {image.shape}.")
        if arr.dtype.byteorder == ">" or (arr.dtype.kind == "u" and arr.dtype.itemsize == 2):  # unsupported by torch
            arr = arr.astype(np.int32 if arr.dtype.kind in "ui" else np.float32)
        uint16 = sixteen or (image.dtype.kind == "u" and image.dtype.itemsize == 2)  # either byte order
        t = _to_unit_range(torch.from_numpy(np.array(arr)).permute(2, 0, 1), uint16=uint16)
    if t.shape[0] == 1:
        t = t.expand(3, -1, -1)
    elif t.shape[0] == 4:
        t = t[:3]
    if t.shape[0] != 3:
        hint = (
            " A tensor is read channels first (C, H, W): this one looks like (H, W, C); use .permute(2, 0, 1)."
            if t.ndim == 3 and t.shape[-1] in (1, 3, 4)
            else ""
        )
        raise ValueError(f"Images must have 1, 3 or 4 channels, got {t.shape[0]}.{hint}")
    return t


def _to_unit_range(t: Tensor, uint16: bool = False) -> Tensor:
    """A float image in [0, 1]: uint8 / 255, 16-bit / 65535, floats as they are (must be in [0, 1]).

    Other integer types are scaled by 255 when they fit in 8 bits, else by 65535 when they fit in 16
    (PIL's "I" mode holds 16-bit PNGs); anything else is refused rather than silently clipped.
    """
    if t.dtype == torch.bool:
        return t.float()
    if t.is_floating_point():
        t = t.float()
        if t.numel() and not bool(torch.isfinite(t).all()):
            raise ValueError("The image contains NaN or Inf values.")
        if t.numel() and (float(t.min()) < -1e-3 or float(t.max()) > 1 + 1e-3):
            raise ValueError(
                f"Float images must hold values in [0, 1], got [{float(t.min()):.4g}, {float(t.max()):.4g}]: pass "
                "uint8 / uint16 pixels, or divide by 255 (or 65535) first; do not normalize before the transform."
            )
        return t
    if t.dtype == torch.uint8:
        return t.float() / 255.0
    uint16 = uint16 or t.dtype == getattr(torch, "uint16", None)
    if uint16:
        t = t.to(torch.int32)
    top = int(t.max()) if t.numel() else 0
    low = int(t.min()) if t.numel() else 0
    if low < 0 or top > 65535:
        raise ValueError(f"Integer images must hold values in [0, 65535], got [{low}, {top}].")
    return t.float() / (65535.0 if uint16 or top > 255 else 255.0)


class SaliencyInput:
    """The default refresh transform: image -> (3, size, size) tensor, resized and normalized."""

    def __init__(
        self, size: int = 640, mean: Sequence[float] = IMAGENET_MEAN, std: Sequence[float] = IMAGENET_STD
    ) -> None:
        self.size = int(size)
        self.mean = torch.tensor(mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(std, dtype=torch.float32)[:, None, None]

    def __call__(self, image: Any) -> Tensor:
        t = to_image_tensor(image)
        t = torch.nn.functional.interpolate(
            t[None], size=(self.size, self.size), mode="bilinear", antialias=True, align_corners=False
        )[0]
        return (t - self.mean) / self.std


def to_rgb_image(image: Image.Image) -> Image.Image:
    """An 8-bit RGB copy of a decoded PIL image, its pixels as :func:`to_image_tensor` reads them.

    Grey, palette, CMYK and RGBA images go through ``convert("RGB")`` (alpha dropped); 16-bit, 32-bit
    and float images (which ``convert("RGB")`` would clip to white) are scaled to 8 bits: 16-bit by
    65535, floats in [0, 1] by 255.

    Raises:
        ValueError: a wide-mode image whose values :func:`to_image_tensor` refuses (floats outside [0, 1],
            integers beyond 16 bits).
    """
    if image.mode not in _WIDE_MODES:
        return image.convert("RGB")
    t = to_image_tensor(image)  # (3, H, W) in [0, 1]: 16-bit / 65535, 8-bit values in "I" / 255
    pixels = t.mul(255).round().clamp(0, 255).byte().permute(1, 2, 0).contiguous().numpy()
    return Image.fromarray(pixels)  # (H, W, 3) uint8: RGB


def list_image_files(root: Union[str, Path], recursive: bool = True) -> List[Tuple[str, ...]]:
    """The image files under ``root``, as path components relative to it, sorted: the one listing rule.

    A file is listed when its name ends in one of :data:`IMAGE_EXTENSIONS` (any case), it is a regular
    file (a link to one counts; a named pipe, socket or device is left out, since opening it would block
    or read forever) and no part of its path is hidden (a name starting with ``"."``, e.g. macOS
    ``._x.jpg`` metadata files or a ``.cache/`` folder). Files are not opened. Symbolic links to
    folders are not followed.

    Args:
        root: The folder.
        recursive: Sub-folders too (:class:`~sgcl_plugin.image_folder.ImageFiles`); False lists the
            folder's own files only (the viewer, whose renderings may lie in a sub-folder).

    Returns:
        One tuple of path components per file, sorted by components (``("a.jpg",)``, ``("sub", "b.jpg")``).
    """
    found: List[Tuple[str, ...]] = []
    for folder, subfolders, names in os.walk(root):
        # never walk into hidden folders; not at all below root unless recursive
        subfolders[:] = [d for d in subfolders if recursive and not d.startswith(".")]
        relative = Path(folder).relative_to(root).parts
        found.extend((*relative, name) for name in names if _is_image_file(folder, name))
    return sorted(found)


def _is_image_file(folder: str, name: str) -> bool:
    """Whether file ``name`` of ``folder`` is listed: not hidden, an image extension, a regular file."""
    return (
        not name.startswith(".")
        and os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS
        and os.path.isfile(os.path.join(folder, name))  # S_ISREG after links: no FIFO, socket, device
    )
