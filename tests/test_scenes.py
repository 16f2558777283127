"""ComposedScenes and load_fashion_mnist: determinism, exact boxes and masks, counts, labels, sizes."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

pytest.importorskip("skimage")

from sgcl_plugin.testbed.scenes import ComposedScenes, load_fashion_mnist, masks_to_boxes, object_crops, read_idx  # noqa: E402


@pytest.fixture(scope="module")
def fashion_test() -> tuple:
    try:
        return load_fashion_mnist("test")
    except RuntimeError as err:
        pytest.skip(f"Fashion-MNIST unavailable offline: {err}")


@pytest.fixture(scope="module")
def scenes(fashion_test: tuple) -> ComposedScenes:
    return ComposedScenes(24, image_size=96, split="test", seed=3)


def pixels(ds: ComposedScenes, i: int) -> np.ndarray:
    return np.asarray(ds[i]["image"])


def test_load_fashion_mnist(fashion_test: tuple) -> None:
    images, labels = fashion_test
    assert images.shape == (10000, 28, 28) and images.dtype == np.uint8
    assert labels.shape == (10000,) and labels.dtype == np.int64
    assert labels.min() == 0 and labels.max() == 9
    assert np.bincount(labels).tolist() == [1000] * 10
    with pytest.raises(ValueError, match="split"):
        load_fashion_mnist("val")


def test_read_idx_round_trip(tmp_path: Path) -> None:
    arr = np.arange(2 * 3 * 4, dtype=np.uint8).reshape(2, 3, 4)
    path = tmp_path / "x-idx3-ubyte.gz"
    with gzip.open(path, "wb") as f:
        f.write(bytes([0, 0, 0x08, 3]) + struct.pack(">3i", *arr.shape) + arr.tobytes())
    np.testing.assert_array_equal(read_idx(path), arr)
    bad = tmp_path / "bad.gz"
    with gzip.open(bad, "wb") as f:
        f.write(b"\x01\x02\x03\x04")
    with pytest.raises(ValueError, match="IDX"):
        read_idx(bad)


def test_same_seed_same_pixels(scenes: ComposedScenes) -> None:
    again = ComposedScenes(24, image_size=96, split="test", seed=3)
    for i in (0, 7, 23):
        a, b = scenes[i], again[i]
        np.testing.assert_array_equal(np.asarray(a["image"]), np.asarray(b["image"]))
        assert torch.equal(a["masks"], b["masks"]) and torch.equal(a["labels"], b["labels"])
        assert torch.equal(a["boxes"], b["boxes"])
    # Order of access does not matter: each item has its own generator.
    np.testing.assert_array_equal(pixels(again, 5), pixels(scenes, 5))


def test_different_seed_or_index_differs(scenes: ComposedScenes) -> None:
    other = ComposedScenes(24, image_size=96, split="test", seed=4)
    for i in range(5):
        assert not np.array_equal(pixels(scenes, i), pixels(other, i))
    assert not np.array_equal(pixels(scenes, 0), pixels(scenes, 1))


def test_item_format_and_sizes(scenes: ComposedScenes) -> None:
    assert len(scenes) == 24
    item = scenes[2]
    assert set(item) == {"image", "boxes", "labels", "masks", "index"}
    assert isinstance(item["image"], Image.Image) and item["image"].mode == "RGB"
    assert item["image"].size == (96, 96)
    k = item["labels"].shape[0]
    assert item["boxes"].shape == (k, 4) and item["boxes"].dtype == torch.float32
    assert item["labels"].dtype == torch.int64
    assert item["masks"].shape == (k, 96, 96) and item["masks"].dtype == torch.bool
    assert item["index"] == 2
    assert scenes[-1]["index"] == 23
    with pytest.raises(IndexError):
        scenes[24]


def test_boxes_are_the_tight_boxes_of_the_masks(scenes: ComposedScenes) -> None:
    for i in range(len(scenes)):
        item = scenes[i]
        H, W = item["masks"].shape[1:]
        for box, mask in zip(item["boxes"], item["masks"]):
            rows, cols = torch.nonzero(mask, as_tuple=True)
            expected = torch.tensor(
                [cols.min() / W, rows.min() / H, (cols.max() + 1) / W, (rows.max() + 1) / H], dtype=torch.float32
            )
            torch.testing.assert_close(box, expected, rtol=0, atol=1e-7)
            assert 0 <= box[0] < box[2] <= 1 and 0 <= box[1] < box[3] <= 1


def test_masks_are_exact_and_visible(scenes: ComposedScenes) -> None:
    for i in range(len(scenes)):
        item = scenes[i]
        masks = item["masks"]
        # Visible pixels of different objects never overlap, and no object is fully occluded.
        assert int(masks.sum(0).max()) <= 1
        assert bool((masks.flatten(1).sum(1) > 0).all())
    # Each mask is exactly the set of pixels painted by its object: re-render without it and compare.
    image, masks, _ = scenes.compose(0)
    union = masks.any(0)
    background = np.asarray(scenes._background(scenes._rng(0)))
    outside = np.rint(background).clip(0, 255).astype(np.uint8)[~union]
    np.testing.assert_array_equal(image[~union], outside)


def test_object_counts_and_labels(scenes: ComposedScenes) -> None:
    counts = []
    for i in range(len(scenes)):
        labels = scenes[i]["labels"]
        counts.append(labels.numel())
        assert bool(((labels >= 0) & (labels <= 9)).all())
    assert min(counts) >= 2 and max(counts) <= 6
    assert len(set(counts)) > 1
    few = ComposedScenes(10, image_size=64, min_objects=1, max_objects=1, split="test")
    assert all(few[i]["labels"].numel() == 1 for i in range(10))


def test_class_groups_give_structured_co_occurrence(scenes: ComposedScenes) -> None:
    groups = ((0, 5), (1, 6), (2, 7), (3, 8), (4, 9))
    paired = ComposedScenes(60, image_size=96, split="test", seed=3, class_groups=groups)
    drawn, both = set(), 0
    for i in range(len(paired)):
        labels = set(paired[i]["labels"].tolist())
        group = [g for g in groups if labels <= set(g)]
        assert len(group) == 1, labels  # every object of a scene from one pair of classes
        drawn.add(group[0])
        both += len(labels) == 2
    assert drawn == set(groups) and both > len(paired) // 2  # every pair drawn; most scenes show both classes
    # the default (any class anywhere) is untouched: the same pixels as before the option existed
    np.testing.assert_array_equal(pixels(ComposedScenes(24, image_size=96, split="test", seed=3, class_groups=None), 5),
                                  pixels(scenes, 5))  # fmt: skip
    with pytest.raises(ValueError, match="class_groups"):
        ComposedScenes(4, split="test", class_groups=((0, 11),))
    with pytest.raises(ValueError, match="class_groups"):
        ComposedScenes(4, split="test", class_groups=((),))


def test_background_is_not_blank(scenes: ComposedScenes) -> None:
    for i in range(6):
        item = scenes[i]
        image = np.asarray(item["image"]).astype(np.float32)
        bg = image[~item["masks"].any(0).numpy()]
        assert bg.std() > 5.0
        assert len(np.unique(bg.astype(np.uint8).reshape(-1, 3), axis=0)) > 50


def test_image_only_and_get_image(scenes: ComposedScenes) -> None:
    fast = ComposedScenes(24, image_size=96, split="test", seed=3, image_only=True)
    img = fast[4]
    assert isinstance(img, Image.Image)
    np.testing.assert_array_equal(np.asarray(img), pixels(scenes, 4))
    np.testing.assert_array_equal(np.asarray(scenes.get_image(4)), pixels(scenes, 4))


def test_masks_to_boxes() -> None:
    masks = torch.zeros(2, 4, 8, dtype=torch.bool)
    masks[0, 1:3, 2:5] = True
    torch.testing.assert_close(masks_to_boxes(masks), torch.tensor([[2 / 8, 1 / 4, 5 / 8, 3 / 4], [0, 0, 0, 0]]))


def test_bad_arguments(fashion_test: tuple) -> None:
    with pytest.raises(ValueError, match="min_objects"):
        ComposedScenes(4, min_objects=3, max_objects=2)
    with pytest.raises(ValueError, match="object_scale"):
        ComposedScenes(4, object_scale=(0.5, 0.2))


def test_object_crops_cut_every_object_by_its_true_box() -> None:
    scenes = ComposedScenes(6, image_size=96, seed=5, split="test")
    x, y = object_crops(scenes, size=40, context=0.0)
    labels = torch.cat([scenes[i]["labels"] for i in range(len(scenes))])
    assert x.shape == (len(labels), 3, 40, 40) and x.dtype == torch.float32
    assert torch.equal(y, labels) and 0.0 <= float(x.min()) and float(x.max()) <= 1.0
    # with no context the crop is the square around the box: the object's own colour dominates it
    # (the last pasted object of a scene is never occluded)
    item = scenes[0]
    k = len(item["labels"]) - 1
    obj = np.asarray(item["image"])[item["masks"][k].numpy()]
    crop = (x[k].permute(1, 2, 0).numpy() * 255).reshape(-1, 3)
    assert np.abs(np.median(crop, 0) - np.median(obj, 0)).max() < 40
    x2, y2 = object_crops(scenes, size=40, max_crops=5)
    assert len(x2) == 5 and torch.equal(y2, labels[:5])


def test_object_crops_bad_input() -> None:
    with pytest.raises(ValueError, match="empty"):
        object_crops(ComposedScenes(0, image_size=96), size=32)
    with pytest.raises(ValueError, match="size"):
        object_crops(ComposedScenes(2, image_size=96), size=0)


def test_object_crops_isolated_show_the_object_alone_on_grey() -> None:
    scenes = ComposedScenes(4, image_size=96, seed=3, split="test", object_scale=(0.2, 0.3))
    x, y = object_crops(scenes, size=48, context=0.25, isolate=True)
    ctx, y2 = object_crops(scenes, size=48, context=0.25)
    assert torch.equal(y, y2) and x.shape == ctx.shape
    # the border ring of an isolated crop (context, never the object) is exactly mid-grey everywhere;
    # with context it shows the textured background, which is not
    ring = torch.ones(48, 48, dtype=torch.bool)
    ring[3:-3, 3:-3] = False
    grey = 127 / 255
    assert torch.allclose(x[:, :, ring], torch.full_like(x[:, :, ring], grey), atol=1e-6)
    assert (ctx[:, :, ring] - grey).abs().amax() > 0.1
    # the object's own pixels are kept: the last pasted object (never occluded) keeps its colour
    item = scenes[0]
    k = len(item["labels"]) - 1
    obj = np.asarray(item["image"])[item["masks"][k].numpy()]
    crop = (x[k].permute(1, 2, 0).numpy() * 255).reshape(-1, 3)
    kept = crop[np.abs(crop - 127).max(1) > 8]
    assert np.abs(np.median(kept, 0) - np.median(obj, 0)).max() < 40
