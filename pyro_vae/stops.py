"""SIGINT and SIGTERM: stopping without losing anything, and without being cut short.

Two scopes, both for the main thread (elsewhere nothing is installed):

* :func:`stop_requests`, training's: a signal sets a flag that the loop reads after each
  step, where it writes a checkpoint and raises ``Interrupted``; a second SIGINT stops at
  once (KeyboardInterrupt).
* :func:`command_scope`, a command's (the CLI holds it for the whole command): outside
  training the first SIGTERM raises ``errors.Stopped`` at once, so ``finally`` blocks still
  run (a run's lock is released) and the command says so in one line instead of dying
  silently.

In both, once a stop is under way every further SIGTERM is ignored until the command
ends. It is not rare: Linux sends the parent-death signal that torchrun's workers ask
for (see ``distributed``) once for every thread of the dying launcher as its children
are handed from thread to thread, and a scheduler's SIGTERM reaches the workers both
directly and through the launcher. With the default action, the second signal would kill
the process while it writes its checkpoint, releases its lock or prints how to resume.
"""

from __future__ import annotations

import signal
import threading
from contextlib import contextmanager

from .errors import Stopped

_under_way: list[int] = []  # the signals of the stop this command is taking (main thread only)


def _main_thread() -> bool:
    return threading.current_thread() is threading.main_thread()


@contextmanager
def stop_requests():
    """Training's scope: yields the list of signals received, which the loop reads after
    each step. A second SIGINT raises KeyboardInterrupt; repeated SIGTERMs are recorded."""
    requested: list[int] = []
    if not _main_thread():
        yield requested
        return

    def handler(signum, frame):
        if requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        requested.append(signum)

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield requested
    finally:
        _under_way.extend(requested)  # the enclosing command scope ignores the repeats
        for s, h in previous.items():
            signal.signal(s, h)


@contextmanager
def command_scope():
    """A command's scope: the first SIGTERM outside training raises ``Stopped``; once
    a stop is under way (that one, or one training took), further SIGTERMs are ignored.
    The previous handler is restored on exit."""
    if not _main_thread():
        yield
        return

    def handler(signum, frame):
        if _under_way:
            return  # a stop is already being taken: let it finish
        _under_way.append(signum)
        raise Stopped(signum)

    _under_way.clear()
    previous = signal.signal(signal.SIGTERM, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
        _under_way.clear()
