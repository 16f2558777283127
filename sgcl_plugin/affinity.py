"""Affinity graphs from feature maps: cosine self-similarity of the spatial features (SGCL Eq. 1)."""

from __future__ import annotations

from typing import Literal

import torch
from torch import Tensor

from sgcl_plugin.checks import check_feature_map, check_number, refuse_non_finite
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
    check_number("eps (it keeps every degree > 0)", eps, 0, strict=True)


def unit_features(features: Tensor) -> Tensor:
    """The checked feature map's cells as unit vectors (B, h*w, C), float32 (float64 for float64
    input); a zero vector stays zero."""
    check_feature_map(features, values=False)
    dtype = torch.float64 if features.dtype == torch.float64 else torch.float32
    f = features.to(dtype).flatten(2).transpose(1, 2)  # (B, N, C)
    # Scale each vector by its largest entry first: the norm of 1e20-sized features overflows float32.
    scale = f.abs().amax(dim=-1, keepdim=True)
    if not torch.isfinite(scale).all():  # amax propagates NaN and Inf: this is the finiteness check
        refuse_non_finite(features)
    f = f / scale.clamp(min=torch.finfo(dtype).tiny)
    return torch.nn.functional.normalize(f, dim=-1)


def unit_affinity(f: Tensor, mode: Affinity = "clamp", eps: float = 1e-5, tau: float = 0.2) -> Tensor:
    """:func:`cosine_affinity` of cells already given as unit vectors (B, N, C) (:func:`unit_features`)."""
    _check_options(mode, eps)
    W = f @ f.transpose(1, 2)
    if mode == "clamp":
        return W.clamp_(min=0).add_(eps)
    return torch.where(W > tau, 1.0, eps).to(f.dtype)
