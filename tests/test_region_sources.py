"""The region-source table (sgcl_plugin.region_sources): every place that names a mode reads it, and the generator
calls the mode's own function with the mode's own options."""

from __future__ import annotations

import argparse
import pickle
from dataclasses import dataclass
from typing import Optional

import numpy as np
import pytest
import torch
from torch import Tensor

from sgcl_plugin import ChannelSumGenerator, Regions, SaliencyGenerator, SaliencyResult
from sgcl_plugin.backbones import tiny_resnet
from sgcl_plugin.features import refresh_features
from sgcl_plugin.heatmap import HeatmapOptions
from sgcl_plugin.hierarchy import HierarchyOptions
from sgcl_plugin.objects import ObjectsOptions
from sgcl_plugin.region_sources import (
    DEFAULT_REGION_SOURCE,
    REGION_MODES,
    REGION_SOURCES,
    RegionSource,
    check_region_source,
)
from sgcl_plugin.spectral import CutOptions, SourceOptions


def _choices(parser: argparse.ArgumentParser, option: str) -> tuple:
    return tuple(next(a for a in parser._actions if option in a.option_strings).choices)


def _features(seed: int = 0, shape: tuple = (2, 16, 8, 8)) -> Tensor:
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


def test_every_mode_builds_a_generator_and_an_unknown_one_is_refused() -> None:
    assert SaliencyGenerator().regions == DEFAULT_REGION_SOURCE
    assert REGION_MODES == ("paper", "objects", "hierarchy", "heatmap")
    features = _features()
    for mode in REGION_MODES:
        result = SaliencyGenerator(regions=mode)(features)
        assert len(result.regions) == 2 and result.maps.shape == (2, 8, 8)
    with pytest.raises(
        ValueError, match=r"Unknown regions mode 'blobs'; choose one of \('paper', 'objects', 'hierarchy', 'heatmap'\)"
    ):
        SaliencyGenerator(regions="blobs")
    with pytest.raises(ValueError, match="Unknown regions mode"):
        check_region_source(None)


def test_the_clis_offer_every_mode_with_the_same_default() -> None:
    from sgcl_plugin.train.options import build_parser as trainer_parser
    from sgcl_plugin.viewer import build_parser as viewer_parser

    for parser, extra in ((trainer_parser(), ("ncut", "gt")), (viewer_parser(), ("both", "all"))):
        assert _choices(parser, "--regions") == (*REGION_MODES, *extra)
        assert parser.get_default("regions") == DEFAULT_REGION_SOURCE
        help_text = next(a for a in parser._actions if "--regions" in a.option_strings).help
        assert all(REGION_SOURCES[m].summary in help_text for m in REGION_MODES)


def test_the_trainer_builds_the_mode_it_is_given_and_refuses_none_silently() -> None:
    from sgcl_plugin.train.model import build_generator

    for name, mode in (("ncut", "paper"), ("gt", DEFAULT_REGION_SOURCE), *((m, m) for m in REGION_MODES)):
        generator = build_generator(argparse.Namespace(regions=name, min_area=4))
        assert generator.regions == mode
    with pytest.raises(ValueError, match="Unknown regions mode 'blobs'"):  # no silent fallback to a default mode
        build_generator(argparse.Namespace(regions="blobs", min_area=4))


def test_the_trainers_photo_ranking_builds_the_option_and_only_for_the_hierarchy_mode(tmp_path) -> None:
    from sgcl_plugin.hierarchy import PHOTO_RANKING, HierarchyOptions
    from sgcl_plugin.train import parse_args
    from sgcl_plugin.train.model import build_generator

    args = parse_args(["--regions", "hierarchy", "--photo-ranking", "--out", str(tmp_path)])
    options = build_generator(args).options
    assert options == HierarchyOptions(mature_frame=1.0, blob_candidates=True, score_power=12.0) == PHOTO_RANKING
    assert build_generator(parse_args(["--out", str(tmp_path)])).options == HierarchyOptions()
    with pytest.raises(SystemExit):
        parse_args(["--regions", "objects", "--photo-ranking", "--out", str(tmp_path)])


def test_refresh_features_reads_a_pair_for_the_modes_that_want_one() -> None:
    torch.manual_seed(0)
    model = tiny_resnet(8).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        for mode in REGION_MODES:
            out = refresh_features(model, "auto", mode)(x)
            assert isinstance(out, tuple) == REGION_SOURCES[mode].reads_pair, mode
        with pytest.raises(ValueError, match="Unknown regions mode"):
            refresh_features(model, "auto", "blobs")


def test_the_trainer_reads_the_last_map_for_the_heat_map_whatever_the_stride() -> None:
    from sgcl_plugin.train.model import saliency_features

    torch.manual_seed(0)
    model = tiny_resnet(8).eval()
    x = torch.randn(1, 3, 64, 64)
    last = model(x).shape[-2:]  # the tiny ResNet's last map: stride 16
    with torch.no_grad():
        for stride in (None, [8]):
            args = argparse.Namespace(regions="heatmap", saliency_stride=stride)
            assert saliency_features(model, args)(x).shape[-2:] == last
        paper = saliency_features(model, argparse.Namespace(regions="paper", saliency_stride=[8]))(x)
    assert paper.shape[-2:] == (8, 8)  # a stride applies to the Ncut modes


def _heatmap_by_hand(features: np.ndarray, threshold: float) -> list:
    """(box, area, fallback) per image: the tightest cell box around the min-max scaled channel sum above the
    threshold, in numpy (independent of the source's torch code)."""
    out = []
    for f in features:
        heat = f.sum(0)
        span = heat.max() - heat.min()
        scaled = (heat - heat.min()) / span if span > 0 else np.zeros_like(heat)
        cells = np.argwhere(scaled > threshold)
        h, w = heat.shape
        if len(cells) == 0:
            out.append(([0.0, 0.0, 1.0, 1.0], h * w, True))
            continue
        (r0, c0), (r1, c1) = cells.min(0), cells.max(0) + 1
        out.append(([c0 / w, r0 / h, c1 / w, r1 / h], len(cells), False))
    return out


@pytest.mark.parametrize("threshold", [0.0, 0.1, 0.5, 0.9])
def test_the_heat_map_source_boxes_the_hot_cells_as_a_hand_computation(threshold: float) -> None:
    g = torch.Generator().manual_seed(3)
    # Small integers: the channel sums are exact in float32, so the comparison is exact too.
    f = torch.randint(-4, 5, (3, 6, 7, 9), generator=g).float()
    f[1, :, 2:4, 5:8] += 20  # one hot block
    f[2] = 1.0  # flat: the whole image
    result = SaliencyGenerator(regions="heatmap", threshold=threshold)(f)
    for (box, area, fallback), r in zip(_heatmap_by_hand(f.numpy(), threshold), result.regions):
        assert r.fallback == fallback and r.areas.tolist() == [area] and r.scores.tolist() == [1.0]
        torch.testing.assert_close(r.boxes, torch.tensor([box], dtype=torch.float32), rtol=0, atol=0)
    heat = f.sum(1)
    lo, hi = heat.amin((1, 2), keepdim=True), heat.amax((1, 2), keepdim=True)
    expected = torch.where(hi > lo, (heat - lo) / (hi - lo).clamp(min=1e-30), torch.zeros_like(heat))
    torch.testing.assert_close(result.maps, expected)
    torch.testing.assert_close(result.fiedler, expected.flatten(1))
    if threshold == 0.1:
        old = ChannelSumGenerator(threshold)(f)  # the old name: the same source
        assert all(torch.equal(a.boxes, b.boxes) for a, b in zip(old.regions, result.regions))
        assert torch.equal(old.maps, result.maps)


def test_options_objects_are_built_from_the_keywords_and_check_themselves() -> None:
    g = SaliencyGenerator(regions="hierarchy", max_regions=3, num_clusters=5, sign_rule="argmax")
    assert g.cut == CutOptions(sign_rule="argmax")
    assert g.options == HierarchyOptions(num_clusters=5, max_regions=3)
    # A keyword of another mode would silently do nothing: refused, naming the mode's own options.
    with pytest.raises(ValueError, match=r"\['threshold'\] does not apply to regions='hierarchy'.*max_regions"):
        SaliencyGenerator(regions="hierarchy", threshold=0.7)
    with pytest.raises(ValueError, match=r"\['max_regions', 'nms_iou'\] do not apply to regions='paper'.*no mode"):
        SaliencyGenerator(regions="paper", nms_iou=0.3, max_regions=4)
    assert SaliencyGenerator(regions="objects", num_clusters=6).options == ObjectsOptions(num_clusters=6)
    assert "max_regions=3" in repr(g) and "sign_rule='argmax'" in repr(g)
    assert SaliencyGenerator(regions="paper").options is None
    assert SaliencyGenerator(regions="objects").options == ObjectsOptions()
    assert SaliencyGenerator(regions="heatmap", threshold=0.3).options == HeatmapOptions(0.3)
    # the options object given whole: the same generator as its keywords
    f = _features(1, (2, 16, 10, 10))
    given = SaliencyGenerator(regions="hierarchy", options=HierarchyOptions(num_clusters=5, max_regions=3))
    a, b = given(f), SaliencyGenerator(regions="hierarchy", num_clusters=5, max_regions=3)(f)
    assert torch.equal(a.maps, b.maps) and all(torch.equal(x.boxes, y.boxes) for x, y in zip(a.regions, b.regions))
    for bad, match in (
        (lambda: HierarchyOptions(nms_iou=0.0), "nms_iou"),
        (lambda: ObjectsOptions(num_clusters=1), "num_clusters"),
        (lambda: HeatmapOptions(threshold=1.0), "threshold"),
        (lambda: CutOptions(connectivity=6), "connectivity"),
        (
            lambda: SaliencyGenerator(regions="objects", options=HierarchyOptions()),
            "takes options of class ObjectsOptions",
        ),
        (lambda: SaliencyGenerator(regions="paper", options=ObjectsOptions()), "takes no options"),
        (lambda: SaliencyGenerator(regions="objects", options=ObjectsOptions(), ring=3), r"\['ring'\], not both"),
        (lambda: SaliencyGenerator(regions="hierarchy", options=HierarchyOptions(), solver="cupy"), "cupy"),
    ):
        with pytest.raises(ValueError, match=match):
            bad()
    with pytest.raises(AttributeError):  # frozen
        g.options.ring = 3  # type: ignore[misc, union-attr]


def test_a_generator_pickles_with_its_options() -> None:
    f = _features(2, (2, 16, 9, 9))
    for mode in REGION_MODES:
        extra = {"objectness": {"contrast": 0.0}} if mode == "hierarchy" else {}
        g = SaliencyGenerator(regions=mode, min_area=2, **extra)
        copy = pickle.loads(pickle.dumps(g))  # what spawned DataLoader workers and ddp_spawn receive
        assert repr(copy) == repr(g)
        a, b = g(f), copy(f)
        assert torch.equal(a.maps, b.maps) and all(torch.equal(x.boxes, y.boxes) for x, y in zip(a.regions, b.regions))


@dataclass(frozen=True)
class _MarginOptions(SourceOptions):
    threshold: float = 0.0  # a field named like a generator keyword: filled from it
    margin: float = 0.1  # one the generator has no keyword for: options= gives it


def _margin_source(cut: CutOptions, options: _MarginOptions, fine: Tensor, coarse: Optional[Tensor]) -> SaliencyResult:
    B, _, h, w = fine.shape
    m = options.margin
    boxes = torch.tensor([[m, m, 1 - m, 1 - m]])
    regions = [Regions(boxes, torch.ones(1), torch.tensor([h * w]), fallback=False) for _ in range(B)]
    return SaliencyResult(torch.full((B, h, w), options.threshold), regions, torch.zeros(B, h * w))


try:
    from omegaconf import OmegaConf
except ImportError:  # solo-learn's config library, optional
    OmegaConf = None


def test_a_new_mode_is_a_function_and_a_row(monkeypatch: pytest.MonkeyPatch) -> None:
    """A mode added to the table (here by a test, as a user's own module would) works through the generator and the
    CLIs' choices without any change to saliency.py, the trainer or the viewer."""
    from sgcl_plugin.adapters.solo import add_sgcl_cfg
    from sgcl_plugin.train.model import build_generator
    from sgcl_plugin.train.options import build_parser as trainer_parser
    from sgcl_plugin.viewer import build_parser as viewer_parser

    row = RegionSource("margin", "the image less a margin", _margin_source, _MarginOptions)
    monkeypatch.setitem(REGION_SOURCES, "margin", row)
    f = _features(3)
    result = SaliencyGenerator(regions="margin", threshold=0.5)(f)
    assert result.maps.unique().tolist() == [0.5]
    torch.testing.assert_close(result.regions[1].boxes, torch.tensor([[0.1, 0.1, 0.9, 0.9]]))
    wide = SaliencyGenerator(regions="margin", options=_MarginOptions(margin=0.25))(f)
    torch.testing.assert_close(wide.regions[0].boxes, torch.tensor([[0.25, 0.25, 0.75, 0.75]]))
    assert pickle.loads(pickle.dumps(SaliencyGenerator(regions="margin"))).options == _MarginOptions()
    assert build_generator(argparse.Namespace(regions="margin", min_area=4)).regions == "margin"
    assert "margin" in _choices(trainer_parser(), "--regions") and "margin" in _choices(viewer_parser(), "--regions")
    assert (
        "the image less a margin" in next(a for a in viewer_parser()._actions if "--regions" in a.option_strings).help
    )
    if OmegaConf is not None:  # solo's config check
        assert add_sgcl_cfg(OmegaConf.create({"sgcl": {"regions": "margin"}})).sgcl.regions == "margin"
    monkeypatch.delitem(REGION_SOURCES, "margin")
    with pytest.raises(ValueError, match="Unknown regions mode 'margin'"):
        SaliencyGenerator(regions="margin")
