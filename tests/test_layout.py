"""The package's layout: the core never imports the testbed or the trainer; the testbed's entry takes explicit
arguments."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

PACKAGE = Path(__file__).resolve().parents[1] / "sgcl_plugin"


def test_the_core_modules_import_neither_the_testbed_nor_the_trainer() -> None:
    core = sorted(f"sgcl_plugin.{p.stem}" for p in PACKAGE.glob("*.py") if p.stem != "__init__")
    code = (
        "import importlib, sys\n"
        f"for name in {core!r}:\n"
        "    importlib.import_module(name)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('sgcl_plugin.testbed', 'sgcl_plugin.train'))))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"


def test_evaluate_backbone_names_an_unknown_set() -> None:
    from sgcl_plugin.testbed.eval_sets import evaluate_backbone

    with pytest.raises(ValueError, match="objects, isolated, fashion"):
        evaluate_backbone(torch.nn.Identity(), data="coco")
