"""The inter-image loss (SGCL Eq. 10) and its memory: a FIFO queue of feature rows.

:func:`inter_image_loss` pulls each online prediction toward its nearest neighbours in a queue of
target projections, each term weighted by ``P_i ** gamma``; :class:`FeatureQueue` is the queue (also
NNCLR's support set) and :class:`InterImageLoss` the loss with its own queue. The queue entries are
stored detached.
"""

from __future__ import annotations

from typing import Any, Dict, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from sgcl_plugin.checks import check_int, check_number
from sgcl_plugin.pair_losses import check_embeddings, shape_of
from sgcl_plugin.weighted_loss import check_gamma, check_scores

__all__ = ["FeatureQueue", "InterImageLoss", "inter_image_loss"]


def _check_num_neighbors(num_neighbors: int) -> None:
    check_int("num_neighbors (for l = 0 leave the inter-image loss out)", num_neighbors, 1)


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
    check_embeddings(pred, "pred")
    if not isinstance(queue, Tensor) or queue.ndim != 2 or queue.shape[1] != pred.shape[1]:
        raise ValueError(f"queue must have shape (m, {pred.shape[1]}) to match pred, got {shape_of(queue)}.")
    n, m, k = pred.shape[0], queue.shape[0], num_neighbors
    scores = check_scores(scores, n)
    _check_num_neighbors(num_neighbors)
    check_gamma(gamma)
    if valid is not None and (not isinstance(valid, Tensor) or valid.shape != (m,) or valid.dtype != torch.bool):
        raise ValueError(f"valid must be a bool tensor of shape ({m},), got {shape_of(valid)}.")
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
            raise ValueError(f"valid must be a bool tensor of shape ({m},), got {shape_of(valid)}.")
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
        check_embeddings(x, name)
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
        check_gamma(gamma)
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
