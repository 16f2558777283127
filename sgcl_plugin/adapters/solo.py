"""solo-learn adapter: SGCL variants of solo's BYOL, SimCLR and NNCLR, registered into ``solo.methods.METHODS``.

solo-learn (https://github.com/vturrisi/solo-learn) is imported lazily, on :func:`register` or on first
access to a method class: importing ``sgcl_plugin`` or this module never needs it. The adapter targets
solo-learn's current ``main`` branch (1.0.6: hydra configs, ``BaseMethod(cfg)``), which is installed
from a clone; PyPI's ``solo-learn`` 1.0.2 (2021) has another API and is refused with an explanation.

How SGCL maps onto solo (see ``docs/adapters/solo.md``):

- **Data.** :class:`SGCLDataset` wraps the train dataset so that the
  :class:`~sgcl_plugin.crops.SaliencyCropTransform` sees each item's index; ``dataset[i]`` is
  ``(i, [views1, views2], target, scores)`` with views (t, 3, s, s) and scores (t,): solo's
  ``[indexes, [X], targets]`` plus the region scores. The SGCL method builds the bank and the
  transform from its config and attaches them when training starts.
- **Large crops.** Each step flattens the t region pairs of every image into the batch: the model
  sees solo's two views of ``B * t`` crops, which all have the same size. Both views are therefore
  solo's *large* crops (``num_large_crops = 2``, ``num_small_crops = 0``), so BYOL's momentum
  targets are computed for both. solo calls a crop large only when its size equals the first
  augmentation pipeline's: the config check refuses pipelines of different crop sizes, which would
  silently turn region crops into small crops without momentum targets.
- **Loss.** Pair i (a region of image ``indexes[i // t]``) is weighted by ``scores_i ** gamma``
  (:class:`~sgcl_plugin.losses.SaliencyWeightedLoss`), plus the inter-image loss
  (:class:`~sgcl_plugin.losses.InterImageLoss`). solo's online classifier, momentum update, kNN
  and logging are unchanged.
- **Refresh.** A :class:`~sgcl_plugin.adapters.lightning.SGCLRefreshCallback` returned by the
  method's ``configure_callbacks`` refreshes the bank with the online backbone's feature maps, so
  solo's unmodified ``main_pretrain.py`` runs it too; the bank is saved in Lightning checkpoints.

Examples:
    >>> from sgcl_plugin.adapters.solo import register
    >>> register()  # solo.methods.METHODS now has sgcl_byol, sgcl_simclr and sgcl_nnclr
    >>> # python examples/solo/pretrain.py --config-path examples/solo --config-name sgcl_byol.yaml
"""

from __future__ import annotations

import importlib
import inspect
import math
import numbers
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.crops import CropSample, PILView, SaliencyCropDataset, SaliencyCropTransform, byol_view_transforms
from sgcl_plugin.features import feature_maps
from sgcl_plugin.items import ImageItem, flatten_pairs
from sgcl_plugin.objective import SGCLObjective

# SGCLBYOL, SGCLSimCLR and SGCLNNCLR are module attributes too, built on first access (PEP 562).
__all__ = [
    "METHOD_NAMES",
    "RegionBatch",
    "SoloFeatureMaps",
    "SGCLDataset",
    "add_sgcl_cfg",
    "build_saliency_transform",
    "method_classes",
    "prepare_saliency_datasets",
    "register",
    "solo_feature_backbone",
    "unpack_region_batch",
]

INSTALL_HINT = (
    "sgcl_plugin.adapters.solo needs solo-learn's main branch (1.0.6; hydra configs, `BaseMethod(cfg)`), "
    "which is not on PyPI (PyPI's solo-learn 1.0.2 is from 2021, built for pytorch-lightning 1.4, with "
    "another API). Install it beside sgcl_plugin from a clone:\n"
    "    git clone https://github.com/vturrisi/solo-learn && pip install -e ./solo-learn\n"
    "(it pins lightning==2.1.2 and torchmetrics<0.12; see docs/adapters/solo.md)."
)

METHOD_NAMES = {"sgcl_byol": "SGCLBYOL", "sgcl_simclr": "SGCLSimCLR", "sgcl_nnclr": "SGCLNNCLR"}
_SOLO_BASES = {"SGCLBYOL": "BYOL", "SGCLSimCLR": "SimCLR", "SGCLNNCLR": "NNCLR"}
_CLASSES: Dict[str, type] = {}
DEFAULT_CROP_SIZE = 96

# Defaults of the ``sgcl`` node of a solo config (see docs/adapters/solo.md).
SGCL_DEFAULTS: Dict[str, Any] = {
    "num_regions": 4,
    "crop_size": None,  # None: the augmentations' crop_size, else 96
    "scale": None,  # None: the first augmentation's rrc scale range, else [0.08, 1.0]
    "views": None,  # "solo" (the augmentations, minus their random-resized crop) or "byol"; None: solo if any
    "gamma": 0.5,
    "normalize": "count",
    "exclude_same_image": True,
    "max_regions": 16,
    "regions": "objects",  # "objects" (k-way Ncut parts scored by objectness) or "paper" (Eq. 4-5)
    "inter": {"enabled": None, "queue_size": 4096, "num_neighbors": 5},  # None: on for BYOL and NNCLR, off for SimCLR
    "refresh": {
        "enabled": True,
        "feature_stride": None,  # None: the backbone's last map; 16: its stride-16 stage (recommended)
        "every_n_epochs": 10,
        "first_epoch": None,
        "saliency_size": 640,
        "batch_size": 32,
        "num_workers": 0,
        "progress": True,
    },
}


# ------------------------------------------------------------------------------------ solo import


def _import_solo() -> Any:
    """``solo.methods``, or an ImportError that says how to install solo-learn main."""
    try:
        methods = importlib.import_module("solo.methods")
    except ImportError as err:
        raise ImportError(f"{INSTALL_HINT}\nImport error: {err!r}") from err
    base = getattr(methods, "BaseMethod", None)
    if (
        base is None
        or not hasattr(methods, "METHODS")
        or "cfg" not in inspect.signature(base.__init__).parameters
        or not all(hasattr(methods, name) for name in _SOLO_BASES.values())
    ):
        raise ImportError(f"The installed solo-learn ({getattr(methods, '__file__', '?')}) is too old. {INSTALL_HINT}")
    return methods


def _omegaconf() -> Any:
    try:
        return importlib.import_module("omegaconf")
    except ImportError as err:  # pragma: no cover - a dependency of solo-learn (hydra)
        raise ImportError(f"solo-learn configs need omegaconf. {INSTALL_HINT}") from err


# ----------------------------------------------------------------------------------------- config


def _select(cfg: Any, key: str, default: Any = None) -> Any:
    value = _omegaconf().OmegaConf.select(cfg, key, default=default)
    return default if value is None else value


def _as_int(name: str, value: Any, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise ValueError(f"sgcl.{name} must be an integer >= {minimum}, got {value!r}.")
    return int(value)


def _expand_augmentations(cfg: Any) -> List[Any]:
    """One augmentation config per crop (a pipeline with ``num_crops: n`` appears n times)."""
    augmentations = _select(cfg, "augmentations", None)
    if augmentations is None:
        return []
    expanded = []
    for pipeline in augmentations:
        expanded.extend([pipeline] * int(_select(pipeline, "num_crops", 1)))
    return expanded


def _check_keys(user: Dict[str, Any], defaults: Dict[str, Any] = SGCL_DEFAULTS, prefix: str = "sgcl") -> None:
    unknown = sorted(set(user) - set(defaults))
    if unknown:
        raise ValueError(f"Unknown {prefix} key(s) {unknown}; known: {sorted(defaults)}.")
    for key, value in user.items():
        if isinstance(defaults[key], dict) and isinstance(value, dict):
            _check_keys(value, defaults[key], f"{prefix}.{key}")


def add_sgcl_cfg(cfg: Any) -> Any:
    """Fills the ``sgcl`` node of a solo config with defaults, checks it and fixes the crop counts.

    The two SGCL views of every region pair must have one size, which then is solo's "large" crop
    size: ``cfg.augmentations`` (when present) must describe exactly two crops (two pipelines with
    ``num_crops: 1``, or one with ``num_crops: 2``) of the same ``crop_size``, equal to
    ``sgcl.crop_size`` when that is set. ``cfg.data.num_large_crops`` and ``num_small_crops`` become
    2 and 0 (an explicit other value is an error).

    Raises:
        ValueError: mismatched crop sizes, a number of crops other than two, solo multicrop
            settings, or bad ``sgcl`` values.
    """
    OmegaConf = _omegaconf().OmegaConf
    OmegaConf.set_struct(cfg, False)
    user = _select(cfg, "sgcl", {}) or {}
    _check_keys(OmegaConf.to_container(user, resolve=True) if OmegaConf.is_config(user) else dict(user))
    node = OmegaConf.merge(OmegaConf.create(SGCL_DEFAULTS), user)
    crops = _expand_augmentations(cfg)
    sizes = [int(_select(aug, "crop_size", -1)) for aug in crops]
    if crops:
        if len(crops) != 2:
            raise ValueError(
                f"SGCL makes exactly two views of each region, but cfg.augmentations describes {len(crops)} crops "
                f"(sizes {sizes}). Use two pipelines with num_crops: 1 (view 1, view 2) or one with num_crops: 2."
            )
        if len(set(sizes)) != 1:
            raise ValueError(
                f"SGCL region crops all have one size, but cfg.augmentations has crop sizes {sizes}. solo calls a "
                "crop 'large' only when its size equals the first pipeline's, so the other region crops would "
                "become 'small' crops and silently lose their momentum targets. Give every pipeline the same "
                "crop_size (e.g. 96)."
            )
    explicit = node.crop_size
    if explicit is not None and crops and int(explicit) != sizes[0]:
        raise ValueError(
            f"sgcl.crop_size = {explicit} but the augmentations crop to {sizes[0]} px: set both to the same size "
            "(the region crops are solo's large crops)."
        )
    node.crop_size = _as_int(
        "crop_size", int(explicit) if explicit is not None else (sizes[0] if crops else DEFAULT_CROP_SIZE), 2
    )
    _as_int("num_regions", node.num_regions, 1)
    _as_int("max_regions", node.max_regions, 1)
    if node.scale is None:
        lo = _select(crops[0], "rrc.crop_min_scale", 0.08) if crops else 0.08
        hi = _select(crops[0], "rrc.crop_max_scale", 1.0) if crops else 1.0
        node.scale = [float(lo), float(hi)]
    if node.views is None:
        node.views = "solo" if crops else "byol"
    if node.views not in ("solo", "byol"):
        raise ValueError(f"sgcl.views must be 'solo' (the config's augmentations) or 'byol', got {node.views!r}.")
    if node.views == "solo" and not crops:
        raise ValueError("sgcl.views = 'solo' needs cfg.augmentations (two pipelines); use views: byol otherwise.")
    if isinstance(node.gamma, bool) or not isinstance(node.gamma, numbers.Real) or not math.isfinite(node.gamma):
        raise ValueError(f"sgcl.gamma must be a finite number >= 0, got {node.gamma!r}.")
    if node.normalize not in ("count", "weight"):
        raise ValueError(f"sgcl.normalize must be 'count' or 'weight', got {node.normalize!r}.")
    if node.regions not in ("objects", "paper"):
        raise ValueError(f"sgcl.regions must be 'objects' or 'paper', got {node.regions!r}.")
    if node.refresh.feature_stride is not None:
        _as_int("refresh.feature_stride", node.refresh.feature_stride, 1)
    if node.inter.enabled is not False:  # None: the method's default
        _as_int("inter.num_neighbors", node.inter.num_neighbors, 1)
        _as_int("inter.queue_size", node.inter.queue_size, int(node.inter.num_neighbors))
    if node.refresh.enabled:
        _as_int("refresh.every_n_epochs", node.refresh.every_n_epochs, 1)
        _as_int("refresh.saliency_size", node.refresh.saliency_size, 2)
    cfg.sgcl = node
    if _select(cfg, "data", None) is None:
        cfg.data = {}
    large, small = _select(cfg, "data.num_large_crops", 2), _select(cfg, "data.num_small_crops", 0)
    if (large, small) != (2, 0):
        raise ValueError(
            f"SGCL methods take the two views of each region pair as solo's two large crops (num_large_crops=2, "
            f"num_small_crops=0); the config says num_large_crops={large}, num_small_crops={small}. solo multicrop "
            "(small crops) is not supported: more region pairs per image come from sgcl.num_regions."
        )
    cfg.data.num_large_crops, cfg.data.num_small_crops = 2, 0
    return cfg


def _solo_view_transforms(cfg: Any) -> Tuple[Callable[[Tensor], Tensor], Callable[[Tensor], Tensor]]:
    """The two views of ``cfg.augmentations`` (colour, blur, flip...), without their random-resized crop."""
    from solo.data.pretrain_dataloader import build_transform_pipeline

    OmegaConf = _omegaconf().OmegaConf
    views = []
    for aug in _expand_augmentations(cfg):
        aug = OmegaConf.create(OmegaConf.to_container(aug, resolve=True))
        aug.rrc = {"enabled": False}  # the crop is SGCL's: resize to crop_size is then a no-op
        views.append(PILView(build_transform_pipeline(_select(cfg, "data.dataset", "custom"), aug)))
    return views[0], views[1]


def build_saliency_transform(cfg: Any, bank: SaliencyBank) -> SaliencyCropTransform:
    """The :class:`SaliencyCropTransform` of a solo config (``add_sgcl_cfg`` is applied first)."""
    cfg = add_sgcl_cfg(cfg)
    node = cfg.sgcl
    views = _solo_view_transforms(cfg) if node.views == "solo" else byol_view_transforms(int(node.crop_size))
    return SaliencyCropTransform(
        bank,
        num_regions=int(node.num_regions),
        size=int(node.crop_size),
        view_transforms=views,
        scale=tuple(node.scale),
    )


# ------------------------------------------------------------------------------------------- data


class SGCLDataset(SaliencyCropDataset):
    """An index-aware train dataset in solo-learn's format, with SGCL's region crops.

    ``dataset[i] -> (i, [views1, views2], target, scores)``: the ``[indexes, [X], targets]`` items
    of solo's pretrain datasets, plus the scores of the t sampled regions; views are
    (t, 3, size, size), scores (t,). The default collate gives ``[indexes (B,), [V1, V2]
    (B, t, 3, s, s), targets (B,), scores (B, t)]``, which the SGCL methods flatten to B * t pairs.
    The core's :class:`~sgcl_plugin.crops.SaliencyCropDataset` in solo's item layout: the wrapped
    dataset may return images, tuples, dicts or solo's own ``(index, image, target)`` items (read by
    :func:`~sgcl_plugin.items.split_item`); build it without a transform.

    Args:
        dataset: A map-style dataset.
        transform: The :class:`SaliencyCropTransform`, e.g. ``build_saliency_transform(cfg,
            SaliencyBank(len(dataset)))``. None: the SGCL method attaches one built from its config
            when training starts, which works only with ``num_workers=0`` (Lightning starts the
            workers before any hook sees the loader).
        fallback_transform: Used while no SGCL transform is attached: ``dataset[i]`` is then solo's
            plain ``(i, fallback_transform(image), target)``, so the same dataset trains solo's
            other methods too.

    Examples:
        >>> bank = SaliencyBank(len(train_set))
        >>> data = SGCLDataset(train_set, SaliencyCropTransform(bank, num_regions=4, size=96))
        >>> index, (views1, views2), target, scores = data[0]  # views: (4, 3, 96, 96)
    """

    def format(self, index: int, item: ImageItem, sample: CropSample) -> Tuple[Any, ...]:
        return index, [sample.views1, sample.views2], item.target, sample.scores

    def format_fallback(self, index: int, item: ImageItem, views: Any) -> Tuple[Any, ...]:
        return index, views, item.target


def prepare_saliency_datasets(
    dataset: str,
    transform: Optional[Callable[[Any], Any]] = None,
    *args: Any,
    cfg: Any = None,
    **kwargs: Any,
) -> SGCLDataset:
    """solo's ``prepare_datasets`` whose dataset is wrapped in a :class:`SGCLDataset`.

    Same arguments as ``solo.data.pretrain_dataloader.prepare_datasets``. solo builds the dataset
    without a transform (raw PIL images); its ``transform`` becomes the fallback, so solo's other
    methods train as usual. With the config of an SGCL method (``cfg.method`` is ``sgcl_*``) the
    crop transform and a new bank are attached at once, so DataLoader workers have them from the
    start. ``examples/solo/pretrain.py`` puts this function in place of ``prepare_datasets`` in
    solo's ``main_pretrain.py``.
    """
    from solo.data.pretrain_dataloader import prepare_datasets

    data = SGCLDataset(prepare_datasets(dataset, None, *args, **kwargs), fallback_transform=transform)
    if cfg is not None and str(_select(cfg, "method", "")) in METHOD_NAMES:
        bank = SaliencyBank(len(data), max_regions=int(_select(cfg, "sgcl.max_regions", SGCL_DEFAULTS["max_regions"])))
        data.attach(build_saliency_transform(cfg, bank))
    return data


class RegionBatch(NamedTuple):
    """A solo batch of region pairs, flattened: n = B * t pairs.

    Attributes:
        indexes: (B,) dataset index of each image.
        image_ids: (n,) dataset index of the image of each pair (``indexes`` repeated t times each).
        views: ``[views1, views2]``, each (n, 3, size, size).
        targets: (n,) labels (-1 without labels).
        scores: (n,) region scores in [0, 1].
        num_regions: t.
    """

    indexes: Tensor
    image_ids: Tensor
    views: List[Tensor]
    targets: Tensor
    scores: Tensor
    num_regions: int


def unpack_region_batch(batch: Any, crop_size: Optional[int] = None) -> RegionBatch:
    """Checks a ``[indexes, [views1, views2], targets, scores]`` batch and flattens its region pairs.

    Views may be (B, t, 3, s, s) with scores (B, t), or (B, 3, s, s) with scores (B,) (t = 1).

    Raises:
        ValueError: a batch without indexes or scores (the dataset is not a
            :class:`SGCLDataset`), not two views, views of different or unexpected sizes.
    """
    wrap_hint = (
        "Train SGCL methods on a SGCLDataset (examples/solo/pretrain.py does it for solo's "
        "main_pretrain.py; in your own script wrap the dataset: SGCLDataset(dataset))."
    )
    if not isinstance(batch, (list, tuple)) or len(batch) != 4:
        size = len(batch) if isinstance(batch, (list, tuple)) else None
        if size == 3:
            raise ValueError(f"The batch is solo's [indexes, [views], targets] without SGCL region scores. {wrap_hint}")
        if size == 2:
            raise ValueError(f"The batch is [views, targets] without dataset indexes. {wrap_hint}")
        raise ValueError(
            f"Expected a batch [indexes, [views1, views2], targets, scores], got {type(batch).__name__}"
            f"{'' if size is None else f' of {size} items'}. {wrap_hint}"
        )
    indexes, views, targets, scores = batch
    if not isinstance(indexes, Tensor) or indexes.ndim != 1 or indexes.is_floating_point():
        raise ValueError(f"The batch has no dataset indexes (got {type(indexes).__name__} first). {wrap_hint}")
    try:
        rows = flatten_pairs(views, scores, indexes, targets, crop_size)
    except ValueError as err:
        raise ValueError(f"{err} (sgcl.crop_size: solo treats only crops of that size as its large crops)") from err
    return RegionBatch(indexes, rows.image_ids, [rows.views1, rows.views2], rows.targets, rows.scores, rows.num_regions)  # type: ignore[arg-type]


# -------------------------------------------------------------------------------- feature maps


def SoloFeatureMaps(backbone: nn.Module) -> Any:  # noqa: N802 - the class of earlier releases
    """Deprecated: :func:`sgcl_plugin.features.feature_maps` (the last feature map of any backbone)."""
    warnings.warn("SoloFeatureMaps is deprecated: use sgcl_plugin.features.feature_maps.", DeprecationWarning, 2)
    return feature_maps(backbone)


def solo_feature_backbone(pl_module: Any) -> Any:
    """The refresh backbone of an SGCL method: ``pl_module.sgcl_feature_backbone()`` (online backbone)."""
    getter = getattr(pl_module, "sgcl_feature_backbone", None)
    return getter() if getter is not None else feature_maps(pl_module.backbone)


# -------------------------------------------------------------------------------- the methods


def _require(module: Any, names: Sequence[str], method: str) -> None:
    missing = [name for name in names if not isinstance(getattr(module, name, None), nn.Module)]
    if missing:
        raise TypeError(
            f"{type(module).__name__} ({method}) has no {', '.join(missing)} module: the SGCL adapter expects solo's "
            f"{method} with {', '.join(names)} (solo-learn main). {INSTALL_HINT}"
        )


class SGCLMethodMixin:
    """What the SGCL variants share; mixed before solo's method class (``class SGCLBYOL(Mixin, BYOL)``).

    Attributes set by ``_sgcl_init``: ``sgcl_cfg`` (the ``sgcl`` config node), ``sgcl_objective``
    (the :class:`~sgcl_plugin.objective.SGCLObjective`; ``sgcl_intra`` / ``sgcl_inter`` are its
    weighted loss and inter-image loss or None), ``sgcl_bank`` and ``sgcl_dataset`` (set when
    training starts).
    """

    sgcl_bank: Optional[SaliencyBank]
    sgcl_dataset: Optional[SGCLDataset]
    _sgcl_requires: Tuple[str, ...] = ("projector",)
    _sgcl_method = "byol"
    _sgcl_solo_method = "BaseMethod"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)  # type: ignore[call-arg]
        _require(self, self._sgcl_requires, self._sgcl_solo_method)
        node = self.cfg.sgcl  # type: ignore[attr-defined]
        self.sgcl_cfg = node
        self.sgcl_crop_size = int(node.crop_size)
        self.sgcl_objective = SGCLObjective(
            self._sgcl_method,
            int(self.cfg.method_kwargs.proj_output_dim),  # type: ignore[attr-defined]
            gamma=float(node.gamma),
            inter=node.inter.enabled,
            temperature=float(getattr(self, "temperature", 0.1)),
            queue_size=int(node.inter.queue_size),
            num_neighbors=int(node.inter.num_neighbors),
            support_size=None,  # NNCLR: solo's own queue is the support set
            exclude_same_image=bool(node.exclude_same_image),
            normalize=node.normalize,
            gather_distributed=True,
        )
        self.sgcl_intra = self.sgcl_objective.intra
        self.sgcl_inter = self.sgcl_objective.inter
        self.sgcl_bank = None
        self.sgcl_dataset = None
        self._sgcl_callback: Any = None

    # --- data ------------------------------------------------------------------------------------

    def sgcl_attach(self, data: Any) -> SaliencyBank:
        """Links the method to its train data (a DataLoader or :class:`SGCLDataset`).

        A dataset without transform gets a new bank and the config's crop transform; a dataset that
        has one lends its bank (its crop size must be ``sgcl.crop_size``). Called on train start.
        """
        dataset = data.dataset if isinstance(data, DataLoader) else data
        if not isinstance(dataset, SGCLDataset):
            raise TypeError(
                f"{type(self).__name__} needs its train dataset wrapped in "
                f"sgcl_plugin.adapters.solo.SGCLDataset (got {type(dataset).__name__}), so that "
                "region crops see the dataset index and batches carry region scores. With solo's "
                "main_pretrain.py use examples/solo/pretrain.py; with your own script, "
                "DataLoader(SGCLDataset(dataset), ...)."
            )
        if dataset.transform is None:
            bank = self.sgcl_bank
            if bank is None or len(bank) != len(dataset):
                bank = SaliencyBank(len(dataset), max_regions=int(self.sgcl_cfg.max_regions))
            dataset.attach(build_saliency_transform(self.cfg, bank))  # type: ignore[attr-defined]
        elif dataset.transform.size != self.sgcl_crop_size:
            raise ValueError(
                f"The dataset's SaliencyCropTransform makes {dataset.transform.size} px crops but sgcl.crop_size is "
                f"{self.sgcl_crop_size}: region crops must have the configured (large crop) size."
            )
        self.sgcl_dataset = dataset
        self.sgcl_bank = dataset.bank
        if self._sgcl_callback is not None:
            self._sgcl_callback.resolve_bank()  # applies a bank restored from a checkpoint
        return self.sgcl_bank  # type: ignore[return-value]

    def _sgcl_get_bank(self) -> Optional[SaliencyBank]:
        return self.sgcl_bank

    def _sgcl_get_images(self) -> Any:
        return None if self.sgcl_dataset is None else self.sgcl_dataset.images

    def sgcl_feature_backbone(self) -> Any:
        """What a refresh segments: :func:`~sgcl_plugin.features.feature_maps` of the online backbone
        (its last map, or its stage at ``sgcl.refresh.feature_stride``)."""
        stride = self.sgcl_cfg.refresh.feature_stride
        return feature_maps(self.backbone, None if stride is None else int(stride))  # type: ignore[attr-defined]

    def on_train_start(self) -> None:
        """Attaches the crop transform to a dataset without one (possible only without workers: Lightning
        starts them before any hook sees the loader; build the dataset with its transform then)."""
        super().on_train_start()  # type: ignore[misc]
        loader = self.trainer.train_dataloader  # type: ignore[attr-defined]
        dataset = loader.dataset if isinstance(loader, DataLoader) else loader
        if (
            isinstance(dataset, SGCLDataset)
            and dataset.transform is None
            and getattr(loader, "num_workers", 0) > 0
        ):
            raise RuntimeError(
                "The train DataLoader's workers started before the SGCL method could attach its crop transform: "
                "build the dataset with it, SGCLDataset(dataset, build_saliency_transform(cfg, "
                "SaliencyBank(len(dataset)))) or prepare_saliency_datasets(..., cfg=cfg) (what "
                "examples/solo/pretrain.py does), or use num_workers=0."
            )
        self.sgcl_attach(loader)

    def configure_callbacks(self) -> List[Any]:
        """The saliency refresh callback of ``sgcl.refresh`` (also under solo's main_pretrain.py)."""
        callbacks = list(super().configure_callbacks() or [])  # type: ignore[misc]
        refresh = self.sgcl_cfg.refresh
        if refresh.enabled:
            from sgcl_plugin.adapters.lightning import SGCLRefreshCallback

            self._sgcl_callback = SGCLRefreshCallback(
                self._sgcl_get_bank,
                self._sgcl_get_images,
                every_n_epochs=int(refresh.every_n_epochs),
                first_epoch=None if refresh.first_epoch is None else int(refresh.first_epoch),
                backbone=solo_feature_backbone,
                saliency_size=int(refresh.saliency_size),
                batch_size=int(refresh.batch_size),
                num_workers=int(refresh.num_workers),
                progress=bool(refresh.progress),
                package="lightning",
                regions=str(self.sgcl_cfg.regions),
            )
            callbacks.append(self._sgcl_callback)
        return callbacks

    def sgcl_refresh(self) -> SaliencyBank:
        """Refreshes the bank now with the current backbone (outside the schedule)."""
        if self.sgcl_bank is None or self.sgcl_dataset is None:
            raise RuntimeError(
                "No saliency bank yet: it is created from the train dataset when training starts "
                "(on_train_start), or call sgcl_attach(dataset) first."
            )
        from sgcl_plugin.saliency import SaliencyGenerator

        refresh = self.sgcl_cfg.refresh
        return SaliencyGenerator(regions=str(self.sgcl_cfg.regions)).refresh(  # type: ignore[arg-type]
            self.sgcl_feature_backbone(),
            self.sgcl_dataset.images,
            self.sgcl_bank,
            batch_size=int(refresh.batch_size),
            saliency_size=int(refresh.saliency_size),
            num_workers=int(refresh.num_workers),
            progress=bool(refresh.progress),
        )

    # --- step ------------------------------------------------------------------------------------

    def _sgcl_unpack(self, batch: Any) -> RegionBatch:
        return unpack_region_batch(batch, self.sgcl_crop_size)

    def _sgcl_step(self, base_step: Callable[..., Dict[str, Any]], batch: Any, batch_idx: int) -> Tensor:
        rb = self._sgcl_unpack(batch)
        out = base_step(self, [rb.image_ids, rb.views, rb.targets], batch_idx)
        losses = self.sgcl_losses(out, rb)
        metrics = {f"train_sgcl_{k}": v for k, v in losses.items() if isinstance(v, Tensor) and v.ndim == 0}
        metrics["train_sgcl_mean_score"] = rb.scores.mean()
        self.log_dict(metrics, on_epoch=True, sync_dist=True)  # type: ignore[attr-defined]
        return losses["loss"] + out["loss"]

    def sgcl_losses(self, out: Dict[str, Any], batch: RegionBatch) -> Dict[str, Tensor]:
        """The SGCL loss of the step from solo's outputs (:class:`~sgcl_plugin.objective.SGCLObjective`)."""
        scores, ids = batch.scores, batch.image_ids
        if self._sgcl_method == "byol":
            (p1, p2), (t1, t2) = out["p"], out["momentum_z"]
            return self.sgcl_objective(scores, p1=p1, p2=p2, t1=t1, t2=t2)
        z1, z2 = out["z"]
        if self._sgcl_method == "simclr":
            return self.sgcl_objective(scores, z1=z1, z2=z2, image_ids=ids)
        module: Any = self
        world = torch.distributed.get_world_size() if torch.distributed.is_initialized() else 1
        if module.queue_size % (z1.shape[0] * world) != 0:
            raise ValueError(
                f"NNCLR's queue_size ({module.queue_size}) must be a multiple of the pairs per step over all "
                f"devices, B * t * world = {z1.shape[0]} * {world}: change method_kwargs.queue_size, the batch "
                "size or sgcl.num_regions."
            )
        (p1, p2), (idx1, _) = out["p"], module.find_nn(z1)
        losses = self.sgcl_objective(scores, z1=z1, z2=z2, p1=p1, p2=p2, image_ids=ids, support=module.queue)
        losses["nn_acc"] = (batch.targets == module.queue_y[idx1]).float().mean()
        module.dequeue_and_enqueue(z1, batch.targets)  # solo's FIFO, unchanged
        return losses


# solo class, SGCL method, modules it must have, solo's name for messages
_SPECS = {
    "SGCLBYOL": ("BYOL", "byol", ("projector", "predictor", "momentum_projector")),
    "SGCLSimCLR": ("SimCLR", "simclr", ("projector",)),
    "SGCLNNCLR": ("NNCLR", "nnclr", ("projector", "predictor")),
}
_DOCS = {
    "SGCLBYOL": "solo's BYOL with SGCL (Chen et al., AAAI 2023): region pairs are BYOL's two views, the "
    "symmetrized BYOL loss of pair i is weighted by ``scores_i ** gamma``, plus the inter-image loss.",
    "SGCLSimCLR": "solo's SimCLR with SGCL: per-pair NT-Xent weighted by ``scores_i ** gamma``, other regions of "
    "the same image out of the negatives (``sgcl.exclude_same_image``); no inter-image loss unless enabled.",
    "SGCLNNCLR": "solo's NNCLR with SGCL: ``0.5 * (ntxent(NN(z1), p2) + ntxent(NN(z2), p1))`` per pair with "
    "solo's support queue and FIFO unchanged (``queue_size`` a multiple of B * t * world), weighted by "
    "``scores_i ** gamma``, plus the inter-image loss.",
}


def _make_classes() -> Dict[str, type]:
    methods = _import_solo()
    from solo.methods.base import BaseMethod, BaseMomentumMethod

    classes: Dict[str, type] = {}
    for name, (solo_name, method, requires) in _SPECS.items():
        base: Any = getattr(methods, solo_name)
        # BYOL's step computes the momentum targets; SimCLR's and NNCLR's are BaseMethod's forward + classifier.
        base_step = BaseMomentumMethod.training_step if method == "byol" else BaseMethod.training_step

        def add_and_assert_specific_cfg(cfg: Any, base: Any = base) -> Any:
            return add_sgcl_cfg(base.add_and_assert_specific_cfg(cfg))

        def training_step(self: Any, batch: Sequence[Any], batch_idx: int, base_step: Any = base_step) -> Tensor:
            return self._sgcl_step(base_step, batch, batch_idx)

        namespace = {
            "__module__": __name__,
            "__qualname__": name,
            "__doc__": _DOCS[name] + " Config: solo's method plus an ``sgcl`` node (:func:`add_sgcl_cfg`).",
            "_sgcl_requires": requires,
            "_sgcl_method": method,
            "_sgcl_solo_method": solo_name,
            "_sgcl_adapter": True,
            "add_and_assert_specific_cfg": staticmethod(add_and_assert_specific_cfg),
            "training_step": training_step,
        }
        classes[name] = type(name, (SGCLMethodMixin, base), namespace)
    return classes


def method_classes() -> Dict[str, type]:
    """``{"sgcl_byol": SGCLBYOL, "sgcl_simclr": SGCLSimCLR, "sgcl_nnclr": SGCLNNCLR}`` (imports solo)."""
    if not _CLASSES:
        classes = _make_classes()
        _CLASSES.update(classes)
        globals().update(classes)
    return {name: _CLASSES[cls_name] for name, cls_name in METHOD_NAMES.items()}


def register(overwrite: bool = False) -> Dict[str, type]:
    """Adds ``sgcl_byol``, ``sgcl_simclr`` and ``sgcl_nnclr`` to ``solo.methods.METHODS``; idempotent.

    Args:
        overwrite: Replace entries of these names that are not this adapter's classes (otherwise
            an error).

    Returns:
        The registered ``{name: class}``.

    Raises:
        ImportError: solo-learn main is not installed (the message says how to install it).
        ValueError: another class is registered under one of the names and ``overwrite`` is False.
    """
    methods = _import_solo()
    classes = method_classes()
    registry = methods.METHODS
    for name, cls in classes.items():
        current = registry.get(name)
        if current is not None and current is not cls and not getattr(current, "_sgcl_adapter", False):
            if not overwrite:
                raise ValueError(
                    f"solo.methods.METHODS[{name!r}] is already {current.__module__}.{current.__qualname__}; "
                    "pass overwrite=True to replace it."
                )
            warnings.warn(f"Replacing solo.methods.METHODS[{name!r}] ({current.__qualname__}).", stacklevel=2)
        registry[name] = cls
    return classes


def __getattr__(name: str) -> Any:  # PEP 562: SGCLBYOL & co. are built (and solo imported) on first use
    if name == "SoloSaliencyDataset":
        warnings.warn("SoloSaliencyDataset is now SGCLDataset; the old name goes in 0.3.", DeprecationWarning, 2)
        return SGCLDataset
    if name in _SOLO_BASES:
        method_classes()
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
