"""Per-sequence lengths and the reverse direction (``lengths=``, ``reverse=``) for every cell on
every backend: the kernels against the reference's walk (pylstm.reference, "Per-sequence
lengths"), the walk against independent definitions (each sequence alone on its slice; a
reversed copy of the input), finite differences, padding that cannot leak, thread counts, and
bad lengths."""

from __future__ import annotations

import numpy as np
import pytest

import pylstm
from helpers import (
    assert_close,
    assert_matches_finite_differences,
    assert_same_at_thread_counts,
    assert_within_twice_naive,
)

CELLS = ["lstm", "peephole", "gru", "gru_reset_before", "gru_book", "rnn_tanh", "rnn_relu", "lstm_torch",
         "gru_torch"]
GATES = {"lstm": 4, "peephole": 4, "gru": 3, "gru_reset_before": 3, "gru_book": 3, "rnn_tanh": 1, "rnn_relu": 1,
         "lstm_torch": 4, "gru_torch": 3}
HAS_C = {"lstm", "peephole", "lstm_torch"}


def make_inputs(cell, N, T, D, H, dtype=np.float64, seed=0, with_state=True):
    rng = np.random.default_rng(seed)
    G = GATES[cell]
    d = {
        "xs": rng.standard_normal((N, T, D)),
        "Wx": rng.standard_normal((D, G * H)) / np.sqrt(D),
        "Wh": rng.standard_normal((H, G * H)) / np.sqrt(H),
        "b": rng.standard_normal(G * H) * 0.5,
        "h0": rng.standard_normal((N, H)) if with_state else None,
        "c0": rng.standard_normal((N, H)) if with_state and cell in HAS_C else None,
        "P": None,
        "dhs": rng.standard_normal((N, T, H)),
        "dhT": rng.standard_normal((N, H)),
        "dcT": rng.standard_normal((N, H)) if cell in HAS_C else None,
    }
    if cell == "peephole":
        d["P"] = rng.standard_normal((3, H)) * 0.3
    if cell in ("gru", "gru_torch"):
        d["P"] = rng.standard_normal(H) * 0.3
    return {k: (None if v is None else np.ascontiguousarray(v, dtype=dtype)) for k, v in d.items()}


def forward(cell, d, backend, lengths=None, reverse=False, save=True):
    """(hs, hT, cT or None, cache) through the public function of the cell."""
    kw = dict(backend=backend, lengths=lengths, reverse=reverse)
    xs, Wx, Wh, b, h0, c0, P = (d[k] for k in ("xs", "Wx", "Wh", "b", "h0", "c0", "P"))
    if cell.endswith("_torch"):  # PyTorch's gate order (the functions' gate_order="torch")
        kw["gate_order"] = "torch"
        cell = cell[:-len("_torch")]
    if cell in ("lstm", "peephole"):
        if cell == "lstm":
            f = pylstm.lstm_forward if save else pylstm.lstm_inference
            out = f(xs, Wx, Wh, b, h0, c0, **kw)
        else:
            f = pylstm.peephole_forward if save else pylstm.peephole_inference
            out = f(xs, Wx, Wh, b, P, h0, c0, **kw)
        return out if save else (*out, None)
    if cell.startswith("gru"):
        variant = {"gru": "reset_after", "gru_reset_before": "reset_before", "gru_book": "book"}[cell]
        f = pylstm.gru_forward if save else pylstm.gru_inference
        out = f(xs, Wx, Wh, b, P, h0, variant=variant, **kw)
    else:
        f = pylstm.rnn_forward if save else pylstm.rnn_inference
        out = f(xs, Wx, Wh, b, h0, nonlinearity=cell[4:], **kw)
    return (out[0], out[1], None, out[2] if save else None)


def backward(cell, d, cache):
    """{dxs, dh0, dc0?, dWx, dWh, db, dP?} through the public backward of the cell."""
    cell = cell[:-len("_torch")] if cell.endswith("_torch") else cell
    if cell == "lstm":
        g = pylstm.lstm_backward(d["dhs"], cache, d["dhT"], d["dcT"])
    elif cell == "peephole":
        g = pylstm.peephole_backward(d["dhs"], cache, d["dhT"], d["dcT"])
    elif cell.startswith("gru"):
        dxs, dh0, dWx, dWh, db, dP = pylstm.gru_backward(d["dhs"], cache, d["dhT"])
        g = (dxs, dh0, None, dWx, dWh, db, dP)
    else:
        dxs, dh0, dWx, dWh, db = pylstm.rnn_backward(d["dhs"], cache, d["dhT"])
        g = (dxs, dh0, None, dWx, dWh, db)
    names = ("dxs", "dh0", "dc0", "dWx", "dWh", "db", "dP")
    return {n: v for n, v in zip(names, g) if v is not None}


def run_all(cell, d, backend, lengths=None, reverse=False):
    hs, hT, cT, cache = forward(cell, d, backend, lengths, reverse)
    out = {"hs": hs, "hT": hT, **backward(cell, d, cache)}
    if cT is not None:
        out["cT"] = cT
    return {k: np.asarray(v) for k, v in out.items()}


LENGTHS = {  # N = 6, T = 7
    "none": None,
    "unsorted": np.array([7, 3, 5, 1, 7, 2]),
    "sorted": np.array([6, 5, 5, 3, 2, 1]),  # longest first (PackedSequence's order), max < T
}


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("lengths", list(LENGTHS))
@pytest.mark.parametrize("reverse", [False, True])
@pytest.mark.parametrize("with_state", [False, True])
def test_kernels_match_reference_float64(backend, cell, lengths, reverse, with_state):
    if lengths == "none" and not reverse:
        pytest.skip("the plain walk: the kernel tests of each cell")
    d = make_inputs(cell, 6, 7, 5, 19, seed=1, with_state=with_state)
    L = LENGTHS[lengths]
    want = run_all(cell, d, "numpy", L, reverse)
    got = run_all(cell, d, backend, L, reverse)
    assert set(got) == set(want)
    for name in want:
        assert_close(f"{cell} {name}", got[name], want[name], rtol=1e-9)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("reverse", [False, True])
def test_kernels_float32_within_twice_naive_error(cpu_path, cell, reverse):
    # N = 12: the step-projection schedule's shapes (N >= 8); H = 40: slices of several threads
    L = np.array([9, 2, 9, 4, 7, 1, 9, 3, 5, 8, 6, 9])
    d32 = make_inputs(cell, 12, 9, 17, 40, np.float32, seed=2)
    d64 = {k: None if v is None else v.astype(np.float64) for k, v in d32.items()}
    assert_within_twice_naive(run_all(cell, d32, "cpu", L, reverse), run_all(cell, d64, "numpy", L, reverse),
                              run_all(cell, d32, "numpy", L, reverse), tag=f"{cell} ")


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_before", "rnn_tanh"])
def test_emulated_cuda_float32_within_twice_naive_error(cell):
    if "cuda-emu" not in pytest.importorskip("helpers").KERNEL_BACKENDS:
        pytest.skip("built without the CUDA emulation")
    L = np.array([9, 2, 9, 4, 7, 1])
    d32 = make_inputs(cell, 6, 9, 17, 40, np.float32, seed=3)
    d64 = {k: None if v is None else v.astype(np.float64) for k, v in d32.items()}
    for reverse in (False, True):
        assert_within_twice_naive(run_all(cell, d32, "cuda-emu", L, reverse),
                                  run_all(cell, d64, "numpy", L, reverse), run_all(cell, d32, "numpy", L, reverse))


@pytest.mark.parametrize("cell", CELLS)
def test_each_sequence_runs_as_if_alone(backend, cell):
    """The definition of lengths, independently of the reference's walk: sequence n, run alone on
    xs[n, :L_n] (reversed: on its reversed slice), gives hs[n, :L_n], hT[n], cT[n] and its dxs,
    dh0 slice; its padding outputs are zero; the weight gradients are the sums over sequences."""
    N, T = 5, 6
    L = np.array([6, 2, 4, 1, 5])
    d = make_inputs(cell, N, T, 4, 12, seed=4)
    for reverse in (False, True):
        got = run_all(cell, d, backend, L, reverse)
        sums = {}
        for n in range(N):
            idx = np.arange(L[n])[::-1] if reverse else np.arange(L[n])
            dn = {k: v for k, v in d.items()}
            for k in ("xs", "dhs"):
                dn[k] = np.ascontiguousarray(d[k][n:n + 1, idx])
            for k in ("h0", "c0", "dhT", "dcT"):
                dn[k] = None if d[k] is None else d[k][n:n + 1]
            one = run_all(cell, dn, backend)
            np.testing.assert_allclose(got["hs"][n, idx], one["hs"][0], rtol=1e-12, atol=1e-12)
            np.testing.assert_array_equal(got["hs"][n, L[n]:], 0.0)
            np.testing.assert_array_equal(got["dxs"][n, L[n]:], 0.0)
            np.testing.assert_allclose(got["dxs"][n, idx], one["dxs"][0], rtol=1e-12, atol=1e-12)
            for k in ("hT", "cT", "dh0", "dc0"):
                if k in got:
                    np.testing.assert_allclose(got[k][n], one[k][0], rtol=1e-12, atol=1e-12, err_msg=k)
            for k in ("dWx", "dWh", "db", "dP"):
                if k in got:
                    sums[k] = sums.get(k, 0) + one[k]
        for k, v in sums.items():
            assert_close(f"{cell} {k} reverse={reverse}", got[k], v, rtol=1e-10)


@pytest.mark.parametrize("cell", ["lstm", "gru", "gru_reset_before", "rnn_tanh"])
def test_reverse_is_the_forward_walk_of_the_reversed_input(backend, cell):
    d = make_inputs(cell, 3, 5, 4, 10, seed=5)
    got = run_all(cell, d, backend, reverse=True)
    flipped = dict(d, xs=np.ascontiguousarray(d["xs"][:, ::-1]), dhs=np.ascontiguousarray(d["dhs"][:, ::-1]))
    want = run_all(cell, flipped, backend)
    want["hs"], want["dxs"] = want["hs"][:, ::-1], want["dxs"][:, ::-1]
    for name in want:
        assert_close(f"{cell} {name}", got[name], want[name], rtol=1e-12)


@pytest.mark.parametrize("cell", ["lstm", "peephole", "gru", "gru_reset_before", "rnn_tanh"])
def test_reference_walk_matches_finite_differences(cell):
    N, T, D, H = 3, 4, 2, 3
    L = np.array([2, 4, 1])
    d = make_inputs(cell, N, T, D, H, seed=6)
    for reverse in (False, True):
        hs, hT, cT, cache = forward(cell, d, "numpy", L, reverse)
        grads = backward(cell, d, cache)

        def loss(reverse=reverse, **over):
            dd = dict(d, **over)
            hs, hT, cT, _ = forward(cell, dd, "numpy", L, reverse, save=False)
            total = np.sum(hs * d["dhs"]) + np.sum(hT * d["dhT"])
            return total + (np.sum(cT * d["dcT"]) if cT is not None else 0.0)

        names = ["xs", "Wx", "Wh", "b", "h0"] + (["c0"] if cell in HAS_C else [])
        names += ["P"] if d["P"] is not None else []
        grad_of = {"xs": "dxs", "Wx": "dWx", "Wh": "dWh", "b": "db", "h0": "dh0", "c0": "dc0", "P": "dP"}
        assert_matches_finite_differences(loss, d, {n: grads[grad_of[n]] for n in names}, rtol=1e-6)


@pytest.mark.parametrize("cell", CELLS)
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_padding_cannot_leak(backend, cell, dtype):
    """NaN in the padding of xs and dhs changes nothing: outputs, gradients (dxs padding zero).
    (float32 runs the packed path, whose row GEMMs after the step loop take the valid rows.)"""
    L = np.array([4, 1, 3])
    d = make_inputs(cell, 3, 4, 3, 8, dtype, seed=7)
    clean = run_all(cell, d, backend, L, True)
    dirty = dict(d, xs=d["xs"].copy(), dhs=d["dhs"].copy())
    for n, ln in enumerate(L):
        dirty["xs"][n, ln:] = np.nan
        dirty["dhs"][n, ln:] = np.nan
    for reverse in (False, True):
        a = run_all(cell, d, backend, L, reverse)
        b = run_all(cell, dirty, backend, L, reverse)
        for name in a:
            np.testing.assert_array_equal(b[name], a[name], err_msg=f"{name} reverse={reverse}")
    assert np.isfinite(clean["dWx"]).all()


@pytest.mark.parametrize("cell", ["lstm", "gru_reset_before", "rnn_tanh"])
def test_same_bits_at_every_thread_count(cell):
    if "cpu" not in pylstm.available_backends():
        pytest.skip("no CPU backend")
    L = np.array([30, 3, 17, 30, 1, 22, 9, 30, 12, 5])
    d = make_inputs(cell, 10, 30, 24, 64, np.float32, seed=8)
    for reverse in (False, True):
        assert_same_at_thread_counts(lambda reverse=reverse: run_all(cell, d, "cpu", L, reverse))


def test_inference_matches_training_forward(backend):
    L = np.array([5, 2, 4])
    for cell in ("lstm", "gru_reset_before"):
        d = make_inputs(cell, 3, 5, 4, 9, seed=9)
        for reverse in (False, True):
            a = forward(cell, d, backend, L, reverse)
            b = forward(cell, d, backend, L, reverse, save=False)
            for x, y in zip(a[:3], b[:3]):
                if x is not None:
                    np.testing.assert_allclose(np.asarray(y), np.asarray(x), rtol=1e-13, atol=1e-13)


@pytest.mark.parametrize("cell,blocks", [("lstm", (1, 2, 0, 3)), ("gru", (1, 0, 2))])
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_torch_gate_order_is_the_pylstm_order_with_blocks_moved(backend, cell, blocks, dtype):
    """gate_order="torch" on weights in PyTorch's block order (i, f, g, o; r, z, n) gives what
    pylstm's order gives on the same weights with their blocks moved (pylstm's block k is
    torch's block blocks[k]), gradients in the caller's order: plain and reversed walks, with
    and without lengths, batches of several panels (H = 40)."""
    d = make_inputs(cell, 7, 6, 9, 40, dtype, seed=11)
    G = len(blocks)

    def move(a, inverse=False):
        H = a.shape[-1] // G
        order = np.argsort(blocks) if inverse else blocks
        return np.ascontiguousarray(np.concatenate([a[..., j * H:(j + 1) * H] for j in order], axis=-1))

    torch_order = dict(d, **{k: move(d[k], inverse=True) for k in ("Wx", "Wh", "b")})
    rtol = 1e-12 if dtype == np.float64 else 1e-5
    for L in (None, np.array([6, 2, 5, 1, 6, 3, 4])):
        for reverse in (False, True):
            want = run_all(cell, d, backend, L, reverse)
            got = run_all(cell + "_torch", torch_order, backend, L, reverse)
            for k in ("dWx", "dWh", "db"):
                got[k] = move(got[k])
            assert set(got) == set(want)
            for name in want:
                assert_close(f"{cell} {name} L={L is not None} reverse={reverse}", got[name], want[name], rtol)


def test_gate_order_bad_values():
    d = make_inputs("gru_reset_before", 2, 3, 4, 5, seed=12)
    lstm_w = (np.zeros((4, 20)), np.zeros((5, 20)), np.zeros(20))
    with pytest.raises(ValueError, match="^gate_order must be one of"):
        pylstm.lstm_forward(d["xs"], *lstm_w, gate_order="keras")
    with pytest.raises(ValueError, match="^gate_order 'torch' is for the LSTM and the reset_after GRU"):
        pylstm.gru_forward(d["xs"], d["Wx"], d["Wh"], d["b"], variant="reset_before", gate_order="torch")
    c = pylstm.lstm_forward(d["xs"], *lstm_w, gate_order="torch")[3]
    with pytest.raises(ValueError, match="^cache comes from a lstm_torch forward pass, not from gru_forward"):
        pylstm.gru_backward(np.zeros((2, 3, 5)), c)


def test_lengths_of_any_integer_dtype_and_lists(backend):
    d = make_inputs("lstm", 3, 5, 4, 9, seed=10)
    want = forward("lstm", d, backend, np.array([5, 2, 4]))[0]
    for L in ([5, 2, 4], np.array([5, 2, 4], np.int32), np.array([5, 2, 4], np.uint8), (5, 2, 4)):
        np.testing.assert_array_equal(forward("lstm", d, backend, L)[0], want)


@pytest.mark.parametrize("backend_name", ["numpy", "cpu", "cuda-emu"])
def test_bad_lengths_and_reverse(backend_name):
    if backend_name == "cuda-emu" and "cuda-emu" not in pytest.importorskip("helpers").KERNEL_BACKENDS:
        pytest.skip("built without the CUDA emulation")
    d = make_inputs("lstm", 3, 5, 4, 9, seed=11)
    cases = [
        (np.array([5, 2]), ValueError, r"^lengths must have shape \(3,\)"),
        (np.array([[5, 2, 4]]), ValueError, r"^lengths must have shape \(3,\)"),
        (np.array([5, 0, 4]), ValueError, r"^lengths\[1\] = 0: every length must be in \[1, T\] = \[1, 5\]"),
        (np.array([5, 6, 4]), ValueError, r"^lengths\[1\] = 6"),
        (np.array([-1, 2, 4]), ValueError, r"^lengths\[0\] = -1"),
        (np.array([5.0, 2.0, 4.0]), TypeError, "^lengths must have an integer dtype"),
        (np.array([True, True, True]), TypeError, "^lengths must have an integer dtype"),
        (np.array([2**63 + 1, 2, 3], np.uint64), ValueError, "^lengths: a length is past the int64 range"),
        (np.ma.masked_array([5, 2, 4]), TypeError, "^lengths"),
    ]
    for L, exc, msg in cases:
        with pytest.raises(exc, match=msg):
            forward("lstm", d, backend_name, L)
    with pytest.raises(TypeError, match="^reverse must be a bool"):
        forward("lstm", d, backend_name, None, reverse=1)
    from pylstm._devices import EmuDeviceArray

    with pytest.raises(TypeError, match="^lengths must be a host array"):
        forward("lstm", d, backend_name, EmuDeviceArray(np.array([5, 2, 4])))


def test_the_binding_refuses_bad_lengths_itself():
    """The compiled module checks lengths itself (a direct call cannot index past hs)."""
    from pylstm import _backend

    if _backend.cpu is None:
        pytest.skip("no CPU backend")
    d = make_inputs("lstm", 3, 5, 4, 9, seed=12)
    args = (d["xs"], d["Wx"], d["Wh"], d["b"], None, None, True)
    with pytest.raises(TypeError, match="^lengths must have dtype int64"):
        _backend.cpu.forward(*args, lengths=np.array([5, 2, 4], np.int32))
    with pytest.raises(ValueError, match=r"^lengths\[2\] = 9"):
        _backend.cpu.forward(*args, lengths=np.array([5, 2, 9]))
    with pytest.raises(TypeError, match="^lengths must be a numpy.ndarray"):
        _backend.cpu.forward(*args, lengths=[5, 2, 4])


def test_backward_walks_what_the_forward_walked(backend):
    """The cache keeps its own copy of the lengths: a caller reusing its array between forward
    and backward changes nothing."""
    d = make_inputs("lstm", 3, 5, 4, 9, seed=13)
    L = np.array([5, 2, 4])
    want = run_all("lstm", d, backend, L.copy(), True)
    hs, hT, cT, cache = forward("lstm", d, backend, L, True)
    L[:] = [1, 1, 1]
    got = backward("lstm", d, cache)
    for name, v in got.items():
        np.testing.assert_array_equal(np.asarray(v), want[name], err_msg=name)
    assert not cache.lengths.flags.writeable
