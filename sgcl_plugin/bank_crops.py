"""Crops from the bank: the crop step fed, by dataset index, the regions a saliency bank holds.

:class:`SaliencyCropTransform` is a :class:`~sgcl_plugin.crops.RegionCrops` that reads ``bank[index]``
at every call; :class:`SaliencyCropDataset` wraps a map-style dataset so that the crop step sees each
item's index. Both read the bank at every call, so a refresh reaches running DataLoader workers.
"""

from __future__ import annotations

import inspect
from typing import Any, Callable, Dict, Optional, Sequence, Tuple, Union

from torch import Tensor
from torch.utils.data import Dataset

from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.crops import CropSample, RegionCrops
from sgcl_plugin.items import DatasetImages, ImageItem, check_map_style, split_item

__all__ = ["SaliencyCropDataset", "SaliencyCropTransform"]


def _read_regions(bank: SaliencyBank, index: int) -> Tuple[Tensor, Tensor, str]:
    """The regions ``bank`` holds for image ``index``: ``(boxes, scores, what)``, ``what`` naming them in errors.

    The crop step's one read of a bank (:class:`SaliencyCropTransform` and :class:`SaliencyCropDataset`
    alike), made at every call so that a refresh reaches running DataLoader workers.

    Raises:
        IndexError: ``index`` is outside the bank.
    """
    boxes, scores = bank[index]
    return boxes, scores, f"bank[{index}] boxes"


class SaliencyCropTransform:
    """SGCL's crop transform: a :class:`RegionCrops` fed, by dataset index, the regions the bank holds.

    ``transform(image, index)`` reads ``bank[index]`` at every call (so refreshes are seen by running
    DataLoader workers) and returns :meth:`RegionCrops.crop` of them. The crop options are the
    :class:`RegionCrops`' own, by position or keyword, with its defaults; the transform reads them, and
    every other public attribute of :attr:`crops`, through (``transform.size`` is ``transform.crops.size``).

    Args:
        bank: The :class:`~sgcl_plugin.bank.SaliencyBank` of the dataset.
        *args: :class:`RegionCrops`' arguments by position (``num_regions``, ``size``, ...).
        crops: A :class:`RegionCrops` to use as it is, instead of ``args`` / ``options``.
        **options: :class:`RegionCrops`' arguments by keyword (``num_regions``, ``size``,
            ``view_transforms``, ``augment``, ``scale``, ``ratio``, ``before_refresh``, ``box_jitter``).

    Attributes:
        bank: The bank the regions are read from.
        crops: The crop step.

    Raises:
        TypeError: ``bank`` is not a ``SaliencyBank``; ``crops`` is not a ``RegionCrops``, or comes with options.
        ValueError: a bad crop option (as :class:`RegionCrops`).

    Examples:
        >>> bank = SaliencyBank(len(dataset))
        >>> transform = SaliencyCropTransform(bank, num_regions=4, size=96)
        >>> sample = transform(dataset[3], index=3)  # before a refresh: random crops, score 1
        >>> sample.views1.shape, sample.scores.shape
        (torch.Size([4, 3, 96, 96]), torch.Size([4]))
    """

    def __init__(self, bank: SaliencyBank, *args: Any, crops: Optional[RegionCrops] = None, **options: Any) -> None:
        if not isinstance(bank, SaliencyBank):
            raise TypeError(f"bank must be a SaliencyBank, got {type(bank).__name__}.")
        self.bank = bank
        bank.read_by_crops()  # a refresh without this bank then warns: its regions would reach no crop
        self.crops = _crop_step(crops, args, options)

    def __getattr__(self, name: str) -> Any:
        """The public attributes and methods of :attr:`crops` (its options, ``crop``, ``region_boxes``)."""
        missing = AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        if name.startswith("_") or name == "crops":  # no crops yet: while unpickling, or before __init__ set it
            raise missing
        try:
            return getattr(self.crops, name)
        except AttributeError:
            raise missing from None

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.crops._options_repr()})"

    def sample_boxes(self, index: int, image_size: Sequence[int]) -> Tuple[Tensor, Tensor, Tensor, Tensor]:
        """The crop geometry of one call: ``(boxes1, boxes2, scores, regions)`` for image ``index``.

        Raises:
            IndexError: ``index`` is outside the bank.
            ValueError: the bank entry holds boxes outside [0, 1], empty boxes or bad scores.
        """
        boxes, scores, what = _read_regions(self.bank, index)
        return self.crops.region_boxes(boxes, scores, image_size, what)

    def __call__(self, image: Any, index: int) -> CropSample:
        """Makes the t view pairs of ``image`` (PIL, HWC array or CHW tensor), dataset index ``index``."""
        return self.crops.crop(image, *_read_regions(self.bank, index))


def _crop_step(crops: Optional[RegionCrops], args: Tuple[Any, ...], options: Dict[str, Any]) -> RegionCrops:
    """A :class:`SaliencyCropTransform`'s crop step: ``crops`` as given, or a :class:`RegionCrops` of the options."""
    if crops is None:
        return RegionCrops(*args, **options)
    if args or options:
        raise TypeError(
            "Pass either crops= (a RegionCrops) or the crop options (num_regions=, size=, ...), not both: "
            "a RegionCrops has its options already."
        )
    if not isinstance(crops, RegionCrops):
        raise TypeError(f"crops must be a RegionCrops, got {type(crops).__name__}.")
    return crops


def _transform_signature() -> inspect.Signature:
    """``SaliencyCropTransform(bank, <RegionCrops' options>, *, crops=None)``, as ``help`` and ``inspect`` show it:
    built from :class:`RegionCrops`' own signature, where the options are declared."""
    own = inspect.signature(SaliencyCropTransform.__init__).parameters
    options = list(inspect.signature(RegionCrops.__init__).parameters.values())[1:]  # without self
    return inspect.Signature([own["self"], own["bank"], *options, own["crops"]], return_annotation=None)


SaliencyCropTransform.__init__.__signature__ = _transform_signature()  # type: ignore[attr-defined]

CropStep = Union[SaliencyCropTransform, RegionCrops]
"""What a :class:`SaliencyCropDataset` crops with: a bank-fed transform, or a crop step and a bank."""


# -------------------------------------------------------------------------------------- dataset


class SaliencyCropDataset(Dataset):
    """Wraps a map-style dataset so that its crop transform sees each item's dataset index.

    Items are read by :func:`~sgcl_plugin.items.split_item` (images, ``(image, target, ...)``
    tuples, solo-learn's ``(index, image, target)``, dicts with ``"image"``). ``dataset[i]`` is
    :meth:`format` of the crops: by default a dict with ``views1`` and ``views2`` (t, 3, size,
    size), ``scores`` (t,), ``index`` (i) and ``target`` (-1 when there is none), which the default
    collate batches into (B, t, ...) tensors. Works with DataLoader workers, including
    ``persistent_workers=True``: the bank lives in shared memory, so refreshes made by the main
    process reach the running workers. The lightly and solo-learn adapters subclass it and only
    change :meth:`format` / :meth:`format_fallback` to their host's item layout.

    Args:
        dataset: Any map-style dataset (``__len__`` and ``__getitem__``).
        transform: The crop step: a :class:`SaliencyCropTransform` (its bank is used) or a stateless
            :class:`RegionCrops` with ``bank``; the bank must have ``len(dataset)`` rows. May be None
            and attached later (:meth:`attach`).
        fallback_transform: Used while no crop transform is attached: ``dataset[i]`` is then
            :meth:`format_fallback` of ``fallback_transform(image)``.
        bank: The bank to look regions up in, for a :class:`RegionCrops` transform.

    Attributes:
        images: The wrapped dataset's images by index (what a refresh reads).

    Examples:
        >>> from torch.utils.data import DataLoader
        >>> bank = SaliencyBank(len(dataset))
        >>> data = SaliencyCropDataset(dataset, SaliencyCropTransform(bank))
        >>> loader = DataLoader(data, batch_size=4, num_workers=2, persistent_workers=True)
        >>> batch = next(iter(loader))
        >>> batch["views1"].shape  # (batch, regions, 3, size, size)
        torch.Size([4, 4, 3, 96, 96])
    """

    def __init__(
        self,
        dataset: Any,
        transform: Optional[CropStep] = None,
        fallback_transform: Optional[Callable[[Any], Any]] = None,
        bank: Optional[SaliencyBank] = None,
    ) -> None:
        check_map_style(dataset, type(self).__name__)
        if fallback_transform is not None and not callable(fallback_transform):
            raise TypeError("fallback_transform must be callable.")
        self.dataset = dataset
        self.fallback_transform = fallback_transform
        self.transform: Optional[CropStep] = None
        self._crops: Optional[RegionCrops] = None
        self._bank: Optional[SaliencyBank] = None
        if transform is not None:
            self.attach(transform, bank)

    def attach(self, transform: CropStep, bank: Optional[SaliencyBank] = None) -> None:
        """Sets the crop step and the bank the dataset looks regions up in (default: the transform's own,
        for a :class:`SaliencyCropTransform`); the bank must have one row per image."""
        if isinstance(transform, SaliencyCropTransform):
            crops, own_bank = transform.crops, transform.bank
        elif isinstance(transform, RegionCrops):
            crops, own_bank = transform, None
        else:
            raise TypeError(
                f"transform must be a SaliencyCropTransform or RegionCrops, got {type(transform).__name__}."
            )
        bank = bank if bank is not None else own_bank
        if not isinstance(bank, SaliencyBank):
            raise TypeError(f"A RegionCrops transform needs the dataset's bank: pass bank=, got {type(bank).__name__}.")
        if len(bank) != len(self):
            raise ValueError(
                f"The bank holds {len(bank)} images but the dataset has {len(self)}: create it with "
                "SaliencyBank(len(dataset))."
            )
        self.transform, self._crops, self._bank = transform, crops, bank

    @property
    def bank(self) -> Optional[SaliencyBank]:
        """The bank the dataset looks each image's regions up in (None before a transform is attached)."""
        return self._bank

    @property
    def images(self) -> DatasetImages:
        return DatasetImages(self.dataset)

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> Any:
        index = int(index)
        item = split_item(self.dataset[index], index)
        if self.transform is None:
            if self.fallback_transform is None:
                raise RuntimeError(
                    f"{type(self).__name__} has no SaliencyCropTransform yet: pass one, or attach(transform) "
                    "before the DataLoader starts its workers."
                )
            return self.format_fallback(index, item, self.fallback_transform(item.image))
        assert self._crops is not None and self._bank is not None
        return self.format(index, item, self._crops.crop(item.image, *_read_regions(self._bank, index)))

    def format(self, index: int, item: ImageItem, sample: CropSample) -> Any:
        """The item handed to the DataLoader; override it for another host's layout."""
        return {
            "views1": sample.views1,
            "views2": sample.views2,
            "scores": sample.scores,
            "index": index,
            "target": item.target,
        }

    def format_fallback(self, index: int, item: ImageItem, views: Any) -> Any:
        """The item while no crop transform is attached (``views`` from ``fallback_transform``)."""
        return {"views": views, "index": index, "target": item.target}

    def __repr__(self) -> str:
        return f"{type(self).__name__}({type(self.dataset).__name__} of {len(self)} images, {self.transform!r})"
