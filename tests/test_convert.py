"""Weight-layout converters: round trips, and the converted weights computing the same LSTM in
the other library's equations (written out here; and against torch itself when installed)."""

import numpy as np
import pytest

from helpers import assert_close, make_lstm_inputs
from pylstm import convert
from pylstm import reference as ref


def _sig(x):
    return 1 / (1 + np.exp(-x))


def _lstm_ifgo(xs, w_x, w_h, bias, h, c, cand_first=False):
    """An LSTM written in the i, f, g(c), o block order with projection x @ w_x (Keras style)."""
    H = h.shape[1]
    hs = []
    for t in range(xs.shape[1]):
        a = xs[:, t] @ w_x + h @ w_h + bias
        i, f, g, o = _sig(a[:, :H]), _sig(a[:, H:2 * H]), np.tanh(a[:, 2 * H:3 * H]), _sig(a[:, 3 * H:])
        c = f * c + i * g
        h = o * np.tanh(c)
        hs.append(h)
    return np.stack(hs, axis=1)


def test_torch_layout_equations():
    d = make_lstm_inputs((2, 4, 3, 5), seed=1)
    w_ih, w_hh, b_ih, b_hh = convert.to_torch(d["Wx"], d["Wh"], d["b"])
    assert w_ih.shape == (20, 3) and w_hh.shape == (20, 5) and not b_hh.any()
    want, _, _, _ = ref.lstm_forward_ref(d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"])
    got = _lstm_ifgo(d["xs"], w_ih.T, w_hh.T, b_ih + b_hh, d["h0"], d["c0"])
    assert_close("hs", got, want, rtol=1e-12)


def test_torch_round_trip_adds_biases():
    d = make_lstm_inputs((2, 4, 3, 5), seed=2)
    w_ih, w_hh, b_ih, _ = convert.to_torch(d["Wx"], d["Wh"], d["b"])
    Wx, Wh, b = convert.from_torch(w_ih, w_hh, b_ih * 0.25, b_ih * 0.75)
    np.testing.assert_array_equal(Wx, d["Wx"])
    np.testing.assert_array_equal(Wh, d["Wh"])
    np.testing.assert_allclose(b, d["b"], rtol=1e-15)


def test_keras_layout_round_trip_and_equations():
    d = make_lstm_inputs((2, 4, 3, 5), seed=3)
    k, rk, bias = convert.to_keras(d["Wx"], d["Wh"], d["b"])
    got = _lstm_ifgo(d["xs"], k, rk, bias, d["h0"], d["c0"])
    want, _, _, _ = ref.lstm_forward_ref(d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"])
    assert_close("hs", got, want, rtol=1e-12)
    for a, b in zip(convert.from_keras(k, rk, bias), (d["Wx"], d["Wh"], d["b"])):
        np.testing.assert_array_equal(a, b)


def test_from_torch_rejects_bad_shapes():
    with pytest.raises(ValueError, match="^weight_hh"):
        convert.from_torch(np.zeros((20, 3)), np.zeros((20, 4)))
    with pytest.raises(ValueError, match="^weight_ih"):
        convert.from_torch(np.zeros((16, 3)), np.zeros((20, 5)))
    with pytest.raises(ValueError, match="^bias_hh"):
        convert.from_torch(np.zeros((20, 3)), np.zeros((20, 5)), None, np.zeros(19))
    with pytest.raises(TypeError, match="^Wx"):
        convert.to_torch(np.zeros((3, 20), np.int32), np.zeros((5, 20)), np.zeros(20))


def test_against_torch_nn_lstm():
    torch = pytest.importorskip("torch")
    d = make_lstm_inputs((3, 6, 4, 7), seed=4)
    lstm = torch.nn.LSTM(4, 7, batch_first=True).double()
    with torch.no_grad():
        for name, v in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"),
                           convert.to_torch(d["Wx"], d["Wh"], d["b"])):
            getattr(lstm, name).copy_(torch.from_numpy(v))
        out, (hT, cT) = lstm(torch.from_numpy(d["xs"]),
                             (torch.from_numpy(d["h0"])[None], torch.from_numpy(d["c0"])[None]))
    want, wh, wc, _ = ref.lstm_forward_ref(d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"])
    assert_close("hs", out.numpy(), want, rtol=1e-12)
    assert_close("cT", cT[0].numpy(), wc, rtol=1e-12)
    Wx, Wh, b = convert.from_torch(*(getattr(lstm, n).detach().numpy() for n in
                                     ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")))
    assert_close("Wx", Wx, d["Wx"], rtol=0)
