"""Ctrl-C (SIGINT) that cannot cut a training kernel or a file write short.

Python turns SIGINT into a KeyboardInterrupt raised in the main thread
between any two bytecodes. That is unsafe in two places:

- while a worker thread runs the GIL-free training kernel: an exception that
  leaves the waiting code lets the process write files from half-updated
  parameters and exit while the kernel still calls BLAS, which crashes
  (OpenBLAS's exit handler has already torn down its state: SIGSEGV in
  ``sgemm``);
- while a file is written: the write stops half-way.

`Deferred` holds SIGINT back over such a block: the signal only calls
`on_interrupt` (the trainer asks the kernel to stop after its batch) and is
remembered; after the block, `deliver()` hands it to the handler that was
there before (Python's default raises KeyboardInterrupt).

`FirstInterrupt` is the handler of the command line: the first Ctrl-C
raises KeyboardInterrupt, every later one is ignored, so that saving the
model and exiting with status 130 cannot be interrupted in turn.

Only the main thread receives signals: elsewhere, and when SIGINT is
ignored or left to the operating system's default, nothing is changed.
"""
import itertools
import signal
import threading


def _main_thread():
    return threading.current_thread() is threading.main_thread()


class Deferred:
    """``with Deferred(on_interrupt) as d:`` SIGINT within the block calls
    ``on_interrupt()`` (from the main thread) and sets ``d.received``; after
    the block, ``d.deliver()`` passes it on to the previous handler."""

    def __init__(self, on_interrupt=None):
        self.on_interrupt = on_interrupt
        self.received = False
        self._previous = None

    def _note(self, signum, frame):
        self.received = True
        if self.on_interrupt is not None:
            self.on_interrupt()

    def __enter__(self):
        if _main_thread():
            previous = signal.getsignal(signal.SIGINT)
            # SIG_IGN, SIG_DFL or a handler set from C (None): leave them be
            if callable(previous):
                self._previous = previous
                signal.signal(signal.SIGINT, self._note)
        return self

    def __exit__(self, *exc):
        if self._previous is not None:
            signal.signal(signal.SIGINT, self._previous)
        return False

    def deliver(self):
        """If a SIGINT came within the block, call the previous handler with
        it now (Python's default raises KeyboardInterrupt here)."""
        if self.received and self._previous is not None:
            self.received = False
            self._previous(signal.SIGINT, None)


class FirstInterrupt:
    """A SIGINT handler: the first SIGINT raises KeyboardInterrupt, later ones
    are ignored (so is any after `disarm`)."""

    def __init__(self):
        self._count = itertools.count()   # next() is atomic: two signals get 0 and 1
        self.fired = False
        self.armed = True

    def __call__(self, signum, frame):
        if next(self._count) == 0 and self.armed:
            self.fired = True
            raise KeyboardInterrupt

    def disarm(self):
        self.armed = False


def current_first_interrupt():
    """The FirstInterrupt handling SIGINT now, or None."""
    handler = signal.getsignal(signal.SIGINT)
    return handler if isinstance(handler, FirstInterrupt) else None


class FirstInterruptOnly:
    """``with FirstInterruptOnly():`` the block runs under a `FirstInterrupt`
    handler (a new one, or the one already installed for the whole process).
    A new one is removed afterwards unless it fired: then the process is
    about to exit, and later SIGINTs stay ignored."""

    def __enter__(self):
        self.handler, self._previous = current_first_interrupt(), None
        if self.handler is None and _main_thread():
            previous = signal.getsignal(signal.SIGINT)
            if callable(previous):
                self.handler, self._previous = FirstInterrupt(), previous
                signal.signal(signal.SIGINT, self.handler)
        return self

    def disarm(self):
        """Ignore every SIGINT from now on, before the block ends (its
        handler stays in place until then)."""
        if self.handler is not None:
            self.handler.disarm()

    def __exit__(self, *exc):
        if self.handler is not None:
            self.handler.disarm()
            if self._previous is not None and not self.handler.fired:
                signal.signal(signal.SIGINT, self._previous)
        return False


def own_sigint_until_exit():
    """For a program's own command line: SIGINT is handled by a
    `FirstInterrupt` from now on. Returns a function to call on the way out,
    which ignores SIGINT at the OS level for the rest of the process (at
    exit, Python hands a SIGINT it handled back to the default, which would
    kill the process by the signal)."""
    if not _main_thread() or not callable(signal.getsignal(signal.SIGINT)):
        return lambda: None
    signal.signal(signal.SIGINT, FirstInterrupt())
    return lambda: signal.signal(signal.SIGINT, signal.SIG_IGN)
