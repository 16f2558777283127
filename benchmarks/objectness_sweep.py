"""Sweep the hierarchy mode's objectness exponents under written floors: the tool for choosing by a rule. (CPU)

How the frame exponent and the separation factor were chosen (docs/RESULTS.md#saliency-quality): write the rule
down first, sweep on the splits that may choose, keep the variants that meet every floor, take the best mean
CorLoc, and only then run the unseen split once. This script does the sweep and the floors:

    python benchmarks/objectness_sweep.py --vary frame=2,1,0.5 --vary separation=3,2
    python benchmarks/objectness_sweep.py --vary frame=2,1 --splits dev heldout test test2 --num-scenes 200
    python benchmarks/objectness_sweep.py --splits dev heldout test test2 --shortlist 40 \
        --vary saliency=0,1,2 --vary contrast=0,1,2,3 --vary frame=0,0.5,1,2 --vary activation=0,1,2 \
        --vary coherence=0,1,2 --vary separation=0,1,2,3,4

Every combination of the ``--vary`` values (exponents of ``OBJECTNESS_EXPONENTS``; the others stay at their
defaults) scores the hierarchy mode's candidates (strides 16 + 32, 448 px) with ImageNet EfficientNet-Lite0 on the
chosen real splits and on composed scenes, and with a randomly initialised ResNet-18 (a first refresh's young
network) on the composed scenes. The cuts and merges run once per backbone
(:func:`~sgcl_plugin.hierarchy.source_candidates`); each variant only re-scores the candidates
(:func:`~sgcl_plugin.hierarchy.select_regions`), so a grid of thousands of variants takes minutes when
``--shortlist K`` first ranks them by their top boxes alone and measures the K best in full. Per variant: CorLoc /
recall / pairs of each split, the mean and the pooled (over all the photos) CorLoc of the real splits, and whether
it meets the floors:

- Lite0 composed pairs >= ``--composed-pairs`` (38.5: the objects mode's) and composed CorLoc >= ``--composed-corloc``
  (50.0);
- on each real split, pairs >= random BYOL crops' + ``--pair-margin`` (15) and recall >= ``--recall`` (60);
- random ResNet-18 composed pairs >= the defaults' - ``--young-slack`` (2 points).

The ``test4`` split (annotated 2026-12-05, never run through a region source: kept unseen for the next choice) is
refused unless ``--unseen-ok`` says a rule is written down; ``test3`` was run once, for the rule chosen on 2026-12-05
(docs/RESULTS.md), and is choosing data since. Prints a markdown table and writes the rows as JSON (``--out``).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
from pathlib import Path
from typing import Dict, List, Tuple

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import saliency_quality as sq  # noqa: E402  (this folder's benchmark: scenes, features and metrics)

from sgcl_plugin import FeatureMaps  # noqa: E402
from sgcl_plugin.backbones import efficientnet_lite0, resnet_backbone  # noqa: E402
from sgcl_plugin.hierarchy import (  # noqa: E402
    OBJECTNESS_EXPONENTS,
    HierarchyCandidates,
    HierarchyOptions,
    select_regions,
    source_candidates,
)
from sgcl_plugin.spectral import CutOptions  # noqa: E402

UNSEEN = ("test4",)


def parse_vary(items: List[str]) -> Dict[str, List[float]]:
    """``["frame=2,1", "separation=3"]`` -> ``{"frame": [2.0, 1.0], "separation": [3.0]}`` (factors checked)."""
    out: Dict[str, List[float]] = {}
    for item in items:
        name, _, values = item.partition("=")
        if name not in OBJECTNESS_EXPONENTS or not values:
            factors = sorted(OBJECTNESS_EXPONENTS)
            raise SystemExit(f"--vary takes FACTOR=v1,v2,... with FACTOR one of {factors}: {item!r}")
        try:
            out[name] = [float(v) for v in values.split(",")]
        except ValueError:
            raise SystemExit(f"--vary {item!r}: the values must be numbers") from None
        if any(not 0 <= v < float("inf") for v in out[name]):
            raise SystemExit(f"--vary {item!r}: exponents are finite and >= 0")
    return out


def variants(vary: Dict[str, List[float]]) -> List[Dict[str, float]]:
    """The defaults first, then every combination of the varied exponents (each an override dict)."""
    names = sorted(vary)
    combos = [dict(zip(names, values)) for values in itertools.product(*(vary[n] for n in names))]
    default: Dict[str, float] = {}
    return [default] + [c for c in combos if any(c[n] != OBJECTNESS_EXPONENTS[n] for n in c)]


def candidates(features: Tuple[torch.Tensor, torch.Tensor], n: int) -> List[HierarchyCandidates]:
    """The default hierarchy source's candidates of every image (batches of 32, as the generator is timed): the
    cuts and merges run once, every variant only re-scores them."""
    out: List[HierarchyCandidates] = []
    for c in range(0, n, 32):
        fine, coarse = sq._rows(features, c, c + 32)  # type: ignore[misc]
        out += source_candidates(CutOptions(), HierarchyOptions(), fine, coarse)
    return out


def measure(
    items: List[Dict[str, object]], cands: List[HierarchyCandidates], overrides: Dict[str, float], pairs: int
) -> Dict[str, Tuple[float, float, float]]:
    regions = select_regions(cands, overrides or None)  # the generator's selection, HierarchyOptions' defaults
    out = {}
    for split in dict.fromkeys(str(it["set"]) for it in items):
        idx = [i for i, it in enumerate(items) if it["set"] == split]
        its, rs = [items[i] for i in idx], [regions[i] for i in idx]
        m = sq.region_metrics(its, rs)
        out[split] = (m["corloc"], m["recall"], sq.pair_rate(its, rs, pairs))
    return out


def top_box_hits(
    items: List[Dict[str, object]], cands: List[HierarchyCandidates], overrides: Dict[str, float]
) -> Dict[str, int]:
    """Images per split whose top box hits an object (CorLoc's numerator): the cheap first stage of a shortlist."""
    regions = select_regions(cands, overrides or None, max_regions=1)
    hits: Dict[str, int] = {}
    for it, r in zip(items, regions):
        hit = bool((sq.box_iou(r.boxes[:1], it["boxes"]) >= 0.5).any())  # type: ignore[arg-type]
        hits[str(it["set"])] = hits.get(str(it["set"]), 0) + hit
    return hits


def main(argv: List[str] = None) -> List[Dict[str, object]]:  # type: ignore[assignment]
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vary", action="append", default=[], help="FACTOR=v1,v2,... (repeatable)")
    parser.add_argument("--splits", nargs="+", default=["dev", "heldout"], help="real splits that may choose")
    parser.add_argument("--sources", nargs="+", default=None, help="photo sources (default: every installed one)")
    parser.add_argument("--num-scenes", type=int, default=200, help="composed scenes")
    parser.add_argument("--pairs", type=int, default=16, help="pairs drawn per image for the pair rate")
    parser.add_argument("--composed-pairs", type=float, default=38.5)
    parser.add_argument("--composed-corloc", type=float, default=50.0)
    parser.add_argument("--pair-margin", type=float, default=15.0)
    parser.add_argument("--recall", type=float, default=60.0)
    parser.add_argument("--young-slack", type=float, default=2.0)
    parser.add_argument("--unseen-ok", action="store_true", help="allow test4 (once the rule is written down)")
    parser.add_argument("--shortlist", type=int, default=0,
                        help="measure fully only the K variants whose top boxes hit the most real photos (pooled) "
                             "among those meeting the composed CorLoc floor; 0: every variant")  # fmt: skip
    parser.add_argument("--out", default="", help="JSON of the rows (default: none)")
    args = parser.parse_args(argv)
    vary = parse_vary(args.vary)
    from sgcl_plugin.annotated_photos import SPLITS

    bad = [s for s in args.splits if s not in SPLITS]
    if bad:
        raise SystemExit(f"unknown splits {bad}; choose from {SPLITS}")
    if any(s in UNSEEN for s in args.splits) and not args.unseen_ok:
        raise SystemExit(f"{[s for s in args.splits if s in UNSEEN]} is kept unseen: write the rule down, then pass "
                         "--unseen-ok")  # fmt: skip
    if args.num_scenes < 1:
        raise SystemExit("--num-scenes must be >= 1 (the floors read the composed scenes)")
    if args.shortlist < 0:
        raise SystemExit("--shortlist must be >= 0")
    items = sq.scenes(args.num_scenes, splits=list(args.splits), sources=args.sources)
    real = [s for s in args.splits if any(it["set"] == s for it in items)]
    if not real:
        raise SystemExit(f"no photo of {args.splits} is installed (make photos)")
    composed = [it for it in items if it["set"] == "composed"]
    torch.manual_seed(0)
    lite, r18 = efficientnet_lite0().eval(), resnet_backbone("resnet18").eval()
    cands = {}
    for name, bb, its in (("lite0", lite, items), ("r18", r18, composed)):
        f32, _ = sq.features(bb, its, 448, bb.mean, bb.std)
        f16, _ = sq.features(FeatureMaps(bb, stride=16), its, 448, bb.mean, bb.std)
        cands[name] = candidates((f16, f32), len(its))
    random_pairs = {s: sq.pair_rate([it for it in items if it["set"] == s], None, args.pairs) for s in real}
    counts = {s: sum(1 for it in items if it["set"] == s) for s in real}
    photos = sum(counts.values())
    todo = variants(vary)
    if args.shortlist and len(todo) > args.shortlist + 1:
        ranked = []
        for k, overrides in enumerate(todo[1:], 1):
            hits = top_box_hits(items, cands["lite0"], overrides)
            if 100 * hits.get("composed", 0) / len(composed) >= args.composed_corloc:
                ranked.append((-sum(hits.get(s, 0) for s in real), k))
        print(f"shortlist: {len(ranked)} of {len(todo) - 1} variants meet the composed CorLoc floor; measuring the "
              f"{min(args.shortlist, len(ranked))} whose top boxes hit the most photos", flush=True)  # fmt: skip
        todo = [todo[0]] + [todo[k] for _, k in sorted(ranked)[: args.shortlist]]
    rows: List[Dict[str, object]] = []
    young_floor = None
    for overrides in todo:
        lite_m = measure(items, cands["lite0"], overrides, args.pairs)
        young = measure(composed, cands["r18"], overrides, args.pairs)["composed"][2]
        if young_floor is None:  # the defaults come first
            young_floor = young - args.young_slack
        c = lite_m["composed"]
        misses = []
        if c[2] < args.composed_pairs or c[0] < args.composed_corloc:
            misses.append("composed")
        misses += [f"{s} pairs" for s in real if lite_m[s][2] < random_pairs[s] + args.pair_margin]
        misses += [f"{s} recall" for s in real if lite_m[s][1] < args.recall]
        if young < young_floor:
            misses.append("young network")
        pooled = sum(lite_m[s][0] * counts[s] for s in real) / photos
        rows.append({"exponents": {**OBJECTNESS_EXPONENTS, **overrides}, "overrides": overrides,
                     "lite0": {s: list(v) for s, v in lite_m.items()}, "r18_composed_pairs": young,
                     "mean_corloc": sum(lite_m[s][0] for s in real) / len(real), "pooled_corloc": pooled,
                     "misses": misses})  # fmt: skip
        print(f"{overrides or 'defaults'}: mean CorLoc {rows[-1]['mean_corloc']:.1f}, pooled {pooled:.1f}, "
              f"misses {misses}", flush=True)  # fmt: skip
    head = " | ".join(f"Lite0 {s}" for s in real)
    print(f"\n| exponents | {head} | Lite0 composed | random ResNet-18 composed pairs | mean CorLoc | pooled CorLoc "
          "| meets the floors |")  # fmt: skip
    print("|---|" + "---|" * (len(real) + 5))
    for r in rows:
        lm = r["lite0"]
        cells = " | ".join("{:.1f} / {:.1f} / {:.1f}".format(*lm[s]) for s in real + ["composed"])  # type: ignore[index]
        name = ", ".join(f"{k} {v:g}" for k, v in r["overrides"].items()) or "defaults"  # type: ignore[union-attr]
        meets = "yes" if not r["misses"] else "no (" + ", ".join(r["misses"]) + ")"  # type: ignore[arg-type]
        print(f"| {name} | {cells} | {r['r18_composed_pairs']:.1f} | {r['mean_corloc']:.1f} | {r['pooled_corloc']:.1f} "
              f"| {meets} |")  # fmt: skip
    print("random BYOL crops' pairs: " + ", ".join(f"{s} {v:.1f}" for s, v in random_pairs.items()))
    if args.out:
        Path(args.out).write_text(json.dumps({"random_pairs": random_pairs, "rows": rows}, indent=1))
    return rows


if __name__ == "__main__":
    main()
