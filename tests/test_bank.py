"""SaliencyBank: reads, writes, checkpoints, and visibility in (persistent) DataLoader workers."""

from __future__ import annotations

import io
import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset, get_worker_info

from sgcl_plugin import SaliencyBank


def filled_rows(n: int, R: int, seed: int = 0) -> tuple:
    g = torch.Generator().manual_seed(seed)
    counts = torch.randint(0, R + 1, (n,), generator=g)
    scores = torch.zeros(n, R)
    boxes = torch.zeros(n, R, 4)
    for i in range(n):
        k = int(counts[i])
        scores[i, :k] = torch.rand(k, generator=g).sort(descending=True).values.clamp(min=0.01)
        xy = torch.rand(k, 2, generator=g) * 0.5
        boxes[i, :k] = torch.cat([xy, xy + 0.5], dim=1)
    return boxes, scores, counts, counts == 1


def test_empty_before_refresh_then_rows_after_write() -> None:
    bank = SaliencyBank(5, max_regions=3)
    assert bank.version == 0 and bank.refreshes == 0
    boxes, scores = bank[2]
    assert boxes.shape == (0, 4) and scores.shape == (0,)
    rows = filled_rows(5, 3)
    bank.write(*rows)
    assert bank.version == 1
    for i in range(5):
        boxes, scores = bank[i]
        k = int(rows[2][i])
        torch.testing.assert_close(boxes, rows[0][i, :k])
        torch.testing.assert_close(scores, rows[1][i, :k])
    torch.testing.assert_close(bank[-1][1], bank[4][1])


def test_partial_write_by_index() -> None:
    bank = SaliencyBank(6, max_regions=2)
    boxes = torch.tensor([[[0.0, 0.0, 1.0, 1.0], [0.0, 0.0, 0.0, 0.0]]] * 2)
    bank.write(
        boxes,
        torch.tensor([[1.0, 0.0]] * 2),
        torch.tensor([1, 1]),
        torch.tensor([True, True]),
        index=torch.tensor([4, 1]),
    )
    assert [len(bank[i][1]) for i in range(6)] == [0, 1, 0, 0, 1, 0]
    assert bank.stats()["fallback_images"] == 2


def test_stats() -> None:
    bank = SaliencyBank(3, max_regions=4)
    boxes = torch.zeros(3, 4, 4)
    boxes[:, 0] = torch.tensor([0.0, 0.0, 0.5, 0.5])
    boxes[0, 1] = torch.tensor([0.5, 0.5, 1.0, 1.0])  # the second region of row 0 (rows hold valid boxes)
    scores = torch.tensor([[1.0, 0.5, 0, 0], [1.0, 0, 0, 0], [0, 0, 0, 0]])
    bank.write(boxes, scores, torch.tensor([2, 1, 0]), torch.tensor([False, True, False]))
    bank.mark_refreshed()
    s = bank.stats()
    assert s["refreshes"] == 1 and s["images_with_regions"] == 2
    assert s["regions_per_image"] == pytest.approx(1.5)
    assert s["mean_score"] == pytest.approx(2.5 / 3)
    assert s["fallback_images"] == 1
    assert s["mean_top_box_area"] == pytest.approx(0.25)


def test_state_dict_round_trip_through_a_checkpoint() -> None:
    bank = SaliencyBank(8, max_regions=4)
    bank.write(*filled_rows(8, 4, seed=3))
    bank.mark_refreshed()
    buffer = io.BytesIO()
    torch.save({"bank": bank.state_dict()}, buffer)
    buffer.seek(0)
    restored = SaliencyBank(8, max_regions=4)
    restored.load_state_dict(torch.load(buffer, weights_only=True)["bank"])
    assert restored.refreshes == 1
    for i in range(8):
        torch.testing.assert_close(restored[i][0], bank[i][0])
        torch.testing.assert_close(restored[i][1], bank[i][1])
    with pytest.raises(ValueError, match="8 images x 4 regions"):
        SaliencyBank(9, max_regions=4).load_state_dict(bank.state_dict())


def test_save_load_file(tmp_path) -> None:
    bank = SaliencyBank(4, max_regions=2)
    bank.write(*filled_rows(4, 2, seed=5))
    bank.save(tmp_path / "bank.pt")
    loaded = SaliencyBank.load(tmp_path / "bank.pt")
    torch.testing.assert_close(loaded.scores, bank.scores)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="num_images must be an integer >= 1"):
        SaliencyBank(0)
    bank = SaliencyBank(3, max_regions=2)
    with pytest.raises(IndexError, match="outside"):
        bank[3]
    rows = filled_rows(3, 2)
    with pytest.raises(ValueError, match="boxes must have shape"):
        bank.write(rows[0][:, :1], *rows[1:])
    bad_scores = rows[1].clone()
    bad_scores[0, 0] = float("nan")
    with pytest.raises(ValueError, match="scores"):
        bank.write(rows[0], bad_scores, *rows[2:])
    bad_boxes = rows[0].clone()
    bad_boxes[0, 0, 2] = 1.5
    with pytest.raises(ValueError, match="boxes must be normalized"):
        bank.write(bad_boxes, *rows[1:])
    with pytest.raises(IndexError, match="write index"):
        bank.write(rows[0][:1], rows[1][:1], rows[2][:1], rows[3][:1], index=torch.tensor([7]))


class BankReader(Dataset):
    """What a crop transform does in a worker: read the regions of the requested index."""

    def __init__(self, bank: SaliencyBank) -> None:
        self.bank = bank

    def __len__(self) -> int:
        return len(self.bank)

    def __getitem__(self, i: int) -> tuple:
        boxes, scores = self.bank[i]
        return i, self.bank.version, len(scores), float(scores.sum()), os.getpid(), get_worker_info().id


@pytest.mark.parametrize("context", ["fork", "spawn"])
def test_persistent_workers_see_every_refresh(context: str) -> None:
    n = 12
    bank = SaliencyBank(n, max_regions=3)
    loader = DataLoader(
        BankReader(bank),
        batch_size=None,
        num_workers=2,
        persistent_workers=True,
        multiprocessing_context=context,
    )
    first = list(loader)
    assert all(version == 0 and count == 0 for _, version, count, *_ in first)
    pids = {pid for *_, pid, _ in first}
    assert len(pids) == 2 and os.getpid() not in pids

    for refresh in (1, 2):
        rows = filled_rows(n, 3, seed=refresh)
        bank.write(*rows)
        seen = list(loader)
        assert {pid for *_, pid, _ in seen} == pids  # the same worker processes ...
        for i, version, count, total, _, _ in seen:  # ... see the new table
            assert version == refresh
            assert count == int(rows[2][i])
            assert total == pytest.approx(float(rows[1][i].sum()), abs=1e-6)
