"""Saliency weighting of per-pair losses (SGCL Eq. 7-9): ``sum_i P_i ** gamma * L_i`` over a normalizer.

``P_i`` in [0, 1] is the saliency score of the region pair i was cropped from. :func:`saliency_weighted_loss`
reduces (n,) losses so; :class:`SaliencyWeightedLoss` wraps a base loss of :mod:`sgcl_plugin.pair_losses` (or
any callable returning per-sample losses) and does both. The weights are constants of the step:
:func:`check_scores` detaches them.
"""

from __future__ import annotations

import inspect
from typing import Any, Literal, Union

import torch
from torch import Tensor, nn

from sgcl_plugin.checks import check_not_meta, check_number
from sgcl_plugin.pair_losses import BASE_LOSSES, BaseLoss, shape_of

__all__ = [
    "NORMALIZATIONS",
    "Normalize",
    "SaliencyWeightedLoss",
    "check_gamma",
    "check_scores",
    "saliency_weighted_loss",
]

Normalize = Literal["count", "weight"]
NORMALIZATIONS = ("count", "weight")


def check_gamma(gamma: float) -> None:
    """Raises a ValueError unless ``gamma``, the exponent of the scores, is a number >= 0."""
    check_number("gamma (0 turns the saliency weighting off)", gamma, 0)  # numpy scalars too


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
        raise ValueError(f"losses must be a non-empty tensor of shape (n,), got {shape_of(losses)}.")
    scores = check_scores(scores, losses.shape[0])
    check_gamma(gamma)
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
        check_gamma(gamma)
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
                raise TypeError(f"{name} must be a tensor with a batch dimension, got {shape_of(x)}.")
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
