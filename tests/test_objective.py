"""SGCLObjective and FeatureQueue against hand-composed references (the losses themselves: tests/test_losses.py)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from sgcl_plugin.losses import FeatureQueue, InterImageLoss, SaliencyWeightedLoss, ntxent_loss
from sgcl_plugin.objective import SGCLObjective

N, D = 6, 8


def rows(seed: int, n: int = N) -> torch.Tensor:
    return torch.randn(n, D, generator=torch.Generator().manual_seed(seed))


def test_feature_queue_is_a_fifo_of_normalized_rows() -> None:
    queue = FeatureQueue(D, size=4)
    assert queue.num_filled == 0 and queue.filled().shape == (0, D) and not queue.valid().any()
    first, second = rows(0, 3), rows(1, 3)
    queue.enqueue(first)
    torch.testing.assert_close(queue.filled(), F.normalize(first, dim=1))
    queue.enqueue(second)  # 6 rows into 4: the oldest two are gone
    torch.testing.assert_close(queue.entries(), F.normalize(torch.cat([first, second])[2:], dim=1))
    assert queue.num_filled == 4 and queue.valid().all()
    with pytest.raises(ValueError, match="NaN"):
        queue.enqueue(torch.full((1, D), float("nan")))
    assert set(queue.state_dict()) == {"queue", "ptr", "count"}  # the buffers InterImageLoss checkpoints hold


def test_byol_objective_is_weighted_byol_plus_inter_in_both_directions() -> None:
    p1, p2, t1, t2 = (rows(i) for i in range(4))
    scores = torch.rand(N, generator=torch.Generator().manual_seed(9))
    objective = SGCLObjective("byol", D, gamma=0.5, queue_size=16, num_neighbors=2)
    reference_inter = InterImageLoss(D, queue_size=16, num_neighbors=2, gamma=0.5)
    weighted = SaliencyWeightedLoss("byol", gamma=0.5)
    for step in range(3):  # the queue fills after the first step: inter is 0, then not
        out = objective(scores, p1=p1 + step, p2=p2, t1=t1, t2=t2 - step)
        intra = weighted(p1 + step, t2 - step, scores) + weighted(p2, t1, scores)
        inter = reference_inter(p1 + step, scores) + reference_inter(p2, scores)
        reference_inter.enqueue(torch.cat([t1, t2 - step]))
        torch.testing.assert_close(out["intra"], intra)
        torch.testing.assert_close(out["inter"], inter)
        torch.testing.assert_close(out["loss"], intra + inter)
        assert (float(out["inter"]) > 0) == (step > 0)
    with pytest.raises(ValueError, match="missing t1, t2"):
        objective(scores, p1=p1, p2=p2)


def test_simclr_objective_has_no_inter_loss_by_default_and_excludes_same_image_negatives() -> None:
    z1, z2 = rows(0), rows(1)
    scores, ids = torch.ones(N), torch.tensor([0, 0, 1, 1, 2, 2])
    objective = SGCLObjective("simclr", D, gamma=0.0, temperature=0.2)
    assert objective.inter is None
    out = objective(scores, z1=z1, z2=z2, image_ids=ids)
    torch.testing.assert_close(out["intra"], ntxent_loss(z1, z2, temperature=0.2, image_ids=ids).mean())
    assert float(out["inter"]) == 0.0
    assert SGCLObjective("simclr", D, inter=True).inter is not None


def test_nnclr_objective_uses_its_own_support_set_and_predictions() -> None:
    z1, z2, p1, p2 = (F.normalize(rows(i), dim=1) for i in range(4))
    scores = torch.ones(N)
    objective = SGCLObjective("nnclr", D, gamma=0.0, temperature=0.5, inter=False, support_size=32)

    def nn(x: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
        return support[(F.normalize(x, dim=1) @ F.normalize(support, dim=1).T).argmax(1)]

    first = objective(scores, z1=z1, z2=z2, p1=p1, p2=p2)  # empty support set: the batch's own z1
    ref = 0.5 * (ntxent_loss(nn(z1, z1), p2, 0.5) + ntxent_loss(nn(z2, z1), p1, 0.5)).mean()
    torch.testing.assert_close(first["intra"], ref)
    support = objective.support.filled().clone()  # z1 of the first step, normalized
    second = objective(scores, z1=z2, z2=z1)  # no prediction head: the projections are the positives
    ref = 0.5 * (ntxent_loss(nn(z2, support), z1, 0.5) + ntxent_loss(nn(z1, support), z2, 0.5)).mean()
    torch.testing.assert_close(second["intra"], ref)
    with pytest.raises(ValueError, match="needs support="):
        SGCLObjective("nnclr", D, support_size=None)(scores, z1=z1, z2=z2)


def test_inter_loss_scale_puts_it_in_a_negative_cosine_loss_units() -> None:
    pred, targets, scores = rows(0), rows(1, 10), torch.rand(N)
    paper, lightly = InterImageLoss(D, 16, 3), InterImageLoss(D, 16, 3, scale=0.5)
    paper.enqueue(targets)
    lightly.enqueue(targets)
    torch.testing.assert_close(lightly(pred, scores), 0.5 * paper(pred, scores))
    with pytest.raises(ValueError, match="scale"):
        InterImageLoss(D, scale=0.0)
