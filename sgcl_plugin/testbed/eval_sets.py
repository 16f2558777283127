"""The trainer's evaluation sets on the testbed, and :func:`evaluate_backbone`, which probes a frozen backbone on them.

Objects cut from composed scenes by their true boxes (pooled kNN and linear probe), whole scenes with each pixel's
object (the dense probe), or Fashion-MNIST items; every set is built once per process (cached) and normalized as the
training crops are.
"""

from __future__ import annotations

import functools
from typing import Any, Dict, Optional, Tuple

import numpy as np
import torch
from torch import Tensor, nn

from sgcl_plugin.images import IMAGENET_MEAN, IMAGENET_STD
from sgcl_plugin.testbed.evaluation import cell_labels, dense_probe_accuracy, embed, knn_accuracy, linear_probe_accuracy
from sgcl_plugin.testbed.scenes import ComposedScenes, load_fashion_mnist, object_crops

__all__ = [
    "EVAL_DATA",
    "class_groups",
    "evaluate_backbone",
    "fashion_eval_sets",
    "imagenet_normalize",
    "scene_cells",
    "scene_dense_eval_sets",
    "scene_object_eval_sets",
]

EVAL_DATA = ("objects", "isolated", "fashion")
"""The sets :func:`evaluate_backbone` probes on (the trainer's ``--eval-data``)."""


def class_groups(co_occurrence: int) -> Optional[Tuple[Tuple[int, ...], ...]]:
    """``--co-occurrence`` as ComposedScenes' class groups: the labels equal modulo 10 / n (None for 10)."""
    if co_occurrence == 10:
        return None
    step = 10 // co_occurrence
    return tuple(tuple(range(g, 10, step)) for g in range(step))


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
    backbone: nn.Module,
    data: str = "objects",
    n_train: int = 2000,
    n_test: int = 1000,
    crop_size: int = 64,
    image_size: int = 160,
    object_scale: Tuple[float, float] = (0.15, 0.45),
    objects: Tuple[int, int] = (2, 6),
    co_occurrence: int = 10,
    device: Optional[torch.device] = None,
) -> Dict[str, float]:
    """The frozen backbone's accuracies (eval mode; draws no random numbers): kNN and linear probe on pooled
    features of objects, and on composed scenes also the dense probe (``dense_knn``, ``dense_linear``): each
    feature-map cell of a whole scene classified as the object that covers at least half of it, as detection and
    segmentation read a backbone.

    The trainer passes its options (:func:`sgcl_plugin.train.evaluation_settings`); the defaults are its own.

    Args:
        backbone: Images (n, 3, H, W), ImageNet-normalized, to feature maps (n, C, h, w).
        data: ``"objects"``: objects cut from composed scenes by their true boxes, with context;
            ``"isolated"``: the same objects alone on grey; ``"fashion"``: Fashion-MNIST items (no dense probe).
        n_train: Labelled objects (train split) for the kNN and the probes; the dense probe takes half as many
            whole scenes.
        n_test: Objects to classify (test split); the dense probe takes half as many scenes.
        crop_size: Side the objects are resized to.
        image_size: Side of the composed scenes.
        object_scale: Object side as a fraction of the scene side, (low, high).
        objects: Objects per scene, (min, max).
        co_occurrence: Classes a scene's objects come from (:func:`class_groups`).
        device: Where the backbone runs (default: where its parameters are).

    Returns:
        ``knn`` and ``linear`` accuracies in [0, 1], and ``dense_knn`` and ``dense_linear`` for composed scenes.

    Raises:
        ValueError: ``data`` is none of the three.
    """
    if data not in EVAL_DATA:
        raise ValueError(f"data must be one of {', '.join(EVAL_DATA)}, got {data!r}.")
    if data in ("objects", "isolated"):
        sets = scene_object_eval_sets(
            n_train, n_test, crop_size, image_size, tuple(object_scale), tuple(objects),  # type: ignore[arg-type]
            isolate=data == "isolated", co_occurrence=co_occurrence,
        )  # fmt: skip
    else:
        sets = fashion_eval_sets(n_train, n_test, crop_size)
    train = embed(backbone, sets["train_x"], device=device)
    test = embed(backbone, sets["test_x"], device=device)
    result = {
        "knn": knn_accuracy(train, sets["train_y"], test, sets["test_y"]),
        "linear": linear_probe_accuracy(train, sets["train_y"], test, sets["test_y"]),
    }
    if data in ("objects", "isolated"):
        # a scene holds about 6 objects: half as many scenes as objects gives the dense probe ~3x the samples
        dense = scene_dense_eval_sets(
            max(1, n_train // 2), max(1, n_test // 2), image_size, tuple(object_scale),  # type: ignore[arg-type]
            tuple(objects), co_occurrence,  # type: ignore[arg-type]
        )  # fmt: skip
        maps = {s: embed(backbone, dense[f"{s}_x"], device=device, pool=False) for s in ("train", "test")}
        cells = {s: scene_cells(dense, s, (maps[s].shape[2], maps[s].shape[3])) for s in maps}
        probe = dense_probe_accuracy(maps["train"], cells["train"], maps["test"], cells["test"])
        result.update(dense_knn=probe["knn"], dense_linear=probe["linear"])
    return result


@functools.lru_cache(maxsize=2)  # built once per run (evaluate_backbone calls it at every evaluation)
def fashion_eval_sets(n_train: int, n_test: int, size: int) -> Dict[str, Tensor]:
    """Fashion-MNIST objects (grey on black, as RGB), resized to the crop size and normalized."""
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        images, labels = load_fashion_mnist(split)
        g = torch.Generator().manual_seed(1234)
        idx = torch.randperm(len(labels), generator=g)[:n]
        x = torch.as_tensor(np.asarray(images))[idx].float().div(255)[:, None].expand(-1, 3, -1, -1)
        x = nn.functional.interpolate(x, size=(size, size), mode="bilinear", antialias=True, align_corners=False)
        out[f"{split}_x"], out[f"{split}_y"] = imagenet_normalize(x), torch.as_tensor(np.asarray(labels))[idx].long()
    return out
