"""SGCL's loss of one training step: a method's saliency-weighted intra-image loss plus the inter-image loss.

One place composes Eq. 9 and Eq. 10 for BYOL, SimCLR and NNCLR, with one loss scale (the paper's:
BYOL's ``2 - 2 cos``, NT-Xent as it is) and one NNCLR definition (:func:`~sgcl_plugin.losses.nnclr_loss`).
The reference trainer, the solo-learn methods and any custom loop call :class:`SGCLObjective`;
lightly users who keep lightly's own loss units use :class:`~sgcl_plugin.adapters.lightly.SGCLLoss`.
"""

from __future__ import annotations

from typing import Any, Dict, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from sgcl_plugin.inter_image_loss import FeatureQueue, InterImageLoss
from sgcl_plugin.pair_losses import ImageIds
from sgcl_plugin.weighted_loss import Normalize, SaliencyWeightedLoss

__all__ = ["METHODS", "SGCLObjective"]

METHODS = ("byol", "simclr", "nnclr")


class SGCLObjective(nn.Module):
    """The SGCL loss of a step: ``intra`` (Eq. 9, weighted by ``P ** gamma``) + ``inter`` (Eq. 10).

    Per method, for the n = B * t region pairs of a batch (views 1 and 2 of pair i from one region):

    - ``"byol"``: ``intra = w(p1, t2) + w(p2, t1)`` with BYOL's ``2 - 2 cos`` (``p``: online
      predictions, ``t``: momentum target projections); the inter-image loss pulls ``p1`` and
      ``p2`` toward their neighbours among past targets, and ``t1, t2`` join the queue.
    - ``"simclr"``: ``intra = w(ntxent(z1, z2))``, other regions of the same image kept out of the
      negatives when ``image_ids`` is given; inter (off by default, as the paper's SGCL-SimCLR)
      on ``z1, z2``, whose detached copies join the queue.
    - ``"nnclr"``: ``intra = w(0.5 * (ntxent(NN(z1), p2) + ntxent(NN(z2), p1)))`` (``p = z`` without
      a prediction head); ``NN`` searches ``support`` when given (solo-learn's queue) or the
      objective's own :class:`~sgcl_plugin.losses.FeatureQueue` of past ``z1`` (the current
      ``z1`` while it is empty); inter on ``p1, p2`` with ``z1, z2`` queued.

    Args:
        method: ``"byol"``, ``"simclr"`` or ``"nnclr"``.
        dim: Dimension of the projections / predictions (queue rows).
        gamma: Exponent of the scores (paper: 0.5; 0 turns the weighting off).
        inter: Add the inter-image loss; default on for BYOL and NNCLR, off for SimCLR.
        temperature: NT-Xent temperature (SimCLR, NNCLR).
        queue_size: Rows of the inter-image queue.
        num_neighbors: l, neighbours per prediction in the inter-image loss (paper: 5).
        support_size: Rows of NNCLR's own support set (used when no ``support`` is passed); None: no own
            support set (the caller always passes ``support``).
        exclude_same_image: Keep other regions of the same image out of the NT-Xent negatives.
        normalize: ``"count"`` or ``"weight"`` (:func:`~sgcl_plugin.losses.saliency_weighted_loss`).
        gather_distributed: All-gather the queued rows of all ranks (``torch.distributed``).

    Attributes:
        intra: The :class:`~sgcl_plugin.losses.SaliencyWeightedLoss`.
        inter: The :class:`~sgcl_plugin.losses.InterImageLoss`, or None.
        support: NNCLR's :class:`~sgcl_plugin.losses.FeatureQueue`, or None.

    Examples:
        >>> objective = SGCLObjective("byol", dim=256)
        >>> out = objective(scores, p1=p1, p2=p2, t1=t1, t2=t2)
        >>> out["loss"].backward()  # out["intra"], out["inter"] for logging
    """

    def __init__(
        self,
        method: str,
        dim: int,
        gamma: float = 0.5,
        inter: Optional[bool] = None,
        temperature: float = 0.1,
        queue_size: int = 4096,
        num_neighbors: int = 5,
        support_size: Optional[int] = 4096,
        exclude_same_image: bool = True,
        normalize: Normalize = "count",
        gather_distributed: bool = False,
    ) -> None:
        super().__init__()
        if method not in METHODS:
            raise ValueError(f"method must be one of {METHODS}, got {method!r}.")
        self.method = method
        kwargs: Dict[str, Any] = {}
        if method != "byol":
            kwargs = dict(temperature=temperature, exclude_same_image=exclude_same_image)
        base = {"byol": "byol", "simclr": "ntxent", "nnclr": "nnclr"}[method]
        self.intra = SaliencyWeightedLoss(base, gamma=gamma, normalize=normalize, **kwargs)
        self.inter: Optional[InterImageLoss] = None
        if method != "simclr" if inter is None else inter:
            self.inter = InterImageLoss(dim, queue_size, num_neighbors, gamma, gather_distributed)
        self.support: Optional[FeatureQueue] = None
        if method == "nnclr" and support_size is not None:
            self.support = FeatureQueue(dim, support_size, gather_distributed)

    def forward(
        self,
        scores: Tensor,
        *,
        z1: Optional[Tensor] = None,
        z2: Optional[Tensor] = None,
        p1: Optional[Tensor] = None,
        p2: Optional[Tensor] = None,
        t1: Optional[Tensor] = None,
        t2: Optional[Tensor] = None,
        image_ids: Optional[ImageIds] = None,
        support: Optional[Tensor] = None,
    ) -> Dict[str, Tensor]:
        """The loss of n pairs; updates the queues (call it once per step).

        Args:
            scores: (n,) region scores in [0, 1].
            z1, z2: (n, d) projections of views 1 and 2 (SimCLR, NNCLR).
            p1, p2: (n, d) predictions (BYOL; NNCLR with a prediction head).
            t1, t2: (n, d) momentum target projections (BYOL).
            image_ids: (n,) dataset index of each pair's image (NT-Xent negatives).
            support: (m, d) NNCLR support set kept by the caller (else the objective's own).

        Returns:
            ``{"intra", "inter", "loss"}`` scalars (``inter`` is 0 without the inter-image loss).
        """
        preds: Sequence[Tensor]
        if self.method == "byol":
            p1, p2, t1, t2 = _required("byol", p1=p1, p2=p2, t1=t1, t2=t2)
            intra = self.intra(p1, t2, scores) + self.intra(p2, t1, scores)
            preds, targets = (p1, p2), torch.cat([t1, t2])
        elif self.method == "simclr":
            z1, z2 = _required("simclr", z1=z1, z2=z2)
            intra = self.intra(z1, z2, scores, image_ids=image_ids)
            preds, targets = (z1, z2), torch.cat([z1, z2]).detach()
        else:
            z1, z2 = _required("nnclr", z1=z1, z2=z2)
            own = support is None
            if own:
                if self.support is None:
                    raise ValueError("SGCLObjective('nnclr', support_size=None) needs support= at every call.")
                support = self.support.filled() if self.support.num_filled > 0 else z1.detach()
            intra = self.intra(z1, z2, scores, support=support, image_ids=image_ids, pred_a=p1, pred_b=p2)
            preds, targets = (z1 if p1 is None else p1, z2 if p2 is None else p2), torch.cat([z1, z2]).detach()
            if own:
                self.support.enqueue(z1.detach().float())  # type: ignore[union-attr]
        inter = intra.new_zeros(())
        if self.inter is not None:
            inter = sum((self.inter(p.float(), scores) for p in preds), inter)
            self.inter.enqueue(targets.float())
        return {"intra": intra, "inter": inter, "loss": intra + inter}

    def extra_repr(self) -> str:
        return f"method={self.method!r}"


def _required(method: str, **tensors: Optional[Tensor]) -> Tuple[Tensor, ...]:
    missing = [name for name, t in tensors.items() if t is None]
    if missing:
        raise ValueError(f"SGCLObjective({method!r}) needs {', '.join(tensors)}; missing {', '.join(missing)}.")
    return tuple(tensors.values())  # type: ignore[arg-type]
