"""The reference trainer (sgcl_plugin.train) and its scripts: --smoke of each method, the baseline, exact resume."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest
import torch

import sgcl_plugin.train.checkpoint
from sgcl_plugin import train as sgcl_train
from sgcl_plugin.images import IMAGENET_MEAN, IMAGENET_STD
from sgcl_plugin.testbed import eval_sets
from sgcl_plugin.testbed.evaluation import embed, knn_accuracy

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
# The testbed's small network: for the tests of the trainer's mechanics (resume, checkpoints, locks, DDP, curves), a
# few times faster on a CPU than --smoke's ResNet-18, which the per-method smoke tests keep.
TINY = ("--arch", "tiny-resnet")

pytest.importorskip("skimage")


@pytest.mark.parametrize("method", ["byol", "simclr", "nnclr"])
def test_smoke_runs_refreshes_draws_and_evaluates(tmp_path, capsys: pytest.CaptureFixture, method: str) -> None:
    out = tmp_path / method
    argv = ["--smoke", "--no-progress", "--eval-data", "fashion", "--out", str(out)]
    result = sgcl_train.main(argv, method=method)
    assert 0.0 <= result["knn"] <= 1.0 and 0.0 <= result["linear"] <= 1.0
    console = capsys.readouterr().out.splitlines()  # the evaluation (the run's longest quiet part) says it started
    started = [i for i, line in enumerate(console) if line.startswith("evaluating the backbone")]
    assert started and console[-1].startswith("kNN top-1") and started[-1] < len(console) - 1
    # the refresh's line is every host's (sgcl_plugin.refresher.refresh_summary), with the trainer's pair rate
    refreshed = [line for line in console if line.startswith("SGCL refresh 1 at epoch 1: ")]
    assert len(refreshed) == 1 and "regions/image over" in refreshed[0] and "pairs showing one object" in refreshed[0]
    # the accuracy is the saved, trained backbone's: evaluated again here from backbone.pt, independently
    args = sgcl_train.parse_args(argv, method=method)
    model = sgcl_train.SSLModel(method, args.arch, args.hidden_dim, args.proj_dim, args.width)
    untrained = {k: v.clone() for k, v in model.backbone.state_dict().items()}
    model.backbone.load_state_dict(torch.load(out / "backbone.pt", weights_only=True))
    assert any(not torch.equal(untrained[k], v) for k, v in model.backbone.state_dict().items())
    sets = eval_sets.fashion_eval_sets(args.eval_train, args.eval_test, args.crop_size)
    train, test = embed(model.backbone, sets["train_x"]), embed(model.backbone, sets["test_x"])
    assert knn_accuracy(train, sets["train_y"], test, sets["test_y"]) == pytest.approx(result["knn"], abs=1e-6)
    assert (out / "saliency" / "refresh_01_epoch_001.png").exists()
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["bank"]["refreshes"] == 1 and (state["bank"]["counts"] > 0).all()
    assert state["epoch"] == 2 and state["global_step"] == result["steps"]
    rows = (out / "log.csv").read_text().strip().splitlines()
    assert len(rows) == 1 + result["steps"]
    inter = [float(r.split(",")[4]) for r in rows[1:]]
    if method == "simclr":  # SGCL-SimCLR: the crops and the weighted NT-Xent, no inter-image loss by default
        assert max(inter) == 0.0 and not sgcl_train.parse_args(["--method", "simclr"]).inter
    else:
        assert inter[0] == 0.0 and max(inter) > 0  # the queue is masked until it holds l entries


def test_baseline_has_no_saliency(tmp_path) -> None:
    out = tmp_path / "plain"
    sgcl_train.main(["--smoke", "--no-sgcl", "--no-eval", "--no-progress", "--out", str(out)], method="byol")
    state = torch.load(out / "checkpoint.pt", weights_only=False)
    assert state["bank"]["refreshes"] == 0
    assert not (out / "saliency" / "refresh_01_epoch_001.png").exists()


def test_literal_paper_readings(tmp_path) -> None:
    """--intra-reduction sum is Eq. 9 read literally (t x the mean over pairs, same first step);
    --before-refresh regions and --box-jitter train through a refresh."""
    common = ["--smoke", "--no-eval", "--no-progress", "--stop-after-steps", "1"]
    sgcl_train.main([*common, "--out", str(tmp_path / "mean")], method="byol")
    sgcl_train.main([*common, "--out", str(tmp_path / "sum"), "--intra-reduction", "sum"], method="byol")
    first = lambda run: (tmp_path / run / "log.csv").read_text().splitlines()[1].split(",")  # noqa: E731
    mean, total = first("mean"), first("sum")
    assert float(total[3]) == pytest.approx(4 * float(mean[3]), rel=1e-5)  # t = 4 pairs per image
    out = tmp_path / "literal"
    argv = ["--smoke", "--no-eval", "--no-progress", "--before-refresh", "regions", "--box-jitter", "0.1"]
    result = sgcl_train.main([*argv, "--out", str(out)], method="byol")
    assert result["steps"] == 4 and (out / "saliency" / "refresh_01_epoch_001.png").exists()
    with pytest.raises(SystemExit):
        sgcl_train.parse_args(["--box-jitter", "-1"])


def test_testbed_options(tmp_path) -> None:
    """--objects, --crop-scale, --hue, --grayscale-p and --eval-data isolated reach the scenes, the crops and
    the pair rate; bad values are refused."""
    common = ["--smoke", "--no-progress", "--stop-after-steps", "1", "--objects", "1", "2", "--hue", "0.5"]
    rates = {}
    for scale in ((0.9, 1.0), (0.05, 0.1)):
        out = tmp_path / f"scale{scale[0]}"
        argv = [*common, "--no-eval", "--crop-scale", *map(str, scale), "--grayscale-p", "0.5", "--out", str(out)]
        rates[scale] = sgcl_train.main(argv, method="byol")["pair_rate_start"]
    # near-whole-image random crops never show one small object over 30% of the crop; small crops do
    assert rates[(0.9, 1.0)] == 0.0 < rates[(0.05, 0.1)]
    a = sgcl_train.parse_args(["--smoke", "--objects", "1", "2", "--eval-data", "isolated"])
    sets = eval_sets.scene_object_eval_sets(40, 20, a.crop_size, a.image_size, tuple(a.object_scale), (1, 2), True)
    ctx = eval_sets.scene_object_eval_sets(40, 20, a.crop_size, a.image_size, tuple(a.object_scale), (1, 2), False)
    assert sets["train_x"].shape == ctx["train_x"].shape and torch.equal(sets["train_y"], ctx["train_y"])
    corner = lambda x: x[:, :, 0, 0].std(dim=0).max()  # noqa: E731  # spread over objects, per channel
    assert corner(sets["train_x"]) < 1e-5 < 0.1 < corner(ctx["train_x"])  # grey corners only
    result = sgcl_train.main(["--smoke", "--no-progress", "--epochs", "0", "--eval-data", "isolated",
                              "--objects", "1", "2", "--out", str(tmp_path / "iso")])  # fmt: skip
    assert 0.0 <= result["knn"] <= 1.0
    # --co-occurrence 2: training and evaluation scenes draw each scene's objects from one pair (c, c + 5)
    assert eval_sets.class_groups(2) == ((0, 5), (1, 6), (2, 7), (3, 8), (4, 9))
    assert eval_sets.class_groups(10) is None
    paired = sgcl_train.training_scenes(sgcl_train.parse_args(["--smoke", "--co-occurrence", "2"]))
    assert all(len({c % 5 for c in paired[i]["labels"].tolist()}) == 1 for i in range(len(paired)))
    pair_sets = eval_sets.scene_object_eval_sets(40, 20, a.crop_size, a.image_size, tuple(a.object_scale), (2, 2),
                                                  False, co_occurrence=2)  # fmt: skip
    assert len(set(pair_sets["test_y"].tolist())) > 2  # every class stays in the evaluation, paired per scene
    for bad in (["--objects", "3", "2"], ["--crop-scale", "0", "1"], ["--hue", "0.7"], ["--grayscale-p", "2"],
                ["--co-occurrence", "3"]):  # fmt: skip
        with pytest.raises(SystemExit):
            sgcl_train.parse_args(bad)


def test_killed_run_resumes_exactly(tmp_path) -> None:
    common = ["--smoke", *TINY, "--no-eval", "--no-progress", "--epochs", "3", "--ckpt-every", "2"]
    full = tmp_path / "full"
    sgcl_train.main([*common, "--out", str(full)], method="byol")
    cut = tmp_path / "cut"
    # killed after step 3 (mid epoch 1, after the first refresh): the last checkpoint is at step 2
    sgcl_train.main([*common, "--out", str(cut), "--stop-after-steps", "3"], method="byol")
    # checkpoints hold tensors and plain values only: they load with weights_only=True
    assert torch.load(cut / "checkpoint.pt", weights_only=True)["global_step"] == 2
    rows = (cut / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step") and [r.split(",")[1] for r in rows[1:]] == ["1", "2", "3"]  # flushed
    # another batch size could never end its epoch: refused, naming the option, before any step
    with pytest.raises(ValueError, match=r"--batch-size 8 -> 4"):
        sgcl_train.main([*common, "--out", str(cut), "--resume", "auto", "--batch-size", "4"], method="byol")
    sgcl_train.main([*common, "--out", str(cut), "--resume", "auto", "--workers", "1"], method="byol")  # free option
    a = torch.load(full / "checkpoint.pt", weights_only=True)
    b = torch.load(cut / "checkpoint.pt", weights_only=True)
    rows = (cut / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step") and [int(r.split(",")[1]) for r in rows[1:]] == list(range(1, 7))
    assert a["global_step"] == b["global_step"] == 6
    for key in a["model"]:
        torch.testing.assert_close(a["model"][key], b["model"][key], rtol=0, atol=0, msg=key)
    assert {"inter.queue", "inter.ptr", "inter.count"} <= set(a["objective"])  # BYOL: the inter-image queue
    for key in a["objective"]:
        torch.testing.assert_close(a["objective"][key], b["objective"][key], rtol=0, atol=0, msg=key)
    for key in ("boxes", "scores", "counts"):
        torch.testing.assert_close(a["bank"][key], b["bank"][key], rtol=0, atol=0)


def test_a_checkpoint_from_before_the_objective_resumes(tmp_path) -> None:
    """Checkpoints written before SGCLObjective kept the queues under "inter" and "support": they still load."""
    common = ["--smoke", *TINY, "--no-eval", "--no-progress", "--epochs", "2", "--out", str(tmp_path)]
    sgcl_train.main([*common, "--stop-after-steps", "3", "--ckpt-every", "2"], method="nnclr")
    path = tmp_path / "checkpoint.pt"
    state = torch.load(path, weights_only=True)
    queues = state.pop("objective")
    for name in ("inter", "support"):
        state[name] = {k.split(".", 1)[1]: v for k, v in queues.items() if k.startswith(name + ".")}
    assert state["support"]["count"] > 0
    torch.save(state, path)
    trainer = sgcl_train.Trainer(sgcl_train.parse_args([*common, "--resume", "auto"], method="nnclr"))
    trainer.load(str(path))
    for key, value in queues.items():
        torch.testing.assert_close(trainer.objective.state_dict()[key], value, rtol=0, atol=0)


def test_a_checkpoint_never_runs_code(tmp_path) -> None:
    """--resume loads with weights_only=True: a crafted file is refused and its payload never runs."""
    import os

    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):  # type: ignore[no-untyped-def]
            return (os.system, (f"touch {marker}",))

    evil = tmp_path / "evil.pt"
    torch.save({"model": {}, "rng": {}, "payload": Payload()}, evil)
    with pytest.raises(ValueError, match="weights_only=True"):
        sgcl_train.main(["--smoke", "--no-eval", "--no-progress", "--out", str(tmp_path / "o"), "--resume", str(evil)])
    assert not marker.exists()
    (tmp_path / "junk.pt").write_bytes(b"not a checkpoint at all")
    with pytest.raises(ValueError, match="cannot load safely|not a checkpoint"):
        sgcl_train.load_checkpoint(tmp_path / "junk.pt")


def test_resume_needs_the_same_processes() -> None:
    args = sgcl_train.parse_args(["--smoke"])
    saved = vars(args).copy()
    sgcl_train.check_resumable(args, saved, world=1, saved_world=1)
    with pytest.raises(ValueError, match="processes 2 -> 1"):
        sgcl_train.check_resumable(args, saved, world=1, saved_world=2)
    saved["out"], saved["seed"] = "elsewhere", 7  # where outputs go may change; the seed may not
    with pytest.raises(ValueError, match=r"--seed 7 -> 0") as err:
        sgcl_train.check_resumable(args, saved, world=1, saved_world=1)
    assert "--out 'elsewhere'" not in str(err.value)


def test_training_outputs_load_where_the_docs_say(tmp_path) -> None:
    from sgcl_plugin.backbones import resnet_backbone
    from sgcl_plugin.viewer import main as viewer

    out = tmp_path / "run"
    sgcl_train.main(["--smoke", "--no-eval", "--no-progress", "--epochs", "1", "--out", str(out)], method="byol")
    trained = torch.load(out / "backbone.pt", weights_only=True)
    net = resnet_backbone("resnet18", str(out / "backbone.pt"))
    loaded = net.trunk.state_dict()
    assert len(loaded) == len(trained)
    for (k1, v1), (k2, v2) in zip(trained.items(), loaded.items()):
        torch.testing.assert_close(v1, v2, msg=f"{k1} vs {k2}")
    from_ckpt = resnet_backbone("resnet18", str(out / "checkpoint.pt")).trunk.state_dict()
    for v1, v2 in zip(trained.values(), from_ckpt.values()):
        torch.testing.assert_close(v1, v2)
    images = tmp_path / "photos"
    from sgcl_plugin.sample_images import export_sample_images

    export_sample_images(images, ["coffee"])
    argv = ["--images", str(images), "--out", str(tmp_path / "sal"), "--backbone", "resnet18", "--size", "128"]
    assert viewer([*argv, "--checkpoint", str(out / "checkpoint.pt"), "--device", "cpu", "--no-progress"]) == 0


@pytest.mark.parametrize(
    "argv,match",
    [
        (["--batch-size", "0"], "--batch-size must be >= 1"),
        (["--ckpt-every", "0"], "--ckpt-every must be >= 1"),
        (["--num-images", "0"], "--num-images must be >= 1"),
        (["--epochs", "-1"], "--epochs must be >= 0"),
        (["--saliency-size", "16"], "--saliency-size 16 gives a feature grid under 2 x 2"),
        (["--lr", "0"], "--lr must be a finite number > 0"),
        (["--ema", "1.5"], "--ema must be in"),
        (["--epochs", "0", "--no-eval"], "does nothing"),
        (["--data", "tests", "--regions", "gt"], "--regions gt needs the composed scenes"),
        # each of these gave a traceback (or an out-of-memory) instead of a message
        (["--hidden-dim", "0"], "--hidden-dim must be >= 1"),
        (["--hidden-dim", "-5"], "--hidden-dim must be >= 1"),
        (["--proj-dim", "0"], "--proj-dim must be >= 1"),
        (["--object-scale", "2", "3"], "--object-scale needs 0 < LOW <= HIGH <= 1"),
        (["--object-scale", "nan", "nan"], "--object-scale needs"),
        (["--queue-size", "2", "--num-neighbors", "5"], "--queue-size 2 holds fewer rows than --num-neighbors 5"),
        (["--baseline-crop-size", "-4"], "--baseline-crop-size must be >= 0"),
        (["--baseline-crop-size", "1"], "--baseline-crop-size must be 0 (automatic) or >= 2"),
        (["--arch", "nosuchnet"], "--arch 'nosuchnet' is not one of"),
        (["--arch", "vit_b_16"], "--arch 'vit_b_16' is not one of"),
        (["--arch", "alexnet"], "--arch 'alexnet' is not one of"),
        (["--data", "/no/such/folder"], "--data /no/such/folder: no such folder"),
        (["--resume", "/no/such/ckpt.pt"], "--resume /no/such/ckpt.pt: no such checkpoint file"),
        (["--out", "README.md"], "--out README.md is a file"),
        (["--seed", "-1"], "--seed must be >= 0"),
        (["--seed", "99999999999"], "--seed must be below 2**32"),
        (["--crop-size", "100000"], "--crop-size 100000 is beyond"),
        (["--image-size", "100000"], "--image-size 100000 is beyond"),
    ],
)
def test_bad_options_are_refused_at_start(argv: list, match: str, capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit):
        sgcl_train.parse_args(argv)
    assert match in capsys.readouterr().err


def test_out_inside_the_data_folder_is_refused(tmp_path, capsys: pytest.CaptureFixture) -> None:
    (tmp_path / "photos").mkdir()
    for out in (tmp_path / "photos", tmp_path / "photos" / "run"):
        with pytest.raises(SystemExit):
            sgcl_train.parse_args(["--data", str(tmp_path / "photos"), "--out", str(out)])
        assert "inside the --data folder" in capsys.readouterr().err


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
    # kornia really ran: the workers' crops are un-augmented [0, 1] pixels, the device views are kornia's
    args = sgcl_train.parse_args(["--smoke", "--augment-on-device", "--no-eval", "--out", str(out / "b")], "simclr")
    trainer = sgcl_train.Trainer(args)
    assert not trainer.crop.augment and trainer.crop.view_transforms is None
    steps = [type(m).__module__ for view in trainer.device_views for m in view.augment]
    assert steps and all(name.startswith("kornia.") for name in steps)
    crops = trainer.items[0]["views1"]
    assert float(crops.min()) >= 0.0 and float(crops.max()) <= 1.0
    views, _ = trainer.augment_views(crops, crops)
    assert float(views.min()) < 0.0  # ImageNet-normalized by kornia's Normalize


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
           "--smoke", *TINY, "--no-eval", "--no-progress", "--out", str(out)]  # fmt: skip
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


def test_eval_every_draws_curves_without_changing_training(tmp_path) -> None:
    common = ["--smoke", *TINY, "--no-progress", "--epochs", "2", "--eval-train", "60", "--eval-test", "40"]
    plain = sgcl_train.main([*common, "--out", str(tmp_path / "plain")], method="byol")
    curves = sgcl_train.main([*common, "--eval-every", "1", "--out", str(tmp_path / "curves")], method="byol")
    assert [h["epoch"] for h in curves["history"]] == [0.0, 1.0, 2.0]
    assert curves["history"][-1]["knn"] == curves["knn"] and curves["history"][-1]["linear"] == curves["linear"]
    rows = (tmp_path / "curves" / "eval.csv").read_text().strip().splitlines()
    assert rows[0] == "epoch,knn,linear,dense_knn,dense_linear"
    assert [r.split(",")[0] for r in rows[1:]] == ["0", "1", "2"]
    # the dense probe, again from backbone.pt: cells labelled from the scenes' own masks (not the index maps)
    from sgcl_plugin.testbed.evaluation import cell_labels, dense_probe_accuracy
    from sgcl_plugin.testbed.scenes import ComposedScenes

    args = sgcl_train.parse_args([*common, "--out", str(tmp_path / "plain")], method="byol")
    model = sgcl_train.SSLModel("byol", args.arch, args.hidden_dim, args.proj_dim, args.width)
    model.backbone.load_state_dict(torch.load(tmp_path / "plain" / "backbone.pt", weights_only=True))
    probe = []
    for split, n, seed in (("train", 30, 1001), ("test", 20, 1002)):
        scenes = ComposedScenes(n, image_size=args.image_size, seed=seed, split=split, object_scale=args.object_scale,
                                min_objects=args.objects[0], max_objects=args.objects[1])  # fmt: skip
        items = [scenes[i] for i in range(n)]
        x = torch.stack([torch.as_tensor(np.asarray(it["image"])).permute(2, 0, 1) for it in items]).float() / 255
        maps = embed(model.backbone, eval_sets.imagenet_normalize(x), pool=False)
        probe += [maps, torch.stack([cell_labels(it["masks"], it["labels"], maps.shape[2:]) for it in items])]
    dense = dense_probe_accuracy(*probe)
    assert plain["dense_knn"] == pytest.approx(dense["knn"], abs=1e-6)
    assert plain["dense_linear"] == pytest.approx(dense["linear"], abs=1e-6)
    # evaluating in between draws no random numbers and leaves train mode as it was: same weights, same result
    a = torch.load(tmp_path / "plain" / "backbone.pt")
    b = torch.load(tmp_path / "curves" / "backbone.pt")
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=0, atol=0, msg=key)
    assert plain["knn"] == curves["knn"] and plain["history"] == []


def test_scene_object_evaluation_sets_are_learnable() -> None:
    sets = eval_sets.scene_object_eval_sets(600, 300, 64, 160)
    assert sets["train_x"].shape == (600, 3, 64, 64) and sets["test_x"].shape == (300, 3, 64, 64)
    assert len(sets["train_y"].unique()) == 10 and len(sets["test_y"].unique()) == 10
    assert abs(float(sets["train_x"].mean())) < 1.0  # ImageNet-normalized
    # random features already separate the classes above chance (10%): the sets carry the labels' signal
    torch.manual_seed(0)
    backbone = sgcl_train.SSLModel("byol", "resnet18", 64, 32).backbone
    train = embed(backbone, sets["train_x"])
    test = embed(backbone, sets["test_x"])
    assert knn_accuracy(train, sets["train_y"], test, sets["test_y"]) > 0.2


def test_fashion_evaluation_still_available(tmp_path) -> None:
    out = tmp_path / "fashion"
    argv = ["--smoke", "--no-progress", "--epochs", "1", "--eval-data", "fashion", "--out", str(out)]
    result = sgcl_train.main(argv, method="simclr")
    assert 0.2 < result["knn"] <= 1.0


def test_pretrained_backbone_refreshes_before_the_first_step(tmp_path) -> None:
    pytest.importorskip("efficientnet_lite_pytorch")
    out = tmp_path / "lite"
    argv = ["--smoke", "--no-progress", "--arch", "efficientnet-lite0", "--refresh-at-start", "--epochs", "1"]
    result = sgcl_train.main([*argv, "--eval-every", "1", "--out", str(out)], method="byol")
    assert [r["epoch"] for r in result["refreshes"]] == [0.0]  # at the start, never "at epoch 0" otherwise
    assert (out / "saliency" / "refresh_01_epoch_000.png").exists()
    # the ImageNet weights are loaded (not a random network) and see input in their own normalization
    from sgcl_plugin.backbones import efficientnet_lite0

    model = sgcl_train.SSLModel("byol", "efficientnet-lite0", 64, 32)
    x = torch.rand(2, 3, 64, 64)
    normalized = (x - torch.tensor(IMAGENET_MEAN)[:, None, None]) / torch.tensor(IMAGENET_STD)[:, None, None]
    reference = efficientnet_lite0(pretrained=True).eval()
    with torch.no_grad():
        torch.testing.assert_close(
            model.backbone.eval()(normalized), reference((x - 0.498) / 0.502), atol=1e-4, rtol=1e-4
        )


def test_demo_runs_both_methods_and_draws_the_pairs(tmp_path, capsys) -> None:
    import importlib.util

    spec = importlib.util.spec_from_file_location("demo", EXAMPLES / "demo.py")  # a script, not a module
    assert spec is not None and spec.loader is not None
    demo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(demo)
    argv = ["--out", str(tmp_path), "--epochs", "2", "--num-images", "128", "--refresh-interval", "1",
            "--eval-train", "100", "--eval-test", "60", "--no-progress"]  # fmt: skip
    runs = demo.main(argv)
    plain, sgcl = runs["plain"], runs["sgcl"]
    assert plain["refreshes"] == [] and len(sgcl["refreshes"]) == 1
    # both runs start from the same network on the same evaluation sets: one untrained reference
    assert plain["history"][0]["knn"] == sgcl["history"][0]["knn"]
    # SGCL's regions pair the same object far more often than random crops of these cluttered scenes
    assert sgcl["refreshes"][0]["pair_rate"] > plain["pair_rate_start"] + 0.1
    assert (tmp_path / "pairs.png").stat().st_size > 10_000
    assert list((tmp_path / "sgcl" / "saliency").glob("refresh_01_*.png"))
    text = capsys.readouterr().out
    assert "untrained network" in text and "SGCL, refresh by refresh" in text
    # the dense probe is printed beside the pooled one, for the untrained network too (its epoch-0 evaluation)
    line = next(t for t in text.splitlines() if t.strip().startswith("SGCL-SimCLR"))
    assert f"{100 * sgcl['dense_knn']:.1f}%" in line and f"{100 * sgcl['linear']:.1f}%" in line
    assert "dense_knn" in plain["history"][0]


def test_device_augmentations_differ_by_rank_and_repeat_by_step(tmp_path) -> None:
    """--augment-on-device: the views' randomness is a function of (seed, rank, step): ranks draw different
    augmentations (one seed for all ranks made them identical), a resumed step draws the same ones, and the
    global random state is not consumed."""
    pytest.importorskip("kornia")
    args = sgcl_train.parse_args(["--smoke", "--no-eval", "--augment-on-device", "--out", str(tmp_path)])
    trainer = sgcl_train.Trainer(args)
    crops = torch.rand(16, 3, args.crop_size, args.crop_size, generator=torch.Generator().manual_seed(0))
    state = torch.get_rng_state()
    a1, a2 = trainer.augment_views(crops, crops)
    b1, b2 = trainer.augment_views(crops, crops)
    assert torch.equal(torch.get_rng_state(), state)
    assert torch.equal(a1, b1) and torch.equal(a2, b2)  # same (seed, rank, step): the same views
    assert not torch.equal(a1, a2)  # view 1 and view 2 differ
    trainer.rank = 1
    c1, _ = trainer.augment_views(crops, crops)
    assert not torch.equal(a1, c1)
    trainer.rank, trainer.global_step = 0, 1
    d1, _ = trainer.augment_views(crops, crops)
    assert not torch.equal(a1, d1)


def test_seeded_items_leave_the_cuda_generators_alone() -> None:
    """SeededItems seeds the CPU generator per item; torch.manual_seed also reseeded every CUDA generator
    of the main process (with --workers 0) and fork_rng(devices=[]) did not restore them."""
    seen = []

    class Probe(torch.utils.data.Dataset):
        def __len__(self) -> int:
            return 4

        def __getitem__(self, i: int) -> float:
            seen.append(torch.initial_seed())
            return float(torch.rand(()))

    items = sgcl_train.SeededItems(Probe(), seed=3)
    assert items[2] == items[2] and items[1] != items[2]  # per-item randomness, repeatable
    assert len(set(seen)) == 2
    if torch.cuda.is_available():
        torch.cuda.manual_seed_all(123)
        before = torch.cuda.get_rng_state()
        items[0]
        assert torch.equal(torch.cuda.get_rng_state(), before)


def test_a_finished_run_is_not_overwritten_by_accident(tmp_path) -> None:
    """A second run into an --out that holds one is refused (it used to truncate log.csv and replace the
    finished run's checkpoint), naming the ways on; --overwrite replaces it on purpose."""
    common = ["--smoke", *TINY, "--no-eval", "--no-progress", "--epochs", "1", "--out", str(tmp_path)]
    sgcl_train.main(common, method="byol")
    before = {n: (tmp_path / n).read_bytes() for n in ("checkpoint.pt", "log.csv", "backbone.pt")}
    with pytest.raises(ValueError, match=r"holds a run.*--resume auto.*another --out.*--overwrite"):
        sgcl_train.main(common, method="byol")
    assert all((tmp_path / n).read_bytes() == b for n, b in before.items())
    sgcl_train.main([*common, "--resume", "auto"], method="byol")  # continuing is fine (nothing left to do)
    sgcl_train.main([*common, "--overwrite", "--seed", "1"], method="byol")
    assert (tmp_path / "backbone.pt").read_bytes() != before["backbone.pt"]


def test_a_corrupt_checkpoint_is_refused_before_resuming(tmp_path) -> None:
    """Every position field and the queues are checked before anything is applied: a step past the epoch's end
    used to hang the resumed epoch forever; a queue pointer out of range or NaN rows would index or poison."""
    common = ["--smoke", *TINY, "--no-eval", "--no-progress", "--epochs", "2", "--out", str(tmp_path)]
    sgcl_train.main([*common, "--stop-after-steps", "3", "--ckpt-every", "1"], method="byol")
    path = tmp_path / "checkpoint.pt"
    good = torch.load(path, weights_only=True)
    assert good["global_step"] == 3 and good["step_in_epoch"] == 1  # 2 steps per epoch
    edits = {
        "step past the epoch": ({"step_in_epoch": 5, "global_step": 7}, "step_in_epoch 5"),
        "negative epoch": ({"epoch": -3}, "epoch -3"),
        "epoch past --epochs": ({"epoch": 9, "global_step": 19}, "epoch 9"),
        "inconsistent step count": ({"global_step": 11}, "global_step 11"),
        "refresh in the future": ({"refreshed_epoch": 4}, "refreshed_epoch 4"),
    }
    for _name, (edit, match) in edits.items():
        torch.save({**good, **edit}, path)
        with pytest.raises(ValueError, match=match):
            sgcl_train.main([*common, "--resume", "auto"], method="byol")
    for key, value, match in (
        ("inter.ptr", torch.tensor(10**6), "pointer"),
        ("inter.count", torch.tensor(-1), "count"),
        ("inter.queue", None, "NaN or Inf"),
    ):
        objective = dict(good["objective"])
        if value is None:
            value = objective[key].clone()
            value[0, 0] = float("nan")
            objective["inter.count"] = torch.tensor(value.shape[0])
        objective[key] = value
        torch.save({**good, "objective": objective}, path)
        with pytest.raises(ValueError, match=match):
            sgcl_train.main([*common, "--resume", "auto"], method="byol")
    torch.save(good, path)
    sgcl_train.main([*common, "--resume", "auto"], method="byol")  # the good one still resumes


def test_two_runs_never_write_one_out_at_once(tmp_path) -> None:
    """Two runs on one --out shared checkpoint.pt.tmp (a crash, or a torn checkpoint): the second is refused while
    the first holds the --out's lock, which goes with the first run however it ends."""
    args = sgcl_train.parse_args(["--smoke", "--no-eval", "--no-progress", "--out", str(tmp_path)], method="byol")
    first = sgcl_train.Trainer(args)
    with pytest.raises(ValueError, match="Another run is writing --out"):
        sgcl_train.main(["--smoke", "--no-eval", "--no-progress", "--out", str(tmp_path)], method="byol")
    first.release()
    sgcl_train.main(["--smoke", "--no-eval", "--no-progress", "--out", str(tmp_path)], method="byol")


def test_a_refusal_is_a_message_and_exit_status_2_not_a_traceback(tmp_path) -> None:
    import subprocess

    sgcl_train.main(["--smoke", "--no-eval", "--no-progress", "--epochs", "1", "--out", str(tmp_path)], method="byol")
    cmd = [sys.executable, str(EXAMPLES / "byol.py"), "--smoke", "--no-eval", "--no-progress", "--out", str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.startswith("byol.py: error: --out") and "--resume auto" in done.stderr


def test_links_planted_in_out_are_never_written_through(tmp_path) -> None:
    import os

    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    for name in ("log.csv", "backbone.pt", "saliency"):
        out = tmp_path / f"out_{name}"
        out.mkdir()
        os.symlink(target, out / name)
        with pytest.raises(sgcl_train.Refused, match=f"symbolic links.*{name}"):
            sgcl_train.main(["--smoke", "--no-eval", "--no-progress", "--overwrite", "--out", str(out)], method="byol")
        assert target.read_text() == "keep me"
    # the checkpoint's temporary file is a fresh one each time (O_EXCL): a link at the old fixed name is inert
    out = tmp_path / "out_tmp"
    out.mkdir()
    os.symlink(target, out / "checkpoint.pt.tmp")
    sgcl_train.main(["--smoke", "--no-eval", "--no-progress", "--epochs", "1", "--out", str(out)], method="byol")
    assert target.read_text() == "keep me" and (out / "checkpoint.pt").is_file()


def test_a_garbage_line_in_the_log_does_not_block_resume(tmp_path) -> None:
    common = ["--smoke", *TINY, "--no-eval", "--no-progress", "--epochs", "2", "--out", str(tmp_path)]
    sgcl_train.main([*common, "--stop-after-steps", "3", "--ckpt-every", "1"], method="byol")
    with open(tmp_path / "log.csv", "a") as f:
        f.write("\x00garbage,not a step\n1,\n")
    sgcl_train.main([*common, "--resume", "auto"], method="byol")
    rows = (tmp_path / "log.csv").read_text().splitlines()
    assert rows[0].startswith("epoch,step") and [int(r.split(",")[1]) for r in rows[1:]] == [1, 2, 3, 4]


def test_a_full_disk_at_a_checkpoint_is_a_message_and_the_old_one_stays(tmp_path, monkeypatch) -> None:
    common = ["--smoke", *TINY, "--no-eval", "--no-progress", "--epochs", "2", "--ckpt-every", "1"]
    common += ["--out", str(tmp_path)]
    sgcl_train.main([*common, "--stop-after-steps", "2"], method="byol")
    before = (tmp_path / "checkpoint.pt").read_bytes()

    def full(path, write):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(sgcl_plugin.train.checkpoint, "atomic_write", full)
    with pytest.raises(sgcl_train.Refused, match="disk full.*previous file is intact"):
        sgcl_train.main([*common, "--resume", "auto"], method="byol")
    assert (tmp_path / "checkpoint.pt").read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")) == []


def test_help_has_groups_a_help_for_every_option_and_defaults() -> None:
    parser = sgcl_train.build_parser()
    titles = [g.title for g in parser._action_groups]
    for title in ("SGCL: the method", "data and views", "model and optimisation", "run, checkpoints and outputs",
                  "evaluation", "testbed and ablations (composed scenes)"):  # fmt: skip
        assert title in titles
    bare = [a.option_strings[0] for a in parser._actions if a.option_strings and not a.help]
    assert bare == []  # 14 options had no help (--method, --gamma, --epochs, --lr, --seed, --out, --workers, ...)
    text = parser.format_help()
    assert "--lr LR" in text and "(default: 0.002)" in text and "(default: runs/sgcl)" in text


def test_no_progress_still_prints_the_loss_once_an_epoch(tmp_path, capsys) -> None:
    sgcl_train.main(["--smoke", *TINY, "--no-eval", "--no-progress", "--out", str(tmp_path)], method="byol")
    lines = [line for line in capsys.readouterr().out.splitlines() if line.startswith("epoch ")]
    assert len(lines) == 2 and all(": loss " in line for line in lines)
