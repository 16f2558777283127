"""ImageFiles: a folder of image files read lazily, at each file's own size; the trainer streams folders with it."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sgcl_plugin.image_folder import ImageFiles, UnreadableImageError


def gradient(w: int, h: int, seed: int = 0) -> Image.Image:
    """A smooth RGB test picture of (w, h) with a bright disc: structure for JPEG and for saliency."""
    y, x = np.mgrid[0:h, 0:w].astype(np.float32)
    rng = np.random.default_rng(seed)
    cx, cy, r = rng.uniform(0.3, 0.7) * w, rng.uniform(0.3, 0.7) * h, 0.2 * min(w, h)
    disc = ((x - cx) ** 2 + (y - cy) ** 2 < r**2).astype(np.float32)
    rgb = np.stack([x / w * 200, y / h * 200, 60 + 150 * disc], axis=-1)
    return Image.fromarray(rgb.clip(0, 255).astype(np.uint8))


def test_lists_image_files_sorted_recursively_skipping_hidden_and_other_files(tmp_path: Path) -> None:
    gradient(40, 30).save(tmp_path / "b.jpg")
    gradient(40, 30).save(tmp_path / "A.PNG")  # extensions in any case
    (tmp_path / "a").mkdir()
    gradient(40, 30).save(tmp_path / "a" / "z.webp")
    gradient(40, 30).save(tmp_path / "a" / ".x.jpg")  # hidden file
    (tmp_path / "a" / "._y.jpg").write_bytes(b"\x00\x05\x16\x07 macOS metadata")  # AppleDouble: hidden, never read
    (tmp_path / ".cache").mkdir()
    gradient(40, 30).save(tmp_path / ".cache" / "c.jpg")  # inside a hidden folder
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "folder.jpg").mkdir()  # a folder named like an image is walked, not read
    gradient(40, 30).save(tmp_path / "folder.jpg" / "d.bmp")
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe.jpg")  # a named pipe: opening it would block training forever
    (tmp_path / "link.jpg").symlink_to(tmp_path / "b.jpg")  # a link to an image file is an image file
    (tmp_path / "dangling.jpg").symlink_to(tmp_path / "gone.jpg")  # a broken link is not
    data = ImageFiles(tmp_path)
    names = [data.path(i).relative_to(tmp_path).as_posix() for i in range(len(data))]
    assert names == ["A.PNG", "a/z.webp", "b.jpg", "folder.jpg/d.bmp", "link.jpg"]  # sorted by path components
    assert data.path(-1) == data.path(4) and all(data[i].size == (40, 30) for i in range(len(data)))
    with pytest.raises(IndexError):
        data[5]


def test_items_keep_the_aspect_ratio_and_max_side_shrinks_only_larger_images(tmp_path: Path) -> None:
    wide, tall = gradient(320, 120, seed=1), gradient(60, 150, seed=2)
    wide.save(tmp_path / "1_wide.jpg", quality=95)
    tall.save(tmp_path / "2_tall.png")
    gradient(30, 20).save(tmp_path / "3_small.png")
    full = ImageFiles(tmp_path)
    assert [full[i].size for i in range(3)] == [(320, 120), (60, 150), (30, 20)]
    assert all(full[i].mode == "RGB" for i in range(3))
    small = ImageFiles(tmp_path, max_side=80)
    assert [small[i].size for i in range(3)] == [(80, 30), (32, 80), (30, 20)]
    # the JPEG is decoded at a reduced scale first: still the same picture as a full decode, resized
    reference = np.asarray(full[0].resize((80, 30), Image.Resampling.BILINEAR), dtype=np.float32)
    assert np.abs(np.asarray(small[0], dtype=np.float32) - reference).mean() < 6
    assert np.array_equal(np.asarray(small[2]), np.asarray(full[2]))  # under max_side: untouched


def test_16_bit_grey_palette_and_rgba_files_become_8_bit_rgb(tmp_path: Path) -> None:
    deep = (np.indices((64, 64)).sum(0) * 500).astype(np.uint16)  # 0 .. 63000: clipped at 255 by convert("RGB")
    Image.fromarray(deep).save(tmp_path / "deep.png")
    Image.fromarray(np.full((10, 12), 77, np.uint8)).save(tmp_path / "grey.png")
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: the colour stays, alpha is dropped
    Image.fromarray(rgba).save(tmp_path / "rgba.png")
    gradient(12, 10).convert("P").save(tmp_path / "palette.png")
    data = ImageFiles(tmp_path)
    items = {data.path(i).stem: data[i] for i in range(len(data))}
    assert all(im.mode == "RGB" for im in items.values())
    d = np.asarray(items["deep"], dtype=np.float32)
    expected = np.round(deep / 65535 * 255)
    assert np.abs(d[..., 0] - expected).max() <= 1 and d[-1, -1, 0] == 245  # 63000 scaled, not clipped
    assert (np.asarray(items["grey"]) == 77).all()
    assert (np.asarray(items["rgba"])[..., 0] == 200).all() and (np.asarray(items["rgba"])[..., 1:] == 0).all()
    assert items["palette"].size == (12, 10)


def test_missing_empty_and_bad_folders_and_files_are_refused_clearly(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="No such image folder"):
        ImageFiles(tmp_path / "nowhere")
    (tmp_path / "file.jpg").write_bytes(b"")
    with pytest.raises(NotADirectoryError):
        ImageFiles(tmp_path / "file.jpg")
    empty = tmp_path / "empty"
    (empty / ".hidden").mkdir(parents=True)
    gradient(8, 8).save(empty / ".hidden" / "x.jpg")
    (empty / "readme.txt").write_text("no images here")
    with pytest.raises(ValueError, match="No images"):
        ImageFiles(empty)
    with pytest.raises(ValueError, match="max_side"):
        ImageFiles(tmp_path, max_side=0)
    bad = tmp_path / "bad"
    bad.mkdir()
    gradient(64, 48).save(bad / "a_good.jpg")
    (bad / "b_broken.jpg").write_bytes((bad / "a_good.jpg").read_bytes()[:300])  # truncated JPEG
    (bad / "c_text.png").write_text("not a PNG")
    data = ImageFiles(bad)
    assert len(data) == 3 and data[0].size == (64, 48)  # listing opens no file: bad ones are found when read
    for i, name in ((1, "b_broken.jpg"), (2, "c_text.png")):
        with pytest.raises(UnreadableImageError, match=name) as err:
            data[i]
        assert isinstance(err.value, OSError)


def test_an_unreadable_file_is_named_from_a_dataloader_worker(tmp_path: Path) -> None:
    gradient(32, 32).save(tmp_path / "a.jpg")
    (tmp_path / "b.jpg").write_bytes(b"garbage")
    loader = torch.utils.data.DataLoader(ImageFiles(tmp_path), batch_size=None, num_workers=1)
    with pytest.raises(UnreadableImageError, match="b.jpg"):
        list(loader)


def test_memory_holds_file_names_not_pixels(tmp_path: Path) -> None:
    """The dataset pickles (to spawned workers) in the size of its names whatever the pixels, and reading every
    item keeps nothing: resident memory grows by about one image, not by the folder."""
    small, large = tmp_path / "small", tmp_path / "large"
    for folder, (w, h) in ((small, (16, 12)), (large, (1200, 900))):
        folder.mkdir()
        gradient(w, h).save(folder / "0000.jpg", quality=90)
        data = (folder / "0000.jpg").read_bytes()
        for i in range(1, 40):
            (folder / f"{i:04d}.jpg").write_bytes(data)
    a, b = ImageFiles(small), ImageFiles(large)
    assert len(a) == len(b) == 40
    assert len(pickle.dumps(a)) == len(pickle.dumps(b)) < 2000  # 40 x 1200 x 900 x 3 bytes would be 130 MB
    statm = Path("/proc/self/statm")
    if not statm.exists():
        pytest.skip("resident memory is read from /proc (Linux)")
    page = 4096

    def resident() -> int:
        return int(statm.read_text().split()[1]) * page

    b[0]  # warm-up: PIL's decoder and allocator
    before = resident()
    sizes = [b[i].size for i in range(len(b))]
    grown = resident() - before
    assert sizes == [(1200, 900)] * 40
    assert grown < 40e6, f"reading 40 images of 3.2 MB grew resident memory by {grown / 1e6:.0f} MB"


def test_the_trainer_streams_a_nested_folder_through_workers(tmp_path: Path) -> None:
    """A folder of photos of different aspect ratios trains, refreshes through the same dataset with the
    trainer's workers and draws its pictures; nothing decodes the folder into a table."""
    from sgcl_plugin import train as sgcl_train

    folder = tmp_path / "photos"
    (folder / "nested").mkdir(parents=True)
    for i, (w, h) in enumerate(((320, 180), (120, 200), (256, 256), (400, 150), (90, 60))):
        gradient(w, h, seed=i).save(folder / ("nested" if i % 2 else "") / f"{i}.jpg")
    (folder / "._0.jpg").write_bytes(b"\x00\x05\x16\x07")  # hidden: skipped
    out = tmp_path / "run"
    argv = ["--smoke", "--data", str(folder), "--method", "simclr", "--arch", "tiny-resnet", "--batch-size", "2",
            "--epochs", "1", "--refresh-at-start", "--workers", "1", "--max-side", "200", "--pictures", "2",
            "--no-eval", "--no-progress", "--out", str(out)]  # fmt: skip
    args = sgcl_train.parse_args(argv)
    trainer = sgcl_train.Trainer(args)
    assert isinstance(trainer.images, ImageFiles) and len(trainer.images) == 5
    sizes = {trainer.images.path(i).relative_to(folder).as_posix(): trainer.images[i].size for i in range(5)}
    assert sizes == {"0.jpg": (200, 112), "nested/1.jpg": (120, 200), "2.jpg": (200, 200), "nested/3.jpg": (200, 75),
                     "4.jpg": (90, 60)}  # fmt: skip  # aspect ratios kept, longer sides shrunk to --max-side
    result = trainer.fit()
    assert result["steps"] == 2 and result["pair_rate_start"] is None  # folders have no object masks
    state = torch.load(out / "checkpoint.pt", weights_only=True)
    assert state["bank"]["refreshes"] == 1 and (state["bank"]["counts"] > 0).all()
    assert (out / "saliency" / "refresh_01_epoch_000.png").exists() and (out / "saliency" / "final.png").exists()
    with pytest.raises(SystemExit):  # true boxes exist for composed scenes only
        sgcl_train.parse_args(["--data", str(folder), "--regions", "gt", "--out", str(out)])
    with pytest.raises(SystemExit):  # composed scenes are drawn at --image-size
        sgcl_train.parse_args(["--max-side", "100"])


def test_images_of_a_few_pixels_train_and_render(tmp_path: Path) -> None:
    """Photos of 3 px or less on a side (and --max-side 1) killed training at the first refresh and the viewer's
    drawing; they are images like any other."""
    from sgcl_plugin import train as sgcl_train

    data = tmp_path / "data"
    data.mkdir()
    for i in range(6):
        gradient(40, 30, seed=i).save(data / f"a{i}.png")
    Image.new("RGB", (3, 2), (9, 90, 9)).save(data / "tiny.png")
    Image.new("RGB", (1, 1), (200, 9, 9)).save(data / "one.png")
    common = ["--smoke", "--data", str(data), "--no-progress", "--no-eval"]
    for extra in ([], ["--max-side", "1"]):
        result = sgcl_train.main([*common, *extra, "--out", str(tmp_path / f"out{len(extra)}")], method="byol")
        assert result["refreshes"] and result["steps"] > 0
    from sgcl_plugin.viewer import main as viewer

    out = tmp_path / "rendered"
    argv = ["--images", str(data), "--out", str(out), "--backbone", "resnet18", "--size", "64", "--no-progress"]
    assert viewer(argv) == 0 and (out / "one.png").is_file() and (out / "tiny.png").is_file()
