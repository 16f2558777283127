"""solo-learn adapter: data wrapper, batch format and errors; real solo training steps where solo is installed.

The tests that need solo-learn (its ``main`` branch, installed from a clone: PyPI has only the 2021
release) skip with a reason when ``solo`` is not importable; see docs/adapters/solo.md.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Dict, List, Optional

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from sgcl_plugin import InterImageLoss, SaliencyBank, SaliencyCropTransform, SaliencyWeightedLoss
from sgcl_plugin.adapters import solo as adapter
from sgcl_plugin.adapters.solo import SGCLDataset, unpack_region_batch
from sgcl_plugin.features import feature_maps
from tests.conftest import quiet_trainer_options

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),
    pytest.mark.filterwarnings("ignore:The '.*_dataloader' does not have many workers"),
    pytest.mark.filterwarnings("ignore:.*pin_memory.*"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning"),
    pytest.mark.filterwarnings("ignore::FutureWarning"),
    pytest.mark.filterwarnings("ignore:You defined a `validation_step` but have no `val_dataloader`"),
    pytest.mark.filterwarnings("ignore:Using scheduler_interval"),
]

N_IMAGES = 8
BATCH = 4  # 2 steps per epoch
REGIONS = 2  # t region pairs per image: B * t = 8 pairs per step
CROP = 32
IMAGE = 48


def identity(view: torch.Tensor) -> torch.Tensor:
    return view


def image_scores(i: int) -> List[float]:
    """Two regions per image, scores that identify the image: (i + 1) / 10 and (i + 1) / 100."""
    return [(i + 1) / 10, (i + 1) / 100]


def prefilled_bank(n: int = N_IMAGES) -> SaliencyBank:
    bank = SaliencyBank(n, max_regions=4)
    boxes = torch.zeros(n, 4, 4)
    scores = torch.zeros(n, 4)
    for i in range(n):
        boxes[i, 0] = torch.tensor([0.0, 0.0, 0.6, 0.6])
        boxes[i, 1] = torch.tensor([0.4, 0.4, 1.0, 1.0])
        scores[i, :2] = torch.tensor(image_scores(i))
    bank.write(boxes, scores, torch.full((n,), 2), torch.zeros(n, dtype=torch.bool))
    return bank


class ConstantImages(Dataset):
    """Image i is one flat colour, (i + 1) / 10 in every channel; label i % 2."""

    def __len__(self) -> int:
        return N_IMAGES

    def __getitem__(self, i: int) -> Any:
        return torch.full((3, IMAGE, IMAGE), (i + 1) / 10), i % 2


def write_image_folder(root: Path, n: int = N_IMAGES) -> None:
    """A tiny ImageFolder (two classes) of bright squares on textured backgrounds."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for i in range(n):
        folder = root / f"class{i % 2}"
        folder.mkdir(parents=True, exist_ok=True)
        img = (rng.random((IMAGE, IMAGE, 3)) * 80).astype(np.uint8)
        y, x = rng.integers(4, IMAGE // 2, 2)
        img[y : y + 16, x : x + 16] = rng.integers(150, 256, 3)
        Image.fromarray(img).save(folder / f"{i}.png")


# ------------------------------------------------------------------------ without solo-learn


def test_importing_sgcl_plugin_never_imports_solo() -> None:
    code = "import sys, sgcl_plugin, sgcl_plugin.adapters.solo; print('solo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_register_without_solo_says_how_to_install(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "solo", None)
    monkeypatch.setitem(sys.modules, "solo.methods", None)
    with pytest.raises(ImportError, match=r"(?s)^solo-learn is not installed.*main branch.*examples/solo/install\.sh"):
        adapter.register()
    with pytest.raises(ImportError, match="not on PyPI"):
        adapter.SGCLBYOL  # noqa: B018 - building the classes imports solo


@pytest.mark.parametrize(
    "failure, expected",
    [
        ("raise ModuleNotFoundError(\"No module named 'pkg_resources'\", name='pkg_resources')",
         r"^solo-learn is installed \(.*broken.solo\), but importing it failed: ModuleNotFoundError: No module "
         r"named 'pkg_resources'\. lightning 2\.1\.2 .* pip install 'setuptools>=77\.0\.3,<81'"),
        ("raise ImportError('cannot import name LightningModule')",
         r"^solo-learn is installed \(.*\), but importing it failed: ImportError: cannot import name "
         r"LightningModule\. Fix that dependency"),
    ],
)  # fmt: skip
def test_a_broken_solo_install_names_the_real_cause_first(tmp_path: Path, failure: str, expected: str) -> None:
    """solo-learn installed, one of its imports failing (lightning 2.1.2 without pkg_resources, as
    setuptools >= 81 leaves it): the message starts with that cause, not with "solo-learn is missing"."""
    pkg = tmp_path / "broken" / "solo"
    (pkg / "methods").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "methods" / "__init__.py").write_text(failure + "\n")
    code = (
        "import sys\nfrom sgcl_plugin.adapters.solo import register\n"
        "try:\n    register()\nexcept ImportError as err:\n    print(err)\n"
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(tmp_path / "broken"), str(Path(__file__).parents[1])])}
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, check=True)
    assert re.search(expected, out.stdout.strip(), flags=re.S), out.stdout


def test_old_solo_learn_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    """PyPI's solo-learn 1.0.2 builds methods from keyword arguments, not a hydra cfg."""

    class OldBaseMethod:
        def __init__(self, backbone: str, num_classes: int, **kwargs: Any) -> None: ...

    old = types.ModuleType("solo.methods")
    old.BaseMethod, old.METHODS = OldBaseMethod, {}  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "solo.methods", old)
    with pytest.raises(ImportError, match="too old"):
        adapter.register()


def make_crop_dataset(num_regions: int = REGIONS) -> SGCLDataset:
    transform = SaliencyCropTransform(
        prefilled_bank(), num_regions=num_regions, size=CROP, view_transforms=(identity, identity)
    )
    return SGCLDataset(ConstantImages(), transform)


def test_dataset_yields_solo_items_with_region_scores() -> None:
    data = make_crop_dataset(num_regions=3)
    index, views, target, scores = data[5]
    assert index == 5 and target == 1 and len(views) == 2
    assert views[0].shape == views[1].shape == (3, 3, CROP, CROP)
    assert set(scores.tolist()) <= set(torch.tensor(image_scores(5)).tolist())
    # solo's dataset_with_index items (index, image, target) are recognised: the index is dropped
    solo_style = [(i, *ConstantImages()[i]) for i in range(N_IMAGES)]
    index, views, target, _ = SGCLDataset(solo_style, data.transform)[3]
    assert index == 3 and target == 1 and torch.allclose(views[0], torch.full_like(views[0], 0.4))
    assert torch.equal(data.images[2], ConstantImages()[2][0])


def test_collated_batch_flattens_region_pairs_in_step() -> None:
    """Pair k of the flat batch: view, score and image id all come from the same image."""
    batch = next(iter(DataLoader(make_crop_dataset(), batch_size=BATCH, shuffle=True)))
    rb = unpack_region_batch(batch, crop_size=CROP)
    n = BATCH * REGIONS
    assert rb.views[0].shape == (n, 3, CROP, CROP) and rb.scores.shape == rb.image_ids.shape == (n,)
    assert torch.equal(rb.image_ids, batch[0].repeat_interleave(REGIONS))
    assert torch.equal(rb.targets, rb.image_ids % 2)
    for k in range(n):
        i = int(rb.image_ids[k])
        assert torch.allclose(rb.views[0][k], torch.full_like(rb.views[0][k], (i + 1) / 10))
        assert torch.allclose(rb.views[1][k], torch.full_like(rb.views[1][k], (i + 1) / 10))
        assert min(abs(float(rb.scores[k]) - s) for s in image_scores(i)) < 1e-6


def test_dataset_fallback_and_errors() -> None:
    data = SGCLDataset(ConstantImages(), fallback_transform=lambda image: [image, image])
    index, views, target = data[1]  # solo's own format for solo's own methods
    assert index == 1 and target == 1 and len(views) == 2
    with pytest.raises(RuntimeError, match="no SaliencyCropTransform yet"):
        SGCLDataset(ConstantImages())[0]
    with pytest.raises(ValueError, match="bank holds 3 images"):
        SGCLDataset(ConstantImages(), SaliencyCropTransform(SaliencyBank(3)))
    with pytest.raises(TypeError, match="map-style"):
        SGCLDataset(iter([]))


def test_batch_errors_are_explicit() -> None:
    idx, v, y, s = torch.arange(2), torch.zeros(2, REGIONS, 3, CROP, CROP), torch.zeros(2), torch.ones(2, REGIONS)
    with pytest.raises(ValueError, match="without SGCL region scores"):
        unpack_region_batch([idx, [v, v], y])  # solo's plain dataset
    with pytest.raises(ValueError, match="without dataset indexes"):
        unpack_region_batch([[v, v], y])
    with pytest.raises(ValueError, match="exactly two views"):
        unpack_region_batch([idx, [v, v, v], y, s])
    with pytest.raises(ValueError, match="one shape"):
        unpack_region_batch([idx, [v, torch.zeros(2, REGIONS, 3, 16, 16)], y, s])
    with pytest.raises(ValueError, match="are 32x32 px but 96x96 are expected"):
        unpack_region_batch([idx, [v, v], y, s], crop_size=96)
    with pytest.raises(ValueError, match="scores must be"):
        unpack_region_batch([idx, [v, v], y, torch.ones(2)])
    with pytest.raises(ValueError, match="no dataset indexes"):
        unpack_region_batch([torch.rand(2), [v, v], y, s])


def test_feature_maps_of_a_solo_resnet() -> None:
    """solo strips the fc layer: the map's average pool is exactly what the backbone returns."""
    from torchvision.models import resnet18

    backbone = resnet18()
    backbone.fc = torch.nn.Identity()
    backbone.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        maps = feature_maps(backbone)(x)
        assert maps.shape == (2, 512, 2, 2)
        torch.testing.assert_close(maps.mean(dim=(2, 3)), backbone(x))


def test_feature_maps_of_a_timm_resnet_and_vit() -> None:
    """timm's ResNet has conv1 / bn1 / layer1-4 like torchvision's but act1 for relu: read through forward_features."""
    timm = pytest.importorskip("timm")
    x = torch.randn(2, 3, 64, 64)
    resnet = timm.create_model("resnet18", pretrained=False, num_classes=0).eval()
    with torch.no_grad():
        maps = feature_maps(resnet)(x)
        assert maps.shape == (2, 512, 2, 2)
        torch.testing.assert_close(maps.mean(dim=(2, 3)), resnet(x))
        vit = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, img_size=64).eval()
        tokens = vit.forward_features(x)
        grid = feature_maps(vit)(x)
        assert grid.shape == (2, 192, 4, 4)  # 64 / 16 patches a side, the class token dropped
        torch.testing.assert_close(grid.flatten(2).transpose(1, 2), tokens[:, vit.num_prefix_tokens :])


def augmentation(crop_size: int, num_crops: int = 1) -> Dict[str, Any]:
    return {
        "rrc": {"enabled": True, "crop_min_scale": 0.2, "crop_max_scale": 1.0},
        "color_jitter": {"prob": 0.8, "brightness": 0.4, "contrast": 0.4, "saturation": 0.2, "hue": 0.1},
        "grayscale": {"prob": 0.2},
        "gaussian_blur": {"prob": 0.5},
        "solarization": {"prob": 0.1},
        "equalization": {"prob": 0.0},
        "horizontal_flip": {"prob": 0.5},
        "crop_size": crop_size,
        "num_crops": num_crops,
    }


def test_config_makes_region_crops_the_large_crops() -> None:
    OmegaConf = pytest.importorskip("omegaconf").OmegaConf
    cfg = adapter.add_sgcl_cfg(OmegaConf.create({"augmentations": [augmentation(CROP), augmentation(CROP)]}))
    assert (cfg.data.num_large_crops, cfg.data.num_small_crops) == (2, 0)
    assert cfg.sgcl.crop_size == CROP and cfg.sgcl.views == "solo" and list(cfg.sgcl.scale) == [0.2, 1.0]
    assert adapter.add_sgcl_cfg(OmegaConf.create({})).sgcl.crop_size == 96
    with pytest.raises(ValueError, match="silently lose their momentum targets"):
        adapter.add_sgcl_cfg(OmegaConf.create({"augmentations": [augmentation(96), augmentation(64)]}))
    with pytest.raises(ValueError, match="exactly two views"):
        adapter.add_sgcl_cfg(OmegaConf.create({"augmentations": [augmentation(96, num_crops=2), augmentation(96)]}))
    with pytest.raises(ValueError, match="sgcl.crop_size = 64"):
        adapter.add_sgcl_cfg(OmegaConf.create({"augmentations": [augmentation(96, 2)], "sgcl": {"crop_size": 64}}))
    with pytest.raises(ValueError, match=r"Unknown sgcl.inter key\(s\) \['neighbours'\]"):
        adapter.add_sgcl_cfg(OmegaConf.create({"sgcl": {"inter": {"neighbours": 3}}}))
    with pytest.raises(ValueError, match="multicrop"):
        adapter.add_sgcl_cfg(OmegaConf.create({"data": {"num_large_crops": 2, "num_small_crops": 4}}))


def test_config_regions_mode_and_feature_stride() -> None:
    OmegaConf = pytest.importorskip("omegaconf").OmegaConf
    cfg = adapter.add_sgcl_cfg(OmegaConf.create({}))
    assert cfg.sgcl.regions == "hierarchy" and cfg.sgcl.refresh.feature_stride == "auto"
    cfg = adapter.add_sgcl_cfg(OmegaConf.create({"sgcl": {"regions": "paper", "refresh": {"feature_stride": 16}}}))
    assert cfg.sgcl.regions == "paper" and cfg.sgcl.refresh.feature_stride == 16
    cfg = adapter.add_sgcl_cfg(OmegaConf.create({"sgcl": {"refresh": {"feature_stride": [16, 32]}}}))
    assert list(cfg.sgcl.refresh.feature_stride) == [16, 32]
    with pytest.raises(ValueError, match="sgcl.regions must be one of paper, objects, hierarchy"):
        adapter.add_sgcl_cfg(OmegaConf.create({"sgcl": {"regions": "boxes"}}))
    for bad in (0, [32, 16], "sixteen"):
        with pytest.raises(ValueError, match="feature_stride"):
            adapter.add_sgcl_cfg(OmegaConf.create({"sgcl": {"refresh": {"feature_stride": bad}}}))
    for name in ("sgcl_byol", "sgcl_simclr", "sgcl_nnclr"):  # the shipped configs name both keys
        shipped = OmegaConf.load(Path(__file__).resolve().parents[1] / "examples" / "solo" / f"{name}.yaml")
        assert shipped.sgcl.regions == "hierarchy" and shipped.sgcl.refresh.feature_stride == "auto"


# --------------------------------------------------------------------------- with solo-learn


@pytest.fixture(scope="module")
def solo() -> Any:
    pytest.importorskip(
        "solo.methods", reason="solo-learn main is not installed (it is not on PyPI): see docs/adapters/solo.md"
    )
    pytest.importorskip("lightning.pytorch")
    return adapter.register()


def solo_cfg(method: str, sgcl: Optional[Dict[str, Any]] = None, augmentations: Optional[List[Any]] = None) -> Any:
    from omegaconf import OmegaConf

    cfg = {
        "name": "test",
        "method": method,
        "backbone": {"name": "resnet18"},
        "method_kwargs": {
            "proj_hidden_dim": 32,
            "proj_output_dim": 16,
            "pred_hidden_dim": 32,
            "temperature": 0.2,
            "queue_size": 16,
        },
        "momentum": {"base_tau": 0.99, "final_tau": 1.0},
        "data": {"dataset": "custom", "num_classes": 2},
        "optimizer": {"name": "sgd", "batch_size": BATCH, "lr": 0.05, "weight_decay": 1e-5, "classifier_lr": 0.1},
        "scheduler": {"name": "none"},
        "max_epochs": 2,
        "sgcl": {
            "num_regions": REGIONS,
            "crop_size": CROP,
            "inter": {"enabled": True, "queue_size": 16, "num_neighbors": 2},
            "refresh": {"enabled": False, "saliency_size": 64, "progress": False},
            **(sgcl or {}),
        },
    }
    if augmentations is not None:
        cfg["augmentations"] = augmentations
    return OmegaConf.create(cfg)


def fit(model: Any, loader: DataLoader, **kwargs: Any) -> List[Dict[str, Any]]:
    """Trains with a real Lightning Trainer, recording the inputs and outputs of every SGCL loss call."""
    from lightning.pytorch import Trainer

    records: List[Dict[str, Any]] = []
    compute = model.sgcl_losses

    def spy(out: Dict[str, Any], batch: Any) -> Dict[str, torch.Tensor]:
        record = {
            "epoch": model.current_epoch,
            "out": out,
            "batch": batch,
            "inter_state": {k: v.clone() for k, v in model.sgcl_inter.state_dict().items()},
            "queue": model.queue.clone() if hasattr(model, "queue") else None,
        }
        record["losses"] = compute(out, batch)
        records.append(record)
        return record["losses"]

    model.sgcl_losses = spy
    trainer = Trainer(**quiet_trainer_options(**kwargs))
    trainer.fit(model, loader)
    return records


def inter_reference(record: Dict[str, Any], dim: int, preds: List[torch.Tensor]) -> torch.Tensor:
    inter = InterImageLoss(dim, queue_size=16, num_neighbors=2, gamma=0.5)
    inter.load_state_dict(record["inter_state"])
    return sum(inter(p.float(), record["batch"].scores) for p in preds)  # type: ignore[return-value]


def test_register_is_idempotent(solo: Dict[str, type]) -> None:
    from solo.methods import METHODS

    assert adapter.register() == solo and set(solo) == {"sgcl_byol", "sgcl_simclr", "sgcl_nnclr"}
    assert all(METHODS[name] is cls for name, cls in solo.items())
    assert adapter.SGCLBYOL is solo["sgcl_byol"] and issubclass(solo["sgcl_byol"], METHODS["byol"])
    saved = METHODS["sgcl_byol"]
    try:
        METHODS["sgcl_byol"] = METHODS["byol"]
        with pytest.raises(ValueError, match="already"):
            adapter.register()
        with pytest.warns(UserWarning, match="Replacing"):
            adapter.register(overwrite=True)
    finally:
        METHODS["sgcl_byol"] = saved


def test_sgcl_byol_trains_with_weighted_loss_and_refreshes(solo: Dict[str, type], tmp_path: Path) -> None:
    """solo's ImageFolder through prepare_saliency_datasets (the launcher's path), solo's views and dataloader."""
    from solo.data.pretrain_dataloader import prepare_dataloader
    from solo.losses.byol import byol_loss_func

    write_image_folder(tmp_path)
    cfg = solo_cfg(
        "sgcl_byol",
        {"max_regions": 4, "refresh": {"enabled": True, "every_n_epochs": 1, "saliency_size": 64, "progress": False}},
        augmentations=[augmentation(CROP), augmentation(CROP)],
    )
    model = solo["sgcl_byol"](cfg)
    assert (model.num_large_crops, model.num_small_crops) == (2, 0)
    # with the method's config the crop transform and its bank are there before the workers start
    data = adapter.prepare_saliency_datasets("custom", None, train_data_path=tmp_path, cfg=model.cfg)
    assert data.transform is not None and data.transform.size == CROP
    data.bank.load_state_dict(prefilled_bank().state_dict())  # region scores known from the first step
    records = fit(model, prepare_dataloader(data, batch_size=BATCH, num_workers=2), max_epochs=2)

    assert len(records) == 4 and model.sgcl_bank.refreshes == 1  # refreshed at epoch 1 with solo's resnet18
    assert model.sgcl_dataset is data and data.transform.bank is model.sgcl_bank
    criterion = SaliencyWeightedLoss("byol", gamma=0.5)
    for r in records:
        rb, out, losses = r["batch"], r["out"], r["losses"]
        assert len(out["momentum_z"]) == 2  # both region views are large crops: momentum targets for both
        assert rb.views[0].shape == (BATCH * REGIONS, 3, CROP, CROP)
        if r["epoch"] == 0:  # the prefilled bank: every pair carries a score of its own image
            for i, s in zip(rb.image_ids.tolist(), rb.scores.tolist()):
                assert min(abs(s - ref) for ref in image_scores(i)) < 1e-6
        P, Z = out["p"], out["momentum_z"]
        intra = criterion(P[1], Z[0], rb.scores) + criterion(P[0], Z[1], rb.scores)
        torch.testing.assert_close(losses["intra"], intra)
        torch.testing.assert_close(losses["inter"], inter_reference(r, 16, P))
        torch.testing.assert_close(losses["loss"], losses["intra"] + losses["inter"])
        # gamma = 0 gives solo's own BYOL loss on the same tensors
        plain = SaliencyWeightedLoss("byol", gamma=0.0)
        solo_loss = byol_loss_func(P[1], Z[0]) + byol_loss_func(P[0], Z[1])
        torch.testing.assert_close(plain(P[1], Z[0], rb.scores) + plain(P[0], Z[1], rb.scores), solo_loss)
    assert records[-1]["losses"]["inter"].item() > 0  # the queue filled up
    assert model.sgcl_refresh() is model.sgcl_bank and model.sgcl_bank.refreshes == 2  # a manual refresh


def test_sgcl_simclr_weights_ntxent_per_pair(solo: Dict[str, type]) -> None:
    from solo.losses.simclr import simclr_loss_func

    model = solo["sgcl_simclr"](solo_cfg("sgcl_simclr"))
    loader = DataLoader(make_crop_dataset(), batch_size=BATCH, shuffle=True, drop_last=True)
    records = fit(model, loader, max_steps=2)
    assert len(records) == 2
    criterion = SaliencyWeightedLoss("ntxent", gamma=0.5, temperature=0.2)
    for r in records:
        rb, (z1, z2), losses = r["batch"], r["out"]["z"], r["losses"]
        for k, i in enumerate(rb.image_ids.tolist()):  # views, scores and ids stay aligned in the step
            assert torch.allclose(rb.views[0][k], torch.full_like(rb.views[0][k], (i + 1) / 10))
            assert min(abs(float(rb.scores[k]) - s) for s in image_scores(i)) < 1e-6
        torch.testing.assert_close(losses["intra"], criterion(z1, z2, rb.scores, image_ids=rb.image_ids))
        torch.testing.assert_close(losses["inter"], inter_reference(r, 16, [z1, z2]))
        # one pair per image and gamma = 0: solo's SimCLR loss
        n = z1.shape[0]
        plain = SaliencyWeightedLoss("ntxent", gamma=0.0, temperature=0.2)(z1, z2, torch.ones(n))
        torch.testing.assert_close(plain, simclr_loss_func(torch.cat([z1, z2]), torch.arange(n).repeat(2), 0.2))


def test_sgcl_nnclr_uses_solo_queue_neighbours(solo: Dict[str, type]) -> None:
    model = solo["sgcl_nnclr"](solo_cfg("sgcl_nnclr"))
    loader = DataLoader(make_crop_dataset(), batch_size=BATCH, shuffle=True, drop_last=True)
    records = fit(model, loader, max_steps=2)
    criterion = SaliencyWeightedLoss("ntxent", gamma=0.5, temperature=0.2)
    for r in records:
        rb, out, losses = r["batch"], r["out"], r["losses"]
        (z1, z2), (p1, p2) = out["z"], out["p"]
        queue = r["queue"]
        nn1, nn2 = queue[(z1 @ queue.T).argmax(1)], queue[(z2 @ queue.T).argmax(1)]
        ids, s = rb.image_ids, rb.scores
        intra = 0.5 * (criterion(nn1, p2, s, image_ids=ids) + criterion(nn2, p1, s, image_ids=ids))
        torch.testing.assert_close(losses["intra"], intra)
        torch.testing.assert_close(losses["inter"], inter_reference(r, 16, [p1, p2]))
    assert not torch.equal(records[-1]["queue"], model.queue)  # solo's FIFO got the last pairs


def test_solo_errors_are_explicit(solo: Dict[str, type]) -> None:
    with pytest.raises(ValueError, match="silently lose their momentum targets"):
        solo["sgcl_byol"](solo_cfg("sgcl_byol", augmentations=[augmentation(CROP), augmentation(16)]))
    model = solo["sgcl_simclr"](solo_cfg("sgcl_simclr"))
    with pytest.raises(RuntimeError, match="No saliency bank yet"):
        model.sgcl_refresh()
    plain = [(i, [torch.rand(3, CROP, CROP)] * 2, 0) for i in range(N_IMAGES)]  # solo's dataset: no scores
    with pytest.raises(TypeError, match="SGCLDataset"):
        fit(model, DataLoader(plain, batch_size=BATCH), max_steps=1)

    from lightning.pytorch import LightningDataModule, Trainer

    class Data(LightningDataModule):  # loaders from a hook: workers start before the method sees the dataset
        def train_dataloader(self) -> DataLoader:
            return DataLoader(SGCLDataset(ConstantImages()), batch_size=BATCH, num_workers=1)

    model = solo["sgcl_simclr"](solo_cfg("sgcl_simclr"))
    model.sgcl_losses = lambda *args: pytest.fail("trained without region crops")
    with pytest.raises(RuntimeError, match="workers started before"):
        Trainer(accelerator="cpu", max_steps=1, logger=False, enable_progress_bar=False).fit(model, datamodule=Data())

    class NoPredictor(solo["sgcl_simclr"]):  # type: ignore[misc, valid-type]
        _sgcl_requires = ("projector", "predictor")

    with pytest.raises(TypeError, match="no predictor module"):
        NoPredictor(solo_cfg("sgcl_simclr"))
