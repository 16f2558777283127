"""benchmarks/objectness_sweep.py: the sweep under floors that the hierarchy mode's exponents are chosen with."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "benchmarks"))

pytest.importorskip("skimage")
pytest.importorskip("efficientnet_lite_pytorch")

import objectness_sweep as sweep  # noqa: E402
import saliency_quality as sq  # noqa: E402

from sgcl_plugin import FeatureMaps, SaliencyGenerator  # noqa: E402
from sgcl_plugin.backbones import efficientnet_lite0  # noqa: E402


def test_the_unseen_splits_and_bad_exponents_are_refused():
    with pytest.raises(SystemExit, match=r"\['test4'\] is kept unseen"):
        sweep.main(["--splits", "dev", "test4"])
    with pytest.raises(SystemExit, match="FACTOR one of"):
        sweep.main(["--vary", "size=1"])
    with pytest.raises(SystemExit, match="finite and >= 0"):
        sweep.main(["--vary", "frame=-1"])
    with pytest.raises(SystemExit, match="unknown splits"):
        sweep.main(["--splits", "train"])
    assert sweep.variants({"frame": [2.0, 1.0]}) == [{}, {"frame": 1.0}]  # the default combination is not repeated


def test_a_small_sweep_measures_each_variant_and_checks_the_floors(tmp_path):
    out = tmp_path / "sweep.json"
    argv = ["--vary", "separation=3,0", "--splits", "dev", "--sources", "skimage", "--num-scenes", "4",
            "--pairs", "4", "--composed-pairs", "101", "--out", str(out)]  # fmt: skip
    rows = sweep.main(argv)
    assert [r["overrides"] for r in rows] == [{}, {"separation": 0.0}]
    assert rows[1]["exponents"]["separation"] == 0.0 and rows[0]["exponents"]["separation"] == 3.0
    assert all("composed" in r["misses"] for r in rows)  # no region source shows one object in 101% of pairs
    # The defaults' row against the generator run directly on the same photos (its CorLoc and recall).
    items = sq.scenes(4, splits=["dev"], sources=["skimage"])
    lite = efficientnet_lite0().eval()
    f = tuple(sq.features(FeatureMaps(lite, stride=s), items, 448, lite.mean, lite.std)[0] for s in (16, 32))
    regions, _, _ = sq.generate(SaliencyGenerator(regions="hierarchy"), f, len(items))
    photos = [i for i, it in enumerate(items) if it["set"] == "dev"]
    m = sq.region_metrics([items[i] for i in photos], [regions[i] for i in photos])
    assert rows[0]["lite0"]["dev"][:2] == pytest.approx([m["corloc"], m["recall"]])
    assert json.loads(out.read_text())["rows"][1]["overrides"] == {"separation": 0.0}


def test_a_shortlist_measures_only_the_best_top_boxes():
    argv = ["--vary", "separation=3,0", "--vary", "frame=2,0", "--splits", "dev", "--sources", "skimage",
            "--num-scenes", "4", "--pairs", "2", "--composed-corloc", "0", "--shortlist", "1"]  # fmt: skip
    rows = sweep.main(argv)
    assert len(rows) == 2 and rows[0]["overrides"] == {}  # the defaults and the one best variant
    items = sq.scenes(4, splits=["dev"], sources=["skimage"])
    lite = efficientnet_lite0().eval()
    f = tuple(sq.features(FeatureMaps(lite, stride=s), items, 448, lite.mean, lite.std)[0] for s in (16, 32))
    best = []
    for overrides in sweep.variants({"separation": [3.0, 0.0], "frame": [2.0, 0.0]})[1:]:
        regions, _, _ = sq.generate(SaliencyGenerator(regions="hierarchy", objectness=overrides), f, len(items))
        photos = [i for i, it in enumerate(items) if it["set"] == "dev"]
        best.append(sq.region_metrics([items[i] for i in photos], [regions[i] for i in photos])["corloc"])
    assert rows[1]["lite0"]["dev"][0] == max(best)
    with pytest.raises(SystemExit, match="shortlist"):
        sweep.main(["--shortlist", "-1"])
