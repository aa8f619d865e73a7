"""Errors a user can fix: each prints as one line that names the problem and the fix.

The CLI turns every :class:`UserError` into that line on stderr and exit status 2;
anything else is a bug and keeps its traceback.

Library code speaks in library terms: a message names a caller's parameter as ``$`` and
its name (``$force``, ``$out``, ``$device``, ...: the keys of TERMS; an f-string leaves a
``$`` alone, so it needs no escapes), which ``str()`` renders as the Python parameter
(``force=True``) and the CLI as its flag (``--force``), so neither reader is told about the
other's spelling.
"""

from __future__ import annotations

import re
from typing import Mapping

# each parameter a message names as $name: (library term, command-line term)
TERMS = {
    "force": ("force=True", "--force"),
    "out": ("out", "--out"),
    "device": ("device", "--device"),
    "init": ("init", "--init"),
    "resume": ("resume", "--resume"),
    "samples": ("samples", "--samples"),
    "refine": ("refine", "--refine"),
    "estimators": ("estimators", "--estimators"),
    "reference": ("reference", "--reference"),
    "vary": ("vary", "--vary"),
    "zip": ("zip_axes=True", "--zip"),
    "trust_code": ("trust_code=True", "--trust-code"),
    "n": ("n", "--n"),
    "split": ("split", "--split"),
    "seeds": ("seeds", "--seeds"),
    "condition": ("condition", "--condition"),
    "transform": ("transform", "--transform"),
}
_PARAMETER = re.compile(r"\$(" + "|".join(TERMS) + r")\b")  # any other $ is left as it is


class UserError(Exception):
    """Bad input: a spec, a data file, a run directory or a command-line argument."""

    @property
    def template(self) -> str:
        """The message with its ``$`` parameters unrendered (to pass it on, e.g. between ranks)."""
        return super().__str__()

    def render(self, terms: Mapping[str, str]) -> str:
        """The message with its ``$`` parameters spelled by ``terms``."""
        return _PARAMETER.sub(lambda m: terms[m.group(1)], self.template)

    def __str__(self) -> str:
        return self.render({name: library for name, (library, _) in TERMS.items()})

    def for_command_line(self) -> str:
        return self.render({name: flag for name, (_, flag) in TERMS.items()})


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


class Stopped(Exception):
    """SIGTERM outside training (see stops.py): the command stops at once, with nothing to
    checkpoint (exit 128 + signal)."""

    def __init__(self, signum: int):
        super().__init__(f"stopped by signal {signum}")
        self.signum = signum


class NotTraceable(Exception):
    """A component cannot run inside a traced (compiled) training step; the message says
    which and why. The trainer then steps eagerly (infer/compiled.py)."""
