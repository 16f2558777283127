"""Every docstring example of the package runs as a doctest, as written, and prints what it shows.

The examples share a few names a reader is told about in prose (a ``backbone``, a ``dataset`` of photos,
``images``, ...): :func:`example_names` makes small real ones, so an example that no longer fits the code
(a renamed argument, a changed shape) fails here. Each module's examples run in a fresh temporary folder
(some write files).
"""

from __future__ import annotations

import doctest
import importlib
import pkgutil
from pathlib import Path
from typing import Any, Dict, List

import pytest

torch = pytest.importorskip("torch")
torchvision = pytest.importorskip("torchvision")

import sgcl_plugin  # noqa: E402

# Optional hosts: their modules' examples run where the host is installed (CI installs lightly).
OPTIONAL = {"sgcl_plugin.adapters.lightly": "lightly"}


def package_modules() -> List[str]:
    names = [sgcl_plugin.__name__]
    for info in pkgutil.walk_packages(sgcl_plugin.__path__, prefix="sgcl_plugin."):
        names.append(info.name)
    return sorted(names)


def examples_of(name: str) -> List[doctest.DocTest]:
    module = importlib.import_module(name)
    return [t for t in doctest.DocTestFinder(exclude_empty=True).find(module, name) if t.examples]


def modules_with_examples() -> List[str]:
    """The modules whose docstrings hold examples (a host's adapter counts: it is only imported where it runs)."""
    return [name for name in package_modules() if name in OPTIONAL or examples_of(name)]


def example_names() -> Dict[str, Any]:
    """The names the examples take as given: a real (untrained) ResNet-18 ``backbone`` and ``model``, a
    ``dataset`` of seven real photos, a batch of ``images`` (2, 3, 224, 224), and BYOL's predictions and targets
    (``p1``, ``p2``, ``t1``, ``t2``) with region ``scores``."""
    from torchvision.models import resnet18

    from sgcl_plugin.sample_images import sample_images

    torch.manual_seed(0)
    net = resnet18().eval()
    backbone = torch.nn.Sequential(*list(net.children())[:-2])
    dataset = [image.resize((128, 96)) for _, image in sample_images()]
    g = torch.Generator().manual_seed(0)
    p1, p2, t1, t2 = (torch.randn(4, 256, generator=g) for _ in range(4))
    return {
        "torch": torch,
        "backbone": backbone,
        "model": torch.nn.Sequential(backbone, torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()),
        "dataset": dataset,
        "images": torch.rand(2, 3, 224, 224, generator=g),
        "p1": p1.requires_grad_(),
        "p2": p2.requires_grad_(),
        "t1": t1,
        "t2": t2,
        "scores": torch.rand(4, generator=g),
    }


def test_every_module_is_found() -> None:
    modules = package_modules()
    assert {"sgcl_plugin.saliency", "sgcl_plugin.train.trainer", "sgcl_plugin.adapters.lightly"} <= set(modules)
    assert {"sgcl_plugin.saliency", "sgcl_plugin.refresher", "sgcl_plugin.pair_losses"} <= set(modules_with_examples())


@pytest.mark.parametrize("name", modules_with_examples())
def test_docstring_examples_run(name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    if name in OPTIONAL:
        pytest.importorskip(OPTIONAL[name])
    module = importlib.import_module(name)
    tests = examples_of(name)
    monkeypatch.chdir(tmp_path)
    names = example_names()
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    for test in tests:
        test.globs = {**module.__dict__, **names}
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (output above)"
