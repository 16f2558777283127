"""View augmentation: BYOL's two views of a crop, on the CPU (torchvision) or a whole batch (kornia).

:func:`byol_view_transforms` builds BYOL's view-1 / view-2 pipelines (Grill et al. 2020, Table 6) for
one (3, size, size) crop in [0, 1], as the crop step applies them in DataLoader workers;
:class:`BatchViewAugment` is the same augmentation on a batch, on the batch's device.
:class:`PILView` runs a PIL-based view transform (torchvision, lightly, solo-learn) on a crop tensor,
and :func:`check_view_transform` refuses a view transform that would crop a second time or resize
to another side than the crops'.
"""

from __future__ import annotations

import numbers
from typing import Any, Callable, List, Optional, Sequence, Tuple

import torch
from torch import Tensor

from sgcl_plugin.boxes import check_crop_size
from sgcl_plugin.checks import check_interval
from sgcl_plugin.images import IMAGENET_MEAN, IMAGENET_STD

__all__ = ["BatchViewAugment", "PILView", "byol_view_transforms", "check_view_transform"]

ViewTransform = Callable[[Tensor], Tensor]
"""A view augmentation: one (3, size, size) float crop in [0, 1] in, its view out."""

# BYOL's view augmentations (Grill et al. 2020, Table 6): view 1 / view 2.
_BLUR_P = (1.0, 0.1)
_SOLARIZE_P = (0.0, 0.2)
_JITTER = (0.4, 0.4, 0.2, 0.1)  # brightness, contrast, saturation, hue
_JITTER_P = 0.8
_GRAYSCALE_P = 0.2
_FLIP_P = 0.5
_BLUR_SIGMA = (0.1, 2.0)


# ------------------------------------------------------------------------------------ CPU views


def _colour_jitter(hue: float, grayscale_p: float) -> Tuple[Tuple[float, float, float, float], float]:
    """BYOL's jitter with another hue strength, and the grayscale probability, checked."""
    return (*_JITTER[:3], check_interval("hue", hue, 0, 0.5)), check_interval("grayscale_p", grayscale_p)


def _blur_kernel(size: int) -> int:
    """BYOL's blur kernel: about 10% of the crop side, odd (23 px at 224, 9 px at 96), at least 3."""
    k = max(3, int(0.1 * size))
    return k if k % 2 == 1 else k + 1


def byol_view_transforms(
    size: int = 96,
    mean: Sequence[float] = IMAGENET_MEAN,
    std: Sequence[float] = IMAGENET_STD,
    hue: float = _JITTER[3],
    grayscale_p: float = _GRAYSCALE_P,
) -> Tuple[ViewTransform, ViewTransform]:
    """BYOL's two view augmentations, for (3, size, size) float crops in [0, 1].

    Both: horizontal flip (p 0.5), colour jitter (brightness 0.4, contrast 0.4, saturation 0.2,
    hue 0.1; p 0.8; random order), grayscale (p 0.2), Gaussian blur (kernel ~10% of ``size``,
    sigma in (0.1, 2.0)), solarize at 0.5, then normalization. Blur p is 1.0 for view 1 and 0.1 for
    view 2; solarize p is 0.0 for view 1 and 0.2 for view 2 (Grill et al. 2020, Table 6).

    Args:
        size: Side of the crops (sets the blur kernel).
        mean: Per-channel normalization mean.
        std: Per-channel normalization std.
        hue: Hue jitter (BYOL: 0.1; 0.5 draws any hue). Stronger than BYOL's where the colour of an
            object says nothing of its class but identifies it (the composed scenes' random hues).
        grayscale_p: Probability of the grayscale step (BYOL: 0.2).

    Returns:
        ``(view1, view2)``: ``torchvision.transforms.v2`` pipelines on tensors.

    Examples:
        >>> view1, view2 = byol_view_transforms(96)
        >>> view1(torch.rand(3, 96, 96)).shape
        torch.Size([3, 96, 96])
    """
    from torchvision.transforms import v2

    size = check_crop_size(size)
    kernel = _blur_kernel(size)
    jitter, gray_p = _colour_jitter(hue, grayscale_p)

    def pipeline(blur_p: float, solarize_p: float) -> ViewTransform:
        steps = [
            v2.RandomHorizontalFlip(p=_FLIP_P),
            v2.RandomApply([v2.ColorJitter(*jitter)], p=_JITTER_P),
            v2.RandomGrayscale(p=gray_p),
        ]
        blur = v2.GaussianBlur(kernel, sigma=_BLUR_SIGMA)
        steps.append(blur if blur_p >= 1.0 else v2.RandomApply([blur], p=blur_p))
        if solarize_p > 0:
            steps.append(v2.RandomSolarize(threshold=0.5, p=solarize_p))
        steps.append(v2.Normalize(mean=list(mean), std=list(std)))
        return v2.Compose(steps)

    return pipeline(_BLUR_P[0], _SOLARIZE_P[0]), pipeline(_BLUR_P[1], _SOLARIZE_P[1])


class PILView:
    """Runs a PIL-based view transform (torchvision, lightly, solo-learn pipelines) on one crop tensor.

    The crop, a (3, size, size) float tensor in [0, 1], becomes the 8-bit RGB PIL image a dataset
    would have handed the transform (lightly's ``RandomSolarization`` fails on tensors); the output
    must be a tensor, of shape (3, size, size) when ``size`` is given.

    Args:
        transform: The view transform (PIL image in, tensor out).
        size: The crop side it must keep, or None (not checked).
        name: Its name in error messages.
    """

    def __init__(self, transform: Callable[[Any], Tensor], size: Optional[int] = None, name: str = "view") -> None:
        if not callable(transform):
            raise TypeError(f"{name} must be callable, got {type(transform).__name__}.")
        self.transform, self.size, self.name = transform, size, name

    def __call__(self, crop: Tensor) -> Tensor:
        from PIL import Image

        array = crop.detach().clamp(0, 1).mul(255).round().to(torch.uint8).permute(1, 2, 0).contiguous().numpy()
        out = self.transform(Image.fromarray(array, mode="RGB"))
        if not isinstance(out, Tensor):
            raise TypeError(f"{self.name} returned a {type(out).__name__}, not a tensor: end it with ToTensor().")
        if self.size is not None and tuple(out.shape) != (3, self.size, self.size):
            raise ValueError(
                f"Mismatched crop sizes: {self.name} returned shape {tuple(out.shape)} for a {self.size} x "
                f"{self.size} crop; it must keep the crop size (3, {self.size}, {self.size})."
            )
        return out

    def __repr__(self) -> str:
        return f"PILView({self.transform!r}, size={self.size})"


# ---------------------------------------------------------------------------------- view checks


def _size_pair(value: Any) -> Optional[Tuple[int, int]]:
    """(h, w) of a torchvision ``size`` argument; None when it only fixes the shorter side."""
    if isinstance(value, numbers.Integral):
        return int(value), int(value)
    if isinstance(value, (tuple, list)) and len(value) in (1, 2):
        return int(value[0]), int(value[-1])
    return None


def _pipeline_steps(transform: Any, depth: int = 0) -> List[Any]:
    """The steps of a view transform: torchvision ``Compose`` / ``RandomApply`` children, lightly's and
    solo's pipelines (a ``transform`` attribute), nested ones included."""
    if depth > 8:
        return []
    steps: List[Any] = []
    inner = getattr(transform, "transform", None)  # lightly's view transforms, PILView
    if inner is not None and inner is not transform:
        steps += _pipeline_steps(inner, depth + 1)
    children = getattr(transform, "transforms", None)  # Compose, RandomApply, RandomOrder
    if isinstance(children, (list, tuple)):
        for child in children:
            steps.append(child)
            steps += _pipeline_steps(child, depth + 1)
    return steps


def check_view_transform(transform: Any, size: int, name: str = "view transform") -> None:
    """Rejects a view transform that would crop again or resize to another side than ``size``.

    The saliency-guided crop is already cut and resized to ``size``: a ``RandomResizedCrop`` of
    scale below 1 (lightly's default view transforms, solo-learn's ``rrc``) would crop a second
    time, a resize or crop to another size would break the batch.

    Raises:
        TypeError: not callable.
        ValueError: a second crop or a mismatched size.
    """
    from torchvision import transforms as T1
    from torchvision.transforms import v2 as T2

    if not callable(transform):
        raise TypeError(f"{name} must be a callable view transform, got {type(transform).__name__}.")
    for step in _pipeline_steps(transform):
        if isinstance(step, (T1.RandomResizedCrop, T2.RandomResizedCrop)):
            got = _size_pair(step.size)
            if got != (size, size):
                raise ValueError(
                    f"Mismatched crop sizes: {name} resizes to {got} but the crops are {size} x {size}; build it "
                    f"for {size} px (lightly: input_size={size})."
                )
            if min(float(s) for s in step.scale) < 1.0:
                raise ValueError(
                    f"{name} crops again (RandomResizedCrop scale={tuple(step.scale)}): the saliency-guided crop is "
                    "already cut. Use scale (1, 1), the identity on a square crop (lightly: min_scale=1.0, e.g. "
                    f"BYOLView1Transform(input_size={size}, min_scale=1.0); solo-learn: rrc disabled)."
                )
        elif isinstance(step, (T1.Resize, T2.Resize, T1.CenterCrop, T2.CenterCrop, T1.RandomCrop, T2.RandomCrop)):
            got = _size_pair(step.size)
            if got is not None and got != (size, size):
                raise ValueError(
                    f"Mismatched crop sizes: {name} has {type(step).__name__}(size={step.size}) but the crops are "
                    f"{size} x {size}."
                )


# ------------------------------------------------------------------------- batch views (kornia)


class BatchViewAugment(torch.nn.Module):
    """BYOL's view-1 or view-2 augmentation on a whole batch of crops, on the batch's device (kornia).

    The GPU counterpart of :func:`byol_view_transforms`: every image of the batch gets its own
    random parameters. Use it on the un-augmented crops of
    ``SaliencyCropTransform(..., augment=False)``.

    Args:
        view: 1 or 2 (blur p 1.0 / 0.1, solarize p 0.0 / 0.2).
        size: Side of the crops (sets the blur kernel, as on the CPU path).
        mean: Per-channel normalization mean.
        std: Per-channel normalization std.
        hue: Hue jitter, as in :func:`byol_view_transforms`.
        grayscale_p: Probability of the grayscale step, as in :func:`byol_view_transforms`.

    Raises:
        ImportError: kornia is not installed.

    Examples:
        >>> aug1, aug2 = BatchViewAugment(1, size=32), BatchViewAugment(2, size=32)
        >>> from sgcl_plugin import SaliencyBank, SaliencyCropDataset, SaliencyCropTransform
        >>> crops = SaliencyCropTransform(SaliencyBank(len(dataset)), size=32, augment=False)  # views augmented later
        >>> batch = next(iter(torch.utils.data.DataLoader(SaliencyCropDataset(dataset, crops), batch_size=2)))
        >>> v1 = aug1(batch["views1"].flatten(0, 1))  # (B * t, 3, 32, 32), on the crops' device (a GPU's)
        >>> v2 = aug2(batch["views2"].flatten(0, 1))
        >>> v1.shape == batch["views1"].flatten(0, 1).shape
        True
    """

    def __init__(
        self,
        view: int = 1,
        size: int = 96,
        mean: Sequence[float] = IMAGENET_MEAN,
        std: Sequence[float] = IMAGENET_STD,
        hue: float = _JITTER[3],
        grayscale_p: float = _GRAYSCALE_P,
    ) -> None:
        super().__init__()
        jitter, gray_p = _colour_jitter(hue, grayscale_p)
        try:
            import kornia.augmentation as K
        except ImportError as err:
            raise ImportError(
                "BatchViewAugment needs kornia: pip install 'sgcl_plugin[kornia]' (or pip install kornia)."
            ) from err
        if view not in (1, 2):
            raise ValueError(f"view must be 1 or 2, got {view!r}.")
        self.view = view
        self.size = check_crop_size(size)
        blur_p, solarize_p = _BLUR_P[view - 1], _SOLARIZE_P[view - 1]
        steps = [
            K.RandomHorizontalFlip(p=_FLIP_P),
            # kornia's ColorJitter uses torchvision's formulas (ColorJiggle does not).
            K.ColorJitter(*jitter, p=_JITTER_P),
            K.RandomGrayscale(p=gray_p),
            K.RandomGaussianBlur(_blur_kernel(self.size), _BLUR_SIGMA, p=blur_p),
        ]
        if solarize_p > 0:
            steps.append(K.RandomSolarize(thresholds=0.0, additions=0.0, p=solarize_p))  # threshold 0.5
        steps.append(K.Normalize(mean=torch.tensor(mean), std=torch.tensor(std)))
        self.augment = torch.nn.Sequential(*steps)

    def forward(self, images: Tensor) -> Tensor:
        """Augments (n, 3, H, W) float images in [0, 1]; returns (n, 3, H, W) normalized views."""
        if not isinstance(images, Tensor) or images.ndim != 4 or images.shape[1] != 3:
            shape = tuple(images.shape) if isinstance(images, Tensor) else type(images).__name__
            raise ValueError(f"BatchViewAugment expects a (n, 3, H, W) batch, got {shape}.")
        if not images.is_floating_point():
            raise ValueError(f"BatchViewAugment expects float images in [0, 1], got {images.dtype}.")
        if images.shape[0] == 0:
            return images.clone()
        return self.augment(images)

    def extra_repr(self) -> str:
        return f"view={self.view}, size={self.size}"
