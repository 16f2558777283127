"""Input validation of the public API, family by family: every bad input gets a clear error (or a
documented fallback), never a wrong answer, a hang, or an error from deep inside torch."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from sgcl_plugin import (
    InterImageLoss,
    SaliencyBank,
    SaliencyGenerator,
    SaliencyWeightedLoss,
    cosine_affinity,
    extract_regions,
    fiedler_vector,
    ncut_embedding,
)
from sgcl_plugin.images import to_image_tensor

GOOD_FEATURES = torch.randn(2, 8, 6, 6, generator=torch.Generator().manual_seed(0))


def sym(B: int, N: int) -> torch.Tensor:
    W = torch.rand(B, N, N, generator=torch.Generator().manual_seed(B * 100 + N))
    return W + W.transpose(1, 2)


# ---------------------------------------------------------------------------------- solvers

BAD_W = [
    (torch.zeros(0, 5, 5), ValueError, "empty batch"),
    (torch.zeros(1, 5, 5, device="meta"), ValueError, "meta tensor"),
    (torch.zeros(5, 5), ValueError, r"shape \(B, N, N\)"),
    (torch.zeros(1, 4, 5), ValueError, r"shape \(B, N, N\)"),
    (torch.ones(1, 1, 1), ValueError, "at least 2 nodes"),
    (torch.ones(1, 3, 3, dtype=torch.int64), TypeError, "floating point"),
    (torch.full((1, 3, 3), float("nan")), ValueError, "NaN or Inf"),
    (-torch.ones(1, 3, 3), ValueError, "non-negative"),
    (torch.tensor([[[1.0, 2.0], [0.0, 1.0]]]), ValueError, "symmetric"),
    (torch.zeros(1, 3, 3), ValueError, "zero degree"),
]


@pytest.mark.parametrize("W,error,match", BAD_W)
@pytest.mark.parametrize("solver", ["auto", "eigh", "krylov"])
def test_fiedler_vector_refuses_bad_graphs(W: torch.Tensor, error: type, match: str, solver: str) -> None:
    with pytest.raises(error, match=match):
        fiedler_vector(W, solver=solver)  # type: ignore[arg-type]


@pytest.mark.parametrize("W,error,match", BAD_W)
def test_ncut_embedding_refuses_bad_graphs(W: torch.Tensor, error: type, match: str) -> None:
    with pytest.raises(error, match=match):
        ncut_embedding(W, num_vectors=1)


@pytest.mark.parametrize("N", [2, 3, 5, 15, 16, 17])
@pytest.mark.parametrize("solver", ["eigh", "krylov"])
def test_every_solver_handles_tiny_graphs(N: int, solver: str) -> None:
    W = sym(3, N)
    ref = fiedler_vector(W.double(), solver="eigh")
    y = fiedler_vector(W, solver=solver)  # type: ignore[arg-type]
    assert y.shape == (3, N) and torch.isfinite(y).all()
    cos = (y.double() * ref).sum(1).abs() / (y.double().norm(dim=1) * ref.norm(dim=1))
    assert (cos > 0.999).all()


# ------------------------------------------------------------------------ features, regions

BAD_FEATURES = [
    ("not a tensor", np.zeros((1, 2, 3, 3)), TypeError, "torch.Tensor"),
    ("3-d tokens", torch.zeros(1, 9, 8), ValueError, "tokens_to_map"),
    ("empty batch", torch.zeros(0, 8, 3, 3), ValueError, "non-empty"),
    ("no channels", torch.zeros(1, 0, 3, 3), ValueError, "non-empty"),
    ("one cell", torch.zeros(1, 8, 1, 1), ValueError, "at least 2 cells"),
    ("integers", torch.zeros(1, 8, 3, 3, dtype=torch.int32), TypeError, "floating point"),
    ("NaN", torch.full((1, 8, 3, 3), float("nan")), ValueError, "NaN or Inf"),
    ("Inf", torch.full((1, 8, 3, 3), float("inf")), ValueError, "NaN or Inf"),
    ("meta", torch.zeros(1, 8, 3, 3, device="meta"), ValueError, "meta tensor"),
]


@pytest.mark.parametrize("name,features,error,match", BAD_FEATURES, ids=[b[0] for b in BAD_FEATURES])
@pytest.mark.parametrize("regions", ["paper", "objects"])
def test_generator_refuses_bad_features(name: str, features: object, error: type, match: str, regions: str) -> None:
    with pytest.raises(error, match=match):
        SaliencyGenerator(regions=regions)(features)  # type: ignore[arg-type]
    if isinstance(features, torch.Tensor):
        with pytest.raises(error, match=match):
            cosine_affinity(features)


@pytest.mark.parametrize("regions", ["paper", "objects"])
@pytest.mark.parametrize(
    "kind",
    ["zeros", "constant", "huge constant", "tiny constant", "one cell differs only by scale"],
)
def test_degenerate_features_take_the_whole_image_fallback(regions: str, kind: str) -> None:
    """Features with no structure have no cut: the answer is the whole image (fallback), not an
    arbitrary half of it with score 1."""
    f = {
        "zeros": torch.zeros(2, 8, 6, 6),
        "constant": torch.ones(2, 8, 6, 6),
        "huge constant": torch.full((2, 8, 6, 6), 1e20),
        "tiny constant": torch.full((2, 8, 6, 6), 1e-30),
        "one cell differs only by scale": torch.ones(2, 8, 6, 6) * torch.linspace(1, 5, 36).reshape(1, 1, 6, 6),
    }[kind]
    result = SaliencyGenerator(regions=regions)(f)  # type: ignore[arg-type]
    for r in result.regions:
        assert r.fallback and r.scores.tolist() == [1.0]
        torch.testing.assert_close(r.boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    assert (result.maps == 0).all()


def test_huge_features_keep_their_structure() -> None:
    """Scaling never changes a cosine: 1e20-sized features give the same saliency as unit ones
    (the norm would overflow float32 without the per-vector rescaling)."""
    f = GOOD_FEATURES
    for regions in ("paper", "objects"):
        a = SaliencyGenerator(regions=regions)(f)  # type: ignore[arg-type]
        b = SaliencyGenerator(regions=regions)(f * 1e20)  # type: ignore[arg-type]
        torch.testing.assert_close(a.maps, b.maps, atol=1e-4, rtol=0)


def test_extract_regions_edge_cases() -> None:
    assert extract_regions(torch.zeros(0, 4, 4)) == []
    with pytest.raises(ValueError, match="empty grid"):
        extract_regions(torch.zeros(1, 0, 4))
    with pytest.raises(ValueError, match="meta"):
        extract_regions(torch.zeros(1, 4, 4, device="meta"))


# ------------------------------------------------------------------------------------ bank


def test_bank_write_refuses_boxes_that_would_fail_later_in_a_worker() -> None:
    bank = SaliencyBank(2, max_regions=2)
    good = torch.tensor([[[0.1, 0.1, 0.5, 0.5], [0, 0, 0, 0]], [[0.2, 0.2, 0.9, 0.9], [0.0, 0.0, 0.3, 0.3]]])
    scores, counts, fb = torch.tensor([[1.0, 0.0], [1.0, 0.5]]), torch.tensor([1, 2]), torch.zeros(2, dtype=torch.bool)
    bank.write(good, scores, counts, fb)  # padding past a row's count may be anything in [0, 1]
    for _name, edit, match in (
        ("NaN", lambda b: b.__setitem__((0, 0, 0), float("nan")), "NaN"),
        ("inverted", lambda b: b.__setitem__((1, 1), torch.tensor([0.5, 0.1, 0.2, 0.4])), "inverted"),
        ("zero area", lambda b: b.__setitem__((1, 0), torch.tensor([0.2, 0.2, 0.2, 0.9])), "empty"),
    ):
        boxes = good.clone()
        edit(boxes)
        with pytest.raises(ValueError, match=match):
            bank.write(boxes, scores, counts, fb)
    with pytest.raises(ValueError, match="score > 0"):
        bank.write(good, torch.tensor([[0.0, 0.0], [1.0, 0.5]]), counts, fb)
    assert bank.version == 1  # refused writes left the table alone
    torch.testing.assert_close(bank[1][0], good[1])


@pytest.mark.parametrize("index", [1.9, True, "1", 0.0, None, torch.tensor(1.0)])
def test_bank_index_must_be_an_integer(index: object) -> None:
    bank = SaliencyBank(3)
    with pytest.raises(TypeError, match="integer"):
        bank[index]  # type: ignore[index]


def test_bank_accepts_numpy_and_tensor_integers() -> None:
    bank = SaliencyBank(np.int64(3), max_regions=np.int32(2))  # type: ignore[arg-type]
    assert len(bank) == 3 and bank.max_regions == 2
    for index in (np.int64(2), np.int32(-1), torch.tensor(2)):
        assert bank[index][0].shape == (0, 4)  # type: ignore[index]
    with pytest.raises(TypeError, match="integer"):
        SaliencyBank(2.7)  # type: ignore[arg-type]
    with pytest.raises(IndexError, match="outside"):
        bank[3]


def test_bank_reader_reports_a_writer_that_died(monkeypatch: pytest.MonkeyPatch) -> None:
    """A write that never ends (its process died between the two counter increments) is reported,
    not waited on forever."""
    import sgcl_plugin.bank as bank_module

    monkeypatch.setattr(bank_module, "READ_TIMEOUT", 0.2)
    bank = SaliencyBank(2)
    bank._seq[0] += 1  # a write began and never finished
    with pytest.raises(RuntimeError, match="died half-way"):
        bank[0]
    # The documented remedies make the table readable again: loading a checkpoint (it left the counter odd)...
    good = SaliencyBank(2, max_regions=1)
    good.write(torch.tensor([[[0.1, 0.1, 0.6, 0.6]], [[0.0, 0.0, 1.0, 1.0]]]), torch.ones(2, 1),
               torch.ones(2, dtype=torch.int64), torch.zeros(2, dtype=torch.bool))  # fmt: skip
    good.mark_refreshed()
    bank = SaliencyBank(2, max_regions=1)
    bank._seq[0] += 1
    bank.load_state_dict(good.state_dict())
    assert bank[0][1].tolist() == [1.0] and bank.refreshes == 1 and bank.version == 2  # the dead write counts
    # ... or a refresh of every row (refresh_bank writes them by index)
    bank._seq[0] += 1
    bank.write(*(good.state_dict()[k] for k in ("boxes", "scores", "counts", "fallback")), index=torch.tensor([1, 0]))
    assert len(bank[1][0]) == 1
    # a state's refresh count is checked before anything is written
    for bad in (-2, 1.5, "3", None):
        with pytest.raises(ValueError, match="refreshes"):
            bank.load_state_dict({**good.state_dict(), "refreshes": bad})
    assert bank.refreshes == 1


# ------------------------------------------------------------------------------ inter loss


def test_inter_image_loss_refuses_non_finite_rows_and_keeps_its_queue_clean() -> None:
    loss = InterImageLoss(dim=4, queue_size=8, num_neighbors=2)
    loss.enqueue(torch.randn(4, 4))
    before = loss.queue.clone()
    bad = torch.randn(3, 4)
    bad[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"NaN or Inf values \(rows \[1\]\)"):
        loss.enqueue(bad)
    torch.testing.assert_close(loss.queue, before)
    assert loss.num_filled == 4
    pred = torch.randn(3, 4, requires_grad=True)
    with pytest.raises(ValueError, match="NaN or Inf"):
        loss(pred * float("inf"), torch.ones(3))


# ----------------------------------------------------------------------------------- images


def sixteen_bit() -> np.ndarray:
    return (np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)  # 0 .. 61380


@pytest.mark.parametrize(
    "make",
    [
        lambda a: Image.fromarray(a),  # mode I;16
        lambda a: Image.fromarray(a.astype(np.int32)),  # mode I (how PIL opens 16-bit PNGs)
        lambda a: Image.fromarray(a.astype(np.float32) / 65535),  # mode F
        lambda a: a,  # uint16 array
        lambda a: a.astype(">u2"),  # big-endian uint16 array
        lambda a: torch.from_numpy(a.astype(np.int32)),
    ],
)
def test_sixteen_bit_and_float_images_keep_their_values(make) -> None:  # type: ignore[no-untyped-def]
    a = sixteen_bit()
    t = to_image_tensor(make(a))
    assert t.shape == (3, 32, 32)
    torch.testing.assert_close(t[0], torch.from_numpy(a.astype(np.float32) / 65535), atol=1e-4, rtol=0)


def test_sixteen_bit_png_on_disk(tmp_path) -> None:  # type: ignore[no-untyped-def]
    a = sixteen_bit()
    path = tmp_path / "deep.png"
    Image.fromarray(a).save(path)
    with Image.open(path) as im:
        t = to_image_tensor(im)
    assert 0.4 < float(t.mean()) < 0.6  # not blank (all 1.0 or all 0.0)
    torch.testing.assert_close(t[0], torch.from_numpy(a.astype(np.float32) / 65535), atol=1e-4, rtol=0)


@pytest.mark.parametrize(
    "image,match",
    [
        (torch.full((3, 4, 4), 255.0), r"\[0, 1\]"),
        (np.full((4, 4, 3), -1.0, dtype=np.float32), r"\[0, 1\]"),
        (torch.full((3, 4, 4), float("nan")), "NaN"),
        (np.full((4, 4), 70000, dtype=np.int32), "65535"),
    ],
)
def test_images_outside_their_range_are_refused(image: object, match: str) -> None:
    with pytest.raises(ValueError, match=match):
        to_image_tensor(image)


def test_a_tiny_feature_grid_warns_once() -> None:
    from sgcl_plugin.refresh import refresh_bank

    images = [torch.rand(3, 32, 32) for _ in range(4)]
    model = torch.nn.Conv2d(3, 8, 8, stride=8)  # 32 px -> 4 x 4 cells
    with pytest.warns(UserWarning, match=r"only 4 x 4 cells .*saliency_size >= 64") as record:
        refresh_bank(SaliencyGenerator(regions="paper"), model, images, saliency_size=32, batch_size=2, progress=False)
    assert len([w for w in record if "feature grid" in str(w.message)]) == 1


def test_a_dark_sixteen_bit_photo_stays_dark() -> None:
    """PIL's 32-bit mode "I" (how 16-bit PNGs open) is scaled by 65535 whatever its largest value: a dark photo
    whose pixels all lie under 256 was scaled by 255 (as if 8-bit: 257 times too bright)."""
    dark = (np.arange(16).reshape(4, 4) * 10).astype(np.int32)  # 0 .. 150
    for image in (Image.fromarray(dark, mode="I"), Image.fromarray(dark.astype(np.uint16))):
        torch.testing.assert_close(to_image_tensor(image)[0], torch.from_numpy(dark / 65535).float(), atol=1e-6, rtol=0)
    # a plain int32 array has no mode: small values are 8-bit pixels, as before
    torch.testing.assert_close(to_image_tensor(dark)[0], torch.from_numpy(dark / 255).float(), atol=1e-6, rtol=0)


# ------------------------------------------------------------------------------ issue 19, low


def test_small_refusals_that_were_accepted_or_tracebacks(tmp_path) -> None:  # type: ignore[no-untyped-def]
    import numpy as np
    from PIL import Image

    from sgcl_plugin.image_folder import ImageFiles
    from sgcl_plugin.losses import byol_loss, ntxent_loss

    for eps in (float("nan"), float("inf")):  # every image silently took the fallback
        with pytest.raises(ValueError, match="eps must be a finite number"):
            SaliencyGenerator(eps=eps)
    with pytest.raises(TypeError, match="real"):
        extract_regions(torch.rand(1, 4, 4, dtype=torch.complex64))
    bank = SaliencyBank(2, max_regions=2)
    boxes = torch.tensor([[[0.0, 0.0, 0.5, 0.5], [0.5, 0.5, 1.0, 1.0]]] * 2)
    ok = (boxes, torch.tensor([[1.0, 0.5]] * 2), torch.tensor([2, 2]), torch.zeros(2, dtype=torch.bool))
    bank.write(*ok)
    with pytest.raises(TypeError, match="counts must be an integer tensor"):
        bank.write(ok[0], ok[1], torch.tensor([2.0, 1.9]), ok[3])
    with pytest.raises(TypeError, match="index must be an integer tensor"):
        bank.write(ok[0][:1], ok[1][:1], ok[2][:1], ok[3][:1], index=torch.tensor([0.7]))
    with pytest.raises(ValueError, match="scores rise"):
        bank.write(ok[0], torch.tensor([[0.5, 1.0]] * 2), ok[2], ok[3])
    with pytest.raises(ValueError, match="temperature"):
        ntxent_loss(torch.randn(4, 8), torch.randn(4, 8), temperature=float("inf"))
    a = torch.randn(4, 8)
    torch.testing.assert_close(
        SaliencyWeightedLoss("byol", gamma=np.float32(0.5))(a, a, torch.ones(4)),  # a numpy gamma was refused
        SaliencyWeightedLoss("byol", gamma=0.5)(a, a, torch.ones(4)),
    )
    zero = torch.zeros(2, 8, requires_grad=True)
    byol_loss(zero, torch.randn(2, 8)).sum().backward()
    assert zero.grad.abs().max() < 1e7  # was 4.8e12 at a zero vector
    Image.new("RGB", (8, 8)).save(tmp_path / "a.png")
    files = ImageFiles(tmp_path)
    for bad in (0.0, 2.5, True):
        with pytest.raises(TypeError, match="ImageFiles index must be an integer"):
            files[bad]  # type: ignore[index]
    assert files[np.int64(0)].size == (8, 8)


def test_objects_mode_scores_do_not_depend_on_the_feature_scale() -> None:
    torch.manual_seed(0)
    f = torch.randn(1, 16, 12, 12)
    f[:, :4, 3:8, 2:7] += 3.0
    gen = SaliencyGenerator(regions="objects")
    ref = gen(f).regions[0]
    for scale in (1e-30, 1e20):  # the affinity did not change; the scores did
        r = gen(f * scale).regions[0]
        torch.testing.assert_close(r.boxes, ref.boxes)
        torch.testing.assert_close(r.scores, ref.scores, rtol=1e-3, atol=1e-4)


def test_meta_tensors_are_named_not_item_errors() -> None:
    """Meta tensors (shape only) gave "Tensor.item() cannot be called on meta tensors" from inside the checks."""
    from sgcl_plugin import FeatureQueue, RegionCrops, SGCLObjective
    from sgcl_plugin.losses import inter_image_loss, saliency_weighted_loss

    def m(*shape: int) -> torch.Tensor:
        return torch.empty(*shape, device="meta")

    for call in (
        lambda: saliency_weighted_loss(torch.ones(4), m(4)),
        lambda: inter_image_loss(m(4, 8), m(16, 8), torch.ones(4)),
        lambda: InterImageLoss(8, 16, 2)(m(4, 8), torch.ones(4)),
        lambda: FeatureQueue(8, 16).enqueue(m(4, 8)),
        lambda: RegionCrops(2, 8)(m(3, 20, 20), torch.tensor([[0.0, 0.0, 1.0, 1.0]]), None),
        lambda: SaliencyBank(1, 1).write(
            m(1, 1, 4), m(1, 1), torch.ones(1, dtype=torch.long), torch.zeros(1, dtype=torch.bool)
        ),
        lambda: SGCLObjective("byol", dim=8)(torch.ones(4), p1=m(4, 8), p2=m(4, 8), t1=m(4, 8), t2=m(4, 8)),
    ):
        with pytest.raises(ValueError, match="meta tensor"):
            call()
