"""The functional API: fused LSTM, peephole LSTM, GRU and vanilla RNN forward/backward,
global-norm clipping and the dense ops, dispatched to a
backend ("cpu": the compiled kernels; "cuda": the CUDA kernels on device arrays; "numpy": the
reference in ``pylstm.reference``). "auto" picks "cuda" for device arrays (anything with
``__cuda_array_interface__``: CuPy, PyTorch CUDA tensors, Numba) and "cpu" for NumPy arrays.

Every function validates its arguments the same way for every backend and raises ``TypeError``
(wrong type or dtype) or ``ValueError`` (rank, shape, contiguity, writability, empty sizes) with
a message that starts with the argument's name. Nothing is cast or copied silently.
"""

from __future__ import annotations

import contextlib
import copy
import operator
from typing import Sequence

import numpy as np

from . import _backend, _devices
from . import reference as ref

__all__ = [
    "LSTMCache",
    "RNNCache",
    "lstm_forward",
    "lstm_inference",
    "lstm_backward",
    "peephole_forward",
    "peephole_inference",
    "peephole_backward",
    "gru_forward",
    "gru_inference",
    "gru_backward",
    "GRU_VARIANTS",
    "rnn_forward",
    "rnn_inference",
    "rnn_backward",
    "global_norm",
    "clip_grads",
    "clip_grads_by_value",
    "matmul",
    "softmax_cross_entropy",
    "available_backends",
    "set_num_threads",
    "get_num_threads",
]

_BACKENDS = ("auto", "cpu", "cuda", "numpy")
_DEVICE_BACKENDS = ("cuda", "cuda-emu")
_FLOAT_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


def available_backends() -> list:
    """Names of the backends usable in this process, best first."""
    names = []
    if _backend.cuda_status()[0] > 0:
        names.append("cuda")
    if _backend.cpu is not None:
        names.append("cpu")
    names.append("numpy")
    return names


def set_num_threads(n: int) -> None:
    """Set the threads used by the CPU kernels. Capped at the CPUs this process may run on
    (``get_num_threads`` returns the count in use): the kernels synchronize every time step, and
    threads beyond the cores only wait for each other."""
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n must be an int, got {type(n).__name__}")
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    _backend.require_cpu().set_num_threads(min(int(n), 2**31 - 1))  # the kernels cap it at the CPUs


def get_num_threads() -> int:
    """Threads used by the CPU kernels."""
    return _backend.require_cpu().get_num_threads()


def _resolve_backend(backend: str, probe=None) -> str:
    """The backend to run: `probe` (the first array argument) decides "auto"."""
    if not isinstance(backend, str):
        raise TypeError(f"backend must be a string, one of {_BACKENDS}, got {type(backend).__name__}")
    if backend == "cuda-emu" and _backend.cuda_emu is not None:
        return backend  # test-only: the CUDA sources emulated on the CPU (LSTM and clipping)
    if not isinstance(backend, str) or backend not in _BACKENDS:
        raise ValueError(f"backend must be one of {_BACKENDS}, got {backend!r}")
    if backend == "auto":
        if _devices.is_device_array(probe):
            return "cuda"
        return "cpu" if _backend.cpu is not None else "numpy"
    if backend == "cpu":
        _backend.require_cpu()
    return backend


def _device_target(name: str, probe):
    """(module, array library or None) for a device call; the library is None when it must be
    chosen from the arrays' device (real GPU arrays)."""
    if name == "cuda-emu" or isinstance(probe, _devices.EmuDeviceArray):
        if _backend.cuda_emu is None:
            raise RuntimeError("the emulated CUDA module (pylstm._cuda_emu) was not built")
        return _backend.cuda_emu, _devices.EmuLib(host_io=name == "cuda-emu")
    return _backend.require_cuda(), None


def _type_desc(a) -> str:
    t = type(a)
    return t.__name__ if t.__module__ == "builtins" else f"{t.__module__}.{t.__qualname__}"


def _reject_masked(a, name: str):
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray: the kernels would ignore its mask; pass "
                        f"{name}.filled(value) or a plain numpy.ndarray")


def _require_ndarray(a, name: str):
    _reject_masked(a, name)
    if not isinstance(a, np.ndarray):
        if _devices.is_device_array(a):
            raise TypeError(
                f"{name} is a device array ({_type_desc(a)}) but the other arrays are on the host: "
                "pass all arrays on one device (backend 'cuda') or all as numpy arrays"
            )
        raise TypeError(f"{name} must be a numpy.ndarray, got {type(a).__name__}")


def _check_array(a, name: str, dtype: np.dtype, shape: tuple, dtype_owner: str = "xs"):
    """Checks type, dtype, rank, extents (None = any) and C-contiguity of one argument."""
    _require_ndarray(a, name)
    if a.dtype != dtype:
        raise TypeError(f"{name} must have dtype {dtype} (the dtype of {dtype_owner}), got {a.dtype}")
    if a.ndim != len(shape):
        raise ValueError(f"{name} must have rank {len(shape)}, got rank {a.ndim} with shape {a.shape}")
    if any(want is not None and got != want for got, want in zip(a.shape, shape)):
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    if not a.flags.c_contiguous:
        raise ValueError(
            f"{name} must be C-contiguous (use numpy.ascontiguousarray), got strides {a.strides}"
        )


# The cells the kernels have: gate blocks, whether a cell state travels beside h, rows of
# per-unit parameters P, saved activations per unit (the C++ list is csrc/cells/registry.h).
_CELLS = {"lstm": (4, True, 0, 4), "peephole": (4, True, 3, 4), "gru": (3, False, 1, 4),
          "gru_reset_before": (3, False, 0, 3), "gru_book": (3, False, 0, 3),
          "rnn_tanh": (1, False, 0, 1), "rnn_relu": (1, False, 0, 1),
          "lstm_torch": (4, True, 0, 4), "gru_torch": (3, False, 1, 4)}
_NONLINEARITIES = ("tanh", "relu")

# gate_order="torch": the cells with PyTorch's block order (LSTM i, f, g, o; GRU r, z, n), each
# with its pylstm-order cell and, for each of that cell's blocks, its block in torch's order.
_GATE_ORDERS = ("pylstm", "torch")
_TORCH_ORDER = {"lstm_torch": ("lstm", (1, 2, 0, 3)), "gru_torch": ("gru", (1, 0, 2))}


def _ordered_cell(cell: str, gate_order) -> str:
    """The kernel cell of `cell` (lstm or gru) with its gate blocks in `gate_order`."""
    if not isinstance(gate_order, str) or gate_order not in _GATE_ORDERS:
        raise ValueError(f"gate_order must be one of {_GATE_ORDERS}, got {gate_order!r}")
    if gate_order == "pylstm":
        return cell
    if cell + "_torch" not in _TORCH_ORDER:
        raise ValueError(f"gate_order 'torch' is for the LSTM and the reset_after GRU (PyTorch's cells), "
                         f"not for {cell!r}")
    return cell + "_torch"


def _reorder_blocks(a, blocks, inverse=False):
    """a's last axis as G blocks, block k taken from block blocks[k] (or put there: inverse)."""
    G = len(blocks)
    H = a.shape[-1] // G
    order = np.argsort(blocks) if inverse else blocks
    return np.concatenate([a[..., j * H:(j + 1) * H] for j in order], axis=-1)


def _rnn_cell(nonlinearity) -> str:
    """The kernel cell name of a vanilla RNN with this nonlinearity."""
    if not isinstance(nonlinearity, str) or nonlinearity not in _NONLINEARITIES:
        raise ValueError(f"nonlinearity must be one of {_NONLINEARITIES}, got {nonlinearity!r}")
    return "rnn_" + nonlinearity


def _screen_host(arrays: dict, prefix: str = "") -> None:
    """What only Python can tell of host arguments: a masked array (the kernels would ignore its
    mask) or a device array among host ones. Everything else (types, dtypes, shapes, sizes) is
    the shared rules' (csrc/bind/arg_rules.h), for every backend."""
    first = next(iter(arrays.values()))
    for name, a in arrays.items():
        if a is not None:
            _reject_masked(a, prefix + name)
            # (when the first argument is no array either, the rules name it first)
            if isinstance(first, np.ndarray) and not isinstance(a, np.ndarray) and _devices.is_device_array(a):
                raise TypeError(
                    f"{prefix + name} is a device array ({_type_desc(a)}) but the other arrays are on the "
                    "host: pass all arrays on one device (backend 'cuda') or all as numpy arrays"
                )


def _check_seq_args(cell, xs, Wx, Wh, b, h0, c0, P, lengths=None, precision="fp32"):
    """A forward call's arguments under the shared rules (the reference backend's checks: the
    compiled backend's binding makes the same ones itself). Returns (N, T, D, H)."""
    _screen_host({"xs": xs, "Wx": Wx, "Wh": Wh, "b": b, "h0": h0, "c0": c0, "P": P})
    return _backend.require_cpu().forward_check(xs, Wx, Wh, b, h0, c0, cell=cell, P=P, lengths=lengths,
                                                precision=precision)[:4]


_PRECISIONS = ("fp32", "bf16")


def _walk_args(lengths, reverse, precision="fp32") -> tuple:
    """(lengths as a C-contiguous int64 host array or None, reverse, precision) for the kernels,
    whose rules check the precision's name and dtype and the
    lengths' shape and values (each in [1, T]). Any integer dtype is taken; lists too.
    The lengths are a read-only copy: the cache keeps them for the backward, which must walk
    what the forward walked whatever the caller does with its array meanwhile."""
    if not isinstance(reverse, (bool, np.bool_)):
        raise TypeError(f"reverse must be a bool, got {type(reverse).__name__}")
    if not isinstance(precision, str):
        raise TypeError(f"precision must be one of {_PRECISIONS} (a str), got {type(precision).__name__}")
    if lengths is None:
        return None, bool(reverse), precision
    if _devices.is_device_array(lengths) and not isinstance(lengths, np.ndarray):
        raise TypeError(f"lengths must be a host array (numpy, or a list of ints), got {_type_desc(lengths)}: "
                        "the kernels read the lengths on the host on every backend")
    if isinstance(lengths, np.ndarray):
        _reject_masked(lengths, "lengths")
    arr = np.asarray(lengths)
    if arr.dtype.kind not in "iu":
        raise TypeError(f"lengths must have an integer dtype, got {arr.dtype}")
    if arr.dtype.kind == "u" and arr.size and arr.max() > np.iinfo(np.int64).max:
        raise ValueError("lengths: a length is past the int64 range")
    out = np.array(arr, dtype=np.int64, order="C", copy=True)
    out.setflags(write=False)
    return out, bool(reverse), precision


def _check_host_cache(cache, dhs, dhT, dcT) -> tuple:
    """A host cache is checked like arguments, whichever backend made it: its inputs and saved
    arrays (named ``cache.<field>``) and the upstream gradients under the shared rules, before
    anything is allocated (a cache edited to claim 2**31 broadcast rows must not reach the
    reference's temporaries). Returns (N, T, D, H)."""
    if cache.backend not in ("cpu", "numpy"):
        raise ValueError(f"cache.backend must be 'cpu' or 'numpy' for a cache of host arrays, got {cache.backend!r}")
    fields = ("xs", "h0", "c0", "Wx", "Wh", "b", "hs", "gates", "cs")
    _screen_host({f: getattr(cache, f) for f in fields + ("P",)}, "cache.")
    _screen_host({"dhs": dhs, "dhT": dhT, "dcT": dcT})
    return _backend.require_cpu().backward_check(*(getattr(cache, f) for f in fields), dhs, dhT, dcT,
                                                 cell=cache.cell, prefix="cache.", P=cache.P,
                                                 lengths=cache.lengths, precision=cache.precision)[:4]


def _check_lengths(lengths, N: int, T: int) -> np.ndarray:
    """lengths under the recurrent functions' rules, for a layer that takes them without calling
    one (the loss): an int64 host array of shape (N,), each value in [1, T]."""
    lengths = _walk_args(lengths, False)[0]
    _backend.require_cpu().lengths_check(lengths, N, T)
    return lengths


class RecurrentCache:
    """Opaque state saved by ``lstm_forward`` / ``rnn_forward`` for their backward.

    Holds references to the inputs (not copies: do not modify them in place between forward and
    backward) and the saved activations: the LSTM's gates (N, T, 4H) and cell states (N, T, H);
    the RNN's outputs (N, T, H). Its backward checks every array in it like an argument (errors
    name ``cache.<field>``), on every backend, before it allocates anything.
    """

    __slots__ = ("cell", "backend", "xs", "h0", "c0", "Wx", "Wh", "b", "hs", "gates", "cs", "device", "P",
                 "lengths", "reverse", "precision")

    def __init__(self, cell, backend, xs, h0, c0, Wx, Wh, b, hs, gates, cs, device=None, P=None,
                 lengths=None, reverse=False, precision="fp32"):
        self.cell, self.backend = cell, backend
        self.xs, self.h0, self.c0, self.Wx, self.Wh, self.b = xs, h0, c0, Wx, Wh, b
        self.hs, self.gates, self.cs = hs, gates, cs
        self.device = device  # (module, library, (N, T, D, H), dtype, lengths' device copy): device calls
        self.P = P  # the cell's per-unit parameters (peepholes), or None
        self.lengths, self.reverse = lengths, reverse  # the forward's walk (int64 host array or None)
        self.precision = precision  # the GEMMs' operands: "fp32" or "bf16"

    @property
    def nbytes(self) -> int:
        """Bytes saved for backward beyond the inputs and hs."""
        return self.gates.nbytes + (0 if self.cs is None else self.cs.nbytes)


LSTMCache = RecurrentCache
RNNCache = RecurrentCache


def _bf16_mode(precision: str):
    """The reference's bfloat16 GEMMs for precision "bf16"; otherwise whatever mode the caller
    set (tests run the float64 specification under ``reference.bf16_gemms()``)."""
    return ref.bf16_gemms() if precision == "bf16" else contextlib.nullcontext()


# --- Backends: one object each; every public function resolves one, then calls it ----------
class _Reference:
    """The NumPy reference (``pylstm.reference``) on host arrays, behind the shared rules."""

    name = "numpy"

    def seq_forward(self, cell, xs, Wx, Wh, b, h0, c0, save, P=None, lengths=None, reverse=False,
                    precision="fp32"):
        N, T, D, H = _check_seq_args(cell, xs, Wx, Wh, b, h0, c0, P, lengths, precision)
        if cell in _TORCH_ORDER:  # the pylstm-order cell on the weights' blocks reordered
            base, blocks = _TORCH_ORDER[cell]
            hs, hT, cT, c = self.seq_forward(base, xs, *(_reorder_blocks(w, blocks) for w in (Wx, Wh, b)), h0, c0,
                                             save, P, lengths, reverse, precision)
            if c is not None:  # (the saved activations stay in the base cell's order: this
                # backend's cache.gates differs from the kernels' for these cells, and a cache
                # goes back only to the backend that made it)
                c.cell, c.Wx, c.Wh, c.b = cell, Wx, Wh, b
            return hs, hT, cT, c

        def plain(xs, h0, c0):  # -> hs, hT, cT, (gates, cs)
            if cell in ("lstm", "peephole"):
                hs, hT, cT, rc = ref.peephole_forward_ref(xs, h0, c0, Wx, Wh, b, P)
                return hs, hT, cT, (rc.gates, rc.cs)
            if cell in _GRU_CELLS.values():
                hs, hT, rc = ref.gru_forward_ref(xs, h0, Wx, Wh, b, P, _GRU_VARIANT_OF[cell])
                return hs, hT, None, (rc.gates,)
            hs, hT, _ = ref.rnn_forward_ref(xs, h0, Wx, Wh, b, cell[len("rnn_"):])
            return hs, hT, None, (hs,)  # the RNN saves its output as its activation

        with _bf16_mode(precision):
            if lengths is None and not reverse:
                hs, hT, cT, saved = plain(xs, h0, c0)
            else:
                hs, hT, cT, saved = ref.walk_forward_ref(plain, xs, h0, c0, H, lengths, reverse)
        gates, cs = saved[0], (saved[1] if len(saved) > 1 else None)
        cache = None
        if save:
            cache = RecurrentCache(cell, self.name, xs, h0, c0, Wx, Wh, b, hs, gates, cs, P=P,
                                   lengths=lengths, reverse=reverse, precision=precision)
        return hs, hT, cT, cache

    def seq_backward(self, cache, dhs, dhT, dcT):
        """(dxs, dh0, dc0, dWx, dWh, db, dP); dc0 and dP None where the cell has none."""
        _check_host_cache(cache, dhs, dhT, dcT)
        cell = cache.cell
        if cell in _TORCH_ORDER:
            base_cell, blocks = _TORCH_ORDER[cell]
            base = copy.copy(cache)
            base.cell = base_cell
            base.Wx, base.Wh, base.b = (_reorder_blocks(w, blocks) for w in (cache.Wx, cache.Wh, cache.b))
            g = list(self.seq_backward(base, dhs, dhT, dcT))
            g[3:6] = (_reorder_blocks(w, blocks, inverse=True) for w in g[3:6])
            return tuple(g)

        def plain(xs, h0, c0, saved, dhs, dhT, dcT):  # saved: hs, gates(, cs)
            N, _, _ = xs.shape
            H = dhs.shape[2]
            h0 = np.zeros((N, H), xs.dtype) if h0 is None else h0
            if cell in ("lstm", "peephole"):
                c0 = np.zeros((N, H), xs.dtype) if c0 is None else c0
                rc = ref.LSTMCacheRef(xs, h0, c0, cache.Wx, cache.Wh, *saved, cache.P)
                return ref.peephole_backward_ref(dhs, rc, dhT, dcT)
            if cell in _GRU_CELLS.values():
                rc = ref.GRUCacheRef(xs, h0, cache.Wx, cache.Wh, cache.P, *saved, _GRU_VARIANT_OF[cell])
                dxs, dh0, dWx, dWh, db, db_hn = ref.gru_backward_ref(dhs, rc, dhT)
                return dxs, dh0, None, dWx, dWh, db, db_hn
            rc = ref.RNNCacheRef(xs, h0, cache.Wx, cache.Wh, saved[0], cell[len("rnn_"):])
            dxs, dh0, dWx, dWh, db = ref.rnn_backward_ref(dhs, rc, dhT)
            return dxs, dh0, None, dWx, dWh, db, None

        saved = [a for a in (cache.hs, cache.gates, cache.cs) if a is not None]
        if cell.startswith("rnn_"):
            saved = saved[:1]
        with _bf16_mode(cache.precision):
            if cache.lengths is None and not cache.reverse:
                return plain(cache.xs, cache.h0, cache.c0, saved, dhs, dhT, dcT)
            return ref.walk_backward_ref(plain, cache.xs, cache.h0, cache.c0, dhs, dhT, dcT, saved,
                                         cache.lengths, cache.reverse)

    def global_norm(self, grads):
        _check_grads(grads, writable=False)
        return ref.global_norm_ref(grads)

    def clip_grads(self, grads, max_norm, error_if_nonfinite):
        _check_grads(grads, writable=True)
        return ref.clip_grads_ref(grads, max_norm, error_if_nonfinite)

    def clip_value(self, grads, limit):
        _check_grads(grads, writable=True)
        ref.clip_value_ref(grads, limit)


class _Cpu:
    """The compiled CPU kernels (``pylstm._cpu``) on host arrays; the binding checks every
    argument under the shared rules itself."""

    name = "cpu"

    def seq_forward(self, cell, xs, Wx, Wh, b, h0, c0, save, P=None, lengths=None, reverse=False,
                    precision="fp32"):
        _screen_host({"xs": xs, "Wx": Wx, "Wh": Wh, "b": b, "h0": h0, "c0": c0, "P": P})
        hs, hT, cT, gates, cs = _backend.require_cpu().forward(xs, Wx, Wh, b, h0, c0, save, cell=cell, P=P,
                                                               lengths=lengths, reverse=reverse,
                                                               precision=precision)
        cache = None
        if save:
            cache = RecurrentCache(cell, self.name, xs, h0, c0, Wx, Wh, b, hs, gates, cs, P=P,
                                   lengths=lengths, reverse=reverse, precision=precision)
        return hs, hT, cT, cache

    def seq_backward(self, cache, dhs, dhT, dcT):
        _check_host_cache(cache, dhs, dhT, dcT)  # (named cache.<field>, as on every backend)
        return _backend.require_cpu().backward(
            cache.xs, cache.h0, cache.c0, cache.Wx, cache.Wh, cache.b, cache.hs, cache.gates,
            cache.cs, dhs, dhT, dcT, cell=cache.cell, P=cache.P, lengths=cache.lengths,
            reverse=cache.reverse, precision=cache.precision,
        )

    def global_norm(self, grads):
        _screen_grads(grads)
        return _backend.require_cpu().global_norm(grads)

    def clip_grads(self, grads, max_norm, error_if_nonfinite):
        _screen_grads(grads)
        return _backend.require_cpu().clip_grads(grads, max_norm, error_if_nonfinite)

    def clip_value(self, grads, limit):
        _screen_grads(grads)
        _backend.require_cpu().clip_value(grads, limit)


class _Device:
    """The CUDA kernels on device arrays ("cuda"), or the same kernels and binding emulated on
    the CPU ("cuda-emu", tests): the binding checks every argument, outputs come from the
    arrays' own library, the kernels run on its current stream."""

    def __init__(self, name):
        self.name = name

    def seq_forward(self, cell, xs, Wx, Wh, b, h0, c0, save, P=None, lengths=None, reverse=False,
                    precision="fp32"):
        _, has_c, _, saved = _CELLS[cell]
        mod, lib = _device_target(self.name, xs)
        w = lib.wrap if lib is not None else (lambda a: a)
        N, T, D, H, itemsize, dev = mod.forward_check(w(xs), w(Wx), w(Wh), w(b), w(h0), w(c0), cell=cell,
                                                      P=w(P))
        if lib is None:
            lib = _devices.library_of(xs, dev)
        mod.precision_check(precision, itemsize, "xs")  # (before anything is allocated)
        dt = np.dtype(np.float32 if itemsize == 4 else np.float64)
        hs, hT = lib.empty((N, T, H), dt), lib.empty((N, H), dt)
        cT = lib.empty((N, H), dt) if has_c else None
        gates = lib.empty((N, T, saved * H), dt) if save else None
        cs = lib.empty((N, T, H), dt) if save and has_c else None
        # (+ cuBLAS's workspace, + the bfloat16 operands' scratch)
        size = mod.forward_workspace_size(N, T, D, H, save, cell=cell, device=dev, precision=precision)
        work = lib.empty((size,), dt) if size else None
        lengths_dev = None if lengths is None else lib.from_host(lengths)
        mod.forward(lib.wrap(xs), lib.wrap(Wx), lib.wrap(Wh), lib.wrap(b), lib.wrap(h0),
                    lib.wrap(c0), lib.wrap(hs), lib.wrap(hT), lib.wrap(cT), lib.wrap(gates),
                    lib.wrap(cs), lib.wrap(work), lib.stream(), cell=cell, P=lib.wrap(P),
                    lengths=lengths, lengths_dev=lengths_dev, reverse=reverse, precision=precision)
        cache = None
        if save:
            cache = RecurrentCache(cell, self.name, xs, h0, c0, Wx, Wh, b, hs, gates, cs,
                                   (mod, lib, (N, T, D, H), dt, lengths_dev), P=P, lengths=lengths,
                                   reverse=reverse, precision=precision)
        return hs, hT, cT, cache

    def seq_backward(self, cache, dhs, dhT, dcT):
        if not (isinstance(cache.device, tuple) and len(cache.device) == 5):
            raise TypeError("cache.device is not what the forward saved (module, array library, sizes, dtype, lengths)")
        mod, lib, dims, dt, lengths_dev = cache.device
        if mod is None or mod not in (_backend.cuda, _backend.cuda_emu) or not isinstance(lib, _devices.ArrayLib):
            raise TypeError("cache.device is not what the forward saved (module, array library, sizes, dtype)")
        gates_n, has_c, n_params, _ = _CELLS[cache.cell]
        w = lib.wrap
        # The saved sizes decide the allocations below: they must be the cached inputs' own (the
        # binding checks the saved activations against these once it has the outputs).
        N, T, D, H, itemsize, dev = mod.forward_check(w(cache.xs), w(cache.Wx), w(cache.Wh), w(cache.b),
                                                    w(cache.h0), w(cache.c0), cell=cache.cell, P=w(cache.P))
        if tuple(dims) != (N, T, D, H) or np.dtype(dt).itemsize != itemsize:
            raise ValueError(f"cache.device: sizes {tuple(dims)} and dtype {dt} saved for inputs of sizes "
                             f"{(N, T, D, H)} and itemsize {itemsize}")
        dxs, dh0 = lib.empty((N, T, D), dt), lib.empty((N, H), dt)
        dc0 = lib.empty((N, H), dt) if has_c else None
        dW, db = lib.empty((D + H, gates_n * H), dt), lib.empty((gates_n * H,), dt)
        dP = lib.empty((n_params, H) if n_params > 1 else (H,), dt) if n_params else None
        work = lib.empty((mod.backward_workspace_size(N, T, D, H, cell=cache.cell, device=dev,
                                                      precision=cache.precision),), dt)
        mod.backward(w(cache.xs), w(cache.h0), w(cache.c0), w(cache.Wx), w(cache.Wh), w(cache.b),
                     w(cache.hs), w(cache.gates), w(cache.cs), w(dhs), w(dhT), w(dcT), w(dxs),
                     w(dh0), w(dc0), w(dW), w(db), w(work), lib.stream(), cell=cache.cell,
                     P=w(cache.P), dP=w(dP), lengths=cache.lengths, lengths_dev=lengths_dev,
                     reverse=cache.reverse, precision=cache.precision)
        dWx, dWh = lib.split_rows(dW, D)
        return dxs, dh0, dc0, dWx, dWh, db, dP

    def global_norm(self, grads):
        return self._clip(grads, 0.0, False)

    def clip_grads(self, grads, max_norm, error_if_nonfinite):
        return self._clip(grads, max_norm, error_if_nonfinite)

    def clip_value(self, grads, limit):
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads must be a list or tuple of device arrays, got {type(grads).__name__}")
        mod, lib = _device_target(self.name, grads[0] if grads else None)
        if not grads:
            return
        w = lib.wrap if lib is not None else (lambda a: a)
        wrapped = [w(g) for g in grads]
        if lib is None:
            _, dev = mod.clip_plan(wrapped)  # (the device, for the array library's stream)
            if dev < 0:
                return  # every array is empty
            lib = _devices.library_of(grads[0], dev, "grads[0]")
        mod.clip_value(wrapped, limit, lib.stream())

    def _clip(self, grads, max_norm: float, error_if_nonfinite: bool):
        """Clipping (max_norm > 0) or the norm (max_norm = 0): two launches, no host
        synchronization unless error_if_nonfinite (which reads the finite flag back)."""
        if not isinstance(grads, (list, tuple)):
            raise TypeError(f"grads must be a list or tuple of device arrays, got {type(grads).__name__}")
        mod, lib = _device_target(self.name, grads[0] if grads else None)
        if not grads:
            return 0.0
        w = lib.wrap if lib is not None else (lambda a: a)
        wrapped = [w(g) for g in grads]
        size, dev = mod.clip_plan(wrapped)
        if lib is None:
            if dev < 0:  # every array is empty: nothing on any device to read or scale
                return 0.0
            lib = _devices.library_of(grads[0], dev, "grads[0]")
        work = lib.zeros((size,), np.float64)
        mod.clip_grads(wrapped, max_norm, lib.wrap(work), lib.stream())
        if error_if_nonfinite and lib.to_float(work, 2) == 0.0:  # a host synchronization
            raise FloatingPointError(
                f"grads: the global norm is {lib.to_float(work, 0)} (NaN or inf in the gradients); "
                "nothing was scaled"
            )
        return lib.scalar(work, 0)


_HOST = {"numpy": _Reference(), "cpu": _Cpu()}


def _resolve(backend: str, probe=None):
    """The backend object to run: `probe` (the first array argument) decides "auto"."""
    name = _resolve_backend(backend, probe)
    return _Device(name) if name in _DEVICE_BACKENDS else _HOST[name]


def _backend_of(cache):
    """The backend object that made a cache (its device part decides for device caches)."""
    if cache.device is not None:
        return _Device(cache.backend)
    if cache.backend not in _HOST:
        raise ValueError(f"cache.backend must be 'cpu' or 'numpy' for a cache of host arrays, got {cache.backend!r}")
    return _HOST[cache.backend]


def _check_cache(cache, cells: tuple, forward: str):
    if not isinstance(cache, RecurrentCache):
        raise TypeError(f"cache must be the cache returned by {forward}, got {type(cache).__name__}")
    if cache.cell not in cells:
        raise ValueError(f"cache comes from a {cache.cell} forward pass, not from {forward}")


def lstm_forward(xs, Wx, Wh, b, h0=None, c0=None, backend: str = "auto", *, lengths=None, reverse=False,
                  precision: str = "fp32", gate_order: str = "pylstm"):
    """Fused LSTM forward over a whole sequence, saving what backward needs.

    Parameters
    ----------
    xs : (N, T, D) float32 or float64, C-contiguous: NumPy arrays, or device arrays
        (CuPy, PyTorch CUDA tensors, Numba) for the CUDA backend, all on one device.
    Wx : (D, 4H); Wh : (H, 4H); b : (4H,), gate blocks f, g, i, o; same dtype as xs.
    h0, c0 : (N, H) initial states, or None for zeros.
    backend : "auto" | "cpu" | "cuda" | "numpy".
    lengths : (N,) integers in [1, T] on the host, or None: each sequence's own length. Its
        outputs past it are zero and pass no gradient; hT, cT are its states at its own last
        step. Sorted longest first, no step computes a finished sequence. (Every recurrent
        function of this module takes ``lengths`` and ``reverse``; the backward reads them from
        the cache.)
    reverse : walk time backwards (the reverse direction of a bidirectional layer, without a
        reversed copy of xs); with lengths each sequence starts at its own last step, from h0.
    precision : "fp32", or "bf16": every GEMM's operands rounded to bfloat16 (to nearest even)
        and accumulated in float32, on CPUs with AVX512-BF16, for float32 arrays; arrays in and
        out, the cell state and the pointwise math stay float32 (``pylstm.reference`` states the
        rounding). Every recurrent function takes it; the backward reads it from the cache.
    gate_order : "pylstm" (blocks f, g, i, o) or "torch" (PyTorch's i, f, g, o: Wx is then
        ``weight_ih.T``, as pylstm.torch passes it); the gradients come back in the same order.
        The GRU's functions take it too (z, r, n or PyTorch's r, z, n; reset_after only).

    Returns
    -------
    hs : (N, T, H); hT : (N, H); cT : (N, H); cache : LSTMCache for ``lstm_backward``.
    """
    return _resolve(backend, xs).seq_forward(_ordered_cell("lstm", gate_order), xs, Wx, Wh, b, h0, c0, True, None,
                                             *_walk_args(lengths, reverse, precision))


def lstm_inference(xs, Wx, Wh, b, h0=None, c0=None, backend: str = "auto", *, lengths=None, reverse=False,
                  precision: str = "fp32", gate_order: str = "pylstm"):
    """Forward-only LSTM: like ``lstm_forward`` but saves nothing for backward.

    Returns
    -------
    hs : (N, T, H); hT : (N, H); cT : (N, H)
    """
    return _resolve(backend, xs).seq_forward(_ordered_cell("lstm", gate_order), xs, Wx, Wh, b, h0, c0, False,
                                             None, *_walk_args(lengths, reverse, precision))[:3]


def lstm_backward(dhs, cache: LSTMCache, dhT=None, dcT=None):
    """Fused LSTM backward over a whole sequence.

    Parameters
    ----------
    dhs : (N, T, H) gradient of the loss with respect to hs.
    cache : the LSTMCache returned by ``lstm_forward`` (may be used more than once).
    dhT, dcT : (N, H) gradients with respect to hT and cT, or None for zeros.

    Returns
    -------
    dxs (N, T, D), dh0 (N, H), dc0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)
    """
    _check_cache(cache, ("lstm", "lstm_torch"), "lstm_forward")
    return _backend_of(cache).seq_backward(cache, dhs, dhT, dcT)[:6]


def peephole_forward(xs, Wx, Wh, b, P, h0=None, c0=None, backend: str = "auto", *, lengths=None, reverse=False,
                  precision: str = "fp32"):
    """Fused peephole LSTM forward (Gers & Schmidhuber; ``pylstm.reference`` has the equations),
    saving what backward needs.

    Parameters
    ----------
    xs, Wx, Wh, b, h0, c0, backend : as for ``lstm_forward`` (gate blocks f, g, i, o).
    P : (3, H) diagonal peephole weights, rows pf, pi, po (forget and input gates see c_{t-1},
        the output gate sees c_t); same dtype as xs.

    Returns
    -------
    hs : (N, T, H); hT : (N, H); cT : (N, H); cache for ``peephole_backward``.
    """
    return _resolve(backend, xs).seq_forward("peephole", xs, Wx, Wh, b, h0, c0, True, P,
                                             *_walk_args(lengths, reverse, precision))


def peephole_inference(xs, Wx, Wh, b, P, h0=None, c0=None, backend: str = "auto", *, lengths=None, reverse=False,
                  precision: str = "fp32"):
    """Forward-only peephole LSTM: like ``peephole_forward`` but saves nothing. Returns
    (hs, hT, cT)."""
    return _resolve(backend, xs).seq_forward("peephole", xs, Wx, Wh, b, h0, c0, False, P,
                                             *_walk_args(lengths, reverse, precision))[:3]


def peephole_backward(dhs, cache, dhT=None, dcT=None):
    """Fused peephole LSTM backward (arguments as ``lstm_backward``).

    Returns
    -------
    dxs (N, T, D), dh0 (N, H), dc0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,), dP (3, H)
    (dP and db summed over rows and steps in float64, then rounded to the dtype).
    """
    _check_cache(cache, ("peephole",), "peephole_forward")
    return _backend_of(cache).seq_backward(cache, dhs, dhT, dcT)


GRU_VARIANTS = ref.GRU_VARIANTS
# The kernel cell of each GRU variant.
_GRU_CELLS = {"reset_after": "gru", "reset_before": "gru_reset_before", "book": "gru_book"}
_GRU_VARIANT_OF = {v: k for k, v in _GRU_CELLS.items()}


def _gru_cell(variant, b_hn) -> str:
    if not isinstance(variant, str) or variant not in GRU_VARIANTS:
        raise ValueError(f"variant must be one of {GRU_VARIANTS}, got {variant!r}")
    if variant != "reset_after" and b_hn is not None:
        raise ValueError(f"b_hn must be None for the {variant} variant (only reset_after has it)")
    return _GRU_CELLS[variant]


def gru_forward(xs, Wx, Wh, b, b_hn=None, h0=None, variant: str = "reset_after", backend: str = "auto", *,
                lengths=None, reverse=False, precision: str = "fp32", gate_order: str = "pylstm"):
    """Fused GRU forward (``pylstm.reference`` has the equations of every variant), saving what
    backward needs.

    Parameters
    ----------
    xs : (N, T, D) float32 or float64, C-contiguous (host or device arrays, as for lstm_forward).
    Wx : (D, 3H); Wh : (H, 3H); b : (3H,): gate blocks z (update), r (reset), n (candidate)
        (with gate_order="torch", PyTorch's r, z, n; as for lstm_forward).
    b_hn : (H,) the candidate's recurrent bias of the reset_after variant (PyTorch's b_hn);
        None for the other variants.
    h0 : (N, H) initial state, or None for zeros.
    variant : "reset_after" (PyTorch nn.GRU, cuDNN, Keras reset_after=True; the default),
        "reset_before" (Keras reset_after=False) or "book" (DLfS2's GRU: z weighs n).
    backend : "auto" | "cpu" | "cuda" | "numpy".

    Returns
    -------
    hs : (N, T, H); hT : (N, H); cache for ``gru_backward``.
    """
    cell = _ordered_cell(_gru_cell(variant, b_hn), gate_order)
    hs, hT, _, cache = _resolve(backend, xs).seq_forward(cell, xs, Wx, Wh, b, h0, None, True, b_hn,
                                                         *_walk_args(lengths, reverse, precision))
    return hs, hT, cache


def gru_inference(xs, Wx, Wh, b, b_hn=None, h0=None, variant: str = "reset_after", backend: str = "auto", *,
                  lengths=None, reverse=False, precision: str = "fp32", gate_order: str = "pylstm"):
    """Forward-only GRU: like ``gru_forward`` but saves nothing. Returns (hs, hT)."""
    cell = _ordered_cell(_gru_cell(variant, b_hn), gate_order)
    return _resolve(backend, xs).seq_forward(cell, xs, Wx, Wh, b, h0, None, False, b_hn,
                                             *_walk_args(lengths, reverse, precision))[:2]


def gru_backward(dhs, cache, dhT=None):
    """Fused GRU backward over a whole sequence.

    Returns
    -------
    dxs (N, T, D), dh0 (N, H), dWx (D, 3H), dWh (H, 3H), db (3H,), db_hn (H,) (None unless
    reset_after)
    """
    _check_cache(cache, (*_GRU_CELLS.values(), "gru_torch"), "gru_forward")
    dxs, dh0, _, dWx, dWh, db, db_hn = _backend_of(cache).seq_backward(cache, dhs, dhT, None)
    return dxs, dh0, dWx, dWh, db, db_hn


def rnn_forward(xs, Wx, Wh, b, h0=None, nonlinearity: str = "tanh", backend: str = "auto", *,
                lengths=None, reverse=False, precision: str = "fp32"):
    """Fused vanilla RNN forward, ``h_t = act(x_t Wx + h_{t-1} Wh + b)``, saving what backward
    needs (``pylstm.reference`` has the equations).

    Parameters
    ----------
    xs : (N, T, D) float32 or float64, C-contiguous (host or device arrays, as for lstm_forward).
    Wx : (D, H); Wh : (H, H); b : (H,); same dtype as xs.
    h0 : (N, H) initial state, or None for zeros.
    nonlinearity : "tanh" (DLfS2's RNN) or "relu".
    backend : "auto" | "cpu" | "cuda" | "numpy".

    Returns
    -------
    hs : (N, T, H); hT : (N, H); cache : RNNCache for ``rnn_backward``.
    """
    hs, hT, _, cache = _resolve(backend, xs).seq_forward(_rnn_cell(nonlinearity), xs, Wx, Wh, b, h0, None, True,
                                                         None, *_walk_args(lengths, reverse, precision))
    return hs, hT, cache


def rnn_inference(xs, Wx, Wh, b, h0=None, nonlinearity: str = "tanh", backend: str = "auto", *,
                  lengths=None, reverse=False, precision: str = "fp32"):
    """Forward-only vanilla RNN: like ``rnn_forward`` but saves nothing. Returns (hs, hT)."""
    return _resolve(backend, xs).seq_forward(_rnn_cell(nonlinearity), xs, Wx, Wh, b, h0, None, False, None,
                                             *_walk_args(lengths, reverse, precision))[:2]


def rnn_backward(dhs, cache: RNNCache, dhT=None):
    """Fused vanilla RNN backward over a whole sequence.

    Parameters
    ----------
    dhs : (N, T, H) gradient of the loss with respect to hs.
    cache : the RNNCache returned by ``rnn_forward`` (may be used more than once).
    dhT : (N, H) gradient with respect to hT, or None for zeros.

    Returns
    -------
    dxs (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,)
    """
    _check_cache(cache, ("rnn_tanh", "rnn_relu"), "rnn_forward")
    dxs, dh0, _, dWx, dWh, db, _ = _backend_of(cache).seq_backward(cache, dhs, dhT, None)
    return dxs, dh0, dWx, dWh, db


def _reject_masked_list(grads):
    if isinstance(grads, (list, tuple)):
        for k, g in enumerate(grads):
            _reject_masked(g, f"grads[{k}]")


def _screen_grads(grads):
    """What only Python can tell of a host gradient list: a device array in it."""
    if isinstance(grads, (list, tuple)):
        for k, g in enumerate(grads):
            if not isinstance(g, np.ndarray) and _devices.is_device_array(g):
                raise TypeError(f"grads[{k}] is a device array ({_type_desc(g)}) but grads[0] is not: "
                                "all arrays must be on one device")


def _check_grads(grads, writable: bool):
    """A host gradient list under the shared rules (the compiled binding's own checks)."""
    _screen_grads(grads)
    _backend.require_cpu().grads_check(grads, writable)


def global_norm(grads: Sequence[np.ndarray], backend: str = "auto") -> float:
    """sqrt(sum of squares of every element of every array), accumulated in float64.

    For device arrays the result is a 0-d float64 device array (reading it synchronizes)."""
    _reject_masked_list(grads)
    return _resolve(backend, grads[0] if isinstance(grads, (list, tuple)) and grads else None).global_norm(grads)


def clip_grads(grads: Sequence[np.ndarray], max_norm: float, error_if_nonfinite: bool = True,
               backend: str = "auto") -> float:
    """Global-norm clipping in place (DLfS2 semantics); returns the norm before clipping.

    If the norm is NaN or inf, raises ``FloatingPointError`` and scales nothing; with
    ``error_if_nonfinite=False`` it scales nothing and returns the non-finite norm.

    For device arrays ("cuda"), the whole list is clipped in two kernel launches on the current
    stream and the norm is returned as a 0-d float64 device array; ``error_if_nonfinite=True``
    then costs one host synchronization (pass False in a training loop and check the norm when
    logging).
    """
    if isinstance(max_norm, bool) or not isinstance(max_norm, (int, float, np.integer, np.floating)):
        raise TypeError(f"max_norm must be a number, got {type(max_norm).__name__}")
    try:
        finite = bool(np.isfinite(float(max_norm)))
    except OverflowError:  # an int past float range
        finite = False
    if not (finite and max_norm > 0):
        raise ValueError(f"max_norm must be a finite number > 0, got {max_norm}")
    _reject_masked_list(grads)
    probe = grads[0] if isinstance(grads, (list, tuple)) and grads else None
    return _resolve(backend, probe).clip_grads(grads, float(max_norm), bool(error_if_nonfinite))


def clip_grads_by_value(grads: Sequence[np.ndarray], limit: float, backend: str = "auto") -> None:
    """Clipping by value in place: every element of every array clamped to [-limit, limit]
    (the character-level recipe's ``np.clip(g, -5, 5, out=g)``), one pass, on the thread pool
    ("cpu") or one launch per 4096 chunks on the current stream ("cuda").

    NaN policy: a NaN element stays NaN (``numpy.clip``'s rule: clamping cannot repair it, and
    hiding it would let a diverged run go on silently); +-inf become +-limit (the limit rounded
    to the arrays' dtype: past float32's range, float32 arrays are left as they are). Combine
    with ``clip_grads`` (which raises on a non-finite norm) to stop on NaN. ``limit``: a finite
    number > 0.
    """
    if isinstance(limit, bool) or not isinstance(limit, (int, float, np.integer, np.floating)):
        raise TypeError(f"limit must be a number, got {type(limit).__name__}")
    try:
        finite = bool(np.isfinite(float(limit)))
    except OverflowError:
        finite = False
    if not (finite and limit > 0):
        raise ValueError(f"limit must be a finite number > 0, got {limit}")
    _reject_masked_list(grads)
    probe = grads[0] if isinstance(grads, (list, tuple)) and grads else None
    _resolve(backend, probe).clip_value(grads, float(limit))


def matmul(a, b, out=None, bias=None, colsum=None, backend: str = "auto", *, precision: str = "fp32"):
    """``a @ b (+ bias)`` for 2-D float arrays on pylstm's thread pool ("cpu"), NumPy ("numpy"), or
    CuPy's own kernels for CuPy arrays ("cuda", what "auto" picks for device arrays; like every
    function, it raises ``DeviceUnavailableError`` when backend 'cuda' is not usable).

    a, b may be C- or F-contiguous (a transposed view such as ``W.T`` costs nothing); ``out``,
    when given, must be writable, C- or F-contiguous, of shape (M, N), and not overlap a or b.
    ``bias`` (N,), when given, is added to every row (the Affine layer's ``x @ W + b`` in one
    pass). ``colsum`` (N,), when given, receives ``b.sum(axis=0)`` (the Affine layer's
    ``db``; on the CPU summed in double while b is read for the product). Both C-contiguous,
    colsum writable and apart from every other operand. Every dimension must be >= 1. The
    host backends ("cpu", "numpy") check all of this the same way. ``precision="bf16"``: a and b
    rounded to bfloat16, float32 sums (float32 arrays, CPUs with AVX512-BF16; the output layer
    of a bf16 model), as the recurrent functions.
    """
    operands = (("a", a), ("b", b), ("out", out), ("bias", bias), ("colsum", colsum))
    for vname, v in operands:
        _reject_masked(v, vname)
    name = _resolve_backend(backend, a)
    _walk_args(None, False, precision)  # (its type)
    if name in _DEVICE_BACKENDS:  # CuPy: its own cuBLAS matmul
        xp = _require_cupy_operands(name, "matmul", operands)
        for vname, v in operands[1:]:  # (the host backends' rule and message)
            if v is not None and v.dtype != a.dtype:
                raise TypeError(f"{vname} must have dtype {a.dtype} (the dtype of a), got {v.dtype}")
        for vname, v in (("bias", bias), ("colsum", colsum)):
            if v is not None and tuple(v.shape) != (b.shape[1],):
                raise ValueError(f"{vname} must have shape ({b.shape[1]},), got {tuple(v.shape)}")
        ops = (a, b)
        if _backend.require_cpu().precision_check(precision, a.dtype.itemsize, "a"):
            # bfloat16 operands (the reference's rounding, on the device): their products are
            # exact in float32, so the float32 matmul sums exactly what the kernels' GEMMs sum
            ops = (ref.bf16_round_ref(a), ref.bf16_round_ref(b))
        r = ops[0] @ ops[1]
        if bias is not None:
            r += bias
        if colsum is not None:
            colsum[...] = b.sum(axis=0, dtype=xp.float64)
        if out is None:
            return r
        out[...] = r
        return out
    # One set of checks for every host backend, here (the binding repeats them, so that a direct
    # call never crashes): the reference rejects exactly what the kernels reject.
    _check_matmul_operands(a, b, out, bias, colsum)
    if name != "numpy":
        if out is None or out.flags.c_contiguous:
            return _backend.cpu.matmul(a, b, out, bias, colsum, precision=precision)
        # a Fortran-order out: out^T = b^T @ a^T through the C-contiguous transpose view
        _backend.cpu.matmul(b.T, a.T, out.T, precision=precision)
        r = out
    else:
        _backend.require_cpu().precision_check(precision, a.dtype.itemsize, "a")  # (the kernels' rule)
        with _bf16_mode(precision):
            r = np.matmul(*(ref._mm_operands(a, b)), out=out)
    if bias is not None:
        r += bias
    if colsum is not None:
        colsum[...] = np.sum(b, axis=0, dtype=np.float64)
    return r


def _require_cupy_operands(name: str, what: str, operands):
    """The device path of the dense helpers (matmul, softmax_cross_entropy) runs CuPy's own
    kernels: every array must be a CuPy array, and backend 'cuda' must be usable like for the
    LSTM. Returns the cupy module. Device arrays of another library are named first, so the
    message says which argument to convert even where no GPU is visible."""
    if name != "cuda":
        raise ValueError(f"backend {name!r} (the emulated CUDA kernels) runs the LSTM and clipping only, "
                         f"not {what}; use 'cpu' or 'numpy'")
    arrays = [(vname, v) for vname, v in operands if v is not None]
    for vname, v in arrays:
        if _devices.is_device_array(v) and _devices.array_module(v) is np:
            raise TypeError(f"{vname} is a device array ({_type_desc(v)}), but the device path of {what} "
                            f"runs on CuPy arrays: convert it (cupy.asarray({vname}))")
    _backend.require_cuda()
    for vname, v in arrays:
        if not _devices.is_device_array(v):
            raise TypeError(f"{vname} is a host array ({_type_desc(v)}) but backend is 'cuda': pass all "
                            "arrays as CuPy arrays on one device, or use backend 'cpu'")
    return _devices.array_module(arrays[0][1])


def _check_matmul_operands(a, b, out, bias, colsum):
    """Every rule matmul's host backends share, in the binding's order and with its messages
    (a's dtype is the reference, as there)."""
    _require_ndarray(a, "a")
    if a.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"a must have dtype float32 or float64, got {a.dtype}")
    for vname, v in (("a", a), ("b", b)):
        _require_ndarray(v, vname)
        if v.ndim != 2:
            raise ValueError(f"{vname} must have rank 2, got rank {v.ndim} with shape {v.shape}")
        if v.dtype != a.dtype:
            raise TypeError(f"{vname} must have dtype {a.dtype} (the dtype of a), got {v.dtype}")
        if not (v.flags.c_contiguous or v.flags.f_contiguous):
            raise ValueError(f"{vname} must be C- or F-contiguous, got strides {v.strides}")
    if b.shape[0] != a.shape[1]:
        raise ValueError(f"b must have {a.shape[1]} rows (a is {a.shape}), got shape {b.shape}")
    (M, K), N = a.shape, b.shape[1]
    if min(M, K, N) < 1:
        raise ValueError(f"a, b: every dimension must be >= 1, got {a.shape} and {b.shape}")
    if max(M * K, K * N, M * N) > 2**31 - 1:
        raise ValueError("a, b: too large for 32-bit BLAS indexing")
    if out is not None:
        _require_ndarray(out, "out")
        if out.dtype != a.dtype:
            raise TypeError(f"out must have dtype {a.dtype} (the dtype of a), got {out.dtype}")
        if out.ndim != 2:
            raise ValueError(f"out must have rank 2, got rank {out.ndim} with shape {out.shape}")
        if out.shape != (M, N):
            raise ValueError(f"out must have shape {(M, N)}, got {out.shape}")
        if not (out.flags.c_contiguous or out.flags.f_contiguous):
            raise ValueError(f"out must be C- or F-contiguous, got strides {out.strides}")
        if not out.flags.writeable:
            raise ValueError("out must be writable, got a read-only array")
        if np.shares_memory(out, a) or np.shares_memory(out, b):
            raise ValueError("out must not overlap a or b")
    if bias is not None:
        _check_array(bias, "bias", a.dtype, (N,), dtype_owner="a")
        if out is not None and np.shares_memory(bias, out):
            raise ValueError("bias must not overlap out")
    if colsum is not None:
        _check_array(colsum, "colsum", a.dtype, (N,), dtype_owner="a")
        if not colsum.flags.writeable:
            raise ValueError("colsum must be writable, got a read-only array")
        if any(o is not None and np.shares_memory(colsum, o) for o in (out, a, b)):
            raise ValueError("colsum must not overlap a, b or out")
        if bias is not None and np.shares_memory(colsum, bias):
            raise ValueError("colsum must not overlap bias")


def _softmax_cross_entropy_xp(xp, scores, labels, ignore_label, need_grad, check_labels):
    """The device version (CuPy): the loss stays a 0-d device array, so a training step does not
    wait for the GPU; ``check_labels`` (one host synchronization) can be turned off by callers
    that validated their labels once."""
    if labels.ndim != 1 or labels.shape[0] != scores.shape[0]:
        raise ValueError(f"labels must have shape {scores.shape[:1]}, got {labels.shape}")
    M, V = scores.shape
    valid = labels != ignore_label
    if check_labels and bool(xp.any(valid & ((labels < 0) | (labels >= V)))):
        k = int(xp.argmax(valid & ((labels < 0) | (labels >= V))))
        raise ValueError(f"labels[{k}] = {int(labels[k])} is outside [0, {V}) and not ignore_label ({ignore_label})")
    safe = xp.where(valid, labels, 0)
    m = scores.max(axis=1, keepdims=True)
    e = xp.exp(scores - m)
    s = e.sum(axis=1, keepdims=True)
    lse = (xp.log(s) + m)[:, 0]
    rows = xp.arange(M)
    count = xp.maximum(valid.sum(), 1)
    nll = xp.where(valid, lse - scores[rows, safe], 0).astype(np.float64)
    loss = nll.sum() / count
    if not need_grad:
        return loss, None
    d = e / s
    d[rows, safe] -= 1
    d *= (valid[:, None] / count).astype(scores.dtype)
    return loss, d


def softmax_cross_entropy(scores, labels, ignore_label: int = -1, need_grad: bool = True,
                          backend: str = "auto", check_labels: bool = True):
    """Softmax cross-entropy averaged over the rows whose label is not ``ignore_label``.

    Parameters
    ----------
    scores : (M, V) float32 or float64, C-contiguous.
    labels : (M,) integer labels in [0, V) or ``ignore_label`` (any integer array or sequence;
        the CPU kernel reads a C-contiguous int32 copy of it, M ints).
    need_grad : also return the gradient with respect to scores.
    backend : "auto" | "cpu" | "cuda" | "numpy"; "cuda" (what "auto" picks for device arrays)
        runs CuPy's kernels on CuPy arrays and raises ``DeviceUnavailableError`` when backend
        'cuda' is not usable.

    Returns
    -------
    loss : float (a 0-d device array for device scores); dscores : (M, V) array, or None when
    ``need_grad`` is False.
    """
    if isinstance(ignore_label, bool):
        raise TypeError("ignore_label must be an integer, got bool")
    try:
        ignore_label = operator.index(ignore_label)
    except TypeError:
        raise TypeError(f"ignore_label must be an integer, got {type(ignore_label).__name__}") from None
    if not -(2**31) <= ignore_label < 2**31:
        raise ValueError(f"ignore_label must fit in 32 bits (labels are int32 in the kernels), got {ignore_label}")
    _reject_masked(scores, "scores")
    _reject_masked(labels, "labels")
    name = _resolve_backend(backend, scores)
    if name in _DEVICE_BACKENDS:
        xp = _require_cupy_operands(name, "softmax_cross_entropy", (("scores", scores),))
        return _softmax_cross_entropy_xp(xp, scores, xp.asarray(labels), ignore_label, need_grad, check_labels)
    if not isinstance(scores, np.ndarray):
        raise TypeError(f"scores must be a numpy.ndarray, got {type(scores).__name__}")
    if scores.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"scores must have dtype float32 or float64, got {scores.dtype}")
    if scores.ndim != 2:
        raise ValueError(f"scores must have rank 2 (M, V), got shape {scores.shape}")
    if min(scores.shape) < 1:
        raise ValueError(f"scores must have shape (M, V) with M, V >= 1, got {scores.shape}")
    if not scores.flags.c_contiguous:  # a broadcast or strided view would be copied whole
        raise ValueError(
            f"scores must be C-contiguous (use numpy.ascontiguousarray), got strides {scores.strides}"
        )
    labels = np.asarray(labels)
    if labels.dtype.kind not in "iu":
        raise TypeError(f"labels must be an integer array, got dtype {labels.dtype}")
    if labels.shape != scores.shape[:1]:
        raise ValueError(f"labels must have shape {scores.shape[:1]}, got {labels.shape}")
    M, V = scores.shape
    bad = (labels != ignore_label) & ((labels < 0) | (labels >= V))
    if bad.any():
        k = int(np.argmax(bad))
        raise ValueError(f"labels[{k}] = {labels[k]} is outside [0, {V}) and not ignore_label ({ignore_label})")
    if name == "numpy":
        return ref.softmax_cross_entropy_ref(scores, labels, ignore_label, need_grad)
    count = int((labels != ignore_label).sum())
    total, _, d = _backend.cpu.softmax_xent(
        scores, np.ascontiguousarray(labels, dtype=np.int32), int(ignore_label),
        (1.0 / max(count, 1)) if need_grad else None)
    return total / max(count, 1), d
