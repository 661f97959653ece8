"""Shared test helpers: seeded LSTM inputs and a comparison that names what failed and where."""

from __future__ import annotations

import numpy as np

# The shapes every backend is checked on: (N, T, D, H).
# (3, 4, 1000, 24): D + H = 1024, so the weight gradient's transposed operand has rows 4 KB apart
# and the packed-weight kernel copies it into tiles first (cpu/packed_gemm.cpp, pack_at);
# (40, 30, 8, 16): N*T = 1200 rows, more than one chunk of the weight-gradient GEMM
# (cpu/sequence.cpp, kPackRows).
SHAPES = [(1, 1, 1, 1), (2, 3, 4, 5), (3, 7, 17, 33), (8, 35, 64, 128), (4, 9, 40, 24), (13, 5, 40, 100),
          (3, 4, 1000, 24), (40, 30, 8, 16)]


def make_lstm_inputs(shape, dtype=np.float64, seed=0, with_state=True):
    """Random inputs: weights ~ N(0, 1)/sqrt(fan_in), non-zero h0/c0, random
    upstream gradients (never ones). Returns a dict of float64 arrays cast to dtype."""
    N, T, D, H = shape
    rng = np.random.default_rng(seed)
    d = {
        "xs": rng.standard_normal((N, T, D)),
        "Wx": rng.standard_normal((D, 4 * H)) / np.sqrt(D),
        "Wh": rng.standard_normal((H, 4 * H)) / np.sqrt(H),
        "b": rng.standard_normal(4 * H) * 0.5,
        "h0": rng.standard_normal((N, H)) if with_state else None,
        "c0": rng.standard_normal((N, H)) if with_state else None,
        "dhs": rng.standard_normal((N, T, H)),
        "dhT": rng.standard_normal((N, H)),
        "dcT": rng.standard_normal((N, H)),
    }
    return {k: (None if v is None else np.ascontiguousarray(v, dtype=dtype)) for k, v in d.items()}


def max_rel_error(got, want) -> float:
    """max |got - want| / max |want| (normwise relative error; 0 when both are zero)."""
    got = np.asarray(got, dtype=np.float64)
    want = np.asarray(want, dtype=np.float64)
    scale = np.abs(want).max() if want.size else 0.0
    err = np.abs(got - want).max() if want.size else 0.0
    return float(err / scale) if scale > 0 else float(err)


def assert_close(name, got, want, rtol):
    """Asserts max|got - want| <= rtol * max|want|; the message names the tensor, the max abs
    and relative errors and the index where the largest error occurs."""
    assert got.shape == want.shape, f"{name}: shape {got.shape} != expected {want.shape}"
    g = np.asarray(got, dtype=np.float64)
    w = np.asarray(want, dtype=np.float64)
    assert np.all(np.isfinite(g)), f"{name}: non-finite values at {np.argwhere(~np.isfinite(g))[:5]}"
    rel = max_rel_error(g, w)
    if rel > rtol:
        diff = np.abs(g - w)
        idx = np.unravel_index(np.argmax(diff), diff.shape)
        raise AssertionError(
            f"{name}: max rel error {rel:.3e} > {rtol:.1e}; max abs error {diff[idx]:.3e} at "
            f"index {idx} (got {g[idx]!r}, expected {w[idx]!r})"
        )


def to_device(a):
    """A host array copied to the GPU with CuPy (the tests' device library), None stays None."""
    import cupy

    return None if a is None else cupy.asarray(a)


def to_host(a):
    """A device array (CuPy) copied back to NumPy; NumPy arrays and scalars pass through."""
    if a is None or isinstance(a, (np.ndarray, np.generic, float)):
        return a
    import cupy

    return cupy.asnumpy(a)
