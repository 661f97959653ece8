"""Global-norm clipping: every backend against the book's semantics and the reference."""

import numpy as np
import pytest

import pylstm
from helpers import to_device, to_host
from pylstm import _backend
from pylstm import reference as ref

BACKENDS = pylstm.available_backends()
# The CUDA clipping kernels, run on the CPU through the emulation shim (csrc/cuda/emu.h).
if _backend.cuda_emu is not None:
    BACKENDS = BACKENDS + ["cuda-emu"]


def clip_grads(grads, max_norm, backend, **kw):
    """pylstm.clip_grads; for "cuda" on CuPy copies of grads, written back in place."""
    if backend != "cuda":
        return pylstm.clip_grads(grads, max_norm, backend=backend, **kw)
    dev = [to_device(g) for g in grads]
    try:
        return float(pylstm.clip_grads(dev, max_norm, backend=backend, **kw))
    finally:
        for g, d in zip(grads, dev):
            g[...] = to_host(d)


def global_norm(grads, backend):
    if backend != "cuda":
        return pylstm.global_norm(grads, backend=backend)
    return float(pylstm.global_norm([to_device(g) for g in grads], backend=backend))


@pytest.fixture(params=BACKENDS)
def backend(request):
    return request.param


def _grads(dtype, sizes, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(s) * scale).astype(dtype) for s in sizes]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_above_threshold_scales_every_array(backend, dtype):
    grads = _grads(dtype, [(7, 13), (100,), (3, 4, 5), (1,)], seed=1)
    expect = [g.copy() for g in grads]
    want_total = ref.clip_grads_ref(expect, 1.5)
    total = clip_grads(grads, 1.5, backend=backend)
    assert total == pytest.approx(want_total, rel=1e-12)
    for g, e in zip(grads, expect):
        np.testing.assert_allclose(g, e, rtol=4 * np.finfo(dtype).eps)
    assert global_norm(grads, backend=backend) == pytest.approx(1.5, rel=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_below_threshold_leaves_arrays_untouched(backend, dtype):
    grads = _grads(dtype, [(5, 6), (11,)], seed=2, scale=0.01)
    before = [g.copy() for g in grads]
    total = clip_grads(grads, 10.0, backend=backend)
    assert total == pytest.approx(ref.global_norm_ref(before), rel=1e-12)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, b)


def test_all_zero_grads(backend):
    grads = [np.zeros((4, 4), np.float32), np.zeros(9, np.float32)]
    assert clip_grads(grads, 1.0, backend=backend) == 0.0
    assert all((g == 0).all() for g in grads)


def test_empty_list_and_empty_arrays(backend):
    assert clip_grads([], 1.0, backend=backend) == 0.0
    assert global_norm([np.zeros(0), np.ones(4)], backend=backend) == 2.0


def test_one_huge_array(backend):
    # 3M elements: many chunks, several threads; the double accumulation keeps the sum exact
    # enough that float32 data does not lose the small contributions.
    rng = np.random.default_rng(3)
    g = rng.standard_normal(3_000_000).astype(np.float32)
    want = ref.global_norm_ref([g])
    assert global_norm([g], backend=backend) == pytest.approx(want, rel=1e-12)
    total = clip_grads([g], 1.0, backend=backend)
    assert total == pytest.approx(want, rel=1e-12)
    assert ref.global_norm_ref([g]) == pytest.approx(1.0, rel=1e-5)


def test_many_tiny_arrays(backend):
    grads = _grads(np.float64, [(1,)] * 500 + [(2, 1)] * 300, seed=4)
    want = [g.copy() for g in grads]
    want_total = ref.clip_grads_ref(want, 0.5)
    assert clip_grads(grads, 0.5, backend=backend) == pytest.approx(want_total, rel=1e-12)
    for g, w in zip(grads, want):
        np.testing.assert_allclose(g, w, rtol=1e-15)


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_nonfinite_raises_and_scales_nothing(backend, bad):
    grads = _grads(np.float32, [(10,), (3, 3)], seed=5, scale=100.0)
    grads[1][2, 1] = bad
    before = [g.copy() for g in grads]
    with pytest.raises(FloatingPointError, match=r"^grads: the global norm is (nan|inf)\b"):
        clip_grads(grads, 1.0, backend=backend)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, b)
    total = clip_grads(grads, 1.0, error_if_nonfinite=False, backend=backend)
    assert not np.isfinite(total)
    for g, b in zip(grads, before):
        np.testing.assert_array_equal(g, b)


def test_float32_overflow_in_squares_is_not_inf(backend):
    # 1e20^2 overflows float32 but not the float64 accumulator.
    g = np.full(4, 1e20, np.float32)
    assert global_norm([g], backend=backend) == pytest.approx(2e20, rel=1e-6)


def test_tuple_of_arrays_accepted(backend):
    grads = tuple(_grads(np.float64, [(3,), (4,)], seed=6, scale=10.0))
    clip_grads(grads, 1.0, backend=backend)
    assert ref.global_norm_ref(grads) == pytest.approx(1.0, rel=1e-6)


def test_global_norm_reads_read_only_arrays(backend):
    g = np.arange(4, dtype=np.float32)
    g.flags.writeable = False
    assert global_norm([g], backend=backend) == pytest.approx(np.sqrt(14.0))


def test_float32_rate_below_float32_range_does_not_zero_the_grads(backend):
    """max_norm / norm = 1e-9 / 6e38 underflows float32: the scaling runs in double."""
    g = [np.full(4, 3e38, np.float32)]
    clip_grads(g, 1e-9, backend=backend)
    assert ref.global_norm_ref(g) == pytest.approx(1e-9, rel=1e-5)


def test_masked_arrays_rejected(backend):
    g = np.ma.masked_array(np.ones(3), mask=[0, 1, 0])
    with pytest.raises(TypeError, match=r"^grads\[0\].*MaskedArray"):
        global_norm([g], backend=backend)


def test_clip_grads_survives_a_concurrent_re_view():
    """Another thread that re-views a gradient's buffer with a smaller itemsize while the norm
    runs (the GIL released) must not make the scaling pass write past the array: the spans are
    taken once, at validation. The gradient is the first half of a buffer whose second half is
    a guard that must stay untouched."""
    import threading
    import time

    n = 1 << 20
    buf = np.ones(2 * n, dtype=np.float32)
    g = buf[:n]
    stop = threading.Event()

    def flip():
        # sleep(0) hands the GIL over in each state, so the caller resumes from its GIL-free
        # norm pass with the array sometimes viewed as float16 (same buffer, twice the elements)
        while not stop.is_set():
            g.dtype = np.float16
            time.sleep(0)
            g.dtype = np.float32
            time.sleep(0)

    t = threading.Thread(target=flip)
    t.start()
    try:
        for _ in range(200):
            buf[:n] = 1.0
            try:
                pylstm.clip_grads([g], 1.0, backend="cpu")
            except TypeError:
                pass  # validated while it was float16: rejected, fine
            assert np.all(buf[n:] == 1.0), "clip_grads wrote past the end of grads[0]"
    finally:
        stop.set()
        t.join()


# --- clipping by value ----------------------------------------------------------------------
_VALUE_BACKENDS = ["numpy", "cpu"] + (["cuda-emu"] if _backend.cuda_emu is not None else [])


@pytest.mark.parametrize("backend", _VALUE_BACKENDS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_clip_by_value_clamps_in_place_and_keeps_nan(backend, dtype):
    rng = np.random.default_rng(0)
    grads = [(rng.standard_normal(70001) * 10).astype(dtype), (rng.standard_normal((3, 5)) * 10).astype(dtype),
             np.zeros(0, dtype), np.array([np.nan, np.inf, -np.inf, 4.999, -5.0, 7.0], dtype)]
    want = [np.clip(g, -5, 5) for g in grads]
    ids = [id(g) for g in grads]
    assert pylstm.clip_grads_by_value(grads, 5, backend=backend) is None
    assert [id(g) for g in grads] == ids
    for g, w in zip(grads, want):
        np.testing.assert_array_equal(g, w)  # NaN stays NaN, +-inf become +-5
    assert np.isnan(grads[3][0]) and grads[3][1] == 5 and grads[3][2] == -5
    pylstm.clip_grads_by_value([], 1.0, backend=backend)  # nothing to do


@pytest.mark.parametrize("backend", _VALUE_BACKENDS)
def test_clip_by_value_bad_input(backend):
    g = [np.ones(4, np.float32)]
    for bad in (0, -1.0, float("nan"), float("inf"), 10**400):
        with pytest.raises(ValueError, match="^limit must be a finite number > 0"):
            pylstm.clip_grads_by_value(g, bad, backend=backend)
    for bad in (True, "5", None):
        with pytest.raises(TypeError, match="^limit must be a number"):
            pylstm.clip_grads_by_value(g, bad, backend=backend)
    ro = np.ones(4, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match=r"^grads\[1\] must be writable"):
        pylstm.clip_grads_by_value([np.ones(3, np.float32), ro], 1.0, backend=backend)
    with pytest.raises(TypeError, match=r"^grads\[1\] has dtype float64"):
        pylstm.clip_grads_by_value([np.ones(3, np.float32), np.ones(3)], 1.0, backend=backend)
    assert np.all(g[0] == 1)  # nothing modified by a refused call


# --- weighted_sum: the data-parallel sum of the ranks' gradients in shared memory -----------------
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("k", [1, 2, 3, 5])
def test_weighted_sum_is_the_double_sum_rounded_once(dtype, k):
    rng = np.random.default_rng(k)
    n = 3 * (1 << 15) + 13  # several of the kernel's chunks and a ragged end
    ins = [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 4)).astype(dtype) for _ in range(k)]
    w = list(rng.uniform(0.1, 1.0, k))
    expect = sum(wi * x.astype(np.float64) for wi, x in zip(w, ins)).astype(dtype)  # (in input order)
    out = np.full(n, np.nan, dtype)
    ss = _backend.require_cpu().weighted_sum(out, ins, w)
    assert np.array_equal(out, expect)
    exact = float(np.sum(expect.astype(np.float64) ** 2))
    assert abs(ss - exact) <= 1e-13 * exact
    # out may be one of the inputs (each element read before it is written)
    alias = [x.copy() for x in ins]
    _backend.require_cpu().weighted_sum(alias[-1], alias, w)
    assert np.array_equal(alias[-1], expect)


def test_weighted_sum_checks_its_arguments():
    cpu = _backend.require_cpu()
    a, b = np.ones(8, np.float32), np.ones(8, np.float32)
    out = np.zeros(8, np.float32)
    with pytest.raises(ValueError, match=r"^inputs\[1\] has 7 elements, out has 8"):
        cpu.weighted_sum(out, [a, np.ones(7, np.float32)], [1.0, 1.0])
    with pytest.raises(TypeError, match="^inputs have dtype float64 but out has float32"):
        cpu.weighted_sum(out, [np.ones(8)], [1.0])
    with pytest.raises(ValueError, match="^weights must hold one number per input"):
        cpu.weighted_sum(out, [a, b], [1.0])
    with pytest.raises(ValueError, match="^inputs must hold at least one array"):
        cpu.weighted_sum(out, [], [])
    big = np.zeros(16, np.float32)
    with pytest.raises(ValueError, match=r"^inputs\[0\] overlaps out without being out"):
        cpu.weighted_sum(big[:8], [big[4:12]], [1.0])
    with pytest.raises(ValueError, match=r"^weights\[0\] must be finite"):
        cpu.weighted_sum(out, [a], [float("inf")])
    ro = np.zeros(8, np.float32)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="^out must be writable"):
        cpu.weighted_sum(ro, [a], [1.0])


def _lane_norm(arrays):
    """The CPU norm's order written out: per chunk of 2**15 elements, 8 running double sums
    (element i to lane i % 8), added pairwise, the chunks' sums in order."""
    total = 0.0
    for a in arrays:
        x = a.reshape(-1).astype(np.float64)
        for b in range(0, x.size, 1 << 15):
            chunk = x[b:b + (1 << 15)]
            m = chunk.size // 8 * 8
            lanes = np.cumsum((chunk[:m] ** 2).reshape(-1, 8), axis=0)[-1].copy() if m else np.zeros(8)
            for j, v in enumerate(chunk[m:]):
                lanes[j] += v * v
            for w in (4, 2, 1):
                lanes[:w] += lanes[w:2 * w]
            total += lanes[0]
    return float(np.sqrt(total))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cpu_norm_is_its_documented_sum_to_the_bit(dtype):
    """Whatever instruction set runs it (AVX-512 where there is one), with no operation fused:
    the same bits as the order written out."""
    rng = np.random.default_rng(3)
    arrays = [(rng.standard_normal(n) * 3).astype(dtype) for n in (5, 70001, 1 << 16, 333)]
    assert _backend.require_cpu().global_norm(arrays) == _lane_norm(arrays)
