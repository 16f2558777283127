"""The trainer's model: the backbone and its heads (with BYOL's EMA target), the learning-rate and momentum
schedules, the optimizer, and what the saliency refresh reads."""

from __future__ import annotations

import argparse
import copy
import math
from typing import Any, Sequence

import torch
from torch import Tensor, nn

from sgcl_plugin import SaliencyGenerator, SGCLObjective
from sgcl_plugin.features import Stride, refresh_features
from sgcl_plugin.hierarchy import PHOTO_RANKING
from sgcl_plugin.images import IMAGENET_MEAN, IMAGENET_STD
from sgcl_plugin.region_sources import DEFAULT_REGION_SOURCE, last_map_only, reads_pair

__all__ = [
    "Renormalize",
    "SSLModel",
    "build_generator",
    "build_objective",
    "build_optimizer",
    "ema_at",
    "lr_at",
    "mlp",
    "saliency_features",
    "saliency_stride",
]


def mlp(in_dim: int, hidden: int, out: int) -> nn.Sequential:
    """Linear, BatchNorm, ReLU, Linear: the projector and predictor heads."""
    return nn.Sequential(
        nn.Linear(in_dim, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True), nn.Linear(hidden, out)
    )


class Renormalize(nn.Module):
    """Maps ImageNet-normalized input to the normalization a pretrained backbone was trained with."""

    scale: Tensor
    shift: Tensor

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.register_buffer("scale", torch.tensor(IMAGENET_STD)[:, None, None] / torch.tensor(std)[:, None, None])
        shift = (torch.tensor(IMAGENET_MEAN) - torch.tensor(mean)) / torch.tensor(std)
        self.register_buffer("shift", shift[:, None, None])

    def forward(self, x: Tensor) -> Tensor:
        """``x`` in the backbone's own normalization."""
        return x * self.scale + self.shift


class SSLModel(nn.Module):
    """Backbone + projector (+ predictor and EMA target copies for BYOL)."""

    backbone: nn.Module

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
            self.backbone = nn.Sequential(Renormalize(lite.mean, lite.std), lite)
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
        """BYOL: the EMA target's projection of a batch of views (no gradients)."""
        return self.target_projector(self.target_backbone(x).mean(dim=(2, 3)))

    @torch.no_grad()
    def update_target(self, tau: float) -> None:
        """BYOL: the target's parameters move to ``tau * target + (1 - tau) * online``; its buffers (BatchNorm
        statistics) are copied."""
        for online, target in ((self.backbone, self.target_backbone), (self.projector, self.target_projector)):
            for po, pt in zip(online.parameters(), target.parameters()):
                pt.mul_(tau).add_(po.detach(), alpha=1 - tau)
            for bo, bt in zip(online.buffers(), target.buffers()):
                bt.copy_(bo)


def lr_at(step: int, total: int, warmup: int, base: float) -> float:
    """The learning rate at ``step`` of ``total``: linear warm-up over ``warmup`` steps to ``base``, then cosine."""
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    return base * 0.5 * (1 + math.cos(math.pi * progress))


def ema_at(step: int, total: int, base: float) -> float:
    """BYOL's target momentum at ``step`` of ``total``: ``base`` at step 0, cosine to 1 at the end."""
    return 1 - (1 - base) * (math.cos(math.pi * step / max(1, total)) + 1) / 2


def build_objective(args: argparse.Namespace, world: int) -> SGCLObjective:
    """The step's loss (:class:`~sgcl_plugin.SGCLObjective`): the method's intra loss, weighted by the pair scores
    (``--gamma``; 0 with ``--no-scores``), and with SGCL the inter-image loss (``--inter``); its queues gather
    across the ``world`` processes."""
    return SGCLObjective(
        args.method, args.proj_dim, gamma=args.gamma if args.scores else 0.0, inter=args.sgcl and args.inter,
        temperature=args.temperature, queue_size=args.queue_size, num_neighbors=args.num_neighbors,
        support_size=args.queue_size, gather_distributed=world > 1,
    )  # fmt: skip


def build_optimizer(model: nn.Module, args: argparse.Namespace) -> torch.optim.Optimizer:
    """``--optimizer`` over the trainable parameters: SGD (momentum 0.9) or AdamW, at ``--lr`` and
    ``--weight-decay``."""
    params = [p for p in model.parameters() if p.requires_grad]
    if args.optimizer == "sgd":
        return torch.optim.SGD(params, lr=args.lr, momentum=0.9, weight_decay=args.weight_decay)
    return torch.optim.AdamW(params, lr=args.lr, weight_decay=args.weight_decay)


def build_generator(args: argparse.Namespace) -> SaliencyGenerator:
    """``--regions`` as a generator: a source of the table (SGCL's Ncut in hierarchy, objects or paper mode, the
    ContrastiveCrop-style heat map) with ``--min-area`` (and ``--photo-ranking``'s hierarchy options)."""
    # 'ncut' is the paper mode's old name; true boxes ('gt') fill the bank without a refresh: the default source
    # serves the pictures. Any other name is a mode of the table (SaliencyGenerator refuses an unknown one).
    mode = {"ncut": "paper", "gt": DEFAULT_REGION_SOURCE}.get(args.regions, args.regions)
    if getattr(args, "photo_ranking", False):  # parse_args allows it with the hierarchy mode only
        return SaliencyGenerator(min_area=args.min_area, regions=mode, options=PHOTO_RANKING)
    return SaliencyGenerator(min_area=args.min_area, regions=mode)


def saliency_stride(args: argparse.Namespace) -> Stride:
    """What the refresh reads, as a refresh driver's ``feature_stride``: the backbone's stage(s) at
    ``--saliency-stride`` (its own output at 32).

    A source that reads the last map only (the heat map: ContrastiveCrop's) reads it whatever the stride; one that
    reads a pair (the hierarchy mode) reads by default the last map and the stage at half its stride (``"auto"``);
    the other modes by default the stride-16 stage."""
    strides = args.saliency_stride
    if last_map_only(args.regions):
        return None
    if strides is None and reads_pair(args.regions):
        return "auto"
    stride = tuple(strides) if strides and len(strides) == 2 else (strides[0] if strides else 16)
    return None if stride == 32 else stride  # type: ignore[return-value]


def saliency_features(backbone: nn.Module, args: argparse.Namespace) -> Any:
    """The module the refresh runs: :func:`~sgcl_plugin.features.refresh_features` at :func:`saliency_stride`."""
    return refresh_features(backbone, saliency_stride(args), args.regions)
