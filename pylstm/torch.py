"""pylstm inside PyTorch: ``LSTM``, ``GRU`` and ``RNN`` modules with ``torch.nn``'s constructor,
parameters and forward signature, on pylstm's fused kernels (CPU tensors through zero-copy NumPy
views; CUDA tensors through ``__cuda_array_interface__`` on pylstm's CUDA backend). Needs
``torch`` (``pip install "pylstm[torch]"``); the core package never imports it.

Parameters are PyTorch's (``weight_ih_l{k}`` (G*H, D), ``weight_hh_l{k}``, ``bias_ih_l{k}``,
``bias_hh_l{k}``, torch's gate order), so ``load_state_dict`` works both ways with ``nn.LSTM``,
``nn.GRU`` and ``nn.RNN``. The kernels take pylstm's layout (``Wx (D, G*H)``, gate order f, g, i, o
for the LSTM, z, r, n for the GRU): each layer converts its parameters once per weight update, not
per call: the converted tensors are cached and rebuilt only when a parameter is replaced or its
version counter moves (every in-place update bumps it: an optimizer step, ``load_state_dict``,
``reset_parameters``). Gradients are converted back once per backward, in one pass each.

``bidirectional=True`` runs the reverse direction on the kernels' reverse walk (no reversed
copy of the input), and a ``PackedSequence`` input runs on the kernels' per-sequence lengths:
the batch is padded once, in PackedSequence's longest-first order (no step computes a finished
sequence), and the output is packed again with the input's ordering. ``proj_size`` raises
``NotImplementedError``.
"""

from __future__ import annotations

import math
from typing import Optional

import numpy as np
import torch
from torch import nn

from . import _backend
from . import functional as F

__all__ = ["LSTM", "GRU", "RNN"]

# Gate blocks, and pylstm's block order as indices of PyTorch's blocks (LSTM: torch i, f, g, o ->
# pylstm f, g, i, o; GRU: torch r, z, n -> pylstm z, r, n).
_GATES = {"LSTM": 4, "GRU": 3, "RNN_TANH": 1, "RNN_RELU": 1}
_TO_PYLSTM = {"LSTM": [1, 2, 0, 3], "GRU": [1, 0, 2], "RNN_TANH": [0], "RNN_RELU": [0]}
_TO_TORCH = {mode: np.argsort(perm).tolist() for mode, perm in _TO_PYLSTM.items()}
_DTYPES = (torch.float32, torch.float64)


def _to_pylstm_rows(w: torch.Tensor, mode: str) -> torch.Tensor:
    """(G*H, ...) in torch's block order -> the same in pylstm's."""
    G = _GATES[mode]
    return w.reshape(G, w.shape[0] // G, *w.shape[1:])[_TO_PYLSTM[mode]].reshape(w.shape)


def _to_torch_rows(w: torch.Tensor, mode: str) -> torch.Tensor:
    """(G*H, ...) in pylstm's block order -> torch's."""
    G = _GATES[mode]
    return w.reshape(G, w.shape[0] // G, *w.shape[1:])[_TO_TORCH[mode]].reshape(w.shape)


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


def _grad_to_torch(dW, mode: str, like: torch.Tensor) -> torch.Tensor:
    """(K, G*H) in pylstm's block order -> its transpose (G*H, K) in torch's, in one pass: each
    block transposed straight to its place (on the CPU by pylstm's tiled transpose on its thread
    pool, a third of the time of a strided copy)."""
    G = _GATES[mode]
    K, GH = dW.shape
    H = GH // G
    out = torch.empty((GH, K), dtype=like.dtype, device=like.device)
    cpu = _backend.cpu if isinstance(dW, np.ndarray) else None
    on = out.numpy() if cpu is not None else None
    for k, src in enumerate(_TO_PYLSTM[mode]):  # pylstm block k is torch block src
        if cpu is not None:
            cpu.transpose(dW[:, k * H:(k + 1) * H], on[src * H:(src + 1) * H])
        else:
            out[src * H:(src + 1) * H].copy_(torch.as_tensor(dW[:, k * H:(k + 1) * H], device=like.device).t())
    return out


class _Layer(torch.autograd.Function):
    """One layer, one direction, over a whole (N, T, D) batch: pylstm's fused forward, and its
    fused backward converted to PyTorch's parameter layout."""

    @staticmethod
    def forward(ctx, mode, kernel_params, has_bias, walk, xs, h0, c0, *params):
        backend = "cpu" if xs.device.type == "cpu" else "cuda"
        Wx, Wh, b, extra = (_as_kernel_array(p) for p in kernel_params)
        x, h, c = _as_kernel_array(xs), _as_kernel_array(h0), _as_kernel_array(c0)
        kw = dict(backend=backend, lengths=walk[0], reverse=walk[1])  # (lengths: host int64 or None)
        if mode == "LSTM":
            hs, hT, cT, cache = F.lstm_forward(x, Wx, Wh, b, h, c, **kw)
        elif mode == "GRU":
            hs, hT, cache = F.gru_forward(x, Wx, Wh, b, extra, h, **kw)
            cT = None
        else:
            nl = "tanh" if mode == "RNN_TANH" else "relu"
            hs, hT, cache = F.rnn_forward(x, Wx, Wh, b, h, nl, **kw)
            cT = None
        ctx.mode, ctx.cache, ctx.has_bias = mode, cache, has_bias
        ctx.h0_given, ctx.c0_given = h0 is not None, c0 is not None
        out = (_as_tensor(hs, xs), _as_tensor(hT, xs))
        return out + ((_as_tensor(cT, xs),) if mode == "LSTM" else (torch.empty(0, dtype=xs.dtype),))

    @staticmethod
    def backward(ctx, dhs, dhT, dcT):
        mode, cache = ctx.mode, ctx.cache
        d, dT = _as_kernel_array(dhs.contiguous()), _as_kernel_array(dhT.contiguous())
        dcT_ = _as_kernel_array(dcT.contiguous()) if mode == "LSTM" else None
        db_hn = dc0 = None
        if mode == "LSTM":
            dxs, dh0, dc0, dWx, dWh, db = F.lstm_backward(d, cache, dT, dcT_)
        elif mode == "GRU":
            dxs, dh0, dWx, dWh, db, db_hn = F.gru_backward(d, cache, dT)
        else:
            dxs, dh0, dWx, dWh, db = F.rnn_backward(d, cache, dT)
        like = dhs
        t = [_as_tensor(a, like) for a in (dxs, dh0, dc0, dWx, dWh, db, db_hn)]
        grads = [_grad_to_torch(dWx, mode, like), _grad_to_torch(dWh, mode, like)]
        if ctx.has_bias:
            g_bih = _to_torch_rows(t[5], mode).contiguous()
            if mode == "GRU":  # b = b_ih + [b_hh's r and z parts]; b_hn = b_hh's n part
                H = g_bih.shape[0] // 3
                g_bhh = torch.cat([g_bih[: 2 * H], t[6]])
            else:
                g_bhh = g_bih.clone()
            grads += [g_bih, g_bhh]
        dh0_ = t[1] if ctx.h0_given else None
        dc0_ = t[2] if ctx.c0_given else None
        return (None, None, None, None, t[0], dh0_, dc0_, *grads)


class _RNNBase(nn.Module):
    """The shared body of LSTM, GRU and RNN (torch.nn.RNNBase's arguments)."""

    def __init__(self, mode: str, input_size: int, hidden_size: int, num_layers: int = 1, bias: bool = True,
                 batch_first: bool = False, dropout: float = 0.0, bidirectional: bool = False,
                 proj_size: int = 0, device=None, dtype=None):
        super().__init__()
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
        G, H = _GATES[mode], hidden_size
        for k in range(num_layers):
            D = input_size if k == 0 else H * self.num_directions
            for sfx in ("", "_reverse")[:self.num_directions]:
                shapes = [("weight_ih", (G * H, D)), ("weight_hh", (G * H, H))]
                if self.bias:
                    shapes += [("bias_ih", (G * H,)), ("bias_hh", (G * H,))]
                for name, shape in shapes:
                    param = nn.Parameter(torch.empty(*shape, device=device, dtype=dtype))
                    self.register_parameter(f"{name}_l{k}{sfx}", param)
        self._kernel_cache = {}
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """PyTorch's initialization: every parameter uniform(-1/sqrt(H), 1/sqrt(H))."""
        k = 1.0 / math.sqrt(self.hidden_size)
        with torch.no_grad():
            for p in self.parameters():
                p.uniform_(-k, k)

    def _layer_params(self, k: int, direction: int = 0) -> list:
        names = [f"weight_ih_l{k}", f"weight_hh_l{k}"] + ([f"bias_ih_l{k}", f"bias_hh_l{k}"] if self.bias else [])
        sfx = "_reverse" if direction else ""
        return [getattr(self, n + sfx) for n in names]

    def _kernel_params(self, k: int, direction: int = 0):
        """Layer k's parameters (of one direction) in pylstm's layout, converted once per weight
        update (cached on each parameter's identity and version counter)."""
        params = self._layer_params(k, direction)
        key = tuple((id(p), p._version, p.device, p.dtype) for p in params)
        hit = self._kernel_cache.get((k, direction))
        if hit is not None and hit[0] == key:
            return hit[1]
        mode, G, H = self.mode, _GATES[self.mode], self.hidden_size
        with torch.no_grad():
            w_ih, w_hh = params[0], params[1]
            Wx = _to_pylstm_rows(w_ih, mode).t().contiguous()
            Wh = _to_pylstm_rows(w_hh, mode).t().contiguous()
            if self.bias:
                b_ih, b_hh = params[2], params[3]
                if mode == "GRU":  # b_hh's r and z parts add to b; its n part is b_hn
                    b = _to_pylstm_rows(b_ih + torch.cat([b_hh[: 2 * H], torch.zeros_like(b_hh[2 * H:])]), mode)
                    extra = b_hh[2 * H:].detach().clone()
                else:
                    b = _to_pylstm_rows(b_ih + b_hh, mode)
                    extra = None
            else:
                b = torch.zeros(G * H, dtype=w_ih.dtype, device=w_ih.device)
                extra = torch.zeros(H, dtype=w_ih.dtype, device=w_ih.device) if mode == "GRU" else None
            out = (Wx, Wh, b.contiguous(), extra)
        self._kernel_cache[(k, direction)] = (key, out)
        return out

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
