"""Normalized cut: the Fiedler vector of a batch of affinity graphs.

For a symmetric non-negative affinity ``W`` with degrees ``D = diag(W 1)``, the normalized cut
relaxation (Shi & Malik, 2000; SGCL Eq. 2-3) is the generalized eigenproblem
``(D - W) y = lambda D y``. Its smallest eigenvalue is 0 with the constant vector; the bipartition
is read from the eigenvector of the **second smallest** eigenvalue, the Fiedler vector.

All solvers work on the equivalent symmetric matrix ``M = D^-1/2 W D^-1/2``: ``M z = mu z`` with
``mu = 1 - lambda`` and ``y = D^-1/2 z``. The top eigenvector of ``M`` is known in closed form,
``D^1/2 1`` (normalized), so the iterative solver deflates it exactly and looks for the largest
eigenvector of what is left.

This module is the front: the input check, the choice of solver and :func:`fiedler_vector` /
:func:`ncut_embedding`. The solvers live in :mod:`sgcl_plugin.ncut_dense` (torch ``eigh``, cupy) and
:mod:`sgcl_plugin.ncut_krylov` (deflated block Krylov).
"""

from __future__ import annotations

from typing import Dict, Literal, Optional, Tuple

import torch
from torch import Tensor

from sgcl_plugin.checks import check_int
from sgcl_plugin.ncut_dense import fiedler_cupy, fiedler_eigh, generalized_vectors, ncut_eigh
from sgcl_plugin.ncut_krylov import fiedler_krylov, krylov_top
from sgcl_plugin.precision import full_precision

__all__ = [
    "DENSE_MAX_NODES",
    "DENSE_MAX_NODES_BY_DEVICE",
    "SOLVERS",
    "Solver",
    "check_affinity",
    "fiedler_vector",
    "ncut_embedding",
    "resolve_solver",
]

Solver = Literal["auto", "eigh", "krylov", "cupy"]
SOLVERS = ("auto", "eigh", "krylov", "cupy")

# Below this many nodes a dense batched eigh is as fast as anything iterative (measured on the
# project's 2-core CPU, see docs/benchmarks.md) and the Krylov space would be most of R^N anyway.
DENSE_MAX_NODES = 96

# "auto" per device type: the CPU value is measured; on CUDA, torch's batched eigh uses cuSOLVER's
# batched Jacobi only up to 32 x 32 and solves larger matrices one by one, while the Krylov solver is
# batched matrix products. Measured on an H200 (docs/benchmarks.md): 64 graphs of 25 nodes, eigh 1.1 ms
# vs Krylov 13.5 ms; of 64 nodes, 45.5 vs 13.2 ms.
DENSE_MAX_NODES_BY_DEVICE = {"cpu": DENSE_MAX_NODES, "cuda": 32}


def check_affinity(W: Tensor, atol: Optional[float] = None) -> None:
    """Raises a clear error unless ``W`` is a batch of finite, symmetric, non-negative matrices.

    Args:
        W: Tensor of shape (B, N, N).
        atol: Tolerance for the symmetry check; by default 1e-4 for 32-bit and lower, 1e-10
            for float64, relative to the largest entry.
    """
    if not isinstance(W, Tensor):
        raise TypeError(f"W must be a torch.Tensor, got {type(W).__name__}.")
    if W.ndim != 3 or W.shape[-1] != W.shape[-2]:
        raise ValueError(f"W must have shape (B, N, N) (a batch of square affinity matrices), got {tuple(W.shape)}.")
    if W.device.type == "meta":
        raise ValueError("W is a meta tensor (shape only, no values): there is nothing to solve.")
    if W.shape[0] == 0:
        raise ValueError(f"W is an empty batch (B = 0), shape {tuple(W.shape)}.")
    if W.shape[-1] < 2:
        raise ValueError(f"A graph needs at least 2 nodes for a cut, got N = {W.shape[-1]}.")
    if not W.is_floating_point():
        raise TypeError(f"W must be a floating point tensor, got {W.dtype}.")
    if not torch.isfinite(W).all():
        raise ValueError("W contains NaN or Inf entries.")
    if (W < 0).any():
        raise ValueError(
            f"W must be non-negative for the normalized cut (min entry {W.min().item():.3g}); "
            "clamp negative cosine similarities first (SaliencyGenerator(affinity='clamp') does)."
        )
    scale = W.abs().amax().clamp(min=1e-30)
    if atol is None:
        atol = 1e-10 if W.dtype == torch.float64 else 1e-4
    asym = (W - W.transpose(-1, -2)).abs().amax()
    if asym > atol * scale:
        raise ValueError(f"W must be symmetric, but max |W - W^T| = {asym.item():.3g} (tolerance {atol:g} x max |W|).")
    if (W.sum(-1) <= 0).any():
        raise ValueError(
            "W has a node with zero degree (an all-zero row); add a small positive constant to W "
            "so that every node is connected."
        )


def _unit_scale(W: Tensor) -> Tuple[Tensor, Optional[Tensor]]:
    """``W`` divided by each graph's largest entry when that is far from 1 (1e-30 or 1e35 affinities lose
    the Fiedler vector to underflow and rounding in float32), and the (B, 1) scales (None: unchanged). The
    generalized eigenvectors do not depend on the scale; ``y`` scaled for ``y^T D y = 1`` shrinks by its
    square root."""
    scale = W.amax(dim=(1, 2))
    if bool(((scale > 1e-3) & (scale < 1e3)).all()):
        return W, None
    scale = scale.clamp(min=torch.finfo(scale.dtype).tiny)
    return W / scale[:, None, None], scale[:, None]


@full_precision
def ncut_embedding(
    W: Tensor,
    num_vectors: int = 4,
    solver: Solver = "auto",
    rtol: float = 1e-2,
    width_floor: float = 0.05,
    validate: bool = True,
    info: Optional[Dict[str, int]] = None,
) -> Tuple[Tensor, Tensor]:
    """The spectral embedding of a batch of graphs: the ``num_vectors`` generalized eigenvectors of
    ``(D - W) y = lambda D y`` with the smallest non-trivial eigenvalues (the Fiedler vector first).

    The k-way normalized cut (Shi & Malik, 2000; Yu & Shi, 2003) clusters the nodes in this
    embedding. The first vector is solved as :func:`fiedler_vector` solves it (``sin`` of its
    angle to the exact vector <= ``rtol``); the others only as a subspace: the Krylov solver
    stops when the residuals of the top ``num_vectors`` Ritz pairs are below ``rtol`` times the gap
    under the last one, that gap floored at ``width_floor`` times the width of the spectrum, so an
    eigenvalue cluster narrower than that is not split (an embedding inside such a cluster is not
    determined by the graph anyway). Distances between rows are unchanged by any rotation of the
    vectors within the subspace, so k-means sees the same points.

    Args:
        W: Symmetric non-negative affinities (B, N, N), N > ``num_vectors``.
        num_vectors: k, the number of non-trivial vectors.
        solver: ``"eigh"`` (dense reference), ``"krylov"``, or ``"auto"`` (``"eigh"`` for small
            graphs); ``"cupy"`` is not offered here.
        rtol: Accuracy target (see above).
        width_floor: Smallest gap considered, as a fraction of the spectrum's width.
        validate: Check the input first.
        info: Filled with the Krylov solver's statistics (see :func:`~sgcl_plugin.ncut_krylov.fiedler_krylov`).

    Returns:
        ``(vectors, eigenvalues)``: (B, k, N) rows ``y_j`` with ``y_j^T D y_j = 1``, and (B, k)
        generalized eigenvalues in ascending order. Signs are arbitrary.

    Examples:
        >>> from sgcl_plugin import cosine_affinity
        >>> W = cosine_affinity(backbone(images))  # (B, N, N): 2 graphs of 7 x 7 cells
        >>> Y, lam = ncut_embedding(W, num_vectors=4)  # Y[:, 0] is the Fiedler vector
        >>> Y.shape, bool((lam[:, :-1] <= lam[:, 1:]).all())
        (torch.Size([2, 4, 49]), True)
    """
    if validate:
        check_affinity(W)
    check_int("num_vectors", num_vectors, 1)
    if W.shape[-1] <= num_vectors + 1:
        raise ValueError(f"A graph of {W.shape[-1]} nodes has fewer than {num_vectors} non-trivial eigenvectors.")
    name = resolve_solver(solver, W)
    if name == "cupy":
        raise ValueError("ncut_embedding offers 'auto', 'eigh' and 'krylov'; 'cupy' solves the Fiedler vector only.")
    W, scale = _unit_scale(W)
    if name == "eigh":
        Y, lam = ncut_eigh(W, num_vectors)
    else:
        z, mu, d_isqrt = krylov_top(W, num_vectors, 4, 8, 3, rtol, width_floor, None, None, info)
        Y, lam = generalized_vectors(z, d_isqrt[:, None, :]), 1 - mu
    return (Y, lam) if scale is None else (Y / scale.to(Y.dtype).sqrt()[:, :, None], lam)


def resolve_solver(solver: str, W: Tensor) -> str:
    """The concrete solver that ``solver`` names for this input (resolves ``"auto"``)."""
    if solver not in SOLVERS:
        raise ValueError(f"Unknown solver '{solver}'; choose one of {SOLVERS}.")
    if solver != "auto":
        return solver
    limit = DENSE_MAX_NODES_BY_DEVICE.get(W.device.type, DENSE_MAX_NODES)
    return "eigh" if W.shape[-1] <= limit else "krylov"


@full_precision
def fiedler_vector(W: Tensor, solver: Solver = "auto", validate: bool = True) -> Tensor:
    """Fiedler vectors of a batch of affinity graphs (the normalized cut of SGCL Eq. 2-3).

    Solves ``(D - W) y = lambda D y`` for the eigenvector of the second smallest eigenvalue, for
    every graph of the batch at once, on ``W``'s device.

    Args:
        W: Symmetric non-negative affinities of shape (B, N, N), N >= 2, every row with a
            positive sum.
        solver: ``"eigh"`` (dense batched ``torch.linalg.eigh``, the reference), ``"krylov"`` (the
            fast deflated block Krylov solver), ``"cupy"`` (dense, GPU only, needs cupy) or
            ``"auto"`` (``"eigh"`` for small graphs, ``"krylov"`` otherwise; the size limit depends on
            the device type: :data:`DENSE_MAX_NODES_BY_DEVICE`).
        validate: Check the input (symmetry, sign, finiteness) first.

    Returns:
        Tensor of shape (B, N), float32 (float64 for float64 input), each vector scaled so that
        ``y^T D y = 1``. The sign is arbitrary.

    Examples:
        >>> W = torch.rand(8, 100, 100)
        >>> W = 0.5 * (W + W.transpose(1, 2))
        >>> fiedler_vector(W).shape
        torch.Size([8, 100])
    """
    if validate:
        check_affinity(W)
    name = resolve_solver(solver, W)
    W, scale = _unit_scale(W)
    if name == "eigh":
        y = fiedler_eigh(W)
    elif name == "krylov":
        y = fiedler_krylov(W)
    else:
        y = fiedler_cupy(W)
    return y if scale is None else y / scale.to(y.dtype).sqrt()
