"""The CUDA backend's device-array path without a GPU: the bindings (pylstm._cuda_emu, the same
source as pylstm._cuda) on host memory behind __cuda_array_interface__, the functional API's
dispatch and allocation, host/device mixes, output checks, and the real CUDA module's behaviour
on a machine with no GPU (import works, a clear error, nothing sticky). GPU-only checks carry
the `cuda` marker."""

import re

import numpy as np
import pytest

import pylstm
from helpers import assert_close, make_lstm_inputs
from pylstm import _backend, _devices
from pylstm import reference as ref

emu = _backend.cuda_emu
needs_emu = pytest.mark.skipif(emu is None, reason="pylstm._cuda_emu not built")
Dev = _devices.EmuDeviceArray
N, T, D, H = 3, 4, 5, 6


def _inputs(dtype=np.float64):
    return make_lstm_inputs((N, T, D, H), dtype, seed=11)


def _outputs(dtype, save=True):
    out = {"hs": np.zeros((N, T, H), dtype), "hT": np.zeros((N, H), dtype), "cT": np.zeros((N, H), dtype)}
    if save:
        out["gates"] = np.zeros((N, T, 4 * H), dtype)
        out["cs"] = np.zeros((N, T, H), dtype)
    return out


def _forward_binding(d, out, work=None, **override):
    args = {k: d[k] for k in ("xs", "Wx", "Wh", "b", "h0", "c0")}
    args.update({k: out.get(k) for k in ("hs", "hT", "cT", "gates", "cs")})
    args["work"] = work
    args.update(override)
    wrapped = {k: Dev(v) if isinstance(v, np.ndarray) else v for k, v in args.items()}
    return emu.lstm_forward(**wrapped)


@needs_emu
def test_device_arrays_through_auto_match_reference():
    d = _inputs()
    dev = {k: None if v is None else Dev(v) for k, v in d.items()}
    hs, hT, cT, cache = pylstm.lstm_forward(dev["xs"], dev["Wx"], dev["Wh"], dev["b"], dev["h0"], dev["c0"])
    assert cache.backend == "cuda"  # "auto" chose the device path
    grads = pylstm.lstm_backward(dev["dhs"], cache, dev["dhT"], dev["dcT"])
    want_hs, want_hT, want_cT, rc = ref.lstm_forward_ref(d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"])
    want = ref.lstm_backward_ref(d["dhs"], rc, d["dhT"], d["dcT"])
    for name, g, w in zip(("hs", "hT", "cT"), (hs, hT, cT), (want_hs, want_hT, want_cT)):
        assert isinstance(g, Dev)  # device arrays in, device arrays out
        assert_close(name, g.array, w, 1e-12)
    for name, g, w in zip(("dxs", "dh0", "dc0", "dWx", "dWh", "db"), grads, want):
        assert isinstance(g, Dev)
        assert_close(name, g.array, w, 1e-12)
    hs2, _, _ = pylstm.lstm_inference(dev["xs"], dev["Wx"], dev["Wh"], dev["b"], dev["h0"], dev["c0"])
    np.testing.assert_array_equal(hs2.array, hs.array)
    # outputs feed further device calls (hs as the next layer's input)
    Wx2 = Dev(np.ascontiguousarray(d["Wx"][:H] if H <= D else np.resize(d["Wx"], (H, 4 * H))))
    pylstm.lstm_forward(hs, Wx2, dev["Wh"], dev["b"])


@needs_emu
def test_host_device_mix_is_rejected_both_ways():
    d = _inputs()
    # device xs, host Wx: the binding names Wx as a host array
    with pytest.raises(TypeError, match=r"^Wx is a host array"):
        pylstm.lstm_forward(Dev(d["xs"]), d["Wx"], Dev(d["Wh"]), Dev(d["b"]))
    # host xs, device Wh: the host path names Wh as a device array
    with pytest.raises(TypeError, match=r"^Wh is a device array"):
        pylstm.lstm_forward(d["xs"], d["Wx"], Dev(d["Wh"]), d["b"])
    with pytest.raises(TypeError, match=r"^grads\[1\] is a device array"):
        pylstm.clip_grads([np.ones(3), Dev(np.ones(3))], 1.0)
    with pytest.raises(TypeError, match=r"^grads\[1\] is a host array"):
        pylstm.clip_grads([Dev(np.ones(3)), np.ones(3)], 1.0)


@needs_emu
@pytest.mark.parametrize("case", ["hs_readonly", "hT_wrong_shape", "cT_noncontig", "gates_without_cs",
                                  "work_too_small", "work_missing", "hs_overlaps_xs", "gates_overlaps_cs",
                                  "hs_mixed_dtype"])
def test_forward_binding_rejects_bad_outputs(case):
    d = _inputs(np.float32)
    out = _outputs(np.float32)
    kw, name, exc = {}, case.split("_")[0], ValueError
    if case == "hs_readonly":
        out["hs"].setflags(write=False)
    elif case == "hT_wrong_shape":
        out["hT"] = np.zeros((N, H + 1), np.float32)
    elif case == "cT_noncontig":
        out["cT"] = np.zeros((H, N), np.float32).T
    elif case == "gates_without_cs":
        out["cs"] = None
    elif case == "work_too_small":
        del out["gates"], out["cs"]
        kw["work"] = Dev(np.zeros(10, np.float32))
    elif case == "work_missing":
        del out["gates"], out["cs"]
    elif case == "hs_overlaps_xs":
        buf = np.zeros(N * T * max(D, H) * 2, np.float32)
        d["xs"] = buf[: N * T * D].reshape(N, T, D)
        out["hs"] = buf[N * T * D - 1 : N * T * D - 1 + N * T * H].reshape(N, T, H)
    elif case == "gates_overlaps_cs":
        buf = np.zeros(N * T * 5 * H, np.float32)
        out["gates"] = buf[: N * T * 4 * H].reshape(N, T, 4 * H)
        out["cs"] = buf[N * T * 4 * H - 1 : N * T * 5 * H - 1].reshape(N, T, H)
    elif case == "hs_mixed_dtype":
        out["hs"] = np.zeros((N, T, H), np.float64)
        exc = TypeError
    before = {k: None if v is None else v.copy() for k, v in out.items()}
    with pytest.raises(exc, match=rf"^{name}\b"):
        _forward_binding(d, out, **kw)
    for k, v in out.items():  # nothing was written
        if v is not None:
            np.testing.assert_array_equal(v, before[k])


@needs_emu
def test_malformed_interfaces():
    class NoDict:
        __cuda_array_interface__ = 3

    class Masked:
        def __init__(self, a):
            self.a = a

        @property
        def __cuda_array_interface__(self):
            return dict(Dev(self.a).__cuda_array_interface__, mask=object())

    d = _inputs()
    with pytest.raises(TypeError, match=r"^xs\.__cuda_array_interface__ must be a dict"):
        emu.forward_check(NoDict(), Dev(d["Wx"]), Dev(d["Wh"]), Dev(d["b"]))
    with pytest.raises(ValueError, match=r"^Wx: masked"):
        emu.forward_check(Dev(d["xs"]), Masked(d["Wx"]), Dev(d["Wh"]), Dev(d["b"]))


class OnStream:
    """A device array whose interface names the stream it was produced on (interface v3)."""

    def __init__(self, a, stream):
        self.a, self.stream = a, stream

    @property
    def __cuda_array_interface__(self):
        iface = getattr(self.a, "__cuda_array_interface__", None) or Dev(self.a).__cuda_array_interface__
        return dict(iface, stream=self.stream)


@needs_emu
def test_threads_that_exit_hand_on_their_sync_events():
    """16 short-lived threads, one after another, each a call whose input names another producer
    stream (so the call records a sync event): the exited threads' events are reused through
    the pool the CUDA build shares (cuda/pools.h), not created anew per thread."""
    import threading
    import time

    d = _inputs()
    out = _outputs(np.float64)
    before = emu._resource_counts()[2]

    def call():
        emu.lstm_forward(OnStream(d["xs"], 0x1234), Dev(d["Wx"]), Dev(d["Wh"]), Dev(d["b"]), None, None,
                         Dev(out["hs"]), Dev(out["hT"]), Dev(out["cT"]), Dev(out["gates"]), Dev(out["cs"]), None)

    for _ in range(16):
        th = threading.Thread(target=call)
        th.start()
        th.join()
        time.sleep(0.02)  # (join returns before the OS thread runs its thread_local destructors)
    assert emu._resource_counts()[2] - before <= 3  # a leak would be 16


@needs_emu
def test_a_producer_stream_that_captures_a_graph_is_refused():
    """An input produced on a stream that is capturing a CUDA graph, with pylstm on a stream that
    is not: a clear error naming the array (the wait would pull pylstm into that graph). With
    pylstm's own stream capturing too, the call goes through. The legacy stream blocked by
    another capture: a clear error naming it."""
    d = _inputs()
    capturing = 0x7F00DEAD
    out = _outputs(np.float64)
    args = lambda xs_stream: (OnStream(d["xs"], xs_stream), Dev(d["Wx"]), Dev(d["Wh"]), Dev(d["b"]),  # noqa: E731
                              None, None, Dev(out["hs"]), Dev(out["hT"]), Dev(out["cT"]), Dev(out["gates"]),
                              Dev(out["cs"]), None)
    emu._set_capture_state(capturing, 1)
    try:
        with pytest.raises(ValueError, match="^xs: its __cuda_array_interface__ stream is capturing a CUDA graph"):
            emu.lstm_forward(*args(capturing), stream=0x1234)
        emu.lstm_forward(*args(capturing), stream=capturing)  # pylstm's stream is the capturing one
        emu.lstm_forward(*args(2), stream=0x1234)  # another producer: fine
        emu._set_capture_state(1, 2)
        with pytest.raises(RuntimeError, match="^stream: the legacy default stream cannot be used while"):
            emu.lstm_forward(*args(2), stream=0)
        with pytest.raises(RuntimeError, match="^xs: the legacy default stream cannot be used while"):
            emu.lstm_forward(*args(1), stream=0x1234)
        emu.lstm_forward(*args(1), stream=capturing)  # inside the caller's own capture: no waits, no checks
    finally:
        emu._set_capture_state(capturing, 0)
        emu._set_capture_state(1, 0)
    if _backend.cuda is not None:  # the real module keeps the hook to the emulation
        with pytest.raises(RuntimeError, match="emulation's tests only"):
            _backend.cuda._set_capture_state(1, 1)


@needs_emu
@pytest.mark.parametrize("stream", [1, 2, 0x7F00DEAD, None])
def test_interface_streams_are_accepted(stream):
    # Emulated launches run in order on one thread, so the wait itself is a no-op here; the
    # binding must accept every valid value on inputs, outputs and clipping lists alike.
    d = _inputs()
    want = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], backend="numpy")[0]
    hs = np.empty_like(want)
    N, T, D, H = d["xs"].shape + (d["Wh"].shape[0],)
    emu.lstm_forward(OnStream(d["xs"], stream), Dev(d["Wx"]), OnStream(d["Wh"], stream), Dev(d["b"]),
                     None, None, OnStream(hs, stream), Dev(np.empty((N, H))), Dev(np.empty((N, H))),
                     Dev(np.empty((N, T, 4 * H))), Dev(np.empty((N, T, H))), None)
    np.testing.assert_allclose(hs, want, rtol=1e-12)
    g = [np.array([3.0, 4.0])]
    work = np.zeros(emu.clip_plan([Dev(g[0])])[0])
    emu.clip_grads([OnStream(g[0], stream)], 1.0, Dev(work))
    assert work[0] == 5.0


@needs_emu
@pytest.mark.parametrize("stream,exc,match", [
    (0, ValueError, r"^Wh: __cuda_array_interface__\['stream'\] is 0; the interface disallows 0"),
    (-3, ValueError, r"^Wh: __cuda_array_interface__\['stream'\] is -3"),
    ("s", TypeError, r"^Wh: __cuda_array_interface__\['stream'\] must be an integer or None"),
])
def test_bad_interface_streams_are_rejected(stream, exc, match):
    d = _inputs()
    with pytest.raises(exc, match=match):
        emu.forward_check(Dev(d["xs"]), Dev(d["Wx"]), OnStream(d["Wh"], stream), Dev(d["b"]))


@needs_emu
def test_clip_workspace_is_reusable_and_counter_left_zero():
    rng = np.random.default_rng(0)
    grads = [rng.standard_normal(s).astype(np.float32) for s in [(70_000,), (300,), (5, 7)]]
    want = ref.global_norm_ref(grads)
    size, dev = emu.clip_plan([Dev(g) for g in grads])
    assert dev == 0 and size >= 4 + 3
    work = np.zeros(size, np.float64)
    for _ in range(3):
        emu.clip_grads([Dev(g) for g in grads], 0.0, Dev(work))
        assert work[0] == pytest.approx(want, rel=1e-12)
        assert work[1] == 1.0 and work[2] == 1.0
        assert work.view(np.uint64)[3] == 0  # the finishing block reset the ticket counter
    with pytest.raises(ValueError, match=r"^work must have at least"):
        emu.clip_grads([Dev(g) for g in grads], 1.0, Dev(np.zeros(4, np.float64)))


@needs_emu
def test_device_clip_of_only_empty_arrays_is_zero():
    # clip_plan reports no device (-1) when every array is empty: nothing to allocate or scale
    assert emu.clip_plan([Dev(np.zeros(0, np.float32))])[1] == -1
    for fn in (pylstm.global_norm, lambda g: pylstm.clip_grads(g, 1.0)):
        assert float(fn([Dev(np.zeros(0, np.float32)), Dev(np.zeros((0, 3), np.float32))])) == 0.0


@needs_emu
def test_device_clip_returns_device_scalar_without_raising_when_asked():
    g = [np.array([3.0, 4.0]), np.array([np.nan])]
    norm = pylstm.clip_grads([Dev(x) for x in g], 1.0, error_if_nonfinite=False)
    assert np.isnan(norm)
    np.testing.assert_array_equal(g[0], [3.0, 4.0])
    with pytest.raises(FloatingPointError, match="^grads"):
        pylstm.clip_grads([Dev(x) for x in g], 1.0)


@needs_emu
def test_unknown_device_array_library():
    class Foreign:  # a device array of a library pylstm cannot allocate with
        def __init__(self, a):
            self.a = a

        @property
        def __cuda_array_interface__(self):
            return Dev(self.a).__cuda_array_interface__

    with pytest.raises(TypeError, match=r"^xs: pylstm allocates"):
        _devices.library_of(Foreign(_inputs()["xs"]), 0)


@pytest.mark.skipif(_backend.cuda_status()[0] > 0, reason="a GPU is visible")
def test_no_gpu_gives_a_clear_error_and_nothing_sticks():
    d = _inputs()
    assert "cuda" not in pylstm.available_backends()
    for _ in range(2):  # the same clean error twice: no CUDA error left behind
        why = r"backend 'cuda' is not available: .*(no GPU|without its CUDA module|failed to import)"
        with pytest.raises(RuntimeError, match=why):
            pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], backend="cuda")
    if _backend.cuda is not None:  # the real module imports without a driver and says why
        n, why = _backend.cuda.status()
        assert n == 0 and why
        for _ in range(2):
            with pytest.raises(RuntimeError, match=r"^xs: no CUDA GPU is visible"):
                _backend.cuda.forward_check(Dev(d["xs"]), Dev(d["Wx"]), Dev(d["Wh"]), Dev(d["b"]))
        with pytest.raises(TypeError, match=r"^xs is a host array"):
            _backend.cuda.forward_check(d["xs"], d["Wx"], d["Wh"], d["b"])


@pytest.mark.cuda
def test_gpu_results_stay_on_the_device_and_match_cpu():
    cupy = pytest.importorskip("cupy")
    d = make_lstm_inputs((4, 6, 8, 16), np.float64, seed=2)
    dev = {k: None if v is None else cupy.asarray(v) for k, v in d.items()}
    hs, hT, cT, cache = pylstm.lstm_forward(dev["xs"], dev["Wx"], dev["Wh"], dev["b"], dev["h0"], dev["c0"])
    assert isinstance(hs, cupy.ndarray) and cache.backend == "cuda"
    grads = pylstm.lstm_backward(dev["dhs"], cache, dev["dhT"], dev["dcT"])
    want = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend="numpy")
    assert_close("hs", cupy.asnumpy(hs), want[0], 1e-12)
    wg = pylstm.lstm_backward(d["dhs"], want[3], d["dhT"], d["dcT"])
    for name, g, w in zip(("dxs", "dh0", "dc0", "dWx", "dWh", "db"), grads, wg):
        assert isinstance(g, cupy.ndarray)
        assert_close(name, cupy.asnumpy(g), w, 1e-12)
    norm = pylstm.clip_grads(list(grads), 0.1, error_if_nonfinite=False)
    assert isinstance(norm, cupy.ndarray) and norm.shape == ()
    assert float(norm) == pytest.approx(ref.global_norm_ref(list(wg)), rel=1e-12)


@pytest.mark.cuda
def test_gpu_threads_that_exit_hand_on_their_handles_streams_and_events():
    """16 short-lived threads, one after another, each a graphed forward whose inputs name
    another producer stream (so the call records a sync event): the handles, graph streams and
    events of the exited threads are reused, not created anew per thread."""
    import threading
    import time

    cupy = pytest.importorskip("cupy")
    d = make_lstm_inputs((2, 3, 4, 5), np.float32, seed=4)
    producer = cupy.cuda.Stream(non_blocking=True)
    dev = {k: None if v is None else OnStream(cupy.asarray(v), producer.ptr) for k, v in d.items()}
    before = _backend.cuda._resource_counts()
    old = pylstm.set_cuda_graphs(True)
    errors = []

    def call():
        try:
            with cupy.cuda.Stream(non_blocking=True):
                pylstm.lstm_forward(dev["xs"], dev["Wx"], dev["Wh"], dev["b"], dev["h0"], dev["c0"])
            cupy.cuda.Device().synchronize()
        except Exception as exc:  # noqa: BLE001
            errors.append(exc)

    try:
        for _ in range(16):
            th = threading.Thread(target=call)
            th.start()
            th.join()
            time.sleep(0.02)  # (join returns before the OS thread runs its thread_local destructors)
    finally:
        pylstm.set_cuda_graphs(old)
    assert not errors, errors
    created = [b - a for a, b in zip(before, _backend.cuda._resource_counts())]
    assert all(c <= 3 for c in created), created  # (handles, graph streams, events); a leak: 16 each


@pytest.mark.cuda
def test_gpu_cuda_graphs_replay_and_match_direct_launches():
    cupy = pytest.importorskip("cupy")
    d = make_lstm_inputs((4, 6, 8, 16), np.float32, seed=3)
    dev = {k: None if v is None else cupy.asarray(v) for k, v in d.items()}

    def step():
        hs, hT, cT, cache = pylstm.lstm_forward(dev["xs"], dev["Wx"], dev["Wh"], dev["b"], dev["h0"], dev["c0"])
        grads = pylstm.lstm_backward(dev["dhs"], cache, dev["dhT"], dev["dcT"])
        return [cupy.asnumpy(a) for a in (hs, hT, cT, *grads)]

    direct = step()
    old = pylstm.set_cuda_graphs(True)
    _backend.cuda._clear_graphs()
    try:
        for _ in range(4):  # CuPy's pool returns the same blocks: captures then replays
            for a, b in zip(step(), direct):
                np.testing.assert_array_equal(a, b)
        replays, captures, updates = _backend.cuda._graph_stats()
        assert captures >= 2 and replays + updates >= 1, (replays, captures, updates)
    finally:
        pylstm.set_cuda_graphs(old)
        _backend.cuda._clear_graphs()


def test_emulated_module_says_so():
    if emu is None:
        pytest.skip("pylstm._cuda_emu not built")
    assert emu.emulated is True
    assert re.search("emulation", emu.__doc__)


@needs_emu
def test_emulator_barriers_are_real_and_misuse_is_caught():
    rng = np.random.default_rng(5)
    v = rng.standard_normal(64 * 3)
    # a tree sum reads other threads' shared memory after each barrier: right only if the
    # barriers hold (sequential threads without fibers would read unfinished partial sums)
    got = emu._emu_selftest(v.tolist(), 0)
    np.testing.assert_allclose(got, v.reshape(3, 64).sum(axis=1), rtol=1e-12)
    with pytest.raises(RuntimeError, match="divergent barrier"):
        emu._emu_selftest(v.tolist(), 1)
    with pytest.raises(RuntimeError, match="PYLSTM_LAUNCH_SYNC"):
        emu._emu_selftest(v.tolist(), 2)


class _Shaped:
    """Only the shape of a device array: __cuda_array_interface__ over memory that is never
    touched (the checks allocate and read nothing)."""

    def __init__(self, *shape, dtype=np.float32, ptr=1 << 20):
        self.__cuda_array_interface__ = {"shape": shape, "typestr": np.dtype(dtype).str,
                                         "data": (ptr, False), "strides": None, "version": 3}


def _lstm_args(N, T, D, H):
    return (_Shaped(N, T, D), _Shaped(D, 4 * H), _Shaped(H, 4 * H), _Shaped(4 * H))


@needs_emu
def test_cuda_size_guard_bounds_only_what_cublas_takes_as_int():
    """N*T = 10^6 rows at H = 4096: 1.6e10 elements of saved gates, past 2^31, but every cuBLAS
    size and leading dimension fits an int: accepted by the CUDA rules (the CPU driver's rule,
    which bounds element counts, still refuses it); a leading dimension (T*4H) or a row count
    (N*T) past int range is refused, naming it."""
    big = _lstm_args(1000, 1000, 4096, 4096)
    assert emu.forward_check(*big)[:4] == (1000, 1000, 4096, 4096)
    # 2^20 rows x 4H = 2400: 2.5e9 elements, in arrays small enough to exist on the host
    N, H = 1 << 20, 600
    host = (np.empty((N, 1, 1), np.float32), np.empty((1, 4 * H), np.float32),
            np.empty((H, 4 * H), np.float32), np.empty(4 * H, np.float32))
    with pytest.raises(ValueError, match="too large for 32-bit BLAS indexing"):
        _backend.cpu.forward_check(*host, None, None)
    assert emu.forward_check(*_lstm_args(N, 1, 1, H))[:4] == (N, 1, 1, H)
    with pytest.raises(ValueError, match=r"^xs: T\*4H = 3276800000 is too large for cuBLAS's 32-bit sizes"):
        emu.forward_check(*_lstm_args(1, 200_000, 8, 4096))
    with pytest.raises(ValueError, match=r"^xs: N\*T = 4294967296 is too large for cuBLAS"):
        emu.forward_check(*_lstm_args(65536, 65536, 1, 1))


@needs_emu
def test_clip_plan_gives_a_huge_array_its_blocks_among_many_small_ones():
    """The chunk plan depends on the element counts, not on how many arrays share the list: a
    10^8-element array keeps its blocks among 300 small arrays (it used to get one block once
    the list held ~250 arrays)."""
    huge = _Shaped(10**8, ptr=1 << 40)
    small = [_Shaped(100, ptr=(1 << 30) + 4096 * k) for k in range(300)]
    alone = emu._clip_chunk_counts([huge])[0]
    mixed = emu._clip_chunk_counts([huge] + small)
    assert alone >= 32 and mixed[0] >= alone, (alone, mixed[0])
    assert mixed[1:] == [1] * 300
    assert emu.clip_plan([huge] + small)[0] == 4 + sum(mixed)


@pytest.fixture
def graphs_on():
    old = pylstm.set_cuda_graphs(True)
    emu._clear_graphs()
    yield
    pylstm.set_cuda_graphs(old)
    emu._clear_graphs()


def _backward_binding(d, fwd, grads, work):
    args = [d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"], fwd["hs"], fwd["gates"], fwd["cs"],
            d["dhs"], d["dhT"], d["dcT"], grads["dxs"], grads["dh0"], grads["dc0"], grads["dW"],
            grads["db"], work]
    return emu.lstm_backward(*[None if a is None else Dev(a) for a in args])


@needs_emu
def test_cuda_graph_is_captured_once_and_replays_new_contents(graphs_on):
    """Same arrays (same addresses), new values in place: the second call replays the graph
    captured by the first and must compute with the new values (the graph holds the work, not
    its results); training forward, backward and inference each get their own graph."""
    d = _inputs()
    fwd = _outputs(np.float64)
    grads = {"dxs": np.zeros((N, T, D)), "dh0": np.zeros((N, H)), "dc0": np.zeros((N, H)),
             "dW": np.zeros((D + H, 4 * H)), "db": np.zeros(4 * H)}
    bwork = np.zeros(emu.backward_workspace_size(N, T, D, H))
    inf = _outputs(np.float64, save=False)
    iwork = np.zeros(emu.forward_workspace_size(N, T, D, H, False))
    rng = np.random.default_rng(5)
    for call in range(3):
        if call:
            for k in ("xs", "h0", "c0", "dhs", "dhT", "dcT"):
                d[k][...] = rng.standard_normal(d[k].shape)
        _forward_binding(d, fwd)
        _backward_binding(d, fwd, grads, bwork)
        _forward_binding(d, inf, work=iwork)
        want_hs, want_hT, want_cT, rc = ref.lstm_forward_ref(d["xs"], d["h0"], d["c0"], d["Wx"], d["Wh"], d["b"])
        want = ref.lstm_backward_ref(d["dhs"], rc, d["dhT"], d["dcT"])
        assert_close("hs", fwd["hs"], want_hs, 1e-12)
        assert_close("cT", fwd["cT"], want_cT, 1e-12)
        assert_close("inference hs", inf["hs"], want_hs, 1e-12)
        for name, g, w in zip(("dxs", "dh0", "dc0", "db"), (grads["dxs"], grads["dh0"], grads["dc0"], grads["db"]),
                              (want[0], want[1], want[2], want[5])):
            assert_close(name, g, w, 1e-12)
        assert_close("dW", grads["dW"], np.concatenate([want[3], want[4]]), 1e-12)
        assert tuple(emu._graph_stats()) == (3 * call, 3, 0)  # (replays, captures, updates)


@needs_emu
def test_cuda_graphs_of_one_shape_keep_four_address_sets_then_update(graphs_on):
    """A shape's first four address sets are captured; a fifth updates the least recently used
    executable in place (no new one); a cached address set replays; every call computes on its
    own arrays."""
    d = _inputs()
    outs = [_outputs(np.float64) for _ in range(10)]
    for out in outs[:4]:
        _forward_binding(d, out)
    assert tuple(emu._graph_stats()) == (0, 4, 0)  # (replays, captures, updates)
    for out in outs[4:]:  # six new address sets: updates, no captures
        _forward_binding(d, out)
    assert tuple(emu._graph_stats()) == (0, 4, 6)
    _forward_binding(d, outs[-1])  # among the four most recent of its shape: a replay
    assert tuple(emu._graph_stats()) == (1, 4, 6)
    _forward_binding(d, outs[0])  # updated away long ago: an update
    assert tuple(emu._graph_stats()) == (1, 4, 7)
    _forward_binding(d, _outputs(np.float64, save=False), work=np.zeros(emu.forward_workspace_size(N, T, D, H, False)))
    assert tuple(emu._graph_stats()) == (1, 5, 7)  # inference: another shape (no gates, no cs)
    for out in outs:
        np.testing.assert_array_equal(out["hs"], outs[0]["hs"])


@needs_emu
def test_cuda_graphs_in_a_training_loop_stop_capturing(graphs_on):
    """Three stacked LSTM layers trained 20 steps through the functional API, outputs allocated
    afresh by every call (as the layers do): a bounded number of captures, all in the first
    steps; every later call replays or updates; the same bits as without graphs."""
    rng = np.random.default_rng(11)
    n, t, dims = 2, 5, (7, 6, 6, 6)  # layers 2 and 3 share a shape
    weights = [(rng.standard_normal((dims[k], 4 * dims[k + 1])) * 0.3,
                rng.standard_normal((dims[k + 1], 4 * dims[k + 1])) * 0.3,
                rng.standard_normal(4 * dims[k + 1]) * 0.1) for k in range(3)]

    def step(x):
        caches, h = [], Dev(x)
        for Wx, Wh, b in weights:
            h, _, _, cache = pylstm.lstm_forward(h, Dev(Wx), Dev(Wh), Dev(b))
            caches.append(cache)
        dh = Dev(np.ones_like(h.array) * 0.1)
        for cache in reversed(caches):
            dh = pylstm.lstm_backward(dh, cache)[0]
        return dh.array.copy()

    xs = [rng.standard_normal((n, t, dims[0])) for _ in range(20)]
    with_graphs, counts = [], []
    for x in xs:
        with_graphs.append(step(x))
        counts.append(tuple(emu._graph_stats()))
    replays, captures, updates = counts[-1]
    assert captures <= 4 * GRAPHS_PER_SHAPE, counts[-1]  # 4 shapes: 2 forward, 2 backward
    first_still_capturing = max(k for k in range(20) if counts[k][1] != (counts[k - 1][1] if k else 0))
    assert first_still_capturing < 2 * GRAPHS_PER_SHAPE, counts
    assert replays + updates + captures == 20 * 6
    pylstm.set_cuda_graphs(False)
    for x, got in zip(xs, with_graphs):
        np.testing.assert_array_equal(step(x), got)


GRAPHS_PER_SHAPE = 4  # GraphCache::kPerShape (csrc/cuda/graph_cache.h)


@needs_emu
def test_cuda_graphs_give_the_same_bits_through_the_functional_api(graphs_on):
    d = _inputs(np.float32)
    dev = {k: None if v is None else Dev(v) for k, v in d.items()}

    def run():
        hs, hT, cT, cache = pylstm.lstm_forward(dev["xs"], dev["Wx"], dev["Wh"], dev["b"], dev["h0"], dev["c0"])
        grads = pylstm.lstm_backward(dev["dhs"], cache, dev["dhT"], dev["dcT"])
        return [a.array.copy() for a in (hs, hT, cT, *grads)]

    with_graphs = run()
    pylstm.set_cuda_graphs(False)
    without = run()
    for a, b in zip(with_graphs, without):
        np.testing.assert_array_equal(a, b)


def test_set_cuda_graphs_takes_a_bool():
    with pytest.raises(TypeError, match="^enabled must be a bool"):
        pylstm.set_cuda_graphs(1)
