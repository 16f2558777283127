"""SGCL for lightly users: an index-aware dataset, a BYOL-style crop transform, per-sample losses, a refresh hook.

lightly (https://github.com/lightly-ai/lightly) builds SSL loops from a dataset whose transform makes
the views (``LightlyDataset(folder, transform=BYOLTransform())``), a model with ``backbone`` /
``projection_head`` / ``prediction_head`` attributes and a loss returning the batch mean. SGCL needs
three things lightly does not give: the **dataset index** in the transform (to look up the image's
saliency regions), **per-sample losses** (to weight pair i by ``P_i ** gamma``) and a **refresh**
of the regions every few epochs. This module adds them with lightly's own objects:

- :class:`SGCLTransform` mirrors ``BYOLTransform(view_1_transform=..., view_2_transform=...)``: the
  saliency-guided crops of :class:`~sgcl_plugin.crops.SaliencyCropTransform`, then lightly's
  ``BYOLView1Transform`` / ``BYOLView2Transform`` built **without their own crop**
  (``input_size=size, min_scale=1.0``: a random-resized crop of scale (1, 1) on a square crop is the
  identity, so the image is cropped exactly once).
- :class:`SGCLDataset` wraps a ``LightlyDataset`` (created with ``transform=None``), a
  torchvision-style dataset or a list of images; with ``collate_fn=sgcl_collate`` a batch is an
  :class:`SGCLBatch` ``(views, target, filename, scores, index)`` whose first three fields are
  lightly's ``(views, target, filename)``: ``x0, x1 = batch[0]`` as in lightly's examples.
- :class:`SGCLLoss` weights lightly's ``NegativeCosineSimilarity`` or ``NTXentLoss`` (memory bank
  included) by ``P ** gamma``; with all scores 1 or ``gamma=0`` it equals lightly's loss.
  :func:`nnclr_neighbours` does NNCLR's lookup with lightly's ``NNMemoryBankModule``.
- :func:`refresh` / :class:`SGCLRefresher` recompute the regions with the current backbone (a
  lightly-style ``Sequential`` ending in global pooling is used without its pooling).

Importing ``sgcl_plugin`` never imports lightly; importing this module needs it
(``pip install 'sgcl_plugin[lightly]'``). Verified with lightly 1.6.0.

Examples:
    >>> bank = SaliencyBank(len(images))
    >>> dataset = SGCLDataset(LightlyDataset("photos/"), SGCLTransform(bank, num_regions=4, size=96))
    >>> loader = DataLoader(dataset, batch_size=64, collate_fn=sgcl_collate, num_workers=8, persistent_workers=True)
    >>> criterion = SGCLLoss(NegativeCosineSimilarity(), gamma=0.5)
    >>> refresher = SGCLRefresher(bank, dataset, every_n_epochs=10, saliency_size=640)
    >>> for epoch in range(epochs):
    ...     refresher.maybe_refresh(epoch, model.backbone)
    ...     for batch in loader:
    ...         x0, x1 = batch[0]                         # (B * t, 3, 96, 96) each
    ...         loss = 0.5 * (criterion(model(x0), model.forward_momentum(x1), batch.scores)
    ...                       + criterion(model(x1), model.forward_momentum(x0), batch.scores))
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import default_collate

from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.crops import CropSample, PILView, SaliencyCropDataset, SaliencyCropTransform, check_crop_size
from sgcl_plugin.features import feature_map_backbone, feature_maps
from sgcl_plugin.items import DatasetImages, ImageItem, repeat_rows
from sgcl_plugin.losses import InterImageLoss, SaliencyWeightedLoss, ntxent_loss
from sgcl_plugin.saliency import SaliencyGenerator, resolve_generator
from sgcl_plugin.schedule import RefreshSchedule

_INSTALL_HINT = "pip install 'sgcl_plugin[lightly]'"

try:
    from lightly.data import LightlyDataset
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import NNMemoryBankModule
    from lightly.transforms import BYOLView1Transform, BYOLView2Transform
    from lightly.transforms.multi_view_transform import MultiViewTransform
except ImportError as _err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        f"sgcl_plugin.adapters.lightly needs lightly: {_INSTALL_HINT} (or pip install lightly). "
        f"Importing it failed with: {_err}"
    ) from _err

__all__ = [
    "SGCLDataset",
    "SGCLBatch",
    "SGCLItem",
    "SGCLLoss",
    "SGCLRefresher",
    "SGCLTransform",
    "feature_map_backbone",
    "inter_loss_for",
    "nnclr_neighbours",
    "per_sample_negative_cosine_similarity",
    "per_sample_nnclr",
    "per_sample_ntxent",
    "refresh",
    "sgcl_collate",
]

ImageIds = Union[Tensor, Sequence[int]]


# ------------------------------------------------------------------------------------ transform


class SGCLTransform(SaliencyCropTransform):
    """SGCL's crops with lightly's BYOL view augmentations, in the style of lightly's ``BYOLTransform``.

    For image ``index``: ``num_regions`` regions of ``bank[index]`` drawn with probability
    proportional to their score, two rule-R crops inside each, resized to ``size`` (see
    :class:`~sgcl_plugin.crops.SaliencyCropTransform`; before the first refresh, plain BYOL
    random-resized crops of the whole image with score 1), then ``view_1_transform`` on the first
    crop of each pair and ``view_2_transform`` on the second.

    The default view transforms are lightly's ``BYOLView1Transform(input_size=size, min_scale=1.0)``
    and ``BYOLView2Transform(input_size=size, min_scale=1.0)``: flip, colour jitter, grayscale, blur,
    solarization and ImageNet normalization as lightly does them, and a random-resized crop of scale
    (1, 1) which on the square ``size`` crop is the identity, so the image is cropped exactly once.
    Your own view transforms must not crop again and must keep the size: a ``RandomResizedCrop``
    with a scale below 1 or any resize/crop to another size is rejected.

    ``transform(image, index)`` returns a :class:`~sgcl_plugin.crops.CropSample` (``views1``,
    ``views2`` (t, 3, size, size), ``scores`` (t,), ...). Wrap the dataset with
    :class:`SGCLDataset` so the transform gets the index.

    Args:
        bank: The dataset's :class:`~sgcl_plugin.bank.SaliencyBank`.
        num_regions: Pairs per image (t; paper: 4).
        size: Side of the crops (paper: 96).
        view_1_transform: First view's augmentation (PIL image in, tensor out); default above.
        view_2_transform: Second view's augmentation; default above.
        scale: Crop area range as a fraction of the region box.
        ratio: Crop aspect ratio range.

    Raises:
        TypeError: a multi-view transform (``BYOLTransform``) as a view transform.
        ValueError: view transforms that crop again or resize to another size than ``size``.

    Examples:
        >>> transform = SGCLTransform(bank, num_regions=4, size=96)
        >>> transform = SGCLTransform(
        ...     bank, size=96, view_1_transform=BYOLView1Transform(input_size=96, min_scale=1.0, cj_strength=0.5)
        ... )
    """

    def __init__(
        self,
        bank: SaliencyBank,
        num_regions: int = 4,
        size: int = 96,
        view_1_transform: Optional[Callable[[Any], Tensor]] = None,
        view_2_transform: Optional[Callable[[Any], Tensor]] = None,
        scale: Sequence[float] = (0.08, 1.0),
        ratio: Sequence[float] = (3 / 4, 4 / 3),
    ) -> None:
        size = check_crop_size(size)
        if view_1_transform is None:
            view_1_transform = BYOLView1Transform(input_size=size, min_scale=1.0)
        if view_2_transform is None:
            view_2_transform = BYOLView2Transform(input_size=size, min_scale=1.0)
        for name, view in (("view_1_transform", view_1_transform), ("view_2_transform", view_2_transform)):
            if isinstance(view, MultiViewTransform):
                raise TypeError(
                    f"{name} is a multi-view transform ({type(view).__name__}): pass the single-view transforms, "
                    f"e.g. BYOLView1Transform(input_size={size}, min_scale=1.0)."
                )
        self.view_1_transform = view_1_transform
        self.view_2_transform = view_2_transform
        views = (
            PILView(view_1_transform, size, "view_1_transform"),
            PILView(view_2_transform, size, "view_2_transform"),
        )
        super().__init__(bank, num_regions=num_regions, size=size, view_transforms=views, scale=scale, ratio=ratio)


# -------------------------------------------------------------------------------------- dataset


class SGCLItem(NamedTuple):
    """One image's item from :class:`SGCLDataset`; the first three fields are lightly's.

    Attributes:
        views: ``(views1, views2)``, each (t, 3, size, size): the t pairs of the image.
        target: The wrapped dataset's target (-1 when it has none).
        filename: lightly's filename of the image (``str(index)`` for datasets without files, as
            lightly names them).
        scores: (t,) saliency score of the region of each pair (1.0 before the first refresh).
        index: The dataset index.
    """

    views: Tuple[Tensor, Tensor]
    target: Any
    filename: str
    scores: Tensor
    index: int  # type: ignore[assignment]  # the dataset index, as lightly names it; shadows tuple.index


class SGCLBatch(NamedTuple):
    """A batch from :func:`sgcl_collate`: **one row per view pair**, ``B * t`` rows, image-major.

    ``batch[0]``, ``batch[1]``, ``batch[2]`` are lightly's ``(views, targets, filenames)``, so
    ``x0, x1 = batch[0]`` works as in lightly's examples; rows ``i * t`` to ``i * t + t - 1`` come
    from the i-th image of the batch.

    Attributes:
        views: ``[x0, x1]``, each (B * t, 3, size, size).
        target: (B * t,) targets (a list when they cannot be stacked).
        filename: B * t filenames.
        scores: (B * t,) region scores ``P`` in [0, 1], for :class:`SGCLLoss`.
        index: (B * t,) dataset index of each row's image (``image_ids`` for NT-Xent).
    """

    views: List[Tensor]
    target: Any
    filename: List[str]
    scores: Tensor
    index: Tensor  # type: ignore[assignment]  # shadows tuple.index, on purpose (see above)


def sgcl_collate(items: Sequence[SGCLItem]) -> SGCLBatch:
    """Collates :class:`SGCLItem` s into an :class:`SGCLBatch` with one row per view pair.

    Use it as the DataLoader's ``collate_fn``. (The default collate works too and gives
    (B, t, 3, size, size) views, (B, t) scores and (B,) indices.)
    """
    if not items:
        raise ValueError("sgcl_collate got an empty batch.")
    if not all(isinstance(item, SGCLItem) for item in items):
        raise TypeError("sgcl_collate expects SGCLItem items, as SGCLDataset returns them.")
    t = items[0].scores.shape[0]
    x0 = torch.cat([item.views[0] for item in items])
    x1 = torch.cat([item.views[1] for item in items])
    scores = torch.cat([item.scores for item in items]).float()
    index = torch.as_tensor([item.index for item in items], dtype=torch.int64).repeat_interleave(t)
    targets = list(repeat_rows([item.target for item in items], t))
    try:
        target: Any = default_collate(targets)
    except (TypeError, RuntimeError):
        target = targets
    filenames = list(repeat_rows([item.filename for item in items], t))
    return SGCLBatch([x0, x1], target, filenames, scores, index)


class SGCLDataset(SaliencyCropDataset):
    """Wraps a map-style dataset so that the SGCL transform sees each item's dataset index.

    Works around ``lightly.data.LightlyDataset`` (items ``(image, target, filename)``; create it
    with ``transform=None``), torchvision-style datasets (``(image, target)``), lists of images and
    dicts with ``"image"``. ``dataset[i]`` is an :class:`SGCLItem`
    ``(views=(views1, views2), target, filename, scores, index)``; with ``collate_fn=sgcl_collate``
    batches are :class:`SGCLBatch` es with one row per view pair (``x0, x1 = batch[0]``). Works
    with DataLoader workers, ``persistent_workers=True`` included: the bank lives in shared memory,
    so a refresh in the main process reaches running workers at their next item. The core's
    :class:`~sgcl_plugin.crops.SaliencyCropDataset` in lightly's item layout.

    Args:
        dataset: The map-style dataset (``__len__`` and ``__getitem__``).
        transform: The :class:`SGCLTransform` (any
            :class:`~sgcl_plugin.crops.SaliencyCropTransform`); its bank must have ``len(dataset)`` rows.

    Raises:
        TypeError: an iterable-style dataset or one without ``__len__`` / ``__getitem__`` (SGCL finds
            an image's regions by its index), or a transform that is not an SGCL transform.
        ValueError: a bank of another size than the dataset, or a dataset that already applies a
            transform making several views.

    Examples:
        >>> bank = SaliencyBank(len(LightlyDataset("photos/")))
        >>> dataset = SGCLDataset(LightlyDataset("photos/"), SGCLTransform(bank, size=96))
        >>> loader = DataLoader(dataset, batch_size=64, shuffle=True, collate_fn=sgcl_collate)
    """

    collate_fn = staticmethod(sgcl_collate)

    def __init__(self, dataset: Any, transform: SaliencyCropTransform) -> None:
        if isinstance(dataset, LightlyDataset) and getattr(dataset, "transform", None) is not None:
            raise ValueError(
                "The LightlyDataset already has a transform: create it with transform=None; SGCLTransform crops "
                "and augments the views itself."
            )
        super().__init__(dataset, transform)

    def format(self, index: int, item: ImageItem, sample: CropSample) -> SGCLItem:
        return SGCLItem((sample.views1, sample.views2), item.target, item.filename, sample.scores, index)


# --------------------------------------------------------------------------------------- losses


def _check_same_shape(a: Any, b: Any, names: Tuple[str, str]) -> None:
    for name, x in zip(names, (a, b)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim < 2 or x.shape[0] < 1:
            raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {tuple(x.shape)}.")
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}."
        )


def per_sample_negative_cosine_similarity(x0: Tensor, x1: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """lightly's ``NegativeCosineSimilarity`` per sample: ``-cos(x0_i, x1_i)``, shape (n,).

    Its mean is lightly's loss (for inputs with more than two dimensions, the per-sample value is
    the mean over the remaining positions, so the mean over samples is still lightly's mean).
    """
    _check_same_shape(x0, x1, ("x0", "x1"))
    values = -F.cosine_similarity(x0, x1, dim=dim, eps=eps)
    return values.reshape(x0.shape[0], -1).mean(dim=1)


def per_sample_ntxent(
    out0: Tensor,
    out1: Tensor,
    temperature: float = 0.5,
    negatives: Optional[Tensor] = None,
    image_ids: Optional[ImageIds] = None,
    exclude_same_image: bool = True,
) -> Tensor:
    """lightly's ``NTXentLoss`` per view pair, shape (n,); its mean is lightly's loss.

    Without ``negatives`` (SimCLR): NT-Xent over the 2n embeddings; pair i gets the mean of the
    losses of its two anchors (``out0_i`` with positive ``out1_i``, and the reverse), so the mean
    over pairs is lightly's mean over the 2n anchors. With ``image_ids`` (the dataset index of each
    pair, ``batch.index``) views of *other* pairs from the same image are left out of the negatives
    (SGCL samples regions with replacement: they may show the same object); ``image_ids=None`` is
    lightly's loss exactly.

    With ``negatives`` (m, d) (MoCo-style, lightly's ``NTXentLoss(memory_bank_size=...)``): anchor
    ``out0_i`` against its positive ``out1_i`` and the m negatives; ``image_ids`` must be None.

    Args:
        out0: (n, d) first-view embeddings.
        out1: (n, d) second-view embeddings.
        temperature: lightly's default 0.5.
        negatives: (m, d) memory-bank rows, or None.
        image_ids: (n,) source image of each pair, or None.
        exclude_same_image: False keeps same-image views as negatives even with ``image_ids``.
    """
    _check_same_shape(out0, out1, ("out0", "out1"))
    if negatives is None:
        return ntxent_loss(
            out0, out1, temperature=temperature, image_ids=image_ids, exclude_same_image=exclude_same_image
        )
    if image_ids is not None:
        raise ValueError("image_ids cannot be used with memory-bank negatives (their source images are unknown).")
    if not isinstance(negatives, Tensor) or negatives.ndim != 2 or negatives.shape[1] != out0.shape[1]:
        shape = tuple(negatives.shape) if isinstance(negatives, Tensor) else type(negatives).__name__
        raise ValueError(f"negatives must have shape (m, {out0.shape[1]}), got {shape}.")
    if not temperature > 0:
        raise ValueError(f"temperature must be > 0, got {temperature!r}.")
    a = F.normalize(out0, dim=1)
    b = F.normalize(out1, dim=1)
    neg = F.normalize(negatives.to(device=a.device, dtype=a.dtype), dim=1)
    logits = torch.cat([(a * b).sum(dim=1, keepdim=True), a @ neg.T], dim=1) / temperature
    return torch.logsumexp(logits, dim=1) - logits[:, 0]


def nnclr_neighbours(memory_bank: Any, z0: Tensor, z1: Tensor, update: bool = True) -> Tuple[Tensor, Tensor]:
    """NNCLR's nearest-neighbour lookup with lightly's ``NNMemoryBankModule``, as lightly's NNCLR does it.

    ``z0``'s neighbours are looked up without updating the bank, then ``z1``'s with ``update``
    (which appends ``z1``). Then, with ``criterion = SGCLLoss(NTXentLoss(...))``:
    ``loss = 0.5 * (criterion(nn0, p1, scores) + criterion(nn1, p0, scores))``. Note that lightly's
    bank starts with random unit vectors (SGCL's own queue, :class:`~sgcl_plugin.InterImageLoss`,
    masks unfilled rows instead).

    Returns:
        ``(nn0, nn1)``: (n, d) neighbours of the detached ``z0`` and ``z1``.
    """
    if not isinstance(memory_bank, NNMemoryBankModule):
        raise TypeError(f"memory_bank must be lightly's NNMemoryBankModule, got {type(memory_bank).__name__}.")
    _check_same_shape(z0, z1, ("z0", "z1"))
    return memory_bank(z0.detach(), update=False), memory_bank(z1.detach(), update=update)


def per_sample_nnclr(
    z0: Tensor,
    p0: Tensor,
    z1: Tensor,
    p1: Tensor,
    memory_bank: Any,
    temperature: float = 0.5,
    image_ids: Optional[ImageIds] = None,
    exclude_same_image: bool = True,
    update: bool = True,
) -> Tensor:
    """lightly's NNCLR loss per view pair: ``0.5 * (ntxent(NN(z0), p1) + ntxent(NN(z1), p0))``, shape (n,).

    Neighbours come from the real ``NNMemoryBankModule`` (:func:`nnclr_neighbours`, which updates it
    with ``z1`` when ``update``); the mean is lightly's NNCLR loss with ``NTXentLoss(temperature)``.
    """
    nn0, nn1 = nnclr_neighbours(memory_bank, z0, z1, update=update)
    kwargs: Dict[str, Any] = dict(temperature=temperature, image_ids=image_ids, exclude_same_image=exclude_same_image)
    return 0.5 * (per_sample_ntxent(nn0, p1, **kwargs) + per_sample_ntxent(nn1, p0, **kwargs))


_LOSS_NAMES = {
    "negative_cosine_similarity": NegativeCosineSimilarity,
    "NegativeCosineSimilarity": NegativeCosineSimilarity,
    "ntxent": NTXentLoss,
    "NTXentLoss": NTXentLoss,
}


def _distributed_world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


class SGCLLoss(nn.Module):
    """A lightly loss made per-sample and weighted by region saliency, ``sum_i P_i ** gamma * L_i / n``.

    Supported: lightly's ``NegativeCosineSimilarity`` (BYOL, SimSiam) and ``NTXentLoss`` (SimCLR,
    NNCLR with :func:`nnclr_neighbours`, and MoCo-style with its memory bank, which is queried and
    updated as lightly does), given as objects or names (``"negative_cosine_similarity"``,
    ``"ntxent"``; ``loss_kwargs`` build them, e.g. ``temperature=0.1``), or any callable returning
    per-sample losses. With ``gamma=0`` or all scores 1, ``criterion(a, b, scores)`` equals
    ``lightly_loss(a, b)`` (and ``image_ids=None``).

    Args:
        loss: The lightly loss object, its name, or a callable ``loss(a, b) -> Tensor[n]``.
        gamma: Exponent of the scores (paper: 0.5; 0 turns the weighting off).
        normalize: ``"count"`` divides by n (default), ``"weight"`` by ``sum_i P_i ** gamma``.
        **loss_kwargs: Arguments of the lightly loss when given by name.

    Raises:
        TypeError: another lightly loss (they return batch means that cannot be weighted per pair).
        NotImplementedError: ``NTXentLoss(gather_distributed=True)`` without a memory bank under
            ``torch.distributed`` with several processes.

    Examples:
        >>> criterion = SGCLLoss(NegativeCosineSimilarity())              # BYOL
        >>> loss = 0.5 * (criterion(p0, z1, scores) + criterion(p1, z0, scores))
        >>> criterion = SGCLLoss(NTXentLoss(temperature=0.5))             # SimCLR
        >>> loss = criterion(z0, z1, scores, image_ids=batch.index)
    """

    def __init__(
        self,
        loss: Union[str, nn.Module, Callable[..., Tensor]] = "negative_cosine_similarity",
        gamma: float = 0.5,
        normalize: str = "count",
        **loss_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(loss, str):
            if loss not in _LOSS_NAMES:
                raise ValueError(f"Unknown loss {loss!r}; choose one of {sorted(_LOSS_NAMES)} or pass a lightly loss.")
            loss = _LOSS_NAMES[loss](**loss_kwargs)
        elif loss_kwargs:
            raise TypeError(f"loss_kwargs {sorted(loss_kwargs)} are only used when the loss is given by name.")
        if isinstance(loss, NegativeCosineSimilarity):
            self.kind = "negative_cosine_similarity"
        elif isinstance(loss, NTXentLoss):
            self.kind = "ntxent"
        elif type(loss).__module__.startswith("lightly."):
            raise TypeError(
                f"SGCLLoss supports lightly's NegativeCosineSimilarity and NTXentLoss (NNCLR: NTXentLoss with "
                f"nnclr_neighbours), not {type(loss).__name__}: it returns a batch mean that cannot be weighted per "
                "pair. Pass a callable returning per-sample losses (n,) instead."
            )
        elif callable(loss):
            self.kind = "callable"
        else:
            raise TypeError(f"loss must be a lightly loss, its name or a callable, got {type(loss).__name__}.")
        self.loss: Any = loss  # a lightly loss module or a per-sample callable, told apart by self.kind
        self.weighted = SaliencyWeightedLoss(self._per_sample, gamma=gamma, normalize=normalize)  # type: ignore[arg-type]

    @property
    def gamma(self) -> float:
        return self.weighted.gamma

    def _per_sample(self, a: Tensor, b: Tensor, image_ids: Optional[ImageIds] = None) -> Tensor:
        if self.kind == "negative_cosine_similarity":
            return per_sample_negative_cosine_similarity(a, b, dim=self.loss.dim, eps=self.loss.eps)
        if self.kind == "callable":
            return self.loss(a, b) if image_ids is None else self.loss(a, b, image_ids=image_ids)
        # NTXentLoss
        memory_bank = self.loss.memory_bank
        if memory_bank.size[0] == 0:
            if self.loss.gather_distributed and _distributed_world() > 1:
                raise NotImplementedError(
                    "SGCLLoss does not gather negatives across processes: use NTXentLoss(gather_distributed=False) "
                    "(each process's batch gives the negatives)."
                )
            return per_sample_ntxent(a, b, temperature=self.loss.temperature, image_ids=image_ids)
        if image_ids is not None:
            raise ValueError("image_ids cannot be used with NTXentLoss's memory bank (negatives of unknown images).")
        _check_same_shape(a, b, ("a", "b"))
        b_normed = F.normalize(b, dim=1)
        b_normed, bank = memory_bank(b_normed, update=a.requires_grad)  # lightly's query-then-update
        negatives = bank.T if memory_bank.feature_dim_first else bank
        return per_sample_ntxent(a, b_normed, temperature=self.loss.temperature, negatives=negatives)

    def per_sample(self, a: Tensor, b: Tensor, image_ids: Optional[ImageIds] = None) -> Tensor:
        """The unweighted (n,) losses (a memory bank is queried and updated, as in ``forward``)."""
        return self.weighted.per_sample(a, b, image_ids=image_ids)

    def forward(self, a: Tensor, b: Tensor, scores: Tensor, image_ids: Optional[ImageIds] = None) -> Tensor:
        """The weighted loss of n pairs.

        Args:
            a: (n, d) first side, as you would pass it to the lightly loss.
            b: (n, d) second side.
            scores: (n,) region scores in [0, 1] (``batch.scores``).
            image_ids: (n,) dataset index of each pair (``batch.index``), NT-Xent only: views of the
                same image are then not negatives of each other. Ignored by the cosine loss.
        """
        if self.kind == "negative_cosine_similarity":
            image_ids = None
        return self.weighted(a, b, scores, image_ids=image_ids)

    def extra_repr(self) -> str:
        return f"gamma={self.weighted.gamma}, normalize={self.weighted.normalize!r}"


# ------------------------------------------------------------------------------- model helpers


def _output_dim(head: nn.Module) -> int:
    linears = [m for m in head.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"Cannot tell the output size of {type(head).__name__}: it has no nn.Linear layer.")
    return linears[-1].out_features


def inter_loss_for(
    model: nn.Module,
    head: str = "prediction_head",
    queue_size: int = 4096,
    num_neighbors: int = 5,
    gamma: float = 0.5,
    gather_distributed: bool = False,
    scale: float = 0.5,
) -> InterImageLoss:
    """SGCL's inter-image loss (Eq. 10) sized for a lightly-style model's head, in lightly's loss units.

    The loss pulls each online *prediction* toward its nearest target projections in a queue, so
    for BYOL it needs ``model.prediction_head``; a model without a predictor (SimCLR) can use
    ``head="projection_head"``. ``scale=0.5`` (default) expresses Eq. 10's ``2 - 2 cos`` in the
    units of lightly's ``NegativeCosineSimilarity`` (``-cos``, the same gradient halved), so BYOL
    keeps the paper's 1 : 1 of the two losses with the same form for both::

        loss = 0.5 * (criterion(p0, z1, s) + criterion(p1, z0, s)) + 0.5 * (inter(p0, s) + inter(p1, s))

    ``scale=1`` is the paper's (and :class:`~sgcl_plugin.objective.SGCLObjective`'s) scale.

    Raises:
        AttributeError: the model has no such head.
    """
    module = getattr(model, head, None)
    if not isinstance(module, nn.Module):
        have = [n for n in ("projection_head", "prediction_head") if isinstance(getattr(model, n, None), nn.Module)]
        raise AttributeError(
            f"{type(model).__name__} has no {head} (it has {have or 'neither projection_head nor prediction_head'}): "
            "SGCL's inter-image loss pulls the online predictions toward the queue. For a method without a "
            "predictor use head='projection_head'."
        )
    return InterImageLoss(
        _output_dim(module), queue_size=queue_size, num_neighbors=num_neighbors, gamma=gamma,
        gather_distributed=gather_distributed, scale=scale,
    )  # fmt: skip


# -------------------------------------------------------------------------------------- refresh


def _refresh_images(dataset: Any, bank: Any) -> DatasetImages:
    if bank is None:
        raise ValueError(
            "A saliency refresh was requested before the bank exists: create bank = SaliencyBank(len(dataset)), give "
            "it to SGCLTransform(bank, ...) and to the refresh."
        )
    if not isinstance(bank, SaliencyBank):
        raise TypeError(f"bank must be a SaliencyBank, got {type(bank).__name__}.")
    if isinstance(dataset, SaliencyCropDataset) and dataset.bank is not bank:
        raise ValueError(
            "This bank is not the one the dataset's SGCLTransform reads: the refresh would never reach the crops."
        )
    images = DatasetImages(dataset)
    if len(images) != len(bank):
        raise ValueError(
            f"Dataset size does not match the bank: the dataset has {len(images)} images, the bank {len(bank)}."
        )
    return images


def refresh(
    backbone: Any,
    dataset: Any,
    bank: Optional[SaliencyBank],
    *,
    generator: Optional[SaliencyGenerator] = None,
    regions: Optional[str] = None,
    feature_stride: Optional[int] = None,
    **kwargs: Any,
) -> SaliencyBank:
    """SGCL Step 1: recompute every image's saliency regions with the current backbone, in place.

    Args:
        backbone: The online backbone (or a lightly-style model with ``.backbone``); a
            ``Sequential`` ending in global pooling is used without it (:func:`feature_map_backbone`).
        dataset: The :class:`SGCLDataset` (its bank must be ``bank``) or the raw dataset.
        bank: The bank the :class:`SGCLTransform` reads.
        generator: The :class:`~sgcl_plugin.SaliencyGenerator` (default settings when omitted).
        regions: ``"objects"`` (default) or ``"paper"``, the mode of the default generator.
        feature_stride: Read the backbone's stage at this stride (16 recommended for object-level
            regions) instead of its last feature map; ``None`` (default) keeps the last map.
        **kwargs: :meth:`SaliencyGenerator.refresh` options: ``batch_size``, ``saliency_size``
            (default 640), ``device``, ``num_workers``, ``progress``, ``distributed``, ...

    Returns:
        ``bank``, refreshed (DataLoader workers, persistent ones included, see it at once).

    Raises:
        ValueError: no bank yet, a bank of another size than the dataset, or a bank that is not the
            one the dataset's transform reads.
    """
    images = _refresh_images(dataset, bank)
    return resolve_generator(generator, regions).refresh(feature_maps(backbone, feature_stride), images, bank, **kwargs)


class SGCLRefresher:
    """Refreshes the bank every ``every_n_epochs`` epochs (never at epoch 0): one call per epoch.

    Args:
        bank: The bank the :class:`SGCLTransform` reads.
        dataset: The :class:`SGCLDataset` or the raw dataset.
        every_n_epochs: Epochs between refreshes (paper: 100 of 800).
        generator: The :class:`~sgcl_plugin.SaliencyGenerator`.
        regions: ``"objects"`` (default) or ``"paper"``, the mode of the default generator.
        first_epoch: The first refresh epoch; default ``every_n_epochs``
            (:class:`~sgcl_plugin.schedule.RefreshSchedule`).
        feature_stride, saliency_size, batch_size, num_workers, progress, device: As in :func:`refresh`.

    Examples:
        >>> refresher = SGCLRefresher(bank, dataset, every_n_epochs=10, saliency_size=640)
        >>> for epoch in range(epochs):
        ...     refresher.maybe_refresh(epoch, model.backbone)
        ...     ...
        >>> torch.save({"model": model.state_dict(), "sgcl": refresher.state_dict()}, "ckpt.pt")
    """

    def __init__(
        self,
        bank: Optional[SaliencyBank],
        dataset: Any,
        every_n_epochs: int = 10,
        generator: Optional[SaliencyGenerator] = None,
        regions: Optional[str] = None,
        first_epoch: Optional[int] = None,
        feature_stride: Optional[int] = None,
        saliency_size: int = 640,
        batch_size: int = 32,
        num_workers: int = 0,
        progress: bool = True,
        device: Optional[Union[str, torch.device]] = None,
    ) -> None:
        self.schedule = RefreshSchedule(every_n_epochs, first_epoch)
        _refresh_images(dataset, bank)  # fail now, not after the first epochs
        self.bank: SaliencyBank = bank  # type: ignore[assignment]
        self.dataset: Any = dataset
        self.generator: SaliencyGenerator = resolve_generator(generator, regions)
        self.refresh_kwargs: Dict[str, Any] = dict(
            feature_stride=feature_stride, saliency_size=saliency_size, batch_size=batch_size,
            num_workers=num_workers, progress=progress, device=device,
        )  # fmt: skip

    @property
    def last_epoch(self) -> int:
        """The last refreshed epoch (-1 before the first)."""
        return self.schedule.last_epoch

    def due(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) starts with a refresh that has not been done yet."""
        return self.schedule.is_due(epoch)

    def maybe_refresh(self, epoch: int, backbone: Any) -> bool:
        """Refreshes when :meth:`due`; call it at the start of every epoch. Returns whether it refreshed."""
        if not self.due(epoch):
            return False
        refresh(backbone, self.dataset, self.bank, generator=self.generator, **self.refresh_kwargs)
        self.schedule.mark_done(epoch, self.bank.stats())
        return True

    def state_dict(self) -> Dict[str, Any]:
        """The bank and the schedule (last refreshed epoch, history), for checkpoints."""
        return {
            "last_epoch": self.schedule.last_epoch,
            "schedule": self.schedule.state_dict(),
            "bank": self.bank.state_dict(),
        }

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict` (the bank in place: running workers see it)."""
        self.bank.load_state_dict(state["bank"])
        self.schedule.load_state_dict(state.get("schedule", {"last_epoch": state["last_epoch"]}))


def __getattr__(name: str) -> Any:  # PEP 562: deprecated names
    if name == "IndexedDataset":
        warnings.warn("IndexedDataset is now SGCLDataset; the old name goes in 0.3.", DeprecationWarning, 2)
        return SGCLDataset
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
