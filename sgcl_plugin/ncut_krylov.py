"""The iterative normalized-cut solver: deflated block Krylov with Rayleigh-Ritz and restarts.

The top eigenvector of ``M = D^-1/2 W D^-1/2`` is known in closed form, ``D^1/2 1`` (normalized), so
:func:`fiedler_krylov` deflates it exactly and looks for the largest eigenvectors of what is left; graphs
that do not converge restart with a deeper space and are finally solved densely
(:mod:`sgcl_plugin.ncut_dense`). Blocks are orthonormalized by Householder QR on the CPU and by batched
Gram-Schmidt elsewhere (:data:`CPU_ORTHONORMALIZE`).
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Optional, Tuple

import torch
from torch import Tensor

from sgcl_plugin.ncut_dense import dense_top, generalized_vectors, work_dtype

__all__ = ["CPU_CHUNK_ELEMENTS", "CPU_ORTHONORMALIZE", "KRYLOV_MIN_NODES", "fiedler_krylov", "krylov_top"]

# Graphs smaller than this are solved densely even when the Krylov solver is asked for.
KRYLOV_MIN_NODES = 16

# Entries of W the CPU Krylov solver handles per chunk of graphs (see fiedler_krylov's chunk_size).
CPU_CHUNK_ELEMENTS = 10_000_000

CPU_ORTHONORMALIZE = "qr"
"""How Krylov blocks are orthonormalized on the CPU: ``"qr"`` (Householder, the fastest there) or
``"gram-schmidt"`` (what other devices use; the tests set it to check that path on the CPU)."""


def _orthonormalize(Z: Tensor, basis: Optional[Tensor], passes: int = 2) -> Tensor:
    """Orthonormal rows spanning the rows of ``Z`` minus their projection on ``basis``.

    On the CPU: block Gram-Schmidt against ``basis``, twice, then Householder QR. Rows that vanish
    after the projection (an exhausted Krylov space) come out of QR as rounding noise; one more
    projection after normalization keeps them orthogonal to the basis all the same. On a GPU,
    :func:`_gram_schmidt` (batched QR of narrow blocks runs one small kernel per graph there: 4 ms
    a call for 64 graphs on an H200, 90% of the paper mode's saliency time).

    Args:
        Z: (B, b, N) rows to orthonormalize.
        basis: (B, m, N) orthonormal rows, or None.
    """
    if Z.device.type != "cpu" or CPU_ORTHONORMALIZE == "gram-schmidt":
        return _gram_schmidt(Z, basis, passes)
    if basis is not None:
        for _ in range(passes):
            Z = Z - (Z @ basis.transpose(-1, -2)) @ basis
    Q = torch.linalg.qr(Z.transpose(-1, -2))[0].transpose(-1, -2)
    if basis is not None:
        Q = Q - (Q @ basis.transpose(-1, -2)) @ basis
        Q = torch.linalg.qr(Q.transpose(-1, -2))[0].transpose(-1, -2)
    return Q


@lru_cache(maxsize=16)
def _spare_rows(b: int, N: int, dtype: torch.dtype, device: torch.device) -> Tensor:
    """(b, N) fixed pseudo-random unit rows on ``device``: made once per shape, not at every Krylov step (on a GPU
    each would be a host-to-device copy)."""
    spare = torch.randn(b, N, generator=torch.Generator().manual_seed(12345), dtype=torch.float64)
    return torch.nn.functional.normalize(spare, dim=-1).to(device=device, dtype=dtype)


def _gram_schmidt(Z: Tensor, basis: Optional[Tensor], passes: int = 2) -> Tensor:
    """:func:`_orthonormalize` by classical Gram-Schmidt with re-orthogonalization (CGS2), batched.

    Each pass projects the rows on the complement of ``basis`` and of the rows before them and
    normalizes them: a handful of batched kernels per row, whatever the batch. Two passes give
    rows orthonormal to rounding ("twice is enough"), also when a row is nearly dependent: its
    rounding noise, normalized, is made orthogonal again by the second pass. A row that vanishes
    exactly is replaced by a fixed pseudo-random unit row, which the next pass orthogonalizes, so
    that no zero row (a spurious zero Ritz pair) reaches the Rayleigh-Ritz step.
    """
    B, b, N = Z.shape
    spare = _spare_rows(b, N, Z.dtype, Z.device)
    for _ in range(passes):
        if basis is not None:
            Z = Z - (Z @ basis.transpose(-1, -2)) @ basis
        rows: List[Tensor] = []
        for i in range(b):
            z = Z[:, i]
            if rows:
                Q = torch.stack(rows, 1)
                z = z - ((Q @ z[:, :, None]) * Q).sum(1)
            n = z.norm(dim=-1, keepdim=True)
            rows.append(torch.where(n > 0, z / n.clamp_min(torch.finfo(z.dtype).tiny), spare[i]))
        Z = torch.stack(rows, 1)
    return Z


def _block_krylov_pass(
    W: Tensor, d_isqrt: Tensor, v1: Tensor, X0: Tensor, steps: int, k: int = 1
) -> Tuple[Tensor, Tensor, Tensor]:
    """One block Krylov + Rayleigh-Ritz pass on ``M = D^-1/2 W D^-1/2`` with ``v1`` deflated.

    Vectors are kept as rows, (B, b, N). ``M`` is never formed, and since ``W`` is symmetric
    ``(M Q^T)^T = ((Q D^-1/2) W) D^-1/2``: a (b, N) x (N, N) product, which CPU BLAS runs several
    times faster than the (N, N) x (N, b) one for narrow blocks.

    Returns the Ritz values (B, m) in ascending order, the Ritz vectors as rows (B, m, N), and the
    residual norms of the top ``k`` Ritz pairs (B, k), the largest Ritz value first.
    """
    B, N = d_isqrt.shape
    b = X0.shape[1]
    d = d_isqrt[:, None, :]
    # One buffer for the basis (the deflated vector first) and one for its images: no re-copying of
    # the growing basis at every step.
    basis = W.new_empty(B, 1 + steps * b, N)
    basis[:, :1] = v1[:, None, :]
    MQ = W.new_empty(B, steps * b, N)
    basis[:, 1 : 1 + b] = _orthonormalize(X0, basis[:, :1])
    for j in range(steps):
        AQ = ((basis[:, 1 + j * b : 1 + (j + 1) * b] * d) @ W) * d
        MQ[:, j * b : (j + 1) * b] = AQ
        if j < steps - 1:
            basis[:, 1 + (j + 1) * b : 1 + (j + 2) * b] = _orthonormalize(AQ, basis[:, : 1 + (j + 1) * b])
    Q = basis[:, 1:]
    T = MQ @ Q.transpose(-1, -2)
    T = 0.5 * (T + T.transpose(-1, -2))
    theta, S = torch.linalg.eigh(T.double())
    S = S.to(Q.dtype)
    X = S.transpose(-1, -2) @ Q
    s_top = S[..., -k:].flip(-1).transpose(-1, -2)  # (B, k, m), largest Ritz value first
    top = theta[:, -k:].flip(-1).to(Q.dtype)[:, :, None]
    resid = (s_top @ MQ - top * (s_top @ Q)).norm(dim=-1)
    return theta, X, resid


def fiedler_krylov(
    W: Tensor,
    block_size: int = 4,
    steps: int = 8,
    max_restarts: int = 3,
    rtol: float = 1e-2,
    chunk_size: Optional[int] = None,
    generator: Optional[torch.Generator] = None,
    info: Optional[Dict[str, int]] = None,
) -> Tensor:
    """Fast batched iterative solver: deflated block Krylov with Rayleigh-Ritz and restarts.

    The trivial top eigenvector ``D^1/2 1`` of ``M`` is projected out of every Krylov block, so
    the top Ritz vector approximates the Fiedler direction. A Krylov space (rather than the
    power iteration's single vector) converges at a rate set by the square root of the relative
    eigen-gap, and a block of several vectors keeps it converging when the 2nd and 3rd eigenvalues
    nearly coincide: that is where plain power iteration fails. An image is converged when its
    residual ``||M z - theta z||`` is below ``rtol`` times the estimated eigen-gap (so that
    ``sin(angle) <= rtol`` by Davis-Kahan) or at the floating point floor; unconverged images
    restart from their best Ritz vectors with a Krylov space twice as deep, and those still
    unconverged after ``max_restarts`` are solved densely. The answer is never silently inaccurate.

    Args:
        W: Affinities (B, N, N), symmetric, non-negative.
        block_size: Vectors per Krylov block.
        steps: Krylov blocks in the first pass (the subspace has ``block_size * steps`` vectors).
        max_restarts: Passes after the first before falling back to dense ``eigh``.
        rtol: Target bound on ``sin`` of the angle to the exact eigenvector.
        chunk_size: Graphs solved together; default: on the CPU as many as hold about 10 million
            entries of ``W`` (64 graphs of 400 nodes, 16 of 784, 3 of 1600: measured fastest), the
            whole batch on a GPU.
        generator: Random generator for the start block, shared by all graphs of the batch (a
            fixed seed by default, so a graph's answer does not depend on the batch).
        info: If given, filled with ``passes`` (most Krylov passes any chunk ran), ``restarted``
            (graphs that needed more than one pass) and ``dense_fallback`` (graphs solved densely).

    Returns:
        The Fiedler vectors (B, N), scaled so that ``y^T D y = 1``.
    """
    z, _, d_isqrt = krylov_top(W, 1, block_size, steps, max_restarts, rtol, 0.0, chunk_size, generator, info)
    return generalized_vectors(z[:, 0], d_isqrt)


def krylov_top(
    W: Tensor,
    k: int,
    block_size: int,
    steps: int,
    max_restarts: int,
    rtol: float,
    width_floor: float,
    chunk_size: Optional[int],
    generator: Optional[torch.Generator],
    info: Optional[Dict[str, int]],
) -> Tuple[Tensor, Tensor, Tensor]:
    """The top ``k`` deflated eigenvectors of ``M`` as rows (B, k, N), their eigenvalues (B, k), D^-1/2."""
    dtype = work_dtype(W)
    W = W.to(dtype)
    d_isqrt = W.sum(-1).rsqrt()
    B, N, _ = W.shape
    if N < KRYLOV_MIN_NODES or N <= k + 2:  # no room for a Krylov space: solve densely
        if info is not None:
            info.update({"passes": 0, "restarted": 0, "dense_fallback": B})
        return (*dense_top(W, k), d_isqrt)
    block_size = max(1, min(max(block_size, k), N - 1))
    steps = max(1, min(steps, (N - 1) // block_size))
    v1 = torch.nn.functional.normalize(d_isqrt.reciprocal(), dim=-1)
    if generator is None:
        generator = torch.Generator(device="cpu").manual_seed(0)
    # One start block for every graph: an image's answer does not depend on its place in the batch.
    X0 = torch.randn(1, block_size, N, generator=generator, dtype=dtype, device=generator.device)
    X0 = X0.to(W.device).expand(B, -1, -1)  # a generator on any device (a CUDA one draws on the GPU)
    if chunk_size is None:
        # CPU: about 40 MB of W per chunk (measured on a 2-core machine: 64 graphs of 400 nodes, 16 of
        # 784, 4 of 1600 are the fastest); a GPU takes the whole batch.
        chunk_size = max(1, CPU_CHUNK_ELEMENTS // (N * N)) if W.device.type == "cpu" else B
    stats = {"passes": 0, "restarted": 0, "dense_fallback": 0}
    z = torch.empty(B, k, N, dtype=dtype, device=W.device)
    mu = torch.empty(B, k, dtype=dtype, device=W.device)
    for lo in range(0, B, chunk_size):
        sl = slice(lo, min(lo + chunk_size, B))
        z[sl], mu[sl] = _krylov_chunk(
            W[sl], d_isqrt[sl], v1[sl], X0[sl], steps, max_restarts, rtol, stats, k, width_floor
        )
    if info is not None:
        info.update(stats)
    return z, mu, d_isqrt


def _krylov_chunk(
    W: Tensor,
    d_isqrt: Tensor,
    v1: Tensor,
    X0: Tensor,
    steps: int,
    max_restarts: int,
    rtol: float,
    stats: Dict[str, int],
    k: int = 1,
    width_floor: float = 0.0,
) -> Tuple[Tensor, Tensor]:
    B, N, _ = W.shape
    block_size = X0.shape[1]
    out = torch.empty(B, k, N, dtype=W.dtype, device=W.device)
    mu = torch.empty(B, k, dtype=W.dtype, device=W.device)
    todo = torch.arange(B, device=W.device)
    floor = 50 * torch.finfo(W.dtype).eps
    passes = 0
    while todo.numel() and passes <= max_restarts:
        passes += 1
        # Each restart doubles the Krylov depth: hard graphs get a larger subspace, easy ones
        # never pay for it.
        depth = max(1, min(steps * 2 ** (passes - 1), (N - 1) // block_size))
        sub = slice(None) if todo.numel() == B else todo  # no copy of W on the first pass
        theta, X, resid = _block_krylov_pass(W[sub], d_isqrt[sub], v1[sub], X0, depth, k)
        theta = theta.to(W.dtype)
        # The Fiedler vector: sin(angle) <= rtol by Davis-Kahan on its own gap.
        ok = (resid[:, 0] <= rtol * (theta[:, -1] - theta[:, -2])) | (resid[:, 0] <= floor)
        if k > 1:
            # The others span an invariant subspace: Davis-Kahan on the gap below the k-th Ritz
            # value, floored at a fraction of the spectrum's width (a cluster narrower than that
            # is not split).
            width = theta[:, -1] - theta[:, 0]
            gap = torch.maximum(theta[:, -k] - theta[:, -k - 1], width_floor * width)
            ok &= ((resid[:, 1:] <= (rtol * gap)[:, None]) | (resid[:, 1:] <= floor)).all(dim=1)
        out[todo[ok]] = X[ok, -k:].flip(1)
        mu[todo[ok]] = theta[ok, -k:].flip(1)
        todo, X0 = todo[~ok], X[~ok, -block_size:]
        if passes == 1:
            stats["restarted"] += int(todo.numel())
    stats["passes"] = max(stats["passes"], passes)
    if todo.numel():
        stats["dense_fallback"] += int(todo.numel())
        out[todo], mu[todo] = dense_top(W[todo], k)
    return out, mu
