"""The region-source table (sgcl_plugin.region_sources): every place that names a mode reads it."""

from __future__ import annotations

import argparse

import pytest
import torch

from sgcl_plugin import SaliencyGenerator
from sgcl_plugin.backbones import tiny_resnet
from sgcl_plugin.features import refresh_features
from sgcl_plugin.region_sources import DEFAULT_REGION_SOURCE, REGION_MODES, REGION_SOURCES, check_region_source


def _choices(parser: argparse.ArgumentParser, option: str) -> tuple:
    return tuple(next(a for a in parser._actions if option in a.option_strings).choices)


def test_every_mode_builds_a_generator_and_an_unknown_one_is_refused() -> None:
    assert SaliencyGenerator().regions == DEFAULT_REGION_SOURCE
    g = torch.Generator().manual_seed(0)
    features = torch.randn(2, 16, 8, 8, generator=g)
    for mode in REGION_MODES:
        result = SaliencyGenerator(regions=mode)(features)  # type: ignore[arg-type]
        assert len(result.regions) == 2
    with pytest.raises(
        ValueError, match=r"Unknown regions mode 'blobs'; choose one of \('paper', 'objects', 'hierarchy'\)"
    ):
        SaliencyGenerator(regions="blobs")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="Unknown regions mode"):
        check_region_source(None)


def test_the_clis_offer_every_mode_with_the_same_default() -> None:
    from sgcl_plugin.train.options import build_parser as trainer_parser
    from sgcl_plugin.viewer import build_parser as viewer_parser

    for parser, extra in ((trainer_parser(), ("ncut", "heatmap", "gt")), (viewer_parser(), ("both", "all"))):
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
