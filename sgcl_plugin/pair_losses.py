"""Per-sample pair losses: BYOL's regression loss, SimCLR's NT-Xent and NNCLR, one value per pair.

Each returns a (n,) tensor, so that SGCL can weight pair i by its region's saliency score
(:mod:`sgcl_plugin.weighted_loss`):

- :func:`byol_loss`: ``2 - 2 cos(p_i, z_i)`` (BYOL).
- :func:`ntxent_loss`: SimCLR's NT-Xent over the 2n embeddings; views of other regions of the same
  source image are not used as negatives by default (SGCL samples several regions per image with
  replacement, so they may show the same object).
- :func:`nnclr_loss`: NT-Xent with each anchor replaced by its nearest neighbour in a support set.

Gradients: no function here detaches anything. Pass the target side (BYOL's momentum projection, an
NNCLR support set) already detached, as BYOL and NNCLR do.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from sgcl_plugin.checks import check_not_meta, check_number

__all__ = [
    "BASE_LOSSES",
    "BaseLoss",
    "ImageIds",
    "byol_loss",
    "check_embeddings",
    "nearest_neighbors",
    "nnclr_loss",
    "ntxent_loss",
    "shape_of",
]

BaseLoss = Callable[..., Tensor]
ImageIds = Union[Tensor, Sequence[int]]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def shape_of(x: Any) -> Any:
    """What an error message says ``x`` is: its shape if it is a tensor, else its type's name."""
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def check_embeddings(x: Any, name: str) -> None:
    """Raises unless ``x`` is a non-empty (n, d) floating point tensor with values (not a meta tensor)."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}.")
    check_not_meta(x, name)
    if x.ndim != 2:
        raise ValueError(f"{name} must have shape (n, d), got {tuple(x.shape)}.")
    if x.shape[0] < 1:
        raise ValueError(f"{name} is an empty batch (n = 0).")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating point tensor, got {x.dtype}.")


def _check_pair(a: Any, b: Any, names: str = "a, b") -> None:
    first, second = (s.strip() for s in names.split(","))
    check_embeddings(a, first)
    check_embeddings(b, second)
    if a.shape != b.shape:
        raise ValueError(f"{first} and {second} must have the same shape (n, d), got {shape_of(a)} and {shape_of(b)}.")


def _check_temperature(temperature: float) -> None:
    check_number("temperature", temperature, 0, strict=True)


def _check_image_ids(image_ids: ImageIds, n: int, device: torch.device) -> Tensor:
    ids = image_ids if isinstance(image_ids, Tensor) else torch.as_tensor(image_ids)
    if ids.ndim != 1 or ids.shape[0] != n:
        raise ValueError(f"image_ids must have shape ({n},) (one source image per pair), got {tuple(ids.shape)}.")
    return ids.to(device)


# --------------------------------------------------------------------------------------------
# Per-sample base losses
# --------------------------------------------------------------------------------------------


def byol_loss(p: Tensor, z: Tensor) -> Tensor:
    """BYOL's regression loss per pair: ``2 - 2 cos(p_i, z_i)``, in [0, 4].

    The caller passes the target side already detached (BYOL's stop-gradient on the momentum
    projection); nothing is detached here. Symmetrize as BYOL does by calling it twice with the
    views swapped.

    Args:
        p: (n, d) online predictions.
        z: (n, d) target projections, detached by the caller.

    Returns:
        (n,) per-pair losses.

    Examples:
        >>> p = torch.tensor([[1.0, 0.0], [1.0, 0.0]])
        >>> z = torch.tensor([[2.0, 0.0], [0.0, 1.0]])
        >>> byol_loss(p, z)
        tensor([0., 2.])
    """
    _check_pair(p, z, "p, z")
    # eps 1e-6 (not 1e-12): the gradient of a normalized near-zero vector is ~1/eps (it was 4.8e12 at zero)
    return 2 - 2 * (F.normalize(p, dim=1, eps=1e-6) * F.normalize(z, dim=1, eps=1e-6)).sum(dim=1)


def ntxent_loss(
    a: Tensor,
    b: Tensor,
    temperature: float = 0.1,
    image_ids: Optional[ImageIds] = None,
    exclude_same_image: bool = True,
    negatives: Optional[Tensor] = None,
) -> Tensor:
    """SimCLR's NT-Xent per pair, with views of the same source image kept out of the negatives.

    The 2n embeddings ``[a; b]`` are L2-normalized. Anchor ``a_i`` has positive ``b_i`` and anchor
    ``b_i`` has positive ``a_i``; each anchor's loss is ``-log softmax`` of its positive against the
    positive and its negatives, with cosine similarities divided by ``temperature``. Pair i gets the
    mean of its two anchor losses.

    Negatives are the other 2n - 2 embeddings, except that, when ``image_ids`` is given and
    ``exclude_same_image`` is True, both views of every *other* pair cropped from the same source
    image are left out (SGCL samples regions with replacement, so they may show the same object).
    An anchor always keeps its positive; a pair whose image supplied the whole batch has no
    negatives and a loss of 0.

    Args:
        a: (n, d) embeddings of the first views.
        b: (n, d) embeddings of the second views.
        temperature: Softmax temperature, > 0.
        image_ids: (n,) source image of each pair (dataset indices, say); None gives the standard
            NT-Xent.
        exclude_same_image: False keeps same-image views as negatives even with ``image_ids``.
        negatives: (m, d) memory-bank rows (MoCo-style, e.g. lightly's ``NTXentLoss(memory_bank_size=...)``):
            then anchor ``a_i`` against its positive ``b_i`` and these m negatives only (one direction);
            ``image_ids`` must be None (the rows' source images are unknown).

    Returns:
        (n,) per-pair losses.

    Examples:
        >>> a, b = torch.randn(8, 16), torch.randn(8, 16)
        >>> image_ids = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1])  # 4 regions from each of 2 images
        >>> ntxent_loss(a, b, image_ids=image_ids).shape
        torch.Size([8])
    """
    _check_pair(a, b)
    _check_temperature(temperature)
    if negatives is not None:
        if image_ids is not None:
            raise ValueError("image_ids cannot be used with memory-bank negatives (their source images are unknown).")
        if not isinstance(negatives, Tensor) or negatives.ndim != 2 or negatives.shape[1] != a.shape[1]:
            raise ValueError(f"negatives must have shape (m, {a.shape[1]}), got {shape_of(negatives)}.")
        a_n, b_n = F.normalize(a, dim=1), F.normalize(b, dim=1)
        neg = F.normalize(negatives.to(device=a.device, dtype=a.dtype), dim=1)
        logits = torch.cat([(a_n * b_n).sum(dim=1, keepdim=True), a_n @ neg.T], dim=1) / temperature
        return torch.logsumexp(logits, dim=1) - logits[:, 0]
    n = a.shape[0]
    z = F.normalize(torch.cat([a, b], dim=0), dim=1)
    logits = z @ z.T / temperature
    idx = torch.arange(2 * n, device=z.device)
    pos = (idx + n) % (2 * n)
    if image_ids is not None and exclude_same_image:
        ids = _check_image_ids(image_ids, n, z.device).repeat(2)
        excluded = ids[:, None] == ids[None, :]  # self included: same image
        excluded[idx, pos] = False
    else:
        if image_ids is not None:
            _check_image_ids(image_ids, n, z.device)
        excluded = torch.eye(2 * n, dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(excluded, float("-inf"))
    per_anchor = torch.logsumexp(logits, dim=1) - logits[idx, pos]
    return 0.5 * (per_anchor[:n] + per_anchor[n:])


def nearest_neighbors(x: Tensor, support: Tensor) -> Tensor:
    """The row of ``support`` with the largest cosine similarity to each row of ``x``.

    Args:
        x: (n, d) queries.
        support: (m, d) candidates.

    Returns:
        (n, d) rows of ``support`` (as stored, not normalized).
    """
    check_embeddings(x, "x")
    check_embeddings(support, "support")
    if support.shape[1] != x.shape[1]:
        raise ValueError(f"support must have shape (m, {x.shape[1]}), got {tuple(support.shape)}.")
    sim = F.normalize(x, dim=1) @ F.normalize(support.to(x.dtype), dim=1).T
    return support.to(x.dtype)[sim.argmax(dim=1)]


def nnclr_loss(
    a: Tensor,
    b: Tensor,
    support: Tensor,
    temperature: float = 0.1,
    image_ids: Optional[ImageIds] = None,
    exclude_same_image: bool = True,
    pred_a: Optional[Tensor] = None,
    pred_b: Optional[Tensor] = None,
) -> Tensor:
    """NNCLR per pair: NT-Xent between each view's nearest neighbour in a support set and the other view.

    ``NN(x)`` is the row of ``support`` closest to ``x`` in cosine similarity. As NNCLR does, the
    loss is symmetrized: ``0.5 * (ntxent(NN(a), pred_b) + ntxent(NN(b), pred_a))``, where the
    predictions are the projections themselves when the method has no predictor (``pred_a=None``:
    ``0.5 * (ntxent(NN(a), b) + ntxent(NN(b), a))``). This is the one NNCLR definition of the
    package: the trainer, lightly's and solo-learn's NNCLR all reduce to it. ``image_ids`` and
    ``exclude_same_image`` go to both :func:`ntxent_loss` calls. The support set (NNCLR's queue of
    past projections) is kept by the caller and passed detached; the neighbour lookup itself has no
    gradient, so gradients reach the other view's side.

    Args:
        a: (n, d) projections of the first views.
        b: (n, d) projections of the second views.
        support: (m, d) support set, m >= 1.
        temperature: Softmax temperature, > 0.
        image_ids: (n,) source image of each pair, or None (see :func:`ntxent_loss`).
        exclude_same_image: False keeps same-image views as negatives.
        pred_a: (n, d) predictions of the first views (NNCLR's prediction head), or None.
        pred_b: (n, d) predictions of the second views, or None.

    Returns:
        (n,) per-pair losses.

    Examples:
        >>> a, b, support = torch.randn(8, 16), torch.randn(8, 16), torch.randn(64, 16)
        >>> nnclr_loss(a, b, support).shape
        torch.Size([8])
    """
    _check_pair(a, b)
    pred_a, pred_b = (a if pred_a is None else pred_a), (b if pred_b is None else pred_b)
    nn_a = nearest_neighbors(a, support)
    nn_b = nearest_neighbors(b, support)
    kwargs: Dict[str, Any] = dict(temperature=temperature, image_ids=image_ids, exclude_same_image=exclude_same_image)
    return 0.5 * (ntxent_loss(nn_a, pred_b, **kwargs) + ntxent_loss(nn_b, pred_a, **kwargs))


BASE_LOSSES: Dict[str, BaseLoss] = {"byol": byol_loss, "ntxent": ntxent_loss, "nnclr": nnclr_loss}
