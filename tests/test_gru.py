"""The GRU (reset_after, reset_before, the book's): the reference against finite differences and
against the book's class."""

import numpy as np
import pytest

from helpers import assert_close, assert_matches_finite_differences
from pylstm import reference as ref

VARIANTS = ref.GRU_VARIANTS


def make_gru_inputs(shape, dtype=np.float64, seed=0, with_state=True, variant="reset_after"):
    N, T, D, H = shape
    rng = np.random.default_rng(seed)
    d = {
        "xs": rng.standard_normal((N, T, D)),
        "Wx": rng.standard_normal((D, 3 * H)) / np.sqrt(D),
        "Wh": rng.standard_normal((H, 3 * H)) / np.sqrt(H),
        "b": rng.standard_normal(3 * H) * 0.5,
        "b_hn": rng.standard_normal(H) * 0.5 if variant == "reset_after" else None,
        "h0": rng.standard_normal((N, H)) if with_state else None,
        "dhs": rng.standard_normal((N, T, H)),
        "dhT": rng.standard_normal((N, H)),
    }
    return {k: (None if v is None else np.ascontiguousarray(v, dtype=dtype)) for k, v in d.items()}


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("with_state", [True, False])
def test_reference_matches_finite_differences(variant, with_state):
    d = make_gru_inputs((2, 4, 3, 5), seed=1, with_state=with_state, variant=variant)

    def loss(**over):
        a = {**d, **over}
        hs, hT, _ = ref.gru_forward_ref(a["xs"], a["h0"], a["Wx"], a["Wh"], a["b"], a["b_hn"], variant)
        return float((hs * d["dhs"]).sum() + (hT * d["dhT"]).sum())

    _, _, cache = ref.gru_forward_ref(d["xs"], d["h0"], d["Wx"], d["Wh"], d["b"], d["b_hn"], variant)
    if not with_state:
        cache = cache._replace(h0=np.zeros((2, 5)))
    dxs, dh0, dWx, dWh, db, db_hn = ref.gru_backward_ref(d["dhs"], cache, d["dhT"])
    grads = {"xs": dxs, "Wx": dWx, "Wh": dWh, "b": db}
    if variant == "reset_after":
        grads["b_hn"] = db_hn
    else:
        assert db_hn is None
    if with_state:
        grads["h0"] = dh0
    assert_matches_finite_differences(loss, d, grads)


# --- the kernels (the reset_after variant) -------------------------------------------------
import pylstm  # noqa: E402
from helpers import (  # noqa: E402
    KERNEL_BACKENDS,  # noqa: E402
    SHAPES,
    assert_same_at_thread_counts,
    assert_within_twice_naive,
    to_device,
    to_host,
)
from pylstm import _backend  # noqa: E402

NAMES = ("hs", "hT", "dxs", "dh0", "dWx", "dWh", "db", "db_hn")


def _run_on(d, backend, variant):
    hs, hT, cache = pylstm.gru_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["b_hn"], d["h0"], variant=variant,
                                       backend=backend)
    out = dict(zip(NAMES, (hs, hT) + tuple(pylstm.gru_backward(d["dhs"], cache, d["dhT"]))))
    return out if variant == "reset_after" else {k: v for k, v in out.items() if k != "db_hn"}


def _run(d, backend, variant="reset_after"):
    if backend == "cuda":
        dd = {k: to_device(v) for k, v in d.items()}
        return {k: to_host(v) for k, v in _run_on(dd, backend, variant).items()}
    return _run_on(d, backend, variant)


def _reference64(d, variant="reset_after"):
    return _run({k: (None if v is None else v.astype(np.float64)) for k, v in d.items()}, "numpy", variant)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_matches_reference(backend, shape, with_state, variant):
    d = make_gru_inputs(shape, np.float64, seed=3, with_state=with_state, variant=variant)
    got, want = _run(d, backend, variant), _reference64(d, variant)
    for name in want:
        assert_close(name, got[name], want[name], rtol=1e-9)


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_within_twice_naive_error(cpu_path, shape, variant):
    d32 = make_gru_inputs(shape, np.float32, seed=4, variant=variant)
    assert_within_twice_naive(_run(d32, "cpu", variant), _reference64(d32, variant), _run(d32, "numpy", variant))


@pytest.mark.parametrize("variant", VARIANTS)
def test_float32_emulated_cuda_within_twice_naive_error(variant):
    if _backend.cuda_emu is None:
        pytest.skip("no emulated CUDA module")
    for shape in [(4, 9, 40, 24), (83, 50, 6, 20)]:  # the second: several ragged db/db_hn row chunks
        d32 = make_gru_inputs(shape, np.float32, seed=5, variant=variant)
        assert_within_twice_naive(_run(d32, "cuda-emu", variant), _reference64(d32, variant),
                                  _run(d32, "numpy", variant), f"{shape} ")


@pytest.mark.parametrize("variant", VARIANTS)
@pytest.mark.parametrize("shape", [(8, 35, 64, 128), (20, 7, 50, 40), (3, 7, 17, 33)])
def test_forward_schedules_bit_identical(shape, variant):
    if _backend.cpu is None or not _backend.cpu._small_m_kernel_enabled():
        pytest.skip("no packed-weight kernel on this CPU")
    d = make_gru_inputs(shape, np.float32, seed=6, variant=variant)
    args = (d["xs"], d["Wx"], d["Wh"], d["b"], d["b_hn"], d["h0"])
    out = {}
    for schedule in ("projection-first", "step-projection"):
        old = _backend.cpu._set_forward_schedule(schedule)
        try:
            hs, hT, _ = pylstm.gru_forward(*args, variant=variant, backend="cpu")
            hs_i, _ = pylstm.gru_inference(*args, variant=variant, backend="cpu")
        finally:
            _backend.cpu._set_forward_schedule(old)
        out[schedule] = (hs, hT, hs_i)
    for a, b in zip(out["projection-first"], out["step-projection"]):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("variant", VARIANTS)
def test_thread_count_does_not_change_results(variant):
    d = make_gru_inputs((16, 10, 64, 96), np.float32, seed=8, variant=variant)
    assert_same_at_thread_counts(lambda: _run(d, "cpu", variant))


def test_matches_torch_nn_gru_outputs_and_gradients():
    torch = pytest.importorskip("torch")
    from pylstm import convert

    d = make_gru_inputs((3, 6, 4, 7), seed=11)
    gru = torch.nn.GRU(4, 7, batch_first=True).double()
    with torch.no_grad():
        for name, v in zip(("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0"),
                           convert.gru_to_torch(d["Wx"], d["Wh"], d["b"], d["b_hn"])):
            getattr(gru, name).copy_(torch.from_numpy(v))
    x = torch.from_numpy(d["xs"]).requires_grad_()
    h0 = torch.from_numpy(d["h0"])[None].requires_grad_()
    out, hT = gru(x, h0)
    (out * torch.from_numpy(d["dhs"])).sum().add((hT[0] * torch.from_numpy(d["dhT"])).sum()).backward()
    got = _run(d, "cpu")
    assert_close("hs", got["hs"], out.detach().numpy(), rtol=1e-12)
    assert_close("hT", got["hT"], hT[0].detach().numpy(), rtol=1e-12)
    assert_close("dxs", got["dxs"], x.grad.numpy(), rtol=1e-10)
    assert_close("dh0", got["dh0"], h0.grad[0].numpy(), rtol=1e-10)
    dWx, dWh, db, db_hn = convert.gru_from_torch(*(getattr(gru, n).grad.numpy() for n in
                                                   ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")))
    # torch's two bias gradients are equal on z and r; gru_from_torch adds them, so halve there
    H = 7
    db[: 2 * H] /= 2
    for name, w in zip(("dWx", "dWh", "db", "db_hn"), (dWx, dWh, db, db_hn)):
        assert_close(name, got[name], w, rtol=1e-10)
    back = convert.gru_from_torch(*(getattr(gru, n).detach().numpy() for n in
                                    ("weight_ih_l0", "weight_hh_l0", "bias_ih_l0", "bias_hh_l0")))
    for name, g, orig in zip(("Wx", "Wh", "b", "b_hn"), back, (d["Wx"], d["Wh"], d["b"], d["b_hn"])):
        assert_close(name, g, orig, rtol=1e-15)


def _keras_gru(xs, kernel, rk, bias, reset_after):
    """Keras's GRU cell (keras/src/layers/rnn/gru.py, its documented equations) in NumPy:
    blocks z, r, h; h_t = z * h_{t-1} + (1 - z) * hh."""
    N, T, _ = xs.shape
    H = rk.shape[0]
    h = np.zeros((N, H))
    b_in, b_rec = (bias[0], bias[1]) if reset_after else (bias, np.zeros(3 * H))
    sig = ref.sigmoid_ref
    for t in range(T):
        xp = xs[:, t] @ kernel + b_in
        if reset_after:
            hp = h @ rk + b_rec
            z, r = sig(xp[:, :H] + hp[:, :H]), sig(xp[:, H:2 * H] + hp[:, H:2 * H])
            hh = np.tanh(xp[:, 2 * H:] + r * hp[:, 2 * H:])
        else:
            z = sig(xp[:, :H] + h @ rk[:, :H])
            r = sig(xp[:, H:2 * H] + h @ rk[:, H:2 * H])
            hh = np.tanh(xp[:, 2 * H:] + (r * h) @ rk[:, 2 * H:])
        h = z * h + (1 - z) * hh
    return h


@pytest.mark.parametrize("reset_after", [True, False])
def test_keras_gru_weights_load_and_give_keras_outputs(reset_after):
    from pylstm import convert

    rng = np.random.default_rng(12)
    D, H = 4, 5
    kernel, rk = rng.standard_normal((D, 3 * H)) * 0.5, rng.standard_normal((H, 3 * H)) * 0.5
    bias = rng.standard_normal((2, 3 * H) if reset_after else 3 * H) * 0.5
    xs = rng.standard_normal((2, 6, D))
    want = _keras_gru(xs, kernel, rk, bias, reset_after)
    Wx, Wh, b, b_hn = convert.gru_from_keras(kernel, rk, bias)
    assert (b_hn is not None) == reset_after
    _, hT, _ = ref.gru_forward_ref(xs, None, Wx, Wh, b, b_hn, "reset_after" if reset_after else "reset_before")
    assert_close("hT", hT, want, rtol=1e-12)
    k2, rk2, bias2 = convert.gru_to_keras(Wx, Wh, b, b_hn)
    assert_close("keras round trip", _keras_gru(xs, k2, rk2, bias2, reset_after), want, rtol=1e-12)
    with pytest.raises(ValueError, match=r"^bias must have shape \(15,\)"):
        convert.gru_from_keras(kernel, rk, np.zeros(7))
    with pytest.raises(ValueError, match="^b_hn must be an array"):
        convert.gru_to_torch(Wx, Wh, b, None)


def test_bad_inputs_name_the_argument():
    d = make_gru_inputs((2, 3, 4, 5), np.float32)
    args = (d["xs"], d["Wx"], d["Wh"], d["b"])
    lstm_Wx, lstm_Wh = np.zeros((4, 20), np.float32), np.zeros((5, 20), np.float32)
    for backend in ["numpy"] + [b for b in KERNEL_BACKENDS if b != "cuda"]:
        with pytest.raises(ValueError, match=r"^Wh must have shape \(5, 15\)"):  # an LSTM's weights
            pylstm.gru_forward(d["xs"], lstm_Wx, lstm_Wh, np.zeros(20, np.float32), d["b_hn"], backend=backend)
        with pytest.raises(ValueError, match=r"^b_hn must be an array of shape \(H,\)"):
            pylstm.gru_forward(*args, None, backend=backend)
        with pytest.raises(ValueError, match=r"^b_hn must have rank 1"):
            pylstm.gru_forward(*args, np.zeros((1, 5), np.float32), backend=backend)
        with pytest.raises(ValueError, match=r"^b_hn must have shape \(5,\)"):
            pylstm.gru_forward(*args, np.zeros(6, np.float32), backend=backend)
        with pytest.raises(TypeError, match="^b_hn must have dtype float32"):
            pylstm.gru_forward(*args, d["b_hn"].astype(np.float64), backend=backend)
        _, _, cache = pylstm.gru_forward(*args, d["b_hn"], backend=backend)
        with pytest.raises(ValueError, match="^dhs must have shape"):
            pylstm.gru_backward(np.zeros((2, 3, 6), np.float32), cache)
        with pytest.raises(ValueError, match="^cache comes from a gru forward pass"):
            pylstm.rnn_backward(d["dhs"], cache)
    with pytest.raises(ValueError, match="^variant must be one of"):
        pylstm.gru_forward(*args, d["b_hn"], variant="minimal")
    with pytest.raises(ValueError, match="^b_hn must be None for the reset_before variant"):
        pylstm.gru_forward(*args, d["b_hn"], variant="reset_before")
    _, _, book_cache = pylstm.gru_forward(*args, None, variant="book")
    book_cache.cell = "gru"  # a reset_after backward over the book variant's saved arrays
    with pytest.raises(ValueError, match=r"^cache\.b_hn must be an array of shape \(H,\)"):
        pylstm.gru_backward(d["dhs"], book_cache)
    book_cache.P = d["b_hn"]
    with pytest.raises(ValueError, match=r"^cache\.gates must have shape \(2, 3, 20\)"):
        pylstm.gru_backward(d["dhs"], book_cache)


def test_time_gru_layer_variants_and_truncated_chunks():
    from pylstm.layers import TimeGRU

    d = make_gru_inputs((3, 6, 4, 5), seed=10, with_state=False)
    layer = TimeGRU(d["Wx"], d["Wh"], d["b"], stateful=True, b_hn=d["b_hn"], backend="cpu")
    assert layer.variant == "reset_after" and len(layer.params) == len(layer.grads) == 4
    hs = np.concatenate([layer.forward(np.ascontiguousarray(d["xs"][:, c]))
                         for c in (slice(0, 2), slice(2, 6))], axis=1)
    want, _, _ = ref.gru_forward_ref(d["xs"], None, d["Wx"], d["Wh"], d["b"], d["b_hn"])
    assert_close("hs", hs, want, rtol=1e-12)
    dxs = layer.backward(np.ascontiguousarray(d["dhs"][:, 2:]))
    _, _, rc = ref.gru_forward_ref(np.ascontiguousarray(d["xs"][:, 2:]), want[:, 1].copy(), d["Wx"], d["Wh"],
                                   d["b"], d["b_hn"])
    wd = ref.gru_backward_ref(np.ascontiguousarray(d["dhs"][:, 2:]), rc)
    assert_close("dxs", dxs, wd[0], rtol=1e-12)
    assert_close("dh", layer.dh, wd[1], rtol=1e-12)
    for name, g, w in zip(("dWx", "dWh", "db", "db_hn"), layer.grads, wd[2:]):
        assert_close(name, g, w, rtol=1e-12)
    # the book's signature selects the book's variant
    book = TimeGRU(d["Wx"], d["Wh"], d["b"])
    assert book.variant == "book" and len(book.params) == 3
    with pytest.raises(ValueError, match="^b_hn must be given for the reset_after variant"):
        TimeGRU(d["Wx"], d["Wh"], d["b"], b_hn=d["b_hn"], variant="book")
    with pytest.raises(ValueError, match="^variant must be one of"):
        TimeGRU(d["Wx"], d["Wh"], d["b"], variant="lru")


class BookTimeGRU:
    """DLfS2's TimeGRU (its common/time_layers.py GRU: reset before the candidate's product,
    h = (1 - z) h_prev + z h_hat), in NumPy, for the drop-in check."""

    def __init__(self, Wx, Wh, b, stateful=False):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.h, self.dh, self.stateful = None, None, stateful

    def forward(self, xs):
        Wx, Wh, b = self.params
        N, T, _ = xs.shape
        H = Wh.shape[0]
        if not self.stateful or self.h is None:
            self.h = np.zeros((N, H))
        self.cache, hs = [], np.empty((N, T, H))
        for t in range(T):
            x, hp = xs[:, t], self.h
            z = ref.sigmoid_ref(x @ Wx[:, :H] + hp @ Wh[:, :H] + b[:H])
            r = ref.sigmoid_ref(x @ Wx[:, H:2 * H] + hp @ Wh[:, H:2 * H] + b[H:2 * H])
            hh = np.tanh(x @ Wx[:, 2 * H:] + (r * hp) @ Wh[:, 2 * H:] + b[2 * H:])
            self.h = (1 - z) * hp + z * hh
            self.cache.append((x, hp, z, r, hh))
            hs[:, t] = self.h
        return hs

    def backward(self, dhs):
        Wx, Wh, _ = self.params
        H = Wh.shape[0]
        N, T, _ = dhs.shape
        dxs = np.empty((N, T, Wx.shape[0]))
        dh = np.zeros((N, H))
        gWx, gWh, gb = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros(3 * H)
        for t in reversed(range(T)):
            x, hp, z, r, hh = self.cache[t]
            dn = dhs[:, t] + dh
            d_hh = dn * z
            d_hp = dn * (1 - z)
            da_h = d_hh * (1 - hh ** 2)  # the candidate
            d_rh = da_h @ Wh[:, 2 * H:].T
            d_hp += r * d_rh
            da_z = (dn * hh - dn * hp) * z * (1 - z)  # the update gate
            d_hp += da_z @ Wh[:, :H].T
            da_r = d_rh * hp * r * (1 - r)  # the reset gate
            d_hp += da_r @ Wh[:, H:2 * H].T
            gWx += x.T @ np.hstack([da_z, da_r, da_h])
            gWh += np.hstack([hp.T @ da_z, hp.T @ da_r, (r * hp).T @ da_h])
            gb += np.hstack([da_z.sum(0), da_r.sum(0), da_h.sum(0)])
            dxs[:, t] = np.hstack([da_z, da_r, da_h]) @ Wx.T
            dh = d_hp
        for g, v in zip(self.grads, (gWx, gWh, gb)):
            g[...] = v
        self.dh = dh
        return dxs


@pytest.mark.parametrize("backend_name", ["numpy", "cpu"])
def test_time_gru_with_the_books_signature_is_the_books_class(backend_name):
    from pylstm.layers import TimeGRU

    d = make_gru_inputs((3, 5, 4, 6), np.float64, seed=13, variant="book")
    ours = TimeGRU(d["Wx"], d["Wh"], d["b"], stateful=True, backend=backend_name)
    book = BookTimeGRU(d["Wx"], d["Wh"], d["b"], stateful=True)
    for chunk in (slice(0, 2), slice(2, 5)):  # truncated BPTT: the state carries over
        xs = np.ascontiguousarray(d["xs"][:, chunk])
        dhs = np.ascontiguousarray(d["dhs"][:, chunk])
        assert_close("hs", ours.forward(xs), book.forward(xs), rtol=1e-12)
        assert_close("dxs", ours.backward(dhs), book.backward(dhs), rtol=1e-12)
        for name, g, w in zip(("dWx", "dWh", "db"), ours.grads, book.grads):
            assert_close(name, g, w, rtol=1e-12)
        assert_close("dh", ours.dh, book.dh, rtol=1e-12)


def test_32_bit_guard_counts_the_saved_width():
    """The reset-after GRU saves 4 blocks per unit (dA rows too): T*4H is a leading dimension the
    drivers pass as a 32-bit int, so it is what the guard bounds (T*3H would let it wrap)."""
    T, H = 200_000, 3000  # T*3H = 1.8e9 fits an int, T*4H = 2.4e9 does not
    xs = np.empty((1, T, 1), np.float32)  # (untouched: the checks allocate nothing)
    Wx, Wh, b = np.empty((1, 3 * H), np.float32), np.empty((H, 3 * H), np.float32), np.empty(3 * H, np.float32)
    with pytest.raises(ValueError, match="too large for 32-bit BLAS indexing"):
        _backend.cpu.forward_check(xs, Wx, Wh, b, None, None, cell="gru", P=np.empty(H, np.float32))
    assert _backend.cpu.forward_check(xs, Wx, Wh, b, None, None, cell="gru_book")[:4] == (1, T, 1, H)
