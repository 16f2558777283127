"""Pretraining ablation: the paper's Tables 4, 6, 7 and 8 in miniature, several seeds per row.

Reproduce (2-core CPU, about two hours each; results are kept, a rerun only does the missing runs):

    python benchmarks/ablation.py                      # the evidence testbed -> docs/RESULTS.md#testbed
    python benchmarks/ablation.py --config cpu         # the ImageNet-start miniature of the paper's tables
    python benchmarks/ablation.py --config gpu         # the larger configuration, for a GPU
    python benchmarks/ablation.py --smoke              # every row once on tiny data (what CI runs)
    python benchmarks/ablation.py --rows byol,sgcl-byol --seeds 0 1 2 -- --epochs 8   # a subset, extra options

Every row is one run of the trainer (sgcl_plugin.train) per seed, in this process, with the configuration's
options plus the row's own; arguments after ``--`` go to every run. Each finished run is appended to
``<out>/results.json`` at once, so an interrupted benchmark resumes where it stopped (``--fresh``
starts over). The report gives mean +- std over seeds of the kNN and linear-probe accuracy on objects
cut from held-out composed scenes, the difference to the BYOL baseline, the wall time per epoch
(refreshes excluded), the share of the whole run spent in saliency refreshes, what the refreshes
found, accuracy-vs-epoch curves and the saliency pictures of successive refreshes.
"""

from __future__ import annotations

import argparse
import json
import platform
import shutil
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch

from sgcl_plugin import train as sgcl_train
from sgcl_plugin.testbed.eval_sets import evaluate_backbone

ROOT = Path(__file__).resolve().parents[1]


def markers(config_name: str) -> Tuple[str, str]:
    """The comments around a configuration's block in the doc: each configuration has its own."""
    return f"<!-- pretraining-ablation-{config_name}:begin -->", f"<!-- pretraining-ablation-{config_name}:end -->"


# name -> (method, options, label). The full SGCL row uses the configuration's t and refresh interval.
ROWS: Dict[str, Tuple[str, Tuple[str, ...], str]] = {
    "untrained": ("byol", ("--no-sgcl", "--epochs", "0"), "untrained network (no step)"),
    "byol": ("byol", ("--no-sgcl",), "BYOL (random crops)"),
    # The SGCL rows kept from before the hierarchy mode ran the objects mode (then the trainer's default): they
    # name it, so that a rerun means what the kept runs mean.
    "byol+crops": ("byol", ("--regions", "objects", "--no-inter", "--no-scores"), "+ SGCL crops"),
    "byol+crops+scores": (
        "byol",
        ("--regions", "objects", "--no-inter"),
        "+ scores, no inter-image loss (= SGCL-SimCLR's default)",
    ),
    "byol+crops+inter": ("byol", ("--regions", "objects", "--inter", "--no-scores"), "+ inter-image loss"),
    "sgcl-byol": ("byol", ("--regions", "objects", "--inter"), "+ scores = SGCL-BYOL"),
    "hier-crops": ("byol", ("--regions", "hierarchy", "--no-inter", "--no-scores"), "+ SGCL crops, hierarchy mode"),
    "hier-photo-crops": (
        "byol",
        ("--regions", "hierarchy", "--photo-ranking", "--no-inter", "--no-scores"),
        "+ SGCL crops, hierarchy mode, photo ranking (option)",
    ),
    "hier-crops+scores": (
        "byol",
        ("--regions", "hierarchy", "--no-inter"),
        "+ scores, hierarchy mode (= SGCL-SimCLR's default since 0.2)",
    ),
    "simclr": ("simclr", ("--no-sgcl",), "SimCLR (random crops)"),
    "sgcl-simclr": ("simclr", ("--regions", "objects"), "SGCL-SimCLR"),
    "sgcl-paper": ("byol", ("--regions", "paper", "--saliency-stride", "32"), "SGCL, paper mode (bipartition)"),
    "paper-crops": (
        "byol",
        ("--regions", "paper", "--saliency-stride", "32", "--no-inter", "--no-scores"),
        "SGCL, paper mode, crops only (no inter, no scores)",
    ),
    "heatmap": ("byol", ("--regions", "heatmap"), "regions from a ContrastiveCrop-style heat map"),
    "gt": ("byol", ("--regions", "gt"), "regions = ground-truth boxes (upper bound of the full method)"),
    "gt-crops": (
        "byol",
        ("--regions", "gt", "--no-inter", "--no-scores"),
        "ground-truth crops only (no inter, no scores)",
    ),
    "t1": ("byol", ("--regions", "objects", "--num-regions", "1"), "t = 1"),
    "t2": ("byol", ("--regions", "objects", "--num-regions", "2"), "t = 2"),
    "t4": ("byol", ("--regions", "objects", "--num-regions", "4"), "t = 4"),
    "interval-alt": ("byol", ("--regions", "objects"), "refresh interval (alternative)"),  # + the configuration's
    "warmup": ("byol", ("--regions", "objects"), "first refresh after a warm-up"),  # + the configuration's
}

TABLES: List[Tuple[str, str, List[str]]] = [
    ("Components (paper Table 4)", "BYOL 76.9, + crops 78.6, + inter 81.1, + scores 83.2",
     ["byol", "byol+crops", "byol+crops+scores", "hier-crops", "hier-crops+scores", "byol+crops+inter", "sgcl-byol",
      "gt-crops", "gt"]),
    ("SimCLR (paper: VOC07 75.3 -> 78.5)", "", ["simclr", "sgcl-simclr"]),
    ("Where the regions come from (paper Table 7)", "Selective Search 80.3, SGCL 83.2, ground truth 84.7",
     ["byol", "heatmap", "sgcl-paper", "sgcl-byol", "gt", "paper-crops", "byol+crops", "hier-crops", "gt-crops"]),
    ("Region pairs per image t (paper Table 8)", "t = 1 / 2 / 4 / 8: 78.7 / 80.8 / 83.2 / 84.4",
     ["t1", "t2", "t4", "sgcl-byol"]),
    ("Refresh interval (paper Table 6)", "every 5 / 10 / 20 / 50 epochs: 83.3 / 83.2 / 83.0 / 82.7",
     ["sgcl-byol", "interval-alt", "warmup"]),
]  # fmt: skip

CONFIGS: Dict[str, Dict[str, Any]] = {
    # The evidence testbed (issue 11; docs/RESULTS.md#testbed): the trainer's --testbed preset (cluttered composed
    # scenes, tiny ResNet, 48 epochs) with SimCLR as the base method (BYOL does not beat the untrained network in
    # this budget). About 5 minutes a run on a 2-core CPU: 30 training runs and 3 evaluations, about 2.5 h (two
    # processes: split the rows with --rows and --out, merge the results.json files).
    "testbed": {
        "method": "simclr",
        # --inter: every SGCL row runs the BYOL recipe's inter-image loss (SimCLR's default is off); the crops-only
        # rows (byol+crops, gt-crops) switch it off again.
        "options": ["--testbed", "--inter"],
        "interval_alt": 16,
        "warmup": 16,
        "rows": ["untrained", "byol", "gt-crops", "gt", "byol+crops", "byol+crops+scores", "hier-crops",
                 "hier-crops+scores", "sgcl-byol", "sgcl-paper", "paper-crops", "heatmap", "t1", "t4", "warmup"],
        "seeds": [0, 1, 2],
        # two more seeds for the gate's rows and SGCL's crops (about 1 h more on 2 cores)
        "more_seeds": {"seeds": [3, 4], "rows": ["untrained", "byol", "gt-crops", "byol+crops", "byol+crops+scores",
                                                  "hier-crops", "hier-crops+scores"]},
        "summary": "evidence_summary.json",
    },
    # about 85 minutes for 11 rows x 3 seeds on a 2-core CPU (24 steps per run: a miniature indeed). The
    # backbone starts from ImageNet weights (EfficientNet-Lite0, the one pretrained network available
    # offline) and SGCL refreshes before the first step: from random weights no CPU-sized run gets past
    # the phase where training lowers object accuracy below that of the random network (docs/RESULTS.md).
    "cpu": {
        "options": ["--arch", "efficientnet-lite0", "--lr", "3e-4", "--num-images", "192", "--epochs", "4",
                    "--refresh-at-start", "--every-n-epochs", "2", "--eval-every", "2",
                    "--eval-train", "1000", "--eval-test", "1000", "--pictures", "6"],
        "interval_alt": 4,
        "seeds": [0, 1, 2],
    },
    # a GPU: 12x the scenes, the paper's 96 px crops, 5x the epochs, kornia augmentations on the device
    "gpu": {
        "options": ["--arch", "efficientnet-lite0", "--lr", "1e-3", "--num-images", "4096", "--image-size", "224",
                    "--crop-size", "96", "--saliency-size", "448", "--epochs", "20", "--refresh-at-start",
                    "--every-n-epochs", "5", "--batch-size", "128", "--warmup-epochs", "2", "--augment-on-device",
                    "--workers", "8", "--eval-every", "5", "--eval-train", "4000", "--eval-test", "2000"],
        "interval_alt": 10,
        "seeds": [0, 1, 2],
    },
    # the demo's setting: ResNet-18 from random weights, refreshes at epochs 2 and 4, curves every epoch
    "scratch": {
        "options": ["--arch", "resnet18", "--num-images", "512", "--epochs", "5", "--eval-every", "1"],
        "interval_alt": 1,
        "seeds": [0],
    },
    "smoke": {
        # the testbed's small network, evaluated before training and at the end (a two-point curve): a row takes a
        # few seconds on a CPU (a ResNet-18 row took ~14 s, most of it in the evaluations)
        "options": ["--smoke", "--arch", "tiny-resnet", "--eval-every", "2"],
        "interval_alt": 2, "warmup": 1, "seeds": [0], "drop_weights": True,
    },
}  # fmt: skip


BASELINES = {"sgcl-simclr": "simclr"}  # the row each row is compared with; BYOL when not listed
# The upper bound of each row: crops alone are measured against ground-truth crops alone, the full method
# (inter-image loss and scores on) against ground-truth regions with the same losses.
ORACLES = {"byol+crops": "gt-crops", "byol+crops+scores": "gt-crops", "gt-crops": "gt-crops", "paper-crops": "gt-crops"}


def method_label(label: str, config: Dict[str, Any]) -> str:
    """A row's label with the configuration's base method named (SimCLR in the testbed)."""
    method = {"byol": "BYOL", "simclr": "SimCLR", "nnclr": "NNCLR"}[config.get("method", "byol")]
    if method == "SimCLR" and label.endswith("= SGCL-BYOL"):  # SGCL-SimCLR has no inter-image loss
        return label.replace("= SGCL-BYOL", "(SGCL-BYOL's recipe: crops, inter-image loss, scores)")
    return label.replace("BYOL", method)


def start_weights(config: Dict[str, Any]) -> str:
    arch = sgcl_train.parse_args(config["options"]).arch
    return f"{arch}, ImageNet weights" if arch.startswith("efficientnet") else f"{arch}, random weights"


def interval_label(config: Dict[str, Any], alternative: bool) -> str:
    a = sgcl_train.parse_args(config["options"])
    n = config["interval_alt"] if alternative else a.every_n_epochs
    text = f"refresh every {n} epoch{'s' if n > 1 else ''}"
    if n >= a.epochs:
        text += " (only " + ("the one before the first step)" if a.refresh_at_start else "never)")
    return text + ("" if alternative else " = SGCL-BYOL")


def row_argv(name: str, config: Dict[str, Any], seed: int, out: Path, extra: Sequence[str]) -> List[str]:
    method, options, _ = ROWS[name]
    if method == "byol":  # the configuration's base method (BYOL unless it names another)
        method = config.get("method", "byol")
    argv = ["--method", method, *config["options"], *options, "--seed", str(seed), "--out", str(out), "--no-progress"]
    if name == "interval-alt":
        argv += ["--every-n-epochs", str(config["interval_alt"])]
    if name == "warmup":
        warmup = config.get("warmup", 2 * sgcl_train.parse_args(config["options"]).every_n_epochs)
        argv += ["--first-refresh", str(warmup)]
    return [*argv, *extra]


def run_key(name: str, seed: int) -> str:
    return f"{name}/seed{seed}"


def load_results(path: Path) -> Dict[str, Dict[str, Any]]:
    return json.loads(path.read_text()) if path.exists() else {}


def save_results(path: Path, results: Dict[str, Dict[str, Any]]) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(results, indent=1))
    tmp.replace(path)


def run_all(
    rows: Sequence[str],
    seeds: Sequence[int],
    config: Dict[str, Any],
    out: Path,
    extra: Sequence[str],
    fresh: bool,
    more: Sequence[Tuple[str, int]] = (),
) -> Dict[str, Dict[str, Any]]:
    """Runs every (row, seed) of ``rows`` x ``seeds``, then the pairs ``more``, keeping finished ones."""
    out.mkdir(parents=True, exist_ok=True)
    path = out / "results.json"
    results = {} if fresh else load_results(path)
    wanted = [(r, s) for s in seeds for r in rows] + [p for p in more if p[0] in rows and p[1] not in seeds]
    todo = [(r, s) for r, s in wanted if run_key(r, s) not in results]
    print(f"{len(todo)} run(s) to do, {len(wanted) - len(todo)} kept from {path}", flush=True)
    for i, (name, seed) in enumerate(todo):
        run_dir = out / name / f"seed{seed}"
        if run_dir.exists():
            shutil.rmtree(run_dir)
        argv = row_argv(name, config, seed, run_dir, extra)
        print(f"[{i + 1}/{len(todo)}] {name} seed {seed}: sgcl_train.py {' '.join(argv)}", flush=True)
        t0 = time.perf_counter()
        result = sgcl_train.main(argv)
        result["total_seconds"] = time.perf_counter() - t0
        result["argv"] = argv
        results[run_key(name, seed)] = result
        save_results(path, results)
        # A finished run is never resumed (it is kept in results.json and its folder is cleared before a
        # rerun): its checkpoint (~180 MB for a ResNet-18 with BYOL's target and optimizer) only fills the disk.
        (run_dir / "checkpoint.pt").unlink(missing_ok=True)
        if config.get("drop_weights"):
            (run_dir / "backbone.pt").unlink(missing_ok=True)
        print(
            f"    knn {100 * result['knn']:.2f}%  linear {100 * result['linear']:.2f}%  "
            f"{result['seconds_per_epoch']:.1f} s/epoch  {result['total_seconds']:.0f} s in all",
            flush=True,
        )
    return results


def rescore(results: Dict[str, Dict[str, Any]], out: Path, weights: Sequence[Path]) -> int:
    """Adds the probes a kept run lacks (the dense probe came after the first testbed runs) from its saved
    backbone: ``<dir>/<row>/seed<s>/backbone.pt`` under ``out`` or one of ``weights``. The run's own options
    rebuild the network and its evaluation; its pooled accuracies must come out as kept (within 0.1 point),
    which proves the weights are the run's. Returns how many runs were rescored."""
    done = 0
    for key, run in sorted(results.items()):
        if all(k in run for k, _ in PROBES) or run.get("knn") is None:
            continue
        name, seed = key.rsplit("/", 1)
        found = [d / name / seed / "backbone.pt" for d in (out, *weights) if (d / name / seed / "backbone.pt").exists()]
        if not found:
            print(f"    {key}: no backbone.pt under {out} or {', '.join(map(str, weights)) or 'other folders'}")
            continue
        args = sgcl_train.parse_args(run["argv"])
        backbone = sgcl_train.SSLModel(args.method, args.arch, args.hidden_dim, args.proj_dim, args.width).backbone
        backbone.load_state_dict(torch.load(found[0], map_location="cpu", weights_only=True))
        accuracies = evaluate_backbone(backbone, **sgcl_train.evaluation_settings(args))
        if any(abs(accuracies[k] - run[k]) > 1e-3 for k in ("knn", "linear")):
            raise RuntimeError(
                f"{key}: {found[0]} gives kNN / linear {accuracies['knn']:.4f} / {accuracies['linear']:.4f}, the run "
                f"kept {run['knn']:.4f} / {run['linear']:.4f}: these are not the run's weights."
            )
        run.update({k: v for k, v in accuracies.items() if k not in run}, rescored_from=str(found[0]))
        print(f"    {key}: " + ", ".join(f"{n} {100 * accuracies[k]:.1f}" for k, n in PROBES if k in accuracies))
        done += 1
    return done


# ----------------------------------------------------------------------------- report


def mean_std(values: Sequence[float], scale: float = 1.0, digits: int = 1) -> str:
    if not values:
        return "-"
    v = np.asarray(values, dtype=float) * scale
    if len(v) == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def signed(deltas: Sequence[float]) -> str:
    """Paired differences in points: mean +- std, and on how many seeds the row was better."""
    if not deltas:
        return "-"
    v = 100 * np.asarray(deltas, dtype=float)
    spread = f" ± {v.std(ddof=1):.1f}" if len(v) > 1 else ""
    return f"{v.mean():+.1f}{spread} ({int((v > 0).sum())}/{len(v)})"


PROBES: Tuple[Tuple[str, str], ...] = (
    ("dense_knn", "dense kNN"), ("dense_linear", "dense linear"), ("knn", "kNN"), ("linear", "linear"),
)  # fmt: skip
"""The accuracies of a run (sgcl_plugin.testbed.eval_sets.evaluate_backbone): the dense probe (each feature-map
cell of a whole held-out scene classified as the object covering it) and the pooled probes (one vector per object
crop)."""


def probes_of(runs: Sequence[Dict[str, Any]]) -> List[str]:
    """The probes every run has (runs from before the dense probe have only the pooled two)."""
    return [k for k, _ in PROBES if runs and all(k in r for r in runs)]


def row_summary(runs: List[Dict[str, Any]], base: Optional[List[Dict[str, Any]]]) -> Dict[str, str]:
    refresh = [sum(x["seconds"] for x in r["refreshes"]) for r in runs]
    share = [f / r["total_seconds"] for f, r in zip(refresh, runs)]
    s: Dict[str, str] = {
        "epoch": mean_std([r["seconds_per_epoch"] for r in runs]),
        "refresh": mean_std(share, 100) + "%" if any(refresh) else "-",
        "seeds": str(len(runs)),
    }
    by_seed = {int(r["seed"]): r for r in base or []}
    for key in probes_of(runs):
        s[key] = mean_std([r[key] for r in runs], 100)
        if base and all(key in r for r in base):  # paired by seed: the same scenes, initial weights and eval sets
            s[f"d_{key}"] = signed([r[key] - by_seed[int(r["seed"])][key] for r in runs if int(r["seed"]) in by_seed])
    return s


def oracle_fraction(
    runs: List[Dict[str, Any]], base: List[Dict[str, Any]], oracle: List[Dict[str, Any]], key: str
) -> str:
    """The share of the oracle's gain over the baseline that a row recovers: (row - base) / (gt - base), on
    means over seeds; undefined ("-") where the oracle does not beat the baseline."""
    if not runs or not base or not oracle:
        return "-"
    row, b, gt = (float(np.mean([r[key] for r in rs])) for rs in (runs, base, oracle))
    if gt - b < 0.02:  # the gate's 2-point floor: a smaller gain makes the fraction noise
        return "- (oracle gain < 2 points)"
    return f"{100 * (row - b) / (gt - b):.0f}%"


def pair_rates(runs: List[Dict[str, Any]]) -> str:
    """Same-object pair rate of the row's training pairs before training and after each refresh (mean over
    seeds, %): what its crops show, measured as they are drawn."""
    start = [r["pair_rate_start"] for r in runs if r.get("pair_rate_start") is not None]
    if not start:
        return "-"
    values = [float(np.mean(start))]
    for i in range(min(len(r["refreshes"]) for r in runs)):
        rates = [r["refreshes"][i].get("pair_rate") for r in runs]
        if any(v is None for v in rates):
            break
        values.append(float(np.mean(rates)))
    return " → ".join(f"{100 * v:.1f}" if v < 0.1 else f"{100 * v:.0f}" for v in values)


def gate(grouped: Dict[str, List[Dict[str, Any]]]) -> Optional[Dict[str, Any]]:
    """The testbed's validity gate (issue 11): ground-truth crops beat random-crop BYOL by more than 3 standard
    deviations of the paired per-seed differences and by >= 2 points, on the kNN and on the linear probe, over
    >= 3 seeds; and trained BYOL beats the untrained network (mean over seeds, both probes). The probes are the
    dense ones where every run involved has them (the pooled ones otherwise)."""
    oracle = "gt-crops" if grouped.get("gt-crops") else "gt"  # crops from the true boxes, alone if measured
    byol, gt, untrained = grouped.get("byol", []), grouped.get(oracle, []), grouped.get("untrained", [])
    if not byol or not gt:
        return None
    dense = all(k in r for r in [*byol, *gt, *untrained] for k in ("dense_knn", "dense_linear"))
    keys = ("dense_knn", "dense_linear") if dense else ("knn", "linear")
    by_seed = {int(r["seed"]): r for r in byol}
    seeds = sorted(int(r["seed"]) for r in gt if int(r["seed"]) in by_seed)
    out: Dict[str, Any] = {"oracle": oracle, "seeds": seeds, "probes": list(keys)}
    holds = len(out["seeds"]) >= 3
    for key in keys:
        d = np.array([100 * (r[key] - by_seed[int(r["seed"])][key]) for r in gt if int(r["seed"]) in by_seed])
        sd = float(d.std(ddof=1)) if len(d) > 1 else float("nan")
        ok = bool(len(d) >= 3 and d.mean() >= 2.0 and d.mean() > 3 * sd)
        out[f"gt_minus_byol_{key}"] = {"mean": float(d.mean()), "std": sd, "holds": ok}
        holds = holds and ok
        if untrained:
            gain = 100 * (np.mean([r[key] for r in byol]) - np.mean([r[key] for r in untrained]))
            out[f"byol_minus_untrained_{key}"] = float(gain)
            holds = holds and gain > 0
        else:
            holds = False
    out["holds"] = bool(holds)
    return out


def gate_lines(g: Optional[Dict[str, Any]], method: str = "BYOL") -> List[str]:
    if g is None:
        return []
    names = dict(PROBES)
    parts = []
    for key in g["probes"]:
        d = g[f"gt_minus_byol_{key}"]
        parts.append(f"{names[key]} {d['mean']:+.1f} ± {d['std']:.1f} ({'holds' if d['holds'] else 'fails'})")
    trained = [
        f"{names[k]} {g[f'byol_minus_untrained_{k}']:+.1f}" for k in g["probes"] if f"byol_minus_untrained_{k}" in g
    ]
    verdict = "**holds**" if g["holds"] else "**does not hold**"
    untrained = f"{method} - untrained: {', '.join(trained)}" if len(trained) == 2 else "no untrained row"
    text = (
        f"**Validity gate** (ground-truth crops beat {method} by > 3 std of the paired differences and >= 2 points on "
        f"both probes ({' and '.join(names[k] for k in g['probes'])}) over >= 3 seeds, and {method} beats the "
        f"untrained network): {verdict}. Ground truth - {method}, paired over seeds {g['seeds']} (row "
        f"`{g['oracle']}`): {', '.join(parts)}; {untrained}."
    )
    return [text, ""]


def evidence_summary(
    grouped: Dict[str, List[Dict[str, Any]]], seeds: Sequence[int], config_name: str, method: str = "byol"
) -> Dict[str, Any]:
    """The machine-readable summary: accuracies in %, per seed in the order of ``seeds`` (None: not run). The row
    ``byol`` is the base method's random-crop row (``method``: SimCLR in the testbed)."""

    def per_seed(runs: List[Dict[str, Any]], key: str) -> List[Optional[float]]:
        by_seed = {int(r["seed"]): r for r in runs}
        return [round(100 * by_seed[s][key], 2) if s in by_seed and key in by_seed[s] else None for s in seeds]

    untrained = grouped.get("untrained", [])
    summary: Dict[str, Any] = {"config": config_name, "method": method, "seeds": list(seeds)}
    if untrained:
        summary["untrained"] = {
            k: round(100 * float(np.mean([r[k] for r in untrained])), 2) for k in probes_of(untrained)
        }
    summary["rows"] = {
        name: {
            k: per_seed(runs, k) for k in ("knn", "linear", "dense_knn", "dense_linear") if any(k in r for r in runs)
        }
        for name, runs in grouped.items()
        if runs and name != "untrained"
    }
    summary["gate"] = gate(grouped)
    return summary


def refresh_summary(runs: List[Dict[str, Any]]) -> str:
    stats = [x for r in runs for x in r["refreshes"]]
    if not stats:
        return "-"
    regions = np.mean([x["regions_per_image"] for x in stats])
    area = np.mean([x["mean_top_box_area"] for x in stats])
    return f"{regions:.2f} / {area:.2f}"


def plot_curves(grouped: Dict[str, List[Dict[str, Any]]], rows: Sequence[str], path: Path) -> Optional[Path]:
    """kNN and linear accuracy vs epochs, mean over seeds, one line per row."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib is not installed: no accuracy-vs-epochs plot (pip install -e '.[bench]')")
        return None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharex=True)
    colours = plt.get_cmap("tab20")
    for name in rows:
        runs = grouped.get(name, [])
        curves = [r["history"] for r in runs if r.get("history")]
        if not curves:
            continue
        epochs = sorted({h["epoch"] for c in curves for h in c})
        style = "-" if ROWS[name][0] == "byol" else "--"
        for ax, key in zip(axes, ("knn", "linear")):
            means = []
            for e in epochs:
                vals = [h[key] for c in curves for h in c if h["epoch"] == e]
                means.append(100 * float(np.mean(vals)))
            k = list(ROWS).index(name)  # the same colour for a row in every configuration's plot
            ax.plot(epochs, means, style, marker="o", ms=3, label=name, color=colours((2 * k) % 20 + k // 10))
    for ax, title in zip(axes, ("kNN top-1 (%)", "linear probe (%)")):
        ax.set_xlabel("epoch")
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.set_title(title)
        ax.grid(alpha=0.3)
    axes[1].legend(fontsize=8, loc="best")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def copy_pictures(out: Path, images: Path, seed: int, config_name: str) -> List[Path]:
    """The saliency pictures of the full SGCL row (one seed), downscaled into docs/images."""
    from sgcl_vs_baseline import shrink

    src = out / "sgcl-byol" / f"seed{seed}" / "saliency"
    pictures = sorted(src.glob("refresh_*.png")) + sorted(src.glob("final.png"))
    images.mkdir(parents=True, exist_ok=True)
    for old in images.glob(f"ablation_{config_name}_*.png"):
        old.unlink()
    copied = []
    for pic in pictures:
        dst = images / f"ablation_{config_name}_{pic.name}"
        shrink(pic, dst)
        copied.append(dst)
    return copied


def more_seeds_note(config: Dict[str, Any], seeds: Sequence[int]) -> str:
    more = config.get("more_seeds")
    if not more or not set(more["seeds"]) & set(seeds):
        return ""
    return f"; seeds {', '.join(map(str, more['seeds']))} only for the rows {', '.join(f'`{r}`' for r in more['rows'])}"


def report(
    results: Dict[str, Dict[str, Any]],
    rows: Sequence[str],
    seeds: Sequence[int],
    config_name: str,
    config: Dict[str, Any],
    command: str,
    images: Optional[Path],
    out: Path,
) -> str:
    grouped: Dict[str, List[Dict[str, Any]]] = {}
    for name in rows:
        runs = []
        for seed in seeds:
            r = results.get(run_key(name, seed))
            if r is not None:
                runs.append({**r, "seed": seed})
        grouped[name] = runs
    first = next((r for runs in grouped.values() for r in runs), None)
    device = "CPU only"
    if torch.cuda.is_available():
        device = "GPU " + torch.cuda.get_device_name(0)
    begin, end = markers(config_name)
    lines = [
        begin,
        f"Reproduce: `{command}` (configuration `{config_name}`: "
        f"`{' '.join(config['options'])}`; alternative refresh interval {config['interval_alt']}; "
        f"seeds {', '.join(map(str, seeds))}{more_seeds_note(config, seeds)}).",
        "",
        f"Machine: {platform.machine()}, {torch.get_num_threads()} torch threads, torch {torch.__version__}, "
        f"{device}. Same scenes, initial weights and evaluation sets for every row of a seed; "
        "Δ is the paired difference to the row's baseline of the same seed (SimCLR for SGCL-SimCLR, "
        f"{method_label('BYOL', config)} for every other row), in points, with the number of seeds on which "
        "the row beat it. Accuracies in %, "
        "mean ± sample std over seeds. Wall times are medians per epoch without refreshes; the refresh share "
        "is the refreshes' part of the whole run (evaluations included).",
        "",
    ]
    untrained = grouped.get("untrained", [])
    if untrained:
        accuracies = ", ".join(f"{name} {mean_std([r[k] for r in untrained], 100)}" for k, name in PROBES
                               if k in probes_of(untrained))  # fmt: skip
        lines += [
            f"The untrained network ({start_weights(config)}, no step): {accuracies}. "
            "A row that ends below this number has lost object information in training.",
            "",
        ]
    elif first is not None and first.get("history"):
        init = [r["history"][0] for runs in grouped.values() for r in runs if r.get("history")]
        init = [h for h in init if h["epoch"] == 0]
        if init:
            lines += [
                f"The backbone before any training step (epoch 0: {start_weights(config)}): kNN "
                f"{mean_std([h['knn'] for h in init], 100)}, linear {mean_std([h['linear'] for h in init], 100)}. "
                "A row that ends below this number has lost object information in training.",
                "",
            ]
    lines += gate_lines(gate(grouped), method_label("BYOL", config))
    names_of = dict(PROBES)
    for title, paper, names in TABLES:
        names = [n for n in names if grouped.get(n)]
        if not names or names == ["sgcl-byol"]:  # nothing but the row shown in the first table
            continue
        keys = [k for k, _ in PROBES if any(k in probes_of(grouped[n]) for n in names)]
        fraction_keys = keys[:2]  # the gate's probes: dense where measured
        lines += [f"### {title}", ""]
        if paper:
            lines += [f"Paper (COCO, VOC07 mAP): {paper}.", ""]
        lines += [
            "| row | "
            + " | ".join(f"{names_of[k]} | Δ {names_of[k]}" for k in keys)
            + f" | of oracle gain ({' / '.join(names_of[k] for k in fraction_keys)}) | same-object pairs, % "
            "(start → refreshes) | s / epoch | refresh share | regions / image, top box area | seeds |",
            "|---|" + "---|---|" * len(keys) + "---|---|---|---|---|---|",
        ]
        for n in names:
            reference = grouped.get(BASELINES.get(n, "byol")) if n not in ("byol", "simclr") else None
            s = row_summary(grouped[n], reference)
            oracle, bound = "-", ORACLES.get(n, "gt")
            if reference and n != bound and BASELINES.get(n, "byol") == "byol" and grouped.get(bound):
                oracle = " / ".join(
                    oracle_fraction(grouped[n], reference, grouped[bound], k)
                    if all(k in r for r in [*grouped[n], *reference, *grouped[bound]]) else "-"
                    for k in fraction_keys
                )  # fmt: skip
            label = method_label(ROWS[n][2], config)
            if n == "interval-alt" or (n == "sgcl-byol" and title.startswith("Refresh")):
                label = interval_label(config, n == "interval-alt")
            elif n == "sgcl-byol" and title.startswith("Where"):
                label = method_label("SGCL, objects mode (k-way Ncut) = SGCL-BYOL", config)
            elif n == "byol+crops" and title.startswith("Where"):
                label = "SGCL, objects mode, crops only (no inter, no scores)"
            elif n == "warmup":
                a = sgcl_train.parse_args(row_argv(n, config, seeds[0], out, []))
                label = f"first refresh after a warm-up of {a.first_refresh} epochs"
            elif n == "sgcl-byol" and title.startswith("Region pairs"):
                label = method_label(f"t = {sgcl_train.parse_args(config['options']).num_regions} = SGCL-BYOL", config)
            accuracies = " | ".join(f"{s.get(k, '-')} | {s.get(f'd_{k}', '-')}" for k in keys)
            lines.append(
                f"| {label} | {accuracies} | {oracle} | {pair_rates(grouped[n])} | {s['epoch']} | {s['refresh']} | "
                f"{refresh_summary(grouped[n])} | {s['seeds']} |"
            )
        lines.append("")
    if images is not None:
        curves = plot_curves(grouped, rows, images / f"ablation_curves_{config_name}.png")
        if curves is not None:
            lines += ["### Accuracy vs epochs (mean over seeds)", "", f"![curves](images/{curves.name})", ""]
        pictures = copy_pictures(out, images, seeds[0], config_name) if "sgcl-byol" in rows else []
        if pictures:
            lines += [f"### Saliency of successive refreshes (SGCL-BYOL, seed {seeds[0]})", ""]
            for p in pictures:
                lines += [f"**{p.stem.split('_', 2)[2]}**", "", f"![{p.stem}](images/{p.name})", ""]
    lines.append(end)
    return "\n".join(lines)


def write_block(doc: Path, block: str, config_name: str) -> None:
    """Replaces the configuration's marked block in ``doc``, or appends it under a new heading."""
    begin, end = markers(config_name)
    text = doc.read_text() if doc.exists() else ""
    if begin in text and end in text:
        head, rest = text.split(begin, 1)
        tail = rest.split(end, 1)[1]
        text = head + block + tail
    else:
        text = text.rstrip() + f"\n\n## Pretraining ablation ({config_name})\n\n" + block + "\n"
    doc.write_text(text)


def main(argv: Optional[Sequence[str]] = None) -> Dict[str, Dict[str, Any]]:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", choices=("testbed", "cpu", "gpu", "scratch"), default="testbed")
    parser.add_argument("--smoke", action="store_true", help="every row once on tiny data, report to --out only")
    parser.add_argument(
        "--rows", default="", help="comma-separated rows (default: the configuration's, or all): " + ", ".join(ROWS)
    )
    parser.add_argument("--seeds", type=int, nargs="+", default=None, help="default: the configuration's")
    parser.add_argument("--out", default="", help="default: runs/ablation_<config>")
    parser.add_argument("--doc", default=str(ROOT / "docs" / "RESULTS.md"))
    parser.add_argument("--no-write", action="store_true", help="print the report, change nothing in docs/")
    parser.add_argument("--fresh", action="store_true", help="forget kept results and rerun everything")
    parser.add_argument("--report-only", action="store_true", help="only rewrite the report from kept results")
    parser.add_argument(
        "--rescore", nargs="*", default=None, metavar="DIR",
        help="add the probes kept runs lack (the dense probe) from their backbone.pt under --out or these folders",
    )  # fmt: skip
    parser.add_argument(
        "--merge", nargs="+", default=[], metavar="RESULTS",
        help="first add the runs of other results.json files (e.g. rows run in a second process), then continue",
    )  # fmt: skip
    argv = list(sys.argv[1:] if argv is None else argv)
    # the command that produces the numbers: without the flags that only redo the report or start over, and
    # without --merge / --rescore and their files or folders (inputs of this call, not of the command that made them)
    shown = argv
    for flag in ("--merge", "--rescore"):
        if flag in shown:
            i = shown.index(flag)
            n = next((j for j, a in enumerate(shown[i + 1 :], i + 1) if a.startswith("--")), len(shown))
            shown = shown[:i] + shown[n:]
    command = " ".join(["python benchmarks/ablation.py", *(a for a in shown if a not in ("--report-only", "--fresh"))])
    extra: List[str] = []
    if "--" in argv:
        i = argv.index("--")
        argv, extra = argv[:i], argv[i + 1 :]
    args = parser.parse_args(argv)
    config_name = "smoke" if args.smoke else args.config
    config = CONFIGS[config_name]
    rows = [r for r in args.rows.split(",") if r] or list(config.get("rows", ROWS))
    unknown = [r for r in rows if r not in ROWS]
    if unknown:
        parser.error(f"unknown row(s) {unknown}; choose from {', '.join(ROWS)}")
    seeds = list(args.seeds if args.seeds is not None else config["seeds"])
    more: List[Tuple[str, int]] = []
    if args.seeds is None and "more_seeds" in config:  # the configuration's extra seeds for some rows
        more = [(r, sd) for sd in config["more_seeds"]["seeds"] for r in config["more_seeds"]["rows"]]
        seeds += [sd for sd in config["more_seeds"]["seeds"] if sd not in seeds]
    out = Path(args.out or ROOT / "runs" / f"ablation_{config_name}")
    if args.merge:
        merged = load_results(out / "results.json")
        for path in args.merge:
            other = load_results(Path(path))
            merged.update({key: run for key, run in other.items() if key not in merged})
        out.mkdir(parents=True, exist_ok=True)
        save_results(out / "results.json", merged)
        print(f"{len(merged)} run(s) in {out / 'results.json'} after merging {', '.join(args.merge)}")
    if args.rescore is not None:
        results = load_results(out / "results.json")
        if rescore(results, out, [Path(d) for d in args.rescore]):
            save_results(out / "results.json", results)
    if args.report_only or args.rescore is not None:
        results = load_results(out / "results.json")
    else:
        base_seeds = [sd for sd in seeds if not more or sd in config["seeds"]]
        results = run_all(rows, base_seeds, config, out, extra, args.fresh, more)
    write_docs = not (args.no_write or args.smoke)
    images = ROOT / "docs" / "images" if write_docs else out / "images"
    block = report(results, rows, seeds, config_name, config, command, images, out)
    print(block)
    (out / "report.md").write_text(block + "\n")
    grouped = {n: [{**results[run_key(n, sd)], "seed": sd} for sd in seeds if run_key(n, sd) in results] for n in rows}
    summary = evidence_summary(grouped, seeds, config_name, config.get("method", "byol"))
    (out / "evidence_summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    if write_docs and config.get("summary"):
        path = ROOT / "docs" / "data" / config["summary"]
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(summary, indent=1) + "\n")
        print(f"wrote {path}")
    if write_docs:
        write_block(Path(args.doc), block, config_name)
        print(f"wrote {args.doc}")
    return results


if __name__ == "__main__":
    main()
    sys.exit(0)
