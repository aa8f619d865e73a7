"""The training loop's small collaborators, each with one job: the stop vote among the
processes (:class:`StopVote`), the progress bar and the epoch lines (:class:`Progress`),
and when a checkpoint falls due inside an epoch (:class:`CheckpointClock`)."""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Callable, Optional, Sequence

import torch
from tqdm.auto import tqdm

from ..distributed import Group

PROGRESS_EVERY = 25  # steps between the progress bar's ELBO updates (and, on CUDA, loss reads)


class StopVote:
    """After each step: the one-process loss (the mean of the ranks' losses) and whether to
    stop, which a stop requested on any rank decides for all. In one process, the loss as
    it is and whether a stop was requested here."""

    def __init__(self, group: Group):
        self.group = group

    def __call__(self, loss: Optional[float], requested: Sequence[int]) -> tuple[Optional[float], bool]:
        stop = bool(requested)
        if not self.group.active:
            return loss, stop
        totals = self.group.all_reduce_sum(torch.tensor([loss, float(stop)], dtype=torch.float64))
        # decided by the reduced flag alone: a signal landing after this all-reduce is taken
        # at the next step, so no rank enters the checkpoint's collectives without the others
        return totals[0].item() / self.group.world_size, totals[1].item() > 0


@dataclass(frozen=True)
class CheckpointClock:
    """``checkpoint_every`` steps (0: at epoch ends only): a checkpoint is due inside an epoch
    after global step ``global_step`` (counted from 1) at a multiple of ``every``, except at
    the epoch's last step, whose checkpoint the epoch's end writes."""

    every: int
    steps_per_epoch: int

    def due(self, global_step: int, step_in_epoch: int) -> bool:
        """Whether a checkpoint is due once ``global_step`` steps are done, the last of them
        step ``step_in_epoch`` (counted from 0) of its epoch."""
        return bool(self.every and global_step % self.every == 0 and step_in_epoch + 1 < self.steps_per_epoch)


class Progress:
    """The progress bar (tqdm on stderr, when shown) and, without it, about 20 epoch lines a
    run through ``log``. ``enabled``: True, False, or None for tqdm's choice (a terminal)."""

    def __init__(self, total: int, done: int, enabled: Optional[bool], log: Callable[[str], None]):
        self.bar = tqdm(total=total, initial=min(done, total), disable=(None if enabled is None else not enabled),
                        unit="step", dynamic_ncols=True, leave=False, file=sys.stderr)
        self.log = log

    def __enter__(self) -> "Progress":
        self.bar.__enter__()
        return self

    def __exit__(self, *exc) -> None:
        self.bar.__exit__(*exc)

    def step(self, epoch: int, step_in_epoch: int, steps_per_epoch: int, elbo: Callable[[], float]) -> None:
        """One step done, the ``step_in_epoch``-th (counted from 1) of epoch ``epoch``
        (counted from 1); ``elbo()``, the epoch's ELBO per example so far, is shown every
        ``PROGRESS_EVERY`` steps and at the epoch's end."""
        i = step_in_epoch - 1
        if i % PROGRESS_EVERY == 0 or step_in_epoch == steps_per_epoch:
            self.bar.set_postfix_str(f"epoch {epoch} elbo {elbo():.2f}", refresh=False)
        self.bar.update()

    def epoch(self, row: dict, epochs: int, stopped_early: bool) -> None:
        """An epoch's line, where no bar is shown: every ``epochs // 20`` epochs, the first,
        the last and the one training stopped at."""
        every = max(1, epochs // 20)
        if self.bar.disable and (row["epoch"] % every == 0 or row["epoch"] in (1, epochs) or stopped_early):
            self.log(
                f"epoch {row['epoch']:>4}/{epochs}  train_elbo {row['train_elbo']:.3f}  "
                f"val_elbo {row['val_elbo']:.3f}  kl {row['kl']:.3f}  ({row['seconds']:.2f} s)"
            )
