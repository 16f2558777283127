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

# Every row: each is a few-second training run of the testbed's small network (with the trainer's ResNet-18 the 21
# rows took 5.7 minutes of the suite).
SMOKE_ROWS = tuple(ablation.ROWS)


def test_every_rows_command_line_parses(tmp_path) -> None:
    config = ablation.CONFIGS["smoke"]
    for row in ablation.ROWS:
        argv = ablation.row_argv(row, config, 0, tmp_path / row, [])
        args = ablation.sgcl_train.parse_args(argv)
        assert Path(args.out) == tmp_path / row and args.method == argv[1], row


def test_smoke_runs_the_rows_and_writes_the_report(tmp_path, capsys) -> None:
    out = tmp_path / "abl"
    doc = tmp_path / "RESULTS.md"
    doc.write_text("# Results\n\nkept text\n")
    results = ablation.main(["--smoke", "--rows", ",".join(SMOKE_ROWS), "--out", str(out), "--doc", str(doc)])
    assert set(results) == {f"{row}/seed0" for row in SMOKE_ROWS}
    kept = json.loads((out / "results.json").read_text())
    assert set(kept) == set(results)
    for key, r in kept.items():
        assert 0.0 <= r["knn"] <= 1.0 and 0.0 <= r["linear"] <= 1.0, key
        if key == "untrained/seed0":  # --epochs 0: evaluated once, no step
            assert [h["epoch"] for h in r["history"]] == [0.0] and r["steps"] == 0
            continue
        assert [h["epoch"] for h in r["history"]] == [0.0, 2.0], key  # --eval-every 2
        assert r["total_seconds"] > 0 and r["seconds_per_epoch"] > 0
    # a finished run keeps no checkpoint (never resumed; ~180 MB each), --smoke no weights either
    assert not list(out.rglob("*.pt"))
    # the row options reach the runs: no refresh for the baselines and ground-truth boxes, t pairs per image
    assert kept["byol/seed0"]["refreshes"] == [] and kept["gt/seed0"]["refreshes"] == []
    assert len(kept["sgcl-byol/seed0"]["refreshes"]) == 1
    assert "--num-regions" in kept["t1/seed0"]["argv"] and "--no-inter" in kept["byol+crops/seed0"]["argv"]
    assert "--first-refresh" in kept["warmup/seed0"]["argv"] and len(kept["sgcl-paper/seed0"]["refreshes"]) == 1
    # pair rates: before training (random crops) and at each refresh, for every row on composed scenes
    assert kept["sgcl-byol/seed0"]["refreshes"][0]["pair_rate"] >= 0 and kept["byol/seed0"]["pair_rate_start"] >= 0
    summary = json.loads((out / "evidence_summary.json").read_text())
    assert summary["seeds"] == [0] and set(summary["rows"]) == set(SMOKE_ROWS) - {"untrained"}
    assert summary["untrained"]["knn"] == pytest.approx(100 * kept["untrained/seed0"]["knn"], abs=0.01)
    assert summary["rows"]["gt"]["linear"] == [pytest.approx(100 * kept["gt/seed0"]["linear"], abs=0.01)]
    assert summary["gate"]["holds"] is False  # one seed can never pass a gate that needs three
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
    again = ablation.main(["--smoke", "--rows", ",".join(SMOKE_ROWS), "--out", str(out), "--doc", str(doc),
                           "--report-only"])  # fmt: skip
    assert again == kept
    ablation.write_block(doc, (out / "report.md").read_text().strip(), "smoke")
    ablation.write_block(doc, (out / "report.md").read_text().strip(), "smoke")  # replaced, not appended
    ablation.write_block(
        doc, "<!-- pretraining-ablation-cpu:begin -->\nx\n<!-- pretraining-ablation-cpu:end -->", "cpu"
    )
    # runs made by two processes (two --out folders) merge into one report
    keys = sorted(kept)
    for name, part in (("a", keys[::2]), ("b", keys[1::2])):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps({k: kept[k] for k in part}))
    merged = ablation.main(["--smoke", "--rows", ",".join(SMOKE_ROWS), "--out", str(tmp_path / "m"), "--report-only",
                            "--merge", str(tmp_path / "a" / "results.json"),
                            str(tmp_path / "b" / "results.json")])  # fmt: skip
    assert merged == kept
    text = doc.read_text()
    begin = ablation.markers("smoke")[0]
    assert (
        text.startswith("# Results\n\nkept text") and text.count(begin) == 1 and text.count("ablation-cpu:begin") == 1
    )


def test_unknown_row_is_refused(tmp_path) -> None:
    with pytest.raises(SystemExit):
        ablation.main(["--smoke", "--rows", "byol,nonsense", "--out", str(tmp_path)])


def run(seed: int, knn: float, linear: float) -> dict:
    return {"seed": seed, "knn": knn, "linear": linear}


def test_gate_and_oracle_fraction_by_hand() -> None:
    byol = [run(s, 0.30 + 0.01 * s, 0.40) for s in range(3)]
    gt = [run(s, 0.35 + 0.01 * s + 0.002 * s, 0.45 + 0.001 * s) for s in range(3)]  # +5.0/+5.2/+5.4, +5.0/+5.1/+5.2
    untrained = [run(0, 0.25, 0.35)]
    g = ablation.gate({"byol": byol, "gt": gt, "untrained": untrained})
    assert g["holds"] and g["seeds"] == [0, 1, 2]
    assert g["gt_minus_byol_knn"]["mean"] == pytest.approx(5.2) and g["gt_minus_byol_knn"]["std"] == pytest.approx(0.2)
    assert g["byol_minus_untrained_linear"] == pytest.approx(5.0)
    noisy = [run(s, 0.35 + 0.01 * s + (0.06 if s == 2 else 0.0), 0.45) for s in range(3)]  # +5, +5, +11: 3 std > mean
    assert not ablation.gate({"byol": byol, "gt": noisy, "untrained": untrained})["holds"]
    small = [run(s, 0.31 + 0.01 * s, 0.45) for s in range(3)]  # +1 point on kNN: under the 2-point floor
    assert not ablation.gate({"byol": byol, "gt": small, "untrained": untrained})["holds"]
    assert not ablation.gate({"byol": byol, "gt": gt, "untrained": [run(0, 0.5, 0.5)]})["holds"]  # BYOL < untrained
    assert not ablation.gate({"byol": byol[:2], "gt": gt[:2], "untrained": untrained})["holds"]  # two seeds
    # a row halfway between BYOL and the oracle recovers half its gain; no oracle gain: undefined
    half = [run(s, (b["knn"] + o["knn"]) / 2, 0.40) for s, b, o in zip(range(3), byol, gt)]
    assert ablation.oracle_fraction(half, byol, gt, "knn") == "50%"
    assert ablation.oracle_fraction(half, byol, gt, "linear") == "0%"
    assert ablation.oracle_fraction(half, gt, byol, "knn").startswith("- (oracle gain < 2 points)")
    small_gain = [run(s, b["knn"] + 0.01, 0.40) for s, b in zip(range(3), byol)]  # +1 point: no fraction
    assert ablation.oracle_fraction(half, byol, small_gain, "knn").startswith("- (oracle gain < 2 points)")


def test_rescore_adds_the_dense_probe_from_the_kept_weights(tmp_path) -> None:
    """Runs kept from before the dense probe get it from their backbone.pt, which must reproduce their pooled
    accuracies (so the weights are the run's)."""
    out = tmp_path / "abl"
    argv = [
        "--smoke",
        "--arch",
        "tiny-resnet",
        "--no-sgcl",
        "--epochs",
        "1",
        "--seed",
        "0",
        "--out",
        str(out / "byol" / "seed0"),
        "--no-progress",
    ]
    run = ablation.sgcl_train.main(argv, method="byol")
    kept = {**run, "argv": argv}
    old = {k: v for k, v in kept.items() if k not in ("dense_knn", "dense_linear")}  # as a run of before
    results = {"byol/seed0": dict(old)}
    assert ablation.rescore(results, tmp_path / "elsewhere", [out]) == 1
    assert results["byol/seed0"]["dense_knn"] == pytest.approx(run["dense_knn"], abs=1e-6)
    assert results["byol/seed0"]["dense_linear"] == pytest.approx(run["dense_linear"], abs=1e-6)
    assert ablation.rescore(results, out, []) == 0  # nothing left to add
    with pytest.raises(RuntimeError, match="not the run's weights"):
        ablation.rescore({"byol/seed0": {**old, "knn": old["knn"] + 0.05}}, out, [])
