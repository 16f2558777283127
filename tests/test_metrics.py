"""Region metrics: box IoU by hand, crop shares against slicing, the same-object pair rate on scenes
whose answer is known."""

from __future__ import annotations

import pytest
import torch

from sgcl_plugin import SaliencyBank
from sgcl_plugin.testbed.metrics import box_iou, crop_object_shares, same_object_pair_rate, shown_object


def test_box_iou_by_hand() -> None:
    a = torch.tensor([[0.0, 0.0, 0.5, 0.5], [0.0, 0.0, 1.0, 1.0]])
    b = torch.tensor([[0.25, 0.25, 0.75, 0.75], [0.5, 0.5, 1.0, 1.0]])
    expected = torch.tensor([[0.0625 / (0.25 + 0.25 - 0.0625), 0.0], [0.25, 0.25]])
    torch.testing.assert_close(box_iou(a, b), expected)


def test_crop_shares_match_slicing() -> None:
    g = torch.Generator().manual_seed(0)
    masks = torch.rand(3, 37, 53, generator=g) > 0.6
    crops = torch.rand(40, 4, generator=g)
    crops = torch.stack([crops[:, [0, 2]].min(1).values, crops[:, [1, 3]].min(1).values,
                         crops[:, [0, 2]].max(1).values, crops[:, [1, 3]].max(1).values], dim=1)  # fmt: skip
    shares = crop_object_shares(masks, crops)
    for i, (x0, y0, x1, y1) in enumerate((crops * torch.tensor([53, 37, 53, 37])).round().long().tolist()):
        x0, y0 = min(x0, 52), min(y0, 36)
        x1, y1 = max(x1, x0 + 1), max(y1, y0 + 1)
        expected = masks[:, y0:y1, x0:x1].double().mean(dim=(1, 2))
        torch.testing.assert_close(shares[i], expected)
    assert shown_object(torch.tensor([[0.2, 0.25], [0.5, 0.31], [0.0, 0.0]])).tolist() == [-1, 0, -1]


def test_pair_rate_on_known_scenes() -> None:
    H = W = 64
    whole = torch.ones(1, H, W, dtype=torch.bool)  # one object filling the image: every pair shows it
    corner = torch.zeros(2, H, W, dtype=torch.bool)
    corner[0, :16, :16] = True  # two small objects in opposite corners
    corner[1, 48:, 48:] = True
    bank = SaliencyBank(3, max_regions=2)
    boxes = torch.zeros(3, 2, 4)
    boxes[1] = torch.tensor([[0.0, 0.0, 0.25, 0.25], [0.75, 0.75, 1.0, 1.0]])  # the true boxes
    boxes[2, 0] = torch.tensor([0.0, 0.0, 1.0, 1.0])  # the whole image
    scores = torch.tensor([[0.0, 0.0], [1.0, 1.0], [1.0, 0.0]])
    bank.write(boxes, scores, torch.tensor([0, 2, 1]), torch.zeros(3, dtype=torch.bool))
    rate, per_image = same_object_pair_rate(bank, [whole, corner, corner], pairs=64)
    assert per_image[0] == 1.0  # random BYOL crops of a one-object image
    assert per_image[1] > 0.6  # crops inside the true boxes (rule R may reach outside them)
    assert per_image[2] < 0.1  # whole-image regions: crops rarely dominated by a small object
    assert rate == pytest.approx(sum(per_image) / 3)
    # seeded and reproducible, and it leaves the global RNG alone
    state = torch.get_rng_state()
    again, _ = same_object_pair_rate(bank, [whole, corner, corner], pairs=64)
    assert again == rate and torch.equal(torch.get_rng_state(), state)
    jittered, per_jittered = same_object_pair_rate(bank, [whole, corner, corner], pairs=64, box_jitter=0.5)
    assert per_jittered[1] < per_image[1]  # jittered boxes drift off the objects
    with pytest.raises(ValueError, match="masks for 2 images but 3"):
        same_object_pair_rate(bank, [whole, corner])
