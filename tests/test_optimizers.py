"""Optimizers against the book's update rules written out by hand, two steps each."""

import numpy as np
import pytest

from pylstm import optimizers as O


def _run(opt, steps=2):
    p = [np.array([1.0, -2.0, 0.5]), np.array([[0.3]])]
    gs = [[np.array([0.1, 0.2, -0.3]), np.array([[1.0]])], [np.array([-0.2, 0.1, 0.0]), np.array([[0.5]])]]
    for s in range(steps):
        opt.update(p, gs[s])
    return p, gs


def test_sgd():
    p, gs = _run(O.SGD(0.5))
    np.testing.assert_allclose(p[0], np.array([1.0, -2.0, 0.5]) - 0.5 * (gs[0][0] + gs[1][0]))


def test_momentum():
    p, gs = _run(O.Momentum(0.1, 0.9))
    v1 = -0.1 * gs[0][0]
    v2 = 0.9 * v1 - 0.1 * gs[1][0]
    np.testing.assert_allclose(p[0], np.array([1.0, -2.0, 0.5]) + v1 + v2)


def test_nesterov():
    p, gs = _run(O.Nesterov(0.1, 0.9))
    x = np.array([1.0, -2.0, 0.5])
    v = np.zeros(3)
    for g in (gs[0][0], gs[1][0]):
        v = 0.9 * v - 0.1 * g
        x = x + 0.81 * v - 1.9 * 0.1 * g
    np.testing.assert_allclose(p[0], x)


@pytest.mark.parametrize("cls,decay", [(O.AdaGrad, None), (O.RMSprop, 0.99)])
def test_adagrad_rmsprop(cls, decay):
    opt = cls(0.1) if decay is None else cls(0.1, decay)
    p, gs = _run(opt)
    x, h = np.array([1.0, -2.0, 0.5]), np.zeros(3)
    for g in (gs[0][0], gs[1][0]):
        h = h + g * g if decay is None else decay * h + (1 - decay) * g * g
        x = x - 0.1 * g / (np.sqrt(h) + 1e-7)
    np.testing.assert_allclose(p[0], x)


def test_adam():
    p, gs = _run(O.Adam(0.01, 0.9, 0.999))
    x, m, v = np.array([1.0, -2.0, 0.5]), np.zeros(3), np.zeros(3)
    for t, g in enumerate((gs[0][0], gs[1][0]), start=1):
        lr_t = 0.01 * np.sqrt(1 - 0.999 ** t) / (1 - 0.9 ** t)
        m += 0.1 * (g - m)
        v += 0.001 * (g * g - v)
        x = x - lr_t * m / (np.sqrt(v) + 1e-7)
    np.testing.assert_allclose(p[0], x)


def test_state_dict_round_trip_continues_identically():
    a = O.Adam(0.01)
    _run(a, 1)
    b = O.Adam(0.5)
    b.load_state_dict({k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in a.state_dict().items()})
    assert b.iter == a.iter and b.lr == a.lr
    g = [np.array([0.3, 0.3, 0.3]), np.array([[0.1]])]
    pa = [np.ones(3), np.ones((1, 1))]
    pb = [np.ones(3), np.ones((1, 1))]
    a.update(pa, g)
    b.update(pb, g)
    np.testing.assert_array_equal(pa[0], pb[0])


def test_bad_lr():
    with pytest.raises(ValueError, match="^lr"):
        O.SGD(0)
    with pytest.raises(ValueError, match="^lr"):
        O.Adam(float("nan"))
