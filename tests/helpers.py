"""Shared test helpers: seeded LSTM inputs and a comparison that names what failed and where."""

from __future__ import annotations

import numpy as np

import pylstm
from pylstm import _backend

# The backends that run compiled kernels: the CPU module, a real GPU ("cuda", CuPy arrays) when
# one is visible, and the CUDA sources run on the CPU through the emulation shim (csrc/cuda/emu.h).
KERNEL_BACKENDS = [b for b in pylstm.available_backends() if b != "numpy"]
if _backend.cuda_emu is not None:
    KERNEL_BACKENDS.append("cuda-emu")

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


def assert_within_twice_naive(got: dict, want: dict, naive: dict, tag: str = "") -> None:
    """The float32 rule (ARCHITECTURE.md, "Tests and error rules"): each tensor of a float32
    kernel run within twice the error of the reference run in float32 (``naive``), both against
    the float64 reference (``want``), plus a few ulp where the naive sum is nearly exact; and
    still float32."""
    eps32 = float(np.finfo(np.float32).eps)
    for name in want:
        err, naive_err = max_rel_error(got[name], want[name]), max_rel_error(naive[name], want[name])
        assert err <= 2 * naive_err + 4 * eps32, f"{tag}{name}: {err:.3e} > 2 x naive {naive_err:.3e} + 4 eps"
        assert got[name].dtype == np.float32, f"{tag}{name}: dtype {got[name].dtype}"


def assert_matches_finite_differences(loss, d: dict, grads: dict, eps: float = 1e-6, rtol: float = 1e-6) -> None:
    """Each ``grads[name]`` against central differences of ``loss(**{name: perturbed})`` over
    every element of ``d[name]`` (float64: truncation ~eps^2, rounding ~1e-16/eps)."""
    for name, g in grads.items():
        num = np.zeros_like(g)
        for idx in np.ndindex(g.shape):
            plus, minus = d[name].copy(), d[name].copy()
            plus[idx] += eps
            minus[idx] -= eps
            num[idx] = (loss(**{name: plus}) - loss(**{name: minus})) / (2 * eps)
        assert_close(f"d{name}", g, num, rtol=rtol)


def assert_same_at_thread_counts(run, counts=(1, 2, 3)) -> None:
    """``run()`` (a dict of arrays) gives bitwise the same results at every thread count."""
    old = pylstm.get_num_threads()
    try:
        runs = []
        for n in counts:
            pylstm.set_num_threads(n)
            runs.append(run())
    finally:
        pylstm.set_num_threads(old)
    for r in runs[1:]:
        for name in runs[0]:
            np.testing.assert_array_equal(r[name], runs[0][name], err_msg=name)
