"""fiedler_vector against scipy's generalized eigh, on random, structured and near-degenerate graphs."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch

from sgcl_plugin import fiedler_vector, ncut_embedding
from sgcl_plugin.ncut import DENSE_MAX_NODES, check_affinity, resolve_solver
from sgcl_plugin.ncut_krylov import fiedler_krylov


def scipy_fiedler(W: torch.Tensor) -> np.ndarray:
    """The TokenCut way: scipy.linalg.eigh(D - W, D) per graph, 2nd smallest eigenvector."""
    out = []
    for w in W.double().numpy():
        D = np.diag(w.sum(1))
        _, vecs = scipy.linalg.eigh(D - w, D, subset_by_index=[1, 1])
        out.append(vecs[:, 0])
    return np.stack(out)


def abs_cos(a: torch.Tensor, b: np.ndarray) -> np.ndarray:
    a = a.double().numpy()
    return np.abs((a * b).sum(1)) / (np.linalg.norm(a, axis=1) * np.linalg.norm(b, axis=1))


def random_graph(B: int, N: int, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    W = torch.rand(B, N, N, generator=g, dtype=torch.float64)
    return 0.5 * (W + W.transpose(1, 2))


def feature_graph(B: int, N: int, C: int, seed: int, clusters: int = 3) -> torch.Tensor:
    """Cosine graphs of clustered features, as a backbone would give (clamped at 0 + eps)."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(B, clusters, C, generator=g, dtype=torch.float64)
    labels = torch.randint(0, clusters, (B, N), generator=g)
    f = centres.gather(1, labels[:, :, None].expand(-1, -1, C)) + 1.2 * torch.randn(
        B, N, C, generator=g, dtype=torch.float64
    )
    f = torch.nn.functional.normalize(f, dim=-1)
    return (f @ f.transpose(1, 2)).clamp(min=0) + 1e-5


def grid_graph(h: int, w: int) -> torch.Tensor:
    """4-neighbour lattice (+1e-5 everywhere): a dense top spectrum with a tiny Fiedler gap."""
    N = h * w
    W = torch.full((N, N), 1e-5, dtype=torch.float64)
    for r in range(h):
        for c in range(w):
            i = r * w + c
            if c + 1 < w:
                W[i, i + 1] = W[i + 1, i] = 1.0
            if r + 1 < h:
                W[i, i + w] = W[i + w, i] = 1.0
    return W[None]


def generalized_gap(W: torch.Tensor) -> float:
    w = W[0].double().numpy()
    D = np.diag(w.sum(1))
    vals = scipy.linalg.eigh(D - w, D, eigvals_only=True, subset_by_index=[0, 2])
    return float(vals[2] - vals[1])


@pytest.mark.parametrize("solver", ["eigh", "krylov", "auto"])
@pytest.mark.parametrize("N,B", [(16, 1), (64, 3), (400, 4), (1600, 1)])
def test_matches_scipy_on_feature_graphs(solver: str, N: int, B: int) -> None:
    W = feature_graph(B, N, 64, seed=N + B)
    ref = scipy_fiedler(W)
    y = fiedler_vector(W, solver=solver)
    assert y.shape == (B, N)
    assert abs_cos(y, ref).min() > 0.9999


@pytest.mark.parametrize("solver", ["eigh", "krylov"])
@pytest.mark.parametrize("N,B", [(16, 2), (100, 5), (400, 2)])
def test_matches_scipy_on_uniform_random_graphs(solver: str, N: int, B: int) -> None:
    W = random_graph(B, N, seed=N)
    assert abs_cos(fiedler_vector(W, solver=solver), scipy_fiedler(W)).min() > 0.999


def test_krylov_fallback_keeps_unconverged_graphs_exact() -> None:
    # With no restarts allowed, the hard grid graph cannot converge in one shallow pass: the
    # dense fallback must take over and the answer must still be right.
    W = grid_graph(20, 21)
    info: dict = {}
    y = fiedler_krylov(W, max_restarts=0, info=info)
    assert info["dense_fallback"] == 1
    assert abs_cos(y, scipy_fiedler(W)).min() > 0.9999


@pytest.mark.parametrize("shape", [(20, 21), (30, 31)])
def test_krylov_accurate_on_near_degenerate_gap_where_power_iteration_fails(shape: tuple) -> None:
    W = grid_graph(*shape)
    gap = generalized_gap(W)
    assert gap < 2e-3  # the graph really is hard: lambda_3 - lambda_2 is tiny
    ref = scipy_fiedler(W)
    info: dict = {}
    assert abs_cos(fiedler_krylov(W, info=info), ref).min() > 0.999
    assert info["dense_fallback"] == 0  # the iterative solver converged by itself

    # Plain power iteration on M + I with the trivial vector deflated, 100 steps, for contrast.
    d_isqrt = W.sum(-1).rsqrt()
    M = W * d_isqrt[:, :, None] * d_isqrt[:, None, :] + torch.eye(W.shape[-1], dtype=W.dtype)
    v1 = torch.nn.functional.normalize(d_isqrt.reciprocal(), dim=-1)
    z = torch.randn(1, W.shape[-1], generator=torch.Generator().manual_seed(0), dtype=W.dtype)
    for _ in range(100):
        z = z - (z * v1).sum(-1, keepdim=True) * v1
        z = torch.nn.functional.normalize((M @ z[..., None])[..., 0], dim=-1)
    assert abs_cos(z * d_isqrt, ref).min() < 0.99


def test_float32_input_is_accurate_and_float32() -> None:
    W = feature_graph(3, 400, 256, seed=1)
    ref = scipy_fiedler(W)
    for solver in ("eigh", "krylov"):
        y = fiedler_vector(W.float(), solver=solver)
        assert y.dtype == torch.float32
        assert abs_cos(y, ref).min() > 0.999


def test_half_precision_input_is_solved_in_float32() -> None:
    W = feature_graph(2, 128, 64, seed=2)
    y = fiedler_vector(W.to(torch.bfloat16), solver="krylov")
    assert y.dtype == torch.float32
    assert abs_cos(y, scipy_fiedler(W.to(torch.bfloat16).double())).min() > 0.99


def test_scaled_like_scipy_y_dy_equals_one() -> None:
    W = feature_graph(2, 100, 32, seed=3)
    for solver in ("eigh", "krylov"):
        y = fiedler_vector(W, solver=solver)
        yDy = (y * y * W.sum(-1)).sum(-1)
        torch.testing.assert_close(yDy, torch.ones(2, dtype=torch.float64))
        # and D-orthogonal to the constant vector, as an eigenvector of the pencil must be
        assert (y * W.sum(-1)).sum(-1).abs().max() < 1e-6


def test_batch_results_equal_one_by_one() -> None:
    W = feature_graph(4, 200, 32, seed=4)
    batched = fiedler_vector(W, solver="krylov")
    for i in range(4):
        single = fiedler_vector(W[i : i + 1], solver="krylov")
        assert abs_cos(single, batched[i : i + 1].numpy()).min() > 0.9999


def test_auto_picks_dense_for_small_graphs_and_krylov_for_large() -> None:
    assert resolve_solver("auto", torch.zeros(1, DENSE_MAX_NODES, DENSE_MAX_NODES)) == "eigh"
    assert resolve_solver("auto", torch.zeros(1, 400, 400)) == "krylov"
    # per device type: on CUDA torch's batched eigh is batched only up to 32 x 32
    assert resolve_solver("auto", torch.zeros(1, 64, 64, device="meta")) == "eigh"  # unknown type: the CPU rule
    from sgcl_plugin.ncut import DENSE_MAX_NODES_BY_DEVICE

    assert DENSE_MAX_NODES_BY_DEVICE["cuda"] < 64 <= DENSE_MAX_NODES_BY_DEVICE["cpu"]
    if torch.cuda.is_available():
        assert resolve_solver("auto", torch.zeros(1, 64, 64, device="cuda")) == "krylov"


def test_two_node_graph() -> None:
    W = torch.tensor([[[1.0, 0.5], [0.5, 1.0]]], dtype=torch.float64)
    y = fiedler_vector(W)
    assert abs_cos(y, scipy_fiedler(W)).min() > 0.9999


@pytest.mark.parametrize(
    "W,error,match",
    [
        (torch.rand(10, 10), ValueError, "shape"),
        (torch.rand(2, 10, 9), ValueError, "shape"),
        (torch.ones(2, 1, 1), ValueError, "at least 2 nodes"),
        (torch.ones(1, 4, 4, dtype=torch.int64), TypeError, "floating"),
        (torch.tensor([[[1.0, float("nan")], [float("nan"), 1.0]]]), ValueError, "NaN"),
        (torch.tensor([[[1.0, -0.5], [-0.5, 1.0]]]), ValueError, "non-negative"),
        (torch.tensor([[[1.0, 0.9], [0.1, 1.0]]]), ValueError, "symmetric"),
        (torch.tensor([[[1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 0.0]]]), ValueError, "zero degree"),
    ],
)
def test_bad_input_is_refused_clearly(W: torch.Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        fiedler_vector(W)


def test_not_a_tensor_and_unknown_solver() -> None:
    with pytest.raises(TypeError, match="torch.Tensor"):
        check_affinity(np.ones((1, 3, 3)))  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown solver"):
        fiedler_vector(torch.ones(1, 3, 3), solver="lanczos")  # type: ignore[arg-type]


def test_cupy_solver_explains_what_is_missing() -> None:
    W = torch.ones(1, 3, 3)
    try:
        import cupy  # noqa: F401
    except ImportError:
        with pytest.raises(ImportError, match="sgcl_plugin\\[cupy\\]"):
            fiedler_vector(W, solver="cupy")
    else:  # pragma: no cover - only where cupy is installed
        with pytest.raises(ValueError, match="CUDA"):
            fiedler_vector(W, solver="cupy")


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
@pytest.mark.parametrize("solver", ["eigh", "krylov", "auto"])
def test_cuda_matches_scipy(solver: str) -> None:  # pragma: no cover - GPU only
    W = feature_graph(4, 400, 64, seed=5)
    y = fiedler_vector(W.float().cuda(), solver=solver)
    assert y.is_cuda
    assert abs_cos(y.cpu(), scipy_fiedler(W)).min() > 0.999


@pytest.mark.parametrize("device", ["cpu"] + (["cuda"] if torch.cuda.is_available() else []))
def test_krylov_takes_a_generator_on_the_graphs_device(device: str) -> None:
    """fiedler_krylov(generator=...) with a generator on the graphs' device (a CUDA generator used to raise:
    the start block was drawn on the CPU with it); the answer matches the dense reference."""
    W = feature_graph(2, 60, 16, seed=3)
    ref = scipy_fiedler(W)
    g = torch.Generator(device=device).manual_seed(5)
    y = fiedler_krylov(W.to(device), generator=g)
    assert y.device.type == device
    assert abs_cos(y.cpu(), ref).min() > 0.999


def test_cupy_guards_without_a_gpu() -> None:
    """The cupy solver's guards, checked where they can be without cupy: the CUDA version check (cupy for
    CUDA 12 under a CUDA 13 torch failed deep inside the first eigh) and the eigenpair check that catches
    cuSOLVER's silent non-convergence."""
    from sgcl_plugin.ncut_dense import _bad_eigenpairs, check_cuda_versions, normalized_affinity

    check_cuda_versions(13000, "13.0")
    check_cuda_versions(12040, "12.6")
    with pytest.raises(RuntimeError, match="cupy-cuda13x"):
        check_cuda_versions(12040, "13.0")
    with pytest.raises(RuntimeError, match="CUDA build of torch"):
        check_cuda_versions(13000, None)
    M, _ = normalized_affinity(feature_graph(3, 30, 8, seed=1))
    vals, vecs = torch.linalg.eigh(M)
    z, lam = vecs[..., -2].clone(), vals[..., -2].clone()
    assert not _bad_eigenpairs(M, z, lam, 1e-6).any()
    z[1] = torch.nn.functional.normalize(z[1] + 0.1 * vecs[1, :, 0], dim=0)  # a wrong vector, still unit
    z[2, 0] = float("nan")
    assert _bad_eigenpairs(M, z, lam, 1e-3).tolist() == [False, True, True]


@pytest.mark.parametrize("scale", [1e-30, 1e35])
@pytest.mark.parametrize("solver", ["eigh", "krylov"])
def test_the_scale_of_the_affinities_does_not_change_the_vectors(scale: float, solver: str) -> None:
    """The generalized eigenvectors of (D - W) y = lambda D y do not depend on W's scale; at 1e-30 or 1e35 the
    float32 solvers returned the trivial near-constant vector (|cos| ~0.01 to the truth) and said they converged."""
    torch.manual_seed(0)
    f = torch.nn.functional.normalize(torch.randn(2, 60, 8), dim=-1)
    W = (f @ f.transpose(1, 2)).clamp(min=0) + 1e-3
    ref = fiedler_vector(W.double(), solver="eigh")
    Wc = (W.double() * scale).float()
    y = fiedler_vector(Wc, solver=solver).double()
    cos = (y * ref).sum(-1) / (y.norm(dim=-1) * ref.norm(dim=-1))  # no eps: y is tiny at 1e35
    assert (cos.abs() > 0.9999).all()
    norm = ((y**2) * Wc.double().sum(-1)).sum(-1)  # still y^T D y = 1 for the W given
    torch.testing.assert_close(norm, torch.ones(2, dtype=torch.float64), rtol=1e-4, atol=0)
    Y, lam = ncut_embedding(Wc, num_vectors=3, solver=solver)
    Y0, lam0 = ncut_embedding(W, num_vectors=3, solver=solver)
    torch.testing.assert_close(lam, lam0, rtol=1e-3, atol=1e-4)
    c0 = (Y[:, 0].double() * Y0[:, 0].double()).sum(-1) / (
        Y[:, 0].double().norm(dim=-1) * Y0[:, 0].double().norm(dim=-1)
    )
    assert (c0.abs() > 0.999).all()


@pytest.mark.parametrize("dtype,tol", [(torch.float32, 1e-5), (torch.float64, 1e-13)])
def test_gram_schmidt_rows_orthonormal_and_orthogonal_to_the_basis_even_when_dependent(
    dtype: torch.dtype, tol: float
) -> None:
    """The GPU's orthonormalization (CGS2): a nearly dependent row, a row in the basis' span and an
    exact zero row still come out as orthonormal rows orthogonal to the basis, spanning Z where Z has rank."""
    from sgcl_plugin.ncut_krylov import _gram_schmidt

    g = torch.Generator().manual_seed(0)
    B, N = 3, 50
    basis = torch.linalg.qr(torch.randn(B, N, 9, generator=g, dtype=torch.float64))[0].transpose(-1, -2).to(dtype)
    Z = torch.randn(B, 4, N, generator=g, dtype=dtype)
    Z[0, 1] = 2 * Z[0, 0] + 1e-6 * torch.randn(N, generator=g, dtype=dtype)  # nearly dependent
    Z[1, 2] = basis[1, 3] * 5  # inside the basis' span: vanishes after the projection
    Z[2, 3] = 0.0  # exactly zero
    Q = _gram_schmidt(Z, basis)
    eye = torch.eye(4, dtype=dtype)
    assert (Q @ Q.transpose(-1, -2) - eye).abs().max() < tol
    assert (Q @ basis.transpose(-1, -2)).abs().max() < tol
    # The first row spans the same direction as Z's first row minus its projection (numpy reference).
    z0 = Z[:, 0].double().numpy()
    b = basis.double().numpy()
    r = z0 - np.einsum("bm,bmn->bn", np.einsum("bn,bmn->bm", z0, b), b)
    cos = np.abs((Q[:, 0].double().numpy() * r).sum(1)) / np.linalg.norm(r, axis=1)
    assert cos.min() > 1 - tol


@pytest.mark.parametrize("N,B", [(64, 3), (400, 4)])
def test_krylov_through_gram_schmidt_matches_scipy(monkeypatch: pytest.MonkeyPatch, N: int, B: int) -> None:
    """The solver as a GPU runs it (Gram-Schmidt instead of QR), checked on the CPU against scipy, hard graphs too."""
    from sgcl_plugin import ncut_krylov

    monkeypatch.setattr(ncut_krylov, "CPU_ORTHONORMALIZE", "gram-schmidt")
    Z = torch.randn(2, 3, N, generator=torch.Generator().manual_seed(1))
    assert torch.equal(ncut_krylov._orthonormalize(Z, None), ncut_krylov._gram_schmidt(Z, None))  # the flag is read
    W = feature_graph(B, N, 64, seed=N + B)
    assert abs_cos(fiedler_krylov(W), scipy_fiedler(W)).min() > 0.9999
    grid = grid_graph(20, 21)
    info: dict = {}
    assert abs_cos(fiedler_krylov(grid, info=info), scipy_fiedler(grid)).min() > 0.999
    assert info["dense_fallback"] == 0
    embedding, values = ncut_embedding(W, 3, solver="krylov")
    reference, ref_values = ncut_embedding(W, 3, solver="eigh")
    assert abs_cos(embedding[:, 0], scipy_fiedler(W)).min() > 0.9999
    assert torch.allclose(values, ref_values, atol=1e-3)
