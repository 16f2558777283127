"""Per-image saliency regions of a whole dataset, shared with DataLoader worker processes."""

from __future__ import annotations

import os
import time
import weakref
from typing import Any, BinaryIO, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from sgcl_plugin.checks import check_index, check_int, check_not_meta

__all__ = ["READ_TIMEOUT", "SaliencyBank", "banks_read_by_crops"]

READ_TIMEOUT = 60.0
"""Seconds a reader waits for a write to finish before it reports a torn table."""


_READ_BY_CROPS: weakref.WeakSet[SaliencyBank] = weakref.WeakSet()


def banks_read_by_crops(num_images: int) -> List[SaliencyBank]:
    """The live banks of ``num_images`` rows that a crop transform reads."""
    return [b for b in list(_READ_BY_CROPS) if len(b) == num_images]


class SaliencyBank:
    """A fixed-size table of the scored regions of every image of a dataset.

    Row ``i`` holds up to ``max_regions`` boxes (normalized xyxy), their scores (descending) and
    their count for dataset index ``i``; a count of 0 means "no saliency yet" (before the first
    refresh), and crop transforms then fall back to plain random crops.

    The tables live in shared memory and are updated **in place**, so DataLoader workers see every
    refresh, ``persistent_workers=True`` included, whether they were forked or spawned (torch
    passes shared tensors to workers by handle). A version counter (a sequence lock: odd while a
    refresh writes) lets readers detect and retry a read that overlapped a write, and tells any
    consumer which refresh it is looking at.

    Args:
        num_images: Dataset size.
        max_regions: Regions kept per image (the top-scored ones); pads the table so that results
            of different images can be gathered across processes.

    Examples:
        >>> from sgcl_plugin import SaliencyGenerator, refresh_bank
        >>> bank = SaliencyBank(len(dataset), max_regions=16)
        >>> _ = refresh_bank(SaliencyGenerator(), backbone, dataset, bank, saliency_size=256, progress=False)
        >>> boxes, scores = bank[3]  # image 3's regions, best first
        >>> boxes.shape[1], bool((scores[:-1] >= scores[1:]).all())  # (K, 4) boxes, (K,) scores
        (4, True)
        >>> torch.save({"model": model.state_dict(), "bank": bank.state_dict()}, "ckpt.pt")
    """

    def __init__(self, num_images: int, max_regions: int = 16) -> None:
        self.num_images = check_int("num_images", num_images, 1)
        self.max_regions = check_int("max_regions", max_regions, 1)
        self.boxes = torch.zeros(num_images, max_regions, 4).share_memory_()
        self.scores = torch.zeros(num_images, max_regions).share_memory_()
        self.counts = torch.zeros(num_images, dtype=torch.int64).share_memory_()
        self.fallback = torch.zeros(num_images, dtype=torch.bool).share_memory_()
        # [0]: sequence counter (2 x number of completed writes), [1]: refreshes completed.
        self._seq = torch.zeros(2, dtype=torch.int64).share_memory_()

    def __len__(self) -> int:
        return self.num_images

    def __repr__(self) -> str:
        return f"SaliencyBank(num_images={self.num_images}, max_regions={self.max_regions}, version={self.version})"

    @property
    def version(self) -> int:
        """Number of completed writes (refreshes or loads); 0 before the first one."""
        return int(self._seq[0]) // 2

    @property
    def refreshes(self) -> int:
        """Number of completed refreshes (loads restore the count they saved)."""
        return int(self._seq[1])

    def _check_index(self, index: Any) -> int:
        if isinstance(index, Tensor) and index.numel() == 1 and not index.is_floating_point():
            index = index.item()
        return check_index("SaliencyBank", index, self.num_images)

    def __getitem__(self, index: int) -> Tuple[Tensor, Tensor]:
        """The regions of image ``index``: boxes (K, 4) and scores (K,); K = 0 before a refresh.

        Raises:
            TypeError: ``index`` is not an integer (a float, a bool, a string).
            IndexError: ``index`` is outside the bank.
            RuntimeError: a write has been under way for ``READ_TIMEOUT`` seconds (its process died
                half-way: the table is torn; load a checkpoint or refresh again).
        """
        index = self._check_index(index)
        deadline = None
        while True:
            before = int(self._seq[0])
            if before % 2 == 0:
                k = int(self.counts[index])
                boxes = self.boxes[index, :k].clone()
                scores = self.scores[index, :k].clone()
                if int(self._seq[0]) == before:
                    return boxes, scores
            now = time.monotonic()
            deadline = deadline if deadline is not None else now + READ_TIMEOUT
            if now > deadline:
                raise RuntimeError(
                    f"SaliencyBank: a write has been under way for over {READ_TIMEOUT:.0f} s; the process writing "
                    "it probably died half-way, leaving the table torn. Refresh again or load a checkpoint "
                    "(bank.load_state_dict)."
                )
            time.sleep(1e-4)

    def write(
        self, boxes: Tensor, scores: Tensor, counts: Tensor, fallback: Tensor, index: Optional[Tensor] = None
    ) -> None:
        """Writes rows in place (all rows, or those at ``index``), bumping the version.

        Args:
            boxes: (n, max_regions, 4) normalized xyxy.
            scores: (n, max_regions), zero-padded past each count.
            counts: (n,) regions per row.
            fallback: (n,) whether the row is the whole-image fallback.
            index: (n,) dataset indices; all rows in order when omitted.
        """
        for name, value in (
            ("boxes", boxes),
            ("scores", scores),
            ("counts", counts),
            ("fallback", fallback),
            ("index", index),
        ):
            check_not_meta(value, name)
        n = self.num_images if index is None else int(index.numel())
        expect = {"boxes": (n, self.max_regions, 4), "scores": (n, self.max_regions), "counts": (n,), "fallback": (n,)}
        for name, value in (("boxes", boxes), ("scores", scores), ("counts", counts), ("fallback", fallback)):
            if tuple(value.shape) != expect[name]:
                raise ValueError(f"{name} must have shape {expect[name]}, got {tuple(value.shape)}.")
        for name, value in (("counts", counts), ("index", index)):
            if isinstance(value, Tensor) and (value.is_floating_point() or value.is_complex()):
                raise TypeError(f"{name} must be an integer tensor, got {value.dtype} (a float would be truncated).")
        if index is not None:
            index = index.to("cpu", torch.int64)
            if index.numel() and (index.min() < 0 or index.max() >= self.num_images):
                raise IndexError(f"write index outside [0, {self.num_images}).")
        if not torch.isfinite(scores).all() or (scores < 0).any() or (scores > 1).any():
            raise ValueError("scores must be finite and in [0, 1].")
        if not torch.isfinite(boxes).all():
            raise ValueError("boxes contain NaN or Inf values.")
        if (boxes < 0).any() or (boxes > 1).any():
            raise ValueError("boxes must be normalized xyxy coordinates in [0, 1].")
        if (counts < 0).any() or (counts > self.max_regions).any():
            raise ValueError(f"counts must be in [0, {self.max_regions}].")
        used = torch.arange(self.max_regions, device=counts.device)[None, :] < counts[:, None]  # (n, R)
        b = boxes.to(used.device)
        empty = ((b[..., 2] <= b[..., 0]) | (b[..., 3] <= b[..., 1])) & used
        if empty.any():
            row, col = (int(v) for v in empty.nonzero()[0])
            raise ValueError(
                f"Region {col} of row {row} has an empty or inverted box {b[row, col].tolist()} "
                "(need x1 > x0, y1 > y0)."
            )
        if ((scores.to(used.device) <= 0) & used).any():
            raise ValueError("Every region within a row's count needs a score > 0 (zero scores are never sampled).")
        rising = (scores[:, 1:] > scores[:, :-1]).to(used.device) & used[:, 1:]
        if rising.any():
            row = int(rising.nonzero()[0, 0])
            raise ValueError(
                f"Row {row}'s scores rise ({scores[row].tolist()}): regions are stored best first (descending scores); "
                "the first max_regions of a row are what is kept."
            )
        sel = slice(None) if index is None else index
        if int(self._seq[0]) % 2 and (index is None or int(torch.unique(index).numel()) == self.num_images):
            # Odd before we start: a writer died half-way and left the table torn. A write of every row
            # replaces all of it, so the table is whole again: back to even (readers stop waiting).
            self._seq[0] += 1
        self._seq[0] += 1  # odd: a write is under way
        try:
            self.boxes[sel] = boxes.to("cpu", torch.float32)
            self.scores[sel] = scores.to("cpu", torch.float32)
            self.counts[sel] = counts.to("cpu", torch.int64)
            self.fallback[sel] = fallback.to("cpu", torch.bool)
        finally:
            self._seq[0] += 1

    def read_by_crops(self) -> None:
        """Notes that a crop transform reads this bank (:class:`~sgcl_plugin.bank_crops.SaliencyCropTransform` calls
        it): a refresh of a dataset of this size into a *new* bank then warns, as its regions would reach no crop."""
        _READ_BY_CROPS.add(self)

    def mark_refreshed(self) -> None:
        """Counts one completed refresh (called by ``refresh_bank`` after its writes)."""
        self._seq[1] += 1

    def shared_with_rank_zero(self, rank: int, barrier: Callable[[str], None]) -> bool:
        """Whether this process's bank is the same shared memory as rank 0's (collective: all ranks call it).

        Forked children (Lightning's ``ddp_fork`` / ``ddp_notebook``) inherit the bank's shared memory
        and spawned ones (``ddp_spawn``) receive it by handle, while a script per rank (``ddp``,
        torchrun, SLURM) gives every rank its own. Rank 0 raises the (even) sequence counter by 2
        between two barriers, the others look whether they see it, and rank 0 puts it back: readers
        in DataLoader workers are never disturbed. Then only one rank should write a shared bank.

        Args:
            rank: This process's global rank.
            barrier: Waits for every rank; called with a name (e.g. Lightning's ``strategy.barrier``).
        """
        before = int(self._seq[0])
        barrier("sgcl_probe_read")
        if rank == 0:
            self._seq[0] += 2
        barrier("sgcl_probe_bump")
        shared = rank != 0 and int(self._seq[0]) != before
        barrier("sgcl_probe_seen")
        if rank == 0:
            self._seq[0] -= 2
        barrier("sgcl_probe_done")
        return shared

    def stats(self) -> Dict[str, float]:
        """Summary of the current table: refreshes, regions per image, fallbacks, mean score."""
        filled = self.counts > 0
        n = int(filled.sum())
        valid = torch.arange(self.max_regions)[None, :] < self.counts[:, None]
        return {
            "refreshes": float(self.refreshes),
            "images_with_regions": float(n),
            "regions_per_image": float(self.counts[filled].float().mean()) if n else 0.0,
            "fallback_images": float(self.fallback.sum()),
            "mean_score": float(self.scores[valid].mean()) if n else 0.0,
            "mean_top_box_area": float(
                (
                    (self.boxes[filled, 0, 2] - self.boxes[filled, 0, 0])
                    * (self.boxes[filled, 0, 3] - self.boxes[filled, 0, 1])
                ).mean()
            )
            if n
            else 0.0,
        }

    def state_dict(self) -> Dict[str, Any]:
        """Everything needed to restore the bank from a checkpoint (CPU tensors, copied)."""
        return {
            "num_images": self.num_images,
            "max_regions": self.max_regions,
            "boxes": self.boxes.clone(),
            "scores": self.scores.clone(),
            "counts": self.counts.clone(),
            "fallback": self.fallback.clone(),
            "refreshes": self.refreshes,
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores a :meth:`state_dict` in place (workers already running see it). Every field is checked
        before anything is written; a table a dead writer left torn is whole again afterwards."""
        if (state["num_images"], state["max_regions"]) != (self.num_images, self.max_regions):
            raise ValueError(
                f"Checkpointed bank has {state['num_images']} images x {state['max_regions']} regions, "
                f"this one {self.num_images} x {self.max_regions}."
            )
        refreshes = state.get("refreshes")
        if isinstance(refreshes, Tensor) and refreshes.numel() == 1 and not refreshes.is_floating_point():
            refreshes = int(refreshes)
        refreshes = check_int("The bank state's refreshes", refreshes, 0)
        self.write(state["boxes"], state["scores"], state["counts"], state["fallback"])
        self._seq[1] = refreshes

    def save(self, path: Union[str, os.PathLike[str], BinaryIO]) -> None:
        torch.save(self.state_dict(), path)

    @classmethod
    def load(cls, path: Union[str, os.PathLike[str], BinaryIO]) -> SaliencyBank:
        state = torch.load(path, map_location="cpu", weights_only=True)
        bank = cls(state["num_images"], state["max_regions"])
        bank.load_state_dict(state)
        return bank
