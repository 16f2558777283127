"""The trainer's command line: the parser, its option groups, the presets and the checks of the values."""

from __future__ import annotations

import argparse
import math
from pathlib import Path
from typing import Any, Dict, Optional, Sequence

from sgcl_plugin.region_sources import DEFAULT_REGION_SOURCE, REGION_SOURCES, last_map_only, reads_pair, region_help

__all__ = ["DESCRIPTION", "METHODS", "SMOKE", "TESTBED", "Refused", "build_parser", "evaluation_settings", "parse_args"]

METHODS = ("byol", "simclr", "nnclr")

DESCRIPTION = """Reference SGCL pretraining: BYOL, SimCLR or NNCLR, with or without SGCL, one shared training core.

    python examples/sgcl_train.py --method byol                 # SGCL-BYOL on composed scenes
    python examples/sgcl_train.py --method byol --no-sgcl       # the plain BYOL baseline
    python examples/sgcl_train.py --method simclr --smoke       # a few steps on tiny data
    torchrun --nproc_per_node 4 examples/sgcl_train.py ...      # DDP: the refresh shards and gathers
    python examples/sgcl_train.py --resume auto ...             # continue from <out>/checkpoint.pt

`examples/byol.py`, `examples/simclr.py` and `examples/nnclr.py` are this script with the method
preset. Every switch of the paper's ablations is an option: `--no-inter` (intra loss only),
`--no-scores` (gamma = 0), `--num-regions`, `--every-n-epochs`, `--saliency-size`.
"""
"""The parser's description (printed as it is by ``--help``)."""


class _HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """The description as it is, and every option's default after its help (not for switches that are off,
    nor for defaults the help explains)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if action.default is None or action.default is False or "default" in text:
            return text
        return super()._get_help_string(action) or ""


def build_parser(method: Optional[str] = None) -> argparse.ArgumentParser:
    """The trainer's option parser, in six groups.

    Args:
        method: The default of ``--method`` (``examples/byol.py``, ``simclr.py`` and ``nnclr.py`` preset it);
            None: ``byol``.

    Returns:
        The parser (its defaults before the ``--smoke`` / ``--testbed`` presets, see :func:`parse_args`).
    """
    p = argparse.ArgumentParser(description=DESCRIPTION, formatter_class=_HelpFormatter)
    _add_sgcl_options(p, method)
    _add_data_options(p)
    _add_model_options(p)
    _add_run_options(p)
    _add_evaluation_options(p)
    _add_testbed_options(p)
    return p


def _add_sgcl_options(p: argparse.ArgumentParser, method: Optional[str]) -> None:
    """SGCL: the method, its switches and the saliency refresh."""
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
        "--regions", choices=(*REGION_SOURCES, "ncut", "gt"), default=DEFAULT_REGION_SOURCE,
        help=f"region source: {region_help()} ('ncut' is an old name of 'paper'); 'gt': the composed scenes' true "
        "boxes",
    )  # fmt: skip
    sgcl.add_argument("--min-area", type=int, default=4, help="smallest region, in feature-map cells (paper: 4)")
    sgcl.add_argument(
        "--photo-ranking", action="store_true",
        help="hierarchy mode: rank regions with the option that qualified on real photos (frame exponent 1 for a "
        "trained network's maps, the paper's regions as extra candidates, score power 12; docs/RESULTS.md); not the "
        "default: on the testbed its crops lost 0.8 points of dense linear accuracy",
    )  # fmt: skip
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


def _add_data_options(p: argparse.ArgumentParser) -> None:
    """Data and views: the images, the crops and their augmentations."""
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


def _add_model_options(p: argparse.ArgumentParser) -> None:
    """Model and optimisation: the network, its heads, the schedule and the seed."""
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


def _add_run_options(p: argparse.ArgumentParser) -> None:
    """Run, checkpoints and outputs."""
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


def _add_evaluation_options(p: argparse.ArgumentParser) -> None:
    """Evaluation: which frozen-feature probes, on how many objects."""
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


def _add_testbed_options(p: argparse.ArgumentParser) -> None:
    """Testbed and ablations: the composed scenes' settings and the baseline's views."""
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


# --smoke: a few steps on tiny data (< 2 minutes on a CPU).
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
    """Parses and checks the options; ``--smoke`` and ``--testbed`` swap in their defaults, which explicit options
    still override.

    Args:
        argv: The command line without the program name (None: ``sys.argv[1:]``).
        method: The default of ``--method`` (see :func:`build_parser`).

    Returns:
        The options, ``inter`` resolved to a bool.

    Raises:
        SystemExit: status 2 after argparse's ``usage: ... error: ...`` message, for a value out of range or
            options that contradict each other (the message names the option and the fix).
    """
    parser = build_parser(method)
    args = parser.parse_args(argv)
    if args.smoke and args.testbed:
        parser.error("--smoke and --testbed are two presets: choose one")
    if args.smoke or args.testbed:
        parser.set_defaults(**(SMOKE if args.smoke else TESTBED))
        args = parser.parse_args(argv)
    if args.inter is None:
        args.inter = args.method != "simclr"
    for check in (_check_refresh, _check_numbers, _check_arch_and_scenes, _check_paths, _check_views,
                  _check_saliency_grid, _check_combinations):  # fmt: skip
        check(parser, args)
    return args


def _check_refresh(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--num-regions``, ``--every-n-epochs`` and ``--saliency-stride``."""
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
    if len(strides) == 2 and not reads_pair(args.regions):
        pairs = " / ".join(name for name in REGION_SOURCES if reads_pair(name))
        parser.error(f"two --saliency-stride values are for --regions {pairs} (the other modes read one map)")


def _check_numbers(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Every count, size and rate: its range, and the sizes memory can hold."""
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


def _check_arch_and_scenes(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--arch`` is one the trainer can build; ``--object-scale`` a share of the scene's side."""
    from sgcl_plugin.backbones import KNOWN_ARCHS

    if args.arch not in KNOWN_ARCHS:
        parser.error(f"--arch {args.arch!r} is not one of {', '.join(KNOWN_ARCHS)}")
    lo, hi = args.object_scale
    if not (math.isfinite(lo) and math.isfinite(hi) and 0 < lo <= hi <= 1):
        parser.error(f"--object-scale needs 0 < LOW <= HIGH <= 1 (a share of the scene's side), got {lo} {hi}")


def _check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--data`` is a folder (or 'composed'), ``--resume`` a file (or 'auto'), ``--out`` not a file."""
    if args.data != "composed" and not Path(args.data).is_dir():
        parser.error(f"--data {args.data}: no such folder (give a folder of images, or 'composed')")
    if args.resume and args.resume != "auto" and not Path(args.resume).is_file():
        parser.error(f"--resume {args.resume}: no such checkpoint file")
    if Path(args.out).exists() and not Path(args.out).is_dir():
        parser.error(f"--out {args.out} is a file, not a folder")


def _check_views(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--objects``, ``--crop-scale``, the colour augmentations and ``--ema``."""
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


def _check_saliency_grid(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """``--saliency-size`` gives the refresh a feature grid of at least 2 x 2 cells at its stride."""
    strides = args.saliency_stride or []
    # The refresh needs a feature grid of at least 2 x 2 cells (3 for the objects mode) at its stride.
    stride = 32 if last_map_only(args.regions) else max(strides or [32 if reads_pair(args.regions) else 16])
    if args.sgcl and args.regions != "gt" and args.saliency_size < 2 * stride:
        parser.error(
            f"--saliency-size {args.saliency_size} gives a feature grid under 2 x 2 cells at stride {stride}; "
            f"use at least {2 * stride} (the paper: 640)"
        )


def _check_combinations(parser: argparse.ArgumentParser, args: argparse.Namespace) -> None:
    """Options that contradict each other: an ``--out`` inside ``--data``, ``--max-side`` or ``--regions gt``
    without the data they apply to, a run that would do nothing."""
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
    if args.photo_ranking and args.regions != "hierarchy":
        parser.error(f"--photo-ranking ranks the hierarchy mode's regions; --regions is {args.regions}")
    if args.epochs == 0 and args.no_eval:
        parser.error("--epochs 0 with --no-eval does nothing: evaluate the untrained network, or train")


def evaluation_settings(args: argparse.Namespace) -> Dict[str, Any]:
    """The options as the keyword arguments of :func:`~sgcl_plugin.testbed.eval_sets.evaluate_backbone`: the probe
    set (``--eval-data``), its sizes (``--eval-train``, ``--eval-test``), the crop size and the composed scenes'
    settings (``--image-size``, ``--object-scale``, ``--objects``, ``--co-occurrence``)."""
    return {
        "data": args.eval_data,
        "n_train": args.eval_train,
        "n_test": args.eval_test,
        "crop_size": args.crop_size,
        "image_size": args.image_size,
        "object_scale": tuple(args.object_scale),
        "objects": tuple(args.objects),
        "co_occurrence": args.co_occurrence,
    }
