"""Weights read in place against weights packed: the float32 kernel path reads a row-major
weight matrix in place for short calls (a single step, a few rows) instead of packing it, with
the same micro-kernel and order of summation, so the two must agree to the bit, for every cell,
both forward schedules, with lengths and reversed, and for matmul (the Affine layers)."""

import numpy as np
import pytest

import pylstm
from pylstm import _backend

cpu = _backend.cpu
pytestmark = pytest.mark.skipif(cpu is None or not cpu._small_m_kernel_enabled(),
                                reason="needs the AVX-512 packed-weight kernel")

GATES = {"lstm": 4, "peephole": 4, "gru": 3, "rnn": 1}
# single steps (generation), short calls, columns that end mid-panel, D > the kernel's K block
SHAPES = [(1, 1, 650, 650), (1, 1, 48, 384), (20, 1, 200, 200), (3, 2, 20, 37), (9, 5, 33, 130),
          (1, 7, 5, 16), (2, 3, 1100, 24), (40, 3, 8, 16)]


def _inputs(cell, shape, seed=0):
    N, T, D, H = shape
    G = GATES[cell]
    r = np.random.default_rng(seed)
    f = np.float32
    return dict(xs=r.standard_normal((N, T, D)).astype(f),
                Wx=(r.standard_normal((D, G * H)) / np.sqrt(D)).astype(f),
                Wh=(r.standard_normal((H, G * H)) / np.sqrt(H)).astype(f),
                b=(r.standard_normal(G * H) * 0.5).astype(f), P=(r.standard_normal((3, H)) * 0.5).astype(f),
                b_hn=(r.standard_normal(H) * 0.5).astype(f), h0=r.standard_normal((N, H)).astype(f),
                c0=r.standard_normal((N, H)).astype(f))


def _run(cell, d, **kw):
    """Training forward's outputs and inference's, for one cell."""
    x, Wx, Wh, b, h0, c0 = d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"]
    if cell == "lstm":
        return pylstm.lstm_forward(x, Wx, Wh, b, h0, c0, backend="cpu", **kw)[:3] + \
            pylstm.lstm_inference(x, Wx, Wh, b, h0, c0, backend="cpu", **kw)
    if cell == "peephole":
        return pylstm.peephole_forward(x, Wx, Wh, b, d["P"], h0, c0, backend="cpu", **kw)[:3] + \
            pylstm.peephole_inference(x, Wx, Wh, b, d["P"], h0, c0, backend="cpu", **kw)
    if cell == "gru":
        return pylstm.gru_forward(x, Wx, Wh, b, d["b_hn"], h0, backend="cpu", **kw)[:2] + \
            (pylstm.gru_inference(x, Wx, Wh, b, d["b_hn"], h0, backend="cpu", **kw),)
    return pylstm.rnn_forward(x, Wx, Wh, b, h0, backend="cpu", **kw)[:2] + \
        (pylstm.rnn_inference(x, Wx, Wh, b, h0, backend="cpu", **kw),)


def _flat(out):
    for o in out:
        if isinstance(o, tuple):
            yield from o
        else:
            yield o


@pytest.fixture
def hooks():
    old = (cpu._set_weight_reading("auto"), cpu._set_forward_schedule("auto"))
    yield
    cpu._set_weight_reading(old[0])
    cpu._set_forward_schedule(old[1])


@pytest.mark.parametrize("schedule", ["projection-first", "step-projection"])
@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("cell", sorted(GATES))
def test_forward_in_place_equals_packed_bitwise(hooks, cell, shape, schedule):
    d = _inputs(cell, shape)
    cpu._set_forward_schedule(schedule)
    got = {}
    for mode in ("packed", "in-place"):
        cpu._set_weight_reading(mode)
        got[mode] = list(_flat(_run(cell, d)))
    for i, (a, b) in enumerate(zip(got["packed"], got["in-place"])):
        assert np.array_equal(a, b), f"{cell} {shape} {schedule}: output {i} differs in place"


@pytest.mark.parametrize("cell", sorted(GATES))
def test_walk_in_place_equals_packed_bitwise(hooks, cell):
    """lengths and the reverse walk (rows leave the step's GEMM as sequences end)."""
    d = _inputs(cell, (4, 5, 30, 40), seed=3)
    lengths = np.array([5, 2, 4, 1])
    for reverse in (False, True):
        got = {}
        for mode in ("packed", "in-place"):
            cpu._set_weight_reading(mode)
            got[mode] = list(_flat(_run(cell, d, lengths=lengths, reverse=reverse)))
        for i, (a, b) in enumerate(zip(got["packed"], got["in-place"])):
            assert np.array_equal(a, b), f"{cell} reverse={reverse}: output {i} differs in place"


@pytest.mark.parametrize("transposed,M,K,N", [
    (False, 1, 650, 10000), (False, 1, 384, 65), (False, 5, 1100, 33), (False, 8, 20, 16), (False, 32, 64, 100),
    # a few rows against a transposed view: the tied output layer, embed_W.T, in generation
    (True, 1, 650, 10000), (True, 8, 650, 10000), (True, 1, 48, 65), (True, 3, 1100, 40), (True, 13, 100, 37),
    (True, 32, 17, 16)])
@pytest.mark.parametrize("with_bias", [False, True])
def test_matmul_in_place_equals_packed_bitwise(hooks, transposed, M, K, N, with_bias):
    r = np.random.default_rng(M + K + N)
    a = r.standard_normal((M, K)).astype(np.float32)
    b = r.standard_normal((N, K)).astype(np.float32).T if transposed else r.standard_normal((K, N)).astype(np.float32)
    bias = r.standard_normal(N).astype(np.float32) if with_bias else None
    got = {}
    for mode in ("packed", "in-place"):
        cpu._set_weight_reading(mode)
        got[mode] = pylstm.matmul(a, b, bias=bias, backend="cpu")
    assert np.array_equal(got["packed"], got["in-place"])
    want = a.astype(np.float64) @ b + (0 if bias is None else bias)
    assert np.abs(got["in-place"] - want).max() <= 1e-4 * np.abs(want).max()


def test_auto_reads_short_calls_in_place_and_same_bits(hooks):
    """auto takes the in-place path for a single step and packs a long call; either way the bits
    are the packed path's."""
    for shape in [(1, 1, 64, 64), (8, 40, 64, 64)]:
        d = _inputs("lstm", shape, seed=5)
        cpu._set_weight_reading("packed")
        want = list(_flat(_run("lstm", d)))
        cpu._set_weight_reading("auto")
        got = list(_flat(_run("lstm", d)))
        assert all(np.array_equal(a, b) for a, b in zip(want, got))


def test_weight_reading_hook_rejects_unknown_mode():
    with pytest.raises(ValueError, match="mode"):
        cpu._set_weight_reading("sometimes")
