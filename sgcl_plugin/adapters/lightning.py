"""Lightning callback that refreshes the saliency bank on schedule (SGCL Step 1) during ``Trainer.fit``.

Works with ``lightning.pytorch`` and the standalone ``pytorch_lightning``, imported only when a callback is
created (``import sgcl_plugin`` never needs them). Usage, checkpoints and DDP: docs/adapters/lightning.md.
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.features import Stride
from sgcl_plugin.items import DatasetImages
from sgcl_plugin.refresher import BankSource, SaliencyRefresher, refresh_summary
from sgcl_plugin.saliency import SaliencyGenerator

__all__ = ["SGCLRefreshCallback", "lightning_callback_bases", "refresh_summary"]

_PACKAGES = {"lightning": "lightning.pytorch", "pytorch_lightning": "pytorch_lightning"}
_CONCRETE_NAMES = {  # the classes a callback gets, by the packages it subclasses; pickled by name
    ("lightning",): "_SGCLRefreshCallbackLightning", ("pytorch_lightning",): "_SGCLRefreshCallbackPytorchLightning",
    ("lightning", "pytorch_lightning"): "_SGCLRefreshCallbackBoth",
}  # fmt: skip
_CONCRETE: Dict[Tuple[str, ...], type] = {}

BackboneGetter = Callable[[Any], Union[nn.Module, Callable[[Tensor], Tensor]]]


def _resolve_packages(package: str) -> Tuple[str, ...]:
    if package not in ("auto", *_PACKAGES):
        raise ValueError(f"package must be 'auto', 'lightning' or 'pytorch_lightning', got {package!r}.")
    found, errors = [], []
    for name in tuple(_PACKAGES) if package == "auto" else (package,):
        try:
            importlib.import_module(_PACKAGES[name])
            found.append(name)
        except ImportError as err:
            errors.append(f"{_PACKAGES[name]}: {err}")
    if not found:
        raise ImportError(
            "SGCLRefreshCallback needs PyTorch Lightning: pip install lightning "
            f"(or pip install pytorch-lightning). Import errors: {'; '.join(errors)}"
        )
    return tuple(found)


def lightning_callback_bases(package: str = "auto") -> Tuple[type, ...]:
    """The ``Callback`` classes a new :class:`SGCLRefreshCallback` would subclass."""
    return tuple(importlib.import_module(_PACKAGES[name]).Callback for name in _resolve_packages(package))


def _concrete_class(packages: Tuple[str, ...]) -> type:
    if packages not in _CONCRETE:
        name = _CONCRETE_NAMES[packages]
        doc = "A SGCLRefreshCallback bound to Lightning's Callback class(es) (see its docstring)."
        bases = tuple(importlib.import_module(_PACKAGES[package]).Callback for package in packages)
        cls = type(name, (SGCLRefreshCallback, *bases), {"__module__": __name__, "__doc__": doc})
        cls.__qualname__ = name
        cls._lightning_packages = packages  # type: ignore[attr-defined]
        _CONCRETE[packages] = globals()[name] = cls
    return _CONCRETE[packages]


def __getattr__(name: str) -> Any:  # PEP 562: unpickling a callback in a fresh (spawned) process
    for packages, concrete in _CONCRETE_NAMES.items():
        if name == concrete:
            return _concrete_class(packages)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _driver_attribute(name: str, doc: str) -> Any:
    """A property reading and writing the refresh driver's attribute ``name``."""

    def get(self: SGCLRefreshCallback) -> Any:
        return getattr(self.refresher, name)

    def set_(self: SGCLRefreshCallback, value: Any) -> None:
        setattr(self.refresher, name, value)

    return property(get, set_, doc=doc)


class SGCLRefreshCallback:
    """Refreshes a :class:`~sgcl_plugin.bank.SaliencyBank` in place with the module's backbone, on schedule.

    At the start of epochs ``first_epoch`` (default ``every_n_epochs``, never 0), ``first_epoch +
    every_n_epochs``, ... it runs the core refresh driver (:class:`~sgcl_plugin.refresher.SaliencyRefresher`,
    :attr:`refresher`) over ``dataset`` (sharded under DDP). Bank and schedule are saved in checkpoints and
    restored on resume. This class adds only Lightning's hooks, DDP's shared banks and the logging.

    Args:
        bank: The bank the crop transform reads; None (set ``callback.bank`` later); or a callable returning it.
        dataset: The training images in the bank's order (a crop dataset, whose bank must be ``bank``, is
            unwrapped), or a callable.
        generator, regions: The saliency source, or the mode (``"hierarchy"``, ``"objects"``, ``"paper"``) of the
            default one.
        every_n_epochs, first_epoch: The schedule above (paper: every 100 of 800 epochs).
        backbone: None for ``pl_module.backbone``, or ``get_backbone(pl_module)`` returning the module mapping
            (B, 3, S, S) images to feature maps (B, C, h, w).
        saliency_size, batch_size, num_workers, transform, progress: Options of the refresh.
        log_stats: Log the bank statistics (``sgcl/...``) after each refresh, and print them in one line
            on rank 0 (:func:`~sgcl_plugin.refresher.refresh_summary`; with or without the progress bar).
        package: ``"auto"`` (subclass every installed package's ``Callback``), ``"lightning"``, ``"pytorch_lightning"``.
        feature_stride: What a refresh reads (:func:`~sgcl_plugin.features.refresh_features`): ``"auto"``
            (hierarchy mode: the last map and the stage at half its stride; other modes: the last map), None (the
            backbone's output), a stride (16: the stride-16 stage) or a pair ``(16, 32)``.

    Raises:
        ImportError: Neither ``lightning`` nor ``pytorch_lightning`` is installed.
        ValueError: Bad arguments; a dataset whose size is not the bank's (at once when both are given, else at
            fit start or at the refresh).
        RuntimeError: A refresh is due but the bank is None; the module has no ``backbone``.
    """

    _lightning_packages: Tuple[str, ...] = ()
    refresher: SaliencyRefresher

    def __new__(cls, *args: Any, package: str = "auto", **kwargs: Any) -> SGCLRefreshCallback:
        if cls is SGCLRefreshCallback:
            cls = _concrete_class(_resolve_packages(package))
        return object.__new__(cls)

    def __init__(
        self, bank: BankSource, dataset: Any, generator: Optional[SaliencyGenerator] = None, every_n_epochs: int = 10,
        first_epoch: Optional[int] = None, backbone: Optional[BackboneGetter] = None, saliency_size: int = 640,
        batch_size: int = 32, num_workers: int = 0, progress: bool = True, log_stats: bool = True,
        transform: Optional[Callable[[Any], Tensor]] = None, package: str = "auto", regions: Optional[str] = None,
        feature_stride: Stride = "auto",
    ) -> None:  # fmt: skip
        super().__init__()
        if backbone is not None and not callable(backbone):
            raise TypeError("backbone must be None or a callable get_backbone(pl_module).")
        self.refresher = SaliencyRefresher(
            bank, dataset, every_n_epochs, generator, regions, first_epoch, feature_stride, saliency_size, batch_size,
            num_workers, progress, transform=transform, host="SGCLRefreshCallback",
        )  # fmt: skip
        self.get_backbone, self.log_stats = backbone, bool(log_stats)
        self._warned_package = False
        self._probed_bank: Optional[int] = None  # id() of the bank whose cross-rank sharing was probed
        self._writer = True  # False on a rank whose bank *is* rank 0's memory (ddp_fork / ddp_spawn)

    bank = _driver_attribute("bank", "The bank, None or a callable returning it (settable).")
    dataset = _driver_attribute("dataset", "The refresh's images, or a callable returning them (settable).")
    generator = _driver_attribute("generator", "The saliency generator.")
    feature_stride = _driver_attribute("feature_stride", "What a refresh reads (see the class).")
    transform = _driver_attribute("transform", "The refresh's input transform (None: resize and normalize).")
    saliency_size = _driver_attribute("saliency_size", "The refresh's input size.")
    batch_size = _driver_attribute("batch_size", "Images per refresh forward pass.")
    num_workers = _driver_attribute("num_workers", "The refresh's DataLoader workers.")
    progress = _driver_attribute("progress", "Whether a refresh shows a progress bar (rank 0).")
    schedule = _driver_attribute("schedule", "The refresh schedule (a RefreshSchedule).")

    def __repr__(self) -> str:
        return (
            f"SGCLRefreshCallback(every_n_epochs={self.every_n_epochs}, first_epoch={self.first_epoch}, "
            f"saliency_size={self.saliency_size}, last_refresh_epoch={self.last_refresh_epoch}, "
            f"packages={self._lightning_packages!r})"
        )

    @property
    def every_n_epochs(self) -> int:
        return self.schedule.every_n_epochs

    @property
    def first_epoch(self) -> int:
        return self.schedule.first_epoch

    @property
    def last_refresh_epoch(self) -> int:
        """Epoch of the last refresh (-1 before the first)."""
        return self.schedule.last_epoch

    @last_refresh_epoch.setter
    def last_refresh_epoch(self, epoch: int) -> None:
        self.schedule.last_epoch = int(epoch)

    @property
    def history(self) -> List[Dict[str, float]]:
        """One dict per refresh: ``epoch``, ``global_step``, ``seconds`` and the bank stats."""
        return self.schedule.history

    @property
    def state_key(self) -> str:
        """Key of this callback's entry in ``checkpoint["callbacks"]``; the same for both packages."""
        return "SaliencyRefreshCallback"  # the key of earlier releases: their checkpoints resume

    def should_refresh(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is on the schedule (already-made refreshes aside)."""
        return self.schedule.on_schedule(epoch)

    def resolve_bank(self) -> Optional[SaliencyBank]:
        """The bank (calling ``bank`` when it is a callable); applies a checkpointed state waiting for it
        (under torch.distributed only after the probe of whether the ranks share one bank)."""
        return self.refresher.resolve_bank(restore=not _distributed())

    def resolve_dataset(self) -> Optional[DatasetImages]:
        """The refresh's images (calling ``dataset`` when it is a callable; a crop dataset gives its images)."""
        return self.refresher.resolve_dataset()

    def _module_backbone(self, pl_module: Any) -> Union[nn.Module, Callable[[Tensor], Tensor]]:
        getter = self.get_backbone
        backbone = getattr(pl_module, "backbone", None) if getter is None else getter(pl_module)
        if backbone is None or not callable(backbone):
            if getter is not None:
                raise RuntimeError(
                    f"SGCLRefreshCallback: get_backbone({type(pl_module).__name__}) returned "
                    f"{type(backbone).__name__}, not a module or callable mapping images to feature maps."
                )
            raise RuntimeError(
                f"SGCLRefreshCallback: {type(pl_module).__name__} has no `backbone` attribute. Name the "
                "feature extractor `self.backbone`, or pass backbone=lambda module: module.<your encoder> (a "
                "module mapping (B, 3, S, S) images to (B, C, h, w) feature maps)."
            )
        return backbone

    def backbone_of(self, pl_module: Any) -> Union[nn.Module, Callable[[Tensor], Tensor]]:
        """What a refresh runs: :func:`~sgcl_plugin.features.refresh_features` of the module's backbone."""
        return self.refresher.features(self._module_backbone(pl_module))

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Starts a new run's schedule; probes whether the ranks share one bank in memory (under DDP)."""
        if stage == "fit":
            self._probed_bank = None  # probe again in every run (fork children inherit this object)
            if int(trainer.current_epoch) == 0:  # a new run (a resume restores the state right after setup)
                self.schedule.reset()
            self._prepare(trainer)
        trainer_package = type(trainer).__module__.split(".")[0]  # warn if not one the callback subclasses
        packages = self._lightning_packages
        if not self._warned_package and packages and trainer_package in _PACKAGES and trainer_package not in packages:
            self._warned_package = True
            warnings.warn(
                f"SGCLRefreshCallback subclasses the Callback of {packages} but the Trainer comes from "
                f"{_PACKAGES[trainer_package]}; create it with package='auto' (the default) or "
                f"package={trainer_package!r}.",
                stacklevel=2,
            )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Restores a checkpointed bank; fails early on a missing backbone or feature maps, or a bad dataset."""
        self._prepare(trainer)
        self.refresher.probe(self._module_backbone(pl_module))

    def _prepare(self, trainer: Any) -> Optional[SaliencyBank]:
        # Probes cross-rank sharing of a new bank and applies a checkpointed state waiting for it. Called on
        # every rank at the same points (setup, on_fit_start, each refresh): the probe and barrier are collective.
        bank = self.refresher.resolve_bank(restore=False)
        if bank is None:
            return None
        several = int(getattr(trainer, "world_size", 1)) > 1 and _distributed()
        if self._probed_bank != id(bank):
            rank = int(trainer.global_rank) if several else 0
            self._writer = not (several and bank.shared_with_rank_zero(rank, trainer.strategy.barrier))
            self._probed_bank = id(bank)
        if self.refresher.pending:
            self.refresher.restore_pending(bank, write=self._writer)
            if several:
                trainer.strategy.barrier("sgcl_bank_restore")
        return bank

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Applies a checkpointed bank restored after ``on_fit_start`` (strategies that restore late)."""
        self._prepare(trainer)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._prepare(trainer)
        if self.schedule.is_due(int(trainer.current_epoch)):  # a resumed run does not repeat its refresh
            values = self.refresh(trainer, pl_module)
            if self.log_stats and bool(getattr(trainer, "is_global_zero", True)):
                print(refresh_summary(self.history[-1], int(trainer.current_epoch)), flush=True)
            if self.log_stats:  # inside a hook, where LightningModule.log is allowed
                # Every rank holds the same bank after the gather: sync_dist=True reduces a few equal scalars.
                stats = {k: v for k, v in self.history[-1].items() if k not in ("epoch", "global_step")}
                stats["version"], stats["refresh_seconds"] = float(values.version), stats.pop("seconds")
                metrics = {f"sgcl/{k}": float(v) for k, v in stats.items()}
                pl_module.log_dict(metrics, on_step=False, on_epoch=True, batch_size=1, sync_dist=True)

    def refresh(self, trainer: Any, pl_module: Any) -> SaliencyBank:
        """Refreshes the bank now, whatever the schedule (under DDP: on every rank at once); logs nothing."""
        self._prepare(trainer)
        bank, _ = self.refresher.check()  # no bank or dataset yet, or one that does not fit: say so first
        # A rank whose bank is rank 0's shared memory (ddp_fork, ddp_spawn) does its share of the refresh but
        # writes into a scratch bank: one writer per table keeps the version counter and the sequence lock right.
        scratch = None if self._writer else SaliencyBank(len(bank), bank.max_regions)
        backbone = self._module_backbone(pl_module)
        has_params = isinstance(backbone, nn.Module) and next(backbone.parameters(), None) is not None
        self.refresher.refresh(
            backbone, into=scratch, device=None if has_params else getattr(pl_module, "device", None),
            progress=self.progress and bool(getattr(trainer, "is_global_zero", True)),
        )  # fmt: skip
        if int(getattr(trainer, "world_size", 1)) > 1 and _distributed():
            trainer.strategy.barrier("sgcl_refresh")  # every rank's table is written before training resumes
        self.refresher.mark_done(int(trainer.current_epoch), {"global_step": float(trainer.global_step)})
        return bank

    def state_dict(self) -> Dict[str, Any]:
        """Saved by Lightning in every checkpoint: the bank, the last refresh epoch and the history."""
        state = self.refresher.state_dict()
        return {"format": 1, "bank": state["bank"], "last_refresh_epoch": state["last_epoch"],
                "history": state["schedule"]["history"]}  # fmt: skip

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores the state of a checkpoint; the bank is overwritten in place (workers see it)."""
        schedule = {"last_epoch": state_dict.get("last_refresh_epoch", -1), "history": state_dict.get("history", [])}
        # Under torch.distributed the bank waits for on_fit_start, after the probe of whether the ranks share
        # one bank (then only rank 0 writes it).
        self.refresher.load_state_dict({"schedule": schedule, "bank": state_dict.get("bank")}, not _distributed())
