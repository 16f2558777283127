"""Saliency maps and scored regions from backbone feature maps (SGCL Step 1): :class:`SaliencyGenerator`, which
calls the region source (mode) it is given (:mod:`sgcl_plugin.region_sources`)."""

from __future__ import annotations

import dataclasses
import inspect
from typing import Any, Dict, Optional, Tuple, Union

from torch import Tensor

from sgcl_plugin.affinity import Affinity, check_feature_map
from sgcl_plugin.ncut import Solver
from sgcl_plugin.precision import full_precision
from sgcl_plugin.region_sources import DEFAULT_REGION_SOURCE, RegionSource, check_region_source
from sgcl_plugin.regions import SaliencyResult
from sgcl_plugin.spectral import (
    SIGN_RULES,
    CutOptions,
    SignRule,
    SourceOptions,
    fiedler_saliency,
    flat_graphs,
    normalize_maps,
    orient,
)

__all__ = [
    "SIGN_RULES",
    "ChannelSumGenerator",
    "CutOptions",
    "Features",
    "RegionMode",
    "SaliencyGenerator",
    "SaliencyResult",
    "SignRule",
    "SourceOptions",
    "flat_graphs",
    "normalize_maps",
    "orient",
    "resolve_generator",
    "split_features",
]

RegionMode = str
"""A region source's name: a key of :data:`~sgcl_plugin.region_sources.REGION_SOURCES`."""
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


class SaliencyGenerator:
    """Saliency maps and scored regions of backbone feature maps, from one of the region sources.

    Implements Step 1 of "Saliency Guided Contrastive Learning on Scene Images" (Chen et al.,
    AAAI 2023, https://arxiv.org/abs/2302.11461): a cosine self-similarity graph of each feature
    map (Eq. 1), its normalized cut (Eq. 2-3), the oriented Fiedler vector Y as saliency, a mask at
    the mean (Eq. 4) cut into 8-connected regions with scores ``max(Y[B_i]) / max(Y)`` (Eq. 5,
    computed on Y itself) and boxes in normalized image coordinates. ``maps`` are Y min-max scaled
    to [0, 1] for pictures; the scores are not taken from them. That is the ``"paper"`` region source;
    ``regions`` names the source (the mode), a row of :data:`~sgcl_plugin.region_sources.REGION_SOURCES`:

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

    ``regions="heatmap"`` is the ContrastiveCrop-style baseline (:mod:`sgcl_plugin.heatmap`): no graph, one box
    per image around the cells of the channel-sum heat map above ``threshold``, score 1.

    The graph and cut keywords (``affinity`` to ``tau``) make the generator's
    :class:`~sgcl_plugin.spectral.CutOptions` (``generator.cut``); the keywords of the mode make its options object
    (``generator.options``: :class:`~sgcl_plugin.objects.ObjectsOptions`,
    :class:`~sgcl_plugin.hierarchy.HierarchyOptions`, :class:`~sgcl_plugin.heatmap.HeatmapOptions`; None for the
    paper mode), or ``options=`` gives that object whole. Keywords of other modes are not used (nor checked).

    Args:
        affinity: ``"clamp"`` (``max(cos, 0) + eps``) or ``"binary"`` (TokenCut: 1 above ``tau``).
        solver: Eigensolver for :func:`~sgcl_plugin.ncut.fiedler_vector` (``"auto"``, ``"eigh"``,
            ``"krylov"``, ``"cupy"``; the objects and hierarchy modes take the first three).
        min_area: Smallest region kept, in feature-map cells.
        sign_rule: How the foreground side of the cut is chosen (see :func:`~sgcl_plugin.spectral.orient`).
        connectivity: 8 or 4.
        eps: Weight added to every edge (keeps degrees positive).
        tau: Threshold of the ``"binary"`` affinity.
        regions: The region source: ``"hierarchy"`` (default: whole objects, see above), ``"objects"`` (the k-way
            cut's parts), ``"paper"`` (Eq. 4-5 exactly: components of the mask at the mean, scores
            ``max(Y[B_i]) / max(Y)``; measured side by side in docs/RESULTS.md) or ``"heatmap"`` (one box
            around the heat map), or any other name of the table.
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
        threshold: Heat-map mode: fraction of the heat map's range above which a cell belongs to the box.
        options: The mode's options object instead of its keywords (which must then keep their defaults).

    Raises:
        ValueError: an unknown mode, a bad option (named), options of another mode's class, or both ``options``
            and a keyword of the mode.

    Examples:
        >>> from sgcl_plugin import FeatureMaps
        >>> from sgcl_plugin.hierarchy import HierarchyOptions
        >>> generator = SaliencyGenerator()  # hierarchy mode
        >>> features = FeatureMaps(backbone, stride=(16, 32))(images)  # at 224 px: 14 x 14 and 7 x 7 (640 px: 40, 20)
        >>> result = generator(features)
        >>> result.maps.shape  # (B, 14, 14), in [0, 1]
        torch.Size([2, 14, 14])
        >>> boxes, scores = result.regions[0].boxes, result.regions[0].scores  # (K, 4) normalized xyxy, (K,) best first
        >>> len(boxes) == len(scores) <= 16, float(scores[0])
        (True, 1.0)
        >>> paper = SaliencyGenerator(regions="paper")(backbone(images))  # the paper's Eq. 4-5 on the last map
        >>> SaliencyGenerator(options=HierarchyOptions(max_regions=8)).options.max_regions
        8
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
        regions: RegionMode = DEFAULT_REGION_SOURCE,
        num_vectors: int = 4,
        num_clusters: int = 8,
        ring: int = 2,
        min_fraction: float = 0.01,
        nms_iou: float = 0.5,
        max_regions: int = 16,
        score_power: float = 4.0,
        objectness: Optional[Dict[str, float]] = None,
        threshold: float = 0.1,
        options: Optional[SourceOptions] = None,
    ) -> None:
        source = check_region_source(regions)
        self.regions = regions
        self.cut = CutOptions(affinity, solver, min_area, sign_rule, connectivity, eps, tau)
        keywords = {
            "num_vectors": num_vectors, "num_clusters": num_clusters, "ring": ring, "min_fraction": min_fraction,
            "nms_iou": nms_iou, "max_regions": max_regions, "score_power": score_power, "objectness": objectness,
            "threshold": threshold,
        }  # fmt: skip
        self.options = _mode_options(source, keywords, options)
        if self.options is not None:
            self.options.check_cut(self.cut, regions)

    def __repr__(self) -> str:
        fields = ", ".join(f"{k}={v!r}" for k, v in vars(self).items() if not (k == "options" and v is None))
        return f"{type(self).__name__}({fields})"

    def saliency_maps(self, features: Tensor) -> Tuple[Tensor, Tensor]:
        """The Ncut saliency of a map: oriented Fiedler vectors (B, h*w) and maps (B, h, w) in [0, 1], on the
        input's device (:func:`~sgcl_plugin.spectral.fiedler_saliency` with this generator's cut options)."""
        return fiedler_saliency(features, self.cut)

    @full_precision
    def __call__(self, features: Features) -> SaliencyResult:
        """Saliency maps and scored regions of a batch of feature maps (B, C, h, w), or of a pair
        ``(fine, coarse)`` of them, in float32 (float64 features stay float64) whatever autocast is
        active: the mode's function of :data:`~sgcl_plugin.region_sources.REGION_SOURCES`."""
        fine, coarse = split_features(features)
        return check_region_source(self.regions).function(self.cut, self.options, fine, coarse)


def _mode_options(
    source: RegionSource, keywords: Dict[str, Any], options: Optional[SourceOptions]
) -> Optional[SourceOptions]:
    """The options object of ``source``: ``options`` when given (checked against the source's class), else built
    from the generator's ``keywords`` that were given (not left at the generator's default: same type and value),
    the class's defaults for the others (None for a source without options). A given keyword that is not a field
    of the source's class is refused (``threshold`` for the hierarchy mode, ``nms_iou`` for the paper mode)."""
    cls = source.options_class
    defaults = {k: p.default for k, p in inspect.signature(SaliencyGenerator).parameters.items() if k in keywords}
    given = {
        k: v
        for k, v in keywords.items()
        if not (v is defaults[k] or (type(v) is type(defaults[k]) and v == defaults[k]))
    }
    fields = [] if cls is None else [f.name for f in dataclasses.fields(cls)]
    mine = {k: given[k] for k in fields if k in given}
    foreign = sorted(set(given) - set(mine))
    if foreign:  # a keyword the mode never reads: the user thinks it does something
        takes = f"its options are {fields}" if fields else "it takes no mode options"
        raise ValueError(
            f"{foreign} {'does' if len(foreign) == 1 else 'do'} not apply to regions={source.name!r} ({takes}); "
            "leave them out, or choose the mode they belong to."
        )
    if options is None:
        return None if cls is None else cls(**mine)
    if cls is None or type(options) is not cls:  # exactly: HierarchyOptions extends ObjectsOptions
        takes = "no options" if cls is None else f"options of class {cls.__name__}"
        raise ValueError(f"regions={source.name!r} takes {takes}, got options={options!r}.")
    if mine:
        raise ValueError(f"Pass either options= or the keywords {sorted(mine)}, not both.")
    return options


def ChannelSumGenerator(threshold: float = 0.1) -> SaliencyGenerator:  # the class it was: its old name
    """Baseline saliency source in the style of ContrastiveCrop: ``SaliencyGenerator(regions="heatmap",
    threshold=threshold)``, one box per image from a heat map.

    The heat map is the sum over channels of the feature map, min-max scaled per image; the single
    region is the tightest box around the cells above ``threshold`` (ContrastiveCrop's default 0.1),
    with score 1 (:mod:`sgcl_plugin.heatmap`). Any generator's interface (``__call__``; the generator of a
    :func:`~sgcl_plugin.refresh.refresh_bank`), so ablations can swap the region source. A flat heat map
    gives the whole image (``fallback``).

    Args:
        threshold: Fraction of the heat map's range above which a cell belongs to the box.

    Examples:
        >>> from sgcl_plugin import refresh_bank
        >>> bank = refresh_bank(ChannelSumGenerator(), backbone, dataset, saliency_size=256, progress=False)
        >>> all(len(bank[i][0]) == 1 for i in range(len(dataset)))  # one box per image
        True
    """
    return SaliencyGenerator(regions="heatmap", threshold=threshold)


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
    return SaliencyGenerator(regions=regions if regions is not None else DEFAULT_REGION_SOURCE)
