"""The core refresh driver: schedule, refresh, checks, summary and state with a real backbone; a new host (a plain
training loop) that needs nothing else; and that it imports without lightly or Lightning."""

from __future__ import annotations

import pickle
import subprocess
import sys
import textwrap
from typing import Any, List

import numpy as np
import pytest
import torch
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader

from sgcl_plugin import (
    SaliencyBank,
    SaliencyCropDataset,
    SaliencyCropTransform,
    SaliencyGenerator,
    SaliencyRefresher,
    SaliencyWeightedLoss,
    refresh_bank,
    refresh_features,
    refresh_regions,
)
from sgcl_plugin.refresher import MissingBankError, refresh_summary
from tests.conftest import tiny_trunk

N = 6
IMAGE = 64
SALIENCY = 64  # the trunk's stride is 8: an 8 x 8 map, and the hierarchy mode's pair (4, 8)


def square_images(n: int = N) -> List[Image.Image]:
    """A bright square on a noisy dark background, at a different place in each image."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        x = (rng.random((IMAGE, IMAGE, 3)) * 60).astype(np.uint8)
        r, c = 8 + 5 * i % 24, 30 - 4 * i % 20
        x[r : r + 24, c : c + 24] = [230, 200 - 20 * i, 40]
        out.append(Image.fromarray(x))
    return out


def trunk() -> nn.Sequential:
    torch.manual_seed(0)
    return tiny_trunk()


def crop_dataset(bank: SaliencyBank, images: List[Image.Image]) -> SaliencyCropDataset:
    return SaliencyCropDataset(images, SaliencyCropTransform(bank, num_regions=2, size=32))


def test_schedule_refresh_summary_and_state_round_trip() -> None:
    images = square_images()
    bank = SaliencyBank(N, max_regions=8)
    backbone = trunk()
    refresher = SaliencyRefresher(
        bank, crop_dataset(bank, images), every_n_epochs=2, first_epoch=1, saliency_size=SALIENCY, batch_size=4,
        progress=False,
    )  # fmt: skip
    done = [epoch for epoch in range(5) if refresher.maybe_refresh(epoch, backbone)]
    assert done == [1, 3] and bank.refreshes == 2 and refresher.last_epoch == 3
    assert [h["epoch"] for h in refresher.history] == [1.0, 3.0]
    assert (bank.counts > 0).all() and refresher.history[-1]["images_with_regions"] == N
    assert refresher.history[-1]["seconds"] > 0 and refresher.history[-1]["refreshes"] == 2
    line = refresher.summary()
    assert line.startswith("SGCL refresh 2 at epoch 3: ") and f"over {N} images" in line
    assert f"mean score {bank.stats()['mean_score']:.3f}" in line and "pairs showing" not in line

    # what it ran: refresh_bank of the hierarchy generator on refresh_features(backbone, "auto"), as by hand
    by_hand = refresh_bank(
        SaliencyGenerator(), refresh_features(backbone, "auto", "hierarchy"), images, SaliencyBank(N, max_regions=8),
        batch_size=4, saliency_size=SALIENCY, progress=False,
    )  # fmt: skip
    torch.testing.assert_close(by_hand.boxes, bank.boxes, rtol=0, atol=0)
    torch.testing.assert_close(by_hand.scores, bank.scores, rtol=0, atol=0)

    # checkpoint round trip (through pickle, as torch.save does): the bank in place, the schedule, the history
    state = pickle.loads(pickle.dumps(refresher.state_dict()))
    fresh = SaliencyBank(N, max_regions=8)
    pointer = fresh.boxes.data_ptr()
    resumed = SaliencyRefresher(fresh, images, every_n_epochs=2, first_epoch=1, saliency_size=SALIENCY)
    resumed.load_state_dict(state)
    assert fresh.boxes.data_ptr() == pointer  # in place: running DataLoader workers see it
    torch.testing.assert_close(fresh.boxes, bank.boxes, rtol=0, atol=0)
    assert fresh.refreshes == 2 and resumed.last_epoch == 3 and resumed.history == refresher.history
    assert not resumed.due(3) and resumed.due(5) and not resumed.due(4)
    # a state of lightly's earlier SGCLRefresher without "schedule" still loads
    older = SaliencyRefresher(SaliencyBank(N, max_regions=8), images, every_n_epochs=2, first_epoch=1)
    older.load_state_dict({"last_epoch": 3, "bank": state["bank"]})
    assert older.last_epoch == 3 and not older.due(3)


def test_a_bank_made_later_receives_the_checkpointed_state() -> None:
    images = square_images()
    bank = SaliencyBank(N, max_regions=4)
    refresher = SaliencyRefresher(bank, images, every_n_epochs=1, saliency_size=SALIENCY, progress=False)
    refresher.refresh(trunk(), epoch=1)
    state = refresher.state_dict()
    holder: List[Any] = [None]
    late = SaliencyRefresher(lambda: holder[0], lambda: images, every_n_epochs=1)
    late.load_state_dict(state)
    assert late.pending and late.state_dict()["bank"] is state["bank"]  # waits, and is saved again meanwhile
    holder[0] = SaliencyBank(N, max_regions=4)
    assert late.resolve_bank() is holder[0] and not late.pending
    torch.testing.assert_close(holder[0].boxes, bank.boxes, rtol=0, atol=0)
    wrong = SaliencyRefresher(SaliencyBank(N + 1, max_regions=4), square_images(N + 1))
    with pytest.raises(ValueError, match="cannot restore the checkpointed saliency bank"):
        wrong.load_state_dict(state)


def test_checks_name_the_fix() -> None:
    images = square_images()
    bank = SaliencyBank(N)
    data = crop_dataset(bank, images)
    # no bank yet: one error that both a ValueError and a RuntimeError clause catch
    waiting = SaliencyRefresher(None, images)
    for kind in (ValueError, RuntimeError, MissingBankError):
        with pytest.raises(kind, match="before the bank exists"):
            waiting.refresh(trunk())
    with pytest.raises(ValueError, match="before the bank exists"):
        refresh_regions(trunk(), images, None)
    # a fresh bank that no crop reads, given with the crop dataset: refused when made, naming the dataset's bank
    with pytest.raises(ValueError, match="not the one the dataset's SaliencyCropTransform reads.*bank=dataset.bank"):
        SaliencyRefresher(SaliencyBank(N), data)
    with pytest.raises(ValueError, match="dataset has 3 images but the bank holds 6"):
        SaliencyRefresher(bank, images[:3])
    with pytest.raises(TypeError, match="SaliencyBank"):
        SaliencyRefresher(object(), images)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="never refreshes at epoch 0"):
        SaliencyRefresher(bank, data, first_epoch=0)
    with pytest.raises(ValueError, match="feature_stride"):
        SaliencyRefresher(bank, data, feature_stride=(16, 8))
    with pytest.raises(ValueError, match="saliency_size"):
        SaliencyRefresher(bank, data, saliency_size=1)
    with pytest.raises(ValueError, match="either a generator or regions"):
        SaliencyRefresher(bank, data, generator=SaliencyGenerator(), regions="paper")
    # probe: fails before training on what the first refresh would meet
    refresher = SaliencyRefresher(bank, data, saliency_size=SALIENCY)
    refresher.probe(trunk())  # fine
    with pytest.raises(ValueError, match="not feature maps"):
        refresher.probe(nn.Sequential(trunk(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 4)))
    with pytest.raises(ValueError, match="feature_stride=None"):
        SaliencyRefresher(bank, data, feature_stride=16).probe(trunk())  # the trunk ends at stride 8
    unreadable = SaliencyRefresher(SaliencyBank(2), [object(), object()], saliency_size=SALIENCY)
    with pytest.raises(TypeError, match="cannot read dataset\\[0\\]"):
        unreadable.probe(trunk())


def test_one_summary_line_for_every_host() -> None:
    record = {"epoch": 20.0, "refreshes": 2.0, "images_with_regions": 100.0, "regions_per_image": 7.75,
              "fallback_images": 1.0, "mean_score": 0.2823, "mean_top_box_area": 0.34, "seconds": 91.04}  # fmt: skip
    line = refresh_summary(record)
    assert line == (
        "SGCL refresh 2 at epoch 20: 7.75 regions/image over 100 images, 1 whole-image fallbacks, mean score 0.282, "
        "top box 34% of the image, 91.0 s"
    )
    assert refresh_summary({**record, "pair_rate": 0.625}, epoch=21) == line.replace("epoch 20", "epoch 21").replace(
        "image, 91.0 s", "image, pairs showing one object 62.5%, 91.0 s"
    )


class TinySimCLR(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = trunk()
        self.projector = nn.Sequential(nn.Linear(32, 32), nn.ReLU(), nn.Linear(32, 16))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projector(self.backbone(x).mean((2, 3)))


def train(epochs: range, model: TinySimCLR, loader: DataLoader, refresher: SaliencyRefresher) -> List[str]:
    """A new host: a plain PyTorch loop. Its whole refresh code is the driver's three calls."""
    criterion = SaliencyWeightedLoss("ntxent", temperature=0.2)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05)
    lines = []
    for epoch in epochs:
        if refresher.maybe_refresh(epoch, model):  # a model with .backbone is read through it
            lines.append(refresher.summary())
        for batch in loader:
            t = batch["views1"].shape[1]
            z1, z2 = model(batch["views1"].flatten(0, 1)), model(batch["views2"].flatten(0, 1))
            loss = criterion(z1, z2, batch["scores"].flatten(), image_ids=batch["index"].repeat_interleave(t))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return lines


def test_a_plain_training_loop_needs_only_the_driver() -> None:
    images = square_images()
    bank = SaliencyBank(N, max_regions=8)
    data = crop_dataset(bank, images)
    loader = DataLoader(data, batch_size=3, shuffle=True, num_workers=1, persistent_workers=True)
    model = TinySimCLR()
    refresher = SaliencyRefresher(bank, data, every_n_epochs=1, saliency_size=SALIENCY, progress=False)
    first = next(iter(loader))
    assert torch.equal(first["scores"], torch.ones(3, 2))  # no regions yet: random crops, score 1
    lines = train(range(2), model, loader, refresher)
    assert [line.split(":")[0] for line in lines] == ["SGCL refresh 1 at epoch 1"]
    batch = next(iter(loader))  # the persistent worker reads the refreshed bank: each pair's score is a region's
    for i, row in zip(batch["index"].tolist(), batch["scores"].tolist()):
        assert all(min(abs(s - b) for b in bank[i][1].tolist()) < 1e-6 for s in row)

    # the host's checkpoint holds the driver's state; a restarted job resumes into a new, empty bank
    checkpoint = pickle.loads(pickle.dumps({"model": model.state_dict(), "sgcl": refresher.state_dict()}))
    bank2 = SaliencyBank(N, max_regions=8)
    data2 = crop_dataset(bank2, images)
    refresher2 = SaliencyRefresher(bank2, data2, every_n_epochs=1, saliency_size=SALIENCY, progress=False)
    refresher2.load_state_dict(checkpoint["sgcl"])
    model2 = TinySimCLR()
    model2.load_state_dict(checkpoint["model"])
    lines = train(range(1, 3), model2, DataLoader(data2, batch_size=3), refresher2)  # epoch 1 again, then 2
    assert [line.split(":")[0] for line in lines] == ["SGCL refresh 2 at epoch 2"]  # epoch 1 is not redone
    assert bank2.refreshes == 2 and [h["epoch"] for h in refresher2.history] == [1.0, 2.0]


def test_the_driver_imports_without_lightly_or_lightning() -> None:
    script = textwrap.dedent(
        """
        import sys
        for name in ("lightly", "lightning", "pytorch_lightning", "solo"):
            sys.modules[name] = None  # any import of them fails
        from sgcl_plugin import SaliencyRefresher, refresh_regions
        from sgcl_plugin.refresher import refresh_summary
        print("ok", SaliencyRefresher.__module__, refresh_regions.__module__)
        """
    )
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "ok sgcl_plugin.refresher sgcl_plugin.refresher" in out.stdout, out.stderr


def test_an_epoch_or_a_state_that_would_silently_skip_refreshes_is_refused() -> None:
    refresher = SaliencyRefresher(SaliencyBank(3), [Image.new("RGB", (32, 32))] * 3, every_n_epochs=1)
    for epoch in (-1, 1.5, "2", True):  # each returned False (no refresh, ever) before
        with pytest.raises(ValueError, match="epoch must be an integer >= 0"):
            refresher.maybe_refresh(epoch, trunk())  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="not a refresher's state.*'last_epoch', 'schedule', 'bank'"):
        refresher.load_state_dict({"epoch": 4})  # was accepted and did nothing: the resume refreshed from scratch
    with pytest.raises(TypeError, match="a saved state is a dict"):
        refresher.load_state_dict([("last_epoch", 3)])  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="last_epoch must be an integer >= -1"):
        refresher.load_state_dict({"last_epoch": "three"})
    with pytest.raises(ValueError, match="history must be a list of dicts"):
        refresher.load_state_dict({"schedule": {"last_epoch": 2, "history": [3]}})
    refresher.load_state_dict({"last_epoch": 2})  # an old state: the last epoch alone
    assert refresher.last_epoch == 2 and not refresher.due(2) and refresher.due(3)
