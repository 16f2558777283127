"""sgcl_plugin.images: one listing rule for image folders (recursive or not), one RGB conversion for decoded files."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from sgcl_plugin.image_folder import ImageFiles
from sgcl_plugin.images import list_image_files, to_image_tensor, to_rgb_image
from sgcl_plugin.viewer import _image_sources, _load_image


def test_one_listing_rule_for_image_folders_and_the_viewer(tmp_path: Path) -> None:
    picture = Image.new("RGB", (8, 6), (10, 20, 30))
    picture.save(tmp_path / "b.jpg")
    picture.save(tmp_path / "A.PNG")
    (tmp_path / "notes.txt").write_text("not an image")
    picture.save(tmp_path / ".hidden.png")
    (tmp_path / "sub").mkdir()
    picture.save(tmp_path / "sub" / "c.png")
    assert list_image_files(tmp_path) == [("A.PNG",), ("b.jpg",), ("sub", "c.png")]
    assert list_image_files(str(tmp_path), recursive=False) == [("A.PNG",), ("b.jpg",)]
    # ImageFiles lists the whole tree, the viewer the folder's own files (its renderings may lie in a sub-folder)
    assert [ImageFiles(tmp_path).path(i).name for i in range(3)] == ["A.PNG", "b.jpg", "c.png"]
    assert [name for name, _ in _image_sources(tmp_path)] == ["A.PNG", "b.jpg"]


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "CMYK", "I;16", "I", "F"])
def test_one_rgb_conversion_reads_pixels_as_to_image_tensor(tmp_path: Path, mode: str) -> None:
    values = np.indices((6, 9)).sum(0)
    if mode in ("I;16", "I"):
        image = Image.fromarray((values * 4000).astype(np.uint16 if mode == "I;16" else np.int32))
    elif mode == "F":
        image = Image.fromarray((values / 13).astype(np.float32))
    else:
        image = Image.fromarray((values * 18).astype(np.uint8)).convert(mode)
    assert image.mode == mode
    rgb = to_rgb_image(image)
    assert rgb.mode == "RGB" and rgb.size == image.size
    expected = to_image_tensor(image).mul(255).round().byte().permute(1, 2, 0).numpy()
    np.testing.assert_array_equal(np.asarray(rgb), expected)
    if mode in ("I;16", "F"):  # 16-bit and float files: ImageFiles and the viewer decode them alike
        image.save(tmp_path / "wide.tif")
        np.testing.assert_array_equal(np.asarray(ImageFiles(tmp_path)[0]), expected)
        np.testing.assert_array_equal(np.asarray(_load_image(tmp_path / "wide.tif")), expected)


def test_a_channels_last_tensor_is_refused_with_the_permute_hint() -> None:
    import pytest
    import torch

    from sgcl_plugin.images import to_image_tensor

    with pytest.raises(ValueError, match=r"got 64\. A tensor is read channels first .*permute\(2, 0, 1\)"):
        to_image_tensor(torch.rand(64, 64, 3))
    with pytest.raises(ValueError, match=r"got 2\.$"):  # not channels last either: no hint
        to_image_tensor(torch.rand(2, 64, 64))
    assert to_image_tensor(torch.rand(64, 64, 3).permute(2, 0, 1)).shape == (3, 64, 64)
