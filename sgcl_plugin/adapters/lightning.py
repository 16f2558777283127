"""Lightning callback that refreshes the saliency bank on schedule (SGCL Step 1) during ``Trainer.fit``.

Works with both ``lightning.pytorch`` (``pip install lightning``) and the standalone
``pytorch_lightning`` package: a callback subclasses the ``Callback`` of each one installed.
Lightning is imported only when a callback is created: importing ``sgcl_plugin`` or this module
never needs it.

Examples:
    >>> from sgcl_plugin.adapters.lightning import SaliencyRefreshCallback
    >>> bank = SaliencyBank(len(train_images))
    >>> data = SaliencyCropDataset(train_images, SaliencyCropTransform(bank))
    >>> refresh = SaliencyRefreshCallback(bank, train_images, every_n_epochs=10)
    >>> Trainer(max_epochs=100, callbacks=[refresh]).fit(module, DataLoader(data, ...))
"""

from __future__ import annotations

import importlib
import time
import warnings
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.features import at_stride, check_feature_output, feature_map_backbone
from sgcl_plugin.saliency import SaliencyGenerator, resolve_generator

__all__ = ["SaliencyRefreshCallback", "lightning_callback_bases"]

_INSTALL_HINT = "pip install lightning"
_PACKAGES = {"lightning": "lightning.pytorch", "pytorch_lightning": "pytorch_lightning"}
_CONCRETE_NAMES = {
    ("lightning",): "_SaliencyRefreshCallbackLightning",
    ("pytorch_lightning",): "_SaliencyRefreshCallbackPytorchLightning",
    ("lightning", "pytorch_lightning"): "_SaliencyRefreshCallbackBoth",
}
_CONCRETE: Dict[Tuple[str, ...], type] = {}
_STATE_FORMAT = 1

BankSource = Union[SaliencyBank, Callable[[], Optional[SaliencyBank]], None]
BackboneGetter = Callable[[Any], Union[nn.Module, Callable[[Tensor], Tensor]]]


def _import(package: str) -> Any:
    return importlib.import_module(_PACKAGES[package])


def _resolve_packages(package: str) -> Tuple[str, ...]:
    """The Lightning packages whose ``Callback`` to subclass: the one asked for, or every installed one.

    A callback that subclasses both ``lightning.pytorch.Callback`` and ``pytorch_lightning.Callback``
    is accepted by a ``Trainer`` of either package (Lightning 2.1 refuses a callback of the other
    package at ``Trainer`` init; 2.6 accepts it by duck typing).
    """
    if package not in ("auto", *_PACKAGES):
        raise ValueError(f"package must be 'auto', 'lightning' or 'pytorch_lightning', got {package!r}.")
    candidates = tuple(_PACKAGES) if package == "auto" else (package,)
    found, errors = [], []
    for name in candidates:
        try:
            _import(name)
            found.append(name)
        except ImportError as err:
            errors.append(f"{_PACKAGES[name]}: {err}")
    if not found:
        raise ImportError(
            f"SaliencyRefreshCallback needs PyTorch Lightning: {_INSTALL_HINT} "
            f"(or pip install pytorch-lightning). Import errors: {'; '.join(errors)}"
        )
    return tuple(found)


def lightning_callback_bases(package: str = "auto") -> Tuple[type, ...]:
    """The ``Callback`` classes a new :class:`SaliencyRefreshCallback` would subclass."""
    return tuple(_import(name).Callback for name in _resolve_packages(package))


def _concrete_class(packages: Tuple[str, ...]) -> type:
    """``SaliencyRefreshCallback`` mixed with the packages' ``Callback``; made once, picklable by name."""
    if packages not in _CONCRETE:
        bases = tuple(_import(name).Callback for name in packages)
        name = _CONCRETE_NAMES[packages]
        cls = type(name, (SaliencyRefreshCallback, *bases), {"__module__": __name__, "__doc__": _CONCRETE_DOC})
        cls.__qualname__ = name
        cls._lightning_packages = packages  # type: ignore[attr-defined]
        _CONCRETE[packages] = cls
        globals()[name] = cls
    return _CONCRETE[packages]


def __getattr__(name: str) -> Any:  # PEP 562: unpickling a callback in a fresh (spawned) process
    for packages, concrete in _CONCRETE_NAMES.items():
        if name == concrete:
            return _concrete_class(packages)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


_CONCRETE_DOC = "A SaliencyRefreshCallback bound to Lightning's Callback class(es) (see its docstring)."


def _distributed() -> bool:
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def _shares_rank_zero_memory(trainer: Any, bank: SaliencyBank) -> bool:
    """Whether this rank's bank is the same shared memory as rank 0's (collective; all ranks call it).

    ``ddp_fork`` / ``ddp_notebook`` children inherit the bank's shared memory and ``ddp_spawn``
    receives it by handle, while ``ddp`` (a script per rank), torchrun and SLURM give every rank
    its own. Rank 0 bumps the (even) sequence counter by 2 between two barriers, the others look
    whether they see it, and rank 0 puts it back: readers in DataLoader workers are never disturbed.
    """
    strategy = trainer.strategy
    rank = int(trainer.global_rank)
    before = int(bank._seq[0])
    strategy.barrier("sgcl_probe_read")
    if rank == 0:
        bank._seq[0] += 2
    strategy.barrier("sgcl_probe_bump")
    shared = rank != 0 and int(bank._seq[0]) != before
    strategy.barrier("sgcl_probe_seen")
    if rank == 0:
        bank._seq[0] -= 2
    strategy.barrier("sgcl_probe_done")
    return shared


class _CastInput(nn.Module):
    """Feeds a backbone whose weights are not float32 (``precision="bf16-true"``...) in its dtype."""

    def __init__(self, backbone: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.backbone = backbone
        self.dtype = dtype

    def forward(self, x: Tensor) -> Tensor:
        out = self.backbone(x.to(self.dtype))
        return out.float() if isinstance(out, Tensor) else out


class SaliencyRefreshCallback:
    """Refreshes a :class:`~sgcl_plugin.bank.SaliencyBank` with the module's current backbone on schedule.

    At the start of every scheduled training epoch (``first_epoch``, ``first_epoch + every_n_epochs``,
    ...; never epoch 0, when the backbone is still random) it runs
    :meth:`SaliencyGenerator.refresh <sgcl_plugin.saliency.SaliencyGenerator.refresh>` over
    ``dataset`` with the backbone of the LightningModule on the module's device, and writes the
    regions into ``bank`` **in place**: DataLoader workers (``persistent_workers=True`` included)
    see them from their next item on. Under DDP (``torch.distributed`` initialized by the Trainer)
    every rank refreshes a shard and the results are gathered by dataset index, so all ranks hold
    the same bank.

    The bank, the epoch of the last refresh and the refresh history are stored in every Lightning
    checkpoint (``checkpoint["callbacks"]["SaliencyRefreshCallback"]``) and restored in place by
    ``Trainer.fit(ckpt_path=...)``; a refresh already made for the resumed epoch is not made again.

    The instance subclasses the ``Callback`` of every installed Lightning package
    (``lightning.pytorch`` and/or ``pytorch_lightning``), so a ``Trainer`` of either accepts it;
    ``isinstance(cb, SaliencyRefreshCallback)`` holds too.

    Args:
        bank: The bank to refresh (the one the crop transform reads). May be ``None`` and set later
            (``callback.bank = ...``), or a no-argument callable returning it (e.g. ``lambda:
            datamodule.bank`` when the datamodule builds it in ``setup``).
        dataset: The training images (a map-style dataset of PIL images, arrays, tensors, or
            tuples/dicts holding one), in the bank's index order; a
            :class:`~sgcl_plugin.crops.SaliencyCropDataset` is unwrapped to the dataset it wraps.
            May also be a no-argument callable returning it.
        generator: The saliency source; default :class:`~sgcl_plugin.saliency.SaliencyGenerator`
            in ``regions`` mode.
        regions: ``"objects"`` (default) or ``"paper"``: the region mode of the default generator
            (not together with ``generator``).
        feature_stride: Read the backbone's stage at this stride (16 recommended for object-level
            regions; works on backbones that end in global pooling) through
            :class:`~sgcl_plugin.features.FeatureMaps`; ``None`` (default) uses the backbone's output.
        every_n_epochs: Refresh interval in epochs (paper: every 100 of 800 epochs; Table 6 finds 5-20
            about equally good in 100-epoch runs).
        first_epoch: First refresh epoch (0-based ``trainer.current_epoch``); default
            ``every_n_epochs``. Must be >= 1.
        backbone: ``None`` to use ``pl_module.backbone``, or a callable ``get_backbone(pl_module)``
            returning a module / callable that maps a (B, 3, S, S) batch to feature maps
            (B, C, h, w).
        saliency_size: Side of the square refresh input (paper: 640).
        batch_size: Images per refresh forward pass.
        num_workers: DataLoader workers of the refresh (image loading and resizing).
        progress: tqdm bar during refreshes (global rank 0 only).
        log_stats: Log the bank statistics (``sgcl/refreshes``, ``sgcl/regions_per_image``, ...) with
            ``pl_module.log`` after each refresh, i.e. to the Trainer's loggers at the epoch's end.
        transform: Replaces the refresh's default resize + ImageNet normalization.
        package: ``"auto"`` (default: the ``Callback`` of every installed package),
            ``"lightning"`` or ``"pytorch_lightning"`` (that package's only).

    Attributes:
        last_refresh_epoch: Epoch of the last refresh (-1 before the first).
        history: One dict per refresh: ``epoch``, ``global_step``, ``seconds`` and the bank stats.

    Raises:
        ImportError: Neither ``lightning`` nor ``pytorch_lightning`` is installed.
        ValueError: Bad schedule arguments; a dataset whose size is not the bank's (at fit start when
            both exist, else at the refresh).
        RuntimeError: A refresh is due but the bank is ``None``; the module has no ``backbone``.
    """

    _lightning_packages: Tuple[str, ...] = ()

    def __new__(cls, *args: Any, package: str = "auto", **kwargs: Any) -> SaliencyRefreshCallback:
        if cls is SaliencyRefreshCallback:
            cls = _concrete_class(_resolve_packages(package))
        return object.__new__(cls)

    def __init__(
        self,
        bank: BankSource,
        dataset: Any,
        generator: Optional[SaliencyGenerator] = None,
        every_n_epochs: int = 10,
        first_epoch: Optional[int] = None,
        backbone: Optional[BackboneGetter] = None,
        saliency_size: int = 640,
        batch_size: int = 32,
        num_workers: int = 0,
        progress: bool = True,
        log_stats: bool = True,
        transform: Optional[Callable[[Any], Tensor]] = None,
        package: str = "auto",
        regions: Optional[str] = None,
        feature_stride: Optional[int] = None,
    ) -> None:
        super().__init__()
        if feature_stride is not None and (
            isinstance(feature_stride, bool) or not isinstance(feature_stride, int) or feature_stride < 1
        ):
            raise ValueError(f"feature_stride must be None or a positive integer, got {feature_stride!r}.")
        if isinstance(every_n_epochs, bool) or not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"every_n_epochs must be an integer >= 1, got {every_n_epochs!r}.")
        if first_epoch is None:
            first_epoch = every_n_epochs
        if isinstance(first_epoch, bool) or not isinstance(first_epoch, int) or first_epoch < 1:
            raise ValueError(
                f"first_epoch must be an integer >= 1, got {first_epoch!r}: SGCL never refreshes at epoch 0, "
                "when the backbone has not learnt anything yet."
            )
        if bank is not None and not isinstance(bank, SaliencyBank) and not callable(bank):
            raise TypeError(
                f"bank must be a SaliencyBank, None or a callable returning one, got {type(bank).__name__}."
            )
        if backbone is not None and not callable(backbone):
            raise TypeError("backbone must be None or a callable get_backbone(pl_module).")
        if saliency_size < 2 or batch_size < 1 or num_workers < 0:
            raise ValueError(
                f"Need saliency_size >= 2, batch_size >= 1, num_workers >= 0; got {saliency_size}, "
                f"{batch_size}, {num_workers}."
            )
        self.bank = bank
        self.dataset = dataset
        self.generator = resolve_generator(generator, regions)
        self.feature_stride = feature_stride
        self.every_n_epochs = every_n_epochs
        self.first_epoch = first_epoch
        self.get_backbone = backbone
        self.saliency_size = int(saliency_size)
        self.batch_size = int(batch_size)
        self.num_workers = int(num_workers)
        self.progress = bool(progress)
        self.log_stats = bool(log_stats)
        self.transform = transform
        self.last_refresh_epoch = -1
        self.history: List[Dict[str, float]] = []
        self._pending_bank_state: Optional[Dict[str, Any]] = None
        self._warned_package = False
        self._probed_bank: Optional[int] = None  # id() of the bank whose cross-rank sharing was probed
        self._writer = True  # False on a rank whose bank *is* rank 0's memory (ddp_fork / ddp_spawn)

    def __repr__(self) -> str:
        return (
            f"SaliencyRefreshCallback(every_n_epochs={self.every_n_epochs}, first_epoch={self.first_epoch}, "
            f"saliency_size={self.saliency_size}, last_refresh_epoch={self.last_refresh_epoch}, "
            f"packages={self._lightning_packages!r})"
        )

    # ------------------------------------------------------------------------------------ schedule

    @property
    def state_key(self) -> str:
        """Key of this callback's entry in ``checkpoint["callbacks"]``; the same for both packages."""
        return "SaliencyRefreshCallback"

    def should_refresh(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is on the schedule (already-made refreshes aside)."""
        return epoch >= self.first_epoch and (epoch - self.first_epoch) % self.every_n_epochs == 0

    # ------------------------------------------------------------------------------ bank, dataset

    def resolve_bank(self) -> Optional[SaliencyBank]:
        """The bank (calling ``bank`` when it is a callable); applies a checkpointed state waiting for it."""
        bank = self.bank
        if bank is not None and not isinstance(bank, SaliencyBank):
            bank = bank()
            if bank is not None and not isinstance(bank, SaliencyBank):
                raise TypeError(f"The bank callable returned a {type(bank).__name__}, not a SaliencyBank.")
        if bank is not None and self._pending_bank_state is not None and not _distributed():
            state, self._pending_bank_state = self._pending_bank_state, None
            self._load_bank(bank, state)
        return bank

    def resolve_dataset(self) -> Any:
        """The refresh dataset (calling ``dataset`` when it is a callable), a crop dataset unwrapped.

        Any wrapper that holds a ``dataset`` and a :class:`~sgcl_plugin.crops.SaliencyCropTransform`
        as ``transform`` (``SaliencyCropDataset``, the lightly adapter's ``IndexedDataset``) is
        unwrapped: the refresh reads the images, not the region crops.
        """
        from sgcl_plugin.crops import SaliencyCropTransform

        dataset = self.dataset
        if dataset is not None and not hasattr(dataset, "__getitem__") and callable(dataset):
            dataset = dataset()
        while isinstance(getattr(dataset, "transform", None), SaliencyCropTransform) and hasattr(dataset, "dataset"):
            dataset = dataset.dataset
        return dataset

    def _checked_bank_and_dataset(self) -> tuple:
        bank = self.resolve_bank()
        if bank is None:
            raise RuntimeError(
                "SaliencyRefreshCallback: a saliency refresh is due but the bank is None. Pass the SaliencyBank "
                "your SaliencyCropTransform reads (or a callable returning it), or set `callback.bank` before "
                "the refresh epoch."
            )
        dataset = self.resolve_dataset()
        if dataset is None:
            raise RuntimeError("SaliencyRefreshCallback: a saliency refresh is due but the dataset is None.")
        try:
            n = len(dataset)
        except TypeError as err:
            raise TypeError(
                "SaliencyRefreshCallback needs a map-style dataset (with __len__ and __getitem__)."
            ) from err
        if n != len(bank):
            raise ValueError(
                f"SaliencyRefreshCallback: the dataset has {n} images but the bank holds {len(bank)}. Refresh "
                "the same images, in the same order, that the crop dataset reads (index i of both must be "
                "the same image)."
            )
        return bank, dataset

    # ----------------------------------------------------------------------------------- backbone

    def backbone_of(self, pl_module: Any) -> Union[nn.Module, Callable[[Tensor], Tensor]]:
        """The module's backbone: ``get_backbone(pl_module)`` or ``pl_module.backbone``."""
        if self.get_backbone is not None:
            backbone = self.get_backbone(pl_module)
            if backbone is None or not callable(backbone):
                raise RuntimeError(
                    f"SaliencyRefreshCallback: get_backbone({type(pl_module).__name__}) returned "
                    f"{type(backbone).__name__}, not a module or callable mapping images to feature maps."
                )
            return backbone
        attribute: Any = getattr(pl_module, "backbone", None)
        if attribute is None or not callable(attribute):
            raise RuntimeError(
                f"SaliencyRefreshCallback: {type(pl_module).__name__} has no `backbone` attribute. Name the "
                "feature extractor `self.backbone`, or pass backbone=lambda module: module.<your encoder> (a "
                "module mapping (B, 3, S, S) images to (B, C, h, w) feature maps)."
            )
        return attribute

    # --------------------------------------------------------------------------------------- hooks

    def setup(self, trainer: Any, pl_module: Any, stage: str) -> None:
        """Starts a new run's schedule; probes whether the ranks share one bank in memory (under DDP)."""
        if stage == "fit":
            self._probed_bank = None  # probe again in every run (fork children inherit this object)
            if int(trainer.current_epoch) == 0:  # a new run (a resume restores both right after setup)
                self.last_refresh_epoch = -1
                self.history = []
            self._prepare(trainer)
        self._check_package(trainer)

    def _check_package(self, trainer: Any) -> None:
        """Warns when the Trainer's package is not one the callback subclasses (``package=`` forced)."""
        if self._warned_package or not self._lightning_packages:
            return
        trainer_package = type(trainer).__module__.split(".")[0]
        if trainer_package in _PACKAGES and trainer_package not in self._lightning_packages:
            self._warned_package = True
            warnings.warn(
                f"SaliencyRefreshCallback subclasses the Callback of {self._lightning_packages} but the Trainer "
                f"comes from {_PACKAGES[trainer_package]}; create it with package='auto' (the default) or "
                f"package={trainer_package!r}.",
                stacklevel=2,
            )

    def on_fit_start(self, trainer: Any, pl_module: Any) -> None:
        """Restores a checkpointed bank; fails early on a module without backbone or a size mismatch."""
        self._prepare(trainer)
        backbone = self._refresh_backbone(pl_module)  # no stage at that stride: fail now
        if self.resolve_bank() is not None and self.resolve_dataset() is not None:
            _, dataset = self._checked_bank_and_dataset()
            self._probe(backbone, dataset, pl_module)

    def _refresh_backbone(self, pl_module: Any) -> Any:
        """What a refresh runs: the backbone's stage at ``feature_stride``, or its output with any
        trailing global pooling dropped (lightly-style ``Sequential`` backbones)."""
        backbone = self.backbone_of(pl_module)
        if self.feature_stride is None:
            return feature_map_backbone(backbone)
        return at_stride(backbone, self.feature_stride)

    def _probe(self, backbone: Any, dataset: Any, pl_module: Any) -> None:
        """One image, one forward: a dataset the refresh cannot read or a backbone that does not give
        feature maps fails at fit start, not after the first epochs."""
        from sgcl_plugin.refresh import SaliencyInput, eval_mode

        transform = self.transform or SaliencyInput(self.saliency_size)
        try:
            x = transform(dataset[0])[None]
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"SaliencyRefreshCallback cannot read dataset[0] as an image for the refresh: {err} Pass the "
                "images (PIL, arrays, tensors, or (image, ...) tuples / {'image': ...} dicts) in bank order."
            ) from err
        params = list(backbone.parameters()) if isinstance(backbone, nn.Module) else []
        device = params[0].device if params else getattr(pl_module, "device", torch.device("cpu"))
        dtype = params[0].dtype if params and params[0].is_floating_point() else torch.float32
        x = x.to(device=device, dtype=dtype)
        with torch.no_grad(), eval_mode(backbone):
            check_feature_output(backbone(x), x)

    def _prepare(self, trainer: Any) -> Optional[SaliencyBank]:
        """Probes cross-rank sharing of a new bank and applies a checkpointed state waiting for it.

        Called on every rank at the same points (``setup``, ``on_fit_start``, each refresh): the
        probe and the barrier after a restore are collective.
        """
        bank = self.resolve_bank()
        if bank is None:
            return None
        world = int(getattr(trainer, "world_size", 1))
        if self._probed_bank != id(bank):
            self._writer = not (world > 1 and _distributed() and _shares_rank_zero_memory(trainer, bank))
            self._probed_bank = id(bank)
        if self._pending_bank_state is not None:
            state, self._pending_bank_state = self._pending_bank_state, None
            if self._writer:
                self._load_bank(bank, state)
            if world > 1 and _distributed():
                trainer.strategy.barrier("sgcl_bank_restore")
        return bank

    def on_train_start(self, trainer: Any, pl_module: Any) -> None:
        """Applies a checkpointed bank restored after ``on_fit_start`` (strategies that restore late)."""
        self._prepare(trainer)

    def on_train_epoch_start(self, trainer: Any, pl_module: Any) -> None:
        self._prepare(trainer)
        epoch = int(trainer.current_epoch)
        if not self.should_refresh(epoch) or epoch <= self.last_refresh_epoch:
            return  # off schedule, or done already for this epoch (resumed from a checkpoint)
        self.refresh(trainer, pl_module)

    def refresh(self, trainer: Any, pl_module: Any) -> SaliencyBank:
        """Refreshes the bank now with the module's current backbone, whatever the schedule.

        Call it on every rank at once under DDP (the refresh is sharded and gathered).
        """
        self._prepare(trainer)
        bank, dataset = self._checked_bank_and_dataset()
        # A rank whose bank is rank 0's shared memory (ddp_fork, ddp_spawn) takes its part in the
        # sharded refresh but writes into a scratch bank: one writer per table keeps the version
        # counter and the sequence lock right.
        target = bank if self._writer else SaliencyBank(len(bank), bank.max_regions)
        backbone = self._refresh_backbone(pl_module)
        device = None
        if isinstance(backbone, nn.Module):
            params = list(backbone.parameters())
            if params and params[0].is_floating_point() and params[0].dtype != torch.float32:
                backbone = _CastInput(backbone, params[0].dtype)
            if not params:
                device = pl_module.device
        else:
            device = getattr(pl_module, "device", None)
        is_zero = bool(getattr(trainer, "is_global_zero", True))
        start = time.perf_counter()
        self.generator.refresh(
            backbone,
            dataset,
            target,
            batch_size=self.batch_size,
            saliency_size=self.saliency_size,
            transform=self.transform,
            device=device,
            num_workers=self.num_workers,
            progress=self.progress and is_zero,
        )
        if int(getattr(trainer, "world_size", 1)) > 1 and _distributed():
            trainer.strategy.barrier("sgcl_refresh")  # every rank's table is written before training resumes
        seconds = time.perf_counter() - start
        epoch = int(trainer.current_epoch)
        self.last_refresh_epoch = max(self.last_refresh_epoch, epoch)
        stats = bank.stats()
        record = {"epoch": float(epoch), "global_step": float(trainer.global_step), "seconds": seconds, **stats}
        self.history.append(record)
        if self.log_stats:
            self._log(pl_module, {"version": float(bank.version), "refresh_seconds": seconds, **stats})
        return bank

    @staticmethod
    def _log(pl_module: Any, values: Dict[str, float]) -> None:
        log_dict = getattr(pl_module, "log_dict", None)
        if log_dict is None or getattr(pl_module, "_trainer", None) is None:
            return
        if getattr(pl_module, "_current_fx_name", None) is None:
            return  # called outside a Lightning hook (a manual refresh): self.log is not allowed there
        # Every rank holds the same bank after the gather, so the mean over ranks is the value itself
        # (sync_dist=True: a few scalars reduced once an epoch, and no Lightning warning under DDP).
        log_dict(
            {f"sgcl/{k}": float(v) for k, v in values.items()},
            on_step=False,
            on_epoch=True,
            batch_size=1,
            sync_dist=True,
        )

    # -------------------------------------------------------------------------------- checkpoints

    def state_dict(self) -> Dict[str, Any]:
        """Saved by Lightning in every checkpoint: the bank, the last refresh epoch and the history."""
        bank = self.resolve_bank()
        bank_state = self._pending_bank_state  # a restored state not yet applied wins
        if bank_state is None and bank is not None:
            bank_state = bank.state_dict()
        return {
            "format": _STATE_FORMAT,
            "bank": bank_state,
            "last_refresh_epoch": self.last_refresh_epoch,
            "history": [dict(h) for h in self.history],
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores the state of a checkpoint; the bank is overwritten in place (workers see it)."""
        self.last_refresh_epoch = int(state_dict.get("last_refresh_epoch", -1))
        self.history = [dict(h) for h in state_dict.get("history", [])]
        bank_state = state_dict.get("bank")
        if bank_state is None:
            return
        # Applied in place as soon as the bank exists; under torch.distributed at on_fit_start, after
        # the probe of whether the ranks share one bank (then only rank 0 writes it).
        self._pending_bank_state = bank_state
        self.resolve_bank()

    @staticmethod
    def _load_bank(bank: SaliencyBank, state: Dict[str, Any]) -> None:
        try:
            bank.load_state_dict(state)
        except ValueError as err:
            raise ValueError(f"SaliencyRefreshCallback: cannot restore the checkpointed saliency bank: {err}") from err
