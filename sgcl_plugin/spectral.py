"""The normalized cut of a feature map as saliency: what every Ncut region source shares, and the paper's source.

- :class:`CutOptions`: how a graph is built of a map and cut (affinity, solver, sign rule, region size),
  checked once; :class:`SourceOptions`: the base of a source's own options.
- :func:`orient`, :func:`flat_graphs`, :func:`normalize_maps`: the sign of a cut, graphs with no cut, maps
  scaled to [0, 1].
- :func:`fiedler_saliency`: the oriented Fiedler vector of each map (SGCL's saliency S) and its picture.
- :func:`spectral_embedding`: the k-way cut's pieces of the objects and hierarchy sources.
- :func:`paper_source`: the ``"paper"`` region source, Eq. 4-5 exactly.

A region source is a function ``(cut, options, fine, coarse) -> SaliencyResult`` named in
:data:`~sgcl_plugin.region_sources.REGION_SOURCES`; :class:`~sgcl_plugin.saliency.SaliencyGenerator` calls it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal, Optional, Tuple

import torch
from torch import Tensor

from sgcl_plugin.affinity import Affinity, cosine_affinity, unit_affinity, unit_features
from sgcl_plugin.checks import check_int, check_number
from sgcl_plugin.ncut import Solver, fiedler_vector, ncut_embedding
from sgcl_plugin.regions import SaliencyResult, border_mask, extract_regions

__all__ = [
    "SIGN_RULES",
    "CutOptions",
    "SignRule",
    "SourceOptions",
    "fiedler_saliency",
    "flat_graphs",
    "normalize_maps",
    "orient",
    "paper_source",
    "spectral_embedding",
]

SignRule = Literal["border", "argmax", "minority"]
SIGN_RULES = ("border", "argmax", "minority")


@dataclass(frozen=True)
class CutOptions:
    """How a region source builds the graph of a feature map, cuts it and keeps regions (checked here, once).

    Attributes:
        affinity: ``"clamp"`` (``max(cos, 0) + eps``) or ``"binary"`` (TokenCut: 1 above ``tau``).
        solver: Eigensolver for :func:`~sgcl_plugin.ncut.fiedler_vector`.
        min_area: Smallest region kept, in feature-map cells.
        sign_rule: How the foreground side of the cut is chosen (see :func:`orient`).
        connectivity: 8 or 4.
        eps: Weight added to every edge (keeps degrees positive).
        tau: Threshold of the ``"binary"`` affinity.

    Raises:
        ValueError: an unknown sign rule, ``eps`` not finite and > 0, ``tau`` not finite, ``min_area`` < 1,
            ``connectivity`` not 4 or 8. (An unknown affinity is refused where the graph is built.)
    """

    affinity: Affinity = "clamp"
    solver: Solver = "auto"
    min_area: int = 4
    sign_rule: SignRule = "border"
    connectivity: int = 8
    eps: float = 1e-5
    tau: float = 0.2

    def __post_init__(self) -> None:
        if self.sign_rule not in SIGN_RULES:
            raise ValueError(f"Unknown sign rule '{self.sign_rule}'; choose one of {SIGN_RULES}.")
        check_number("eps", self.eps, 0, strict=True)  # NaN / Inf eps sent every image to the fallback
        check_number("tau", self.tau)
        check_int("min_area", self.min_area, 1)
        if self.connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {self.connectivity}.")


@dataclass(frozen=True)
class SourceOptions:
    """The base of a region source's own options: a frozen dataclass that checks its fields in ``__post_init__``.

    Its field names are keywords of :class:`~sgcl_plugin.saliency.SaliencyGenerator` where the generator has one
    (the generator fills them from its keywords); :meth:`check_cut` refuses cut options the source cannot use.
    """

    def check_cut(self, cut: CutOptions, mode: str) -> None:
        """Raises ``ValueError`` when source ``mode`` cannot work with ``cut``; every cut by default."""


def orient(y: Tensor, h: int, w: int, rule: SignRule = "border") -> Tensor:
    """Flips the sign of each Fiedler vector so that the foreground side is positive.

    The eigenvector's sign is arbitrary; which side of the cut is "the object" needs a rule:

    - ``"border"``: the side that touches the image border less (relative to its size) is
      foreground: backgrounds surround objects.
    - ``"argmax"`` (TokenCut): the side holding the entry of largest magnitude is foreground.
    - ``"minority"`` (Deep Spectral Methods): the side with fewer cells is foreground.

    ``docs/saliency.md`` reports how each rule fares against ground truth.

    Args:
        y: Fiedler vectors (B, h*w).
        h: Map height.
        w: Map width.
        rule: One of ``"border"``, ``"argmax"``, ``"minority"``.

    Returns:
        ``y`` with each row multiplied by +1 or -1.
    """
    if rule not in SIGN_RULES:
        raise ValueError(f"Unknown sign rule '{rule}'; choose one of {SIGN_RULES}.")
    pos = y > 0
    if rule == "argmax":
        flip = y.gather(1, y.abs().argmax(dim=1, keepdim=True)).squeeze(1) < 0
    elif rule == "minority":
        flip = pos.sum(1) * 2 > y.shape[1]
    else:
        border = border_mask(h, w, y.device)
        n_pos = pos.sum(1).clamp(min=1)
        n_neg = (~pos).sum(1).clamp(min=1)
        frac_pos = (pos & border).sum(1) / n_pos
        frac_neg = (~pos & border).sum(1) / n_neg
        flip = frac_pos > frac_neg
    return torch.where(flip[:, None], -y, y)


def flat_graphs(W: Tensor, rtol: float = 1e-6) -> Tensor:
    """(B,) bool: graphs whose affinities are all equal (identical, all-zero or constant features).

    Such a graph has no cut: every bipartition is as good as any other, and the eigensolver returns
    an arbitrary vector. The generators give these images a zero map and the whole-image fallback.
    """
    hi, lo = W.amax(dim=(1, 2)), W.amin(dim=(1, 2))
    return (hi - lo) <= rtol * hi.abs().clamp(min=torch.finfo(W.dtype).tiny)


def normalize_maps(y: Tensor) -> Tensor:
    """Min-max scales each row to [0, 1]; a constant row becomes all zeros."""
    lo = y.amin(dim=-1, keepdim=True)
    span = y.amax(dim=-1, keepdim=True) - lo
    return torch.where(span > 0, (y - lo) / span.clamp(min=torch.finfo(y.dtype).tiny), torch.zeros_like(y))


@torch.no_grad()
def fiedler_saliency(features: Tensor, cut: CutOptions) -> Tuple[Tensor, Tensor]:
    """Oriented Fiedler vectors (B, h*w) of the cosine graphs of ``features`` (B, C, h, w) and their maps
    (B, h, w) in [0, 1], on the input's device; a graph with no cut (:func:`flat_graphs`) gets zeros."""
    W = cosine_affinity(features, mode=cut.affinity, eps=cut.eps, tau=cut.tau)
    B, _, h, w = features.shape
    # cosine_affinity builds W symmetric and positive by construction: skip the checks.
    y = orient(fiedler_vector(W, solver=cut.solver, validate=False), h, w, cut.sign_rule)
    y = torch.where(flat_graphs(W)[:, None], torch.zeros_like(y), y)
    return y, normalize_maps(y).reshape(B, h, w).float()


def spectral_embedding(
    features: Tensor, cut: CutOptions, num_vectors: int, mode: str
) -> Tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """The k-way cut's pieces shared by the objects and hierarchy sources.

    Args:
        features: (B, C, h, w) map (checked first).
        cut: The graph and cut options.
        num_vectors: Eigenvectors wanted (at most ``h * w - 2`` are computed).
        mode: The source's name, for the error message.

    Returns:
        The cells as unit vectors (B, N, C), the spectral embedding (B, k, N), the oriented Fiedler vector (B, N;
        zero for a graph with no cut: every affinity equal), which graphs have no cut (B,) and the graphs
        themselves (B, N, N).
    """
    unit = unit_features(features)
    W = unit_affinity(unit, mode=cut.affinity, eps=cut.eps, tau=cut.tau)
    h, w = features.shape[-2:]
    k = min(num_vectors, h * w - 2)
    if k < 1:
        raise ValueError(f"regions={mode!r} needs a grid of at least 3 cells, got {h}x{w}.")
    Y, _ = ncut_embedding(W, num_vectors=k, solver=cut.solver, validate=False)  # type: ignore[arg-type]
    flat = flat_graphs(W)
    y = orient(Y[:, 0], h, w, cut.sign_rule)
    y = torch.where(flat[:, None], torch.zeros_like(y), y)  # zero saliency: whole-image fallback
    return unit, Y, y, flat, W


@torch.no_grad()
def paper_source(
    cut: CutOptions, options: Optional[SourceOptions], fine: Tensor, coarse: Optional[Tensor]
) -> SaliencyResult:
    """The ``"paper"`` region source: SGCL Eq. 4-5 exactly on the first map (``coarse`` is not read).

    The mask at the mean of the oriented Fiedler vector Y cut into ``cut.connectivity``-connected regions of at
    least ``cut.min_area`` cells, scores ``max(Y[B_i]) / max(Y)``. The mode has no options of its own.
    """
    y, maps = fiedler_saliency(fine, cut)
    # Eq. 4-5 on the oriented Fiedler vector itself: the mask at the mean is the same as on the
    # [0, 1] picture, but the scores max(Y[B_i]) / max(Y) are not (a min-max rescaling inflates them).
    regions = extract_regions(y.reshape(maps.shape), min_area=cut.min_area, connectivity=cut.connectivity)
    return SaliencyResult(maps=maps, regions=regions, fiedler=y)
