"""What a run writes besides its checkpoints: log.csv (one row per step), eval.csv (the accuracy curves), the
progress bars, and the pictures of the saliency maps and regions."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any, Callable, Dict, List, Sequence

import torch
from torch import Tensor

from sgcl_plugin import SaliencyInput
from sgcl_plugin.features import eval_mode
from sgcl_plugin.files import open_new_or_own
from sgcl_plugin.train.checkpoint import log_rows_up_to, write_output

__all__ = ["EVAL_KEYS", "LOG_HEADER", "StepLog", "epoch_bar", "saliency_pictures", "write_eval_csv"]

LOG_HEADER = ["epoch", "step", "loss", "intra", "inter", "lr", "tau", "images_per_s", "seconds"]
"""The columns of log.csv."""

EVAL_KEYS = ("knn", "linear", "dense_knn", "dense_linear")
"""The accuracies eval.csv holds, in its column order (those the evaluations report)."""


class StepLog:
    """log.csv, one row per step, flushed at once (a kill keeps every row written). A disabled log (processes
    other than the main one) writes nothing.

    Args:
        path: The file; rewritten from its header.
        enabled: Whether this process writes it.
        resumed_step: The checkpoint's step on a resumed run: the file keeps its rows up to that step (the steps
            after it run again); 0 for a new run.
    """

    def __init__(self, path: Path, enabled: bool, resumed_step: int = 0) -> None:
        kept: List[List[str]] = []
        if enabled and resumed_step > 0 and path.exists():
            kept = log_rows_up_to(path, resumed_step)
        self.file = open_new_or_own(path, "w") if enabled else None
        self.writer = csv.writer(self.file) if self.file else None
        if self.writer and self.file:
            self.writer.writerows([LOG_HEADER, *kept])
            self.file.flush()

    @property
    def enabled(self) -> bool:
        """Whether this log writes rows."""
        return self.writer is not None

    def write(
        self, epoch: int, step: int, values: Sequence[float], lr: float, tau: float, ips: float, dt: float
    ) -> None:
        """One step's row: loss, intra and inter (``values``), learning rate, EMA momentum, images/s, seconds."""
        if self.writer is None or self.file is None:
            return
        row = [epoch, step, *(f"{v:.5f}" for v in values)]
        self.writer.writerow([*row, f"{lr:.6g}", f"{tau:.6f}", f"{ips:.1f}", f"{dt:.3f}"])
        self.file.flush()

    def close(self) -> None:
        """Closes the file (a disabled log has none)."""
        if self.file:
            self.file.close()


def epoch_bar(total: int, initial: int, epoch: int) -> Any:
    """A tqdm progress bar over an epoch's ``total`` steps, ``initial`` of them done already."""
    from tqdm.auto import tqdm

    return tqdm(total=total, initial=initial, desc=f"epoch {epoch}", dynamic_ncols=True)


def write_eval_csv(path: Path, history: List[Dict[str, float]]) -> None:
    """Rewrites eval.csv: one row per evaluation (its epoch and accuracies, in the columns the first one has)."""
    with open_new_or_own(path, "w") as f:
        w = csv.writer(f)
        keys = [k for k in EVAL_KEYS if k in history[0]]
        w.writerow(["epoch", *keys])
        for h in history:
            w.writerow([int(h["epoch"]), *(f"{h[k]:.4f}" for k in keys)])


def saliency_pictures(
    path: Path,
    images: Sequence[Any],
    backbone: torch.nn.Module,
    features: Callable[[Tensor], Any],
    generator: Callable[[Any], Any],
    saliency_size: int,
    device: torch.device,
) -> None:
    """Draws the saliency maps and the 8 best regions of ``images`` in a two-column sheet at ``path`` (PNG).

    Args:
        path: The picture; written atomically.
        images: RGB PIL images at their sizes, or (3, H, W) uint8 tensors (at least one).
        backbone: Put in eval mode while the maps are computed (each module's mode restored afterwards).
        features: Images (n, 3, S, S) to the feature maps the generator reads.
        generator: Feature maps to a :class:`~sgcl_plugin.SaliencyResult`.
        saliency_size: S, the side the images are resized to.
        device: Where ``features`` runs.
    """
    from PIL import Image

    from sgcl_plugin.rendering import contact_sheet, enlarge_for_display, render_saliency

    x = torch.stack([SaliencyInput(saliency_size)(image) for image in images])
    with torch.no_grad(), eval_mode(backbone):
        result = generator(features(x.to(device)))
    items = []
    for i, item in enumerate(images):
        image = item if isinstance(item, Image.Image) else Image.fromarray(item.permute(1, 2, 0).numpy())
        image = enlarge_for_display(image)  # a 96 px scene: boxes and labels drawn at 256 px, not blown up after
        picture = render_saliency(image, result.maps[i].cpu(), result.regions[i], max_boxes=8)  # the 8 best
        items.append((f"image {i}", picture))
    sheet = contact_sheet(items, columns=2)
    write_output(path, lambda f: sheet.save(f, format="PNG"))
