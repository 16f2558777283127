"""The trainer's run: :class:`Trainer` (set-up, one step, the loop, the refreshes, checkpoints and evaluations),
:func:`main` (one run from a command line) and :func:`cli` (the command: refusals exit with status 2)."""

from __future__ import annotations

import argparse
import os
import random
import sys
import time
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

import numpy as np
import torch
import torch.distributed as dist
from torch import Tensor, nn

from sgcl_plugin import ImageFiles, SaliencyBank, SaliencyCropDataset, SaliencyRefresher
from sgcl_plugin.items import flatten_pairs
from sgcl_plugin.testbed.eval_sets import evaluate_backbone
from sgcl_plugin.testbed.ground_truth import scene_masks, write_true_boxes
from sgcl_plugin.testbed.metrics import same_object_pair_rate
from sgcl_plugin.train.checkpoint import (
    check_checkpoint_fields,
    check_out_folder,
    check_resumable,
    load_checkpoint,
    load_objective_state,
    lock_out,
    rng_state,
    set_rng_state,
    write_output,
)
from sgcl_plugin.train.data import (
    EpochSampler,
    SeededItems,
    augment_on_device,
    crop_transform,
    device_view_augments,
    training_images,
    training_loader,
    training_scenes,
    views_per_image,
)
from sgcl_plugin.train.model import (
    SSLModel,
    build_generator,
    build_objective,
    build_optimizer,
    ema_at,
    lr_at,
    saliency_stride,
)
from sgcl_plugin.train.options import Refused, evaluation_settings, parse_args
from sgcl_plugin.train.outputs import StepLog, epoch_bar, saliency_pictures, write_eval_csv

__all__ = ["EVAL_NAMES", "Trainer", "cli", "main"]

EVAL_NAMES = {"objects": "scene", "isolated": "isolated scene", "fashion": "Fashion-MNIST"}
"""How the final accuracy line names each ``--eval-data``."""


class Trainer:
    """One run of the reference trainer, set up from its options (:func:`~sgcl_plugin.train.options.parse_args`).

    Under ``torchrun`` (``WORLD_SIZE`` > 1) each process is one rank of a DDP run; rank 0 (``main``) writes the
    outputs. The set-up refuses (:class:`~sgcl_plugin.train.options.Refused`) an ``--out`` that another process
    is writing, that holds symbolic links where the run writes, or that holds a run neither resumed nor replaced.
    """

    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.rank, self.world = 0, 1
        if int(os.environ.get("WORLD_SIZE", "1")) > 1:
            dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
            self.rank, self.world = dist.get_rank(), dist.get_world_size()
        if torch.cuda.is_available():
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            self.device = torch.device("cuda", torch.cuda.current_device())
        else:
            self.device = torch.device("cpu")
        self.main = self.rank == 0
        self.out = Path(args.out)
        self._lock = lock_out(self.out) if self.main else None  # one run per --out at a time
        try:
            check_out_folder(self.out, resume=bool(args.resume), overwrite=args.overwrite)
        except Refused:
            self.release()
            raise
        if self.main:
            (self.out / "saliency").mkdir(parents=True, exist_ok=True)
        torch.manual_seed(args.seed)
        random.seed(args.seed)
        np.random.seed(args.seed)
        self._set_up_data()
        self._set_up_model()
        if args.sgcl and args.regions == "gt":  # parse_args refuses it with a folder (no boxes)
            self.fill_bank_with_true_boxes()
        self.total_steps = self.steps_per_epoch * args.epochs
        self.warmup_steps = int(args.warmup_epochs * self.steps_per_epoch)
        self.epoch, self.step_in_epoch, self.global_step = 0, 0, 0
        self._masks: Optional[List[Tensor]] = None  # object masks of the first scenes, for pair rates
        self.log_path = self.out / "log.csv"
        self.history: List[Dict[str, float]] = []  # accuracy vs epochs (--eval-every), main process only

    def _set_up_data(self) -> None:
        """The images, the bank, the crops and the loader."""
        args = self.args
        # Composed scenes: one shared uint8 table. A folder: its files, decoded by the loaders' workers as
        # they are read (the crops and every refresh read the same dataset), so memory holds no image.
        self.images = training_images(args)
        n = len(self.images)
        self.bank = SaliencyBank(n, max_regions=16)
        t, size = views_per_image(args)
        self.pairs_per_image = t
        # Crops always come from the CPU workers; the view augmentations run there too, or batched on
        # the training device with kornia (--augment-on-device).
        self.crop = crop_transform(args, self.bank, t, size)
        self.device_views: Optional[List[nn.Module]] = device_view_augments(args, size, self.device)
        self.items = SeededItems(SaliencyCropDataset(self.images, self.crop), args.seed)
        self.sampler = EpochSampler(n, args.batch_size, args.seed, self.rank, self.world)
        self.steps_per_epoch = len(self.sampler) // args.batch_size
        if self.steps_per_epoch == 0:
            raise Refused(f"{n} images cannot fill one batch of {args.batch_size} per process.")
        self.loader = training_loader(self.items, self.sampler, args, self.device)

    def _set_up_model(self) -> None:
        """The model (DDP-wrapped across processes), the loss, the optimizer and the saliency generator."""
        args = self.args
        self.model = SSLModel(args.method, args.arch, args.hidden_dim, args.proj_dim, args.width).to(self.device)
        self.online: nn.Module = self.model
        if self.world > 1:
            self.online = nn.parallel.DistributedDataParallel(self.model)
        self.objective = build_objective(args, self.world).to(self.device)
        self.opt = build_optimizer(self.model, args)
        self.generator = build_generator(args)
        # The core refresh driver: refreshes at --first-refresh (default: --every-n-epochs), then every
        # --every-n-epochs, each made once. A folder is decoded by --workers processes; the composed table is
        # decoded already (and refreshes in the main process, as it always did).
        self.refresher = SaliencyRefresher(
            self.bank, self.images, args.every_n_epochs, self.generator, first_epoch=args.first_refresh or None,
            feature_stride=saliency_stride(args), saliency_size=args.saliency_size, batch_size=32,
            num_workers=args.workers if isinstance(self.images, ImageFiles) else 0,
            progress=self.main and not args.no_progress, device=self.device, host="sgcl_plugin.train",
        )  # fmt: skip
        self.schedule = self.refresher.schedule
        self.saliency_backbone = self.refresher.features(self.model.backbone)  # what the pictures show

    # --- checkpoints -------------------------------------------------------------------------

    def state(self) -> Dict[str, Any]:
        """Everything a resumption needs: options, weights, optimizer, queues, bank, position, random states."""
        return {
            "args": vars(self.args),
            "model": self.model.state_dict(),
            "optimizer": self.opt.state_dict(),
            "objective": self.objective.state_dict(),
            "bank": self.bank.state_dict(),
            "epoch": self.epoch,
            "step_in_epoch": self.step_in_epoch,
            "global_step": self.global_step,
            "refreshed_epoch": self.schedule.last_epoch,
            "history": self.history,
            "world_size": self.world,
            "rng": rng_state(),
        }

    def save(self) -> None:
        """Writes ``<out>/checkpoint.pt`` (main process only)."""
        if not self.main:
            return
        state = self.state()
        # atomic: a kill or a full disk never leaves a torn checkpoint, and no link planted in --out is followed
        write_output(self.out / "checkpoint.pt", lambda f: torch.save(state, f))

    def load(self, path: str) -> None:
        """Continues the run of the checkpoint at ``path``, after checking it can be continued exactly."""
        state = load_checkpoint(path)
        check_resumable(self.args, state.get("args", {}), self.world, int(state.get("world_size", 1)))
        check_checkpoint_fields(state, self.args.epochs, self.steps_per_epoch)
        self.model.load_state_dict(state["model"])
        self.opt.load_state_dict(state["optimizer"])
        load_objective_state(self.objective, state)
        self.refresher.load_state_dict({"bank": state["bank"], "last_epoch": int(state["refreshed_epoch"])})
        self.epoch, self.step_in_epoch, self.global_step = state["epoch"], state["step_in_epoch"], state["global_step"]
        self.history = list(state.get("history", []))
        set_rng_state(state["rng"])
        if self.main:
            print(f"resumed from {path}: epoch {self.epoch}, step {self.step_in_epoch}/{self.steps_per_epoch}")

    def resume(self) -> None:
        """``--resume``: loads the given checkpoint, or ``<out>/checkpoint.pt`` for 'auto' if it exists."""
        args = self.args
        if not args.resume:
            return
        path = self.out / "checkpoint.pt" if args.resume == "auto" else Path(args.resume)
        if path.exists():
            self.load(str(path))
        elif args.resume != "auto":
            raise Refused(f"--resume {path}: no such checkpoint.")

    # --- saliency refresh -----------------------------------------------------------------------

    def fill_bank_with_true_boxes(self) -> None:
        """The upper bound of the paper's Table 7: every object's true box, score 1, never refreshed."""
        write_true_boxes(self.bank, training_scenes(self.args))

    def refresh(self) -> None:
        """Recomputes every image's regions with the backbone as it is now, and reports them (main process)."""
        self.refresher.refresh(self.model.backbone)
        rate = self.pair_rate()
        # history: this process's refreshes
        self.refresher.mark_done(self.epoch, {"pair_rate": rate} if rate is not None else None)
        if self.main:
            print(self.refresher.summary(), flush=True)
            self.pictures(f"refresh_{self.bank.refreshes:02d}_epoch_{self.epoch:03d}.png")

    def pair_rate(self, images: int = 256, pairs: int = 8) -> Optional[float]:
        """On composed scenes: the share of training pairs (drawn as the crops are drawn, from the bank as it
        is now: random crops before a refresh) whose two crops show the same object
        (:func:`sgcl_plugin.testbed.metrics.same_object_pair_rate`); None on a folder or another process."""
        if self.args.data != "composed" or not self.main:
            return None
        if self._masks is None:
            self._masks = scene_masks(training_scenes(self.args), images)
        jitter = self.args.box_jitter if self.args.sgcl else 0.0
        return same_object_pair_rate(self.bank, self._masks, pairs=pairs, indices=range(len(self._masks)),
                                     box_jitter=jitter, scale=tuple(self.args.crop_scale))[0]  # fmt: skip

    def pictures(self, name: str) -> None:
        """Draws the saliency maps and regions of the first ``--pictures`` images to ``<out>/saliency/<name>``."""
        k = min(self.args.pictures, len(self.images))
        if k == 0:  # --pictures 0: none drawn
            return
        shown = [self.images[i] for i in range(k)]  # a folder's RGB PIL images at their sizes, or uint8 tensors
        saliency_pictures(self.out / "saliency" / name, shown, self.model.backbone, self.saliency_backbone,
                          self.generator, self.args.saliency_size, self.device)  # fmt: skip

    # --- one step ---------------------------------------------------------------------------------

    def augment_views(self, v1: Tensor, v2: Tensor) -> Tuple[Tensor, Tensor]:
        """--augment-on-device: the two view augmentations on the batch (:func:`augment_on_device`: randomness
        from (seed, rank, step) alone, the global random state untouched)."""
        assert self.device_views is not None
        return augment_on_device(self.device_views, v1, v2, self.args.seed, self.rank, self.global_step, self.device)

    def losses(self, batch: Dict[str, Tensor]) -> Dict[str, Tensor]:
        """The step's losses on a batch of items: ``loss``, ``intra`` and ``inter`` (:class:`SGCLObjective`)."""
        rows = flatten_pairs([batch["views1"], batch["views2"]], batch["scores"], batch["index"])  # B * t pairs
        t = rows.num_regions
        v1 = rows.views1.to(self.device, non_blocking=True)
        v2 = rows.views2.to(self.device, non_blocking=True)
        if self.device_views is not None:
            v1, v2 = self.augment_views(v1, v2)
        scores = rows.scores.to(self.device)
        image_ids = rows.image_ids.to(self.device)
        # Both views in one forward: one DDP call per step, BatchNorm statistics over both views.
        z1, z2 = self.project(torch.cat([v1, v2])).chunk(2)
        if self.args.method == "byol":
            assert self.model.predictor is not None  # BYOL's model has one
            p1, p2 = self.model.predictor(torch.cat([z1, z2])).chunk(2)
            t1, t2 = self.model.target(torch.cat([v1, v2])).chunk(2)
            out = self.objective(scores, p1=p1, p2=p2, t1=t1, t2=t2)
        else:  # SimCLR; NNCLR: each view's nearest neighbour in the support set is the other view's positive
            out = self.objective(scores, z1=z1, z2=z2, image_ids=image_ids)
        if self.args.intra_reduction == "sum":  # Eq. 9 sums over the t pairs of an image, Eq. 10 averages
            out["intra"] = out["intra"] * t
            out["loss"] = out["intra"] + out["inter"]
        return out

    def release(self) -> None:
        """Lets another run use ``--out`` (the lock also goes when the process ends, however it ends)."""
        if self._lock is not None:
            self._lock.close()
            self._lock = None

    def project(self, x: Tensor) -> Tensor:
        """The online projection of a batch of views, through DDP across processes."""
        return self.online(x)

    def step(self, batch: Dict[str, Tensor], amp: bool) -> Tuple[Dict[str, Tensor], float, float]:
        """One optimisation step (and BYOL's target update); returns the losses, the learning rate and the EMA
        momentum it used."""
        args = self.args
        lr = lr_at(self.global_step, self.total_steps, self.warmup_steps, args.lr)
        for group in self.opt.param_groups:
            group["lr"] = lr
        with torch.autocast("cuda", dtype=torch.bfloat16, enabled=amp):
            out = self.losses(batch)
        self.opt.zero_grad(set_to_none=True)
        out["loss"].backward()
        self.opt.step()
        tau = ema_at(self.global_step, self.total_steps, args.ema)
        if args.method == "byol":
            self.model.update_target(tau)
        self.global_step += 1
        self.step_in_epoch += 1
        return out, lr, tau

    # --- the loop -----------------------------------------------------------------------------------

    def fit(self) -> Dict[str, Any]:
        """Trains from where the run stands (after ``--resume``) to ``--epochs``, then writes backbone.pt, the
        final pictures and evaluates (main process).

        Returns:
            ``pair_rate_start``, ``history`` (accuracy vs epochs), ``steps``, ``seconds_per_epoch`` (median, without
            refreshes), ``refreshes``, and the accuracies of :func:`evaluate_backbone` unless ``--no-eval``. A run
            stopped by ``--stop-after-steps`` returns without saving, writing weights or evaluating.
        """
        args = self.args
        self.resume()
        amp = args.amp and self.device.type == "cuda"
        # What the pairs show before training (random crops, or the true boxes with --regions gt).
        self.start_pair_rate = self.pair_rate()
        # A resumed run replays the steps after its checkpoint: log.csv keeps only the rows up to it.
        self.log = StepLog(self.log_path, self.main, self.global_step)
        epoch_times: List[float] = []
        stopped = False
        if args.eval_every and self.global_step == 0 and not self.history:
            self.record_history()  # the starting point of the curves: the randomly initialised backbone
        while self.epoch < args.epochs and not stopped:
            stopped = self.run_epoch(amp, epoch_times)
        self.log.close()
        result: Dict[str, Any] = {
            "pair_rate_start": self.start_pair_rate,
            "history": self.history,
            "steps": float(self.global_step),
            "seconds_per_epoch": float(np.median(epoch_times)) if epoch_times else float("nan"),
            "refreshes": self.schedule.history,
        }
        if stopped:  # as if killed: no final save, the next run resumes from the last checkpoint
            return result
        if self.main:
            self.finish(result)
        return result

    def run_epoch(self, amp: bool, epoch_times: List[float]) -> bool:
        """The rest of the current epoch (after its refresh, if one is due); appends its time per epoch to
        ``epoch_times``. Returns True when ``--stop-after-steps`` stopped it."""
        args = self.args
        at_start = self.epoch == 0 and args.refresh_at_start and self.schedule.last_epoch < 0
        if args.sgcl and args.regions != "gt" and (self.schedule.is_due(self.epoch) or at_start):
            self.refresh()
            self.save()
        self.sampler.epoch = self.epoch
        self.sampler.skip_batches = self.step_in_epoch
        self.items.epoch.fill_(self.epoch)
        bar = (
            None
            if not self.main or args.no_progress
            else epoch_bar(self.steps_per_epoch, self.step_in_epoch, self.epoch)
        )
        t_epoch = time.perf_counter()
        steps_timed = 0
        epoch_losses: List[float] = []
        shown_epoch = self.epoch
        stopped = False
        self.model.train()
        for batch in self.loader:
            t0 = time.perf_counter()
            out, lr, tau = self.step(batch, amp)
            steps_timed += 1
            values = self.report_step(out, lr, tau, time.perf_counter() - t0, bar)
            if values is not None:
                epoch_losses.append(values[0])
            self.after_step()
            if args.stop_after_steps and self.global_step >= args.stop_after_steps:
                stopped = True
                break
        if bar is not None:
            bar.close()
        elif self.main and epoch_losses:  # --no-progress: the loss still reaches the console, once an epoch
            took = time.perf_counter() - t_epoch
            print(
                f"epoch {shown_epoch}: loss {sum(epoch_losses) / len(epoch_losses):.4f} over {len(epoch_losses)} "
                f"steps, {took:.1f} s",
                flush=True,
            )
        if steps_timed:
            epoch_times.append((time.perf_counter() - t_epoch) / steps_timed * self.steps_per_epoch)
        return stopped

    def report_step(
        self, out: Dict[str, Tensor], lr: float, tau: float, dt: float, bar: Optional[Any]
    ) -> Optional[List[float]]:
        """Writes the step's row of log.csv and moves the bar; returns its loss, intra and inter (None where
        nothing reports them: processes other than the main one)."""
        if not (self.log.enabled or bar is not None):
            return None
        ips = self.args.batch_size * self.world / dt
        zero = out["loss"].detach().new_zeros(())  # one host sync for the three numbers, not three
        parts = [out["loss"].detach(), out["intra"].detach(), out.get("inter", zero).detach()]
        values = torch.stack([p.float() for p in parts]).tolist()
        self.log.write(self.epoch, self.global_step, values, lr, tau, ips, dt)
        if bar is not None:
            bar.update(1)
            bar.set_postfix(loss=f"{values[0]:.3f}", img_s=f"{ips:.1f}")
        return values

    def after_step(self) -> None:
        """At the epoch's end: the next epoch, the curves' evaluation when due, a checkpoint; otherwise a
        checkpoint every ``--ckpt-every`` steps."""
        args = self.args
        if self.step_in_epoch == self.steps_per_epoch:
            self.epoch, self.step_in_epoch = self.epoch + 1, 0
            if args.eval_every and self.epoch % args.eval_every == 0 and self.epoch < args.epochs:
                self.record_history()
            self.save()
        elif self.global_step % args.ckpt_every == 0:
            self.save()

    def finish(self, result: Dict[str, Any]) -> None:
        """The end of a finished run (main process): backbone.pt, the final pictures, the evaluation (added to
        ``result``) and its line on the console."""
        args = self.args
        weights = self.model.backbone.state_dict()
        write_output(self.out / "backbone.pt", lambda f: torch.save(weights, f))
        if args.sgcl:
            self.pictures("final.png")
        if args.no_eval:
            return
        settings = evaluation_settings(args)
        print(
            f"evaluating the backbone: kNN and linear probes on {EVAL_NAMES[args.eval_data]} objects "
            f"({settings.get('n_train', '?')} train, {settings.get('n_test', '?')} test; --no-eval skips it) ...",
            flush=True,
        )
        accuracies = self.evaluate()
        result.update(accuracies)
        if args.eval_every and not (self.history and self.history[-1]["epoch"] == self.epoch):
            self.add_history(accuracies)  # (--epochs 0: the starting point is already the last)
        print(
            f"kNN top-1 on {EVAL_NAMES[args.eval_data]} test objects: "
            f"{100 * result['knn']:.2f}%  "
            f"(linear probe {100 * result['linear']:.2f}%)"
        )

    def record_history(self) -> None:
        """Accuracy of the backbone as it is now, for the accuracy-vs-epochs curves (--eval-every).

        ``embed`` evaluates in eval mode and restores every module's own mode afterwards."""
        if self.main and not self.args.no_eval:
            self.add_history(self.evaluate())

    def add_history(self, accuracies: Dict[str, float]) -> None:
        """Appends this epoch's accuracies to the curves and rewrites eval.csv."""
        self.history.append({"epoch": float(self.epoch), **accuracies})
        write_eval_csv(self.out / "eval.csv", self.history)

    def evaluate(self) -> Dict[str, float]:
        """The accuracies of :func:`evaluate_backbone` for the online backbone as it is now."""
        return evaluate_backbone(self.model.backbone, device=self.device, **evaluation_settings(self.args))


def main(argv: Optional[Sequence[str]] = None, method: Optional[str] = None) -> Dict[str, Any]:
    """One run: parses ``argv``, trains and evaluates (see :meth:`Trainer.fit` for the result).

    Args:
        argv: The command line without the program name (None: ``sys.argv[1:]``).
        method: The default of ``--method``.

    Raises:
        SystemExit: an option error (status 2, argparse's message).
        Refused: a run that cannot start or continue (see :func:`cli`).
    """
    args = parse_args(argv, method)
    trainer = Trainer(args)
    if trainer.main:
        print(
            f"{'SGCL-' if args.sgcl else ''}{args.method.upper()} on {len(trainer.images)} images, "
            f"{trainer.pairs_per_image} pair(s)/image, {trainer.steps_per_epoch} steps/epoch x {args.epochs} epochs, "
            f"device {trainer.device}, world {trainer.world}; outputs in {trainer.out}"
        )
    try:
        result = trainer.fit()
    finally:
        trainer.release()
    if dist.is_initialized():
        dist.destroy_process_group()
    return result


def cli(method: Optional[str] = None) -> None:
    """Runs :func:`main` as a command: a refusal prints its message (no traceback) and exits with status 2."""
    try:
        main(method=method)
    except Refused as err:
        print(f"{Path(sys.argv[0]).name}: error: {err}", file=sys.stderr)
        sys.exit(2)
    sys.exit(0)
