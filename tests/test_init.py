"""The initializers (pylstm.init): each scheme's statistics, and the models built with them."""

import numpy as np
import pytest

from pylstm import init
from pylstm.models import LstmLM


@pytest.mark.parametrize("cell", ["lstm", "peephole", "gru", "rnn"])
def test_keras_scheme(cell):
    D, H = 30, 40
    G = {"lstm": 4, "peephole": 4, "gru": 3, "rnn": 1}[cell]
    p = init.init_recurrent(cell, D, H, "keras", np.random.default_rng(0))
    Wx, Wh, b = p[:3]
    assert all(a.dtype == np.float32 and a.flags.c_contiguous for a in p)
    a = np.sqrt(6 / (D + G * H))
    assert np.abs(Wx).max() <= a and np.abs(Wx).max() > 0.9 * a  # glorot_uniform fills its range
    # the whole recurrent kernel is orthogonal (rows orthonormal), to float32 rounding
    np.testing.assert_allclose(Wh.astype(np.float64) @ Wh.T.astype(np.float64), np.eye(H), atol=1e-6)
    if cell in ("lstm", "peephole"):
        assert np.all(b[:H] == 1) and np.all(b[H:] == 0)  # unit forget bias (blocks f, g, i, o)
    else:
        assert np.all(b == 0)
    if cell == "peephole":
        assert p[3].shape == (3, H) and 0 < np.abs(p[3]).max() <= np.sqrt(3 / H)
    if cell == "gru":
        assert p[3].shape == (H,) and np.all(p[3] == 0)


@pytest.mark.parametrize("cell", ["lstm", "gru", "peephole"])
def test_torch_and_book_schemes(cell):
    D, H = 50, 64
    p = init.init_recurrent(cell, D, H, "torch", np.random.default_rng(1))
    k = 1 / np.sqrt(H)
    for a in p:
        assert np.abs(a).max() <= k and np.abs(a).max() > 0.9 * k
    q = init.init_recurrent(cell, D, H, "book", np.random.default_rng(2))
    assert abs(q[0].std() * np.sqrt(D) - 1) < 0.05 and abs(q[1].std() * np.sqrt(H) - 1) < 0.05
    assert not np.any(q[2]) and all(not np.any(x) for x in q[3:])


def test_orthogonal_is_square_orthogonal_and_tall():
    rng = np.random.default_rng(3)
    q = init.orthogonal(20, 20, rng)
    np.testing.assert_allclose(q @ q.T, np.eye(20), atol=1e-12)
    t = init.orthogonal(30, 10, rng)
    np.testing.assert_allclose(t.T @ t, np.eye(10), atol=1e-12)


def test_models_take_every_scheme_and_reject_unknown_names():
    for scheme in init.SCHEMES:
        m = LstmLM(20, 8, 16, num_layers=2, cell="gru", seed=0, init=scheme)
        assert m.config["init"] == scheme
        assert all(np.all(np.isfinite(p)) for p in m.params)
    m = LstmLM(20, 8, 16, seed=0, init="keras")
    assert np.all(m.lstm_layers[0].params[2][:16] == 1)
    for bad in ("xavier", "Keras"):
        with pytest.raises(ValueError, match="^init must be one of"):
            LstmLM(20, 8, 16, init=bad)
    with pytest.raises(ValueError, match="^init must be one of"):
        init.init_recurrent("lstm", 3, 4, "he", np.random.default_rng(0))
    with pytest.raises(ValueError, match="^cell must be one of"):
        init.init_recurrent("lru", 3, 4, "book", np.random.default_rng(0))
