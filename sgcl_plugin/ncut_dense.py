"""The normalized cut's eigenproblem in its symmetric form, and its dense solvers (torch ``eigh``, cupy).

The generalized problem ``(D - W) y = lambda D y`` is solved as ``M z = mu z`` with
``M = D^-1/2 W D^-1/2``, ``mu = 1 - lambda`` and ``y = D^-1/2 z`` (:mod:`sgcl_plugin.ncut`):
:func:`normalized_affinity` forms ``M``, :func:`generalized_vectors` maps ``z`` back to ``y``. The dense
solvers diagonalize ``M`` whole: :func:`fiedler_eigh` (batched ``torch.linalg.eigh``, the reference),
:func:`ncut_eigh` (several vectors) and :func:`fiedler_cupy` (cupy on a GPU). The iterative solver is
:mod:`sgcl_plugin.ncut_krylov`.
"""

from __future__ import annotations

from typing import Optional, Tuple

import torch
from torch import Tensor

__all__ = [
    "CUPY_CHUNK_ELEMENTS",
    "check_cuda_versions",
    "dense_top",
    "fiedler_cupy",
    "fiedler_eigh",
    "generalized_vectors",
    "ncut_eigh",
    "normalized_affinity",
    "work_dtype",
]


def normalized_affinity(W: Tensor) -> Tuple[Tensor, Tensor]:
    """Returns ``M = D^-1/2 W D^-1/2`` and ``D^-1/2`` (as a (B, N) vector)."""
    d_isqrt = W.sum(-1).rsqrt()
    # The outer product first: one plain elementwise product is far faster than a chain of
    # broadcasts over the (B, N, N) array.
    M = W * (d_isqrt[:, :, None] * d_isqrt[:, None, :])
    return M, d_isqrt


def generalized_vectors(z: Tensor, d_isqrt: Tensor) -> Tensor:
    """Maps ``z`` back to ``y = D^-1/2 z``, scaled so that ``y^T D y = 1`` (as scipy's eigh does)."""
    y = z * d_isqrt
    # y^T D y = z^T z because y = D^-1/2 z.
    return y / z.norm(dim=-1, keepdim=True).clamp(min=torch.finfo(z.dtype).tiny)


def work_dtype(W: Tensor) -> torch.dtype:
    """The dtype the solvers compute in: float64 for float64 affinities, float32 for every other."""
    return torch.float64 if W.dtype == torch.float64 else torch.float32


def fiedler_eigh(W: Tensor) -> Tensor:
    """Dense reference solver: batched ``torch.linalg.eigh`` of ``D^-1/2 W D^-1/2``."""
    M, d_isqrt = normalized_affinity(W.to(work_dtype(W)))
    _, vecs = torch.linalg.eigh(M)
    return generalized_vectors(vecs[..., -2], d_isqrt)


def dense_top(W: Tensor, k: int) -> Tuple[Tensor, Tensor]:
    """The ``k`` eigenvectors of ``M = D^-1/2 W D^-1/2`` after the trivial top one, by dense ``eigh``:
    (B, k, N) rows (2nd largest first) and their (B, k) eigenvalues."""
    M, _ = normalized_affinity(W)
    vals, vecs = torch.linalg.eigh(M)
    return vecs[..., -k - 1 : -1].flip(-1).transpose(-1, -2), vals[..., -k - 1 : -1].flip(-1)


def ncut_eigh(W: Tensor, num_vectors: int) -> Tuple[Tensor, Tensor]:
    """Dense reference for :func:`~sgcl_plugin.ncut.ncut_embedding`: the ``num_vectors`` non-trivial vectors of smallest
    eigenvalue, as (B, k, N) rows and (B, k) eigenvalues of ``(D - W) y = lambda D y``."""
    W = W.to(work_dtype(W))
    z, mu = dense_top(W, num_vectors)
    return generalized_vectors(z, W.sum(-1).rsqrt()[:, None, :]), 1 - mu


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
    M, d_isqrt = normalized_affinity(W.to(work_dtype(W)))
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
    return generalized_vectors(z, d_isqrt)
