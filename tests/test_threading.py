"""The thread pool under concurrent callers and across fork: same answers, no hang."""

import multiprocessing as mp
import sys
import threading

import numpy as np
import pytest

import pylstm
from helpers import make_lstm_inputs

pytestmark = pytest.mark.skipif("cpu" not in pylstm.available_backends(), reason="no CPU backend")


def _step(d):
    hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend="cpu")
    return (hs,) + tuple(pylstm.lstm_backward(d["dhs"], cache, d["dhT"], d["dcT"]))


def test_concurrent_python_threads_get_serial_answers():
    inputs = [make_lstm_inputs((16, 12, 64, 128), np.float32, seed=s) for s in range(4)]
    serial = [_step(d) for d in inputs]
    results = [None] * len(inputs)
    errors = []

    def worker(k):
        try:
            for _ in range(5):
                results[k] = _step(inputs[k])
        except Exception as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(len(inputs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert not any(t.is_alive() for t in threads), "a kernel call hung"
    assert not errors, errors
    for got, want in zip(results, serial):
        for a, b in zip(got, want):
            assert np.array_equal(a, b)


def _child(q):
    d = make_lstm_inputs((16, 12, 64, 128), np.float32, seed=1)
    q.put(float(_step(d)[0].sum()))


@pytest.mark.skipif(sys.platform != "linux", reason="fork start method")
@pytest.mark.filterwarnings("ignore:This process .* is multi-threaded")
def test_pool_works_in_a_forked_child():
    d = make_lstm_inputs((16, 12, 64, 128), np.float32, seed=1)
    want = float(_step(d)[0].sum())  # the parent's pool is running
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    p = ctx.Process(target=_child, args=(q,))
    p.start()
    p.join(timeout=30)
    if p.is_alive():
        p.kill()
        pytest.fail("the forked child hung in a kernel call")
    assert p.exitcode == 0
    assert q.get(timeout=5) == want
