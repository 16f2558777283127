"""Saliency maps and scored regions from backbone feature maps (SGCL Step 1)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Literal, Optional, Tuple, Union

import torch
from torch import Tensor

from sgcl_plugin.affinity import Affinity, check_feature_map, cosine_affinity, unit_affinity, unit_features
from sgcl_plugin.checks import check_int, check_number
from sgcl_plugin.ncut import Solver, fiedler_vector, ncut_embedding
from sgcl_plugin.precision import full_precision
from sgcl_plugin.region_sources import check_region_source
from sgcl_plugin.regions import Regions, border_mask, extract_regions

SignRule = Literal["border", "argmax", "minority"]
SIGN_RULES = ("border", "argmax", "minority")
RegionMode = Literal["paper", "objects", "hierarchy"]
Features = Union[Tensor, Tuple[Tensor, Tensor]]
"""A feature map (B, C, h, w), or a pair (fine, coarse) of maps of one batch (``FeatureMaps(stride=(16, 32))``)."""


def split_features(features: Features) -> Tuple[Tensor, Optional[Tensor]]:
    """``(fine, coarse)`` of a map or a pair of maps (``coarse`` None for a single map).

    Raises:
        ValueError: a sequence that is not two maps of the same batch, or whose second map is finer
            than the first.
    """
    if isinstance(features, Tensor):
        return features, None
    if not isinstance(features, (tuple, list)):
        check_feature_map(features)  # type: ignore[arg-type]  # raises: not a tensor
    if len(features) != 2:
        raise ValueError(
            "features must be a (B, C, h, w) tensor or a pair (fine, coarse) of them, got a "
            f"{type(features).__name__} of {len(features)}."
        )
    fine, coarse = features
    for m in (fine, coarse):  # shapes only: the values are checked where a graph is built of them
        if not isinstance(m, Tensor) or m.ndim != 4:
            check_feature_map(m)  # raises the usual message
    if coarse.shape[0] != fine.shape[0]:
        raise ValueError(f"The two maps hold {fine.shape[0]} and {coarse.shape[0]} images: they must be one batch.")
    if coarse.shape[-2] * coarse.shape[-1] > fine.shape[-2] * fine.shape[-1]:
        raise ValueError(
            f"A pair is (fine, coarse): the second map ({tuple(coarse.shape[-2:])}) is finer than the first "
            f"({tuple(fine.shape[-2:])}); swap them."
        )
    return fine, coarse


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


@dataclass
class SaliencyResult:
    """Saliency of a batch of feature maps.

    Attributes:
        maps: (B, h, w) float32 in [0, 1], higher = more foreground.
        regions: One :class:`~sgcl_plugin.regions.Regions` per image (boxes, scores, areas).
        fiedler: (B, h*w) the oriented Fiedler vectors before scaling.
    """

    maps: Tensor
    regions: List[Regions]
    fiedler: Tensor

    @property
    def boxes(self) -> List[Tensor]:
        return [r.boxes for r in self.regions]

    @property
    def scores(self) -> List[Tensor]:
        return [r.scores for r in self.regions]

    def padded(self, max_regions: int) -> Tuple[Tensor, Tensor, Tensor]:
        """Fixed-size tables of the top ``max_regions`` regions per image.

        Returns:
            boxes (B, R, 4), scores (B, R) (0 in padding) and counts (B,) int64.
        """
        B = len(self.regions)
        boxes = torch.zeros(B, max_regions, 4)
        scores = torch.zeros(B, max_regions)
        counts = torch.zeros(B, dtype=torch.int64)
        for i, r in enumerate(self.regions):
            k = min(len(r), max_regions)
            boxes[i, :k], scores[i, :k], counts[i] = r.boxes[:k], r.scores[:k], k
        return boxes, scores, counts


class SaliencyGenerator:
    """Normalized-cut saliency of backbone feature maps, and refreshes of a whole dataset.

    Implements Step 1 of "Saliency Guided Contrastive Learning on Scene Images" (Chen et al.,
    AAAI 2023, https://arxiv.org/abs/2302.11461): a cosine self-similarity graph of each feature
    map (Eq. 1), its normalized cut (Eq. 2-3), the oriented Fiedler vector Y as saliency, a mask at
    the mean (Eq. 4) cut into 8-connected regions with scores ``max(Y[B_i]) / max(Y)`` (Eq. 5,
    computed on Y itself) and boxes in normalized image coordinates. ``maps`` are Y min-max scaled
    to [0, 1] for pictures; the scores are not taken from them.

    ``regions="objects"`` replaces Eq. 4-5 by object-level regions from the same graph: a k-way
    normalized cut (``num_vectors`` eigenvectors, ``num_clusters`` k-means clusters), its connected
    parts scored by objectness (salient, distinct from their surroundings, off the image border;
    :mod:`sgcl_plugin.objects`). The saliency maps are the same in both modes.

    ``regions="hierarchy"`` (the default) merges those parts bottom-up into candidate whole objects
    and scores every candidate (:mod:`sgcl_plugin.hierarchy`); it reads a pair of maps ``(fine, coarse)``
    (``FeatureMaps(backbone, stride=(16, 32))``): parts from the fine map's graph, saliency from
    the coarse map's Ncut, objectness from both. Its ``maps`` are the coarse map's saliency on
    the fine grid. Given one map it uses it for both roles. The other modes read the first map of
    a pair.

    Args:
        affinity: ``"clamp"`` (``max(cos, 0) + eps``) or ``"binary"`` (TokenCut: 1 above ``tau``).
        solver: Eigensolver for :func:`~sgcl_plugin.ncut.fiedler_vector` (``"auto"``, ``"eigh"``,
            ``"krylov"``, ``"cupy"``; the objects mode takes the first three).
        min_area: Smallest region kept, in feature-map cells.
        sign_rule: How the foreground side of the cut is chosen (see :func:`orient`).
        connectivity: 8 or 4.
        eps: Weight added to every edge (keeps degrees positive).
        tau: Threshold of the ``"binary"`` affinity.
        regions: ``"hierarchy"`` (default: whole objects, see above), ``"objects"`` (the k-way
            cut's parts) or ``"paper"`` (Eq. 4-5 exactly: components of the mask at the mean, scores
            ``max(Y[B_i]) / max(Y)``); measured side by side in docs/RESULTS.md.
        num_vectors: Objects and hierarchy modes: eigenvectors in the spectral embedding.
        num_clusters: Objects and hierarchy modes: k-means clusters per image.
        ring: Objects and hierarchy modes: width in cells of the ring a region is compared with.
        min_fraction: Objects and hierarchy modes: parts smaller than this fraction of the grid
            are dropped (objects) or merged into a neighbour (hierarchy) too (the larger of this and
            ``min_area`` applies: 8 cells on a 28 x 28 grid).
        nms_iou: Hierarchy mode: a candidate overlapping a better one at this IoU is dropped.
        max_regions: Hierarchy mode: regions kept per image.
        score_power: Hierarchy mode: kept scores are ``(objectness / best) ** score_power``.
        objectness: Hierarchy mode: exponents of the objectness factors that differ from
            :data:`~sgcl_plugin.hierarchy.OBJECTNESS_EXPONENTS` (0 leaves a factor out).

    Examples:
        >>> generator = SaliencyGenerator()  # hierarchy mode
        >>> features = FeatureMaps(backbone, stride=(16, 32))(images)  # ResNet-50 at 640 px: layer3 40 x 40, layer4
        >>> result = generator(features)
        >>> result.maps.shape  # (B, 40, 40), in [0, 1]
        >>> result.regions[0].boxes, result.regions[0].scores
        >>> SaliencyGenerator(regions="paper")(backbone(images))  # the paper's Eq. 4-5 on the last map
    """

    def __init__(
        self,
        affinity: Affinity = "clamp",
        solver: Solver = "auto",
        min_area: int = 4,
        sign_rule: SignRule = "border",
        connectivity: int = 8,
        eps: float = 1e-5,
        tau: float = 0.2,
        regions: RegionMode = "hierarchy",
        num_vectors: int = 4,
        num_clusters: int = 8,
        ring: int = 2,
        min_fraction: float = 0.01,
        nms_iou: float = 0.5,
        max_regions: int = 16,
        score_power: float = 4.0,
        objectness: Optional[Dict[str, float]] = None,
    ) -> None:
        check_region_source(regions)
        if regions in ("objects", "hierarchy"):
            if solver == "cupy":
                raise ValueError(
                    f"regions={regions!r} solves several eigenvectors, which the cupy solver does not: "
                    "use 'auto', 'eigh' or 'krylov'."
                )
            check_int("num_vectors", num_vectors, 1)
            check_int("num_clusters", num_clusters, 2)
            check_int("ring", ring, 1)
        if sign_rule not in SIGN_RULES:
            raise ValueError(f"Unknown sign rule '{sign_rule}'; choose one of {SIGN_RULES}.")
        check_number("eps", eps, 0, strict=True)  # NaN / Inf eps sent every image to the fallback
        check_number("tau", tau)
        if min_area < 1:
            raise ValueError(f"min_area must be >= 1, got {min_area}.")
        if connectivity not in (4, 8):
            raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
        self.affinity = affinity
        self.solver = solver
        self.min_area = min_area
        self.sign_rule = sign_rule
        self.connectivity = connectivity
        self.eps = eps
        self.tau = tau
        self.regions = regions
        self.num_vectors = num_vectors
        self.num_clusters = num_clusters
        self.ring = ring
        if not 0.0 <= min_fraction < 1.0:
            raise ValueError(f"min_fraction must be in [0, 1), got {min_fraction!r}.")
        self.min_fraction = float(min_fraction)
        if not 0.0 < nms_iou <= 1.0:
            raise ValueError(f"nms_iou must be in (0, 1], got {nms_iou!r}.")
        check_int("max_regions", max_regions, 1)
        check_number("score_power", score_power, 0, strict=True)
        self.nms_iou = float(nms_iou)
        self.max_regions = max_regions
        self.score_power = float(score_power)
        if objectness is not None:
            from sgcl_plugin.hierarchy import OBJECTNESS_EXPONENTS

            bad = {
                k: v for k, v in objectness.items() if k not in OBJECTNESS_EXPONENTS or not 0 <= float(v) < float("inf")
            }
            if bad:
                raise ValueError(f"objectness takes exponents >= 0 of {sorted(OBJECTNESS_EXPONENTS)}, got {bad}.")
            objectness = {k: float(v) for k, v in objectness.items()}
        self.objectness = objectness

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items())
        return f"{type(self).__name__}({fields})"

    @torch.no_grad()
    def saliency_maps(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """Oriented Fiedler vectors (B, h*w) and maps (B, h, w) in [0, 1], on the input's device."""
        W = cosine_affinity(features, mode=self.affinity, eps=self.eps, tau=self.tau)
        B, _, h, w = features.shape
        # cosine_affinity builds W symmetric and positive by construction: skip the checks.
        y = orient(fiedler_vector(W, solver=self.solver, validate=False), h, w, self.sign_rule)
        y = torch.where(flat_graphs(W)[:, None], torch.zeros_like(y), y)
        return y, normalize_maps(y).reshape(B, h, w).float()

    @full_precision
    def __call__(self, features: Features) -> SaliencyResult:
        """Saliency maps and scored regions of a batch of feature maps (B, C, h, w), or of a pair
        ``(fine, coarse)`` of them, in float32 (float64 features stay float64) whatever autocast is
        active."""
        fine, coarse = split_features(features)
        if self.regions == "hierarchy":
            return self._hierarchy(fine, coarse)
        features = fine
        if self.regions == "objects":
            return self._objects(features)
        y, maps = self.saliency_maps(features)
        # Eq. 4-5 on the oriented Fiedler vector itself: the mask at the mean is the same as on the
        # [0, 1] picture, but the scores max(Y[B_i]) / max(Y) are not (a min-max rescaling inflates them).
        regions = extract_regions(y.reshape(maps.shape), min_area=self.min_area, connectivity=self.connectivity)
        return SaliencyResult(maps=maps, regions=regions, fiedler=y)

    def _embedding(self, features: Tensor) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The k-way cut's pieces shared by the objects and hierarchy modes: the cells as unit vectors
        (B, N, C), the spectral embedding (B, k, N), the oriented Fiedler vector (B, N; zero for a graph with
        no cut: every affinity equal) and which graphs have no cut (B,)."""
        unit = unit_features(features)
        W = unit_affinity(unit, mode=self.affinity, eps=self.eps, tau=self.tau)
        h, w = features.shape[-2:]
        k = min(self.num_vectors, h * w - 2)
        if k < 1:
            raise ValueError(f"regions={self.regions!r} needs a grid of at least 3 cells, got {h}x{w}.")
        Y, _ = ncut_embedding(W, num_vectors=k, solver=self.solver, validate=False)  # type: ignore[arg-type]
        flat = flat_graphs(W)
        y = orient(Y[:, 0], h, w, self.sign_rule)
        y = torch.where(flat[:, None], torch.zeros_like(y), y)  # zero saliency: whole-image fallback
        return unit, Y, y, flat

    @torch.no_grad()
    def _objects(self, features: Tensor) -> SaliencyResult:
        from sgcl_plugin.objects import object_regions

        _, Y, y, _ = self._embedding(features)  # checks the map first
        B, _, h, w = features.shape
        maps = normalize_maps(y).reshape(B, h, w).float()
        regions = object_regions(
            features, Y, maps, num_clusters=self.num_clusters,
            min_area=max(self.min_area, round(self.min_fraction * h * w)),
            connectivity=self.connectivity, ring=self.ring,
        )  # fmt: skip
        return SaliencyResult(maps=maps, regions=regions, fiedler=y)

    @torch.no_grad()
    def _hierarchy(self, fine: Tensor, coarse: Optional[Tensor]) -> SaliencyResult:
        from sgcl_plugin.hierarchy import hierarchy_regions

        unit, Y, y, flat = self._embedding(fine)  # checks the map first
        B, _, h, w = fine.shape
        fine_sal = normalize_maps(y)
        if coarse is not None and coarse.shape[-2] * coarse.shape[-1] >= 3:
            hc, wc = coarse.shape[-2:]
            coarse_unit = unit_features(coarse)
            Wc = unit_affinity(coarse_unit, mode=self.affinity, eps=self.eps, tau=self.tau)
            yc = orient(fiedler_vector(Wc, solver=self.solver, validate=False), hc, wc, self.sign_rule)
            yc = torch.where(flat_graphs(Wc)[:, None], torch.zeros_like(yc), yc)
            up = torch.nn.functional.interpolate(
                yc.reshape(B, 1, hc, wc).float(), size=(h, w), mode="bilinear", align_corners=False
            )
            sal = normalize_maps(up.flatten(1))
        else:
            sal, coarse_unit = fine_sal, None
        sal = torch.where(flat[:, None], torch.zeros_like(sal), sal)  # identical features: whole-image fallback
        regions = hierarchy_regions(
            fine, coarse, Y, fine_sal, sal, num_clusters=self.num_clusters,
            min_area=max(self.min_area, round(self.min_fraction * h * w)), ring=self.ring,
            nms_iou=self.nms_iou, max_regions=self.max_regions, score_power=self.score_power,
            exponents=self.objectness, fine_unit=unit, coarse_unit=coarse_unit,
        )  # fmt: skip
        return SaliencyResult(maps=sal.reshape(B, h, w).float(), regions=regions, fiedler=y)


class ChannelSumGenerator(SaliencyGenerator):
    """Baseline saliency source in the style of ContrastiveCrop: one box per image from a heat map.

    The heat map is the sum over channels of the feature map, min-max scaled per image; the single
    region is the tightest box around the cells above ``threshold`` (ContrastiveCrop's default 0.1),
    with score 1. Same interface as :class:`SaliencyGenerator` (``__call__``; the generator of a
    :func:`~sgcl_plugin.refresh.refresh_bank`), so ablations can swap the region source. A flat heat map
    gives the whole image (``fallback``).

    Args:
        threshold: Fraction of the heat map's range above which a cell belongs to the box.

    Examples:
        >>> bank = refresh_bank(ChannelSumGenerator(), backbone, dataset)
    """

    def __init__(self, threshold: float = 0.1) -> None:
        super().__init__(regions="paper")  # one map: the backbone's last (feature_stride "auto")
        if not 0.0 <= threshold < 1.0:
            raise ValueError(f"threshold must be in [0, 1), got {threshold}.")
        self.threshold = threshold

    @torch.no_grad()
    def saliency_maps(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        check_feature_map(features)
        heat = features.float().sum(1).flatten(1)
        maps = normalize_maps(heat)
        return maps, maps.reshape(features.shape[0], *features.shape[2:])

    def __call__(self, features: Features) -> SaliencyResult:
        y, maps = self.saliency_maps(split_features(features)[0])
        h, w = maps.shape[1:]
        regions = []
        for m in maps.cpu():
            rows, cols = torch.nonzero(m > self.threshold, as_tuple=True)
            if rows.numel() == 0:
                box, fallback, area = [0.0, 0.0, 1.0, 1.0], True, h * w
            else:
                c0, c1, r0, r1 = int(cols.min()), int(cols.max()) + 1, int(rows.min()), int(rows.max()) + 1
                box = [c0 / w, r0 / h, c1 / w, r1 / h]
                fallback, area = False, int(rows.numel())
            regions.append(
                Regions(
                    boxes=torch.tensor([box], dtype=torch.float32),
                    scores=torch.ones(1),
                    areas=torch.tensor([area]),
                    fallback=fallback,
                )
            )
        return SaliencyResult(maps=maps, regions=regions, fiedler=y)


def resolve_generator(
    generator: Optional[SaliencyGenerator] = None, regions: Optional[str] = None
) -> SaliencyGenerator:
    """The generator an adapter uses: ``generator`` as given, or a default one in ``regions`` mode.

    Raises:
        ValueError: both are given (a generator already has its mode), or ``regions`` is unknown.
    """
    if generator is not None:
        if regions is not None:
            raise ValueError(
                "Pass either a generator or regions=, not both: the generator already has its mode "
                f"(regions={getattr(generator, 'regions', None)!r})."
            )
        return generator
    return SaliencyGenerator(regions=regions if regions is not None else "hierarchy")  # type: ignore[arg-type]
