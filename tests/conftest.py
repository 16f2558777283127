"""What the adapter tests share: real photos at 64 px, the tiny convolutional backbone and a quiet CPU Lightning
Trainer's options. ``photos`` is a fixture; the other two are plain functions, imported as
``from tests.conftest import tiny_trunk, quiet_trainer_options``, since the test modules build classes with them
at import time."""

from __future__ import annotations

import os
from typing import Any, Dict, List

import pytest

if os.environ.get("PYTEST_XDIST_WORKER"):
    # `make test` runs pytest-xdist workers, one a core: each worker and the processes its tests start share the
    # CPUs evenly (one thread each with a worker a CPU; all of them where `-n auto` found fewer physical cores),
    # so that the workers do not fight over the cores.
    _threads = max(1, (os.cpu_count() or 1) // max(1, int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))))
    os.environ.setdefault("OMP_NUM_THREADS", str(_threads))
    import torch

    torch.set_num_threads(_threads)

PHOTO_SIZE = 64
"""Side of the ``photos`` fixture's images: with the stride-8 trunk, an 8 x 8 feature map at 64 px."""


def tiny_trunk(pool: bool = False) -> Any:
    """Three stride-2 convolutions (stride 8, 32 channels) with batch norm: a backbone that trains in seconds on a
    CPU. ``pool=True`` ends it in global average pooling, as lightly's backbones end."""
    from torch import nn

    layers = [
        nn.Conv2d(3, 16, 3, stride=2, padding=1),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.Conv2d(16, 32, 3, stride=2, padding=1),
        nn.BatchNorm2d(32),
        nn.ReLU(),
        nn.Conv2d(32, 32, 3, stride=2, padding=1),
    ]
    return nn.Sequential(*layers, *([nn.AdaptiveAvgPool2d(1)] if pool else []))


def quiet_trainer_options(**overrides: Any) -> Dict[str, Any]:
    """A Lightning ``Trainer``'s keyword arguments for a test: one CPU device, no logger, checkpoints, progress bar
    or model summary; ``overrides`` win."""
    options: Dict[str, Any] = dict(
        accelerator="cpu",
        devices=1,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    options.update(overrides)
    return options


@pytest.fixture(scope="session")
def photos() -> List[Any]:
    """scikit-image's seven sample photos, resized to ``PHOTO_SIZE`` squared (RGB PIL images)."""
    pytest.importorskip("skimage")
    from sgcl_plugin.sample_images import sample_images

    return [image.resize((PHOTO_SIZE, PHOTO_SIZE)) for _, image in sample_images()]
