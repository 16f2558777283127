"""Pictures of saliency: heat maps with scored region boxes and their legend, crop pairs, contact sheets.

:func:`render_saliency` draws an image beside its saliency heat map with the region boxes;
:func:`render_pairs` draws the positive pairs of an image; :func:`contact_sheet` tiles named pictures.
Boxes are normalized ``x0, y0, x1, y1`` (:func:`box_to_pixels`), so they hold at any display size:
:func:`enlarge_for_display` brings a photo of a few pixels up to a readable size first. The
``sgcl-saliency`` command that writes them for a folder of images is :mod:`sgcl_plugin.viewer`.
"""

from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

from sgcl_plugin.checks import check_int, check_interval
from sgcl_plugin.regions import Regions

__all__ = [
    "BOX_COLORS",
    "box_to_pixels",
    "contact_sheet",
    "enlarge_for_display",
    "heat_colormap",
    "render_pairs",
    "render_saliency",
]

# Piecewise-linear "jet"-like heat colour map: dark blue (0) -> cyan -> green -> yellow -> dark red (1).
_HEAT_ANCHORS = np.array(
    [
        [0.00, 0, 0, 128],
        [0.15, 0, 0, 255],
        [0.35, 0, 255, 255],
        [0.50, 0, 255, 0],
        [0.65, 255, 255, 0],
        [0.85, 255, 0, 0],
        [1.00, 128, 0, 0],
    ],
    dtype=np.float64,
)

# Box colours, one per region rank (cycled): chosen to stand out on the heat map.
BOX_COLORS: Tuple[Tuple[int, int, int], ...] = (
    (255, 255, 255),
    (255, 0, 255),
    (255, 160, 0),
    (0, 255, 255),
    (170, 255, 0),
    (255, 105, 180),
    (160, 160, 255),
    (255, 255, 0),
)


def heat_colormap(values: Union[np.ndarray, Tensor]) -> np.ndarray:
    """Maps values in [0, 1] to RGB colours of a jet-like heat map (blue = low, red = high).

    Args:
        values: Array of any shape; values outside [0, 1] are clipped, NaNs become 0.

    Returns:
        uint8 array of shape ``values.shape + (3,)``.

    Examples:
        >>> heat_colormap(np.array([0.0, 0.5, 1.0])).tolist()
        [[0, 0, 128], [0, 255, 0], [128, 0, 0]]
    """
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    v = np.nan_to_num(np.asarray(values, dtype=np.float64), nan=0.0).clip(0.0, 1.0)
    rgb = [np.interp(v, _HEAT_ANCHORS[:, 0], _HEAT_ANCHORS[:, c]) for c in (1, 2, 3)]
    return np.rint(np.stack(rgb, axis=-1)).astype(np.uint8)


def _font(size: int) -> Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]:
    try:
        return ImageFont.load_default(size=size)  # Pillow >= 10.1 with FreeType: scalable
    except TypeError:  # pragma: no cover - older Pillow: fixed bitmap font
        return ImageFont.load_default()


def _text_size(
    draw: ImageDraw.ImageDraw, text: str, font: Union[ImageFont.ImageFont, ImageFont.FreeTypeFont]
) -> Tuple[int, int]:
    x0, y0, x1, y1 = draw.textbbox((0, 0), text, font=font)
    return int(x1 - min(x0, 0)), int(y1 - min(y0, 0))


def enlarge_for_display(image: Image.Image, min_side: int = 256, max_side: Optional[int] = None) -> Image.Image:
    """A small photo enlarged so that its shorter side is ``min_side`` pixels (nearest neighbour: its own pixels,
    bigger), aspect ratio kept to rounding; drawn at its native size, a photo of 40 x 30 px would be hidden under
    its boxes and labels.

    Args:
        image: The photo.
        min_side: The shorter side to reach; 0 leaves every photo as it is.
        max_side: The longer side the enlargement stops at (None: ``4 * min_side``, so that a sliver of a photo
            does not grow to a giant); a photo already past it stays.

    Returns:
        ``image`` itself when it is large enough (or cannot grow within ``max_side``), else an enlarged copy.

    Examples:
        >>> enlarge_for_display(Image.new("RGB", (40, 30))).size
        (341, 256)
        >>> enlarge_for_display(Image.new("RGB", (400, 300))).size
        (400, 300)
    """
    check_int("min_side", min_side, 0)
    if max_side is not None:
        check_int("max_side (or None)", max_side, 1)
    width, height = image.size
    factor = min_side / min(width, height)
    # A sliver (1 x 1000 px) would grow to 256 x 256,000: the longer side stops at 4 * min_side (or its own).
    factor = min(factor, max(1.0, 4 * min_side / max(width, height)))
    if max_side is not None:
        factor = min(factor, max_side / max(width, height))
    if factor <= 1:
        return image
    size = (max(1, round(width * factor)), max(1, round(height * factor)))
    return image.resize(size, Image.Resampling.NEAREST)


def _upsample(saliency_map: Tensor, height: int, width: int) -> np.ndarray:
    s = saliency_map.detach().to("cpu", torch.float32)
    if s.ndim != 2:
        raise ValueError(f"saliency_map must be (h, w), got {tuple(s.shape)}.")
    up = torch.nn.functional.interpolate(s[None, None], size=(height, width), mode="bilinear", align_corners=False)
    return up[0, 0].numpy()


def box_to_pixels(box: Sequence[float], width: int, height: int) -> Tuple[int, int, int, int]:
    """Normalized ``x0, y0, x1, y1`` box -> inclusive pixel corners ``(left, top, right, bottom)``.

    Args:
        box: Box in normalized image coordinates (see :class:`~sgcl_plugin.regions.Regions`).
        width: Image width in pixels.
        height: Image height in pixels.

    Returns:
        Integer corners, clamped to the image, ``right >= left`` and ``bottom >= top``.
    """
    x0, y0, x1, y1 = (float(v) for v in box)
    left = min(max(int(round(x0 * width)), 0), width - 1)
    top = min(max(int(round(y0 * height)), 0), height - 1)
    right = min(max(int(round(x1 * width)) - 1, left), width - 1)
    bottom = min(max(int(round(y1 * height)) - 1, top), height - 1)
    return left, top, right, bottom


def _rects_overlap(a: Tuple[int, int, int, int], b: Tuple[int, int, int, int]) -> bool:
    return a[0] <= b[2] and b[0] <= a[2] and a[1] <= b[3] and b[1] <= a[3]


def _place_label(
    box: Tuple[int, int, int, int],
    size: Tuple[int, int],
    line: int,
    W: int,
    H: int,
    taken: List[Tuple[int, int, int, int]],
) -> Optional[Tuple[int, int, int, int]]:
    """Where a label of ``size`` goes for a box: above its top-left corner, inside it, below it, or inside its
    top-right corner, the first spot within the image that no placed label covers; None if none is free."""
    left, top, right, bottom = box
    tw, th = size
    if tw > W or th > H:
        return None
    for x, y in (
        (left, top - th - 1),
        (left + line, top + line),
        (left, bottom + 1),
        (right - tw - line, top + line),
        (left + line, bottom - th - line),
    ):
        x, y = min(max(x, 0), W - tw), min(max(y, 0), H - th)
        rect = (x, y, x + tw - 1, y + th - 1)
        if not any(_rects_overlap(rect, t) for t in taken):
            return rect
    return None


def _legend(
    regions: Regions,
    k: int,
    width: int,
    widths: Sequence[int],
    font: Union[ImageFont.ImageFont, ImageFont.FreeTypeFont],
) -> Image.Image:
    """The strip under a rendering: what the boxes and the colours mean, and each drawn box's score."""
    probe = ImageDraw.Draw(Image.new("RGB", (1, 1)))
    th = _text_size(probe, "Ag#0.9", font)[1]
    pad = max(4, th // 3)
    entries = []
    for i in range(k):
        text = f"#{i + 1}  score {float(regions.scores[i]):.2f}"
        if regions.fallback:
            text += " (no region: whole image)"
        entries.append(text)
    entry_w = max([_text_size(probe, e, font)[0] for e in entries] + [1]) + 3 * th + 2 * pad
    per_row = max(1, (width - pad) // max(entry_w, 1))
    rows = (k + per_row - 1) // per_row if k else 0
    header = "Boxes: the regions that pairs are cropped from, best first (thickest); a region's score sets how often."
    bar_text = ("saliency:", "low", "high")
    line_h = th + pad
    height = pad + line_h * (1 + rows + 1) + pad
    strip = Image.new("RGB", (width, height), (255, 255, 255))
    draw = ImageDraw.Draw(strip)
    y = pad
    draw.text(
        (pad, y),
        header if _text_size(probe, header, font)[0] < width - pad else "Boxes: best first",
        fill=(0, 0, 0),
        font=font,
    )
    y += line_h
    for i, text in enumerate(entries):
        r, c = divmod(i, per_row)
        x0, y0 = pad + c * entry_w, y + r * line_h
        color = BOX_COLORS[i % len(BOX_COLORS)]
        sw = 2 * th
        draw.rectangle((x0, y0 + 1, x0 + sw, y0 + th - 1), outline=(0, 0, 0), width=1)
        draw.rectangle((x0 + 1, y0 + 2, x0 + sw - 1, y0 + th - 2), outline=color, width=max(1, min(widths[i], th // 3)))
        draw.text((x0 + sw + pad, y0), text, fill=(0, 0, 0), font=font)
    y += rows * line_h
    x = pad
    draw.text((x, y), bar_text[0], fill=(0, 0, 0), font=font)
    x += _text_size(probe, bar_text[0], font)[0] + pad
    draw.text((x, y), bar_text[1], fill=(0, 0, 0), font=font)
    x += _text_size(probe, bar_text[1], font)[0] + pad
    bar_w = max(8, min(width // 3, width - x - _text_size(probe, bar_text[2], font)[0] - 2 * pad))
    colours = heat_colormap(np.linspace(0.0, 1.0, bar_w))
    for j in range(bar_w):
        draw.line((x + j, y + 2, x + j, y + th - 2), fill=tuple(int(v) for v in colours[j]))
    draw.text((x + bar_w + pad, y), bar_text[2], fill=(0, 0, 0), font=font)
    return strip


def render_saliency(
    image: Image.Image,
    saliency_map: Tensor,
    regions: Regions,
    alpha: float = 0.5,
    gap: int = 8,
    max_boxes: Optional[int] = None,
    legend: bool = True,
) -> Image.Image:
    """The image beside its saliency heat map overlay with the scored region boxes, and a legend.

    The map (any resolution, values in [0, 1]) is upsampled bilinearly to the image, coloured with
    :func:`heat_colormap` and blended over the photo; each region's box (normalized coordinates, so
    they hold whatever the saliency input size was) is drawn in image pixels, the best region on
    top and thickest, each labelled with its rank and score where the label fits without covering
    another; the legend under both panels lists every drawn box's rank, colour and score and the
    heat map's colours.

    Args:
        image: The original photo (any mode; shown as RGB).
        saliency_map: (h, w) saliency map in [0, 1], e.g. ``SaliencyResult.maps[i]``.
        regions: The map's :class:`~sgcl_plugin.regions.Regions`.
        alpha: Weight of the heat map in the overlay.
        gap: White pixels between the two panels.
        max_boxes: Draw only the highest-scoring regions; all of them when None.
        legend: Add the legend strip under the panels.

    Returns:
        RGB image of width ``2 * W + gap``: the original on the left, the overlay on the right, height
        ``H`` plus the legend's.
    """
    check_interval("alpha", alpha)
    rgb = image.convert("RGB")
    W, H = rgb.size
    photo = np.asarray(rgb, dtype=np.float32)
    heat = heat_colormap(_upsample(saliency_map, H, W)).astype(np.float32)
    overlay = Image.fromarray(np.rint((1.0 - alpha) * photo + alpha * heat).clip(0, 255).astype(np.uint8))

    draw = ImageDraw.Draw(overlay)
    k = len(regions) if max_boxes is None else min(len(regions), max_boxes)
    base = max(2, round(min(W, H) / 100))
    widths = [max(1, round(base * (1.6 if i == 0 else 1.0 - 0.5 * i / max(k - 1, 1)))) for i in range(k)]
    font = _font(max(10, min(24, round(min(W, H) / 22))))
    corners = [box_to_pixels(regions.boxes[i].tolist(), W, H) for i in range(k)]
    # Boxes worst first, so the best one ends on top; then the labels, best first, where they fit.
    for i in reversed(range(k)):
        left, top, right, bottom = corners[i]
        color = BOX_COLORS[i % len(BOX_COLORS)]
        draw.rectangle((left, top, right, bottom), outline=(0, 0, 0), width=widths[i] + 2)
        if right - left >= 2 and bottom - top >= 2:
            draw.rectangle((left + 1, top + 1, right - 1, bottom - 1), outline=color, width=widths[i])
    taken: List[Tuple[int, int, int, int]] = []
    pad = 2
    for i in range(k):
        label = f"#{i + 1} {float(regions.scores[i]):.2f}"
        tw, th = _text_size(draw, label, font)
        spot = _place_label(corners[i], (tw + 2 * pad, th + 2 * pad), widths[i], W, H, taken)
        if spot is None:
            continue  # the legend still lists it
        taken.append(spot)
        draw.rectangle(spot, fill=BOX_COLORS[i % len(BOX_COLORS)], outline=(0, 0, 0))
        draw.text((spot[0] + pad, spot[1] + pad), label, fill=(0, 0, 0), font=font)

    canvas = Image.new("RGB", (2 * W + gap, H), (255, 255, 255))
    canvas.paste(rgb, (0, 0))
    canvas.paste(overlay, (W + gap, 0))
    if not legend:
        return canvas
    strip = _legend(regions, k, canvas.width, widths, _font(max(11, min(20, round(canvas.width / 60)))))
    out = Image.new("RGB", (canvas.width, H + strip.height), (255, 255, 255))
    out.paste(canvas, (0, 0))
    out.paste(strip, (0, H))
    return out


def render_pairs(
    image: Image.Image,
    views1: Tensor,
    views2: Tensor,
    labels: Optional[Sequence[str]] = None,
    scale: int = 4,
) -> Image.Image:
    """The positive pairs of one image: both crops of pair ``i`` drawn in colour ``i`` (view 1 solid, view 2
    dashed), optionally labelled (e.g. whether the pair shows one object).

    Args:
        image: The training image (shown enlarged by ``scale``, nearest-neighbour, so small scenes stay sharp).
        views1: (t, 4) view-1 crop boxes of the t pairs, normalized ``x0, y0, x1, y1``.
        views2: (t, 4) view-2 crop boxes.
        labels: Per pair, a short text drawn on view 1 (e.g. "same object", from
            :func:`sgcl_plugin.testbed.metrics.shown_object`).
        scale: Enlargement factor of the image.

    Returns:
        RGB image of the enlarged size.
    """
    if views1.shape != views2.shape or views1.ndim != 2 or views1.shape[-1] != 4:
        raise ValueError(f"Need two (t, 4) box tensors, got {tuple(views1.shape)} and {tuple(views2.shape)}.")
    if labels is not None and len(labels) != len(views1):
        raise ValueError(f"labels has {len(labels)} entries for {len(views1)} pairs.")
    check_int("scale", scale, 1)
    rgb = image.convert("RGB")
    rgb = rgb.resize((rgb.width * scale, rgb.height * scale), Image.Resampling.NEAREST)
    W, H = rgb.size
    draw = ImageDraw.Draw(rgb)
    line = max(2, round(min(W, H) / 150))
    font = _font(max(12, round(min(W, H) / 16)))
    dash = 3 * line  # view 2: a dashed outline
    for i in range(len(views1)):
        color = BOX_COLORS[i % len(BOX_COLORS)]
        left, top, right, bottom = box_to_pixels(views2[i].tolist(), W, H)
        for x in range(left, right, 2 * dash):
            draw.line((x, top, min(x + dash, right), top), fill=color, width=line)
            draw.line((x, bottom, min(x + dash, right), bottom), fill=color, width=line)
        for y in range(top, bottom, 2 * dash):
            draw.line((left, y, left, min(y + dash, bottom)), fill=color, width=line)
            draw.line((right, y, right, min(y + dash, bottom)), fill=color, width=line)
        left, top, right, bottom = box_to_pixels(views1[i].tolist(), W, H)
        draw.rectangle((left, top, right, bottom), outline=color, width=line)
        if labels is not None:
            label = str(labels[i])
            tw, th = _text_size(draw, label, font)
            tx, ty = min(left + line, max(W - tw - 4, 0)), min(top + line, max(H - th - 4, 0))
            draw.rectangle((tx, ty, tx + tw + 4, ty + th + 4), fill=color)
            draw.text((tx + 2, ty + 2), label, fill=(0, 0, 0), font=font)
    return rgb


def contact_sheet(
    images: Sequence[Tuple[str, Image.Image]],
    columns: int = 2,
    tile_width: int = 640,
    gap: int = 12,
    background: Tuple[int, int, int] = (255, 255, 255),
) -> Image.Image:
    """Tiles named images into one grid, each scaled to ``tile_width`` with its name above it.

    Args:
        images: ``(name, image)`` pairs, laid out row by row.
        columns: Tiles per row (fewer when there are fewer images).
        tile_width: Width every image is resized to (aspect ratio kept).
        gap: Margin between tiles and around the sheet.
        background: Sheet colour.

    Returns:
        RGB image of width ``columns * (tile_width + gap) + gap``.
    """
    if not images:
        raise ValueError("contact_sheet needs at least one image.")
    check_int("columns", columns, 1)
    check_int("tile_width", tile_width, 1)
    columns = min(columns, len(images))
    font = _font(max(12, tile_width // 32))
    label_h = _text_size(ImageDraw.Draw(Image.new("RGB", (1, 1))), "Ag", font)[1] + 6
    tiles = []
    for name, im in images:
        im = im.convert("RGB")
        h = max(1, round(im.height * tile_width / im.width))
        tiles.append((name, im.resize((tile_width, h), Image.Resampling.LANCZOS)))
    rows = [tiles[r : r + columns] for r in range(0, len(tiles), columns)]
    row_heights = [label_h + max(t.height for _, t in row) for row in rows]
    sheet = Image.new("RGB", (columns * (tile_width + gap) + gap, sum(row_heights) + gap * (len(rows) + 1)), background)
    draw = ImageDraw.Draw(sheet)
    y = gap
    for row, row_h in zip(rows, row_heights):
        for c, (name, tile) in enumerate(row):
            x = gap + c * (tile_width + gap)
            draw.text((x, y), name, fill=(0, 0, 0), font=font)
            sheet.paste(tile, (x, y + label_h))
        y += row_h + gap
    return sheet
