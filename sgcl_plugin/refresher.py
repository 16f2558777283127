"""The one refresh driver: schedule, generator, feature maps, refresh options, checks, summary and state.

Every host calls :class:`SaliencyRefresher`: the reference trainer, lightly (``SGCLRefresher`` and ``refresh``
are this class and :func:`refresh_regions`), the Lightning callback and solo-learn's methods. A new host needs
no refresh code of its own: call :meth:`SaliencyRefresher.maybe_refresh` at the start of every epoch and keep
:meth:`SaliencyRefresher.state_dict` in its checkpoints.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Dict, List, Optional, Tuple, Union

import torch
from torch import Tensor

from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.checks import check_int
from sgcl_plugin.features import Stride, check_feature_output, check_stride, default_device, eval_mode, refresh_features
from sgcl_plugin.images import SaliencyInput
from sgcl_plugin.items import DatasetImages
from sgcl_plugin.refresh import check_dataset_bank, refresh_bank
from sgcl_plugin.saliency import SaliencyGenerator, resolve_generator
from sgcl_plugin.schedule import RefreshSchedule

__all__ = ["MissingBankError", "SaliencyRefresher", "refresh_regions", "refresh_summary"]

BankSource = Union[SaliencyBank, Callable[[], Optional[SaliencyBank]], None]
"""A bank, None (set ``refresher.bank`` before the first refresh) or a callable returning one."""


class MissingBankError(ValueError, RuntimeError):
    """A refresh was asked for before the bank exists (a ValueError for a missing argument, a RuntimeError for a
    bank that a host makes later: hosts raised either before, and ``except`` clauses for both keep working)."""


def refresh_summary(record: Dict[str, Any], epoch: Optional[int] = None) -> str:
    """The one line every host prints after a refresh: its number and epoch, regions per image, whole-image
    fallbacks, mean score, top box area, the share of pairs showing one object (when the host measured it,
    ``pair_rate``) and time, from a history record (``bank.stats()`` and ``seconds``; ``epoch``: the record's)."""
    n = int(record.get("images_with_regions", 0))
    epoch = int(record.get("epoch", 0)) if epoch is None else int(epoch)
    pairs = f", pairs showing one object {100 * record['pair_rate']:.1f}%" if "pair_rate" in record else ""
    return (
        f"SGCL refresh {int(record.get('refreshes', 0))} at epoch {epoch}: "
        f"{record.get('regions_per_image', 0.0):.2f} regions/image over {n} images, "
        f"{int(record.get('fallback_images', 0))} whole-image fallbacks, "
        f"mean score {record.get('mean_score', 0.0):.3f}, "
        f"top box {100 * record.get('mean_top_box_area', 0.0):.0f}% of the image{pairs}, "
        f"{record.get('seconds', 0.0):.1f} s"
    )


class SaliencyRefresher:
    """SGCL Step 1 on schedule: recomputes every image's regions into the bank, in place, with the current backbone.

    Refreshes at epochs ``first_epoch`` (default ``every_n_epochs``, never 0), ``first_epoch + every_n_epochs``,
    ... (:class:`~sgcl_plugin.schedule.RefreshSchedule`): call :meth:`maybe_refresh` at the start of every epoch.
    Each refresh checks the bank against the dataset, reads :func:`~sgcl_plugin.features.refresh_features` of the
    backbone and runs :func:`~sgcl_plugin.refresh.refresh_bank` (sharded under ``torch.distributed``).

    Args:
        bank: The bank the crop transform reads; None (set ``refresher.bank`` before the first refresh); or a
            callable returning it (or None while it does not exist).
        dataset: The training images in the bank's order (a crop dataset, whose bank must then be ``bank``, is
            read through its images), or a callable returning them.
        every_n_epochs, first_epoch: The schedule above (paper: every 100 of 800 epochs).
        generator, regions: The :class:`~sgcl_plugin.saliency.SaliencyGenerator`, or the mode (``"hierarchy"``,
            ``"objects"``, ``"paper"``) of the default one.
        feature_stride: What a refresh reads: ``"auto"`` (hierarchy mode: the last map and the stage at half its
            stride; other modes: the last map), None (the backbone's output as it is), a stride (16: the
            stride-16 stage) or a pair ``(16, 32)``.
        saliency_size, batch_size, num_workers, progress, device: :func:`~sgcl_plugin.refresh.refresh_bank`'s
            options (paper: 640 px).
        transform: Replaces the default resize to ``saliency_size`` and ImageNet normalization.
        distributed: Force (True) or disable (False) sharding across ranks; default: when initialized.

    Raises:
        ValueError: a bad schedule, stride or option; a bank that is not the dataset's, or of another size.
        TypeError: a bank that is neither a SaliencyBank, None nor a callable.

    Examples:
        >>> from sgcl_plugin import SaliencyBank
        >>> bank = SaliencyBank(len(dataset))
        >>> refresher = SaliencyRefresher(bank, dataset, every_n_epochs=2, saliency_size=256, progress=False)
        >>> for epoch in range(3):
        ...     if refresher.maybe_refresh(epoch, backbone):  # then train the epoch
        ...         print(refresher.summary())
        SGCL refresh 1 at epoch 2: ...
        >>> checkpoint = {"sgcl": refresher.state_dict()}  # the bank and the schedule
    """

    host = "SaliencyRefresher"
    """How error messages name the driver (hosts set their own name)."""

    def __init__(
        self, bank: BankSource, dataset: Any, every_n_epochs: int = 10, generator: Optional[SaliencyGenerator] = None,
        regions: Optional[str] = None, first_epoch: Optional[int] = None, feature_stride: Stride = "auto",
        saliency_size: int = 640, batch_size: int = 32, num_workers: int = 0, progress: bool = True,
        device: Optional[Union[str, torch.device]] = None, *, transform: Optional[Callable[[Any], Tensor]] = None,
        distributed: Optional[bool] = None, host: Optional[str] = None,
    ) -> None:  # fmt: skip
        if host is not None:
            self.host = host
        self.schedule = RefreshSchedule(every_n_epochs, first_epoch)
        check_stride(feature_stride)
        if bank is not None and not isinstance(bank, SaliencyBank) and not callable(bank):
            raise TypeError(
                f"bank must be a SaliencyBank, None or a callable returning one, got {type(bank).__name__}."
            )
        self.saliency_size = check_int("saliency_size", saliency_size, 2)  # fail now, not at the first refresh
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.num_workers = check_int("num_workers", num_workers, 0)
        self.bank, self.dataset, self.transform = bank, dataset, transform
        self.generator: SaliencyGenerator = resolve_generator(generator, regions)
        self.feature_stride = feature_stride
        self.progress, self.device, self.distributed = bool(progress), device, distributed
        self.last_seconds = 0.0
        self._pending_bank: Optional[Dict[str, Any]] = None  # a checkpointed bank waiting for the bank to exist
        if isinstance(bank, SaliencyBank) and dataset is not None and not _is_factory(dataset):
            self.check()  # fail now, not after the first epochs

    def __repr__(self) -> str:
        s = self.schedule
        return (
            f"{type(self).__name__}(every_n_epochs={s.every_n_epochs}, first_epoch={s.first_epoch}, "
            f"last_epoch={s.last_epoch}, regions={getattr(self.generator, 'regions', None)!r}, "
            f"feature_stride={self.feature_stride!r}, saliency_size={self.saliency_size})"
        )

    # --- schedule ------------------------------------------------------------------------------

    @property
    def last_epoch(self) -> int:
        """The last refreshed epoch (-1 before the first)."""
        return self.schedule.last_epoch

    @property
    def history(self) -> List[Dict[str, float]]:
        """One dict per refresh: ``epoch``, ``seconds``, the bank stats and what the host added."""
        return self.schedule.history

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) starts with a refresh that has not been done yet."""
        return self.schedule.is_due(epoch)

    # --- bank and dataset ------------------------------------------------------------------------

    def resolve_bank(self, restore: bool = True) -> Optional[SaliencyBank]:
        """The bank (calling ``bank`` when it is a callable); with ``restore``, a checkpointed bank state waiting
        for it (:meth:`load_state_dict` before the bank existed) is written into it now."""
        bank = self.bank
        if bank is not None and not isinstance(bank, SaliencyBank):
            bank = bank()
            if bank is not None and not isinstance(bank, SaliencyBank):
                raise TypeError(f"The bank callable returned a {type(bank).__name__}, not a SaliencyBank.")
        if bank is not None and restore:
            self.restore_pending(bank)
        return bank

    def _raw_dataset(self) -> Any:
        dataset = self.dataset
        return dataset() if _is_factory(dataset) else dataset

    def resolve_dataset(self) -> Optional[DatasetImages]:
        """The refresh's images (calling ``dataset`` when it is a callable; a crop dataset gives its images)."""
        dataset = self._raw_dataset()
        return None if dataset is None else DatasetImages(dataset)

    def check(self) -> Tuple[SaliencyBank, DatasetImages]:
        """The bank and the images a refresh would use, after checking that they belong together.

        Raises:
            MissingBankError: no bank yet (a ValueError and a RuntimeError).
            RuntimeError: no dataset.
            ValueError: a crop dataset that reads another bank; a dataset of another size than the bank.
        """
        bank = self.resolve_bank()
        if bank is None:
            raise MissingBankError(
                f"{self.host}: a saliency refresh was requested before the bank exists (the bank is None): create "
                "bank = SaliencyBank(len(dataset)), give it to the crop transform (SaliencyCropTransform(bank, ...); "
                "lightly: SGCLTransform(bank, ...)) and to the refresh (or a callable returning it), or set "
                "`.bank` before the refresh is due."
            )
        dataset = self._raw_dataset()
        if dataset is None:
            raise RuntimeError(f"{self.host}: a saliency refresh is due but the dataset is None.")
        check_dataset_bank(dataset, bank)
        images = DatasetImages(dataset)
        if len(images) != len(bank):
            raise ValueError(
                f"{self.host}: the dataset has {len(images)} images but the bank holds {len(bank)}. Refresh the "
                "images the crop dataset reads, in the same order (index i of both must be the same image)."
            )
        return bank, images

    # --- feature maps --------------------------------------------------------------------------

    def features(self, backbone: Any) -> Any:
        """What a refresh runs: :func:`~sgcl_plugin.features.refresh_features` of ``backbone`` at
        ``feature_stride`` for the generator's mode (a model with ``.backbone`` is read through it)."""
        return refresh_features(backbone, self.feature_stride, getattr(self.generator, "regions", None))

    def probe(self, backbone: Any) -> None:
        """Fails now rather than at the first refresh: no stage at ``feature_stride``; when bank and dataset
        exist, a bank that is not the dataset's, a dataset whose first item is no image, or a backbone that gives
        no feature maps for it. Runs one image through the backbone in eval mode (modes restored)."""
        model = self.features(backbone)
        if self.resolve_bank() is None or self._raw_dataset() is None:
            return
        _, images = self.check()
        try:
            x = (self.transform or SaliencyInput(self.saliency_size))(images[0])[None]
        except (TypeError, ValueError) as err:
            raise type(err)(
                f"{self.host} cannot read dataset[0] as an image for the refresh: {err} Pass the images (PIL, "
                "arrays, tensors, or (image, ...) tuples / {'image': ...} dicts) in bank order."
            ) from err
        with torch.no_grad(), eval_mode(model):
            check_feature_output(model(x.to(default_device(model))), x)

    # --- refresh ---------------------------------------------------------------------------------

    def refresh(
        self, backbone: Any, epoch: Optional[int] = None, *, into: Optional[SaliencyBank] = None,
        device: Optional[Union[str, torch.device]] = None, progress: Optional[bool] = None,
    ) -> SaliencyBank:  # fmt: skip
        """Refreshes the bank now, whatever the schedule, with :meth:`features` of ``backbone``; with ``epoch``,
        records it (:meth:`mark_done`). Returns the bank.

        Args:
            backbone: The online backbone, or a model with ``.backbone`` (trailing global pooling is skipped).
            epoch: The epoch to record the refresh at (None: recorded by the caller, or not at all).
            into: Writes into this bank of the same size instead (a scratch bank: a DDP rank whose bank is
                another rank's shared memory computes its share without writing it).
            device, progress: Override the options of the same name for this refresh.
        """
        bank, images = self.check()
        target = bank if into is None else into
        start = time.perf_counter()
        refresh_bank(
            self.generator, self.features(backbone), images, target, batch_size=self.batch_size,
            saliency_size=self.saliency_size, transform=self.transform, device=device or self.device,
            num_workers=self.num_workers, progress=self.progress if progress is None else progress,
            distributed=self.distributed,
        )  # fmt: skip
        self.last_seconds = time.perf_counter() - start
        if epoch is not None:
            self.mark_done(epoch)
        return bank

    def mark_done(self, epoch: int, record: Optional[Dict[str, float]] = None) -> None:
        """Records the last refresh at ``epoch``: ``record`` (what the host measured), its ``seconds`` and the
        bank stats go into :attr:`history`."""
        bank = self.resolve_bank()
        stats = bank.stats() if bank is not None else {}
        self.schedule.mark_done(epoch, {**(record or {}), "seconds": self.last_seconds, **stats})

    def maybe_refresh(self, epoch: int, backbone: Any) -> bool:
        """Refreshes when :meth:`due`; call it at the start of every epoch. Returns whether it refreshed."""
        if not self.due(epoch):
            return False
        self.refresh(backbone, epoch)
        return True

    def summary(self) -> str:
        """:func:`refresh_summary` of the last refresh (raises IndexError before the first)."""
        return refresh_summary(self.history[-1])

    # --- checkpoints -------------------------------------------------------------------------------

    def state_dict(self) -> Dict[str, Any]:
        """The bank (None while it does not exist) and the schedule (last refreshed epoch, history)."""
        bank = self.resolve_bank(restore=False)
        bank_state = self._pending_bank  # a restored state not yet written wins
        if bank_state is None and bank is not None:
            bank_state = bank.state_dict()
        schedule = self.schedule.state_dict()
        return {"last_epoch": schedule["last_epoch"], "schedule": schedule, "bank": bank_state}

    def load_state_dict(self, state: Dict[str, Any], restore: bool = True) -> None:
        """Restores :meth:`state_dict` (also one without ``schedule``: ``last_epoch`` alone). The bank is
        overwritten in place (running DataLoader workers see it); while it does not exist, or without
        ``restore``, its state waits for :meth:`resolve_bank` / :meth:`restore_pending`.

        Raises:
            TypeError: ``state`` is not a dict.
            ValueError: ``state`` holds none of ``schedule``, ``last_epoch``, ``bank`` (not a refresher's state: a
                resume would silently refresh as if from scratch), or a bad schedule.
        """
        if not isinstance(state, dict):
            raise TypeError(f"{self.host}: a saved state is a dict, got {type(state).__name__}.")
        if not {"schedule", "last_epoch", "bank"} & set(state):
            raise ValueError(
                f"{self.host}: this is not a refresher's state (keys {sorted(state)[:8]}); expected those of "
                "state_dict(): 'last_epoch', 'schedule', 'bank'."
            )
        self.schedule.load_state_dict(state.get("schedule", {"last_epoch": state.get("last_epoch", -1)}))
        if state.get("bank") is not None:
            self._pending_bank = state["bank"]
            self.resolve_bank(restore=restore)

    @property
    def pending(self) -> bool:
        """Whether a checkpointed bank state waits to be written into the bank."""
        return self._pending_bank is not None

    def restore_pending(self, bank: SaliencyBank, write: bool = True) -> None:
        """Writes the waiting checkpointed bank state into ``bank`` (only forgets it when not ``write``: another
        process writes the memory this bank shares)."""
        state, self._pending_bank = self._pending_bank, None
        if state is None or not write:
            return
        try:
            bank.load_state_dict(state)
        except ValueError as err:
            raise ValueError(f"{self.host}: cannot restore the checkpointed saliency bank: {err}") from err


def _is_factory(dataset: Any) -> bool:
    """A callable returning the dataset (not a dataset that happens to be callable)."""
    return dataset is not None and not hasattr(dataset, "__getitem__") and callable(dataset)


def refresh_regions(
    backbone: Any, dataset: Any, bank: Optional[SaliencyBank], *, generator: Optional[SaliencyGenerator] = None,
    regions: Optional[str] = None, feature_stride: Stride = "auto", **options: Any,
) -> SaliencyBank:  # fmt: skip
    """One refresh now (no schedule): every image's regions into ``bank``, in place, with the current backbone.

    Args:
        backbone: The online backbone or a model with ``.backbone`` (trailing global pooling is skipped).
        dataset: The crop dataset (its bank must be ``bank``) or the raw dataset, in the bank's order.
        bank: The bank the crop transform reads.
        generator, regions, feature_stride: As for :class:`SaliencyRefresher`.
        **options: :class:`SaliencyRefresher`'s refresh options (``saliency_size`` (default 640), ``batch_size``,
            ``num_workers``, ``progress``, ``device``, ``transform``, ``distributed``).

    Raises:
        ValueError: no bank yet, or a bank of another size than the dataset or not the dataset's.
    """
    driver = SaliencyRefresher(bank, dataset, generator=generator, regions=regions, feature_stride=feature_stride,
                               **options)  # fmt: skip
    return driver.refresh(backbone)
