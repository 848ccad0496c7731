"""The training loop behind ``Network.fit``.

``fit`` checks every option here, once, then runs epochs: each epoch is one
call of the backend's ``train_epoch`` (the compiled kernel runs it without
the GIL), made from a worker thread so the calling thread stays free to
show progress and to turn Ctrl-C into a stop between two batches. Between
epochs come validation, the learning-rate schedule, early stopping and the
callback.
"""
import contextlib
import functools
import math
import numbers
import statistics
import sys
import threading
import time
import weakref
from dataclasses import dataclass
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Concatenate, Optional, ParamSpec, TypeVar

import numpy as np

from fastnn import _kernels, blas, interrupts, memory
from fastnn._kernels import AUGMENTATIONS
from fastnn.callbacks import Callback, EarlyStopping, _Monitor, logger, verbose_logging
from fastnn._validation import MAX_COUNT, check_finite, check_X, nonnegative_float, positive_int
from fastnn.exceptions import ConfigError, DataError, NetworkBusy, TrainingDiverged, lookup
from fastnn.history import History
from fastnn.losses import get_loss
from fastnn.optimizers import OptimizerState, get_optimizer, hyper_array
from fastnn.schedules import parse as parse_schedule
# the network is a Model: Network imports this module (it is fit's loop)
from fastnn.modelfile import Model

# The optimizers that take betas and eps.
ADAM_LIKE = ("adam", "adamw")
# torch.optim.AdamW's default weight decay.
DEFAULT_WEIGHT_DECAY = 0.01
# Entries of a training workspace to aim at (128 MiB of float32): bounds the
# rows of a chunk of a convolutional net; dense nets stay at MAX_CHUNK rows.
TRAIN_BUDGET = 32 * 1024 * 1024
#: Metrics that measure time, not the model: in History, not in model files.
TIMINGS = ("seconds",)


@dataclass
class Options:
    """Every training option, checked. See Network.fit for their meaning."""

    epochs: int
    batch_size: int
    lr: float
    shuffle: bool
    optimizer: str
    momentum: float
    betas: tuple
    eps: float
    l2: float
    l1: float
    dropout: list
    lr_schedule: object
    early_stopping: int
    augment: str
    validation_split: float
    weight_decay: float = 0.0
    clip_norm: object = None        # float or None
    restore_best: bool = False

    def record(self):
        """The options as JSON-ready values, for model files."""
        record = {"epochs": self.epochs, "batch_size": self.batch_size, "lr": self.lr,
                  "shuffle": self.shuffle, "optimizer": self.optimizer}
        if self.optimizer in ("momentum", "nesterov"):
            record["momentum"] = self.momentum
        if self.optimizer in ADAM_LIKE:
            record.update(betas=list(self.betas), eps=self.eps)
        if self.optimizer == "adamw":
            record["weight_decay"] = self.weight_decay
        if self.clip_norm is not None:
            record["clip_norm"] = self.clip_norm
        return {**record, "l2": self.l2, "l1": self.l1, "dropout": self.dropout,
                "lr_schedule": self.lr_schedule.spec(), "early_stopping": self.early_stopping,
                "augment": self.augment, "validation_split": self.validation_split,
                "restore_best": self.restore_best}


def check_options(net, n_train, *, epochs, batch_size, lr, shuffle, optimizer, momentum, betas,
                  eps, l2, l1, dropout, lr_schedule, early_stopping, augment, validation_split,
                  has_validation, weight_decay=None, clip_norm=None, restore_best=False):
    """Options from fit's arguments, or ConfigError naming the bad one."""
    opt = get_optimizer(optimizer)
    epochs = positive_int(epochs, "epochs", minimum=0, maximum=MAX_COUNT)
    if batch_size is None:
        batch_size = n_train if opt.full_batch else 10
    batch_size = positive_int(batch_size, "batch_size", maximum=MAX_COUNT)
    if opt.full_batch and batch_size < n_train:
        raise ConfigError(f"{opt.name} is a full-batch method: leave batch_size unset "
                          f"(or set it to the {n_train} training samples), not {batch_size}")
    lr = opt.default_lr if lr is None else nonnegative_float(lr, "lr", allow_zero=False)
    if momentum is not None and opt.name not in ("momentum", "nesterov"):
        raise ConfigError(f"momentum applies to optimizer 'momentum' or 'nesterov', not {opt.name!r}")
    momentum = nonnegative_float(0.9 if momentum is None else momentum, "momentum", below=1)
    for name, value in (("betas", betas), ("eps", eps)):
        if value is not None and opt.name not in ADAM_LIKE:
            raise ConfigError(f"{name} applies to optimizer 'adam' or 'adamw', not {opt.name!r}")
    if weight_decay is not None and opt.name != "adamw":
        raise ConfigError(f"weight_decay applies to optimizer 'adamw', not {opt.name!r} "
                          f"(l2 is the penalty for the others)")
    weight_decay = nonnegative_float(DEFAULT_WEIGHT_DECAY if weight_decay is None
                                     else weight_decay, "weight_decay")
    if clip_norm is not None:
        if opt.name == "rprop":
            raise ConfigError("clip_norm does not apply to optimizer 'rprop' (its steps use only "
                              "the gradient's signs); use sgd, momentum, nesterov, adam or adamw")
        clip_norm = nonnegative_float(clip_norm, "clip_norm", allow_zero=False)
    betas = (0.9, 0.999) if betas is None else betas
    try:
        betas = tuple(nonnegative_float(b, "betas", below=1) for b in betas)
    except TypeError:
        raise ConfigError(f"betas must be a pair of numbers in [0, 1), not {betas!r}") from None
    if len(betas) != 2:
        raise ConfigError(f"betas must be a pair of numbers in [0, 1), not {betas!r}")
    eps = nonnegative_float(1e-8 if eps is None else eps, "eps", allow_zero=False)
    l2 = nonnegative_float(l2, "l2")
    l1 = nonnegative_float(l1, "l1")
    dropout = _dropout_rates(dropout, len(net.plan.hidden_dense),
                             "hidden layer" if net.plan.plain_dense else "hidden Dense layer")
    if early_stopping is not None:
        early_stopping = positive_int(early_stopping, "early_stopping", maximum=MAX_COUNT)
        if not has_validation:
            raise ConfigError("early_stopping watches the validation loss: give validation_data "
                              "or validation_split")
    if augment is not None:
        lookup(AUGMENTATIONS, "augment", augment)
        image_shape(net)
    if restore_best and not has_validation:
        raise ConfigError("restore_best selects the epoch by its validation accuracy: give "
                          "validation_data or validation_split")
    return Options(epochs, batch_size, lr, bool(shuffle), opt.name, momentum, betas, eps, l2, l1,
                   dropout, parse_schedule(lr_schedule), early_stopping, augment,
                   validation_split, weight_decay if opt.name == "adamw" else 0.0, clip_norm,
                   bool(restore_best))


def image_shape(net):
    """The (H, W, C) of the network's input images, for shift augmentation: its
    input shape, or for a vector input of a square number n, (sqrt n, sqrt n, 1)."""
    if net.plan.image_shape is not None:
        return net.plan.image_shape
    n = net.sizes[0]
    side = round(math.sqrt(n))
    if side * side != n:
        raise ConfigError(f"augment='shift' needs square images, but the network takes {n} "
                          f"inputs; give its input shape, e.g. Network([(28, 28, 1), ...])")
    return (side, side, 1)


def _dropout_rates(dropout, n_hidden, noun="hidden layer"):
    rates = [dropout] * n_hidden if isinstance(dropout, numbers.Real) else list(dropout)
    if len(rates) != n_hidden:
        raise ConfigError(f"dropout takes one rate, or one per {noun} ({n_hidden}), "
                          f"not {len(rates)}")
    rates = [nonnegative_float(p, "dropout", below=1) for p in rates]
    if isinstance(dropout, numbers.Real) and dropout > 0 and n_hidden == 0:
        raise ConfigError(f"dropout applies to the outputs of {noun}s, and this network has "
                          f"none" + ("" if noun == "hidden layer" else "; add Dropout layers"))
    return rates


def split_validation(X, Y, labels, weights, validation_data, validation_split, net):
    """(train, validation) data: validation_data, or a fraction of the rows
    drawn with the network's seed, stratified by class (validation_rows)."""
    if validation_data is not None and validation_split:
        raise ConfigError("give validation_data or validation_split, not both")
    if validation_data is not None:
        try:
            X_val, y_val = validation_data
        except (TypeError, ValueError):
            raise ConfigError("validation_data must be a pair (X_val, y_val)") from None
        X_val = net.kernel_inputs(X_val, "X_val")
        Y_val, labels_val = net.kernel_targets(X_val, y_val, "y_val", one_hot=False)
        return (X, Y, labels, weights), (X_val, Y_val, labels_val)
    if not validation_split:
        return (X, Y, labels, weights), None
    split = nonnegative_float(validation_split, "validation_split", below=1)
    held = validation_rows(len(X), split, labels, net.seed)
    if held is None:
        raise ConfigError(f"validation_split={split:g} of {len(X)} samples leaves one side empty")
    kept = np.ones(len(X), bool)
    kept[held] = False
    part = np.flatnonzero(kept)
    # (Y None: labels that the kernels and evaluate_rows make one-hot)
    val = (X[held], None if Y is None else Y[held], None if labels is None else labels[held])
    return (X[part], None if Y is None else Y[part], None if labels is None else labels[part],
            None if weights is None else weights[part]), val


def validation_rows(n, split, labels, seed):
    """The sorted rows held out for validation_split: a fraction `split` of
    n rows drawn with the network's seed; with class labels, that fraction
    of each class (rounded so that the total is round(n * split), each
    class keeping one training row where it can). None if a side is empty."""
    n_val = int(round(n * split))
    if n_val < 1 or n_val >= n:
        return None
    rng = np.random.default_rng([seed, 0x5EED])     # not the stream that shuffles epochs
    if labels is None:
        return np.sort(rng.permutation(n)[:n_val])
    classes, inverse = np.unique(labels, return_inverse=True)
    counts = np.bincount(inverse, minlength=len(classes))
    # largest remainders: each class's share of n_val, summing to n_val
    share = counts * (n_val / n)
    take = np.floor(share).astype(np.int64)
    order = np.argsort(-(share - take), kind="stable")
    take[order[:n_val - take.sum()]] += 1
    take = np.minimum(take, np.maximum(counts - 1, 0))
    rows = [rng.permutation(np.flatnonzero(inverse == c))[:take[c]] for c in range(len(classes))]
    held = np.sort(np.concatenate(rows)) if rows else np.empty(0, np.int64)
    return held if 0 < len(held) < n else None


def sample_weights(sample_weight, class_weight, labels, n, n_outputs):
    """Per-sample weights from sample_weight and class_weight, or None."""
    w = None
    if sample_weight is not None:
        w = np.asarray(sample_weight, dtype=np.float64)
        if w.shape != (n,):
            raise DataError(f"sample_weight needs shape ({n},), not {w.shape}")
        check_finite(w[:, None], "sample_weight")
        if (w < 0).any():
            raise DataError(f"sample_weight has a negative weight at row {int(np.argmax(w < 0))}")
    if class_weight is not None:
        if labels is None:
            raise ConfigError("class_weight needs class labels (or one-hot targets)")
        n_classes = max(n_outputs, 2)
        if isinstance(class_weight, str):
            if class_weight != "balanced":
                raise ConfigError(f"class_weight must be a dict or 'balanced', not {class_weight!r}")
            counts = np.bincount(labels, minlength=n_classes).astype(np.float64)
            present = counts > 0
            table = np.ones(n_classes)
            table[present] = n / (present.sum() * counts[present])
        elif isinstance(class_weight, dict):
            table = np.ones(n_classes)
            for label, weight in class_weight.items():
                if not isinstance(label, numbers.Integral) or not 0 <= label < n_classes:
                    raise ConfigError(f"class_weight has label {label!r}; labels are 0..{n_classes - 1}")
                table[label] = nonnegative_float(weight, f"class_weight[{label}]")
        else:
            raise ConfigError(f"class_weight must be a dict or 'balanced', not {class_weight!r}")
        w = table[labels] if w is None else w * table[labels]
    if w is not None and not w.any():
        raise DataError("the sample weights are all zero")
    return w


def run_epoch(kernel, args, control, on_tick=None):
    """Run kernel(**args) in a worker thread; the calling thread calls
    on_tick() about ten times a second meanwhile.

    A Ctrl-C (SIGINT) in the meantime does not raise: it asks the kernel to
    stop before its next batch (see fastnn.interrupts). Whatever happens (a
    Ctrl-C, an exception from on_tick), the kernel has returned before this
    function does: nothing touches the parameters, and no BLAS call runs,
    once it has returned or raised. That is what makes it safe to write a
    model file or to exit afterwards (an exit under a running kernel crashes
    in OpenBLAS).

    Returns (result, interrupt): interrupt.received says whether a Ctrl-C
    came, and interrupt.deliver() passes it on (KeyboardInterrupt by default).
    """
    out = {}
    done = threading.Event()
    abort = getattr(_abort, "event", None)

    def stop():
        control[_kernels.STOP_REQUEST] = 1

    def target():
        try:
            out["result"] = kernel(**args)
        except BaseException as exc:  # handed to the calling thread
            out["error"] = exc
        finally:
            done.set()

    # Completion is an Event, not Thread.join(): a KeyboardInterrupt inside
    # join() can leave is_alive() False while the thread still runs. The
    # thread is not a daemon: the interpreter never exits under it.
    worker = threading.Thread(target=target, name="fastnn-epoch")
    started = False
    if abort is not None and abort.is_set():
        stop()      # an epoch shorter than a tick: stopped before its first batch
    with interrupts.Deferred(stop) as interrupt:
        try:
            worker.start()
            started = True
            while not done.is_set():
                if not done.wait(0.1):
                    if abort is not None and abort.is_set():
                        stop()
                    elif on_tick is not None:
                        on_tick()
        finally:
            if started and not done.is_set():
                stop()
                wait_uninterrupted(done, stop)
    if "error" in out:
        raise out["error"]
    return out["result"], interrupt


_abort = threading.local()  # .event: an Event that stops this thread's epochs (abort_on)


@contextlib.contextmanager
def abort_on(event):
    """Within this block, the epochs that this thread runs stop before their
    next batch once `event` is set, as on a Ctrl-C (the epoch is rolled
    back and fit raises KeyboardInterrupt): how fit_many stops the fits that
    run in its threads, where no signal arrives."""
    previous = getattr(_abort, "event", None)
    _abort.event = event
    try:
        yield
    finally:
        _abort.event = previous


def wait_uninterrupted(done, stop):
    """Wait for done; a KeyboardInterrupt meanwhile (there can be one only
    where SIGINT is not deferred) stops the kernel and is raised afterwards."""
    interrupted = False
    while True:
        try:
            if done.wait(0.1):
                break
        except KeyboardInterrupt:
            interrupted = True
            stop()
    if interrupted:
        raise KeyboardInterrupt


_training: "weakref.WeakSet[Any]" = weakref.WeakSet()   # networks a fit call is training now
_training_guard = threading.Lock()


_Net = TypeVar("_Net")
_P = ParamSpec("_P")
_R = TypeVar("_R")


def one_fit_at_a_time(
        fit: "Callable[Concatenate[_Net, _P], _R]") -> "Callable[Concatenate[_Net, _P], _R]":
    """Decorates Network.fit: a second fit of the same network, from another
    thread, gets NetworkBusy at once instead of racing the first over its
    parameters and optimizer state (a lock taken without blocking). Typed
    with a ParamSpec, so that type checkers see fit's own signature."""
    @functools.wraps(fit)
    def exclusive_fit(net: _Net, *args: _P.args, **kwargs: _P.kwargs) -> _R:
        with _training_guard:
            if net in _training:
                raise NetworkBusy("this Network is being trained by another fit call (in "
                                  "another thread); train one at a time, or a copy "
                                  "(copy.deepcopy(net))")
            _training.add(net)
        try:
            return fit(net, *args, **kwargs)
        finally:
            with _training_guard:
                _training.discard(net)
    return exclusive_fit


#: Rows of a batch for each thread of a team that splits units, by the
#: instruction set of smallgemm's kernels: a thread with fewer rows waits at
#: the barriers longer than it computes (benchmarks/README.md, "Small
#: batches"). With AVX2 (Zen 1) two threads won from 10 rows; the AVX-512
#: kernel does a batch's products in half the time, and on an Emerald Rapids
#: two threads against one, paired in one process, 7 rounds, were at the
#: median 1.00x on [784, 30, 10] at batch 10, 0.54x on [784, 100, 10] at 10,
#: 0.63x on [784, 30, 10] at 20 and 0.86x on [784, 256, 128, 10] at 32.
ROWS_PER_UNITS_THREAD = {"avx2": 5, "avx512": 16}


def rows_per_units_thread():
    """ROWS_PER_UNITS_THREAD for the kernels this process runs."""
    from fastnn import _core

    return ROWS_PER_UNITS_THREAD.get(_core.small_gemm_isa(), ROWS_PER_UNITS_THREAD["avx2"])


def fused_team(net, table, keep, optimizer, hyper, batch_size, chunk, augment):
    """The most threads that _core.train_fused_impl's epoch (small batches of
    a float32 dense network, plain SGD, on fusedgemm.h's and smallgemm.h's
    kernels: up to 64 rows, with AVX-512 or AVX2) splits a batch among, by
    columns of its first layer; 0 where a team would not take it."""
    if not compiled_float32_dense(net):
        return 0
    return net.kernels.fused_team(table, chunk, keep, optimizer, hyper, batch_size, augment)


def compiled_float32_dense(net):
    """Whether net is a float32 dense network on the compiled kernels: the
    networks that may take fastnn's own small-batch epochs
    (train_fused_impl, train_units_impl) and the team that splits an Adam
    step. A bfloat16 network is not: its products go through
    _core.gemm_bf16."""
    return net.backend == "cython" and not net.plan.spatial and net.compute_dtype == "float32"


def team_threads(net, units=False, batch_size=1, fused=0, costly_step=False):
    """Threads that share each batch of an epoch, each with a
    single-threaded BLAS: fastnn's threads for a network with convolution
    or pooling layers (much of whose work is outside the GEMMs), and for a
    float32 dense network whose optimizer's step is costly (`costly_step`:
    Adam's square root and division per parameter, which the team splits
    too, where one thread would take the whole step while the BLAS's other
    threads wait), these two splitting its rows (`team_slices`). For a
    dense network whose batches the fused epoch splits by the first layer's
    columns (`fused`, see `fused_team`), up to `fused` of fastnn's threads;
    for one whose batches the kernel splits by units (`units`, see
    `splits_units`), one for every rows_per_units_thread() rows of a batch,
    up to fastnn's threads; for another dense network one, whose GEMMs use
    the BLAS's threads (see benchmarks/README.md, and
    `epoch_blas_threads`). A team takes idle cores only
    (`blas.idle_cores_settled`): it meets at a barrier after every step, so
    it goes at the pace of a thread that shares its core. Its weights do
    not depend on how many threads it took."""
    most = _team_most(net, units, batch_size, fused, costly_step)[0]
    # the looks at the idle cores (up to 4 ms when one is busy) only where a
    # team could form: not at one thread (a GridSearchCV worker's share)
    return 1 if most <= 1 else max(1, min(most, blas.idle_cores_settled()))


def team_slices(net, units=False, batch_size=1, fused=0, costly_step=False):
    """The slices each batch's rows are cut into by a team that splits rows
    (see `team_threads`), or 0 where no such team trains: the team's
    threads on an idle machine (fastnn's threads), however many take them
    now. The kernel sums the slices'
    gradients in order, so the weights are the same bits whatever else the
    machine runs; they differ from one slice's (`--threads 1`) in the last
    bits. (A fused or units team's weights are one thread's.)"""
    most, rows = _team_most(net, units, batch_size, fused, costly_step)
    return max(1, most) if rows else 0


def _team_most(net, units, batch_size, fused, costly_step):
    """(the most threads a team of this epoch takes, whether it splits rows)."""
    rows_team = net.plan.spatial or (costly_step and compiled_float32_dense(net))
    if net.backend != "cython" or not (rows_team or units or fused):
        return 1, False
    most = blas.get_num_threads()
    if fused:
        return min(most, fused), False
    if units:
        return min(most, batch_size // rows_per_units_thread()), False
    return most, True


class TeamPace:
    """Whether a team that splits units trains faster than one thread on
    this machine now, measured epoch by epoch (its weights are the same bit
    for bit, so the choice changes nothing else).

    The team meets at a barrier after every layer of every batch, so it goes
    at the pace of its slowest thread; on a shared or virtualised machine
    the other core may be busy or descheduled for a while, and the team is
    then slower than one thread. [784, 30, 10] at batch 10 on 2 vCPUs
    (AMD EPYC, benchmarks/README.md): one thread 181,000-189,000 samples/s,
    the team 150,000-168,000 in one run, 178,000-296,000 in another.

    For each shape, batch size and team, the team runs until RATES of its
    epochs are counted (it forms only on idle cores: `team_threads`), then
    one thread until one of its epochs is (samples/s of the kernel's epoch);
    then each epoch takes the faster by the median of their last RATES
    epochs, and every PROBE_EVERY-th epoch measures the other again, as the
    machine changes. The rates are kept for the process, so that short fits
    learn too. The first epoch of each is not counted: it pays for cold
    caches and cores (a fused team's first epoch of [784, 30, 10] ran at
    756,000 samples/s, its next ones at 1.3 million, one thread at 0.9
    million).
    """

    RATES = 3
    PROBE_EVERY = 8

    def __init__(self):
        self._lock = threading.Lock()
        self._rates = {}        # key -> {threads: [samples/s of the last epochs]}
        self._epochs = {}       # key -> epochs chosen so far
        self._warm = set()      # (key, threads) whose first epoch has run

    def threads(self, key, team):
        """The threads to run the next epoch with: `team` or 1."""
        with self._lock:
            rates = self._rates.get(key, {})
            if len(rates.get(team, ())) < self.RATES:
                return team
            if 1 not in rates:
                return 1
            fast, slow = ((team, 1) if statistics.median(rates[team])
                          >= statistics.median(rates[1]) else (1, team))
            self._epochs[key] = self._epochs.get(key, 0) + 1
            return slow if self._epochs[key] % self.PROBE_EVERY == 0 else fast

    def record(self, key, threads, rate):
        """An epoch of `threads` ran at `rate` samples/s."""
        with self._lock:
            if (key, threads) not in self._warm:
                self._warm.add((key, threads))
                return
            last = self._rates.setdefault(key, {}).setdefault(threads, [])
            last.append(rate)
            del last[:-self.RATES]


#: The process's measurements of units teams against one thread.
TEAM_PACE = TeamPace()


#: Multiply-adds of an epoch's forward (rows x parameters) from which the look
#: at the idle cores for the BLAS's threads is settled (`epoch_blas_threads`):
#: at 2**31 the epoch's products take at least ~25 ms on 2 cores, so the
#: looks' cost, 0.2 ms as a rule and at most 4.2 ms where a core stays busy,
#: stays under a tenth of it even then.
SETTLED_LOOK_WORK = 1 << 31


def epoch_blas_threads(team, settled=False):
    """The BLAS's threads for an epoch, set by the thread that called fit
    (threadpoolctl lets only one thread set OpenBLAS's limits: a worker's
    would do nothing): one for each thread of a team; for a team of one, at
    most the idle cores. OpenBLAS's threads also wait for each other at
    every product: next to nice-19 jobs, [784, 256, 128, 10] at batch 64
    took 7.7-11.9 s for 20,000 rows on two threads and 2.5 s on one.

    `settled` (a long epoch: `SETTLED_LOOK_WORK`) takes the most idle cores
    of a few looks (`blas.idle_cores_settled`), not one: a kernel thread
    running for some microseconds shows as a busy core in a single look,
    and the whole epoch then ran on one BLAS thread. On 2 vCPUs of an AMD
    EPYC (Zen 5), one-epoch fits of [784, 1024, 1024, 10] at batch 256 ran
    at 20,000-23,500 samples/s in about one of four (9 of 32 in one
    comparison), against 31,000-44,500 (2026-12-07, benchmarks/README.md)."""
    if team > 1:
        return blas.single_threaded_blas()
    return blas.blas_threads_at_most(blas.idle_cores_settled() if settled
                                     else blas.idle_cores())


def splits_units(net, table, optimizer, hyper, batch_size, chunk):
    """Whether the kernel's team splits every layer's units among its threads
    (_core.train_units_impl: small batches of a float32 dense network, plain
    SGD; the parameters are the same for any number of threads; see
    compiled_float32_dense)."""
    return (compiled_float32_dense(net)
            and bool(net.kernels.units_threads(table, chunk, optimizer, hyper, batch_size)))


def chunk_rows(plan, batch_size, n):
    """Rows of a training chunk: a batch larger than this is done in chunks
    whose gradients add up. At most MAX_CHUNK, and fewer when the rows are
    wide (a convolutional net's), so the workspace stays about
    TRAIN_BUDGET entries."""
    per_row = 2 * sum(plan.widths())        # activations and deltas
    return max(1, min(batch_size, n, _kernels.MAX_CHUNK, TRAIN_BUDGET // per_row))


class Trainer:
    """One call of Network.fit."""

    def __init__(self, net, train, val, options, callback=None, progress=None, verbose=0,
                 callbacks=()):
        self.net = net
        self.callbacks = list(callbacks)
        self.X, self.Y, self.labels, weights = train
        self.val = val
        self.options = options
        self.callback = callback
        self.progress = progress
        self.verbose = verbose
        dtype = net.dtype
        self.sample_weight = (np.empty(0, dtype) if weights is None
                              else np.ascontiguousarray(weights, dtype=dtype))
        opt = get_optimizer(options.optimizer)
        n = len(self.X)
        # a batch beyond the data is one batch of all of it
        batch_size = min(options.batch_size, n)
        table, keep = net.plan.table(
            options.dropout, image_shape(net) if options.augment == "shift" else None)
        chunk = chunk_rows(net.plan, batch_size, n)
        units = splits_units(net, table, opt.code, self._hyper(1.0), batch_size, chunk)
        augment = AUGMENTATIONS.get(options.augment, _kernels.NO_AUGMENT)
        fused = fused_team(net, table, keep, opt.code, self._hyper(1.0), batch_size, chunk,
                           augment)
        self.threads = threads = team_threads(net, units, batch_size, fused, opt.costly_step)
        slices = team_slices(net, units, batch_size, fused, opt.costly_step) or threads
        # a fused or units team shares one chunk and gives the same weights
        # as one thread (TEAM_PACE picks the faster of the two each epoch);
        # one that splits rows gives each thread a chunk of its own
        one_chunk = units or fused > 0
        self.pace = ((tuple(net.sizes), tuple(net.activations), batch_size, threads)
                     if one_chunk and threads > 1 else None)
        # the fused and units epochs make no BLAS call: no buffer to prime (the
        # first prime of a process took 2.7 ms, a tenth of a small fit)
        self.calls_blas = not one_chunk
        self.settled_look = n * net.n_params >= SETTLED_LOOK_WORK
        # (a team that splits rows: each slice's chunks, whatever the threads)
        capacity = chunk if one_chunk else -(-chunk // slices)
        kernels = net.kernels
        bf16 = net.compute_dtype == "bfloat16"
        work_size = kernels.workspace_size(table, capacity, keep, slices, bf16=bf16)
        memory.check_fits(
            memory.training_bytes(net.plan, net.dtype.itemsize, opt.state_rows, work_size,
                                  capacity * slices, n),
            f"training {memory.describe(net.plan)} with {opt.name}",
            "use smaller layers or images")
        current = net.optimizer_state
        # the state as new_state made it, until an epoch is recorded: a
        # rollback then makes it anew instead of copying it back (a copy of
        # wide's 1.9 million entries before the epoch was 1 % of a one-epoch
        # fit). Not with callbacks, whose on_train_begin sees the network
        # first.
        self.new_state = None
        if current is None or current.name != opt.name or current.state.shape[1] != net.n_params:
            net.optimizer_state = OptimizerState(opt.name, opt.new_state(net.n_params, dtype, options.lr))
            if not self.callbacks:
                self.new_state = functools.partial(opt.new_state, net.n_params, dtype, options.lr)
        self.opt_state = net.optimizer_state
        self.control = np.zeros(_kernels.N_CONTROL, dtype=np.int64)
        # labels without Y (check_targets' one_hot=False): the kernel makes each
        # chunk's one-hot rows as it gathers them (no n x outputs array)
        targets = (dict(Y=self.Y) if self.Y is not None else
                   dict(Y=np.empty((0, net.sizes[-1]), dtype), labels=self.labels))
        self.args = dict(
            X=self.X, **targets, order=np.arange(n, dtype=np.int64), params=net.flat_params,
            state=self.opt_state.state, table=table, keep=keep, slope=net.slope,
            loss=get_loss(net.loss).code, batch_size=batch_size, capacity=capacity,
            optimizer=opt.code, hyper=None, sample_weight=self.sample_weight,
            augment=augment, seed=0,
            work=np.empty(work_size, dtype=dtype),
            control=self.control, n_threads=threads, bf16=bf16, slices=slices)
        self.snapshot = np.empty_like(net.flat_params)

    def _hyper(self, lr):
        o, n = self.options, len(self.X)
        return hyper_array(lr, o.l2 / n, o.l1 / n, o.momentum, o.betas, o.eps, o.weight_decay,
                           o.clip_norm)

    def penalty(self):
        """(lambda2/2n) sum w^2 + (lambda1/n) sum |w| for the current weights."""
        o, n = self.options, len(self.X)
        if not (o.l2 or o.l1):
            return 0.0
        total = 0.0
        for W in self.net.weights:
            W = W.astype(np.float64, copy=False)
            total += o.l2 / (2 * n) * float(np.vdot(W, W)) + o.l1 / n * float(np.abs(W).sum())
        return total

    def epoch(self, lr, hist, schedule):
        """Train one epoch at rate lr and record it (history, epoch count,
        schedule). Returns (metrics, status, the next epoch's rate).

        The epoch happens entirely or not at all: a Ctrl-C is held back from
        the kernel's start until the epoch is recorded, and on a Ctrl-C
        before that, a divergence or an exception, the parameters and the
        optimizer go back to the start of the epoch, from where a resumed
        run continues exactly as an uninterrupted one would.
        """
        net, n, control = self.net, len(self.X), self.control
        epoch_seed = np.random.SeedSequence([net.seed, net.epochs_trained])
        shuffle_seed, kernel_seed = epoch_seed.generate_state(2, dtype=np.uint64)
        if self.options.shuffle:
            # one stream per (seed, epoch): a resumed run shuffles as an
            # uninterrupted one would
            self.args["order"] = np.random.default_rng(shuffle_seed).permutation(n)
        self.args["seed"] = int(kernel_seed)
        self.args["hyper"] = self._hyper(lr)
        control[_kernels.STOP_REQUEST] = control[_kernels.ROWS_DONE] = 0
        steps = self.opt_state.steps
        control[_kernels.STEPS] = steps
        self.snapshot[...] = net.flat_params
        # every optimizer, plain SGD too: unfused SGD (l1, or batches over
        # the chunk size) writes its gradient into the state
        state_snapshot = self.opt_state.state.copy() if self.new_state is None else None

        def roll_back():
            net.flat_params[...] = self.snapshot
            self.opt_state.state[...] = (state_snapshot if state_snapshot is not None
                                         else self.new_state())
            self.opt_state.steps = steps

        tick = None
        if self.progress is not None:
            epoch = net.epochs_trained
            tick = lambda: self.progress(epoch, int(control[_kernels.ROWS_DONE]), n)  # noqa: E731
        metrics, next_lr = None, lr
        if self.pace is not None:
            self.args["n_threads"] = TEAM_PACE.threads(self.pace, self.threads)
        with interrupts.Deferred() as self.interrupt:
            try:
                start = time.perf_counter()
                # (the fused and units epochs make no BLAS call: no look at
                # the idle cores for the BLAS's threads, 0.10-0.14 ms a fit)
                # (single-threaded for a team's slices, on one thread too)
                with (epoch_blas_threads(self.args["slices"], self.settled_look)
                      if self.calls_blas
                      else contextlib.nullcontext()):
                    if self.calls_blas:
                        blas.prime(net.dtype)
                    (status, loss_sum, n_correct), in_kernel = run_epoch(
                        net.kernels.train_epoch, self.args, control, tick)
                in_kernel.deliver()  # into this block's deferral
                seconds = time.perf_counter() - start
                if self.pace is not None and status == _kernels.DONE and seconds > 0:
                    TEAM_PACE.record(self.pace, self.args["n_threads"], n / seconds)
                if status == _kernels.DONE and not self.interrupt.received:
                    metrics = self._metrics(lr, loss_sum, n_correct, seconds)
                if metrics is None or self.interrupt.received:
                    roll_back()
                    metrics = None
                    if status != _kernels.DIVERGED:
                        status = _kernels.STOPPED
                else:
                    # recorded all at once: a Ctrl-C now comes after
                    self.opt_state.steps = int(control[_kernels.STEPS])
                    self.new_state = None
                    hist.append(metrics)
                    net.epochs_trained += 1
                    next_lr = schedule.next_lr(metrics)
                    # the final metrics without their timing: the same run
                    # writes the same model file (History keeps the seconds)
                    final = {k: v for k, v in hist.last().items() if k not in TIMINGS}
                    net.training_record.update(epochs_done=hist.epochs, final=final,
                                        lr_schedule_state=schedule.state_dict())
            except BaseException:
                if metrics is None:
                    roll_back()
                raise
        return metrics, status, next_lr

    def _metrics(self, lr, loss_sum, n_correct, seconds):
        net, n, control = self.net, len(self.X), self.control
        rows = int(control[_kernels.ROWS_DONE])
        if self.progress is not None:
            self.progress(net.epochs_trained, rows, n)
        metrics = {"loss": loss_sum / rows}
        if self.labels is not None:
            metrics["accuracy"] = n_correct / rows
        if self.options.l2 or self.options.l1:
            metrics["penalty"] = self.penalty()
        if self.val is not None:
            result = net.evaluate_rows(*self.val)
            metrics["val_loss"] = result["loss"]
            if "accuracy" in result:
                metrics["val_accuracy"] = result["accuracy"]
        metrics["lr"] = lr
        metrics["seconds"] = seconds
        return metrics

    def metric_names(self):
        """The names of the metrics each epoch reports, in order."""
        names = ["loss"] + (["accuracy"] if self.labels is not None else [])
        names += ["penalty"] if self.options.l2 or self.options.l1 else []
        if self.val is not None:
            names += ["val_loss"] + (["val_accuracy"] if self.val[2] is not None else [])
        return names + ["lr", "seconds"]

    def run(self):
        hist = History()
        self.net.history = hist
        try:
            with verbose_logging(self.verbose):
                return self._run(hist)
        except KeyboardInterrupt:
            hist.stopped = "interrupted"
            raise

    def _run(self, hist):
        options, net = self.options, self.net
        schedule = options.lr_schedule
        if not schedule.started:
            schedule.start(options.lr, options.epochs)
        lr = schedule.lr
        # a run stopped before its first epoch ends still records where the
        # schedule stands, so that a resumed run continues it
        net.training_record["lr_schedule_state"] = schedule.state_dict()
        callbacks = self.callbacks
        if options.early_stopping is not None:
            # the option is the object with its defaults (val_loss, best weights kept)
            callbacks = [EarlyStopping(patience=options.early_stopping), *callbacks]
        if options.restore_best:
            # last: its weights go in after EarlyStopping's
            callbacks = [*callbacks, BestEpoch()]
        for c in callbacks:
            c.on_train_begin(net, self.metric_names())
        for epoch in range(options.epochs):
            metrics, status, next_lr = self.epoch(lr, hist, schedule)
            # a Ctrl-C held back during the epoch: KeyboardInterrupt here
            self.interrupt.deliver()
            if status == _kernels.DIVERGED:
                hist.stopped = "diverged"
                exc = TrainingDiverged(
                    f"Training diverged at epoch {net.epochs_trained + 1} (loss = nan or inf); "
                    f"the weights from before that epoch are kept. Try a smaller learning "
                    f"rate (lr={lr:g}) or scale the inputs.")
                exc.history = hist
                raise exc
            if status == _kernels.STOPPED:
                # the handler in place did not raise: stop all the same
                raise KeyboardInterrupt
            lr = next_lr
            logger.info("%s", epoch_line(net.epochs_trained, metrics))
            stop = None
            for c in callbacks:
                if c.on_epoch_end(epoch, dict(metrics)) is False:
                    stop = stop or c.stop_reason
            # the callback sees every epoch trained, the last one included
            if self.callback is not None and self.callback(epoch, dict(metrics)) is False:
                stop = stop or "callback"
            if stop:
                hist.stopped = stop
                break
        for c in callbacks:
            c.on_train_end()
        return hist


class BestEpoch(Callback):
    """fit(restore_best=True): keep the weights of the epoch with the best
    validation accuracy (the lowest validation loss when there is no
    accuracy; the first such epoch on a tie) and give them back to the
    network when the run ends.

    Until then the best weights are ``net.best_params`` and
    ``net.training_record["best"]`` says which epoch they are ({"epoch": E (the
    network's E-th epoch, from 1), "monitor": "val_accuracy", "value": v}).
    Both are saved in the model file of an unfinished run (a checkpoint, a
    Ctrl-C), so that a fit continuing it (``fastnn train --resume``)
    continues the comparison, as does a fit continuing a finished run (whose
    weights are its best epoch's). When the run ends, the network's weights are
    the best epoch's and ``net.history.best_epoch`` is that epoch (from 0,
    within this fit; None if it came before this fit)."""

    def on_train_begin(self, net: Model, metrics: Sequence[str]) -> None:
        super().on_train_begin(net, metrics)
        self._monitor = _Monitor("restore_best", "val_accuracy" if "val_accuracy" in metrics
                                 else "val_loss", "auto")
        self._monitor.check(metrics)
        self.first_epoch = net.epochs_trained
        record = net.training_record.get("best")
        if record and record["monitor"] == self._monitor.monitor:
            # a run going on: an unfinished one's best so far, or a finished
            # one's, whose weights the network has
            if net.best_params is None:
                net.best_params = net.flat_params.copy()
            self._monitor.best = self._monitor.sign * record["value"]
        else:
            net.best_params = None
            net.training_record.pop("best", None)

    def on_epoch_end(self, epoch: int, metrics: Mapping[str, float]) -> Optional[bool]:
        net = self.net
        if self._monitor.improved(metrics):
            if net.best_params is None:
                net.best_params = net.flat_params.copy()
            else:
                net.best_params[...] = net.flat_params
            net.training_record["best"] = {"epoch": net.epochs_trained,
                                    "monitor": self._monitor.monitor,
                                    "value": float(metrics[self._monitor.monitor])}
        return None

    def on_train_end(self) -> None:
        net = self.net
        if net.best_params is None:
            return
        net.flat_params[...] = net.best_params
        net.best_params = None
        if net.history is not None:
            index = net.training_record["best"]["epoch"] - 1 - self.first_epoch
            net.history.best_epoch = index if index >= 0 else None


def epoch_line(epoch, metrics, of=None):
    """One line summing up an epoch: 'epoch 3  loss 0.0412  accuracy 0.9310 ...'
    ('epoch 3/10 ...' with `of`)."""
    parts = [f"epoch {epoch}" + (f"/{of}" if of is not None else "")]
    for name in ("loss", "accuracy", "val_loss", "val_accuracy", "test_accuracy"):
        if name in metrics:
            parts.append(f"{name} {metrics[name]:.4f}")
    parts.append(f"lr {metrics['lr']:.3g}")
    parts.append(f"{metrics['seconds']:.2f}s")
    return "  ".join(parts)


def text_progress(stream=sys.stderr, width=30, clock=time.monotonic):
    """A progress(epoch, done, total) callable drawing a bar on one line,
    with the rows per second and the time the epoch has left."""
    started = {}

    def show(epoch, done, total):
        now = clock()
        start = started.setdefault(epoch, now)
        filled = int(width * done / max(total, 1))
        end = "\n" if done >= total else ""
        rate = done / (now - start) if done and now > start else None
        speed = f"{rate:,.0f} rows/s" if rate else "-- rows/s"
        left = _duration((total - done) / rate) if rate else "--:--"
        stream.write(f"\repoch {epoch + 1} [{'=' * filled}{' ' * (width - filled)}] "
                     f"{done:,}/{total:,}  {speed}  {left} left\033[K{end}")
        stream.flush()
    return show


#: Epochs after which stall_hint looks at a run.
STALL_EPOCHS = 3


def stall_hint(records, labels=None):
    """A one-line hint when the first STALL_EPOCHS epochs of a run (records:
    their metrics dicts) show no learning: accuracy no better than always
    predicting the most common class of `labels` (the training labels, as
    output units), or a loss that moved by less than 1 %. None otherwise,
    and before STALL_EPOCHS epochs."""
    if len(records) < STALL_EPOCHS:
        return None
    first = records[:STALL_EPOCHS]
    problem = None
    if labels is not None and all("accuracy" in r for r in first):
        labels = np.asarray(labels)
        chance = np.bincount(labels.astype(np.int64)).max() / len(labels) if len(labels) else 0
        if max(r["accuracy"] for r in first) <= chance + 0.005:
            problem = (f"the accuracy stays at chance ({first[-1]['accuracy']:.1%}; the most "
                       f"common class is {chance:.1%} of the rows)")
    losses = [r.get("loss") for r in first]
    if problem is None and all(isinstance(v, float) and math.isfinite(v) for v in losses):
        if abs(losses[-1] - losses[0]) <= 0.01 * max(abs(losses[0]), 1e-12):
            problem = f"the loss does not move ({losses[0]:.4f} -> {losses[-1]:.4f})"
    if problem is None:
        return None
    return (f"Hint: after {STALL_EPOCHS} epochs {problem}. Likely causes: a learning rate too "
            f"large or too small (--lr), saturated sigmoid units (try --activation relu "
            f"--init he, or --loss cross_entropy), or unscaled features (--scale standard).")


def _duration(seconds):
    """'m:ss' (or 'h:mm:ss') for a number of seconds."""
    minutes, secs = divmod(int(round(seconds)), 60)
    hours, minutes = divmod(minutes, 60)
    return f"{hours}:{minutes:02}:{secs:02}" if hours else f"{minutes}:{secs:02}"
