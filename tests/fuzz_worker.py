"""The fuzz batches of test_fuzz.py, run as a script in a child process (a crash there fails the
test instead of killing pytest): ``python fuzz_worker.py KIND SEED COUNT``. Prints one JSON line:
the number of cases run and the failures found (at most 20, each a short description).

Kinds: "valid" (odd but valid calls of the functional API, every host backend against the
reference), "invalid" (calls with one argument broken: only the allowed exception types, a
message that starts with an argument's name, the same error on every host backend, no input
changed), "checkpoint" (corrupted checkpoints through load_checkpoint, load_params, resume and
the generate / eval commands).
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import sys
import tempfile
import traceback
import warnings

import numpy as np
from numpy.lib.stride_tricks import as_strided

import pylstm
from pylstm import _backend
from pylstm.functional import LSTMCache
from pylstm.models import CheckpointError

ALLOWED = (TypeError, ValueError, CheckpointError, _backend.DeviceUnavailableError)
HOST = [b for b in pylstm.available_backends() if b in ("cpu", "numpy")]
DTYPES = (np.float32, np.float64)
# normwise relative error allowed against the reference
RTOL = {np.dtype(np.float32): 2e-4, np.dtype(np.float64): 1e-9}


class Failure(Exception):
    pass


# --- odd but valid arrays ---------------------------------------------------------------------
def odd_layout(rng, a, writable=False):
    """`a`'s values in a C-contiguous array of an unusual kind: inside a larger buffer at an
    offset, unaligned, read-only (inputs only), or a plain copy."""
    kind = rng.integers(4 if not writable else 3)
    if kind == 0:
        off = int(rng.integers(1, 5))
        buf = np.empty(a.size + off + 3, a.dtype)
        v = buf[off:off + a.size].reshape(a.shape)
    elif kind == 1:
        raw = np.zeros(a.nbytes + 8, np.uint8)
        v = np.frombuffer(raw.data, a.dtype, a.size, int(rng.integers(1, 8))).reshape(a.shape)
    else:
        v = np.empty_like(a)
    v[...] = a
    if kind == 3:
        v.flags.writeable = False
    return v


def normal(rng, shape, dtype, scale=1.0):
    return np.asarray(rng.standard_normal(shape) * scale, dtype=dtype)


def lstm_args(rng, odd=True):
    dt = DTYPES[rng.integers(2)]
    N, T, D, H = (int(v) for v in rng.integers(1, 6, 4))
    if rng.random() < 0.2:
        D = int(rng.integers(1, 200))
    scale = float(rng.choice([0.1, 1.0, 4.0]))
    d = {"xs": normal(rng, (N, T, D), dt, scale), "Wx": normal(rng, (D, 4 * H), dt, 1 / np.sqrt(D)),
         "Wh": normal(rng, (H, 4 * H), dt, 1 / np.sqrt(H)), "b": normal(rng, (4 * H,), dt, 0.5),
         "h0": normal(rng, (N, H), dt) if rng.random() < 0.6 else None,
         "c0": normal(rng, (N, H), dt) if rng.random() < 0.6 else None}
    if odd:
        d = {k: None if v is None else odd_layout(rng, v) for k, v in d.items()}
    return d, (N, T, D, H), dt


def close(name, got, want, dt, atol=0.0):
    """Normwise: max |got - want| <= RTOL * max |want| + atol."""
    got, want = np.asarray(got, np.float64), np.asarray(want, np.float64)
    if got.shape != want.shape:
        raise Failure(f"{name}: shape {got.shape} != reference {want.shape}")
    scale = np.abs(want).max() if want.size else 0.0
    err = np.abs(got - want).max() if want.size else 0.0
    rel = max(err - atol, 0.0) / scale if scale > 0 else max(err - atol, 0.0)
    if not rel <= RTOL[np.dtype(dt)]:
        raise Failure(f"{name}: relative error {rel:.3g} against the reference ({np.dtype(dt)})")


def valid_lstm(rng):
    d, (N, T, D, H), dt = lstm_args(rng)
    up = {"dhs": normal(rng, (N, T, H), dt), "dhT": normal(rng, (N, H), dt) if rng.random() < 0.5 else None,
          "dcT": normal(rng, (N, H), dt) if rng.random() < 0.5 else None}
    up = {k: None if v is None else odd_layout(rng, v) for k, v in up.items()}
    results = {}
    order = "torch" if rng.random() < 0.3 else "pylstm"  # (PyTorch's gate order: the same rules)
    for backend in HOST:
        fw = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend=backend,
                                 gate_order=order)
        inf = pylstm.lstm_inference(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend=backend,
                                    gate_order=order)
        for k in range(3):
            if not np.array_equal(fw[k], inf[k]):
                raise Failure(f"lstm_inference differs from lstm_forward on {backend}")
        bw = pylstm.lstm_backward(up["dhs"], fw[3], up["dhT"], up["dcT"])
        results[backend] = list(fw[:3]) + list(bw)
    names = ("hs", "hT", "cT", "dxs", "dh0", "dc0", "dWx", "dWh", "db")
    for backend, res in results.items():
        for name, got, want in zip(names, res, results["numpy"]):
            if got.dtype != dt:
                raise Failure(f"lstm {name} on {backend}: dtype {got.dtype}, inputs {np.dtype(dt)}")
            close(f"lstm {name} on {backend} {(N, T, D, H)}", got, want, dt)


def valid_clip(rng):
    dt = DTYPES[rng.integers(2)]
    shapes = [tuple(int(s) for s in rng.integers(0, 7, rng.integers(0, 3))) for _ in range(rng.integers(0, 5))]
    scale = float(rng.choice([1e-3, 1.0, 100.0]))
    base = [normal(rng, s, dt, scale) for s in shapes]
    max_norm = float(rng.choice([1e-3, 0.5, 5.0, 1e6]))
    want_norm = pylstm.global_norm(base, backend="numpy")
    want = [g.copy() for g in base]
    pylstm.clip_grads(want, max_norm, backend="numpy")
    for backend in HOST:
        grads = [odd_layout(rng, g, writable=True) for g in base]
        n = pylstm.global_norm(grads, backend=backend)
        m = pylstm.clip_grads(grads, max_norm, backend=backend)
        for v in (n, m):
            if not np.isclose(v, want_norm, rtol=1e-12 if dt == np.float64 else 1e-6, atol=0):
                raise Failure(f"global norm on {backend}: {v} != reference {want_norm}")
        for k, (g, w) in enumerate(zip(grads, want)):
            close(f"clipped grads[{k}] on {backend}", g, w, dt)


def valid_matmul(rng):
    dt = DTYPES[rng.integers(2)]
    M, K, N = (int(v) for v in rng.integers(1, 40, 3))
    a = normal(rng, (K, M), dt).T if rng.random() < 0.5 else normal(rng, (M, K), dt)
    b = normal(rng, (N, K), dt).T if rng.random() < 0.5 else normal(rng, (K, N), dt)
    bias = normal(rng, (N,), dt) if rng.random() < 0.5 else None
    want = a.astype(np.float64) @ b.astype(np.float64) + (0 if bias is None else bias)
    for backend in HOST:
        out = None if rng.random() < 0.4 else np.full((M, N), np.nan, dt, order="CF"[rng.integers(2)])
        colsum = np.full(N, np.nan, dt) if rng.random() < 0.5 else None
        r = pylstm.matmul(a, b, out=out, bias=bias, colsum=colsum, backend=backend)
        if out is not None and r is not out:
            raise Failure(f"matmul on {backend} did not return out")
        close(f"matmul {(M, K, N)} on {backend}", r, want, dt)
        if colsum is not None:
            close(f"matmul colsum on {backend}", colsum, b.astype(np.float64).sum(axis=0), dt)


def valid_softmax(rng):
    dt = DTYPES[rng.integers(2)]
    M, V = int(rng.integers(1, 30)), int(rng.integers(1, 60))
    scores = odd_layout(rng, normal(rng, (M, V), dt, float(rng.choice([0.1, 3.0, 30.0]))))
    ignore = int(rng.choice([-1, 0, 7, -(2**31)]))
    labels = rng.integers(0, V, M).astype(rng.choice([np.int32, np.int64, np.uint8]) if V < 256 else np.int64)
    if rng.random() < 0.5:
        labels[rng.random(M) < 0.3] = ignore if ignore >= 0 or labels.dtype.kind == "i" else 0
    want_loss, want_d = pylstm.softmax_cross_entropy(scores.astype(np.float64), labels, ignore, backend="numpy")
    for backend in HOST:
        loss, d = pylstm.softmax_cross_entropy(scores, labels, ignore, backend=backend)
        # (float32: log(1 + 1e-8) rounds to 0 where one score dominates, hence the atol)
        f64 = dt == np.float64
        if not np.isclose(loss, want_loss, rtol=1e-9 if f64 else 1e-5, atol=1e-12 if f64 else 1e-6):
            raise Failure(f"softmax loss on {backend}: {loss} != reference {want_loss}")
        # (softmax - 1 where one score dominates: a few ulp of 1 absolute, all there is when
        # every gradient is that small)
        close(f"softmax dscores on {backend}", d, want_d, dt, atol=4 * float(np.finfo(dt).eps))


def rnn_args(rng, odd=True):
    """A vanilla RNN's arguments (and its nonlinearity), from the LSTM's with one gate block."""
    d, (N, T, D, H), dt = lstm_args(rng, odd=False)
    d = {"xs": d["xs"], "Wx": np.ascontiguousarray(d["Wx"][:, :H]), "Wh": np.ascontiguousarray(d["Wh"][:, :H]),
         "b": np.ascontiguousarray(d["b"][:H]), "h0": d["h0"], "nonlinearity": str(rng.choice(["tanh", "relu"]))}
    if odd:
        d = {k: v if not isinstance(v, np.ndarray) else odd_layout(rng, v) for k, v in d.items()}
    return d, (N, T, D, H), dt


def valid_rnn(rng):
    d, (N, T, D, H), dt = rnn_args(rng)
    dhs = odd_layout(rng, normal(rng, (N, T, H), dt))
    dhT = odd_layout(rng, normal(rng, (N, H), dt)) if rng.random() < 0.5 else None
    results = {}
    for backend in HOST:
        hs, hT, cache = pylstm.rnn_forward(**d, backend=backend)
        hs_i, hT_i = pylstm.rnn_inference(**d, backend=backend)
        if not (np.array_equal(hs, hs_i) and np.array_equal(hT, hT_i)):
            raise Failure(f"rnn_inference differs from rnn_forward on {backend}")
        results[backend] = [hs, hT] + list(pylstm.rnn_backward(dhs, cache, dhT))
    # Against the float64 reference, allowing twice the same-dtype reference's own error (a sum
    # that nearly cancels, as at H = 1, is inexact in any order)
    d64 = {k: np.asarray(v, np.float64) if isinstance(v, np.ndarray) else v for k, v in d.items()}
    hs, hT, cache = pylstm.rnn_forward(**d64, backend="numpy")
    exact = [hs, hT] + list(pylstm.rnn_backward(np.asarray(dhs, np.float64), cache,
                                                None if dhT is None else np.asarray(dhT, np.float64)))
    names = ("hs", "hT", "dxs", "dh0", "dWx", "dWh", "db")
    for backend, res in results.items():
        for name, got, want, naive in zip(names, res, exact, results["numpy"]):
            if got.dtype != dt:
                raise Failure(f"rnn {name} on {backend}: dtype {got.dtype}, inputs {np.dtype(dt)}")
            # plus 32 ulp of the O(1) terms: a result that cancels to near 0 has no relative accuracy
            slack = (2 * float(np.abs(np.asarray(naive, np.float64) - want).max()) if want.size else 0.0) \
                + 32 * float(np.finfo(dt).eps)
            close(f"rnn {name} on {backend} {(N, T, D, H)} {d['nonlinearity']}", got, want, dt, atol=slack)


VALID = [valid_lstm, valid_clip, valid_matmul, valid_softmax, valid_rnn]


# --- invalid calls ----------------------------------------------------------------------------
class FakeDevice:
    """__cuda_array_interface__ of host memory, from no array library pylstm knows."""

    def __init__(self, a):
        self.shape, self.dtype, self._a = a.shape, a.dtype, a

    @property
    def __cuda_array_interface__(self):
        return {"shape": self._a.shape, "typestr": self._a.dtype.str, "data": (self._a.ctypes.data, False),
                "strides": None, "version": 3}


def huge_view(shape, dtype):
    """A view that claims to be C-contiguous with `shape` over a 64-byte buffer: it must be
    refused before an element is read (marked so the harness never reads it either)."""
    buf = np.zeros(64, np.uint8)
    item = np.dtype(dtype).itemsize
    strides = tuple(int(np.prod(shape[k + 1:])) * item for k in range(len(shape)))
    v = as_strided(buf.view(dtype), shape, strides)
    HUGE.add(id(v))
    return v


HUGE: set = set()


def break_array(rng, a):
    """One way to make array argument `a` wrong (or, now and then, still right)."""
    if not isinstance(a, np.ndarray):
        return rng.choice(np.array([None, 1.5, "x", [1.0, 2.0]], dtype=object))
    k = int(rng.integers(17))
    if k == 0:
        with np.errstate(invalid="ignore", over="ignore"):  # (an uninitialized out may hold NaN)
            return a.astype(rng.choice([np.int32, np.float16, np.complex64, np.bool_, np.int64]))
    if k == 1:
        return a.astype(a.dtype.newbyteorder(">"))
    if k == 2:
        return a.astype(np.float64 if a.dtype == np.float32 else np.float32)
    if k == 3:
        return a[None]
    if k == 4 and a.ndim:
        return a.reshape(-1)[:-1] if a.ndim == 1 else a[..., 0]
    if k == 5 and a.ndim:
        ax = int(rng.integers(a.ndim))
        return np.concatenate([a, a.take([0], axis=ax)], axis=ax)
    if k == 6 and a.ndim:
        ax = int(rng.integers(a.ndim))
        return a.take(np.arange(0), axis=ax)
    if k == 7 and a.ndim:
        return np.repeat(a, 2, axis=-1)[..., ::2]
    if k == 8 and a.ndim >= 2:
        return np.asfortranarray(a) if a.shape[0] > 1 and a.shape[-1] > 1 else a[::-1]
    if k == 9 and a.ndim:
        return a[::-1] if a.shape[0] > 1 else np.repeat(a, 2, axis=0)[::-2]
    if k == 10 and a.ndim and a.shape[0] > 1:
        return np.broadcast_to(a[:1], a.shape)
    if k == 11:
        return np.ma.masked_array(a, mask=False)
    if k == 12:
        return FakeDevice(a)
    if k == 13:
        r = a.copy()
        r.flags.writeable = False
        return r
    if k == 14:
        return a.tolist()
    if k == 15:
        return None
    return a


def snapshot(values):
    """Copies of the array arguments, to check that a failed call changed none of them."""
    out = []
    for v in values:
        arrays = v if isinstance(v, list) else [v]
        for a in arrays:
            if isinstance(a, np.ndarray) and id(a) not in HUGE:
                out.append((a, a.copy()))
    return out


def unchanged(snap):
    return all(np.array_equal(a, c, equal_nan=a.dtype.kind in "fc") for a, c in snap)


def run_invalid(fn, args, names, label):
    """Calls fn on every host backend: each must raise an allowed exception whose message starts
    with an argument's name (the same type and message everywhere), or succeed everywhere;
    a failed call changes no argument."""
    outcomes = {}
    for backend in HOST:
        snap = snapshot(list(args.values()))
        try:
            fn(**args, backend=backend)
            outcomes[backend] = None
        except ALLOWED as exc:
            msg = str(exc)
            if not any(msg.startswith(n) for n in names):
                raise Failure(f"{label} on {backend}: message does not start with an argument's name: {msg[:150]}"
                              ) from None
            if not unchanged(snap):
                raise Failure(f"{label} on {backend}: a failed call changed an argument ({msg[:80]})") from None
            outcomes[backend] = (type(exc).__name__, msg)
        except FloatingPointError:
            outcomes[backend] = ("FloatingPointError", "")
        except Exception as exc:  # noqa: BLE001  (anything else is the finding)
            raise Failure(f"{label} on {backend}: {type(exc).__name__}: {str(exc)[:150]}") from None
    if len({repr(o) for o in outcomes.values()}) > 1:
        raise Failure(f"{label}: the backends disagree: {outcomes}")


def invalid_lstm(rng):
    d, (N, T, D, H), dt = lstm_args(rng, odd=False)
    key = str(rng.choice(list(d)))
    if rng.random() < 0.05:  # sizes past 32-bit indexing, consistent with each other
        d["xs"], d["Wx"], d["h0"], d["c0"] = huge_view((1, 1, 2**31), dt), huge_view((2**31, 4 * H), dt), None, None
        key = "xs (2**31)"
    elif rng.random() < 0.05:
        d["gate_order"] = rng.choice(["keras", "", 4, None, "TORCH"])
        key = "gate_order"
    else:
        d[key] = break_array(rng, d[key])
        if rng.random() < 0.3:
            d["gate_order"] = "torch"  # (a broken argument is named the same in either order)
    fn = pylstm.lstm_forward if rng.random() < 0.5 else pylstm.lstm_inference
    run_invalid(fn, d, ("xs", "Wx", "Wh", "b", "h0", "c0", "backend", "gate_order"), f"{fn.__name__} with bad {key}")


def invalid_backward(rng):
    d, (N, T, D, H), dt = lstm_args(rng, odd=False)
    caches = {b: pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"], backend=b)[3]
              for b in HOST}
    up = {"dhs": normal(rng, (N, T, H), dt), "dhT": None, "dcT": normal(rng, (N, H), dt)}
    fields = ["xs", "h0", "c0", "Wx", "Wh", "b", "hs", "gates", "cs"]
    if rng.random() < 0.5:
        key = str(rng.choice(list(up)))
        up[key] = break_array(rng, up[key])
        label = f"lstm_backward with bad {key}"
        field, value = None, None
    else:
        field = str(rng.choice(fields))
        value = break_array(rng, getattr(caches["numpy"], field))
        if rng.random() < 0.05 and field in ("hs", "cs"):
            value = np.broadcast_to(getattr(caches["numpy"], field)[:1], (2**31, T, H))
            HUGE.add(id(value))
        label = f"lstm_backward with a tampered cache.{field}"
    outcomes = {}
    for backend, cache in caches.items():
        if field is not None:
            cache = LSTMCache(*(getattr(cache, s) for s in LSTMCache.__slots__))
            setattr(cache, field, value)
        snap = snapshot(list(up.values()) + [getattr(cache, f) for f in fields])
        try:
            pylstm.lstm_backward(up["dhs"], cache, up["dhT"], up["dcT"])
            outcomes[backend] = None
        except ALLOWED as exc:
            msg = str(exc)
            if not msg.startswith(("dhs", "dhT", "dcT", "cache")):
                raise Failure(f"{label} on {backend}: message does not name the argument: {msg[:150]}") from None
            if not unchanged(snap):
                raise Failure(f"{label} on {backend}: a failed call changed an argument") from None
            outcomes[backend] = (type(exc).__name__, msg)
        except Exception as exc:  # noqa: BLE001
            raise Failure(f"{label} on {backend}: {type(exc).__name__}: {str(exc)[:150]}") from None
    if len({repr(o) for o in outcomes.values()}) > 1:
        raise Failure(f"{label}: the backends disagree: {outcomes}")


def invalid_clip(rng):
    dt = DTYPES[rng.integers(2)]
    grads = [normal(rng, tuple(int(s) for s in rng.integers(1, 5, rng.integers(1, 3))), dt) for _ in range(3)]
    args = {"grads": grads, "max_norm": 1.0}
    r = rng.random()
    if r < 0.6:
        k = int(rng.integers(len(grads)))
        grads[k] = break_array(rng, grads[k])
        label = f"grads[{k}]"
    elif r < 0.8:
        args["max_norm"] = rng.choice(np.array([0.0, -1.0, np.nan, np.inf, 10**400, "1", None, True], dtype=object))
        label = f"max_norm={args['max_norm']!r}"
    else:
        args["grads"] = rng.choice(np.array([None, 3.0, "x", grads[0]], dtype=object))
        label = "grads not a list"
    names = ("grads", "max_norm", "backend")
    run_invalid(pylstm.clip_grads, args, names, f"clip_grads with bad {label}")
    if "max_norm" not in label:
        run_invalid(pylstm.global_norm, {"grads": args["grads"]}, names, f"global_norm with bad {label}")


def invalid_matmul(rng):
    dt = DTYPES[rng.integers(2)]
    M, K, N = (int(v) for v in rng.integers(1, 8, 3))
    args = {"a": normal(rng, (M, K), dt), "b": normal(rng, (K, N), dt), "out": np.empty((M, N), dt),
            "bias": normal(rng, (N,), dt), "colsum": np.empty(N, dt)}
    for k in ("out", "bias", "colsum"):
        if rng.random() < 0.4:
            args[k] = None
    r = rng.random()
    if r < 0.05:
        args = {"a": huge_view((1, 2**31), dt), "b": huge_view((2**31, 1), dt), "out": None, "bias": None,
                "colsum": None}
        key = "a, b (2**31)"
    elif r < 0.15 and args["out"] is not None:
        key = "out (overlapping)"
        args["out"] = args["a"] if M == N else np.empty((M, N), dt)
        if args["colsum"] is not None and rng.random() < 0.5:
            args["colsum"] = args["out"][0]
            key = "colsum (in out)"
    else:
        key = str(rng.choice([k for k, v in args.items() if v is not None]))
        args[key] = break_array(rng, args[key])
    run_invalid(pylstm.matmul, args, ("a", "b", "out", "bias", "colsum", "backend"), f"matmul with bad {key}")


def invalid_softmax(rng):
    dt = DTYPES[rng.integers(2)]
    M, V = int(rng.integers(1, 8)), int(rng.integers(1, 8))
    args = {"scores": normal(rng, (M, V), dt), "labels": rng.integers(0, V, M), "ignore_label": -1}
    r = rng.random()
    if r < 0.5:
        args["scores"] = break_array(rng, args["scores"])
        key = "scores"
    elif r < 0.8:
        choices = [args["labels"] + V, -2 - args["labels"], args["labels"].astype(np.float64),
                   args["labels"][:-1], args["labels"][None], [None] * M, args["labels"].astype(np.uint64) + 2**63]
        args["labels"] = choices[int(rng.integers(len(choices)))]
        key = "labels"
    else:
        args["ignore_label"] = rng.choice(np.array([1.5, "1", True, 2**40, None, np.float64(1)], dtype=object))
        key = "ignore_label"
    run_invalid(pylstm.softmax_cross_entropy, args, ("scores", "labels", "ignore_label", "backend"),
                f"softmax_cross_entropy with bad {key}")


def invalid_backend(rng):
    d, _, _ = lstm_args(rng, odd=False)
    backend = rng.choice(np.array(["cuda", "gpu", "CPU", "", None, 3, ["cpu"]], dtype=object))
    calls = [lambda: pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], backend=backend),
             lambda: pylstm.matmul(d["Wx"], d["Wx"].T, backend=backend),
             lambda: pylstm.softmax_cross_entropy(d["Wh"], np.zeros(d["Wh"].shape[0], int), backend=backend),
             lambda: pylstm.clip_grads([d["b"].copy()], 1.0, backend=backend),
             lambda: pylstm.global_norm([d["b"]], backend=backend)]
    for call in calls:
        try:
            call()
            if backend != "cuda" or _backend.cuda_status()[0] == 0:
                raise Failure(f"backend={backend!r} was accepted")
        except _backend.DeviceUnavailableError:
            if backend != "cuda":
                raise Failure(f"backend={backend!r}: DeviceUnavailableError") from None
        except (TypeError, ValueError) as exc:
            if not str(exc).startswith("backend"):
                raise Failure(f"backend={backend!r}: message does not name backend: {exc}") from None


def invalid_rnn(rng):
    d, _, _ = rnn_args(rng, odd=False)
    key = str(rng.choice(["xs", "Wx", "Wh", "b", "h0", "nonlinearity"]))
    d[key] = "sigmoid" if key == "nonlinearity" else break_array(rng, d[key])
    fn = pylstm.rnn_forward if rng.random() < 0.5 else pylstm.rnn_inference
    run_invalid(fn, d, ("xs", "Wx", "Wh", "b", "h0", "nonlinearity", "backend"), f"{fn.__name__} with bad {key}")


INVALID = [invalid_lstm, invalid_backward, invalid_clip, invalid_matmul, invalid_softmax, invalid_backend,
           invalid_rnn]


# --- corrupted checkpoints --------------------------------------------------------------------
ODD_VALUES = [-1, 0, 1, 2**70, -(2**70), 1e308, float("inf"), float("-inf"), float("nan"), 0.5, "x", "",
              [], {}, None, True, False, [1, 2], {"a": 1}, [[1]], ["embedded"], "ptb", 0.0]


def checkpoint_files(tmp):
    """A `pylstm train`-like checkpoint (trainer state, vocabulary and run record)."""
    from pylstm.models import BetterRnnlm
    from pylstm.optimizers import Adam
    from pylstm.trainer import RnnlmTrainer

    vocab = [chr(c) for c in range(ord("a"), ord("a") + 12)]
    corpus = np.random.default_rng(0).integers(0, 12, 400)
    m = BetterRnnlm(12, 4, 4, dropout_ratio=0.2, seed=1)
    tr = RnnlmTrainer(m, Adam(0.01), log=lambda s: None)
    tr.meta = {"vocab": vocab, "level": "char", "corpus": "embedded", "max_chars": 1000}
    with open(os.path.join(tmp, "corpus.txt"), "w", encoding="utf-8") as f:
        f.write("".join(vocab[i] for i in corpus))
    path = os.path.join(tmp, "good.npz")
    tr.fit(corpus[:-1], corpus[1:], max_epoch=1, batch_size=2, time_size=5, eval_interval=None,
           checkpoint=path, progress=False)
    return path


def corrupt(rng, good, out):
    with np.load(good) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays["meta"].tobytes().decode())
    k = rng.integers(5)
    if k == 0:  # a metadata value anywhere: top level, config or extra
        where = [meta, meta["config"], meta["extra"]][rng.integers(3)]
        key = str(rng.choice(list(where)))
        where[key] = ODD_VALUES[rng.integers(len(ODD_VALUES))]
        what = f"metadata {key} = {where[key]!r}"
    elif k == 1:  # an array: dtype, shape, or gone
        key = str(rng.choice([a for a in arrays if a != "meta"]))
        a = arrays[key]
        j = rng.integers(4)
        arrays[key] = [a.astype(np.complex64), a.astype(np.int32), a.reshape(-1)[:-1] if a.size else a[None],
                       a.astype(np.float16)][j]
        if rng.random() < 0.2:
            del arrays[key]
        what = f"array {key} changed ({j})"
    elif k == 2:  # an element of a list in the metadata
        lists = [(d, key) for d in (meta["extra"],) for key, v in d.items() if isinstance(v, list) and v]
        d, key = lists[rng.integers(len(lists))]
        d[key][rng.integers(len(d[key]))] = ODD_VALUES[rng.integers(len(ODD_VALUES))]
        what = f"an element of {key}"
    else:
        what = "bytes"
    arrays["meta"] = np.frombuffer(json.dumps(meta).encode(), dtype=np.uint8)
    np.savez(out, **arrays)
    if k >= 3:  # bytes of the file itself: flipped, or cut off
        with open(out, "rb") as f:
            data = bytearray(f.read())
        if k == 3:
            for _ in range(int(rng.integers(1, 6))):
                data[rng.integers(len(data))] ^= int(rng.integers(1, 256))
        else:
            data = data[: int(rng.integers(len(data)))]
        with open(out, "wb") as f:
            f.write(bytes(data))
    return what


def checkpoint_case(rng, good, tmp):
    from pylstm import cli
    from pylstm.models import BetterRnnlm, load_checkpoint
    from pylstm.optimizers import Adam
    from pylstm.trainer import RnnlmTrainer

    bad = os.path.join(tmp, "bad.npz")
    what = corrupt(rng, good, bad)
    steps = [("load_checkpoint", lambda m: load_checkpoint(bad)), ("load_params", lambda m: m.load_params(bad)),
             ("resume", lambda m: RnnlmTrainer(m, Adam(0.01), log=lambda s: None).resume(bad))]
    for name, call in steps:
        m = BetterRnnlm(12, 4, 4, dropout_ratio=0.2, seed=9)
        before = [p.copy() for p in m.params]
        try:
            call(m)
        except CheckpointError:
            if any(not np.array_equal(p, q, equal_nan=True) for p, q in zip(m.params, before)):
                raise Failure(f"{name} of a checkpoint with {what}: failed but changed the model") from None
        except Exception as exc:  # noqa: BLE001
            raise Failure(f"{name} of a checkpoint with {what}: {type(exc).__name__}: {str(exc)[:150]}") from None
    small = os.path.join(tmp, "corpus.txt")  # eval on a small text (the embedded one takes a while)
    for args in (["generate", bad, "--length", "3"], ["eval", bad, "--corpus", small, "--batch", "2", "--time", "3"]):
        err = io.StringIO()
        try:
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(err):
                rc = cli.main(args)
        except Exception as exc:  # noqa: BLE001
            raise Failure(f"pylstm {args[0]} on a checkpoint with {what}: {type(exc).__name__}: {exc}") from None
        if rc not in (0, 1):
            raise Failure(f"pylstm {args[0]} on a checkpoint with {what}: exit {rc}")


def main():
    kind, seed, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
    warnings.simplefilter("error")  # a silent cast or overflow in a call is a finding too
    rng = np.random.default_rng(seed)
    failures = []
    tmp = tempfile.mkdtemp()
    good = checkpoint_files(tmp) if kind == "checkpoint" else None
    sys.stdin = io.StringIO()  # whatever a call might read from standard input is empty
    for i in range(count):
        HUGE.clear()
        try:
            if kind == "valid":
                VALID[i % len(VALID)](rng)
            elif kind == "invalid":
                INVALID[i % len(INVALID)](rng)
            else:
                checkpoint_case(rng, good, tmp)
        except Failure as f:
            failures.append(f"case {i}: {f}")
        except Exception:  # noqa: BLE001  (the harness itself, or an unexpected path)
            failures.append(f"case {i}: {traceback.format_exc(limit=3)[-600:]}")
    print(json.dumps({"cases": count, "failures": failures[:20], "n_failures": len(failures)}))


if __name__ == "__main__":
    main()
