"""SGCL losses against hand computation and straightforward loop implementations."""

from __future__ import annotations

import math
from typing import List, Optional, Sequence

import pytest
import torch
import torch.nn.functional as F

from sgcl_plugin.losses import (
    InterImageLoss,
    SaliencyWeightedLoss,
    byol_loss,
    inter_image_loss,
    nnclr_loss,
    ntxent_loss,
    saliency_weighted_loss,
)

BATCH_SIZES = [1, 3, 8]


def _cos(x: torch.Tensor, y: torch.Tensor) -> float:
    return float(x @ y) / (float(x.norm()) * float(y.norm()))


def loop_ntxent(a: torch.Tensor, b: torch.Tensor, temperature: float, image_ids: Optional[Sequence[int]] = None):
    """NT-Xent written out: an explicit softmax per anchor over its positive and its negatives."""
    n = a.shape[0]
    z = [row.double() for row in torch.cat([a, b]).detach()]
    anchor_losses: List[float] = []
    for k in range(2 * n):
        pos = (k + n) % (2 * n)
        denominator = 0.0
        for j in range(2 * n):
            if j == k:
                continue
            if image_ids is not None and j != pos and image_ids[j % n] == image_ids[k % n]:
                continue
            denominator += math.exp(_cos(z[k], z[j]) / temperature)
        numerator = math.exp(_cos(z[k], z[pos]) / temperature)
        anchor_losses.append(-math.log(numerator / denominator))
    return torch.tensor([0.5 * (anchor_losses[i] + anchor_losses[i + n]) for i in range(n)], dtype=torch.float64)


def loop_nearest(x: torch.Tensor, support: torch.Tensor) -> torch.Tensor:
    rows = []
    for xi in x:
        sims = [_cos(xi.double(), s.double()) for s in support]
        rows.append(support[max(range(len(sims)), key=sims.__getitem__)])
    return torch.stack(rows)


def loop_inter(pred: torch.Tensor, rows: torch.Tensor, scores: torch.Tensor, k: int, gamma: float) -> float:
    """Eq. 10 written out over the given (filled) queue rows."""
    n, total = pred.shape[0], 0.0
    for i in range(n):
        sims = sorted((_cos(pred[i].double(), q.double()) for q in rows), reverse=True)[:k]
        total += sum(float(scores[i]) ** gamma * (2 - 2 * s) for s in sims)
    return total / (n * k)


# ------------------------------------------------------------------------------------------
# Base losses
# ------------------------------------------------------------------------------------------


def test_byol_hand_computed() -> None:
    p = torch.tensor([[1.0, 0.0], [3.0, 4.0], [1.0, 1.0]])
    z = torch.tensor([[5.0, 0.0], [-3.0, -4.0], [0.0, 2.0]])
    # cos = 1, -1, 1/sqrt(2)
    expected = torch.tensor([0.0, 4.0, 2 - 2 / math.sqrt(2)])
    torch.testing.assert_close(byol_loss(p, z), expected)


def test_byol_does_not_detach() -> None:
    p = torch.randn(4, 6, requires_grad=True)
    z = torch.randn(4, 6, requires_grad=True)
    byol_loss(p, z).sum().backward()
    assert p.grad is not None and z.grad is not None and z.grad.abs().sum() > 0


@pytest.mark.parametrize("n", BATCH_SIZES)
@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_ntxent_matches_loop(n: int, temperature: float) -> None:
    g = torch.Generator().manual_seed(n)
    a, b = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, 5, generator=g, dtype=torch.float64)
    torch.testing.assert_close(ntxent_loss(a, b, temperature), loop_ntxent(a, b, temperature))


@pytest.mark.parametrize("n", [3, 6, 8])
def test_ntxent_image_masking_matches_loop(n: int) -> None:
    g = torch.Generator().manual_seed(10 + n)
    a, b = torch.randn(n, 5, generator=g, dtype=torch.float64), torch.randn(n, 5, generator=g, dtype=torch.float64)
    ids = torch.randint(0, max(1, n // 2), (n,), generator=g)
    ids[0] = ids[1]  # at least one shared image
    masked = ntxent_loss(a, b, 0.2, image_ids=ids)
    plain = ntxent_loss(a, b, 0.2)
    torch.testing.assert_close(masked, loop_ntxent(a, b, 0.2, ids.tolist()))
    # the change made by masking is exactly the loop's change, and it is not zero
    torch.testing.assert_close(masked - plain, loop_ntxent(a, b, 0.2, ids.tolist()) - loop_ntxent(a, b, 0.2))
    assert (masked - plain).abs().max() > 1e-6
    # fewer negatives can only lower each anchor's loss
    assert (masked <= plain + 1e-12).all()
    # exclude_same_image=False keeps them as negatives
    torch.testing.assert_close(ntxent_loss(a, b, 0.2, image_ids=ids, exclude_same_image=False), plain)


def test_ntxent_all_pairs_from_one_image_have_no_negatives() -> None:
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    torch.testing.assert_close(ntxent_loss(a, b, image_ids=torch.zeros(4, dtype=torch.long)), torch.zeros(4))


@pytest.mark.parametrize("n", BATCH_SIZES)
def test_ntxent_distinct_image_ids_equal_unmasked(n: int) -> None:
    a, b = torch.randn(n, 7), torch.randn(n, 7)
    assert torch.equal(ntxent_loss(a, b, image_ids=torch.arange(n)), ntxent_loss(a, b))
    assert torch.equal(ntxent_loss(a, b, image_ids=list(range(n))), ntxent_loss(a, b))


@pytest.mark.parametrize("n", BATCH_SIZES)
def test_nnclr_matches_loop(n: int) -> None:
    g = torch.Generator().manual_seed(100 + n)
    a, b = torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randn(n, 4, generator=g, dtype=torch.float64)
    support = torch.randn(20, 4, generator=g, dtype=torch.float64)
    ids = torch.arange(n) // 2
    nn_a, nn_b = loop_nearest(a, support), loop_nearest(b, support)
    for image_ids in (None, ids):
        ids_list = None if image_ids is None else image_ids.tolist()
        expected = 0.5 * (loop_ntxent(nn_a, b, 0.1, ids_list) + loop_ntxent(nn_b, a, 0.1, ids_list))
        torch.testing.assert_close(nnclr_loss(a, b, support, image_ids=image_ids), expected)


def test_nnclr_support_containing_the_views() -> None:
    # with the views themselves in the support set, NN(a) = a and the loss is plain NT-Xent
    a, b = torch.randn(5, 8, dtype=torch.float64), torch.randn(5, 8, dtype=torch.float64)
    support = torch.cat([a, b])
    torch.testing.assert_close(nnclr_loss(a, b, support), ntxent_loss(a, b))


# ------------------------------------------------------------------------------------------
# SaliencyWeightedLoss
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", BATCH_SIZES)
def test_weighting_hand_computed(n: int) -> None:
    p, z = torch.randn(n, 6, dtype=torch.float64), torch.randn(n, 6, dtype=torch.float64)
    scores = torch.linspace(0.1, 1.0, n, dtype=torch.float64)
    base = byol_loss(p, z).tolist()
    w = [float(s) ** 0.5 for s in scores]
    count = sum(wi * bi for wi, bi in zip(w, base)) / n
    weight = sum(wi * bi for wi, bi in zip(w, base)) / sum(w)
    torch.testing.assert_close(SaliencyWeightedLoss("byol")(p, z, scores), torch.tensor(count, dtype=torch.float64))
    torch.testing.assert_close(
        SaliencyWeightedLoss("byol", normalize="weight")(p, z, scores), torch.tensor(weight, dtype=torch.float64)
    )


def test_weighting_small_example_by_hand() -> None:
    losses = torch.tensor([2.0, 4.0])
    scores = torch.tensor([1.0, 0.25])  # sqrt: 1, 0.5
    assert saliency_weighted_loss(losses, scores).item() == pytest.approx((2 + 2) / 2)
    assert saliency_weighted_loss(losses, scores, normalize="weight").item() == pytest.approx(4 / 1.5)
    assert saliency_weighted_loss(losses, scores, gamma=1.0).item() == pytest.approx((2 + 1) / 2)


@pytest.mark.parametrize("n", BATCH_SIZES)
@pytest.mark.parametrize("base", ["byol", "ntxent", "nnclr"])
def test_gamma_zero_is_the_base_mean(n: int, base: str) -> None:
    a, b = torch.randn(n, 6), torch.randn(n, 6)
    scores = torch.rand(n)
    scores[0] = 0.0  # 0 ** 0 = 1: even a zero score counts fully
    kwargs = {"support": torch.randn(10, 6)} if base == "nnclr" else {}
    per = SaliencyWeightedLoss(base, gamma=0.0).per_sample(a, b, **kwargs)
    assert torch.equal(SaliencyWeightedLoss(base, gamma=0.0)(a, b, scores, **kwargs), per.mean())
    torch.testing.assert_close(
        SaliencyWeightedLoss(base, gamma=0.0, normalize="weight")(a, b, scores, **kwargs),
        per.mean(),
        rtol=1e-6,
        atol=0,
    )


def test_base_kwargs_and_call_kwargs_reach_the_base() -> None:
    a, b = torch.randn(6, 4), torch.randn(6, 4)
    ids = torch.tensor([0, 0, 1, 1, 2, 2])
    criterion = SaliencyWeightedLoss("ntxent", gamma=0.0, temperature=0.3)
    torch.testing.assert_close(criterion(a, b, torch.ones(6), image_ids=ids), ntxent_loss(a, b, 0.3, ids).mean())
    assert "temperature=0.3" in repr(criterion)


def test_callable_base() -> None:
    def l2(a: torch.Tensor, b: torch.Tensor, scale: float = 1.0) -> torch.Tensor:
        return scale * (a - b).pow(2).sum(dim=1)

    a, b = torch.zeros(3, 2), torch.tensor([[1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])  # per-sample 1, 4, 2
    scores = torch.tensor([1.0, 0.0, 0.25])
    out = SaliencyWeightedLoss(l2, gamma=1.0, scale=2.0)(a, b, scores)
    torch.testing.assert_close(out, torch.tensor((2 * 1 * 1 + 0 + 2 * 2 * 0.25) / 3))


def test_gradients_flow() -> None:
    a = torch.randn(4, 8, requires_grad=True)
    b = torch.randn(4, 8, requires_grad=True)
    for base, kwargs in (("byol", {}), ("ntxent", {"image_ids": [0, 0, 1, 2]})):
        a.grad = b.grad = None
        SaliencyWeightedLoss(base)(a, b, torch.rand(4), **kwargs).backward()
        assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0
        assert torch.isfinite(b.grad).all() and b.grad.abs().sum() > 0
    support = torch.randn(16, 8)
    a.grad = b.grad = None
    SaliencyWeightedLoss("nnclr")(a, b, torch.rand(4), support=support).backward()
    assert torch.isfinite(a.grad).all() and a.grad.abs().sum() > 0


@pytest.mark.parametrize("normalize", ["count", "weight"])
def test_gradcheck_byol_and_ntxent(normalize: str) -> None:
    g = torch.Generator().manual_seed(0)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    b = torch.randn(4, 3, generator=g, dtype=torch.float64, requires_grad=True)
    scores = torch.tensor([1.0, 0.5, 0.2, 0.9], dtype=torch.float64)
    byol = SaliencyWeightedLoss("byol", normalize=normalize)
    assert torch.autograd.gradcheck(lambda x, y: byol(x, y, scores), (a, b))
    ntxent = SaliencyWeightedLoss("ntxent", normalize=normalize, temperature=0.5)
    ids = torch.tensor([0, 0, 1, 2])
    assert torch.autograd.gradcheck(lambda x, y: ntxent(x, y, scores, image_ids=ids), (a, b))


# ------------------------------------------------------------------------------------------
# Inter-image loss
# ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", BATCH_SIZES)
def test_inter_masked_until_filled(n: int) -> None:
    g = torch.Generator().manual_seed(200 + n)
    pred = torch.randn(n, 6, generator=g, dtype=torch.float64)
    # every target points away from every prediction: cos < 0, so an unmasked zero row (cos 0)
    # would always win the top-l
    targets = -pred.abs().sum(0, keepdim=True) * torch.ones(10, 1, dtype=torch.float64)
    targets = targets + 0.1 * torch.randn(10, 6, generator=g, dtype=torch.float64)
    pred = pred.abs()
    inter = InterImageLoss(dim=6, queue_size=32, num_neighbors=3).double()
    inter.enqueue(targets)
    assert inter.num_filled == 10
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    expected = loop_inter(pred, targets, scores, 3, 0.5)
    assert expected > 2.0  # cos < 0 everywhere
    torch.testing.assert_close(inter(pred, scores), torch.tensor(expected, dtype=torch.float64))
    torch.testing.assert_close(inter_image_loss(pred, targets, scores, 3, 0.5), torch.tensor(expected).double())


@pytest.mark.parametrize("n", BATCH_SIZES)
@pytest.mark.parametrize("k", [1, 5])
def test_inter_top_l_matches_brute_force(n: int, k: int) -> None:
    g = torch.Generator().manual_seed(300 + n + k)
    inter = InterImageLoss(dim=5, queue_size=16, num_neighbors=k, gamma=0.5).double()
    rows = torch.randn(40, 5, generator=g, dtype=torch.float64)
    inter.enqueue(rows)  # wraps: keeps the last 16
    pred = torch.randn(n, 5, generator=g, dtype=torch.float64)
    scores = torch.rand(n, generator=g, dtype=torch.float64)
    expected = loop_inter(pred, rows[-16:], scores, k, 0.5)
    torch.testing.assert_close(inter(pred, scores), torch.tensor(expected, dtype=torch.float64))


def test_inter_zero_before_l_entries_has_grad_fn() -> None:
    inter = InterImageLoss(dim=4, queue_size=8, num_neighbors=5)
    pred = torch.randn(3, 4, requires_grad=True)
    loss = inter(pred, torch.ones(3))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    inter.enqueue(torch.randn(4, 4))  # 4 < 5 filled
    loss = inter(pred, torch.ones(3))
    assert loss.item() == 0.0 and loss.grad_fn is not None
    loss.backward()
    assert torch.equal(pred.grad, torch.zeros_like(pred))
    # the functional form with a short queue, too
    short = inter_image_loss(pred, torch.randn(2, 4), torch.ones(3), num_neighbors=5)
    assert short.item() == 0.0 and short.grad_fn is not None
    inter.enqueue(torch.randn(1, 4))  # now 5: a real loss
    loss = inter(pred, torch.ones(3))
    assert loss.item() > 0.0
    loss.backward()
    assert pred.grad.abs().sum() > 0


def test_inter_fifo_wrap_around_order() -> None:
    inter = InterImageLoss(dim=2, queue_size=5, num_neighbors=1)
    batches = [torch.tensor([[float(i), 1.0] for i in range(s, s + 3)]) for s in (1, 4, 7)]  # rows 1..9
    inter.enqueue(batches[0])
    inter.enqueue(batches[1])  # 6 rows into 5: row 1 dropped, row 6 at slot 0
    assert inter.num_filled == 5 and int(inter.ptr) == 1
    expected = F.normalize(torch.cat(batches[:2])[1:], dim=1)
    torch.testing.assert_close(inter.entries(), expected)
    torch.testing.assert_close(inter.queue[0], F.normalize(torch.tensor([6.0, 1.0]), dim=0))
    inter.enqueue(batches[2])  # rows 7, 8, 9 into slots 1, 2, 3
    assert int(inter.ptr) == 4
    torch.testing.assert_close(inter.entries(), F.normalize(torch.cat(batches)[-5:], dim=1))
    # a batch larger than the queue keeps its last rows, as if written one by one
    big = torch.tensor([[float(i), 1.0] for i in range(10, 22)])
    inter.enqueue(big)
    torch.testing.assert_close(inter.entries(), F.normalize(big[-5:], dim=1))
    assert int(inter.ptr) == (4 + 12) % 5
    inter.reset()
    assert inter.num_filled == 0 and inter.entries().shape == (0, 2)


def test_inter_state_dict_round_trip() -> None:
    inter = InterImageLoss(dim=3, queue_size=7, num_neighbors=2)
    inter.enqueue(torch.randn(4, 3))
    inter.enqueue(torch.randn(5, 3))
    state = inter.state_dict()
    assert set(state) == {"queue", "ptr", "count"}
    restored = InterImageLoss(dim=3, queue_size=7, num_neighbors=2)
    restored.load_state_dict(state)
    assert torch.equal(restored.queue, inter.queue)
    assert int(restored.ptr) == int(inter.ptr) == 2 and int(restored.count) == 7
    pred, scores = torch.randn(4, 3), torch.rand(4)
    assert torch.equal(restored(pred, scores), inter(pred, scores))
    rows = torch.randn(3, 3)
    inter.enqueue(rows)
    restored.enqueue(rows)
    assert torch.equal(restored.entries(), inter.entries())


def test_inter_gamma_weights() -> None:
    pred = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    queue = torch.tensor([[-1.0, 0.0], [0.0, -1.0]])  # each pred: nearest cos 0, i.e. 2 - 2 * 0 = 2
    out = inter_image_loss(pred, queue, torch.tensor([1.0, 0.25]), num_neighbors=1, gamma=0.5)
    torch.testing.assert_close(out, torch.tensor((1.0 * 2 + 0.5 * 2) / 2))


# ------------------------------------------------------------------------------------------
# Bad inputs
# ------------------------------------------------------------------------------------------


def test_base_loss_errors() -> None:
    x = torch.randn(4, 3)
    with pytest.raises(ValueError, match="same shape"):
        byol_loss(x, torch.randn(4, 2))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        byol_loss(torch.randn(4), torch.randn(4))
    with pytest.raises(TypeError, match="floating"):
        ntxent_loss(torch.ones(2, 2, dtype=torch.long), torch.ones(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="empty"):
        ntxent_loss(torch.randn(0, 3), torch.randn(0, 3))
    with pytest.raises(ValueError, match="temperature"):
        ntxent_loss(x, x, temperature=0.0)
    with pytest.raises(ValueError, match="image_ids"):
        ntxent_loss(x, x, image_ids=torch.arange(3))
    with pytest.raises(ValueError, match="support"):
        nnclr_loss(x, x, torch.randn(5, 2))


def test_weighted_loss_errors() -> None:
    a, b = torch.randn(4, 3), torch.randn(4, 3)
    criterion = SaliencyWeightedLoss("byol")
    with pytest.raises(ValueError, match="same shape"):
        criterion(a, torch.randn(4, 5), torch.ones(4))
    with pytest.raises(ValueError, match="same number of pairs"):
        criterion(a, torch.randn(3, 3), torch.ones(4))
    with pytest.raises(ValueError, match="one score per pair"):
        criterion(a, b, torch.ones(5))
    with pytest.raises(ValueError, match="shape"):
        criterion(a, b, torch.ones(4, 1))
    with pytest.raises(TypeError, match="scores"):
        criterion(a, b, [1.0, 1.0, 1.0, 1.0])
    with pytest.raises(ValueError, match="NaN"):
        criterion(a, b, torch.tensor([1.0, float("nan"), 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        criterion(a, b, torch.tensor([1.0, 1.5, 0.5, 0.5]))
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        criterion(a, b, torch.tensor([1.0, -0.1, 0.5, 0.5]))
    with pytest.raises(ValueError, match="gamma"):
        SaliencyWeightedLoss("byol", gamma=-0.5)
    with pytest.raises(ValueError, match="gamma"):
        SaliencyWeightedLoss("byol", gamma=float("nan"))
    with pytest.raises(ValueError, match="Unknown base"):
        SaliencyWeightedLoss("simsiam")
    with pytest.raises(TypeError, match="callable"):
        SaliencyWeightedLoss(42)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="normalize"):
        SaliencyWeightedLoss("byol", normalize="sum")  # type: ignore[arg-type]
    with pytest.raises(TypeError, match="keyword"):
        SaliencyWeightedLoss("byol", temperature=0.1)
    with pytest.raises(ValueError, match=r"per-sample losses of shape \(4,\)"):
        SaliencyWeightedLoss(lambda x, y: byol_loss(x, y).mean())(a, b, torch.ones(4))
    with pytest.raises(TypeError, match="must return a tensor"):
        SaliencyWeightedLoss(lambda x, y: 1.0)(a, b, torch.ones(4))


def test_inter_image_errors() -> None:
    with pytest.raises(ValueError, match="queue_size"):
        InterImageLoss(dim=4, queue_size=3, num_neighbors=5)
    with pytest.raises(ValueError, match="num_neighbors"):
        InterImageLoss(dim=4, num_neighbors=0)
    with pytest.raises(ValueError, match="dim"):
        InterImageLoss(dim=0)
    with pytest.raises(ValueError, match="gamma"):
        InterImageLoss(dim=4, gamma=-1.0)
    inter = InterImageLoss(dim=4, queue_size=8, num_neighbors=2)
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        inter(torch.randn(3, 5), torch.ones(3))
    with pytest.raises(ValueError, match=r"\(n, 4\)"):
        inter.enqueue(torch.randn(3, 5))
    with pytest.raises(ValueError, match=r"shape \(n, d\)"):
        inter.enqueue(torch.randn(4))
    with pytest.raises(ValueError, match="NaN"):
        inter(torch.randn(2, 4), torch.tensor([float("nan"), 1.0]))
    with pytest.raises(ValueError, match=r"shape \(3,\)"):
        inter(torch.randn(3, 4), torch.ones(2))
    with pytest.raises(ValueError, match="queue must have shape"):
        inter_image_loss(torch.randn(3, 4), torch.randn(8, 5), torch.ones(3))
    with pytest.raises(ValueError, match="gamma"):
        inter_image_loss(torch.randn(3, 4), torch.randn(8, 4), torch.ones(3), gamma=-0.1)
    with pytest.raises(ValueError, match="num_neighbors"):
        inter_image_loss(torch.randn(3, 4), torch.randn(8, 4), torch.ones(3), num_neighbors=0)
    # The function checks what the class checks: NaN / Inf in the predictions or the usable queue rows
    queue = torch.randn(8, 4)
    queue[5] = float("inf")
    with pytest.raises(ValueError, match=r"queue contains NaN or Inf values \(rows \[5\]"):
        inter_image_loss(torch.randn(3, 4), queue, torch.ones(3))
    valid = torch.arange(8) < 5  # the bad row is not in use yet: fine
    assert torch.isfinite(inter_image_loss(torch.randn(3, 4), queue, torch.ones(3), valid=valid))
    pred = torch.randn(3, 4)
    pred[1, 2] = float("nan")
    with pytest.raises(ValueError, match=r"pred contains NaN or Inf values \(rows \[1\]"):
        inter_image_loss(pred, torch.randn(8, 4), torch.ones(3))


def test_scores_are_constants_of_the_step() -> None:
    """The pair weights P ** gamma carry no gradient into the scores (a score of 0 got an infinite one)."""
    scores = torch.tensor([0.0, 0.5, 1.0], requires_grad=True)
    a, b = torch.randn(3, 8, requires_grad=True), torch.randn(3, 8)
    loss = SaliencyWeightedLoss("byol")(a, b, scores) + inter_image_loss(a, torch.randn(8, 8), scores)
    loss.backward()
    assert scores.grad is None and a.grad is not None and torch.isfinite(a.grad).all()


# ------------------------------------------------------------------------------------------
# Distributed enqueue (2 real gloo processes on the CPU)
# ------------------------------------------------------------------------------------------


def _gather_worker(rank: int, world: int, init_file: str, result_file: str) -> None:
    import torch.distributed as dist

    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        inter = InterImageLoss(dim=3, queue_size=16, num_neighbors=2, gather_distributed=True)
        # rank r holds r + 2 rows (sizes differ across ranks) with first coordinate 10 * r + j
        rows = torch.tensor([[10.0 * rank + j, 1.0, 0.0] for j in range(rank + 2)])
        inter.enqueue(rows)
        local = InterImageLoss(dim=3, queue_size=16, num_neighbors=2, gather_distributed=False)
        local.enqueue(rows)
        if rank == 0:
            torch.save({"gathered": inter.entries(), "local": local.entries()}, result_file)
    finally:
        dist.destroy_process_group()


@pytest.mark.skipif(not torch.distributed.is_available(), reason="torch.distributed not available")
def test_enqueue_all_gathers_across_ranks(tmp_path) -> None:
    import torch.multiprocessing as mp

    result = tmp_path / "result.pt"
    mp.spawn(_gather_worker, args=(2, str(tmp_path / "init"), str(result)), nprocs=2, join=True)
    out = torch.load(result)
    expected = torch.tensor([[0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [10.0, 1.0, 0.0], [11.0, 1.0, 0.0], [12.0, 1.0, 0.0]])
    torch.testing.assert_close(out["gathered"], F.normalize(expected, dim=1))
    torch.testing.assert_close(out["local"], F.normalize(expected[:2], dim=1))
