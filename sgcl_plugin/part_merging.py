"""The parts of a k-way cut as a region adjacency graph: small parts absorbed into their most similar neighbour,
then adjacent parts merged bottom-up, the most similar pair first (steps 1 and 2 of :mod:`sgcl_plugin.hierarchy`).

Both run per image on the CPU, in numpy, over at most a few dozen parts; the similarity of two parts is the cosine
of their summed unit cell features, kept as a Gram matrix of the parts that merges update in place.
"""

from __future__ import annotations

import heapq
import math
from typing import Tuple

import numpy as np

__all__ = ["absorb_small_parts", "merge_tree"]


def _adjacency(labels: np.ndarray, P: int) -> np.ndarray:
    """(P, P) bool: parts that touch (8-connected) in an (h, w) label map (labels 0..P-1)."""
    adj = np.zeros((P, P), dtype=bool)
    for a, b in (
        (labels[:, :-1], labels[:, 1:]),
        (labels[:-1], labels[1:]),
        (labels[:-1, :-1], labels[1:, 1:]),
        (labels[:-1, 1:], labels[1:, :-1]),
    ):
        adj[a.ravel(), b.ravel()] = True
    adj |= adj.T
    np.fill_diagonal(adj, False)
    return adj


def _cosines(gram: np.ndarray, i: int, idx: np.ndarray) -> np.ndarray:
    """Cosine between the feature sums of region i and of regions idx, from their Gram matrix."""
    den = np.sqrt(np.clip(gram[i, i] * gram[idx, idx], 0, None))
    return np.divide(gram[i, idx], den, out=np.zeros(idx.size), where=den > 0)


def absorb_small_parts(labels: np.ndarray, gram: np.ndarray, min_cells: int) -> Tuple[np.ndarray, int]:
    """Merges every part smaller than ``min_cells`` into its most similar neighbour, smallest first.

    The smallest part left (ties: lowest id) joins the adjacent part whose feature sum has the
    largest cosine with its own (ties: lowest id); the Gram matrix and the adjacency follow, and
    the next smallest part is taken, until none is small. A heap holds the candidates and the
    adjacency is a set per part, so one merge costs two Gram updates and a few set operations
    (a real photo's 28 x 28 k-means map has about a hundred specks to absorb).

    Args:
        labels: (h, w) int part ids 0..P-1 of one image (every cell in a part).
        gram: (P, P) Gram matrix of the parts' feature sums (similarity: cosine of the sums).
        min_cells: Smallest part kept on its own.

    Returns:
        ``(labels, P)``: the new label map numbered 0..P-1 and the number of parts. A part with no
        neighbour (it is the whole image) is kept whatever its size.
    """
    P = int(labels.max()) + 1
    sizes = np.bincount(labels.ravel(), minlength=P).tolist()
    gram = gram.astype(np.float64, copy=True)
    adj = _adjacency(labels, P)
    neighbours = [set(np.nonzero(row)[0].tolist()) for row in adj]
    owner = list(range(P))  # part -> the part it joined (chains resolved below)
    alive = [n > 0 for n in sizes]
    heap = [(n, p) for p, n in enumerate(sizes) if 0 < n < min_cells]
    heapq.heapify(heap)
    while heap:
        n, p = heapq.heappop(heap)
        if not alive[p] or n != sizes[p] or not neighbours[p]:
            continue  # merged away, grown since it was pushed, or the whole image
        gpp = float(gram[p, p])
        q, best = -1, -math.inf
        for r in sorted(neighbours[p]):  # cosine of the sums; the first of equals wins
            den = math.sqrt(max(gpp * float(gram[r, r]), 0.0))
            c = float(gram[p, r]) / den if den > 0 else 0.0
            if c > best:
                q, best = r, c
        gram[q] += gram[p]
        gram[:, q] += gram[:, p]  # with the row update, gram[q, q] = G_qq + 2 G_qp + G_pp
        for r in neighbours[p]:
            neighbours[r].discard(p)
            if r != q:
                neighbours[r].add(q)
                neighbours[q].add(r)
        neighbours[p] = set()
        sizes[q] += sizes[p]
        alive[p] = False
        owner[p] = q
        if sizes[q] < min_cells:
            heapq.heappush(heap, (sizes[q], q))
    for p in range(P):
        r = p
        while owner[r] != r:
            r = owner[r]
        owner[p] = r
    kept = [p for p in range(P) if alive[p]]
    renumber = np.full(P, -1, dtype=np.int64)
    renumber[kept] = np.arange(len(kept))
    return renumber[np.asarray(owner)[labels]], len(kept)


def merge_tree(labels: np.ndarray, gram: np.ndarray) -> np.ndarray:
    """Agglomerative merging of adjacent parts, the most similar pair first, until none are left.

    Args:
        labels: (h, w) int part ids 0..P-1 of one image.
        gram: (P, P) Gram matrix of the parts' feature sums; a pair's similarity is the cosine of
            its two sums (of their mean features), a merged region's sum is the sum of its parts'.

    Returns:
        (K, P) bool membership of the K candidate regions: the P parts first, then one row per
        merge (the union of the two merged regions); K = 2P - 1 when the parts form one connected
        group (always, for a grid), each merge after the last row's children.
    """
    P = int(labels.max()) + 1
    K = 2 * P - 1
    G = np.zeros((K, K))
    G[:P, :P] = gram
    adj = np.zeros((K, K), dtype=bool)
    adj[:P, :P] = _adjacency(labels, P)
    member = np.zeros((K, P), dtype=bool)
    member[np.arange(P), np.arange(P)] = True
    sim = np.full((K, K), -np.inf)
    d = np.sqrt(np.clip(np.diag(gram), 0, None))
    cos = np.divide(gram, np.outer(d, d), out=np.zeros((P, P)), where=np.outer(d, d) > 0)
    sim[:P, :P] = np.where(adj[:P, :P], cos, -np.inf)
    k = P
    while k < K:
        i, j = divmod(int(np.argmax(sim[:k, :k])), k)
        if not np.isfinite(sim[i, j]):
            break  # no adjacent pair left
        G[k, :k] = G[i, :k] + G[j, :k]
        G[:k, k] = G[k, :k]
        G[k, k] = G[i, i] + 2 * G[i, j] + G[j, j]
        member[k] = member[i] | member[j]
        nb = adj[i, :k] | adj[j, :k]
        nb[[i, j]] = False
        adj[k, :k], adj[:k, k] = nb, nb
        for x in (i, j):  # i and j are gone
            adj[x, :], adj[:, x] = False, False
            sim[x, :], sim[:, x] = -np.inf, -np.inf
        idx = np.nonzero(nb)[0]
        if idx.size:
            c = _cosines(G, k, idx)
            sim[k, idx], sim[idx, k] = c, c
        k += 1
    return member[:k]
