"""Weight initializers of the three traditions pylstm's users come from, for every cell.

``init_recurrent(cell, D, H, scheme, rng)`` returns a layer's parameters in pylstm's layout
(``Wx (D, G*H)``, ``Wh (H, G*H)``, ``b (G*H,)``, and the cell's extra parameter: the peepholes'
``P (3, H)``, the GRU's ``b_hn (H,)``), float32:

- ``"book"`` (DLfS2): ``Wx ~ N(0, 1) / sqrt(D)``, ``Wh ~ N(0, 1) / sqrt(H)``, zero biases (and
  zero peepholes: training starts from the plain LSTM).
- ``"keras"`` (Keras ``LSTM`` / ``GRU`` defaults): ``Wx`` glorot_uniform (uniform(-a, a),
  ``a = sqrt(6 / (D + G*H))``), ``Wh`` orthogonal, zero biases but the LSTM's forget gate, which
  starts at 1 (``unit_forget_bias``). Keras draws the orthogonal matrix for the whole
  ``(H, G*H)`` recurrent kernel at once (its rows orthonormal: ``Wh @ Wh.T = I``), not per gate
  block as lmnt-com/haste does; this follows Keras. Peepholes get glorot_uniform of a vector
  (``a = sqrt(3 / H)``, as TensorFlow's peephole cell).
- ``"torch"`` (PyTorch ``nn.LSTM`` / ``nn.GRU`` / ``nn.RNN``): every parameter uniform(-k, k),
  ``k = 1 / sqrt(H)``.
"""

from __future__ import annotations

import numpy as np

__all__ = ["SCHEMES", "glorot_uniform", "orthogonal", "init_recurrent"]

SCHEMES = ("book", "keras", "torch")

def glorot_uniform(shape, rng: np.random.Generator) -> np.ndarray:
    """uniform(-a, a) with ``a = sqrt(6 / (fan_in + fan_out))`` (Keras's fans: the two axes of a
    matrix, the length twice for a vector), float64."""
    fan_in, fan_out = (shape[0], shape[0]) if len(shape) == 1 else (shape[0], shape[1])
    a = np.sqrt(6.0 / (fan_in + fan_out))
    return rng.uniform(-a, a, shape)


def orthogonal(rows: int, cols: int, rng: np.random.Generator) -> np.ndarray:
    """A (rows, cols) matrix with orthonormal rows (rows <= cols) or columns, from the QR
    decomposition of a Gaussian matrix with the signs fixed (uniform over the orthogonal
    group), float64."""
    a = rng.standard_normal((max(rows, cols), min(rows, cols)))
    q, r = np.linalg.qr(a)
    q *= np.sign(np.diag(r))
    return q.T if rows < cols else q


def init_recurrent(cell: str, D: int, H: int, scheme: str, rng: np.random.Generator) -> list:
    """One recurrent layer's parameters (module docstring), float32: [Wx, Wh, b] and the cell's
    extra parameter when it has one. ``cell``: a name of ``pylstm.models.MODEL_CELLS``."""
    from .models import MODEL_CELLS, _extra_shape  # (the cells' table; models imports this module)

    if cell not in MODEL_CELLS:
        raise ValueError(f"cell must be one of {sorted(MODEL_CELLS)}, got {cell!r}")
    if scheme not in SCHEMES:
        raise ValueError(f"init must be one of {SCHEMES} or a number a > 0 (uniform(-a, a)), got {scheme!r}")
    G = MODEL_CELLS[cell]
    extra = _extra_shape(cell, H)
    if scheme == "book":
        params = [rng.standard_normal((D, G * H)) * (1 / np.sqrt(D)),
                  rng.standard_normal((H, G * H)) * (1 / np.sqrt(H)), np.zeros(G * H)]
        if extra:
            params.append(np.zeros(extra))
    elif scheme == "keras":
        b = np.zeros(G * H)
        if cell in ("lstm", "peephole"):
            b[:H] = 1.0  # unit_forget_bias: the f block (pylstm's gate order f, g, i, o)
        params = [glorot_uniform((D, G * H), rng), orthogonal(H, G * H, rng), b]
        if cell == "peephole":
            params.append(np.stack([glorot_uniform((H,), rng) for _ in range(3)]))
        elif extra:
            params.append(np.zeros(extra))  # the GRU's recurrent bias (Keras: zeros)
    else:
        k = 1.0 / np.sqrt(H)
        params = [rng.uniform(-k, k, s) for s in ((D, G * H), (H, G * H), (G * H,)) + ((extra,) if extra else ())]
    return [np.ascontiguousarray(p, dtype=np.float32) for p in params]
