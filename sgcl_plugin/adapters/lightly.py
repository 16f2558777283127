"""SGCL for lightly: an index-aware dataset, a BYOL-style crop transform, per-sample losses, a refresh.

lightly's transforms do not see the dataset index, its losses return batch means and nothing refreshes the
regions: :class:`SGCLDataset` / :class:`SGCLTransform` and :class:`SGCLLoss` add that with lightly's own objects;
:class:`SGCLRefresher` and :func:`refresh` are the core's refresh driver (:mod:`sgcl_plugin.refresher`, which
needs no lightly: ``SaliencyRefresher``, ``refresh_regions``). Needs lightly (``pip install
'sgcl_plugin[lightly]'``; verified with 1.6.0), which ``import sgcl_plugin`` never imports. Usage, patches for
lightly's examples and details: docs/adapters/lightly.md.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, List, NamedTuple, Optional, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import default_collate

from sgcl_plugin.bank import SaliencyBank
from sgcl_plugin.bank_crops import SaliencyCropDataset, SaliencyCropTransform
from sgcl_plugin.boxes import check_crop_size
from sgcl_plugin.crops import CropSample
from sgcl_plugin.features import feature_map_backbone
from sgcl_plugin.inter_image_loss import InterImageLoss
from sgcl_plugin.items import ImageItem, flatten_pairs, repeat_rows
from sgcl_plugin.pair_losses import ntxent_loss
from sgcl_plugin.refresher import SaliencyRefresher, refresh_regions
from sgcl_plugin.views import PILView
from sgcl_plugin.weighted_loss import SaliencyWeightedLoss

try:
    from lightly.data import LightlyDataset
    from lightly.loss import NegativeCosineSimilarity, NTXentLoss
    from lightly.models.modules import NNMemoryBankModule
    from lightly.transforms import BYOLView1Transform, BYOLView2Transform
    from lightly.transforms.multi_view_transform import MultiViewTransform
except ImportError as _err:  # pragma: no cover - exercised in a subprocess by the tests
    raise ImportError(
        "sgcl_plugin.adapters.lightly needs lightly: pip install 'sgcl_plugin[lightly]' (or pip install lightly). "
        f"Importing it failed with: {_err}"
    ) from _err

__all__ = [
    "SGCLBatch",
    "SGCLDataset",
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
]  # fmt: skip

ImageIds = Union[Tensor, Sequence[int]]


class SGCLTransform(SaliencyCropTransform):
    """SGCL's region crops, then lightly's BYOL view augmentations: the SGCL version of ``BYOLTransform``.

    ``transform(image, index)`` returns a :class:`~sgcl_plugin.crops.CropSample` (``views1``, ``views2`` (t, 3,
    size, size), ``scores`` (t,), ...). The default views are ``BYOLView1Transform`` / ``BYOLView2Transform``
    with ``input_size=size, min_scale=1.0``, whose crop is then the identity: the image is cropped once.

    Args:
        bank: The dataset's :class:`~sgcl_plugin.bank.SaliencyBank`.
        num_regions, size, scale, ratio: As in :class:`~sgcl_plugin.bank_crops.SaliencyCropTransform` (paper: 4, 96).
        view_1_transform, view_2_transform: The views' augmentations (PIL in, tensor out), without crop or resize.

    Raises:
        TypeError: a multi-view transform (``BYOLTransform``) as a view transform.
        ValueError: a view transform that crops again or resizes to another size than ``size``.
    """

    view_1_transform: Callable[[Any], Tensor]
    view_2_transform: Callable[[Any], Tensor]

    def __init__(
        self, bank: SaliencyBank, num_regions: int = 4, size: int = 96,
        view_1_transform: Optional[Callable[[Any], Tensor]] = None,
        view_2_transform: Optional[Callable[[Any], Tensor]] = None,
        scale: Sequence[float] = (0.08, 1.0), ratio: Sequence[float] = (3 / 4, 4 / 3),
    ) -> None:  # fmt: skip
        size = check_crop_size(size)
        views = []
        for i, view in enumerate((view_1_transform, view_2_transform)):
            name, default = f"view_{i + 1}_transform", (BYOLView1Transform, BYOLView2Transform)[i]
            view = default(input_size=size, min_scale=1.0) if view is None else view
            if isinstance(view, MultiViewTransform):
                raise TypeError(
                    f"{name} is a multi-view transform ({type(view).__name__}): pass the single-view transforms, "
                    f"e.g. BYOLView1Transform(input_size={size}, min_scale=1.0)."
                )
            setattr(self, name, view)
            views.append(PILView(view, size, name))
        super().__init__(bank, num_regions=num_regions, size=size, view_transforms=views, scale=scale, ratio=ratio)


class _ItemFields(NamedTuple):
    views: Tuple[Tensor, Tensor]  # (views1, views2), each (t, 3, size, size)
    target: Any  # the wrapped dataset's target (-1 when it has none)
    filename: str  # lightly's filename (str(index) for datasets without files)
    scores: Tensor  # (t,) region score of each pair (1.0 before the first refresh)
    index: int  # type: ignore[assignment]  # the dataset index, as lightly names it; shadows tuple.index


class SGCLItem(_ItemFields):
    """One image's item from :class:`SGCLDataset` (the first three fields are lightly's); built from collated
    fields (torch's default collate does that) it is the :class:`SGCLBatch` of :func:`sgcl_collate` instead."""

    __slots__ = ()

    def __new__(cls, views: Any, target: Any, filename: Any, scores: Any, index: Any) -> Any:
        batched = isinstance(scores, Tensor) and scores.ndim == 2 and isinstance(views, (list, tuple))
        if not (batched and all(isinstance(v, Tensor) and v.ndim == 5 for v in views)):
            return super().__new__(cls, views, target, filename, scores, index)
        rows = flatten_pairs(views, scores, torch.as_tensor(index, dtype=torch.int64))
        t = rows.num_regions
        target = target.repeat_interleave(t) if isinstance(target, Tensor) else list(repeat_rows(target, t))
        views = [rows.views1, rows.views2]
        return SGCLBatch(views, target, list(repeat_rows(filename, t)), rows.scores, rows.image_ids)


class SGCLBatch(NamedTuple):
    """A batch from :func:`sgcl_collate`: one row per view pair (``B * t`` rows, image-major)."""

    views: List[Tensor]  # [x0, x1], each (B * t, 3, size, size): x0, x1 = batch[0] as in lightly's examples
    target: Any  # (B * t,) targets (a list when they cannot be stacked)
    filename: List[str]  # B * t filenames
    scores: Tensor  # (B * t,) region scores in [0, 1], for SGCLLoss
    index: Tensor  # type: ignore[assignment]  # (B * t,) dataset index of each row's image (image_ids for NT-Xent)


def sgcl_collate(items: Sequence[SGCLItem]) -> SGCLBatch:
    """The DataLoader ``collate_fn`` for :class:`SGCLDataset` (torch's default collate now gives the same batch)."""
    if not items or not all(isinstance(item, SGCLItem) for item in items):
        raise (ValueError if not items else TypeError)("sgcl_collate expects SGCLItems, as SGCLDataset returns them.")
    try:
        target: Any = default_collate([item.target for item in items])
    except (TypeError, RuntimeError):
        target = [item.target for item in items]
    views = [torch.stack([item.views[k] for item in items]) for k in (0, 1)]
    scores = torch.stack([item.scores for item in items])
    return SGCLItem(views, target, [item.filename for item in items], scores, [item.index for item in items])


class SGCLDataset(SaliencyCropDataset):
    """Wraps a map-style dataset (a ``LightlyDataset`` with ``transform=None``, torchvision-style, a list of
    images) so that ``dataset[i]`` is an :class:`SGCLItem` of the crops of image i; batch with :func:`sgcl_collate`.
    ``transform`` is the :class:`SGCLTransform`, whose bank must have ``len(dataset)`` rows.

    Raises:
        TypeError: a dataset that is not map-style, or a transform that is not an SGCL transform.
        ValueError: a bank of another size, a ``LightlyDataset`` with a transform, items with several views.

    Examples:
        >>> from sgcl_plugin.sample_images import export_sample_images
        >>> from torch.utils.data import DataLoader
        >>> bank = SaliencyBank(len(export_sample_images("photos")))
        >>> dataset = SGCLDataset(LightlyDataset("photos/"), SGCLTransform(bank, size=96))
        >>> loader = DataLoader(dataset, batch_size=4, shuffle=True, drop_last=True, collate_fn=sgcl_collate)
        >>> batch = next(iter(loader))
        >>> batch.views[0].shape, batch.scores.shape  # 4 images x 4 region pairs, flattened
        (torch.Size([16, 3, 96, 96]), torch.Size([16]))
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


def _check_same_shape(a: Any, b: Any, names: Tuple[str, str]) -> None:
    for name, x in zip(names, (a, b)):
        if not isinstance(x, Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
        if x.ndim < 2 or x.shape[0] < 1:
            raise ValueError(f"{name} must have shape (n, d) with n >= 1, got {tuple(x.shape)}.")
    if a.shape != b.shape:
        raise ValueError(f"{' and '.join(names)} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}.")


def per_sample_negative_cosine_similarity(x0: Tensor, x1: Tensor, dim: int = 1, eps: float = 1e-8) -> Tensor:
    """lightly's ``NegativeCosineSimilarity`` per sample, ``-cos(x0_i, x1_i)`` (n,); its mean is lightly's loss."""
    _check_same_shape(x0, x1, ("x0", "x1"))
    return -F.cosine_similarity(x0, x1, dim=dim, eps=eps).reshape(x0.shape[0], -1).mean(dim=1)


def per_sample_ntxent(
    out0: Tensor, out1: Tensor, temperature: float = 0.5, negatives: Optional[Tensor] = None,
    image_ids: Optional[ImageIds] = None, exclude_same_image: bool = True,
) -> Tensor:  # fmt: skip
    """lightly's ``NTXentLoss`` per view pair, shape (n,); its mean is lightly's loss.

    ``negatives``: (m, d) memory-bank rows (MoCo-style), or None (SimCLR: the 2n embeddings). ``image_ids``:
    (n,) source image of each pair, not with ``negatives``; other pairs of the same image are then not
    negatives (unless ``exclude_same_image=False``). None: lightly's loss exactly.
    """
    _check_same_shape(out0, out1, ("out0", "out1"))
    return ntxent_loss(out0, out1, temperature, image_ids, exclude_same_image, negatives=negatives)


def nnclr_neighbours(memory_bank: Any, z0: Tensor, z1: Tensor, update: bool = True) -> Tuple[Tensor, Tensor]:
    """NNCLR's lookup in lightly's ``NNMemoryBankModule`` as lightly does it (``z0`` without update, then ``z1``
    with ``update``, which appends it): ``(nn0, nn1)``, each (n, d)."""
    if not isinstance(memory_bank, NNMemoryBankModule):
        raise TypeError(f"memory_bank must be lightly's NNMemoryBankModule, got {type(memory_bank).__name__}.")
    _check_same_shape(z0, z1, ("z0", "z1"))
    return memory_bank(z0.detach(), update=False), memory_bank(z1.detach(), update=update)


def per_sample_nnclr(
    z0: Tensor, p0: Tensor, z1: Tensor, p1: Tensor, memory_bank: Any, temperature: float = 0.5,
    image_ids: Optional[ImageIds] = None, exclude_same_image: bool = True, update: bool = True,
) -> Tensor:  # fmt: skip
    """lightly's NNCLR loss per pair, ``0.5 * (ntxent(NN(z0), p1) + ntxent(NN(z1), p0))`` (n,), NN from
    :func:`nnclr_neighbours`; its mean is lightly's NNCLR loss."""
    nn0, nn1 = nnclr_neighbours(memory_bank, z0, z1, update=update)
    kwargs: Dict[str, Any] = dict(temperature=temperature, image_ids=image_ids, exclude_same_image=exclude_same_image)
    return 0.5 * (per_sample_ntxent(nn0, p1, **kwargs) + per_sample_ntxent(nn1, p0, **kwargs))


_LOSS_NAMES = {"negative_cosine_similarity": NegativeCosineSimilarity, "ntxent": NTXentLoss}
_LOSS_NAMES.update({cls.__name__: cls for cls in (NegativeCosineSimilarity, NTXentLoss)})


class SGCLLoss(nn.Module):
    """A lightly loss made per-sample and weighted by region saliency: ``sum_i P_i ** gamma * L_i / n``.

    Args:
        loss: lightly's ``NegativeCosineSimilarity`` or ``NTXentLoss`` (memory bank included), its name
            (``"negative_cosine_similarity"``, ``"ntxent"``; built with ``**loss_kwargs``), or a callable
            ``loss(a, b) -> Tensor[n]``.
        gamma: Exponent of the scores (paper: 0.5). With 0, or all scores 1, the loss is the lightly loss.
        normalize: ``"count"`` divides by n (default), ``"weight"`` by ``sum_i P_i ** gamma``.

    Raises:
        TypeError: another lightly loss (a batch mean cannot be weighted per pair).
        NotImplementedError: ``NTXentLoss(gather_distributed=True)`` without memory bank, several processes.

    Examples:
        >>> from lightly.loss import NTXentLoss
        >>> criterion = SGCLLoss(NTXentLoss(temperature=0.5))  # SimCLR; BYOL: SGCLLoss(NegativeCosineSimilarity())
        >>> z0, z1 = torch.randn(8, 128), torch.randn(8, 128)  # projections of 2 images x 4 region pairs
        >>> scores, index = torch.rand(8), torch.arange(2).repeat_interleave(4)  # batch.scores, batch.index
        >>> criterion(z0, z1, scores, image_ids=index).shape  # a scalar
        torch.Size([])
    """

    def __init__(
        self, loss: Union[str, nn.Module, Callable[..., Tensor]] = "negative_cosine_similarity", gamma: float = 0.5,
        normalize: str = "count", **loss_kwargs: Any,
    ) -> None:  # fmt: skip
        super().__init__()
        if isinstance(loss, str):
            if loss not in _LOSS_NAMES:
                raise ValueError(f"Unknown loss {loss!r}; choose one of {sorted(_LOSS_NAMES)} or pass a lightly loss.")
            loss = _LOSS_NAMES[loss](**loss_kwargs)
        elif loss_kwargs:
            raise TypeError(f"loss_kwargs {sorted(loss_kwargs)} are only used when the loss is given by name.")
        kinds = {NegativeCosineSimilarity: "negative_cosine_similarity", NTXentLoss: "ntxent"}
        self.kind = next((kind for cls, kind in kinds.items() if isinstance(loss, cls)), "callable")
        if self.kind == "callable" and type(loss).__module__.startswith("lightly."):
            raise TypeError(
                f"SGCLLoss supports lightly's NegativeCosineSimilarity and NTXentLoss (NNCLR: NTXentLoss with "
                f"nnclr_neighbours), not {type(loss).__name__}: it returns a batch mean that cannot be weighted per "
                "pair. Pass a callable returning per-sample losses (n,) instead."
            )
        if not callable(loss):
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
        memory_bank = self.loss.memory_bank  # NTXentLoss
        if memory_bank.size[0] == 0:
            dist = torch.distributed
            world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
            if self.loss.gather_distributed and world > 1:
                raise NotImplementedError(
                    "SGCLLoss does not gather negatives across processes: use NTXentLoss(gather_distributed=False) "
                    "(each process's batch gives the negatives)."
                )
            return per_sample_ntxent(a, b, temperature=self.loss.temperature, image_ids=image_ids)
        if image_ids is not None:
            raise ValueError("image_ids cannot be used with NTXentLoss's memory bank (negatives of unknown images).")
        _check_same_shape(a, b, ("a", "b"))
        b_normed, bank = memory_bank(F.normalize(b, dim=1), update=a.requires_grad)  # lightly's query-then-update
        negatives = bank.T if memory_bank.feature_dim_first else bank
        return per_sample_ntxent(a, b_normed, temperature=self.loss.temperature, negatives=negatives)

    def per_sample(self, a: Tensor, b: Tensor, image_ids: Optional[ImageIds] = None) -> Tensor:
        """The unweighted (n,) losses (a memory bank is queried and updated, as in ``forward``)."""
        return self.weighted.per_sample(a, b, image_ids=image_ids)

    def forward(self, a: Tensor, b: Tensor, scores: Tensor, image_ids: Optional[ImageIds] = None) -> Tensor:
        """The weighted loss of n pairs: ``a``, ``b`` (n, d) as for the lightly loss, ``scores`` (n,)
        (``batch.scores``), ``image_ids`` (n,) (``batch.index``; NT-Xent only, ignored by the cosine loss)."""
        if self.kind == "negative_cosine_similarity":
            image_ids = None
        return self.weighted(a, b, scores, image_ids=image_ids)

    def extra_repr(self) -> str:
        return f"gamma={self.weighted.gamma}, normalize={self.weighted.normalize!r}"


def inter_loss_for(
    model: nn.Module, head: str = "prediction_head", queue_size: int = 4096, num_neighbors: int = 5,
    gamma: float = 0.5, gather_distributed: bool = False, scale: float = 0.5,
) -> InterImageLoss:  # fmt: skip
    """SGCL's inter-image loss (Eq. 10) sized for the output of ``model.<head>``'s last ``nn.Linear``.

    ``scale=0.5`` gives it in lightly's ``-cos`` units, so that ``0.5 * (criterion(p0, z1, s) + criterion(p1, z0,
    s)) + 0.5 * (inter(p0, s) + inter(p1, s))`` keeps the paper's 1 : 1; ``scale=1`` is the paper's own scale.

    Raises:
        AttributeError: the model has no such head (use ``head="projection_head"`` without a predictor).
        ValueError: the head has no ``nn.Linear``.
    """
    module = getattr(model, head, None)
    if not isinstance(module, nn.Module):
        have = [n for n in ("projection_head", "prediction_head") if isinstance(getattr(model, n, None), nn.Module)]
        raise AttributeError(
            f"{type(model).__name__} has no {head} (it has {have or 'neither projection_head nor prediction_head'}): "
            "SGCL's inter-image loss pulls the online predictions toward the queue. For a method without a "
            "predictor use head='projection_head'."
        )
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"Cannot tell the output size of {type(module).__name__}: it has no nn.Linear layer.")
    return InterImageLoss(
        linears[-1].out_features, queue_size=queue_size, num_neighbors=num_neighbors, gamma=gamma,
        gather_distributed=gather_distributed, scale=scale,
    )  # fmt: skip


class SGCLRefresher(SaliencyRefresher):
    """The core :class:`~sgcl_plugin.refresher.SaliencyRefresher` (same arguments; it needs no lightly) that
    refuses at once a missing bank, as this adapter always did: call :meth:`maybe_refresh` at the start of every
    epoch.

    Examples:
        >>> bank = SaliencyBank(len(dataset))
        >>> refresher = SGCLRefresher(bank, dataset, every_n_epochs=2, saliency_size=256, progress=False)
        >>> [refresher.maybe_refresh(epoch, backbone) for epoch in range(5)]  # then train the epoch
        [False, False, True, False, True]
    """

    host = "SGCLRefresher"

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.check()  # fail now, not after the first epochs


refresh = refresh_regions
"""SGCL Step 1 now: :func:`sgcl_plugin.refresher.refresh_regions` (``refresh(backbone, dataset, bank, ...)``)."""
