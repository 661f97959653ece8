"""Converters between pylstm's weight layout and PyTorch's / Keras's LSTM layouts (and PyTorch's
vanilla RNN: ``rnn_to_torch`` / ``rnn_from_torch``; the GRU: ``gru_to_torch`` / ``gru_from_torch``
/ ``gru_to_keras`` / ``gru_from_keras``).

pylstm (DLfS2): ``Wx (D, 4H)``, ``Wh (H, 4H)``, ``b (4H,)``, gate blocks **f, g, i, o**,
projection ``x @ Wx``.

PyTorch ``nn.LSTM`` (one layer): ``weight_ih (4H, D)``, ``weight_hh (4H, H)``, ``bias_ih (4H,)``,
``bias_hh (4H,)``, gate blocks **i, f, g, o**, projection ``W @ x``; the two biases are added.

Keras ``LSTM``: ``kernel (D, 4H)``, ``recurrent_kernel (H, 4H)``, ``bias (4H,)``, gate blocks
**i, f, c, o** (c is the candidate, pylstm's g), projection ``x @ kernel``.

GRU: pylstm ``Wx (D, 3H)``, ``Wh (H, 3H)``, ``b (3H,)``, blocks **z, r, n**, and ``b_hn (H,)``
for the reset_after variant. PyTorch ``nn.GRU``: blocks **r, z, n**, ``W @ x``, biases
``bias_ih`` and ``bias_hh`` (the z and r parts add; ``bias_hh``'s n part is ``b_hn``). Keras
``GRU``: blocks z, r, h (= n), ``x @ kernel``; ``bias (2, 3H)`` (input, recurrent) with
``reset_after=True``, ``bias (3H,)`` with ``reset_after=False`` (pylstm's reset_before variant).

All functions take and return NumPy arrays (anything ``numpy.asarray`` accepts, e.g. a CPU torch
tensor's ``.detach().numpy()``) and return fresh C-contiguous arrays in the input dtype.
"""

from __future__ import annotations

import numpy as np

__all__ = ["to_torch", "from_torch", "to_keras", "from_keras", "rnn_to_torch", "rnn_from_torch",
           "gru_to_torch", "gru_from_torch", "gru_to_keras", "gru_from_keras"]

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


def _gru_params(Wx, Wh, b, b_hn):
    Wx, Wh, b = _arr(Wx, "Wx", 2), _arr(Wh, "Wh", 2), _arr(b, "b", 1)
    H = Wh.shape[0]
    if Wh.shape != (H, 3 * H):
        raise ValueError(f"Wh must have shape (H, 3H), got {Wh.shape}")
    if Wx.shape[1] != 3 * H:
        raise ValueError(f"Wx must have shape (D, {3 * H}), got {Wx.shape}")
    if b.shape != (3 * H,):
        raise ValueError(f"b must have shape ({3 * H},), got {b.shape}")
    if b_hn is not None:
        b_hn = _arr(b_hn, "b_hn", 1)
        if b_hn.shape != (H,):
            raise ValueError(f"b_hn must have shape ({H},), got {b_hn.shape}")
    return Wx, Wh, b, b_hn, H


def _swap_zr(a: np.ndarray, axis: int, H: int) -> np.ndarray:
    """z, r, n <-> r, z, n along axis (the swap is its own inverse)."""
    z, r, n = (np.take(a, range(k * H, (k + 1) * H), axis=axis) for k in range(3))
    return np.ascontiguousarray(np.concatenate([r, z, n], axis=axis))


def gru_to_torch(Wx, Wh, b, b_hn):
    """pylstm reset_after GRU ``(Wx, Wh, b, b_hn)`` -> PyTorch ``nn.GRU``
    ``(weight_ih (3H, D), weight_hh (3H, H), bias_ih (3H,), bias_hh (3H,))``: ``b`` goes to
    ``bias_ih``, ``b_hn`` to ``bias_hh``'s n part (its z and r parts are zeros)."""
    if b_hn is None:
        raise ValueError("b_hn must be an array of shape (H,): torch.nn.GRU is the reset_after variant")
    Wx, Wh, b, b_hn, H = _gru_params(Wx, Wh, b, b_hn)
    b_hh = np.concatenate([np.zeros(2 * H, b.dtype), b_hn]).astype(b.dtype)
    return _swap_zr(Wx, 1, H).T.copy(), _swap_zr(Wh, 1, H).T.copy(), _swap_zr(b, 0, H), b_hh


def gru_from_torch(weight_ih, weight_hh, bias_ih=None, bias_hh=None):
    """PyTorch ``nn.GRU`` ``(weight_ih, weight_hh, bias_ih, bias_hh)`` -> pylstm
    ``(Wx, Wh, b, b_hn)``: ``b``'s z and r parts are the two biases' sums, its n part is
    ``bias_ih``'s, ``b_hn`` is ``bias_hh``'s n part (either bias may be None)."""
    w_ih, w_hh = _arr(weight_ih, "weight_ih", 2), _arr(weight_hh, "weight_hh", 2)
    H = w_hh.shape[1]
    if w_hh.shape != (3 * H, H):
        raise ValueError(f"weight_hh must have shape (3H, H), got {w_hh.shape}")
    if w_ih.shape[0] != 3 * H:
        raise ValueError(f"weight_ih must have shape ({3 * H}, D), got {w_ih.shape}")
    zero = np.zeros(3 * H, w_hh.dtype)
    b_ih = _summed_bias(3 * H, w_hh.dtype, bias_ih, None)
    b_hh = _summed_bias(3 * H, w_hh.dtype, None, bias_hh)
    b = b_ih + np.concatenate([b_hh[: 2 * H], zero[:H]])
    return (_swap_zr(w_ih.T, 1, H), _swap_zr(w_hh.T, 1, H), _swap_zr(b, 0, H),
            np.ascontiguousarray(b_hh[2 * H :]))


def gru_to_keras(Wx, Wh, b, b_hn=None):
    """pylstm GRU -> Keras ``GRU`` ``(kernel, recurrent_kernel, bias)``: with ``b_hn`` (the
    reset_after variant) ``bias`` is (2, 3H) (input row ``b``, recurrent row zeros but the n part,
    ``b_hn``), for ``reset_after=True``; without, ``bias = b`` (3H,), for ``reset_after=False``
    (pylstm's reset_before variant; the book's variant has z's roles swapped: negate its z
    blocks first)."""
    Wx, Wh, b, b_hn, H = _gru_params(Wx, Wh, b, b_hn)
    if b_hn is None:
        return Wx.copy(), Wh.copy(), b.copy()
    rec = np.concatenate([np.zeros(2 * H, b.dtype), b_hn]).astype(b.dtype)
    return Wx.copy(), Wh.copy(), np.stack([b, rec])


def gru_from_keras(kernel, recurrent_kernel, bias):
    """Keras ``GRU`` ``(kernel, recurrent_kernel, bias)`` -> pylstm ``(Wx, Wh, b, b_hn)``: a
    (2, 3H) bias (``reset_after=True``) gives the reset_after variant's ``b`` (input row plus
    the recurrent row's z and r parts) and ``b_hn``; a (3H,) bias (``reset_after=False``) gives
    ``b`` and ``b_hn = None`` (the reset_before variant)."""
    k = _arr(kernel, "kernel", 2)
    rk = _arr(recurrent_kernel, "recurrent_kernel", 2)
    H = rk.shape[0]
    if rk.shape != (H, 3 * H):
        raise ValueError(f"recurrent_kernel must have shape (H, 3H), got {rk.shape}")
    if k.shape[1] != 3 * H:
        raise ValueError(f"kernel must have shape (D, {3 * H}), got {k.shape}")
    bias = np.asarray(bias)
    if bias.dtype.kind != "f":
        raise TypeError(f"bias must be a floating-point array, got dtype {bias.dtype}")
    if bias.shape == (3 * H,):
        return np.ascontiguousarray(k), np.ascontiguousarray(rk), bias.copy(), None
    if bias.shape != (2, 3 * H):
        raise ValueError(f"bias must have shape ({3 * H},) (reset_after=False) or (2, {3 * H}) "
                         f"(reset_after=True), got {bias.shape}")
    b = bias[0] + np.concatenate([bias[1, : 2 * H], np.zeros(H, bias.dtype)])
    return np.ascontiguousarray(k), np.ascontiguousarray(rk), b, bias[1, 2 * H :].copy()
