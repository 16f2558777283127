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


def _installed(host: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(host) is not None


def test_every_module_says_what_it_exports() -> None:
    """Each module lists its public names in ``__all__`` (ruff's RUF022 keeps the lists sorted): every name is
    defined there, and every public function or class the module defines is listed or deliberately private."""
    import ast
    import importlib
    import pkgutil

    import sgcl_plugin

    names = ["sgcl_plugin"] + [m.name for m in pkgutil.walk_packages(sgcl_plugin.__path__, prefix="sgcl_plugin.")]
    for name in names:
        host = name.rsplit(".", 1)[-1]
        if host in ("solo", "lightly") and name.startswith("sgcl_plugin.adapters.") and not _installed(host):
            source = PACKAGE.joinpath(*name.split(".")[1:]).with_suffix(".py").read_text()
            module_all = next(
                ast.literal_eval(n.value)
                for n in ast.parse(source).body
                if isinstance(n, ast.Assign) and any(getattr(t, "id", "") == "__all__" for t in n.targets)
            )
            assert module_all, name  # without its host the adapter's lazily built names cannot be imported
            continue
        module = importlib.import_module(name)
        exported = getattr(module, "__all__", None)
        assert isinstance(exported, list), f"{name} has no __all__"
        assert len(set(exported)) == len(exported), name
        missing = [n for n in exported if not hasattr(module, n)]
        assert not missing, (name, missing)
        path = Path(module.__file__ or "")
        defined = {
            n.name
            for n in ast.parse(path.read_text()).body
            if isinstance(n, (ast.FunctionDef, ast.ClassDef)) and not n.name.startswith("_")
        }
        assert defined <= set(exported), (name, sorted(defined - set(exported)))


def test_no_library_module_over_500_lines() -> None:
    """One concept per module (issue 20): a module that grows past 500 lines holds more than one; split it."""
    sizes = {str(p.relative_to(PACKAGE)): len(p.read_text().splitlines()) for p in PACKAGE.rglob("*.py")}
    assert max(sizes.values()) < 500, sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
