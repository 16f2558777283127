"""solo-learn adapter: SGCL variants of solo's BYOL, SimCLR and NNCLR, registered into ``solo.methods.METHODS``.

solo-learn's ``main`` branch (1.0.6, from a clone) is imported on :func:`register` or on first access to a
method class. Each step flattens the t region pairs of every image into solo's two large crops of ``B * t``
images. The ``sgcl`` config node is :mod:`sgcl_plugin.adapters.solo_config`; refreshes are the core driver's
(:class:`~sgcl_plugin.refresher.SaliencyRefresher`, through the Lightning callback on schedule). Install,
configuration, losses and refresh: docs/adapters/solo.md.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from sgcl_plugin.adapters.solo_config import (
    DEFAULT_CROP_SIZE,
    INSTALL_HINT,
    SGCL_DEFAULTS,
    add_sgcl_cfg,
    expand_augmentations,
    omegaconf,
    select,
)
from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.bank_crops import SaliencyCropDataset, SaliencyCropTransform
from sgcl_plugin.crops import CropSample
from sgcl_plugin.features import feature_maps, refresh_features
from sgcl_plugin.items import ImageItem, flatten_pairs
from sgcl_plugin.objective import SGCLObjective
from sgcl_plugin.refresher import SaliencyRefresher
from sgcl_plugin.views import PILView, byol_view_transforms

# SGCLBYOL, SGCLSimCLR and SGCLNNCLR are module attributes too, built on first access (PEP 562).
__all__ = [
    "DEFAULT_CROP_SIZE",
    "METHOD_NAMES",
    "SGCL_DEFAULTS",
    "RegionBatch",
    "SGCLDataset",
    "SGCLMethodMixin",
    "add_sgcl_cfg",
    "build_saliency_transform",
    "method_classes",
    "prepare_saliency_datasets",
    "register",
    "solo_feature_backbone",
    "unpack_region_batch",
]  # fmt: skip

SETUPTOOLS_HINT = (
    "lightning 2.1.2 (solo-learn's pin) imports pkg_resources, which setuptools 81 and later no longer ship, "
    "while torch 2.6+ needs setuptools >= 77.0.3: pip install 'setuptools>=77.0.3,<81' "
    "(examples/solo/install.sh does this; see docs/adapters/solo.md)."
)

METHOD_NAMES = {"sgcl_byol": "SGCLBYOL", "sgcl_simclr": "SGCLSimCLR", "sgcl_nnclr": "SGCLNNCLR"}
_SPECS = {  # class: solo's class, SGCL method, modules it must have, docstring
    "SGCLBYOL": ("BYOL", "byol", ("projector", "predictor", "momentum_projector"),
        "solo's BYOL with SGCL: the BYOL loss of pair i weighted by ``scores_i ** gamma``, plus the inter-image loss."),
    "SGCLSimCLR": ("SimCLR", "simclr", ("projector",),
        "solo's SimCLR with SGCL: NT-Xent of pair i weighted by ``scores_i ** gamma``, without same-image negatives."),
    "SGCLNNCLR": ("NNCLR", "nnclr", ("projector", "predictor"),
        "solo's NNCLR with SGCL (its support queue): pair i weighted by ``scores_i ** gamma``, plus inter-image loss."),
}  # fmt: skip
_CLASSES: Dict[str, type] = {}


def _import_solo() -> Any:
    try:
        methods = importlib.import_module("solo.methods")
    except ImportError as err:
        raise ImportError(_import_failure(err)) from err
    base = getattr(methods, "BaseMethod", None)
    params = {} if base is None else inspect.signature(base.__init__).parameters
    if "cfg" not in params or not all(hasattr(methods, name) for name in ("METHODS", "BYOL", "SimCLR", "NNCLR")):
        raise ImportError(f"The installed solo-learn ({getattr(methods, '__file__', '?')}) is too old. {INSTALL_HINT}")
    return methods


def _import_failure(err: ImportError) -> str:
    """The message for a failed ``import solo.methods``: the real cause first (solo-learn installed but
    one of its dependencies failing is not "solo-learn is missing")."""
    missing = getattr(err, "name", None)
    try:
        spec = importlib.util.find_spec("solo")
    except (ImportError, ValueError):
        spec = None
    if spec is None or missing == "solo":
        return f"solo-learn is not installed ({err}). {INSTALL_HINT}"
    where = next(iter(spec.submodule_search_locations or []), spec.origin)
    cause = f"solo-learn is installed ({where}), but importing it failed: {type(err).__name__}: {err}."
    if missing == "pkg_resources":
        return f"{cause} {SETUPTOOLS_HINT}"
    return f"{cause} Fix that dependency (solo-learn main pins lightning==2.1.2 and torchmetrics<0.12). {INSTALL_HINT}"


def build_saliency_transform(cfg: Any, bank: SaliencyBank) -> SaliencyCropTransform:
    """The :class:`SaliencyCropTransform` of a solo config, after :func:`add_sgcl_cfg`; with ``sgcl.views:
    solo`` its views are ``cfg.augmentations`` without their random-resized crop."""
    node = add_sgcl_cfg(cfg).sgcl
    views: List[Any] = []
    if node.views == "solo":
        from solo.data.pretrain_dataloader import build_transform_pipeline

        OmegaConf = omegaconf()
        for aug in expand_augmentations(cfg):
            aug = OmegaConf.create(OmegaConf.to_container(aug, resolve=True))
            aug.rrc = {"enabled": False}  # the crop is SGCL's: resize to crop_size is then a no-op
            views.append(PILView(build_transform_pipeline(select(cfg, "data.dataset", "custom"), aug)))
    else:
        views.extend(byol_view_transforms(int(node.crop_size)))
    size, scale = int(node.crop_size), tuple(node.scale)
    return SaliencyCropTransform(bank, int(node.num_regions), size, view_transforms=views, scale=scale)


class SGCLDataset(SaliencyCropDataset):
    """solo's train dataset with SGCL's region crops: ``dataset[i] -> (i, [views1, views2], target, scores)``.

    Views are (t, 3, size, size), scores (t,). The wrapped dataset may return images, tuples, dicts or solo's
    ``(index, image, target)``. ``transform``: the :class:`SaliencyCropTransform` (:func:`build_saliency_transform`;
    None: the SGCL method attaches one on train start, only with ``num_workers=0``). ``fallback_transform``:
    while no SGCL transform is attached, ``dataset[i]`` is solo's ``(i, fallback_transform(image), target)``.
    """

    def format(self, index: int, item: ImageItem, sample: CropSample) -> Tuple[Any, ...]:
        return index, [sample.views1, sample.views2], item.target, sample.scores

    def format_fallback(self, index: int, item: ImageItem, views: Any) -> Tuple[Any, ...]:
        return index, views, item.target


def prepare_saliency_datasets(
    dataset: str, transform: Optional[Callable[[Any], Any]] = None, *args: Any, cfg: Any = None, **kwargs: Any
) -> SGCLDataset:
    """solo's ``prepare_datasets`` (same arguments) wrapped in a :class:`SGCLDataset` whose fallback is ``transform``;
    with an SGCL method's ``cfg``, the crop transform and a new bank are attached at once (before any worker)."""
    from solo.data.pretrain_dataloader import prepare_datasets

    data = SGCLDataset(prepare_datasets(dataset, None, *args, **kwargs), fallback_transform=transform)
    if cfg is not None and str(select(cfg, "method", "")) in METHOD_NAMES:
        bank = SaliencyBank(len(data), max_regions=int(select(cfg, "sgcl.max_regions", SGCL_DEFAULTS["max_regions"])))
        data.attach(build_saliency_transform(cfg, bank))
    return data


class RegionBatch(NamedTuple):
    """A solo batch of region pairs, flattened to n = B * t pairs."""

    indexes: Tensor  # (B,) dataset index of each image
    image_ids: Tensor  # (n,) dataset index of the image of each pair
    views: List[Tensor]  # [views1, views2], each (n, 3, size, size)
    targets: Tensor  # (n,) labels (-1 without labels)
    scores: Tensor  # (n,) region scores in [0, 1]
    num_regions: int  # t


def unpack_region_batch(batch: Any, crop_size: Optional[int] = None) -> RegionBatch:
    """Checks a ``[indexes, [views1, views2], targets, scores]`` batch and flattens its region pairs; views are
    (B, t, 3, s, s) with scores (B, t), or (B, 3, s, s) with scores (B,).

    Raises:
        ValueError: not from a :class:`SGCLDataset` (no indexes or scores), not two views, views of bad sizes.
    """
    hint = "Train SGCL methods on a SGCLDataset (examples/solo/pretrain.py does it for solo's main_pretrain.py; "
    hint += "in your own script wrap the dataset: SGCLDataset(dataset))."
    size = len(batch) if isinstance(batch, (list, tuple)) else None
    if size == 3:
        raise ValueError(f"The batch is solo's [indexes, [views], targets] without SGCL region scores. {hint}")
    if size == 2:
        raise ValueError(f"The batch is [views, targets] without dataset indexes. {hint}")
    if size != 4:
        items = "" if size is None else f" of {size} items"
        raise ValueError(
            f"Expected a batch [indexes, [views1, views2], targets, scores], got {type(batch).__name__}{items}. {hint}"
        )
    indexes, views, targets, scores = batch
    if not isinstance(indexes, Tensor) or indexes.ndim != 1 or indexes.is_floating_point():
        raise ValueError(f"The batch has no dataset indexes (got {type(indexes).__name__} first). {hint}")
    try:
        rows = flatten_pairs(views, scores, indexes, targets, crop_size)
    except ValueError as err:
        raise ValueError(f"{err} (sgcl.crop_size: solo treats only crops of that size as its large crops)") from err
    return RegionBatch(indexes, rows.image_ids, [rows.views1, rows.views2], rows.targets, rows.scores, rows.num_regions)  # type: ignore[arg-type]


def solo_feature_backbone(pl_module: Any) -> Any:
    """The refresh backbone of an SGCL method: ``pl_module.sgcl_feature_backbone()`` (online backbone)."""
    getter = getattr(pl_module, "sgcl_feature_backbone", None)
    return getter() if getter is not None else feature_maps(pl_module.backbone)


class SGCLMethodMixin:
    """What the SGCL variants share; mixed before solo's method class (``class SGCLBYOL(Mixin, BYOL)``).

    Attributes:
        sgcl_cfg: The ``sgcl`` config node.
        sgcl_objective: The :class:`~sgcl_plugin.objective.SGCLObjective` (``sgcl_intra``, ``sgcl_inter``: its
            weighted loss and inter-image loss or None).
        sgcl_bank, sgcl_dataset: Set when training starts (:meth:`sgcl_attach`).
    """

    sgcl_bank: Optional[SaliencyBank]
    sgcl_dataset: Optional[SGCLDataset]
    _sgcl_requires: Tuple[str, ...] = ("projector",)
    _sgcl_method = "byol"
    _sgcl_solo_method = "BaseMethod"

    def __init__(self, cfg: Any) -> None:
        super().__init__(cfg)  # type: ignore[call-arg]
        names, method = self._sgcl_requires, self._sgcl_solo_method
        missing = [name for name in names if not isinstance(getattr(self, name, None), nn.Module)]
        if missing:
            raise TypeError(
                f"{type(self).__name__} ({method}) has no {', '.join(missing)} module: the SGCL adapter expects solo's "
                f"{method} with {', '.join(names)} (solo-learn main). {INSTALL_HINT}"
            )
        node = self.sgcl_cfg = self.cfg.sgcl  # type: ignore[attr-defined]
        self.sgcl_crop_size = int(node.crop_size)
        self.sgcl_objective = SGCLObjective(
            self._sgcl_method, int(self.cfg.method_kwargs.proj_output_dim), gamma=float(node.gamma),  # type: ignore[attr-defined]
            inter=node.inter.enabled, temperature=float(getattr(self, "temperature", 0.1)),
            queue_size=int(node.inter.queue_size), num_neighbors=int(node.inter.num_neighbors),
            support_size=None,  # NNCLR: solo's own queue is the support set
            exclude_same_image=bool(node.exclude_same_image), normalize=node.normalize, gather_distributed=True,
        )  # fmt: skip
        self.sgcl_intra, self.sgcl_inter = self.sgcl_objective.intra, self.sgcl_objective.inter
        self.sgcl_bank, self.sgcl_dataset = None, None
        self._sgcl_callback: Any = None

    def sgcl_attach(self, data: Any) -> SaliencyBank:
        """Links the method to its train data (a DataLoader or :class:`SGCLDataset`; called on train start): a
        dataset without transform gets a bank and the config's; one with a transform lends its bank."""
        dataset = data.dataset if isinstance(data, DataLoader) else data
        if not isinstance(dataset, SGCLDataset):
            raise TypeError(
                f"{type(self).__name__} needs its train dataset wrapped in sgcl_plugin.adapters.solo.SGCLDataset (got "
                f"{type(dataset).__name__}), so that region crops see the dataset index and batches carry region "
                "scores: use examples/solo/pretrain.py (solo's main_pretrain.py) or DataLoader(SGCLDataset(dataset))."
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
        self.sgcl_dataset, self.sgcl_bank = dataset, dataset.bank
        if self._sgcl_callback is not None:
            self._sgcl_callback.resolve_bank()  # applies a bank restored from a checkpoint
        return self.sgcl_bank  # type: ignore[return-value]

    def _sgcl_get_bank(self) -> Optional[SaliencyBank]:
        return self.sgcl_bank

    def _sgcl_get_images(self) -> Any:
        return None if self.sgcl_dataset is None else self.sgcl_dataset.images

    def sgcl_feature_backbone(self) -> Any:
        """What a refresh segments: :func:`~sgcl_plugin.features.refresh_features` of the online backbone at
        ``sgcl.refresh.feature_stride`` (``auto``: hierarchy mode, the last map and the stage at half its stride)."""
        stride = self.sgcl_cfg.refresh.feature_stride
        stride = tuple(int(v) for v in stride) if omegaconf().is_list(stride) else stride
        return refresh_features(self.backbone, stride, str(self.sgcl_cfg.regions))  # type: ignore[attr-defined]

    def on_train_start(self) -> None:
        """Attaches the crop transform to a dataset without one (possible only without DataLoader workers)."""
        super().on_train_start()  # type: ignore[misc]
        loader = self.trainer.train_dataloader  # type: ignore[attr-defined]
        dataset = loader.dataset if isinstance(loader, DataLoader) else loader
        if isinstance(dataset, SGCLDataset) and dataset.transform is None and getattr(loader, "num_workers", 0) > 0:
            raise RuntimeError(
                "The train DataLoader's workers started before the SGCL method could attach its crop transform: build "
                "the dataset with it, SGCLDataset(dataset, build_saliency_transform(cfg, SaliencyBank(len(dataset)))) "
                "or prepare_saliency_datasets(..., cfg=cfg) (as examples/solo/pretrain.py does), or use num_workers=0."
            )
        self.sgcl_attach(loader)

    def _sgcl_refresh_options(self) -> Dict[str, Any]:
        """The refresh driver's options from ``sgcl.refresh`` (:class:`~sgcl_plugin.refresher.SaliencyRefresher`);
        ``feature_stride`` None: :meth:`sgcl_feature_backbone` already reads ``sgcl.refresh.feature_stride``."""
        r = self.sgcl_cfg.refresh
        sizes = dict(saliency_size=int(r.saliency_size), batch_size=int(r.batch_size), num_workers=int(r.num_workers))
        return dict(regions=str(self.sgcl_cfg.regions), feature_stride=None, progress=bool(r.progress), **sizes)

    def configure_callbacks(self) -> List[Any]:
        """The saliency refresh callback of ``sgcl.refresh`` (also under solo's main_pretrain.py)."""
        callbacks = list(super().configure_callbacks() or [])  # type: ignore[misc]
        r = self.sgcl_cfg.refresh
        if r.enabled:
            from sgcl_plugin.adapters.lightning import SGCLRefreshCallback

            first = None if r.first_epoch is None else int(r.first_epoch)
            self._sgcl_callback = SGCLRefreshCallback(
                self._sgcl_get_bank, self._sgcl_get_images, every_n_epochs=int(r.every_n_epochs), first_epoch=first,
                backbone=solo_feature_backbone, package="lightning", **self._sgcl_refresh_options(),
            )  # fmt: skip
            callbacks.append(self._sgcl_callback)
        return callbacks

    def sgcl_refresh(self) -> SaliencyBank:
        """Refreshes the bank now with the current backbone (outside the schedule), with the core driver."""
        if self.sgcl_bank is None or self.sgcl_dataset is None:
            raise RuntimeError(
                "No saliency bank yet: it is created from the train dataset when training starts "
                "(on_train_start), or call sgcl_attach(dataset) first."
            )
        refresher = SaliencyRefresher(self.sgcl_bank, self.sgcl_dataset, **self._sgcl_refresh_options())
        return refresher.refresh(self.sgcl_feature_backbone())

    def _sgcl_step(self, base_step: Callable[..., Dict[str, Any]], batch: Any, batch_idx: int) -> Tensor:
        rb = unpack_region_batch(batch, self.sgcl_crop_size)
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


def _make_classes() -> Dict[str, type]:
    methods = _import_solo()
    from solo.methods.base import BaseMethod, BaseMomentumMethod

    classes: Dict[str, type] = {}
    for name, (solo_name, method, requires, doc) in _SPECS.items():
        base: Any = getattr(methods, solo_name)
        # BYOL's step computes the momentum targets; SimCLR's and NNCLR's are BaseMethod's forward + classifier.
        base_step = BaseMomentumMethod.training_step if method == "byol" else BaseMethod.training_step

        def add_and_assert_specific_cfg(cfg: Any, base: Any = base) -> Any:
            return add_sgcl_cfg(base.add_and_assert_specific_cfg(cfg))

        def training_step(self: Any, batch: Sequence[Any], batch_idx: int, base_step: Any = base_step) -> Tensor:
            return self._sgcl_step(base_step, batch, batch_idx)

        classes[name] = type(name, (SGCLMethodMixin, base), {
            "__module__": __name__, "__qualname__": name,
            "__doc__": doc + " Config: solo's method plus an ``sgcl`` node (:func:`add_sgcl_cfg`).",
            "_sgcl_requires": requires, "_sgcl_method": method, "_sgcl_solo_method": solo_name, "_sgcl_adapter": True,
            "add_and_assert_specific_cfg": staticmethod(add_and_assert_specific_cfg), "training_step": training_step,
        })  # fmt: skip
    return classes


def method_classes() -> Dict[str, type]:
    """``{"sgcl_byol": SGCLBYOL, "sgcl_simclr": SGCLSimCLR, "sgcl_nnclr": SGCLNNCLR}`` (imports solo)."""
    if not _CLASSES:
        _CLASSES.update(_make_classes())
        globals().update(_CLASSES)
    return {name: _CLASSES[cls_name] for name, cls_name in METHOD_NAMES.items()}


def register(overwrite: bool = False) -> Dict[str, type]:
    """Adds ``sgcl_byol``, ``sgcl_simclr`` and ``sgcl_nnclr`` to ``solo.methods.METHODS``; idempotent.

    ``overwrite`` replaces entries of these names that are not this adapter's. Returns ``{name: class}``.

    Raises:
        ImportError: solo-learn main is not installed (the message says how to install it).
        ValueError: another class is registered under one of the names and ``overwrite`` is False.
    """
    registry = _import_solo().METHODS
    classes = method_classes()
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
    if name in _SPECS:
        method_classes()
        return _CLASSES[name]
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
