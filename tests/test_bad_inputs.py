"""One test per rejected input: the exception type, and a message that starts with the argument's
name. Each forward case runs through the public API for every backend and, for the compiled
backend, straight into the binding (which must check on its own, never crash)."""

import re
import sys

import numpy as np
import pytest

import pylstm
from helpers import make_lstm_inputs
from pylstm import _backend, _devices

N, T, D, H = 2, 3, 4, 5


def _args(dtype=np.float32):
    d = make_lstm_inputs((N, T, D, H), dtype, seed=0)
    return {k: d[k] for k in ("xs", "Wx", "Wh", "b", "h0", "c0")}


def _noncontig(a):
    big = np.repeat(a, 2, axis=-1)
    v = big[..., ::2]
    assert not v.flags.c_contiguous
    return v


# name of the argument the message must start with, exception, and how to break the arguments
FORWARD_CASES = {
    "xs_list": ("xs", TypeError, lambda a: a.update(xs=a["xs"].tolist())),
    "xs_int": ("xs", TypeError, lambda a: a.update(xs=a["xs"].astype(np.int32))),
    "xs_float16": ("xs", TypeError, lambda a: a.update(xs=a["xs"].astype(np.float16))),
    "xs_complex": ("xs", TypeError, lambda a: a.update(xs=a["xs"].astype(np.complex64))),
    "xs_big_endian": ("xs", TypeError, lambda a: a.update(xs=a["xs"].astype(">f4"))),
    "xs_rank2": ("xs", ValueError, lambda a: a.update(xs=a["xs"][0])),
    "xs_rank4": ("xs", ValueError, lambda a: a.update(xs=a["xs"][None])),
    "xs_noncontig": ("xs", ValueError, lambda a: a.update(xs=_noncontig(a["xs"]))),
    "xs_T0": ("xs", ValueError, lambda a: a.update(xs=a["xs"][:, :0])),
    "xs_N0": ("xs", ValueError, lambda a: a.update(xs=a["xs"][:0], h0=None, c0=None)),
    "xs_D0": ("xs", ValueError, lambda a: a.update(xs=a["xs"][:, :, :0])),
    "Wx_mixed_dtype": ("Wx", TypeError, lambda a: a.update(Wx=a["Wx"].astype(np.float64))),
    "Wx_wrong_D": ("Wx", ValueError, lambda a: a.update(Wx=np.zeros((D + 1, 4 * H), np.float32))),
    "Wx_wrong_4H": ("Wx", ValueError, lambda a: a.update(Wx=np.zeros((D, 4 * H + 4), np.float32))),
    "Wx_noncontig": ("Wx", ValueError, lambda a: a.update(Wx=np.asfortranarray(a["Wx"]))),
    "Wx_none": ("Wx", TypeError, lambda a: a.update(Wx=None)),
    "Wh_not_4H": ("Wh", ValueError, lambda a: a.update(Wh=np.zeros((H, 3 * H), np.float32))),
    "Wh_rank1": ("Wh", ValueError, lambda a: a.update(Wh=np.zeros(4 * H, np.float32))),
    "Wh_H0": ("Wh", ValueError, lambda a: a.update(Wh=np.zeros((0, 0), np.float32))),
    "Wh_mixed_dtype": ("Wh", TypeError, lambda a: a.update(Wh=a["Wh"].astype(np.float64))),
    "b_wrong_len": ("b", ValueError, lambda a: a.update(b=np.zeros(4 * H - 1, np.float32))),
    "b_rank2": ("b", ValueError, lambda a: a.update(b=a["b"][None])),
    "b_int": ("b", TypeError, lambda a: a.update(b=a["b"].astype(np.int64))),
    "h0_wrong_N": ("h0", ValueError, lambda a: a.update(h0=np.zeros((N + 1, H), np.float32))),
    "h0_wrong_H": ("h0", ValueError, lambda a: a.update(h0=np.zeros((N, H + 1), np.float32))),
    "h0_mixed_dtype": ("h0", TypeError, lambda a: a.update(h0=a["h0"].astype(np.float64))),
    "h0_noncontig": ("h0", ValueError, lambda a: a.update(h0=_noncontig(a["h0"]))),
    "c0_wrong_H": ("c0", ValueError, lambda a: a.update(c0=np.zeros((N, H - 1), np.float32))),
    "c0_list": ("c0", TypeError, lambda a: a.update(c0=[[0.0] * H] * N)),
}


def _call_public(a, backend):
    return pylstm.lstm_forward(a["xs"], a["Wx"], a["Wh"], a["b"], a["h0"], a["c0"], backend=backend)


def _call_inference(a, backend):
    return pylstm.lstm_inference(a["xs"], a["Wx"], a["Wh"], a["b"], a["h0"], a["c0"], backend=backend)


def _call_binding(a, backend):
    return _backend.cpu.lstm_forward(a["xs"], a["Wx"], a["Wh"], a["b"], a["h0"], a["c0"], True)


def _device(a):
    """The arguments as device arrays (host memory behind __cuda_array_interface__)."""
    return {k: _devices.EmuDeviceArray(v) if isinstance(v, np.ndarray) else v for k, v in a.items()}


def _call_emu_binding(a, backend):
    d = _device(a)
    return _backend.cuda_emu.forward_check(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"])


def _call_device_public(a, backend):
    d = _device(a)  # "auto" picks the device path for device arrays
    return pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"])


BACKENDS = pylstm.available_backends() + (["cuda-emu"] if _backend.cuda_emu is not None else [])
CALLERS = [(f, b) for f in (_call_public, _call_inference) for b in BACKENDS]
if _backend.cpu is not None:
    CALLERS.append((_call_binding, "cpu"))
if _backend.cuda_emu is not None:
    CALLERS.append((_call_emu_binding, "cuda-emu"))
    CALLERS.append((_call_device_public, "cuda-emu"))


@pytest.mark.parametrize("caller,backend", CALLERS, ids=lambda x: getattr(x, "__name__", x))
@pytest.mark.parametrize("case", sorted(FORWARD_CASES))
def test_forward_rejects(case, caller, backend):
    name, exc, breaker = FORWARD_CASES[case]
    a = _args()
    breaker(a)
    with pytest.raises(exc, match=rf"^{name}\b"):
        caller(a, backend)


def _cache(backend):
    a = _args()
    return _call_public(a, backend)[3]


BACKWARD_CASES = {
    "dhs_wrong_shape": ("dhs", ValueError, lambda d: d.update(dhs=np.zeros((N, T + 1, H), np.float32))),
    "dhs_mixed_dtype": ("dhs", TypeError, lambda d: d.update(dhs=np.zeros((N, T, H), np.float64))),
    "dhs_noncontig": ("dhs", ValueError, lambda d: d.update(dhs=_noncontig(np.zeros((N, T, H), np.float32)))),
    "dhs_none": ("dhs", TypeError, lambda d: d.update(dhs=None)),
    "dhT_wrong_shape": ("dhT", ValueError, lambda d: d.update(dhT=np.zeros((N, H + 1), np.float32))),
    "dcT_mixed_dtype": ("dcT", TypeError, lambda d: d.update(dcT=np.zeros((N, H), np.float64))),
    "dcT_noncontig": ("dcT", ValueError, lambda d: d.update(dcT=np.zeros((H, N), np.float32).T)),
    "cache_wrong_type": ("cache", TypeError, lambda d: d.update(cache=("not", "a", "cache"))),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(BACKWARD_CASES))
def test_backward_rejects(case, backend):
    name, exc, breaker = BACKWARD_CASES[case]
    d = {"dhs": np.ones((N, T, H), np.float32), "cache": _cache(backend), "dhT": None, "dcT": None}
    breaker(d)
    with pytest.raises(exc, match=rf"^{name}\b"):
        pylstm.lstm_backward(d["dhs"], d["cache"], d["dhT"], d["dcT"])


@pytest.mark.skipif(_backend.cpu is None, reason="no CPU backend")
@pytest.mark.parametrize("field,exc", [("gates", ValueError), ("cs", TypeError), ("hs", ValueError)])
def test_binding_backward_checks_saved_state(field, exc):
    a = _args()
    hs, hT, cT, gates, cs = _backend.cpu.lstm_forward(a["xs"], a["Wx"], a["Wh"], a["b"], None, None, True)
    state = {"hs": hs, "gates": gates, "cs": cs}
    state[field] = state[field][:, :1].copy() if exc is ValueError else state[field].astype(np.float64)
    with pytest.raises(exc, match=rf"^{field}\b"):
        _backend.cpu.lstm_backward(a["xs"], None, None, a["Wx"], a["Wh"], a["b"], state["hs"],
                                   state["gates"], state["cs"], np.zeros((N, T, H), np.float32),
                                   None, None)


def test_unknown_backend():
    with pytest.raises(ValueError, match="^backend"):
        _call_public(_args(), "gpu")
    with pytest.raises(TypeError, match="^backend"):
        _call_public(_args(), np.array(["cpu", "numpy"]))


def test_clip_max_norm_past_float_range():
    with pytest.raises(ValueError, match="^max_norm"):
        pylstm.clip_grads([np.ones(3)], 10**400)


@pytest.mark.skipif("cpu" not in pylstm.available_backends(), reason="no CPU backend")
# (a's dtype decides, as with a C-order out: a float64 a with float32 b names b)
@pytest.mark.parametrize("case,exc,name", [("a_dtype", TypeError, "b"), ("b_dtype", TypeError, "b"),
                                           ("out_dtype", TypeError, "out"), ("inner", ValueError, "b"),
                                           ("out_shape", ValueError, "out"), ("b_noncontig", ValueError, "b"),
                                           ("bias_dtype", TypeError, "bias"), ("colsum_dtype", TypeError, "colsum"),
                                           ("colsum_in_out", ValueError, "colsum"),
                                           ("bias_in_out", ValueError, "bias")])
def test_matmul_with_fortran_out_names_the_right_argument(case, exc, name):
    """A Fortran-order out runs the transposed product; the checks are the C-order path's."""
    a, b = np.ones((3, 4), np.float32), np.ones((4, 5), np.float32)
    out = np.empty((3, 5), np.float32, order="F")
    kw = {}
    if case == "a_dtype":
        a = a.astype(np.float64)
    elif case == "b_dtype":
        b = b.astype(np.float64)
    elif case == "out_dtype":
        out = np.empty((3, 5), np.float64, order="F")
    elif case == "inner":
        b = np.ones((3, 5), np.float32)
    elif case == "b_noncontig":
        b = np.ones((4, 10), np.float32)[:, ::2]
    elif case == "bias_dtype":
        kw["bias"] = np.ones(5)
    elif case == "colsum_dtype":
        kw["colsum"] = np.ones(5, np.int64)
    elif case == "colsum_in_out":
        kw["colsum"] = out[0]
    elif case == "bias_in_out":
        kw["bias"] = out[0]
    else:
        out = np.empty((5, 3), np.float32, order="F")
    with pytest.raises(exc, match=f"^{name}"):
        pylstm.matmul(a, b, out=out, backend="cpu", **kw)


def _ro(a):
    a.setflags(write=False)
    return a


CLIP_CASES = {
    "grads_not_list": ("grads", TypeError, lambda: (np.zeros(3, np.float32), 1.0)),
    "grads_item_not_array": ("grads[1]", TypeError, lambda: ([np.zeros(3), [1.0, 2.0]], 1.0)),
    "grads_mixed_dtypes": ("grads[1]", TypeError, lambda: ([np.zeros(3), np.zeros(3, np.float32)], 1.0)),
    "grads_int": ("grads[0]", TypeError, lambda: ([np.zeros(3, np.int64)], 1.0)),
    "grads_float16": ("grads[0]", TypeError, lambda: ([np.zeros(3, np.float16)], 1.0)),
    "grads_read_only": ("grads[1]", ValueError, lambda: ([np.ones(3), _ro(np.ones(3))], 1.0)),
    "grads_noncontig": ("grads[0]", ValueError, lambda: ([np.ones((4, 4))[:, ::2]], 1.0)),
    "max_norm_zero": ("max_norm", ValueError, lambda: ([np.ones(3)], 0.0)),
    "max_norm_negative": ("max_norm", ValueError, lambda: ([np.ones(3)], -1.0)),
    "max_norm_nan": ("max_norm", ValueError, lambda: ([np.ones(3)], float("nan"))),
    "max_norm_inf": ("max_norm", ValueError, lambda: ([np.ones(3)], float("inf"))),
    "max_norm_str": ("max_norm", TypeError, lambda: ([np.ones(3)], "1.0")),
}


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("case", sorted(CLIP_CASES))
def test_clip_rejects(case, backend):
    name, exc, make = CLIP_CASES[case]
    grads, max_norm = make()
    before = [np.array(g, copy=True) for g in grads] if isinstance(grads, list) else None
    with pytest.raises(exc, match="^" + re.escape(name)):
        pylstm.clip_grads(grads, max_norm, backend=backend)
    if before is not None:  # nothing was written before the error
        for g, b in zip(grads, before):
            np.testing.assert_array_equal(np.asarray(g), b)


@pytest.mark.skipif(_backend.cpu is None, reason="no CPU backend")
@pytest.mark.parametrize("case", ["grads_not_list", "grads_item_not_array", "grads_mixed_dtypes",
                                  "grads_int", "grads_read_only", "grads_noncontig", "max_norm_zero"])
def test_clip_binding_rejects(case):
    name, exc, make = CLIP_CASES[case]
    grads, max_norm = make()
    with pytest.raises(exc, match="^" + re.escape(name)):
        _backend.cpu.clip_grads(grads, max_norm, True)


def test_global_norm_rejects_mixed_dtypes():
    with pytest.raises(TypeError, match=r"^grads\[1\]"):
        pylstm.global_norm([np.zeros(2), np.zeros(2, np.float32)])


@pytest.mark.parametrize("n,exc", [(0, ValueError), (-3, ValueError), ("2", TypeError), (2.0, TypeError)])
def test_set_num_threads_rejects(n, exc):
    with pytest.raises(exc, match="^n "):
        pylstm.set_num_threads(n)


class _ForeignDeviceArray:
    """Host memory behind ``__cuda_array_interface__`` with no array library pylstm knows."""

    def __init__(self, a):
        self._a = a
        self.shape, self.dtype, self.ndim = a.shape, a.dtype, a.ndim

    @property
    def __cuda_array_interface__(self):
        return _devices.EmuDeviceArray(self._a).__cuda_array_interface__


_HOST_CALLS = {
    "lstm_forward": lambda: pylstm.lstm_forward(*[_args()[k] for k in ("xs", "Wx", "Wh", "b")], backend="cuda"),
    "matmul": lambda: pylstm.matmul(np.ones((2, 3)), np.ones((3, 4)), backend="cuda"),
    "softmax_cross_entropy": lambda: pylstm.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]),
                                                                  backend="cuda"),
}


@pytest.mark.skipif(_backend.cuda_status()[0] > 0, reason="a GPU is visible")
@pytest.mark.parametrize("call", sorted(_HOST_CALLS))
def test_backend_cuda_without_a_gpu_is_refused_by_every_function(call):
    """backend="cuda" is never replaced by the CPU quietly: without a GPU every function says so."""
    with pytest.raises(_backend.DeviceUnavailableError, match="^backend 'cuda' is not available"):
        _HOST_CALLS[call]()


@pytest.mark.parametrize("backend", ["auto", "cuda", "cpu", "numpy"], ids=lambda b: f"backend_{b}")
@pytest.mark.parametrize("pos", ["a", "b", "out", "bias", "colsum"])
def test_matmul_names_a_foreign_device_array(pos, backend):
    args = {"a": np.ones((2, 3)), "b": np.ones((3, 4)), "out": None, "bias": None, "colsum": None}
    args[pos] = _ForeignDeviceArray({"a": args["a"], "b": args["b"]}.get(pos, np.zeros((2, 4) if pos == "out" else 4)))
    with pytest.raises(TypeError, match=rf"^{pos}\b"):
        pylstm.matmul(**args, backend=backend)


# (ids other than a bare "cuda": conftest skips items with the keyword "cuda" when there is no GPU)
@pytest.mark.parametrize("backend", ["auto", "cuda", "cpu", "numpy"], ids=lambda b: f"backend_{b}")
def test_softmax_cross_entropy_names_a_foreign_device_array(backend):
    with pytest.raises(TypeError, match=r"^scores\b"):
        pylstm.softmax_cross_entropy(_ForeignDeviceArray(np.zeros((2, 3))), np.array([0, 1]), backend=backend)


@pytest.mark.skipif(_backend.cuda_emu is None, reason="pylstm._cuda_emu not built")
def test_emulated_backend_is_not_silently_the_cpu_for_the_dense_helpers():
    with pytest.raises(ValueError, match="^backend 'cuda-emu'"):
        pylstm.matmul(np.ones((2, 3)), np.ones((3, 4)), backend="cuda-emu")
    with pytest.raises(ValueError, match="^backend 'cuda-emu'"):
        pylstm.softmax_cross_entropy(np.zeros((2, 3)), np.array([0, 1]), backend="cuda-emu")


def _set(attr, make):
    return lambda c: setattr(c, attr, make(getattr(c, attr)))


# what a tampered cache must be rejected for, naming the cached array
CACHE_CASES = {
    "backend": ("cache.backend", ValueError, lambda c: setattr(c, "backend", "gpu")),
    "xs_float16": ("cache.xs", TypeError, _set("xs", lambda a: a.astype(np.float16))),
    "xs_rank2": ("cache.xs", ValueError, _set("xs", lambda a: a[0])),
    "xs_list": ("cache.xs", TypeError, _set("xs", lambda a: a.tolist())),
    "xs_broadcast": ("cache.xs", ValueError, _set("xs", lambda a: np.broadcast_to(a[:1], a.shape))),
    "Wx_rows": ("cache.Wx", ValueError, _set("Wx", lambda a: a[:-1].copy())),
    "Wh_dtype": ("cache.Wh", TypeError, _set("Wh", lambda a: a.astype(np.float64))),
    "b_missing": ("cache.b", TypeError, lambda c: setattr(c, "b", None)),
    "h0_shape": ("cache.h0", ValueError, _set("h0", lambda a: a[:1].copy())),
    "c0_fortran": ("cache.c0", ValueError, _set("c0", lambda a: np.asfortranarray(a))),
    "hs_shape": ("cache.hs", ValueError, _set("hs", lambda a: a[:, :1].copy())),
    "gates_dtype": ("cache.gates", TypeError, _set("gates", lambda a: a.astype(np.float64))),
    "gates_missing": ("cache.gates", TypeError, lambda c: setattr(c, "gates", None)),
    "cs_broadcast": ("cache.cs", ValueError, _set("cs", lambda a: np.broadcast_to(a[:1], a.shape))),
    "cs_negative_stride": ("cache.cs", ValueError, _set("cs", lambda a: a[::-1])),
}


@pytest.mark.parametrize("backend", [b for b in BACKENDS if b in ("cpu", "numpy")])
@pytest.mark.parametrize("case", sorted(CACHE_CASES))
def test_backward_checks_a_tampered_host_cache(case, backend):
    """A cache is an argument like any other: every cached array is checked against the others
    before anything is computed or allocated, the same way for the kernels and the reference."""
    name, exc, tamper = CACHE_CASES[case]
    a = _args()
    cache = _call_public(a, backend)[3]
    tamper(cache)
    with pytest.raises(exc, match="^" + re.escape(name) + r"\b"):
        pylstm.lstm_backward(np.ones((N, T, H), np.float32), cache)


_HUGE_CACHE_SCRIPT = r"""
import resource
import numpy as np
import pylstm

N, T, D, H = 2, 3, 4, 5
rng = np.random.default_rng(0)
xs = rng.standard_normal((N, T, D)).astype(np.float32)
Wx = rng.standard_normal((D, 4 * H)).astype(np.float32)
Wh = rng.standard_normal((H, 4 * H)).astype(np.float32)
b = np.zeros(4 * H, np.float32)
for backend in pylstm.available_backends():
    if backend not in ("cpu", "numpy"):
        continue
    hs, _, _, cache = pylstm.lstm_forward(xs, Wx, Wh, b, backend=backend)
    dhs = np.ones((N, T, H), np.float32)
    for field in ("cs", "all"):
        c = pylstm.lstm_forward(xs, Wx, Wh, b, backend=backend)[3]
        rows = 2**31
        if field == "all":  # every array made consistent with 2**31 rows
            for k in ("xs", "hs", "gates", "cs"):
                a = getattr(c, k)
                setattr(c, k, np.broadcast_to(a[:1], (rows,) + a.shape[1:]))
            dhs_k = np.broadcast_to(dhs[:1], (rows, T, H))
        else:
            c.cs = np.broadcast_to(c.cs[:1], (rows, T, H))
            dhs_k = dhs
        vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
        resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
        try:
            pylstm.lstm_backward(dhs_k, c)
            print(backend, field, "no error")
        except Exception as exc:
            print(backend, field, type(exc).__name__, str(exc).split(" ")[0])
        resource.setrlimit(resource.RLIMIT_AS, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_backward_rejects_a_cache_of_broadcast_rows_before_allocating(tmp_path):
    import subprocess

    # (cwd elsewhere: in the repo root, "import pylstm" would find the source tree, not the install)
    r = subprocess.run([sys.executable, "-c", _HUGE_CACHE_SCRIPT], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    lines = r.stdout.splitlines()
    assert lines, r.stdout
    for line in lines:
        backend, field, exc, name = line.split()
        assert exc == "ValueError" and name == ("cache.cs" if field == "cs" else "cache.xs"), line


@pytest.mark.skipif(_backend.cuda_emu is None, reason="pylstm._cuda_emu not built")
def test_backward_checks_the_sizes_saved_in_a_device_cache():
    """The sizes a device cache saved decide what backward allocates: they must be its arrays'."""
    d = _device(_args())
    cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"])[3]
    mod, lib, (n, t, dd, h), dt, lengths_dev = cache.device
    cache.device = (mod, lib, (n + 2**31, t, dd, h), dt, lengths_dev)
    with pytest.raises(ValueError, match=r"^cache\b"):
        pylstm.lstm_backward(_devices.EmuDeviceArray(np.ones((N, T, H), np.float32)), cache)


_OVERFLOW_VIEW_SCRIPT = r"""
import resource
import numpy as np
from numpy.lib.stride_tricks import as_strided
import pylstm

def huge(shape):  # a C-contiguous-looking view of far more elements than its 64-byte buffer
    buf = np.zeros(16, np.float32)
    strides = tuple(int(np.prod(shape[k + 1:])) * 4 for k in range(len(shape)))
    return as_strided(buf, shape, strides)

H = 1
xs, Wx = huge((1, 1, 2**31)), huge((2**31, 4 * H))
Wh, b = np.zeros((H, 4 * H), np.float32), np.zeros(4 * H, np.float32)
vm = int(open("/proc/self/status").read().split("VmSize:")[1].split()[0]) * 1024
resource.setrlimit(resource.RLIMIT_AS, (vm + (256 << 20), resource.RLIM_INFINITY))
for backend in pylstm.available_backends():
    if backend in ("cpu", "numpy"):
        try:
            pylstm.lstm_forward(xs, Wx, Wh, b, backend=backend)
            print(backend, "no error")
        except Exception as exc:
            print(backend, type(exc).__name__, str(exc).split(" ")[0])
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="RLIMIT_AS and /proc are Linux's")
def test_lstm_size_limit_is_checked_on_every_backend(tmp_path):
    """Sizes past 32-bit indexing are refused by the reference as by the kernels, before any
    element is read (here a view claiming 2**31 elements of a 64-byte buffer)."""
    import subprocess

    r = subprocess.run([sys.executable, "-c", _OVERFLOW_VIEW_SCRIPT], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path)
    assert r.returncode == 0, f"exit {r.returncode}: {r.stderr[-2000:]}"
    lines = r.stdout.splitlines()
    assert lines and all(line.split()[1:] == ["ValueError", "xs:"] for line in lines), r.stdout
