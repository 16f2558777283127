"""Saliency-guided crops: rule R statistics, weighted regions, the transform, DataLoader workers, kornia."""

from __future__ import annotations

import inspect
import math
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image
from scipy import stats
from torch.utils.data import DataLoader
from torchvision.transforms import RandomResizedCrop

from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.bank_crops import SaliencyCropDataset, SaliencyCropTransform
from sgcl_plugin.boxes import (
    crop_and_resize,
    jitter_boxes,
    random_resized_crop_box,
    random_resized_crop_boxes,
    sample_crop_in_box,
    sample_crops_in_boxes,
)
from sgcl_plugin.crops import CropSample, RegionCrops, sample_regions
from sgcl_plugin.images import IMAGENET_MEAN, IMAGENET_STD
from sgcl_plugin.views import BatchViewAugment, byol_view_transforms

skdata = pytest.importorskip("skimage.data")

N = 4000
LOG_RATIO = (math.log(3 / 4), math.log(4 / 3))


def photo(name: str = "astronaut", step: int = 1) -> np.ndarray:
    """A real HWC uint8 photo from scikit-image, optionally subsampled."""
    return np.ascontiguousarray(getattr(skdata, name)()[::step, ::step, :3])


def write_regions(bank: SaliencyBank, index: int, boxes: list, scores: list) -> None:
    R = bank.max_regions
    b = torch.zeros(1, R, 4)
    s = torch.zeros(1, R)
    b[0, : len(boxes)] = torch.tensor(boxes)
    s[0, : len(scores)] = torch.tensor(scores)
    bank.write(b, s, torch.tensor([len(scores)]), torch.tensor([False]), index=torch.tensor([index]))


def unnormalize(views: torch.Tensor) -> torch.Tensor:
    mean = torch.tensor(IMAGENET_MEAN)[:, None, None]
    std = torch.tensor(IMAGENET_STD)[:, None, None]
    return views * std + mean


# ------------------------------------------------------------------------------------- rule R


def test_rule_r_statistics_of_unclipped_crops() -> None:
    H, W = 600, 1000  # not square: the aspect ratio must be measured in pixels
    box = torch.tensor([0.35, 0.3, 0.6, 0.7])
    g = torch.Generator().manual_seed(0)
    crops = sample_crops_in_boxes(box.repeat(N, 1), (H, W), generator=g, clip=False).double()
    px = crops * torch.tensor([W, H, W, H])
    bpx = box.double() * torch.tensor([W, H, W, H])
    w, h = px[:, 2] - px[:, 0], px[:, 3] - px[:, 1]
    cx, cy = (px[:, 0] + px[:, 2]) / 2, (px[:, 1] + px[:, 3]) / 2
    box_area = (bpx[2] - bpx[0]) * (bpx[3] - bpx[1])

    # centres uniform inside the box
    assert ((cx >= bpx[0]) & (cx <= bpx[2]) & (cy >= bpx[1]) & (cy <= bpx[3])).all()
    assert stats.kstest((cx - bpx[0]) / (bpx[2] - bpx[0]), "uniform").pvalue > 1e-3
    assert stats.kstest((cy - bpx[1]) / (bpx[3] - bpx[1]), "uniform").pvalue > 1e-3
    # area uniform in [0.08, 1] x box area (pixels)
    frac = (w * h / box_area).numpy()
    assert frac.min() >= 0.08 - 1e-6 and frac.max() <= 1 + 1e-6
    assert stats.kstest(frac, "uniform", args=(0.08, 0.92)).pvalue > 1e-3
    # log pixel aspect uniform in [log 3/4, log 4/3]
    log_aspect = torch.log(w / h).numpy()
    assert log_aspect.min() >= LOG_RATIO[0] - 1e-6 and log_aspect.max() <= LOG_RATIO[1] + 1e-6
    assert stats.kstest(log_aspect, "uniform", args=(LOG_RATIO[0], LOG_RATIO[1] - LOG_RATIO[0])).pvalue > 1e-3
    # and not uniform in normalized coordinates (which would ignore the image's aspect)
    assert stats.kstest(frac, "uniform", args=(0.2, 0.3)).pvalue < 1e-6


def test_clipped_crops_are_the_snapped_unclipped_ones_inside_the_image() -> None:
    H, W = 300, 451
    box = torch.tensor([0.0, 0.7, 0.3, 1.0])  # a corner box: many crops reach outside the image
    raw = sample_crops_in_boxes(box.repeat(N, 1), (H, W), generator=torch.Generator().manual_seed(1), clip=False)
    crops = sample_crops_in_boxes(box.repeat(N, 1), (H, W), generator=torch.Generator().manual_seed(1))
    assert crops.dtype == torch.float32 and crops.shape == (N, 4)
    assert (crops >= 0).all() and (crops <= 1).all()
    scale = torch.tensor([W, H, W, H], dtype=torch.float64)
    px = crops.double() * scale
    torch.testing.assert_close(px, px.round(), atol=1e-3, rtol=0)  # whole pixels
    assert ((px[:, 2] - px[:, 0]) >= 1 - 1e-3).all() and ((px[:, 3] - px[:, 1]) >= 1 - 1e-3).all()
    clipped = (raw.double() * scale).clamp(min=0)
    clipped[:, [0, 2]] = clipped[:, [0, 2]].clamp(max=W)
    clipped[:, [1, 3]] = clipped[:, [1, 3]].clamp(max=H)
    torch.testing.assert_close(px, clipped, atol=0.5 + 1e-3, rtol=0)
    outside = (raw[:, 0] < 0) | (raw[:, 3] > 1)
    assert 0.3 < float(outside.float().mean()) < 1.0


def test_single_box_form_and_subpixel_boxes() -> None:
    g = torch.Generator().manual_seed(2)
    crop = sample_crop_in_box(torch.tensor([0.25, 0.25, 0.75, 0.75]), (96, 96), generator=g)
    assert crop.shape == (4,)
    assert torch.equal(
        crop,
        sample_crops_in_boxes(
            torch.tensor([[0.25, 0.25, 0.75, 0.75]]), (96, 96), generator=torch.Generator().manual_seed(2)
        )[0],
    )
    # a box thinner than a pixel gives the one pixel that holds the crop centre
    tiny = torch.tensor([0.501, 0.2, 0.502, 0.2001])
    crops = sample_crops_in_boxes(tiny.repeat(50, 1), (100, 100), generator=g)
    assert torch.allclose(crops, torch.tensor([0.5, 0.2, 0.51, 0.21]).expand(50, 4))


def test_random_resized_crop_matches_torchvision_in_distribution() -> None:
    H, W = 300, 451
    crops = random_resized_crop_boxes(N, (H, W), generator=torch.Generator().manual_seed(3)).double()
    px = crops * torch.tensor([W, H, W, H])
    w, h = px[:, 2] - px[:, 0], px[:, 3] - px[:, 1]
    assert (px[:, :2] >= 0).all() and (px[:, 2] <= W).all() and (px[:, 3] <= H).all()  # inside the image
    frac = (w * h / (H * W)).numpy()
    assert frac.min() >= 0.075 and frac.max() <= 1.0
    # torchvision's RandomResizedCrop.get_params is BYOL's crop: compare the two samples
    torch.manual_seed(3)
    img = torch.empty(3, H, W)
    ref = np.array([RandomResizedCrop.get_params(img, [0.08, 1.0], [3 / 4, 4 / 3]) for _ in range(N)], dtype=float)
    ref_frac = ref[:, 2] * ref[:, 3] / (H * W)
    assert stats.ks_2samp(frac, ref_frac).pvalue > 1e-3
    assert stats.ks_2samp(torch.log(w / h).numpy(), np.log(ref[:, 3] / ref[:, 2])).pvalue > 1e-3
    assert stats.ks_2samp((px[:, 0] / (W - w + 1)).numpy(), ref[:, 1] / (W - ref[:, 3] + 1)).pvalue > 1e-3
    one = random_resized_crop_box((H, W), generator=torch.Generator().manual_seed(3))
    assert torch.equal(one, random_resized_crop_boxes(1, (H, W), generator=torch.Generator().manual_seed(3))[0])
    # an image too elongated for any try: the centred fallback with the extreme ratio
    fallback = random_resized_crop_boxes(4, (10, 1000), generator=torch.Generator().manual_seed(0))
    assert torch.allclose(fallback, torch.tensor([0.493, 0.0, 0.506, 1.0]).expand(4, 4))


def test_bad_crop_arguments() -> None:
    good = torch.tensor([0.1, 0.1, 0.5, 0.5])
    with pytest.raises(ValueError, match=r"in \[0, 1\]"):
        sample_crop_in_box(torch.tensor([0.1, 0.1, 1.5, 0.5]), (10, 10))
    with pytest.raises(ValueError, match="non-empty"):
        sample_crop_in_box(torch.tensor([0.5, 0.1, 0.5, 0.5]), (10, 10))
    with pytest.raises(ValueError, match="NaN"):
        sample_crop_in_box(torch.tensor([0.1, float("nan"), 0.5, 0.5]), (10, 10))
    with pytest.raises(ValueError, match=r"shape \(4,\)"):
        sample_crop_in_box(torch.tensor([[0.1, 0.1, 0.5, 0.5]]), (10, 10))
    with pytest.raises(ValueError, match="image_size"):
        sample_crop_in_box(good, (0, 10))
    with pytest.raises(ValueError, match="scale"):
        sample_crop_in_box(good, (10, 10), scale=(0.5, 0.1))
    with pytest.raises(ValueError, match="ratio"):
        random_resized_crop_box((10, 10), ratio=(0.0, 1.0))
    with pytest.raises(ValueError, match="n must be"):
        random_resized_crop_boxes(0, (10, 10))
    with pytest.raises(ValueError, match="size"):
        crop_and_resize(torch.rand(3, 8, 8), good[None], 1)


# ---------------------------------------------------------------------------- weighted regions


def test_region_frequencies_are_proportional_to_scores() -> None:
    scores = torch.tensor([1.0, 0.5, 0.25, 0.05, 0.0])
    draws = sample_regions(scores, 20000, generator=torch.Generator().manual_seed(0))
    assert draws.dtype == torch.int64 and draws.shape == (20000,)
    counts = torch.bincount(draws, minlength=5).numpy()
    assert counts[4] == 0
    p = scores[:4].double().numpy()
    expected = p / p.sum() * counts.sum()
    assert stats.chisquare(counts[:4], expected).pvalue > 1e-3
    # reproducible with a generator
    a = sample_regions(scores, 7, torch.Generator().manual_seed(5))
    assert torch.equal(a, sample_regions(scores, 7, torch.Generator().manual_seed(5)))


def test_bad_scores() -> None:
    with pytest.raises(ValueError, match="empty"):
        sample_regions(torch.zeros(0), 4)
    with pytest.raises(ValueError, match="NaN"):
        sample_regions(torch.tensor([1.0, float("nan")]), 4)
    with pytest.raises(ValueError, match="non-negative"):
        sample_regions(torch.tensor([1.0, -0.1]), 4)
    with pytest.raises(ValueError, match="zero"):
        sample_regions(torch.zeros(3), 4)
    with pytest.raises(ValueError, match="1-D"):
        sample_regions(torch.ones(2, 2), 4)
    with pytest.raises(ValueError, match="num_regions"):
        sample_regions(torch.ones(2), 0)


# ---------------------------------------------------------------------------------- transform


def test_transform_before_and_after_a_refresh() -> None:
    image = photo("coffee")  # 400 x 600
    bank = SaliencyBank(3, max_regions=4)
    transform = SaliencyCropTransform(bank, num_regions=4, size=64)
    torch.manual_seed(0)
    sample = transform(Image.fromarray(image), 1)
    assert isinstance(sample, CropSample)
    assert sample.views1.shape == sample.views2.shape == (4, 3, 64, 64)
    assert sample.views1.dtype == torch.float32 and torch.isfinite(sample.views1).all()
    assert torch.equal(sample.scores, torch.ones(4)) and torch.equal(sample.regions, torch.full((4,), -1))
    assert sample.boxes1.shape == sample.boxes2.shape == (4, 4)
    assert not torch.equal(sample.boxes1, sample.boxes2)  # independent crops
    frac = (sample.boxes1[:, 2] - sample.boxes1[:, 0]) * (sample.boxes1[:, 3] - sample.boxes1[:, 1])
    assert (frac >= 0.075).all()

    regions = [[0.1, 0.1, 0.4, 0.5], [0.5, 0.2, 0.9, 0.9]]
    write_regions(bank, 1, regions, [1.0, 0.5])
    torch.manual_seed(1)
    picked = []
    for _ in range(30):
        sample = transform(image, 1)
        assert sample.regions.dtype == torch.int64 and ((sample.regions >= 0) & (sample.regions < 2)).all()
        torch.testing.assert_close(sample.scores, torch.tensor([1.0, 0.5])[sample.regions])
        for boxes in (sample.boxes1, sample.boxes2):
            region = torch.tensor(regions)[sample.regions]
            overlap_w = torch.minimum(boxes[:, 2], region[:, 2]) - torch.maximum(boxes[:, 0], region[:, 0])
            overlap_h = torch.minimum(boxes[:, 3], region[:, 3]) - torch.maximum(boxes[:, 1], region[:, 1])
            assert (overlap_w > 0).all() and (overlap_h > 0).all()
        picked.append(sample.regions)
    assert 0.5 < float((torch.cat(picked) == 0).float().mean()) < 0.85  # 2/3 expected
    assert transform(image, 0).regions.tolist() == [-1] * 4  # other rows still empty


def test_crops_come_from_the_region() -> None:
    image = photo("chelsea").copy()  # 300 x 451 cat photo
    H, W = image.shape[:2]
    box = [0.2, 0.3, 0.45, 0.7]
    x0, y0, x1, y1 = round(box[0] * W), round(box[1] * H), round(box[2] * W), round(box[3] * H)
    image[y0:y1, x0:x1] = (255, 0, 0)
    bank = SaliencyBank(1, max_regions=2)
    transform = SaliencyCropTransform(bank, num_regions=8, size=32, augment=False)

    def red_fraction(views: torch.Tensor) -> torch.Tensor:
        red = (views[:, 0] > 0.9) & (views[:, 1] < 0.1) & (views[:, 2] < 0.1)
        return red.float().mean(dim=(1, 2))

    torch.manual_seed(0)
    before = torch.cat([red_fraction(transform(image, 0).views1) for _ in range(25)])
    write_regions(bank, 0, [box], [1.0])
    after, centre_red = [], []
    for _ in range(25):
        sample = transform(image, 0)
        assert sample.views1.min() > -1e-5 and sample.views1.max() < 1 + 1e-5  # not normalized
        views = torch.cat([sample.views1, sample.views2])
        after.append(red_fraction(views))
        centre_red.append(red_fraction(views[..., 15:17, 15:17]) == 1)
        for crops in (sample.boxes1, sample.boxes2):  # crop centres in the box (up to the 1/2-pixel snap)
            cx, cy = (crops[:, 0] + crops[:, 2]) / 2 * W, (crops[:, 1] + crops[:, 3]) / 2 * H
            assert ((cx >= x0 - 0.5) & (cx <= x1 + 0.5) & (cy >= y0 - 0.5) & (cy <= y1 + 0.5)).all()
    after = torch.cat(after)
    assert float(before.mean()) < 0.3
    assert float(after.mean()) > 0.6
    assert float(torch.cat(centre_red).float().mean()) > 0.85  # centre pixels red, but near the box edge


def test_image_types_give_the_same_crops() -> None:
    image = photo("astronaut", step=4)  # 128 x 128
    bank = SaliencyBank(1)
    write_regions(bank, 0, [[0.2, 0.2, 0.8, 0.9], [0.0, 0.5, 0.3, 1.0]], [0.9, 0.4])
    transform = SaliencyCropTransform(bank, num_regions=3, size=24, augment=False)
    outs = []
    for img in (image, Image.fromarray(image), torch.from_numpy(image).permute(2, 0, 1).contiguous()):
        torch.manual_seed(7)
        outs.append(transform(img, 0))
    for other in outs[1:]:
        for a, b in zip(outs[0], other):
            torch.testing.assert_close(a, b)


def test_view_transform_options_and_normalized_output() -> None:
    image = photo("astronaut", step=4)
    bank = SaliencyBank(1)
    calls = []

    def tag(value: float):
        def fn(x: torch.Tensor) -> torch.Tensor:
            calls.append(tuple(x.shape))
            return torch.full_like(x, value)

        return fn

    sample = SaliencyCropTransform(bank, num_regions=2, size=16, view_transforms=(tag(1.0), tag(2.0)))(image, 0)
    assert calls == [(3, 16, 16)] * 4
    assert (sample.views1 == 1).all() and (sample.views2 == 2).all()
    torch.manual_seed(0)
    byol = SaliencyCropTransform(bank, num_regions=2, size=16, view_transforms="byol")(image, 0)
    assert byol.views1.min() < 0  # normalized
    assert "num_regions=2" in repr(SaliencyCropTransform(bank, num_regions=2))


def test_bad_transform_input() -> None:
    bank = SaliencyBank(2, max_regions=2)
    image = photo("astronaut", step=8)
    with pytest.raises(IndexError, match="outside"):
        SaliencyCropTransform(bank)(image, 2)
    with pytest.raises(ValueError, match="num_regions"):
        SaliencyCropTransform(bank, num_regions=0)
    with pytest.raises(ValueError, match="size"):
        SaliencyCropTransform(bank, size=0)
    with pytest.raises(ValueError, match="size"):
        SaliencyCropTransform(bank, size=9.5)
    with pytest.raises(ValueError, match="view_transforms"):
        SaliencyCropTransform(bank, view_transforms="simclr")
    with pytest.raises(ValueError, match="pair"):
        SaliencyCropTransform(bank, view_transforms=(lambda x: x,))
    with pytest.raises(ValueError, match="augment=False"):
        SaliencyCropTransform(bank, view_transforms="byol", augment=False)
    with pytest.raises(TypeError, match="SaliencyBank"):
        SaliencyCropTransform([[0.0, 0.0, 1.0, 1.0]])
    with pytest.raises(ValueError, match="inverted"):  # x1 < x0: the bank refuses it ...
        write_regions(bank, 0, [[0.5, 0.2, 0.3, 0.6]], [1.0])
    bank.boxes[0, 0] = torch.tensor([0.5, 0.2, 0.3, 0.6])  # ... and the crops too, from a table written around it
    bank.scores[0, 0] = 1.0
    bank.counts[0] = 1
    with pytest.raises(ValueError, match="non-empty"):
        SaliencyCropTransform(bank)(image, 0)
    bank.boxes[1, 0] = torch.tensor([0.1, 0.1, 1.2, 0.5])  # a corrupted table, bypassing write()
    bank.scores[1, 0] = 1.0
    bank.counts[1] = 1
    with pytest.raises(ValueError, match=r"bank\[1\] boxes must be normalized"):
        SaliencyCropTransform(bank)(image, 1)
    with pytest.raises(TypeError, match="Cannot read an image"):
        SaliencyCropTransform(SaliencyBank(1))("not an image", 0)


def test_transform_composes_one_region_crops() -> None:
    """The transform's options are RegionCrops' (declared once): same names, defaults and positions, read
    through; a ready RegionCrops can be given instead; the same seed gives the same crops either way."""
    image = photo("astronaut", step=8)
    bank = SaliencyBank(1, max_regions=2)
    write_regions(bank, 0, [[0.1, 0.2, 0.6, 0.9], [0.5, 0.0, 1.0, 0.5]], [1.0, 0.4])
    params = inspect.signature(SaliencyCropTransform).parameters
    options = inspect.signature(RegionCrops).parameters
    assert list(params) == ["bank", *options, "crops"] and params["crops"].kind is inspect.Parameter.KEYWORD_ONLY
    assert all(params[n].default == p.default for n, p in options.items())
    positional = SaliencyCropTransform(bank, 3, 32, None, False)  # solo's build_saliency_transform passes two
    assert isinstance(positional.crops, RegionCrops) and positional.crops.num_regions == 3
    assert (positional.size, positional.augment, positional.view_transforms) == (32, False, None)  # read through
    step = RegionCrops(num_regions=3, size=32, augment=False, box_jitter=0.1)
    given = SaliencyCropTransform(bank, crops=step)
    assert given.crops is step and given.box_jitter == 0.1
    assert repr(given) == repr(step).replace("RegionCrops", "SaliencyCropTransform")
    torch.manual_seed(0)
    ours = given(image, 0)
    torch.manual_seed(0)
    assert all(torch.equal(a, b) for a, b in zip(ours, step(image, *bank[0])))
    torch.manual_seed(0)
    boxes1, boxes2, scores, regions = given.sample_boxes(0, image.shape[:2])
    assert torch.equal(boxes1, ours.boxes1) and torch.equal(boxes2, ours.boxes2)
    assert torch.equal(scores, ours.scores) and torch.equal(regions, ours.regions)
    copy = pickle.loads(pickle.dumps(given))  # what spawned DataLoader workers receive
    assert copy.size == 32 and isinstance(copy.crops, RegionCrops)
    with pytest.raises(AttributeError, match="'SaliencyCropTransform' object has no attribute 'sizes'"):
        _ = given.sizes
    with pytest.raises(TypeError, match="not both"):
        SaliencyCropTransform(bank, 4, crops=step)
    with pytest.raises(TypeError, match="crops must be a RegionCrops, got dict"):
        SaliencyCropTransform(bank, crops={"num_regions": 4})
    with pytest.raises(TypeError, match="unexpected keyword argument 'regions'"):
        SaliencyCropTransform(bank, regions=4)


# ------------------------------------------------------------------------------------ dataset


class Photos(torch.utils.data.Dataset):
    """Small real photos as (image, label) tuples, dicts or bare images."""

    def __init__(self, kind: str = "tuple") -> None:
        self.images = [photo(name, step=4) for name in ("astronaut", "chelsea", "coffee", "rocket")] * 2
        self.kind = kind

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int):
        if self.kind == "tuple":
            return self.images[i], 10 + i, f"file{i}.png"
        if self.kind == "dict":
            return {"image": Image.fromarray(self.images[i]), "label": 10 + i}
        return self.images[i]


@pytest.mark.parametrize("kind, target", [("tuple", 13), ("dict", 13), ("bare", -1)])
def test_dataset_items(kind: str, target: int) -> None:
    data = Photos(kind)
    dataset = SaliencyCropDataset(data, SaliencyCropTransform(SaliencyBank(len(data)), num_regions=2, size=16))
    assert len(dataset) == 8
    item = dataset[3]
    assert set(item) == {"views1", "views2", "scores", "index", "target"}
    assert item["index"] == 3 and item["target"] == target
    assert item["views1"].shape == (2, 3, 16, 16) and item["scores"].shape == (2,)


def test_dataset_errors() -> None:
    with pytest.raises(ValueError, match="bank holds 3 images"):
        SaliencyCropDataset(Photos(), SaliencyCropTransform(SaliencyBank(3)))
    with pytest.raises(TypeError, match="SaliencyCropTransform"):
        SaliencyCropDataset(Photos(), lambda image, index: image)


class WorkerTagged(SaliencyCropDataset):
    """Adds the id of the process that made each item."""

    def __getitem__(self, index: int) -> dict:
        return {**super().__getitem__(index), "pid": os.getpid()}


def test_persistent_workers_see_a_refresh_between_epochs() -> None:
    data = Photos()
    n, t = len(data), 2
    bank = SaliencyBank(n, max_regions=3)
    dataset = WorkerTagged(data, SaliencyCropTransform(bank, num_regions=t, size=16))
    pickle.loads(pickle.dumps(dataset))  # picklable, as spawned workers need
    loader = DataLoader(dataset, batch_size=4, num_workers=2, persistent_workers=True)

    first = list(loader)
    pids = set(torch.cat([b["pid"] for b in first]).tolist())
    assert len(pids) == 2 and os.getpid() not in pids
    assert first[0]["views1"].shape == (4, t, 3, 16, 16)
    assert torch.equal(torch.cat([b["index"] for b in first]), torch.arange(n))
    assert torch.equal(torch.cat([b["target"] for b in first]), torch.arange(n) + 10)
    assert torch.equal(torch.cat([b["scores"] for b in first]), torch.ones(n, t))

    boxes = torch.zeros(n, 3, 4)
    boxes[:, :2] = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.4, 0.4, 0.9, 0.9]])
    scores = torch.zeros(n, 3)
    scores[:, :2] = torch.tensor([0.8, 0.3])
    scores[5] = torch.tensor([0.37, 0.0, 0.0])  # one image with a single region
    counts = torch.full((n,), 2)
    counts[5] = 1
    bank.write(boxes, scores, counts, torch.zeros(n, dtype=torch.bool))
    bank.mark_refreshed()

    batches = list(loader)
    assert set(torch.cat([b["pid"] for b in batches]).tolist()) == pids  # the same, still running, workers
    second = torch.cat([b["scores"] for b in batches])
    assert ((second == 0.8) | (second == 0.3))[torch.arange(n) != 5].all()
    torch.testing.assert_close(second[5], torch.full((t,), 0.37))


# ------------------------------------------------------------------------------------- kornia


def kornia_available() -> bool:
    try:
        import kornia.augmentation  # noqa: F401
    except ImportError:
        return False
    return True


needs_kornia = pytest.mark.skipif(not kornia_available(), reason="kornia is not installed")
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@needs_kornia
@pytest.mark.parametrize("device", DEVICES)
def test_batch_augment_shapes_and_device(device: str) -> None:
    bank = SaliencyBank(1)
    crops = SaliencyCropTransform(bank, num_regions=4, size=32, augment=False)(photo("astronaut", step=4), 0)
    for view in (1, 2):
        aug = BatchViewAugment(view, size=32).to(device)
        out = aug(crops.views1.to(device))
        assert out.shape == (4, 3, 32, 32) and out.device.type == device and out.dtype == torch.float32
        assert torch.isfinite(out).all()
    assert BatchViewAugment(1)(torch.zeros(0, 3, 8, 8)).shape == (0, 3, 8, 8)
    with pytest.raises(ValueError, match=r"\(n, 3, H, W\)"):
        BatchViewAugment(1)(torch.rand(3, 8, 8))
    with pytest.raises(ValueError, match="float"):
        BatchViewAugment(1)(torch.zeros(1, 3, 8, 8, dtype=torch.uint8))
    with pytest.raises(ValueError, match="view"):
        BatchViewAugment(3)


def cpu_views(transform, images: torch.Tensor) -> torch.Tensor:
    return torch.stack([transform(x) for x in images])


@needs_kornia
def test_batch_augment_matches_the_cpu_path_in_distribution() -> None:
    n, size = 600, 32
    cpu1, cpu2 = byol_view_transforms(size)
    gpu1, gpu2 = BatchViewAugment(1, size), BatchViewAugment(2, size)

    # grayscale (p 0.2): a colourful real crop comes out with equal channels
    real = crop_and_resize(
        torch.from_numpy(photo("coffee")).permute(2, 0, 1).float() / 255.0,
        torch.tensor([[0.3, 0.2, 0.7, 0.8]]),
        size,
    ).expand(n, -1, -1, -1)

    def gray_fraction(views: torch.Tensor) -> float:
        x = unnormalize(views)
        return float(((x[:, 0] - x[:, 1]).abs().amax(dim=(1, 2)) < 1e-3).float().mean())

    torch.manual_seed(0)
    for cpu, gpu in ((cpu1, gpu1), (cpu2, gpu2)):
        a, b = gray_fraction(cpu_views(cpu, real)), gray_fraction(gpu(real))
        assert 0.15 < a < 0.25 and 0.15 < b < 0.25

    # flips (p 0.5): the bright half of a two-tone gray image changes side (view 1: no solarize)
    halves = torch.full((n, 3, size, size), 0.2)
    halves[..., : size // 2] = 0.8

    def flip_fraction(views: torch.Tensor) -> float:
        x = unnormalize(views).mean(dim=1)
        return float((x[..., : size // 2].mean(dim=(1, 2)) < x[..., size // 2 :].mean(dim=(1, 2))).float().mean())

    a, b = flip_fraction(cpu_views(cpu1, halves)), flip_fraction(gpu1(halves))
    assert 0.42 < a < 0.58 and 0.42 < b < 0.58

    # colour jitter brightness (p 0.8, factor in [0.6, 1.4]) and solarize (view 2): a flat gray image
    flat = torch.full((n, 3, size, size), 0.45)
    for cpu, gpu in ((cpu1, gpu1), (cpu2, gpu2)):
        a = unnormalize(cpu_views(cpu, flat)).mean(dim=(1, 2, 3)).numpy()
        b = unnormalize(gpu(flat)).mean(dim=(1, 2, 3)).numpy()
        assert stats.ks_2samp(a, b).pvalue > 1e-3
        assert 0.15 < float(np.mean(np.isclose(a, 0.45, atol=1e-3))) < 0.3  # untouched: ~20% (p 0.8)

    # everything together on the real crop: per-view statistics agree between the paths
    for cpu, gpu in ((cpu1, gpu1), (cpu2, gpu2)):
        a, b = unnormalize(cpu_views(cpu, real)), unnormalize(gpu(real))
        for stat in (
            lambda x: x.mean(dim=(1, 2, 3)),
            lambda x: x.std(dim=(1, 2, 3)),
            lambda x: (x[..., 1:] - x[..., :-1]).abs().mean(dim=(1, 2, 3)),  # sharpness (blur)
        ):
            assert stats.ks_2samp(stat(a).numpy(), stat(b).numpy()).pvalue > 1e-3


def test_box_jitter_moves_each_edge_uniformly_within_its_bound() -> None:
    g = torch.Generator().manual_seed(0)
    box = torch.tensor([[0.3, 0.2, 0.5, 0.6]])  # 0.2 wide, 0.4 high: well inside the image
    out = jitter_boxes(box.repeat(20000, 1), 0.25, (1000, 1000), generator=g)
    moves = (out - box).double()
    bound = torch.tensor([0.05, 0.1, 0.05, 0.1], dtype=torch.float64)  # 0.25 x (w, h, w, h)
    assert (moves.abs() <= bound + 1e-6).all()
    for k in range(4):  # uniform on [-bound, bound]: KS test on each edge
        assert stats.kstest((moves[:, k] / bound[k]).numpy(), "uniform", args=(-1, 2)).pvalue > 1e-3
    assert abs(float(np.corrcoef(moves[:, 0], moves[:, 2])[0, 1])) < 0.05  # edges move independently
    torch.testing.assert_close(jitter_boxes(box, 0.0, (10, 10)), box)


def test_box_jitter_stays_in_the_image_and_non_empty() -> None:
    g = torch.Generator().manual_seed(1)
    boxes = torch.tensor([[0.0, 0.0, 1.0, 1.0], [0.0, 0.9, 0.01, 1.0]]).repeat(500, 1)
    out = jitter_boxes(boxes, 3.0, (100, 100), generator=g)
    assert (out >= 0).all() and (out <= 1).all()
    assert ((out[:, 2] - out[:, 0]) >= 0.01 - 1e-6).all() and ((out[:, 3] - out[:, 1]) >= 0.01 - 1e-6).all()
    with pytest.raises(ValueError, match="jitter"):
        jitter_boxes(boxes, -0.1, (100, 100))
    with pytest.raises(ValueError, match="jitter"):
        SaliencyCropTransform(SaliencyBank(1), box_jitter=float("nan"))


def test_transform_box_jitter_lets_crop_centres_leave_the_region() -> None:
    bank = SaliencyBank(1, max_regions=1)
    box = [0.4, 0.4, 0.6, 0.6]
    write_regions(bank, 0, [box], [1.0])
    image = torch.rand(3, 200, 200)

    def centres(transform: SaliencyCropTransform) -> torch.Tensor:
        torch.manual_seed(0)
        out = []
        for _ in range(200):
            b1, b2, _, _ = transform.sample_boxes(0, (200, 200))
            out.append(torch.cat([(b1[:, :2] + b1[:, 2:]) / 2, (b2[:, :2] + b2[:, 2:]) / 2]))
        return torch.cat(out)

    plain = centres(SaliencyCropTransform(bank, num_regions=4, augment=False))
    jittered = centres(SaliencyCropTransform(bank, num_regions=4, augment=False, box_jitter=0.5))
    inside = lambda c: ((c >= 0.4 - 0.003) & (c <= 0.6 + 0.003)).all(dim=1)  # noqa: E731  (1/2-pixel snap)
    assert inside(plain).all()
    assert 0.2 < float((~inside(jittered)).float().mean()) < 0.8  # jittered boxes reach 0.3-0.7
    assert ((jittered >= 0.3 - 0.003) & (jittered <= 0.7 + 0.003)).all()
    assert SaliencyCropTransform(bank, augment=False, box_jitter=0.1)(image, 0).views1.shape == (4, 3, 96, 96)


def test_before_refresh_regions_pairs_share_a_random_region() -> None:
    """Algorithm 1 read literally: the two crops of a pair are rule-R crops of one random region, so
    they cover 8-100 % of a region of 8-100 % of the image: about 0.54 x the area of BYOL's
    whole-image crops on average."""
    bank = SaliencyBank(1)

    def pair_stats(mode: str) -> float:
        transform = SaliencyCropTransform(bank, num_regions=8, augment=False, before_refresh=mode)
        torch.manual_seed(0)
        area = []
        for _ in range(200):
            b1, b2, scores, regions = transform.sample_boxes(0, (300, 300))
            assert torch.equal(scores, torch.ones(8)) and regions.tolist() == [-1] * 8
            area.append(torch.cat([(b1[:, 2:] - b1[:, :2]).prod(1), (b2[:, 2:] - b2[:, :2]).prod(1)]))
        return float(torch.cat(area).mean())

    crops, regions = pair_stats("crops"), pair_stats("regions")
    assert 0.44 < crops < 0.56, crops  # 0.54 less the draws that do not fit the image
    assert 0.15 < regions < 0.65 * crops, (crops, regions)
    with pytest.raises(ValueError, match="before_refresh"):
        SaliencyCropTransform(bank, before_refresh="random")


def test_view_colour_strength_options() -> None:
    """hue / grayscale_p reach both paths: at hue 0.5 a coloured crop's hue is spread over the circle,
    at grayscale_p 1 every view is grey; bad values are refused."""
    torch.manual_seed(0)
    red = torch.zeros(300, 3, 16, 16)
    red[:, 0] = 0.9
    red[:, 1:] = 0.1

    def hue_spread(views: torch.Tensor) -> float:  # share of views whose dominant channel is not red
        x = unnormalize(views).mean(dim=(2, 3))
        return float((x.argmax(1) != 0).float().mean())

    weak, _ = byol_view_transforms(16, grayscale_p=0.0)
    strong, _ = byol_view_transforms(16, hue=0.5, grayscale_p=0.0)
    assert hue_spread(cpu_views(weak, red)) < 0.05 < 0.4 < hue_spread(cpu_views(strong, red))
    grey, _ = byol_view_transforms(16, grayscale_p=1.0)
    g = unnormalize(cpu_views(grey, red[:20]))
    assert (g[:, 0] - g[:, 1]).abs().max() < 1e-3
    if kornia_available():
        b = BatchViewAugment(1, 16, hue=0.5, grayscale_p=0.0)
        assert hue_spread(b(red)) > 0.4
        assert hue_spread(BatchViewAugment(1, 16, grayscale_p=0.0)(red)) < 0.05
    for bad in ({"hue": 0.6}, {"hue": -0.1}, {"grayscale_p": 1.5}, {"hue": True}):
        with pytest.raises(ValueError, match="hue|grayscale_p"):
            byol_view_transforms(16, **bad)
        if kornia_available():
            with pytest.raises(ValueError, match="hue|grayscale_p"):
                BatchViewAugment(1, 16, **bad)


def test_one_view_transform_instead_of_a_pair_says_how_to_pass_it() -> None:
    """A single callable (torchvision's Compose is one) used to fail with "'Compose' object is not iterable"."""
    from torchvision.transforms import v2

    one = v2.Compose([v2.RandomHorizontalFlip()])
    with pytest.raises(TypeError, match=r"pair \(view1, view2\) of callables, got one Compose: pass \(t, t\)"):
        RegionCrops(size=32, view_transforms=one)
    assert RegionCrops(size=32, view_transforms=(one, one)).view_transforms == (one, one)
