"""When SGCL refreshes its saliency regions: one schedule for the trainer, the Lightning callback and lightly."""

from __future__ import annotations

from typing import Any, Dict, List, Optional

from sgcl_plugin.checks import check_int

__all__ = ["RefreshSchedule"]


def _positive_int(name: str, value: Any, minimum: int = 1) -> int:
    return check_int(name, value, minimum)


class RefreshSchedule:
    """Refresh epochs ``first_epoch, first_epoch + every_n_epochs, ...`` (0-based), each done once.

    Never epoch 0: the backbone has learnt nothing yet (the paper refreshes every 100 of 800 epochs,
    the first after 100). The state (the last refreshed epoch and a history of what each refresh
    found) goes into checkpoints, so a resumed run neither repeats a refresh nor skips one.

    Args:
        every_n_epochs: Epochs between refreshes (paper: 100 of 800; its Table 6 finds 5-20 about
            equally good in 100-epoch runs).
        first_epoch: The first refresh epoch; default ``every_n_epochs`` (a warm-up: e.g. 100, as the
            paper, with a shorter interval after it).

    Attributes:
        last_epoch: The last refreshed epoch (-1 before the first).
        history: One dict per refresh (``epoch`` and what the caller records, e.g. the bank stats).

    Examples:
        >>> schedule = RefreshSchedule(every_n_epochs=10)
        >>> for epoch in range(30):
        ...     if schedule.is_due(epoch):
        ...         pass  # refresh_bank(generator, feature_maps(model), dataset.images, bank)
        ...         schedule.mark_done(epoch, {"images": 1000.0})  # e.g. bank.stats()
        >>> [int(record["epoch"]) for record in schedule.history]
        [10, 20]
    """

    every_n_epochs: int
    first_epoch: int
    last_epoch: int
    history: List[Dict[str, float]]

    def __init__(self, every_n_epochs: int = 10, first_epoch: Optional[int] = None) -> None:
        self.every_n_epochs = _positive_int("every_n_epochs", every_n_epochs)
        if first_epoch is None:
            first_epoch = self.every_n_epochs
        try:
            check_int("first_epoch", first_epoch, 1)
        except ValueError as err:
            raise ValueError(
                f"{err} SGCL never refreshes at epoch 0, when the backbone has not learnt anything yet."
            ) from None
        self.first_epoch = int(first_epoch)
        self.last_epoch = -1
        self.history: List[Dict[str, float]] = []

    def __repr__(self) -> str:
        return (
            f"RefreshSchedule(every_n_epochs={self.every_n_epochs}, first_epoch={self.first_epoch}, "
            f"last_epoch={self.last_epoch})"
        )

    def on_schedule(self, epoch: int) -> bool:
        """Whether ``epoch`` (0-based) is a refresh epoch, done or not.

        Raises:
            ValueError: ``epoch`` is not an integer >= 0 (a float epoch or -1 would silently never refresh).
        """
        epoch = check_int("epoch", epoch, 0)
        return epoch >= self.first_epoch and (epoch - self.first_epoch) % self.every_n_epochs == 0

    def is_due(self, epoch: int) -> bool:
        """Whether ``epoch`` starts with a refresh that has not been made yet."""
        return self.on_schedule(epoch) and epoch > self.last_epoch

    def mark_done(self, epoch: int, record: Optional[Dict[str, float]] = None) -> None:
        """Records a refresh made at ``epoch`` (scheduled or not) with what it found."""
        self.last_epoch = max(self.last_epoch, int(epoch))
        self.history.append({"epoch": float(epoch), **(record or {})})

    def refreshes_before(self, epoch: int) -> int:
        """How many scheduled refreshes fall in epochs ``0 .. epoch - 1``."""
        if epoch <= self.first_epoch:
            return 0
        return (epoch - 1 - self.first_epoch) // self.every_n_epochs + 1

    def reset(self) -> None:
        """Forgets the refreshes made (a new run)."""
        self.last_epoch = -1
        self.history = []

    def state_dict(self) -> Dict[str, Any]:
        return {"last_epoch": self.last_epoch, "history": [dict(h) for h in self.history]}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        """Restores :meth:`state_dict`.

        Raises:
            TypeError: ``state`` is not a dict.
            ValueError: ``last_epoch`` is not an integer >= -1, or ``history`` not a list of dicts.
        """
        if not isinstance(state, dict):
            raise TypeError(f"A RefreshSchedule state is a dict, got {type(state).__name__}.")
        last_epoch = check_int("The schedule state's last_epoch", state.get("last_epoch", -1), -1)
        history = state.get("history", [])
        if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
            raise ValueError(f"The schedule state's history must be a list of dicts, got {history!r:.80}.")
        self.last_epoch, self.history = last_epoch, [dict(h) for h in history]
