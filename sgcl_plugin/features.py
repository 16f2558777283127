"""Feature maps from any backbone, for saliency refreshes: one helper for torchvision, timm, lightly, solo-learn.

:func:`feature_maps` is what every refresh path (the reference trainer, the lightly, solo-learn and
Lightning adapters) calls on the user's model; :class:`FeatureMaps` reads a stage at a chosen stride;
:func:`eval_mode` and :func:`default_device` are how the refresh, the probes and the evaluation run a model.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from typing import Any, Dict, Iterator, List, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgcl_plugin.checks import check_feature_shape
from sgcl_plugin.region_sources import check_region_source

__all__ = [
    "FeatureMaps",
    "at_stride",
    "check_feature_output",
    "check_stride",
    "default_device",
    "eval_mode",
    "feature_map_backbone",
    "feature_maps",
    "find_stride_layer",
    "hierarchy_strides",
    "refresh_features",
]

_POOLING = (nn.AdaptiveAvgPool2d, nn.AdaptiveMaxPool2d, nn.Flatten, nn.Identity)


@contextmanager
def eval_mode(model: Any) -> Iterator[None]:
    """Puts every submodule of ``model`` in eval mode and restores each one's own flag afterwards."""
    if not isinstance(model, torch.nn.Module):
        yield
        return
    flags = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield
    finally:
        for m, flag in flags:
            m.training = flag


def default_device(model: Any) -> torch.device:
    """The device of the model's first parameter or buffer; a bound method or ``functools.partial`` of a module
    counts as that module (e.g. ``backbone.forward_features``); the CPU for any other callable."""
    if not isinstance(model, torch.nn.Module):
        for attribute in ("__self__", "func"):  # a bound method; a functools.partial of a module
            owner = getattr(model, attribute, None)
            if isinstance(owner, torch.nn.Module):
                model = owner
                break
    if isinstance(model, torch.nn.Module):
        for p in model.parameters():
            return p.device
        for b in model.buffers():
            return b.device
    return torch.device("cpu")


def _unwrap(model: Any) -> Any:
    """A model's ``backbone`` when it has one (lightly / solo-learn models), else the model."""
    inner = getattr(model, "backbone", None)
    if isinstance(model, nn.Module) and not isinstance(model, nn.Sequential) and isinstance(inner, nn.Module):
        return inner
    return model


def _kind(backbone: Any) -> str:
    """How :func:`feature_maps` reads a backbone (see there)."""
    if isinstance(backbone, nn.Sequential):
        return "sequential"
    if not isinstance(backbone, nn.Module):
        return "callable"
    if hasattr(backbone, "forward_features") and type(backbone).__module__.startswith("timm."):
        return "timm"
    if all(hasattr(backbone, n) for n in ("conv1", "bn1", "relu", "maxpool", "layer1", "layer4")):
        return "resnet"  # torchvision's ResNet, its classifier replaced by Identity or not (solo-learn)
    if all(hasattr(backbone, n) for n in ("conv1", "block1", "block3", "bn1", "relu")):
        return "wide_resnet"  # solo-learn's WideResNet
    return "module"


class _LastMap(nn.Module):
    """The last spatial feature map of a known backbone kind, (B, C, h, w); shares its weights."""

    def __init__(self, backbone: nn.Module, kind: str) -> None:
        super().__init__()
        self.backbone, self.kind = backbone, kind

    def extra_repr(self) -> str:
        return f"kind={self.kind!r}"

    def forward(self, x: Tensor) -> Tensor:
        b: Any = self.backbone
        if self.kind == "resnet":
            x = b.maxpool(b.relu(b.bn1(b.conv1(x))))
            return b.layer4(b.layer3(b.layer2(b.layer1(x))))
        if self.kind == "wide_resnet":
            return b.relu(b.bn1(b.block3(b.block2(b.block1(b.conv1(x))))))
        out = b.forward_features(x)
        if out.ndim == 3:  # ViT tokens (B, prefix + h * w, C)
            from sgcl_plugin.affinity import tokens_to_map

            prefix = int(getattr(b, "num_prefix_tokens", 1))
            grid = getattr(getattr(b, "patch_embed", None), "grid_size", None)
            n = out.shape[1] - prefix
            if grid is None or grid[0] * grid[1] != n:
                side = int(round(math.sqrt(n)))
                grid = (side, side)
            return tokens_to_map(out, int(grid[0]), int(grid[1]), num_prefix_tokens=prefix)
        channels = getattr(b, "num_features", None)
        if out.ndim == 4 and out.shape[1] != channels and out.shape[-1] == channels:
            out = out.permute(0, 3, 1, 2)  # NHWC (timm Swin) -> NCHW
        return out


class _CastInput(nn.Module):
    """Feeds a backbone whose weights are not float32 (``precision="bf16-true"``...) in its dtype."""

    def __init__(self, backbone: Any, dtype: torch.dtype) -> None:
        super().__init__()
        self.backbone, self.dtype = backbone, dtype

    def forward(self, x: Tensor) -> Any:
        out = self.backbone(x.to(self.dtype))
        if isinstance(out, tuple) and all(isinstance(o, Tensor) for o in out):
            return tuple(o.float() for o in out)
        return out.float() if isinstance(out, Tensor) else out


def feature_maps(model: Any, stride: Optional[Union[int, Tuple[int, int]]] = None) -> Any:
    """What a saliency refresh runs: a module mapping (B, 3, S, S) images to feature maps (B, C, h, w).

    - A model with a ``backbone`` attribute (lightly / solo-learn models) gives its backbone.
    - ``stride``: the backbone's stage at that stride (:class:`FeatureMaps`; 16 gives object-level
      regions far more cells, docs/RESULTS.md), also when the backbone ends in global pooling.
    - Otherwise the backbone's last spatial map: timm models through ``forward_features`` (ViT
      tokens reshaped to their patch grid, NHWC maps permuted), torchvision ResNets (and solo-learn's
      WideResNet) layer by layer, so a classifier or ``fc = Identity`` is skipped; a ``Sequential``
      without its trailing pooling / flatten / identity layers (lightly's
      ``nn.Sequential(*list(resnet.children())[:-1])``); any other module or callable as it is.
    - A backbone whose weights are not float32 (``bf16-true``) gets its input in its dtype and
      returns float32.

    The result shares the model's parameters; nothing is copied. Its output is checked by the
    refresh (:func:`check_feature_output`).

    Raises:
        ValueError: a ``Sequential`` of pooling layers only; no stage at ``stride``.
        TypeError: something that is not callable, or a ``stride`` of something not an ``nn.Module``.
    """
    backbone = _unwrap(model)
    if not callable(backbone):
        raise TypeError(f"backbone must be a module or callable returning feature maps, got {type(backbone).__name__}.")
    if stride is not None:
        out = at_stride(backbone, stride)
    else:
        kind = _kind(backbone)
        out = backbone
        if kind in ("timm", "resnet", "wide_resnet"):
            out = _LastMap(backbone, kind)
        elif kind == "sequential":
            children = list(backbone.children())
            while children and isinstance(children[-1], _POOLING):
                children.pop()
            if not children:
                raise ValueError("The backbone has only pooling layers: nothing gives a feature map.")
            if len(children) < len(backbone):
                out = nn.Sequential(*children)
    param = next(iter(backbone.parameters()), None) if isinstance(backbone, nn.Module) else None
    if param is not None and param.is_floating_point() and param.dtype != torch.float32:
        out = _CastInput(out, param.dtype)
    return out


@torch.no_grad()
def hierarchy_strides(model: Any, probe_size: int = 256) -> Tuple[int, int]:
    """``(S / 2, S)``: the stride S of the backbone's last spatial map and half of it, what
    ``SaliencyGenerator(regions="hierarchy")`` reads by default (ResNet-50: (16, 32); a last map at
    stride 16: (8, 16)). Found with one probe forward (in eval mode, modes restored).

    Raises:
        ValueError: the last map is not a (B, C, h, w) map, or its stride is under 2.
    """
    backbone = feature_maps(model)
    param = next(iter(_unwrap(model).parameters()), None) if isinstance(_unwrap(model), nn.Module) else None
    x = torch.zeros(1, 3, probe_size, probe_size, device=param.device if param is not None else None)
    with eval_mode(backbone):
        out = backbone(x)
    check_feature_output(out, x)  # the usual message for pooled vectors, tokens, 1 x 1 maps
    if not isinstance(out, Tensor):
        raise ValueError("The backbone already returns a pair of maps: give feature_stride=None to read it as it is.")
    stride = probe_size // out.shape[-1]
    if stride < 2:
        raise ValueError(f"The backbone's last map has stride {stride}: no coarser/finer pair to read.")
    return stride // 2, stride


Stride = Union[None, str, int, Tuple[int, int]]
"""What a refresh reads: ``"auto"``, None (the last map), a stride, or a pair ``(fine, coarse)``."""


def check_stride(stride: Any, name: str = "feature_stride", auto: bool = True) -> None:
    """Raises a clear error unless ``stride`` is ``"auto"``, None (with ``auto``), a positive int or a pair
    fine < coarse."""
    if auto and (stride is None or stride == "auto"):
        return
    values = list(stride) if isinstance(stride, (tuple, list)) else [stride]
    ok = len(values) in (1, 2) and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in values)
    if not ok or (len(values) == 2 and values[0] >= values[1]):
        options = "'auto', None, " if auto else ""
        raise ValueError(
            f"{name} must be {options}a positive integer or a pair (fine, coarse) with fine < coarse, got {stride!r}."
        )


def refresh_features(model: Any, stride: Stride = "auto", regions: Optional[str] = None) -> Any:
    """What a refresh runs for a generator in mode ``regions``: :func:`feature_maps` at ``stride``, where
    ``"auto"`` is the pair ``hierarchy_strides(model)`` for the hierarchy mode and the last map otherwise.

    Raises:
        ValueError: a bad ``stride`` (see :func:`check_stride`), or no stage at it.
    """
    check_stride(stride)
    if stride == "auto":
        pair = regions is not None and check_region_source(regions).reads_pair
        stride = hierarchy_strides(model) if pair else None
    elif isinstance(stride, list):
        stride = (stride[0], stride[1]) if len(stride) == 2 else stride[0]
    return feature_maps(model, stride)  # type: ignore[arg-type]


def feature_map_backbone(model: Any) -> Any:
    """:func:`feature_maps` without a stride (kept for existing callers)."""
    return feature_maps(model)


def check_feature_output(out: Any, x: Tensor) -> Any:
    """``out`` when it is a feature map (B, C, h, w) with at least 2 cells, or a pair (fine, coarse) of them
    (:class:`FeatureMaps` with a stride pair); a clear error otherwise."""
    if isinstance(out, (tuple, list)) and len(out) == 2:
        for m in out:
            check_feature_output(m, x)
        return out
    try:
        return check_feature_shape(out)
    except (TypeError, ValueError) as err:  # the shape check's failure, explained for a backbone
        shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
        raise ValueError(
            f"The backbone returned {shape} for a {tuple(x.shape)} batch, not feature maps (B, C, h, w) with at "
            "least 2 cells: the saliency refresh needs a convolutional feature map. Pass a backbone without "
            "global pooling or a head (for a torchvision ResNet: nn.Sequential(*list(resnet.children())[:-2])), "
            "read a stage with FeatureMaps(backbone, stride=16), or use a larger saliency_size if the map is 1 x 1. "
            "For ViT tokens use sgcl_plugin.tokens_to_map."
        ) from err


class _Stop(Exception):
    """Raised by a hook once every requested layer has run: the rest of the network is skipped."""


def _first_tensor(output: Any) -> Optional[Tensor]:
    if isinstance(output, Tensor):
        return output
    if isinstance(output, (tuple, list)) and output and isinstance(output[0], Tensor):
        return output[0]
    return None


@torch.no_grad()
def find_stride_layer(model: nn.Module, stride: int, probe_size: int = 128) -> str:
    """The name of the module that ends a backbone's stage at ``stride``.

    Runs one ``probe_size`` x ``probe_size`` forward (in eval mode, each submodule's mode restored)
    and records every module whose output is a (B, C, h, w) map with ``probe_size / h == stride``.
    Among them it keeps the shallowest (fewest dots in the name: stages and blocks rather than the
    layers inside them) and returns the last of those to run: torchvision ResNets give ``layer3``
    for 16 and ``layer4`` for 32, EfficientNet-Lite0 ``_blocks.10`` for 16, timm models their stage.
    When the model's own output is at that stride the answer is ``""`` (the model itself).

    Args:
        model: The backbone (called on a (1, 3, probe_size, probe_size) batch).
        stride: Wanted ratio of input to feature-map side (e.g. 16 or 32).
        probe_size: Side of the probe input, a multiple of ``stride``.

    Raises:
        ValueError: No module outputs a map at that stride (ViT tokens: use
            :func:`~sgcl_plugin.affinity.tokens_to_map`).
    """
    if probe_size % stride:
        probe_size = stride * max(2, probe_size // stride)
    calls = _probe(model, [n for n, _ in model.named_modules()], probe_size)
    # A module that runs more than once (a shared activation, say) has no single output: skipped.
    seen = [n for n, shapes in calls if len(shapes) == 1 and shapes[0] == (probe_size // stride,) * 2]
    if not seen:
        raise ValueError(
            f"No module of {type(model).__name__} outputs a (B, C, h, w) map at stride {stride} "
            f"(probed at {probe_size} px). For ViT tokens use sgcl_plugin.tokens_to_map; otherwise name "
            "the layers: FeatureMaps(model, layers=[...])."
        )
    if "" in seen:  # the model's own output is at that stride
        return ""
    depth = min(n.count(".") for n in seen)
    return [n for n in seen if n.count(".") == depth][-1]


@torch.no_grad()
def _probe(model: nn.Module, names: Sequence[str], probe_size: int) -> List[Any]:
    """Runs one probe forward; returns ``[(name, [(h, w) of each call's 4-D output])]`` in the order
    in which the modules first finished."""
    modules = dict(model.named_modules())
    calls: Dict[str, List[Any]] = {}
    hooks = []
    for name in names:

        def hook(_m: nn.Module, _i: Any, out: Any, name: str = name) -> None:
            t = _first_tensor(out)
            calls.setdefault(name, []).append(tuple(t.shape[-2:]) if t is not None and t.ndim == 4 else None)

        hooks.append(modules[name].register_forward_hook(hook))
    try:
        with eval_mode(model):
            p = next(iter(model.parameters()), None)
            dtype = p.dtype if p is not None and p.is_floating_point() else torch.float32
            model(torch.zeros(1, 3, probe_size, probe_size, device=default_device(model), dtype=dtype))
    finally:
        for h in hooks:
            h.remove()
    return list(calls.items())


class FeatureMaps(nn.Module):
    """Wraps a backbone so that it returns the feature map of chosen layers, for saliency.

    Give a ``stride`` (the layer is found with :func:`find_stride_layer`), a pair of strides
    ``(fine, coarse)`` (returns the two maps as a tuple, what ``SaliencyGenerator(regions="hierarchy")``
    reads: parts from the fine map, saliency and objectness from both), or explicit module
    ``layers`` (names as in ``model.named_modules()``, e.g. ``"layer3"`` of a torchvision ResNet,
    ``"_blocks.10"`` of EfficientNet-Lite0; ``""`` is the model's own output). The forward pass
    stops once the deepest requested layer has run. With several layers each map is L2-normalized
    per cell, resized (bilinear) to the finest grid and concatenated, so the cosine similarity of
    two cells is the mean of their per-layer similarities.

    Stride 16 doubles the grid of the usual last map (ResNet-50 at 640 px: 40 x 40 instead of
    20 x 20) and gives object-level regions far more cells to work with (docs/RESULTS.md).

    Args:
        model: Any module mapping an image batch (B, 3, H, W) to outputs; the hooked modules must
            run during its forward.
        stride: Feature stride to find, or ``(fine, coarse)`` strides (ignored when ``layers`` is given).
        layers: Module names to read.
        probe_size: Input side of the probe that finds the layer.

    Attributes:
        layers: The module names read.

    Examples:
        >>> from torchvision.models import resnet18
        >>> resnet = resnet18()  # weights="IMAGENET1K_V1" for a pretrained one
        >>> fmap = FeatureMaps(resnet, stride=16)  # layer3: (B, 256, H/16, W/16); the forward stops there
        >>> fmap.layers, fmap(images).shape
        (['layer3'], torch.Size([2, 256, 14, 14]))
        >>> FeatureMaps(resnet, layers=["layer3", "layer4"])(images).shape  # both, at stride 16
        torch.Size([2, 768, 14, 14])
        >>> [m.shape[-1] for m in FeatureMaps(resnet, stride=(16, 32))(images)]  # (layer3, layer4), for "hierarchy"
        [14, 7]
        >>> from sgcl_plugin import SaliencyGenerator, refresh_bank
        >>> bank = refresh_bank(SaliencyGenerator(regions="objects"), fmap, dataset, progress=False)
    """

    def __init__(
        self,
        model: nn.Module,
        stride: Union[int, Tuple[int, int]] = 16,
        layers: Optional[Union[str, Sequence[str]]] = None,
        probe_size: int = 128,
    ) -> None:
        super().__init__()
        if not isinstance(model, nn.Module):
            raise TypeError(f"FeatureMaps needs an nn.Module, got {type(model).__name__}.")
        self.model = model
        self.pair = False
        if layers is None:
            check_stride(stride, "stride", auto=False)
            strides = list(stride) if isinstance(stride, (tuple, list)) else [stride]
            self.pair = len(strides) == 2
            names = [find_stride_layer(model, s, max(probe_size, 4 * max(strides))) for s in strides]
        else:
            names = [layers] if isinstance(layers, str) else list(layers)
            if not names:
                raise ValueError("layers must name at least one module.")
        modules = dict(model.named_modules())
        missing = [n for n in names if n not in modules]
        if missing:
            raise ValueError(f"{type(model).__name__} has no module named {missing}; see model.named_modules().")
        self.layers: List[str] = names
        # Stop the forward pass early only when every layer runs exactly once (then its output is
        # final when its hook fires); a module called several times keeps its last output.
        if layers is None:  # find_stride_layer only returns modules that run once
            self._single = True
        else:
            counts = dict(_probe(model, [n for n in names if n], probe_size))
            self._single = all(len(counts.get(n, [])) == 1 for n in names if n)

    def extra_repr(self) -> str:
        return f"layers={self.layers}"

    def forward(self, x: Tensor) -> Any:
        if self.layers == [""]:
            return self.model(x)
        captured: Dict[str, Tensor] = {}
        modules = dict(self.model.named_modules())
        hooks = []

        def make(name: str) -> Any:
            def hook(_m: nn.Module, _i: Any, out: Any) -> None:
                t = _first_tensor(out)
                if t is None or t.ndim != 4:
                    raise TypeError(f"Layer {name!r} did not output a (B, C, h, w) map.")
                captured[name] = t
                if self._single and len(captured) == len(self.layers):
                    raise _Stop

            return hook

        for name in self.layers:
            if name:
                hooks.append(modules[name].register_forward_hook(make(name)))
        try:
            out = self.model(x)
            if "" in self.layers:  # the model's own output is one of the maps
                make("")(self.model, (x,), out)
        except _Stop:
            pass
        finally:
            for h in hooks:
                h.remove()
        missing = [n for n in self.layers if n not in captured]
        if missing:
            raise RuntimeError(f"Layers {missing} did not run in the forward pass of {type(self.model).__name__}.")
        if len(self.layers) == 1:
            return captured[self.layers[0]]
        if self.pair:
            return captured[self.layers[0]], captured[self.layers[1]]
        maps = [captured[n] for n in self.layers]
        h = max(m.shape[-2] for m in maps)
        w = max(m.shape[-1] for m in maps)
        out = []
        for m in maps:
            m = F.normalize(m.float(), dim=1)
            if m.shape[-2:] != (h, w):
                m = F.interpolate(m, size=(h, w), mode="bilinear", align_corners=False)
                m = F.normalize(m, dim=1)
            out.append(m)
        return torch.cat(out, dim=1)


def at_stride(backbone: Any, stride: Optional[Union[int, Tuple[int, int]]]) -> Any:
    """``backbone`` itself (``stride=None``), or :class:`FeatureMaps` reading its stage at ``stride``
    (a pair ``(fine, coarse)``: both stages, as a tuple).

    What the adapters' ``feature_stride`` option does: 16 gives object-level regions far more cells
    (docs/RESULTS.md), and works on backbones that end in global pooling too (the hooked stage runs
    before the pooling).

    Raises:
        TypeError: a stride is asked of something that is not an ``nn.Module``.
        ValueError: the backbone has no stage at that stride (say which, and how to opt out).
    """
    if stride is None:
        return backbone
    if not isinstance(backbone, nn.Module):
        raise TypeError(f"feature_stride={stride} needs the backbone as an nn.Module, got {type(backbone).__name__}.")
    try:
        return FeatureMaps(backbone, stride=stride)
    except ValueError as err:
        raise ValueError(f"{err} Pass feature_stride=None to use the backbone's own output.") from err
