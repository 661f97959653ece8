"""The pure-NumPy reference: the written specification every pylstm kernel is tested against.

Shapes (letters used everywhere in pylstm): N batch, T time steps, D input size, H hidden size.
Arrays are batch-major: ``xs (N, T, D)``, ``hs (N, T, H)``. Weights follow DLfS2:
``Wx (D, 4H)``, ``Wh (H, 4H)``, ``b (4H,)``, and a projection is ``x @ W + b``.

Gate order inside the 4H axis is **f, g, i, o** (columns ``[0:H]`` forget, ``[H:2H]`` candidate,
``[2H:3H]`` input, ``[3H:4H]`` output), the order of "Deep Learning from Scratch 2".

Forward, for t = 0 .. T-1, with ``h_{-1} = h0`` and ``c_{-1} = c0`` (zeros when absent)::

    a_t = x_t @ Wx + h_{t-1} @ Wh + b                       (N, 4H)
          (at t = 0 without h0 there is no h-term: a NaN or inf in Wh reaches the
          outputs from step 1 on, not through a product with zeros)
    f = sigmoid(a_t[:, 0:H])      g = tanh(a_t[:, H:2H])
    i = sigmoid(a_t[:, 2H:3H])    o = sigmoid(a_t[:, 3H:4H])
    c_t = f * c_{t-1} + g * i
    h_t = o * tanh(c_t)

Outputs: ``hs = [h_0 .. h_{T-1}]``, ``hT = h_{T-1}``, ``cT = c_{T-1}``.

Backward, for t = T-1 .. 0, with upstream gradients ``dhs`` (N, T, H), ``dhT`` and ``dcT``
(N, H; zeros when absent; ``dhT`` adds to the last step's ``dh``)::

    dh = dhs[:, t] + dh_next            (dh_next starts as dhT)
    dc = dc_next                        (dc_next starts as dcT)
    ds = dc + dh * o * (1 - tanh(c_t)^2)
    df = ds * c_{t-1};  dg = ds * i;  di = ds * g;  do = dh * tanh(c_t)
    da_t = [df * f(1-f), dg * (1-g^2), di * i(1-i), do * o(1-o)]
    dc_next = ds * f
    dh_next = da_t @ Wh^T
    dWx += x_t^T da_t;  dWh += h_{t-1}^T da_t;  db += sum over rows of da_t;  dx_t = da_t @ Wx^T

and finally ``dh0 = dh_next``, ``dc0 = dc_next``.

The peephole LSTM (Gers & Schmidhuber) adds diagonal peephole weights ``P (3, H)``, rows
``pf, pi, po``: the forget and input gates see ``c_{t-1}``, the output gate the new ``c_t``::

    f = sigmoid(a_f + pf * c_{t-1})    g = tanh(a_g)    i = sigmoid(a_i + pi * c_{t-1})
    c_t = f * c_{t-1} + g * i
    o = sigmoid(a_o + po * c_t)        h_t = o * tanh(c_t)
    backward:  do_a = dh * tanh(c_t) * o(1-o)                (o's pre-activation gradient)
               ds = dc + dh * o * (1 - tanh(c_t)^2) + do_a * po
               df_a = ds * c_{t-1} * f(1-f);  dg_a, di_a as the LSTM's
               dc_next = ds * f + df_a * pf + di_a * pi
               dP += [sum of df_a * c_{t-1}, sum of di_a * c_{t-1}, sum of do_a * c_t] over rows

The vanilla RNN (DLfS2's ``RNN``/``TimeRNN``; ``nonlinearity`` tanh, or relu), one gate
block, no cell state: ``Wx (D, H)``, ``Wh (H, H)``, ``b (H,)``::

    h_t = act(x_t @ Wx + h_{t-1} @ Wh + b)                  (no h-term at t = 0 without h0)
    backward:  dh = dhs[:, t] + dh_next
               da = dh * (1 - h_t^2)   (tanh)    or   dh * (h_t > 0)   (relu)
               dh_next = da @ Wh^T;  dWx += x_t^T da;  dWh += h_{t-1}^T da;  db += sum of da rows
               dx_t = da @ Wx^T;     finally dh0 = dh_next

The GRU, gate blocks **z, r, n** (update, reset, candidate; the book's and Keras's order):
``Wx (D, 3H)``, ``Wh (H, 3H)``, ``b (3H,)``, no cell state. Three variants::

    ax = x_t @ Wx + b;  ah = h_{t-1} @ Wh               (ah = 0 at t = 0 without h0)
    z = sigmoid(ax_z + ah_z);  r = sigmoid(ax_r + ah_r)
    reset_after (PyTorch, cuDNN, Keras reset_after=True; an extra bias b_hn (H,)):
        hn = ah_n + b_hn;  n = tanh(ax_n + r * hn);  h_t = (1 - z) * n + z * h_{t-1}
    reset_before (Keras reset_after=False):
        n = tanh(ax_n + (r * h_{t-1}) @ Wh_n);         h_t = (1 - z) * n + z * h_{t-1}
    book (DLfS2's GRU: reset_before with z's roles swapped):
        n as reset_before;                             h_t = z * n + (1 - z) * h_{t-1}

Saved for backward: z, r, n (and hn for reset_after), each (N, T, H). Backward, with
``dh = dhs[:, t] + dh_next`` and, for the first two variants (book: dn = dh * z,
dz = dh * (n - h_{t-1}), direct = dh * (1 - z))::

    dn = dh * (1 - z);  dz = dh * (h_{t-1} - n);  direct = dh * z
    dna = dn * (1 - n^2);  dza = dz * z(1-z)
    reset_after:  dra = dna * hn * r(1-r);  dhn = dna * r
                  dh_next = [dza, dra, dhn] @ Wh^T + direct;  dWh += h_{t-1}^T [dza, dra, dhn]
                  db_hn += sum of dhn rows
    reset_before: drh = dna @ Wh_n^T;  dra = drh * h_{t-1} * r(1-r)
                  dh_next = [dza, dra] @ Wh_zr^T + drh * r + direct
                  dWh_zr += h_{t-1}^T [dza, dra];  dWh_n += (r * h_{t-1})^T dna
    both:         dWx += x_t^T [dza, dra, dna];  db += sum of rows;  dx_t = [dza, dra, dna] @ Wx^T

Per-sequence lengths and the reverse direction (every cell). ``lengths`` (N,) gives each
sequence its own length ``L_n`` in [1, T]; ``reverse`` walks time backwards. Sequence n runs the
cell as if it were alone and ``L_n`` long, over ``t = 0 .. L_n-1`` (or ``L_n-1 .. 0`` reversed),
from its row of h0/c0; its outputs at ``t >= L_n`` are zero and get no gradient, and its hT/cT
(and dh0/dc0) are its states at its own last step (``t = L_n-1``, or ``t = 0`` reversed).
Reversed, a sequence shorter than the longest starts after the walk's first step: without h0
its recurrent term is a product with zeros (as with an h0 of zeros), not absent.
``walk_forward_ref`` / ``walk_backward_ref`` apply this to any of the functions above.

bfloat16 GEMMs (``precision="bf16"``; ``bf16_gemms()`` here): every matrix product of the
recurrent functions above (x Wx, h Wh, the gated cell's (r h) Wh_n, dA Wh^T, dA Wx^T, X^T dA,
H^T dA) takes both operands rounded to bfloat16 (8 significant bits, to nearest even) and sums
their products in the arrays' dtype (float64 for the specification). Everything else (the
pointwise math, the cell state, the bias, db and dP) is unchanged.

Activations at the edges: sigmoid(x) is exactly 0 where its value is subnormal (x below -87 in
float32, -708 in float64) and relu keeps NaN; NaN and inf propagate as the formulas say.

Global-norm clipping (DLfS2 semantics)::

    total = sqrt(sum over every array g, every element e of e^2)     (accumulated in float64)
    rate  = max_norm / (total + 1e-6)
    if rate < 1: every g *= rate   (in place)
    return total

A non-finite total raises ``FloatingPointError`` unless ``error_if_nonfinite=False`` (then
nothing is scaled and the total is returned).

Clipping by value (the character-level seed's ``np.clip(g, -5, 5, out=g)``): every element
clamped to ``[-limit, limit]`` in place; NaN stays NaN, +-inf become +-limit.

Every function works in the dtype of its inputs (float32 or float64).
"""

from __future__ import annotations

import contextlib
import contextvars
from typing import NamedTuple, Optional, Sequence

import numpy as np

__all__ = [
    "LSTMCacheRef",
    "sigmoid_ref",
    "lstm_forward_ref",
    "lstm_backward_ref",
    "peephole_forward_ref",
    "peephole_backward_ref",
    "GRUCacheRef",
    "GRU_VARIANTS",
    "gru_forward_ref",
    "gru_backward_ref",
    "RNNCacheRef",
    "rnn_forward_ref",
    "rnn_backward_ref",
    "global_norm_ref",
    "clip_value_ref",
    "clip_grads_ref",
    "softmax_cross_entropy_ref",
    "walk_forward_ref",
    "walk_backward_ref",
    "bf16_round_ref",
    "bf16_gemms",
]


def bf16_round_ref(x: np.ndarray) -> np.ndarray:
    """x rounded to bfloat16, to nearest even, in x's dtype (directly from float64 for float64 x:
    no double rounding through float32): 8 significant bits, and below bfloat16's smallest
    normal, 2^-126, its subnormals' fixed step of 2^-133; past its largest finite value, inf.
    For float32 x this is the kernels' rule bit for bit (common/bf16.h). (The CPU's bfloat16
    instructions then treat subnormal operands as zero: only values below 1.2e-38 see that.)"""
    with np.errstate(over="ignore", invalid="ignore"):  # (inf and NaN pass through; float32's
        e = np.frexp(x)[1]                                # largest values round up to inf)
        e = np.maximum(e, -125)  # (x = m 2^e, 1/2 <= |m| < 1; bfloat16 is subnormal below e = -125)
        r = np.ldexp(np.round(np.ldexp(x, 8 - e)), e - 8)
        r = np.where(np.abs(r) >= 2.0**128, np.copysign(np.inf, x), r)  # (float64: past the largest)
        return r.astype(x.dtype, copy=False)


_BF16 = contextvars.ContextVar("pylstm_reference_bf16", default=False)


@contextlib.contextmanager
def bf16_gemms(on: bool = True):
    """Within the block, the recurrent functions' matrix products round their operands to
    bfloat16 (the module docstring)."""
    token = _BF16.set(bool(on))
    try:
        yield
    finally:
        _BF16.reset(token)


def _mm_operands(a: np.ndarray, b: np.ndarray) -> tuple:
    """A GEMM's operands: as they are, or rounded to bfloat16 under bf16_gemms."""
    if _BF16.get():
        return bf16_round_ref(a), bf16_round_ref(b)
    return a, b


def _mm(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a @ b: every GEMM of the recurrent functions, with operands rounded under bf16_gemms."""
    a, b = _mm_operands(a, b)
    return a @ b


def sigmoid_ref(x: np.ndarray) -> np.ndarray:
    """Logistic sigmoid ``1 / (1 + exp(-x))`` without overflow warnings, in x's dtype; exactly 0
    where the value would be subnormal (the module docstring)."""
    with np.errstate(under="ignore"):  # exp(-|x|) underflowing to 0 is the right answer
        e = np.exp(-np.abs(x))
    y = np.where(x >= 0, 1.0 / (1.0 + e), e / (1.0 + e)).astype(x.dtype, copy=False)
    return np.where(x < -_SIGMOID_ZERO_BELOW[x.dtype.itemsize], x.dtype.type(0), y)


# sigmoid(x) is 0 below these (the kernels' exp range: 2^k stays a normal number).
_SIGMOID_ZERO_BELOW = {4: 87.0, 8: 708.0}


class LSTMCacheRef(NamedTuple):
    """What ``lstm_backward_ref`` needs from the forward pass."""

    xs: np.ndarray  # (N, T, D)
    h0: np.ndarray  # (N, H)
    c0: np.ndarray  # (N, H)
    Wx: np.ndarray  # (D, 4H)
    Wh: np.ndarray  # (H, 4H)
    hs: np.ndarray  # (N, T, H)
    gates: np.ndarray  # (N, T, 4H) activated f, g, i, o
    cs: np.ndarray  # (N, T, H) cell states
    P: Optional[np.ndarray] = None  # (3, H) peepholes pf, pi, po (the peephole LSTM only)


def lstm_forward_ref(
    xs: np.ndarray,
    h0: Optional[np.ndarray],
    c0: Optional[np.ndarray],
    Wx: np.ndarray,
    Wh: np.ndarray,
    b: np.ndarray,
):
    """Reference LSTM forward over a whole sequence.

    Parameters
    ----------
    xs : (N, T, D) inputs.
    h0, c0 : (N, H) initial states, or None for zeros.
    Wx : (D, 4H); Wh : (H, 4H); b : (4H,), gate blocks f, g, i, o.

    Returns
    -------
    hs : (N, T, H); hT : (N, H); cT : (N, H); cache : LSTMCacheRef
    """
    return _lstm_forward(xs, h0, c0, Wx, Wh, b, None)


def peephole_forward_ref(xs, h0, c0, Wx, Wh, b, P):
    """Reference peephole LSTM forward: as ``lstm_forward_ref``, with the peepholes
    ``P (3, H)`` (rows pf, pi, po; the module docstring). Returns (hs, hT, cT, cache)."""
    return _lstm_forward(xs, h0, c0, Wx, Wh, b, P)


def _lstm_forward(xs, h0, c0, Wx, Wh, b, P):
    N, T, D = xs.shape
    H = Wh.shape[0]
    dt = xs.dtype
    h = np.zeros((N, H), dt) if h0 is None else h0
    c = np.zeros((N, H), dt) if c0 is None else c0
    h0_, c0_ = h, c
    hs = np.empty((N, T, H), dt)
    cs = np.empty((N, T, H), dt)
    gates = np.empty((N, T, 4 * H), dt)
    for t in range(T):
        a = _mm(xs[:, t], Wx) + _mm(h, Wh) + b if t > 0 or h0 is not None else _mm(xs[:, t], Wx) + b
        if P is not None:  # peepholes: f and i see c_{t-1}
            a[:, :H] += P[0] * c
            a[:, 2 * H : 3 * H] += P[1] * c
        f = sigmoid_ref(a[:, :H])
        g = np.tanh(a[:, H : 2 * H])
        i = sigmoid_ref(a[:, 2 * H : 3 * H])
        c = f * c + g * i
        o = sigmoid_ref(a[:, 3 * H :] if P is None else a[:, 3 * H :] + P[2] * c)
        h = o * np.tanh(c)
        gates[:, t] = np.concatenate([f, g, i, o], axis=1)
        cs[:, t] = c
        hs[:, t] = h
    cache = LSTMCacheRef(xs, h0_, c0_, Wx, Wh, hs, gates, cs, P)
    return hs, h.copy(), c.copy(), cache


def lstm_backward_ref(
    dhs: np.ndarray,
    cache: LSTMCacheRef,
    dhT: Optional[np.ndarray] = None,
    dcT: Optional[np.ndarray] = None,
):
    """Reference LSTM backward over a whole sequence.

    Parameters
    ----------
    dhs : (N, T, H) gradient with respect to hs.
    cache : from ``lstm_forward_ref``.
    dhT, dcT : (N, H) gradients with respect to hT and cT, or None for zeros.

    Returns
    -------
    dxs (N, T, D), dh0 (N, H), dc0 (N, H), dWx (D, 4H), dWh (H, 4H), db (4H,)
    """
    return _lstm_backward(dhs, cache._replace(P=None), dhT, dcT)[:6]


def peephole_backward_ref(dhs, cache: LSTMCacheRef, dhT=None, dcT=None):
    """Reference peephole LSTM backward (cache from ``peephole_forward_ref``). Returns
    dxs, dh0, dc0, dWx, dWh, db and dP (3, H)."""
    return _lstm_backward(dhs, cache, dhT, dcT)


def _lstm_backward(dhs, cache, dhT, dcT):
    xs, h0, c0, Wx, Wh, hs, gates, cs, P = cache
    N, T, D = xs.shape
    H = Wh.shape[0]
    dt = xs.dtype
    dh_next = np.zeros((N, H), dt) if dhT is None else dhT.astype(dt, copy=True)
    dc_next = np.zeros((N, H), dt) if dcT is None else dcT.astype(dt, copy=True)
    dxs = np.empty((N, T, D), dt)
    dWx = np.zeros_like(Wx)
    dWh = np.zeros_like(Wh)
    db = np.zeros(4 * H, dt)
    dP = None if P is None else np.zeros_like(P)
    for t in reversed(range(T)):
        f = gates[:, t, :H]
        g = gates[:, t, H : 2 * H]
        i = gates[:, t, 2 * H : 3 * H]
        o = gates[:, t, 3 * H :]
        c = cs[:, t]
        c_prev = cs[:, t - 1] if t > 0 else c0
        h_prev = hs[:, t - 1] if t > 0 else h0
        dh = dhs[:, t] + dh_next
        tc = np.tanh(c)
        do_a = dh * tc * o * (1 - o)
        ds = dc_next + dh * o * (1 - tc * tc)
        if P is not None:
            ds = ds + do_a * P[2]
        df_a = ds * c_prev * f * (1 - f)
        di_a = ds * g * i * (1 - i)
        da = np.concatenate([df_a, ds * i * (1 - g * g), di_a, do_a], axis=1)
        dc_next = ds * f
        if P is not None:
            dc_next = dc_next + df_a * P[0] + di_a * P[1]
            dP += np.stack([(df_a * c_prev).sum(axis=0), (di_a * c_prev).sum(axis=0),
                            (do_a * c).sum(axis=0)])
        dh_next = _mm(da, Wh.T)
        dWx += _mm(xs[:, t].T, da)
        dWh += _mm(h_prev.T, da)
        db += da.sum(axis=0)
        dxs[:, t] = _mm(da, Wx.T)
    return dxs, dh_next, dc_next, dWx, dWh, db, dP


class RNNCacheRef(NamedTuple):
    """What ``rnn_backward_ref`` needs from the forward pass."""

    xs: np.ndarray  # (N, T, D)
    h0: np.ndarray  # (N, H)
    Wx: np.ndarray  # (D, H)
    Wh: np.ndarray  # (H, H)
    hs: np.ndarray  # (N, T, H)
    nonlinearity: str  # "tanh" or "relu"


def _rnn_act(a: np.ndarray, nonlinearity: str) -> np.ndarray:
    if nonlinearity == "tanh":
        return np.tanh(a)
    if nonlinearity == "relu":
        return np.maximum(a, a.dtype.type(0))  # NaN stays NaN
    raise ValueError(f"nonlinearity must be one of 'tanh', 'relu', got {nonlinearity!r}")


def rnn_forward_ref(xs: np.ndarray, h0: Optional[np.ndarray], Wx: np.ndarray, Wh: np.ndarray,
                    b: np.ndarray, nonlinearity: str = "tanh"):
    """Reference vanilla RNN forward (module docstring): ``h_t = act(x_t Wx + h_{t-1} Wh + b)``.

    Parameters
    ----------
    xs : (N, T, D); h0 : (N, H) or None for zeros; Wx : (D, H); Wh : (H, H); b : (H,).
    nonlinearity : "tanh" (DLfS2's RNN) or "relu".

    Returns
    -------
    hs : (N, T, H); hT : (N, H); cache : RNNCacheRef
    """
    N, T, D = xs.shape
    H = Wh.shape[0]
    dt = xs.dtype
    h = np.zeros((N, H), dt) if h0 is None else h0
    h0_ = h
    hs = np.empty((N, T, H), dt)
    for t in range(T):
        a = _mm(xs[:, t], Wx) + _mm(h, Wh) + b if t > 0 or h0 is not None else _mm(xs[:, t], Wx) + b
        h = _rnn_act(a, nonlinearity)
        hs[:, t] = h
    return hs, h.copy(), RNNCacheRef(xs, h0_, Wx, Wh, hs, nonlinearity)


def rnn_backward_ref(dhs: np.ndarray, cache: RNNCacheRef, dhT: Optional[np.ndarray] = None):
    """Reference vanilla RNN backward over a whole sequence.

    Returns
    -------
    dxs (N, T, D), dh0 (N, H), dWx (D, H), dWh (H, H), db (H,)
    """
    xs, h0, Wx, Wh, hs, nonlinearity = cache
    N, T, D = xs.shape
    H = Wh.shape[0]
    dt = xs.dtype
    dh_next = np.zeros((N, H), dt) if dhT is None else dhT.astype(dt, copy=True)
    dxs = np.empty((N, T, D), dt)
    dWx, dWh, db = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros(H, dt)
    for t in reversed(range(T)):
        h = hs[:, t]
        h_prev = hs[:, t - 1] if t > 0 else h0
        dh = dhs[:, t] + dh_next
        if nonlinearity == "tanh":
            da = dh * (1 - h * h)
        else:
            da = np.where(h > 0, dh, dt.type(0))
        dh_next = _mm(da, Wh.T)
        dWx += _mm(xs[:, t].T, da)
        dWh += _mm(h_prev.T, da)
        db += da.sum(axis=0)
        dxs[:, t] = _mm(da, Wx.T)
    return dxs, dh_next, dWx, dWh, db


GRU_VARIANTS = ("reset_after", "reset_before", "book")


class GRUCacheRef(NamedTuple):
    """What ``gru_backward_ref`` needs from the forward pass."""

    xs: np.ndarray  # (N, T, D)
    h0: np.ndarray  # (N, H)
    Wx: np.ndarray  # (D, 3H)
    Wh: np.ndarray  # (H, 3H)
    b_hn: Optional[np.ndarray]  # (H,) for reset_after, else None
    hs: np.ndarray  # (N, T, H)
    gates: np.ndarray  # (N, T, 4H) z, r, n, hn (reset_after) or (N, T, 3H) z, r, n
    variant: str


def gru_forward_ref(xs, h0, Wx, Wh, b, b_hn=None, variant: str = "reset_after"):
    """Reference GRU forward (module docstring). ``b_hn`` (H,) is required by the reset_after
    variant and must be None for the others. Returns (hs, hT, cache)."""
    if variant not in GRU_VARIANTS:
        raise ValueError(f"variant must be one of {GRU_VARIANTS}, got {variant!r}")
    N, T, D = xs.shape
    H = Wh.shape[0]
    dt = xs.dtype
    after = variant == "reset_after"
    h = np.zeros((N, H), dt) if h0 is None else h0
    h0_ = h
    hs = np.empty((N, T, H), dt)
    gates = np.empty((N, T, (4 if after else 3) * H), dt)
    for t in range(T):
        rec = t > 0 or h0 is not None  # no recurrent product at t = 0 without h0
        ax = _mm(xs[:, t], Wx) + b
        ah = _mm(h, Wh) if rec else np.zeros((N, 3 * H), dt)
        z = sigmoid_ref(ax[:, :H] + ah[:, :H])
        r = sigmoid_ref(ax[:, H : 2 * H] + ah[:, H : 2 * H])
        if after:
            hn = ah[:, 2 * H :] + b_hn
            n = np.tanh(ax[:, 2 * H :] + r * hn)
            gates[:, t, 3 * H :] = hn
        else:
            rh = _mm(r * h, Wh[:, 2 * H :]) if rec else np.zeros((N, H), dt)
            n = np.tanh(ax[:, 2 * H :] + rh)
        h = z * n + (1 - z) * h if variant == "book" else (1 - z) * n + z * h
        gates[:, t, : 3 * H] = np.concatenate([z, r, n], axis=1)
        hs[:, t] = h
    return hs, h.copy(), GRUCacheRef(xs, h0_, Wx, Wh, b_hn, hs, gates, variant)


def gru_backward_ref(dhs, cache: GRUCacheRef, dhT=None):
    """Reference GRU backward. Returns dxs, dh0, dWx, dWh, db and db_hn (None unless
    reset_after)."""
    xs, h0, Wx, Wh, b_hn, hs, gates, variant = cache
    N, T, D = xs.shape
    H = Wh.shape[0]
    dt = xs.dtype
    after = variant == "reset_after"
    dh_next = np.zeros((N, H), dt) if dhT is None else dhT.astype(dt, copy=True)
    dxs = np.empty((N, T, D), dt)
    dWx, dWh, db = np.zeros_like(Wx), np.zeros_like(Wh), np.zeros(3 * H, dt)
    db_hn = np.zeros(H, dt) if after else None
    for t in reversed(range(T)):
        z, r, n = gates[:, t, :H], gates[:, t, H : 2 * H], gates[:, t, 2 * H : 3 * H]
        h_prev = hs[:, t - 1] if t > 0 else h0
        dh = dhs[:, t] + dh_next
        if variant == "book":
            dn, dz, direct = dh * z, dh * (n - h_prev), dh * (1 - z)
        else:
            dn, dz, direct = dh * (1 - z), dh * (h_prev - n), dh * z
        dna = dn * (1 - n * n)
        dza = dz * z * (1 - z)
        if after:
            hn = gates[:, t, 3 * H :]
            dra = dna * hn * r * (1 - r)
            da_h = np.concatenate([dza, dra, dna * r], axis=1)
            dh_next = _mm(da_h, Wh.T) + direct
            dWh += _mm(h_prev.T, da_h)
            db_hn += (dna * r).sum(axis=0)
        else:
            drh = _mm(dna, Wh[:, 2 * H :].T)
            dra = drh * h_prev * r * (1 - r)
            dzr = np.concatenate([dza, dra], axis=1)
            dh_next = _mm(dzr, Wh[:, : 2 * H].T) + drh * r + direct
            dWh[:, : 2 * H] += _mm(h_prev.T, dzr)
            dWh[:, 2 * H :] += _mm((r * h_prev).T, dna)
        da_x = np.concatenate([dza, dra, dna], axis=1)
        dWx += _mm(xs[:, t].T, da_x)
        db += da_x.sum(axis=0)
        dxs[:, t] = _mm(da_x, Wx.T)
    return dxs, dh_next, dWx, dWh, db, db_hn


def clip_value_ref(grads: Sequence[np.ndarray], limit: float) -> None:
    """Clipping by value in place (module docstring)."""
    for g in grads:
        np.clip(g, -g.dtype.type(limit), g.dtype.type(limit), out=g)


def global_norm_ref(grads: Sequence[np.ndarray]) -> float:
    """sqrt of the sum of squares of every element of every array, accumulated in float64."""
    total = 0.0
    for g in grads:
        g64 = np.asarray(g, dtype=np.float64).ravel()
        total += float(g64 @ g64)
    return float(np.sqrt(total))


def clip_rate(total: float, max_norm: float) -> float:
    """The clipping factor (common/clip_rule.h): the arrays are multiplied by it when it is < 1."""
    return max_norm / (total + 1e-6)


def clip_rate_checked(total: float, max_norm: float) -> float:
    """``clip_rate`` of a norm computed elsewhere (the trainer's and the data-parallel steps, which
    apply the factor inside the update): FloatingPointError when the norm is NaN or inf."""
    if not np.isfinite(total):
        raise FloatingPointError(f"grads: the global norm is {total} (NaN or inf in the gradients); "
                                 "nothing was scaled")
    return clip_rate(total, max_norm)


def clip_grads_ref(grads: Sequence[np.ndarray], max_norm: float,
                   error_if_nonfinite: bool = True) -> float:
    """DLfS2's ``clip_grads``: scale every array in place by ``max_norm / (total + 1e-6)`` when
    that rate is below 1. Returns the total norm before clipping."""
    total = global_norm_ref(grads)
    if not np.isfinite(total):
        if error_if_nonfinite:
            raise FloatingPointError(f"grads: the global norm is {total}; nothing was scaled")
        return total
    rate = clip_rate(total, max_norm)
    if rate < 1:
        for g in grads:  # in double, rounded once: a float32 rate could underflow to 0
            np.multiply(g, np.float64(rate), out=g, dtype=np.float64)
    return total


def softmax_cross_entropy_ref(scores: np.ndarray, labels: np.ndarray, ignore_label: int = -1,
                              need_grad: bool = True):
    """Mean of ``-log softmax(scores[m])[labels[m]]`` over rows whose label is not
    ``ignore_label`` (0 when there are none), and its gradient with respect to scores:
    ``(softmax - onehot) / count`` on those rows, 0 on ignored rows. scores: (M, V)."""
    M, V = scores.shape
    use = labels != ignore_label
    count = int(use.sum())
    t = np.where(use, labels, 0)
    m = scores.max(axis=1, keepdims=True)
    e = np.exp(scores.astype(np.float64) - m)
    s = e.sum(axis=1, keepdims=True)
    lse = np.log(s[:, 0]) + m[:, 0]
    loss = float(((lse - scores[np.arange(M), t]) * use).sum() / max(count, 1))
    if not need_grad:
        return loss, None
    d = e / s
    d[np.arange(M), t] -= 1.0
    d *= (use / max(count, 1))[:, None]
    return loss, d.astype(scores.dtype)


def _walk_steps(lengths, N: int, T: int, reverse: bool):
    """For each sequence: its time indices in walk order, and whether it starts after the walk's
    first step (reversed and shorter than the longest)."""
    lens = [T] * N if lengths is None else [int(v) for v in lengths]
    longest = max(lens)
    for L in lens:
        idx = np.arange(L)[::-1] if reverse else np.arange(L)
        yield idx, reverse and L < longest


def walk_forward_ref(forward, xs, h0, c0, H: int, lengths=None, reverse=False):
    """``forward(xs, h0, c0) -> (hs, hT, cT, saved)`` (cT None without a cell state, saved a
    tuple of (1, L, W) arrays; H the hidden size) run per sequence as the lengths and direction
    say. Returns hs, hT, cT and the saved arrays laid out like hs (zeros in the padding)."""
    N, T, _ = xs.shape
    dt = xs.dtype
    hs = hT = cT = None
    saved = []
    for n, (idx, mid) in enumerate(_walk_steps(lengths, N, T, reverse)):
        h0n = h0[n:n + 1] if h0 is not None else (np.zeros((1, H), dt) if mid else None)
        c0n = None if c0 is None else c0[n:n + 1]
        hs_n, hT_n, cT_n, sv = forward(np.ascontiguousarray(xs[n:n + 1, idx]), h0n, c0n)
        if hs is None:
            H = hs_n.shape[2]
            hs, hT = np.zeros((N, T, H), dt), np.zeros((N, H), dt)
            cT = None if cT_n is None else np.zeros((N, H), dt)
            saved = [np.zeros((N, T, a.shape[2]), dt) for a in sv]
        hs[n, idx], hT[n] = hs_n[0], hT_n[0]
        if cT is not None:
            cT[n] = cT_n[0]
        for out, a in zip(saved, sv):
            out[n, idx] = a[0]
    return hs, hT, cT, tuple(saved)


def walk_backward_ref(backward, xs, h0, c0, dhs, dhT, dcT, arrays, lengths=None, reverse=False):
    """``backward(xs, h0, c0, arrays, dhs, dhT, dcT) -> (dxs, dh0, dc0, *weight grads)`` (dc0
    None without a cell state; ``arrays`` the sequence's slices of the saved (N, T, *) arrays)
    run per sequence as the lengths and direction say; the weight gradients are summed over
    sequences. Returns dxs (zeros in the padding), dh0, dc0 and the summed weight gradients."""
    N, T, _ = xs.shape
    H = dhs.shape[2]
    dt = xs.dtype
    dxs = np.zeros(xs.shape, dt)
    dh0 = np.zeros((N, H), dt)
    dc0 = None
    sums = None
    for n, (idx, mid) in enumerate(_walk_steps(lengths, N, T, reverse)):
        h0n = h0[n:n + 1] if h0 is not None else (np.zeros((1, H), dt) if mid else None)
        c0n = None if c0 is None else c0[n:n + 1]
        rows = [np.ascontiguousarray(a[n:n + 1, idx]) for a in arrays]
        out = backward(np.ascontiguousarray(xs[n:n + 1, idx]), h0n, c0n, rows,
                       np.ascontiguousarray(dhs[n:n + 1, idx]), None if dhT is None else dhT[n:n + 1],
                       None if dcT is None else dcT[n:n + 1])
        dxs[n, idx], dh0[n] = out[0][0], out[1][0]
        if out[2] is not None:
            if dc0 is None:
                dc0 = np.zeros((N, H), dt)
            dc0[n] = out[2][0]
        grads = out[3:]
        sums = [None if g is None else g.copy() for g in grads] if sums is None else [
            None if s_ is None else s_ + g for s_, g in zip(sums, grads)]
    return (dxs, dh0, dc0, *sums)
