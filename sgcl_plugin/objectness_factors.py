"""The objectness of candidate regions (step 3 of the hierarchy mode, :mod:`sgcl_plugin.hierarchy`): six factors
per candidate from the cells' semantic features, the saliency map, the activation map and the fine map's graph, and
their product to chosen exponents. The module docstring of :mod:`sgcl_plugin.hierarchy` says what each factor
measures and why."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from sgcl_plugin.affinity import unit_affinity
from sgcl_plugin.regions import border_mask

__all__ = ["MIN_SCORE", "OBJECTNESS_EXPONENTS", "CellFeatures", "map_maturity", "node_factors", "objectness"]

OBJECTNESS_EXPONENTS = {
    "saliency": 1.0,
    "contrast": 2.0,
    "frame": 2.0,
    "activation": 1.0,
    "coherence": 1.0,
    "separation": 3.0,
}
"""Exponent of each objectness factor (see the module docstring)."""

MIN_SCORE = 1e-6
"""Objectness at or below this counts as none."""


class CellFeatures:
    """The semantic feature of every cell of one image, kept factored: the fine map's unit vector and
    the unit vector of the coarse cell it lies in (nearest), concatenated and divided by sqrt(2) (a
    unit vector whose cosines are the mean of the two stages' cosines). Sums over sets of cells are
    computed without building the (N, C1 + C2) matrix.

    Args:
        fine: (C1, h, w) fine map of one image.
        coarse: (C2, hc, wc) coarse map of the same image, or None (the fine map alone).
        fine_unit: (h * w, C1) the fine map's cells as unit vectors, if already computed.
        coarse_unit: (hc * wc, C2) the coarse map's, likewise.
    """

    def __init__(
        self,
        fine: Tensor,
        coarse: Optional[Tensor],
        fine_unit: Optional[Tensor] = None,
        coarse_unit: Optional[Tensor] = None,
    ) -> None:
        C1, h, w = fine.shape
        # (N, C1) unit vectors (given when already computed: the fine graph's own)
        self.fine = F.normalize(fine.float().flatten(1), dim=0).T if fine_unit is None else fine_unit.float()
        if coarse is None:
            self.coarse: Optional[Tensor] = None
            return
        hc, wc = coarse.shape[-2:]
        self.coarse = F.normalize(coarse.float().flatten(1), dim=0).T if coarse_unit is None else coarse_unit.float()
        # Nearest coarse cell of each fine cell, as F.interpolate(mode="nearest") picks it.
        rows = (torch.arange(h, device=fine.device) * hc) // h
        cols = (torch.arange(w, device=fine.device) * wc) // w
        self.assign = (rows[:, None] * wc + cols[None, :]).flatten()  # (N,)
        self.n = hc * wc

    def sums(self, masks: Tensor) -> Tensor:
        """(K, C) sums of the semantic features over each of the (K, N) masks' cells."""
        a = masks @ self.fine
        if self.coarse is None:
            return a
        counts = torch.zeros(masks.shape[0], self.n, device=masks.device, dtype=masks.dtype)
        counts.index_add_(1, self.assign, masks)
        return torch.cat([a, counts @ self.coarse], dim=1) / 2**0.5


def node_factors(
    masks: Tensor,
    cells: CellFeatures,
    saliency: Tensor,
    activation: Tensor,
    h: int,
    w: int,
    ring: int = 2,
    inner: Optional[Tensor] = None,
    graph: Optional[Tensor] = None,
) -> dict:
    """The objectness factors of candidate regions of one image (see the module docstring).

    Args:
        masks: (K, N) float 0/1 cell masks.
        cells: The image's semantic cell features.
        saliency: (N,) in [0, 1].
        activation: (N,) in [0, 1].
        h: Grid height.
        w: Grid width.
        ring: Width in cells of the ring a region is compared with.
        inner: (K, C) the regions' feature sums when already known (``cells.sums(masks)``).
        graph: (N, N) symmetric non-negative affinities of the cells for the separation factor; None builds the
            fine map's clamped cosine graph (``max(cos, 0) + 1e-5``, the cut's default).

    Returns:
        Dict of (K,) tensors: ``area`` (cells), ``saliency``, ``contrast``, ``frame``,
        ``activation``, ``coherence``, ``separation``.
    """
    K, N = masks.shape
    area = masks.sum(1)
    safe = area.clamp(min=1)
    inner = cells.sums(masks) if inner is None else inner
    dilated = F.max_pool2d(masks.reshape(K, 1, h, w), kernel_size=2 * ring + 1, stride=1, padding=ring).reshape(K, N)
    around = dilated * (1 - masks)
    outer = cells.sums(around)
    contrast = (1 - (F.normalize(inner, dim=-1) * F.normalize(outer, dim=-1)).sum(-1)) * (around.sum(1) > 0)
    border = border_mask(h, w, masks.device).float()
    if graph is None:
        graph = unit_affinity(cells.fine[None])[0]  # the cut's default graph of the fine map
    graph = graph.to(masks.dtype)
    degree = graph.sum(1)
    vol = masks @ degree  # (K,)
    rest = degree.sum() - vol
    cut = (vol - ((masks @ graph) * masks).sum(1)).clamp(min=0)  # edges leaving R
    tiny = torch.finfo(vol.dtype).tiny
    ncut = cut / vol.clamp(min=tiny) + torch.where(rest > 0, cut / rest.clamp(min=tiny), torch.zeros_like(cut))
    return {
        "area": area,
        "saliency": (masks @ saliency) / safe,
        "contrast": contrast.clamp(min=0),
        "frame": (masks @ border) / border.sum(),
        "activation": (masks @ activation) / safe,
        "coherence": inner.norm(dim=-1) / safe,  # mean cos(u_i, mean direction) = |sum u_i| / n
        "separation": (1 - ncut / 2).clamp(0, 1),  # each of Ncut's two terms is at most 1
    }


def objectness(f: dict, exponents: Optional[dict] = None) -> Tensor:
    """The product of the factors of :func:`node_factors`, each raised to its exponent
    (default :data:`OBJECTNESS_EXPONENTS`; an exponent of 0 leaves a factor out)."""
    e = {**OBJECTNESS_EXPONENTS, **(exponents or {})}
    unknown = set(e) - set(OBJECTNESS_EXPONENTS)
    if unknown:
        raise ValueError(f"Unknown objectness factors {sorted(unknown)}; choose from {sorted(OBJECTNESS_EXPONENTS)}.")
    score = (
        f["saliency"].clamp(min=0) ** e["saliency"]
        * f["contrast"] ** e["contrast"]
        * (1 - f["frame"]).clamp(min=0) ** e["frame"]
        * f["activation"].clamp(min=0) ** e["activation"]
        * f["coherence"].clamp(min=0) ** e["coherence"]
        * f["separation"].clamp(min=0) ** e["separation"]
    )
    return score


def map_maturity(units: Tensor) -> Tensor:
    """(B,) mean cosine between two different cells of each map, from its cells as unit vectors (B, n, C)
    (:func:`~sgcl_plugin.affinity.unit_features`); 1 for a map of one cell. High for a randomly initialised network,
    whose cells are all alike; low for a trained one."""
    n = units.shape[1]
    if n < 2:
        return torch.ones(units.shape[0], device=units.device)
    u = units.double()
    total = u.sum(1).pow(2).sum(-1) - u.pow(2).sum((1, 2))  # sum over ordered pairs i != j of cos(u_i, u_j)
    return (total / (n * (n - 1))).float()
