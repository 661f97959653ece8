"""Gradient flow through time (DLfS2 ch. 6.1): how the gradient of a loss on the last step's h
shrinks or grows as it travels back through a vanilla RNN and through an LSTM.

For a sequence of T random inputs and a loss ``L = <u, h_{T-1}>`` (u random), the norm of
``dL/dh_{T-1-k}`` is measured for k = 0 .. T-1 steps back, with the fused kernels themselves:
the backward pass over the last k steps, started from the forward pass's state at T-1-k, returns
exactly that gradient as dh0 (and, for the LSTM, ``dL/dc_{T-1-k}`` as dc0: the cell path).
The RNN runs with its recurrent weights ``Wh = scale * randn(H, H) / sqrt(H)`` for each scale,
as the book scales them (small: vanishing; large: explosion, bounded here by tanh's saturation);
the LSTM with the book's initialization and a forget-gate bias of 0 (the book's) and of 3 (an
open forget gate: the cell path dc carries the gradient back, multiplied elementwise by f, not
by a matrix). Norms are per sequence, averaged over the batch.

Run: ``pylstm gradflow [--steps T] [--hidden H] [--scales 0.5 1 2] [--out gradflow.png]``.
"""

from __future__ import annotations

import numpy as np

from . import functional as F

__all__ = ["gradient_norms", "plot_gradient_norms", "main_gradflow"]


def _norm(a: np.ndarray) -> float:
    return float(np.linalg.norm(a, axis=1).mean())


def gradient_norms(steps: int = 50, hidden: int = 64, batch: int = 4, scales=(0.5, 1.0, 2.0),
                   forget_biases=(0.0, 3.0), seed: int = 0, backend: str = "auto") -> dict:
    """Norms of the gradient k steps back, k = 0 .. steps-1.

    Returns
    -------
    dict of name -> float64 array (steps,): ``"rnn Wh x{scale}"`` for each scale, and for each
    forget-gate bias ``"lstm dh, b_f={bias}"`` and ``"lstm dc, b_f={bias}"`` (the cell state's
    path).
    """
    if steps < 1 or hidden < 1 or batch < 1:
        raise ValueError(f"steps, hidden and batch must be >= 1, got {steps}, {hidden}, {batch}")
    rng = np.random.default_rng(seed)
    N, T, D, H = batch, steps, hidden, hidden
    xs = rng.standard_normal((N, T, D))
    u = rng.standard_normal((N, H))
    out = {}
    for scale in scales:
        if not np.isfinite(scale) or scale <= 0:
            raise ValueError(f"scales must be finite numbers > 0, got {scale}")
        Wx = rng.standard_normal((D, H)) / np.sqrt(D)
        Wh = scale * rng.standard_normal((H, H)) / np.sqrt(H)
        b = np.zeros(H)
        hs, _, _ = F.rnn_forward(xs, Wx, Wh, b, backend=backend)
        norms = np.empty(T)
        for k in range(T):  # dL/dh_{T-1-k}: backward over steps T-k .. T-1 from h_{T-1-k}
            if k == 0:
                norms[k] = _norm(u)
                continue
            sub = np.ascontiguousarray(xs[:, T - k:])
            h0 = np.ascontiguousarray(hs[:, T - 1 - k])
            _, _, cache = F.rnn_forward(sub, Wx, Wh, b, h0, backend=backend)
            dh0 = F.rnn_backward(np.zeros((N, k, H)), cache, dhT=u)[1]
            norms[k] = _norm(dh0)
        out[f"rnn Wh x{scale:g}"] = norms
    Wx = rng.standard_normal((D, 4 * H)) / np.sqrt(D)
    Wh = rng.standard_normal((H, 4 * H)) / np.sqrt(H)
    for fb in forget_biases:
        b = np.zeros(4 * H)
        b[:H] = fb  # the forget gate's block (f, g, i, o): an open gate keeps the cell path
        hs, _, _, cache = F.lstm_forward(xs, Wx, Wh, b, backend=backend)
        cs = cache.cs
        dh_norms, dc_norms = np.empty(T), np.empty(T)
        for k in range(T):
            if k == 0:
                dh_norms[k], dc_norms[k] = _norm(u), 0.0
                continue
            sub = np.ascontiguousarray(xs[:, T - k:])
            h0 = np.ascontiguousarray(hs[:, T - 1 - k])
            c0 = np.ascontiguousarray(cs[:, T - 1 - k])
            _, _, _, c = F.lstm_forward(sub, Wx, Wh, b, h0, c0, backend=backend)
            _, dh0, dc0, _, _, _ = F.lstm_backward(np.zeros((N, k, H)), c, dhT=u)
            dh_norms[k], dc_norms[k] = _norm(dh0), _norm(dc0)
        out[f"lstm dh, b_f={fb:g}"] = dh_norms
        out[f"lstm dc, b_f={fb:g}"] = dc_norms
    return out


def plot_gradient_norms(norms: dict, path: str) -> str:
    """A PNG of every curve against the steps back, log scale (needs matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError("the plot needs matplotlib: pip install 'pylstm[plot]'") from exc
    fig, ax = plt.subplots(figsize=(6.5, 4.2), dpi=100)
    for name, v in norms.items():
        k = np.arange(len(v))
        keep = v > 0  # log scale: the cell path is 0 at k = 0, and a gradient can underflow
        ax.plot(k[keep], v[keep], label=name, linestyle="--" if name.startswith("lstm dc") else "-")
    ax.set_yscale("log")
    ax.set_xlabel("steps back in time (k)")
    ax.set_ylabel("mean ||dL/dh_{T-1-k}||")
    ax.set_title("gradient flow through time: vanilla RNN vs LSTM")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def main_gradflow(steps: int, hidden: int, scales, out: str, seed: int = 0) -> None:
    norms = gradient_norms(steps=steps, hidden=hidden, scales=tuple(scales), seed=seed)
    names = list(norms)
    shown = sorted({0, 1, 2, 5, 10, 20, 50, 100, 200, steps - 1} & set(range(steps)))
    print("steps back | " + " | ".join(names))
    for k in shown:
        print(f"{k:10d} | " + " | ".join(f"{norms[n][k]:.3e}" for n in names))
    try:
        print(f"plot: {plot_gradient_norms(norms, out)}")
    except ImportError as exc:
        print(f"plot skipped: {exc}")
