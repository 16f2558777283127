"""The reference trainer: BYOL, SimCLR or NNCLR, with or without SGCL, one shared training core.

    python examples/sgcl_train.py --method byol      # the command (examples/byol.py, simclr.py, nnclr.py preset it)

    from sgcl_plugin.train import main
    result = main(["--method", "simclr", "--smoke"])  # one run in this process: the accuracies and the history

- :mod:`~sgcl_plugin.train.options`: the command line (parser, presets, checks) and :class:`Refused`.
- :mod:`~sgcl_plugin.train.data`: the images, the seeded items, the sampler, the crops and the loader.
- :mod:`~sgcl_plugin.train.model`: the network and its heads, BYOL's EMA target, schedules, optimizer.
- :mod:`~sgcl_plugin.train.checkpoint`: save, resume and the checks that make resuming exact.
- :mod:`~sgcl_plugin.train.trainer`: :class:`Trainer`, :func:`main`, :func:`cli`.

The evaluation sets and the ground truth of the composed scenes are the testbed's (:mod:`sgcl_plugin.testbed`).
"""

from sgcl_plugin.train.checkpoint import check_checkpoint_fields, check_resumable, load_checkpoint
from sgcl_plugin.train.data import EpochSampler, ImageTable, SeededItems, training_images, training_scenes
from sgcl_plugin.train.model import SSLModel
from sgcl_plugin.train.options import METHODS, SMOKE, TESTBED, Refused, build_parser, evaluation_settings, parse_args
from sgcl_plugin.train.trainer import Trainer, cli, main

__all__ = [
    "METHODS",
    "SMOKE",
    "TESTBED",
    "EpochSampler",
    "ImageTable",
    "Refused",
    "SSLModel",
    "SeededItems",
    "Trainer",
    "build_parser",
    "check_checkpoint_fields",
    "check_resumable",
    "cli",
    "evaluation_settings",
    "load_checkpoint",
    "main",
    "parse_args",
    "training_images",
    "training_scenes",
]
