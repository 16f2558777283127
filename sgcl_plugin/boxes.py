"""Box geometry: where crops lie, as pure functions on normalized xyxy boxes and image sizes.

The analogue of torchvision's ``transforms.functional`` for SGCL's crops: rule-R crops drawn inside
region boxes (:func:`sample_crops_in_boxes`, :func:`sample_crop_in_box`), BYOL's random-resized crops
of a whole image (:func:`random_resized_crop_boxes`, :func:`random_resized_crop_box`), the box jitter
of Eq. 6 (:func:`jitter_boxes`), cutting boxes out of an image (:func:`crop_and_resize`), and the
checks of boxes and crop sizes they share with the crop step (:mod:`sgcl_plugin.crops`).

Rule R (supplement B.3): for a region box b, a crop has an area uniform in ``scale`` x the area of
b (in pixels of the image, so that the aspect ratio is a pixel aspect ratio), an aspect ratio
log-uniform in ``ratio``, a centre uniform inside b; it is clipped to the image and snapped to
whole pixels (at least 1 x 1).

All samplers take an optional ``torch.Generator``; the default is torch's global RNG, which the
DataLoader seeds differently in every worker.
"""

from __future__ import annotations

import math
from typing import Any, Optional, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor

from sgcl_plugin.checks import check_int, check_number, check_range

__all__ = [
    "check_boxes",
    "check_crop_size",
    "crop_and_resize",
    "jitter_boxes",
    "random_resized_crop_box",
    "random_resized_crop_boxes",
    "sample_crop_in_box",
    "sample_crops_in_boxes",
]

_ATTEMPTS = 10  # random-resized-crop tries before the centre-crop fallback, as torchvision


# --------------------------------------------------------------------------------------- checks


def _check_image_size(image_size: Sequence[int]) -> Tuple[int, int]:
    try:
        H, W = (int(v) for v in image_size)
    except (TypeError, ValueError) as err:
        raise ValueError(f"image_size must be a pair (H, W) of pixel counts, got {image_size!r}.") from err
    if H < 1 or W < 1:
        raise ValueError(f"image_size must be at least 1 x 1 pixels, got {tuple(image_size)}.")
    return H, W


def check_boxes(boxes: Tensor, what: str = "boxes") -> Tensor:
    """``boxes`` as a float64 CPU tensor when they are (n, 4) non-empty normalized xyxy boxes in [0, 1].

    Args:
        boxes: The boxes to check.
        what: Their name in error messages (e.g. ``"bank[3] boxes"``).

    Raises:
        ValueError: not an (n, 4) tensor, NaN / Inf values, coordinates outside [0, 1], or an empty box
            (x1 <= x0 or y1 <= y0).
    """
    if not isinstance(boxes, Tensor) or boxes.ndim != 2 or boxes.shape[1] != 4:
        shape = tuple(boxes.shape) if isinstance(boxes, Tensor) else type(boxes).__name__
        raise ValueError(f"{what} must be a tensor of shape (n, 4) (normalized xyxy), got {shape}.")
    boxes = boxes.detach().to("cpu", torch.float64)
    if not torch.isfinite(boxes).all():
        raise ValueError(f"{what} contain NaN or Inf values.")
    if (boxes < 0).any() or (boxes > 1).any():
        raise ValueError(f"{what} must be normalized xyxy coordinates in [0, 1], got {boxes.tolist()}.")
    if (boxes[:, 2] <= boxes[:, 0]).any() or (boxes[:, 3] <= boxes[:, 1]).any():
        raise ValueError(f"{what} must be non-empty (x1 > x0 and y1 > y0), got {boxes.tolist()}.")
    return boxes


def check_crop_size(size: Any) -> int:
    """``size``, the side of square crops in pixels, as an ``int`` when it is an integer >= 2.

    Raises:
        ValueError: ``"size must be an integer >= 2, got <size>."``
    """
    return check_int("size", size, 2)


# ------------------------------------------------------------------------------------- sampling


def _snap(crop: Tensor, cx: Tensor, cy: Tensor, H: int, W: int) -> Tensor:
    """Clips pixel-space xyxy crops to the image, rounds them to whole pixels (>= 1 x 1)."""
    x0 = crop[:, 0].clamp(0, W).round()
    x1 = crop[:, 2].clamp(0, W).round()
    y0 = crop[:, 1].clamp(0, H).round()
    y1 = crop[:, 3].clamp(0, H).round()
    # A crop that rounds to nothing becomes the pixel holding its centre.
    px = cx.floor().clamp(0, W - 1)
    py = cy.floor().clamp(0, H - 1)
    thin, flat = x1 - x0 < 1, y1 - y0 < 1
    x0, x1 = torch.where(thin, px, x0), torch.where(thin, px + 1, x1)
    y0, y1 = torch.where(flat, py, y0), torch.where(flat, py + 1, y1)
    scale = torch.tensor([W, H, W, H], dtype=crop.dtype)
    return (torch.stack([x0, y0, x1, y1], dim=1) / scale).float()


def sample_crops_in_boxes(
    boxes: Tensor,
    image_size: Sequence[int],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
    clip: bool = True,
) -> Tensor:
    """One rule-R crop inside each of ``n`` boxes (the batched form of :func:`sample_crop_in_box`).

    Args:
        boxes: (n, 4) region boxes, normalized xyxy in [0, 1], non-empty.
        image_size: (H, W) of the image in pixels; areas and aspect ratios are measured in pixels.
        scale: Range of the crop area as a fraction of the **box** area (uniform).
        ratio: Range of the crop aspect ratio width / height (log-uniform).
        generator: Random source; torch's global RNG when omitted.
        clip: When False, return the raw crops (continuous, possibly reaching outside the image)
            instead of clipping and snapping them; the same generator state gives the same draws
            either way, so ``clip=False`` exposes the geometry behind each clipped crop.

    Returns:
        (n, 4) float32 crops, normalized xyxy. With ``clip=True`` they lie in [0, 1], sit on whole
        pixels and are at least one pixel wide and high.

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> boxes = torch.tensor([[0.2, 0.2, 0.6, 0.8], [0.0, 0.0, 1.0, 1.0]])
        >>> sample_crops_in_boxes(boxes, (480, 640), generator=g).shape
        torch.Size([2, 4])
    """
    boxes = check_boxes(boxes)
    H, W = _check_image_size(image_size)
    s_lo, s_hi = check_range("scale", scale)
    r_lo, r_hi = check_range("ratio", ratio)
    n = boxes.shape[0]
    u = torch.rand(n, 4, generator=generator, dtype=torch.float64)
    px = boxes * torch.tensor([W, H, W, H], dtype=torch.float64)
    bw, bh = px[:, 2] - px[:, 0], px[:, 3] - px[:, 1]
    area = (s_lo + (s_hi - s_lo) * u[:, 0]) * bw * bh
    aspect = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * u[:, 1])
    w, h = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
    cx, cy = px[:, 0] + bw * u[:, 2], px[:, 1] + bh * u[:, 3]
    crop = torch.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], dim=1)
    if not clip:
        return (crop / torch.tensor([W, H, W, H], dtype=torch.float64)).float()
    return _snap(crop, cx, cy, H, W)


def sample_crop_in_box(
    box: Tensor,
    image_size: Sequence[int],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """A crop by SGCL's rule R inside one region box.

    The crop area is uniform in ``scale`` x the box area (in pixels of the image), the aspect ratio
    (width / height in pixels) log-uniform in ``ratio``, the centre uniform inside the box; the
    crop is clipped to the image and snapped to whole pixels, at least one pixel wide and high. It
    may reach outside the box (up to half its size on each side), never outside the image.

    Args:
        box: (4,) region box, normalized xyxy in [0, 1], non-empty.
        image_size: (H, W) of the image in pixels.
        scale: Range of the crop area as a fraction of the box area.
        ratio: Range of the crop aspect ratio.
        generator: Random source; torch's global RNG when omitted.

    Returns:
        (4,) float32 crop, normalized xyxy in [0, 1].

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> crop = sample_crop_in_box(torch.tensor([0.25, 0.25, 0.75, 0.75]), (96, 96), generator=g)
        >>> crop.shape, bool((crop >= 0).all() and (crop <= 1).all())
        (torch.Size([4]), True)
    """
    if not isinstance(box, Tensor) or box.shape != (4,):
        shape = tuple(box.shape) if isinstance(box, Tensor) else type(box).__name__
        raise ValueError(f"box must be a tensor of shape (4,) (normalized xyxy), got {shape}.")
    return sample_crops_in_boxes(box[None], image_size, scale, ratio, generator)[0]


def jitter_boxes(
    boxes: Tensor,
    jitter: float,
    image_size: Sequence[int],
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """Moves every edge of each box by a uniform random amount, up to ``jitter`` x the box's side.

    The box jitter of SGCL's augmentation T (Eq. 6): each of the four edges of box ``b`` moves
    independently by ``u * jitter * side``, ``u`` uniform in [-1, 1] (``side`` = the box's width for
    x edges, its height for y edges); the result is clipped to the image and kept at least one pixel
    wide and high (a box whose edges cross keeps its original extent on that axis).

    Args:
        boxes: (n, 4) normalized xyxy boxes in [0, 1], non-empty.
        jitter: Largest move of an edge as a fraction of the box side, >= 0 (0 returns the boxes).
        image_size: (H, W) of the image in pixels (sets the one-pixel floor).
        generator: Random source; torch's global RNG when omitted.

    Returns:
        (n, 4) float32 boxes, normalized xyxy in [0, 1].

    Examples:
        >>> g = torch.Generator().manual_seed(0)
        >>> jitter_boxes(torch.tensor([[0.2, 0.2, 0.6, 0.6]]), 0.1, (100, 100), generator=g).shape
        torch.Size([1, 4])
    """
    boxes = check_boxes(boxes)
    H, W = _check_image_size(image_size)
    check_number("box jitter", jitter, 0)
    if jitter == 0:
        return boxes.float()
    u = torch.rand(boxes.shape[0], 4, generator=generator, dtype=torch.float64) * 2 - 1
    side = (boxes[:, 2:] - boxes[:, :2]).repeat(1, 2)  # (bw, bh, bw, bh)
    moved = (boxes + u * float(jitter) * side).clamp(0, 1)
    min_w, min_h = 1.0 / W, 1.0 / H
    bad_x = moved[:, 2] - moved[:, 0] < min_w
    bad_y = moved[:, 3] - moved[:, 1] < min_h
    moved[bad_x, 0::2] = boxes[bad_x, 0::2]
    moved[bad_y, 1::2] = boxes[bad_y, 1::2]
    return moved.float()


def random_resized_crop_boxes(
    n: int,
    image_size: Sequence[int],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """``n`` independent BYOL random-resized crops of a whole image (torchvision's rule).

    Area uniform in ``scale`` x the image area and aspect ratio log-uniform in ``ratio``, both in
    whole pixels, with the crop placed uniformly so that it lies **inside** the image; up to 10
    draws are tried per crop, after which the largest centred crop with an aspect ratio in
    ``ratio`` is used (as ``torchvision.transforms.RandomResizedCrop`` does). This is rule R on
    the whole image except that the crop is placed to fit rather than centred anywhere and clipped,
    which is what BYOL (the pre-refresh phase) does.

    Args:
        n: Number of crops.
        image_size: (H, W) of the image in pixels.
        scale: Range of the crop area as a fraction of the image area.
        ratio: Range of the crop aspect ratio.
        generator: Random source; torch's global RNG when omitted.

    Returns:
        (n, 4) float32 crops, normalized xyxy on whole pixels.

    Examples:
        >>> random_resized_crop_boxes(3, (480, 640), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([3, 4])
    """
    n = check_int("n", n, 1)
    H, W = _check_image_size(image_size)
    s_lo, s_hi = check_range("scale", scale)
    r_lo, r_hi = check_range("ratio", ratio)
    u = torch.rand(n, _ATTEMPTS + 1, 2, generator=generator, dtype=torch.float64)
    tries, place = u[:, :_ATTEMPTS], u[:, _ATTEMPTS]
    area = (s_lo + (s_hi - s_lo) * tries[..., 0]) * (H * W)
    aspect = torch.exp(math.log(r_lo) + (math.log(r_hi) - math.log(r_lo)) * tries[..., 1])
    w, h = torch.sqrt(area * aspect).round(), torch.sqrt(area / aspect).round()
    fits = (w >= 1) & (w <= W) & (h >= 1) & (h <= H)
    first = fits.to(torch.int64).argmax(dim=1, keepdim=True)
    w, h = w.gather(1, first)[:, 0], h.gather(1, first)[:, 0]
    # Fallback: the largest centred crop whose aspect ratio is within ``ratio``.
    if W / H < r_lo:
        fw, fh = W, min(H, max(1, round(W / r_lo)))
    elif W / H > r_hi:
        fw, fh = min(W, max(1, round(H * r_hi))), H
    else:
        fw, fh = W, H
    ok = fits.any(dim=1)
    w = torch.where(ok, w, torch.full_like(w, float(fw)))
    h = torch.where(ok, h, torch.full_like(h, float(fh)))
    left = torch.where(ok, (place[:, 0] * (W - w + 1)).floor().clamp(max=W - w), torch.full_like(w, (W - fw) // 2))
    top = torch.where(ok, (place[:, 1] * (H - h + 1)).floor().clamp(max=H - h), torch.full_like(h, (H - fh) // 2))
    crop = torch.stack([left, top, left + w, top + h], dim=1)
    return (crop / torch.tensor([W, H, W, H], dtype=torch.float64)).float()


def random_resized_crop_box(
    image_size: Sequence[int],
    scale: Sequence[float] = (0.08, 1.0),
    ratio: Sequence[float] = (3 / 4, 4 / 3),
    generator: Optional[torch.Generator] = None,
) -> Tensor:
    """One BYOL random-resized crop of a whole image; see :func:`random_resized_crop_boxes`.

    Args:
        image_size: (H, W) of the image in pixels.
        scale: Range of the crop area as a fraction of the image area.
        ratio: Range of the crop aspect ratio.
        generator: Random source; torch's global RNG when omitted.

    Returns:
        (4,) float32 crop, normalized xyxy on whole pixels, inside the image.

    Examples:
        >>> random_resized_crop_box((224, 224), generator=torch.Generator().manual_seed(0)).shape
        torch.Size([4])
    """
    return random_resized_crop_boxes(1, image_size, scale, ratio, generator)[0]


# -------------------------------------------------------------------------------------- cutting


def crop_and_resize(image: Tensor, boxes: Tensor, size: int) -> Tensor:
    """Cuts normalized xyxy boxes out of an image and resizes each to ``size`` x ``size``.

    Box edges are rounded to whole pixels (at least one pixel kept); resizing is bilinear with
    antialiasing, as torchvision's ``RandomResizedCrop`` does on tensors.

    Args:
        image: (C, H, W) float image.
        boxes: (n, 4) normalized xyxy boxes in [0, 1].
        size: Output side length.

    Returns:
        (n, C, size, size) crops, same dtype as ``image``.

    Examples:
        >>> crop_and_resize(torch.rand(3, 120, 160), torch.tensor([[0.0, 0.0, 0.5, 0.5]]), 32).shape
        torch.Size([1, 3, 32, 32])
    """
    size = check_crop_size(size)
    if not isinstance(image, Tensor) or image.ndim != 3:
        shape = tuple(image.shape) if isinstance(image, Tensor) else type(image).__name__
        raise ValueError(f"image must be a (C, H, W) tensor, got {shape}.")
    boxes = check_boxes(boxes)
    _, H, W = image.shape
    px = (boxes * torch.tensor([W, H, W, H], dtype=torch.float64)).round().long()
    x0, y0 = px[:, 0].clamp(0, W - 1), px[:, 1].clamp(0, H - 1)
    x1, y1 = torch.maximum(px[:, 2], x0 + 1), torch.maximum(px[:, 3], y0 + 1)
    out = image.new_empty(boxes.shape[0], image.shape[0], size, size)
    for k, (a, b, c, d) in enumerate(zip(x0.tolist(), y0.tolist(), x1.tolist(), y1.tolist())):
        patch = image[None, :, b:d, a:c]
        if patch.shape[-2:] == (size, size):
            out[k] = patch[0]
        else:
            out[k] = F.interpolate(patch, size=(size, size), mode="bilinear", antialias=True, align_corners=False)[0]
    return out
