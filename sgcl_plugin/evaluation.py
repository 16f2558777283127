"""Frozen-feature evaluation of a pretrained backbone: weighted kNN and a linear probe."""

from __future__ import annotations

from typing import Callable, Optional

import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset

from sgcl_plugin.refresh import default_device, eval_mode


@torch.no_grad()
def embed(
    model: Callable[[Tensor], Tensor],
    images: Tensor,
    batch_size: int = 256,
    device: Optional[torch.device] = None,
) -> Tensor:
    """Global-average-pooled features of ``images`` (n, 3, H, W), in eval mode, without gradients.

    A model returning (n, C, h, w) maps is pooled over space; (n, C) outputs are used as they are. The
    batches go to ``device`` (default: the device of the model's first parameter, the CPU for a
    parameterless callable); the features come back on the CPU, in float32.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (n, 3, H, W), got {tuple(images.shape)}.")
    device = torch.device(device) if device is not None else default_device(model)
    out = []
    with eval_mode(model):
        for (x,) in DataLoader(TensorDataset(images), batch_size=batch_size):
            f = model(x.to(device))
            out.append((f.mean(dim=(2, 3)) if f.ndim == 4 else f).float().cpu())
    return torch.cat(out)


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
