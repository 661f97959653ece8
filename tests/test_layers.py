"""Every layer's backward against central finite differences (float64), on every backend, and
the dense helpers (matmul, softmax cross-entropy) against NumPy / the reference."""

import numpy as np
import pytest

import pylstm
from helpers import assert_close, assert_within_twice_naive
from pylstm import layers as L
from pylstm import reference as ref

BACKENDS = pylstm.available_backends()


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def numeric_grad(f, x, eps=1e-6):
    """Central differences of the scalar f() with respect to every element of x (in place)."""
    g = np.zeros_like(x, dtype=np.float64)
    for idx in np.ndindex(x.shape):
        keep = x[idx]
        x[idx] = keep + eps
        up = f()
        x[idx] = keep - eps
        down = f()
        x[idx] = keep
        g[idx] = (up - down) / (2 * eps)
    return g


# Central differences (eps 1e-6, O(1) values) are accurate to ~1e-9 relative; 1e-6 is safe
# yet catches any missing or wrong term.
FD_RTOL = 1e-6


def test_embedding_backward_accumulates_repeated_ids():
    rng = np.random.default_rng(0)
    W = rng.standard_normal((7, 3))
    layer = L.TimeEmbedding(W)
    idx = np.array([[1, 3, 1], [6, 1, 0]])
    R = rng.standard_normal((2, 3, 3))
    layer.forward(idx)
    layer.backward(R)
    num = numeric_grad(lambda: float((layer.forward(idx) * R).sum()), W)
    assert_close("dW", layer.grads[0], num, FD_RTOL)


def test_embedding_rejects_out_of_range_ids():
    layer = L.Embedding(np.zeros((5, 2)))
    with pytest.raises(ValueError, match="^idx"):
        layer.forward(np.array([0, 5]))
    with pytest.raises(TypeError, match="^idx"):
        layer.forward(np.array([0.0, 1.0]))


@pytest.mark.parametrize("tied", [False, True])
def test_time_affine_gradients(backend, tied):
    rng = np.random.default_rng(1)
    E = rng.standard_normal((6, 4))           # (V, H): W = E.T when tied (an F-contiguous view)
    W = E.T if tied else rng.standard_normal((4, 6))
    b = rng.standard_normal(6)
    layer = L.TimeAffine(W, b, backend=backend)
    x = rng.standard_normal((2, 3, 4))
    R = rng.standard_normal((2, 3, 6))
    layer.forward(x)
    dx = layer.backward(R)

    def loss():
        return float((layer.forward(x) * R).sum())
    assert_close("dx", dx, numeric_grad(loss, x), FD_RTOL)
    assert_close("dW", layer.grads[0], numeric_grad(loss, W), FD_RTOL)
    assert_close("db", layer.grads[1], numeric_grad(loss, b), FD_RTOL)


@pytest.mark.parametrize("stateful", [False, True])
def test_time_lstm_gradients(backend, stateful):
    rng = np.random.default_rng(2)
    D, H = 3, 4
    Wx = rng.standard_normal((D, 4 * H)) / np.sqrt(D)
    Wh = rng.standard_normal((H, 4 * H)) / np.sqrt(H)
    b = rng.standard_normal(4 * H) * 0.1
    layer = L.TimeLSTM(Wx, Wh, b, stateful=stateful, backend=backend)
    xs = rng.standard_normal((2, 5, D))
    R = rng.standard_normal((2, 5, H))
    h0 = rng.standard_normal((2, H))

    def loss():
        if stateful:
            layer.set_state(h0)
        return float((layer.forward(xs) * R).sum())
    loss()
    dxs = layer.backward(R)
    grads = [g.copy() for g in layer.grads]
    dh = layer.dh.copy()
    assert_close("dxs", dxs, numeric_grad(loss, xs), FD_RTOL)
    for name, g, p in zip(("dWx", "dWh", "db"), grads, (Wx, Wh, b)):
        assert_close(name, g, numeric_grad(loss, p), FD_RTOL)
    if stateful:
        assert_close("dh", dh, numeric_grad(loss, h0), FD_RTOL)
        assert layer.h is not None and layer.h.shape == (2, H)
        layer.reset_state()
        assert layer.h is None


def test_time_lstm_stateful_carries_state_like_one_long_sequence(backend):
    rng = np.random.default_rng(3)
    Wx, Wh, b = rng.standard_normal((3, 16)), rng.standard_normal((4, 16)) * 0.5, np.zeros(16)
    xs = rng.standard_normal((2, 6, 3))
    whole = L.TimeLSTM(Wx, Wh, b, backend=backend).forward(xs)
    layer = L.TimeLSTM(Wx, Wh, b, stateful=True, backend=backend)
    parts = np.concatenate([layer.forward(xs[:, :2]), layer.forward(xs[:, 2:])], axis=1)
    assert_close("hs", parts, whole, 1e-12)


def test_time_lstm_stateful_batch_change_is_an_error():
    layer = L.TimeLSTM(np.zeros((2, 8)), np.zeros((2, 8)), np.zeros(8), stateful=True)
    layer.forward(np.zeros((3, 1, 2)))
    with pytest.raises(ValueError, match="^xs"):
        layer.forward(np.zeros((4, 1, 2)))


def test_time_dropout_train_and_eval():
    layer = L.TimeDropout(0.5, np.random.default_rng(4))
    x = np.ones((50, 40, 3), np.float32)
    y = layer.forward(x)
    kept = y != 0
    assert 0.4 < kept.mean() < 0.6
    np.testing.assert_array_equal(y[kept], 2.0)
    dx = layer.backward(np.full_like(x, 3.0))
    np.testing.assert_array_equal(dx, np.where(kept, 6.0, 0.0))
    layer.train_flg = False
    np.testing.assert_array_equal(layer.forward(x), x)
    with pytest.raises(ValueError, match="^dropout_ratio"):
        L.TimeDropout(1.0)


def test_time_softmax_with_loss_gradient_and_ignore_label(backend):
    rng = np.random.default_rng(5)
    xs = rng.standard_normal((3, 4, 7))
    ts = rng.integers(0, 7, (3, 4))
    ts[0, 1] = ts[2, 3] = -1
    layer = L.TimeSoftmaxWithLoss(backend=backend)
    loss = layer.forward(xs, ts)
    dx = layer.backward()
    want, _ = ref.softmax_cross_entropy_ref(xs.reshape(12, 7), ts.reshape(-1))
    assert loss == pytest.approx(want, rel=1e-12)
    num = numeric_grad(lambda: layer.forward(xs, ts), xs)
    assert_close("dx", dx, num, FD_RTOL)
    assert not dx[0, 1].any() and not dx[2, 3].any()


def test_softmax_with_loss_gradient():
    rng = np.random.default_rng(6)
    x = rng.standard_normal((5, 4))
    t = np.array([0, 3, 1, 1, 2])
    layer = L.SoftmaxWithLoss()
    layer.forward(x, t)
    dx = layer.backward()
    assert_close("dx", dx, numeric_grad(lambda: layer.forward(x, t), x), FD_RTOL)


@pytest.fixture(params=["packed-kernel", "blas"])
def kernel_path(request):
    """float32 products run on the packed-weight kernel (AVX-512 CPUs) or on BLAS: test both."""
    from pylstm import _backend

    if _backend.cpu is None:
        yield request.param
        return
    old = _backend.cpu._set_small_m_kernel(request.param == "packed-kernel")
    yield request.param
    _backend.cpu._set_small_m_kernel(old)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
def test_matmul_matches_numpy(backend, kernel_path, dtype, ta, tb):
    rng = np.random.default_rng(7)
    M, K, N = 37, 29, 53
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
    a = a.T if ta else a
    b = b.T if tb else b
    want = a.astype(np.float64) @ b.astype(np.float64)
    got = pylstm.matmul(a, b, backend=backend)
    assert got.dtype == dtype
    assert_close("a@b", got, want, 1e-5 if dtype == np.float32 else 1e-13)
    out = np.empty((M, N), dtype, order="F")
    assert pylstm.matmul(a, b, out=out, backend=backend) is out
    assert_close("out", out, want, 1e-5 if dtype == np.float32 else 1e-13)


def test_matmul_large_split_over_threads(kernel_path):
    rng = np.random.default_rng(8)
    a = rng.standard_normal((300, 200)).astype(np.float32)
    b = rng.standard_normal((200, 500)).astype(np.float32)
    assert_close("a@b", pylstm.matmul(a, b), a.astype(np.float64) @ b, 1e-5)
    assert_close("a@b", pylstm.matmul(a, b[:, :40].copy()), a.astype(np.float64) @ b[:, :40], 1e-5)
    # a transposed view whose stored rows are 4 KB apart (lda 1024): A^T is copied into tiles
    at = rng.standard_normal((70, 1024)).astype(np.float32)
    b2 = rng.standard_normal((70, 40)).astype(np.float32)
    assert_close("a.T@b", pylstm.matmul(at.T, b2), at.T.astype(np.float64) @ b2, 1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ta,tb", [(False, False), (True, False), (False, True), (True, True)])
@pytest.mark.parametrize("M,K,N", [(37, 29, 53), (300, 200, 45), (20, 150, 500), (5, 1, 3), (100, 700, 90),
                                   (700, 100, 1400)])  # (short K: column blocks, sums over 6 pack blocks)
def test_matmul_bias_and_colsum(backend, kernel_path, dtype, ta, tb, M, K, N):
    """a @ b + bias and b.sum(axis=0) in the same call (the Affine layer's forward and db), on
    every operand layout, split by rows (M > N) and by columns, against float64 NumPy."""
    rng = np.random.default_rng(17)
    a = rng.standard_normal((K, M) if ta else (M, K)).astype(dtype)
    b = rng.standard_normal((N, K) if tb else (K, N)).astype(dtype)
    a = a.T if ta else a
    b = b.T if tb else b
    bias = rng.standard_normal(N).astype(dtype)
    want = a.astype(np.float64) @ b.astype(np.float64) + bias
    want_sum = b.astype(np.float64).sum(axis=0)
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for order in ("C", "F"):
        colsum = np.full(N, np.nan, dtype)
        out = np.empty((M, N), dtype, order=order)
        assert pylstm.matmul(a, b, out=out, bias=bias, colsum=colsum, backend=backend) is out
        assert_close(f"a@b+bias ({order} out)", out, want, tol)
        # the sums are exact in double, then rounded once (NumPy's float32 sum is not)
        assert_close(f"colsum ({order} out)", colsum, want_sum, 1e-6 if dtype == np.float32 else 1e-14)
    got = pylstm.matmul(a, b, bias=bias, backend=backend)
    assert got.dtype == dtype and got.flags.c_contiguous
    assert_close("a@b+bias", got, want, tol)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no CPU backend")
@pytest.mark.parametrize("tb", [False, True])
def test_matmul_colsum_same_at_any_thread_count(kernel_path, tb):
    rng = np.random.default_rng(18)
    a = rng.standard_normal((90, 700)).astype(np.float32)
    b = rng.standard_normal((1000, 700) if tb else (700, 1000)).astype(np.float32)
    b = b.T if tb else b
    bias = rng.standard_normal(1000).astype(np.float32)
    old = pylstm.get_num_threads()
    results = []
    try:
        for n in (1, 2, 3):
            pylstm.set_num_threads(n)
            colsum = np.empty(1000, np.float32)
            out = pylstm.matmul(a, b, bias=bias, colsum=colsum, backend="cpu")
            results.append((out, colsum))
    finally:
        pylstm.set_num_threads(old)
    for out, colsum in results[1:]:  # (out may differ in the last bit on BLAS: its blocking)
        assert np.array_equal(colsum, results[0][1])
        assert_close("out", out, results[0][0], 1e-5)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no CPU backend")
@pytest.mark.parametrize("case,exc,name", [
    ("bias_shape", ValueError, "bias"), ("bias_dtype", TypeError, "bias"), ("bias_list", TypeError, "bias"),
    ("colsum_shape", ValueError, "colsum"), ("colsum_readonly", ValueError, "colsum"),
    ("colsum_overlap", ValueError, "colsum"), ("colsum_dtype", TypeError, "colsum"),
])
def test_matmul_rejects_bad_bias_or_colsum(case, exc, name):
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 5), np.float32)
    out = np.empty((4, 5), np.float32)
    kw = {}
    if case == "bias_shape":
        kw["bias"] = np.ones(4, np.float32)
    elif case == "bias_dtype":
        kw["bias"] = np.ones(5)
    elif case == "bias_list":
        kw["bias"] = [1.0] * 5
    elif case == "colsum_shape":
        kw["colsum"] = np.ones((1, 5), np.float32)
    elif case == "colsum_readonly":
        kw["colsum"] = np.ones(5, np.float32)
        kw["colsum"].flags.writeable = False
    elif case == "colsum_overlap":
        kw["colsum"] = out[0]
    elif case == "colsum_dtype":
        kw["colsum"] = np.ones(5)
    with pytest.raises(exc, match=f"^{name}"):
        pylstm.matmul(a, b, out=out, backend="cpu", **kw)


@pytest.mark.skipif("cpu" not in BACKENDS, reason="no CPU backend")
@pytest.mark.parametrize("case,exc,name", [
    ("rank", ValueError, "a"), ("inner", ValueError, "b"), ("dtype", TypeError, "b"),
    ("noncontig", ValueError, "a"), ("out_shape", ValueError, "out"), ("out_overlap", ValueError, "out"),
])
def test_matmul_rejects(case, exc, name):
    a = np.ones((4, 3), np.float32)
    b = np.ones((3, 5), np.float32)
    out = None
    if case == "rank":
        a = np.ones(3, np.float32)
    elif case == "inner":
        b = np.ones((4, 5), np.float32)
    elif case == "dtype":
        b = b.astype(np.float64)
    elif case == "noncontig":
        a = np.ones((4, 6), np.float32)[:, ::2]
    elif case == "out_shape":
        out = np.empty((4, 4), np.float32)
    elif case == "out_overlap":
        a = np.ones((5, 5), np.float32)
        b = a
        out = a
    with pytest.raises(exc, match=f"^{name}"):
        pylstm.matmul(a, b, out=out, backend="cpu")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_softmax_cross_entropy_matches_reference(backend, dtype):
    rng = np.random.default_rng(9)
    s = (rng.standard_normal((64, 300)) * 5).astype(dtype)
    t = rng.integers(0, 300, 64)
    t[::7] = -1
    loss, d = pylstm.softmax_cross_entropy(s, t, backend=backend)
    want_loss, want_d = ref.softmax_cross_entropy_ref(s.astype(np.float64), t)
    tol = 1e-5 if dtype == np.float32 else 1e-12
    assert loss == pytest.approx(want_loss, rel=tol)
    assert d.dtype == dtype
    assert_close("dscores", d, want_d, tol)
    loss2, d2 = pylstm.softmax_cross_entropy(s, t, need_grad=False, backend=backend)
    assert loss2 == loss and d2 is None


def test_softmax_cross_entropy_extreme_scores(backend):
    s = np.array([[1000.0, -1000.0, 0.0], [-1e4, -1e4, -1e4]])
    loss, d = pylstm.softmax_cross_entropy(s, np.array([0, 2]), backend=backend)
    assert np.isfinite(loss) and np.all(np.isfinite(d))
    assert loss == pytest.approx(np.log(3) / 2, rel=1e-12)


@pytest.mark.parametrize("labels,exc", [(np.array([0, 3]), ValueError), (np.array([0, -2]), ValueError),
                                        (np.array([0.0, 1.0]), TypeError), (np.array([0]), ValueError)])
def test_softmax_cross_entropy_rejects_labels(backend, labels, exc):
    with pytest.raises(exc, match="^labels"):
        pylstm.softmax_cross_entropy(np.zeros((2, 3)), labels, backend=backend)


@pytest.mark.parametrize("ignore,exc", [(1.5, TypeError), ("1", TypeError), (True, TypeError),
                                        (2**40, ValueError)])
def test_softmax_cross_entropy_rejects_ignore_label(backend, ignore, exc):
    with pytest.raises(exc, match="^ignore_label"):
        pylstm.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), ignore_label=ignore, backend=backend)


def test_softmax_cross_entropy_takes_numpy_integer_ignore_label(backend):
    s = np.random.default_rng(0).standard_normal((4, 3))
    t = np.array([0, 1, 2, 1])
    a = pylstm.softmax_cross_entropy(s, t, ignore_label=np.int64(1), backend=backend)[0]
    b = pylstm.softmax_cross_entropy(s, t, ignore_label=1, backend=backend)[0]
    assert a == b


def test_masked_arrays_rejected_by_the_kernels(backend):
    x = np.ma.masked_array(np.ones((2, 3)), mask=False)
    with pytest.raises(TypeError, match="^scores.*MaskedArray"):
        pylstm.softmax_cross_entropy(x, np.array([0, 1]), backend=backend)
    with pytest.raises(TypeError, match="^a.*MaskedArray"):
        pylstm.matmul(x, np.ones((3, 2)), backend=backend)
    xs = np.ma.masked_array(np.ones((1, 2, 3)), mask=False)
    with pytest.raises(TypeError, match="^xs.*MaskedArray"):
        pylstm.lstm_forward(xs, np.ones((3, 8)), np.ones((2, 8)), np.ones(8), backend=backend)


@pytest.mark.parametrize("layout", ["fortran", "negative_stride", "broadcast", "every_other_column"])
def test_softmax_cross_entropy_rejects_non_contiguous_scores(backend, layout):
    """scores is read in place or not at all: a strided view is not copied behind the caller's
    back (a broadcast row of 256 KB would become M copies)."""
    base = np.random.default_rng(3).standard_normal((4, 6))
    scores = {"fortran": np.asfortranarray(base), "negative_stride": base[::-1],
              "broadcast": np.broadcast_to(base[0], (4, 6)), "every_other_column": base[:, ::2]}[layout]
    labels = np.zeros(4, np.int64)
    with pytest.raises(ValueError, match=r"^scores must be C-contiguous"):
        pylstm.softmax_cross_entropy(scores, labels, backend=backend)


@pytest.mark.parametrize("shape", [(0, 3), (2, 0), (0, 0)])
def test_softmax_cross_entropy_rejects_empty_scores(backend, shape):
    with pytest.raises(ValueError, match=r"^scores\b"):
        pylstm.softmax_cross_entropy(np.zeros(shape), np.zeros(shape[0], np.int64), backend=backend)


def test_time_softmax_with_loss_passes_contiguous_scores(monkeypatch):
    """The model's loss layer hands the kernels its scores as they are (no copy on the way)."""
    seen = []
    real = pylstm.functional.softmax_cross_entropy

    def spy(scores, *args, **kw):
        seen.append(scores)
        return real(scores, *args, **kw)

    monkeypatch.setattr(L.F, "softmax_cross_entropy", spy)
    xs = np.random.default_rng(4).standard_normal((2, 3, 5))
    L.TimeSoftmaxWithLoss().forward(xs, np.zeros((2, 3), np.int64))
    assert seen[0].flags.c_contiguous and np.shares_memory(seen[0], xs)


def _matmul_case(case):
    a, b = np.ones((4, 3), np.float32), np.ones((3, 5), np.float32)
    kw = {}
    if case == "a_empty":
        a, b = np.ones((0, 3), np.float32), b
    elif case == "inner_empty":
        a, b = np.ones((4, 0), np.float32), np.ones((0, 5), np.float32)
    elif case == "b_empty":
        b = np.ones((3, 0), np.float32)
    elif case == "out_strided":
        kw["out"] = np.empty((4, 10), np.float32)[:, ::2]
    elif case == "out_rank":
        kw["out"] = np.empty(20, np.float32)
    elif case == "out_readonly":
        kw["out"] = np.empty((4, 5), np.float32)
        kw["out"].flags.writeable = False
    elif case == "out_list":
        kw["out"] = [[0.0] * 5] * 4
    elif case == "bias_strided":
        kw["bias"] = np.ones(10, np.float32)[::2]
    elif case == "bias_negative_stride":
        kw["bias"] = np.ones(5, np.float32)[::-1]
    elif case == "colsum_strided":
        kw["colsum"] = np.ones(10, np.float32)[::2]
    elif case == "colsum_broadcast":
        kw["colsum"] = np.broadcast_to(np.ones(1, np.float32), (5,))
    elif case == "colsum_overlaps_b":
        b = np.ones((3, 5), np.float32)
        kw["colsum"] = b[0]
    elif case == "colsum_overlaps_bias":
        kw["bias"] = np.ones(5, np.float32)
        kw["colsum"] = kw["bias"]
    elif case == "a_big_endian":
        a = a.astype(">f4")
    elif case == "b_strided":
        b = np.ones((3, 10), np.float32)[:, ::2]
    return a, b, kw


MATMUL_CASES = {"a_empty": ("a", ValueError), "inner_empty": ("a", ValueError), "b_empty": ("a", ValueError),
                "out_strided": ("out", ValueError), "out_rank": ("out", ValueError),
                "out_readonly": ("out", ValueError), "out_list": ("out", TypeError),
                "bias_strided": ("bias", ValueError), "bias_negative_stride": ("bias", ValueError),
                "colsum_strided": ("colsum", ValueError), "colsum_broadcast": ("colsum", ValueError),
                "colsum_overlaps_b": ("colsum", ValueError), "colsum_overlaps_bias": ("colsum", ValueError),
                "a_big_endian": ("a", TypeError), "b_strided": ("b", ValueError)}


@pytest.mark.parametrize("case", sorted(MATMUL_CASES))
def test_matmul_checks_the_same_on_every_backend(case):
    """The reference backend rejects what the CPU backend rejects, with the same message."""
    name, exc = MATMUL_CASES[case]
    messages = set()
    for backend in BACKENDS:
        a, b, kw = _matmul_case(case)
        with pytest.raises(exc, match=rf"^{name}\b") as info:
            pylstm.matmul(a, b, backend=backend, **kw)
        messages.add(str(info.value))
    assert len(messages) == 1, messages


def _book_bilstm(xs, p, dhs):
    """The book's TimeBiLSTM computed with the reference: the second LSTM on the reversed
    sequence, outputs concatenated forward first; dxs the sum of both directions'."""
    H = p[1].shape[0]
    hs1, _, _, c1 = ref.lstm_forward_ref(xs, None, None, *p[:3])
    hs2, _, _, c2 = ref.lstm_forward_ref(xs[:, ::-1].copy(), None, None, *p[3:])
    g1 = ref.lstm_backward_ref(dhs[:, :, :H], c1)
    g2 = ref.lstm_backward_ref(dhs[:, ::-1, H:].copy(), c2)
    out = np.concatenate([hs1, hs2[:, ::-1]], axis=2)
    return out, g1[0] + g2[0][:, ::-1], list(g1[3:6]) + list(g2[3:6])


def _bilstm_case(N, T, D, H, seed):
    rng = np.random.default_rng(seed)
    p = []
    for _ in range(2):
        p += [rng.standard_normal((D, 4 * H)) / np.sqrt(D), rng.standard_normal((H, 4 * H)) / np.sqrt(H),
              rng.standard_normal(4 * H) * 0.1]
    return p, rng.standard_normal((N, T, D)), rng.standard_normal((N, T, 2 * H))


def _run_bilstm(p, xs, dhs, backend, dtype):
    layer = L.TimeBiLSTM(*[a.astype(dtype) for a in p], backend=backend)
    out = layer.forward(xs.astype(dtype))
    dxs = layer.backward(dhs.astype(dtype))
    return dict(zip(("out", "dxs", "dWx1", "dWh1", "db1", "dWx2", "dWh2", "db2"), [out, dxs, *layer.grads]))


@pytest.mark.parametrize("shape", [(3, 5, 4, 6), (1, 1, 1, 1), (2, 3, 4, 5)])
@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_time_bilstm_is_the_books(backend, shape):
    p, xs, dhs = _bilstm_case(*shape, seed=21)
    H = shape[3]
    want_out, want_dxs, want_grads = _book_bilstm(xs, p, dhs)
    want = dict(zip(("out", "dxs", "dWx1", "dWh1", "db1", "dWx2", "dWh2", "db2"), [want_out, want_dxs, *want_grads]))
    got = _run_bilstm(p, xs, dhs, backend, np.float64)
    for name in want:
        assert_close(name, got[name], want[name], 1e-12)
    got32 = _run_bilstm(p, xs, dhs, backend, np.float32)
    naive = _run_bilstm(p, xs, dhs, "numpy", np.float32)  # the reference run in float32
    assert_within_twice_naive(got32, want, naive, tag=f"float32 {backend}: ")
    layer = L.TimeBiLSTM(*p, backend=backend)
    assert layer.params[3] is p[3] and len(layer.grads) == 6
    layer.forward(xs)
    with pytest.raises(ValueError, match=r"^dhs must have shape \(N, T, 2H\)"):
        layer.backward(dhs[:, :, :H])
    with pytest.raises(ValueError, match=r"^dhs must have shape \(N, T, 2H\)"):
        layer.backward(dhs[0])


def test_time_bilstm_gradient_matches_finite_differences():
    rng = np.random.default_rng(22)
    N, T, D, H = 2, 3, 2, 3
    p = [rng.standard_normal(s) * 0.5 for s in ((D, 4 * H), (H, 4 * H), (4 * H,), (D, 4 * H), (H, 4 * H), (4 * H,))]
    xs, dhs = rng.standard_normal((N, T, D)), rng.standard_normal((N, T, 2 * H))

    def loss(xs=xs):
        return float((L.TimeBiLSTM(*p, backend="cpu").forward(xs) * dhs).sum())

    layer = L.TimeBiLSTM(*p, backend="cpu")
    layer.forward(xs)
    num = np.zeros_like(xs)
    for idx in np.ndindex(xs.shape):
        a, b = xs.copy(), xs.copy()
        a[idx] += 1e-6
        b[idx] -= 1e-6
        num[idx] = (loss(a) - loss(b)) / 2e-6
    assert_close("dxs", layer.backward(dhs), num, 1e-6)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_time_bilstm_with_lengths_is_the_books_per_sequence(backend):
    """With lengths, each sequence gets what the book's class gives it alone on its own slice:
    the backward direction starts at the sequence's own last step; padding outputs are zero."""
    N, T, D, H = 4, 6, 3, 5
    p, xs, dhs = _bilstm_case(N, T, D, H, seed=23)
    lengths = np.array([6, 2, 4, 1])
    got = L.TimeBiLSTM(*p, backend=backend)
    out = got.forward(xs, lengths)
    dxs = got.backward(dhs)
    sums = [0.0] * 6
    for n, ln in enumerate(lengths):
        o, dx, grads = _book_bilstm(xs[n:n + 1, :ln], p, dhs[n:n + 1, :ln].copy())
        assert_close(f"out[{n}]", out[n, :ln], o[0], 1e-12)
        assert_close(f"dxs[{n}]", dxs[n, :ln], dx[0], 1e-12)
        np.testing.assert_array_equal(out[n, ln:], 0.0)
        np.testing.assert_array_equal(dxs[n, ln:], 0.0)
        sums = [s + g for s, g in zip(sums, grads)]
    for k, (g, s) in enumerate(zip(got.grads, sums)):
        assert_close(f"grad {k}", g, s, 1e-11)


@pytest.mark.parametrize("backend", ["cpu", "numpy"])
def test_time_layers_pass_lengths_and_direction(backend):
    rng = np.random.default_rng(24)
    N, T, D, H = 3, 5, 4, 6
    xs = rng.standard_normal((N, T, D))
    lengths = np.array([5, 2, 3])
    for reverse in (False, True):
        Wx, Wh, b = (rng.standard_normal(s) * 0.3 for s in ((D, 3 * H), (H, 3 * H), (3 * H,)))
        gru = L.TimeGRU(Wx, Wh, b, variant="reset_before", backend=backend, reverse=reverse)
        want = pylstm.gru_inference(xs, Wx, Wh, b, None, None, "reset_before", backend="numpy", lengths=lengths,
                                    reverse=reverse)[0]
        assert_close("TimeGRU", gru.forward(xs, lengths), want, 1e-12)
        Wx, Wh, b = rng.standard_normal((D, H)) * 0.3, rng.standard_normal((H, H)) * 0.3, rng.standard_normal(H)
        rnn = L.TimeRNN(Wx, Wh, b, backend=backend, reverse=reverse)
        want = pylstm.rnn_inference(xs, Wx, Wh, b, backend="numpy", lengths=lengths, reverse=reverse)[0]
        assert_close("TimeRNN", rnn.forward(xs, lengths), want, 1e-12)
        Wx, Wh, b = (rng.standard_normal(s) * 0.3 for s in ((D, 4 * H), (H, 4 * H), (4 * H,)))
        P = rng.standard_normal((3, H)) * 0.3
        ph = L.TimePeepholeLSTM(Wx, Wh, b, P, backend=backend, reverse=reverse)
        want = pylstm.peephole_inference(xs, Wx, Wh, b, P, backend="numpy", lengths=lengths, reverse=reverse)[0]
        assert_close("TimePeepholeLSTM", ph.forward(xs, lengths), want, 1e-12)
        lstm = L.TimeLSTM(Wx, Wh, b, stateful=True, backend=backend, reverse=reverse)
        lstm.forward(xs, lengths)
        want_hT = pylstm.lstm_inference(xs, Wx, Wh, b, backend="numpy", lengths=lengths, reverse=reverse)[1]
        assert_close("TimeLSTM carried state", lstm.h, want_hT, 1e-12)


def test_time_softmax_with_loss_leaves_the_padding_out(backend):
    rng = np.random.default_rng(25)
    N, T, V = 3, 4, 7
    xs = rng.standard_normal((N, T, V))
    ts = rng.integers(0, V, (N, T)).astype(np.int32)
    lengths = np.array([4, 1, 2])
    masked = ts.copy()
    for n, ln in enumerate(lengths):
        masked[n, ln:] = -1
    a, b = L.TimeSoftmaxWithLoss(backend=backend), L.TimeSoftmaxWithLoss(backend=backend)
    assert a.forward(xs, ts, lengths) == pytest.approx(b.forward(xs, masked), rel=1e-14)
    np.testing.assert_array_equal(a.backward(), b.backward())
    np.testing.assert_array_equal(a.backward()[1, 1:], 0.0)
    with pytest.raises(ValueError, match=r"^lengths\[2\] = 5: every length must be in \[1, T\] = \[1, 4\]"):
        a.forward(xs, ts, np.array([4, 1, 5]))
    with pytest.raises(ValueError, match=r"^lengths must have shape \(3,\)"):
        a.forward(xs, ts, np.array([4, 1]))
    with pytest.raises(TypeError, match="^lengths must have an integer dtype"):
        a.forward(xs, ts, np.array([4.0, 1.0, 2.0]))
    # unsigned labels: the padding still becomes the (negative) ignore_label
    assert a.forward(xs, ts.astype(np.uint8), lengths) == pytest.approx(b.forward(xs, masked), rel=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(1, 1), (5, 7), (650, 130), (33, 1000)])
def test_transpose_of_a_column_block(dtype, shape):
    if "cpu" not in BACKENDS:
        pytest.skip("no CPU backend")
    from pylstm import _backend

    R, C = shape
    wide = np.random.default_rng(26).standard_normal((R, 3 * C)).astype(dtype)
    src = wide[:, C:2 * C]  # rows 3C apart
    out = np.full((C, R), np.nan, dtype)
    _backend.cpu.transpose(src, out)
    np.testing.assert_array_equal(out, src.T)
    # out a column block too (rows 2R apart): only its own columns are written
    out_wide = np.full((C, 2 * R), np.nan, dtype)
    _backend.cpu.transpose(src, out_wide[:, R:])
    np.testing.assert_array_equal(out_wide[:, R:], src.T)
    assert np.isnan(out_wide[:, :R]).all()
    with pytest.raises(TypeError, match=r"^out must have src's dtype"):
        _backend.cpu.transpose(src, np.empty((C, R), np.float64 if dtype == np.float32 else np.float32))
    with pytest.raises(ValueError, match="^out must be a 2-D array with adjacent elements"):
        _backend.cpu.transpose(src, np.empty((C, 2 * R), dtype)[:, ::2])
    with pytest.raises(ValueError, match=r"^out must have shape"):
        _backend.cpu.transpose(src, np.empty((C, R + 1), dtype))
    with pytest.raises(ValueError, match="^src must be a 2-D array with adjacent elements"):
        _backend.cpu.transpose(wide[:, ::2], np.empty((wide[:, ::2].shape[1], R), dtype))
    with pytest.raises(ValueError, match="^out must not overlap src"):
        square = np.zeros((4, 4), dtype)
        _backend.cpu.transpose(square, square)


def test_embedding_sparse_grad_is_the_whole_gradient_and_names_its_rows():
    """In sparse mode the backward clears only the rows it wrote before: grads[0] is still the
    whole gradient, whatever ids the batches use, and grad_rows lists the rows it holds."""
    from pylstm.layers import Embedding

    rng = np.random.default_rng(0)
    W = rng.standard_normal((50, 6))
    dense, sparse = Embedding(W), Embedding(W)
    sparse.sparse_grad = True
    for step in range(4):
        idx = rng.integers(0, 50, (3, 7)) if step != 2 else np.array([[5, 5, 5]])
        dout = rng.standard_normal(idx.shape + (6,))
        for layer in (dense, sparse):
            layer.forward(idx)
            layer.backward(dout)
        assert np.array_equal(sparse.grads[0], dense.grads[0])
        assert np.array_equal(sparse.grad_rows, np.unique(idx))
        assert not np.any(np.delete(sparse.grads[0], sparse.grad_rows, axis=0))
    sparse.grads[0] = np.full_like(W, 7.0)  # replaced (as model.to or a window does): cleared whole
    sparse.forward(np.array([[1]]))
    sparse.backward(np.ones((1, 1, 6)))
    assert np.count_nonzero(sparse.grads[0]) == 6
