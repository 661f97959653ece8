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


# --- SGD on the CPU kernel (one pass, no temporary): NumPy's bits ---------------------------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("lr", [20.0, 0.1, 3, 1e-30])
def test_sgd_kernel_gives_numpys_bits(dtype, lr):
    rng = np.random.default_rng(0)
    sizes = [1, 7, 100_003, (300, 201)]  # (longer than one of the kernel's chunks too)
    params = [rng.standard_normal(s).astype(dtype) for s in sizes]
    grads = [rng.standard_normal(s).astype(dtype) * 10 for s in sizes]
    expect = [p.copy() for p in params]
    for p, g in zip(expect, grads):
        p -= lr * g  # the rule as NumPy evaluates it (lr a Python number: rounded to the dtype)
    O.SGD(lr).update(params, grads)
    for p, e in zip(params, expect):
        assert p.dtype == dtype and np.array_equal(p, e)


def test_sgd_falls_back_to_numpy_where_the_kernel_does_not_apply():
    rng = np.random.default_rng(1)
    p = rng.standard_normal((6, 8)).astype(np.float32)
    g = rng.standard_normal((8, 6)).astype(np.float32).T  # non-contiguous
    e = p.copy()
    e -= 0.5 * g
    O.SGD(0.5).update([p], [g])
    assert np.array_equal(p, e)
    h = np.ones(5, np.float16)  # a dtype the kernel has not
    O.SGD(0.5).update([h], [np.ones(5, np.float16)])
    assert np.array_equal(h, np.full(5, 0.5, np.float16))
    q = np.arange(6.0)
    O.SGD(1.0).update([q[1:]], [q[:-1]])  # overlapping: NumPy's buffered result
    assert np.array_equal(q, [0.0, 1.0, 1.0, 1.0, 1.0, 1.0])  # (lr * g formed first)


def test_sgd_kernel_checks_its_arguments():
    from pylstm import _backend

    cpu = _backend.require_cpu()
    p32, g32 = np.zeros(4, np.float32), np.ones(4, np.float32)
    with pytest.raises(ValueError, match=r"^grads\[0\] has 3 elements"):
        cpu.sgd_update([p32], [np.ones(3, np.float32)], 1.0)
    with pytest.raises(TypeError, match="^grads have dtype float64"):
        cpu.sgd_update([p32], [np.ones(4)], 1.0)
    with pytest.raises(ValueError, match="^grads must hold one array per parameter"):
        cpu.sgd_update([p32], [], 1.0)
    with pytest.raises(ValueError, match=r"^grads\[0\] overlaps params\[0\]"):
        cpu.sgd_update([p32], [p32], 1.0)
    ro = np.zeros(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"^params\[0\] must be writable"):
        cpu.sgd_update([ro], [g32], 1.0)
    with pytest.raises(ValueError, match="^lr must be finite"):
        cpu.sgd_update([p32], [g32], float("nan"))


def test_sgd_rows_is_sgds_arithmetic_whatever_lr_is():
    """An embedding's rows updated alone give the bits the whole update gives, for a Python or a
    NumPy lr (NumPy forms lr * g in float64 for an np.float64 lr), with and without a scale."""
    rng = np.random.default_rng(2)
    W0 = rng.standard_normal((20, 5)).astype(np.float32)
    rows = np.array([1, 4, 7, 19])
    G = np.zeros_like(W0)
    G[rows] = rng.standard_normal((4, 5)).astype(np.float32)
    for lr in (0.7, np.float64(0.7), np.float32(0.7)):
        for rate in (1.0, 0.37):
            whole, part = W0.copy(), W0.copy()
            O.update_scaled(O.SGD(lr), [whole], [G.copy()], rate)
            O.sgd_rows(O.SGD(lr), part, rows, G[rows], rate)
            assert np.array_equal(whole, part), (lr, rate)


def test_sgd_refuses_a_gradient_of_another_shape():
    with pytest.raises(ValueError):
        O.SGD(0.5).update([np.zeros((2, 3), np.float32)], [np.ones((3, 2), np.float32)])
