"""The core pieces every adapter shares: item parser, DatasetImages, flatten_pairs, RefreshSchedule, feature_maps."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import IterableDataset

from sgcl_plugin import SaliencyBank, SaliencyCropDataset, SaliencyCropTransform
from sgcl_plugin.features import feature_maps
from sgcl_plugin.items import DatasetImages, flatten_pairs, split_item
from sgcl_plugin.schedule import RefreshSchedule

IMAGE = torch.rand(3, 8, 8)


@pytest.mark.parametrize(
    "item, expected",
    [
        (IMAGE, (-1, "4")),
        ((IMAGE, 7), (7, "4")),
        ((IMAGE, 7, "cat.jpg"), (7, "cat.jpg")),  # lightly's (image, target, filename)
        ((4, IMAGE, 7), (7, "4")),  # solo-learn's (index, image, target): the index is dropped
        ({"image": IMAGE, "label": 7, "filename": "cat.jpg"}, (7, "cat.jpg")),
        ({"image": IMAGE, "target": None}, (-1, "4")),
    ],
)
def test_split_item_reads_every_host_format(item: object, expected: tuple) -> None:
    parsed = split_item(item, 4)
    assert parsed.image is IMAGE and (parsed.target, parsed.filename) == expected


def test_split_item_refuses_what_it_cannot_read() -> None:
    with pytest.raises(ValueError, match="empty tuple"):
        split_item((), 0)
    with pytest.raises(ValueError, match="without an 'image' key"):
        split_item({"img": IMAGE}, 0)
    with pytest.raises(ValueError, match="already holds 2 views"):
        split_item(([IMAGE, IMAGE], 0), 0)
    # (5, image, target) at index 4 is not solo's format: the 5 is taken for the image, and the crop fails later
    assert split_item((5, IMAGE, 7), 4).image == 5


def test_dataset_images_unwraps_crop_datasets_and_refuses_streams() -> None:
    items = [(torch.rand(3, 8, 8), i % 2) for i in range(3)]
    crops = SaliencyCropDataset(items, SaliencyCropTransform(SaliencyBank(3), num_regions=1, size=4))
    for source in (items, crops, crops.images):
        images = DatasetImages(source)
        assert images.dataset is items and len(images) == 3 and images[2] is items[2][0]

    class Stream(IterableDataset):
        def __iter__(self):  # type: ignore[no-untyped-def]
            yield IMAGE

    with pytest.raises(TypeError, match="map-style"):
        DatasetImages(Stream())


def test_flatten_pairs_keeps_views_scores_and_images_aligned() -> None:
    B, t, s = 3, 2, 4
    views1 = torch.arange(B * t, dtype=torch.float32).reshape(B, t, 1, 1, 1).expand(B, t, 3, s, s)
    scores = torch.arange(B * t, dtype=torch.float32).reshape(B, t) / 10
    rows = flatten_pairs([views1, views1 + 100], scores, torch.tensor([7, 8, 9]), torch.tensor([0, 1, 0]))
    assert rows.num_regions == t and rows.views1.shape == (B * t, 3, s, s)
    for k in range(B * t):  # row k: pair k % t of image k // t
        assert float(rows.views1[k, 0, 0, 0]) == k and float(rows.views2[k, 0, 0, 0]) == k + 100
        assert float(rows.scores[k]) == pytest.approx(k / 10)
    assert rows.image_ids.tolist() == [7, 7, 8, 8, 9, 9] and rows.targets.tolist() == [0, 0, 1, 1, 0, 0]
    with pytest.raises(ValueError, match="exactly two views"):
        flatten_pairs([views1], scores, torch.tensor([7, 8, 9]))
    with pytest.raises(ValueError, match="are 4x4 px but 8x8"):
        flatten_pairs([views1, views1], scores, torch.tensor([7, 8, 9]), crop_size=8)
    with pytest.raises(ValueError, match=r"scores must be \(B, t\)"):
        flatten_pairs([views1, views1], scores[:, :1], torch.tensor([7, 8, 9]))


def test_refresh_schedule_never_refreshes_twice_or_at_epoch_zero() -> None:
    schedule = RefreshSchedule(every_n_epochs=3, first_epoch=2)
    assert [e for e in range(10) if schedule.is_due(e)] == [2, 5, 8]
    assert schedule.refreshes_before(9) == 3 and schedule.refreshes_before(2) == 0
    schedule.mark_done(5, {"regions_per_image": 2.0})
    assert not schedule.is_due(5) and not schedule.is_due(2) and schedule.is_due(8)  # a resume skips done ones
    restored = RefreshSchedule(3, 2)
    restored.load_state_dict(schedule.state_dict())
    assert restored.last_epoch == 5 and restored.history == [{"epoch": 5.0, "regions_per_image": 2.0}]
    assert [e for e in range(7) if RefreshSchedule(3).is_due(e)] == [3, 6]
    for bad in ({"every_n_epochs": 0}, {"first_epoch": 0}, {"every_n_epochs": True}):
        with pytest.raises(ValueError):
            RefreshSchedule(**bad)  # type: ignore[arg-type]


def test_feature_maps_of_lightly_solo_and_bf16_backbones() -> None:
    import torchvision

    x = torch.randn(2, 3, 64, 64)
    resnet = torchvision.models.resnet18().eval()
    pooled = nn.Sequential(*list(torchvision.models.resnet18().children())[:-1]).eval()  # lightly's backbone

    class Model(nn.Module):  # lightly / solo-learn models hold the backbone as an attribute
        def __init__(self) -> None:
            super().__init__()
            self.backbone, self.head = resnet, nn.Linear(512, 8)

    with torch.no_grad():
        expected = nn.Sequential(*list(resnet.children())[:-2])(x)
        torch.testing.assert_close(feature_maps(resnet)(x), expected)  # the classifier is skipped
        torch.testing.assert_close(feature_maps(Model())(x), expected)
        assert feature_maps(pooled)(x).shape == (2, 512, 2, 2)  # the trailing pooling is dropped
        assert feature_maps(pooled, stride=16)(x).shape == (2, 256, 4, 4)
        half = feature_maps(nn.Sequential(*list(resnet.children())[:-2]).to(torch.bfloat16))(x)
        assert half.dtype == torch.float32 and half.shape == (2, 512, 2, 2)
    with pytest.raises(ValueError, match="only pooling layers"):
        feature_maps(nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten()))


def test_region_crops_is_a_stateless_v2_step_and_the_dataset_looks_regions_up() -> None:
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    from sgcl_plugin import RegionCrops

    image = torch.rand(3, 40, 60)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 1.0]])
    scores = torch.tensor([1.0, 0.5])
    bank = SaliencyBank(1, max_regions=4)
    bank.write(torch.cat([boxes, torch.zeros(2, 4)])[None], torch.cat([scores, torch.zeros(2)])[None],
               torch.tensor([2]), torch.zeros(1, dtype=torch.bool))  # fmt: skip
    options = dict(num_regions=3, size=8, augment=False)
    crops = RegionCrops(**options)
    pixels = tv_tensors.BoundingBoxes(boxes * torch.tensor([60, 40, 60, 40]), format="XYXY", canvas_size=(40, 60))
    torch.manual_seed(0)
    composed = v2.Compose([crops])((image, pixels, scores))  # what a v2 pipeline hands on: one tuple
    torch.manual_seed(0)
    banked = SaliencyCropTransform(bank, **options)(image, 0)  # the same step fed from the bank
    torch.manual_seed(0)
    data = SaliencyCropDataset([image], RegionCrops(**options), bank=bank)[0]  # the dataset does the lookup
    for name in ("views1", "views2", "scores"):
        torch.testing.assert_close(getattr(composed, name), getattr(banked, name))
        torch.testing.assert_close(data[name], getattr(banked, name))
    assert set(composed.regions.tolist()) <= {0, 1}
    with pytest.raises(TypeError, match="needs the dataset's bank"):
        SaliencyCropDataset([image], RegionCrops(**options))


def test_region_crops_refuse_scores_that_do_not_match_the_boxes() -> None:
    """Fewer scores than boxes silently never drew the extra boxes, more gave a bare IndexError; scores above 1
    and flat box tensors passed."""
    from sgcl_plugin import RegionCrops

    image = torch.rand(3, 40, 60)
    boxes = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.5, 0.25, 1.0, 1.0], [0.2, 0.2, 0.8, 0.8]])
    crops = RegionCrops(num_regions=2, size=8, augment=False)
    for scores in (torch.tensor([1.0, 0.5]), torch.tensor([1.0, 0.5, 0.2, 0.1]), torch.ones(3, 1)):
        with pytest.raises(ValueError, match="one score per box"):
            crops(image, boxes, scores)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        crops(image, boxes, torch.tensor([2.0, 1.0, 0.5]))
    with pytest.raises(ValueError, match=r"\(K, 4\)"):
        crops(image, boxes.flatten(), torch.ones(3))
    assert crops(image, boxes, None).views1.shape == (2, 3, 8, 8)  # None: all 1
    assert crops(image, torch.zeros(0, 4), None).views1.shape == (2, 3, 8, 8)  # no regions: random crops


def test_two_views_of_different_sizes_are_refused_and_images_with_masks_are_not() -> None:
    """A multi-crop transform's (large view, small view) was read as (image, target) and trained on the large view
    with the small one as its label: a pair of views is refused whatever the sizes, an image with a mask is not."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    photo = Image.fromarray(rng.integers(0, 256, (60, 80, 3), dtype=np.uint8))
    resize = torch.nn.functional.interpolate  # the views of a real multi-crop: resized crops of one photo
    big = torch.from_numpy(np.array(photo)).permute(2, 0, 1).float() / 255
    views = {
        "tensors": (resize(big[None], size=(224, 224))[0], resize(big[None, :, :30, :40], size=(96, 96))[0]),
        "PIL images": (photo.resize((224, 224)), photo.crop((0, 0, 40, 30)).resize((96, 96))),
        "HWC arrays": (np.asarray(photo.resize((224, 224))), np.asarray(photo.resize((96, 96)))),
    }
    for pair in views.values():
        data = SaliencyCropDataset([pair] * 2, SaliencyCropTransform(SaliencyBank(2), num_regions=1, size=8))
        with pytest.raises(ValueError, match=r"\(image, image\), .* a pair of views .*multi-crop"):
            data[1]
        with pytest.raises(ValueError, match="pair of views"):
            split_item((*pair, 5), 0)  # (view, view, target) too
    with pytest.raises(ValueError, match=r"item 3 is \(image, image\), Tensor \(3, 224, 224\) and Tensor \(3, 96"):
        split_item(views["tensors"], 3)
    # An image and its mask or label map, of any size, is (image, target):
    mask = Image.fromarray(rng.integers(0, 5, (30, 40), dtype=np.uint8)).convert("P")
    for image, target in (
        (photo, mask),  # a VOC-style palette mask at half the size
        (photo, photo.convert("L").resize((40, 30))),  # a grey-level map of another size
        (big, torch.zeros(60, 80, dtype=torch.long)),  # a class map
        (big, torch.zeros(1, 30, 40, dtype=torch.long)),  # a one-channel class map of another size
        (big, torch.tensor([3, 7])),  # labels
    ):
        assert split_item((image, target), 0).target is target


def test_silent_misuse_of_the_core_api_is_refused_or_warned() -> None:
    """(a) a dataset that still returns (view1, view2) was taken as (image, target); (b) a refresh without bank=
    filled a new bank the crops never read, and training went on with random crops."""
    from PIL import Image

    from sgcl_plugin import SaliencyGenerator, refresh_bank

    views = [(Image.new("RGB", (40, 30)), Image.new("RGB", (40, 30))) for _ in range(4)]
    data = SaliencyCropDataset(views, SaliencyCropTransform(SaliencyBank(4), num_regions=1, size=8, augment=False))
    with pytest.raises(ValueError, match=r"\(image, image\), PIL RGB 40 x 30 and PIL RGB 40 x 30: a pair of views"):
        data[0]
    with pytest.raises(ValueError, match="pair of views"):
        split_item((torch.rand(3, 8, 8), torch.rand(3, 8, 8)), 0)
    assert split_item((torch.rand(3, 8, 8), torch.zeros(8, 8)), 0).target.shape == (8, 8)  # image + mask: fine
    images = [torch.rand(3, 32, 32) for _ in range(4)]
    bank = SaliencyBank(4)
    SaliencyCropTransform(bank, num_regions=1, size=8)
    model = torch.nn.Conv2d(3, 8, 4, stride=4)
    with pytest.warns(UserWarning, match="reach no crop"):
        refresh_bank(SaliencyGenerator(regions="paper"), model, images, saliency_size=32, progress=False)
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)
        refresh_bank(SaliencyGenerator(regions="paper"), model, images, bank, saliency_size=32, progress=False)
    assert bank.refreshes == 1
