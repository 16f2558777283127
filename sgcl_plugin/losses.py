"""SGCL losses: per-sample base losses, saliency weighting (Eq. 7-9) and the inter-image loss (Eq. 10).

Every base loss returns one value per pair, shape (n,), so that SGCL can weight pair i by
``P_i ** gamma``, where ``P_i`` in [0, 1] is the saliency score of the region the pair was cropped
from:

- :func:`byol_loss`: ``2 - 2 cos(p_i, z_i)`` (BYOL).
- :func:`ntxent_loss`: SimCLR's NT-Xent over the 2n embeddings; views of other regions of the same
  source image are not used as negatives by default (SGCL samples several regions per image with
  replacement, so they may show the same object).
- :func:`nnclr_loss`: NT-Xent with each anchor replaced by its nearest neighbour in a support set.

:class:`SaliencyWeightedLoss` wraps any of them (or any callable returning per-sample losses) and
reduces ``sum_i P_i ** gamma * L_i`` to a scalar. :class:`InterImageLoss` pulls each online prediction
toward its nearest neighbours in a FIFO queue of target projections, each term weighted by
``P_i ** gamma``.

Gradients: no function here detaches anything. Pass the target side (BYOL's momentum projection,
the queue entries, an NNCLR support set) already detached, as BYOL, NNCLR and SGCL do.
"""

from __future__ import annotations

import inspect
import numbers
from typing import Any, Callable, Dict, Literal, Optional, Sequence, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgcl_plugin.checks import check_int, check_not_meta, check_number

Normalize = Literal["count", "weight"]
NORMALIZATIONS = ("count", "weight")
BaseLoss = Callable[..., Tensor]
ImageIds = Union[Tensor, Sequence[int]]


# --------------------------------------------------------------------------------------------
# Input checks
# --------------------------------------------------------------------------------------------


def _shape(x: Any) -> Any:
    return tuple(x.shape) if isinstance(x, Tensor) else type(x).__name__


def _check_embeddings(x: Any, name: str) -> None:
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
    _check_embeddings(a, first)
    _check_embeddings(b, second)
    if a.shape != b.shape:
        raise ValueError(f"{first} and {second} must have the same shape (n, d), got {_shape(a)} and {_shape(b)}.")


def _check_temperature(temperature: float) -> None:
    check_number("temperature", temperature, 0, strict=True)


def _check_gamma(gamma: float) -> None:
    check_number("gamma (0 turns the saliency weighting off)", gamma, 0)  # numpy scalars too


def _check_num_neighbors(num_neighbors: int) -> None:
    if isinstance(num_neighbors, bool) or not isinstance(num_neighbors, numbers.Integral) or num_neighbors < 1:
        raise ValueError(
            f"num_neighbors must be an integer >= 1, got {num_neighbors!r} (for l = 0 leave the inter-image loss out)."
        )


def check_scores(scores: Any, n: int) -> Tensor:
    """Checks saliency scores and returns them as a floating point tensor, detached.

    The paper's pair weights ``P_i ** gamma`` are constants of the step: no gradient flows into the
    scores (one that required grad would get an infinite gradient at a score of 0).

    Args:
        scores: (n,) region scores in [0, 1].
        n: The batch size they must match.

    Returns:
        ``scores`` detached, converted to the default float dtype if it was an integer or bool tensor.

    Raises:
        TypeError: ``scores`` is not a tensor.
        ValueError: wrong shape or length, NaN entries, or entries outside [0, 1].
    """
    if not isinstance(scores, Tensor):
        raise TypeError(f"scores must be a torch.Tensor of shape ({n},), got {type(scores).__name__}.")
    check_not_meta(scores, "scores")
    if scores.ndim != 1 or scores.shape[0] != n:
        raise ValueError(f"scores must have shape ({n},) (one score per pair), got {tuple(scores.shape)}.")
    scores = scores.detach()
    if not scores.is_floating_point():
        scores = scores.to(torch.get_default_dtype())
    if torch.isnan(scores).any():
        raise ValueError(f"scores contain NaN at positions {torch.nonzero(torch.isnan(scores)).flatten().tolist()}.")
    if n and ((scores < 0).any() or (scores > 1).any()):
        raise ValueError(
            f"scores must lie in [0, 1] (SGCL region scores), got min {scores.min().item():.4g} "
            f"and max {scores.max().item():.4g}."
        )
    return scores


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
            raise ValueError(f"negatives must have shape (m, {a.shape[1]}), got {_shape(negatives)}.")
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
    _check_embeddings(x, "x")
    _check_embeddings(support, "support")
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


# --------------------------------------------------------------------------------------------
# Saliency weighting (Eq. 7-9)
# --------------------------------------------------------------------------------------------


def saliency_weighted_loss(
    losses: Tensor,
    scores: Tensor,
    gamma: float = 0.5,
    normalize: Normalize = "count",
) -> Tensor:
    """Reduces per-pair losses to ``sum_i P_i ** gamma * L_i`` over a normalizer (SGCL Eq. 9).

    Args:
        losses: (n,) per-pair losses.
        scores: (n,) saliency scores ``P_i`` in [0, 1].
        gamma: Exponent >= 0; 0 gives the plain mean (``0 ** 0 = 1``).
        normalize: ``"count"`` divides by n, so low-saliency pairs really count less (default);
            ``"weight"`` divides by ``sum_i P_i ** gamma`` (a weighted mean; 0 if every weight is 0).

    Returns:
        A scalar.

    Examples:
        >>> saliency_weighted_loss(torch.tensor([1.0, 1.0]), torch.tensor([1.0, 0.25]))
        tensor(0.7500)
    """
    if not isinstance(losses, Tensor) or losses.ndim != 1 or losses.shape[0] < 1:
        raise ValueError(f"losses must be a non-empty tensor of shape (n,), got {_shape(losses)}.")
    scores = check_scores(scores, losses.shape[0])
    _check_gamma(gamma)
    if normalize not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}.")
    weights = scores.to(device=losses.device, dtype=losses.dtype).pow(gamma)
    weighted = weights * losses
    if normalize == "count":
        return weighted.mean()
    return weighted.sum() / weights.sum().clamp(min=torch.finfo(weights.dtype).tiny)


class SaliencyWeightedLoss(nn.Module):
    """A per-pair SSL loss weighted by region saliency scores (SGCL Eq. 7-9).

    ``forward(a, b, scores)`` returns ``sum_i scores_i ** gamma * base(a, b)_i`` divided by n
    (``normalize="count"``, default) or by ``sum_i scores_i ** gamma`` (``"weight"``). With
    ``gamma=0`` it is exactly the mean of the base loss.

    Args:
        base: ``"byol"`` (:func:`byol_loss`), ``"ntxent"`` (:func:`ntxent_loss`), ``"nnclr"``
            (:func:`nnclr_loss`), or a callable ``base(a, b, **kwargs) -> Tensor[n]`` of per-sample
            losses (a batch mean, as lightly's losses return, is rejected).
        gamma: Exponent of the scores, >= 0 (paper: 0.5).
        normalize: ``"count"`` or ``"weight"``, see :func:`saliency_weighted_loss`.
        **base_kwargs: Fixed keyword arguments of the base loss, e.g. ``temperature=0.2``.

    Examples:
        >>> criterion = SaliencyWeightedLoss("byol", gamma=0.5)
        >>> p1, p2, z1, z2 = (torch.randn(8, 256) for _ in range(4))  # online preds, targets
        >>> scores = torch.rand(8)
        >>> loss = criterion(p1, z2.detach(), scores) + criterion(p2, z1.detach(), scores)
        >>> simclr = SaliencyWeightedLoss("ntxent", temperature=0.2)
        >>> loss = simclr(z1, z2, scores, image_ids=torch.arange(8) // 4)
    """

    def __init__(
        self,
        base: Union[str, BaseLoss] = "byol",
        gamma: float = 0.5,
        normalize: Normalize = "count",
        **base_kwargs: Any,
    ) -> None:
        super().__init__()
        if isinstance(base, str):
            if base not in BASE_LOSSES:
                raise ValueError(f"Unknown base loss {base!r}; choose one of {tuple(BASE_LOSSES)} or pass a callable.")
            self.base_name = base
            self.base: BaseLoss = BASE_LOSSES[base]
        elif callable(base):
            self.base_name = getattr(base, "__name__", type(base).__name__)
            self.base = base
        else:
            raise TypeError(f"base must be a name in {tuple(BASE_LOSSES)} or a callable, got {type(base).__name__}.")
        _check_gamma(gamma)
        if normalize not in NORMALIZATIONS:
            raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}.")
        try:
            signature = inspect.signature(self.base)
        except (TypeError, ValueError):  # some builtins have no signature: let the call decide
            signature = None
        if signature is not None:
            try:
                signature.bind_partial(None, None, **base_kwargs)
            except TypeError as err:
                raise TypeError(
                    f"Bad keyword arguments {sorted(base_kwargs)} for base loss {self.base_name}: {err}."
                ) from err
        self.gamma = float(gamma)
        self.normalize = normalize
        self.base_kwargs = base_kwargs

    def per_sample(self, a: Tensor, b: Tensor, **kwargs: Any) -> Tensor:
        """The unweighted (n,) base losses, checked."""
        for name, x in (("a", a), ("b", b)):
            if not isinstance(x, Tensor) or x.ndim < 1:
                raise TypeError(f"{name} must be a tensor with a batch dimension, got {_shape(x)}.")
        if a.shape[0] != b.shape[0]:
            raise ValueError(f"a and b must hold the same number of pairs, got {a.shape[0]} and {b.shape[0]}.")
        losses = self.base(a, b, **self.base_kwargs, **kwargs)
        if not isinstance(losses, Tensor):
            raise TypeError(f"Base loss {self.base_name} must return a tensor, got {type(losses).__name__}.")
        if losses.shape != (a.shape[0],):
            raise ValueError(
                f"Base loss {self.base_name} must return per-sample losses of shape ({a.shape[0]},), got "
                f"{tuple(losses.shape)}; a batch mean cannot be weighted per pair."
            )
        return losses

    def forward(self, a: Tensor, b: Tensor, scores: Tensor, **kwargs: Any) -> Tensor:
        """Weighted loss of n pairs.

        Args:
            a: (n, d) first side (BYOL: online predictions).
            b: (n, d) second side (BYOL: detached target projections).
            scores: (n,) saliency scores in [0, 1] of the regions the pairs came from.
            **kwargs: Per-call arguments of the base loss, e.g. ``image_ids`` or ``support``.

        Returns:
            A scalar.
        """
        if isinstance(a, Tensor) and a.ndim >= 1:
            n = a.shape[0]
            if isinstance(scores, Tensor) and scores.ndim == 1 and scores.shape[0] != n:
                raise ValueError(f"scores must hold one score per pair: got {scores.shape[0]} scores for {n} pairs.")
        losses = self.per_sample(a, b, **kwargs)
        return saliency_weighted_loss(losses, scores, self.gamma, self.normalize)

    def extra_repr(self) -> str:
        extra = "".join(f", {k}={v!r}" for k, v in self.base_kwargs.items())
        return f"base={self.base_name}, gamma={self.gamma}, normalize={self.normalize!r}{extra}"


# --------------------------------------------------------------------------------------------
# Inter-image loss (Eq. 10)
# --------------------------------------------------------------------------------------------


def inter_image_loss(
    pred: Tensor,
    queue: Tensor,
    scores: Tensor,
    num_neighbors: int = 5,
    gamma: float = 0.5,
    valid: Optional[Tensor] = None,
) -> Tensor:
    """Pulls each prediction toward its nearest neighbours in a memory queue (SGCL Eq. 10).

    For each online prediction ``p_i`` take the ``l = num_neighbors`` rows ``q`` of ``queue`` with
    the largest cosine similarity; the loss is
    ``sum_i sum_q P_i ** gamma * (2 - 2 cos(p_i, q)) / (n * l)``. Eq. 10 is printed as a
    similarity; as a loss it is minimised, hence ``2 - 2 cos``.

    With fewer than ``l`` usable rows the loss is a zero that still has a ``grad_fn`` (when
    ``pred`` requires grad), so ``backward()`` and DDP work unchanged while the queue fills up.

    Args:
        pred: (n, d) online predictions.
        queue: (m, d) target projections, detached (raw or normalized: rows are L2-normalized here).
        scores: (n,) saliency scores in [0, 1].
        num_neighbors: l >= 1.
        gamma: Exponent of the scores, >= 0.
        valid: Optional (m,) bool mask of the usable rows of ``queue`` (a queue that is still
            filling up); other rows are never picked. None: all rows are usable.

    Returns:
        A scalar.

    Examples:
        >>> pred, queue, scores = torch.randn(8, 256), torch.randn(100, 256), torch.rand(8)
        >>> inter_image_loss(pred, queue, scores, num_neighbors=5).shape
        torch.Size([])
    """
    _check_embeddings(pred, "pred")
    if not isinstance(queue, Tensor) or queue.ndim != 2 or queue.shape[1] != pred.shape[1]:
        raise ValueError(f"queue must have shape (m, {pred.shape[1]}) to match pred, got {_shape(queue)}.")
    n, m, k = pred.shape[0], queue.shape[0], num_neighbors
    scores = check_scores(scores, n)
    _check_num_neighbors(num_neighbors)
    _check_gamma(gamma)
    if valid is not None and (not isinstance(valid, Tensor) or valid.shape != (m,) or valid.dtype != torch.bool):
        raise ValueError(f"valid must be a bool tensor of shape ({m},), got {_shape(valid)}.")
    # NaN would rank first among the neighbours (an Inf row's cosine is NaN): refused, as the class refuses it.
    usable = queue if valid is None else queue[valid.to(queue.device)]
    for name, x in (("pred", pred.detach()), ("queue", usable)):
        if x.is_floating_point() and not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x).all(dim=1)).nonzero().flatten().tolist()
            where = " (counted among the valid rows)" if name == "queue" and valid is not None else ""
            raise ValueError(
                f"{name} contains NaN or Inf values (rows {bad[:10]}{' ...' if len(bad) > 10 else ''}{where}); "
                "the training has diverged (learning rate? fp16 overflow?)."
            )
    zero = pred[:0].sum()  # 0 with a grad_fn
    if m < k:
        return zero
    sim = F.normalize(pred, dim=1) @ F.normalize(queue.to(pred.dtype), dim=1).T
    enough: Optional[Tensor] = None
    if valid is not None:
        if not isinstance(valid, Tensor) or valid.shape != (m,) or valid.dtype != torch.bool:
            raise ValueError(f"valid must be a bool tensor of shape ({m},), got {_shape(valid)}.")
        valid = valid.to(sim.device)
        sim = sim.masked_fill(~valid[None, :], float("-inf"))
        enough = valid.sum() >= k  # stays on the device: no host sync
    top = sim.topk(k, dim=1).values
    if enough is not None:
        top = top.masked_fill(~torch.isfinite(top), 0.0)
    weights = scores.to(device=pred.device, dtype=pred.dtype).pow(gamma)
    loss = (weights[:, None] * (2 - 2 * top)).sum() / (n * k)
    if enough is not None:
        loss = torch.where(enough, loss, zero)
    return loss


def _all_gather_rows(x: Tensor) -> Tensor:
    """Concatenates the rows of ``x`` from all ranks (rank order); row counts may differ."""
    import torch.distributed as dist

    from sgcl_plugin.distributed import comm_device

    world = dist.get_world_size()
    if world == 1:
        return x
    home = x.device  # an NCCL group needs CUDA tensors even for a queue kept on the CPU
    x = x.to(comm_device(str(dist.get_backend()), x.device))
    count = torch.tensor([x.shape[0]], device=x.device)
    counts = [torch.zeros_like(count) for _ in range(world)]
    dist.all_gather(counts, count)
    sizes = [int(c.item()) for c in counts]
    padded = x.new_zeros((max(sizes), x.shape[1]))
    padded[: x.shape[0]] = x
    parts = [torch.empty_like(padded) for _ in range(world)]
    dist.all_gather(parts, padded)
    return torch.cat([p[:s] for p, s in zip(parts, sizes)], dim=0).to(home)


class FeatureQueue(nn.Module):
    """A FIFO of L2-normalized feature rows kept in buffers: the inter-image loss's memory and NNCLR's support set.

    Buffers (they move with ``.to()`` and land in ``state_dict()`` / checkpoints): ``queue``
    (size, dim), ``ptr`` (next row to write) and ``count`` (rows filled so far, at most size).
    Rows that were never written are not returned by :meth:`filled` and are masked by
    :meth:`valid` (unlike a queue that starts with random entries). ``enqueue`` does not sync with
    the host.

    Args:
        dim: Row dimension.
        size: Rows kept, oldest dropped first.
        gather_distributed: With an initialized ``torch.distributed``, ``enqueue`` first all-gathers
            the rows of all ranks (counts may differ), so every rank keeps the same queue.
    """

    queue: Tensor
    ptr: Tensor
    count: Tensor

    def __init__(self, dim: int, size: int = 4096, gather_distributed: bool = False) -> None:
        super().__init__()
        check_int("dim", dim, 1)
        check_int("The queue size", size, 1)
        self.dim = dim
        self.queue_size = size
        self.gather_distributed = gather_distributed
        self.register_buffer("queue", torch.zeros(size, dim))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.long))
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    @property
    def num_filled(self) -> int:
        """Rows filled so far (at most the size)."""
        return int(self.count.item())

    def valid(self) -> Tensor:
        """(size,) mask of the filled rows (no host sync)."""
        return torch.arange(self.queue_size, device=self.count.device) < self.count

    def filled(self) -> Tensor:
        """The filled rows in storage order (a view; all of them once the queue is full)."""
        return self.queue[: self.num_filled]

    def entries(self) -> Tensor:
        """The filled rows, oldest first (a copy, for inspection)."""
        count, ptr = int(self.count.item()), int(self.ptr.item())
        if count < self.queue_size:
            return self.queue[:count].clone()
        return torch.roll(self.queue, shifts=-ptr, dims=0)

    def reset(self) -> None:
        """Empties the queue."""
        self.queue.zero_()
        self.ptr.zero_()
        self.count.zero_()

    def _load_from_state_dict(self, state_dict: Dict[str, Any], prefix: str, *args: Any, **kwargs: Any) -> None:
        # A queue state is checked before any of it is copied: a pointer or count out of range would index
        # outside the queue, and NaN rows would rank first among the neighbours for queue_size steps.
        ptr, count, queue = (state_dict.get(prefix + k) for k in ("ptr", "count", "queue"))
        if isinstance(ptr, Tensor) and isinstance(count, Tensor) and isinstance(queue, Tensor):
            size = queue.shape[0] if queue.ndim == 2 else -1
            problems = []
            if ptr.numel() != 1 or ptr.is_floating_point() or not 0 <= int(ptr) < max(size, 1):
                problems.append(f"pointer {ptr.tolist()} is not an integer in [0, {size})")
            if count.numel() != 1 or count.is_floating_point() or not 0 <= int(count) <= size:
                problems.append(f"count {count.tolist()} is not an integer in [0, {size}]")
            elif queue.ndim == 2 and queue.is_floating_point() and not bool(torch.isfinite(queue[: int(count)]).all()):
                problems.append("its filled rows hold NaN or Inf")
            if problems:
                raise ValueError(
                    f"The queue state '{prefix.rstrip('.') or 'queue'}' is corrupt: {'; '.join(problems)}. The "
                    "checkpoint was damaged or edited; resume from another one."
                )
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def _check_rows(self, x: Any, name: str) -> None:
        _check_embeddings(x, name)
        if x.shape[1] != self.dim:
            raise ValueError(f"{name} must have shape (n, {self.dim}) (dim={self.dim}), got {tuple(x.shape)}.")
        # NaN would rank first in the neighbour search and poison the queue for queue_size steps.
        if not bool(torch.isfinite(x).all()):
            bad = (~torch.isfinite(x).all(dim=1)).nonzero().flatten().tolist()
            raise ValueError(
                f"{name} contains NaN or Inf values (rows {bad[:10]}{' ...' if len(bad) > 10 else ''}); the "
                "training has diverged (learning rate? fp16 overflow?). Nothing was added to the queue."
            )

    @torch.no_grad()
    def enqueue(self, rows: Tensor) -> None:
        """Appends rows (raw or normalized; stored L2-normalized and detached), oldest dropped first.

        With ``gather_distributed`` and an initialized ``torch.distributed``, the rows of all ranks
        are all-gathered (in rank order) first. A batch larger than the queue keeps its last rows.

        Args:
            rows: (k, dim) features (target projections, NNCLR projections).
        """
        self._check_rows(rows, "targets")
        rows = F.normalize(rows.detach(), dim=1).to(device=self.queue.device, dtype=self.queue.dtype)
        if self.gather_distributed:
            import torch.distributed as dist

            if dist.is_available() and dist.is_initialized():
                rows = _all_gather_rows(rows)
        k = rows.shape[0]
        if k > self.queue_size:  # as if written one by one: only the last queue_size rows survive
            self.ptr.copy_((self.ptr + k - self.queue_size) % self.queue_size)
            rows, k = rows[-self.queue_size :], self.queue_size
        index = (self.ptr + torch.arange(k, device=self.queue.device)) % self.queue_size
        self.queue[index] = rows
        self.ptr.copy_((self.ptr + k) % self.queue_size)
        self.count.copy_(torch.clamp(self.count + k, max=self.queue_size))

    def extra_repr(self) -> str:
        return f"dim={self.dim}, size={self.queue_size}, gather_distributed={self.gather_distributed}"


class InterImageLoss(FeatureQueue):
    """The inter-image nearest-neighbour loss with its FIFO memory queue (SGCL Eq. 10).

    The queue of target projections is a :class:`FeatureQueue` (buffers ``queue``, ``ptr``,
    ``count``, in ``state_dict()`` / checkpoints). Until ``num_neighbors`` rows are filled,
    ``forward`` returns a zero that still has a ``grad_fn``. Neither ``forward`` nor ``enqueue``
    syncs with the host.

    Args:
        dim: Dimension of predictions and targets.
        queue_size: Number of rows kept (FIFO), >= num_neighbors.
        num_neighbors: l, neighbours per prediction (paper: 5).
        gamma: Exponent of the scores, >= 0 (paper: 0.5).
        gather_distributed: With an initialized ``torch.distributed``, ``enqueue`` first all-gathers
            the targets of all ranks (batch sizes may differ), so every rank keeps the same queue.
        scale: Multiplies the loss. 1 (default) is the paper's ``2 - 2 cos`` scale, the scale of
            :func:`byol_loss`; 0.5 is the scale of a ``-cos`` loss such as lightly's
            ``NegativeCosineSimilarity`` (``-cos = (2 - 2 cos) / 2 - 1``).

    Examples:
        >>> inter = InterImageLoss(dim=256, queue_size=1024)
        >>> pred, target, scores = torch.randn(8, 256), torch.randn(8, 256), torch.rand(8)
        >>> loss = inter(pred, scores)  # zero until 5 rows are filled
        >>> inter.enqueue(target)  # after the loss: the current batch is not its own neighbour
    """

    def __init__(
        self,
        dim: int,
        queue_size: int = 4096,
        num_neighbors: int = 5,
        gamma: float = 0.5,
        gather_distributed: bool = False,
        scale: float = 1.0,
    ) -> None:
        check_int("dim", dim, 1)
        _check_num_neighbors(num_neighbors)
        check_int("queue_size (at least num_neighbors)", queue_size, num_neighbors)
        _check_gamma(gamma)
        check_number("scale", scale, 0, strict=True)
        super().__init__(dim, queue_size, gather_distributed)
        self.num_neighbors = num_neighbors
        self.gamma = float(gamma)
        self.scale = float(scale)

    def forward(self, pred: Tensor, scores: Tensor) -> Tensor:
        """The loss of n online predictions against the filled queue rows.

        Args:
            pred: (n, dim) online predictions.
            scores: (n,) saliency scores in [0, 1].

        Returns:
            A scalar (zero with a grad_fn while fewer than num_neighbors rows are filled).
        """
        self._check_rows(pred, "pred")
        loss = inter_image_loss(pred, self.queue, scores, self.num_neighbors, self.gamma, valid=self.valid())
        return loss if self.scale == 1.0 else loss * self.scale

    def extra_repr(self) -> str:
        return (
            f"dim={self.dim}, queue_size={self.queue_size}, num_neighbors={self.num_neighbors}, "
            f"gamma={self.gamma}, gather_distributed={self.gather_distributed}, scale={self.scale}"
        )
