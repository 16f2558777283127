"""The trainer's checkpoints: the safe load, the checks that a resumption continues the run exactly, the random
states, the lock and the checks of ``--out``, and the atomic writes of every output."""

from __future__ import annotations

import argparse
import csv
import os
import random
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Union

import numpy as np
import torch
from torch import nn

from sgcl_plugin.files import atomic_write
from sgcl_plugin.train.options import Refused

__all__ = [
    "RESUME_FREE",
    "check_checkpoint_fields",
    "check_out_folder",
    "check_resumable",
    "load_checkpoint",
    "load_objective_state",
    "lock_out",
    "log_rows_up_to",
    "log_step",
    "numpy_rng_state",
    "rng_state",
    "set_numpy_rng_state",
    "set_rng_state",
    "write_output",
]


def numpy_rng_state() -> Dict[str, Any]:
    """numpy's global RNG state as tensors and plain numbers (loadable with ``weights_only=True``)."""
    name, keys, pos, has_gauss, cached = np.random.get_state()  # type: ignore[misc]
    return {"name": name, "keys": torch.from_numpy(np.asarray(keys).astype(np.int64)), "pos": int(pos),
            "has_gauss": int(has_gauss), "cached_gaussian": float(cached)}  # fmt: skip


def set_numpy_rng_state(state: Dict[str, Any]) -> None:
    """Restores numpy's global RNG state from :func:`numpy_rng_state`'s form."""
    keys = state["keys"].numpy().astype(np.uint32)
    np.random.set_state((state["name"], keys, state["pos"], state["has_gauss"], state["cached_gaussian"]))


def load_checkpoint(path: Union[str, Path]) -> Dict[str, Any]:
    """A training checkpoint, loaded with ``weights_only=True``: a file never runs code when loaded.

    Raises:
        ValueError: the file is not a checkpoint of this script (or holds other objects than tensors
            and plain Python values, e.g. one written before 0.1.0's safe format).
    """
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise
    except Exception as err:  # pickle.UnpicklingError, RuntimeError, EOFError, ...
        raise Refused(
            f"{path} is not a checkpoint this script can load safely ({type(err).__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). Checkpoints are loaded with weights_only=True, "
            "so files holding other Python objects (or written by an older version) are refused."
        ) from err
    if not isinstance(state, dict) or "model" not in state or "rng" not in state:
        raise Refused(f"{path} is not a checkpoint of examples/sgcl_train.py (no 'model' / 'rng' entries).")
    return state


# Options that may differ between a run and its resumption: they change neither the model nor the order
# and content of the batches (where outputs go, progress, pictures, checkpoint cadence, evaluation size).
RESUME_FREE = {
    "out", "resume", "overwrite", "no_progress", "workers", "pictures", "ckpt_every", "stop_after_steps",
    "eval_train", "eval_test", "no_eval", "eval_every", "eval_data", "smoke", "testbed",
}  # fmt: skip


def check_resumable(args: argparse.Namespace, saved: Dict[str, Any], world: int, saved_world: int) -> None:
    """Refuses a resumption that could not continue the checkpointed run exactly, naming the options.

    Raises:
        ValueError: an option that shapes the model, the data or the step schedule differs from the
            checkpoint's (e.g. ``--batch-size``: the epoch would never end), or the number of processes.
    """
    diffs = [
        f"--{k.replace('_', '-')} {saved[k]!r} -> {v!r}"
        for k, v in sorted(vars(args).items())
        if k not in RESUME_FREE and k in saved and saved[k] != v
    ]
    if world != saved_world:
        diffs.append(f"processes {saved_world} -> {world}")
    if diffs:
        raise Refused(
            "Cannot resume this checkpoint exactly; these differ from the run that wrote it: "
            + "; ".join(diffs)
            + ". Resume with the same options (or start a new run in another --out)."
        )


def check_checkpoint_fields(state: Dict[str, Any], epochs: int, steps_per_epoch: int) -> None:
    """Refuses a checkpoint whose position fields could not come from a run of these options (a step past
    the epoch's end would make the resumed epoch never end), before any of it is applied.

    Raises:
        ValueError: naming every field that is out of range or inconsistent.
    """

    def integer(key: str) -> Optional[int]:
        v = state.get(key)
        return int(v) if isinstance(v, int) and not isinstance(v, bool) else None

    epoch, step, global_step, refreshed = (
        integer(k) for k in ("epoch", "step_in_epoch", "global_step", "refreshed_epoch")
    )
    problems = []
    if epoch is None or not 0 <= epoch <= epochs:
        problems.append(f"epoch {state.get('epoch')!r} is not an integer in [0, --epochs {epochs}]")
    if step is None or not 0 <= step < steps_per_epoch:
        problems.append(f"step_in_epoch {state.get('step_in_epoch')!r} is not an integer in [0, {steps_per_epoch})")
    if epoch is not None and step is not None and global_step != epoch * steps_per_epoch + step:
        problems.append(
            f"global_step {state.get('global_step')!r} is not epoch x {steps_per_epoch} steps + step_in_epoch"
        )
    if refreshed is None or not -1 <= refreshed <= (epoch if epoch is not None else refreshed):
        problems.append(f"refreshed_epoch {state.get('refreshed_epoch')!r} is not an integer in [-1, epoch]")
    if not isinstance(state.get("history", []), list):
        problems.append("history is not a list")
    if problems:
        raise Refused(
            "Cannot resume: the checkpoint's position is corrupt (" + "; ".join(problems) + "). It was damaged or "
            "edited, or written by other --epochs / --batch-size / --num-images; resume from another checkpoint."
        )


def load_objective_state(objective: nn.Module, state: Dict[str, Any]) -> None:
    """Restores the objective's queues from a checkpoint: under "objective", or, in a checkpoint written before
    :class:`~sgcl_plugin.SGCLObjective`, under "inter" and "support"."""
    if "objective" in state:
        objective.load_state_dict(state["objective"])
        return
    for name in ("inter", "support"):
        if getattr(objective, name) is not None:
            getattr(objective, name).load_state_dict(state[name])


def lock_out(out: Path) -> Optional[Any]:
    """Takes ``out/.sgcl-lock`` (an OS file lock: released when its process ends, even by kill -9) so that two
    runs never write one ``--out`` at once (they shared ``checkpoint.pt.tmp``). Returns the open lock file; None
    where the OS has no ``flock``.

    Raises:
        ValueError: another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX
        return None
    out.mkdir(parents=True, exist_ok=True)
    if (out / ".sgcl-lock").is_symlink():
        raise Refused(f"{out / '.sgcl-lock'} is a symbolic link: refusing to write through it; remove it.")
    handle = open(out / ".sgcl-lock", "a+")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        handle.seek(0)
        who = handle.read().strip()
        handle.close()
        raise Refused(
            f"Another run is writing --out {out} ({who or 'its process holds'} {out / '.sgcl-lock'}): wait for it "
            "to end, or use another --out."
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"process {os.getpid()}")
    handle.flush()
    return handle


def write_output(path: Path, write: Callable[[Any], Any]) -> None:
    """:func:`~sgcl_plugin.files.atomic_write`, a failure (a full disk) refused with a message: the file that was
    there is intact, and the run continues from its last checkpoint with --resume auto."""
    try:
        atomic_write(path, write)
    except (OSError, RuntimeError) as err:  # torch.save reports a full disk as a RuntimeError from its writer
        first = str(err).splitlines()[0] if str(err) else type(err).__name__
        raise Refused(
            f"Cannot write {path} ({first}; disk full?): the previous file is intact (the last checkpoint too); "
            "free space and continue with --resume auto."
        ) from err


def rng_state() -> Dict[str, Any]:
    """Every global random state a resumed run must continue from: torch's (CPU and CUDA), numpy's, Python's."""
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": numpy_rng_state(),
        "python": random.getstate(),
    }


def set_rng_state(rng: Dict[str, Any]) -> None:
    """Restores :func:`rng_state` (the CUDA states only where CUDA is available and the checkpoint has them)."""
    torch.set_rng_state(rng["torch"])
    if torch.cuda.is_available() and rng["cuda"]:
        torch.cuda.set_rng_state_all(rng["cuda"])
    set_numpy_rng_state(rng["numpy"])
    random.setstate(rng["python"])


def check_out_folder(out: Path, resume: bool, overwrite: bool) -> None:
    """Refuses an ``--out`` with symbolic links where the run writes, or one that holds another run (its
    checkpoint, log or weights) that is neither resumed (``--resume``) nor replaced (``--overwrite``).

    Raises:
        ValueError: naming the links or the files, and the ways out.
    """
    links = [n for n in ("checkpoint.pt", "log.csv", "backbone.pt", "eval.csv", "saliency") if (out / n).is_symlink()]
    if links:
        raise Refused(
            f"--out {out} holds symbolic links where this script writes ({', '.join(links)}): refusing to "
            "write through them; remove them, or choose another --out."
        )
    held = [n for n in ("checkpoint.pt", "log.csv", "backbone.pt") if (out / n).exists()]
    if held and not resume and not overwrite:
        raise Refused(
            f"--out {out} holds a run ({', '.join(held)}): continue it with --resume auto, start a new run "
            "in another --out, or pass --overwrite to replace it."
        )


def log_step(row: List[str]) -> Optional[int]:
    """The step of a log.csv row; None for the header or a line that is not a row (a garbage line is dropped
    on resume instead of stopping it)."""
    try:
        return int(row[1]) if len(row) > 1 and row[0] != "epoch" else None
    except ValueError:
        return None


def log_rows_up_to(path: Path, step: int) -> List[List[str]]:
    """The rows of a resumed run's log.csv up to its checkpoint's ``step`` (the steps after it run again)."""
    kept = []
    with open(path, newline="") as f:
        for row in csv.reader(f):
            row_step = log_step(row)
            if row_step is not None and row_step <= step:
                kept.append(row)
    return kept
