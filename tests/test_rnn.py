"""The vanilla RNN cell on the shared engine: the reference against finite differences, every
backend against the float64 reference (both forward schedules, the BLAS path, emulated CUDA),
determinism, the NaN contract and bad inputs."""

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
    to_device,
    to_host,
)
from pylstm import _backend
from pylstm import reference as ref

NAMES = ("hs", "hT", "dxs", "dh0", "dWx", "dWh", "db")
ACTS = ("tanh", "relu")


def make_rnn_inputs(shape, dtype=np.float64, seed=0, with_state=True):
    """Random inputs (weights ~ N(0, 1)/sqrt(fan_in), non-zero h0, random upstream gradients)."""
    N, T, D, H = shape
    rng = np.random.default_rng(seed)
    d = {
        "xs": rng.standard_normal((N, T, D)),
        "Wx": rng.standard_normal((D, H)) / np.sqrt(D),
        "Wh": rng.standard_normal((H, H)) / np.sqrt(H),
        "b": rng.standard_normal(H) * 0.5,
        "h0": rng.standard_normal((N, H)) if with_state else None,
        "dhs": rng.standard_normal((N, T, H)),
        "dhT": rng.standard_normal((N, H)),
    }
    return {k: (None if v is None else np.ascontiguousarray(v, dtype=dtype)) for k, v in d.items()}


def _run_on(d, backend, act):
    hs, hT, cache = pylstm.rnn_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], act, backend=backend)
    grads = pylstm.rnn_backward(d["dhs"], cache, d["dhT"])
    return dict(zip(NAMES, (hs, hT) + tuple(grads)))


def _run(d, backend, act):
    if backend == "cuda":
        dd = {k: to_device(v) for k, v in d.items()}
        return {k: to_host(v) for k, v in _run_on(dd, backend, act).items()}
    return _run_on(d, backend, act)


def _reference64(d, act):
    return _run({k: (None if v is None else v.astype(np.float64)) for k, v in d.items()}, "numpy", act)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_state", [True, False])
def test_reference_matches_finite_differences(act, with_state):
    d = make_rnn_inputs((2, 4, 3, 5), np.float64, seed=1, with_state=with_state)
    if act == "relu":  # keep pre-activations away from the kink, where the derivative jumps
        d["b"] = d["b"] + 0.3

    def loss(**over):
        a = {**d, **over}
        hs, hT, _ = ref.rnn_forward_ref(a["xs"], a["h0"], a["Wx"], a["Wh"], a["b"], act)
        return float((hs * d["dhs"]).sum() + (hT * d["dhT"]).sum())

    _, _, cache = ref.rnn_forward_ref(d["xs"], d["h0"], d["Wx"], d["Wh"], d["b"], act)
    if cache.h0 is None or not with_state:
        cache = cache._replace(h0=np.zeros((2, 5)))
    dxs, dh0, dWx, dWh, db = ref.rnn_backward_ref(d["dhs"], cache, d["dhT"])
    grads = {"xs": dxs, "Wx": dWx, "Wh": dWh, "b": db}
    if with_state:
        grads["h0"] = dh0
    assert_matches_finite_differences(loss, d, grads)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_matches_reference(backend, act, shape, with_state):
    d = make_rnn_inputs(shape, np.float64, seed=3, with_state=with_state)
    got, want = _run(d, backend, act), _reference64(d, act)
    for name in NAMES:
        assert_close(name, got[name], want[name], rtol=1e-9)


@pytest.mark.parametrize("act", ACTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_within_twice_naive_error(cpu_path, act, shape):
    d32 = make_rnn_inputs(shape, np.float32, seed=4)
    assert_within_twice_naive(_run(d32, "cpu", act), _reference64(d32, act), _run(d32, "numpy", act))


@pytest.mark.parametrize("act", ACTS)
def test_float32_emulated_cuda_within_twice_naive_error(act):
    if _backend.cuda_emu is None:
        pytest.skip("no emulated CUDA module")
    d32 = make_rnn_inputs((4, 9, 40, 24), np.float32, seed=5)
    assert_within_twice_naive(_run(d32, "cuda-emu", act), _reference64(d32, act), _run(d32, "numpy", act))


@pytest.mark.parametrize("shape", [(8, 35, 64, 128), (20, 7, 50, 40), (3, 7, 17, 33)])
def test_forward_schedules_bit_identical(shape):
    """Both float32 forward schedules of the packed kernel round identically (training and
    inference alike)."""
    if _backend.cpu is None or not _backend.cpu._small_m_kernel_enabled():
        pytest.skip("no packed-weight kernel on this CPU")
    d = make_rnn_inputs(shape, np.float32, seed=6)
    out = {}
    for schedule in ("projection-first", "step-projection"):
        old = _backend.cpu._set_forward_schedule(schedule)
        try:
            hs, hT, _ = pylstm.rnn_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], backend="cpu")
            hs_i, _ = pylstm.rnn_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], backend="cpu")
        finally:
            _backend.cpu._set_forward_schedule(old)
        out[schedule] = (hs, hT, hs_i)
    for a, b in zip(out["projection-first"], out["step-projection"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("act", ACTS)
def test_inference_matches_training_forward(backend, act):
    d = make_rnn_inputs((5, 6, 7, 40), np.float64, seed=7)
    hs, hT, _ = pylstm.rnn_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], act, backend=backend)
    hs_i, hT_i = pylstm.rnn_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], act, backend=backend)
    np.testing.assert_array_equal(hs, hs_i)
    np.testing.assert_array_equal(hT, hT_i)


def test_thread_count_does_not_change_results():
    d = make_rnn_inputs((16, 10, 64, 96), np.float32, seed=8)
    assert_same_at_thread_counts(lambda: _run(d, "cpu", "tanh"))


@pytest.mark.parametrize("backend_name", ["numpy"] + KERNEL_BACKENDS)
def test_nan_in_wh_without_h0_reaches_step_one_not_step_zero(backend_name):
    """The spec's h0 = None: step 0 has no recurrent product, so a NaN in Wh shows from step 1
    on, on every backend alike (LSTM and RNN)."""
    if backend_name == "cuda":
        pytest.skip("host arrays only")
    d = make_rnn_inputs((2, 3, 4, 5), np.float64, seed=9, with_state=False)
    d["Wh"][1, 2] = np.nan
    hs, _, _ = pylstm.rnn_forward(d["xs"], d["Wx"], d["Wh"], d["b"], None, backend=backend_name)
    assert np.all(np.isfinite(hs[:, 0])) and np.all(np.isnan(hs[:, 1:, 2]))
    rng = np.random.default_rng(0)
    Wh = rng.standard_normal((5, 20))
    Wh[1, 2] = np.nan
    hs, _, _, _ = pylstm.lstm_forward(d["xs"], rng.standard_normal((4, 20)), Wh, np.zeros(20), backend=backend_name)
    # step 1: the unit whose forget gate reads the NaN; step 2: every unit
    assert np.all(np.isfinite(hs[:, 0])) and np.all(np.isnan(hs[:, 1, 2])) and np.all(np.isnan(hs[:, 2]))


@pytest.mark.parametrize("backend_name", ["numpy"] + KERNEL_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_saturated_and_infinite_inputs_match_reference(backend_name, dtype):
    """Saturated gates pass exactly zero gradient and infinities give what the reference gives
    (sigmoid is exactly 0 below the exp range, so 0 * inf is NaN everywhere alike)."""
    if backend_name == "cuda":
        pytest.skip("host arrays only")
    rng = np.random.default_rng(1)
    N, T, D, H = 2, 3, 2, 3
    xs = rng.standard_normal((N, T, D)).astype(dtype)
    Wx = rng.standard_normal((D, 4 * H)).astype(dtype)
    Wh = (rng.standard_normal((H, 4 * H)) * 0.1).astype(dtype)
    b = np.zeros(4 * H, dtype)
    b[:H] = -1000  # forget gate saturated shut
    c0 = np.full((N, H), np.inf, dtype)
    with np.errstate(invalid="ignore"):  # the reference's inf - inf, inf * 0 (NumPy warns)
        got = pylstm.lstm_forward(xs, Wx, Wh, b, None, c0, backend=backend_name)
        want = pylstm.lstm_forward(xs, Wx, Wh, b, None, c0, backend="numpy")
    for name, g, w in zip(("hs", "hT", "cT"), got[:3], want[:3]):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=name)
        np.testing.assert_array_equal(np.isinf(g), np.isinf(w), err_msg=name)
    dhs = rng.standard_normal((N, T, H)).astype(dtype)
    with np.errstate(invalid="ignore"):
        gb = pylstm.lstm_backward(dhs, got[3])
        wb = pylstm.lstm_backward(dhs, want[3])
    for name, g, w in zip(("dxs", "dh0", "dc0", "dWx", "dWh", "db"), gb, wb):
        np.testing.assert_array_equal(np.isnan(g), np.isnan(w), err_msg=name)
    # step 0's forget gate is exactly 0, so c_0 = 0 * inf is NaN (as in the reference)
    assert np.all(got[3].gates[:, 0, :H] == 0) and np.all(np.isnan(got[2]))


def test_bad_inputs_name_the_argument():
    d = make_rnn_inputs((2, 3, 4, 5), np.float32)
    args = (d["xs"], d["Wx"], d["Wh"], d["b"])
    for backend in ["numpy"] + [b for b in KERNEL_BACKENDS if b != "cuda"]:
        with pytest.raises(ValueError, match="^nonlinearity must be one of"):
            pylstm.rnn_forward(*args, nonlinearity="sigmoid", backend=backend)
        with pytest.raises(ValueError, match=r"^Wh must have shape \(5, 5\)"):
            pylstm.rnn_forward(d["xs"], np.zeros((4, 20), np.float32), np.zeros((5, 20), np.float32),
                               np.zeros(20, np.float32), backend=backend)
        with pytest.raises(ValueError, match=r"^b must have shape \(5,\)"):
            pylstm.rnn_forward(d["xs"], d["Wx"], d["Wh"], np.zeros(6, np.float32), backend=backend)
        with pytest.raises(TypeError, match="^Wx must have dtype float32"):
            pylstm.rnn_forward(d["xs"], d["Wx"].astype(np.float64), d["Wh"], d["b"], backend=backend)
        with pytest.raises(ValueError, match="^h0 must have shape"):
            pylstm.rnn_forward(*args, h0=np.zeros((3, 5), np.float32), backend=backend)
        _, _, cache = pylstm.rnn_forward(*args, backend=backend)
        with pytest.raises(ValueError, match="^dhs must have shape"):
            pylstm.rnn_backward(np.zeros((2, 3, 6), np.float32), cache)
        with pytest.raises(ValueError, match="^cache comes from a rnn_tanh forward pass"):
            pylstm.lstm_backward(d["dhs"], cache)
    with pytest.raises(TypeError, match="^cache must be the cache returned by rnn_forward"):
        pylstm.rnn_backward(d["dhs"], object())


def test_kernel_module_rejects_cell_state_and_unknown_cell():
    """The binding's own checks (what a caller of the private module meets)."""
    d = make_rnn_inputs((2, 3, 4, 5), np.float32)
    cpu = _backend.cpu
    names = ("'lstm', 'peephole', 'gru', 'gru_reset_before', 'gru_book', 'rnn_tanh', 'rnn_relu', 'lstm_torch', "
             "'gru_torch'")
    with pytest.raises(ValueError, match=f"^cell must be one of {names}, got 'lru'"):
        cpu.forward(d["xs"], d["Wx"], d["Wh"], d["b"], None, None, True, cell="lru")
    with pytest.raises(ValueError, match="^c0 must be None: the rnn_tanh cell has no cell state"):
        cpu.forward(d["xs"], d["Wx"], d["Wh"], d["b"], None, d["h0"], True, cell="rnn_tanh")
    hs, hT, cT, gates, cs = cpu.forward(d["xs"], d["Wx"], d["Wh"], d["b"], None, None, True, cell="rnn_relu")
    assert cT is None and cs is None and gates.shape == (2, 3, 5)
    np.testing.assert_array_equal(gates, hs)  # the RNN saves its output as its activation
    with pytest.raises(ValueError, match="^dcT must be None"):
        cpu.backward(d["xs"], None, None, d["Wx"], d["Wh"], d["b"], hs, gates, None, d["dhs"], None,
                     d["dhT"], cell="rnn_relu")
    assert cpu._forward_workspace_size(8, 35, 64, 128, True, 4, cell="rnn_tanh") == 0


class BookTimeRNN:
    """The book's TimeRNN (DLfS2 common/time_layers.py), in NumPy, for the drop-in check."""

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.h, self.dh, self.stateful = None, None, stateful

    def forward(self, xs):
        Wx, Wh, b = self.params
        N, T, _ = xs.shape
        self.states, hs = [], np.empty((N, T, Wh.shape[0]), xs.dtype)
        if not self.stateful or self.h is None:
            self.h = np.zeros((N, Wh.shape[0]), xs.dtype)
        self.xs = xs
        for t in range(T):
            h_prev = self.h
            self.h = np.tanh(h_prev @ Wh + xs[:, t] @ Wx + b)
            self.states.append((xs[:, t], h_prev, self.h))
            hs[:, t] = self.h
        return hs

    def backward(self, dhs):
        Wx, Wh, _ = self.params
        dxs = np.empty(self.xs.shape, dhs.dtype)
        dh = 0
        grads = [0, 0, 0]
        for t in reversed(range(dhs.shape[1])):
            x, h_prev, h_next = self.states[t]
            dt = (dhs[:, t] + dh) * (1 - h_next**2)
            grads[2] = grads[2] + dt.sum(axis=0)
            grads[1] = grads[1] + h_prev.T @ dt
            grads[0] = grads[0] + x.T @ dt
            dh = dt @ Wh.T
            dxs[:, t] = dt @ Wx.T
        for g, v in zip(self.grads, grads):
            g[...] = v
        self.dh = dh
        return dxs


@pytest.mark.parametrize("backend_name", ["numpy", "cpu"])
def test_time_rnn_is_a_drop_in_for_the_books(backend_name):
    from pylstm.layers import TimeRNN

    d = make_rnn_inputs((3, 5, 4, 6), np.float64, seed=10)
    ours = TimeRNN(d["Wx"], d["Wh"], d["b"], stateful=True, backend=backend_name)
    book = BookTimeRNN(d["Wx"], d["Wh"], d["b"], stateful=True)
    for chunk in (slice(0, 2), slice(2, 5)):  # truncated BPTT: the state carries over
        xs = np.ascontiguousarray(d["xs"][:, chunk])
        dhs = np.ascontiguousarray(d["dhs"][:, chunk])
        assert_close("hs", ours.forward(xs), book.forward(xs), rtol=1e-12)
        assert_close("dxs", ours.backward(dhs), book.backward(dhs), rtol=1e-12)
        for name, g, w in zip(("dWx", "dWh", "db"), ours.grads, book.grads):
            assert_close(name, g, w, rtol=1e-12)
        assert_close("dh", ours.dh, book.dh, rtol=1e-12)
    ours.reset_state()
    assert ours.h is None
    with pytest.raises(ValueError, match="^nonlinearity must be one of"):
        TimeRNN(d["Wx"], d["Wh"], d["b"], nonlinearity="gelu")


def test_converter_against_torch_nn_rnn():
    torch = pytest.importorskip("torch")
    from pylstm import convert

    for act in ACTS:
        d = make_rnn_inputs((3, 6, 4, 7), seed=11)
        rnn = torch.nn.RNN(4, 7, nonlinearity=act, batch_first=True).double()
        with torch.no_grad():
            for name, v in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"),
                               convert.rnn_to_torch(d["Wx"], d["Wh"], d["b"])):
                getattr(rnn, name).copy_(torch.from_numpy(v))
            out, hT = rnn(torch.from_numpy(d["xs"]), torch.from_numpy(d["h0"])[None])
        want, wh, _ = ref.rnn_forward_ref(d["xs"], d["h0"], d["Wx"], d["Wh"], d["b"], act)
        assert_close("hs", out.numpy(), want, rtol=1e-12)
        assert_close("hT", hT[0].numpy(), wh, rtol=1e-12)
        back = convert.rnn_from_torch(*(getattr(rnn, n).detach().numpy() for n in
                                        ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")))
        for name, got, orig in zip(("Wx", "Wh", "b"), back, (d["Wx"], d["Wh"], d["b"])):
            assert_close(name, got, orig, rtol=0)


def test_converter_bad_shapes_name_the_argument():
    from pylstm import convert

    with pytest.raises(ValueError, match="^Wh must have shape"):
        convert.rnn_to_torch(np.zeros((3, 5)), np.zeros((5, 6)), np.zeros(5))
    with pytest.raises(ValueError, match="^weight_ih must have shape"):
        convert.rnn_from_torch(np.zeros((4, 3)), np.zeros((5, 5)))
    with pytest.raises(ValueError, match="^bias_hh must have shape"):
        convert.rnn_from_torch(np.zeros((5, 3)), np.zeros((5, 5)), None, np.zeros(4))
