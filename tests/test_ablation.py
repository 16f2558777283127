"""The pretraining ablation benchmark: its --smoke runs every row, keeps results, resumes and reports."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

pytest.importorskip("skimage")
pytest.importorskip("matplotlib")

import ablation  # noqa: E402


def test_smoke_runs_every_row_and_writes_the_report(tmp_path, capsys) -> None:
    out = tmp_path / "abl"
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\nkept text\n")
    results = ablation.main(["--smoke", "--out", str(out), "--doc", str(doc)])
    assert set(results) == {f"{row}/seed0" for row in ablation.ROWS}
    kept = json.loads((out / "results.json").read_text())
    assert set(kept) == set(results)
    for key, r in kept.items():
        assert 0.0 <= r["knn"] <= 1.0 and 0.0 <= r["linear"] <= 1.0, key
        assert [h["epoch"] for h in r["history"]] == [0.0, 1.0, 2.0], key
        assert r["total_seconds"] > 0 and r["seconds_per_epoch"] > 0
    # the row options reach the runs: no refresh for the baselines and ground-truth boxes, t pairs per image
    assert kept["byol/seed0"]["refreshes"] == [] and kept["gt/seed0"]["refreshes"] == []
    assert len(kept["sgcl-byol/seed0"]["refreshes"]) == 1
    assert "--num-regions" in kept["t1/seed0"]["argv"] and "--no-inter" in kept["byol+crops/seed0"]["argv"]
    # same seed, same starting weights and evaluation sets: every row starts from the same accuracy
    start = {r["history"][0]["knn"] for r in kept.values()}
    assert len({round(v, 6) for v in start}) == 1
    report = (out / "report.md").read_text()
    for title, _, _ in ablation.TABLES:
        assert title in report
    assert (out / "images" / "ablation_curves_smoke.png").stat().st_size > 1000
    assert doc.read_text() == "# Results\n\nkept text\n"  # --smoke never touches the docs

    # a second call keeps every finished run and only rewrites the report into the doc block
    capsys.readouterr()
    again = ablation.main(["--smoke", "--out", str(out), "--doc", str(doc), "--report-only"])
    assert again == kept
    ablation.write_block(doc, (out / "report.md").read_text().strip(), "smoke")
    ablation.write_block(doc, (out / "report.md").read_text().strip(), "smoke")  # replaced, not appended
    ablation.write_block(
        doc, "<!-- pretraining-ablation-cpu:begin -->\nx\n<!-- pretraining-ablation-cpu:end -->", "cpu"
    )
    text = doc.read_text()
    begin = ablation.markers("smoke")[0]
    assert (
        text.startswith("# Results\n\nkept text") and text.count(begin) == 1 and text.count("ablation-cpu:begin") == 1
    )


def test_unknown_row_is_refused(tmp_path) -> None:
    with pytest.raises(SystemExit):
        ablation.main(["--smoke", "--rows", "byol,nonsense", "--out", str(tmp_path)])
