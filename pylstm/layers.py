"""Layers in the style of "Deep Learning from Scratch 2" (chapter 6), on pylstm's kernels.

Every layer works on NumPy arrays or, after ``model.to("cuda")``, on CuPy arrays (the array
library is taken from the parameters; the LSTM runs on pylstm's CUDA kernels there).

Contract (the book's, made explicit): every layer has ``params`` and ``grads`` lists of arrays
with the same shapes; ``forward`` computes and keeps what ``backward`` needs; ``backward``
writes the parameter gradients into ``grads`` in place (``g[...] = ...``) and returns the
gradient with respect to the input. Shapes use N batch, T time, D input, H hidden, V vocabulary.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import functional as F
from ._devices import array_module as _xp
from .distributed import draw_rows

__all__ = [
    "Embedding",
    "TimeEmbedding",
    "Affine",
    "TimeAffine",
    "TimeLSTM",
    "TimePeepholeLSTM",
    "TimeBiLSTM",
    "TimeGRU",
    "TimeRNN",
    "TimeDropout",
    "SoftmaxWithLoss",
    "TimeSoftmaxWithLoss",
    "softmax",
]


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis (max-subtracted, in x's dtype)."""
    x = x - x.max(axis=-1, keepdims=True)
    _xp(x).exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _row_sums(idx: np.ndarray, rows: np.ndarray) -> tuple:
    """(ids, sums): the distinct values of idx, sorted, and the sum of the rows of each, without
    np.add.at's per-element overhead: sort the indices once, then add each run with one
    reduceat."""
    if idx.size == 0:
        return idx[:0], rows[:0]
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    starts = np.flatnonzero(np.r_[True, sidx[1:] != sidx[:-1]])
    return sidx[starts], np.add.reduceat(rows[order], starts, axis=0)


def _scatter_add_rows(dW: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
    """dW[idx[k]] += rows[k] for every k (repeated indices accumulate)."""
    if idx.size == 0:
        return
    if _xp(dW) is not np:  # CuPy: an atomic scatter-add on the device
        import cupyx

        cupyx.scatter_add(dW, idx, rows)
        return
    ids, sums = _row_sums(idx, rows)
    dW[ids] += sums


def _initial_state(layer, xs) -> tuple:
    """(h0, c0) of a recurrent layer's call: its stored state when stateful (c0 None for a cell
    without one), else (None, None) (zeros)."""
    if not layer.stateful:
        return None, None
    N = xs.shape[0] if xs.ndim == 3 else None
    if layer.h is not None and layer.h.shape[0] != N:
        raise ValueError(f"xs: batch size {N} differs from the stored state's {layer.h.shape[0]}; "
                         "call reset_state() first")
    return layer.h, getattr(layer, "c", None)


class Embedding:
    """Row lookup: ``forward(idx) = W[idx]``. W: (V, D).

    ``sparse_grad`` (NumPy arrays; set by the trainer when its update reads only the rows a
    batch touched): the backward then zeroes only the rows of ``grads[0]`` that its previous
    backward wrote, instead of all V, and records the rows it writes in ``grad_rows`` (sorted,
    unique). ``grads[0]`` is the whole gradient either way, provided nothing else writes
    nonzeros into it outside ``grad_rows`` (scaling it in place is fine)."""

    def __init__(self, W: np.ndarray):
        self.params = [W]
        self.grads = [_xp(W).zeros_like(W)]
        self.idx = None
        # Range check of the ids on every forward. On the GPU it costs a host synchronization;
        # the trainer checks its corpus once and turns it off there.
        self.check_ids = True
        self.sparse_grad = False
        self.grad_rows = None
        self._written = None  # (grads[0], the rows of it written last) in sparse mode

    def forward(self, idx: np.ndarray) -> np.ndarray:
        W = self.params[0]
        idx = _xp(W).asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"idx must be an integer array, got dtype {idx.dtype}")
        if self.check_ids and idx.size and (int(idx.min()) < 0 or int(idx.max()) >= W.shape[0]):
            raise ValueError(f"idx must be in [0, {W.shape[0]}), got values in [{idx.min()}, {idx.max()}]")
        self.idx = idx
        return W[idx]

    def backward(self, dout: np.ndarray) -> None:
        dW = self.grads[0]
        flat = self.idx.reshape(-1)
        rows = dout.reshape(flat.size, -1)
        if _xp(dW) is not np or not self.sparse_grad:
            dW[...] = 0
            _scatter_add_rows(dW, flat, rows)
            self.grad_rows, self._written = None, None
            return None
        if self._written is not None and self._written[0] is dW:
            dW[self._written[1]] = 0
        else:  # (first sparse backward, or grads[0] was replaced: not known to be zero)
            dW[...] = 0
        ids, sums = _row_sums(flat, rows)
        dW[ids] = sums
        self.grad_rows, self._written = ids, (dW, ids)
        return None


class TimeEmbedding(Embedding):
    """Embedding over a (N, T) batch of ids; returns (N, T, D)."""


class Affine:
    """``x @ W + b``. W: (D, V), b: (V,). Works on (N, D) and, reshaped, on (N, T, D).
    W may be a transposed view (``embed_W.T`` for tied weights). The products run on pylstm's
    thread pool (``backend``), like the LSTM kernels."""

    def __init__(self, W: np.ndarray, b: np.ndarray, backend: str = "auto", precision: str = "fp32"):
        self.params = [W, b]
        self.grads = [_xp(W).zeros_like(W), _xp(b).zeros_like(b)]
        self.backend = backend
        self.precision = precision  # "bf16": the three products' operands in bfloat16 (matmul)
        self.x = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        W, b = self.params
        self.x = x = _xp(W).ascontiguousarray(x)
        lead = x.shape[:-1]
        out = F.matmul(x.reshape(-1, x.shape[-1]), W, bias=b, backend=self.backend, precision=self.precision)
        return out.reshape(*lead, W.shape[1])

    def backward(self, dout: np.ndarray) -> np.ndarray:
        W, _ = self.params
        x2 = self.x.reshape(-1, self.x.shape[-1])
        d2 = _xp(W).ascontiguousarray(dout).reshape(-1, dout.shape[-1])
        F.matmul(x2.T, d2, out=self.grads[0], colsum=self.grads[1], backend=self.backend, precision=self.precision)
        return F.matmul(d2, W.T, backend=self.backend, precision=self.precision).reshape(self.x.shape)


class TimeAffine(Affine):
    """Affine applied at every time step of (N, T, D); returns (N, T, V)."""


class TimeLSTM:
    """The book's TimeLSTM on pylstm's fused kernels (a drop-in replacement).

    Parameters
    ----------
    Wx : (D, 4H); Wh : (H, 4H); b : (4H,), gate blocks f, g, i, o.
    stateful : keep (h, c) between forward calls (truncated BPTT), as in the book.
    backend : "auto" | "cpu" | "numpy".
    reverse : read each sequence from its last step to its first (a bidirectional layer's
        backward direction; no reversed copy is made).
    precision : "fp32" or "bf16" (the GEMMs' operands rounded to bfloat16: ``lstm_forward``);
        a run setting, an attribute that may change between calls.

    ``forward(xs (N, T, D), lengths=None) -> hs (N, T, H)``; ``backward(dhs) -> dxs``. After
    backward, ``dh`` (and ``dc``) hold the gradients with respect to the initial state.
    ``lengths`` (N,) gives each sequence its own length (``pylstm.lstm_forward``): outputs past
    it are zero and the carried state is the one at its own last step.
    """

    def __init__(self, Wx, Wh, b, stateful: bool = False, backend: str = "auto", reverse: bool = False,
                 precision: str = "fp32"):
        self.params = [Wx, Wh, b]
        xp = _xp(Wx)
        self.grads = [xp.zeros_like(Wx), xp.zeros_like(Wh), xp.zeros_like(b)]
        self.stateful = stateful
        self.backend = backend
        self.reverse = reverse
        self.precision = precision
        self.h: Optional[np.ndarray] = None
        self.c: Optional[np.ndarray] = None
        self.dh: Optional[np.ndarray] = None
        self.dc: Optional[np.ndarray] = None
        self.cache = None

    # The cell's functional pair (TimePeepholeLSTM passes its P through the same calls).
    def _cell_forward(self, xs, h0, c0, lengths):
        return F.lstm_forward(xs, *self.params, h0, c0, backend=self.backend, lengths=lengths,
                              reverse=self.reverse, precision=self.precision)

    def _cell_backward(self, dhs):
        return F.lstm_backward(dhs, self.cache)

    def forward(self, xs: np.ndarray, lengths=None) -> np.ndarray:
        xs = _xp(self.params[0]).ascontiguousarray(xs)
        h0, c0 = _initial_state(self, xs)
        hs, hT, cT, self.cache = self._cell_forward(xs, h0, c0, lengths)
        if self.stateful:
            self.h, self.c = hT, cT
        return hs

    def backward(self, dhs: np.ndarray) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("backward called before forward")
        dxs, dh0, dc0, *grads = self._cell_backward(_xp(dhs).ascontiguousarray(dhs))
        for g, v in zip(self.grads, grads):  # dWx, dWh, db (, dP)
            g[...] = v
        self.dh, self.dc = dh0, dc0
        return dxs

    def set_state(self, h: np.ndarray, c: Optional[np.ndarray] = None) -> None:
        """Set the state used by the next forward call (stateful layers). c defaults to zeros."""
        dt = self.params[0].dtype
        xp = _xp(self.params[0])
        self.h = xp.ascontiguousarray(xp.asarray(h), dtype=dt)
        self.c = xp.zeros_like(self.h) if c is None else xp.ascontiguousarray(xp.asarray(c), dtype=dt)

    def reset_state(self) -> None:
        self.h, self.c = None, None


class TimeBiLSTM:
    """The book's TimeBiLSTM (common/time_layers.py): one TimeLSTM reads the sequence forwards,
    another backwards, and their outputs are concatenated on the last axis, forward first.

    Parameters
    ----------
    Wx1, Wh1, b1 : the forward LSTM's (D, 4H), (H, 4H), (4H,); Wx2, Wh2, b2 : the backward one's.
    stateful, backend : as TimeLSTM's (each direction keeps its own state).

    ``forward(xs (N, T, D), lengths=None) -> (N, T, 2H)``; ``backward(dhs (N, T, 2H)) -> dxs``.
    The backward direction is the kernels' reverse walk (no reversed copies); with ``lengths``
    each sequence's backward direction starts at its own last step.
    """

    def __init__(self, Wx1, Wh1, b1, Wx2, Wh2, b2, stateful: bool = False, backend: str = "auto"):
        self.forward_lstm = TimeLSTM(Wx1, Wh1, b1, stateful, backend)
        self.backward_lstm = TimeLSTM(Wx2, Wh2, b2, stateful, backend, reverse=True)
        self.params = self.forward_lstm.params + self.backward_lstm.params
        self.grads = self.forward_lstm.grads + self.backward_lstm.grads

    def forward(self, xs: np.ndarray, lengths=None) -> np.ndarray:
        xp = _xp(self.params[0])
        o1 = self.forward_lstm.forward(xs, lengths)
        o2 = self.backward_lstm.forward(xs, lengths)
        return xp.concatenate((o1, o2), axis=2)

    def backward(self, dhs: np.ndarray) -> np.ndarray:
        xp = _xp(self.params[0])
        H = self.params[1].shape[0]
        if getattr(dhs, "ndim", 0) != 3 or dhs.shape[2] != 2 * H:
            raise ValueError(f"dhs must have shape (N, T, 2H) = (N, T, {2 * H}), got {getattr(dhs, 'shape', None)}")
        dxs1 = self.forward_lstm.backward(xp.ascontiguousarray(dhs[:, :, :H]))
        dxs2 = self.backward_lstm.backward(xp.ascontiguousarray(dhs[:, :, H:]))
        dxs1 += dxs2
        return dxs1

    def reset_state(self) -> None:
        self.forward_lstm.reset_state()
        self.backward_lstm.reset_state()


class TimePeepholeLSTM(TimeLSTM):
    """TimeLSTM with peepholes (Gers & Schmidhuber; ``pylstm.reference`` has the equations).

    Parameters
    ----------
    Wx, Wh, b : as TimeLSTM's (gate blocks f, g, i, o).
    P : (3, H) diagonal peephole weights, rows pf, pi, po: the forget and input gates see
        c_{t-1}, the output gate sees c_t. ``params`` and ``grads`` are [Wx, Wh, b, P].
    stateful, backend : as TimeLSTM's.
    """

    def __init__(self, Wx, Wh, b, P, stateful: bool = False, backend: str = "auto", reverse: bool = False,
                 precision: str = "fp32"):
        super().__init__(Wx, Wh, b, stateful=stateful, backend=backend, reverse=reverse, precision=precision)
        self.params.append(P)
        self.grads.append(_xp(P).zeros_like(P))

    def _cell_forward(self, xs, h0, c0, lengths):
        return F.peephole_forward(xs, *self.params, h0, c0, backend=self.backend, lengths=lengths,
                                  reverse=self.reverse, precision=self.precision)

    def _cell_backward(self, dhs):
        return F.peephole_backward(dhs, self.cache)


class _HState:
    """The carried state of a recurrent layer whose state is h alone (TimeRNN, TimeGRU)."""

    def set_state(self, h: np.ndarray) -> None:
        """Set the state used by the next forward call (stateful layers)."""
        xp = _xp(self.params[0])
        self.h = xp.ascontiguousarray(xp.asarray(h), dtype=self.params[0].dtype)

    def reset_state(self) -> None:
        self.h = None


class TimeRNN(_HState):
    """The book's TimeRNN (DLfS2 ch. 5) on pylstm's fused kernels (a drop-in replacement).

    Parameters
    ----------
    Wx : (D, H); Wh : (H, H); b : (H,).
    stateful : keep h between forward calls (truncated BPTT), as in the book.
    nonlinearity : "tanh" (the book's) or "relu".
    backend : "auto" | "cpu" | "numpy".
    reverse : read each sequence backwards (as TimeLSTM's).

    ``forward(xs (N, T, D), lengths=None) -> hs (N, T, H)``; ``backward(dhs) -> dxs``. After
    backward, ``dh`` holds the gradient with respect to the initial state. ``lengths``: as
    TimeLSTM's.
    """

    def __init__(self, Wx, Wh, b, stateful: bool = False, nonlinearity: str = "tanh",
                 backend: str = "auto", reverse: bool = False, precision: str = "fp32"):
        F._rnn_cell(nonlinearity)  # a bad name fails here, not at the first forward
        self.params = [Wx, Wh, b]
        xp = _xp(Wx)
        self.grads = [xp.zeros_like(Wx), xp.zeros_like(Wh), xp.zeros_like(b)]
        self.stateful = stateful
        self.nonlinearity = nonlinearity
        self.backend = backend
        self.reverse = reverse
        self.precision = precision
        self.h: Optional[np.ndarray] = None
        self.dh: Optional[np.ndarray] = None
        self.cache = None

    def forward(self, xs: np.ndarray, lengths=None) -> np.ndarray:
        Wx, Wh, b = self.params
        xs = _xp(Wx).ascontiguousarray(xs)
        h0 = _initial_state(self, xs)[0]
        hs, hT, self.cache = F.rnn_forward(xs, Wx, Wh, b, h0, self.nonlinearity, backend=self.backend,
                                           lengths=lengths, reverse=self.reverse, precision=self.precision)
        if self.stateful:
            self.h = hT
        return hs

    def backward(self, dhs: np.ndarray) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("backward called before forward")
        dxs, dh0, dWx, dWh, db = F.rnn_backward(_xp(dhs).ascontiguousarray(dhs), self.cache)
        self.grads[0][...] = dWx
        self.grads[1][...] = dWh
        self.grads[2][...] = db
        self.dh = dh0
        return dxs



class TimeGRU(_HState):
    """The book's TimeGRU (DLfS2 common/time_layers.py) and the reset-after GRU of PyTorch, cuDNN
    and Keras, on pylstm's fused kernels.

    Parameters
    ----------
    Wx : (D, 3H); Wh : (H, 3H); b : (3H,), gate blocks z, r, n (the book's order).
    stateful : keep h between forward calls (truncated BPTT), as in the book.
    b_hn : (H,) the candidate's recurrent bias; giving it selects the reset_after variant.
    variant : "reset_after", "reset_before" or "book"; None (the default) means reset_after
        when ``b_hn`` is given, else the book's (called with the book's signature, the layer is
        the book's class).
    backend : "auto" | "cpu" | "numpy".
    reverse : read each sequence backwards (as TimeLSTM's).

    ``params`` / ``grads``: [Wx, Wh, b] (+ [b_hn]). After backward, ``dh`` holds the gradient with
    respect to the initial state. ``forward(xs, lengths=None)``: lengths as TimeLSTM's.
    """

    def __init__(self, Wx, Wh, b, stateful: bool = False, b_hn=None, variant: Optional[str] = None,
                 backend: str = "auto", reverse: bool = False, precision: str = "fp32"):
        if variant is None:
            variant = "reset_after" if b_hn is not None else "book"
        if variant not in F.GRU_VARIANTS:
            raise ValueError(f"variant must be one of {F.GRU_VARIANTS}, got {variant!r}")
        if (b_hn is None) == (variant == "reset_after"):
            raise ValueError("b_hn must be given for the reset_after variant and only for it, got "
                             f"b_hn={'None' if b_hn is None else 'an array'} with variant={variant!r}")
        self.params = [Wx, Wh, b] + ([b_hn] if b_hn is not None else [])
        xp = _xp(Wx)
        self.grads = [xp.zeros_like(p) for p in self.params]
        self.stateful, self.variant, self.backend, self.reverse = stateful, variant, backend, reverse
        self.precision = precision
        self.h: Optional[np.ndarray] = None
        self.dh: Optional[np.ndarray] = None
        self.cache = None

    def forward(self, xs: np.ndarray, lengths=None) -> np.ndarray:
        Wx, Wh, b = self.params[:3]
        b_hn = self.params[3] if len(self.params) > 3 else None
        xs = _xp(Wx).ascontiguousarray(xs)
        h0 = _initial_state(self, xs)[0]
        hs, hT, self.cache = F.gru_forward(xs, Wx, Wh, b, b_hn, h0, self.variant, backend=self.backend,
                                           lengths=lengths, reverse=self.reverse, precision=self.precision)
        if self.stateful:
            self.h = hT
        return hs

    def backward(self, dhs: np.ndarray) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("backward called before forward")
        dxs, dh0, *grads = F.gru_backward(_xp(dhs).ascontiguousarray(dhs), self.cache)
        for g, v in zip(self.grads, grads):  # dWx, dWh, db (, db_hn)
            g[...] = v
        self.dh = dh0
        return dxs



class TimeDropout:
    """Inverted dropout over (N, T, D): in training, zero each element with probability
    ``dropout_ratio`` and scale the rest by 1/(1 - ratio); identity when ``train_flg`` is False."""

    def __init__(self, dropout_ratio: float = 0.5, rng: Optional[np.random.Generator] = None):
        if not 0.0 <= dropout_ratio < 1.0:
            raise ValueError(f"dropout_ratio must be in [0, 1), got {dropout_ratio}")
        self.params, self.grads = [], []
        self.dropout_ratio = dropout_ratio
        self.mask = None
        self.train_flg = True
        self.rng = rng if rng is not None else np.random.default_rng()
        self._device_rng = None  # CuPy's generator, seeded from rng on first use on the GPU
        # (row0, total): this batch is rows [row0, row0 + N) of a batch of `total` rows, whose
        # mask is drawn as one (data-parallel training: pylstm.distributed)
        self.rows = None

    def _random(self, xs):
        xp = _xp(xs)
        if xp is np:
            if self.rows is not None:
                return draw_rows(self.rng, xs.shape, *self.rows)
            return self.rng.random(xs.shape, dtype=np.float32)
        if self._device_rng is None:
            self._device_rng = xp.random.default_rng(int(self.rng.integers(2**63)))
        if self.rows is not None:
            row0, total = self.rows
            full = self._device_rng.random((total,) + tuple(xs.shape[1:]), dtype=np.float32)
            return full[row0:row0 + xs.shape[0]]
        return self._device_rng.random(xs.shape, dtype=np.float32)

    def forward(self, xs: np.ndarray) -> np.ndarray:
        if self.train_flg and self.dropout_ratio > 0:
            keep = self._random(xs) > self.dropout_ratio
            self.mask = keep.astype(xs.dtype) * xs.dtype.type(1.0 / (1.0 - self.dropout_ratio))
            return xs * self.mask
        self.mask = None
        return xs

    def backward(self, dout: np.ndarray) -> np.ndarray:
        return dout if self.mask is None else dout * self.mask


class SoftmaxWithLoss:
    """Softmax + mean cross-entropy over (N, V) scores and (N,) integer labels (or one-hot)."""

    def __init__(self):
        self.params, self.grads = [], []
        self.y = None
        self.t = None

    def forward(self, x: np.ndarray, t: np.ndarray) -> float:
        xp = _xp(x)
        self.t = xp.argmax(t, axis=1) if t.ndim == x.ndim else t
        self.y = softmax(x.astype(x.dtype, copy=True))
        N = x.shape[0]
        p = self.y[xp.arange(N), self.t]
        return float(-xp.log(xp.maximum(p, 1e-7)).mean())

    def backward(self, dout: float = 1.0) -> np.ndarray:
        N = self.t.shape[0]
        dx = self.y.copy()
        dx[_xp(dx).arange(N), self.t] -= 1
        dx *= dout / N
        return dx


class TimeSoftmaxWithLoss:
    """Softmax + cross-entropy averaged over every (n, t) whose label is not ``ignore_label``.
    xs: (N, T, V) scores; ts: (N, T) integer labels (or (N, T, V) one-hot). The gradient is
    computed in the same pass as the loss unless ``need_grad`` is False (evaluation).
    ``forward(xs, ts, lengths=None)``: with lengths (N,) in [1, T], positions t >= lengths[n]
    are padding, left out like ignored labels (loss, gradient and so the perplexity)."""

    def __init__(self, ignore_label: int = -1, backend: str = "auto"):
        self.params, self.grads = [], []
        self.ignore_label = ignore_label
        self.backend = backend
        self.need_grad = True
        self.check_labels = True  # on the GPU a host synchronization (see Embedding.check_ids)
        self.dx = None

    def forward(self, xs: np.ndarray, ts: np.ndarray, lengths=None) -> float:
        N, T, V = xs.shape
        if ts.ndim == 3:  # one-hot labels
            ts = ts.argmax(axis=2)
        if ts.shape != (N, T):
            raise ValueError(f"ts must have shape {(N, T)}, got {ts.shape}")
        if lengths is not None:
            xp = _xp(ts)
            L = xp.asarray(F._check_lengths(lengths, N, T))
            if ts.dtype.kind == "u":  # (room for a negative ignore_label)
                ts = ts.astype(np.int64)
            ts = xp.where(xp.arange(T)[None, :] < L[:, None], ts, xp.asarray(self.ignore_label, ts.dtype))
        loss, d = F.softmax_cross_entropy(_xp(xs).ascontiguousarray(xs).reshape(N * T, V), ts.reshape(-1),
                                          self.ignore_label, self.need_grad, backend=self.backend,
                                          check_labels=self.check_labels)
        self.dx = None if d is None else d.reshape(N, T, V)
        return loss

    def backward(self, dout: float = 1.0) -> np.ndarray:
        if self.dx is None:
            raise RuntimeError("backward needs a forward with need_grad=True first")
        return self.dx if dout == 1 else self.dx * self.dx.dtype.type(dout)
