"""Converters between pylstm's weight layout and PyTorch's / Keras's LSTM layouts (and PyTorch's
vanilla RNN: ``rnn_to_torch`` / ``rnn_from_torch``).

pylstm (DLfS2): ``Wx (D, 4H)``, ``Wh (H, 4H)``, ``b (4H,)``, gate blocks **f, g, i, o**,
projection ``x @ Wx``.

PyTorch ``nn.LSTM`` (one layer): ``weight_ih (4H, D)``, ``weight_hh (4H, H)``, ``bias_ih (4H,)``,
``bias_hh (4H,)``, gate blocks **i, f, g, o**, projection ``W @ x``; the two biases are added.

Keras ``LSTM``: ``kernel (D, 4H)``, ``recurrent_kernel (H, 4H)``, ``bias (4H,)``, gate blocks
**i, f, c, o** (c is the candidate, pylstm's g), projection ``x @ kernel``.

All functions take and return NumPy arrays (anything ``numpy.asarray`` accepts, e.g. a CPU torch
tensor's ``.detach().numpy()``) and return fresh C-contiguous arrays in the input dtype.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_torch", "from_torch", "to_keras", "from_keras", "rnn_to_torch", "rnn_from_torch"]

# Position of each pylstm block (f, g, i, o) in the other layouts.
_PYLSTM = "fgio"
_TORCH = "ifgo"
_KERAS = "ifgo"  # Keras names the candidate c; it is the same tanh block as pylstm's g


def _blocks(a: np.ndarray, axis: int, name: str) -> list:
    if a.shape[axis] % 4:
        raise ValueError(f"{name}: axis {axis} of shape {a.shape} must be 4H (a multiple of 4)")
    return np.split(a, 4, axis=axis)


def _reorder(a: np.ndarray, axis: int, src: str, dst: str, name: str) -> np.ndarray:
    parts = dict(zip(src, _blocks(a, axis, name)))
    return np.ascontiguousarray(np.concatenate([parts[g] for g in dst], axis=axis))


def _arr(a, name: str, ndim: int) -> np.ndarray:
    a = np.asarray(a)
    if a.dtype.kind != "f":
        raise TypeError(f"{name} must be a floating-point array, got dtype {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must have rank {ndim}, got shape {a.shape}")
    return a


def _summed_bias(size: int, dtype, bias_ih, bias_hh) -> np.ndarray:
    """PyTorch's two biases added (either may be None: a layer built with bias=False)."""
    bias = np.zeros(size, dtype)
    for name, v in (("bias_ih", bias_ih), ("bias_hh", bias_hh)):
        if v is not None:
            v = _arr(v, name, 1)
            if v.shape != bias.shape:
                raise ValueError(f"{name} must have shape {bias.shape}, got {v.shape}")
            bias = bias + v
    return bias


def to_torch(Wx, Wh, b):
    """pylstm ``(Wx, Wh, b)`` -> PyTorch ``(weight_ih, weight_hh, bias_ih, bias_hh)``.

    The whole bias goes to ``bias_ih``; ``bias_hh`` is zeros.
    """
    Wx, Wh, b = _arr(Wx, "Wx", 2), _arr(Wh, "Wh", 2), _arr(b, "b", 1)
    w_ih = _reorder(Wx, 1, _PYLSTM, _TORCH, "Wx").T.copy()
    w_hh = _reorder(Wh, 1, _PYLSTM, _TORCH, "Wh").T.copy()
    b_ih = _reorder(b, 0, _PYLSTM, _TORCH, "b")
    return w_ih, w_hh, b_ih, np.zeros_like(b_ih)


def from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """PyTorch ``(weight_ih, weight_hh, bias_ih, bias_hh)`` -> pylstm ``(Wx, Wh, b)``.

    ``b = bias_ih + bias_hh`` (either may be None for a layer built with ``bias=False``).
    """
    w_ih, w_hh = _arr(weight_ih, "weight_ih", 2), _arr(weight_hh, "weight_hh", 2)
    if w_hh.shape[0] != 4 * w_hh.shape[1]:
        raise ValueError(f"weight_hh must have shape (4H, H), got {w_hh.shape}")
    if w_ih.shape[0] != w_hh.shape[0]:
        raise ValueError(f"weight_ih must have shape (4H, D) with 4H = {w_hh.shape[0]}, got {w_ih.shape}")
    bias = _summed_bias(w_hh.shape[0], w_hh.dtype, bias_ih, bias_hh)
    Wx = _reorder(w_ih.T, 1, _TORCH, _PYLSTM, "weight_ih")
    Wh = _reorder(w_hh.T, 1, _TORCH, _PYLSTM, "weight_hh")
    return Wx, Wh, _reorder(bias, 0, _TORCH, _PYLSTM, "bias")


def to_keras(Wx, Wh, b):
    """pylstm ``(Wx, Wh, b)`` -> Keras ``(kernel, recurrent_kernel, bias)``."""
    Wx, Wh, b = _arr(Wx, "Wx", 2), _arr(Wh, "Wh", 2), _arr(b, "b", 1)
    return (_reorder(Wx, 1, _PYLSTM, _KERAS, "Wx"), _reorder(Wh, 1, _PYLSTM, _KERAS, "Wh"),
            _reorder(b, 0, _PYLSTM, _KERAS, "b"))


def from_keras(kernel, recurrent_kernel, bias):
    """Keras ``(kernel, recurrent_kernel, bias)`` -> pylstm ``(Wx, Wh, b)``."""
    k = _arr(kernel, "kernel", 2)
    rk = _arr(recurrent_kernel, "recurrent_kernel", 2)
    bias = _arr(bias, "bias", 1)
    return (_reorder(k, 1, _KERAS, _PYLSTM, "kernel"), _reorder(rk, 1, _KERAS, _PYLSTM, "recurrent_kernel"),
            _reorder(bias, 0, _KERAS, _PYLSTM, "bias"))


def rnn_to_torch(Wx, Wh, b):
    """pylstm vanilla RNN ``(Wx (D, H), Wh (H, H), b (H,))`` -> PyTorch ``nn.RNN``
    ``(weight_ih (H, D), weight_hh (H, H), bias_ih, bias_hh)``; the whole bias goes to ``bias_ih``.
    (One gate block: nothing to reorder, only the projection's side.)"""
    Wx, Wh, b = _arr(Wx, "Wx", 2), _arr(Wh, "Wh", 2), _arr(b, "b", 1)
    H = Wh.shape[0]
    if Wh.shape != (H, H):
        raise ValueError(f"Wh must have shape (H, H), got {Wh.shape}")
    if Wx.shape[1] != H:
        raise ValueError(f"Wx must have shape (D, {H}), got {Wx.shape}")
    if b.shape != (H,):
        raise ValueError(f"b must have shape ({H},), got {b.shape}")
    return Wx.T.copy(), Wh.T.copy(), b.copy(), np.zeros_like(b)


def rnn_from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """PyTorch ``nn.RNN`` ``(weight_ih, weight_hh, bias_ih, bias_hh)`` -> pylstm ``(Wx, Wh, b)``
    with ``b = bias_ih + bias_hh`` (either may be None)."""
    w_ih, w_hh = _arr(weight_ih, "weight_ih", 2), _arr(weight_hh, "weight_hh", 2)
    H = w_hh.shape[0]
    if w_hh.shape != (H, H):
        raise ValueError(f"weight_hh must have shape (H, H), got {w_hh.shape}")
    if w_ih.shape[0] != H:
        raise ValueError(f"weight_ih must have shape ({H}, D), got {w_ih.shape}")
    bias = _summed_bias(H, w_hh.dtype, bias_ih, bias_hh)
    return np.ascontiguousarray(w_ih.T), np.ascontiguousarray(w_hh.T), bias
