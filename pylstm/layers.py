"""Layers in the style of "Deep Learning from Scratch 2" (chapter 6), on pylstm's kernels.

Contract (the book's, made explicit): every layer has ``params`` and ``grads`` lists of arrays
with the same shapes; ``forward`` computes and keeps what ``backward`` needs; ``backward``
writes the parameter gradients into ``grads`` in place (``g[...] = ...``) and returns the
gradient with respect to the input. Shapes use N batch, T time, D input, H hidden, V vocabulary.
"""

from __future__ import annotations

from typing import Optional

import numpy as np

from . import functional as F

__all__ = [
    "Embedding",
    "TimeEmbedding",
    "Affine",
    "TimeAffine",
    "TimeLSTM",
    "TimeDropout",
    "SoftmaxWithLoss",
    "TimeSoftmaxWithLoss",
    "softmax",
]


def softmax(x: np.ndarray) -> np.ndarray:
    """Row-wise softmax over the last axis (max-subtracted, in x's dtype)."""
    x = x - x.max(axis=-1, keepdims=True)
    np.exp(x, out=x)
    x /= x.sum(axis=-1, keepdims=True)
    return x


def _scatter_add_rows(dW: np.ndarray, idx: np.ndarray, rows: np.ndarray) -> None:
    """dW[idx[k]] += rows[k] for every k (repeated indices accumulate), without np.add.at's
    per-element overhead: sort the indices once, then add each run with one reduceat."""
    if idx.size == 0:
        return
    order = np.argsort(idx, kind="stable")
    sidx = idx[order]
    starts = np.flatnonzero(np.r_[True, sidx[1:] != sidx[:-1]])
    dW[sidx[starts]] += np.add.reduceat(rows[order], starts, axis=0)


class Embedding:
    """Row lookup: ``forward(idx) = W[idx]``. W: (V, D)."""

    def __init__(self, W: np.ndarray):
        self.params = [W]
        self.grads = [np.zeros_like(W)]
        self.idx = None

    def forward(self, idx: np.ndarray) -> np.ndarray:
        W = self.params[0]
        idx = np.asarray(idx)
        if idx.dtype.kind not in "iu":
            raise TypeError(f"idx must be an integer array, got dtype {idx.dtype}")
        if idx.size and (idx.min() < 0 or idx.max() >= W.shape[0]):
            raise ValueError(f"idx must be in [0, {W.shape[0]}), got values in [{idx.min()}, {idx.max()}]")
        self.idx = idx
        return W[idx]

    def backward(self, dout: np.ndarray) -> None:
        dW = self.grads[0]
        dW[...] = 0
        flat = self.idx.reshape(-1)
        _scatter_add_rows(dW, flat, dout.reshape(flat.size, -1))
        return None


class TimeEmbedding(Embedding):
    """Embedding over a (N, T) batch of ids; returns (N, T, D)."""


class Affine:
    """``x @ W + b``. W: (D, V), b: (V,). Works on (N, D) and, reshaped, on (N, T, D).
    W may be a transposed view (``embed_W.T`` for tied weights). The products run on pylstm's
    thread pool (``backend``), like the LSTM kernels."""

    def __init__(self, W: np.ndarray, b: np.ndarray, backend: str = "auto"):
        self.params = [W, b]
        self.grads = [np.zeros_like(W), np.zeros_like(b)]
        self.backend = backend
        self.x = None

    def forward(self, x: np.ndarray) -> np.ndarray:
        W, b = self.params
        self.x = x = np.ascontiguousarray(x)
        lead = x.shape[:-1]
        out = F.matmul(x.reshape(-1, x.shape[-1]), W, backend=self.backend)
        out += b
        return out.reshape(*lead, W.shape[1])

    def backward(self, dout: np.ndarray) -> np.ndarray:
        W, _ = self.params
        x2 = self.x.reshape(-1, self.x.shape[-1])
        d2 = np.ascontiguousarray(dout).reshape(-1, dout.shape[-1])
        F.matmul(x2.T, d2, out=self.grads[0], backend=self.backend)
        d2.sum(axis=0, out=self.grads[1])
        return F.matmul(d2, W.T, backend=self.backend).reshape(self.x.shape)


class TimeAffine(Affine):
    """Affine applied at every time step of (N, T, D); returns (N, T, V)."""


class TimeLSTM:
    """The book's TimeLSTM on pylstm's fused kernels (a drop-in replacement).

    Parameters
    ----------
    Wx : (D, 4H); Wh : (H, 4H); b : (4H,), gate blocks f, g, i, o.
    stateful : keep (h, c) between forward calls (truncated BPTT), as in the book.
    backend : "auto" | "cpu" | "numpy".

    ``forward(xs (N, T, D)) -> hs (N, T, H)``; ``backward(dhs) -> dxs``. After backward, ``dh``
    (and ``dc``) hold the gradients with respect to the initial state.
    """

    def __init__(self, Wx, Wh, b, stateful: bool = False, backend: str = "auto"):
        self.params = [Wx, Wh, b]
        self.grads = [np.zeros_like(Wx), np.zeros_like(Wh), np.zeros_like(b)]
        self.stateful = stateful
        self.backend = backend
        self.h: Optional[np.ndarray] = None
        self.c: Optional[np.ndarray] = None
        self.dh: Optional[np.ndarray] = None
        self.dc: Optional[np.ndarray] = None
        self.cache = None

    def forward(self, xs: np.ndarray) -> np.ndarray:
        Wx, Wh, b = self.params
        xs = np.ascontiguousarray(xs)
        N = xs.shape[0] if xs.ndim == 3 else None
        h0 = c0 = None
        if self.stateful:
            if self.h is not None and self.h.shape[0] != N:
                raise ValueError(f"xs: batch size {N} differs from the stored state's {self.h.shape[0]}; "
                                 "call reset_state() first")
            h0, c0 = self.h, self.c
        hs, hT, cT, self.cache = F.lstm_forward(xs, Wx, Wh, b, h0, c0, backend=self.backend)
        if self.stateful:
            self.h, self.c = hT, cT
        return hs

    def backward(self, dhs: np.ndarray) -> np.ndarray:
        if self.cache is None:
            raise RuntimeError("backward called before forward")
        dxs, dh0, dc0, dWx, dWh, db = F.lstm_backward(np.ascontiguousarray(dhs), self.cache)
        self.grads[0][...] = dWx
        self.grads[1][...] = dWh
        self.grads[2][...] = db
        self.dh, self.dc = dh0, dc0
        return dxs

    def set_state(self, h: np.ndarray, c: Optional[np.ndarray] = None) -> None:
        """Set the state used by the next forward call (stateful layers). c defaults to zeros."""
        dt = self.params[0].dtype
        self.h = np.ascontiguousarray(h, dtype=dt)
        self.c = np.zeros_like(self.h) if c is None else np.ascontiguousarray(c, dtype=dt)

    def reset_state(self) -> None:
        self.h, self.c = None, None


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

    def forward(self, xs: np.ndarray) -> np.ndarray:
        if self.train_flg and self.dropout_ratio > 0:
            keep = self.rng.random(xs.shape, dtype=np.float32) > self.dropout_ratio
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
        self.t = np.argmax(t, axis=1) if t.ndim == x.ndim else t
        self.y = softmax(x.astype(x.dtype, copy=True))
        N = x.shape[0]
        p = self.y[np.arange(N), self.t]
        return float(-np.log(np.maximum(p, 1e-7)).mean())

    def backward(self, dout: float = 1.0) -> np.ndarray:
        N = self.t.shape[0]
        dx = self.y.copy()
        dx[np.arange(N), self.t] -= 1
        dx *= dout / N
        return dx


class TimeSoftmaxWithLoss:
    """Softmax + cross-entropy averaged over every (n, t) whose label is not ``ignore_label``.
    xs: (N, T, V) scores; ts: (N, T) integer labels (or (N, T, V) one-hot). The gradient is
    computed in the same pass as the loss unless ``need_grad`` is False (evaluation)."""

    def __init__(self, ignore_label: int = -1, backend: str = "auto"):
        self.params, self.grads = [], []
        self.ignore_label = ignore_label
        self.backend = backend
        self.need_grad = True
        self.dx = None

    def forward(self, xs: np.ndarray, ts: np.ndarray) -> float:
        N, T, V = xs.shape
        if ts.ndim == 3:  # one-hot labels
            ts = ts.argmax(axis=2)
        if ts.shape != (N, T):
            raise ValueError(f"ts must have shape {(N, T)}, got {ts.shape}")
        loss, d = F.softmax_cross_entropy(np.ascontiguousarray(xs).reshape(N * T, V), ts.reshape(-1),
                                          self.ignore_label, self.need_grad, backend=self.backend)
        self.dx = None if d is None else d.reshape(N, T, V)
        return loss

    def backward(self, dout: float = 1.0) -> np.ndarray:
        if self.dx is None:
            raise RuntimeError("backward needs a forward with need_grad=True first")
        return self.dx if dout == 1 else self.dx * self.dx.dtype.type(dout)
