"""A folder of image files as a lazy map-style dataset: read one file per item, at its own size.

:class:`ImageFiles` lists the image files of a folder once (recursively, sorted, hidden paths
skipped) and decodes an item only when it is asked for, so a dataset of any number of images costs
the memory of its file names; DataLoader workers decode in parallel, and the same dataset feeds the
crops (:class:`~sgcl_plugin.bank_crops.SaliencyCropDataset`) and the saliency refresh
(:func:`~sgcl_plugin.refresh.refresh_bank`). Items keep the
file's aspect ratio: the crop transform and the refresh express boxes relative to the image, so
no square resize is needed before the crop.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional, Tuple, Union

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from sgcl_plugin.checks import check_index, check_int
from sgcl_plugin.images import IMAGE_EXTENSIONS, list_image_files, to_rgb_image

__all__ = ["ImageFiles", "UnreadableImageError"]


class UnreadableImageError(OSError):
    """An image file of an :class:`ImageFiles` dataset that cannot be decoded; the message names the file."""


class ImageFiles(Dataset):
    """The image files under a folder, decoded lazily, one RGB PIL image per item at its own size.

    The files are listed once, at construction, by :func:`~sgcl_plugin.images.list_image_files`: every
    regular file under ``root`` (sub-folders included, symbolic links to folders not followed) whose
    name ends in one of :data:`~sgcl_plugin.images.IMAGE_EXTENSIONS`, skipping any path with a hidden
    part (a name starting with ``"."``, e.g. macOS ``._x.jpg`` metadata files or a ``.cache/`` folder),
    sorted by path components. A flat folder of JPEGs such
    as COCO's ``train2017/`` and nested class folders both work. The list is kept as one byte string,
    so the dataset pickles (to spawned DataLoader workers) in the size of its file names and forked
    workers share it without copy-on-read growth.

    Listing does not open the files (for COCO's 118k images that would cost minutes): a file that
    cannot be decoded raises :class:`UnreadableImageError`, naming the file, when its item is read,
    from a DataLoader worker too. Clean such files out of the folder, or wrap the dataset.

    Every item is an 8-bit RGB PIL image (:func:`~sgcl_plugin.images.to_rgb_image`): grey, palette, CMYK
    and RGBA files are converted (alpha dropped), and 16-bit, 32-bit and float files are scaled to 8 bits
    as :func:`~sgcl_plugin.images.to_image_tensor` reads them (16-bit by 65535, not clipped at 255).
    Pixels are as stored (EXIF orientation is not applied).

    With DataLoader workers under glibc, each worker's heap can keep growing with the number of
    images it has decoded: glibc's adaptive mmap threshold moves the buffers of image size (the
    decoded photo, the float copy a transform makes) into the heap, which then fragments.
    The trainer (``sgcl_plugin.train``) fixes the threshold (``MALLOC_MMAP_THRESHOLD_=131072`` and the same
    ``mallopt``) before its workers start, which keeps them flat.

    Args:
        root: The folder.
        max_side: When given, images whose longer side exceeds it are shrunk to it, aspect ratio
            kept (JPEGs are decoded at a reduced scale first, which bounds the decoding cost of
            large photos); smaller images are left as they are.

    Raises:
        FileNotFoundError: ``root`` does not exist.
        NotADirectoryError: ``root`` is not a folder.
        ValueError: No image file under ``root``, or ``max_side`` < 1.

    Examples:
        >>> from sgcl_plugin import SaliencyBank, SaliencyGenerator, refresh_bank
        >>> from sgcl_plugin.sample_images import export_sample_images
        >>> _ = export_sample_images("photos", ["astronaut", "chelsea"])  # or a folder such as coco/train2017
        >>> data = ImageFiles("photos", max_side=256)
        >>> len(data), data.path(0).name
        (2, 'astronaut.jpg')
        >>> data[1].size  # (W, H) of chelsea.jpg (451 x 300), aspect ratio kept
        (256, 170)
        >>> bank = SaliencyBank(len(data))
        >>> _ = refresh_bank(SaliencyGenerator(), backbone, data, bank, saliency_size=256, progress=False)
    """

    def __init__(self, root: Union[str, Path], max_side: Optional[int] = None) -> None:
        self.root = Path(root)
        self.max_side = None if max_side is None else check_int("max_side (or None)", max_side, 1)
        if not self.root.exists():
            raise FileNotFoundError(f"No such image folder: {self.root}")
        if not self.root.is_dir():
            raise NotADirectoryError(f"Not a folder of images: {self.root}")
        files = list_image_files(self.root)
        if not files:
            raise ValueError(
                f"No images ({', '.join(IMAGE_EXTENSIONS)}) under {self.root} (hidden files and folders are skipped)."
            )
        # The names relative to root, joined into one byte string with an offset table: a few bytes a file, and
        # two objects (no per-file Python objects whose reference counts would unshare forked workers' pages).
        names = [os.fsencode(os.path.join(*parts)) for parts in files]
        self._names = b"".join(names)
        self._offsets = np.cumsum([0] + [len(name) for name in names], dtype=np.int64)

    def __len__(self) -> int:
        return len(self._offsets) - 1

    def path(self, index: int) -> Path:
        """The file of item ``index`` (negative indices count from the end)."""
        i = check_index("ImageFiles", index, len(self))
        return self.root / os.fsdecode(self._names[self._offsets[i] : self._offsets[i + 1]])

    def __getitem__(self, index: int) -> Image.Image:
        path = self.path(index)
        try:
            with Image.open(path) as im:
                if self.max_side is not None and max(im.size) > self.max_side:
                    im.draft(None, _shrunk(im.size, self.max_side))  # JPEG: decode at 1/2, 1/4 or 1/8 scale
                im.load()
                image = to_rgb_image(im)
        except Exception as err:  # PIL raises OSError, ValueError, SyntaxError, EOFError, ... for bad files
            raise UnreadableImageError(f"Cannot read image file {path}: {type(err).__name__}: {err}") from err
        if self.max_side is not None and max(image.size) > self.max_side:
            image = image.resize(_shrunk(image.size, self.max_side), Image.Resampling.BILINEAR)
        return image

    def __repr__(self) -> str:
        return f"{type(self).__name__}({str(self.root)!r}, {len(self)} images, max_side={self.max_side})"


def _shrunk(size: Tuple[int, int], max_side: int) -> Tuple[int, int]:
    """(W, H) scaled so that the longer side is ``max_side``, aspect ratio kept (each side >= 1)."""
    w, h = size
    scale = max_side / max(w, h)
    return max(1, round(w * scale)), max(1, round(h * scale))
