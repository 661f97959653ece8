"""pylstm inside PyTorch: ``LSTM``, ``GRU`` and ``RNN`` modules with ``torch.nn``'s constructor,
parameters and forward signature, on pylstm's fused kernels (CPU tensors through zero-copy NumPy
views; CUDA tensors through ``__cuda_array_interface__`` on pylstm's CUDA backend). Needs
``torch`` (``pip install "pylstm[torch]"``); the core package never imports it.

Parameters are PyTorch's (``weight_ih_l{k}`` (G*H, D), ``weight_hh_l{k}``, ``bias_ih_l{k}``,
``bias_hh_l{k}``, torch's gate order), so ``load_state_dict`` works both ways with ``nn.LSTM``,
``nn.GRU`` and ``nn.RNN``. Nothing is converted per call or per update: each weight is stored
as the transpose of a row-major (D, G*H) array (a view with strides (1, G*H)), which is the
kernels' ``Wx`` layout, and the kernels run with torch's gate order (``gate_order="torch"``). The
weight gradients come back as the same views of the kernels' (D, G*H) results, so PyTorch adds
them to ``.grad`` without a copy. Per call only the two biases are added (b = b_ih + b_hh).

So the weights (and their gradients) are not contiguous: code that calls ``.view`` on them
(``torch.nn.utils.parameters_to_vector``, ``torch.optim.LBFGS``, safetensors' ``save_file``)
needs ``weight_layout="torch"``: contiguous weights, as ``nn.LSTM``'s, and the weights and their
gradients transposed on every call (10-15% of a layer's time at 20,35,650,650,
benchmarks/RESULTS.md). A weight replaced by a contiguous tensor is handled the same way.
``state_dict`` / ``load_state_dict`` work with either layout.

``bidirectional=True`` runs the reverse direction on the kernels' reverse walk (no reversed
copy of the input), and a ``PackedSequence`` input runs on the kernels' per-sequence lengths:
the batch is padded once, in PackedSequence's longest-first order (no step computes a finished
sequence), and the output is packed again with the input's ordering. ``proj_size`` raises
``NotImplementedError``.
"""

from __future__ import annotations

import ctypes
import math
import os
from typing import Optional

import numpy as np
import torch
from torch import nn

from . import _backend
from . import functional as F

__all__ = ["LSTM", "GRU", "RNN", "use_torch_threads"]

_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_WEIGHT_LAYOUTS = ("kernel", "torch")
_DTYPES = (torch.float32, torch.float64)


def _torch_openmp():
    """The OpenMP runtime PyTorch's CPU ops run on, as (GOMP_parallel, omp_get_thread_num,
    omp_get_num_threads) addresses, or None: torch built on another parallel backend, or no
    OpenMP library found among those loaded in this process (torch's own, under its package or
    auditwheel's ``torch.libs``; or the only one loaded, as in a conda environment)."""
    if "parallel backend: OpenMP" not in torch.__config__.parallel_info():
        return None
    try:
        with open("/proc/self/maps") as f:  # (address perms offset dev inode path; paths may hold spaces)
            paths = {parts[5].strip() for parts in (line.split(maxsplit=5) for line in f) if len(parts) == 6}
    except OSError:
        return None
    names = ("libgomp", "libiomp", "libomp")  # (libiomp5 and LLVM's libomp export GOMP_parallel too)
    found = sorted(p for p in paths if os.path.basename(p).startswith(names) and ".so" in p)
    torch_dir = os.path.dirname(os.path.realpath(torch.__file__))
    own = [p for p in found if os.path.realpath(p).startswith((torch_dir + os.sep, torch_dir + ".libs" + os.sep))]
    for path in own or (found if len(found) == 1 else []):
        try:
            lib = ctypes.CDLL(path, mode=os.RTLD_NOLOAD | os.RTLD_LAZY)
            entry = ("GOMP_parallel", "omp_get_thread_num", "omp_get_num_threads")
            return tuple(ctypes.cast(getattr(lib, n), ctypes.c_void_p).value for n in entry)
        except (OSError, AttributeError):
            continue
    return None


_IMPORT_PID = os.getpid()


def use_torch_threads(on: bool = True) -> bool:
    """Run pylstm's CPU kernels on PyTorch's OpenMP threads (``on``, the default once this
    module is imported; ``PYLSTM_TORCH_THREADS=0`` in the environment turns it off) or on
    pylstm's own thread pool. Inside a PyTorch program torch's OpenMP threads keep spinning for
    milliseconds after each of torch's parallel ops; pylstm's pool then shares the cores with
    them, and its kernels ran up to 1.3x slower in a training loop. On torch's threads they
    start at once and compete with nothing. The thread count stays pylstm's
    (``pylstm.set_num_threads``). Returns whether the kernels now run on torch's threads (False
    where torch has no OpenMP runtime to share, and in a process forked from the one that
    imported this module)."""
    cpu = _backend.cpu
    if cpu is None:
        return False
    # A process forked after this module was imported has none of libgomp's threads: its kernels
    # stay on a pool of its own (libgomp itself hangs in such a child).
    rt = _torch_openmp() if on and os.getpid() == _IMPORT_PID else None
    cpu._set_openmp_runtime(*(rt or (0, 0, 0)))
    return cpu._openmp_runtime_set()


def _as_kernel_array(t: Optional[torch.Tensor]):
    """A tensor as the kernels take it: a zero-copy NumPy view on the CPU, the tensor itself on
    a GPU (``__cuda_array_interface__``)."""
    if t is None:
        return None
    t = t.detach()
    return t.numpy() if t.device.type == "cpu" else t


def _as_tensor(a, like: torch.Tensor) -> Optional[torch.Tensor]:
    if a is None:
        return None
    return torch.from_numpy(a) if isinstance(a, np.ndarray) else torch.as_tensor(a, device=like.device)


def _transposed_copy(a: torch.Tensor) -> torch.Tensor:
    """a.T, contiguous; on the CPU by pylstm's tiled transpose on its pool (torch's strided copy
    of a transposed view takes about twice as long)."""
    if a.device.type != "cpu":
        return a.t().contiguous()
    out = torch.empty((a.shape[1], a.shape[0]), dtype=a.dtype)
    _backend.cpu.transpose(a.contiguous().numpy(), out.numpy())
    return out


def _kernel_weight(w: torch.Tensor) -> torch.Tensor:
    """w (G*H, K) as the kernels' (K, G*H) row-major array: its transpose, a view where w is
    stored transposed (this module's own parameters), else a copy (a weight replaced by a
    contiguous tensor: transposed per call)."""
    wt = w.detach().t()
    return wt if wt.is_contiguous() else _transposed_copy(w.detach())


def _grad_like(g: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    """A kernel's weight gradient g (K, G*H) as p's (G*H, K) gradient: the transposed view,
    strided as p when p has the kernel layout (AccumulateGrad keeps it as it is); for a
    contiguous p on the CPU, transposed on pylstm's pool (AccumulateGrad would copy the view
    with torch's slower strided copy)."""
    gt = g.t()
    return gt if gt.stride() == p.stride() or g.device.type != "cpu" else _transposed_copy(g)


def _param_storage(shape, device, dtype) -> torch.Tensor:
    """A weight of torch's shape (G*H, K) stored as the transpose of a row-major (K, G*H)
    array (see the module's docstring)."""
    return torch.empty(shape[1], shape[0], device=device, dtype=dtype).t()


class _Layer(torch.autograd.Function):
    """One layer, one direction, over a whole (N, T, D) batch: pylstm's fused forward and
    backward in torch's gate order, the weight gradients as views in the parameters' layout."""

    @staticmethod
    def forward(ctx, mode, kernel_params, has_bias, walk, xs, h0, c0, *params):
        backend = "cpu" if xs.device.type == "cpu" else "cuda"
        Wx, Wh, b, extra = (_as_kernel_array(p) for p in kernel_params)
        x, h, c = _as_kernel_array(xs), _as_kernel_array(h0), _as_kernel_array(c0)
        kw = dict(backend=backend, lengths=walk[0], reverse=walk[1])  # (lengths: host int64 or None)
        if mode == "LSTM":
            hs, hT, cT, cache = F.lstm_forward(x, Wx, Wh, b, h, c, gate_order="torch", **kw)
        elif mode == "GRU":
            hs, hT, cache = F.gru_forward(x, Wx, Wh, b, extra, h, gate_order="torch", **kw)
            cT = None
        else:
            nl = "tanh" if mode == "RNN_TANH" else "relu"
            hs, hT, cache = F.rnn_forward(x, Wx, Wh, b, h, nl, **kw)
            cT = None
        ctx.mode, ctx.cache, ctx.has_bias = mode, cache, has_bias
        # The kernels' cache holds the weights themselves (views): saved here, their versions make
        # a backward after an in-place change raise, as torch.nn's does.
        ctx.save_for_backward(*params)
        ctx.h0_given, ctx.c0_given = h0 is not None, c0 is not None
        out = (_as_tensor(hs, xs), _as_tensor(hT, xs))
        return out + ((_as_tensor(cT, xs),) if mode == "LSTM" else (torch.empty(0, dtype=xs.dtype),))

    @staticmethod
    def backward(ctx, dhs, dhT, dcT):
        mode, cache = ctx.mode, ctx.cache
        params = ctx.saved_tensors  # raises if a parameter was modified in place after the forward
        d, dT = _as_kernel_array(dhs.contiguous()), _as_kernel_array(dhT.contiguous())
        dcT_ = _as_kernel_array(dcT.contiguous()) if mode == "LSTM" else None
        db_hn = dc0 = None
        if mode == "LSTM":
            dxs, dh0, dc0, dWx, dWh, db = F.lstm_backward(d, cache, dT, dcT_)
        elif mode == "GRU":
            dxs, dh0, dWx, dWh, db, db_hn = F.gru_backward(d, cache, dT)
        else:
            dxs, dh0, dWx, dWh, db = F.rnn_backward(d, cache, dT)
        t = [_as_tensor(a, dhs) for a in (dxs, dh0, dc0, dWx, dWh, db, db_hn)]
        grads = [_grad_like(t[3], params[0]), _grad_like(t[4], params[1])]
        if ctx.has_bias:
            g_bih = t[5]
            if mode == "GRU":  # b = b_ih + [b_hh's r and z parts]; b_hn = b_hh's n part
                H = g_bih.shape[0] // 3
                g_bhh = torch.cat([g_bih[: 2 * H], t[6]])
            else:
                g_bhh = g_bih.clone()  # (not the same tensor: in-place grad ops would apply twice)
            grads += [g_bih, g_bhh]
        dh0_ = t[1] if ctx.h0_given else None
        dc0_ = t[2] if ctx.c0_given else None
        return (None, None, None, None, t[0], dh0_, dc0_, *grads)


class _RNNBase(nn.Module):
    """The shared body of LSTM, GRU and RNN (torch.nn.RNNBase's arguments)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None, *, weight_layout: str = "kernel"):
        super().__init__()
        if weight_layout not in _WEIGHT_LAYOUTS:
            raise ValueError(f"weight_layout must be one of {_WEIGHT_LAYOUTS}, got {weight_layout!r}")
        for name, v in (("input_size", input_size), ("hidden_size", hidden_size), ("num_layers", num_layers)):
            if isinstance(v, bool) or not isinstance(v, int) or v < 1:
                raise ValueError(f"{name} must be an integer >= 1, got {v!r}")
        if isinstance(dropout, bool) or not isinstance(dropout, (int, float)) or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        if proj_size:
            raise NotImplementedError("proj_size: LSTM projections are not in pylstm's kernels")
        dtype = torch.get_default_dtype() if dtype is None else dtype
        if dtype not in _DTYPES:
            raise TypeError(f"dtype must be torch.float32 or torch.float64 (the kernels' dtypes), got {dtype}")
        self.mode, self.input_size, self.hidden_size = mode, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bool(bias), bool(batch_first)
        self.dropout, self.bidirectional, self.proj_size = float(dropout), bool(bidirectional), 0
        self.num_directions = 2 if self.bidirectional else 1
        self.weight_layout = weight_layout
        G, H = _GATES[mode], hidden_size
        for k in range(num_layers):
            D = input_size if k == 0 else H * self.num_directions
            for sfx in ("", "_reverse")[:self.num_directions]:
                shapes = [("weight_ih", (G * H, D)), ("weight_hh", (G * H, H))]
                if self.bias:
                    shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
                for name, shape in shapes:
                    data = (_param_storage(shape, device, dtype)
                            if name.startswith("weight") and weight_layout == "kernel"
                            else torch.empty(*shape, device=device, dtype=dtype))
                    param = nn.Parameter(data)
                    self.register_parameter(f"{name}_l{k}{sfx}", param)
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's initialization: every parameter uniform(-1/sqrt(H), 1/sqrt(H)), drawn in
        torch's element order whatever the layout, so a seed gives nn.LSTM's values."""
        k = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                if p.is_contiguous():
                    p.uniform_(-k, k)
                else:  # (uniform_ fills storage order: draw contiguously, then copy)
                    p.copy_(torch.empty(p.shape, dtype=p.dtype, device=p.device).uniform_(-k, k))

    def _layer_params(self, k: int, direction: int = 0) -> list:
        names = [f"weight_ih_l{k}", f"weight_hh_l{k}"] + ([f"bias_ih_l{k}", f"bias_hh_l{k}"] if self.bias else [])
        sfx = "_reverse" if direction else ""
        return [getattr(self, n + sfx) for n in names]

    def _kernel_params(self, k: int, direction: int = 0):
        """Layer k's parameters (of one direction) as the kernels take them, in torch's gate
        order: Wx = weight_ih.T and Wh = weight_hh.T (views of the parameters), b = b_ih + b_hh
        (GRU: b_hh's n part apart, as b_hn). Built per call, nothing cached: an update through
        ``.data``, which moves no version counter, is seen too."""
        params = self._layer_params(k, direction)
        G, H = _GATES[self.mode], self.hidden_size
        with torch.no_grad():
            w_ih, w_hh = params[0], params[1]
            Wx, Wh = _kernel_weight(w_ih), _kernel_weight(w_hh)
            if self.bias:
                b_ih, b_hh = params[2], params[3]
                if self.mode == "GRU":  # b_hh's r and z parts add to b; its n part is b_hn
                    b = torch.cat([b_ih[: 2 * H] + b_hh[: 2 * H], b_ih[2 * H:]])
                    extra = b_hh[2 * H:].detach().contiguous()
                else:
                    b = b_ih + b_hh
                    extra = None
            else:
                b = torch.zeros(G * H, dtype=w_ih.dtype, device=w_ih.device)
                extra = torch.zeros(H, dtype=w_ih.dtype, device=w_ih.device) if self.mode == "GRU" else None
        return Wx, Wh, b.contiguous(), extra

    def _check_input(self, input):
        if not isinstance(input, torch.Tensor):
            raise TypeError(f"input must be a torch.Tensor, got {type(input).__name__}")
        if input.dim() not in (2, 3):
            raise ValueError(f"input must have rank 3 ({'N, T, D' if self.batch_first else 'T, N, D'}) or 2 "
                             f"(unbatched T, D), got shape {tuple(input.shape)}")
        if input.shape[-1] != self.input_size:
            raise ValueError(f"input must have size {self.input_size} in its last dimension (input_size), "
                             f"got shape {tuple(input.shape)}")
        w = self.weight_ih_l0
        if input.dtype not in _DTYPES:
            raise TypeError(f"input must have dtype torch.float32 or torch.float64 (the kernels' dtypes), "
                            f"got {input.dtype}")
        if input.dtype != w.dtype:
            raise TypeError(f"input has dtype {input.dtype} but the parameters have {w.dtype}: convert one "
                            f"(module.to({input.dtype}) or input.to({w.dtype}))")
        if input.device != w.device:
            raise ValueError(f"input is on {input.device} but the parameters are on {w.device}")
        if 0 in input.shape:
            raise ValueError(f"input must not be empty, got shape {tuple(input.shape)}")

    def _check_state(self, t, name: str, N: int, like: torch.Tensor, unbatched: bool):
        L = self.num_layers * self.num_directions
        want = (L, self.hidden_size) if unbatched else (L, N, self.hidden_size)
        what = "num_layers * num_directions" if self.bidirectional else "num_layers"
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor, got {type(t).__name__}")
        if tuple(t.shape) != want:
            raise ValueError(f"{name} must have shape {want} ({what}, {'' if unbatched else 'N, '}hidden_size), "
                             f"got {tuple(t.shape)}")
        if t.dtype != like.dtype:
            raise TypeError(f"{name} must have dtype {like.dtype} (the input's), got {t.dtype}")
        if t.device != like.device:
            raise ValueError(f"{name} is on {t.device} but the input is on {like.device}")
        return t.unsqueeze(1) if unbatched else t

    def forward(self, input, hx=None):
        packed = isinstance(input, nn.utils.rnn.PackedSequence)
        lengths = order = None
        if packed:
            # Padded once, longest first (PackedSequence's own order: the kernels then skip every
            # finished sequence), and packed again with the input's ordering at the end.
            data = input.data
            if not isinstance(data, torch.Tensor) or data.dim() != 2:
                raise ValueError("input: a PackedSequence of (sum of lengths, input_size) data is expected")
            self._check_input(data)
            padded, lens = nn.utils.rnn.pad_packed_sequence(input, batch_first=True)
            order = input.sorted_indices
            if order is not None:
                padded, lens = padded.index_select(0, order), lens.index_select(0, order.to(lens.device))
            xs = padded.contiguous()
            lengths = lens.to("cpu", torch.int64).numpy()
            unbatched = False
        else:
            self._check_input(input)
            unbatched = input.dim() == 2
            x = input.unsqueeze(0 if self.batch_first else 1) if unbatched else input
            xs = (x if self.batch_first else x.transpose(0, 1)).contiguous()  # (N, T, D), copied if needed
        like = xs
        N = xs.shape[0]
        h0 = c0 = None
        if hx is not None:
            if self.mode == "LSTM":
                if not isinstance(hx, (tuple, list)) or len(hx) != 2:
                    raise TypeError("hx must be a tuple (h_0, c_0) for an LSTM")
                h0 = self._check_state(hx[0], "hx[0]", N, like, unbatched)
                c0 = self._check_state(hx[1], "hx[1]", N, like, unbatched)
            else:
                h0 = self._check_state(hx, "hx", N, like, unbatched)
            if order is not None:  # (given in the batch's order, run in the sorted one)
                h0 = h0.index_select(1, order)
                c0 = None if c0 is None else c0.index_select(1, order)
        hn, cn = [], []
        out = xs
        for k in range(self.num_layers):
            if k > 0 and self.dropout > 0 and self.training:
                out = nn.functional.dropout(out, self.dropout, training=True)
            inp = out.contiguous()
            outs = []
            for direction in range(self.num_directions):
                i = k * self.num_directions + direction
                h0k = None if h0 is None else h0[i].contiguous()
                c0k = None if c0 is None else c0[i].contiguous()
                o, hT, cT = _Layer.apply(self.mode, self._kernel_params(k, direction), self.bias,
                                         (lengths, direction == 1), inp, h0k, c0k,
                                         *self._layer_params(k, direction))
                outs.append(o)
                hn.append(hT)
                cn.append(cT)
            out = outs[0] if len(outs) == 1 else torch.cat(outs, dim=2)
        h_n = torch.stack(hn)
        c_n = torch.stack(cn) if self.mode == "LSTM" else None
        if packed:
            data = nn.utils.rnn.pack_padded_sequence(out, torch.from_numpy(lengths), batch_first=True,
                                                     enforce_sorted=True).data
            output = nn.utils.rnn.PackedSequence(data, input.batch_sizes, input.sorted_indices,
                                                 input.unsorted_indices)
            if input.unsorted_indices is not None:  # states back in the batch's order
                h_n = h_n.index_select(1, input.unsorted_indices)
                c_n = None if c_n is None else c_n.index_select(1, input.unsorted_indices)
        else:
            output = out if self.batch_first else out.transpose(0, 1).contiguous()
            if unbatched:
                output, h_n = output.squeeze(0 if self.batch_first else 1), h_n.squeeze(1)
                c_n = None if c_n is None else c_n.squeeze(1)
        if self.mode == "LSTM":
            return output, (h_n, c_n)
        return output, h_n

    def extra_repr(self) -> str:
        s = f"{self.input_size}, {self.hidden_size}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        if not self.bias:
            s += ", bias=False"
        if self.batch_first:
            s += ", batch_first=True"
        if self.dropout:
            s += f", dropout={self.dropout}"
        if self.bidirectional:
            s += ", bidirectional=True"
        if self.weight_layout != "kernel":
            s += f", weight_layout={self.weight_layout!r}"
        return s


class LSTM(_RNNBase):
    """``torch.nn.LSTM`` on pylstm's kernels (same arguments, parameters and outputs)."""

    def __init__(self, *args, **kwargs):
        super().__init__("LSTM", *args, **kwargs)


class GRU(_RNNBase):
    """``torch.nn.GRU`` on pylstm's kernels (the reset-after GRU; same arguments, parameters and
    outputs)."""

    def __init__(self, *args, **kwargs):
        super().__init__("GRU", *args, **kwargs)


class RNN(_RNNBase):
    """``torch.nn.RNN`` on pylstm's kernels (``nonlinearity`` "tanh" or "relu")."""

    def __init__(self, *args, nonlinearity: str = "tanh", **kwargs):
        if nonlinearity not in ("tanh", "relu"):
            raise ValueError(f"nonlinearity must be 'tanh' or 'relu', got {nonlinearity!r}")
        self.nonlinearity = nonlinearity
        super().__init__("RNN_" + nonlinearity.upper(), *args, **kwargs)


if os.environ.get("PYLSTM_TORCH_THREADS", "1") != "0":
    use_torch_threads(True)
