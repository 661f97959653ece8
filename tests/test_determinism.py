"""Same inputs, same thread count: bit-identical outputs, run to run."""

import numpy as np
import pytest

import pylstm
from helpers import make_lstm_inputs

pytestmark = pytest.mark.skipif("cpu" not in pylstm.available_backends(), reason="no CPU backend")


@pytest.fixture
def threads():
    old = pylstm.get_num_threads()
    yield
    pylstm.set_num_threads(old)


@pytest.mark.parametrize("n_threads", [1, 2])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_lstm_bit_identical_run_to_run(threads, n_threads, dtype):
    pylstm.set_num_threads(n_threads)
    d = make_lstm_inputs((16, 20, 96, 128), dtype, seed=11)
    runs = []
    for _ in range(3):
        hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"],
                                                backend="cpu")
        runs.append((hs, hT, cT) + tuple(pylstm.lstm_backward(d["dhs"], cache, d["dhT"], d["dcT"])))
    for other in runs[1:]:
        for a, b in zip(runs[0], other):
            assert np.array_equal(a, b)


def test_global_norm_independent_of_thread_count(threads):
    rng = np.random.default_rng(12)
    grads = [rng.standard_normal(n).astype(np.float32) for n in (1_000_003, 70_000, 5)]
    norms = []
    for n in (1, 2, 3):
        pylstm.set_num_threads(n)
        norms.append(pylstm.global_norm(grads, backend="cpu"))
    assert norms[0] == norms[1] == norms[2]


def test_set_num_threads_round_trip_and_cap(threads):
    import os

    cpus = len(os.sched_getaffinity(0))
    pylstm.set_num_threads(1)
    assert pylstm.get_num_threads() == 1
    pylstm.set_num_threads(2)
    assert pylstm.get_num_threads() == min(2, cpus)
    pylstm.set_num_threads(cpus + 7)
    assert pylstm.get_num_threads() == cpus
    for huge in (2**31, 2**40, np.int64(2**33)):  # past C int: capped like any other count
        pylstm.set_num_threads(huge)
        assert pylstm.get_num_threads() == cpus


def test_huge_thread_count_from_the_environment_is_capped(tmp_path):
    import subprocess
    import sys

    code = "import pylstm; print(pylstm.get_num_threads())"
    env = dict(__import__("os").environ, PYLSTM_NUM_THREADS="3000000000")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60,
                       cwd=tmp_path)  # not the repo root, whose source tree would shadow the install
    assert r.returncode == 0, r.stderr
    assert int(r.stdout) >= 1
