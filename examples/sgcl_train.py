"""Reference SGCL pretraining: BYOL, SimCLR or NNCLR, with or without SGCL, one shared training core.

    python examples/sgcl_train.py --method byol                 # SGCL-BYOL on composed scenes
    python examples/sgcl_train.py --method byol --no-sgcl       # the plain BYOL baseline
    python examples/sgcl_train.py --method simclr --smoke       # a few steps on tiny data
    torchrun --nproc_per_node 4 examples/sgcl_train.py ...      # DDP: the refresh shards and gathers
    python examples/sgcl_train.py --resume auto ...             # continue from <out>/checkpoint.pt

`examples/byol.py`, `examples/simclr.py` and `examples/nnclr.py` are this script with the method
preset. Every switch of the paper's ablations is an option: `--no-inter` (intra loss only),
`--no-scores` (gamma = 0), `--num-regions`, `--every-n-epochs`, `--saliency-size`.
"""

from __future__ import annotations

import argparse
import copy
import csv
import functools
import math
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Callable, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from sgcl_plugin import ChannelSumGenerator, SaliencyBank, SaliencyGenerator
from sgcl_plugin.crops import SaliencyCropDataset, SaliencyCropTransform, byol_view_transforms
from sgcl_plugin.features import feature_maps, hierarchy_strides
from sgcl_plugin.files import atomic_write, open_new_or_own
from sgcl_plugin.image_folder import ImageFiles
from sgcl_plugin.items import flatten_pairs
from sgcl_plugin.objective import SGCLObjective
from sgcl_plugin.refresh import IMAGENET_MEAN, IMAGENET_STD, SaliencyInput, to_image_tensor
from sgcl_plugin.schedule import RefreshSchedule
from sgcl_plugin.testbed.evaluation import cell_labels, dense_probe_accuracy, embed, knn_accuracy, linear_probe_accuracy

METHODS = ("byol", "simclr", "nnclr")


# ----------------------------------------------------------------------------- options


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The module docstring as it is, and every option's default after its help (not for switches that are off,
    nor for defaults the help explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action) or ""


def build_parser(method: Optional[str] = None) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=_HelpFormatter)
    sgcl = p.add_argument_group("SGCL: the method")
    sgcl.add_argument(
        "--method",
        choices=METHODS,
        default=method or "byol",
        help="the SSL method: BYOL, SimCLR or NNCLR (byol.py / simclr.py / nnclr.py preset it)",
    )
    sgcl.add_argument(
        "--sgcl", action=argparse.BooleanOptionalAction, default=True, help="SGCL, or the plain method (--no-sgcl)"
    )
    sgcl.add_argument(
        "--inter", action=argparse.BooleanOptionalAction, default=None,
        help="inter-image loss (Eq. 10); default: on for BYOL and NNCLR, off for SimCLR (the paper's SGCL-SimCLR is "
        "the crops and the weighted NT-Xent; measured in docs/RESULTS.md#testbed)",
    )  # fmt: skip
    sgcl.add_argument("--scores", action=argparse.BooleanOptionalAction, default=True, help="weight pairs by P^gamma")
    sgcl.add_argument("--gamma", type=float, default=0.5, help="pair weight = score ** gamma (Eq. 9; 0: no weighting)")
    sgcl.add_argument("--num-regions", type=int, default=4, help="t: region pairs per image")
    sgcl.add_argument(
        "--every-n-epochs", "--refresh-interval", dest="every_n_epochs", type=int, default=2,
        help="epochs between saliency refreshes (never at epoch 0); --refresh-interval is its old name",
    )  # fmt: skip
    sgcl.add_argument(
        "--first-refresh", type=int, default=0,
        help="epoch of the first refresh (0: --every-n-epochs); a warm-up of random crops before it, as the "
        "paper's first 100 epochs",
    )  # fmt: skip
    sgcl.add_argument(
        "--refresh-at-start", action="store_true", help="also refresh before epoch 0 (for a pretrained backbone)"
    )
    sgcl.add_argument("--saliency-size", type=int, default=256, help="refresh input size (paper: 640)")
    sgcl.add_argument(
        "--saliency-stride", type=int, nargs="+", default=None, metavar="STRIDE",
        help="feature stride(s) the refresh reads: one (16: the stride-16 stage; 32: the last map, the paper's) or "
        "two (fine coarse, hierarchy mode). Default: the last map and the stage at half its stride for hierarchy "
        "(ResNet: 16 32), 16 otherwise",
    )  # fmt: skip
    sgcl.add_argument(
        "--regions", choices=("hierarchy", "objects", "paper", "ncut", "heatmap", "gt"), default="hierarchy",
        help="region source: SGCL's Ncut in hierarchy mode (k-way parts merged into whole objects, scored), objects "
        "mode (the parts themselves) or paper mode (Eq. 4-5; 'ncut' is an old name for it), a ContrastiveCrop-style "
        "heat map, or the composed scenes' true boxes",
    )  # fmt: skip
    sgcl.add_argument("--min-area", type=int, default=4, help="smallest region, in feature-map cells (paper: 4)")
    sgcl.add_argument(
        "--before-refresh", choices=("crops", "regions"), default="crops",
        help="before the first refresh: random crops of the whole image, or Algorithm 1's t random regions "
        "with rule-R pairs inside",
    )  # fmt: skip
    sgcl.add_argument("--box-jitter", type=float, default=0.0, help="Eq. 6 box jitter: edge moves, fraction of side")
    sgcl.add_argument(
        "--intra-reduction", choices=("mean", "sum"), default="mean",
        help="intra loss over an image's t pairs: mean (intra : inter = 1 : 1) or Eq. 9 read literally, a sum (t : 1)",
    )  # fmt: skip
    sgcl.add_argument("--queue-size", type=int, default=1024, help="inter-image (and NNCLR support) queue")
    sgcl.add_argument("--num-neighbors", type=int, default=5, help="l: neighbours per prediction in the inter loss")
    sgcl.add_argument("--temperature", type=float, default=0.2, help="SimCLR / NNCLR temperature")
    data = p.add_argument_group("data and views")
    data.add_argument(
        "--data", default="composed",
        help="'composed' (default scenes, kept in RAM) or a folder of images (sub-folders too, e.g. COCO's "
        "train2017/), read lazily by the --workers at each file's own size and aspect ratio",
    )  # fmt: skip
    data.add_argument("--num-images", type=int, default=512, help="composed scenes to generate")
    data.add_argument("--image-size", type=int, default=160, help="composed scene side in pixels")
    data.add_argument(
        "--max-side", type=int, default=0,
        help="--data <folder>: shrink images whose longer side exceeds this (aspect kept; bounds the decoding "
        "cost of large photos); 0: each file at its own size",
    )  # fmt: skip
    data.add_argument("--crop-size", type=int, default=64, help="region crop size (paper: 96)")
    data.add_argument(
        "--crop-scale", type=float, nargs=2, default=(0.08, 1.0), metavar=("LOW", "HIGH"),
        help="crop area as a fraction of the region's (random crops: of the image's) area",
    )  # fmt: skip
    data.add_argument("--hue", type=float, default=0.1, help="view augmentation: hue jitter (BYOL 0.1; 0.5: any hue)")
    data.add_argument("--grayscale-p", type=float, default=0.2, help="view augmentation: grayscale probability")
    data.add_argument("--augment-on-device", action="store_true", help="view augmentations on the batch with kornia")
    data.add_argument("--workers", type=int, default=2, help="DataLoader worker processes")
    model = p.add_argument_group("model and optimisation")
    model.add_argument(
        "--arch",
        default="resnet18",
        help="torchvision ResNet (random init), tiny-resnet (a small CPU testbed net) or efficientnet-lite0 (ImageNet)",
    )
    model.add_argument("--width", type=int, default=16, help="--arch tiny-resnet: channels of its first stage")
    model.add_argument("--hidden-dim", type=int, default=1024, help="projector / predictor hidden width")
    model.add_argument("--proj-dim", type=int, default=128, help="projection (embedding) width")
    model.add_argument("--epochs", type=int, default=5, help="training epochs")
    model.add_argument("--batch-size", type=int, default=32, help="images per step (per process)")
    model.add_argument(
        "--optimizer",
        choices=("sgd", "adamw"),
        default="adamw",
        help="optimizer (the paper: SGD with lr 1.0 at batch 512; AdamW suits these short CPU runs)",
    )
    model.add_argument("--lr", type=float, default=2e-3, help="peak learning rate (linear warm-up, then cosine)")
    model.add_argument("--weight-decay", type=float, default=1e-4, help="weight decay")
    model.add_argument("--warmup-epochs", type=float, default=1.0, help="learning-rate warm-up, in epochs")
    model.add_argument("--ema", type=float, default=0.99, help="BYOL target EMA, cosine schedule to 1")
    model.add_argument("--amp", action=argparse.BooleanOptionalAction, default=True, help="bfloat16 autocast on CUDA")
    model.add_argument(
        "--seed",
        type=int,
        default=0,
        help="seed of everything (weights, data, crops, augmentations); runs with one seed repeat exactly",
    )
    run = p.add_argument_group("run, checkpoints and outputs")
    run.add_argument(
        "--out",
        default="runs/sgcl",
        help="output folder: checkpoint.pt, log.csv, eval.csv, backbone.pt, saliency/ pictures",
    )
    run.add_argument("--resume", default="", help="a checkpoint path, or 'auto' for <out>/checkpoint.pt if present")
    run.add_argument(
        "--overwrite", action="store_true",
        help="start a new run in an --out that holds one (its checkpoint, log and weights are replaced); without "
        "it such an --out is refused",
    )  # fmt: skip
    run.add_argument("--ckpt-every", type=int, default=50, help="steps between checkpoints (and at each epoch end)")
    run.add_argument(
        "--stop-after-steps", type=int, default=0, help="stop as if killed (no save) after this many steps"
    )
    run.add_argument("--pictures", type=int, default=8, help="images shown in the saliency pictures")
    run.add_argument("--no-progress", action="store_true", help="no progress bars: one line per epoch instead")
    run.add_argument("--smoke", action="store_true", help="a few steps on tiny data (< 2 minutes on a CPU)")
    evaluation = p.add_argument_group("evaluation")
    evaluation.add_argument(
        "--eval-data", choices=("objects", "isolated", "fashion"), default="objects",
        help="classify objects cut from composed scenes by their true boxes (with context; 'isolated': the object "
        "alone on grey), or Fashion-MNIST items",
    )  # fmt: skip
    evaluation.add_argument(
        "--eval-train", type=int, default=2000, help="labelled objects (train split) for kNN / probe"
    )
    evaluation.add_argument(
        "--eval-test", type=int, default=1000, help="objects to classify (Fashion-MNIST test split)"
    )
    evaluation.add_argument("--no-eval", action="store_true", help="skip the evaluation at the end")
    evaluation.add_argument(
        "--eval-every", type=int, default=0, help="also evaluate at epoch 0 and every N epochs (eval.csv); 0: end only"
    )
    testbed = p.add_argument_group("testbed and ablations (composed scenes)")
    testbed.add_argument(
        "--testbed", action="store_true",
        help="the evidence testbed's settings (docs/RESULTS.md#testbed): cluttered scenes, tiny ResNet, 48 epochs",
    )  # fmt: skip
    testbed.add_argument(
        "--object-scale", type=float, nargs=2, default=(0.15, 0.45), metavar=("LOW", "HIGH"),
        help="composed scenes: object side as a fraction of the image side (training and evaluation scenes)",
    )  # fmt: skip
    testbed.add_argument(
        "--objects", type=int, nargs=2, default=(2, 6), metavar=("MIN", "MAX"),
        help="composed scenes: objects per scene (training and evaluation scenes)",
    )  # fmt: skip
    testbed.add_argument(
        "--co-occurrence", type=int, choices=(1, 2, 5, 10), default=10,
        help="composed scenes: classes a scene's objects come from. 10: any class anywhere; 2: each scene draws "
        "one fixed pair of classes (c, c + 5), structured co-occurrence as in real scenes, so two random crops "
        "often show two classes that always appear together; 1: one class per scene (training and evaluation)",
    )  # fmt: skip
    testbed.add_argument(
        "--baseline-views", choices=("pairs", "pixels"), default="pairs",
        help="the plain method's views: t random pairs at --crop-size (same resolution and pixels as SGCL), "
        "or one pair of side crop-size * sqrt(t) (same pixels, a higher resolution than evaluated)",
    )  # fmt: skip
    testbed.add_argument(
        "--baseline-crop-size", type=int, default=0, help="with --baseline-views pixels: the view size (0: automatic)"
    )
    return p


EVAL_NAMES = {"objects": "scene", "isolated": "isolated scene", "fashion": "Fashion-MNIST"}

SMOKE = dict(
    num_images=16, image_size=96, crop_size=32, saliency_size=128, epochs=2, batch_size=8, every_n_epochs=1,
    workers=0, hidden_dim=64, proj_dim=32, queue_size=64, pictures=4, eval_train=200, eval_test=100, ckpt_every=2,
)  # fmt: skip


# The evidence testbed (docs/RESULTS.md#testbed): cluttered composed scenes (4-8 objects of 0.25-0.45 of the
# side: random crops pair different objects), a small ResNet from random weights trained for 1,536 steps at
# 32 px, colour augmentations without a hue shortcut, refreshes from epoch 8 every 8 epochs. ~5 min a run on
# a 2-core CPU. SimCLR is its base method: BYOL does not beat the untrained network in this budget.
TESTBED = dict(
    arch="tiny-resnet", width=16, image_size=96, crop_size=32, object_scale=[0.25, 0.45], objects=[4, 8],
    crop_scale=[0.2, 1.0], hue=0.5, grayscale_p=0.5, num_images=2048, batch_size=64, num_regions=2, hidden_dim=512,
    saliency_size=192, epochs=48, every_n_epochs=8, workers=0, augment_on_device=True, pictures=6,
)  # fmt: skip


class Refused(ValueError):
    """A run this script refuses to start (an --out that holds another run, a checkpoint it cannot resume
    exactly, ...): run as a script it prints the message and exits with status 2, as argparse's refusals do."""


def parse_args(argv: Optional[Sequence[str]] = None, method: Optional[str] = None) -> argparse.Namespace:
    """Parses the options; ``--smoke`` and ``--testbed`` swap in their defaults, which explicit options still
    override."""
    parser = build_parser(method)
    args = parser.parse_args(argv)
    if args.smoke and args.testbed:
        parser.error("--smoke and --testbed are two presets: choose one")
    if args.smoke or args.testbed:
        parser.set_defaults(**(SMOKE if args.smoke else TESTBED))
        args = parser.parse_args(argv)
    if args.inter is None:
        args.inter = args.method != "simclr"
    if args.num_regions < 1 or args.every_n_epochs < 1:
        parser.error("--num-regions and --every-n-epochs must be >= 1")
    strides = args.saliency_stride or []
    if (
        len(strides) > 2
        or any(v not in (8, 16, 32) for v in strides)
        or (len(strides) == 2 and strides[0] >= strides[1])
    ):
        parser.error(
            f"--saliency-stride takes one or two (fine < coarse) of 8, 16, 32, got {' '.join(map(str, strides))}"
        )
    if len(strides) == 2 and args.regions != "hierarchy":
        parser.error("two --saliency-stride values are for --regions hierarchy (the other modes read one map)")

    if not (math.isfinite(args.box_jitter) and args.box_jitter >= 0):
        parser.error(f"--box-jitter must be a finite number >= 0, got {args.box_jitter}")
    for flag, value, low in (
        ("--batch-size", args.batch_size, 1), ("--ckpt-every", args.ckpt_every, 1),
        ("--num-images", args.num_images, 1), ("--epochs", args.epochs, 0), ("--crop-size", args.crop_size, 2),
        ("--image-size", args.image_size, 16), ("--queue-size", args.queue_size, 1),
        ("--num-neighbors", args.num_neighbors, 1), ("--workers", args.workers, 0), ("--min-area", args.min_area, 1),
        ("--eval-train", args.eval_train, 1), ("--eval-test", args.eval_test, 1), ("--eval-every", args.eval_every, 0),
        ("--stop-after-steps", args.stop_after_steps, 0), ("--pictures", args.pictures, 0),
        ("--first-refresh", args.first_refresh, 0), ("--width", args.width, 1), ("--max-side", args.max_side, 0),
        ("--hidden-dim", args.hidden_dim, 1), ("--proj-dim", args.proj_dim, 1),
        ("--saliency-size", args.saliency_size, 2), ("--baseline-crop-size", args.baseline_crop_size, 0),
        ("--seed", args.seed, 0),
    ):  # fmt: skip
        if value < low:
            parser.error(f"{flag} must be >= {low}, got {value}")
    for flag, value in (("--lr", args.lr), ("--weight-decay", args.weight_decay), ("--gamma", args.gamma),
                        ("--temperature", args.temperature), ("--warmup-epochs", args.warmup_epochs)):  # fmt: skip
        if not (math.isfinite(value) and value >= 0) or (flag in ("--lr", "--temperature") and value == 0):
            parser.error(f"{flag} must be a finite number {'> 0' if flag in ('--lr', '--temperature') else '>= 0'}, "
                         f"got {value}")  # fmt: skip
    if args.seed >= 2**32:
        parser.error(f"--seed must be below 2**32 (numpy's seeds), got {args.seed}")
    if 0 < args.baseline_crop_size < 2:
        parser.error(f"--baseline-crop-size must be 0 (automatic) or >= 2 pixels, got {args.baseline_crop_size}")
    for flag, value, cap in (("--crop-size", args.crop_size, 2048), ("--image-size", args.image_size, 4096),
                             ("--saliency-size", args.saliency_size, 4096)):  # fmt: skip
        if value > cap:
            parser.error(f"{flag} {value} is beyond what this script can hold in memory (at most {cap})")
    needs_queue = args.sgcl and args.inter or args.method == "nnclr"
    if needs_queue and args.queue_size < args.num_neighbors:
        parser.error(
            f"--queue-size {args.queue_size} holds fewer rows than --num-neighbors {args.num_neighbors} are looked up"
        )
    from sgcl_plugin.backbones import KNOWN_ARCHS

    if args.arch not in KNOWN_ARCHS:
        parser.error(f"--arch {args.arch!r} is not one of {', '.join(KNOWN_ARCHS)}")
    lo, hi = args.object_scale
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi <= 1):
        parser.error(f"--object-scale needs 0 < LOW <= HIGH <= 1 (a share of the scene's side), got {lo} {hi}")
    if args.data != "composed" and not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: no such folder (give a folder of images, or 'composed')")
    if args.resume and args.resume != "auto" and not Path(args.resume).is_file():
        parser.error(f"--resume {args.resume}: no such checkpoint file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file, not a folder")
    lo, hi = args.objects
    if not 1 <= lo <= hi:
        parser.error(f"--objects needs 1 <= MIN <= MAX, got {lo} {hi}")
    lo, hi = args.crop_scale
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi):
        parser.error(f"--crop-scale needs 0 < LOW <= HIGH, got {lo} {hi}")
    if not 0.0 <= args.hue <= 0.5 or not 0.0 <= args.grayscale_p <= 1.0:
        parser.error(f"--hue must be in [0, 0.5] and --grayscale-p in [0, 1], got {args.hue} and {args.grayscale_p}")
    if not 0.0 <= args.ema <= 1.0:
        parser.error(f"--ema must be in [0, 1], got {args.ema}")
    # The refresh needs a feature grid of at least 2 x 2 cells (3 for the objects mode) at its stride.
    stride = 32 if args.regions == "heatmap" else max(strides or [32 if args.regions == "hierarchy" else 16])
    if args.sgcl and args.regions != "gt" and args.saliency_size < 2 * stride:
        parser.error(
            f"--saliency-size {args.saliency_size} gives a feature grid under 2 x 2 cells at stride {stride}; "
            f"use at least {2 * stride} (the paper: 640)"
        )
    if args.data != "composed":
        data, out = Path(args.data).resolve(), Path(args.out).resolve()
        if out == data or data in out.parents:
            parser.error(
                f"--out {args.out} is inside the --data folder {args.data}: the run's pictures and checkpoints would "
                "mix with (and be read as) training images; choose an --out outside it"
            )
    if args.max_side and args.data == "composed":
        parser.error("--max-side applies to --data <folder>; composed scenes are drawn at --image-size")
    if args.sgcl and args.regions == "gt" and args.data != "composed":
        parser.error("--regions gt needs the composed scenes (--data composed): a folder has no boxes")
    if args.epochs == 0 and args.no_eval:
        parser.error("--epochs 0 with --no-eval does nothing: evaluate the untrained network, or train")
    return args


# ----------------------------------------------------------------------------- data


class ImageTable(Dataset):
    """Images kept as one uint8 tensor (n, 3, H, W) in shared memory: cheap for workers and refreshes."""

    def __init__(self, images: Tensor) -> None:
        if images.ndim != 4 or images.shape[0] == 0:
            raise ValueError(f"Expected a non-empty (n, 3, H, W) image table, got {tuple(images.shape)}.")
        self.images = images.share_memory_()

    def __len__(self) -> int:
        return self.images.shape[0]

    def __getitem__(self, i: int) -> Tensor:
        return self.images[i]


def class_groups(co_occurrence: int) -> Optional[Tuple[Tuple[int, ...], ...]]:
    """``--co-occurrence`` as ComposedScenes' class groups: the labels equal modulo 10 / n (None for 10)."""
    if co_occurrence == 10:
        return None
    step = 10 // co_occurrence
    return tuple(tuple(range(g, 10, step)) for g in range(step))


def training_scenes(args: argparse.Namespace) -> Any:
    """The composed pretraining scenes of a run (the images, their true boxes and masks)."""
    from sgcl_plugin.testbed.scenes import ComposedScenes

    return ComposedScenes(
        args.num_images, image_size=args.image_size, seed=args.seed, split="train",
        object_scale=tuple(args.object_scale), min_objects=args.objects[0], max_objects=args.objects[1],
        class_groups=class_groups(args.co_occurrence),
    )  # fmt: skip


def composed_scene_table(args: argparse.Namespace) -> ImageTable:
    scenes = training_scenes(args)
    return ImageTable(
        torch.stack([(to_image_tensor(scenes[i]["image"]) * 255).round().byte() for i in range(len(scenes))])
    )


def folder_images(folder: str, max_side: int = 0) -> ImageFiles:
    """``--data <folder>``: its image files, listed once and decoded lazily (by the DataLoader workers of the
    training and of the refresh), each at its own size and aspect ratio until the crop; ``max_side`` > 0 shrinks
    larger images. Memory holds the file names, never the images; an unreadable file stops the run, named."""
    if not Path(folder).is_dir():
        raise Refused(f"--data {folder} is neither 'composed' nor a folder.")
    return ImageFiles(folder, max_side=max_side or None)


def steady_worker_heaps() -> None:
    """Fixes glibc malloc's mmap threshold at its 128 KiB default, for this process and the DataLoader workers it
    forks (spawned ones read ``MALLOC_MMAP_THRESHOLD_``): buffers of image size (a decoded photo, its float copy)
    are then mapped and unmapped per image. With glibc's adaptive threshold, each worker decoding a folder kept
    growing its heap, by tens of kB per 640 x 480 image read, without levelling off (docs/benchmarks.md). A no-op
    without glibc, or when ``MALLOC_MMAP_THRESHOLD_`` is already set (glibc read it at start-up)."""
    if "MALLOC_MMAP_THRESHOLD_" in os.environ:
        return
    os.environ["MALLOC_MMAP_THRESHOLD_"] = "131072"
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").mallopt(-3, 131072)  # -3: M_MMAP_THRESHOLD
    except (OSError, AttributeError):  # not glibc
        pass


def training_images(args: argparse.Namespace) -> Union[ImageTable, ImageFiles]:
    """The run's images: composed scenes in one shared uint8 table, or a folder's files read lazily."""
    return composed_scene_table(args) if args.data == "composed" else folder_images(args.data, args.max_side)


class SeededItems(Dataset):
    """Makes every item's randomness a function of (seed, epoch, index) alone.

    Whichever worker loads an item, and whether the run was interrupted and resumed, the same
    item of the same epoch gets the same crops and augmentations: that is what makes resuming exact.
    """

    def __init__(self, dataset: Dataset, seed: int) -> None:
        self.dataset, self.seed = dataset, seed
        self.epoch = torch.zeros(1, dtype=torch.int64).share_memory_()  # visible to persistent workers

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> Any:
        with torch.random.fork_rng(devices=[]):
            # the CPU generator only: torch.manual_seed would also reseed (and, outside fork_rng's devices,
            # leave reseeded) every CUDA generator of the main process when --workers 0
            torch.random.default_generator.manual_seed((self.seed * 1_000_003 + int(self.epoch) * 10_007 + i) % (2**63))
            return self.dataset[i]


class EpochSampler(Sampler[int]):
    """A per-epoch permutation from (seed, epoch), this rank's share of it, minus the steps already done."""

    def __init__(self, n: int, batch_size: int, seed: int, rank: int = 0, world: int = 1) -> None:
        self.n, self.batch_size, self.seed, self.rank, self.world = n, batch_size, seed, rank, world
        self.epoch, self.skip_batches = 0, 0
        self.per_rank = n // world  # equal shares: every rank runs the same number of steps

    def __iter__(self) -> Iterator[int]:
        g = torch.Generator().manual_seed(self.seed * 7919 + self.epoch)
        order = torch.randperm(self.n, generator=g)[: self.per_rank * self.world]
        mine = order[self.rank :: self.world].tolist()
        return iter(mine[self.skip_batches * self.batch_size :])

    def __len__(self) -> int:
        return max(0, self.per_rank - self.skip_batches * self.batch_size)


def imagenet_normalize(x: Tensor) -> Tensor:
    """(n, 3, H, W) images in [0, 1] to the ImageNet normalization the crops use."""
    return (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]


@functools.lru_cache(maxsize=2)  # several runs in one process (benchmarks) build the sets once
def scene_object_eval_sets(
    n_train: int,
    n_test: int,
    size: int,
    image_size: int,
    object_scale: Tuple[float, float] = (0.15, 0.45),
    objects: Tuple[int, int] = (2, 6),
    isolate: bool = False,
    co_occurrence: int = 10,
) -> Dict[str, Tensor]:
    """Objects cut from composed scenes by their true boxes (with context, or alone on grey), resized to the
    crop size and normalized: train-split objects (other scenes than the pretraining ones) are the labelled
    set, objects of test-split scenes (Fashion-MNIST test items) are classified."""
    from sgcl_plugin.testbed.scenes import ComposedScenes, object_crops

    out = {}
    for split, n, seed in (("train", n_train, 1001), ("test", n_test, 1002)):
        scenes = ComposedScenes(
            max(1, n // objects[0]), image_size=image_size, seed=seed, split=split, object_scale=object_scale,
            min_objects=objects[0], max_objects=objects[1], class_groups=class_groups(co_occurrence),
        )  # fmt: skip
        x, y = object_crops(scenes, size, max_crops=n, isolate=isolate)
        out[f"{split}_x"], out[f"{split}_y"] = imagenet_normalize(x), y
    return out


@functools.lru_cache(maxsize=2)
def scene_dense_eval_sets(
    n_train: int,
    n_test: int,
    image_size: int,
    object_scale: Tuple[float, float] = (0.15, 0.45),
    objects: Tuple[int, int] = (2, 6),
    co_occurrence: int = 10,
) -> Dict[str, Any]:
    """Whole composed scenes for the dense probe, with each pixel's object (index map, -1 for background) and the
    objects' classes: train-split scenes are the labelled set, test-split scenes are classified cell by cell. The
    scenes are those of :func:`scene_object_eval_sets` (same seeds), so both probes read the same objects."""
    from sgcl_plugin.testbed.scenes import ComposedScenes

    out: Dict[str, Any] = {}
    for split, n, seed in (("train", n_train, 1001), ("test", n_test, 1002)):
        scenes = ComposedScenes(
            max(1, n), image_size=image_size, seed=seed, split=split, object_scale=object_scale,
            min_objects=objects[0], max_objects=objects[1], class_groups=class_groups(co_occurrence),
        )  # fmt: skip
        images, owners, labels = [], [], []
        for i in range(len(scenes)):
            image, masks, object_labels = scenes.compose(i)
            images.append(torch.from_numpy(image).permute(2, 0, 1))
            owner = torch.full(masks.shape[1:], -1, dtype=torch.int8)  # visible masks never overlap
            for j, mask in enumerate(masks):
                owner[torch.from_numpy(mask)] = j
            owners.append(owner)
            labels.append(torch.from_numpy(object_labels))
        out[f"{split}_x"] = imagenet_normalize(torch.stack(images).float().div(255))
        out[f"{split}_owner"], out[f"{split}_labels"] = owners, labels
    return out


def scene_cells(dense: Dict[str, Any], split: str, grid: Tuple[int, int]) -> Tensor:
    """(n, h, w) cell labels (:func:`sgcl_plugin.testbed.evaluation.cell_labels`) of a split of
    :func:`scene_dense_eval_sets`, kept in that (cached) dict per grid: every later evaluation reuses them."""
    key = f"{split}_cells_{grid[0]}x{grid[1]}"
    if key not in dense:
        dense[key] = torch.stack([
            cell_labels(owner[None] == torch.arange(len(lab), dtype=torch.int8)[:, None, None], lab, grid)
            for owner, lab in zip(dense[f"{split}_owner"], dense[f"{split}_labels"])
        ])  # fmt: skip
    return dense[key]


def evaluate_backbone(
    backbone: nn.Module, args: argparse.Namespace, device: Optional[torch.device] = None
) -> Dict[str, float]:
    """The frozen backbone's accuracies (eval mode; draws no random numbers): kNN and linear probe on pooled
    features of objects cut by their true boxes (``--eval-data``), and on composed scenes also the dense probe
    (``dense_knn``, ``dense_linear``): each feature-map cell of a whole scene classified as the object that covers
    at least half of it, as detection and segmentation read a backbone."""
    a = args
    if a.eval_data in ("objects", "isolated"):
        sets = scene_object_eval_sets(
            a.eval_train, a.eval_test, a.crop_size, a.image_size, tuple(a.object_scale), tuple(a.objects),
            isolate=a.eval_data == "isolated", co_occurrence=a.co_occurrence,
        )  # fmt: skip
    else:
        sets = fashion_eval_sets(a.eval_train, a.eval_test, a.crop_size)
    train = embed(backbone, sets["train_x"], device=device)
    test = embed(backbone, sets["test_x"], device=device)
    result = {
        "knn": knn_accuracy(train, sets["train_y"], test, sets["test_y"]),
        "linear": linear_probe_accuracy(train, sets["train_y"], test, sets["test_y"]),
    }
    if a.eval_data in ("objects", "isolated"):
        # a scene holds about 6 objects: half as many scenes as objects gives the dense probe ~3x the samples
        dense = scene_dense_eval_sets(
            max(1, a.eval_train // 2), max(1, a.eval_test // 2), a.image_size, tuple(a.object_scale),
            tuple(a.objects), a.co_occurrence,
        )  # fmt: skip
        maps = {s: embed(backbone, dense[f"{s}_x"], device=device, pool=False) for s in ("train", "test")}
        cells = {s: scene_cells(dense, s, (maps[s].shape[2], maps[s].shape[3])) for s in maps}
        probe = dense_probe_accuracy(maps["train"], cells["train"], maps["test"], cells["test"])
        result.update(dense_knn=probe["knn"], dense_linear=probe["linear"])
    return result


@functools.lru_cache(maxsize=2)  # built once per run (evaluate_backbone calls it at every evaluation)
def fashion_eval_sets(n_train: int, n_test: int, size: int) -> Dict[str, Tensor]:
    """Fashion-MNIST objects (grey on black, as RGB), resized to the crop size and normalized."""
    from sgcl_plugin.testbed.scenes import load_fashion_mnist

    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = load_fashion_mnist(split)
        g = torch.Generator().manual_seed(1234)
        idx = torch.randperm(len(labels), generator=g)[:n]
        x = torch.as_tensor(np.asarray(images))[idx].float().div(255)[:, None].expand(-1, 3, -1, -1)
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[f"{split}_x"], out[f"{split}_y"] = imagenet_normalize(x), torch.as_tensor(np.asarray(labels))[idx].long()
    return out


# ----------------------------------------------------------------------------- model


def mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


class Renormalize(nn.Module):
    """Maps ImageNet-normalized input to the normalization a pretrained backbone was trained with."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(IMAGENET_STD)[:, None, None] / torch.tensor(std)[:, None, None])
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("shift", shift[:, None, None])

    def forward(self, x: Tensor) -> Tensor:
        return x * self.scale + self.shift


class SSLModel(nn.Module):
    """Backbone + projector (+ predictor and EMA target copies for BYOL)."""

    def __init__(self, method: str, arch: str, hidden_dim: int, proj_dim: int, width: int = 16) -> None:
        super().__init__()
        import torchvision

        if arch == "tiny-resnet":
            from sgcl_plugin.backbones import tiny_resnet

            self.backbone = tiny_resnet(width)
            self.feature_dim = 8 * width
        elif arch in ("efficientnet-lite0", "efficientnet_lite0"):
            from sgcl_plugin.backbones import efficientnet_lite0

            lite = efficientnet_lite0(pretrained=True)
            self.feature_dim = lite.channels
            # the crops and evaluation sets are ImageNet-normalized; the checkpoint expects (x - 0.498) / 0.502
            self.backbone: nn.Module = nn.Sequential(Renormalize(lite.mean, lite.std), lite)
        else:
            net = getattr(torchvision.models, arch)(weights=None)
            self.feature_dim = net.fc.in_features
            self.backbone = nn.Sequential(*list(net.children())[:-2])  # feature maps, for saliency too
        self.projector = mlp(self.feature_dim, hidden_dim, proj_dim)
        self.predictor = mlp(proj_dim, hidden_dim, proj_dim) if method == "byol" else None
        self.method = method
        if method == "byol":
            self.target_backbone = copy.deepcopy(self.backbone).requires_grad_(False)
            self.target_projector = copy.deepcopy(self.projector).requires_grad_(False)

    def forward(self, x: Tensor) -> Tensor:
        """Online projection of a batch of views (what DDP wraps)."""
        return self.projector(self.backbone(x).mean(dim=(2, 3)))

    @torch.no_grad()
    def target(self, x: Tensor) -> Tensor:
        return self.target_projector(self.target_backbone(x).mean(dim=(2, 3)))

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(tau).add_(po.detach(), alpha=1 - tau)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)


# ----------------------------------------------------------------------------- schedules


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def ema_at(step: int, total: int, base: float) -> float:
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total)) + 1) / 2


# ----------------------------------------------------------------------------- the trainer


def numpy_rng_state() -> Dict[str, Any]:
    """numpy's global RNG state as tensors and plain numbers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()
    return {"name": name, "keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def set_numpy_rng_state(state: Dict[str, Any]) -> None:
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """A training checkpoint, loaded with ``weights_only=True``: a file never runs code when loaded.

    Raises:
        ValueError: the file is not a checkpoint of this script (or holds other objects than tensors
            and plain Python values, e.g. one written before 0.1.0's safe format).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # pickle.UnpicklingError, RuntimeError, EOFError, ...
        raise Refused(
            f"{path} is not a checkpoint this script can load safely ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Checkpoints are loaded with weights_only=True, "
            "so files holding other Python objects (or written by an older version) are refused."
        ) from err
    if not isinstance(state, dict) or "model" not in state or "rng" not in state:
        raise Refused(f"{path} is not a checkpoint of examples/sgcl_train.py (no 'model' / 'rng' entries).")
    return state


# Options that may differ between a run and its resumption: they change neither the model nor the order
# and content of the batches (where outputs go, progress, pictures, checkpoint cadence, evaluation size).
RESUME_FREE = {
    "out", "resume", "overwrite", "no_progress", "workers", "pictures", "ckpt_every", "stop_after_steps",
    "eval_train", "eval_test", "no_eval", "eval_every", "eval_data", "smoke", "testbed",
}  # fmt: skip


def check_resumable(args: argparse.Namespace, saved: Dict[str, Any], world: int, saved_world: int) -> None:
    """Refuses a resumption that could not continue the checkpointed run exactly, naming the options.

    Raises:
        ValueError: an option that shapes the model, the data or the step schedule differs from the
            checkpoint's (e.g. ``--batch-size``: the epoch would never end), or the number of processes.
    """
    diffs = [
        f"--{k.replace('_', '-')} {saved[k]!r} -> {v!r}"
        for k, v in sorted(vars(args).items())
        if k not in RESUME_FREE and k in saved and saved[k] != v
    ]
    if world != saved_world:
        diffs.append(f"processes {saved_world} -> {world}")
    if diffs:
        raise Refused(
            "Cannot resume this checkpoint exactly; these differ from the run that wrote it: "
            + "; ".join(diffs)
            + ". Resume with the same options (or start a new run in another --out)."
        )


def check_checkpoint_fields(state: Dict[str, Any], epochs: int, steps_per_epoch: int) -> None:
    """Refuses a checkpoint whose position fields could not come from a run of these options (a step past
    the epoch's end would make the resumed epoch never end), before any of it is applied.

    Raises:
        ValueError: naming every field that is out of range or inconsistent.
    """

    def integer(key: str) -> Optional[int]:
        v = state.get(key)
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

    epoch, step, global_step, refreshed = (
        integer(k) for k in ("epoch", "step_in_epoch", "global_step", "refreshed_epoch")
    )
    problems = []
    if epoch is None or not 0 <= epoch <= epochs:
        problems.append(f"epoch {state.get('epoch')!r} is not an integer in [0, --epochs {epochs}]")
    if step is None or not 0 <= step < steps_per_epoch:
        problems.append(f"step_in_epoch {state.get('step_in_epoch')!r} is not an integer in [0, {steps_per_epoch})")
    if epoch is not None and step is not None and global_step != epoch * steps_per_epoch + step:
        problems.append(
            f"global_step {state.get('global_step')!r} is not epoch x {steps_per_epoch} steps + step_in_epoch"
        )
    if refreshed is None or not -1 <= refreshed <= (epoch if epoch is not None else refreshed):
        problems.append(f"refreshed_epoch {state.get('refreshed_epoch')!r} is not an integer in [-1, epoch]")
    if not isinstance(state.get("history", []), list):
        problems.append("history is not a list")
    if problems:
        raise Refused(
            "Cannot resume: the checkpoint's position is corrupt (" + "; ".join(problems) + "). It was damaged or "
            "edited, or written by other --epochs / --batch-size / --num-images; resume from another checkpoint."
        )


def lock_out(out: Path) -> Optional[Any]:
    """Takes ``out/.sgcl-lock`` (an OS file lock: released when its process ends, even by kill -9) so that two
    runs never write one ``--out`` at once (they shared ``checkpoint.pt.tmp``). Returns the open lock file; None
    where the OS has no ``flock``.

    Raises:
        ValueError: another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    out.mkdir(parents=True, exist_ok=True)
    if (out / ".sgcl-lock").is_symlink():
        raise Refused(f"{out / '.sgcl-lock'} is a symbolic link: refusing to write through it; remove it.")
    handle = open(out / ".sgcl-lock", "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        who = handle.read().strip()
        handle.close()
        raise Refused(
            f"Another run is writing --out {out} ({who or 'its process holds'} {out / '.sgcl-lock'}): wait for it "
            "to end, or use another --out."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def write_output(path: Path, write: Callable[[Any], Any]) -> None:
    """:func:`~sgcl_plugin.files.atomic_write`, a failure (a full disk) refused with a message: the file that was
    there is intact, and the run continues from its last checkpoint with --resume auto."""
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError from its writer
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise Refused(
            f"Cannot write {path} ({first}; disk full?): the previous file is intact (the last checkpoint too); "
            "free space and continue with --resume auto."
        ) from err


class Trainer:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.main = self.rank == 0
        self.out = Path(args.out)
        self._lock = lock_out(self.out) if self.main else None  # one run per --out at a time
        links = [
            n
            for n in ("checkpoint.pt", "log.csv", "backbone.pt", "eval.csv", "saliency")
            if (self.out / n).is_symlink()
        ]
        if links:
            self.release()
            raise Refused(
                f"--out {self.out} holds symbolic links where this script writes ({', '.join(links)}): refusing to "
                "write through them; remove them, or choose another --out."
            )
        held = [n for n in ("checkpoint.pt", "log.csv", "backbone.pt") if (self.out / n).exists()]
        if held and not args.resume and not args.overwrite:
            self.release()
            raise Refused(
                f"--out {self.out} holds a run ({', '.join(held)}): continue it with --resume auto, start a new run "
                "in another --out, or pass --overwrite to replace it."
            )
        if self.main:
            (self.out / "saliency").mkdir(parents=True, exist_ok=True)
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        np.random.seed(args.seed)

        # Composed scenes: one shared uint8 table. A folder: its files, decoded by the loaders' workers as
        # they are read (the crops and every refresh read the same dataset), so memory holds no image.
        self.images = training_images(args)
        if isinstance(self.images, ImageFiles):
            steady_worker_heaps()  # before any worker is forked
        n = len(self.images)
        self.bank = SaliencyBank(n, max_regions=16)
        if args.sgcl or args.baseline_views == "pairs":
            # SGCL's t region pairs, or the plain method's t random pairs: same resolution, same pixels
            t, size = args.num_regions, args.crop_size
        else:  # the plain method: one pair of random crops per image, as many pixels as SGCL's t pairs
            t = 1
            size = args.baseline_crop_size or int(round(args.crop_size * math.sqrt(args.num_regions)))
        self.pairs_per_image = t
        # Crops always come from the CPU workers; the view augmentations run there too, or batched on
        # the training device with kornia (--augment-on-device).
        colour = {"hue": args.hue, "grayscale_p": args.grayscale_p}
        self.crop = SaliencyCropTransform(
            self.bank, num_regions=t, size=size, augment=not args.augment_on_device,
            before_refresh=args.before_refresh, box_jitter=args.box_jitter if args.sgcl else 0.0,
            scale=tuple(args.crop_scale),
            view_transforms=None if args.augment_on_device else byol_view_transforms(size, **colour),
        )  # fmt: skip
        self.device_views: Optional[List[nn.Module]] = None
        if args.augment_on_device:
            from sgcl_plugin.crops import BatchViewAugment

            self.device_views = [BatchViewAugment(view=v, size=size, **colour).to(self.device) for v in (1, 2)]
        self.items = SeededItems(SaliencyCropDataset(self.images, self.crop), args.seed)
        self.sampler = EpochSampler(n, args.batch_size, args.seed, self.rank, self.world)
        self.steps_per_epoch = len(self.sampler) // args.batch_size
        if self.steps_per_epoch == 0:
            raise Refused(f"{n} images cannot fill one batch of {args.batch_size} per process.")
        self.loader = DataLoader(
            self.items,
            batch_size=args.batch_size,
            sampler=self.sampler,
            num_workers=args.workers,
            persistent_workers=args.workers > 0,
            drop_last=True,
            pin_memory=self.device.type == "cuda",
        )

        self.model = SSLModel(args.method, args.arch, args.hidden_dim, args.proj_dim, args.width).to(self.device)
        self.online: nn.Module = self.model
        if self.world > 1:
            self.online = nn.parallel.DistributedDataParallel(self.model)
        # The step's loss: the method's weighted intra loss and the inter-image loss (sgcl_plugin.objective).
        self.objective = SGCLObjective(
            args.method, args.proj_dim, gamma=args.gamma if args.scores else 0.0, inter=args.sgcl and args.inter,
            temperature=args.temperature, queue_size=args.queue_size, num_neighbors=args.num_neighbors,
            support_size=args.queue_size, gather_distributed=self.world > 1,
        ).to(self.device)  # fmt: skip
        params = [p for p in self.model.parameters() if p.requires_grad]
        if args.optimizer == "sgd":
            self.opt: torch.optim.Optimizer = torch.optim.SGD(
                params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay
            )
        else:
            self.opt = torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)
        if args.regions == "heatmap":
            self.generator: SaliencyGenerator = ChannelSumGenerator()
        else:
            mode = {"paper": "paper", "ncut": "paper", "objects": "objects"}.get(args.regions, "hierarchy")
            self.generator = SaliencyGenerator(min_area=args.min_area, regions=mode)  # type: ignore[arg-type]
        # What the refresh reads: the backbone's stage(s) at --saliency-stride (its own output at 32; the heat
        # map is ContrastiveCrop's, on the last map; hierarchy mode by default the last map and the stage at half
        # its stride).
        strides = args.saliency_stride
        if args.regions == "heatmap":
            self.saliency_backbone = feature_maps(self.model.backbone)
        elif strides is None and args.regions == "hierarchy":
            self.saliency_backbone = feature_maps(self.model.backbone, hierarchy_strides(self.model.backbone))
        else:
            stride = tuple(strides) if strides and len(strides) == 2 else (strides[0] if strides else 16)
            self.saliency_backbone = feature_maps(self.model.backbone, None if stride == 32 else stride)
        if args.sgcl and args.regions == "gt":  # parse_args refuses it with a folder (no boxes)
            self.fill_bank_with_true_boxes()
        self.total_steps = self.steps_per_epoch * args.epochs
        self.warmup_steps = int(args.warmup_epochs * self.steps_per_epoch)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        # Refreshes at --first-refresh (default: --every-n-epochs), then every --every-n-epochs; each made once.
        self.schedule = RefreshSchedule(args.every_n_epochs, args.first_refresh or None)
        self._masks: Optional[List[Tensor]] = None  # object masks of the first scenes, for pair rates
        self.log_path = self.out / "log.csv"
        self.history: List[Dict[str, float]] = []  # accuracy vs epochs (--eval-every), main process only

    # --- checkpoints -------------------------------------------------------------------------

    def state(self) -> Dict[str, Any]:
        return {
            "args": vars(self.args),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "objective": self.objective.state_dict(),
            "bank": self.bank.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "refreshed_epoch": self.schedule.last_epoch,
            "history": self.history,
            "world_size": self.world,
            "rng": {
                "torch": torch.get_rng_state(),
                "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
                "numpy": numpy_rng_state(),
                "python": random.getstate(),
            },
        }

    def save(self) -> None:
        if not self.main:
            return
        state = self.state()
        # atomic: a kill or a full disk never leaves a torn checkpoint, and no link planted in --out is followed
        write_output(self.out / "checkpoint.pt", lambda f: torch.save(state, f))

    def load(self, path: str) -> None:
        state = load_checkpoint(path)
        check_resumable(self.args, state.get("args", {}), self.world, int(state.get("world_size", 1)))
        check_checkpoint_fields(state, self.args.epochs, self.steps_per_epoch)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        if "objective" in state:
            self.objective.load_state_dict(state["objective"])
        else:  # a checkpoint written before SGCLObjective: its queues under "inter" and "support"
            for name in ("inter", "support"):
                if getattr(self.objective, name) is not None:
                    getattr(self.objective, name).load_state_dict(state[name])
        self.bank.load_state_dict(state["bank"])
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.schedule.last_epoch = int(state["refreshed_epoch"])
        self.history = list(state.get("history", []))
        rng = state["rng"]
        torch.set_rng_state(rng["torch"])
        if torch.cuda.is_available() and rng["cuda"]:
            torch.cuda.set_rng_state_all(rng["cuda"])
        set_numpy_rng_state(rng["numpy"])
        random.setstate(rng["python"])
        if self.main:
            print(f"resumed from {path}: epoch {self.epoch}, step {self.step_in_epoch}/{self.steps_per_epoch}")

    # --- saliency refresh -----------------------------------------------------------------------

    def fill_bank_with_true_boxes(self) -> None:
        """The upper bound of the paper's Table 7: every object's true box, score 1, never refreshed."""
        scenes = training_scenes(self.args)
        R = self.bank.max_regions
        boxes, scores = torch.zeros(len(scenes), R, 4), torch.zeros(len(scenes), R)
        counts = torch.zeros(len(scenes), dtype=torch.int64)
        for i in range(len(scenes)):
            b = scenes[i]["boxes"][:R]
            boxes[i, : len(b)], scores[i, : len(b)], counts[i] = b, 1.0, len(b)
        self.bank.write(boxes, scores, counts, torch.zeros(len(scenes), dtype=torch.bool))

    def refresh(self) -> None:
        t0 = time.perf_counter()
        # A folder is decoded by --workers processes; the composed table is decoded already (and refreshes
        # in the main process, as it always did).
        workers = self.args.workers if isinstance(self.images, ImageFiles) else 0
        self.generator.refresh(
            self.saliency_backbone, self.images, self.bank, batch_size=32, saliency_size=self.args.saliency_size,
            device=self.device, num_workers=workers, progress=self.main and not self.args.no_progress,
        )  # fmt: skip
        seconds = time.perf_counter() - t0
        stats = self.bank.stats()
        rate = self.pair_rate()
        if rate is not None:
            stats["pair_rate"] = rate
        self.schedule.mark_done(self.epoch, {"seconds": seconds, **stats})  # history: this process's refreshes
        if self.main:
            pairs = f", pairs showing one object {100 * rate:.1f}%" if rate is not None else ""
            print(
                f"refresh {self.bank.refreshes} at epoch {self.epoch}: {stats['regions_per_image']:.2f} regions/image, "
                f"{int(stats['fallback_images'])} whole-image fallbacks, mean score {stats['mean_score']:.3f}{pairs}, "
                f"{seconds:.1f} s"
            )
            self.pictures(f"refresh_{self.bank.refreshes:02d}_epoch_{self.epoch:03d}.png")

    def pair_rate(self, images: int = 256, pairs: int = 8) -> Optional[float]:
        """On composed scenes: the share of training pairs (drawn as the crops are drawn, from the bank as it
        is now: random crops before a refresh) whose two crops show the same object (sgcl_plugin.testbed.metrics)."""
        if self.args.data != "composed" or not self.main:
            return None
        from sgcl_plugin.testbed.metrics import same_object_pair_rate

        if self._masks is None:
            scenes = training_scenes(self.args)
            self._masks = [torch.from_numpy(scenes.compose(i)[1]) for i in range(min(images, len(scenes)))]
        jitter = self.args.box_jitter if self.args.sgcl else 0.0
        return same_object_pair_rate(self.bank, self._masks, pairs=pairs, indices=range(len(self._masks)),
                                     box_jitter=jitter, scale=tuple(self.args.crop_scale))[0]  # fmt: skip

    def pictures(self, name: str) -> None:
        from PIL import Image

        from sgcl_plugin.viewer import contact_sheet, render_saliency

        k = min(self.args.pictures, len(self.images))
        if k == 0:  # --pictures 0: none drawn
            return
        shown = [self.images[i] for i in range(k)]  # a folder's RGB PIL images at their sizes, or uint8 tensors
        x = torch.stack([SaliencyInput(self.args.saliency_size)(image) for image in shown])
        with torch.no_grad():
            from sgcl_plugin.refresh import eval_mode

            with eval_mode(self.model.backbone):
                result = self.generator(self.saliency_backbone(x.to(self.device)))
        items = []
        for i, item in enumerate(shown):
            image = item if isinstance(item, Image.Image) else Image.fromarray(item.permute(1, 2, 0).numpy())
            picture = render_saliency(image, result.maps[i].cpu(), result.regions[i], max_boxes=8)  # the 8 best
            items.append((f"image {i}", picture))
        sheet = contact_sheet(items, columns=2)
        write_output(self.out / "saliency" / name, lambda f: sheet.save(f, format="PNG"))

    # --- one step ---------------------------------------------------------------------------------

    def augment_views(self, v1: Tensor, v2: Tensor) -> Tuple[Tensor, Tensor]:
        """--augment-on-device: the two view augmentations on the batch, with randomness that is a function of
        (seed, rank, step) alone: every rank draws its own augmentations (one seed for all ranks made them
        identical) and a resumed run draws the same ones; the global random state is left untouched."""
        assert self.device_views is not None
        devices = [self.device] if self.device.type == "cuda" else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed((self.args.seed * 1_000_003 + self.rank * 7_919 + self.global_step) % (2**63))
            return self.device_views[0](v1), self.device_views[1](v2)

    def losses(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        rows = flatten_pairs([batch["views1"], batch["views2"]], batch["scores"], batch["index"])  # B * t pairs
        t = rows.num_regions
        v1 = rows.views1.to(self.device, non_blocking=True)
        v2 = rows.views2.to(self.device, non_blocking=True)
        if self.device_views is not None:
            v1, v2 = self.augment_views(v1, v2)
        scores = rows.scores.to(self.device)
        image_ids = rows.image_ids.to(self.device)
        # Both views in one forward: one DDP call per step, BatchNorm statistics over both views.
        z1, z2 = self.project(torch.cat([v1, v2])).chunk(2)
        if self.args.method == "byol":
            p1, p2 = self.model.predictor(torch.cat([z1, z2])).chunk(2)
            t1, t2 = self.model.target(torch.cat([v1, v2])).chunk(2)
            out = self.objective(scores, p1=p1, p2=p2, t1=t1, t2=t2)
        else:  # SimCLR; NNCLR: each view's nearest neighbour in the support set is the other view's positive
            out = self.objective(scores, z1=z1, z2=z2, image_ids=image_ids)
        if self.args.intra_reduction == "sum":  # Eq. 9 sums over the t pairs of an image, Eq. 10 averages
            out["intra"] = out["intra"] * t
            out["loss"] = out["intra"] + out["inter"]
        return out

    def release(self) -> None:
        """Lets another run use ``--out`` (the lock also goes when the process ends, however it ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def project(self, x: Tensor) -> Tensor:
        return self.online(x)

    # --- the loop -----------------------------------------------------------------------------------

    def fit(self) -> Dict[str, Any]:
        args = self.args
        if args.resume:
            path = self.out / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
            if path.exists():
                self.load(str(path))
            elif args.resume != "auto":
                raise Refused(f"--resume {path}: no such checkpoint.")
        amp = args.amp and self.device.type == "cuda"
        # What the pairs show before training (random crops, or the true boxes with --regions gt).
        self.start_pair_rate = self.pair_rate()
        header = ["epoch", "step", "loss", "intra", "inter", "lr", "tau", "images_per_s", "seconds"]
        kept: List[List[str]] = []
        if self.main and self.global_step > 0 and self.log_path.exists():
            # A resumed run replays the steps after its checkpoint: keep only the rows up to it.
            with open(self.log_path, newline="") as f:
                kept = [r for r in csv.reader(f) if _log_step(r) is not None and _log_step(r) <= self.global_step]
        log_file = open_new_or_own(self.log_path, "w") if self.main else None
        log = csv.writer(log_file) if log_file else None
        if log and log_file:
            log.writerows([header, *kept])
            log_file.flush()
        epoch_times: List[float] = []
        stopped = False
        if args.eval_every and self.global_step == 0 and not self.history:
            self.record_history()  # the starting point of the curves: the randomly initialised backbone
        while self.epoch < args.epochs:
            at_start = self.epoch == 0 and args.refresh_at_start and self.schedule.last_epoch < 0
            if args.sgcl and args.regions != "gt" and (self.schedule.is_due(self.epoch) or at_start):
                self.refresh()
                self.save()
            self.sampler.epoch = self.epoch
            self.sampler.skip_batches = self.step_in_epoch
            self.items.epoch.fill_(self.epoch)
            bar = None
            if self.main and not args.no_progress:
                from tqdm.auto import tqdm

                bar = tqdm(
                    total=self.steps_per_epoch,
                    initial=self.step_in_epoch,
                    desc=f"epoch {self.epoch}",
                    dynamic_ncols=True,
                )
            t_epoch = time.perf_counter()
            steps_timed = 0
            epoch_losses: List[float] = []
            shown_epoch = self.epoch
            self.model.train()
            for batch in self.loader:
                t0 = time.perf_counter()
                lr = lr_at(self.global_step, self.total_steps, self.warmup_steps, args.lr)
                for group in self.opt.param_groups:
                    group["lr"] = lr
                with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
                    out = self.losses(batch)
                self.opt.zero_grad(set_to_none=True)
                out["loss"].backward()
                self.opt.step()
                tau = ema_at(self.global_step, self.total_steps, args.ema)
                if args.method == "byol":
                    self.model.update_target(tau)
                self.global_step += 1
                self.step_in_epoch += 1
                steps_timed += 1
                dt = time.perf_counter() - t0
                ips = args.batch_size * self.world / dt
                values = None
                if log or bar is not None:  # one host sync for the three numbers, not three
                    zero = out["loss"].detach().new_zeros(())
                    parts = [out["loss"].detach(), out["intra"].detach(), out.get("inter", zero).detach()]
                    values = torch.stack([p.float() for p in parts]).tolist()
                if log and values is not None:
                    row = [self.epoch, self.global_step, *(f"{v:.5f}" for v in values)]
                    log.writerow([*row, f"{lr:.6g}", f"{tau:.6f}", f"{ips:.1f}", f"{dt:.3f}"])
                    log_file.flush()  # type: ignore[union-attr]  # a kill keeps every row written
                if values is not None:
                    epoch_losses.append(values[0])
                if bar is not None and values is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{values[0]:.3f}", img_s=f"{ips:.1f}")
                if self.step_in_epoch == self.steps_per_epoch:
                    self.epoch, self.step_in_epoch = self.epoch + 1, 0
                    if args.eval_every and self.epoch % args.eval_every == 0 and self.epoch < args.epochs:
                        self.record_history()
                    self.save()
                elif self.global_step % args.ckpt_every == 0:
                    self.save()
                if args.stop_after_steps and self.global_step >= args.stop_after_steps:
                    stopped = True
                    break
            if bar is not None:
                bar.close()
            elif self.main and epoch_losses:  # --no-progress: the loss still reaches the console, once an epoch
                took = time.perf_counter() - t_epoch
                print(
                    f"epoch {shown_epoch}: loss {sum(epoch_losses) / len(epoch_losses):.4f} over {len(epoch_losses)} "
                    f"steps, {took:.1f} s",
                    flush=True,
                )
            if steps_timed:
                epoch_times.append((time.perf_counter() - t_epoch) / steps_timed * self.steps_per_epoch)
            if stopped:
                break
        if log_file:
            log_file.close()
        result: Dict[str, Any] = {
            "pair_rate_start": self.start_pair_rate,
            "history": self.history,
            "steps": float(self.global_step),
            "seconds_per_epoch": float(np.median(epoch_times)) if epoch_times else float("nan"),
            "refreshes": self.schedule.history,
        }
        if stopped:  # as if killed: no final save, the next run resumes from the last checkpoint
            return result
        if self.main:
            weights = self.model.backbone.state_dict()
            write_output(self.out / "backbone.pt", lambda f: torch.save(weights, f))
            if args.sgcl:
                self.pictures("final.png")
            if not args.no_eval:
                accuracies = self.evaluate()
                result.update(accuracies)
                if args.eval_every and not (self.history and self.history[-1]["epoch"] == self.epoch):
                    self.add_history(accuracies)  # (--epochs 0: the starting point is already the last)
                print(
                    f"kNN top-1 on {EVAL_NAMES[args.eval_data]} test objects: "
                    f"{100 * result['knn']:.2f}%  "
                    f"(linear probe {100 * result['linear']:.2f}%)"
                )
        return result

    def record_history(self) -> None:
        """Accuracy of the backbone as it is now, for the accuracy-vs-epochs curves (--eval-every).

        ``embed`` evaluates in eval mode and restores every module's own mode afterwards."""
        if self.main and not self.args.no_eval:
            self.add_history(self.evaluate())

    def add_history(self, accuracies: Dict[str, float]) -> None:
        """Appends this epoch's accuracies to the curves and rewrites eval.csv."""
        self.history.append({"epoch": float(self.epoch), **accuracies})
        with open_new_or_own(self.out / "eval.csv", "w") as f:
            w = csv.writer(f)
            keys = [k for k in ("knn", "linear", "dense_knn", "dense_linear") if k in self.history[0]]
            w.writerow(["epoch", *keys])
            for h in self.history:
                w.writerow([int(h["epoch"]), *(f"{h[k]:.4f}" for k in keys)])

    def evaluate(self) -> Dict[str, float]:
        """The accuracies of :func:`evaluate_backbone` for the online backbone as it is now."""
        return evaluate_backbone(self.model.backbone, self.args, self.device)


def main(argv: Optional[Sequence[str]] = None, method: Optional[str] = None) -> Dict[str, Any]:
    args = parse_args(argv, method)
    trainer = Trainer(args)
    if trainer.main:
        print(
            f"{'SGCL-' if args.sgcl else ''}{args.method.upper()} on {len(trainer.images)} images, "
            f"{trainer.pairs_per_image} pair(s)/image, {trainer.steps_per_epoch} steps/epoch x {args.epochs} epochs, "
            f"device {trainer.device}, world {trainer.world}; outputs in {trainer.out}"
        )
    try:
        result = trainer.fit()
    finally:
        trainer.release()
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


def _log_step(row: List[str]) -> Optional[int]:
    """The step of a log.csv row; None for the header or a line that is not a row (a garbage line is dropped
    on resume instead of stopping it)."""
    try:
        return int(row[1]) if len(row) > 1 and row[0] != "epoch" else None
    except ValueError:
        return None


def cli(method: Optional[str] = None) -> None:
    """Runs :func:`main` as a command: a refusal prints its message (no traceback) and exits with status 2."""
    try:
        main(method=method)
    except Refused as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)


if __name__ == "__main__":
    cli()
