"""extract_regions against hand-made maps with known components, areas, scores and boxes."""

from __future__ import annotations

import pytest
import torch

from sgcl_plugin import extract_regions


def test_two_blobs_known_areas_scores_boxes() -> None:
    S = torch.zeros(1, 10, 10)
    S[0, 1:3, 1:4] = 0.9  # 2 x 3 = 6 cells, peak 0.9
    S[0, 2, 2] = 1.0  # ... with the global max
    S[0, 6:10, 5:7] = 0.5  # 4 x 2 = 8 cells, peak 0.5
    (r,) = extract_regions(S)
    assert not r.fallback
    assert r.areas.tolist() == [6, 8]
    torch.testing.assert_close(r.scores, torch.tensor([1.0, 0.5]))
    torch.testing.assert_close(r.boxes, torch.tensor([[0.1, 0.1, 0.4, 0.3], [0.5, 0.6, 0.7, 1.0]]))


def test_diagonal_cells_join_with_8_connectivity_only() -> None:
    S = torch.zeros(1, 6, 6)
    for i in range(4):
        S[0, i, i] = 1.0  # a diagonal line of 4 cells
    (r8,) = extract_regions(S, min_area=1, connectivity=8)
    (r4,) = extract_regions(S, min_area=1, connectivity=4)
    assert r8.areas.tolist() == [4]
    torch.testing.assert_close(r8.boxes, torch.tensor([[0.0, 0.0, 4 / 6, 4 / 6]]))
    assert r4.areas.tolist() == [1, 1, 1, 1]
    # min_area=2 drops every 4-connected speck: whole-image fallback
    (r4b,) = extract_regions(S, min_area=2, connectivity=4)
    assert r4b.fallback and r4b.scores.tolist() == [1.0]


def test_min_area_drops_small_components_and_score_uses_global_max() -> None:
    S = torch.zeros(1, 8, 8)
    S[0, 0, 0] = 1.0  # the global max, a single cell: dropped by min_area=4
    S[0, 4:6, 4:6] = 0.6  # 4 cells, kept
    (r,) = extract_regions(S, min_area=4)
    assert r.areas.tolist() == [4]
    torch.testing.assert_close(r.scores, torch.tensor([0.6]))  # max(S[B]) / max(S), max(S) = 1


def test_scores_divide_by_the_map_max() -> None:
    S = torch.zeros(1, 4, 4)
    S[0, :2, :2] = 0.4
    S[0, 3, 2:] = 0.2  # not touching the first blob, even diagonally
    (r,) = extract_regions(S, min_area=1)
    torch.testing.assert_close(r.scores, torch.tensor([1.0, 0.5]))


def test_mask_threshold_is_the_mean() -> None:
    S = torch.full((1, 4, 4), 0.5)
    S[0, 0, :] = 1.0  # mean = (4 * 1 + 12 * 0.5) / 16 = 0.625: only the top row is above
    (r,) = extract_regions(S, min_area=1)
    assert r.areas.tolist() == [4]
    torch.testing.assert_close(r.boxes, torch.tensor([[0.0, 0.0, 1.0, 0.25]]))


def test_flat_map_falls_back_to_whole_image() -> None:
    (r,) = extract_regions(torch.zeros(1, 5, 7))
    assert r.fallback
    torch.testing.assert_close(r.boxes, torch.tensor([[0.0, 0.0, 1.0, 1.0]]))
    assert r.scores.tolist() == [1.0] and r.areas.tolist() == [35]


@pytest.mark.parametrize("B", [1, 3, 16])
def test_batch_never_joins_images_and_matches_one_by_one(B: int) -> None:
    g = torch.Generator().manual_seed(B)
    maps = torch.rand(B, 12, 9, generator=g)
    batched = extract_regions(maps, min_area=2)
    for i in range(B):
        (single,) = extract_regions(maps[i : i + 1], min_area=2)
        torch.testing.assert_close(batched[i].boxes, single.boxes)
        torch.testing.assert_close(batched[i].scores, single.scores)
        assert (batched[i].scores[:-1] >= batched[i].scores[1:]).all()
        assert ((batched[i].scores > 0) & (batched[i].scores <= 1)).all()


def test_same_object_in_every_image_of_a_batch() -> None:
    # Identical blobs at the same place in each image: a labelling that connected the batch axis
    # would merge them into one component.
    maps = torch.zeros(4, 6, 6)
    maps[:, 1:4, 1:4] = 1.0
    for r in extract_regions(maps):
        assert r.areas.tolist() == [9]


def test_bad_input() -> None:
    with pytest.raises(ValueError, match="shape"):
        extract_regions(torch.zeros(4, 4))
    with pytest.raises(ValueError, match="NaN"):
        extract_regions(torch.full((1, 3, 3), float("nan")))
    with pytest.raises(ValueError, match="connectivity"):
        extract_regions(torch.zeros(1, 3, 3), connectivity=6)
    with pytest.raises(ValueError, match="min_area"):
        extract_regions(torch.zeros(1, 3, 3), min_area=0)


def test_regions_whose_peak_is_not_positive_are_dropped() -> None:
    # A Fiedler vector has both signs; the mean here is below 0, so the component at -0.1 is above
    # the mean but wholly on the background side of the cut: Eq. 5 would score it <= 0.
    S = torch.full((1, 8, 8), -1.0)
    S[0, :3, :3] = 0.8  # 9 cells, global max
    S[0, 5:8, 5:8] = -0.1  # 9 cells above the mean (-0.45...), peak < 0
    (r,) = extract_regions(S, min_area=4)
    assert r.areas.tolist() == [9]
    torch.testing.assert_close(r.scores, torch.tensor([1.0]))


def test_non_positive_maximum_falls_back_to_whole_image() -> None:
    S = -torch.rand(2, 6, 6, generator=torch.Generator().manual_seed(0)) - 0.1  # max(S) < 0
    for r in extract_regions(S, min_area=1):
        assert r.fallback and r.scores.tolist() == [1.0]
