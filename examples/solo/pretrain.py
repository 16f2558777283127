"""Pretrains an SGCL method with solo-learn's own ``main_pretrain.py`` and its hydra configs.

    python examples/solo/pretrain.py --config-path examples/solo --config-name sgcl_byol.yaml \\
        data.train_path=/data/coco/train2017

It does two things before handing over to solo's ``main()``, unchanged otherwise (checkpoints,
auto-resume, wandb, DDP all work as in solo):

1. ``register()``: ``sgcl_byol``, ``sgcl_simclr`` and ``sgcl_nnclr`` join ``solo.methods.METHODS``.
2. solo's train dataset is wrapped in ``SGCLDataset`` (``prepare_saliency_datasets`` takes
   the place of ``prepare_datasets`` in ``main_pretrain``), so that SGCL's crop transform sees each
   image's index. solo's other methods still get their usual crops from the same launcher.

Options of this script (the rest of the command line goes to hydra):
    --solo-dir DIR   the solo-learn clone holding main_pretrain.py (default: $SOLO_LEARN_DIR, else
                     the clone the installed ``solo`` package was installed from with ``pip install -e``)
    --make-data DIR  write a tiny image folder (2 classes x 8 images) for smoke.yaml and exit
"""

from __future__ import annotations

import importlib.util
import os
import sys
from pathlib import Path
from types import ModuleType
from typing import Any, Dict, List, Optional, Tuple


def _pop_option(argv: List[str], name: str) -> Tuple[Optional[str], List[str]]:
    """Removes ``--name VALUE`` / ``--name=VALUE`` from argv; returns the value and the rest."""
    rest, value, i = [], None, 0
    while i < len(argv):
        arg = argv[i]
        if arg == name and i + 1 < len(argv):
            value, i = argv[i + 1], i + 2
            continue
        if arg.startswith(name + "="):
            value = arg.split("=", 1)[1]
        else:
            rest.append(arg)
        i += 1
    return value, rest


def _absolute_config_path(argv: List[str]) -> List[str]:
    """hydra reads a relative --config-path from main_pretrain.py's folder: make it relative to the cwd."""
    out, i = [], 0
    while i < len(argv):
        arg = argv[i]
        if arg in ("--config-path", "-cp") and i + 1 < len(argv):
            out += [arg, str(Path(argv[i + 1]).resolve())]
            i += 2
            continue
        for flag in ("--config-path=", "-cp="):
            if arg.startswith(flag):
                arg = flag + str(Path(arg[len(flag) :]).resolve())
        out.append(arg)
        i += 1
    return out


def find_main_pretrain(solo_dir: Optional[str]) -> Path:
    candidates = []
    if solo_dir or os.environ.get("SOLO_LEARN_DIR"):
        candidates.append(Path(solo_dir or os.environ["SOLO_LEARN_DIR"]) / "main_pretrain.py")
    try:
        import solo

        candidates.append(Path(solo.__file__).resolve().parents[1] / "main_pretrain.py")
    except ImportError:
        pass
    for path in candidates:
        if path.is_file():
            return path
    raise SystemExit(
        "Cannot find solo-learn's main_pretrain.py: pass --solo-dir /path/to/solo-learn (a clone of its main "
        f"branch, installed with pip install -e) or set SOLO_LEARN_DIR. Looked at: {[str(p) for p in candidates]}"
    )


def load_main_pretrain(path: Path) -> ModuleType:
    """Imports solo's main_pretrain.py as a module and puts SGCL's dataset wrapper in place.

    solo-learn has no hook for wrapping the train dataset, so this launcher replaces two names of
    its own copy of ``main_pretrain``, nothing else: ``parse_cfg`` (wrapped, to keep the parsed
    config) and ``prepare_datasets`` (``prepare_saliency_datasets`` with that config, which attaches
    the SGCL crop transform before the DataLoader workers start). solo's installed package is not
    touched.
    """
    from sgcl_plugin.adapters.solo import prepare_saliency_datasets, register

    register()
    spec = importlib.util.spec_from_file_location("main_pretrain", path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["main_pretrain"] = module
    spec.loader.exec_module(module)
    parsed: Dict[str, Any] = {}
    parse_cfg = module.parse_cfg

    def keep_cfg(cfg: Any) -> Any:
        parsed["cfg"] = parse_cfg(cfg)
        return parsed["cfg"]

    def prepare(*args: Any, **kwargs: Any) -> Any:
        return prepare_saliency_datasets(*args, cfg=parsed.get("cfg"), **kwargs)

    module.parse_cfg = keep_cfg  # type: ignore[attr-defined]
    module.prepare_datasets = prepare  # type: ignore[attr-defined]
    return module


def make_data(root: str, per_class: int = 8, size: int = 96) -> None:
    """A tiny ImageFolder: coloured shapes on textured backgrounds, two classes."""
    import numpy as np
    from PIL import Image

    rng = np.random.default_rng(0)
    for c, name in enumerate(("disks", "squares")):
        folder = Path(root) / name
        folder.mkdir(parents=True, exist_ok=True)
        for i in range(per_class):
            img = (rng.random((size, size, 3)) * 80).astype(np.uint8)
            cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
            r = int(rng.integers(size // 8, size // 4))
            yy, xx = np.mgrid[:size, :size]
            mask = (yy - cy) ** 2 + (xx - cx) ** 2 < r * r if c == 0 else (abs(yy - cy) < r) & (abs(xx - cx) < r)
            img[mask] = rng.integers(150, 256, 3)
            Image.fromarray(img).save(folder / f"{i:02d}.png")
    print(f"wrote {2 * per_class} images to {root}")


def main(argv: Optional[List[str]] = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    data_dir, argv = _pop_option(argv, "--make-data")
    if data_dir is not None:
        make_data(data_dir)
        return
    solo_dir, argv = _pop_option(argv, "--solo-dir")
    module = load_main_pretrain(find_main_pretrain(solo_dir))
    sys.argv = [str(module.__file__), *_absolute_config_path(argv)]
    module.main()


if __name__ == "__main__":
    main()
