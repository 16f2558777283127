"""Whole-object regions: the k-way Ncut's parts merged bottom-up, every merge a candidate object.

The objects mode (:mod:`sgcl_plugin.objects`) keeps the parts of a k-way normalized cut as regions.
On real photos those parts are fragments: an eye, a wheel, a patch of table. This mode builds
objects out of them:

1. **Parts**: the k-way cut of the fine map's graph (the objects mode's spectral embedding and
   k-means), every 8-connected component of every cluster. Parts smaller than ``min_cells`` are
   merged into the neighbour whose features they resemble most.
2. **Hierarchy**: adjacent parts are merged, the pair with the most similar mean features first
   (agglomerative clustering on the region adjacency graph), until one region is left. Every
   part and every merge is a candidate: 2P - 1 nested regions, from parts to groups of objects.
   (Steps 1 and 2: :mod:`sgcl_plugin.part_merging`.)
3. **Objectness** of each candidate R (:mod:`sgcl_plugin.objectness_factors`), from *semantic* cell
   features (the fine map and the coarse map upsampled to its grid, each L2-normalized per cell,
   concatenated):

   ``score = saliency(R) * contrast(R)^2 * (1 - frame(R))^2 * activation(R) * coherence(R) * separation(R)^3``

   - saliency: mean of the coarse map's oriented Fiedler vector (the paper's Ncut saliency, on the
     semantic stage), scaled to [0, 1];
   - contrast: ``1 - cos`` between the mean feature of R and of the ring of cells around it: a
     whole object differs from its surroundings, a part of it does not;
   - frame: the share of the image's border cells that R covers (the whole image: 1, so 0 score);
   - activation: mean norm of the coarse features (scaled to [0, 1]): trained backbones respond
     to things more than to stuff;
   - coherence: mean cosine between the cells of R and its mean direction: one object is
     coherent, a group of different objects is not;
   - separation: ``1 - Ncut(R) / 2``, with Shi and Malik's normalized cut of R from the rest,
     ``Ncut(R) = cut(R, R') / vol(R) + cut(R, R') / vol(R')``, on the fine map's graph (the graph the
     k-way cut splits): a part of an object is tied to the rest of it by strong edges, a whole
     object is not. Unlike the contrast with a ring, it does not need the object to have
     surroundings: an object that fills the frame is as separable as a small one.

   The first five exponents were chosen on the composed scenes and on annotated real photos (the
   "dev" split of :mod:`sgcl_plugin.annotated_photos`), then checked on a held-out split; the
   separation factor was chosen on dev, held-out and composed scenes, then checked on two splits no
   choice had seen (docs/RESULTS.md#saliency-quality).
4. **Selection**: non-maximum suppression at IoU ``nms_iou``, the best ``max_regions`` kept, scores
   divided by the best one and raised to ``score_power`` (so that pairs are drawn mostly from the
   best few regions and a tail of weak candidates costs little).

Everything except the merges runs batched on the features' device; the merges run per image on
the CPU over at most a few dozen parts.

Steps 1-3 are :func:`hierarchy_candidates` (one :class:`HierarchyCandidates` per image), step 4 is
:func:`select_regions`; :func:`hierarchy_regions` runs the two in turn.

:func:`hierarchy_source` is the ``"hierarchy"`` region source (:data:`~sgcl_plugin.region_sources.REGION_SOURCES`),
with its options in :class:`HierarchyOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from sgcl_plugin.affinity import unit_affinity, unit_features
from sgcl_plugin.checks import check_int, check_interval, check_number
from sgcl_plugin.ncut import fiedler_vector
from sgcl_plugin.objectness_factors import (
    MIN_SCORE,
    OBJECTNESS_EXPONENTS,
    CellFeatures,
    map_maturity,
    node_factors,
    objectness,
)
from sgcl_plugin.objects import ObjectsOptions, batched_kmeans, component_labels
from sgcl_plugin.part_merging import absorb_small_parts, merge_tree
from sgcl_plugin.regions import Regions, SaliencyResult, box_iou
from sgcl_plugin.spectral import CutOptions, flat_graphs, normalize_maps, orient, spectral_embedding

__all__ = [
    "MIN_SCORE",
    "OBJECTNESS_EXPONENTS",
    "PHOTO_RANKING",
    "CellFeatures",
    "HierarchyCandidates",
    "HierarchyOptions",
    "hierarchy_candidates",
    "hierarchy_regions",
    "hierarchy_source",
    "map_maturity",
    "node_factors",
    "objectness",
    "select_regions",
    "source_candidates",
]


def _mask_boxes(masks: Tensor, h: int, w: int) -> Tensor:
    """(K, 4) normalized xyxy boxes of (K, N) 0/1 masks (each non-empty)."""
    m = masks.reshape(-1, h, w) > 0
    rows, cols = m.any(2), m.any(1)
    r = torch.arange(h, device=masks.device)
    c = torch.arange(w, device=masks.device)
    big = max(h, w) + 1
    r0 = torch.where(rows, r, big).amin(1)
    r1 = torch.where(rows, r, -1).amax(1)
    c0 = torch.where(cols, c, big).amin(1)
    c1 = torch.where(cols, c, -1).amax(1)
    return torch.stack([c0 / w, r0 / h, (c1 + 1) / w, (r1 + 1) / h], dim=-1).float()


def _nms(boxes: Tensor, scores: Tensor, iou: float, limit: int) -> List[int]:
    order = torch.argsort(scores, descending=True, stable=True).tolist()
    overlap = box_iou(boxes, boxes)
    keep: List[int] = []
    for i in order:
        if float(scores[i]) <= MIN_SCORE or len(keep) == limit:
            break
        if not keep or float(overlap[i, keep].max()) < iou:
            keep.append(i)
    return keep


@dataclass
class HierarchyCandidates:
    """Every candidate region of one image before selection: the parts and merges of steps 1 and 2 with their
    objectness factors (step 3), on the features' device.

    Attributes:
        boxes: (K, 4) normalized xyxy boxes of the candidates.
        factors: :func:`node_factors`' dict of (K,) tensors (``area`` in cells and the six factors).
        min_area: Smallest region kept, in cells (smaller candidates score 0).
        cells: Cells of the grid (the whole-image fallback's area).
        maturity: Mean cosine between two cells of the coarse map (:func:`map_maturity`): a randomly initialised
            network's cells are all alike (ResNet-18: 0.76-0.85), a trained one's are not (ImageNet Lite0:
            0.10-0.51). 1.0 when unknown.
    """

    boxes: Tensor
    factors: Dict[str, Tensor]
    min_area: int
    cells: int
    maturity: float = 1.0

    def __post_init__(self) -> None:
        if not isinstance(self.boxes, Tensor) or self.boxes.ndim != 2 or self.boxes.shape[1] != 4:
            shape = tuple(self.boxes.shape) if isinstance(self.boxes, Tensor) else type(self.boxes).__name__
            raise ValueError(f"boxes must be a (K, 4) tensor, got {shape}.")
        K = self.boxes.shape[0]
        missing = sorted({"area", *OBJECTNESS_EXPONENTS} - set(self.factors))
        if missing:
            raise ValueError(f"factors lacks {missing}; node_factors gives every one.")
        bad = {
            k: tuple(v.shape) if isinstance(v, Tensor) else type(v).__name__
            for k, v in self.factors.items()
            if not isinstance(v, Tensor) or v.shape != (K,)
        }
        if bad:
            raise ValueError(f"every factor must be a ({K},) tensor, one value per box; got shapes {bad}.")
        self.min_area = check_int("min_area", self.min_area, 1)
        self.cells = check_int("cells", self.cells, 1)

    def __len__(self) -> int:
        return int(self.boxes.shape[0])


def hierarchy_candidates(
    fine: Tensor,
    coarse: Optional[Tensor],
    embedding: Tensor,
    fine_saliency: Tensor,
    coarse_saliency: Tensor,
    num_clusters: int = 8,
    min_area: int = 4,
    ring: int = 2,
    kmeans_iters: int = 20,
    fine_unit: Optional[Tensor] = None,
    coarse_unit: Optional[Tensor] = None,
    graph: Optional[Tensor] = None,
    blob_candidates: bool = False,
) -> List[HierarchyCandidates]:
    """Steps 1-3 of a batch: the parts, their merge hierarchy and every candidate's objectness factors.

    Arguments as :func:`hierarchy_regions`; ``blob_candidates`` adds the paper's regions to the candidates: the
    8-connected components (at least ``min_area`` cells) of the fine map's Ncut mask (``fine_saliency`` above its
    mean, Eq. 4). :func:`select_regions` turns the result into regions; holding the candidates lets a sweep of the
    selection's options (exponents, NMS, scores) skip the cuts and the merges (``benchmarks/objectness_sweep.py``).

    Returns:
        One :class:`HierarchyCandidates` per image.
    """
    B, _, h, w = fine.shape
    N = h * w
    ctx = coarse if coarse is not None else fine
    act = ctx.float().norm(dim=1, keepdim=True)
    if act.shape[-2:] != (h, w):
        act = F.interpolate(act, size=(h, w), mode="bilinear", align_corners=False)
    act = act.flatten(1)
    lo, hi = act.amin(1, keepdim=True), act.amax(1, keepdim=True)
    act = torch.where(hi > lo, (act - lo) / (hi - lo).clamp(min=torch.finfo(act.dtype).tiny), torch.zeros_like(act))
    points = F.normalize(embedding.transpose(1, 2).float(), dim=-1)
    clusters = batched_kmeans(points, num_clusters, first=fine_saliency.argmax(dim=1), iters=kmeans_iters)
    labels, _ = component_labels(clusters.reshape(B, h, w), min_area=1)
    if coarse_unit is not None:  # the semantic stage's cells, as the saliency factor reads them
        semantic = coarse_unit
    elif coarse is not None:
        semantic = unit_features(coarse)
    else:
        semantic = fine_unit if fine_unit is not None else unit_features(fine)
    maturity = map_maturity(semantic).cpu()
    out: List[HierarchyCandidates] = []
    for b in range(B):
        cells = CellFeatures(
            fine[b],
            None if coarse is None else coarse[b],
            None if fine_unit is None else fine_unit[b],
            None if coarse_unit is None else coarse_unit[b],
        )
        lab = labels[b].numpy()
        P0 = int(lab.max()) + 1
        sums = cells.sums(F.one_hot(labels[b].flatten().to(fine.device), P0).T.float())  # (P0, C)
        parts, P = absorb_small_parts(lab, (sums.double() @ sums.double().T).cpu().numpy(), min_area)
        # The kept parts' sums: each old part's sum goes to the part it joined.
        owner = torch.zeros(P0, dtype=torch.int64)
        owner[torch.from_numpy(lab.ravel())] = torch.from_numpy(parts.ravel())
        sums = torch.zeros(P, sums.shape[1], device=sums.device, dtype=sums.dtype).index_add_(
            0, owner.to(sums.device), sums
        )
        onehot = F.one_hot(torch.from_numpy(parts).flatten().to(fine.device), P).T.float()  # (P, N)
        member = torch.from_numpy(merge_tree(parts, (sums.double() @ sums.double().T).cpu().numpy()))  # (K, P)
        member = member.to(fine.device).float()
        masks = member @ onehot  # (K, N), 0/1: the parts are disjoint
        inner = member @ sums
        if blob_candidates:
            blobs = _blob_masks(fine_saliency[b], h, w, min_area)
            if blobs is not None:
                blobs = blobs.to(fine.device)
                masks, inner = torch.cat([masks, blobs]), torch.cat([inner, cells.sums(blobs)])
        f = node_factors(
            masks, cells, coarse_saliency[b].float(), act[b], h, w, ring, inner=inner,
            graph=None if graph is None else graph[b],
        )  # fmt: skip
        out.append(HierarchyCandidates(_mask_boxes(masks, h, w), f, min_area, N, float(maturity[b])))
    return out


def _blob_masks(saliency: Tensor, h: int, w: int, min_area: int) -> Optional[Tensor]:
    """(k, N) float masks of the 8-connected components of ``saliency > mean`` with at least ``min_area`` cells, or
    None."""
    s = saliency.reshape(h, w).double().cpu().numpy()
    labels, n = ndimage.label(s > s.mean(), structure=np.ones((3, 3), dtype=bool))
    areas = np.bincount(labels.ravel(), minlength=n + 1)
    masks = [labels == k for k in range(1, n + 1) if areas[k] >= min_area]
    return torch.from_numpy(np.stack(masks).reshape(len(masks), h * w)).float() if masks else None


def select_regions(
    candidates: List[HierarchyCandidates],
    exponents: Optional[dict] = None,
    nms_iou: float = 0.5,
    max_regions: int = 16,
    score_power: float = 4.0,
    mature_frame: Optional[float] = None,
    maturity_threshold: float = 0.5,
) -> List[Regions]:
    """Step 4: every candidate scored by :func:`objectness`, non-maximum suppression, the best kept.

    Args:
        candidates: :func:`hierarchy_candidates`' output.
        exponents: Overrides of :data:`OBJECTNESS_EXPONENTS`.
        nms_iou: Candidates overlapping a better one at this IoU or more are dropped.
        max_regions: Regions kept per image.
        score_power: Kept scores are ``(score / best) ** score_power``.
        mature_frame: The frame factor's exponent for images whose ``maturity`` is under ``maturity_threshold`` (a
            trained network's maps); None: the same exponent for every image.
        maturity_threshold: See ``mature_frame``.

    Returns:
        As :func:`hierarchy_regions`.

    Raises:
        ValueError: ``nms_iou`` outside (0, 1], ``max_regions`` < 1, ``score_power`` not finite and > 0, or an
            unknown factor in ``exponents``.
    """
    nms_iou = check_interval("nms_iou", nms_iou, 0, 1, low_open=True)
    max_regions = check_int("max_regions", max_regions, 1)
    score_power = check_number("score_power", score_power, 0, strict=True)
    if mature_frame is not None:
        mature_frame = check_number("mature_frame", mature_frame, 0)
    maturity_threshold = check_number("maturity_threshold", maturity_threshold)
    mature_exponents = None if mature_frame is None else {**(exponents or {}), "frame": mature_frame}
    out: List[Regions] = []
    for c in candidates:
        f = c.factors
        gated = mature_frame is not None and c.maturity < maturity_threshold
        # three transfers off the device per image; the NMS and the indexing run on the CPU
        score = (objectness(f, mature_exponents if gated else exponents) * (f["area"] >= c.min_area)).cpu()
        boxes, area = c.boxes.cpu(), f["area"].cpu()
        keep = _nms(boxes, score, nms_iou, max_regions)
        if not keep:
            out.append(Regions(torch.tensor([[0.0, 0.0, 1.0, 1.0]]), torch.ones(1), torch.tensor([c.cells]), True))
            continue
        s = score[keep].double()
        out.append(
            Regions(
                boxes=boxes[keep],
                # a high score_power can take a weak region's score under float32's range: keep it > 0
                scores=((s / s[0]) ** score_power).float().clamp(min=torch.finfo(torch.float32).tiny),
                areas=area[keep].round().to(torch.int64),
            )
        )
    return out


def hierarchy_regions(
    fine: Tensor,
    coarse: Optional[Tensor],
    embedding: Tensor,
    fine_saliency: Tensor,
    coarse_saliency: Tensor,
    num_clusters: int = 8,
    min_area: int = 4,
    ring: int = 2,
    nms_iou: float = 0.5,
    max_regions: int = 16,
    score_power: float = 4.0,
    kmeans_iters: int = 20,
    exponents: Optional[dict] = None,
    fine_unit: Optional[Tensor] = None,
    coarse_unit: Optional[Tensor] = None,
    graph: Optional[Tensor] = None,
) -> List[Regions]:
    """Scored whole-object regions of a batch from its parts' merge hierarchy: :func:`hierarchy_candidates`
    (steps 1-3), then :func:`select_regions` (step 4).

    Args:
        fine: (B, C1, h, w) fine feature maps (the parts' graph).
        coarse: (B, C2, h2, w2) coarse (semantic) maps, or None (the fine map serves both roles).
        embedding: (B, k, N) spectral embedding of the fine graph
            (:func:`~sgcl_plugin.ncut.ncut_embedding`).
        fine_saliency: (B, N) the fine graph's oriented Fiedler vector in [0, 1] (seeds k-means).
        coarse_saliency: (B, N) the coarse graph's oriented Fiedler vector, resized to the fine
            grid, in [0, 1] (the saliency factor).
        num_clusters: k-means clusters per image.
        min_area: Smallest part and smallest region, in cells.
        ring: Width of the ring around a region for its contrast, in cells.
        nms_iou: Candidates overlapping a better one at this IoU or more are dropped.
        max_regions: Regions kept per image.
        score_power: Kept scores are ``(score / best) ** score_power``.
        kmeans_iters: Lloyd iterations.
        exponents: Overrides of :data:`OBJECTNESS_EXPONENTS`.
        fine_unit: (B, N, C1) the fine map's cells as unit vectors, if already computed
            (:func:`~sgcl_plugin.affinity.unit_features`).
        coarse_unit: (B, n, C2) the coarse map's, likewise.
        graph: (B, N, N) the fine map's graph (the separation factor's), if already built; None builds the
            clamped cosine graph of ``fine``.

    Returns:
        One :class:`~sgcl_plugin.regions.Regions` per image, sorted by descending score (the best
        has score 1). An image without any candidate of objectness above ``MIN_SCORE`` gets the
        whole image with score 1 and ``fallback=True``.
    """
    candidates = hierarchy_candidates(
        fine, coarse, embedding, fine_saliency, coarse_saliency, num_clusters=num_clusters, min_area=min_area,
        ring=ring, kmeans_iters=kmeans_iters, fine_unit=fine_unit, coarse_unit=coarse_unit, graph=graph,
    )  # fmt: skip
    return select_regions(candidates, exponents, nms_iou=nms_iou, max_regions=max_regions, score_power=score_power)


@dataclass(frozen=True)
class HierarchyOptions(ObjectsOptions):
    """The hierarchy source's options: the objects source's (the parts) and the selection's.

    Attributes:
        nms_iou: A candidate overlapping a better one at this IoU is dropped.
        max_regions: Regions kept per image.
        score_power: Kept scores are ``(objectness / best) ** score_power``.
        objectness: Exponents of the objectness factors that differ from :data:`OBJECTNESS_EXPONENTS` (0 leaves a
            factor out); None for the defaults.
        mature_frame: The frame exponent for images whose coarse map is "mature" (:func:`map_maturity` under
            ``maturity_threshold``: a trained network's); None (default) uses one exponent for every image.
        maturity_threshold: See ``mature_frame``.
        blob_candidates: Add the paper's regions (the components of the fine map's Ncut mask) to the candidates.

    The last three with ``score_power=12`` make the combination that qualified on the seen photos and ran once on
    the unseen test 3 split (docs/RESULTS.md, "Six more ranking levers"). It stays an option: on the testbed its
    crops lost 0.82 ± 0.75 points of dense linear accuracy, beyond the rule's one standard deviation.

    Raises:
        ValueError: what :class:`~sgcl_plugin.objects.ObjectsOptions` refuses, ``nms_iou`` outside (0, 1],
            ``max_regions`` < 1, ``score_power`` not finite and > 0, an unknown factor or an exponent not finite
            and >= 0, ``mature_frame`` < 0 or not finite, ``maturity_threshold`` not finite.
    """

    nms_iou: float = 0.5
    max_regions: int = 16
    score_power: float = 4.0
    objectness: Optional[Dict[str, float]] = None
    mature_frame: Optional[float] = None
    maturity_threshold: float = 0.5
    blob_candidates: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        object.__setattr__(self, "nms_iou", check_interval("nms_iou", self.nms_iou, 0, 1, low_open=True))
        check_int("max_regions", self.max_regions, 1)
        object.__setattr__(self, "score_power", check_number("score_power", self.score_power, 0, strict=True))
        if self.objectness is not None:
            bad = {
                k: v
                for k, v in self.objectness.items()
                if k not in OBJECTNESS_EXPONENTS or not 0 <= float(v) < float("inf")
            }
            if bad:
                raise ValueError(f"objectness takes exponents >= 0 of {sorted(OBJECTNESS_EXPONENTS)}, got {bad}.")
            object.__setattr__(self, "objectness", {k: float(v) for k, v in self.objectness.items()})
        if self.mature_frame is not None:
            object.__setattr__(self, "mature_frame", check_number("mature_frame", self.mature_frame, 0))
        object.__setattr__(self, "maturity_threshold", check_number("maturity_threshold", self.maturity_threshold))
        if not isinstance(self.blob_candidates, bool):
            raise ValueError(f"blob_candidates must be True or False, got {self.blob_candidates!r}.")


PHOTO_RANKING = HierarchyOptions(mature_frame=1.0, blob_candidates=True, score_power=12.0)
"""The photo-ranking option (the trainer's ``--photo-ranking``): see :class:`HierarchyOptions`' last three fields."""


def _source_candidates(
    cut: CutOptions, options: HierarchyOptions, fine: Tensor, coarse: Optional[Tensor]
) -> Tuple[List[HierarchyCandidates], Tensor, Tensor]:
    """The candidates of :func:`hierarchy_source`, its maps (B, N) and the fine map's Fiedler vectors (B, N)."""
    unit, Y, y, flat, W = spectral_embedding(fine, cut, options.num_vectors, "hierarchy")  # checks the map first
    B, _, h, w = fine.shape
    fine_sal = normalize_maps(y)
    if coarse is not None and coarse.shape[-2] * coarse.shape[-1] >= 3:
        hc, wc = coarse.shape[-2:]
        coarse_unit = unit_features(coarse)
        Wc = unit_affinity(coarse_unit, mode=cut.affinity, eps=cut.eps, tau=cut.tau)
        yc = orient(fiedler_vector(Wc, solver=cut.solver, validate=False), hc, wc, cut.sign_rule)
        yc = torch.where(flat_graphs(Wc)[:, None], torch.zeros_like(yc), yc)
        up = torch.nn.functional.interpolate(
            yc.reshape(B, 1, hc, wc).float(), size=(h, w), mode="bilinear", align_corners=False
        )
        sal = normalize_maps(up.flatten(1))
    else:
        sal, coarse_unit = fine_sal, None
    sal = torch.where(flat[:, None], torch.zeros_like(sal), sal)  # identical features: whole-image fallback
    candidates = hierarchy_candidates(
        fine, coarse, Y, fine_sal, sal, num_clusters=options.num_clusters,
        min_area=options.min_cells(cut, h, w), ring=options.ring,
        fine_unit=unit, coarse_unit=coarse_unit, graph=W, blob_candidates=options.blob_candidates,
    )  # fmt: skip
    return candidates, sal, y


@torch.no_grad()
def source_candidates(
    cut: CutOptions, options: HierarchyOptions, fine: Tensor, coarse: Optional[Tensor]
) -> List[HierarchyCandidates]:
    """The candidates :func:`hierarchy_source` selects its regions from, one :class:`HierarchyCandidates` per image:
    ``select_regions(source_candidates(cut, options, fine, coarse), options.objectness, options.nms_iou,
    options.max_regions, options.score_power)`` are the source's regions. For sweeps of the selection's options
    (``benchmarks/objectness_sweep.py``); the options' selection fields are not read here.

    Examples:
        >>> from sgcl_plugin import FeatureMaps, SaliencyGenerator
        >>> from sgcl_plugin.spectral import CutOptions
        >>> fine, coarse = FeatureMaps(backbone, stride=(16, 32))(images)
        >>> candidates = source_candidates(CutOptions(), HierarchyOptions(), fine, coarse)  # the cuts and merges, once
        >>> for frame in (2.0, 1.0):  # then any number of selections
        ...     regions = select_regions(candidates, {"frame": frame})
        >>> same = SaliencyGenerator(objectness={"frame": 1.0})((fine, coarse)).regions
        >>> all(torch.equal(a.boxes, b.boxes) and torch.equal(a.scores, b.scores) for a, b in zip(regions, same))
        True
    """
    return _source_candidates(cut, options, fine, coarse)[0]


@torch.no_grad()
def hierarchy_source(
    cut: CutOptions, options: HierarchyOptions, fine: Tensor, coarse: Optional[Tensor]
) -> SaliencyResult:
    """The ``"hierarchy"`` region source: parts from the fine map's k-way Ncut, saliency from the coarse map's Ncut
    (the fine map's when ``coarse`` is None or under 3 cells), objectness from both and from the fine graph
    (:func:`hierarchy_candidates`, then :func:`select_regions`).
    Its ``maps`` are the coarse map's saliency on the fine grid."""
    candidates, sal, y = _source_candidates(cut, options, fine, coarse)
    regions = select_regions(
        candidates, options.objectness, nms_iou=options.nms_iou, max_regions=options.max_regions,
        score_power=options.score_power, mature_frame=options.mature_frame,
        maturity_threshold=options.maturity_threshold,
    )  # fmt: skip
    B, _, h, w = fine.shape
    return SaliencyResult(maps=sal.reshape(B, h, w).float(), regions=regions, fiedler=y)
