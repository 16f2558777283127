"""The reference training scripts: --smoke of each method, the baseline, and exact resume after a kill."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
sys.path.insert(0, str(EXAMPLES))

import sgcl_train  # noqa: E402

pytest.importorskip("skimage")


@pytest.mark.parametrize("method", ["byol", "simclr", "nnclr"])
def test_smoke_runs_refreshes_draws_and_evaluates(tmp_path, method: str) -> None:
    out = tmp_path / method
    result = sgcl_train.main(["--smoke", "--no-progress", "--out", str(out)], method=method)
    assert 0.0 <= result["knn"] <= 1.0 and 0.0 <= result["linear"] <= 1.0
    assert result["knn"] > 0.2  # 10 classes: far above chance even after 4 steps, or the pipeline is broken
    assert (out / "saliency" / "refresh_01_epoch_001.png").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["bank"]["refreshes"] == 1 and (state["bank"]["counts"] > 0).all()
    assert state["epoch"] == 2 and state["global_step"] == result["steps"]
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + result["steps"]
    inter = [float(r.split(",")[4]) for r in rows[1:]]
    assert inter[0] == 0.0 and max(inter) > 0  # the queue is masked until it holds l entries


def test_baseline_has_no_saliency(tmp_path) -> None:
    out = tmp_path / "plain"
    sgcl_train.main(["--smoke", "--no-sgcl", "--no-eval", "--no-progress", "--out", str(out)], method="byol")
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["bank"]["refreshes"] == 0
    assert not (out / "saliency" / "refresh_01_epoch_001.png").exists()


def test_killed_run_resumes_exactly(tmp_path) -> None:
    common = ["--smoke", "--no-eval", "--no-progress", "--epochs", "3", "--ckpt-every", "2"]
    full = tmp_path / "full"
    sgcl_train.main([*common, "--out", str(full)], method="byol")
    cut = tmp_path / "cut"
    # killed after step 3 (mid epoch 1, after the first refresh): the last checkpoint is at step 2
    sgcl_train.main([*common, "--out", str(cut), "--stop-after-steps", "3"], method="byol")
    assert torch.load(cut / "checkpoint.pt", weights_only=False)["global_step"] == 2
    sgcl_train.main([*common, "--out", str(cut), "--resume", "auto"], method="byol")
    a = torch.load(full / "checkpoint.pt", weights_only=False)
    b = torch.load(cut / "checkpoint.pt", weights_only=False)
    assert a["global_step"] == b["global_step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    for key in ("queue", "ptr", "count"):
        torch.testing.assert_close(a["inter"][key], b["inter"][key], rtol=0, atol=0)
    for key in ("boxes", "scores", "counts"):
        torch.testing.assert_close(a["bank"][key], b["bank"][key], rtol=0, atol=0)


def test_view_augmentations_on_device_with_kornia(tmp_path) -> None:
    pytest.importorskip("kornia")
    out = tmp_path / "kornia"
    result = sgcl_train.main(
        ["--smoke", "--augment-on-device", "--no-eval", "--no-progress", "--epochs", "1", "--out", str(out)],
        method="simclr",
    )
    assert result["steps"] == 2
    rows = (out / "log.csv").read_text().strip().splitlines()[1:]
    assert all(float(r.split(",")[2]) > 0 for r in rows)


def test_any_image_folder_is_training_data(tmp_path) -> None:
    from sgcl_plugin.sample_images import export_sample_images

    folder = tmp_path / "photos"
    export_sample_images(folder)
    out = tmp_path / "run"
    result = sgcl_train.main(
        ["--smoke", "--data", str(folder), "--batch-size", "4", "--no-eval", "--no-progress", "--out", str(out)],
        method="byol",
    )
    assert result["steps"] == 2 * (7 // 4)  # 7 photos, batches of 4, 2 epochs
    assert (out / "saliency" / "refresh_01_epoch_001.png").exists()


def test_folder_without_images_is_refused(tmp_path) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="No images"):
        sgcl_train.main(["--smoke", "--data", str(tmp_path / "empty"), "--out", str(tmp_path / "o")])


def test_ddp_with_torchrun_on_two_cpu_processes(tmp_path) -> None:
    import subprocess

    out = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", str(EXAMPLES / "byol.py"),
           "--smoke", "--no-eval", "--no-progress", "--out", str(out)]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "world 2" in done.stdout
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    # the refresh was sharded across the two ranks and gathered: every image has regions
    assert state["bank"]["refreshes"] == 1 and (state["bank"]["counts"] > 0).all()
    assert state["global_step"] == 2  # 16 images, 8 per rank and step: 1 step per epoch


@pytest.mark.parametrize("regions", ["gt", "heatmap"])
def test_baseline_region_sources(tmp_path, regions: str) -> None:
    out = tmp_path / regions
    sgcl_train.main(["--smoke", "--regions", regions, "--no-eval", "--no-progress", "--out", str(out)], method="byol")
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    counts = state["bank"]["counts"]
    if regions == "gt":  # true boxes from the start, never refreshed: 2-6 objects per scene
        assert state["bank"]["refreshes"] == 0 and ((counts >= 2) & (counts <= 6)).all()
    else:  # one heat-map box per image
        assert state["bank"]["refreshes"] == 1 and (counts == 1).all()
