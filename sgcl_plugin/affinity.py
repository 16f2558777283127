"""Affinity graphs from feature maps: cosine self-similarity of the spatial features (SGCL Eq. 1)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from sgcl_plugin.precision import full_precision

__all__ = [
    "AFFINITIES",
    "Affinity",
    "check_feature_map",
    "cosine_affinity",
    "tokens_to_map",
    "unit_affinity",
    "unit_features",
]

Affinity = Literal["clamp", "binary"]
AFFINITIES = ("clamp", "binary")


def check_feature_map(features: Tensor, values: bool = True) -> None:
    """Raises a clear error unless ``features`` is a finite (B, C, h, w) floating point map.

    ``values=False`` checks everything but finiteness (for a caller that finds NaN/Inf on its own
    pass over the values: :func:`unit_features`)."""
    if not isinstance(features, Tensor):
        raise TypeError(f"features must be a torch.Tensor, got {type(features).__name__}.")
    if features.ndim != 4:
        hint = (
            " For ViT tokens of shape (B, h*w, C), use sgcl_plugin.tokens_to_map(tokens, h, w)."
            if features.ndim == 3
            else ""
        )
        raise ValueError(
            f"features must have shape (B, C, h, w), got {features.ndim} dims {tuple(features.shape)}.{hint}"
        )
    if features.device.type == "meta":
        raise ValueError("features is a meta tensor (shape only, no values): run the backbone on real data.")
    B, C, h, w = features.shape
    if B == 0 or C == 0:
        raise ValueError(f"features must have a non-empty batch and channel axis, got {tuple(features.shape)}.")
    if h * w < 2:
        raise ValueError(
            f"The feature map has a {h}x{w} grid: a cut needs at least 2 cells. The image is "
            "smaller than (or equal to) the backbone's stride; use a larger saliency_size."
        )
    if not features.is_floating_point():
        raise TypeError(f"features must be a floating point tensor, got {features.dtype}.")
    # One cheap reduction first (NaN and Inf propagate through a float64 sum); the element-wise
    # check only runs to name the culprits.
    if values and not torch.isfinite(features.sum(dim=(1, 2, 3), dtype=torch.float64)).all():
        _non_finite(features)


def _non_finite(features: Tensor) -> None:
    bad = ~torch.isfinite(features).flatten(1).all(dim=1)
    raise ValueError(
        f"features contain NaN or Inf values (images {bad.nonzero().flatten().tolist()} of the "
        "batch); check the backbone (diverged training? fp16 overflow?)."
    )


def tokens_to_map(tokens: Tensor, h: int, w: int, num_prefix_tokens: int = 0) -> Tensor:
    """Reshapes ViT tokens (B, num_prefix_tokens + h*w, C) into a (B, C, h, w) feature map.

    Args:
        tokens: Transformer output tokens.
        h: Patch grid height.
        w: Patch grid width.
        num_prefix_tokens: Leading tokens to drop (1 for a class token, more with registers).

    Examples:
        >>> tokens = torch.randn(2, 1 + 14 * 14, 384)
        >>> tokens_to_map(tokens, 14, 14, num_prefix_tokens=1).shape
        torch.Size([2, 384, 14, 14])
    """
    if tokens.ndim != 3 or tokens.shape[1] != num_prefix_tokens + h * w:
        raise ValueError(f"tokens must have shape (B, {num_prefix_tokens} + {h}*{w}, C), got {tuple(tokens.shape)}.")
    return tokens[:, num_prefix_tokens:].transpose(1, 2).reshape(tokens.shape[0], -1, h, w)


@full_precision
def cosine_affinity(
    features: Tensor,
    mode: Affinity = "clamp",
    eps: float = 1e-5,
    tau: float = 0.2,
) -> Tensor:
    """Cosine self-similarity graph of each feature map, made non-negative for the normalized cut.

    Nodes are the h*w spatial features; ``W_ij = cos(f_i, f_j)`` (SGCL Eq. 1). The cut needs
    ``W >= 0`` and positive degrees:

    - ``"clamp"`` (default): ``W = max(cos, 0) + eps``.
    - ``"binary"`` (as TokenCut): ``W = 1`` where ``cos > tau``, else ``eps``.

    A zero feature vector (a dead ReLU cell) has no direction: its cosine to every node is taken
    as 0, so it is attached to the graph only by ``eps`` and never produces NaN.

    Args:
        features: Feature maps (B, C, h, w).
        mode: ``"clamp"`` or ``"binary"``.
        eps: Small positive weight added so that every node has a positive degree.
        tau: Threshold of the ``"binary"`` mode.

    Returns:
        Affinities (B, h*w, h*w), float32 (float64 for float64 features).
    """
    _check_options(mode, eps)
    return unit_affinity(unit_features(features), mode, eps, tau)


def _check_options(mode: str, eps: float) -> None:
    if mode not in AFFINITIES:
        raise ValueError(f"Unknown affinity '{mode}'; choose one of {AFFINITIES}.")
    if eps <= 0:
        raise ValueError(f"eps must be positive (it keeps every degree > 0), got {eps}.")


def unit_features(features: Tensor) -> Tensor:
    """The checked feature map's cells as unit vectors (B, h*w, C), float32 (float64 for float64
    input); a zero vector stays zero."""
    check_feature_map(features, values=False)
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    f = features.to(dtype).flatten(2).transpose(1, 2)  # (B, N, C)
    # Scale each vector by its largest entry first: the norm of 1e20-sized features overflows float32.
    scale = f.abs().amax(dim=-1, keepdim=True)
    if not torch.isfinite(scale).all():  # amax propagates NaN and Inf: this is the finiteness check
        _non_finite(features)
    f = f / scale.clamp(min=torch.finfo(dtype).tiny)
    return torch.nn.functional.normalize(f, dim=-1)


def unit_affinity(f: Tensor, mode: Affinity = "clamp", eps: float = 1e-5, tau: float = 0.2) -> Tensor:
    """:func:`cosine_affinity` of cells already given as unit vectors (B, N, C) (:func:`unit_features`)."""
    _check_options(mode, eps)
    W = f @ f.transpose(1, 2)
    if mode == "clamp":
        return W.clamp_(min=0).add_(eps)
    return torch.where(W > tau, 1.0, eps).to(f.dtype)
