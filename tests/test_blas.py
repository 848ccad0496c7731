"""BLAS thread control, and reproducibility for a thread count."""
import os

import numpy as np
import pytest
from conftest import make_classification

from fastnn import Network
from fastnn.blas import get_num_threads, set_num_threads


def test_thread_count_is_set_and_runs_reproduce():
    before = get_num_threads()
    try:
        set_num_threads(1)
        assert get_num_threads() == 1
        X, y = make_classification(n=300, n_features=30)
        runs = []
        for _ in range(2):
            net = Network([30, 64, 4], seed=3)
            net.fit(X, y, epochs=2, batch_size=64)
            runs.append(net.weights[0].copy())
        np.testing.assert_array_equal(*runs)
    finally:
        set_num_threads(before)


def test_forward_in_many_threads_at_once_changes_no_thread_count_and_no_bit(monkeypatch):
    """joblib's threading backend: several threads predicting at once. The
    BLAS's count (process-wide) is never changed by forward, every result
    equals a lone call's, and with a single-threaded BLAS the teams of
    concurrent calls stay within get_num_threads() threads."""
    import threading
    from concurrent.futures import ThreadPoolExecutor

    from threadpoolctl import threadpool_limits

    import fastnn._core
    from fastnn.blas import blas_num_threads

    net = Network([64, 128, 64, 10], activation="relu", output="softmax",
                  loss="cross_entropy", init="he", seed=0)
    X = np.random.default_rng(0).random((3000, 64), dtype=np.float32)    # 3 chunks
    before = get_num_threads()
    predict, lock = fastnn._core.predict, threading.Lock()
    running = {"calls": 0, "threads": 0, "extra_max": 0, "blas": set()}

    def watched_predict(*args, **kwargs):
        # what the kernel runs with: the BLAS's count, and the threads of
        # all the calls running now beyond their calling threads
        with lock:
            running["blas"].add(blas_num_threads())
            running["calls"] += 1
            running["threads"] += args[-1]
            running["extra_max"] = max(running["extra_max"], running["threads"] - running["calls"])
        try:
            return predict(*args, **kwargs)
        finally:
            with lock:
                running["calls"] -= 1
                running["threads"] -= args[-1]

    monkeypatch.setattr(fastnn._core, "predict", watched_predict)
    try:
        set_num_threads(2)
        lone = {}
        for blas_threads in (2, 1):
            with threadpool_limits(blas_threads, user_api="blas"):
                running["blas"].clear()
                lone[blas_threads] = net.forward(X)
                with ThreadPoolExecutor(4) as pool:
                    results = list(pool.map(lambda _: net.forward(X), range(12)))
                assert running["blas"] == {blas_threads}
                assert blas_num_threads() == blas_threads
                for result in results:
                    np.testing.assert_array_equal(result, lone[blas_threads])
        # a single-threaded BLAS: the forwards' teams add at most one thread
        # to the calling threads (2 in all); the team's size changes no bit
        assert running["extra_max"] == 1
        set_num_threads(1)
        with threadpool_limits(1, user_api="blas"):
            np.testing.assert_array_equal(net.forward(X), lone[1])
        # a multi-threaded BLAS rounds its GEMMs differently, by float32's last bits
        np.testing.assert_allclose(lone[2], lone[1], rtol=1e-5, atol=1e-6)
    finally:
        set_num_threads(before)


def test_an_epoch_takes_only_idle_cores_for_its_blas_threads(monkeypatch):
    # a dense network trained with momentum (the BLAS path): its epoch's products run on
    # at most the idle cores (OpenBLAS's threads wait for each other at every
    # product, so a busy core slows them all), and the count is back after it
    from fastnn import blas, training

    seen = []
    run_epoch = training.run_epoch

    def spy(*args, **kwargs):
        seen.append(blas.blas_num_threads())
        return run_epoch(*args, **kwargs)

    monkeypatch.setattr(training, "run_epoch", spy)
    before = get_num_threads()
    X, y = make_classification(n=200, n_features=20)
    try:
        set_num_threads(2)
        for idle, want in ((1, 1), (2, 2), (8, 2)):
            monkeypatch.setattr(blas, "idle_cores", lambda idle=idle: idle)
            seen.clear()
            Network([20, 32, int(y.max()) + 1], seed=0).fit(X, y, epochs=2, batch_size=64,
                                                            optimizer="momentum", lr=0.01)
            assert seen == [want, want]
            assert blas.blas_num_threads() == 2
    finally:
        set_num_threads(before)


def test_a_long_epoch_settles_its_look_at_the_idle_cores(monkeypatch):
    # a kernel thread's moment shows as a busy core in one look, and the
    # whole epoch then ran on one BLAS thread: an epoch of at least
    # SETTLED_LOOK_WORK multiply-adds takes the most idle of a few looks;
    # a shorter one looks once (the looks cost up to 4.2 ms)
    from fastnn import blas, training

    seen, looks = [], []
    run_epoch = training.run_epoch

    def spy(*args, **kwargs):
        seen.append(blas.blas_num_threads())
        looks.append("epoch")
        return run_epoch(*args, **kwargs)

    def look():
        # the first look of each epoch sees a busy core, the next ones none
        first = not looks or looks[-1] == "epoch"
        looks.append("look")
        return 1 if first else 2

    monkeypatch.setattr(training, "run_epoch", spy)
    monkeypatch.setattr(blas.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(blas, "idle_cores", look)
    monkeypatch.setattr(blas, "usable_cores", lambda: 2)   # whatever this machine has
    before = get_num_threads()
    X, y = make_classification(n=200, n_features=20)
    net = Network([20, 32, int(y.max()) + 1], seed=0)
    work = len(X) * net.n_params
    try:
        set_num_threads(2)
        for threshold, want in ((work, 2), (work + 1, 1)):
            monkeypatch.setattr(training, "SETTLED_LOOK_WORK", threshold)
            seen.clear()
            looks.clear()
            Network([20, 32, int(y.max()) + 1], seed=0).fit(
                X, y, epochs=2, batch_size=64, optimizer="momentum", lr=0.01)
            assert seen == [want, want]
            assert looks.count("look") == (4 if want == 2 else 2)
    finally:
        set_num_threads(before)


def test_a_conv_nets_forward_holds_the_blas_at_one_thread_for_its_team(monkeypatch):
    # a convolutional network's forward on the main thread, with a
    # two-thread BLAS: its chunks go to a team of two threads, each with a
    # single-threaded BLAS; the BLAS's count is back after, and the outputs
    # are those of one thread
    import fastnn._core
    from fastnn import blas
    from fastnn.layers import Conv2D, Dense, MaxPool2D

    seen = []
    predict = fastnn._core.predict

    def watched_predict(*args, **kwargs):
        seen.append((blas.blas_num_threads(), args[-1]))
        return predict(*args, **kwargs)

    net = Network([(12, 12, 1), Conv2D(4, 3), MaxPool2D(2), Dense(5)], activation="relu",
                  output="softmax", loss="cross_entropy", seed=0)
    X = np.random.default_rng(1).random((5000, 144), dtype=np.float32)
    before = get_num_threads()
    try:
        set_num_threads(1)
        lone = net.forward(X)
        set_num_threads(2)
        monkeypatch.setattr(fastnn._core, "predict", watched_predict)
        assert net._chunk(len(X)) < len(X)          # several chunks
        team = net.forward(X)
        assert seen == [(1, 2)]
        assert blas.blas_num_threads() == 2
        np.testing.assert_array_equal(team, lone)
    finally:
        set_num_threads(before)


def test_prime_blas_runs_a_product_on_each_thread_and_changes_no_result():
    """_core.prime_blas puts OpenBLAS's buffers in their fast state by using
    them (a product on each of `threads` threads at once); nothing a network
    computes depends on it."""
    from threadpoolctl import threadpool_limits

    import fastnn._core

    X, y = make_classification(n=200, n_features=20, dtype=np.float32)
    for dtype in ("float32", "float64"):
        nets = [Network([20, 32, 4], seed=1, dtype=dtype) for _ in range(2)]
        with threadpool_limits(1):
            nets[0].fit(X, y, epochs=1, batch_size=16)
            for threads in (1, 2, 3):
                fastnn._core.prime_blas(threads, dtype == "float64")
            nets[1].fit(X, y, epochs=1, batch_size=16)
        np.testing.assert_array_equal(nets[0].flat_params, nets[1].flat_params)
    for bad in (0, -1, 2000):
        try:
            fastnn._core.prime_blas(bad, False)
        except ValueError as error:
            assert "threads must be in [1, 1024]" in str(error)
        else:
            raise AssertionError(f"prime_blas({bad}) was accepted")


def test_prime_runs_once_per_dtype_and_thread_count_and_only_on_a_single_threaded_blas(
        monkeypatch):
    from threadpoolctl import threadpool_limits

    import fastnn._core
    from fastnn import blas

    calls = []
    monkeypatch.setattr(fastnn._core, "prime_blas", lambda n, f64: calls.append((n, f64)))
    monkeypatch.setattr(blas, "_primed", {})
    monkeypatch.setattr(blas, "process_threads", lambda: 2)
    monkeypatch.setattr(blas, "blas_num_threads", lambda: 2)
    blas.prime(np.float32)                  # the BLAS's own threads: nothing to do
    assert calls == []
    monkeypatch.setattr(blas, "blas_num_threads", lambda: 1)
    for _ in range(3):
        blas.prime(np.float32)
        blas.prime("float64")
    assert calls == [(2, False), (2, True)]
    monkeypatch.setattr(blas, "process_threads", lambda: 4)     # set_num_threads(4)
    blas.prime(np.dtype("float32"))
    assert calls[-1] == (4, False) and len(calls) == 3
    # an epoch on the BLAS path, a forward's team and fit_many prime on a
    # single-threaded BLAS
    calls.clear()
    monkeypatch.setattr(blas, "_primed", {})
    X, y = make_classification(n=100, n_features=8, n_classes=2, dtype=np.float32)
    with threadpool_limits(1):
        Network([8, 6, 2], seed=0).fit(X, y, epochs=1, batch_size=10, optimizer="momentum")
    assert calls == [(4, False)]


def test_a_dense_forward_without_blas_gives_the_same_bits_on_any_team_and_thread(isa):
    """Where every dense layer's forward takes smallgemm.h's kernels
    (_core.predicts_without_blas; AVX-512's or AVX2's, each W packed once for
    all chunks of an X of 128 rows or more), each row's outputs are computed
    alone: the same bits
    on one thread or a team, whatever the BLAS's threads, from the main
    thread or another, and for the row on its own; they agree with the BLAS
    path to float32 rounding. A layer larger than SMALL_WEIGHTS stays on
    BLAS."""
    import threading

    from threadpoolctl import threadpool_limits

    from fastnn import _core

    net = Network([100, 64, 32, 10], activation="relu", output="softmax",
                  loss="cross_entropy", init="he", seed=0)
    table = net.plan.table()[0]
    X = np.random.default_rng(2).random((3000, 100), dtype=np.float32)    # 3 chunks
    wide = Network([100, 1024, 1024, 10], seed=0)
    assert not _core.predicts_without_blas(wide.plan.table()[0])       # 2^20 weights
    assert _core.predicts_without_blas(table)
    before = get_num_threads()
    try:
        runs = []
        for threads in (1, 2):
            set_num_threads(threads)
            for blas_threads in (1, 2):
                with threadpool_limits(blas_threads, user_api="blas"):
                    runs.append(net.forward(X))
        other = []
        worker = threading.Thread(target=lambda: other.append(net.forward(X)))
        worker.start()
        worker.join()
        runs += other
        for run in runs[1:]:
            np.testing.assert_array_equal(run, runs[0])
        packed = _core.packed_predicts_run()
        for i in (0, 1023, 1024, 2999):
            np.testing.assert_array_equal(net.forward(X[i:i + 1])[0], runs[0][i])
        for rows in (127, 128, 1030):       # one chunk of 127 or 128 rows; two chunks
            np.testing.assert_array_equal(net.forward(X[5:5 + rows]), runs[0][5:5 + rows])
        # the rows alone and 127 rows unpacked; 128 and 1030 rows packed once
        assert _core.packed_predicts_run() == packed + 2
        _core.set_small_predict(False)
        try:
            on_blas = net.forward(X)
        finally:
            _core.set_small_predict(True)
        np.testing.assert_allclose(on_blas, runs[0], rtol=1e-5, atol=1e-6)
    finally:
        set_num_threads(before)


def test_a_team_is_chosen_from_the_most_idle_of_a_few_looks(monkeypatch):
    """A thread pool winding down shows as running for a moment: the team
    takes the most idle cores of up to 1 + len(SETTLE_GAPS) looks, stops
    looking once every core is idle, and still sees a core that stays busy;
    the first wait is the short one (a kernel thread's moment)."""
    import os

    from fastnn import blas, training
    from fastnn.layers import Conv2D, Dense

    cores = len(os.sched_getaffinity(0))
    looks = iter([1, cores, 1, 1])
    slept = []
    monkeypatch.setattr(blas.time, "sleep", slept.append)
    monkeypatch.setattr(blas, "idle_cores", lambda: next(looks))
    assert blas.idle_cores_settled() == cores
    assert next(looks) == 1                      # it stopped at the second look
    assert slept == [blas.SETTLE_GAPS[0]] and slept[0] < min(blas.SETTLE_GAPS[1:])
    slept.clear()
    calls = []
    monkeypatch.setattr(blas, "idle_cores", lambda: calls.append(1) or 1)
    assert blas.idle_cores_settled() == 1
    assert len(calls) == 1 + len(blas.SETTLE_GAPS) and slept == list(blas.SETTLE_GAPS)
    net = Network([(6, 6, 1), Conv2D(2, 3), Dense(2)])
    assert training.team_threads(net) == 1
    monkeypatch.setattr(blas, "idle_cores", lambda: cores)
    assert training.team_threads(net) == min(blas.get_num_threads(), cores)
    # at one thread (a GridSearchCV worker's share) no team can form: no look, no wait

    def no_look():
        raise AssertionError("looked at the idle cores for a team of one")

    monkeypatch.setattr(blas, "idle_cores", no_look)
    monkeypatch.setattr(blas, "get_num_threads", lambda: 1)
    assert training.team_threads(net) == 1


def test_idle_cores_do_not_count_this_process_s_own_running_threads(monkeypatch):
    """A core counts as busy only for another process's thread: this
    process's running threads (the caller, and the BLAS pool spinning after
    the last product) do not take a core from the next epoch."""
    import os

    from fastnn import blas

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setattr(blas, "_all_running", lambda: 2)
    monkeypatch.setattr(blas, "_own_running", lambda: 2)    # caller + a spinning pool thread
    assert blas.idle_cores() == cores
    monkeypatch.setattr(blas, "_own_running", lambda: 1)    # the other one is another process's
    assert blas.idle_cores() == max(1, cores - 1)
    monkeypatch.setattr(blas, "_own_running", lambda: None)  # no /proc/self/task: the caller only
    assert blas.idle_cores() == max(1, cores - 1)
    monkeypatch.setattr(blas, "_all_running", lambda: cores + 5)
    assert blas.idle_cores() == 1                            # never fewer than one
    monkeypatch.setattr(blas, "_all_running", lambda: None)  # no /proc/loadavg: all of them
    assert blas.idle_cores() == cores


def test_own_running_threads_count_the_caller_and_not_sleeping_threads():
    import threading

    from fastnn import blas

    if not os.path.isdir("/proc/self/task"):
        assert blas._own_running() is None      # then idle_cores counts the caller only
        return
    release = threading.Event()
    sleepers = [threading.Thread(target=release.wait) for _ in range(3)]
    for t in sleepers:
        t.start()
    try:
        # the caller runs and counts; the three waiting threads sleep and do not
        # (other threads of the test process may spin, a BLAS pool say)
        tasks = len(os.listdir("/proc/self/task"))
        assert 1 <= blas._own_running() <= tasks - len(sleepers)
    finally:
        release.set()
        for t in sleepers:
            t.join()


@pytest.mark.parametrize("optimizer", ["adam", "adamw"])
def test_a_dense_network_trained_by_adam_splits_its_batches_over_a_team(monkeypatch, optimizer):
    """Adam's step costs a square root and a division per parameter: a
    float32 dense network trained by it takes a team of the idle cores that
    splits each batch's rows and each step's parameters (single-threaded
    BLAS for each thread), into as many slices as fastnn's threads however
    many cores are idle: the same weights, bit for bit, on a team of one
    (the other core busy) as on a team of two; momentum's cheap step keeps
    one thread whose products use the BLAS's threads."""
    from fastnn import blas, training
    from fastnn.optimizers import get_optimizer

    seen = []
    run_epoch = training.run_epoch

    def spy(kernel, args, *rest, **kwargs):
        seen.append((args["n_threads"], args["slices"], blas.blas_num_threads()))
        return run_epoch(kernel, args, *rest, **kwargs)

    monkeypatch.setattr(training, "run_epoch", spy)
    X, y = make_classification(n=300, n_features=20)
    before = get_num_threads()
    try:
        set_num_threads(2)
        nets = {}
        for idle in (2, 1):
            monkeypatch.setattr(blas, "idle_cores", lambda idle=idle: idle)
            seen.clear()
            net = Network([20, 32, 16, int(y.max()) + 1], seed=0, dtype="float32")
            assert training.team_threads(net, costly_step=True) == idle
            net.fit(X, y, epochs=2, batch_size=64, optimizer=optimizer, lr=0.01, dropout=0.1)
            # two slices, each thread's BLAS single-threaded
            assert seen == [(idle, 2, 1)] * 2
            nets[idle] = net
        np.testing.assert_array_equal(nets[2]._params, nets[1]._params)
        np.testing.assert_array_equal(nets[2].optimizer_state.state, nets[1].optimizer_state.state)
        assert nets[2].history["loss"] == nets[1].history["loss"]
        assert get_optimizer(optimizer).costly_step
        assert not get_optimizer("momentum").costly_step
        # float64 dense networks keep one thread (the team was measured in float32)
        monkeypatch.setattr(blas, "idle_cores", lambda: 2)
        assert training.team_threads(Network([20, 4, 3], seed=0), costly_step=True) == 2
        assert training.team_threads(Network([20, 4, 3], seed=0, dtype="float64"),
                                     costly_step=True) == 1
    finally:
        set_num_threads(before)


def test_only_epochs_and_forwards_that_call_the_blas_prime_its_buffers(monkeypatch):
    """blas.prime (2.7 ms the first time in a process) before an epoch or a
    forward whose products run on the BLAS; not before the fused or units
    epochs, nor a forward on fastnn's own kernels, which make no BLAS call."""
    import fastnn._core
    from fastnn import blas

    calls = []
    monkeypatch.setattr(blas, "prime", lambda dtype: calls.append(dtype))
    X, y = make_classification(n=200, n_features=20)
    net = Network([20, 16, int(y.max()) + 1], seed=0)
    net.fit(X, y, epochs=2, batch_size=10, lr=0.1)             # small batches of plain SGD
    assert len(calls) == (0 if fastnn._core.small_gemm_available() else 2)
    calls.clear()
    net.fit(X, y, epochs=2, batch_size=10, optimizer="momentum", lr=0.1)     # the BLAS path
    assert len(calls) == 2
    calls.clear()
    net.forward(X)
    assert len(calls) == (0 if fastnn._core.predicts_without_blas(net.plan.table()[0]) else 1)
