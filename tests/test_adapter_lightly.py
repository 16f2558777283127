"""lightly adapter: real lightly objects (no mocks) -- datasets, view transforms, losses, memory banks, examples."""

from __future__ import annotations

import copy
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, List

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, IterableDataset

pytest.importorskip("lightly")
pytest.importorskip("skimage.data")

from lightly.data import LightlyDataset  # noqa: E402
from lightly.loss import BarlowTwinsLoss, NegativeCosineSimilarity, NTXentLoss  # noqa: E402
from lightly.models.modules import (  # noqa: E402
    BYOLPredictionHead,
    BYOLProjectionHead,
    NNMemoryBankModule,
    SimCLRProjectionHead,
)
from lightly.models.utils import deactivate_requires_grad, update_momentum  # noqa: E402
from lightly.transforms import BYOLTransform, BYOLView1Transform, BYOLView2Transform  # noqa: E402

from sgcl_plugin import (  # noqa: E402
    SaliencyBank,
    SaliencyCropTransform,
    SaliencyGenerator,
    SaliencyRefresher,
    SaliencyWeightedLoss,
    refresh_bank,
    refresh_regions,
)
from sgcl_plugin.adapters.lightly import (  # noqa: E402
    SGCLBatch,
    SGCLDataset,
    SGCLItem,
    SGCLLoss,
    SGCLRefresher,
    SGCLTransform,
    feature_map_backbone,
    inter_loss_for,
    nnclr_neighbours,
    per_sample_negative_cosine_similarity,
    per_sample_nnclr,
    per_sample_ntxent,
    refresh,
    sgcl_collate,
)
from sgcl_plugin.sample_images import export_sample_images  # noqa: E402
from tests.conftest import tiny_trunk  # noqa: E402

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
CROP = 32
REGIONS = 2


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("photos")
    export_sample_images(folder, suffix=".jpg")
    return folder


def tiny_backbone() -> nn.Sequential:
    """lightly-style: a Sequential trunk (stride 8) ending in global average pooling."""
    return tiny_trunk(pool=True)


class TinyBYOL(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = tiny_backbone()
        self.projection_head = BYOLProjectionHead(32, 64, 16)
        self.prediction_head = BYOLPredictionHead(16, 64, 16)
        self.backbone_momentum = copy.deepcopy(self.backbone)
        self.projection_head_momentum = copy.deepcopy(self.projection_head)
        deactivate_requires_grad(self.backbone_momentum)
        deactivate_requires_grad(self.projection_head_momentum)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.prediction_head(self.projection_head(self.backbone(x).flatten(1)))

    def forward_momentum(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head_momentum(self.backbone_momentum(x).flatten(1)).detach()


# ------------------------------------------------------------------------------------ imports


def test_core_does_not_import_lightly_and_missing_lightly_is_explained() -> None:
    script = textwrap.dedent(
        """
        import sys
        import sgcl_plugin, sgcl_plugin.adapters
        assert "lightly" not in sys.modules, "importing sgcl_plugin imported lightly"
        sys.modules["lightly"] = None  # as if it were not installed
        try:
            import sgcl_plugin.adapters.lightly
        except ImportError as err:
            print("MESSAGE:", err)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'sgcl_plugin[lightly]'" in out.stdout


# ---------------------------------------------------------------------------------- transform


def test_default_views_are_lightly_byol_views_without_a_second_crop(photos: List[Any]) -> None:
    bank = SaliencyBank(len(photos))
    transform = SGCLTransform(bank, num_regions=REGIONS, size=CROP)
    assert isinstance(transform.view_1_transform, BYOLView1Transform)
    assert isinstance(transform.view_2_transform, BYOLView2Transform)
    sample = transform(photos[0], 0)
    assert sample.views1.shape == sample.views2.shape == (REGIONS, 3, CROP, CROP)
    assert torch.equal(sample.scores, torch.ones(REGIONS))

    # With every augmentation off, lightly's view is the SGCL crop itself (up to 8-bit rounding): the crop is
    # done once, by SGCL, not again by lightly's RandomResizedCrop (scale (1, 1) on a square crop).
    plain = dict(input_size=CROP, min_scale=1.0, cj_prob=0.0, random_gray_scale=0.0, hf_prob=0.0, gaussian_blur=0.0)
    view1 = BYOLView1Transform(normalize=None, **plain)
    view2 = BYOLView2Transform(normalize=None, solarization_prob=0.0, **plain)
    identity = SGCLTransform(bank, REGIONS, CROP, view1, view2)
    reference = SaliencyCropTransform(bank, num_regions=REGIONS, size=CROP, augment=False)
    bank.write(
        torch.tensor([[0.1, 0.2, 0.6, 0.9]]).expand(len(photos), 16, 4).contiguous(),
        torch.tensor([1.0] + [0.0] * 15).expand(len(photos), 16).contiguous(),
        torch.ones(len(photos), dtype=torch.int64),
        torch.zeros(len(photos), dtype=torch.bool),
    )
    for index in (0, 3):
        torch.manual_seed(index)
        ours = identity(photos[index], index)
        torch.manual_seed(index)
        crops = reference(photos[index], index)
        assert torch.equal(ours.boxes1, crops.boxes1) and torch.equal(ours.boxes2, crops.boxes2)
        torch.testing.assert_close(ours.views1, crops.views1, atol=0.5 / 255 + 1e-6, rtol=0)
        torch.testing.assert_close(ours.views2, crops.views2, atol=0.5 / 255 + 1e-6, rtol=0)


def test_solarization_works_on_crops(photos: List[Any]) -> None:
    # lightly's RandomSolarization only takes PIL images (it fails on tensors): crops reach it as PIL.
    view2 = BYOLView2Transform(input_size=CROP, min_scale=1.0, solarization_prob=1.0)
    sample = SGCLTransform(SaliencyBank(len(photos)), REGIONS, CROP, view_2_transform=view2)(photos[1], 1)
    assert sample.views2.shape == (REGIONS, 3, CROP, CROP) and torch.isfinite(sample.views2).all()


def test_view_transform_errors(photos: List[Any]) -> None:
    from torchvision.transforms import v2

    bank = SaliencyBank(len(photos))
    with pytest.raises(ValueError, match="Mismatched crop sizes.*input_size=32"):
        SGCLTransform(bank, size=CROP, view_1_transform=BYOLView1Transform(input_size=64, min_scale=1.0))
    with pytest.raises(ValueError, match="crops again.*min_scale=1.0"):
        SGCLTransform(bank, size=CROP, view_2_transform=BYOLView2Transform(input_size=CROP))
    with pytest.raises(TypeError, match="multi-view"):
        SGCLTransform(bank, size=CROP, view_1_transform=BYOLTransform())
    with pytest.raises(ValueError, match="Mismatched crop sizes.*Resize"):
        SGCLTransform(bank, size=CROP, view_1_transform=v2.Compose([v2.Resize(48), v2.PILToTensor()]))
    with pytest.raises(ValueError, match="size must be an integer"):
        SGCLTransform(bank, size=1)
    wrong = SGCLTransform(bank, size=CROP, view_1_transform=lambda image: torch.zeros(3, 8, 8))
    with pytest.raises(ValueError, match=r"Mismatched crop sizes.*\(3, 8, 8\)"):
        wrong(photos[0], 0)
    pil_out = SGCLTransform(bank, size=CROP, view_1_transform=lambda image: image)
    with pytest.raises(TypeError, match="not a tensor"):
        pil_out(photos[0], 0)


# ------------------------------------------------------------------------------------- losses


def _pairs(n: int = 12, d: int = 16, seed: int = 0) -> List[torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g, requires_grad=True) for _ in range(2)]


def test_negative_cosine_matches_lightly_and_core() -> None:
    a, b = _pairs()
    lightly_loss = NegativeCosineSimilarity()
    ones = torch.ones(a.shape[0])
    scores = torch.rand(a.shape[0], generator=torch.Generator().manual_seed(1))
    criterion = SGCLLoss(lightly_loss, gamma=0.5)
    torch.testing.assert_close(criterion(a, b, ones), lightly_loss(a, b))
    torch.testing.assert_close(SGCLLoss(lightly_loss, gamma=0.0)(a, b, scores), lightly_loss(a, b))
    torch.testing.assert_close(per_sample_negative_cosine_similarity(a, b).mean(), lightly_loss(a, b))
    torch.testing.assert_close(SGCLLoss("negative_cosine_similarity")(a, b, ones), lightly_loss(a, b))
    # gradients equal lightly's too
    ga = torch.autograd.grad(criterion(a, b, ones), a)[0]
    torch.testing.assert_close(ga, torch.autograd.grad(lightly_loss(a, b), a)[0])
    # the core's BYOL loss is 2 - 2 cos: the same weighting, another scale
    core = SaliencyWeightedLoss("byol", gamma=0.5)(a, b, scores)
    torch.testing.assert_close(core, 2 * criterion(a, b, scores) + 2 * scores.sqrt().mean())


def test_ntxent_matches_lightly_and_core() -> None:
    a, b = _pairs()
    ids = torch.arange(a.shape[0]) // REGIONS
    ones = torch.ones(a.shape[0])
    scores = torch.rand(a.shape[0], generator=torch.Generator().manual_seed(2))
    lightly_loss = NTXentLoss(temperature=0.3)
    criterion = SGCLLoss(lightly_loss, gamma=0.5)
    torch.testing.assert_close(criterion(a, b, ones), lightly_loss(a, b))
    torch.testing.assert_close(SGCLLoss(lightly_loss, gamma=0.0)(a, b, scores), lightly_loss(a, b))
    torch.testing.assert_close(per_sample_ntxent(a, b, temperature=0.3).mean(), lightly_loss(a, b))
    torch.testing.assert_close(SGCLLoss("ntxent", temperature=0.3)(a, b, ones), lightly_loss(a, b))
    ga = torch.autograd.grad(criterion(a, b, ones), a)[0]
    torch.testing.assert_close(ga, torch.autograd.grad(lightly_loss(a, b), a)[0])
    # with scores and same-image exclusion it is the core loss
    core = SaliencyWeightedLoss("ntxent", gamma=0.5, temperature=0.3)
    torch.testing.assert_close(criterion(a, b, scores, image_ids=ids), core(a, b, scores, image_ids=ids))
    assert not torch.allclose(criterion(a, b, scores, image_ids=ids), criterion(a, b, scores))


def test_ntxent_memory_bank_matches_lightly() -> None:
    torch.manual_seed(0)
    lightly_loss = NTXentLoss(temperature=0.2, memory_bank_size=(20, 16))
    criterion = SGCLLoss(copy.deepcopy(lightly_loss), gamma=0.5)
    for step in range(3):  # the bank is queried then updated, as lightly does
        a, b = _pairs(n=8, seed=step)
        torch.testing.assert_close(criterion(a, b, torch.ones(8)), lightly_loss(a, b))
        torch.testing.assert_close(criterion.loss.memory_bank.bank, lightly_loss.memory_bank.bank)
    with pytest.raises(ValueError, match="memory bank"):
        criterion(a, b, torch.ones(8), image_ids=torch.arange(8))


def test_nnclr_with_lightly_memory_bank_matches_lightly() -> None:
    torch.manual_seed(0)
    bank_lightly = NNMemoryBankModule(size=(24, 16))
    bank_ours = copy.deepcopy(bank_lightly)
    bank_ours2 = copy.deepcopy(bank_lightly)
    ntxent = NTXentLoss(temperature=0.5)
    criterion = SGCLLoss(NTXentLoss(temperature=0.5), gamma=0.5)
    for step in range(3):
        z0, z1 = _pairs(n=8, seed=10 + step)
        p0, p1 = _pairs(n=8, seed=20 + step)
        nn0 = bank_lightly(z0.detach(), update=False)
        nn1 = bank_lightly(z1.detach(), update=True)
        expected = 0.5 * (ntxent(nn0, p1) + ntxent(nn1, p0))
        m0, m1 = nnclr_neighbours(bank_ours, z0, z1)
        ours = 0.5 * (criterion(m0, p1, torch.ones(8)) + criterion(m1, p0, torch.ones(8)))
        torch.testing.assert_close(ours, expected)
        torch.testing.assert_close(per_sample_nnclr(z0, p0, z1, p1, bank_ours2).mean(), expected)
        torch.testing.assert_close(bank_ours.bank, bank_lightly.bank)
    with pytest.raises(TypeError, match="NNMemoryBankModule"):
        nnclr_neighbours(torch.randn(4, 16), z0, z1)


def test_loss_errors() -> None:
    a, b = _pairs(n=4)
    with pytest.raises(TypeError, match="BarlowTwinsLoss.*per-sample"):
        SGCLLoss(BarlowTwinsLoss())
    with pytest.raises(ValueError, match="Unknown loss"):
        SGCLLoss("swav")
    with pytest.raises(TypeError, match="only used when the loss is given by name"):
        SGCLLoss(NTXentLoss(), temperature=0.1)
    with pytest.raises(ValueError, match="per-sample losses"):  # a batch mean cannot be weighted per pair
        SGCLLoss(lambda x, y: (x - y).pow(2).mean())(a, b, torch.ones(4))
    custom = SGCLLoss(lambda x, y: (x - y).pow(2).sum(1), gamma=1.0)
    torch.testing.assert_close(custom(a, b, torch.full((4,), 0.5)), 0.5 * (a - b).pow(2).sum(1).mean())
    with pytest.raises(ValueError, match="scores"):
        SGCLLoss(NegativeCosineSimilarity())(a, b, torch.ones(3))
    with pytest.raises(ValueError, match="same shape"):
        per_sample_ntxent(a, b[:3])


# ------------------------------------------------------------------------------------ dataset


def test_end_to_end_byol_steps_on_a_lightly_dataset(photo_dir: Path) -> None:
    torch.manual_seed(0)
    lightly_data = LightlyDataset(str(photo_dir))
    bank = SaliencyBank(len(lightly_data))
    dataset = SGCLDataset(lightly_data, SGCLTransform(bank, num_regions=REGIONS, size=CROP))
    loader = DataLoader(dataset, batch_size=3, shuffle=True, drop_last=True, collate_fn=sgcl_collate)
    model = TinyBYOL()
    criterion = SGCLLoss(NegativeCosineSimilarity())
    inter = inter_loss_for(model, queue_size=32, num_neighbors=2)
    generator = SaliencyGenerator(min_area=1)
    refresher = SGCLRefresher(bank, dataset, every_n_epochs=1, generator=generator, saliency_size=96, progress=False)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    before = [p.detach().clone() for p in model.backbone.parameters()]
    names = {p.name for p in photo_dir.iterdir()}
    losses = []
    for epoch in range(2):
        assert refresher.maybe_refresh(epoch, model.backbone) == (epoch == 1)
        for batch in loader:
            assert isinstance(batch, SGCLBatch)
            x0, x1 = batch[0]
            assert x0.shape == x1.shape == (3 * REGIONS, 3, CROP, CROP)
            assert batch.scores.shape == batch.index.shape == (3 * REGIONS,)
            assert set(batch[2]) <= names and batch[2][0] == batch[2][1]  # one filename per row
            assert torch.equal(batch.target, torch.zeros(3 * REGIONS, dtype=torch.int64))
            update_momentum(model.backbone, model.backbone_momentum, m=0.99)
            update_momentum(model.projection_head, model.projection_head_momentum, m=0.99)
            p0, p1 = model(x0), model(x1)
            z0, z1 = model.forward_momentum(x0), model.forward_momentum(x1)
            loss = 0.5 * (criterion(p0, z1, batch.scores) + criterion(p1, z0, batch.scores))
            loss = loss + 0.25 * (inter(p0, batch.scores) + inter(p1, batch.scores))
            inter.enqueue(torch.cat([z0, z1]))
            loss.backward()
            optimizer.step()
            optimizer.zero_grad()
            losses.append(loss.item())
    assert len(losses) == 4 and all(torch.isfinite(torch.tensor(losses)))
    assert bank.refreshes == 1 and (bank.counts > 0).all()
    assert any(not torch.equal(p, q) for p, q in zip(before, model.backbone.parameters()))
    # checkpoint round trip of the refresher (bank + last epoch)
    state = refresher.state_dict()
    other = SGCLRefresher(SaliencyBank(len(lightly_data)), lightly_data, every_n_epochs=1)
    other.load_state_dict(state)
    assert other.last_epoch == 1 and not other.due(1) and other.due(2)
    assert torch.equal(other.bank.boxes, bank.boxes)


def test_persistent_workers_see_a_bank_refresh(photos: List[Any]) -> None:
    bank = SaliencyBank(len(photos))
    dataset = SGCLDataset(photos, SGCLTransform(bank, num_regions=REGIONS, size=CROP))  # a plain image list
    loader = DataLoader(
        dataset, batch_size=len(photos), num_workers=2, persistent_workers=True, collate_fn=sgcl_collate
    )
    first = next(iter(loader))
    assert torch.equal(first.scores, torch.ones(len(photos) * REGIONS))
    assert torch.equal(first.index, torch.arange(len(photos)).repeat_interleave(REGIONS))
    assert first.filename[:2] == ["0", "0"] and torch.equal(first.target, torch.full((len(photos) * REGIONS,), -1))
    # a refresh in the main process, as SGCLRefresher does it (in place): one region per image, score (i + 1) / 10
    n, R = len(photos), bank.max_regions
    boxes = torch.zeros(n, R, 4)
    boxes[:, 0] = torch.tensor([0.2, 0.2, 0.8, 0.8])
    scores = torch.zeros(n, R)
    scores[:, 0] = (torch.arange(n) + 1) / 10
    bank.write(boxes, scores, torch.ones(n, dtype=torch.int64), torch.zeros(n, dtype=torch.bool))
    second = next(iter(loader))  # the same two worker processes
    torch.testing.assert_close(second.scores, ((second.index + 1) / 10).float())


class _Pairs(torch.utils.data.Dataset):
    def __init__(self, images: List[Any]) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    def __getitem__(self, i: int) -> Any:
        return self.images[i], 10 + i


class _Stream(IterableDataset):
    def __iter__(self):  # noqa: ANN204
        yield from ()


def test_indexed_dataset_formats_and_errors(photos: List[Any], photo_dir: Path) -> None:
    bank = SaliencyBank(len(photos))
    transform = SGCLTransform(bank, num_regions=REGIONS, size=CROP)
    item = SGCLDataset(_Pairs(photos), transform)[2]  # torchvision-style (image, target)
    assert isinstance(item, SGCLItem) and item.target == 12 and item.filename == "2" and item.index == 2
    (v1, v2), target, filename = item[:3]  # lightly's (views, target, filename) positions
    assert v1.shape == v2.shape == (REGIONS, 3, CROP, CROP)
    dicts = SGCLDataset([{"image": p, "label": 7} for p in photos], transform)
    assert dicts[0].target == 7
    # forgetting collate_fn=sgcl_collate is harmless: torch's default collate gives the same batch
    import random

    import numpy as np

    def seeded_batch(**kwargs: Any) -> Any:  # lightly's view transforms draw from torch, numpy and random
        torch.manual_seed(0), np.random.seed(0), random.seed(0)
        return next(iter(DataLoader(SGCLDataset(photos, transform), batch_size=2, **kwargs)))

    default, ours = seeded_batch(), seeded_batch(collate_fn=sgcl_collate)
    assert isinstance(default, SGCLBatch) and default.views[0].shape == (2 * REGIONS, 3, CROP, CROP)
    for name in ("scores", "index", "target"):
        torch.testing.assert_close(getattr(default, name), getattr(ours, name))
    torch.testing.assert_close(default.views[1], ours.views[1])
    assert default.filename == ours.filename == ["0", "0", "1", "1"]
    with pytest.raises(TypeError, match="map-style"):
        SGCLDataset(_Stream(), transform)
    with pytest.raises(TypeError, match="map-style"):
        SGCLDataset(iter(photos), transform)
    with pytest.raises(ValueError, match="bank holds 7 images but the dataset has 3"):
        SGCLDataset(photos[:3], transform)
    with pytest.raises(TypeError, match="SaliencyCropTransform"):
        SGCLDataset(photos, BYOLTransform())
    with pytest.raises(ValueError, match="transform=None"):
        SGCLDataset(LightlyDataset(str(photo_dir), transform=BYOLTransform()), transform)
    views_already = SGCLDataset([([p, p], 0) for p in photos], transform)
    with pytest.raises(ValueError, match="already holds 2 views"):
        views_already[0]


# ------------------------------------------------------------------------------------ refresh


def test_refresh_and_model_errors(photos: List[Any]) -> None:
    bank = SaliencyBank(len(photos))
    dataset = SGCLDataset(photos, SGCLTransform(bank, num_regions=REGIONS, size=CROP))
    backbone = tiny_backbone()
    with pytest.raises(ValueError, match="before the bank exists"):
        refresh(backbone, dataset, None)
    with pytest.raises(ValueError, match="before the bank exists"):
        SGCLRefresher(None, photos)
    with pytest.raises(ValueError, match="dataset has 3 images but the bank holds 7"):
        refresh(backbone, photos[:3], bank)
    with pytest.raises(ValueError, match="not the one the dataset's SGCLTransform reads"):
        refresh(backbone, dataset, SaliencyBank(len(photos)))
    with pytest.raises(ValueError, match="not the one the dataset's SGCLTransform reads.*bank=dataset.bank"):
        refresh_bank(SaliencyGenerator(), feature_map_backbone(backbone), dataset, SaliencyBank(len(photos)))
    # lightly's names are the core driver, which needs no lightly
    assert isinstance(SGCLRefresher(bank, dataset), SaliencyRefresher) and refresh is refresh_regions
    with pytest.raises(ValueError, match="every_n_epochs"):
        SGCLRefresher(bank, dataset, every_n_epochs=0)
    # the lightly-style backbone's global pooling is skipped: feature maps of 64 / 8 = 8 x 8 cells
    feats = feature_map_backbone(backbone)(torch.randn(2, 3, 64, 64))
    assert feats.shape == (2, 32, 8, 8)
    assert feature_map_backbone(TinyBYOL())(torch.randn(1, 3, 64, 64)).shape == (1, 32, 8, 8)
    import torchvision

    with pytest.raises(ValueError, match=r"returned \(\d+, 10\).*not feature maps"):  # a head after the pooling
        refresh(
            nn.Sequential(tiny_backbone(), nn.Flatten(), nn.Linear(32, 10)),
            dataset,
            bank,
            batch_size=2,
            saliency_size=64,
        )
    # a whole torchvision ResNet (classifier included) is read up to its last feature map
    refresh(torchvision.models.resnet18(num_classes=10), dataset, bank, saliency_size=64, progress=False)
    assert bank.refreshes == 1 and bank.stats()["images_with_regions"] == len(photos)
    refresh(TinyBYOL(), dataset, bank, generator=SaliencyGenerator(min_area=1), saliency_size=64, progress=False)
    assert bank.refreshes == 2

    class SimCLR(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = tiny_backbone()
            self.projection_head = SimCLRProjectionHead(32, 64, 24)

    with pytest.raises(AttributeError, match="no prediction_head.*head='projection_head'"):
        inter_loss_for(SimCLR())
    assert inter_loss_for(SimCLR(), head="projection_head").dim == 24
    assert inter_loss_for(TinyBYOL()).dim == 16


# ----------------------------------------------------------------------------------- examples


@pytest.mark.parametrize("name", ["lightly_byol", "lightly_simclr"])
def test_example_smoke(name: str, capsys: pytest.CaptureFixture[str]) -> None:
    sys.path.insert(0, str(EXAMPLES))
    try:
        module = __import__(name)
    finally:
        sys.path.remove(str(EXAMPLES))
    result = module.main(["--smoke"])
    assert len(result["losses"]) == 2 and all(torch.isfinite(torch.tensor(result["losses"])))
    assert result["refreshes"] == 1 and (result["bank"].counts > 0).all()
    printed = capsys.readouterr().out
    assert "epoch: 00, loss:" in printed and "epoch: 01, loss:" in printed


def test_refresh_regions_mode_and_feature_stride_on_lightlys_pooled_resnet(photos: List[Any]) -> None:
    """lightly's usual backbone (a torchvision ResNet without its fc, ending in global pooling): with
    feature_stride=16 the refresh reads layer3 (an 8 x 8 grid at 128 px) before the pooling."""
    import torchvision

    bank = SaliencyBank(len(photos))
    dataset = SGCLDataset(photos, SGCLTransform(bank, num_regions=REGIONS, size=CROP))
    resnet = torchvision.models.resnet18()
    backbone = nn.Sequential(*list(resnet.children())[:-1])
    refresh(backbone, dataset, bank, feature_stride=16, saliency_size=128, batch_size=4, progress=False)
    assert bank.refreshes == 1 and (bank.counts > 0).all()
    boxes = bank.boxes[bank.scores > 0]
    torch.testing.assert_close(boxes * 8, (boxes * 8).round())
    refresher = SGCLRefresher(bank, dataset, every_n_epochs=1, regions="paper", saliency_size=64, progress=False)
    assert refresher.generator.regions == "paper"
    with pytest.raises(ValueError, match="either a generator or regions"):
        SGCLRefresher(bank, dataset, generator=SaliencyGenerator(), regions="paper")
    with pytest.raises(ValueError, match="feature_stride=None"):
        refresh(tiny_backbone(), dataset, bank, feature_stride=16, saliency_size=64, progress=False)
