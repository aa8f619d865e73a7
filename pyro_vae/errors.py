"""Errors a user can fix: each prints as one line that names the problem and the fix.

The CLI turns every :class:`UserError` into that line on stderr and exit status 2;
anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input: a spec, a data file, a run directory or a command-line argument."""


class SpecError(UserError, ValueError):
    """A spec key, kind or value that cannot be used."""


class DataError(UserError, ValueError):
    """A data set that is missing, unreadable, or outside the likelihood's support."""


class RunError(UserError):
    """A run directory or checkpoint that is missing, corrupt, or would be overwritten."""


class TrainingDiverged(Exception):
    """The loss or a gradient became NaN or infinite (exit status 3 from the CLI)."""


class Interrupted(Exception):
    """Training stopped on SIGINT/SIGTERM after writing a checkpoint (exit 128 + signal)."""

    def __init__(self, signum: int, epoch: int, step: int):
        super().__init__(f"interrupted by signal {signum} in epoch {epoch} after step {step}")
        self.signum, self.epoch, self.step = signum, epoch, step
