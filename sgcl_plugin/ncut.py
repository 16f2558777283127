"""Normalized cut: the Fiedler vector of a batch of affinity graphs.

For a symmetric non-negative affinity ``W`` with degrees ``D = diag(W 1)``, the normalized cut
relaxation (Shi & Malik, 2000; SGCL Eq. 2-3) is the generalized eigenproblem
``(D - W) y = lambda D y``. Its smallest eigenvalue is 0 with the constant vector; the bipartition
is read from the eigenvector of the **second smallest** eigenvalue, the Fiedler vector.

All solvers work on the equivalent symmetric matrix ``M = D^-1/2 W D^-1/2``: ``M z = mu z`` with
``mu = 1 - lambda`` and ``y = D^-1/2 z``. The top eigenvector of ``M`` is known in closed form,
``D^1/2 1`` (normalized), so the iterative solver deflates it exactly and looks for the largest
eigenvector of what is left.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Dict, List, Literal, Optional, Tuple

import torch
from torch import Tensor

from sgcl_plugin.checks import check_int
from sgcl_plugin.precision import full_precision

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

# Graphs smaller than this are solved densely even when the Krylov solver is asked for.
KRYLOV_MIN_NODES = 16

# Entries of W the CPU Krylov solver handles per chunk of graphs (see fiedler_krylov's chunk_size).
CPU_CHUNK_ELEMENTS = 10_000_000


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


def normalized_affinity(W: Tensor) -> Tuple[Tensor, Tensor]:
    """Returns ``M = D^-1/2 W D^-1/2`` and ``D^-1/2`` (as a (B, N) vector)."""
    d_isqrt = W.sum(-1).rsqrt()
    # The outer product first: one plain elementwise product is far faster than a chain of
    # broadcasts over the (B, N, N) array.
    M = W * (d_isqrt[:, :, None] * d_isqrt[:, None, :])
    return M, d_isqrt


def _finish(z: Tensor, d_isqrt: Tensor) -> Tensor:
    """Maps ``z`` back to ``y = D^-1/2 z``, scaled so that ``y^T D y = 1`` (as scipy's eigh does)."""
    y = z * d_isqrt
    # y^T D y = z^T z because y = D^-1/2 z.
    return y / z.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(z.dtype).tiny)


def _work_dtype(W: Tensor) -> torch.dtype:
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def fiedler_eigh(W: Tensor) -> Tensor:
    """Dense reference solver: batched ``torch.linalg.eigh`` of ``D^-1/2 W D^-1/2``."""
    M, d_isqrt = normalized_affinity(W.to(_work_dtype(W)))
    _, vecs = torch.linalg.eigh(M)
    return _finish(vecs[..., -2], d_isqrt)


def _dense_top(W: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """The ``k`` eigenvectors of ``M = D^-1/2 W D^-1/2`` after the trivial top one, by dense ``eigh``:
    (B, k, N) rows (2nd largest first) and their (B, k) eigenvalues."""
    M, _ = normalized_affinity(W)
    vals, vecs = torch.linalg.eigh(M)
    return vecs[..., -k - 1 : -1].flip(-1).transpose(-1, -2), vals[..., -k - 1 : -1].flip(-1)


def ncut_eigh(W: Tensor, num_vectors: int) -> Tuple[Tensor, Tensor]:
    """Dense reference for :func:`ncut_embedding`: the ``num_vectors`` non-trivial vectors of smallest
    eigenvalue, as (B, k, N) rows and (B, k) eigenvalues of ``(D - W) y = lambda D y``."""
    W = W.to(_work_dtype(W))
    z, mu = _dense_top(W, num_vectors)
    return _finish(z, W.sum(-1).rsqrt()[:, None, :]), 1 - mu


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
    z, _, d_isqrt = _krylov(W, 1, block_size, steps, max_restarts, rtol, 0.0, chunk_size, generator, info)
    return _finish(z[:, 0], d_isqrt)


def _krylov(
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
    dtype = _work_dtype(W)
    W = W.to(dtype)
    d_isqrt = W.sum(-1).rsqrt()
    B, N, _ = W.shape
    if N < KRYLOV_MIN_NODES or N <= k + 2:  # no room for a Krylov space: solve densely
        if info is not None:
            info.update({"passes": 0, "restarted": 0, "dense_fallback": B})
        return (*_dense_top(W, k), d_isqrt)
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
        out[todo], mu[todo] = _dense_top(W[todo], k)
    return out, mu


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
        info: Filled with the Krylov solver's statistics (see :func:`fiedler_krylov`).

    Returns:
        ``(vectors, eigenvalues)``: (B, k, N) rows ``y_j`` with ``y_j^T D y_j = 1``, and (B, k)
        generalized eigenvalues in ascending order. Signs are arbitrary.

    Examples:
        >>> W = cosine_affinity(features)  # (B, N, N)
        >>> Y, lam = ncut_embedding(W, num_vectors=4)  # Y[:, 0] is the Fiedler vector
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
        z, mu, d_isqrt = _krylov(W, num_vectors, 4, 8, 3, rtol, width_floor, None, None, info)
        Y, lam = _finish(z, d_isqrt[:, None, :]), 1 - mu
    return (Y, lam) if scale is None else (Y / scale.to(Y.dtype).sqrt()[:, :, None], lam)


CUPY_CHUNK_ELEMENTS = 2**26
"""cupy solves at most this many entries of ``M`` per call (cuSOLVER's batched workspace size is an int)."""


def check_cuda_versions(cupy_runtime: int, torch_cuda: Optional[str]) -> None:
    """Refuses a cupy built for another CUDA major version than torch's (its first ``eigh`` would fail to load
    the CUDA libraries, far from any hint of why).

    Args:
        cupy_runtime: ``cupy.cuda.runtime.runtimeGetVersion()`` (e.g. 12040 for CUDA 12.4).
        torch_cuda: ``torch.version.cuda`` (e.g. ``"13.0"``; None for a CPU build of torch).

    Raises:
        RuntimeError: the major versions differ, naming the cupy wheel to install.
    """
    if torch_cuda is None:
        raise RuntimeError("solver='cupy' needs a CUDA build of torch (torch.version.cuda is None).")
    cupy_major, torch_major = int(cupy_runtime) // 1000, int(str(torch_cuda).split(".")[0])
    if cupy_major != torch_major:
        raise RuntimeError(
            f"cupy is built for CUDA {cupy_major} but torch for CUDA {torch_cuda}: install the matching wheel "
            f"(pip install cupy-cuda{torch_major}x; the sgcl_plugin[cupy] extra installs cupy-cuda13x)."
        )


def _bad_eigenpairs(M: Tensor, z: Tensor, lam: Tensor, tol: float) -> Tensor:
    """(B,) True where ``z`` is not a unit eigenvector of ``M`` with eigenvalue ``lam`` to ``tol``."""
    residual = (M @ z[..., None]).squeeze(-1) - lam[:, None] * z
    return ~(torch.isfinite(residual).all(-1) & (residual.norm(dim=-1) <= tol) & ((z.norm(dim=-1) - 1).abs() <= tol))


def fiedler_cupy(W: Tensor) -> Tensor:
    """Dense batched eigensolver on the GPU through cupy (``cupy.linalg.eigh``).

    The batch is solved in chunks of at most :data:`CUPY_CHUNK_ELEMENTS` entries, and every answer is
    checked (cuSOLVER's batched Jacobi routine does not report non-convergence unless asked): a graph
    whose eigenpair residual exceeds 1e-3 is solved again with ``torch.linalg.eigh``.

    Raises:
        ImportError: cupy is not installed (``pip install sgcl_plugin[cupy]``).
        RuntimeError: cupy and torch are built for different CUDA major versions.
        ValueError: ``W`` is not a CUDA tensor.
    """
    try:
        import cupy  # type: ignore[import-not-found]
    except ImportError as err:  # pragma: no cover - depends on the machine
        raise ImportError(
            "solver='cupy' needs cupy: pip install 'sgcl_plugin[cupy]' (a CUDA machine is required)."
        ) from err
    if W.device.type != "cuda":
        raise ValueError(f"solver='cupy' needs W on a CUDA device, got device '{W.device}'.")
    check_cuda_versions(cupy.cuda.runtime.runtimeGetVersion(), torch.version.cuda)
    M, d_isqrt = normalized_affinity(W.to(_work_dtype(W)))
    B, N, _ = M.shape
    z = torch.empty(B, N, dtype=M.dtype, device=M.device)
    lam = torch.empty(B, dtype=M.dtype, device=M.device)
    step = max(1, CUPY_CHUNK_ELEMENTS // (N * N))
    with cupy.cuda.Device(M.device.index or 0):
        for lo in range(0, B, step):
            vals, vecs = cupy.linalg.eigh(cupy.from_dlpack(M[lo : lo + step].contiguous()))
            z[lo : lo + step] = torch.from_dlpack(vecs[..., -2].copy())
            lam[lo : lo + step] = torch.from_dlpack(vals[..., -2].copy())
    bad = _bad_eigenpairs(M, z, lam, 1e-3)
    if bool(bad.any()):
        vals, vecs = torch.linalg.eigh(M[bad])
        z[bad] = vecs[..., -2]
    return _finish(z, d_isqrt)


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
        >>> y = fiedler_vector(W)  # (8, 100)
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
