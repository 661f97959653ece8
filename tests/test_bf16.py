"""precision="bf16": the packed kernel's bfloat16 GEMMs against the product of the rounded
operands (float32 accumulation error), every cell's fused passes against the reference's
bfloat16 specification, and the bad inputs. The kernel needs AVX512-BF16; on other CPUs only
the refusals are tested."""

from __future__ import annotations

import numpy as np
import pytest
from test_walk import CELLS, backward, make_inputs

import pylstm
from helpers import max_rel_error
from pylstm import _backend
from pylstm import reference as ref

HAS_BF16 = _backend.cpu is not None and _backend.cpu._has_avx512_bf16()
needs_bf16 = pytest.mark.skipif(not HAS_BF16, reason="this CPU has no AVX512-BF16")
EPS32 = float(np.finfo(np.float32).eps)


@pytest.fixture(params=["vdpbf16ps", "amx"])
def bf16_kernel(request):
    """Each bfloat16 kernel the CPU has: AMX tiles (where the CPU and the OS allow them) and the
    AVX512-BF16 dot products."""
    if not HAS_BF16:
        pytest.skip("this CPU has no AVX512-BF16")
    old = _backend.cpu._set_amx_bf16(request.param == "amx")
    if request.param == "amx" and not _backend.cpu._amx_bf16_enabled():
        _backend.cpu._set_amx_bf16(old)
        pytest.skip("no AMX-BF16 on this CPU (or the OS refused the tile state)")
    yield request.param
    _backend.cpu._set_amx_bf16(old)


def test_bf16_rounding_is_to_nearest_even():
    one = 1.0
    x = np.array([one, one + 2**-8, one + 3 * 2**-9, one + 2**-9 + 2**-30, -(one + 2**-7 + 2**-8), 3.0e-3,
                  np.inf, -np.inf])
    want = np.array([one, one, one + 2**-7, one, -(one + 2**-6), 197 * 2.0**-16, np.inf, -np.inf])
    np.testing.assert_allclose(ref.bf16_round_ref(x), want, rtol=0)
    np.testing.assert_array_equal(ref.bf16_round_ref(x.astype(np.float32)), want.astype(np.float32))
    assert np.isnan(ref.bf16_round_ref(np.array([np.nan]))).all()


def test_reference_rounding_is_the_kernels_bit_rule():
    """bf16_round_ref on float32 is common/bf16.h's rule bit for bit (add 0x7FFF plus the kept
    lowest bit, truncate; NaN stays a quiet NaN) over random bit patterns and the edges: ties,
    subnormals (a fixed step of 2^-133), the largest finite values (rounding up to inf), inf."""
    rng = np.random.default_rng(9)
    edges = [0x00000001, 0x00008000, 0x00018000, 0x007F8000, 0x007FFFFF, 0x00800000, 0x7F7F7FFF, 0x7F7F8000,
             0x7F7FFFFF, 0xFF7FFFFF, 0x7F800000, 0xFF800000, 0x80000001, 0x3F808000, 0x3F818000, 0x3F80FFFF]
    bits = np.concatenate([rng.integers(0, 2**32, 200_000, dtype=np.uint64).astype(np.uint32),
                           np.array(edges, np.uint32)])
    u = bits.astype(np.uint64)
    want = ((u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000).astype(np.uint32)
    got = ref.bf16_round_ref(bits.view(np.float32)).view(np.uint32)
    nan = (bits & 0x7FFFFFFF) > 0x7F800000
    np.testing.assert_array_equal(got[~nan], want[~nan])
    assert np.isnan(got[nan].view(np.float32)).all()


@needs_bf16
@pytest.mark.parametrize("M,K,N", [(1, 1, 3), (7, 5, 16), (20, 650, 130), (100, 1025, 50), (130, 1301, 33),
                                   (33, 2100, 17), (64, 64, 48), (8, 2, 48),
                                   # short K: column blocks walked by 32-row blocks, a padded last step
                                   (700, 100, 1000), (300, 250, 700)])
@pytest.mark.parametrize("trans_a", [False, True])
@pytest.mark.parametrize("pack_rows", [False, True])
@pytest.mark.parametrize("accumulate", [False, True])
def test_packed_gemm_is_the_product_of_the_rounded_operands(bf16_kernel, M, K, N, trans_a, pack_rows, accumulate):
    rng = np.random.default_rng(M * 7 + K)
    A = rng.standard_normal((K, M) if trans_a else (M, K)).astype(np.float32)
    B = rng.standard_normal((K, N)).astype(np.float32)
    got = _backend.cpu._packed_gemm(A, B, trans_a, pack_rows, accumulate, "bf16")
    A64 = ref.bf16_round_ref(A.astype(np.float64))
    A64 = A64.T if trans_a else A64
    B64 = ref.bf16_round_ref(B.astype(np.float64))
    want = A64 @ B64 + (1.0 if accumulate else 0.0)
    # float32 sums of at most 128 products (AMX: 512), then the partial sums (packed_gemm*.cpp)
    run = 128 if bf16_kernel == "vdpbf16ps" else 512
    bound = (run + K / run + 4) * EPS32 * (np.abs(A64) @ np.abs(B64) + (1.0 if accumulate else 0.0))
    assert np.all(np.abs(got - want) <= bound), float(np.max(np.abs(got - want) / bound))
    # and it is not the float32 product: the operands really are rounded
    if K >= 64:
        full = (A.T if trans_a else A).astype(np.float64) @ B.astype(np.float64) + (1.0 if accumulate else 0.0)
        assert max_rel_error(got, full) > 100 * max_rel_error(got, want)


def _forward(cell, d, backend, precision, lengths=None, reverse=False):
    kw = dict(backend=backend, lengths=lengths, reverse=reverse, precision=precision)
    xs, Wx, Wh, b, h0, c0, P = (d[k] for k in ("xs", "Wx", "Wh", "b", "h0", "c0", "P"))
    if cell.endswith("_torch"):  # PyTorch's gate order
        kw["gate_order"] = "torch"
        cell = cell[:-len("_torch")]
    if cell == "lstm":
        return pylstm.lstm_forward(xs, Wx, Wh, b, h0, c0, **kw)
    if cell == "peephole":
        return pylstm.peephole_forward(xs, Wx, Wh, b, P, h0, c0, **kw)
    if cell.startswith("gru"):
        variant = {"gru": "reset_after", "gru_reset_before": "reset_before", "gru_book": "book"}[cell]
        hs, hT, cache = pylstm.gru_forward(xs, Wx, Wh, b, P, h0, variant=variant, **kw)
        return hs, hT, None, cache
    hs, hT, cache = pylstm.rnn_forward(xs, Wx, Wh, b, h0, nonlinearity=cell[4:], **kw)
    return hs, hT, None, cache


def _run(cell, d, backend, precision, lengths=None, reverse=False):
    hs, hT, cT, cache = _forward(cell, d, backend, precision, lengths, reverse)
    out = {"hs": hs, "hT": hT, **backward(cell, d, cache)}
    if cT is not None:
        out["cT"] = cT
    return {k: np.asarray(v) for k, v in out.items()}


def _spec(cell, d64, lengths=None, reverse=False):
    """The float64 specification of the bfloat16 passes."""
    with ref.bf16_gemms():
        return _run(cell, d64, "numpy", "fp32", lengths, reverse)


@needs_bf16
@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("shape", [(3, 4, 33, 7), (12, 9, 17, 40), (20, 35, 64, 96)])
def test_kernels_follow_the_bf16_specification(bf16_kernel, cell, shape):
    """Every tensor of the bf16 kernels is closer to the bfloat16 specification (float64 sums of
    the rounded operands' products) than that specification is to float32's: the only extra
    error is float32 accumulation, and the occasional operand that rounds to the neighbouring
    bfloat16 value because its float32 value differs in the last bits from float64's (the naive
    float32 run of the specification shows the same)."""
    d32 = make_inputs(cell, *shape, np.float32, seed=2)
    d64 = {k: None if v is None else v.astype(np.float64) for k, v in d32.items()}
    got, spec, fp32 = _run(cell, d32, "cpu", "bf16"), _spec(cell, d64), _run(cell, d64, "numpy", "fp32")
    for name in spec:
        assert got[name].dtype == np.float32
        gap = max_rel_error(spec[name], fp32[name])
        err = max_rel_error(got[name], spec[name])
        assert gap > 1e-4, f"{name}: the specification is not bfloat16's ({gap:.1e} from float32's)"
        assert err <= 0.75 * gap, f"{cell} {name}: {err:.2e} from the spec, which is {gap:.2e} from float32"


@needs_bf16
@pytest.mark.parametrize("cell", CELLS)
def test_one_step_matches_the_specification_to_float32_error(bf16_kernel, cell):
    """At T = 1 the forward's operands are the inputs themselves: rounded alike, so the kernel is
    the specification to within twice the float32 run's error."""
    d32 = make_inputs(cell, 5, 1, 24, 40, np.float32, seed=3)
    d64 = {k: None if v is None else v.astype(np.float64) for k, v in d32.items()}
    got, spec = _run(cell, d32, "cpu", "bf16"), _spec(cell, d64)
    with ref.bf16_gemms():
        naive = _run(cell, d32, "numpy", "fp32")
    for name in ("hs", "hT") + (("cT",) if "cT" in spec else ()):
        err, nerr = max_rel_error(got[name], spec[name]), max_rel_error(naive[name], spec[name])
        assert err <= 2 * nerr + 4 * EPS32, f"{cell} {name}: {err:.2e} > 2 x {nerr:.2e}"


@needs_bf16
@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_reset_before", "rnn_tanh"])
def test_lengths_reverse_and_schedules_in_bf16(bf16_kernel, cell, cpu_path):
    if cpu_path == "blas":
        with pytest.raises(RuntimeError, match="needs the packed-weight kernel"):
            _run(cell, make_inputs(cell, 3, 4, 5, 6, np.float32), "cpu", "bf16")
        return
    L = np.array([9, 2, 9, 4, 7, 1, 9, 3, 5, 8, 6, 9])
    d32 = make_inputs(cell, 12, 9, 17, 40, np.float32, seed=4)
    d64 = {k: None if v is None else v.astype(np.float64) for k, v in d32.items()}
    for reverse in (False, True):
        got, spec = _run(cell, d32, "cpu", "bf16", L, reverse), _spec(cell, d64, L, reverse)
        fp32 = _run(cell, d64, "numpy", "fp32", L, reverse)
        for name in spec:
            assert max_rel_error(got[name], spec[name]) <= 0.75 * max_rel_error(spec[name], fp32[name]), name


@needs_bf16
def test_float32_results_do_not_change():
    """precision="fp32" (the default) is the float32 kernel, bit for bit."""
    d = make_inputs("lstm", 4, 6, 16, 32, np.float32, seed=5)
    a = _run("lstm", d, "cpu", "fp32")
    hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"])
    b = {"hs": hs, "hT": hT, "cT": cT, **backward("lstm", d, cache)}
    for name in a:
        np.testing.assert_array_equal(a[name], b[name], err_msg=name)
    assert cache.precision == "fp32"


def test_bad_precision():
    d32 = make_inputs("lstm", 2, 3, 4, 5, np.float32)
    d64 = make_inputs("lstm", 2, 3, 4, 5, np.float64)
    for backend in ("numpy", "cpu"):
        with pytest.raises(ValueError, match=r"^precision must be one of 'fp32', 'bf16', got 'fp16'"):
            _forward("lstm", d32, backend, "fp16")
        with pytest.raises(ValueError, match="^precision: 'bf16' applies to float32 arrays, but xs is float64"):
            _forward("lstm", d64, backend, "bf16")
        with pytest.raises(TypeError, match="^precision must be one of"):
            _forward("lstm", d32, backend, None)
    if _backend.cuda_emu is not None:  # the same rules on the device path, before any allocation
        with pytest.raises(ValueError, match=r"^precision must be one of 'fp32', 'bf16', got 'fp16'"):
            _forward("lstm", d32, "cuda-emu", "fp16")
        with pytest.raises(ValueError, match="^precision: 'bf16' applies to float32 arrays, but xs is float64"):
            _forward("lstm", d64, "cuda-emu", "bf16")
    if not HAS_BF16:
        with pytest.raises(RuntimeError, match="needs a CPU with AVX512-BF16"):
            _forward("lstm", d32, "cpu", "bf16")


needs_emu = pytest.mark.skipif(_backend.cuda_emu is None, reason="built without the CUDA emulation")


@needs_emu
@pytest.mark.parametrize("cell", CELLS)
def test_emulated_cuda_follows_the_bf16_specification(cell):
    """The CUDA driver's bfloat16 GEMMs (operands converted as cublasGemmEx takes them, the
    weights once per call), emulated: the same specification and bound as the CPU kernels', with
    lengths and in both directions."""
    L = np.array([9, 2, 9, 4, 7, 1])
    d32 = make_inputs(cell, 6, 9, 17, 40, np.float32, seed=7)
    d64 = {k: None if v is None else v.astype(np.float64) for k, v in d32.items()}
    for lengths, reverse in ((None, False), (L, False), (L, True)):
        got, spec = _run(cell, d32, "cuda-emu", "bf16", lengths, reverse), _spec(cell, d64, lengths, reverse)
        fp32 = _run(cell, d64, "numpy", "fp32", lengths, reverse)
        for name in spec:
            assert got[name].dtype == np.float32
            gap, err = max_rel_error(spec[name], fp32[name]), max_rel_error(got[name], spec[name])
            assert gap > 1e-4, f"{name}: the specification is not bfloat16's ({gap:.1e} from float32's)"
            assert err <= 0.75 * gap, f"{cell} {name}: {err:.2e} from the spec, which is {gap:.2e} from float32"


@needs_emu
def test_emulated_cuda_bf16_needs_its_scratch():
    """A bfloat16 call's workspace holds the converted operands: a float32-sized one is refused by
    name, and the reported sizes grow by the scratch."""
    mod = _backend.cuda_emu
    assert mod.forward_workspace_size(4, 5, 6, 7, True, precision="bf16") > mod.forward_workspace_size(4, 5, 6, 7, True)
    assert mod.backward_workspace_size(4, 5, 6, 7, precision="bf16") > mod.backward_workspace_size(4, 5, 6, 7)
    with pytest.raises(ValueError, match="^precision must be one of"):
        mod.backward_workspace_size(4, 5, 6, 7, precision="fp16")
    d = make_inputs("lstm", 4, 5, 6, 7, np.float32)
    hs, hT, cT, cache = pylstm.lstm_forward(d["xs"], d["Wx"], d["Wh"], d["b"], d["h0"], d["c0"],
                                            backend="cuda-emu", precision="bf16")
    assert cache.precision == "bf16"
    N, T, D, H = 4, 5, 6, 7
    from pylstm._devices import EmuDeviceArray as Dev

    z = lambda *shape: Dev(np.zeros(shape, np.float32))  # noqa: E731
    small = z(mod.backward_workspace_size(N, T, D, H))
    args = [Dev(d[k]) for k in ("xs", "h0", "c0", "Wx", "Wh", "b")] + [Dev(hs), Dev(cache.gates), Dev(cache.cs)]
    outs = [z(N, T, D), z(N, H), z(N, H), z(D + H, 4 * H), z(4 * H)]
    with pytest.raises(ValueError, match="^work must have at least"):
        mod.backward(*args, Dev(d["dhs"]), None, None, *outs, small, precision="bf16")
    mod.backward(*args, Dev(d["dhs"]), None, None, *outs, z(mod.backward_workspace_size(N, T, D, H, precision="bf16")),
                 precision="bf16")


@needs_emu
def test_emulated_cuda_bf16_refuses_a_device_before_ampere():
    mod = _backend.cuda_emu
    d = make_inputs("lstm", 2, 3, 4, 5, np.float32)
    mod._set_compute_capability(75)
    try:
        with pytest.raises(RuntimeError, match=r"^precision='bf16' on the GPU needs compute capability 8.0 or "
                                               r"newer .*device 0 has 7.5: use precision='fp32'"):
            _forward("lstm", d, "cuda-emu", "bf16")
        _forward("lstm", d, "cuda-emu", "fp32")  # (float32 runs anywhere)
    finally:
        mod._set_compute_capability(90)
    _forward("lstm", d, "cuda-emu", "bf16")


@pytest.mark.cuda
def test_gpu_bf16_passes_and_matmul_follow_the_specification():
    """On a GPU: the cublasGemmEx path against the specification (as the emulation is checked),
    and the device matmul's bfloat16 operands (CuPy)."""
    cupy = pytest.importorskip("cupy")
    d32 = make_inputs("lstm", 6, 9, 17, 40, np.float32, seed=7)
    d64 = {k: None if v is None else v.astype(np.float64) for k, v in d32.items()}
    dev = {k: None if v is None else cupy.asarray(v) for k, v in d32.items()}
    got = {k: cupy.asnumpy(v) for k, v in _run("lstm", dev, "cuda", "bf16").items()}
    spec, fp32 = _spec("lstm", d64), _run("lstm", d64, "numpy", "fp32")
    for name in spec:
        assert max_rel_error(got[name], spec[name]) <= 0.75 * max_rel_error(spec[name], fp32[name]), name
    rng = np.random.default_rng(8)
    a, b = rng.standard_normal((37, 70)).astype(np.float32), rng.standard_normal((70, 53)).astype(np.float32)
    r = cupy.asnumpy(pylstm.matmul(cupy.asarray(a), cupy.asarray(b), precision="bf16"))
    A64, B64 = ref.bf16_round_ref(a.astype(np.float64)), ref.bf16_round_ref(b.astype(np.float64))
    assert np.all(np.abs(r - A64 @ B64) <= 74 * EPS32 * (np.abs(A64) @ np.abs(B64)))
    with pytest.raises(TypeError, match=r"^b must have dtype float32 \(the dtype of a\), got float64"):
        pylstm.matmul(cupy.asarray(a), cupy.asarray(b, dtype=np.float64))


def test_model_precision_is_a_run_setting(tmp_path):
    from pylstm.models import LstmLM, load_checkpoint

    xs = np.random.default_rng(6).integers(0, 50, (4, 6))
    ts = np.roll(xs, -1, axis=1)
    model = LstmLM(50, 16, 32, num_layers=2, seed=1)
    loss32 = model.forward(xs, ts, train_flg=False)
    with pytest.raises(ValueError, match=r"^precision must be one of \('fp32', 'bf16'\), got 'fp16'"):
        model.set_precision("fp16")
    if not HAS_BF16:
        with pytest.raises(RuntimeError, match="needs a CPU with AVX512-BF16"):
            model.set_precision("bf16")
        return
    model.set_precision("bf16")
    assert all(layer.precision == "bf16" for layer in model.lstm_layers + [model.layers[-1]])
    loss16 = model.forward(xs, ts, train_flg=False)
    assert loss16 != loss32 and abs(loss16 - loss32) < 1e-2 * loss32  # rounded operands, same model
    model.forward(xs, ts)
    model.backward()
    assert all(np.isfinite(g).all() for g in model.grads)
    path = str(tmp_path / "m.npz")
    model.save(path)
    again = load_checkpoint(path)[0]  # (precision is not stored: the model comes back float32)
    assert again.precision == "fp32"
    assert again.forward(xs, ts, train_flg=False) == pytest.approx(loss32, rel=1e-6)
