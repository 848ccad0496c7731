"""``fit_many``: several networks trained at once, one thread (or team) each.

At batch 10 a dense network's step is too small to keep two cores fully busy
(its team of threads meets at a barrier every batch, and every thread does
some of the work alike: 1.4 times one thread on two, benchmarks/README.md), and
each network of an ensemble or of a hyper-parameter search is independent
of the others: the best use of the cores is one network on each. Each
network's ``fit`` runs in a thread of its own; its epochs run in the
compiled kernel without the GIL, so the networks train in parallel, and
only their short steps between epochs (validation, callbacks, history) take
turns on the GIL.

A network's weights and history are those of its own ``fit`` with the same
options and the same thread count: nothing is shared but the read-only
data. With more networks than threads, each takes one thread and the
networks queue, in order, for the threads; with more threads than networks,
the threads are shared out among them (a dense network at a small batch
splits its units, a convolutional one its rows). Its BLAS calls run single
threaded while several networks train (so that k networks use k cores, not
k times the BLAS's threads).

A Ctrl-C stops every network before its next batch, with the epoch that
was running rolled back (as in ``fit``), then raises KeyboardInterrupt. A
network whose ``fit`` raises stops the others the same way; ``fit_many``
then raises that error (the first one, in the list's order), with every
network's history (None for one that had none) as ``error.histories``.
"""
import contextlib
import threading
from collections.abc import Mapping, Sequence
from typing import Any, Optional

from fastnn import blas, interrupts, training
from fastnn._validation import verified_finite
from fastnn.exceptions import ConfigError
from fastnn.history import History

#: fit options that fit_many sets itself: a progress display or logging from
#: several threads at once would interleave (give each network a callback).
NOT_PER_NETWORK = ("progress", "verbose")


def fit_many(networks: Sequence[Any], X: Any, y: Any,
             each: Optional[Sequence[Mapping[str, Any]]] = None,
             **fit_options: Any) -> list[History]:
    """Train each network of `networks` on (X, y) with `fit_options` (those
    of ``Network.fit``, except ``progress`` and ``verbose``), several at
    once, and return their histories in the same order.

    `each`, if given, holds one mapping of fit options per network, applied
    over `fit_options` for that network alone: a callback that knows which
    network calls it, a learning rate per network in a search.

    Each network keeps its own seed: its shuffles, dropout masks and
    validation split are those of ``net.fit(X, y, **fit_options)`` with
    ``fastnn.blas.set_num_threads(t)``, t the threads it gets here (1 when the
    networks are at least as many as fastnn's threads): for a given seed and
    thread count, the same weights, bit for bit.
    """
    from fastnn.network import Network

    nets = list(networks) if isinstance(networks, Sequence) else None
    # (an Ensemble is a Network with members: its own fit trains them)
    if not nets or not all(isinstance(n, Network) and not hasattr(n, "members")
                           for n in nets):
        raise ConfigError("fit_many takes a non-empty list of fastnn.Network objects "
                          "(an Ensemble's fit trains its members)")
    if len({id(n) for n in nets}) != len(nets):
        raise ConfigError("fit_many: a network appears twice in the list; give each "
                          "one once (copy.deepcopy(net) for another of the same kind)")
    own = [dict(options) for options in each] if each is not None else [{} for _ in nets]
    if len(own) != len(nets):
        raise ConfigError(f"fit_many: each= has {len(own)} entries for {len(nets)} networks; "
                          f"give one mapping of fit options per network")
    refused = [k for options in [fit_options, *own] for k in NOT_PER_NETWORK if options.get(k)]
    if refused:
        raise ConfigError(f"fit_many does not take {refused[0]}=: several networks would "
                          f"write at once; pass a callback (it is given to every network)")
    fit_options = {k: v for k, v in fit_options.items() if k not in NOT_PER_NETWORK}

    threads = blas.get_num_threads()
    workers = min(len(nets), threads)
    per_network = max(1, threads // workers)
    histories: list[Optional[History]] = [None] * len(nets)
    errors: list[Optional[BaseException]] = [None] * len(nets)
    abort = threading.Event()
    queue = iter(range(len(nets)))
    queue_lock = threading.Lock()

    def worker():
        with blas.thread_budget(per_network), training.abort_on(abort):
            while not abort.is_set():
                with queue_lock:
                    i = next(queue, None)
                if i is None:
                    return
                try:
                    histories[i] = nets[i].fit(X, y, **{**fit_options, **own[i]})
                except BaseException as exc:   # handed to the calling thread
                    errors[i] = exc
                    histories[i] = getattr(nets[i], "history", None)
                    abort.set()

    done = [threading.Event() for _ in range(workers)]

    def run(k):
        try:
            worker()
        finally:
            done[k].set()

    # k networks on k cores: their BLAS calls on one thread each
    blas_limit = blas.single_threaded_blas() if workers > 1 else contextlib.nullcontext()
    # the networks check the X they share once, a pass started here that
    # reads X while they prepare (each fit waits for it before its kernels).
    # (No blas.prime here: a network whose epochs call the BLAS primes it in
    # its epoch, as fit does; the fused and units epochs never call it, and
    # a process's first prime took 5 ms of a 38 ms fit_many of two nielsen30.)
    with blas_limit, verified_finite(X, blas.scan_threads), interrupts.Deferred(abort.set) as interrupt:
        pool = [threading.Thread(target=run, args=(k,), name=f"fastnn-fit-many-{k}")
                for k in range(workers)]
        for t in pool:
            t.start()
        for event in done:
            training.wait_uninterrupted(event, abort.set)
    # the others stopped because of it: their KeyboardInterrupt is not the cause
    first = next((e for e in errors if e is not None and not isinstance(e, KeyboardInterrupt)),
                 None)
    if first is not None:
        first.histories = histories  # type: ignore[attr-defined]
        raise first
    if interrupt.received or any(e is not None for e in errors):
        interrupt.deliver()
        # the handler in place did not raise: stop all the same
        raise KeyboardInterrupt
    # nothing failed: every network has its history
    return [h for h in histories if h is not None]
