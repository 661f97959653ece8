"""The reference against central finite differences (float64, tiny shapes, every gradient)."""

import numpy as np
import pytest

from helpers import assert_close, make_lstm_inputs
from pylstm import reference as ref


def _loss(d):
    hs, hT, cT, _ = ref.lstm_forward_ref(d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"])
    return float((hs * d["dhs"]).sum() + (hT * d["dhT"]).sum() + (cT * d["dcT"]).sum())


@pytest.mark.parametrize("shape", [(2, 3, 4, 5), (1, 4, 2, 3), (3, 2, 3, 2)])
def test_reference_backward_matches_finite_differences(shape):
    d = make_lstm_inputs(shape, np.float64, seed=1)
    _, _, _, cache = ref.lstm_forward_ref(d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"])
    dxs, dh0, dc0, dWx, dWh, db = ref.lstm_backward_ref(d["dhs"], cache, d["dhT"], d["dcT"])
    analytic = {"xs": dxs, "h0": dh0, "c0": dc0, "Wx": dWx, "Wh": dWh, "b": db}
    eps = 1e-6
    for name, grad in analytic.items():
        x = d[name]
        num = np.empty_like(x)
        for idx in np.ndindex(x.shape):
            keep = x[idx]
            x[idx] = keep + eps
            up = _loss(d)
            x[idx] = keep - eps
            down = _loss(d)
            x[idx] = keep
            num[idx] = (up - down) / (2 * eps)
        # Central differences with eps = 1e-6 on O(1) values: truncation ~eps^2, rounding
        # ~1e-16/eps = 1e-10; 1e-7 leaves a wide margin yet catches any wrong term.
        assert_close(f"d{name}", grad, num, rtol=1e-7)


def test_reference_zero_state_equals_explicit_zeros():
    d = make_lstm_inputs((2, 3, 4, 5), np.float64, seed=2)
    z = np.zeros((2, 5))
    a = ref.lstm_forward_ref(d["xs"], None, None, d["Wx"], d["Wh"], d["b"])
    b = ref.lstm_forward_ref(d["xs"], z, z, d["Wx"], d["Wh"], d["b"])
    for x, y in zip(a[:3], b[:3]):
        np.testing.assert_array_equal(x, y)


def test_reference_gate_order_is_f_g_i_o():
    # One unit, one step, h0 = 0: drive each gate block separately through the bias.
    Wx = np.zeros((1, 4))
    Wh = np.zeros((1, 4))
    xs = np.zeros((1, 1, 1))
    c0 = np.array([[2.0]])
    b = np.array([-50.0, 0.5, 50.0, 50.0])  # f = 0, g = tanh(0.5), i = 1, o = 1
    hs, hT, cT, _ = ref.lstm_forward_ref(xs, None, c0, Wx, Wh, b)
    assert cT[0, 0] == pytest.approx(np.tanh(0.5))  # forget gate closed: c0 is dropped
    b = np.array([50.0, 0.5, -50.0, 50.0])  # f = 1, i = 0: c = c0
    _, _, cT, _ = ref.lstm_forward_ref(xs, None, c0, Wx, Wh, b)
    assert cT[0, 0] == pytest.approx(2.0)
    b = np.array([50.0, 0.5, -50.0, -50.0])  # o = 0: h = 0
    hs, _, _, _ = ref.lstm_forward_ref(xs, None, c0, Wx, Wh, b)
    assert abs(hs[0, 0, 0]) < 1e-20


def test_sigmoid_ref_no_overflow_and_accurate():
    x = np.array([-1000.0, -30.0, 0.0, 30.0, 1000.0])
    with np.errstate(all="raise"):
        s = ref.sigmoid_ref(x)
    np.testing.assert_allclose(s, [0.0, 1 / (1 + np.exp(30.0)), 0.5, 1 / (1 + np.exp(-30.0)), 1.0])


def test_clip_ref_book_semantics():
    g1 = np.array([3.0, 4.0])
    g2 = np.array([[12.0]])
    total = ref.clip_grads_ref([g1, g2], 6.5)
    assert total == pytest.approx(13.0)
    rate = 6.5 / (13.0 + 1e-6)
    np.testing.assert_allclose(g1, [3 * rate, 4 * rate])
    np.testing.assert_allclose(g2, [[12 * rate]])
