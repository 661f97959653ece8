"""Every backend's LSTM forward/backward against the float64 reference on the same inputs."""

import numpy as np
import pytest

import pylstm
from helpers import SHAPES, assert_close, make_lstm_inputs, max_rel_error, to_device, to_host
from pylstm import _backend
from pylstm import reference as ref

NAMES_FWD = ("hs", "hT", "cT")
NAMES_BWD = ("dxs", "dh0", "dc0", "dWx", "dWh", "db")


def _run(d, backend):
    if backend == "cuda":  # a real GPU: the same inputs as CuPy arrays, results copied back
        dd = {k: to_device(v) for k, v in d.items()}
        return {k: to_host(v) for k, v in _run_on(dd, backend).items()}
    return _run_on(d, backend)


def _run_on(d, backend):
    hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"],
                                            backend=backend)
    grads = pylstm.lstm_backward(d["dhs"], cache, d["dhT"], d["dcT"])
    return dict(zip(NAMES_FWD + NAMES_BWD, (hs, hT, cT) + tuple(grads)))


def _reference64(d):
    d64 = {k: (None if v is None else v.astype(np.float64)) for k, v in d.items()}
    return _run(d64, "numpy")


@pytest.fixture(params=["small-m-kernel", "blas"])
def step_gemm(request):
    """Runs a test with the AVX-512 recurrent-step kernel (when the CPU has it) and with BLAS."""
    from pylstm import _backend

    if _backend.cpu is None:
        pytest.skip("no CPU backend")
    old = _backend.cpu._set_small_m_kernel(request.param == "small-m-kernel")
    yield request.param
    _backend.cpu._set_small_m_kernel(old)


def test_cpu_backend_is_built():
    assert "cpu" in pylstm.available_backends()


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_float64_matches_reference(backend, step_gemm, shape, with_state):
    d = make_lstm_inputs(shape, np.float64, seed=3, with_state=with_state)
    got = _run(d, backend)
    want = _reference64(d)
    for name in NAMES_FWD + NAMES_BWD:
        # Both sides compute the same sums in float64 in a different order; 1e-9 is the issue's
        # target, far above the ~1e-15 rounding differences.
        assert_close(name, got[name], want[name], rtol=1e-9)


@pytest.mark.parametrize("with_state", [True, False])
@pytest.mark.parametrize("shape", SHAPES)
def test_float32_within_twice_naive_error(backend, cpu_path, shape, with_state):
    d32 = make_lstm_inputs(shape, np.float32, seed=4, with_state=with_state)
    want = _reference64(d32)          # exact answer for these float32 inputs
    naive = _run(d32, "numpy")        # the reference run in float32
    got = _run(d32, backend)
    eps32 = float(np.finfo(np.float32).eps)
    for name in NAMES_FWD + NAMES_BWD:
        err = max_rel_error(got[name], want[name])
        naive_err = max_rel_error(naive[name], want[name])
        # flash-attention's rule: at most twice the naive float32 error, plus a few ulp of
        # slack for tensors where the naive computation happens to be nearly exact.
        assert err <= 2 * naive_err + 4 * eps32, (
            f"{name}: float32 kernel error {err:.3e} > 2 x naive float32 error {naive_err:.3e} + 4 eps")
        assert err < 1e-4, f"{name}: float32 kernel error {err:.3e} above the coarse bound 1e-4"
        assert got[name].dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_rows_gradients(backend, dtype):
    """N*T = 4150 rows, 4H = 28 columns: the CUDA backward sums db over row chunks whose length
    grows past 16 rows above 4096 rows (a ragged last chunk here); float64 to 1e-9 and float32
    within twice the naive error, as for the other shapes."""
    d = make_lstm_inputs((5, 830, 3, 7), dtype, seed=12)
    got = _run(d, backend)
    want = _reference64(d)
    if dtype == np.float64:
        for name in NAMES_FWD + NAMES_BWD:
            assert_close(name, got[name], want[name], rtol=1e-9)
        return
    naive = _run(d, "numpy")
    eps32 = float(np.finfo(np.float32).eps)
    for name in NAMES_FWD + NAMES_BWD:
        err, naive_err = max_rel_error(got[name], want[name]), max_rel_error(naive[name], want[name])
        assert err <= 2 * naive_err + 4 * eps32, f"{name}: {err:.3e} vs naive {naive_err:.3e}"


def test_hT_is_last_hidden_state(backend):
    d = make_lstm_inputs((3, 5, 4, 6), np.float64, seed=5)
    hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"],
                                            backend=backend)
    np.testing.assert_array_equal(hT, hs[:, -1])
    np.testing.assert_array_equal(cT, cache.cs[:, -1])


@pytest.mark.parametrize("shape", [(4, 9, 40, 24), (9, 6, 33, 40), (16, 5, 20, 70), (16, 5, 20, 129),
                                   (8, 5, 300, 256), (3, 4, 150, 200)])
def test_forward_schedules_agree_bitwise(shape):
    """The float32 packed-weight forward's two schedules add the same products in the same
    order (the x-part in C, then the h-part's partial sums of 128 products, then the bias), so
    they agree to the bit, training and inference; H > 128 is where the order matters."""
    cpu = _backend.cpu
    if cpu is None or not cpu._small_m_kernel_enabled():
        pytest.skip("needs the AVX-512 packed-weight kernel")
    d = make_lstm_inputs(shape, np.float32, seed=8)
    out = {}
    old = cpu._set_forward_schedule("auto")
    try:
        for mode in ("projection-first", "step-projection"):
            cpu._set_forward_schedule(mode)
            out[mode] = (pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"],
                                             backend="cpu")[:3]
                         + pylstm.lstm_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"],
                                                 d["c0"], backend="cpu"))
    finally:
        cpu._set_forward_schedule(old)
    for name, a, b in zip(NAMES_FWD * 2, out["projection-first"], out["step-projection"]):
        assert np.array_equal(a, b), f"{name}: the two forward schedules differ"


@pytest.mark.parametrize("reverse", [False, True])
def test_forward_schedules_agree_bitwise_with_lengths(reverse):
    """With lengths the projection-first schedule projects each sequence's valid rows alone, the
    step projection the running rows of each step: the same sums, to the bit (and the
    backward from either cache the same)."""
    cpu = _backend.cpu
    if cpu is None or not cpu._small_m_kernel_enabled():
        pytest.skip("needs the AVX-512 packed-weight kernel")
    d = make_lstm_inputs((9, 11, 40, 150), np.float32, seed=9)
    L = np.array([11, 3, 7, 1, 11, 5, 9, 2, 6])
    out = {}
    old = cpu._set_forward_schedule("auto")
    try:
        for mode in ("projection-first", "step-projection"):
            cpu._set_forward_schedule(mode)
            hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"],
                                                    backend="cpu", lengths=L, reverse=reverse)
            out[mode] = (hs, hT, cT, *pylstm.lstm_backward(d["dhs"], cache, d["dhT"], d["dcT"]))
    finally:
        cpu._set_forward_schedule(old)
    for k, (a, b) in enumerate(zip(out["projection-first"], out["step-projection"])):
        assert np.array_equal(a, b), f"output {k}: the two forward schedules differ"


def test_step_projection_inference_takes_only_the_running_state():
    """Forward-only on the step-projection schedule keeps no pre-activations: its scratch is the
    running c (N*H), not the projection's N*T*4H; training and the other schedule keep theirs."""
    cpu = _backend.cpu
    if cpu is None or not cpu._small_m_kernel_enabled():
        pytest.skip("needs the AVX-512 packed-weight kernel")
    N, T, D, H = 16, 5, 20, 70
    old = cpu._set_forward_schedule("step-projection")
    try:
        assert cpu._forward_workspace_size(N, T, D, H, False, 4) == N * H
        assert cpu._forward_workspace_size(N, T, D, H, True, 4) == 0
        assert cpu._forward_workspace_size(N, T, D, H, False, 8) == N * T * 4 * H + N * H  # BLAS
        d = make_lstm_inputs((N, T, D, H), np.float32, seed=9)
        got = pylstm.lstm_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend="cpu")
        cpu._set_forward_schedule("projection-first")
        assert cpu._forward_workspace_size(N, T, D, H, False, 4) == N * T * 4 * H + N * H
        want = pylstm.lstm_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend="cpu")
    finally:
        cpu._set_forward_schedule(old)
    for name, a, b in zip(NAMES_FWD, got, want):
        assert np.array_equal(a, b), name


def test_forward_schedule_hook_rejects_unknown_mode():
    if _backend.cpu is None:
        pytest.skip("no CPU backend")
    with pytest.raises(ValueError, match="mode"):
        _backend.cpu._set_forward_schedule("fastest")


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_inference_equals_training_forward(backend, cpu_path, dtype):
    d = make_lstm_inputs((4, 9, 40, 24), dtype, seed=6)
    train = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend=backend)
    infer = pylstm.lstm_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend=backend)
    for name, a, b in zip(NAMES_FWD, train[:3], infer):
        assert np.array_equal(a, b), f"{name}: inference differs from training forward"


def test_backward_without_upstream_state_grads(backend):
    d = make_lstm_inputs((2, 3, 4, 5), np.float64, seed=7)
    _, _, _, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"],
                                         backend=backend)
    got = pylstm.lstm_backward(d["dhs"], cache)
    _, _, _, rc = ref.lstm_forward_ref(d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"])
    want = ref.lstm_backward_ref(d["dhs"], rc)
    for name, g, w in zip(NAMES_BWD, got, want):
        assert_close(name, g, w, rtol=1e-9)


def test_backward_twice_on_one_cache_is_identical(backend):
    d = make_lstm_inputs((3, 7, 17, 33), np.float32, seed=8)
    _, _, _, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"],
                                         backend=backend)
    a = pylstm.lstm_backward(d["dhs"], cache, d["dhT"], d["dcT"])
    b = pylstm.lstm_backward(d["dhs"], cache, d["dhT"], d["dcT"])
    for name, x, y in zip(NAMES_BWD, a, b):
        assert np.array_equal(x, y), name


def test_outputs_are_c_contiguous_and_fresh(backend):
    d = make_lstm_inputs((2, 3, 4, 5), np.float32, seed=9)
    hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], backend=backend)
    grads = pylstm.lstm_backward(d["dhs"], cache)
    for a in (hs, hT, cT) + tuple(grads):
        assert a.flags.c_contiguous and a.flags.writeable


def test_saturated_and_nan_inputs(backend):
    # Huge pre-activations saturate the gates without producing NaN; a NaN input propagates.
    d = make_lstm_inputs((2, 4, 3, 5), np.float64, seed=10)
    xs = d["xs"] * 1e4
    hs, _, _, _ = pylstm.lstm_forward(xs, d["Wx"], d["Wh"], d["b"], backend=backend)
    want, _, _, _ = ref.lstm_forward_ref(xs, None, None, d["Wx"], d["Wh"], d["b"])
    assert_close("hs", hs, want, rtol=1e-9)
    xs[0, 1, 0] = np.nan
    hs, _, _, _ = pylstm.lstm_forward(xs, d["Wx"], d["Wh"], d["b"], backend=backend)
    assert np.isnan(hs[0, 1:]).all() and np.isfinite(hs[0, 0]).all() and np.isfinite(hs[1]).all()
