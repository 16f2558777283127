"""kNN, linear-probe and dense-probe evaluation against brute force, hand-computed cell labels and separable data."""

from __future__ import annotations

import pytest
import torch

from sgcl_plugin.testbed.evaluation import (
    cell_labels,
    dense_probe_accuracy,
    embed,
    knn_accuracy,
    knn_predict,
    linear_probe_accuracy,
)


def brute_force_knn(train: torch.Tensor, labels: torch.Tensor, test: torch.Tensor, k: int, t: float) -> torch.Tensor:
    out = []
    for q in test:
        sims = [float(torch.nn.functional.cosine_similarity(q, x, dim=0)) for x in train]
        order = sorted(range(len(sims)), key=lambda i: -sims[i])[:k]
        votes: dict = {}
        for i in order:
            votes[int(labels[i])] = votes.get(int(labels[i]), 0.0) + torch.tensor(sims[i] / t).exp().item()
        out.append(max(votes, key=votes.get))
    return torch.tensor(out)


@pytest.mark.parametrize("k", [1, 5, 50])
def test_knn_matches_brute_force(k: int) -> None:
    g = torch.Generator().manual_seed(k)
    train, test = torch.randn(40, 6, generator=g), torch.randn(15, 6, generator=g)
    labels = torch.randint(0, 4, (40,), generator=g)
    pred = knn_predict(train, labels, test, num_classes=4, k=k, temperature=0.1)
    assert torch.equal(pred, brute_force_knn(train, labels, test, min(k, 40), 0.1))


def test_separable_clusters_are_classified_and_noise_is_not() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 5
    y_train, y_test = torch.randint(0, 3, (300,), generator=g), torch.randint(0, 3, (100,), generator=g)
    x_train = centres[y_train] + torch.randn(300, 16, generator=g)
    x_test = centres[y_test] + torch.randn(100, 16, generator=g)
    assert knn_accuracy(x_train, y_train, x_test, y_test) > 0.95
    assert linear_probe_accuracy(x_train, y_train, x_test, y_test) > 0.95
    noise = torch.randn(100, 16, generator=g)
    assert knn_accuracy(x_train, y_train, noise, y_test) < 0.6


def test_embed_pools_feature_maps_and_restores_train_mode() -> None:
    model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).train()
    x = torch.randn(10, 3, 8, 8)
    f = embed(model, x, batch_size=3)
    assert f.shape == (10, 4) and model.training
    with torch.no_grad():
        torch.testing.assert_close(f, model.eval()(x).mean(dim=(2, 3)))
    with pytest.raises(ValueError, match="n, 3, H, W"):
        embed(model, x[0])


def test_cell_labels_by_hand() -> None:
    # an 8 x 8 image on a 2 x 2 grid: cells are the 4 x 4 quadrants (16 pixels each)
    masks = torch.zeros(3, 8, 8, dtype=torch.bool)
    masks[0, :4, :4] = True  # class 7 fills the top-left cell
    masks[1, :4, 4:6] = True  # class 2 covers 8 / 16 of the top-right cell ...
    masks[2, :4, 6:7] = True  # ... and class 5 4 / 16 of it: class 2 holds it at 0.5, not at 0.6
    masks[1, 4:6, :3] = True  # class 2 covers 6 / 16 of the bottom-left cell: held by nobody
    labels = torch.tensor([7, 2, 5])
    assert cell_labels(masks, labels, (2, 2)).tolist() == [[7, 2], [-1, -1]]
    assert cell_labels(masks, labels, (2, 2), min_fraction=0.6).tolist() == [[7, -1], [-1, -1]]
    # two objects of one class add up: 6 + 4 = 10 / 16 of the bottom-right cell for class 3
    both = torch.zeros(2, 8, 8, dtype=torch.bool)
    both[0, 4:7, 4:6], both[1, 4:8, 6:7] = True, True
    assert cell_labels(both, torch.tensor([3, 3]), (2, 2), ignore_index=9).tolist() == [[9, 9], [9, 3]]
    assert cell_labels(torch.zeros(0, 8, 8, dtype=torch.bool), torch.zeros(0, dtype=torch.long), (4, 2)).shape == (4, 2)
    with pytest.raises(ValueError, match="min_fraction"):
        cell_labels(masks, labels, (2, 2), min_fraction=0.3)
    with pytest.raises(ValueError, match="masks must be"):
        cell_labels(masks, labels[:2], (2, 2))


def test_dense_probe_reads_the_cells_and_ignores_the_rest() -> None:
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(4, 8, generator=g) * 4

    def maps(n: int) -> tuple:
        cells = torch.randint(-1, 4, (n, 3, 3), generator=g)  # -1: background cells, noise features
        x = torch.randn(n, 3, 3, 8, generator=g) + torch.where(cells[..., None] >= 0, centres[cells.clamp(min=0)], 0)
        return x.permute(0, 3, 1, 2), cells

    (a, ya), (b, yb) = maps(60), maps(30)
    result = dense_probe_accuracy(a, ya, b, yb)
    assert result["knn"] > 0.95 and result["linear"] > 0.95
    assert result["train_cells"] == float((ya >= 0).sum()) and result["test_cells"] == float((yb >= 0).sum())
    # the same cells with their labels shuffled among images: nothing to read
    shuffled = dense_probe_accuracy(a, ya, b, yb[torch.randperm(30, generator=g)])
    assert shuffled["knn"] < 0.5
    with pytest.raises(ValueError, match="has a label"):
        dense_probe_accuracy(a, ya, b, torch.full_like(yb, -1))
    with pytest.raises(ValueError, match="train_cells"):
        dense_probe_accuracy(a, ya[:, :2], b, yb)
    model = torch.nn.Conv2d(3, 4, 3)
    assert embed(model, torch.randn(5, 3, 8, 8), pool=False).shape == (5, 4, 6, 6)
    with pytest.raises(ValueError, match="pool=False"):
        embed(torch.nn.Flatten(), torch.randn(5, 3, 8, 8), pool=False)


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="differ in length"):
        knn_predict(torch.zeros(3, 2), torch.zeros(2, dtype=torch.long), torch.zeros(1, 2), 2)
    with pytest.raises(ValueError, match="non-empty"):
        knn_predict(torch.zeros(0, 2), torch.zeros(0, dtype=torch.long), torch.zeros(1, 2), 2)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_evaluation_on_cuda_matches_the_cpu() -> None:
    """Features on the GPU, labels on the CPU (how a training loop hands them over): same answers as on the CPU,
    no device-mismatch error; embed() follows the model's device by default."""
    g = torch.Generator().manual_seed(0)
    centres = torch.randn(3, 16, generator=g) * 2
    y_train, y_test = torch.randint(0, 3, (200,), generator=g), torch.randint(0, 3, (80,), generator=g)
    x_train = centres[y_train] + torch.randn(200, 16, generator=g)
    x_test = centres[y_test] + torch.randn(80, 16, generator=g)
    cpu = knn_accuracy(x_train, y_train, x_test, y_test), linear_probe_accuracy(x_train, y_train, x_test, y_test)
    gpu = (
        knn_accuracy(x_train.cuda(), y_train, x_test.cuda(), y_test),
        linear_probe_accuracy(x_train.cuda(), y_train, x_test.cuda(), y_test),
    )
    assert gpu[0] == cpu[0] and abs(gpu[1] - cpu[1]) <= 0.02
    model = torch.nn.Conv2d(3, 4, 3).cuda()
    f = embed(model, torch.randn(5, 3, 8, 8))
    assert f.device.type == "cpu" and f.shape == (5, 4)


def test_embed_uses_the_model_device_by_default() -> None:
    seen = []

    class OnMeta(torch.nn.Module):  # parameters on another device than the CPU (here: meta)
        def __init__(self) -> None:
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1, device="meta"))

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            seen.append(x.device.type)
            return torch.ones(x.shape[0], 2, 1, 1)

    assert embed(OnMeta(), torch.randn(2, 3, 8, 8)).shape == (2, 2)
    assert seen == ["meta"]  # the batch went to the model's device (it used to go to the CPU)

    def callable_model(x: torch.Tensor) -> torch.Tensor:  # a parameterless callable: the CPU
        seen.append(x.device.type)
        return x.mean(dim=1, keepdim=True)

    assert embed(callable_model, torch.randn(2, 3, 8, 8)).shape == (2, 1) and seen[-1] == "cpu"
