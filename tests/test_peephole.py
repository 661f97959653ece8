"""The peephole LSTM (the engine's per-unit parameters): the reference against finite
differences, every backend against the float64 reference (both forward schedules, the BLAS path,
emulated CUDA), determinism, the layer, and bad inputs."""

import numpy as np
import pytest

import pylstm
from helpers import (
    KERNEL_BACKENDS,
    SHAPES,
    assert_close,
    assert_matches_finite_differences,
    assert_same_at_thread_counts,
    assert_within_twice_naive,
    make_lstm_inputs,
    to_device,
    to_host,
)
from pylstm import _backend
from pylstm import reference as ref

NAMES = ("hs", "hT", "cT", "dxs", "dh0", "dc0", "dWx", "dWh", "db", "dP")


def make_inputs(shape, dtype=np.float64, seed=0, with_state=True):
    """The LSTM's inputs and peepholes P (3, H) of order one (they matter in every gate)."""
    d = make_lstm_inputs(shape, np.float64, seed, with_state)
    d["P"] = np.random.default_rng(seed + 100).standard_normal((3, shape[3])) * 0.7
    return {k: (None if v is None else np.ascontiguousarray(v, dtype=dtype)) for k, v in d.items()}


def _run_on(d, backend):
    hs, hT, cT, cache = pylstm.peephole_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["P"], d["h0"], d["c0"],
                                                backend=backend)
    grads = pylstm.peephole_backward(d["dhs"], cache, d["dhT"], d["dcT"])
    return dict(zip(NAMES, (hs, hT, cT) + tuple(grads)))


def _run(d, backend):
    if backend == "cuda":
        dd = {k: to_device(v) for k, v in d.items()}
        return {k: to_host(v) for k, v in _run_on(dd, backend).items()}
    return _run_on(d, backend)


def _reference64(d):
    return _run({k: (None if v is None else v.astype(np.float64)) for k, v in d.items()}, "numpy")


@pytest.mark.parametrize("with_state", [True, False])
def test_reference_matches_finite_differences(with_state):
    d = make_inputs((2, 4, 3, 5), np.float64, seed=1, with_state=with_state)

    def loss(**over):
        a = {**d, **over}
        hs, hT, cT, _ = ref.peephole_forward_ref(a["xs"], a["h0"], a["c0"], a["Wx"], a["Wh"], a["b"], a["P"])
        return float((hs * d["dhs"]).sum() + (hT * d["dhT"]).sum() + (cT * d["dcT"]).sum())

    _, _, _, cache = ref.peephole_forward_ref(d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"], d["P"])
    dxs, dh0, dc0, dWx, dWh, db, dP = ref.peephole_backward_ref(d["dhs"], cache, d["dhT"], d["dcT"])
    grads = {"xs": dxs, "Wx": dWx, "Wh": dWh, "b": db, "P": dP}
    if with_state:
        grads.update(h0=dh0, c0=dc0)
    assert_matches_finite_differences(loss, d, grads)


def test_zero_peepholes_are_the_lstm():
    d = make_inputs((3, 5, 4, 6), np.float64, seed=2)
    d["P"][...] = 0
    got = _run(d, "numpy")
    hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend="numpy")
    want = (hs, hT, cT) + tuple(pylstm.lstm_backward(d["dhs"], cache, d["dhT"], d["dcT"]))
    for name, w in zip(NAMES, want):
        np.testing.assert_array_equal(got[name], w, err_msg=name)


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_matches_reference(backend, shape, with_state):
    d = make_inputs(shape, np.float64, seed=3, with_state=with_state)
    got, want = _run(d, backend), _reference64(d)
    for name in NAMES:
        assert_close(name, got[name], want[name], rtol=1e-9)


@pytest.mark.parametrize("shape", SHAPES)
def test_float32_within_twice_naive_error(cpu_path, shape):
    d32 = make_inputs(shape, np.float32, seed=4)
    assert_within_twice_naive(_run(d32, "cpu"), _reference64(d32), _run(d32, "numpy"))


def test_float32_emulated_cuda_within_twice_naive_error():
    if _backend.cuda_emu is None:
        pytest.skip("no emulated CUDA module")
    # N*T = 4150 rows: several row chunks of the two-launch dP sum, the last one ragged
    for shape in [(4, 9, 40, 24), (83, 50, 6, 20)]:
        d32 = make_inputs(shape, np.float32, seed=5)
        assert_within_twice_naive(_run(d32, "cuda-emu"), _reference64(d32), _run(d32, "numpy"), f"{shape} ")


@pytest.mark.parametrize("shape", [(8, 35, 64, 128), (3, 7, 17, 33)])
def test_forward_schedules_bit_identical(shape):
    if _backend.cpu is None or not _backend.cpu._small_m_kernel_enabled():
        pytest.skip("no packed-weight kernel on this CPU")
    d = make_inputs(shape, np.float32, seed=6)
    args = (d["xs"], d["Wx"], d["Wh"], d["b"], d["P"], d["h0"], d["c0"])
    out = {}
    for schedule in ("projection-first", "step-projection"):
        old = _backend.cpu._set_forward_schedule(schedule)
        try:
            hs, hT, cT, _ = pylstm.peephole_forward(*args, backend="cpu")
            hs_i, _, cT_i = pylstm.peephole_inference(*args, backend="cpu")
        finally:
            _backend.cpu._set_forward_schedule(old)
        out[schedule] = (hs, hT, cT, hs_i, cT_i)
    for a, b in zip(out["projection-first"], out["step-projection"]):
        np.testing.assert_array_equal(a, b)


def test_thread_count_does_not_change_results():
    d = make_inputs((16, 10, 64, 96), np.float32, seed=8)
    assert_same_at_thread_counts(lambda: _run(d, "cpu"))


def test_bad_inputs_name_the_argument():
    d = make_inputs((2, 3, 4, 5), np.float32)
    args = (d["xs"], d["Wx"], d["Wh"], d["b"])
    for backend in ["numpy"] + [b for b in KERNEL_BACKENDS if b != "cuda"]:
        with pytest.raises(ValueError, match=r"^P must have shape \(3, 5\)"):
            pylstm.peephole_forward(*args, np.zeros((4, 5), np.float32), backend=backend)
        with pytest.raises(ValueError, match=r"^P must be an array of shape \(3, H\)"):
            pylstm.peephole_forward(*args, None, backend=backend)
        with pytest.raises(TypeError, match="^P must have dtype float32"):
            pylstm.peephole_forward(*args, d["P"].astype(np.float64), backend=backend)
        with pytest.raises(ValueError, match="^P must be C-contiguous"):
            pylstm.peephole_forward(*args, np.asfortranarray(np.zeros((3, 5), np.float32)), backend=backend)
        _, _, _, cache = pylstm.peephole_forward(*args, d["P"], backend=backend)
        with pytest.raises(ValueError, match="^cache comes from a peephole forward pass"):
            pylstm.lstm_backward(d["dhs"], cache)
        _, _, _, lcache = pylstm.lstm_forward(*args, backend=backend)
        with pytest.raises(ValueError, match="^cache comes from a lstm forward pass"):
            pylstm.peephole_backward(d["dhs"], lcache)
    with pytest.raises(ValueError, match="^P must be None: the lstm cell has no per-unit parameters"):
        _backend.cpu.forward(*args, None, None, True, cell="lstm", P=d["P"])
    with pytest.raises(ValueError, match="^P must be None: the rnn_tanh cell"):
        _backend.cpu.forward(d["xs"], d["Wx"][:, :5].copy(), d["Wh"][:, :5].copy(), d["b"][:5], None, None,
                             True, cell="rnn_tanh", P=d["P"])


@pytest.mark.parametrize("backend_name", ["numpy", "cpu"])
def test_layer_carries_h_and_c_across_truncated_chunks(backend_name):
    """TimePeepholeLSTM, stateful, over two chunks gives the outputs of one call over the whole
    sequence; its grads are the functional backward's, P's included."""
    from pylstm.layers import TimePeepholeLSTM

    d = make_inputs((3, 6, 4, 5), np.float64, seed=10, with_state=False)
    layer = TimePeepholeLSTM(d["Wx"], d["Wh"], d["b"], d["P"], stateful=True, backend=backend_name)
    assert len(layer.params) == len(layer.grads) == 4
    hs = np.concatenate([layer.forward(np.ascontiguousarray(d["xs"][:, c]))
                         for c in (slice(0, 2), slice(2, 6))], axis=1)
    want, _, cT, cache = pylstm.peephole_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["P"], backend="numpy")
    assert_close("hs", hs, want, rtol=1e-12)
    assert_close("c", layer.c, cT, rtol=1e-12)
    dhs = np.ascontiguousarray(d["dhs"][:, 2:6])
    dxs = layer.backward(dhs)
    _, _, _, cache2 = pylstm.peephole_forward(np.ascontiguousarray(d["xs"][:, 2:6]), d["Wx"], d["Wh"], d["b"], d["P"],
                                              want[:, 1].copy(), cache.cs[:, 1].copy(), backend="numpy")
    wd = pylstm.peephole_backward(dhs, cache2)
    assert_close("dxs", dxs, wd[0], rtol=1e-12)
    assert_close("dh", layer.dh, wd[1], rtol=1e-12)
    assert_close("dc", layer.dc, wd[2], rtol=1e-12)
    for name, g, w in zip(("dWx", "dWh", "db", "dP"), layer.grads, wd[3:]):
        assert_close(name, g, w, rtol=1e-12)
