"""Lightning adapter: a real ``Trainer`` (CPU) refreshing the bank on schedule, checkpoints, resume, errors."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any, Dict, List

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader

L = pytest.importorskip("lightning.pytorch")
pytest.importorskip("skimage.data")

from sgcl_plugin import (  # noqa: E402
    SaliencyBank,
    SaliencyCropDataset,
    SaliencyCropTransform,
    SaliencyGenerator,
    SaliencyWeightedLoss,
)
from sgcl_plugin.adapters.lightning import SGCLRefreshCallback, lightning_callback_bases  # noqa: E402
from tests.conftest import PHOTO_SIZE, quiet_trainer_options, tiny_trunk  # noqa: E402

pytestmark = [
    pytest.mark.filterwarnings("ignore:.*isinstance\\(treespec, LeafSpec\\).*"),  # Lightning vs new torch
    pytest.mark.filterwarnings("ignore:Be aware that when using `ckpt_path`"),
    pytest.mark.filterwarnings("ignore:You're resuming from a checkpoint that ended before the epoch ended"),
    pytest.mark.filterwarnings("ignore:The '.*_dataloader' does not have many workers"),
]

IMAGE = PHOTO_SIZE  # the photos fixture's size (tests/conftest.py)
CROP = 32
REGIONS = 2
SALIENCY = 64  # backbone stride 8 -> an 8 x 8 feature map
BATCH = 4  # 7 photos -> 2 steps per epoch


def make_module_class(pl: Any) -> type:
    class TinySimCLR(pl.LightningModule):
        """SimCLR-ish: a small conv backbone (stride 8) + projector, NT-Xent weighted by region scores."""

        def __init__(self, backbone_name: str = "backbone") -> None:
            super().__init__()
            trunk = tiny_trunk()
            setattr(self, backbone_name, trunk)
            self.trunk = trunk
            self.projector = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))
            self.criterion = SaliencyWeightedLoss("ntxent", temperature=0.2)
            self.train_modes: List[bool] = []

        def training_step(self, batch: Dict[str, torch.Tensor], batch_idx: int) -> torch.Tensor:
            self.train_modes.append(self.trunk.training and self.trunk[1].training)
            t = batch["views1"].shape[1]
            z1 = self.projector(self.trunk(batch["views1"].flatten(0, 1)).mean((2, 3)))
            z2 = self.projector(self.trunk(batch["views2"].flatten(0, 1)).mean((2, 3)))
            ids = batch["index"].repeat_interleave(t)
            loss = self.criterion(z1, z2, batch["scores"].flatten(), image_ids=ids)
            self.log("loss", loss, batch_size=len(batch["index"]))
            return loss

        def configure_optimizers(self) -> torch.optim.Optimizer:
            return torch.optim.SGD(self.parameters(), lr=0.05, momentum=0.9)

    return TinySimCLR


TinySimCLR = make_module_class(L)


def make_loader(photos: List[Any], bank: SaliencyBank) -> DataLoader:
    data = SaliencyCropDataset(photos, SaliencyCropTransform(bank, num_regions=REGIONS, size=CROP))
    return DataLoader(data, batch_size=BATCH, shuffle=True)


def make_callback(bank: Any, dataset: Any, **kwargs: Any) -> SGCLRefreshCallback:
    kwargs.setdefault("every_n_epochs", 1)
    return SGCLRefreshCallback(bank, dataset, saliency_size=SALIENCY, batch_size=4, progress=False, **kwargs)


def make_trainer(pl: Any = L, **kwargs: Any) -> Any:
    return pl.Trainer(**quiet_trainer_options(**kwargs))


class Probe(L.Callback):
    """Records the bank at every epoch start (placed after the refresh callback) and epoch end."""

    def __init__(self, bank: SaliencyBank) -> None:
        self.bank = bank
        self.starts: Dict[int, Dict[str, Any]] = {}
        self.ends: Dict[int, int] = {}

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self.starts[trainer.current_epoch] = self.bank.state_dict()

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        self.ends[trainer.current_epoch] = self.bank.refreshes


def assert_same_bank(a: Dict[str, Any], b: Dict[str, Any]) -> None:
    for key in ("boxes", "scores", "counts", "fallback"):
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
    assert a["refreshes"] == b["refreshes"]


# ------------------------------------------------------------------------------------------- runs


def test_fast_dev_run(photos: List[Any]) -> None:
    torch.manual_seed(0)
    bank = SaliencyBank(len(photos), max_regions=8)
    # a crop dataset is accepted too (unwrapped); the backbone is found by a getter here
    loader = make_loader(photos, bank)
    callback = make_callback(bank, loader.dataset, backbone=lambda module: module.encoder)
    assert isinstance(callback, L.Callback) and all(isinstance(callback, base) for base in lightning_callback_bases())
    trainer = make_trainer(fast_dev_run=True)
    trainer.fit(TinySimCLR(backbone_name="encoder"), loader)
    assert trainer.state.finished and bank.refreshes == 0 and callback.history == []  # never at epoch 0
    # an explicit refresh works outside the schedule, with the module's current backbone
    module = TinySimCLR()
    trainer.fit(module, make_loader(photos, bank))
    make_callback(bank, photos).refresh(trainer, module)
    assert bank.refreshes == 1 and bank.stats()["images_with_regions"] == len(photos)


def test_three_epochs_refresh_at_epochs_1_and_2(photos: List[Any], capsys: pytest.CaptureFixture) -> None:
    torch.manual_seed(0)
    bank = SaliencyBank(len(photos), max_regions=8)
    callback = make_callback(bank, photos)
    probe = Probe(bank)
    module = TinySimCLR()
    trainer = make_trainer(max_epochs=3, callbacks=[callback, probe])
    trainer.fit(module, make_loader(photos, bank))

    assert [h["epoch"] for h in callback.history] == [1.0, 2.0]
    assert callback.last_refresh_epoch == 2
    assert bank.refreshes == 2 and bank.version == 2
    assert probe.ends == {0: 0, 1: 1, 2: 2}  # nothing at epoch 0, one refresh at the start of 1 and of 2
    assert probe.starts[0]["counts"].sum() == 0 and (probe.starts[1]["counts"] > 0).all()
    assert not torch.equal(probe.starts[1]["boxes"], probe.starts[2]["boxes"])  # the backbone moved on
    # the refresh ran in eval mode and gave the module back in train mode
    assert module.train_modes and all(module.train_modes)
    # stats logged through pl_module.log (no logger attached: they land in callback_metrics)
    metrics = trainer.callback_metrics
    assert float(metrics["sgcl/refreshes"]) == 2.0 and float(metrics["sgcl/version"]) == 2.0
    assert float(metrics["sgcl/images_with_regions"]) == len(photos)
    assert 0.0 < float(metrics["sgcl/mean_score"]) <= 1.0
    # one summary line per refresh on the console (the callback's progress bar is off here), the bank's numbers
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("SGCL refresh")]
    assert [line.split(":")[0] for line in lines] == ["SGCL refresh 1 at epoch 1", "SGCL refresh 2 at epoch 2"]
    stats = bank.stats()
    assert f"{stats['regions_per_image']:.2f} regions/image over {len(photos)} images" in lines[1]
    assert f"{int(stats['fallback_images'])} whole-image fallbacks, mean score {stats['mean_score']:.3f}" in lines[1]


def test_reused_callback_and_bf16_true_backbone(photos: List[Any]) -> None:
    """A callback reused by a new Trainer restarts its schedule; a bfloat16 backbone gets bfloat16 input."""
    torch.manual_seed(0)
    bank = SaliencyBank(len(photos), max_regions=8)
    callback = make_callback(bank, photos)
    make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback]).fit(TinySimCLR(), make_loader(photos, bank))
    assert callback.last_refresh_epoch == 1 and bank.refreshes == 1
    module = TinySimCLR()
    trainer = make_trainer(max_epochs=2, limit_train_batches=1, precision="bf16-true", callbacks=[callback])
    trainer.fit(module, make_loader(photos, bank))
    assert next(module.backbone.parameters()).dtype == torch.bfloat16
    assert bank.refreshes == 2 and [h["epoch"] for h in callback.history] == [1.0]
    assert bank.stats()["images_with_regions"] == len(photos)


def test_schedule() -> None:
    bank = SaliencyBank(3)
    every3 = make_callback(bank, [None] * 3, every_n_epochs=3)
    assert [e for e in range(10) if every3.should_refresh(e)] == [3, 6, 9]
    early = make_callback(bank, [None] * 3, every_n_epochs=3, first_epoch=1)
    assert [e for e in range(10) if early.should_refresh(e)] == [1, 4, 7]
    assert not make_callback(bank, [None] * 3, every_n_epochs=1).should_refresh(0)  # never at epoch 0
    with pytest.raises(ValueError, match="epoch must be an integer >= 0"):  # was False: it would never refresh
        make_callback(bank, [None] * 3, every_n_epochs=1).should_refresh(-1)


def test_checkpoint_resume_restores_bank_without_duplicate_refresh(photos: List[Any], tmp_path: Path) -> None:
    from lightning.pytorch.callbacks import ModelCheckpoint

    torch.manual_seed(0)
    bank = SaliencyBank(len(photos), max_regions=8)
    callback = make_callback(bank, photos)
    ckpt = ModelCheckpoint(dirpath=str(tmp_path), filename="{epoch}-{step}", every_n_train_steps=3, save_top_k=-1)
    trainer = make_trainer(max_epochs=2, callbacks=[callback, ckpt], enable_checkpointing=True)
    trainer.fit(TinySimCLR(), make_loader(photos, bank))
    assert bank.refreshes == 1
    path = tmp_path / "epoch=1-step=3.ckpt"  # mid-epoch 1: after its refresh, before its last batch
    assert path.exists(), sorted(os.listdir(tmp_path))
    saved = torch.load(path, map_location="cpu", weights_only=True)["callbacks"]["SaliencyRefreshCallback"]
    assert saved["last_refresh_epoch"] == 1 and saved["bank"]["refreshes"] == 1
    assert_same_bank(saved["bank"], bank.state_dict())  # epoch 1 made no further refresh after step 3

    # Resume into a fresh, empty bank (as a restarted job has): restored in place, no second refresh at 1.
    torch.manual_seed(1)
    bank2 = SaliencyBank(len(photos), max_regions=8)
    pointer = bank2.boxes.data_ptr()
    callback2 = make_callback(bank2, photos)
    probe = Probe(bank2)
    trainer2 = make_trainer(max_epochs=3, callbacks=[callback2, probe])
    loader2 = make_loader(photos, bank2)
    seen_after_load: List[Dict[str, Any]] = []
    original = callback2.load_state_dict

    def load_and_record(state: Dict[str, Any]) -> None:
        original(state)
        seen_after_load.append(bank2.state_dict())

    callback2.load_state_dict = load_and_record  # type: ignore[method-assign]
    trainer2.fit(TinySimCLR(), loader2, ckpt_path=str(path))

    assert len(seen_after_load) == 1
    assert_same_bank(seen_after_load[0], saved["bank"])  # the checkpointed tensors, restored
    assert bank2.boxes.data_ptr() == pointer  # in place: DataLoader workers keep seeing it
    # Lightning 2.6 resumes mid-epoch 1 without calling on_train_epoch_start; older versions call it again
    assert 1 not in probe.starts or probe.starts[1]["refreshes"] == 1
    assert probe.starts[2]["refreshes"] == 2 and bank2.refreshes == 2  # exactly one more refresh, at 2
    assert [h["epoch"] for h in callback2.history] == [1.0, 2.0]
    assert callback2.last_refresh_epoch == 2


class SaveAtEpochStart(L.Callback):
    """Writes a checkpoint inside ``on_train_epoch_start`` (after the refresh callback) of one epoch."""

    def __init__(self, path: Path, epoch: int) -> None:
        self.path, self.epoch = path, epoch

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        if trainer.current_epoch == self.epoch:
            trainer.save_checkpoint(self.path)


def test_resume_at_epoch_start_does_not_refresh_twice(photos: List[Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    path = tmp_path / "epoch1-start.ckpt"
    bank = SaliencyBank(len(photos), max_regions=8)
    callback = make_callback(bank, photos)
    trainer = make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback, SaveAtEpochStart(path, 1)])
    trainer.fit(TinySimCLR(), make_loader(photos, bank))
    saved = torch.load(path, map_location="cpu", weights_only=True)["callbacks"]["SaliencyRefreshCallback"]
    assert saved["bank"]["refreshes"] == 1 and saved["last_refresh_epoch"] == 1

    # Lightning replays on_train_epoch_start of epoch 1 on resume; the refresh already made is kept.
    bank2 = SaliencyBank(len(photos), max_regions=8)
    callback2 = make_callback(bank2, photos)
    probe = Probe(bank2)
    trainer2 = make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback2, probe])
    trainer2.fit(TinySimCLR(), make_loader(photos, bank2), ckpt_path=str(path))
    assert 1 in probe.starts  # the hook did fire again for epoch 1
    assert_same_bank(probe.starts[1], saved["bank"])
    assert bank2.refreshes == 1 and [h["epoch"] for h in callback2.history] == [1.0]


def test_state_round_trip_and_pending_bank(photos: List[Any]) -> None:
    bank = SaliencyBank(4, max_regions=2)
    bank.write(
        torch.tensor([[0.1, 0.2, 0.5, 0.6]]).expand(4, 2, 4).clone(),
        torch.tensor([[1.0, 0.5]]).expand(4, 2).clone(),
        torch.full((4,), 2),
        torch.zeros(4, dtype=torch.bool),
    )
    source = make_callback(bank, photos[:4])
    source.last_refresh_epoch = 5
    state = pickle.loads(pickle.dumps(source.state_dict()))
    # The bank may not exist yet when Lightning restores callbacks: the state waits for it.
    late = make_callback(None, photos[:4])
    late.load_state_dict(state)
    assert late.last_refresh_epoch == 5 and late.state_dict()["bank"] is not None
    target = SaliencyBank(4, max_regions=2)
    late.bank = lambda: target
    assert late.resolve_bank() is target
    assert_same_bank(target.state_dict(), bank.state_dict())
    # A bank of another size is refused with a clear message.
    wrong = make_callback(SaliencyBank(5, max_regions=2), photos[:5])
    with pytest.raises(ValueError, match="cannot restore the checkpointed saliency bank"):
        wrong.load_state_dict(state)
    # Callbacks pickle (ddp_spawn, deepcopy) as their concrete Lightning class.
    clone = pickle.loads(pickle.dumps(source))
    assert type(clone) is type(source) and isinstance(clone, SGCLRefreshCallback)
    assert clone.state_key == "SaliencyRefreshCallback"


# -------------------------------------------------------------------------------------------- DDP

ddp_fork = pytest.mark.skipif(
    not torch.distributed.is_available() or sys.platform != "linux", reason="needs torch.distributed and fork"
)


class SaveBankPerRank(L.Callback):
    """Saves every rank's bank (and refresh count) at the end of training, for the parent to compare."""

    def __init__(self, folder: Path, get_bank: Any) -> None:
        self.folder, self.get_bank = folder, get_bank

    def on_train_end(self, trainer: Any, pl_module: Any) -> None:
        torch.save(self.get_bank().state_dict(), self.folder / f"bank_rank{trainer.global_rank}.pt")


@ddp_fork
def test_ddp_fork_refreshes_a_shared_bank_once_per_epoch(photos: List[Any], tmp_path: Path) -> None:
    """ddp_fork children share the parent's bank: sharded refresh, gathered, written by rank 0 only."""
    torch.manual_seed(0)
    bank = SaliencyBank(len(photos), max_regions=8)
    callback = make_callback(bank, photos)
    # a single-process run first: the forked ranks must not trust what this process learnt about the bank
    make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback]).fit(TinySimCLR(), make_loader(photos, bank))
    assert bank.refreshes == 1 and bank.version == 1
    trainer = make_trainer(
        max_epochs=3, devices=2, strategy="ddp_fork", callbacks=[callback, SaveBankPerRank(tmp_path, lambda: bank)]
    )
    trainer.fit(TinySimCLR(), make_loader(photos, bank))
    # the parent sees the children's refreshes (shared memory), counted once each
    assert bank.refreshes == 3 and bank.version == 3
    assert (bank.counts > 0).all()  # both shards (indices 0, 2, .. and 1, 3, ..) were gathered
    for rank in (0, 1):
        assert_same_bank(torch.load(tmp_path / f"bank_rank{rank}.pt", weights_only=True), bank.state_dict())


class PhotoData(L.LightningDataModule):
    """Builds the bank in ``setup``: every ddp_fork rank then has its own bank."""

    def __init__(self, photos: List[Any]) -> None:
        super().__init__()
        self.photos = photos
        self.bank: Any = None

    def setup(self, stage: str) -> None:
        self.bank = SaliencyBank(len(self.photos), max_regions=8)

    def train_dataloader(self) -> DataLoader:
        return make_loader(self.photos, self.bank)


@ddp_fork
def test_ddp_fork_per_rank_banks_end_identical(photos: List[Any], tmp_path: Path) -> None:
    torch.manual_seed(0)
    data = PhotoData(photos)
    callback = make_callback(lambda: data.bank, photos)  # the bank exists only after setup
    trainer = make_trainer(
        max_epochs=2, devices=2, strategy="ddp_fork", callbacks=[callback, SaveBankPerRank(tmp_path, lambda: data.bank)]
    )
    trainer.fit(TinySimCLR(), datamodule=data)
    assert data.bank is None  # built in the children only
    banks = [torch.load(tmp_path / f"bank_rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    assert banks[0]["refreshes"] == 1 and (banks[0]["counts"] > 0).all()
    assert_same_bank(banks[0], banks[1])  # each rank refreshed half, and both hold the whole result


# ----------------------------------------------------------------------------------------- errors


def test_errors(photos: List[Any]) -> None:
    bank = SaliencyBank(len(photos), max_regions=8)
    with pytest.raises(ValueError, match="every_n_epochs"):
        make_callback(bank, photos, every_n_epochs=0)
    with pytest.raises(ValueError, match="never refreshes at epoch 0"):
        make_callback(bank, photos, first_epoch=0)
    with pytest.raises(ValueError, match="package"):
        make_callback(bank, photos, package="keras")
    with pytest.raises(TypeError, match="SaliencyBank"):
        make_callback(object(), photos)

    # a refresh due while the bank is still None
    callback = make_callback(None, photos)
    with pytest.raises(RuntimeError, match="bank is None"):
        make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback]).fit(
            TinySimCLR(), make_loader(photos, bank)
        )
    # dataset of another size than the bank: refused at fit start, before any training
    module = TinySimCLR()
    with pytest.raises(ValueError, match="dataset has 5 images but the bank holds 7"):
        make_trainer(max_epochs=2, callbacks=[make_callback(bank, photos[:5])]).fit(module, make_loader(photos, bank))
    assert module.train_modes == []
    # a module without `backbone` (and no getter)
    with pytest.raises(RuntimeError, match="has no `backbone` attribute"):
        make_trainer(max_epochs=2, callbacks=[make_callback(bank, photos)]).fit(
            TinySimCLR(backbone_name="encoder"), make_loader(photos, bank)
        )


def test_missing_lightning_names_the_install(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("lightning", "lightning.pytorch", "pytorch_lightning"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(ImportError, match="pip install lightning"):
        SGCLRefreshCallback(SaliencyBank(2), [None, None])


# ------------------------------------------------------------------------------ pytorch_lightning


def test_pytorch_lightning_trainer(photos: List[Any]) -> None:
    pl = pytest.importorskip("pytorch_lightning")
    torch.manual_seed(0)
    bank = SaliencyBank(len(photos), max_regions=8)
    # the default callback subclasses both packages' Callback: either Trainer takes it
    callback = make_callback(bank, photos)
    assert isinstance(callback, pl.Callback) and isinstance(callback, L.Callback)
    trainer = make_trainer(pl, max_epochs=2, limit_train_batches=1, callbacks=[callback])
    trainer.fit(make_module_class(pl)(), make_loader(photos, bank))
    assert bank.refreshes == 1 and [h["epoch"] for h in callback.history] == [1.0]
    # forced to one package, it is that package's Callback only
    only_pl = make_callback(bank, photos, package="pytorch_lightning")
    assert isinstance(only_pl, pl.Callback) and isinstance(only_pl, SGCLRefreshCallback)
    assert not isinstance(only_pl, L.Callback)
    try:
        trainer = make_trainer(fast_dev_run=True, callbacks=[only_pl])
    except (TypeError, ValueError):  # Lightning 2.1 refuses the other package's callback at Trainer init
        return
    with pytest.warns(UserWarning, match="package='lightning'"):  # 2.6 runs it (hooks called by name)
        trainer.fit(TinySimCLR(), make_loader(photos, bank))


def test_import_is_lazy() -> None:
    pytest.importorskip("pytorch_lightning")
    script = textwrap.dedent(
        """
        import sys
        import sgcl_plugin
        import sgcl_plugin.adapters
        import sgcl_plugin.adapters.lightning as adapter
        def loaded():
            return sorted(m for m in sys.modules if m.split(".")[0] in ("lightning", "pytorch_lightning"))
        assert not loaded(), loaded()
        callback = adapter.SGCLRefreshCallback(sgcl_plugin.SaliencyBank(1), [None])
        import lightning.pytorch, pytorch_lightning
        assert isinstance(callback, lightning.pytorch.Callback) and isinstance(callback, pytorch_lightning.Callback)
        print("ok")
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_regions_mode_and_feature_stride(photos: List[Any]) -> None:
    """The callback's one option per choice: region mode of its generator, and the stage it reads."""
    bank = SaliencyBank(len(photos), max_regions=8)
    assert make_callback(bank, photos).generator.regions == "hierarchy"
    assert make_callback(bank, photos).feature_stride == "auto"
    assert make_callback(bank, photos, regions="paper").generator.regions == "paper"
    with pytest.raises(ValueError, match="either a generator or regions"):
        make_callback(bank, photos, generator=SaliencyGenerator(), regions="paper")
    for bad in (0, (16, 8), "16"):
        with pytest.raises(ValueError, match="feature_stride"):
            make_callback(bank, photos, feature_stride=bad)
    # the tiny trunk has stride 8: asking for 16 fails at fit start, before any step, saying how to opt out
    module = TinySimCLR()
    with pytest.raises(ValueError, match="feature_stride=None"):
        make_trainer(max_epochs=2, callbacks=[make_callback(bank, photos, feature_stride=16)]).fit(
            module, make_loader(photos, bank)
        )
    assert module.train_modes == []
    # stride 4: the refresh reads the stride-4 stage, a 16 x 16 grid at 64 px (boxes on 1/16 steps)
    torch.manual_seed(0)
    callback = make_callback(bank, photos, feature_stride=4, regions="paper")
    make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback]).fit(TinySimCLR(), make_loader(photos, bank))
    assert bank.refreshes == 1 and (bank.counts > 0).all()
    boxes = bank.boxes[bank.scores > 0]
    torch.testing.assert_close(boxes * 16, (boxes * 16).round())
    assert not torch.allclose(boxes * 8, (boxes * 8).round())  # not all on the stride-8 grid
    # the default: hierarchy mode on the pair "auto" finds, the stage at half the last map's stride (4) and it (8)
    callback = make_callback(bank, photos)
    make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback]).fit(TinySimCLR(), make_loader(photos, bank))
    assert bank.refreshes == 2 and (bank.counts > 0).all()
    boxes = bank.boxes[bank.scores > 0]
    torch.testing.assert_close(boxes * 16, (boxes * 16).round())  # on the fine (stride-4) grid


def test_lightly_style_pooled_backbone_and_indexed_dataset(photos: List[Any]) -> None:
    """lightly's usual setup: a Sequential backbone ending in global pooling, and lightly's dataset
    items ((image, target, filename) tuples) behind the lightly adapter's SGCLDataset. The
    callback drops the pooling for the refresh, reads the images behind the wrapper, and checks
    both at fit start."""
    pytest.importorskip("lightly")
    from sgcl_plugin.adapters.lightly import SGCLDataset, SGCLTransform

    class Pooled(TinySimCLR):  # type: ignore[valid-type, misc]
        def __init__(self) -> None:
            super().__init__()
            self.backbone = nn.Sequential(*self.trunk, nn.AdaptiveAvgPool2d(1), nn.Flatten(1))

    bank = SaliencyBank(len(photos), max_regions=8)
    lightly_items = [(image, 0, f"{i}.png") for i, image in enumerate(photos)]
    wrapped = SGCLDataset(lightly_items, SGCLTransform(bank, num_regions=REGIONS, size=CROP))
    callback = make_callback(bank, wrapped)
    torch.manual_seed(0)
    make_trainer(max_epochs=2, limit_train_batches=1, callbacks=[callback]).fit(Pooled(), make_loader(photos, bank))
    assert bank.refreshes == 1 and (bank.counts > 0).all()

    # a backbone whose forward pools by itself: nothing to strip, no feature map
    vectors = make_callback(bank, photos, backbone=lambda m: lambda x: m.trunk(x).mean((2, 3)))
    module = TinySimCLR()
    with pytest.raises(ValueError, match="not feature maps"):
        make_trainer(max_epochs=2, callbacks=[vectors]).fit(module, make_loader(photos, bank))
    assert module.train_modes == []  # refused at fit start, before the first step
    with pytest.raises(TypeError, match="cannot read dataset\\[0\\]"):
        make_trainer(max_epochs=2, callbacks=[make_callback(bank, [object()] * len(photos))]).fit(
            TinySimCLR(), make_loader(photos, bank)
        )
