"""Frozen-feature evaluation of a pretrained backbone: weighted kNN and a linear probe, on pooled features
(one vector per image) or on the cells of feature maps (a dense probe: which object is at each place)."""

from __future__ import annotations

from typing import Callable, Dict, Optional, Tuple

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from sgcl_plugin.checks import check_interval
from sgcl_plugin.features import default_device, eval_mode

__all__ = ["cell_labels", "dense_probe_accuracy", "embed", "knn_accuracy", "knn_predict", "linear_probe_accuracy"]


@torch.no_grad()
def embed(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    batch_size: int = 256,
    device: Optional[torch.device] = None,
    pool: bool = True,
) -> Tensor:
    """Global-average-pooled features of ``images`` (n, 3, H, W), in eval mode, without gradients.

    A model returning (n, C, h, w) maps is pooled over space (``pool=False``: the maps themselves, for
    :func:`dense_probe_accuracy`); (n, C) outputs are used as they are. The batches go to ``device``
    (default: the device of the model's first parameter, the CPU for a parameterless callable); the
    features come back on the CPU, in float32.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (n, 3, H, W), got {tuple(images.shape)}.")
    device = torch.device(device) if device is not None else default_device(model)
    out = []
    with eval_mode(model):
        for (x,) in DataLoader(TensorDataset(images), batch_size=batch_size):
            f = model(x.to(device))
            if not pool and f.ndim != 4:
                raise ValueError(f"pool=False needs a model that returns (n, C, h, w) maps, got {tuple(f.shape)}.")
            out.append((f.mean(dim=(2, 3)) if f.ndim == 4 and pool else f).float().cpu())
    return torch.cat(out)


def cell_labels(
    masks: Tensor, labels: Tensor, grid: Tuple[int, int], min_fraction: float = 0.5, ignore_index: int = -1
) -> Tensor:
    """The class at each cell of a feature map, from an image's object masks: the class whose objects cover
    at least ``min_fraction`` of the cell's pixels, else ``ignore_index`` (background, or no class dominates).

    Args:
        masks: (k, H, W) bool visible pixels of the image's k objects (k may be 0).
        labels: (k,) their classes (>= 0).
        grid: (h, w) of the feature map; cell (i, j) covers the pixels that adaptive average pooling from
            (H, W) to (h, w) gives it (the exact 1/h x 1/w tile when h divides H and w divides W).
        min_fraction: Share of the cell's pixels one class needs, in (0.5, 1] for a unique winner (0.5 too:
            the larger share wins, ties go to the lower class).
        ignore_index: Label of the cells no class holds.

    Returns:
        (h, w) int64 labels.
    """
    if masks.ndim != 3 or labels.shape != masks.shape[:1]:
        raise ValueError(
            f"masks must be (k, H, W) and labels (k,), got {tuple(masks.shape)} and {tuple(labels.shape)}."
        )
    check_interval("min_fraction", min_fraction, 0.5, 1)
    h, w = int(grid[0]), int(grid[1])
    out = torch.full((h, w), ignore_index, dtype=torch.int64)
    if masks.shape[0] == 0:
        return out
    cover = torch.nn.functional.adaptive_avg_pool2d(masks.float()[None], (h, w))[0]  # (k, h, w) fractions
    classes = torch.unique(labels)
    per_class = torch.stack([cover[labels == c].sum(0) for c in classes])  # (classes, h, w)
    share, best = per_class.max(0)
    held = share >= min_fraction - 1e-6
    out[held] = classes[best[held]]
    return out


def dense_probe_accuracy(
    train_maps: Tensor,
    train_cells: Tensor,
    test_maps: Tensor,
    test_cells: Tensor,
    ignore_index: int = -1,
    k: int = 20,
) -> Dict[str, float]:
    """kNN and linear-probe accuracy of feature-map cells: which object class is at each place of an image,
    read from the frozen features there (the object-level, detection-like counterpart of the pooled probes).

    Args:
        train_maps: (n, C, h, w) feature maps of the labelled images (:func:`embed` with ``pool=False``).
        train_cells: (n, h, w) their cell labels (:func:`cell_labels`), ``ignore_index`` where no class holds.
        test_maps: (m, C, h, w) feature maps to classify.
        test_cells: (m, h, w) their cell labels.
        ignore_index: Cells left out of both sets.
        k: Neighbours of the kNN.

    Returns:
        ``{"knn": ..., "linear": ..., "train_cells": ..., "test_cells": ...}``: accuracies in [0, 1] over the
        labelled test cells, and how many cells each set had.
    """
    sets = []
    for maps, cells, name in ((train_maps, train_cells, "train"), (test_maps, test_cells, "test")):
        if maps.ndim != 4 or cells.shape != (maps.shape[0], *maps.shape[2:]):
            raise ValueError(
                f"{name}_maps must be (n, C, h, w) and {name}_cells (n, h, w), got {tuple(maps.shape)} and "
                f"{tuple(cells.shape)}."
            )
        keep = cells != ignore_index
        if not bool(keep.any()):
            raise ValueError(f"No {name} cell has a label: the dense probe has nothing to {name}.")
        sets.append((maps.permute(0, 2, 3, 1)[keep], cells[keep]))
    (a, ya), (b, yb) = sets
    return {
        "knn": knn_accuracy(a, ya, b, yb, k=k),
        "linear": linear_probe_accuracy(a, ya, b, yb),
        "train_cells": float(len(ya)),
        "test_cells": float(len(yb)),
    }


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    num_classes: int,
    k: int = 20,
    temperature: float = 0.1,
) -> Tensor:
    """Weighted kNN on cosine similarity (Wu et al., 2018): votes ``exp(sim / temperature)``.

    Runs on the device of ``test_features`` (the other tensors are moved there).

    Returns:
        Predicted labels (n_test,), on that device.
    """
    if train_features.shape[0] != train_labels.shape[0]:
        raise ValueError("train_features and train_labels differ in length.")
    if train_features.shape[0] == 0 or test_features.shape[0] == 0:
        raise ValueError("kNN needs non-empty train and test sets.")
    k = min(k, train_features.shape[0])
    a = torch.nn.functional.normalize(test_features.float(), dim=1)
    b = torch.nn.functional.normalize(train_features.float().to(a.device), dim=1)
    train_labels = train_labels.to(a.device)
    preds = []
    for chunk in a.split(1024):
        sim, idx = (chunk @ b.T).topk(k, dim=1)
        votes = torch.zeros(chunk.shape[0], num_classes, device=a.device)
        votes.scatter_add_(1, train_labels[idx], (sim / temperature).exp())
        preds.append(votes.argmax(1))
    return torch.cat(preds)


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 20,
    temperature: float = 0.1,
) -> float:
    """Top-1 accuracy (in [0, 1]) of :func:`knn_predict`."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(train_features, train_labels, test_features, num_classes, k, temperature)
    return float((pred == test_labels.to(pred.device)).float().mean())


def linear_probe_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    weight_decay: float = 1e-4,
    max_iter: int = 200,
) -> float:
    """Top-1 accuracy of a multinomial logistic regression on standardized frozen features (L-BFGS), on the
    device of ``train_features`` (the other tensors are moved there)."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    device = train_features.device
    train_labels, test_labels = train_labels.to(device), test_labels.to(device)
    mean, std = train_features.mean(0), train_features.std(0).clamp(min=1e-6)
    x_train = ((train_features - mean) / std).double()
    x_test = ((test_features.to(device) - mean) / std).double()
    linear = torch.nn.Linear(x_train.shape[1], num_classes).double().to(device)
    with torch.no_grad():  # zeros: the problem is convex, and the probe must not draw from the caller's RNG
        linear.weight.zero_()
        linear.bias.zero_()
    opt = torch.optim.LBFGS(linear.parameters(), max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure() -> Tensor:
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(linear(x_train), train_labels)
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    with torch.enable_grad():
        opt.step(closure)
    with torch.no_grad():
        return float((linear(x_test).argmax(1) == test_labels).float().mean())
