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

The three live in their own modules: :mod:`sgcl_plugin.pair_losses` (the base losses),
:mod:`sgcl_plugin.weighted_loss` (the weighting) and :mod:`sgcl_plugin.inter_image_loss` (the inter-image
loss and its :class:`FeatureQueue`); this module gathers them under one name.

Gradients: no function here detaches anything. Pass the target side (BYOL's momentum projection,
the queue entries, an NNCLR support set) already detached, as BYOL, NNCLR and SGCL do.
"""

from sgcl_plugin.inter_image_loss import FeatureQueue, InterImageLoss, inter_image_loss
from sgcl_plugin.pair_losses import (
    BASE_LOSSES,
    BaseLoss,
    ImageIds,
    byol_loss,
    nearest_neighbors,
    nnclr_loss,
    ntxent_loss,
)
from sgcl_plugin.weighted_loss import (
    NORMALIZATIONS,
    Normalize,
    SaliencyWeightedLoss,
    check_scores,
    saliency_weighted_loss,
)

__all__ = [
    "BASE_LOSSES",
    "NORMALIZATIONS",
    "BaseLoss",
    "FeatureQueue",
    "ImageIds",
    "InterImageLoss",
    "Normalize",
    "SaliencyWeightedLoss",
    "byol_loss",
    "check_scores",
    "inter_image_loss",
    "nearest_neighbors",
    "nnclr_loss",
    "ntxent_loss",
    "saliency_weighted_loss",
]
