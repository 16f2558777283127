"""The trainer's data: its images (composed scenes in one shared table, or a folder read lazily), the items'
seeded randomness, the per-epoch sampler, the crops and the loader."""

from __future__ import annotations

import argparse
import math
import os
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union, cast

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, Sampler

from sgcl_plugin import ImageFiles, SaliencyBank, SaliencyCropTransform, byol_view_transforms
from sgcl_plugin.images import to_image_tensor
from sgcl_plugin.testbed.eval_sets import class_groups
from sgcl_plugin.testbed.scenes import ComposedScenes
from sgcl_plugin.train.options import Refused

__all__ = [
    "EpochSampler",
    "ImageTable",
    "SeededItems",
    "augment_on_device",
    "composed_scene_table",
    "crop_transform",
    "device_view_augments",
    "folder_images",
    "steady_worker_heaps",
    "training_images",
    "training_loader",
    "training_scenes",
    "views_per_image",
]


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


def training_scenes(args: argparse.Namespace) -> ComposedScenes:
    """The composed pretraining scenes of a run (the images, their true boxes and masks)."""
    return ComposedScenes(
        args.num_images, image_size=args.image_size, seed=args.seed, split="train",
        object_scale=tuple(args.object_scale), min_objects=args.objects[0], max_objects=args.objects[1],
        class_groups=class_groups(args.co_occurrence),
    )  # fmt: skip


def composed_scene_table(args: argparse.Namespace) -> ImageTable:
    """``--data composed``: the training scenes' images, decoded once into one shared uint8 table."""
    scenes = training_scenes(args)

    def image(i: int) -> Any:
        return cast(Dict[str, Any], scenes[i])["image"]  # a dict: the scenes are not image_only

    return ImageTable(torch.stack([(to_image_tensor(image(i)) * 255).round().byte() for i in range(len(scenes))]))


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
    """The run's images: composed scenes in one shared uint8 table, or a folder's files read lazily (with
    :func:`steady_worker_heaps`, before any worker is forked)."""
    if args.data == "composed":
        return composed_scene_table(args)
    files = folder_images(args.data, args.max_side)
    steady_worker_heaps()
    return files


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


def views_per_image(args: argparse.Namespace) -> Tuple[int, int]:
    """``(t, size)``: the positive pairs drawn per image and their side in pixels.

    SGCL's t region pairs, or the plain method's t random pairs (``--baseline-views pairs``: same resolution and
    pixels); ``--baseline-views pixels``: one pair of random crops with as many pixels as SGCL's t pairs."""
    if args.sgcl or args.baseline_views == "pairs":
        return args.num_regions, args.crop_size
    return 1, args.baseline_crop_size or int(round(args.crop_size * math.sqrt(args.num_regions)))


def crop_transform(args: argparse.Namespace, bank: SaliencyBank, t: int, size: int) -> SaliencyCropTransform:
    """The crops of every item (drawn by the CPU workers from ``bank``'s regions), with the view augmentations
    there too unless ``--augment-on-device`` moves them to the batch (:func:`device_view_augments`)."""
    colour = {"hue": args.hue, "grayscale_p": args.grayscale_p}
    return SaliencyCropTransform(
        bank, num_regions=t, size=size, augment=not args.augment_on_device,
        before_refresh=args.before_refresh, box_jitter=args.box_jitter if args.sgcl else 0.0,
        scale=tuple(args.crop_scale),
        view_transforms=None if args.augment_on_device else byol_view_transforms(size, **colour),
    )  # fmt: skip


def device_view_augments(args: argparse.Namespace, size: int, device: torch.device) -> Optional[List[nn.Module]]:
    """``--augment-on-device``: the two views' augmentations, batched on ``device`` with kornia; None without it."""
    if not args.augment_on_device:
        return None
    from sgcl_plugin.views import BatchViewAugment

    colour = {"hue": args.hue, "grayscale_p": args.grayscale_p}
    return [BatchViewAugment(view=v, size=size, **colour).to(device) for v in (1, 2)]


def augment_on_device(
    views: Sequence[nn.Module], v1: Tensor, v2: Tensor, seed: int, rank: int, step: int, device: torch.device
) -> Tuple[Tensor, Tensor]:
    """Applies the two views' batch augmentations (:func:`device_view_augments`) to ``v1`` and ``v2``, with
    randomness that is a function of (seed, rank, step) alone: every rank draws its own augmentations (one seed
    for all ranks made them identical) and a resumed run draws the same ones; the global random state (CPU, and
    ``device``'s, if CUDA) is left untouched."""
    devices = [device] if device.type == "cuda" else []
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed((seed * 1_000_003 + rank * 7_919 + step) % (2**63))
        return views[0](v1), views[1](v2)


def training_loader(
    items: Dataset, sampler: EpochSampler, args: argparse.Namespace, device: torch.device
) -> DataLoader:
    """The batches of a run: ``--batch-size`` items in ``sampler``'s order, loaded by ``--workers`` processes
    (kept across epochs), the last incomplete batch dropped."""
    return DataLoader(
        items,
        batch_size=args.batch_size,
        sampler=sampler,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        drop_last=True,
        pin_memory=device.type == "cuda",
    )
