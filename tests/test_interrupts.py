"""Ctrl-C (issue 15): the kernel has always returned before anything is written or the
process exits, and an interrupted `fastnn train` always exits 130 with loadable files.

The slow tests interrupt real `fastnn train` processes at random moments (mid-epoch,
during a checkpoint save, during validation, during the final save), with one and two
BLAS threads, once and several times. FASTNN_INTERRUPT_TRIALS=N runs N of them instead
of the default 200.
"""
import concurrent.futures
import itertools
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

import fastnn
from fastnn import _kernels, interrupts
from fastnn.files import TEMP_SUFFIX
from fastnn.layers import Conv2D, Dense, MaxPool2D
from fastnn.training import run_epoch


def fake_kernel(log, seconds=0.5):
    """A stand-in for train_epoch: batches of 5 ms until done or asked to stop;
    logs when it returns."""
    def kernel(control, **args):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            if control[_kernels.STOP_REQUEST]:
                log.append("returned")
                return _kernels.STOPPED, 0.0, 0
            time.sleep(0.005)
        log.append("returned")
        return _kernels.DONE, 0.0, 0
    return kernel


def test_an_exception_from_progress_leaves_only_after_the_kernel_returned():
    # the mechanism of issue 15: this exception used to leave run_epoch at
    # once, with the kernel still running while the process went on to
    # write files and exit (SIGSEGV in OpenBLAS at exit)
    log, control = [], np.zeros(_kernels.N_CONTROL, dtype=np.int64)

    def progress():
        raise RuntimeError("a broken progress callback")

    with pytest.raises(RuntimeError, match="broken progress"):
        run_epoch(fake_kernel(log, seconds=30), {"control": control}, control, progress)
    assert log == ["returned"] and control[_kernels.STOP_REQUEST] == 1
    assert not [t for t in threading.enumerate() if t.name == "fastnn-epoch"]


def test_ctrl_c_stops_the_kernel_and_is_raised_after_it_returned():
    log, control = [], np.zeros(_kernels.N_CONTROL, dtype=np.int64)
    ticks = []

    def tick():
        ticks.append(len(log))
        if len(ticks) == 1:
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGINT)     # a second one: still one interrupt

    result, interrupt = run_epoch(fake_kernel(log, seconds=30), {"control": control}, control,
                                  tick)
    assert result[0] == _kernels.STOPPED and log == ["returned"] and interrupt.received
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
    with pytest.raises(KeyboardInterrupt):
        interrupt.deliver()


def test_the_epoch_thread_is_not_a_daemon():
    # the interpreter waits for it at exit rather than exiting under it
    seen = []

    def kernel(control, **args):
        seen.append(threading.current_thread().daemon)
        return _kernels.DONE, 0.0, 0

    control = np.zeros(_kernels.N_CONTROL, dtype=np.int64)
    run_epoch(kernel, {"control": control}, control)
    assert seen == [False]


def test_deferred_leaves_ignored_and_default_sigint_alone_and_restores_handlers():
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with interrupts.Deferred() as d:
            assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
            os.kill(os.getpid(), signal.SIGINT)
        assert not d.received
    finally:
        signal.signal(signal.SIGINT, previous)
    calls = []
    signal.signal(signal.SIGINT, lambda s, f: calls.append(s))
    try:
        with interrupts.Deferred(lambda: calls.append("stop")) as d:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)
            assert calls == ["stop"]
        d.deliver()
        assert calls == ["stop", signal.SIGINT]
    finally:
        signal.signal(signal.SIGINT, previous)


def test_deferred_does_nothing_outside_the_main_thread():
    result = []

    def other():
        with interrupts.Deferred() as d:
            result.append(signal.getsignal(signal.SIGINT))
        d.deliver()

    t = threading.Thread(target=other)
    t.start()
    t.join()
    assert result == [signal.default_int_handler]


def test_first_interrupt_raises_once_then_ignores():
    handler = interrupts.FirstInterrupt()
    with pytest.raises(KeyboardInterrupt):
        handler(signal.SIGINT, None)
    handler(signal.SIGINT, None)
    handler(signal.SIGINT, None)
    assert handler.fired
    quiet = interrupts.FirstInterrupt()
    quiet.disarm()
    quiet(signal.SIGINT, None)
    assert not quiet.fired


def test_a_disarmed_first_interrupt_only_ignores_sigint_until_its_block_ends():
    """What a command does once it is done (cli.common.Command): a SIGINT
    after FirstInterruptOnly.disarm and before the block ends raises
    nothing, and the handler from before is back afterwards."""
    before = signal.getsignal(signal.SIGINT)
    with interrupts.FirstInterruptOnly() as first:
        first.disarm()
        try:
            signal.raise_signal(signal.SIGINT)
        except KeyboardInterrupt:
            pytest.fail("a SIGINT after disarm raised KeyboardInterrupt")
        assert not first.handler.fired
    assert signal.getsignal(signal.SIGINT) is before


# a dense net and a conv net: (layers, rows, batch size). The conv net runs on one
# thread: a team's stop is tested in test_conv.py, and a team of two on a loaded 2-core
# machine makes this epoch last tens of seconds.
NETS = {"dense": ([20, 16, 3], 4_000, 1),
        "conv": ([(5, 4, 1), Conv2D(3, 3, padding="same"), MaxPool2D(2), Dense(3)], 2_000, 10)}


class CtrlCAfter:
    """A network's kernels, whose first train_epoch is interrupted after exactly
    `batches` batches, on any CPU: the real kernel trains those batches (the
    epoch's first rows, as it would have), then a real Ctrl-C (SIGINT) comes
    while the epoch is still running, and the real kernel, asked to stop by
    its handler through control[STOP_REQUEST], returns before its next batch."""

    def __init__(self, kernels, batches):
        self.kernels, self.batches = kernels, batches
        self.rows_done = self.trained = None

    def __getattr__(self, name):
        return getattr(self.kernels, name)

    def train_epoch(self, *, order, batch_size, control, **args):
        if self.rows_done is not None:
            return self.kernels.train_epoch(order=order, batch_size=batch_size,
                                            control=control, **args)
        first = self.batches * batch_size
        assert 0 < first < len(order)
        self.kernels.train_epoch(order=order[:first], batch_size=batch_size, control=control,
                                 **args)
        self.rows_done = int(control[_kernels.ROWS_DONE])
        self.trained = args["params"].copy()
        os.kill(os.getpid(), signal.SIGINT)
        deadline = time.monotonic() + 60
        while not control[_kernels.STOP_REQUEST]:
            assert time.monotonic() < deadline, "the Ctrl-C never asked the kernel to stop"
            time.sleep(0.001)
        return self.kernels.train_epoch(order=order[first:], batch_size=batch_size,
                                        control=control, **args)


@pytest.fixture
def one_thread():
    """fastnn's thread count set to 1 for one test."""
    before = fastnn.blas.get_num_threads()
    fastnn.blas.set_num_threads(1)
    yield
    fastnn.blas.set_num_threads(before)


@pytest.mark.parametrize("kind", NETS)
@pytest.mark.parametrize("options", [dict(optimizer="sgd", lr=0.5),
                                     dict(optimizer="adam", lr=0.01,
                                          lr_schedule="step:every=1,factor=0.5")])
def test_ctrl_c_mid_epoch_rolls_back_so_that_fit_continues_exactly(options, kind, request):
    spec, rows, batch = NETS[kind]
    if kind == "conv":
        request.getfixturevalue("one_thread")
    rng = np.random.default_rng(0)
    X = rng.normal(size=(rows, 20)).astype(np.float32)
    y = rng.integers(0, 3, len(X))
    straight = fastnn.Network(spec, seed=5)
    straight.fit(X, y, epochs=3, batch_size=batch, **options)

    net = fastnn.Network(spec, seed=5)
    net.fit(X, y, epochs=1, batch_size=batch, **options)
    after_one = (net._params.copy(), net.optimizer_state.state.copy(), net.optimizer_state.steps)

    schedule = fastnn.schedules.parse(options.get("lr_schedule", "constant"))
    schedule.load_state_dict(net.training_record["lr_schedule_state"])
    kernels = net._kernels
    net._kernels = interrupted = CtrlCAfter(kernels, batches=rows // batch // 3)
    try:
        with pytest.raises(KeyboardInterrupt):
            net.fit(X, y, epochs=2, batch_size=batch, **{**options, "lr_schedule": schedule})
    finally:
        net._kernels = kernels
    # it came mid-epoch, after batches that changed the parameters, which went back
    assert interrupted.rows_done == rows // batch // 3 * batch
    assert not np.array_equal(interrupted.trained, after_one[0])
    np.testing.assert_array_equal(net._params, after_one[0])
    np.testing.assert_array_equal(net.optimizer_state.state, after_one[1])
    assert net.optimizer_state.steps == after_one[2] and net.epochs_trained == 1
    assert net.history.stopped == "interrupted" and net.history.epochs == 0
    schedule = fastnn.schedules.parse(options.get("lr_schedule", "constant"))
    schedule.load_state_dict(net.training_record["lr_schedule_state"])
    net.fit(X, y, epochs=2, batch_size=batch, **{**options, "lr_schedule": schedule})
    np.testing.assert_array_equal(net._params, straight._params)


class Touch(fastnn.callbacks.Callback):
    """A callback that writes into the optimizer state before the first epoch."""

    def on_train_begin(self, net, metrics):
        net.optimizer_state.state[-1] += 0.25


@pytest.mark.parametrize("optimizer", ["adam", "momentum", "sgd"])
@pytest.mark.parametrize("callbacks", [[], [Touch()]], ids=["alone", "callback"])
def test_ctrl_c_in_a_fresh_networks_first_epoch_leaves_its_state_as_new(optimizer, callbacks):
    # the first epoch of a new optimizer state takes no copy of it: a
    # rollback makes it anew, unless a callback saw the network first, and
    # then the copy puts back its write
    rng = np.random.default_rng(0)
    X = rng.normal(size=(4_000, 20)).astype(np.float32)
    y = rng.integers(0, 3, len(X))
    net = fastnn.Network([20, 16, 3], seed=5)
    initial = net._params.copy()
    kernels = net._kernels
    net._kernels = interrupted = CtrlCAfter(kernels, batches=40)
    try:
        with pytest.raises(KeyboardInterrupt):
            net.fit(X, y, epochs=2, batch_size=10, optimizer=optimizer, lr=0.01,
                    callbacks=callbacks)
    finally:
        net._kernels = kernels
    assert not np.array_equal(interrupted.trained, initial)
    np.testing.assert_array_equal(net._params, initial)
    opt = fastnn.optimizers.get_optimizer(optimizer)
    expected = opt.new_state(net.n_params, np.float32, 0.01)
    if callbacks:
        expected[-1] += 0.25
    np.testing.assert_array_equal(net.optimizer_state.state, expected)
    assert net.optimizer_state.steps == 0 and net.epochs_trained == 0


def test_a_rolled_back_first_rprop_epoch_leaves_step_sizes_at_lr():
    # rprop's new state is not zeros: its step sizes start at lr. A full-batch
    # epoch has no Ctrl-C between batches; an exception from progress after
    # the step rolls it back
    rng = np.random.default_rng(1)
    X = rng.normal(size=(300, 20)).astype(np.float32)
    y = rng.integers(0, 3, len(X))
    net = fastnn.Network([20, 16, 3], seed=5)
    initial = net._params.copy()

    def progress(epoch, rows, total):
        if rows == total:
            raise RuntimeError("a broken progress callback")

    with pytest.raises(RuntimeError, match="broken progress"):
        net.fit(X, y, epochs=2, optimizer="rprop", lr=0.003, progress=progress)
    np.testing.assert_array_equal(net._params, initial)
    state = net.optimizer_state.state
    np.testing.assert_array_equal(state[:2], 0)
    np.testing.assert_array_equal(state[2], np.float32(0.003))
    assert net.optimizer_state.steps == 0 and net.epochs_trained == 0


# --------------------------------------------------- real processes (slow)

ENV = {**os.environ, "PYTHONFAULTHANDLER": "1"}
# pytest-timeout's limit for the process tests: 3 s a trial, 15 minutes at least
TIMEOUT = max(900, 3 * int(os.environ.get("FASTNN_INTERRUPT_TRIALS", 200)))


def fastnn_cmd(*args):
    return [sys.executable, "-m", "fastnn", *[str(a) for a in args]]


def start(args, cwd=None):
    """A `fastnn` process whose stdout is read unbuffered: read_line takes one
    line and leaves the rest to communicate() (a buffered readline would
    read ahead, and communicate() would not see what it took)."""
    return subprocess.Popen(fastnn_cmd(*args), cwd=cwd, env=ENV, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0)


def read_network_line(proc):
    """The lines up to the network line (train prints the task and scaling
    first): training starts after it. Empty when the process ended first."""
    text = ""
    while True:
        line = read_line(proc)
        text += line
        if not line or line.startswith("Network("):
            return text


def read_line(proc):
    line = b""
    while not line.endswith(b"\n"):
        byte = os.read(proc.stdout.fileno(), 1)
        if not byte:
            break
        line += byte
    return line.decode()


def finish(proc, timeout=300):
    """(stdout, stderr) as text once proc exits."""
    out, err = proc.communicate(timeout=timeout)
    return out.decode(errors="backslashreplace"), err.decode(errors="backslashreplace")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    """1,000 MNIST-shaped rows: GEMMs big enough for OpenBLAS to use its threads."""
    rng = np.random.default_rng(0)
    y = rng.integers(0, 10, 1000)
    X = rng.normal(60, 40, (1000, 784)) + 100 * (np.arange(784)[None, :] % 10 == y[:, None])
    path = tmp_path_factory.mktemp("data") / "d.npz"
    np.savez(path, X=np.clip(X, 0, 255).astype(np.uint8), y=y)
    return path


def check_files(directory, existing=None):
    """Every model file left in directory loads; no temp file is left; an
    existing model (bytes) is intact unless the run finished."""
    names = sorted(p.name for p in directory.iterdir())
    assert not [n for n in names if n.endswith(TEMP_SUFFIX)], names
    for name in names:
        if name.endswith(".safetensors"):
            fastnn.load(directory / name)
    return names


def interrupted_run(directory, data, threads, checkpoint, validate, existing, moment, signals,
                    seed, old_model):
    """One `fastnn train` interrupted by `signals` SIGINTs; returns what to check."""
    rnd = random.Random(seed)
    directory.mkdir()
    model = directory / "m.safetensors"
    if existing:
        model.write_bytes(old_model)
    final = moment == "final save"
    args = ["train", data, "--hidden", "64", "--batch-size", "32", "--threads", threads,
            "--epochs", 2 if final else 100000, "--seed", seed, "-o", model]
    if checkpoint:
        args += ["--checkpoint-every", 1]
    if validate:
        args += ["--val-split", 0.2]
    proc = start(args, cwd=directory)
    try:
        first = read_network_line(proc)         # training starts
        if "Network(" not in first:
            proc.kill()                         # never wait on a run of 100,000 epochs
            pytest.fail(first + finish(proc)[1])
        if final:
            first += read_line(proc)
            first += read_line(proc)            # "epoch 2/2": the final save comes next
            time.sleep(rnd.uniform(0, 0.02))
        else:
            time.sleep(rnd.uniform(0, 0.25))    # tens of epochs, saves and validations
        for k in range(signals):
            proc.send_signal(signal.SIGINT)
            time.sleep(rnd.uniform(0, 0.05))
        out, err = finish(proc)
    finally:
        proc.kill()
    return proc.returncode, first + out, err


def run_trials(trials, data, base, old_model, workers=3):
    """Run the trials, three processes at a time; each result checked by the caller."""
    results = []
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        futures = {pool.submit(interrupted_run, base / f"run{i}", data, **trial, seed=i,
                               old_model=old_model): trial
                   for i, trial in enumerate(trials)}
        for future, trial in futures.items():
            results.append((trial, *future.result()))
    return results


def trials_wanted(default):
    return int(os.environ.get("FASTNN_INTERRUPT_TRIALS", default))


def assert_clean_interrupts(results, base, existing):
    codes = {}
    for i, (trial, code, out, err) in enumerate(results):
        where = f"trial {i} {trial}: exit {code}\n{err[-3000:]}"
        assert "Traceback" not in err and "Fatal Python error" not in err, where
        assert code >= 0, where                                 # never killed by a signal
        if code == 0:
            # only a run whose final save the signal came after may finish
            assert trial["moment"] == "final save" and "Saved the model to" in out, where
        else:
            assert code == 130, where
            assert "Interrupted" in err, where
        names = check_files(base / f"run{i}")
        model = base / f"run{i}" / "m.safetensors"
        if code == 0 or "after the run finished" in err:
            assert fastnn.load(model).epochs_trained == 2, where    # the finished run
        elif trial["existing"]:
            assert model.read_bytes() == existing, where          # never replaced
            if "m.checkpoint.safetensors" in names:
                assert "is unchanged); continue with: fastnn train --resume" in err, where
        codes[code] = codes.get(code, 0) + 1
    return codes


@pytest.fixture(scope="module")
def existing_model(tmp_path_factory, data_file):
    path = tmp_path_factory.mktemp("old") / "m.safetensors"
    subprocess.run(fastnn_cmd("train", data_file, "--hidden", "64", "--epochs", "1", "--limit",
                              "200", "-q", "-o", path), check=True, env=ENV, timeout=300)
    return path.read_bytes()


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_interrupting_training_at_random_moments_always_exits_130(tmp_path, data_file,
                                                                 existing_model):
    combos = list(itertools.product([1, 2], [False, True], [False, True],
                                    [False, True]))
    n = trials_wanted(200)
    trials = []
    for i in range(n):
        threads, checkpoint, validate, existing = combos[i % len(combos)]
        moment = "final save" if i % 8 == 7 else "random"
        trials.append(dict(threads=threads, checkpoint=checkpoint, validate=validate,
                           existing=existing, moment=moment, signals=1))
    codes = assert_clean_interrupts(run_trials(trials, data_file, tmp_path, existing_model),
                                    tmp_path, existing_model)
    print(f"\n{n} interrupted runs: exit codes {codes}")
    assert codes.get(130, 0) >= n * 3 // 4


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_a_second_ctrl_c_while_the_first_is_handled_also_ends_cleanly(tmp_path, data_file,
                                                                     existing_model):
    n = max(trials_wanted(200) // 10, 8)
    trials = [dict(threads=1 + i % 2, checkpoint=i % 4 < 2, validate=i % 3 == 0,
                   existing=bool(i % 2),
                   moment="final save" if i % 8 == 7 else "random", signals=2 + i % 3)
              for i in range(n)]
    codes = assert_clean_interrupts(run_trials(trials, data_file, tmp_path, existing_model),
                                    tmp_path, existing_model)
    print(f"\n{n} runs interrupted 2-4 times: exit codes {codes}")
    assert codes.get(130, 0) >= n * 3 // 4


# ----------------------------------------------- resume after Ctrl-C (slow)

RECIPES = {
    "sgd": ["--optimizer", "sgd", "--lr", "0.5"],
    "adam": ["--optimizer", "adam", "--lr", "0.005", "--lr-schedule", "step:every=1,factor=0.7"],
}


def recipe_args(data, recipe, out):
    return ["train", data, "--hidden", "32", "--batch-size", "2", "--epochs", "6", "--threads",
            "1", "--seed", "7", *RECIPES[recipe], "-o", out]


def resume_trial(directory, data, recipe, seed, seconds):
    """Interrupt a run at a random moment within `seconds` of training, then
    run the command it prints to continue, until the run finishes; returns
    the final model and the rounds (exit status, stderr)."""
    rnd = random.Random(seed)
    directory.mkdir()
    model = directory / "m.safetensors"
    proc = start(recipe_args(data, recipe, model), cwd=directory)
    try:
        read_network_line(proc)                 # training starts
        time.sleep(rnd.uniform(0, seconds))
        proc.send_signal(signal.SIGINT)
        out, err = finish(proc)
    finally:
        proc.kill()
    rounds = [(proc.returncode, err)]
    resume = re.search(r"continue with: fastnn (.*)$", err.strip())
    if proc.returncode == 130 and resume:
        again = subprocess.run(fastnn_cmd(*resume.group(1).split(), "--threads", "1"),
                               cwd=directory, env=ENV, capture_output=True, text=True,
                               timeout=300)
        rounds.append((again.returncode, again.stderr))
    elif proc.returncode == 130 and "after the run finished" not in err:
        # stopped before training began: nothing to resume, so start again
        again = subprocess.run(fastnn_cmd(*recipe_args(data, recipe, model)), cwd=directory,
                               env=ENV, capture_output=True, text=True, timeout=300)
        rounds.append((again.returncode, again.stderr))
    return model, rounds, bool(resume)


@pytest.mark.slow
@pytest.mark.timeout(TIMEOUT)
def test_ctrl_c_then_resume_gives_bit_identical_weights(tmp_path, data_file):
    reference, seconds = {}, {}
    for recipe in RECIPES:
        path = tmp_path / f"straight-{recipe}.safetensors"
        proc = start(recipe_args(data_file, recipe, path))
        read_network_line(proc)
        began = time.monotonic()
        _, err = finish(proc)
        assert proc.returncode == 0, err
        seconds[recipe] = time.monotonic() - began   # to spread the Ctrl-Cs over training
        reference[recipe] = fastnn.load(path)
    trials = [("sgd" if i % 2 else "adam", i) for i in range(20)]
    resumed = 0
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [(recipe, pool.submit(resume_trial, tmp_path / f"t{i}", data_file, recipe, i,
                                        seconds[recipe]))
                   for recipe, i in trials]
        for recipe, future in futures:
            model, rounds, was_resumed = future.result()
            assert rounds[0][0] in (0, 130) and rounds[-1][0] in (0, 130), rounds
            resumed += was_resumed
            net, ref = fastnn.load(model), reference[recipe]
            assert net.epochs_trained == ref.epochs_trained == 6
            assert net.optimizer_state.steps == ref.optimizer_state.steps
            np.testing.assert_array_equal(net._params, ref._params)
            np.testing.assert_array_equal(net.optimizer_state.state, ref.optimizer_state.state)
            assert not model.with_name("m.checkpoint.safetensors").exists()
    print(f"\n20 Ctrl-C trials, {resumed} resumed from a saved state")
    assert resumed >= 10, resumed       # most trials were stopped during training


@pytest.mark.parametrize("words", [None, "Interrupted after the run finished: saved it"])
def test_a_ctrl_c_that_reaches_a_command_says_what_the_command_set(words):
    """A Ctrl-C outside a command's own handlers (fastnn train's: between
    them, or on its way out, after its run is saved) exits 130 with the
    words the command left in ctx.meta, or 'Interrupted'."""
    import click
    from click.testing import CliRunner

    from fastnn.cli.common import INTERRUPTED, Command

    @click.command(cls=Command)
    @click.pass_context
    def command(ctx):
        if words is not None:
            ctx.meta[INTERRUPTED] = lambda: words
        raise KeyboardInterrupt

    result = CliRunner().invoke(command, [])
    assert result.exit_code == 130
    assert result.output.strip().splitlines()[-1] == (words or "Interrupted")
