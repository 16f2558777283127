"""Object-level regions: a k-way normalized cut of the feature graph, scored by how object-like each part is.

SGCL's own regions (Eq. 4-5, ``regions="paper"``) are the connected components of one cut's
foreground: on scene images they are one or two blobs holding several objects. This module splits
the same graph into many parts and keeps the ones that look like objects:

1. **Spectral embedding** (:func:`~sgcl_plugin.ncut.ncut_embedding`): the ``num_vectors``
   generalized eigenvectors of ``(D - W) y = lambda D y`` after the trivial one (the Fiedler vector
   first), rows normalized to unit length (Ng, Jordan & Weiss, 2001).
2. **k-means** (:func:`batched_kmeans`) of the cells in that embedding, ``num_clusters`` clusters,
   batched over images, seeded deterministically by farthest-point sampling from the most salient
   cell (no random numbers: an image gets the same regions in any batch, on any rank).
3. **Parts**: the 8-connected components of every cluster with at least ``min_area`` cells.
4. **Objectness** of part R (:func:`objectness`): ``mean(S[R]) * (1 - cos(f_R, f_ring)) *
   (1 - border(R))``, where S is the oriented Fiedler map in [0, 1] (SGCL's saliency), ``f_R`` and
   ``f_ring`` the mean unit features of the part and of the ring of cells around it (``ring``
   cells wide), and ``border(R)`` the share of its cells on the image border. Salient, distinct
   from its surroundings, not the frame of the picture: what an object is and a stretch of
   background is not. Scores are divided by the image's best, so the top region has score 1.

Everything up to the components runs batched on the features' device; the components are
labelled on the CPU in one call for the whole batch (the label maps are small integers).

:func:`objects_source` is the ``"objects"`` region source (:data:`~sgcl_plugin.region_sources.REGION_SOURCES`),
with its options in :class:`ObjectsOptions`.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Optional, Tuple

import numpy as np
import torch
import torch.nn.functional as F
from scipy import ndimage
from torch import Tensor

from sgcl_plugin.affinity import unit_features
from sgcl_plugin.checks import check_int, check_interval
from sgcl_plugin.regions import Regions, SaliencyResult, border_mask
from sgcl_plugin.spectral import CutOptions, SourceOptions, normalize_maps, spectral_embedding

__all__ = ["ObjectsOptions", "batched_kmeans", "component_labels", "object_regions", "objectness", "objects_source"]

MIN_SCORE = 1e-6
"""Objectness at or below this counts as none (rounding noise of identical features)."""


def batched_kmeans(points: Tensor, num_clusters: int, first: Tensor, iters: int = 20) -> Tensor:
    """Lloyd's k-means on a batch of point sets, seeded by farthest-point sampling.

    Args:
        points: (B, N, e) points.
        num_clusters: k (at most N).
        first: (B,) index of the first seed of each set; each further seed is the point farthest
            from the seeds so far (deterministic).
        iters: Lloyd iterations (assignment, then centroid update; an empty cluster keeps its
            centroid).

    Returns:
        (B, N) int64 cluster labels in [0, k).

    Examples:
        >>> pts = torch.cat([torch.zeros(1, 5, 2), torch.ones(1, 5, 2)], dim=1)
        >>> batched_kmeans(pts, 2, first=torch.tensor([0]))
        tensor([[0, 0, 0, 0, 0, 1, 1, 1, 1, 1]])
    """
    B, N, e = points.shape
    k = min(int(num_clusters), N)
    rows = torch.arange(B, device=points.device)
    centroids = [points[rows, first]]
    nearest = (points - centroids[0][:, None]).pow(2).sum(-1)
    for _ in range(1, k):
        nxt = nearest.argmax(dim=1)
        centroids.append(points[rows, nxt])
        nearest = torch.minimum(nearest, (points - centroids[-1][:, None]).pow(2).sum(-1))
    C = torch.stack(centroids, dim=1)  # (B, k, e)
    labels = torch.cdist(points, C).argmin(dim=-1)
    for _ in range(iters):
        one_hot = F.one_hot(labels, k).to(points.dtype)  # (B, N, k)
        counts = one_hot.sum(1)  # (B, k)
        sums = one_hot.transpose(1, 2) @ points  # (B, k, e)
        C = torch.where(counts[..., None] > 0, sums / counts.clamp(min=1)[..., None], C)
        new = torch.cdist(points, C).argmin(dim=-1)
        if torch.equal(new, labels):
            break
        labels = new
    return labels


def component_labels(clusters: Tensor, min_area: int = 4, connectivity: int = 8) -> Tuple[Tensor, Tensor]:
    """Connected components of every cluster of every image, in one labelling call.

    Args:
        clusters: (B, h, w) integer cluster labels.
        min_area: Components with fewer cells are dropped (label -1).
        connectivity: 8 or 4.

    Returns:
        ``(labels, counts)``: (B, h, w) int64 component ids numbered 0..K_b-1 within each image
        (-1 for dropped cells) on the CPU, and (B,) int64 K_b.
    """
    if connectivity not in (4, 8):
        raise ValueError(f"connectivity must be 4 or 8, got {connectivity}.")
    lab = clusters.detach().to("cpu", torch.int64).numpy()
    B, h, w = lab.shape
    k = int(lab.max()) + 1 if lab.size else 0
    # One binary volume (B * k, h, w): plane (b, c) holds cluster c of image b; a structure with empty
    # outer planes never joins two planes, so one ndimage.label call labels everything.
    planes = (lab[:, None] == np.arange(k)[None, :, None, None]).reshape(B * k, h, w)
    structure = np.zeros((3, 3, 3), dtype=bool)
    structure[1] = ndimage.generate_binary_structure(2, 1 if connectivity == 4 else 2)
    comp, n = ndimage.label(planes, structure=structure)
    out = np.full((B, h, w), -1, dtype=np.int64)
    counts = np.zeros(B, dtype=np.int64)
    if n:
        sizes = np.bincount(comp.ravel(), minlength=n + 1)
        keep = sizes >= min_area
        keep[0] = False
        owner = np.zeros(n + 1, dtype=np.int64)  # image of each component
        for i, sl in enumerate(ndimage.find_objects(comp), start=1):
            if sl is not None:
                owner[i] = sl[0].start // k
        # Renumber kept components 0..K_b-1 within each image, in label order.
        ids = np.nonzero(keep)[0]
        local = np.full(n + 1, -1, dtype=np.int64)
        for b in range(B):
            mine = ids[owner[ids] == b]
            local[mine] = np.arange(mine.size)
            counts[b] = mine.size
        per_plane = local[comp].reshape(B, k, h, w)
        out = per_plane.max(axis=1)  # each cell lies in exactly one plane; -1 elsewhere
    return torch.from_numpy(out), torch.from_numpy(counts)


def _region_masks(labels: Tensor, R: int) -> Tensor:
    """(B, R, N) float one-hot masks of the components (label -1 belongs to none)."""
    B = labels.shape[0]
    flat = labels.reshape(B, -1)
    masks = F.one_hot(flat.clamp(min=0), R).to(torch.float32).transpose(1, 2)
    return masks * (flat >= 0)[:, None, :].float()


def objectness(
    masks: Tensor, features: Tensor, saliency: Tensor, h: int, w: int, ring: int = 2
) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
    """The objectness of each part and its three factors.

    Args:
        masks: (B, R, N) float one-hot masks of the parts (all-zero rows are padding).
        features: (B, N, C) unit feature vectors of the cells.
        saliency: (B, N) saliency in [0, 1].
        h: Grid height.
        w: Grid width.
        ring: Width of the ring of cells around a part, in cells.

    Returns:
        ``(score, mean_saliency, contrast, border)``, each (B, R); score 0 for padding.
    """
    B, R, N = masks.shape
    area = masks.sum(-1)
    safe = area.clamp(min=1)
    mean_sal = (masks @ saliency[:, :, None])[..., 0] / safe
    grid = masks.reshape(B * R, 1, h, w)
    dilated = F.max_pool2d(grid, kernel_size=2 * ring + 1, stride=1, padding=ring).reshape(B, R, N)
    around = dilated * (1 - masks)
    inner = F.normalize(masks @ features, dim=-1)
    outer = F.normalize(around @ features, dim=-1)
    # A part with no ring (it covers the whole image) has nothing to stand out from: contrast 0.
    contrast = (1 - (inner * outer).sum(-1)) * (around.sum(-1) > 0)
    border = (masks @ border_mask(h, w, masks.device).float()) / safe
    score = mean_sal * contrast * (1 - border) * (area > 0)
    return score, mean_sal, contrast, border


def object_regions(
    features: Tensor,
    embedding: Tensor,
    saliency: Tensor,
    num_clusters: int = 8,
    min_area: int = 4,
    connectivity: int = 8,
    ring: int = 2,
    kmeans_iters: int = 20,
) -> List[Regions]:
    """Scored object regions of a batch of feature maps from their spectral embedding.

    Args:
        features: (B, C, h, w) feature maps (the graph's nodes).
        embedding: (B, k, N) generalized eigenvectors (:func:`~sgcl_plugin.ncut.ncut_embedding`).
        saliency: (B, h, w) saliency maps in [0, 1] (the oriented Fiedler vector, scaled).
        num_clusters: k-means clusters per image.
        min_area: Smallest part kept, in cells.
        connectivity: 8 or 4.
        ring: Width of the ring around a part for its contrast, in cells.
        kmeans_iters: Lloyd iterations.

    Returns:
        One :class:`~sgcl_plugin.regions.Regions` per image, regions sorted by descending score
        (the best has score 1). An image without any part of objectness above ``MIN_SCORE`` gets
        the whole image with score 1 and ``fallback=True``.
    """
    B, C, h, w = features.shape
    N = h * w
    points = F.normalize(embedding.transpose(1, 2).float(), dim=-1)  # (B, N, k)
    sal = saliency.reshape(B, N).float()
    clusters = batched_kmeans(points, num_clusters, first=sal.argmax(dim=1), iters=kmeans_iters)
    labels, counts = component_labels(clusters.reshape(B, h, w), min_area, connectivity)
    R = max(1, int(counts.max()))
    masks = _region_masks(labels.to(features.device), R)
    unit = unit_features(features).float()  # as the graph's: scaled first, so 1e-30 or 1e20 features score alike
    score, _, _, _ = objectness(masks, unit, sal, h, w, ring)
    boxes = _boxes(labels, R, h, w)
    score = score.cpu()
    areas = masks.sum(-1).cpu()
    out: List[Regions] = []
    for b in range(B):
        s = score[b, : int(counts[b])]
        keep = torch.nonzero(s > MIN_SCORE).flatten()
        if keep.numel() == 0:
            out.append(
                Regions(
                    boxes=torch.tensor([[0.0, 0.0, 1.0, 1.0]]),
                    scores=torch.ones(1),
                    areas=torch.tensor([N]),
                    fallback=True,
                )
            )
            continue
        s = s[keep]
        # Descending score, ties by larger area (as extract_regions).
        a = areas[b, keep]
        order = sorted(range(keep.numel()), key=lambda i: (-float(s[i]), -float(a[i])))
        idx = keep[order]
        out.append(
            Regions(
                boxes=boxes[b, idx],
                scores=(score[b, idx] / score[b, idx[0]]).float(),
                areas=areas[b, idx].to(torch.int64),
            )
        )
    return out


def _boxes(labels: Tensor, R: int, h: int, w: int) -> Tensor:
    """(B, R, 4) normalized xyxy boxes of the components (cell (r, c) covers [c/w, (c+1)/w] x ...)."""
    B = labels.shape[0]
    flat = labels.reshape(B, -1)
    rows = torch.arange(h).repeat_interleave(w).expand(B, -1)
    cols = torch.arange(w).repeat(h).expand(B, -1)
    valid = flat >= 0
    idx = flat.clamp(min=0)
    big = max(h, w) + 1
    r0 = torch.full((B, R), big, dtype=torch.int64).scatter_reduce(1, idx, torch.where(valid, rows, big), "amin")
    c0 = torch.full((B, R), big, dtype=torch.int64).scatter_reduce(1, idx, torch.where(valid, cols, big), "amin")
    r1 = torch.full((B, R), -1, dtype=torch.int64).scatter_reduce(1, idx, torch.where(valid, rows, -1), "amax")
    c1 = torch.full((B, R), -1, dtype=torch.int64).scatter_reduce(1, idx, torch.where(valid, cols, -1), "amax")
    return torch.stack([c0 / w, r0 / h, (c1 + 1) / w, (r1 + 1) / h], dim=-1).float()


@dataclass(frozen=True)
class ObjectsOptions(SourceOptions):
    """The objects source's options (the hierarchy source's too: :class:`~sgcl_plugin.hierarchy.HierarchyOptions`).

    Attributes:
        num_vectors: Eigenvectors in the spectral embedding.
        num_clusters: k-means clusters per image.
        ring: Width in cells of the ring a region is compared with.
        min_fraction: Parts smaller than this fraction of the grid are dropped (objects) or merged into a
            neighbour (hierarchy) too: the larger of this and ``min_area`` applies (8 cells on a 28 x 28 grid).

    Raises:
        ValueError: ``num_vectors`` < 1, ``num_clusters`` < 2, ``ring`` < 1 (integers), ``min_fraction`` outside
            [0, 1).
    """

    num_vectors: int = 4
    num_clusters: int = 8
    ring: int = 2
    min_fraction: float = 0.01

    def __post_init__(self) -> None:
        check_int("num_vectors", self.num_vectors, 1)
        check_int("num_clusters", self.num_clusters, 2)
        check_int("ring", self.ring, 1)
        object.__setattr__(
            self, "min_fraction", check_interval("min_fraction", self.min_fraction, 0, 1, high_open=True)
        )

    def check_cut(self, cut: CutOptions, mode: str) -> None:
        """Refuses the ``"cupy"`` solver, which computes one eigenvector only."""
        if cut.solver == "cupy":
            raise ValueError(
                f"regions={mode!r} solves several eigenvectors, which the cupy solver does not: "
                "use 'auto', 'eigh' or 'krylov'."
            )

    def min_cells(self, cut: CutOptions, h: int, w: int) -> int:
        """The smallest part kept on an h x w grid: the larger of ``min_area`` and ``min_fraction`` of the grid."""
        return max(cut.min_area, round(self.min_fraction * h * w))


@torch.no_grad()
def objects_source(cut: CutOptions, options: ObjectsOptions, fine: Tensor, coarse: Optional[Tensor]) -> SaliencyResult:
    """The ``"objects"`` region source: the scored parts of a k-way Ncut of the first map (``coarse`` is not
    read); its ``maps`` are the oriented Fiedler vector scaled to [0, 1], as the paper source's."""
    _, Y, y, _, _ = spectral_embedding(fine, cut, options.num_vectors, "objects")  # checks the map first
    B, _, h, w = fine.shape
    maps = normalize_maps(y).reshape(B, h, w).float()
    regions = object_regions(
        fine, Y, maps, num_clusters=options.num_clusters, min_area=options.min_cells(cut, h, w),
        connectivity=cut.connectivity, ring=options.ring,
    )  # fmt: skip
    return SaliencyResult(maps=maps, regions=regions, fiedler=y)
